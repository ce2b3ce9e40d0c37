//! Supervision: what happens when a workload exits on its own, and reconciliation of the store
//! with what actually runs.
//!
//! Every automated decision is logged with the inputs it saw, and every destructive one (a policy
//! restart, a reconciliation's findings) asks the blast-radius guard first ([`crate::Guard`]): a
//! burst that would act on most of the host at once is held back for an operator, because
//! "everything died at once" is more often a broken observation or a host-wide fault than a fact
//! (Hosted Graphite's failover of every node).

use std::collections::BTreeSet;
use std::time::Duration;

use berth_store::{StoreError, TransitionSpec};
use berth_types::{
    EventKind, ExitInfo, MachineId, MachineRecord, OpKind, OperationRecord, RestartConfig,
    RestartPolicy, Source, State,
};
use serde::Serialize;

use crate::guard::{GuardAction, GuardConfig, Held, Verdict};
use crate::runner::{Effects, Machines, OpError};

/// What the host says about a machine's workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// Its supervisor runs; the workload has this pid.
    Running {
        /// Workload pid.
        pid: u32,
    },
    /// It exited; its supervisor recorded how.
    Exited {
        /// The pid it had.
        pid: u32,
        /// How it exited.
        exit: ExitInfo,
    },
    /// Gone without a record of how (supervisor killed, host rebooted).
    Gone {
        /// What was found.
        reason: String,
    },
    /// Its supervisor died and the workload (this pid) runs on unsupervised: reconciliation kills
    /// it, once the blast-radius guard admits the pass, and records it gone.
    Unsupervised {
        /// Workload pid.
        pid: u32,
    },
    /// Nothing was ever launched for it.
    NotStarted,
    /// What runs could not be read (EMFILE, EACCES, EIO, a garbled file): no evidence either
    /// way, so nothing may be recorded or removed on it.
    Unknown {
        /// What could not be read, and why.
        reason: String,
    },
}

/// Restart budget for `on-failure` when `max_retries` is not set.
pub const DEFAULT_MAX_RETRIES: u32 = 10;
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// The delay before restart number `attempt` (0-based): 100 ms doubling, capped at 30 s.
pub fn backoff(attempt: u32) -> Duration {
    BACKOFF_BASE
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_CAP)
}

/// What to do after a workload exited on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum AfterExit {
    /// Record it stopped (a clean exit, no restart).
    Stop,
    /// Record it failed (unclean exit, no restart left).
    Fail,
    /// Restart it after a delay.
    Restart {
        /// Backoff before the restart.
        #[serde(with = "millis")]
        delay: Duration,
    },
}

mod millis {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

/// The restart policy as a pure function of the policy, the exit and restarts so far.
pub fn after_exit(policy: &RestartConfig, exit: &ExitInfo, restarts: u32) -> AfterExit {
    let clean = exit.code == Some(0) && exit.signal.is_none();
    match policy.policy {
        _ if exit.requested_stop => AfterExit::Stop,
        RestartPolicy::No if clean => AfterExit::Stop,
        RestartPolicy::No => AfterExit::Fail,
        RestartPolicy::OnFailure if clean => AfterExit::Stop,
        RestartPolicy::OnFailure
            if restarts < policy.max_retries.unwrap_or(DEFAULT_MAX_RETRIES) =>
        {
            AfterExit::Restart {
                delay: backoff(restarts),
            }
        }
        RestartPolicy::OnFailure => AfterExit::Fail,
        RestartPolicy::Always => AfterExit::Restart {
            delay: backoff(restarts),
        },
    }
}

/// Describes an exit for a reason string.
pub fn describe_exit(exit: &ExitInfo) -> String {
    match (exit.code, &exit.signal) {
        _ if exit.oom_killed => "killed by the OOM killer".to_owned(),
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => format!("killed by {sig}"),
        (None, None) => "exited (status unknown)".to_owned(),
    }
}

/// What [`Machines::handle_exit`] did.
#[derive(Debug, Clone)]
// Returned once per decision, never stored in bulk: boxing the operation buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum ExitOutcome {
    /// Recorded as stopped or failed.
    Recorded(State),
    /// A restart operation was recorded; run it.
    Restart(OperationRecord),
    /// An operation is in flight on the machine; it will see the exit itself, or the caller
    /// should try again once it is done.
    Deferred,
    /// Not for the current instance, or the machine is no longer running: nothing to do.
    Ignored,
    /// The restart policy wanted a restart and the blast-radius guard held it back: the exit was
    /// recorded (stopped or failed, with a reason saying so) and the restart waits for an
    /// operator's approval.
    Held(State),
}

/// Reconciliation and blast-radius guard settings.
#[derive(Debug, Clone, Copy)]
pub struct ReconcileConfig {
    /// The blast-radius guard is on.
    pub guard: bool,
    /// Automated decisions are held when they would act on more than this many machines...
    pub guard_min: usize,
    /// ...and more than this fraction of the live ones...
    pub guard_fraction: f64,
    /// ...within this window.
    pub guard_window: Duration,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        let g = GuardConfig::default();
        Self {
            guard: g.enabled,
            guard_min: g.min_machines,
            guard_fraction: g.fraction,
            guard_window: g.window,
        }
    }
}

impl ReconcileConfig {
    /// The guard these settings describe.
    pub fn guard_config(&self) -> GuardConfig {
        GuardConfig {
            enabled: self.guard,
            min_machines: self.guard_min,
            fraction: self.guard_fraction,
            window: self.guard_window,
        }
    }
}

/// A correction a reconciliation pass found necessary.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Planned {
    /// The machine.
    pub machine_id: MachineId,
    /// What the store says.
    pub recorded: State,
    /// What was observed.
    pub observed: String,
    /// The exit to record.
    #[serde(skip)]
    pub exit: ExitInfo,
    /// The recorded pid it applies to.
    #[serde(skip)]
    pub pid: Option<u32>,
    /// The workload runs without its supervisor: kill it before recording.
    #[serde(skip)]
    pub kill: bool,
}

/// What a reconciliation pass saw and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReconcileReport {
    /// Machines examined.
    pub examined: usize,
    /// Corrections found.
    pub planned: Vec<Planned>,
    /// Corrections applied.
    pub applied: usize,
    /// The blast-radius guard refused the pass: nothing was applied.
    pub blocked: bool,
    /// An operator's approval let this pass past the guard.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub approved: bool,
    /// Supervised workloads with no machine record: reported, never killed.
    pub orphans: Vec<String>,
    /// Machines in a transient state with no operation in flight.
    pub stranded: Vec<MachineId>,
}

impl<E: Effects> Machines<E> {
    /// Handles a workload that exited on its own (pid `pid`): records it stopped or failed, or
    /// records a restart operation per the machine's restart policy, in one write.
    ///
    /// `observed` describes the exit when the exit itself says nothing (a vanished workload).
    pub async fn handle_exit(
        &self,
        id: &MachineId,
        pid: Option<u32>,
        exit: ExitInfo,
        observed: Option<String>,
    ) -> Result<ExitOutcome, OpError> {
        let id2 = id.clone();
        let guard = self.guard().clone();
        let outcome = self
            .store()
            .write(move |w| record_exit(w, &id2, pid, exit, observed.as_deref(), &guard))
            .await?;
        let (outcome, seen) = outcome;
        if let (ExitOutcome::Held(_), Some((rec, _))) = (&outcome, &seen)
            && let Ok(Some(now)) = self.store().machine(id)
        {
            self.guard().hold(Held {
                machine_id: id.clone(),
                action: GuardAction::Restart,
                observed: format!(
                    "{} (policy {:?}, restarted {} times)",
                    now.exit
                        .as_ref()
                        .map_or_else(|| "exited".to_owned(), describe_exit),
                    rec.config.restart.policy,
                    rec.restarts
                ),
                at: berth_types::Timestamp::now(),
                version: now.version,
            });
        }
        if let Some((rec, decision)) = seen {
            tracing::info!(
                machine = %id, pid = ?rec.pid, policy = ?rec.config.restart.policy, restarts = rec.restarts,
                exit = %describe_exit(&exit_of(&outcome, &rec)), ?decision, "workload exited on its own"
            );
        }
        Ok(outcome)
    }

    /// One reconciliation pass: compares every machine recorded as started (with no operation in
    /// flight) with what runs, and records what it finds — unless the blast-radius guard refuses,
    /// or `approved` overrides it. Orphans are reported, never touched.
    pub async fn reconcile(
        &self,
        cfg: &ReconcileConfig,
        approved: bool,
    ) -> Result<ReconcileReport, OpError> {
        // One snapshot, one record at a time: only the started machines are kept for a look
        // at their workloads (a host's machines are mostly not started), and only ids otherwise.
        let mut report = ReconcileReport::default();
        let mut live = 0;
        let mut known: BTreeSet<String> = BTreeSet::new();
        let mut started = Vec::new();
        self.store().each_machine(|m| {
            report.examined += 1;
            if m.state != State::Destroyed {
                live += 1;
                known.insert(m.id.to_string());
            }
            if m.active_op.is_none() {
                if m.state.is_transient() {
                    report.stranded.push(m.id.clone());
                } else if m.state == State::Started {
                    started.push(m);
                }
            }
            true
        })?;
        let mut machines = Vec::new();
        for m in started {
            if let Some(p) = self.plan_for(&m) {
                report.planned.push(p);
                machines.push(m);
            }
        }
        report.orphans = self.effects().orphans(&known);
        for o in &report.orphans {
            tracing::warn!(supervisor = %o, "orphan: a supervised workload with no machine record; left running for an operator (berth doctor)");
        }
        for s in &report.stranded {
            tracing::warn!(machine = %s, "machine in a transient state with no operation in flight");
        }
        self.guard().set_live(live);
        report.approved = approved && !report.planned.is_empty();
        if cfg.guard && !approved && self.hold_back(&report, &machines, live) {
            report.blocked = true;
            return Ok(report);
        }
        for p in &report.planned {
            if self.apply(p, &machines).await {
                report.applied += 1;
            }
        }
        Ok(report)
    }

    /// What a pass would do about a `started` machine with no operation in flight: `None` when
    /// its workload runs as recorded, or when its state cannot be read (unknown is never absent:
    /// the next pass looks again).
    fn plan_for(&self, m: &MachineRecord) -> Option<Planned> {
        let (exit, what, kill) = match self.effects().observe(m) {
            Observed::Running { pid } if Some(pid) == m.pid => return None,
            Observed::Running { pid } => {
                tracing::warn!(machine = %m.id, recorded = ?m.pid, running = pid, "running pid differs from the recorded one");
                return None;
            }
            Observed::Exited { exit, .. } => {
                let what = describe_exit(&exit);
                (exit, what, false)
            }
            Observed::Gone { reason } => (unknown_exit(), reason, false),
            Observed::NotStarted => (
                unknown_exit(),
                "no workload was ever launched".to_owned(),
                false,
            ),
            Observed::Unsupervised { pid } => (
                unknown_exit(),
                format!("its supervisor died; the workload (pid {pid}) runs unsupervised"),
                true,
            ),
            Observed::Unknown { reason } => {
                tracing::warn!(machine = %m.id, recorded = ?m.pid, %reason, "reconcile: the workload's state cannot be read; left as recorded");
                return None;
            }
        };
        Some(Planned {
            machine_id: m.id.clone(),
            recorded: m.state,
            observed: what,
            exit,
            pid: m.pid,
            kill,
        })
    }

    /// Asks the blast-radius guard about the pass's plan; `true` when it holds the plan back
    /// (each held decision recorded, and logged once while it stays the same).
    fn hold_back(&self, report: &ReconcileReport, machines: &[MachineRecord], live: usize) -> bool {
        let ids: Vec<MachineId> = report
            .planned
            .iter()
            .map(|p| p.machine_id.clone())
            .collect();
        if self.guard().check(GuardAction::Reconcile, &ids) != Verdict::Hold {
            return false;
        }
        let versions: std::collections::HashMap<&MachineId, u64> =
            machines.iter().map(|m| (&m.id, m.version)).collect();
        let at = berth_types::Timestamp::now();
        let mut new = 0;
        for p in &report.planned {
            new += usize::from(self.guard().hold(Held {
                machine_id: p.machine_id.clone(),
                action: GuardAction::Reconcile,
                observed: p.observed.clone(),
                at,
                version: versions.get(&p.machine_id).copied().unwrap_or(0),
            }));
        }
        // Logged when the pass holds something new, not at every pass that sees the same.
        if new > 0 {
            let planned: Vec<String> = report
                .planned
                .iter()
                .map(|p| format!("{}: {}", p.machine_id, p.observed))
                .collect();
            tracing::error!(
                would_change = report.planned.len(), machines = live, planned = ?planned,
                "blast-radius guard: this reconciliation would act on too much of the host at once; \
                 nothing was changed. Check the host, then approve (berth host approve) or fix what it observed"
            );
        }
        true
    }

    /// Carries out one planned decision: kills an unsupervised workload first if planned, then
    /// records the exit (and starts the restart the policy asks for). `true` when recorded.
    async fn apply(&self, p: &Planned, machines: &[MachineRecord]) -> bool {
        let mut observed = Some(p.observed.clone());
        if p.kill {
            let Some(rec) = machines.iter().find(|m| m.id == p.machine_id) else {
                return false;
            };
            tracing::warn!(machine = %p.machine_id, observed = %p.observed, "reconcile: killing a workload that runs without its supervisor");
            if let Err(e) = self.effects().kill_unsupervised(rec).await {
                tracing::warn!(machine = %p.machine_id, error = %e, "reconcile: could not kill the unsupervised workload; left as recorded");
                return false;
            }
            // The kill recorded its exit; record what it says.
            match self.effects().observe(rec) {
                Observed::Gone { reason } => observed = Some(reason),
                other => {
                    tracing::warn!(machine = %p.machine_id, observed = ?other, "reconcile: after killing the unsupervised workload it is not gone; left as recorded");
                    return false;
                }
            }
        }
        tracing::info!(machine = %p.machine_id, recorded = %p.recorded, observed = ?observed, "reconcile: recording what was observed");
        match self
            .handle_exit(&p.machine_id, p.pid, p.exit.clone(), observed)
            .await
        {
            Ok(ExitOutcome::Restart(op)) => {
                let me = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = me.run(op).await {
                        tracing::warn!(error = %e, "restart after reconciliation failed");
                    }
                });
                true
            }
            Ok(ExitOutcome::Recorded(_)) => true,
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(machine = %p.machine_id, error = %e, "reconcile: could not record");
                false
            }
        }
    }
}

/// What a machine's exit (of pid `pid`) becomes, decided and written in one write: nothing
/// (an operation owns the machine, or the exit is not its current workload's), stopped or failed,
/// failed or stopped because the guard holds the restart back, or a restart operation.
fn record_exit(
    w: &mut berth_store::WriteCtx<'_, '_>,
    id: &MachineId,
    pid: Option<u32>,
    exit: ExitInfo,
    observed: Option<&str>,
    guard: &crate::guard::Guard,
) -> Result<(ExitOutcome, Option<(MachineRecord, AfterExit)>), StoreError> {
    let rec = w
        .machine(id)?
        .ok_or_else(|| StoreError::NotFound(id.clone()))?;
    if rec.active_op.is_some() {
        return Ok((ExitOutcome::Deferred, None));
    }
    if rec.state != State::Started || (pid.is_some() && rec.pid != pid) {
        return Ok((ExitOutcome::Ignored, None));
    }
    let decision = after_exit(&rec.config.restart, &exit, rec.restarts);
    let what = match (observed, exit.code, &exit.signal) {
        (Some(o), None, None) => o.to_owned(),
        _ => describe_exit(&exit),
    };
    let exited = |w: &mut berth_store::WriteCtx<'_, '_>, to: State, reason: String| {
        w.transition(
            id,
            TransitionSpec::new(to, EventKind::Exit, Source::Berth, reason).with_exit(exit.clone()),
        )
    };
    let outcome = match decision {
        AfterExit::Stop => {
            exited(w, State::Stopped, what)?;
            ExitOutcome::Recorded(State::Stopped)
        }
        AfterExit::Fail => {
            let reason = if rec.config.restart.policy == RestartPolicy::OnFailure {
                format!("{what}; no restart left (restarted {} times)", rec.restarts)
            } else {
                what
            };
            exited(w, State::Failed, reason)?;
            ExitOutcome::Recorded(State::Failed)
        }
        AfterExit::Restart { .. }
            if guard.check(GuardAction::Restart, std::slice::from_ref(id)) == Verdict::Hold =>
        {
            let clean = exit.code == Some(0) && exit.signal.is_none();
            let to = if clean { State::Stopped } else { State::Failed };
            let reason = format!(
                "{what}; restart held back by the blast-radius guard (too many machines \
                 acted on at once); it runs once an operator approves (berth host approve)"
            );
            exited(w, to, reason)?;
            ExitOutcome::Held(to)
        }
        AfterExit::Restart { delay } => {
            ExitOutcome::Restart(begin_policy_restart(w, &rec, exit, what, delay)?)
        }
    };
    Ok((outcome, Some((rec, decision))))
}

/// Begins the restart operation a machine's restart policy decided after `exit`.
fn begin_policy_restart(
    w: &mut berth_store::WriteCtx<'_, '_>,
    rec: &MachineRecord,
    exit: ExitInfo,
    what: String,
    delay: std::time::Duration,
) -> Result<OperationRecord, StoreError> {
    let steps: Vec<&str> = crate::plan(OpKind::Restart, true)
        .iter()
        .map(|s| s.name)
        .collect();
    let reason = format!(
        "{what}; restart policy {}: restart {} in {}ms",
        rec.config.restart.policy,
        rec.restarts + 1,
        delay.as_millis()
    );
    let params = berth_types::OpParams {
        delay_ms: Some(delay.as_millis() as u64),
        exit: Some(exit),
        reason: Some(reason),
        ..Default::default()
    };
    w.begin_operation(&rec.id, OpKind::Restart, Source::Berth, params, &steps)
}

fn unknown_exit() -> ExitInfo {
    ExitInfo {
        at: berth_types::Timestamp::now(),
        ..ExitInfo::default()
    }
}

fn exit_of(outcome: &ExitOutcome, rec: &MachineRecord) -> ExitInfo {
    match outcome {
        ExitOutcome::Restart(op) => op.params.exit.clone(),
        _ => rec.exit.clone(),
    }
    .unwrap_or_else(unknown_exit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: Option<i32>, signal: Option<&str>) -> ExitInfo {
        ExitInfo {
            code,
            signal: signal.map(str::to_owned),
            ..unknown_exit()
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(5), Duration::from_millis(3200));
        assert_eq!(backoff(9), Duration::from_secs(30));
        assert_eq!(backoff(1000), Duration::from_secs(30));
    }

    #[test]
    fn restart_policies() {
        let cfg = |policy, max_retries| RestartConfig {
            policy,
            max_retries,
        };
        let ok = exit(Some(0), None);
        let bad = exit(Some(1), None);
        let killed = exit(None, Some("SIGKILL"));
        let stopped = ExitInfo {
            requested_stop: true,
            ..bad.clone()
        };
        use AfterExit::*;
        use RestartPolicy::*;
        assert_eq!(after_exit(&cfg(No, None), &ok, 0), Stop);
        assert_eq!(after_exit(&cfg(No, None), &bad, 0), Fail);
        assert_eq!(after_exit(&cfg(OnFailure, Some(2)), &ok, 0), Stop);
        assert_eq!(
            after_exit(&cfg(OnFailure, Some(2)), &bad, 0),
            Restart { delay: backoff(0) }
        );
        assert_eq!(
            after_exit(&cfg(OnFailure, Some(2)), &killed, 1),
            Restart { delay: backoff(1) }
        );
        assert_eq!(after_exit(&cfg(OnFailure, Some(2)), &bad, 2), Fail);
        assert_eq!(
            after_exit(&cfg(OnFailure, None), &bad, DEFAULT_MAX_RETRIES),
            Fail
        );
        assert_eq!(
            after_exit(&cfg(Always, None), &ok, 50),
            Restart {
                delay: Duration::from_secs(30)
            }
        );
        assert_eq!(
            after_exit(&cfg(Always, None), &stopped, 0),
            Stop,
            "a requested stop is never restarted"
        );
    }
}
