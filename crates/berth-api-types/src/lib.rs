//! The HTTP API's wire types, shared by `berth-api` (server) and `berth-client`.
//!
//! Architecture invariant: no behaviour, only shapes. Machines and events travel as
//! `berth_types::MachineRecord` and `berth_types::Event`, so the API shows exactly what is stored.
//! Request bodies and closed query strings reject unknown fields, so a misspelt field is an
//! error, not a silent default. Every response shape is typed here (no `serde_json::Value`), so
//! the server, the client and the CLI read the same fields; the conversions from the agent's
//! values are in `berth-agent`'s `wire.rs`.

use std::collections::BTreeMap;

use berth_types::time::HumanDuration;
use berth_types::{Event, MachineConfig, Timestamp};
use serde::{Deserialize, Serialize};

mod db;
mod host;
mod image;
mod logs;
mod query;
mod volume;

pub use berth_types::{ConfigVersion, MachineRecord as Machine, State};
pub use db::{
    CheckReport, CompactionProgress, CompactionReport, DbCheck, DbStats, PageCheck, SlowOp,
};
pub use host::{
    ApproveReport, Capabilities, Check, ExportStatus, GuardAction, GuardStatus, Health, Held,
    HostInfo, Planned, ReconcileReport, SupervisionStatus, UnknownMachine,
};
pub use image::{Image, PULL_STREAM_MEDIA_TYPE, PullEvent, PullImage, PullReport};
pub use logs::{LogFormat, LogLine, LogStream};
pub use query::{
    DestroyQuery, EventsQuery, LogsQuery, MachineListQuery, ReconcileQuery, WaitQuery,
};
pub use volume::{CreateVolume, ExecRequest, ExecResult, Volume};

/// Every non-2xx response body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A sentence for a person.
    pub error: String,
    /// A stable code for a program: `invalid`, `not_found`, `conflict`, `lease_required`,
    /// `lease_mismatch`, `overloaded`, `cordoned`, `unavailable`, `unauthorized`, `timeout`,
    /// `too_large`, `expired`, `bad_gateway` (an image registry failed), `version_mismatch` (an
    /// update's `current_version` is stale), `internal`.
    pub code: String,
}

/// `POST /v1/machines`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateMachine {
    /// Name (defaults to the id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What to run.
    pub config: MachineConfig,
    /// Labels.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Record it without starting it.
    #[serde(default)]
    pub skip_start: bool,
}

/// `POST /v1/machines/{id}`: update a machine's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateMachine {
    /// The whole new config.
    pub config: MachineConfig,
    /// Refuse (409 `version_mismatch`) unless this is the machine's current `config_version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
    /// Record the new version without restarting a started machine.
    #[serde(default)]
    pub skip_start: bool,
}

/// `POST /v1/machines/{id}/rollback` (body optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The config version to restore (default: the one before the current).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// `POST /v1/machines/{id}/stop` (body optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    /// Signal to send first (default: the machine's `stop.signal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Grace period before SIGKILL (default: the machine's `stop.timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
}

/// `POST /v1/machines/{id}/signal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    /// Signal name.
    pub signal: String,
}

/// `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventsPage {
    /// Events with `seq > after`, oldest first.
    pub events: Vec<Event>,
    /// The seq to pass as `after` next time (the last one returned, or `after` if none).
    pub last_seq: u64,
}

/// `POST /v1/machines/{id}/lease` (body optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// How long the lease lasts (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<HumanDuration>,
    /// Who holds it, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A lease on a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The machine.
    pub machine_id: String,
    /// Send as `berth-lease-nonce` with every mutation while it is held.
    pub nonce: String,
    /// When it lapses.
    pub expires_at: Timestamp,
    /// Who holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `GET /v1/machines/{id}/stats`: what a machine's workload uses now.
///
/// Usage fields are absent when they are not known (the machine runs nothing, or its process or
/// cgroup could not be read at this instant): unknown is never shown as zero.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineStats {
    /// The machine.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its state.
    pub state: State,
    /// The workload's pid, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// CPU time the workload used in its current run, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<f64>,
    /// Memory the workload uses, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// The memory limit from its config, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    /// Restarts by the restart policy since the last start by a user.
    pub restarts: u32,
    /// When its current run began (its last transition to `started`), while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
}

/// The header a lease holder sends with mutations.
pub const LEASE_HEADER: &str = "berth-lease-nonce";
/// The header that makes a create idempotent.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// The header every response carries.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Response header of `GET /v1/machines?limit=N` when more machines match: pass its value as
/// `cursor` to get the next page.
pub const NEXT_CURSOR_HEADER: &str = "berth-next-cursor";
/// Most machines one `GET /v1/machines` page may ask for (`limit`).
pub const MAX_PAGE_LIMIT: usize = 1000;
/// Most lines `GET /v1/machines/{id}/logs?tail=N` returns.
pub const MAX_LOG_TAIL: usize = 100_000;
