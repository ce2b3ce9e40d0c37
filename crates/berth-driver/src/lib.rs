//! Running workloads as real processes, each under a supervisor (`berth-shim`) that outlives the
//! agent.
//!
//! Architecture invariant: this is the only crate that touches nix/libc; it knows nothing about the
//! store or the state machine. A workload's truth on the host lives in its machine directory
//! (`spec.json`, `shim.json`, `exit.json`, `logs/`), written atomically by whoever owns each file,
//! so the agent can die at any moment and learn everything again from disk and `/proc`.
//! Processes are identified by (pid, start time, boot id), never by pid alone.

pub mod cgroup;
mod driver;
pub mod exec;
pub mod files;
pub mod limits;
pub mod logfmt;
pub mod logread;
pub mod logs;
pub mod oci;
pub mod proc;
pub mod shim;
pub mod timing;
pub mod usage;
pub mod user;
pub mod volumes;

pub use cgroup::Capabilities;
pub use driver::{
    CgroupMode, Driver, DriverConfig, DriverError, Probe, SUPERVISOR_DIED, exit_info,
};
