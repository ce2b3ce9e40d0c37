//! The current record of a machine, and how history folds into it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Event, EventKind, ExitInfo, MachineConfig, MachineId, Source, State, Timestamp};

/// A machine as stored: the single source of truth for its current state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineRecord {
    /// Id.
    pub id: MachineId,
    /// Name (defaults to the id).
    pub name: String,
    /// Current state.
    pub state: State,
    /// What it runs.
    pub config: MachineConfig,
    /// Caller-owned labels, filterable with `metadata.KEY=VALUE`.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When its last transition was committed.
    pub updated_at: Timestamp,
    /// Number of transitions recorded; the history holds versions `1..=version`.
    pub version: u64,
    /// The workload's pid while it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// How the workload last exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitInfo>,
    /// Restarts by the restart policy since the last start a user asked for (derived from
    /// history: each berth-initiated restart adds one, a user start resets it).
    #[serde(default)]
    pub restarts: u32,
    /// The durable operation currently running on this machine, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_op: Option<u64>,
    /// Image machines: the manifest digest (`sha256:...`) of the image it runs, fixed when it
    /// was created, so a tag moved later never changes what runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// The version of `config`: 1 when created, one more with each update or rollback. Older
    /// versions are kept apart (the store's `config_versions` table); this record holds the
    /// current one.
    #[serde(default = "first_config_version")]
    pub config_version: u64,
    /// When `config` became the current version; absent until the first update (the
    /// creation time, then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_updated_at: Option<Timestamp>,
    /// Each health check's current status. Never stored: checks live in the agent's memory
    /// (a passing result is not a write), which fills this in where it answers a machine.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<String, CheckStatus>,
}

/// A health check's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckHealth {
    /// Its last run passed.
    Passing,
    /// It failed `failures` times in a row.
    Critical,
    /// Not run yet (the machine is not started, or in its grace period), or failing fewer
    /// than `failures` times in a row since the last pass.
    Unknown,
}

impl CheckHealth {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckHealth::Passing => "passing",
            CheckHealth::Critical => "critical",
            CheckHealth::Unknown => "unknown",
        }
    }
}

/// A health check's current status, its last output and since when it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckStatus {
    /// passing, critical or unknown.
    pub status: CheckHealth,
    /// The last run's output (bounded).
    #[serde(default)]
    pub output: String,
    /// When the status last changed.
    pub since: Timestamp,
}

/// Records written before config versions existed hold version 1.
const fn first_config_version() -> u64 {
    1
}

/// A version of a machine's config, as `GET /v1/machines/{id}/versions` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigVersion {
    /// Its number: 1 at create, one more with each update or rollback.
    pub version: u64,
    /// The config.
    pub config: MachineConfig,
    /// When it was recorded.
    pub created_at: Timestamp,
    /// Image machines: the manifest digest it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
}

impl MachineRecord {
    /// A record in `created` state, version 0 until its creation event is applied.
    pub fn new(
        id: MachineId,
        name: Option<String>,
        config: MachineConfig,
        metadata: BTreeMap<String, String>,
        at: Timestamp,
    ) -> Self {
        Self {
            name: name.unwrap_or_else(|| id.to_string()),
            id,
            state: State::Created,
            config,
            metadata,
            created_at: at,
            updated_at: at,
            version: 0,
            pid: None,
            exit: None,
            restarts: 0,
            active_op: None,
            image_digest: None,
            config_version: 1,
            config_updated_at: None,
            checks: BTreeMap::new(),
        }
    }

    /// The current config as a [`ConfigVersion`].
    pub fn current_config(&self) -> ConfigVersion {
        ConfigVersion {
            version: self.config_version,
            config: self.config.clone(),
            created_at: self.config_updated_at.unwrap_or(self.created_at),
            image_digest: self.image_digest.clone(),
        }
    }

    /// Applies one recorded transition. Folding a machine's history, oldest first, over its
    /// creation-time record yields its current record: the store maintains exactly this.
    pub fn apply(&mut self, ev: &Event) {
        self.state = ev.to;
        self.version = ev.version;
        self.updated_at = ev.at;
        self.pid = ev.pid;
        match (ev.kind, ev.source, ev.to) {
            (EventKind::Restart, Source::Berth, State::Restarting) => self.restarts += 1,
            (_, Source::User, State::Starting | State::Restarting) => self.restarts = 0,
            _ => {}
        }
        if ev.exit.is_some() {
            self.exit = ev.exit.clone();
        } else if ev.to == State::Started {
            self.exit = None;
        }
    }

    /// The fields that history determines, for comparing a record with the fold of its history.
    pub fn history_view(&self) -> (State, u64, Timestamp, Option<u32>, Option<&ExitInfo>) {
        (
            self.state,
            self.version,
            self.updated_at,
            self.pid,
            self.exit.as_ref(),
        )
    }
}
