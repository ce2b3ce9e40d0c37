//! The store's write and read paths against a real redb file.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_store::{OpenKind, Store, StoreError, StoreOptions, TransitionSpec};
use berth_types::{EventKind, MachineId, OpKind, Source, State};
use common::*;

#[test]
fn transitions_are_recorded_with_history_and_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    assert_eq!(store.open_kind(), OpenKind::Created);
    let ev = create(&store, "m1");
    assert_eq!(
        (ev.seq, ev.version, ev.from, ev.to),
        (1, 1, None, State::Created)
    );
    let ev = transition(&store, "m1", State::Starting).unwrap();
    assert_eq!((ev.seq, ev.version, ev.from), (2, 2, Some(State::Created)));

    let id = MachineId::parse("m1").unwrap();
    let rec = store.machine(&id).unwrap().unwrap();
    assert_eq!((rec.state, rec.version), (State::Starting, 2));
    let history = store.history(&id).unwrap();
    assert_eq!(
        history.iter().map(|e| e.to).collect::<Vec<_>>(),
        [State::Created, State::Starting]
    );
    assert_eq!(store.events_after(0, 100).unwrap(), history);
    assert_eq!(store.events_after(1, 100).unwrap().len(), 1);
    assert_eq!(store.last_seq().unwrap(), 2);
    assert!(store.check().unwrap().is_ok());
}

#[test]
fn refused_writes_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    create(&store, "m1");
    let before = store.stats().unwrap();

    let err = transition(&store, "m1", State::Stopped).unwrap_err();
    assert!(matches!(err, StoreError::IllegalTransition { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "machine m1: a machine cannot go from created to stopped"
    );
    assert!(matches!(
        transition(&store, "nope", State::Starting),
        Err(StoreError::NotFound(_))
    ));
    let rec = record("m1");
    let err = store
        .write_blocking(move |w| w.create_machine(rec, Source::User, "again"))
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)));
    let id = MachineId::parse("m1").unwrap();
    let err = store
        .write_blocking(move |w| {
            w.transition(
                &id,
                TransitionSpec::new(State::Starting, EventKind::Start, Source::User, "")
                    .expecting(7),
            )
        })
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::VersionMismatch {
                expected: 7,
                actual: 1,
                ..
            }
        ),
        "{err}"
    );

    // A closure that writes and then fails leaves nothing behind either.
    let id = MachineId::parse("m1").unwrap();
    let err = store
        .write_blocking(move |w| {
            w.transition(
                &id,
                TransitionSpec::new(State::Starting, EventKind::Start, Source::User, ""),
            )?;
            w.transition(
                &id,
                TransitionSpec::new(State::Created, EventKind::Start, Source::User, ""),
            )
        })
        .unwrap_err();
    assert!(matches!(err, StoreError::IllegalTransition { .. }));
    assert_eq!(store.stats().unwrap().tables, before.tables);
    assert_eq!(store.last_seq().unwrap(), 1);
    assert!(store.check().unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_write_does_not_spoil_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    // A commit delay makes the writer batch everything queued behind the first commit.
    let opts = StoreOptions {
        commit_delay: Duration::from_millis(30),
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path().join("berth.redb"), opts).unwrap();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let rec = record(&format!("m{i}"));
            let id = rec.id.clone();
            store
                .write(move |w| {
                    w.create_machine(rec, Source::User, "batch")?;
                    if i % 5 == 0 {
                        // Illegal: refused, and its create must vanish with it.
                        w.transition(
                            &id,
                            TransitionSpec::new(State::Stopped, EventKind::Stop, Source::User, ""),
                        )?;
                    }
                    Ok(())
                })
                .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap().is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 40);
    assert_eq!(store.machines().unwrap().len(), 40);
    let events = store.events_after(0, 1000).unwrap();
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=40).collect::<Vec<_>>()
    );
    assert!(store.check().unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        queue_capacity: 4,
        max_batch: 1,
        commit_delay: Duration::from_millis(200),
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path().join("berth.redb"), opts).unwrap();
    let mut refused = 0;
    let mut accepted = 0;
    let mut futs = Vec::new();
    for i in 100..130 {
        let store = store.clone();
        let rec = record(&format!("m{i}"));
        futs.push(tokio::spawn(async move {
            let t = std::time::Instant::now();
            let r = store
                .write(move |w| w.create_machine(rec, Source::User, ""))
                .await;
            (r.map(|_| ()), t.elapsed())
        }));
    }
    for f in futs {
        let (r, took) = f.await.unwrap();
        if let Err(e) = r {
            assert!(matches!(e, StoreError::Overloaded { capacity: 4 }), "{e}");
            assert!(e.is_retryable());
            // Refused without waiting for a commit (each takes 200ms here).
            assert!(took < Duration::from_millis(150), "refusal took {took:?}");
            refused += 1;
        } else {
            accepted += 1;
        }
    }
    // At most the queue plus the batch in the writer's hands can be accepted.
    assert!((4..=6).contains(&accepted), "accepted {accepted}");
    assert_eq!(refused + accepted, 30);
    assert_eq!(store.machines().unwrap().len(), accepted);
}

#[test]
fn slow_commits_fire_the_hook_and_timings_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let opts = StoreOptions {
        // Far above what an open or a read takes on a loaded machine (a fresh open took 45 ms
        // under load with a 20 ms threshold), so only the delayed commit is slow.
        slow_op_threshold: Duration::from_millis(150),
        commit_delay: Duration::from_millis(200),
        slow_op_hook: Some(Arc::new(move |s: &berth_store::SlowOp| {
            sink.lock().unwrap().push(s.clone())
        })),
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path().join("berth.redb"), opts).unwrap();
    create(&store, "m1");
    let seen = seen.lock().unwrap();
    let commit = seen
        .iter()
        .find(|s| s.op == "commit")
        .expect("a slow commit was reported");
    assert!(commit.duration >= Duration::from_millis(200));
    assert_eq!(commit.batch_size, 1);
    assert!(commit.bytes > 0);
    assert!(
        seen.iter().all(|s| s.op == "commit"),
        "only commits are slow: {seen:?}"
    );
}

#[test]
fn state_and_counters_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let op_id;
    {
        let store = open(&dir);
        create(&store, "m1");
        let id = MachineId::parse("m1").unwrap();
        let op = store
            .write_blocking(move |w| {
                w.begin_operation(
                    &id,
                    OpKind::Start,
                    Source::User,
                    Default::default(),
                    &["mark_starting", "spawn", "mark_started"],
                )
            })
            .unwrap();
        op_id = op.id;
        store
            .write_blocking(move |w| w.complete_step(op_id, "mark_starting"))
            .unwrap();
        store.close();
    }
    let store = open(&dir);
    assert_eq!(store.open_kind(), OpenKind::Clean);
    let ops = store.operations().unwrap();
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].next_step(), Some("spawn"));
    // A second operation on the busy machine is refused.
    let id = MachineId::parse("m1").unwrap();
    let err = store
        .write_blocking(move |w| {
            w.begin_operation(&id, OpKind::Stop, Source::User, Default::default(), &["x"])
        })
        .unwrap_err();
    assert!(matches!(err, StoreError::Busy { op, .. } if op == op_id));
    let ev = create(&store, "m2");
    assert_eq!(ev.seq, 2, "seq continues after reopen");
    store
        .write_blocking(move |w| w.finish_operation(op_id))
        .unwrap();
    assert!(store.operations().unwrap().is_empty());
    let report = store.check().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.seq_range, Some((1, 2)));
}

#[test]
fn a_second_opener_is_refused_while_the_first_holds_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let err = Store::open(dir.path().join("berth.redb"), StoreOptions::default()).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("another berthd"));
    drop(store);
    open(&dir);
}

/// The history index is materialized from the log in generations written a slice per commit;
/// whatever point a reader looks at, a machine's history is exactly versions 1..=n.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_exact_while_the_index_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    const MACHINES: usize = 40;
    const ROUNDS: usize = 120; // 40 × 121 events: several generations of several slices each
    let cycle = [
        State::Starting,
        State::Started,
        State::Stopping,
        State::Stopped,
    ];
    let mut tasks = Vec::new();
    for m in 0..MACHINES {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let rec = record(&format!("m{m}"));
            let id = rec.id.clone();
            store
                .write(move |w| w.create_machine(rec, Source::User, ""))
                .await
                .unwrap();
            for r in 0..ROUNDS {
                let (id, to) = (id.clone(), cycle[r % 4]);
                store
                    .write(move |w| {
                        w.transition(
                            &id,
                            TransitionSpec::new(to, EventKind::Start, Source::User, ""),
                        )
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    let mut looks = 0;
    while !tasks.iter().all(|t| t.is_finished()) {
        for m in [0, MACHINES / 2, MACHINES - 1] {
            let history = store
                .history(&MachineId::parse(&format!("m{m}")).unwrap())
                .unwrap();
            let versions: Vec<u64> = history.iter().map(|e| e.version).collect();
            assert_eq!(
                versions,
                (1..=versions.len() as u64).collect::<Vec<_>>(),
                "m{m}"
            );
        }
        let report = store.check().unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        looks += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(looks > 3, "only looked {looks} times while writing");
    let stats = store.stats().unwrap();
    let total = (MACHINES * (ROUNDS + 1)) as u64;
    assert_eq!(stats.next_seq, total + 1);
    assert!(
        stats.history_seq < total,
        "the index is expected to lag the log while writing"
    );
    drop(store);

    // A clean close materializes everything.
    let store = open(&dir);
    let stats = store.stats().unwrap();
    assert_eq!(stats.history_seq, total);
    assert_eq!(stats.tables["history"], total);
    for m in 0..MACHINES {
        assert_eq!(
            store
                .history(&MachineId::parse(&format!("m{m}")).unwrap())
                .unwrap()
                .len(),
            ROUNDS + 1
        );
    }
    assert!(store.check().unwrap().is_ok());
}
