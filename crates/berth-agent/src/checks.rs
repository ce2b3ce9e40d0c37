//! Health checks: run by the agent while a machine is started, kept in memory.
//!
//! One scheduler keeps one tokio task per check of every started machine, keyed by the
//! machine's pid and config version: a restart or an update replaces the tasks (their counters
//! start again, after the grace period), leaving `started` ends them. Each task sleeps the grace
//! period, then runs its probe every `interval`, bounded by `timeout`. The scheduler follows the
//! event log and reads again only the machines each event names (and those an operation ended
//! on), so its cost per operation does not grow with the number of machines; it walks every
//! machine at start and every [`SCAN_INTERVAL`] as a safety net.
//!
//! A result is not a write. The status (passing, critical, unknown), the last output (at most
//! [`OUTPUT_MAX`] bytes) and since when live in [`Checks`]; only a *change* of status is written,
//! as one `check` event through the store's writer. Passing checks cost no commit.
//!
//! Status: a pass makes a check passing; `failures` consecutive failures make it critical
//! (fewer leave its status as it was). With `action: "restart"`, reaching `failures` asks the
//! blast-radius guard for a restart (action `restart`); a held restart is listed for the
//! operator and runs when an operator approves (`berth host approve`), if the machine is still
//! as the guard left it. A check that passes again stops asking.
//!
//! `http` and `tcp` checks connect to `127.0.0.1:port` in the machine's network namespace: for
//! a workload in another namespace than berthd's (an image machine), the socket is created by a
//! short-lived thread that entered `/proc/<pid>/ns/net`, then handed to tokio.
//!
//! A check's connection ends with a reset (`SO_LINGER` 0), as kubelet's probes do: once the
//! answer is read (or the `tcp` check connected) nothing more is owed to either side, and a
//! reset spares both the FIN exchange and the server a `TIME_WAIT` socket per probe (at a
//! thousand probes a second, sixty thousand of them). An `http` answer is read until its
//! `Content-Length` is satisfied (or the server closes), not necessarily to end of file.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_types::{
    CheckAction, CheckConfig, CheckHealth, CheckStatus, CheckType, MachineId, MachineRecord,
    Timestamp,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::AbortHandle;

/// Longest output kept per check, in bytes.
pub const OUTPUT_MAX: usize = 4096;
/// How often the scheduler walks every machine (between walks it follows the event log).
pub const SCAN_INTERVAL: Duration = Duration::from_secs(10);

/// What the scheduler keeps per checked machine.
#[derive(Debug)]
struct Machine {
    /// The machine's pid and config version the tasks run for.
    key: (Option<u32>, u64),
    statuses: BTreeMap<String, CheckStatus>,
    tasks: Vec<AbortHandle>,
}

#[derive(Debug, Default)]
struct Inner {
    machines: HashMap<MachineId, Machine>,
    /// Machines an operation ended on since the scheduler last looked (an operation can end
    /// without an event, so following the events alone could miss it).
    touched: std::collections::BTreeSet<MachineId>,
    /// Run durations by check type (http, tcp, exec).
    durations: [Histogram; 3],
}

/// `berth_check_duration_seconds{type}`: how long each check run took (probe and timeout
/// included), rendered at scrape time. Host-wide, one series per check type.
pub const CHECK_DURATION: crate::telemetry::Metric = crate::telemetry::Metric {
    name: "berth_check_duration_seconds",
    kind: crate::telemetry::Kind::Histogram,
    unit: Some(metrics::Unit::Seconds),
    labels: &["type"],
    help: "Duration of health check runs (a probe, bounded by its timeout), by check type.",
};

/// Upper bounds (seconds) of [`CHECK_DURATION`]'s buckets: finer than the store's below 10 ms,
/// where a check on loopback lands.
pub const DURATION_BUCKETS: [f64; 22] = [
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

const TYPES: [CheckType; 3] = [CheckType::Http, CheckType::Tcp, CheckType::Exec];

/// A fixed-bucket histogram (the last count is `+Inf`).
#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; DURATION_BUCKETS.len() + 1],
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        let i = DURATION_BUCKETS.partition_point(|b| *b < s);
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum += s;
    }

    fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

fn type_index(t: CheckType) -> usize {
    TYPES.iter().position(|x| *x == t).unwrap_or(0)
}

/// Every machine's check state.
#[derive(Debug, Default)]
pub struct Checks {
    inner: Mutex<Inner>,
    wake: tokio::sync::Notify,
}

impl Checks {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Plain data: a panic mid-update leaves at worst a stale status.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A machine's checks' statuses (empty when it has none, or they never ran).
    pub fn statuses(&self, id: &MachineId) -> BTreeMap<String, CheckStatus> {
        self.lock()
            .machines
            .get(id)
            .map(|m| m.statuses.clone())
            .unwrap_or_default()
    }

    /// Fills in `m.checks` from what the checks know: every configured check, `unknown` until
    /// it ran for the machine's current workload.
    pub fn fill(&self, m: &mut MachineRecord) {
        if m.config.checks.is_empty() {
            return;
        }
        let known = self.statuses(&m.id);
        m.checks = m
            .config
            .checks
            .keys()
            .map(|name| {
                let s = known.get(name).cloned().unwrap_or(CheckStatus {
                    status: CheckHealth::Unknown,
                    output: String::new(),
                    since: m.updated_at,
                });
                (name.clone(), s)
            })
            .collect();
    }

    /// Has the scheduler look at `m` again at once (after an operation on it), if it may need
    /// tasks started or ended: it is started, or the scheduler knows it.
    pub fn touch(&self, m: &MachineRecord) {
        let mut s = self.lock();
        if m.state == berth_types::State::Started || s.machines.contains_key(&m.id) {
            s.touched.insert(m.id.clone());
            drop(s);
            self.wake.notify_one();
        }
    }

    /// Check runs since the agent started.
    pub fn runs(&self) -> u64 {
        self.lock().durations.iter().map(Histogram::count).sum()
    }

    /// Appends `berth_machine_check_up{machine_id,check}` for the machines in `alive` (the
    /// per-machine series' machines: a destroyed machine's check series goes with its others),
    /// then `berth_check_duration_seconds{type}` (always, all buckets at zero before any run).
    pub fn render(&self, alive: &dyn Fn(&MachineId) -> bool, out: &mut String) {
        use std::fmt::Write as _;
        let s = self.lock();
        let mut rows: Vec<(&MachineId, &String, u8)> = s
            .machines
            .iter()
            .filter(|(id, _)| alive(id))
            .flat_map(|(id, m)| {
                m.statuses
                    .iter()
                    .map(move |(n, st)| (id, n, u8::from(st.status == CheckHealth::Passing)))
            })
            .collect();
        if !rows.is_empty() {
            rows.sort();
            crate::telemetry::family(out, &crate::telemetry::CHECK_UP);
            for (id, name, v) in rows {
                let _ = writeln!(
                    out,
                    "{}{{machine_id=\"{}\",check=\"{}\"}} {v}",
                    crate::telemetry::CHECK_UP.name,
                    id.as_str(),
                    name
                );
            }
        }
        crate::telemetry::family(out, &CHECK_DURATION);
        let name = CHECK_DURATION.name;
        for (t, h) in TYPES.iter().zip(&s.durations) {
            let t = type_name(*t);
            let mut cum = 0;
            for (le, c) in DURATION_BUCKETS.iter().zip(&h.counts) {
                cum += c;
                let _ = writeln!(out, "{name}_bucket{{type=\"{t}\",le=\"{le}\"}} {cum}");
            }
            let n = h.count();
            let _ = writeln!(out, "{name}_bucket{{type=\"{t}\",le=\"+Inf\"}} {n}");
            let _ = writeln!(out, "{name}_sum{{type=\"{t}\"}} {}", h.sum);
            let _ = writeln!(out, "{name}_count{{type=\"{t}\"}} {n}");
        }
    }

    /// Records one run: its duration, the output, and the status (`None`: below the failure
    /// threshold, the status stays). Returns the previous status when it changed. One lock, and
    /// no allocation once the check's entry exists.
    fn record(
        &self,
        run: Run<'_>,
        kind: CheckType,
        took: Duration,
        status: Option<CheckHealth>,
        output: &str,
    ) -> Option<CheckHealth> {
        let mut s = self.lock();
        if let Some(h) = s.durations.get_mut(type_index(kind)) {
            h.observe(took);
        }
        let m = s.machines.get_mut(run.id).filter(|m| m.key == run.key)?;
        let now = Timestamp::now();
        let entry = match m.statuses.get_mut(run.name) {
            Some(e) => e,
            None => m
                .statuses
                .entry(run.name.to_owned())
                .or_insert(CheckStatus {
                    status: CheckHealth::Unknown,
                    output: String::new(),
                    since: now,
                }),
        };
        if entry.output != output {
            entry.output.clear();
            entry.output.push_str(output);
        }
        let status = status?;
        if entry.status == status {
            return None;
        }
        let before = entry.status;
        entry.status = status;
        entry.since = now;
        Some(before)
    }
}

/// Which check of which workload a result is for.
#[derive(Clone, Copy)]
struct Run<'a> {
    id: &'a MachineId,
    key: (Option<u32>, u64),
    name: &'a str,
}

fn type_name(t: CheckType) -> &'static str {
    match t {
        CheckType::Http => "http",
        CheckType::Tcp => "tcp",
        CheckType::Exec => "exec",
    }
}

impl crate::Agent {
    /// The scheduler: keeps one task per check of every started machine.
    ///
    /// It follows the event log: each committed event names a machine, and only the machines
    /// named since the last look are read again (an operation costs the scheduler one record,
    /// not a walk of every machine). A full walk runs at start, every [`SCAN_INTERVAL`] (for what
    /// changes without an event, such as an operation abandoned), and when the events it would
    /// read were already removed by retention.
    pub(crate) async fn checks_loop(self) {
        let mut seq = self.store().subscribe();
        let mut after = 0;
        let mut next_full = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= next_full {
                // Events up to here are covered by the walk (it reads after this point).
                after = *seq.borrow_and_update();
                self.checks_scan();
                next_full = tokio::time::Instant::now() + SCAN_INTERVAL;
            } else {
                let ids = std::mem::take(&mut self.checks.lock().touched);
                match self.checks_follow(after, ids) {
                    Some(seen) => after = seen,
                    None => {
                        next_full = tokio::time::Instant::now();
                        continue;
                    }
                }
            }
            tokio::select! {
                _ = seq.changed() => {}
                _ = self.checks.wake.notified() => {}
                _ = tokio::time::sleep_until(next_full) => {}
            }
        }
    }

    /// Reads again the machines named by events after `after` and those touched by an
    /// operation. Returns the last event seq read; `None` when a full walk is needed instead
    /// (the events after `after` are gone, or cannot be read).
    fn checks_follow(
        &self,
        mut after: u64,
        touched: std::collections::BTreeSet<MachineId>,
    ) -> Option<u64> {
        const PAGE: usize = 1024;
        let mut ids = touched;
        loop {
            let events = match self.store().events_after(after, PAGE) {
                Ok(e) => e,
                // Retention removed events not read yet: what they named is unknown.
                Err(berth_store::StoreError::Expired { .. }) => return None,
                Err(e) => {
                    tracing::warn!(error = %e, "checks: could not read the events; walking every machine");
                    return None;
                }
            };
            if events.first().is_some_and(|e| e.seq != after + 1) {
                return None; // retention removed some: what they named is unknown
            }
            let n = events.len();
            let s = self.checks.lock();
            for e in events {
                after = e.seq;
                // Only a machine that became started, or one the scheduler knows, can need
                // tasks started or ended: a create without start costs nothing here.
                if e.to == berth_types::State::Started || s.machines.contains_key(&e.machine_id) {
                    ids.insert(e.machine_id);
                }
            }
            drop(s);
            if n < PAGE {
                break;
            }
        }
        for id in ids {
            match self.store().machine(&id) {
                Ok(Some(m)) => {
                    if m.config.checks.is_empty() && !self.checks.lock().machines.contains_key(&id)
                    {
                        continue;
                    }
                    let run = m.state == berth_types::State::Started && m.active_op.is_none();
                    self.checks_apply(&mut self.checks.lock(), m, run);
                }
                Ok(None) => {
                    if let Some(old) = self.checks.lock().machines.remove(&id) {
                        old.tasks.iter().for_each(AbortHandle::abort);
                    }
                }
                Err(e) => {
                    // Unknown is not absent: its tasks stay as they are until a walk reads it.
                    tracing::warn!(machine = %id, error = %e, "checks: could not read the machine; walking every machine");
                    return None;
                }
            }
        }
        Some(after)
    }

    /// Walks every machine: tasks for the checked ones, none for the machines that are gone.
    fn checks_scan(&self) {
        let mut seen: Vec<(MachineRecord, bool)> = Vec::new();
        let mut present = std::collections::HashSet::new();
        let walked = self.store().each_machine(|m| {
            present.insert(m.id.clone());
            if !m.config.checks.is_empty() || self.checks.lock().machines.contains_key(&m.id) {
                let run = m.state == berth_types::State::Started && m.active_op.is_none();
                seen.push((m, run));
            }
            true
        });
        if let Err(e) = walked {
            tracing::warn!(error = %e, "checks: could not read the machines; trying again");
            return;
        }
        let mut s = self.checks.lock();
        s.machines.retain(|id, m| {
            let keep = present.contains(id);
            if !keep {
                m.tasks.iter().for_each(AbortHandle::abort);
            }
            keep
        });
        for (rec, run) in seen {
            self.checks_apply(&mut s, rec, run);
        }
    }

    /// Keeps the tasks of `rec`'s checks as they are if they run for its current workload
    /// (`run`: started, no operation in flight), and replaces them otherwise.
    fn checks_apply(&self, s: &mut Inner, rec: MachineRecord, run: bool) {
        let key = (rec.pid, rec.config_version);
        let current = s
            .machines
            .get(&rec.id)
            .map(|m| (m.key, !m.tasks.is_empty()));
        if current == Some((key, run)) {
            return;
        }
        if let Some(old) = s.machines.remove(&rec.id) {
            old.tasks.iter().for_each(AbortHandle::abort);
        }
        if rec.state == berth_types::State::Destroyed {
            return;
        }
        let now = Timestamp::now();
        let statuses = rec
            .config
            .checks
            .keys()
            .map(|n| {
                let st = CheckStatus {
                    status: CheckHealth::Unknown,
                    output: String::new(),
                    since: now,
                };
                (n.clone(), st)
            })
            .collect();
        let tasks = if run {
            let target = Arc::new(Target::of(&rec, self.driver()));
            rec.config
                .checks
                .iter()
                .map(|(name, c)| {
                    let me = self.clone();
                    let (id, name, c, t) =
                        (rec.id.clone(), name.clone(), c.clone(), target.clone());
                    tokio::spawn(async move { me.run_check(id, key, name, c, t).await })
                        .abort_handle()
                })
                .collect()
        } else {
            Vec::new()
        };
        s.machines.insert(
            rec.id.clone(),
            Machine {
                key,
                statuses,
                tasks,
            },
        );
    }

    async fn run_check(
        self,
        id: MachineId,
        key: (Option<u32>, u64),
        name: String,
        c: CheckConfig,
        target: Arc<Target>,
    ) {
        tokio::time::sleep(c.grace_period.0).await;
        let mut ticker = tokio::time::interval(c.interval.0);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failures: u32 = 0;
        loop {
            ticker.tick().await;
            let t0 = Instant::now();
            let result = match tokio::time::timeout(c.timeout.0, probe(&c, &target)).await {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "timed out after {}",
                    humantime::format_duration(c.timeout.0)
                )),
            };
            let took = t0.elapsed();
            let (status, output) = match result {
                Ok(out) => {
                    failures = 0;
                    (Some(CheckHealth::Passing), out)
                }
                Err(out) => {
                    failures = failures.saturating_add(1);
                    let st = (failures >= c.failures).then_some(CheckHealth::Critical);
                    (st, out)
                }
            };
            let output = bounded(output);
            let run = Run {
                id: &id,
                key,
                name: &name,
            };
            let changed = self
                .checks
                .record(run, c.kind, took, status, &output)
                .zip(status);
            if let Some((before, after)) = changed {
                self.record_check_change(&id, &name, before, after, &output)
                    .await;
            }
            if c.action == CheckAction::Restart
                && failures >= c.failures
                && self
                    .check_restart(&id, key, &name, failures, &output, c.failures)
                    .await
            {
                return;
            }
        }
    }

    async fn record_check_change(
        &self,
        id: &MachineId,
        name: &str,
        before: CheckHealth,
        after: CheckHealth,
        output: &str,
    ) {
        let reason = format!(
            "check {name}: {} → {}: {}",
            before.as_str(),
            after.as_str(),
            first_line(output)
        );
        tracing::info!(machine = %id, check = name, from = before.as_str(), to = after.as_str(), output = %first_line(output), "check status changed");
        let id2 = id.clone();
        let r = self
            .store()
            .write(move |w| w.record_check(&id2, reason))
            .await;
        if let Err(e) = r {
            tracing::warn!(machine = %id, check = name, error = %e, "could not record a check's change of status");
        }
    }

    /// Restarts a machine whose check failed `failures` times, through the blast-radius guard.
    /// Returns whether the restart began (this check's task is then replaced).
    async fn check_restart(
        &self,
        id: &MachineId,
        key: (Option<u32>, u64),
        name: &str,
        failures: u32,
        output: &str,
        c_failures: u32,
    ) -> bool {
        use berth_machine::{GuardAction, Held, Verdict};
        let Ok(Some(rec)) = self.store().machine(id) else {
            return false;
        };
        if rec.state != berth_types::State::Started
            || rec.active_op.is_some()
            || (rec.pid, rec.config_version) != key
        {
            return false;
        }
        let observed = format!(
            "check {name} failed {failures} times in a row: {}",
            first_line(output)
        );
        let guard = self.machines().guard();
        if guard.check(GuardAction::Restart, std::slice::from_ref(id)) == Verdict::Hold {
            guard.hold(Held {
                machine_id: id.clone(),
                action: GuardAction::Restart,
                observed: format!("check {name} failed {} times in a row", c_failures),
                at: Timestamp::now(),
                version: rec.version,
            });
            return false;
        }
        let reason = format!("{observed}; restarting (check action restart)");
        // Begun and run by a task of its own: the restart's first write tells the scheduler
        // the machine is restarting, and the scheduler then ends this check's task, possibly
        // while it still awaits that write. Begun here, the operation would be left in flight
        // with nobody to run it (the machine stuck in `restarting` until berthd restarts).
        let (began_tx, began) = tokio::sync::oneshot::channel();
        let me = self.clone();
        let (id, name) = (id.clone(), name.to_owned());
        tokio::spawn(async move {
            match me.machines().begin_with_reason(&id, reason).await {
                Ok(op) => {
                    tracing::warn!(machine = %id, check = name, "restarting a machine whose check failed: {observed}");
                    let _ = began_tx.send(true);
                    match me.machines().run(op).await {
                        Ok(out) => me.after_op(&out.machine),
                        Err(e) => tracing::warn!(machine = %id, error = %e, "check restart failed"),
                    }
                }
                Err(e) => {
                    tracing::warn!(machine = %id, check = name, error = %e, "check restart could not begin");
                    let _ = began_tx.send(false);
                }
            }
        });
        began.await.unwrap_or(false)
    }
}

/// Where a machine's checks reach it.
#[derive(Debug)]
struct Target {
    /// The network namespace to connect from, when it is not berthd's own.
    netns: Option<std::path::PathBuf>,
    /// Image machines: exec checks go through the driver's exec (the OCI runtime's, in the
    /// container, as its user).
    image: Option<(Arc<berth_driver::Driver>, String)>,
    env: BTreeMap<String, String>,
    workdir: Option<String>,
}

impl Target {
    fn of(rec: &MachineRecord, driver: &Arc<berth_driver::Driver>) -> Self {
        let netns = rec.pid.and_then(|pid| {
            let theirs = std::path::PathBuf::from(format!("/proc/{pid}/ns/net"));
            let ino = |p: &std::path::Path| {
                use std::os::unix::fs::MetadataExt;
                std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok()
            };
            let mine = ino(std::path::Path::new("/proc/self/ns/net"));
            match (mine, ino(&theirs)) {
                (Some(a), Some(b)) if a != b => Some(theirs),
                _ => None,
            }
        });
        Self {
            netns,
            image: rec
                .config
                .image
                .is_some()
                .then(|| (driver.clone(), rec.id.to_string())),
            env: rec.config.env.clone(),
            workdir: rec.config.workdir.clone(),
        }
    }
}

/// One run of a check: `Ok(output)` passes, `Err(output)` fails.
async fn probe(c: &CheckConfig, t: &Target) -> Result<String, String> {
    match c.kind {
        CheckType::Tcp => {
            let port = c.port.unwrap_or_default();
            reset(connect(t, port).await?);
            Ok(format!("connected to port {port}"))
        }
        CheckType::Http => {
            let port = c.port.unwrap_or_default();
            let path = c.path.as_deref().unwrap_or("/");
            http_get(t, port, path).await
        }
        CheckType::Exec => exec(c, t).await,
    }
}

async fn connect(t: &Target, port: u16) -> Result<tokio::net::TcpStream, String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Some(ns) = t.netns.clone() else {
        return tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to port {port}: {e}"));
    };
    // The socket must be created inside the machine's namespace: a thread of its own enters it
    // (never a pool thread, which would stay there) and connects; the socket keeps its
    // namespace after the thread ends.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("berth-check-netns".into())
        .spawn(move || {
            let r = (|| -> Result<std::net::TcpStream, String> {
                let f =
                    std::fs::File::open(&ns).map_err(|e| format!("open {}: {e}", ns.display()))?;
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("enter the machine's network namespace: {e}"))?;
                let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(30))
                    .map_err(|e| format!("connect to port {port}: {e}"))?;
                s.set_nonblocking(true)
                    .map_err(|e| format!("connect to port {port}: {e}"))?;
                Ok(s)
            })();
            let _ = tx.send(r);
        })
        .map_err(|e| format!("spawn a thread to connect: {e}"))?;
    let s = rx
        .await
        .map_err(|_| "the connecting thread ended without an answer".to_owned())??;
    tokio::net::TcpStream::from_std(s).map_err(|e| format!("connect to port {port}: {e}"))
}

async fn http_get(t: &Target, port: u16, path: &str) -> Result<String, String> {
    let mut s = connect(t, port).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: berth-check\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send the request: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while buf.len() < OUTPUT_MAX && !complete(&buf) {
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read the answer: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    reset(s);
    let text = String::from_utf8_lossy(&buf);
    let status_line = text.lines().next().unwrap_or_default();
    let code: Option<u16> = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok());
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let out = format!(
        "HTTP {}: {}",
        code.map_or("?".to_owned(), |c| c.to_string()),
        body.trim()
    );
    match code {
        Some(c) if (200..400).contains(&c) => Ok(out),
        Some(_) => Err(out),
        None => Err(format!("not an HTTP answer: {:?}", first_line(&text))),
    }
}

/// Closes a check's connection with a reset (see the module's doc).
fn reset(s: tokio::net::TcpStream) {
    // Failing to set it only costs the ordinary close.
    let _ = s.set_zero_linger();
}

/// Whether `buf` holds a whole HTTP answer by its own account: the headers, and as many body
/// bytes as their `Content-Length` says. Without one, the answer ends when the server closes.
fn complete(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let length = head.lines().skip(1).find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    length.is_some_and(|n| buf.len() - (end + 4) >= n)
}

async fn exec(c: &CheckConfig, t: &Target) -> Result<String, String> {
    if let Some((driver, id)) = &t.image {
        // Inside the container, as its user, through the runtime (the check's own timeout
        // bounds it too: the driver kills what it started when its timeout passes).
        let spec = berth_driver::exec::ExecSpec {
            cmd: c.command.clone(),
            timeout: c.timeout.0,
            stdin: Vec::new(),
        };
        let out = driver.exec(id, &spec).await.map_err(|e| e.to_string())?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        let text = text.trim().to_owned();
        return if out.exit_code == 0 {
            Ok(text)
        } else {
            Err(format!("exit code {}: {text}", out.exit_code))
        };
    }
    let (prog, args) = c
        .command
        .split_first()
        .ok_or_else(|| "no command".to_owned())?;
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args)
        .envs(&t.env)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(w) = &t.workdir {
        cmd.current_dir(w);
    }
    let out = cmd.output().await.map_err(|e| format!("run {prog}: {e}"))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let text = text.trim().to_owned();
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{}: {text}", out.status))
    }
}

fn first_line(s: &str) -> &str {
    let l = s.lines().next().unwrap_or_default();
    match l.char_indices().nth(200) {
        Some((i, _)) => &l[..i],
        None => l,
    }
}

/// At most [`OUTPUT_MAX`] bytes, cut at a character boundary.
fn bounded(mut s: String) -> String {
    if s.len() > OUTPUT_MAX {
        let mut end = OUTPUT_MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_complete_by_its_content_length_or_never() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ncontent-length: 2\r\n\r\n";
        assert!(!complete(ok));
        assert!(!complete(&[&ok[..], b"o"].concat()));
        assert!(complete(&[&ok[..], b"ok"].concat()));
        assert!(!complete(b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nbody"));
        assert!(!complete(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"));
        assert!(!complete(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\nok"));
    }

    #[test]
    fn output_is_bounded_at_a_char_boundary() {
        let s = bounded("é".repeat(OUTPUT_MAX));
        assert!(s.len() <= OUTPUT_MAX);
        assert!(s.chars().all(|c| c == 'é'));
    }
}
