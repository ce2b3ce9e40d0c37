//! Image machines under an OCI runtime (runc or crun): which runtime this host uses
//! ([`runtime`]), the bundle a machine runs from ([`bundle`]: `config.json`, the overlay's
//! writable layer, the files written into it), and the shim's side of a run ([`container`]:
//! `create` with the shim as subreaper, `start`, reap, `delete`).

pub mod bundle;
pub mod container;
pub mod runtime;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use bundle::ImageRun;
pub use runtime::{OciRuntime, RuntimeChoice};

/// What the shim needs to run an image machine (part of `spec.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciLaunch {
    /// The runtime executable.
    pub runtime: PathBuf,
    /// The container's id in the runtime (`berth-<machine id>`).
    pub container_id: String,
    /// The bundle directory (holds `config.json`, `rootfs/`, `upper/`, `work/`).
    pub bundle: PathBuf,
    /// The image's read-only unpacked root: the overlay's lower layer.
    pub lower: PathBuf,
    /// Where the runtime's memory cgroup for the container is, to read OOM kills from.
    #[serde(default)]
    pub memory_cgroup: Option<PathBuf>,
}

/// The container id a machine has in the runtime.
pub fn container_id(machine_id: &str) -> String {
    format!("berth-{machine_id}")
}
