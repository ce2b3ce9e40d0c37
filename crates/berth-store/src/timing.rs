//! Timing of every database operation, by name, and the slow-op hook.
//!
//! Durations go into the store's own histograms (fixed buckets, a few relaxed atomic adds per
//! operation, sharded so that threads reading at once do not contend), which an exporter renders
//! from [`Store::op_durations`](crate::Store::op_durations). The `metrics` facade's histograms
//! keep every sample until a render drains them, which cost about 200 ns per operation and ~10% of
//! read throughput. Slow operations, rare by definition, are counted through the facade.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
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
    "config_versions",
];

/// Upper bounds (seconds, Prometheus `le`) of the operation-duration buckets: from 0.5 ms (a
/// read, a fast commit) to 60 s (a long compaction pause, a stream consumer that fell behind).
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Stripes per histogram; a thread always records into the same one.
const SHARDS: usize = 4;

/// One stripe: a count per bucket (the last one is `+Inf`) and the sum, on its own cache lines.
#[repr(align(64))]
#[derive(Default)]
struct Shard {
    counts: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

/// The durations of one kind of operation since the store opened.
#[derive(Default)]
struct OpHistogram {
    shards: [Shard; SHARDS],
}

fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

impl OpHistogram {
    fn record(&self, d: Duration) {
        let secs = d.as_secs_f64();
        // The first bucket whose bound is at least `secs` (`le` is inclusive); past the last,
        // `+Inf`.
        let i = DURATION_BUCKETS.partition_point(|b| *b < secs);
        let shard = &self.shards[shard_index()];
        shard.counts[i].fetch_add(1, Relaxed);
        shard
            .sum_nanos
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    fn snapshot(&self, op: &'static str) -> OpDurations {
        let mut counts = [0u64; DURATION_BUCKETS.len() + 1];
        let mut sum_nanos = 0u64;
        for shard in &self.shards {
            for (total, c) in counts.iter_mut().zip(&shard.counts) {
                *total += c.load(Relaxed);
            }
            sum_nanos = sum_nanos.wrapping_add(shard.sum_nanos.load(Relaxed));
        }
        let mut cumulative = 0;
        let buckets = DURATION_BUCKETS
            .iter()
            .zip(counts)
            .map(|(le, c)| {
                cumulative += c;
                (*le, cumulative)
            })
            .collect();
        OpDurations {
            op,
            buckets,
            count: counts.iter().sum(),
            sum_seconds: sum_nanos as f64 / 1e9,
        }
    }
}

/// How long one kind of database operation took, since the store opened: a Prometheus
/// histogram's cumulative buckets, count and sum.
#[derive(Debug, Clone, PartialEq)]
pub struct OpDurations {
    /// The operation (one of [`OPS`]).
    pub op: &'static str,
    /// `(le, operations that took at most le seconds)`, for each of [`DURATION_BUCKETS`].
    pub buckets: Vec<(f64, u64)>,
    /// Operations timed (the `+Inf` bucket).
    pub count: u64,
    /// Their total duration.
    pub sum_seconds: f64,
}

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
    /// One histogram per entry of [`OPS`].
    histograms: Arc<[OpHistogram]>,
    /// One slow-op counter per entry of [`OPS`], resolved at the op's first slow run (the
    /// recorder is installed by then: berthd installs it before it opens the store).
    slow: Arc<[OnceLock<metrics::Counter>]>,
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
    /// Timings with the given threshold and hook; `enabled: false` makes them free.
    pub fn new(threshold: Duration, hook: Option<SlowOpHook>, enabled: bool) -> Self {
        Self {
            threshold,
            hook,
            enabled,
            histograms: OPS.iter().map(|_| OpHistogram::default()).collect(),
            slow: OPS.iter().map(|_| OnceLock::new()).collect(),
        }
    }

    fn index(op: &'static str) -> Option<usize> {
        OPS.iter().position(|o| *o == op)
    }

    /// Every op's durations so far.
    pub fn snapshot(&self) -> Vec<OpDurations> {
        OPS.iter()
            .zip(self.histograms.iter())
            .map(|(op, h)| h.snapshot(op))
            .collect()
    }

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
        let index = Self::index(op);
        if let Some(h) = index.and_then(|i| self.histograms.get(i)) {
            h.record(duration);
        }
        if duration > self.threshold {
            match index.and_then(|i| self.slow.get(i)) {
                Some(c) => c
                    .get_or_init(|| metrics::counter!(SLOW_OPS, "op" => op))
                    .increment(1),
                None => metrics::counter!(SLOW_OPS, "op" => op).increment(1),
            }
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

/// Times empty operations through the same path as every store operation, to measure what timing
/// itself costs (`cargo xtask bench metrics`).
#[derive(Debug)]
pub struct TimingProbe {
    timings: Timings,
}

impl TimingProbe {
    /// A probe whose operations are never slow.
    pub fn new() -> Self {
        Self {
            timings: Timings::new(Duration::MAX, None, true),
        }
    }

    /// What the probe has recorded.
    pub fn durations(&self) -> Vec<OpDurations> {
        self.timings.snapshot()
    }

    /// Times one empty operation named `op` (one of [`OPS`]).
    pub fn time_empty(&self, op: &'static str) {
        let start = self.timings.start();
        self.timings.finish(op, start, 0, 0, String::new);
    }
}

impl Default for TimingProbe {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_cumulative_buckets_with_le_inclusive() {
        let t = Timings::new(Duration::MAX, None, true);
        let i = Timings::index("commit").unwrap_or(usize::MAX);
        let h = &t.histograms[i];
        h.record(Duration::from_micros(500)); // exactly the first bound: le is inclusive
        h.record(Duration::from_millis(3));
        h.record(Duration::from_secs(120)); // past the last bound: only +Inf
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        t.histograms[i].record(Duration::from_micros(700));
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().ok();
        }
        let all = t.snapshot();
        assert_eq!(all.len(), OPS.len());
        let d = &all[i];
        assert_eq!(d.op, "commit");
        assert_eq!(d.count, 4003);
        assert_eq!(d.buckets[0], (0.0005, 1));
        assert_eq!(d.buckets[1], (0.001, 4001));
        assert_eq!(d.buckets[2], (0.0025, 4001));
        assert_eq!(d.buckets[3], (0.005, 4002));
        assert_eq!(d.buckets.last(), Some(&(60.0, 4002)));
        let expected = 0.0005 + 0.003 + 120.0 + 4000.0 * 0.0007;
        assert!((d.sum_seconds - expected).abs() < 1e-6, "{}", d.sum_seconds);
        assert!(
            all.iter()
                .filter(|d| d.op != "commit")
                .all(|d| d.count == 0)
        );
    }

    #[test]
    fn switched_off_timing_records_nothing() {
        let t = Timings::new(Duration::MAX, None, false);
        let start = t.start();
        t.finish("commit", start, 1, 0, String::new);
        assert!(t.snapshot().iter().all(|d| d.count == 0));
    }
}
