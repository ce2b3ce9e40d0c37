//! `GET/POST /v1/volumes`, `DELETE /v1/volumes/{name}`: named volumes; and
//! `POST /v1/machines/{id}/exec`.

use berth_types::Timestamp;
use berth_types::time::HumanDuration;
use serde::{Deserialize, Serialize};

/// One named volume (an element of `GET /v1/volumes`, the answer of a create).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Its name.
    pub name: String,
    /// Its directory on the host (`<data_dir>/volumes/<name>`).
    pub path: String,
    /// The owner of its directory: the user of the machine that last mounted it writable.
    pub uid: u32,
    /// The group of its directory.
    pub gid: u32,
    /// When it was made, when the filesystem says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
    /// The machines (not destroyed) whose `mounts` name it: while any does, it cannot be removed.
    pub in_use_by: Vec<String>,
}

/// `POST /v1/volumes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVolume {
    /// 1 to 63 characters of `A-Z a-z 0-9 . _ -`, starting with a letter or digit.
    pub name: String,
}

/// `POST /v1/machines/{id}/exec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Program and arguments (a program without `/` is looked up in the machine's `PATH`).
    pub cmd: Vec<String>,
    /// Killed (SIGKILL) once this has passed; default 30s, at most 10m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Given to the command as its standard input (at most 1 MiB); empty input otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
}

/// The answer of `POST /v1/machines/{id}/exec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResult {
    /// The command's exit code; 128 + the signal's number when a signal ended it (as a shell
    /// reports it), 124 when the timeout killed it, 127 when it could not be started.
    pub exit_code: i32,
    /// Its standard output (UTF-8, invalid bytes replaced), at most `output_limit` bytes.
    pub stdout: String,
    /// Its standard error, likewise.
    pub stderr: String,
    /// The signal that ended it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// The timeout killed it.
    pub timed_out: bool,
    /// `stdout` was cut at `output_limit` bytes (the rest was read and dropped).
    pub stdout_truncated: bool,
    /// `stderr` was cut likewise.
    pub stderr_truncated: bool,
    /// The most bytes kept of each stream.
    pub output_limit: u64,
    /// How long it ran, in milliseconds.
    pub duration_ms: u64,
}
