//! The agent's metrics: what berth exports, and the per-machine series that must forget dead
//! machines.
//!
//! Two kinds of series, two mechanisms:
//!
//! - Series with a *bounded* label set (database ops, API routes, machines by state, the agent
//!   process) go through the `metrics` facade; `berthd` installs the Prometheus exporter.
//! - Series labelled `machine_id` are *never* registered with the exporter, whose registry keeps a
//!   series until an idle timeout (it has no API to remove one). They are rendered at scrape time
//!   from [`MachineSeries`], a map that follows the store's event log: a machine's entry changes in
//!   the same catch-up that sees its transition. Leaving `started` drops its CPU and memory
//!   samples; `destroyed` (or its record disappearing) drops the entry, so no series with its
//!   `machine_id` can be rendered again. A scrape first catches up with every committed event, so
//!   it never shows a machine as it was before an acknowledged transition.

//!
//! This file is the catalogue (every metric's name, kind, unit, labels and help); the map of
//! per-machine series is in `series.rs`, the follower that keeps it in step with the event log
//! and renders a scrape in `follower.rs`.

mod follower;
mod series;

pub use follower::Telemetry;
pub use series::MachineSeries;

use std::fmt::Write as _;
use std::time::Duration;

use berth_types::state::ALL_STATES;
use metrics::Unit;

/// Histogram buckets (seconds) for every berth histogram: from 0.5 ms (a read, a fast commit) to
/// 60 s (a long compaction pause, a stream consumer that fell behind).
/// The same as the store's own operation histograms.
pub const BUCKETS: &[f64] = berth_store::DURATION_BUCKETS;

/// How often the exporter's upkeep must run: `metrics-exporter-prometheus` keeps every recorded
/// histogram sample until a render or an upkeep drains it into the buckets, so without upkeep an
/// agent nobody scrapes would grow without bound.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets when berthd restarts).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Bucketed observations (`_bucket`, `_sum`, `_count`).
    Histogram,
}

/// One metric berth exports.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// Its name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Its unit, for the exporter's metadata.
    pub unit: Option<Unit>,
    /// Its labels (besides those Prometheus adds).
    pub labels: &'static [&'static str],
    /// The HELP text.
    pub help: &'static str,
}

const fn m(
    name: &'static str,
    kind: Kind,
    unit: Option<Unit>,
    labels: &'static [&'static str],
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind,
        unit,
        labels,
        help,
    }
}

use Kind::{Counter, Gauge, Histogram};

/// Every metric berth exports through the exporter (bounded label sets).
pub const METRICS: &[Metric] = &[
    m(
        berth_store::SLOW_OPS,
        Counter,
        Some(Unit::Count),
        &["op"],
        "Database operations slower than db.slow_op_threshold; each is also a WARN log line and an entry of GET /v1/db/slow-ops.",
    ),
    m(
        "berth_db_writes_refused_total",
        Counter,
        Some(Unit::Count),
        &["reason"],
        "Writes refused at once because the writer's queue was full.",
    ),
    m(
        "berth_db_file_size_bytes",
        Gauge,
        Some(Unit::Bytes),
        &[],
        "Length of the database file. redb extends it sparsely by doubling, so it can be up to twice berth_db_file_allocated_bytes.",
    ),
    m(
        "berth_db_file_allocated_bytes",
        Gauge,
        Some(Unit::Bytes),
        &[],
        "Bytes of the database file that hold written pages rather than holes, at least berth_db_live_bytes (the difference is garbage a compaction gives back).",
    ),
    m(
        "berth_db_live_bytes",
        Gauge,
        Some(Unit::Bytes),
        &[],
        "Bytes of the database file holding data (stored, metadata and fragmented bytes of every table).",
    ),
    m(
        "berth_db_compactions_total",
        Counter,
        Some(Unit::Count),
        &["result"],
        "Online compactions, by result (ok, failed).",
    ),
    m(
        "berth_db_compaction_pause_seconds",
        Histogram,
        Some(Unit::Seconds),
        &[],
        "The longest stall writers saw in each online compaction.",
    ),
    m(
        "berth_machines",
        Gauge,
        Some(Unit::Count),
        &["state"],
        "Machines on this host by state (destroyed machines are not counted).",
    ),
    m(
        "berth_machine_transitions_total",
        Counter,
        Some(Unit::Count),
        &["to"],
        "Machine state transitions committed, by the state entered.",
    ),
    m(
        "berth_api_requests_total",
        Counter,
        Some(Unit::Count),
        &["route", "method", "status"],
        "API requests, by route template, method and status code.",
    ),
    m(
        "berth_api_request_duration_seconds",
        Histogram,
        Some(Unit::Seconds),
        &["route"],
        "API request durations, by route template.",
    ),
    m(
        "berth_api_refused_total",
        Counter,
        Some(Unit::Count),
        &["lane"],
        "Mutations refused with 429 because the lane's bound on concurrent mutations was reached.",
    ),
    m(
        "berth_api_connections",
        Gauge,
        Some(Unit::Count),
        &["lane"],
        "Connections open on each API lane (socket, tcp).",
    ),
    m(
        "berth_api_connections_refused_total",
        Counter,
        Some(Unit::Count),
        &["lane"],
        "Connections closed at accept because the lane held api.max_connections (for tcp, clamped to what the open-files limit leaves).",
    ),
    m(
        "berth_events_last_seq",
        Gauge,
        Some(Unit::Count),
        &[],
        "Seq of the last committed event of the host-wide event stream.",
    ),
    m(
        "berth_events_stream_lag_seconds",
        Histogram,
        Some(Unit::Seconds),
        &[],
        "Event-stream lag: for each GET /v1/events response that returns events, the time from the commit of its oldest event to its delivery.",
    ),
    m(
        "berth_reconcile_blocked",
        Gauge,
        Some(Unit::Count),
        &[],
        "1 while the blast-radius guard blocks a reconciliation pass (an operator must approve it).",
    ),
    m(
        "berth_guard_blocked_total",
        Counter,
        Some(Unit::Count),
        &["action"],
        "Automated decisions (restart, reconcile) held back by the blast-radius guard.",
    ),
    m(
        "berth_guard_held",
        Gauge,
        Some(Unit::Count),
        &[],
        "Decisions the blast-radius guard holds for an operator's approval (berth host approve).",
    ),
    m(
        "berth_machines_unknown",
        Gauge,
        Some(Unit::Count),
        &[],
        "Machines whose workload's state could not be read at their last observation (EMFILE, EACCES, EIO, a garbled file): nothing is recorded for them until it can.",
    ),
    m(
        "berth_process_resident_memory_bytes",
        Gauge,
        Some(Unit::Bytes),
        &[],
        "Resident memory of berthd.",
    ),
    m(
        "berth_process_open_fds",
        Gauge,
        Some(Unit::Count),
        &[],
        "Open file descriptors of berthd.",
    ),
    m(
        "berth_process_max_fds",
        Gauge,
        Some(Unit::Count),
        &[],
        "The limit on open file descriptors of berthd.",
    ),
    m(
        "berth_process_start_time_seconds",
        Gauge,
        Some(Unit::Seconds),
        &[],
        "When berthd started, in seconds since the Unix epoch.",
    ),
    m(
        "berth_process_uptime_seconds",
        Gauge,
        Some(Unit::Seconds),
        &[],
        "Seconds since berthd started.",
    ),
    m(
        "berth_build_info",
        Gauge,
        None,
        &["version"],
        "Always 1; the version label says which berthd runs.",
    ),
    m(
        berth_image::IMAGES,
        Gauge,
        Some(Unit::Count),
        &[],
        "Images in the host's image store (unpacked roots, each shared by every machine of the image).",
    ),
    m(
        berth_image::IMAGE_BYTES,
        Gauge,
        Some(Unit::Bytes),
        &[],
        "Disk space the image store's unpacked roots occupy, like du.",
    ),
    m(
        berth_image::PULLS_TOTAL,
        Counter,
        Some(Unit::Count),
        &["result"],
        "Image pulls from registries (result: ok, error), at create or POST /v1/images/pull.",
    ),
    m(
        berth_image::DISK_SIZE_BYTES,
        Gauge,
        Some(Unit::Bytes),
        &[],
        "Size of the file system holding the data directory (and the image store).",
    ),
    m(
        berth_image::DISK_AVAILABLE_BYTES,
        Gauge,
        Some(Unit::Bytes),
        &[],
        "Bytes still available to berthd on the file system holding the data directory.",
    ),
    m(
        "berth_export_lag_events",
        Gauge,
        Some(Unit::Count),
        &[],
        "Events committed but not yet acknowledged by the fleet export target (NATS JetStream).",
    ),
    m(
        "berth_export_published_total",
        Counter,
        Some(Unit::Count),
        &[],
        "Events the fleet export target stored (duplicates it dropped not counted).",
    ),
    m(
        "berth_export_hole_events_total",
        Counter,
        Some(Unit::Count),
        &[],
        "Events retention removed before they were exported (a hole in the fleet stream: consumers must resync the host).",
    ),
    m(
        "berth_export_connected",
        Gauge,
        None,
        &[],
        "1 while the fleet export is connected to NATS and its stream exists.",
    ),
];

/// Durations of database operations, rendered at scrape time from the store's own histograms
/// ([`Store::op_durations`]), which cost far less per operation than the facade's.
pub const DB_OP_DURATION: Metric = m(
    berth_store::OP_DURATION,
    Histogram,
    Some(Unit::Seconds),
    &["op"],
    "Duration of database operations (op: commit is one group commit, fsync included; the others are reads).",
);

/// berthd's CPU time, rendered at scrape time (a fractional counter, which the facade's integer
/// counters cannot carry).
pub const PROCESS_CPU: Metric = m(
    "berth_process_cpu_seconds_total",
    Counter,
    Some(Unit::Seconds),
    &[],
    "CPU time (user and system) berthd has used.",
);

/// The per-machine metrics, rendered from [`MachineSeries`] (every one labelled `machine_id`).
pub const MACHINE_METRICS: &[Metric] = &[
    m(
        "berth_machine_up",
        Gauge,
        None,
        &["machine_id"],
        "1 while the machine is started (its workload runs), 0 in any other state; gone once the machine is destroyed.",
    ),
    m(
        "berth_machine_restarts_total",
        Counter,
        Some(Unit::Count),
        &["machine_id"],
        "Restarts by the restart policy since the last start a user asked for (a user start resets it).",
    ),
    m(
        "berth_machine_cpu_seconds_total",
        Counter,
        Some(Unit::Seconds),
        &["machine_id"],
        "CPU time of the machine's workload (its cgroup, else its process); present only while the machine is started.",
    ),
    m(
        "berth_machine_memory_bytes",
        Gauge,
        Some(Unit::Bytes),
        &["machine_id"],
        "Memory of the machine's workload (cgroup memory.current, else the RSS of its processes); present only while the machine is started.",
    ),
    m(
        "berth_machine_transient_seconds",
        Gauge,
        Some(Unit::Seconds),
        &["machine_id", "state"],
        "Seconds the machine has been in its current transient state (starting, stopping, restarting, destroying); present only in those states. Over 300 the machine is wedged.",
    ),
];

/// `berth_machine_check_up{machine_id,check}`: rendered at scrape time from the checks' state,
/// for the machines the per-machine series still track (the dead-machine rule).
pub const CHECK_UP: Metric = m(
    "berth_machine_check_up",
    Gauge,
    None,
    &["machine_id", "check"],
    "1 while the machine's health check passes, 0 while it is critical or unknown; gone once the machine is destroyed.",
);

/// Describes every exported metric to the installed recorder (HELP and unit), and registers the
/// counters an alert takes an `increase()` of at zero, so that their first increment is seen.
pub fn describe() {
    for d in METRICS {
        let unit = d.unit;
        match (d.kind, unit) {
            (Counter, Some(u)) => metrics::describe_counter!(d.name, u, d.help),
            (Counter, None) => metrics::describe_counter!(d.name, d.help),
            (Gauge, Some(u)) => metrics::describe_gauge!(d.name, u, d.help),
            (Gauge, None) => metrics::describe_gauge!(d.name, d.help),
            (Histogram, Some(u)) => metrics::describe_histogram!(d.name, u, d.help),
            (Histogram, None) => metrics::describe_histogram!(d.name, d.help),
        }
    }
    for op in berth_store::OPS {
        metrics::counter!(berth_store::SLOW_OPS, "op" => *op).increment(0);
    }
    for result in ["ok", "failed"] {
        metrics::counter!("berth_db_compactions_total", "result" => result).increment(0);
    }
    for st in ALL_STATES {
        metrics::counter!("berth_machine_transitions_total", "to" => st.as_str()).increment(0);
    }
    metrics::counter!("berth_db_writes_refused_total", "reason" => "overloaded").increment(0);
    // A histogram with no observation yet still renders (all buckets at zero).
    let _ = metrics::histogram!("berth_db_compaction_pause_seconds");
    let _ = metrics::histogram!("berth_events_stream_lag_seconds");
    metrics::gauge!("berth_reconcile_blocked").set(0.0);
    for a in berth_machine::GuardAction::ALL {
        metrics::counter!("berth_guard_blocked_total", "action" => a.as_str()).increment(0);
    }
    metrics::gauge!("berth_guard_held").set(0.0);
    metrics::gauge!("berth_machines_unknown").set(0.0);
    metrics::gauge!("berth_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    // Fleet export (berth-export updates them; zero while export is off).
    metrics::gauge!("berth_export_lag_events").set(0.0);
    metrics::counter!("berth_export_published_total").increment(0);
    metrics::counter!("berth_export_hole_events_total").increment(0);
    metrics::gauge!("berth_export_connected").set(0.0);
}

/// Writes a family's HELP and TYPE lines.
pub(crate) fn family(out: &mut String, d: &Metric) {
    let kind = match d.kind {
        Counter => "counter",
        Gauge => "gauge",
        Histogram => "histogram",
    };
    let _ = write!(
        out,
        "# HELP {} {}\n# TYPE {} {kind}\n",
        d.name, d.help, d.name
    );
}
