//! The follower: keeps [`MachineSeries`] in step with the store's event log, samples workloads,
//! the database and the agent process, and renders a scrape.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_driver::Driver;
use berth_store::{Store, StoreError};
use berth_types::Timestamp;

use super::{DB_OP_DURATION, MachineSeries, PROCESS_CPU, family};

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
    checks: std::sync::OnceLock<Arc<crate::checks::Checks>>,
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
            checks: std::sync::OnceLock::new(),
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
        f.series.clear();
        self.store.each_machine(|rec| {
            f.series.observe(&rec);
            true
        })?;
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
                        // A config change or a pull recorded in the state it happened in is no
                        // transition.
                        if !ev.in_place() {
                            metrics::counter!("berth_machine_transitions_total", "to" => ev.to.as_str())
                                .increment(1);
                        }
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

    /// Renders the checks' series with the per-machine ones (the agent sets it once).
    pub fn set_checks(&self, checks: Arc<crate::checks::Checks>) {
        let _ = self.checks.set(checks);
    }

    fn render_series(&self, out: &mut String) {
        let f = self.lock();
        f.series.render(Timestamp::now(), out);
        if let Some(c) = self.checks.get() {
            c.render(&|id| f.series.contains(id), out);
        }
    }

    /// Appends the per-machine series, after catching up with every committed event.
    pub fn render_machines(&self, out: &mut String) {
        self.catch_up();
        self.render_series(out);
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
        self.render_series(&mut out);
        out
    }

    /// Machines tracked (for tests).
    pub fn tracked(&self) -> usize {
        self.lock().series.len()
    }

    /// Machines per state as of the last catch-up (every state but destroyed): cheap, for the
    /// fleet export's host facts.
    pub fn machine_counts(&self) -> std::collections::BTreeMap<berth_types::State, u64> {
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
