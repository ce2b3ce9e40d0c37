//! `/v1/db/...`: stats, compaction, check and slow operations.

use std::collections::BTreeMap;

use berth_types::Timestamp;
use serde::{Deserialize, Serialize};

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
    pub last_compaction: Option<CompactionReport>,
    /// The next event seq.
    pub next_seq: u64,
    /// The history index is complete up to this seq.
    pub history_seq: u64,
    /// The oldest seq still in the event log (retention removed older ones); a consumer behind
    /// it gets `expired` and resyncs from `next_seq - 1`.
    #[serde(default)]
    pub first_seq: Option<u64>,
    /// The compaction running now, if any.
    #[serde(default)]
    pub compaction: Option<CompactionProgress>,
}

/// What a finished compaction did (`POST /v1/db/compact`, and the last one in the stats).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompactionReport {
    /// When it started.
    pub at: Timestamp,
    /// How long it took, from the start until the old file's space was given back.
    pub duration_ms: u64,
    /// File length before.
    pub size_before: u64,
    /// File length after.
    pub size_after: u64,
    /// Disk space the file occupied before (0 in reports written before berth recorded it).
    #[serde(default)]
    pub allocated_before: u64,
    /// Disk space the file occupies after.
    #[serde(default)]
    pub allocated_after: u64,
    /// Live bytes before.
    pub live_bytes: u64,
    /// The longest time writers were paused (the swap).
    pub max_pause_ms: f64,
    /// Rows copied from the first snapshot.
    pub rows_copied: u64,
    /// Catch-up rounds before the swap.
    pub catch_up_rounds: u32,
    /// Keys copied again because they were written during the compaction.
    pub keys_caught_up: u64,
}

/// A compaction in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompactionProgress {
    /// When it started.
    pub started_at: Timestamp,
    /// `space`, `copy`, `catch-up` or `swap`.
    pub phase: String,
    /// Rows copied so far from the first snapshot.
    pub rows_copied: u64,
    /// Catch-up rounds so far.
    pub catch_up_rounds: u32,
}

/// `GET /v1/db/check` (and `berth db check --offline --json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DbCheck {
    /// Both the page check and the consistency check passed.
    pub ok: bool,
    /// The page check passed (`pages.passed`).
    pub integrity_passed: bool,
    /// Every page's checksum.
    pub pages: PageCheck,
    /// Offline only: the file was not closed cleanly and `--repair` repaired it first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repaired_on_open: Option<bool>,
    /// The database's schema version.
    pub schema_version: u32,
    /// Every record and the cross-table invariants.
    pub report: CheckReport,
}

/// What the page check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageCheck {
    /// Every page reachable from the last commit matches its checksum.
    pub passed: bool,
    /// What was verified, or what failed.
    pub detail: String,
}

/// What the consistency check found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// Machines examined.
    pub machines: u64,
    /// Events examined.
    pub events: u64,
    /// Lowest and highest seq in the event log.
    pub seq_range: Option<(u64, u64)>,
    /// Operations in flight.
    pub operations: u64,
    /// Every invariant violation found; empty means healthy.
    pub problems: Vec<String>,
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
