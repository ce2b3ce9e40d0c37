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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_driver::Driver;
use berth_driver::usage::Usage;
use berth_store::{Store, StoreError};
use berth_types::state::ALL_STATES;
use berth_types::{MachineId, MachineRecord, State, Timestamp};
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

/// Appends the store's operation histograms.
fn render_op_durations(out: &mut String, ops: &[berth_store::OpDurations]) {
    family(out, &DB_OP_DURATION);
    let name = DB_OP_DURATION.name;
    for d in ops {
        for (le, n) in &d.buckets {
            let _ = writeln!(out, "{name}_bucket{{op=\"{}\",le=\"{le}\"}} {n}", d.op);
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{op=\"{}\",le=\"+Inf\"}} {}",
            d.op, d.count
        );
        let _ = writeln!(out, "{name}_sum{{op=\"{}\"}} {}", d.op, d.sum_seconds);
        let _ = writeln!(out, "{name}_count{{op=\"{}\"}} {}", d.op, d.count);
    }
}

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

/// What the metrics know of one machine.
#[derive(Debug, Clone)]
struct Tracked {
    state: State,
    /// When its current state began (its last transition).
    since: Timestamp,
    pid: Option<u32>,
    restarts: u32,
    /// The last sample of its workload, only while it is started (and for that pid).
    usage: Option<Usage>,
}

/// The per-machine series: one entry per machine that is not destroyed.
///
/// Invariant: an entry exists only for a machine whose last observed record is not destroyed,
/// and it holds usage only while that record is `started` with the pid the usage was read for.
#[derive(Debug, Default)]
pub struct MachineSeries {
    machines: BTreeMap<MachineId, Tracked>,
}

impl MachineSeries {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes in a machine's current record: a destroyed one is forgotten; one that left
    /// `started` (or runs another pid) loses its usage.
    pub fn observe(&mut self, rec: &MachineRecord) {
        if rec.state == State::Destroyed {
            self.machines.remove(&rec.id);
            return;
        }
        let t = self.machines.entry(rec.id.clone()).or_insert(Tracked {
            state: rec.state,
            since: rec.updated_at,
            pid: rec.pid,
            restarts: rec.restarts,
            usage: None,
        });
        if !rec.state.expects_process() || t.pid != rec.pid {
            t.usage = None;
        }
        t.state = rec.state;
        t.since = rec.updated_at;
        t.pid = rec.pid;
        t.restarts = rec.restarts;
    }

    /// Forgets a machine whose record is gone.
    pub fn forget(&mut self, id: &MachineId) {
        self.machines.remove(id);
    }

    /// Forgets everything (before a full resync).
    pub fn clear(&mut self) {
        self.machines.clear();
    }

    /// Machines whose workload runs, with its pid: what a sampler should read.
    pub fn running(&self) -> Vec<(MachineId, u32)> {
        self.machines
            .iter()
            .filter(|(_, t)| t.state.expects_process())
            .filter_map(|(id, t)| Some((id.clone(), t.pid?)))
            .collect()
    }

    /// Stores a usage sample read for `pid`, unless the machine moved on meanwhile (stopped,
    /// destroyed, restarted as another pid): a late sample never resurrects a series.
    pub fn set_usage(&mut self, id: &MachineId, pid: u32, usage: Usage) {
        if let Some(t) = self.machines.get_mut(id)
            && t.state.expects_process()
            && t.pid == Some(pid)
        {
            t.usage = Some(usage);
        }
    }

    /// Machines per state (every state but destroyed, zeros included).
    pub fn counts(&self) -> BTreeMap<State, u64> {
        let mut counts: BTreeMap<State, u64> = ALL_STATES
            .into_iter()
            .filter(|s| *s != State::Destroyed)
            .map(|s| (s, 0))
            .collect();
        for t in self.machines.values() {
            *counts.entry(t.state).or_insert(0) += 1;
        }
        counts
    }

    /// Machines tracked.
    pub fn len(&self) -> usize {
        self.machines.len()
    }

    /// Whether no machine is tracked.
    pub fn is_empty(&self) -> bool {
        self.machines.is_empty()
    }

    /// Appends the per-machine series in the Prometheus text format, as of `now`.
    pub fn render(&self, now: Timestamp, out: &mut String) {
        let [up, restarts, cpu, memory, transient] = MACHINE_METRICS else {
            return;
        };
        if self.machines.is_empty() {
            return;
        }
        family(out, up);
        for (id, t) in &self.machines {
            let v = u8::from(t.state.expects_process());
            let _ = writeln!(out, "{}{{machine_id=\"{}\"}} {v}", up.name, id.as_str());
        }
        family(out, restarts);
        for (id, t) in &self.machines {
            let _ = writeln!(
                out,
                "{}{{machine_id=\"{}\"}} {}",
                restarts.name,
                id.as_str(),
                t.restarts
            );
        }
        let sampled = || {
            self.machines
                .iter()
                .filter_map(|(id, t)| Some((id, t.usage?)))
        };
        if sampled().next().is_some() {
            family(out, cpu);
            for (id, u) in sampled() {
                let _ = writeln!(
                    out,
                    "{}{{machine_id=\"{}\"}} {}",
                    cpu.name,
                    id.as_str(),
                    u.cpu_seconds
                );
            }
            family(out, memory);
            for (id, u) in sampled() {
                let _ = writeln!(
                    out,
                    "{}{{machine_id=\"{}\"}} {}",
                    memory.name,
                    id.as_str(),
                    u.memory_bytes
                );
            }
        }
        let wedgeable = || self.machines.iter().filter(|(_, t)| t.state.is_transient());
        if wedgeable().next().is_some() {
            family(out, transient);
            for (id, t) in wedgeable() {
                let _ = writeln!(
                    out,
                    "{}{{machine_id=\"{}\",state=\"{}\"}} {:.3}",
                    transient.name,
                    id.as_str(),
                    t.state.as_str(),
                    now.saturating_since(t.since).as_secs_f64()
                );
            }
        }
    }
}

/// Writes a family's HELP and TYPE lines.
fn family(out: &mut String, d: &Metric) {
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

/// The map and how far into the event log it has followed.
#[derive(Debug)]
struct Followed {
    series: MachineSeries,
    last_seq: u64,
}

/// The agent's telemetry: per-machine series following the event log, a sampler of workload
/// usage and of the database's size, and the agent process's own figures.
#[derive(Debug)]
pub struct Telemetry {
    store: Store,
    driver: Arc<Driver>,
    followed: Mutex<Followed>,
    started: Instant,
    started_at: Timestamp,
}

/// Events read per step of a catch-up.
const CATCH_UP_PAGE: usize = 1024;

impl Telemetry {
    /// Builds the per-machine map from the store's records.
    pub fn new(store: Store, driver: Arc<Driver>) -> Result<Arc<Self>, StoreError> {
        let t = Telemetry {
            store,
            driver,
            followed: Mutex::new(Followed {
                series: MachineSeries::new(),
                last_seq: 0,
            }),
            started: Instant::now(),
            started_at: Timestamp::now(),
        };
        {
            let mut f = t.lock();
            t.resync(&mut f)?;
        }
        Ok(Arc::new(t))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Followed> {
        self.followed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rebuilds the map from every record (at start, or when the log was trimmed past us).
    fn resync(&self, f: &mut Followed) -> Result<(), StoreError> {
        // The seq first: the records read next are at least that new, and the events after it
        // are applied again on top (observing a record is idempotent).
        let last_seq = self.store.last_seq()?;
        let records = self.store.machines()?;
        f.series.clear();
        for rec in &records {
            f.series.observe(rec);
        }
        f.last_seq = last_seq;
        Ok(())
    }

    /// Applies every event committed since the last catch-up: counts transitions and re-reads the
    /// record of each machine they touched (the store's record is the truth; nothing is folded
    /// here). Holds the lock throughout, so a scrape never sees a half-applied catch-up.
    pub fn catch_up(&self) {
        let mut f = self.lock();
        let mut touched = BTreeSet::new();
        loop {
            match self.store.events_after(f.last_seq, CATCH_UP_PAGE) {
                Ok(events) => {
                    let Some(last) = events.last() else { break };
                    f.last_seq = last.seq;
                    for ev in &events {
                        metrics::counter!("berth_machine_transitions_total", "to" => ev.to.as_str())
                            .increment(1);
                        touched.insert(ev.machine_id.clone());
                    }
                    if events.len() < CATCH_UP_PAGE {
                        break;
                    }
                }
                Err(StoreError::Expired { .. }) => {
                    // Retention trimmed events we had not seen: start again from the records.
                    touched.clear();
                    if let Err(e) = self.resync(&mut f) {
                        tracing::warn!(error = %e, "metrics: could not resync the per-machine series");
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: could not read the event log");
                    break;
                }
            }
        }
        for id in &touched {
            match self.store.machine(id) {
                Ok(Some(rec)) => f.series.observe(&rec),
                Ok(None) => f.series.forget(id),
                Err(e) => {
                    tracing::warn!(machine = %id, error = %e, "metrics: could not read a machine")
                }
            }
        }
        metrics::gauge!("berth_events_last_seq").set(f.last_seq as f64);
        for (state, n) in f.series.counts() {
            metrics::gauge!("berth_machines", "state" => state.as_str()).set(n as f64);
        }
    }

    /// Reads the usage of every running workload and stores it (outside the lock while reading).
    pub fn sample_machines(&self) {
        self.catch_up();
        let running = self.lock().series.running();
        let samples: Vec<_> = running
            .into_iter()
            .filter_map(|(id, pid)| {
                let u = self
                    .driver
                    .workload_usage(id.as_str(), i32::try_from(pid).ok()?)?;
                Some((id, pid, u))
            })
            .collect();
        let mut f = self.lock();
        for (id, pid, u) in samples {
            f.series.set_usage(&id, pid, u);
        }
    }

    /// Updates the database size gauges (`Store::stats` walks every table: done periodically,
    /// not on every scrape).
    pub fn sample_db(&self) {
        match self.store.stats() {
            Ok(st) => {
                metrics::gauge!("berth_db_file_size_bytes").set(st.file_size_bytes as f64);
                metrics::gauge!("berth_db_file_allocated_bytes").set(st.used_bytes() as f64);
                metrics::gauge!("berth_db_live_bytes").set(st.live_bytes as f64);
            }
            Err(e) => tracing::warn!(error = %e, "metrics: could not read database stats"),
        }
    }

    /// Updates the agent process's own gauges from `/proc/self`.
    pub fn sample_process(&self) {
        let me = std::process::id() as i32;
        if let Some(p) = berth_driver::usage::process(me) {
            metrics::gauge!("berth_process_resident_memory_bytes").set(p.rss_bytes as f64);
        }
        if let Some(n) = berth_driver::usage::open_fds(me) {
            metrics::gauge!("berth_process_open_fds").set(n as f64);
        }
        if let Some(n) = berth_driver::usage::max_fds(me) {
            metrics::gauge!("berth_process_max_fds").set(n as f64);
        }
        metrics::gauge!("berth_process_start_time_seconds")
            .set(self.started_at.as_nanos() as f64 / 1e9);
        metrics::gauge!("berth_process_uptime_seconds").set(self.started.elapsed().as_secs_f64());
    }

    /// Appends the per-machine series, after catching up with every committed event.
    pub fn render_machines(&self, out: &mut String) {
        self.catch_up();
        self.lock().series.render(Timestamp::now(), out);
    }

    /// A full scrape: the process gauges refreshed and the event log caught up with, `exporter`
    /// (the facade's series) rendered, then the series rendered here (the agent's CPU time and
    /// the per-machine series, as of that catch-up).
    pub fn render(&self, exporter: impl FnOnce() -> String) -> String {
        self.sample_process();
        self.catch_up();
        let mut out = exporter();
        render_op_durations(&mut out, &self.store.op_durations());
        if let Some(p) = berth_driver::usage::process(std::process::id() as i32) {
            family(&mut out, &PROCESS_CPU);
            let _ = writeln!(out, "{} {}", PROCESS_CPU.name, p.cpu_seconds);
        }
        self.lock().series.render(Timestamp::now(), &mut out);
        out
    }

    /// Machines tracked (for tests).
    pub fn tracked(&self) -> usize {
        self.lock().series.len()
    }

    /// Machines per state as of the last catch-up (every state but destroyed): cheap, for the
    /// fleet export's host facts.
    pub fn machine_counts(&self) -> BTreeMap<State, u64> {
        self.lock().series.counts()
    }

    /// Follows the event log (coalescing bursts: at most one catch-up per `follow_every`) and
    /// samples usage every `sample_every`; the database size every `db_every`.
    pub fn spawn(self: &Arc<Self>, sample_every: Duration, db_every: Duration) {
        let me = self.clone();
        let follow_every = Duration::from_millis(100);
        tokio::spawn(async move {
            let mut seq = me.store.subscribe();
            loop {
                me.catch_up();
                if seq.changed().await.is_err() {
                    return;
                }
                tokio::time::sleep(follow_every).await;
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            let mut last_db: Option<Instant> = None;
            loop {
                let m = me.clone();
                let db_due = last_db.is_none_or(|t| t.elapsed() >= db_every);
                let _ = tokio::task::spawn_blocking(move || {
                    m.sample_machines();
                    if db_due {
                        m.sample_db();
                    }
                })
                .await;
                if db_due {
                    last_db = Some(Instant::now());
                }
                tokio::time::sleep(sample_every).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rec(id: &str, state: State, pid: Option<u32>) -> MachineRecord {
        let mut r = MachineRecord::new(
            MachineId::parse(id).unwrap(),
            None,
            berth_types::MachineConfig::command(["/bin/true"]),
            Default::default(),
            Timestamp::from_nanos(1_000_000_000),
        );
        r.state = state;
        r.pid = pid;
        r
    }

    fn usage() -> Usage {
        Usage {
            cpu_seconds: 1.5,
            memory_bytes: 4096,
        }
    }

    fn text(s: &MachineSeries) -> String {
        let mut out = String::new();
        s.render(Timestamp::from_nanos(61_000_000_000), &mut out);
        out
    }

    #[test]
    fn usage_lives_only_while_started_with_the_sampled_pid() {
        let mut s = MachineSeries::new();
        s.observe(&rec("a", State::Started, Some(10)));
        assert_eq!(s.running(), [(MachineId::parse("a").unwrap(), 10)]);
        s.set_usage(&MachineId::parse("a").unwrap(), 10, usage());
        let t = text(&s);
        assert!(t.contains("berth_machine_up{machine_id=\"a\"} 1\n"), "{t}");
        assert!(t.contains("berth_machine_cpu_seconds_total{machine_id=\"a\"} 1.5\n"));
        assert!(t.contains("berth_machine_memory_bytes{machine_id=\"a\"} 4096\n"));

        // Restarted as another pid: the old sample is dropped, a late one for the old pid too.
        s.observe(&rec("a", State::Started, Some(11)));
        s.set_usage(&MachineId::parse("a").unwrap(), 10, usage());
        assert!(!text(&s).contains("cpu_seconds"));

        // Stopping: no usage, and a sample that raced with the stop is refused.
        s.set_usage(&MachineId::parse("a").unwrap(), 11, usage());
        s.observe(&rec("a", State::Stopping, None));
        s.set_usage(&MachineId::parse("a").unwrap(), 11, usage());
        let t = text(&s);
        assert!(
            !t.contains("cpu_seconds") && !t.contains("memory_bytes"),
            "{t}"
        );
        assert!(t.contains("berth_machine_up{machine_id=\"a\"} 0\n"));
        // 60 s in a transient state.
        assert!(
            t.contains(
                "berth_machine_transient_seconds{machine_id=\"a\",state=\"stopping\"} 60.000\n"
            ),
            "{t}"
        );

        s.observe(&rec("a", State::Stopped, None));
        assert!(!text(&s).contains("transient"));
        s.observe(&rec("a", State::Destroyed, None));
        assert_eq!(text(&s), "");
        assert!(s.is_empty());
    }

    #[test]
    fn counts_every_state_but_destroyed() {
        let mut s = MachineSeries::new();
        s.observe(&rec("a", State::Started, Some(1)));
        s.observe(&rec("b", State::Started, Some(2)));
        s.observe(&rec("c", State::Failed, None));
        s.observe(&rec("d", State::Destroyed, None));
        let c = s.counts();
        assert_eq!(c.len(), 8);
        assert_eq!(c[&State::Started], 2);
        assert_eq!(c[&State::Failed], 1);
        assert_eq!(c[&State::Stopped], 0);
        assert!(!c.contains_key(&State::Destroyed));
        s.forget(&MachineId::parse("c").unwrap());
        assert_eq!(s.len(), 2);
    }
}
