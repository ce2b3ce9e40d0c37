//! `GET /v1/host`, `GET /v1/health`, `POST /v1/host/reconcile` and `POST /v1/host/approve`.

use std::collections::BTreeMap;

use berth_types::{ExportHole, MachineId, State, Timestamp};
use serde::{Deserialize, Serialize};

/// One health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Whether it passes.
    pub ok: bool,
    /// What it saw.
    pub detail: String,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// `ok` or `degraded`.
    pub status: String,
    /// Each check by name.
    pub checks: BTreeMap<String, Check>,
    /// Whether the host refuses new machines.
    pub cordoned: bool,
}

/// `GET /v1/host` (also the answer of cordon and uncordon).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    /// The host's name.
    pub hostname: String,
    /// berth's version.
    pub version: String,
    /// The data directory.
    pub data_dir: String,
    /// Whether the host refuses new machines.
    pub cordoned: bool,
    /// Machines by state.
    pub machines: BTreeMap<String, u64>,
    /// What the host can enforce and measure.
    pub capabilities: Capabilities,
    /// What supervision has seen lately (reattached workloads, last reconciliation, orphans).
    pub supervision: SupervisionStatus,
    /// The fleet export (host id, connection, acknowledged seq, lag, holes); absent when off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<ExportStatus>,
}

/// What `berth host status` shows of the export, and what host facts carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportStatus {
    /// This host's id in the fleet.
    pub host_id: String,
    /// Whether the NATS connection is up and the stream is known to exist.
    pub connected: bool,
    /// The last seq the stream acknowledged (0: none yet).
    pub acked_seq: u64,
    /// The newest committed seq.
    pub head_seq: u64,
    /// Events committed and not yet acknowledged.
    pub lag_events: u64,
    /// Messages the stream stored since this agent started (duplicates not counted).
    pub published: u64,
    /// Events removed by retention before they were exported (oldest first, at most 100).
    pub holes: Vec<ExportHole>,
    /// The last failure, if the connection is not up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// What this host can enforce and measure.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Machines get their own cgroup.
    pub cgroup: bool,
    /// The parent cgroup berth uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_root: Option<String>,
    /// `cgroup.kill` kills a machine's whole tree at once.
    pub cgroup_kill: bool,
    /// `cpu.stat` gives per-machine CPU time.
    pub cpu_accounting: bool,
    /// `memory.current` gives per-machine memory.
    pub memory_accounting: bool,
    /// `resources.memory_mb` can be enforced.
    pub memory_limit: bool,
    /// `resources.cpus` can be enforced.
    pub cpu_limit: bool,
    /// `resources.pids` can be enforced.
    pub pids_limit: bool,
    /// Why cgroups are not used, when they are not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_unavailable: Option<String>,
    /// The OCI runtime image machines run under (`runc`, `crun`), when one works here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci_runtime: Option<String>,
    /// Why image machines cannot run here, when they cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci_unavailable: Option<String>,
    /// `resources.memory_mb` can be enforced on image machines (by the runtime).
    #[serde(default)]
    pub image_memory_limit: bool,
    /// `resources.cpus` can be enforced on image machines.
    #[serde(default)]
    pub image_cpu_limit: bool,
    /// `resources.pids` can be enforced on image machines.
    #[serde(default)]
    pub image_pids_limit: bool,
}

/// What supervision has seen lately.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SupervisionStatus {
    /// The last reconciliation pass.
    pub last_reconcile: Option<ReconcileReport>,
    /// Operations resumed at start-up.
    pub resumed_operations: usize,
    /// Workloads reattached at start-up.
    pub reattached: usize,
    /// Machines whose workload's state could not be read at their last observation: nothing
    /// was recorded or removed for them (unknown is never absent).
    #[serde(default)]
    pub unknown: Vec<UnknownMachine>,
    /// The blast-radius guard: tripped or not, what it holds.
    pub guard: GuardStatus,
}

/// A machine whose workload's state could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnknownMachine {
    /// The machine.
    pub machine_id: String,
    /// What could not be read, and why.
    pub reason: String,
    /// Since when (the first observation of this run of failures).
    pub since: Timestamp,
    /// Observations that failed in a row.
    pub attempts: u64,
}

/// What a reconciliation pass saw and did (`POST /v1/host/reconcile`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReconcileReport {
    /// Machines examined.
    pub examined: usize,
    /// Corrections found.
    pub planned: Vec<Planned>,
    /// Corrections applied.
    pub applied: usize,
    /// The blast-radius guard refused the pass: nothing was applied.
    pub blocked: bool,
    /// An operator's approval let this pass past the guard.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approved: bool,
    /// Supervised workloads with no machine record: reported, never killed.
    pub orphans: Vec<String>,
    /// Machines in a transient state with no operation in flight.
    pub stranded: Vec<MachineId>,
}

/// A correction a reconciliation pass found necessary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Planned {
    /// The machine.
    pub machine_id: MachineId,
    /// What the store says.
    pub recorded: State,
    /// What was observed.
    pub observed: String,
}

/// The kinds of automated decision the blast-radius guard covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardAction {
    /// A restart decided by a machine's restart policy after its workload exited.
    Restart,
    /// A reconciliation pass recording what it observed.
    Reconcile,
}

/// A decision the guard held back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Held {
    /// The machine (or, for a held reconciliation pass, the first of its machines).
    pub machine_id: MachineId,
    /// What berth wanted to do.
    pub action: GuardAction,
    /// What it saw: the reason it would have recorded.
    pub observed: String,
    /// When it was held.
    pub at: Timestamp,
    /// The machine's record version when the decision was held.
    pub version: u64,
}

/// The blast-radius guard's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GuardStatus {
    /// Whether the guard is on.
    pub enabled: bool,
    /// Tripped: every guarded decision is held until an operator approves.
    pub tripped: bool,
    /// Why it tripped: the counts it saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tripped_because: Option<String>,
    /// Held decisions, oldest first (bounded: one per machine).
    pub held: Vec<Held>,
    /// Decisions held since the agent started, by action.
    pub blocked_total: BTreeMap<GuardAction, u64>,
    /// Distinct machines acted on automatically within the window.
    pub recent_machines: usize,
    /// The window.
    pub window_secs: u64,
}

/// What an operator's approval released (`POST /v1/host/approve`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApproveReport {
    /// The decisions the guard held, now released.
    pub released: Vec<Held>,
    /// Machines whose held restart now runs.
    pub restarted: Vec<MachineId>,
    /// Held restarts not run because the machine changed since (an operator acted on it).
    pub skipped: Vec<MachineId>,
    /// The reconciliation pass run with the approval, if one was held.
    pub reconcile: Option<ReconcileReport>,
}
