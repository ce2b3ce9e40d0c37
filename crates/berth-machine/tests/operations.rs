//! Durable operations over a real store, with an in-memory effects recorder.
//!
//! The driver that runs real processes implements `Effects` in its own crate; here the effects
//! only record what was asked of them, so the tests can check which steps ran, and how often.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_types::RestartPolicy;

use berth_machine::{
    CreateRequest, EffectError, Effects, ExitOutcome, Machines, Observed, OpError, ReconcileConfig,
};
use berth_store::{Store, StoreError, StoreOptions};
use berth_types::{
    ExitInfo, MachineConfig, MachineId, MachineRecord, OpKind, Source, State, Timestamp,
};

#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<String>>,
    running: Mutex<BTreeMap<String, u32>>,
    next_pid: Mutex<u32>,
    fail_spawn: Mutex<bool>,
    /// What `observe` reports per machine; absent means running with its recorded pid.
    observed: Mutex<BTreeMap<String, Observed>>,
    orphans: Mutex<Vec<String>>,
}

impl Recorder {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
    fn log(&self, what: &str, m: &MachineRecord) {
        self.calls.lock().unwrap().push(format!("{what} {}", m.id));
    }
}

impl Effects for Recorder {
    async fn spawn(&self, m: &MachineRecord) -> Result<u32, EffectError> {
        self.log("spawn", m);
        if *self.fail_spawn.lock().unwrap() {
            return Err(EffectError("exec /nonexistent: no such file".into()));
        }
        let mut running = self.running.lock().unwrap();
        if let Some(pid) = running.get(m.id.as_str()) {
            return Ok(*pid);
        }
        let mut next = self.next_pid.lock().unwrap();
        *next += 1;
        running.insert(m.id.to_string(), 1000 + *next);
        Ok(1000 + *next)
    }
    async fn stop_workload(
        &self,
        m: &MachineRecord,
        signal: &str,
        _t: Duration,
    ) -> Result<Option<ExitInfo>, EffectError> {
        self.log(&format!("stop({signal})"), m);
        Ok(self
            .running
            .lock()
            .unwrap()
            .remove(m.id.as_str())
            .map(|_| ExitInfo {
                signal: Some(signal.to_owned()),
                requested_stop: true,
                at: Timestamp::now(),
                ..ExitInfo::default()
            }))
    }
    async fn cleanup(&self, m: &MachineRecord) -> Result<(), EffectError> {
        self.log("cleanup", m);
        Ok(())
    }
    fn check_config(&self, config: &MachineConfig) -> Result<(), String> {
        match config.resources.memory_mb {
            Some(_) => {
                Err("config.resources.memory_mb: this host cannot enforce a memory limit".into())
            }
            None => Ok(()),
        }
    }
    fn observe(&self, m: &MachineRecord) -> Observed {
        self.observed
            .lock()
            .unwrap()
            .get(m.id.as_str())
            .cloned()
            .unwrap_or(Observed::Running {
                pid: m.pid.unwrap_or(0),
            })
    }
    fn orphans(&self, known: &std::collections::BTreeSet<String>) -> Vec<String> {
        self.orphans
            .lock()
            .unwrap()
            .iter()
            .filter(|o| !known.contains(*o))
            .cloned()
            .collect()
    }
}

fn setup(dir: &tempfile::TempDir) -> (Machines<Recorder>, Arc<Recorder>) {
    let store = Store::open(dir.path().join("berth.redb"), StoreOptions::default()).unwrap();
    let fx = Arc::new(Recorder::default());
    (Machines::new(store, fx.clone()), fx)
}

fn request(id: &str, skip_start: bool) -> CreateRequest {
    CreateRequest {
        id: Some(MachineId::parse(id).unwrap()),
        name: None,
        config: MachineConfig::command(["/bin/sleep", "100"]),
        metadata: BTreeMap::new(),
        skip_start,
        source: Source::User,
    }
}

fn states(m: &Machines<Recorder>, id: &MachineId) -> Vec<State> {
    m.store()
        .history(id)
        .unwrap()
        .iter()
        .map(|e| e.to)
        .collect()
}

#[tokio::test]
async fn full_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let (m, fx) = setup(&dir);
    let (rec, op) = m.create(request("m1", false)).await.unwrap();
    assert_eq!(rec.active_op, Some(op.id));
    let out = m.run(op).await.unwrap();
    assert_eq!(
        (out.machine.state, out.machine.pid, out.machine.active_op),
        (State::Started, Some(1001), None)
    );
    let id = rec.id.clone();

    let op = m
        .begin(&id, OpKind::Stop, Source::User, Some("SIGINT".into()), None)
        .await
        .unwrap();
    let out = m.run(op).await.unwrap();
    assert_eq!(out.machine.state, State::Stopped);
    assert_eq!(out.machine.pid, None);
    let exit = out.machine.exit.unwrap();
    assert!(exit.requested_stop);
    assert_eq!(exit.signal.as_deref(), Some("SIGINT"));

    let op = m
        .begin(&id, OpKind::Start, Source::User, None, None)
        .await
        .unwrap();
    assert_eq!(m.run(op).await.unwrap().machine.pid, Some(1002));
    let op = m
        .begin(&id, OpKind::Restart, Source::User, None, None)
        .await
        .unwrap();
    assert_eq!(m.run(op).await.unwrap().machine.pid, Some(1003));
    let op = m
        .begin(&id, OpKind::Destroy, Source::User, None, None)
        .await
        .unwrap();
    assert_eq!(m.run(op).await.unwrap().machine.state, State::Destroyed);

    use State::*;
    assert_eq!(
        states(&m, &id),
        [
            Created, Starting, Started, Stopping, Stopped, Starting, Started, Restarting, Started,
            Destroying, Destroyed
        ]
    );
    assert_eq!(
        fx.calls(),
        [
            "spawn m1",
            "stop(SIGINT) m1",
            "spawn m1",
            "stop(SIGTERM) m1",
            "spawn m1",
            "stop(SIGTERM) m1",
            "cleanup m1"
        ]
    );
    assert!(m.store().operations().unwrap().is_empty());
    assert!(m.store().check().unwrap().is_ok());
}

#[tokio::test]
async fn refused_operations_record_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (m, fx) = setup(&dir);
    let (rec, op) = m.create(request("m1", false)).await.unwrap();
    // Busy: the create operation is still in flight.
    let err = m
        .begin(&rec.id, OpKind::Stop, Source::User, None, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, OpError::Store(StoreError::Busy { .. })),
        "{err}"
    );
    m.run(op).await.unwrap();
    // `history` is an index of the event log that the writer materializes a generation at a time
    // in later commits (a refused request's commit can carry the indexer's slice): compare the
    // tables that hold records, and the event log the index is built from.
    let records = |m: &Machines<Recorder>| {
        let mut t = m.store().stats().unwrap().tables;
        t.remove("history");
        t
    };
    let before = records(&m);
    let err = m
        .begin(&rec.id, OpKind::Start, Source::User, None, None)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "machine m1: a machine cannot go from started to starting"
    );
    let missing = MachineId::parse("nope").unwrap();
    assert!(matches!(
        m.begin(&missing, OpKind::Start, Source::User, None, None)
            .await,
        Err(OpError::Store(StoreError::NotFound(_)))
    ));
    assert_eq!(records(&m), before);
    assert_eq!(fx.calls(), ["spawn m1"]);
}

#[tokio::test]
async fn a_failed_spawn_fails_the_machine_and_frees_it() {
    let dir = tempfile::tempdir().unwrap();
    let (m, fx) = setup(&dir);
    *fx.fail_spawn.lock().unwrap() = true;
    let (rec, op) = m.create(request("m1", false)).await.unwrap();
    let err = m.run(op).await.unwrap_err();
    assert!(
        matches!(err, OpError::Effect { step: "spawn", .. }),
        "{err}"
    );
    let now = m.store().machine(&rec.id).unwrap().unwrap();
    assert_eq!((now.state, now.active_op), (State::Failed, None));
    let last = m.store().history(&rec.id).unwrap().pop().unwrap();
    assert!(last.reason.contains("no such file"), "{}", last.reason);
    *fx.fail_spawn.lock().unwrap() = false;
    let op = m
        .begin(&rec.id, OpKind::Start, Source::User, None, None)
        .await
        .unwrap();
    assert_eq!(m.run(op).await.unwrap().machine.state, State::Started);
}

/// An operation interrupted after its first step resumes from the second, after a reopen.
#[tokio::test]
async fn interrupted_operations_resume_from_their_first_unfinished_step() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, stop_id);
    {
        let (m, _) = setup(&dir);
        let mut made = Vec::new();
        for i in 0..3 {
            let (rec, op) = m.create(request(&format!("m{i}"), true)).await.unwrap();
            m.run(op).await.unwrap();
            made.push(rec.id);
        }
        // m0 and m1: a start recorded (its mark_starting is done in the same write), and the
        // agent died before spawning.
        for id in &made[..2] {
            let op = m
                .begin(id, OpKind::Start, Source::User, None, None)
                .await
                .unwrap();
            assert_eq!(op.next_step(), Some("spawn"));
        }
        // m9 was started, then a stop got as far as its signal (stop_workload not recorded).
        let (rec, op) = m.create(request("m9", false)).await.unwrap();
        m.run(op).await.unwrap();
        let op = m
            .begin(&rec.id, OpKind::Stop, Source::User, None, None)
            .await
            .unwrap();
        assert_eq!(op.next_step(), Some("stop_workload"));
        assert_eq!(
            m.store().machine(&rec.id).unwrap().unwrap().state,
            State::Stopping
        );
        ids = made;
        stop_id = rec.id;
    }

    // A new agent: fresh effects that know m9's workload still runs (pid 4242).
    let (m, fx) = setup(&dir);
    fx.running.lock().unwrap().insert("m9".into(), 4242);
    assert_eq!(m.store().operations().unwrap().len(), 3);
    let results = m.resume_all().await.unwrap();
    assert_eq!(results.len(), 3);
    for (op, r) in &results {
        assert!(r.is_ok(), "operation {op}: {:?}", r.as_ref().err());
    }
    assert_eq!(fx.calls(), ["spawn m0", "spawn m1", "stop(SIGTERM) m9"]);
    for id in &ids[..2] {
        assert_eq!(
            m.store().machine(id).unwrap().unwrap().state,
            State::Started
        );
    }
    let stopped = m.store().machine(&stop_id).unwrap().unwrap();
    assert_eq!(stopped.state, State::Stopped);
    assert!(stopped.exit.unwrap().requested_stop);
    assert!(m.store().operations().unwrap().is_empty());
    let report = m.store().check().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

/// A step whose transition became illegal while the agent was down abandons its operation.
#[tokio::test]
async fn an_operation_that_cannot_complete_is_abandoned() {
    let dir = tempfile::tempdir().unwrap();
    let (m, _) = setup(&dir);
    let (rec, op) = m.create(request("m1", false)).await.unwrap();
    m.run(op).await.unwrap();
    let op = m
        .begin(&rec.id, OpKind::Stop, Source::User, None, None)
        .await
        .unwrap();
    let id = rec.id.clone();
    // Meanwhile the workload exited on its own and was recorded as stopped.
    m.store()
        .write(move |w| {
            w.transition(
                &id,
                berth_store::TransitionSpec::new(
                    State::Stopped,
                    berth_types::EventKind::Exit,
                    Source::Berth,
                    "exited",
                ),
            )
        })
        .await
        .unwrap();
    let err = m.run(op).await.unwrap_err();
    assert!(
        matches!(err, OpError::Store(StoreError::IllegalTransition { .. })),
        "{err}"
    );
    let now = m.store().machine(&rec.id).unwrap().unwrap();
    assert_eq!((now.state, now.active_op), (State::Stopped, None));
    assert!(m.store().operations().unwrap().is_empty());
}

fn exited(code: i32) -> ExitInfo {
    ExitInfo {
        code: Some(code),
        at: Timestamp::now(),
        ..ExitInfo::default()
    }
}

async fn started(
    m: &Machines<Recorder>,
    id: &str,
    policy: RestartPolicy,
    max_retries: Option<u32>,
) -> MachineRecord {
    let mut req = request(id, false);
    req.config.restart = berth_types::RestartConfig {
        policy,
        max_retries,
    };
    let (_, op) = m.create(req).await.unwrap();
    m.run(op).await.unwrap().machine
}

#[tokio::test]
async fn exits_follow_the_restart_policy() {
    let dir = tempfile::tempdir().unwrap();
    let (m, fx) = setup(&dir);
    // no: clean exit → stopped, unclean → failed.
    let a = started(&m, "a", RestartPolicy::No, None).await;
    assert!(matches!(
        m.handle_exit(&a.id, a.pid, exited(0), None).await.unwrap(),
        ExitOutcome::Recorded(State::Stopped)
    ));
    let b = started(&m, "b", RestartPolicy::No, None).await;
    assert!(matches!(
        m.handle_exit(&b.id, b.pid, exited(2), None).await.unwrap(),
        ExitOutcome::Recorded(State::Failed)
    ));
    let last = m.store().history(&b.id).unwrap().pop().unwrap();
    assert_eq!(
        (last.source, last.reason.as_str()),
        (Source::Berth, "exited with code 2")
    );
    assert_eq!(last.exit.unwrap().code, Some(2));

    // on-failure with 2 retries: two restarts with growing backoff, then failed.
    let mut c = started(&m, "c", RestartPolicy::OnFailure, Some(2)).await;
    for attempt in 1..=2u32 {
        fx.running.lock().unwrap().remove("c");
        let t = std::time::Instant::now();
        let ExitOutcome::Restart(op) = m.handle_exit(&c.id, c.pid, exited(1), None).await.unwrap()
        else {
            panic!("expected a restart")
        };
        c = m.run(op).await.unwrap().machine;
        assert!(
            t.elapsed() >= berth_machine::backoff(attempt - 1),
            "restart {attempt} came before its backoff"
        );
        assert_eq!((c.state, c.restarts), (State::Started, attempt));
    }
    let restart_event = m
        .store()
        .history(&c.id)
        .unwrap()
        .into_iter()
        .find(|e| e.to == State::Restarting)
        .unwrap();
    assert_eq!(restart_event.source, Source::Berth);
    assert!(
        restart_event
            .reason
            .contains("exited with code 1; restart policy on-failure: restart 1"),
        "{}",
        restart_event.reason
    );
    assert_eq!(restart_event.exit.unwrap().code, Some(1));
    assert!(matches!(
        m.handle_exit(&c.id, c.pid, exited(1), None).await.unwrap(),
        ExitOutcome::Recorded(State::Failed)
    ));
    let last = m.store().history(&c.id).unwrap().pop().unwrap();
    assert!(
        last.reason.contains("no restart left (restarted 2 times)"),
        "{}",
        last.reason
    );

    // A user start resets the count.
    let op = m
        .begin(&c.id, OpKind::Start, Source::User, None, None)
        .await
        .unwrap();
    assert_eq!(m.run(op).await.unwrap().machine.restarts, 0);
    assert!(m.store().check().unwrap().is_ok());
}

#[tokio::test]
async fn stale_and_concurrent_exits_are_not_misapplied() {
    let dir = tempfile::tempdir().unwrap();
    let (m, _) = setup(&dir);
    let a = started(&m, "a", RestartPolicy::Always, None).await;
    // An exit of another instance (another pid) is ignored.
    assert!(matches!(
        m.handle_exit(&a.id, Some(1), exited(1), None)
            .await
            .unwrap(),
        ExitOutcome::Ignored
    ));
    // While an operation is in flight, the operation owns the exit.
    let op = m
        .begin(&a.id, OpKind::Stop, Source::User, None, None)
        .await
        .unwrap();
    assert!(matches!(
        m.handle_exit(&a.id, a.pid, exited(1), None).await.unwrap(),
        ExitOutcome::Deferred
    ));
    m.run(op).await.unwrap();
    // A stopped machine's late exit changes nothing.
    assert!(matches!(
        m.handle_exit(&a.id, a.pid, exited(1), None).await.unwrap(),
        ExitOutcome::Ignored
    ));
    assert_eq!(
        m.store().machine(&a.id).unwrap().unwrap().state,
        State::Stopped
    );
}

#[tokio::test]
async fn reconcile_records_what_it_finds_and_reports_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let (m, fx) = setup(&dir);
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(started(&m, &format!("m{i}"), RestartPolicy::No, None).await);
    }
    fx.observed.lock().unwrap().insert(
        "m3".into(),
        Observed::Exited {
            pid: ids[3].pid.unwrap(),
            exit: exited(4),
        },
    );
    fx.observed.lock().unwrap().insert(
        "m5".into(),
        Observed::Gone {
            reason: "supervisor gone, no exit recorded".into(),
        },
    );
    fx.orphans.lock().unwrap().push("stray".into());
    let report = m
        .reconcile(&ReconcileConfig::default(), false)
        .await
        .unwrap();
    assert_eq!(
        (
            report.examined,
            report.planned.len(),
            report.applied,
            report.blocked
        ),
        (10, 2, 2, false)
    );
    assert_eq!(report.orphans, ["stray"]);
    assert_eq!(
        m.store().machine(&ids[3].id).unwrap().unwrap().state,
        State::Failed
    );
    let m5 = m.store().history(&ids[5].id).unwrap().pop().unwrap();
    assert_eq!((m5.to, m5.source), (State::Failed, Source::Berth));
    // The orphan is only reported: nothing was asked of the effects for it.
    assert!(!fx.calls().iter().any(|c| c.contains("stray")));
}

#[tokio::test]
async fn the_blast_radius_guard_refuses_a_pass_that_would_fail_most_machines() {
    let dir = tempfile::tempdir().unwrap();
    let (m, _fx) = setup(&dir);
    let fx = m.effects().clone();
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(started(&m, &format!("m{i}"), RestartPolicy::No, None).await);
    }
    for i in 0..6 {
        fx.observed.lock().unwrap().insert(
            format!("m{i}"),
            Observed::Gone {
                reason: "gone".into(),
            },
        );
    }
    let before = m.store().last_seq().unwrap();
    let report = m
        .reconcile(&ReconcileConfig::default(), false)
        .await
        .unwrap();
    assert!(report.blocked);
    assert_eq!((report.planned.len(), report.applied), (6, 0));
    assert_eq!(
        m.store().last_seq().unwrap(),
        before,
        "a blocked pass changes nothing"
    );
    // Configured off, or approved by an operator, the same pass goes through.
    let off = ReconcileConfig {
        guard: false,
        ..ReconcileConfig::default()
    };
    let report = m.reconcile(&off, false).await.unwrap();
    assert_eq!((report.blocked, report.applied), (false, 6));
    // Small hosts: 3 of 4 is more than half, but not more than 3 machines.
    let dir = tempfile::tempdir().unwrap();
    let (m, fx) = setup(&dir);
    for i in 0..4 {
        started(&m, &format!("s{i}"), RestartPolicy::No, None).await;
    }
    for i in 0..3 {
        fx.observed.lock().unwrap().insert(
            format!("s{i}"),
            Observed::Gone {
                reason: "gone".into(),
            },
        );
    }
    let report = m
        .reconcile(&ReconcileConfig::default(), false)
        .await
        .unwrap();
    assert_eq!((report.blocked, report.applied), (false, 3));
}

#[tokio::test]
async fn an_unenforceable_or_invalid_config_is_refused_before_anything_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let (m, fx) = setup(&dir);
    let mut req = request("m1", false);
    req.config.resources.memory_mb = Some(64);
    let err = m.create(req).await.unwrap_err();
    assert!(
        matches!(&err, OpError::Invalid(msg) if msg.starts_with("config.resources.memory_mb")),
        "{err}"
    );
    let mut req = request("m2", false);
    req.config.cmd.clear();
    assert!(matches!(
        m.create(req).await.unwrap_err(),
        OpError::Invalid(_)
    ));
    assert!(m.store().machines().unwrap().is_empty());
    assert_eq!(m.store().last_seq().unwrap(), 0);
    assert!(fx.calls().is_empty());
}

#[tokio::test]
async fn policy_restarts_of_most_of_the_host_at_once_are_held_by_the_guard() {
    let dir = tempfile::tempdir().unwrap();
    let (m, _) = setup(&dir);
    let mut ms = Vec::new();
    for i in 0..10 {
        ms.push(started(&m, &format!("m{i}"), RestartPolicy::Always, None).await);
    }
    // Reconciliation tells the guard how many machines live here.
    m.reconcile(&ReconcileConfig::default(), false)
        .await
        .unwrap();
    let mut outcomes = Vec::new();
    for rec in &ms[..7] {
        outcomes.push(
            m.handle_exit(&rec.id, rec.pid, exited(1), None)
                .await
                .unwrap(),
        );
    }
    // Five of ten may restart within the window; the sixth is more than half.
    for o in &outcomes[..5] {
        assert!(matches!(o, ExitOutcome::Restart(_)), "{o:?}");
    }
    for o in &outcomes[5..] {
        assert!(matches!(o, ExitOutcome::Held(State::Failed)), "{o:?}");
    }
    let held = m.store().machine(&ms[6].id).unwrap().unwrap();
    assert_eq!(held.state, State::Failed);
    assert!(held.active_op.is_none());
    let last = m.store().history(&ms[6].id).unwrap().pop().unwrap();
    assert!(
        last.reason
            .contains("restart held back by the blast-radius guard"),
        "{}",
        last.reason
    );
    let status = m.guard().status();
    assert!(status.tripped);
    assert_eq!(status.held.len(), 2);
    // An operator's approval releases both and re-arms the guard.
    assert!(m.guard().approve().len() == 2);
    assert!(!m.guard().is_tripped());
    assert!(m.store().check().unwrap().is_ok());
}

/// A create that does not start is one write: the machine, its create event and the operation
/// begun and ended together. Nothing runs outside the store and nothing is left in flight, so an
/// answer refused for want of space (the one write failing) recorded nothing at all.
#[tokio::test]
async fn a_create_without_start_is_one_write_and_touches_nothing_on_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let (m, fx) = setup(&dir);
    let before = m.store().writer_stats().writes;
    let (rec, op) = m.create(request("m1", true)).await.unwrap();
    assert_eq!(rec.state, State::Created);
    assert_eq!(rec.active_op, None, "{op:?}");
    assert!(m.store().operations().unwrap().is_empty());
    let out = m.run(op).await.unwrap();
    assert_eq!(out.machine.state, State::Created);
    assert_eq!(m.store().writer_stats().writes - before, 1);
    assert!(fx.calls().is_empty(), "{:?}", fx.calls());
    // It starts like any created machine.
    let op = m
        .begin(&rec.id, OpKind::Start, Source::User, None, None)
        .await
        .unwrap();
    m.run(op).await.unwrap();
    assert_eq!(fx.calls(), ["spawn m1"]);
    assert_eq!(
        m.store().machine(&rec.id).unwrap().unwrap().state,
        State::Started
    );
}

/// An earlier version's create without start had a `prepare` step (the machine's directory,
/// now made at its first start). One left in flight by that version resumes and ends after an
/// upgrade instead of being refused as an unknown plan.
#[tokio::test]
async fn a_create_left_in_flight_with_the_retired_prepare_step_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let id = MachineId::parse("m1").unwrap();
    {
        let (m, _) = setup(&dir);
        let rec = MachineRecord::new(
            id.clone(),
            Some("m1".into()),
            MachineConfig::command(["/bin/sleep", "100"]),
            BTreeMap::new(),
            Timestamp::now(),
        );
        m.store()
            .write(move |w| {
                let id = rec.id.clone();
                w.create_machine(rec, Source::User, "create requested")?;
                let params = berth_types::OpParams {
                    start: Some(false),
                    ..Default::default()
                };
                w.begin_operation(&id, OpKind::Create, Source::User, params, &["prepare"])
            })
            .await
            .unwrap();
    }
    let (m, fx) = setup(&dir);
    let results = m.resume_all().await.unwrap();
    assert_eq!(results.len(), 1);
    let out = results[0].1.as_ref().unwrap();
    assert_eq!(out.machine.state, State::Created);
    assert_eq!(out.machine.active_op, None);
    assert!(m.store().operations().unwrap().is_empty());
    assert!(fx.calls().is_empty(), "{:?}", fx.calls());
}
