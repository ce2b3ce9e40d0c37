//! Durable operations: a multi-step action on one machine, recorded so it survives a crash.
//!
//! The step list is fixed when the operation is recorded; each step is marked done in the same
//! transaction as its effect on the store. After a restart, an operation's remaining steps are run
//! again, so every step must be idempotent.

use serde::{Deserialize, Serialize};

use crate::{MachineId, Source, Timestamp};

/// The action an operation performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// Record a machine (and start it unless `skip_start`).
    Create,
    /// Start a stopped, failed or created machine.
    Start,
    /// Stop a running machine.
    Stop,
    /// Stop then start.
    Restart,
    /// Remove a machine.
    Destroy,
}

/// One step of an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Step name, from the operation's plan.
    pub name: String,
    /// When it completed; `None` while pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_at: Option<Timestamp>,
}

/// An operation in flight, as stored in the operations table until it finishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationRecord {
    /// Host-unique id, allocated by the store.
    pub id: u64,
    /// The machine it acts on.
    pub machine_id: MachineId,
    /// What it does.
    pub kind: OpKind,
    /// Who asked.
    pub source: Source,
    /// Parameters (signal, timeout, force, ...), opaque to the store.
    #[serde(default)]
    pub params: serde_json::Value,
    /// The plan, in order.
    pub steps: Vec<StepRecord>,
    /// When it was recorded.
    pub created_at: Timestamp,
    /// How many times it has been resumed after a restart.
    #[serde(default)]
    pub resumes: u32,
}

impl OperationRecord {
    /// The first step not yet done, if any.
    pub fn next_step(&self) -> Option<&str> {
        self.steps
            .iter()
            .find(|s| s.done_at.is_none())
            .map(|s| s.name.as_str())
    }

    /// Whether every step is done.
    pub fn is_complete(&self) -> bool {
        self.next_step().is_none()
    }
}
