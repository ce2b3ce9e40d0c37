//! Timing of every database operation, by name, through the `metrics` facade, and the slow-op hook.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_types::Timestamp;

/// Histogram of database operation durations, labelled `op`.
pub const OP_DURATION: &str = "berth_db_operation_duration_seconds";
/// Counter of operations slower than the threshold, labelled `op`.
pub const SLOW_OPS: &str = "berth_db_slow_operations_total";

/// Every `op` label the store times. An exporter can register each op's slow-op counter at zero
/// up front, so that the first slow operation is an *increase* a rate-based alert can see.
pub const OPS: &[&str] = &[
    "open",
    "commit",
    "get_machine",
    "list_machines",
    "history",
    "events",
    "operations",
    "operation",
    "stats",
    "check",
    "backup",
];

/// A database operation that exceeded the slow-op threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct SlowOp {
    /// Operation name (`commit`, `get_machine`, ...).
    pub op: &'static str,
    /// How long it took.
    pub duration: Duration,
    /// The threshold it exceeded.
    pub threshold: Duration,
    /// When it finished.
    pub at: Timestamp,
    /// Writes in the batch (commits) or rows read.
    pub batch_size: usize,
    /// Bytes of records written (commits) or read.
    pub bytes: usize,
    /// What it was doing, for the log line.
    pub detail: String,
}

/// Called for every slow operation (from the thread that ran it; keep it cheap).
pub type SlowOpHook = Arc<dyn Fn(&SlowOp) + Send + Sync>;

/// Times operations and fires the hook.
#[derive(Clone)]
pub(crate) struct Timings {
    pub threshold: Duration,
    pub hook: Option<SlowOpHook>,
    pub enabled: bool,
}

impl std::fmt::Debug for Timings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timings")
            .field("threshold", &self.threshold)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl Timings {
    /// Starts timing (returns `None` when timing is off, so the off path costs nothing).
    #[inline]
    pub fn start(&self) -> Option<Instant> {
        self.enabled.then(Instant::now)
    }

    /// Records an operation that began at `start`.
    #[inline]
    pub fn finish(
        &self,
        op: &'static str,
        start: Option<Instant>,
        batch_size: usize,
        bytes: usize,
        detail: impl FnOnce() -> String,
    ) {
        let Some(start) = start else { return };
        debug_assert!(OPS.contains(&op), "{op} is missing from timing::OPS");
        let duration = start.elapsed();
        metrics::histogram!(OP_DURATION, "op" => op).record(duration.as_secs_f64());
        if duration > self.threshold {
            metrics::counter!(SLOW_OPS, "op" => op).increment(1);
            let slow = SlowOp {
                op,
                duration,
                threshold: self.threshold,
                at: Timestamp::now(),
                batch_size,
                bytes,
                detail: detail(),
            };
            tracing::warn!(
                op = slow.op,
                duration_ms = slow.duration.as_secs_f64() * 1e3,
                threshold_ms = slow.threshold.as_secs_f64() * 1e3,
                batch_size = slow.batch_size,
                bytes = slow.bytes,
                detail = %slow.detail,
                "slow database operation"
            );
            if let Some(hook) = &self.hook {
                hook(&slow);
            }
        }
    }
}
