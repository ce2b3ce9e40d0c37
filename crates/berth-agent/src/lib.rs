//! The agent's core: the store, the driver and the machine operations assembled, with the loops
//! that supervise workloads. `berthd` wraps this in config, signals and an HTTP API.
//!
//! Architecture invariant: at start-up the agent reattaches to every running supervisor before
//! anything else can act, resumes every operation left in flight, and reconciles (guarded); it
//! never restarts a workload merely because the agent restarted. Every automated action goes
//! through `berth-machine`, so it is recorded with its reason before it is reported.

pub mod checks;
pub mod command;
mod effects;
mod error;
mod image_run;
pub mod images;
mod maintenance;
mod random;
mod slow_ops;
pub mod telemetry;
pub mod wire;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_driver::{Driver, DriverConfig, Probe};
use berth_machine::{
    CreateRequest, ExitOutcome, Guard, GuardAction, GuardStatus, Held, Machines, OpError,
    ReconcileConfig, ReconcileReport,
};
use berth_store::{Store, StoreOptions};
use berth_types::{MachineId, MachineRecord, OpKind, Source};
use tokio::sync::mpsc;

pub use command::{
    CommandConfig, FollowEnd, LogFollower, LogSelect, LogText, MachinePage, Stopping,
};
pub use effects::{ExitNotice, HostEffects, UnknownMachine};
pub use error::{CommandError, CommandResult, ErrorKind};
pub use maintenance::{AutoCompaction, MaintenanceConfig};
pub use random::{RandomError, random_hex, random_hex_with};
pub use slow_ops::SlowOps;
pub use telemetry::Telemetry;

/// This process's open-files limit (soft, hard): the API's accept loop clamps its connections
/// to what it leaves for the agent's own files.
pub fn open_files_limit() -> std::io::Result<(u64, u64)> {
    berth_driver::limits::nofile_limit()
}

/// How often the metrics sample what is not an event.
#[derive(Debug, Clone, Copy)]
pub struct TelemetryConfig {
    /// CPU and memory of every started machine (`metrics.sample_interval`).
    pub sample_interval: Duration,
    /// The database's file size and live bytes.
    pub db_interval: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            sample_interval: Duration::from_secs(5),
            db_interval: Duration::from_secs(15),
        }
    }
}

/// Everything the agent needs to start.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The data directory (`berth.redb`, `machines/`).
    pub data_dir: PathBuf,
    /// Store tunables.
    pub store: StoreOptions,
    /// Driver settings (`machines_dir` is set from `data_dir`).
    pub driver: DriverConfig,
    /// Reconciliation and its guard.
    pub reconcile: ReconcileConfig,
    /// Time between reconciliation passes.
    pub reconcile_interval: Duration,
    /// Retention and automatic compaction; `None` keeps everything (tests of other things).
    pub maintenance: Option<MaintenanceConfig>,
    /// Metrics sampling.
    pub telemetry: TelemetryConfig,
    /// Registries, pull timeout and image collection.
    pub images: images::ImagesConfig,
}

impl AgentConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            driver: DriverConfig::new(data_dir.join("machines")),
            data_dir,
            store: StoreOptions::default(),
            reconcile: ReconcileConfig::default(),
            reconcile_interval: Duration::from_secs(10),
            maintenance: Some(MaintenanceConfig::default()),
            telemetry: TelemetryConfig::default(),
            images: images::ImagesConfig::default(),
        }
    }
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] berth_store::StoreError),
    /// The driver could not be set up.
    #[error(transparent)]
    Driver(#[from] berth_driver::DriverError),
    /// An operation failed.
    #[error(transparent)]
    Op(#[from] OpError),
    /// The image store could not be opened.
    #[error(transparent)]
    Images(#[from] berth_image::ImageError),
}

/// What supervision has seen lately (for health, host status and `berth doctor`).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SupervisionStatus {
    /// The last reconciliation pass.
    pub last_reconcile: Option<ReconcileReport>,
    /// Operations resumed at start-up.
    pub resumed_operations: usize,
    /// Workloads reattached at start-up.
    pub reattached: usize,
    /// Machines whose workload's state could not be read at their last observation: nothing
    /// was recorded or removed for them (unknown is never absent).
    #[serde(default)]
    pub unknown: Vec<UnknownMachine>,
    /// The blast-radius guard: tripped or not, what it holds.
    pub guard: GuardStatus,
}

/// What an operator's approval released.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ApproveReport {
    /// The decisions the guard held, now released.
    pub released: Vec<Held>,
    /// Machines whose held restart now runs.
    pub restarted: Vec<MachineId>,
    /// Held restarts not run because the machine changed since (an operator acted on it).
    pub skipped: Vec<MachineId>,
    /// The reconciliation pass run with the approval, if one was held.
    pub reconcile: Option<ReconcileReport>,
}

/// The running agent.
#[derive(Debug, Clone)]
pub struct Agent {
    machines: Machines<HostEffects>,
    status: Arc<Mutex<SupervisionStatus>>,
    reconcile: ReconcileConfig,
    compactions: maintenance::Compactions,
    telemetry: Arc<Telemetry>,
    data_dir: PathBuf,
    cordon: Arc<command::Cordon>,
    commands: Arc<CommandConfig>,
    images: Arc<images::Images>,
    stopping: command::Stopping,
    checks: Arc<checks::Checks>,
}

/// Gives every machine whose supervisor still runs a watcher (nothing is restarted); returns
/// how many.
fn reattach(store: &Store, driver: &Driver, effects: &HostEffects) -> Result<usize, AgentError> {
    let mut reattached = 0;
    let mut known = Vec::new();
    store.each_machine(|m| {
        known.push((m.id, m.state));
        true
    })?;
    for (id, state) in known {
        if let Probe::Running(s) = driver.probe(id.as_str()) {
            effects.watch(id.as_str(), s.workload.pid);
            reattached += 1;
            tracing::info!(machine = %id, pid = s.workload.pid, %state, "reattached to running workload");
        }
    }
    Ok(reattached)
}

impl Agent {
    /// Opens the store, sets up the driver, reattaches to running workloads, resumes operations
    /// and starts the supervision loops.
    pub async fn start(mut cfg: AgentConfig) -> Result<Agent, AgentError> {
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| berth_store::StoreError::Io {
            context: format!("create {}", cfg.data_dir.display()),
            source: e,
        })?;
        cfg.driver.machines_dir = cfg.data_dir.join("machines");
        let store = Store::open(cfg.data_dir.join("berth.redb"), cfg.store.clone())?;
        let driver = Arc::new(Driver::new(cfg.driver.clone())?);
        let (tx, rx) = mpsc::unbounded_channel();
        let store_dir = cfg.data_dir.join("images");
        let images = images::Images::new(
            Arc::new(berth_image::ImageStore::open(store_dir)?),
            cfg.images.clone(),
        );
        let effects = Arc::new(HostEffects::new(driver.clone(), tx).with_pulls(images.clone()));
        let guard = Arc::new(Guard::new(cfg.reconcile.guard_config()));
        let machines = Machines::with_guard(store.clone(), effects.clone(), guard);
        let agent = Agent {
            machines,
            status: Arc::default(),
            reconcile: cfg.reconcile,
            compactions: Default::default(),
            telemetry: Telemetry::new(store.clone(), driver.clone())?,
            cordon: Arc::new(command::Cordon::open(&cfg.data_dir)),
            data_dir: cfg.data_dir.clone(),
            commands: Arc::default(),
            images: images.clone(),
            stopping: Default::default(),
            checks: Arc::default(),
        };
        agent.telemetry.set_checks(agent.checks.clone());
        images.record_usage();
        images.spawn_collector(store.clone());

        // Reattach first: every supervisor that runs gets a watcher, nothing is restarted.
        let reattached = reattach(&store, &driver, &effects)?;
        let resumed = store.operations()?.len();
        if let Ok(mut s) = agent.status.lock() {
            s.reattached = reattached;
            s.resumed_operations = resumed;
        }
        agent.spawn_loops(rx, &cfg);
        Ok(agent)
    }

    /// The loops that run for the agent's life: exits, resumed operations, reconciliation,
    /// checks, maintenance and telemetry.
    fn spawn_loops(&self, exits: mpsc::UnboundedReceiver<ExitNotice>, cfg: &AgentConfig) {
        tokio::spawn(self.clone().exit_loop(exits));
        let me = self.clone();
        tokio::spawn(async move {
            match me.machines.resume_all().await {
                Ok(results) => {
                    for (op, r) in results {
                        match r {
                            Ok(o) => me.after_op(&o.machine),
                            Err(e) => tracing::warn!(op, error = %e, "resumed operation failed"),
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "could not resume operations"),
            }
        });
        let me = self.clone();
        let interval = cfg.reconcile_interval;
        tokio::spawn(async move {
            loop {
                me.reconcile_once(false).await;
                tokio::time::sleep(interval).await;
            }
        });
        tokio::spawn(self.clone().checks_loop());
        if let Some(m) = cfg.maintenance.clone() {
            self.spawn_maintenance(m);
        }
        self.telemetry
            .spawn(cfg.telemetry.sample_interval, cfg.telemetry.db_interval);
    }

    /// The machine operations (the commands' own: a front end goes through the commands).
    pub(crate) fn machines(&self) -> &Machines<HostEffects> {
        &self.machines
    }

    /// The store, for berthd's watchdog probe and the benchmarks; a front end (the HTTP API)
    /// goes through the commands (`command/`), never here.
    pub fn store(&self) -> &Store {
        self.machines.store()
    }

    /// The driver, for the benchmarks; a front end goes through the commands.
    pub fn driver(&self) -> &Arc<Driver> {
        self.machines.effects().driver()
    }

    /// The metrics the agent keeps (per-machine series, sampled figures).
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// The health checks' state (in memory; a passing result is never written).
    pub fn checks(&self) -> &Arc<checks::Checks> {
        &self.checks
    }

    /// What supervision has seen lately.
    pub fn status(&self) -> SupervisionStatus {
        let mut s = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        s.guard = self.machines.guard().status();
        s.unknown = self.machines.effects().unknown();
        s
    }

    /// An operator approves what the blast-radius guard held back: the guard resets, held
    /// restarts run (each only if its machine is still as the guard left it), and a held
    /// reconciliation pass runs approved.
    pub async fn approve(&self) -> ApproveReport {
        // The guard stays tripped until the held restarts have begun: a failing check asking
        // again meanwhile is held, not let through to race the approval for its machine.
        let released = self.machines.guard().take_held();
        let mut report = ApproveReport::default();
        let mut reconcile = false;
        for h in &released {
            match h.action {
                GuardAction::Reconcile => reconcile = true,
                GuardAction::Restart => {
                    let current = self.store().machine(&h.machine_id).ok().flatten();
                    // A restart a failing health check asked for: the machine is still
                    // started, as the guard left it.
                    let check_held = current.as_ref().is_some_and(|m| {
                        m.version == h.version
                            && m.active_op.is_none()
                            && m.state == berth_types::State::Started
                    });
                    if check_held {
                        let reason = format!("{}; restart approved by an operator", h.observed);
                        match self.machines.begin_with_reason(&h.machine_id, reason).await {
                            Ok(op) => {
                                report.restarted.push(h.machine_id.clone());
                                let me = self.clone();
                                tokio::spawn(async move {
                                    if let Ok(out) = me.machines.run(op).await {
                                        me.after_op(&out.machine);
                                    }
                                });
                            }
                            Err(e) => {
                                tracing::warn!(machine = %h.machine_id, error = %e, "approved check restart could not begin");
                                report.skipped.push(h.machine_id.clone());
                            }
                        }
                        continue;
                    }
                    let unchanged = current.as_ref().is_some_and(|m| {
                        m.version == h.version
                            && m.active_op.is_none()
                            && matches!(
                                m.state,
                                berth_types::State::Stopped | berth_types::State::Failed
                            )
                    });
                    if !unchanged {
                        report.skipped.push(h.machine_id.clone());
                        continue;
                    }
                    match self
                        .machines
                        .begin(&h.machine_id, OpKind::Start, Source::Berth, None, None)
                        .await
                    {
                        Ok(op) => {
                            report.restarted.push(h.machine_id.clone());
                            let me = self.clone();
                            let id = h.machine_id.clone();
                            tokio::spawn(async move {
                                match me.machines.run(op).await {
                                    Ok(out) => me.after_op(&out.machine),
                                    Err(e) => {
                                        tracing::warn!(machine = %id, error = %e, "approved restart failed")
                                    }
                                }
                            });
                        }
                        Err(e) => {
                            tracing::warn!(machine = %h.machine_id, error = %e, "approved restart could not begin");
                            report.skipped.push(h.machine_id.clone());
                        }
                    }
                }
            }
        }
        self.machines.guard().reopen();
        if reconcile || self.status().last_reconcile.is_some_and(|r| r.blocked) {
            report.reconcile = self.reconcile_once(true).await;
        }
        report.released = released;
        report
    }

    /// Runs one reconciliation pass; `approved` overrides the blast-radius guard.
    pub async fn reconcile_once(&self, approved: bool) -> Option<ReconcileReport> {
        match self.machines.reconcile(&self.reconcile, approved).await {
            Ok(report) => {
                metrics::gauge!("berth_reconcile_blocked").set(if report.blocked {
                    1.0
                } else {
                    0.0
                });
                if let Ok(mut s) = self.status.lock() {
                    s.last_reconcile = Some(report.clone());
                }
                Some(report)
            }
            Err(e) => {
                tracing::error!(error = %e, "reconciliation failed");
                None
            }
        }
    }

    /// Creates a machine and, unless `skip_start`, starts it; returns the machine afterwards.
    pub async fn create(&self, req: CreateRequest) -> Result<MachineRecord, OpError> {
        let (_, op) = self.machines.create(req).await?;
        let out = self.machines.run(op).await?;
        self.after_op(&out.machine);
        Ok(out.machine)
    }

    /// Admits a create (bounds, Idempotency-Key, unique name, machine limit: see
    /// `Machines::admit`) and runs it; a replayed key answers the machine its first create made,
    /// once that create is done.
    pub async fn admit(
        &self,
        req: CreateRequest,
        admission: berth_machine::Admission,
    ) -> Result<berth_machine::Created, OpError> {
        match self.machines.admit(req, admission).await? {
            berth_machine::Admitted::Created { machine, operation } => {
                let out = self.machines.run_created(machine, operation).await?;
                self.after_op(&out.machine);
                Ok(berth_machine::Created {
                    machine: out.machine,
                    replayed: false,
                })
            }
            berth_machine::Admitted::Replayed(m) => Ok(berth_machine::Created {
                machine: self.machines.settled(m).await?,
                replayed: true,
            }),
        }
    }

    /// A user's lifecycle operation on a machine that may be leased: refused without the
    /// lease's nonce while a lease is held.
    pub async fn operate_leased(
        &self,
        id: &MachineId,
        kind: OpKind,
        signal: Option<String>,
        timeout: Option<Duration>,
        lease_nonce: Option<&str>,
    ) -> Result<MachineRecord, OpError> {
        self.machines.check_lease(id, lease_nonce)?;
        self.operate(id, kind, signal, timeout).await
    }

    /// Runs a lifecycle operation to completion.
    pub async fn operate(
        &self,
        id: &MachineId,
        kind: OpKind,
        signal: Option<String>,
        timeout: Option<Duration>,
    ) -> Result<MachineRecord, OpError> {
        let op = self
            .machines
            .begin(id, kind, Source::User, signal, timeout)
            .await?;
        let out = self.machines.run(op).await?;
        self.after_op(&out.machine);
        Ok(out.machine)
    }

    /// After an operation left a machine started: if its workload already exited meanwhile
    /// (the exit was deferred while the operation ran), handle that now.
    fn after_op(&self, m: &MachineRecord) {
        self.checks.touch(m);
        if m.state == berth_types::State::Started
            && let Probe::Exited(rec) = self.driver().probe(m.id.as_str())
        {
            let me = self.clone();
            let (id, pid) = (m.id.clone(), m.pid);
            tokio::spawn(async move {
                me.apply_exit(id, pid, berth_driver::exit_info(&rec, false))
                    .await;
            });
        }
    }

    async fn exit_loop(self, mut rx: mpsc::UnboundedReceiver<ExitNotice>) {
        while let Some(notice) = rx.recv().await {
            let me = self.clone();
            tokio::spawn(async move {
                me.machines
                    .effects()
                    .unwatch(&notice.machine_id, notice.pid);
                let Ok(id) = MachineId::parse(&notice.machine_id) else {
                    return;
                };
                match notice.result {
                    Ok(exit) => me.apply_exit(id, Some(notice.pid), exit).await,
                    // Lost supervisor: the reconciler records it, under its guard.
                    Err(e) => {
                        tracing::warn!(machine = %id, error = %e, "supervisor ended without an exit record")
                    }
                }
            });
        }
    }

    async fn apply_exit(&self, id: MachineId, pid: Option<u32>, exit: berth_types::ExitInfo) {
        // While an operation owns the machine, wait for it: it may consume the exit (stop,
        // destroy) or leave the machine started (start, restart), when the exit applies.
        for _ in 0..6000 {
            match self
                .machines
                .handle_exit(&id, pid, exit.clone(), None)
                .await
            {
                Ok(ExitOutcome::Deferred) => tokio::time::sleep(Duration::from_millis(50)).await,
                Ok(ExitOutcome::Restart(op)) => {
                    match self.machines.run(op).await {
                        Ok(out) => self.after_op(&out.machine),
                        Err(e) => tracing::warn!(machine = %id, error = %e, "restart failed"),
                    }
                    return;
                }
                Ok(_) => return,
                Err(OpError::Store(berth_store::StoreError::Overloaded { .. })) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => {
                    tracing::warn!(machine = %id, error = %e, "could not record exit");
                    return;
                }
            }
        }
    }
}
