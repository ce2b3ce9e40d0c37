//! The HTTP API's wire types, shared by `berth-api` (server) and `berth-client`.
//!
//! Architecture invariant: no behaviour, only shapes. Machines and events travel as
//! `berth_types::MachineRecord` and `berth_types::Event`, so the API shows exactly what is stored.
//! Request bodies reject unknown fields, so a misspelt field is an error, not a silent default.

use std::collections::BTreeMap;

use berth_types::time::HumanDuration;
use berth_types::{Event, MachineConfig, Timestamp};
use serde::{Deserialize, Serialize};

pub use berth_types::{MachineRecord as Machine, State};

/// Every non-2xx response body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A sentence for a person.
    pub error: String,
    /// A stable code for a program: `invalid`, `not_found`, `conflict`, `lease_required`,
    /// `lease_mismatch`, `overloaded`, `cordoned`, `unavailable`, `unauthorized`, `timeout`,
    /// `too_large`, `expired`, `internal`.
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

/// `GET /v1/host`.
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
    pub capabilities: serde_json::Value,
    /// What supervision has seen lately (reattached workloads, last reconciliation, orphans).
    pub supervision: serde_json::Value,
    /// The fleet export (host id, connection, acknowledged seq, lag, holes); absent when off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<serde_json::Value>,
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

/// `GET /v1/db/stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DbStats {
    /// Length of the file (`ls -l`).
    pub file_size_bytes: u64,
    /// Bytes of the file holding data rather than holes (its disk usage before compression);
    /// redb extends its file sparsely, so after a growth step or a compaction this can be well
    /// below the length.
    #[serde(default)]
    pub file_allocated_bytes: u64,
    /// Bytes holding data.
    pub live_bytes: u64,
    /// `1 - live/used`, used being the disk space the file occupies (at most its length): the
    /// share of the written file that is garbage, what a compaction would give back.
    pub garbage_ratio: f64,
    /// Rows per table.
    pub tables: BTreeMap<String, u64>,
    /// The last compaction, if any.
    pub last_compaction: Option<serde_json::Value>,
    /// The next event seq.
    pub next_seq: u64,
    /// The history index is complete up to this seq.
    pub history_seq: u64,
    /// The oldest seq still in the event log (retention removed older ones); a consumer behind
    /// it gets `expired` and resyncs from `next_seq - 1`.
    #[serde(default)]
    pub first_seq: Option<u64>,
    /// The compaction running now, if any (`phase`, `rows_copied`, ...).
    #[serde(default)]
    pub compaction: Option<serde_json::Value>,
}

/// One entry of `GET /v1/db/slow-ops`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlowOp {
    /// Operation name.
    pub op: String,
    /// How long it took.
    pub duration_ms: f64,
    /// The threshold it exceeded.
    pub threshold_ms: f64,
    /// When.
    pub at: Timestamp,
    /// Writes in the batch, or rows read.
    pub batch_size: usize,
    /// Bytes written or read.
    pub bytes: usize,
    /// What it was doing.
    pub detail: String,
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
