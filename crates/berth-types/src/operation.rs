//! Durable operations: a multi-step action on one machine, recorded so it survives a crash.
//!
//! The step list is fixed when the operation is recorded; each step is marked done in the same
//! transaction as its effect on the store. After a restart, an operation's remaining steps are run
//! again, so every step must be idempotent.

use serde::{Deserialize, Serialize};

use crate::{ExitInfo, MachineId, Source, Timestamp};

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
    /// Apply a new config version to a started machine: stop it with the old config's stop
    /// settings (kept in the params), start it with the new config.
    Update,
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
    /// What was asked, kept so that a resumed operation does the same; opaque to the store.
    #[serde(default, deserialize_with = "null_as_default")]
    pub params: OpParams,
    /// The plan, in order.
    pub steps: Vec<StepRecord>,
    /// When it was recorded.
    pub created_at: Timestamp,
    /// How many times it has been resumed after a restart.
    #[serde(default)]
    pub resumes: u32,
}

/// An operation's parameters. Each kind reads the fields it knows; absent ones take the
/// machine's config. Stored as a JSON object, so a field added later needs no migration, and
/// records written before this type existed (the same keys, as a free-form object) read back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpParams {
    /// Create: start the machine once recorded (absent: yes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<bool>,
    /// Stop, restart, destroy: the stop signal (absent: the config's `stop.signal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Stop, restart, destroy: milliseconds before SIGKILL (absent: the config's `stop.timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// A policy restart: the backoff before it spawns, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// A policy restart: the exit that caused it, recorded with its first transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitInfo>,
    /// A policy restart: the reason recorded with its first transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Update: the config version it applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_version: Option<u64>,
}

impl OpParams {
    /// The stop timeout, if one was asked for.
    pub fn timeout(&self) -> Option<std::time::Duration> {
        self.timeout_ms.map(std::time::Duration::from_millis)
    }
}

/// `null` (or an absent field) reads as the default parameters.
fn null_as_default<'de, D: serde::Deserializer<'de>>(d: D) -> Result<OpParams, D::Error> {
    Ok(Option::<OpParams>::deserialize(d)?.unwrap_or_default())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_written_as_a_free_form_object_read_back() {
        let old = serde_json::json!({
            "delay_ms": 200, "reason": "exited with code 1", "signal": "SIGINT",
            "timeout_ms": 5000, "start": false, "force": true,
            "exit": {"code": 1, "at": "2026-01-01T00:00:00Z"}
        });
        let p: OpParams = serde_json::from_value(old).expect("old params");
        assert_eq!(p.delay_ms, Some(200));
        assert_eq!(p.reason.as_deref(), Some("exited with code 1"));
        assert_eq!(p.signal.as_deref(), Some("SIGINT"));
        assert_eq!(p.timeout(), Some(std::time::Duration::from_secs(5)));
        assert_eq!(p.start, Some(false));
        assert_eq!(p.exit.and_then(|e| e.code), Some(1));
        for empty in ["null", "{}"] {
            let rec = format!(
                r#"{{"id":1,"machine_id":"m1","kind":"start","source":"user","params":{empty},"steps":[],"created_at":"2026-01-01T00:00:00Z"}}"#
            );
            let rec: OperationRecord = serde_json::from_str(&rec).expect(empty);
            assert_eq!(rec.params, OpParams::default());
        }
    }
}
