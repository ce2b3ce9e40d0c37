//! The files a machine's directory holds, and how they are written.
//!
//! `<machines>/<id>/`:
//! - `spec.json` — what to run (written by the agent before launching the shim);
//! - `shim.json` — the running instance: shim and workload identities (written by the shim);
//! - `exit.json` — how the workload exited (written by the shim, fsynced, before it exits);
//! - `logs/output.log` (+ `.1`, `.2`, …) — the workload's stdout and stderr;
//! - `bundle/` — an image machine's OCI bundle (see `oci::bundle`).
//!
//! No workload works here: a process machine's default working directory is its user's home or
//! `/` (machines made by an earlier release may still have an empty `work/`).
//!
//! Each JSON file is written to a temporary name and renamed into place, so a reader sees the old
//! file or the new one, never a torn one. `exit.json` is also fsynced (with its directory): it is
//! the only record of how a workload ended. `spec.json` and `shim.json` are not: a retried launch
//! rewrites the spec, and `shim.json` names processes that no power loss leaves alive.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::proc::ProcessId;

/// What the shim runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    /// Identifies this launch; `shim.json` and `exit.json` carry it back.
    pub instance: String,
    /// Program and arguments.
    pub cmd: Vec<String>,
    /// Environment (the workload gets exactly this, plus nothing inherited).
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub workdir: PathBuf,
    /// cgroup directory to place the workload in, if any.
    pub cgroup: Option<PathBuf>,
    /// Log rotation: rotate when the file reaches this size.
    pub log_max_bytes: u64,
    /// Log rotation: rotated files kept.
    pub log_keep: u32,
    /// The workload's `RLIMIT_NOFILE` (soft, hard); inherited from the shim when absent.
    #[serde(default)]
    pub nofile: Option<(u64, u64)>,
    /// The workload's `oom_score_adj`; inherited from the shim when absent.
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
    /// Who a process machine's workload runs as (resolved by the agent); the shim's own user
    /// (root) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<crate::user::HostUser>,
    /// Set for an image machine: run it under this OCI runtime from this bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<crate::oci::OciLaunch>,
}

/// A running instance, as recorded by its shim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimState {
    /// The launch this is.
    pub instance: String,
    /// The shim process.
    pub shim: ProcessId,
    /// The workload (its own session and process group leader).
    pub workload: ProcessId,
    /// The boot both belong to.
    pub boot_id: String,
    /// When the workload was confirmed running (ns since the epoch).
    pub started_at_ns: u64,
}

/// How a workload exited, as recorded by its shim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The launch this is.
    pub instance: String,
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal name, if a signal ended it.
    pub signal: Option<String>,
    /// Whether the cgroup recorded an OOM kill.
    pub oom_killed: bool,
    /// When the shim saw the exit (ns since the epoch).
    pub at_ns: u64,
    /// Set when the workload never ran (exec failed): why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Set when the agent, not the shim, wrote the record: what happened (its supervisor died
    /// and the agent killed the unsupervised workload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// File names within a machine's directory.
pub const SPEC: &str = "spec.json";
/// See [`ShimState`].
pub const STATE: &str = "shim.json";
/// See [`ExitRecord`].
pub const EXIT: &str = "exit.json";
/// The log directory.
pub const LOGS: &str = "logs";

/// Writes `bytes` to `path` atomically and durably.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Writes a value as JSON atomically (rename), without fsync: for files that are rewritten
/// whenever they matter (the launch spec is rewritten by every retried launch).
pub fn write_json_fast<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Writes a value as JSON, atomically and durably.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    atomic_write(path, &bytes)
}

/// Reads a JSON file; `Ok(None)` if it does not exist.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> std::io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Nanoseconds since the epoch, now.
pub fn now_ns() -> u64 {
    berth_types::Timestamp::now().as_nanos()
}
