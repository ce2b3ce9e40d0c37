//! Transitions as recorded: a machine's history and the host-wide event log hold [`Event`]s.

use serde::{Deserialize, Serialize};

use crate::{MachineId, State, Timestamp};

/// Who caused a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// An API or CLI caller.
    User,
    /// berth itself: supervision, restart policy, reconciliation.
    Berth,
}

/// What kind of change an event records (the wire name is the event's `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// The machine was recorded.
    Create,
    /// A start began or completed.
    Start,
    /// A stop began or completed.
    Stop,
    /// A restart began.
    Restart,
    /// The workload exited on its own.
    Exit,
    /// A start or supervision failure.
    Fail,
    /// A destroy began or completed.
    Destroy,
    /// State corrected by reconciliation against the live processes.
    Reconcile,
    /// A new config version was recorded (an update or a rollback; `from` and `to` are the
    /// state it was recorded in), or an update operation began applying it.
    Update,
    /// The machine's image was pulled from its registry (or imported) for its create or its
    /// update, before the machine or its new config was recorded: what was pulled, how much and
    /// how long, in `reason`. Recorded in the state the machine was in (`from` = `to`).
    Pull,
    /// A health check's status changed (`from` and `to` are the machine's state: not a
    /// transition).
    Check,
}

/// How a workload exited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ExitInfo {
    /// Exit code, when it exited normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// Terminating signal name (e.g. `SIGKILL`), when killed by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Whether the kernel's OOM killer ended it (where detectable).
    #[serde(default)]
    pub oom_killed: bool,
    /// Whether berth asked it to stop.
    #[serde(default)]
    pub requested_stop: bool,
    /// When the exit was observed.
    pub at: Timestamp,
}

impl Event {
    /// Whether the event notes something that happened in a state rather than a change of
    /// state (`from` = `to`: a config version recorded, an image pulled): not a transition.
    pub fn in_place(&self) -> bool {
        self.from == Some(self.to)
    }
}

/// One recorded transition. The same value is stored in the machine's history (keyed by machine
/// and version) and in the host-wide event log (keyed by `seq`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Host-wide sequence number: strictly increasing, no gaps.
    pub seq: u64,
    /// The machine.
    pub machine_id: MachineId,
    /// The machine's version after this transition (its n-th transition has version n).
    pub version: u64,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// State before; `None` for the creation event.
    pub from: Option<State>,
    /// State after.
    pub to: State,
    /// Who caused it.
    pub source: Source,
    /// When it was committed.
    pub at: Timestamp,
    /// Human-readable reason.
    pub reason: String,
    /// The workload's pid after the transition, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Exit details, for transitions caused by an exit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitInfo>,
}

/// Events that never reached the export target: retention removed them first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportHole {
    /// First missing seq.
    pub from: u64,
    /// Last missing seq (inclusive).
    pub to: u64,
    /// When the hole was recorded.
    pub at: Timestamp,
}

impl ExportHole {
    /// How many events are missing.
    pub fn len(&self) -> u64 {
        self.to.saturating_sub(self.from) + 1
    }

    /// Never true: a hole holds at least one seq.
    pub fn is_empty(&self) -> bool {
        false
    }
}
