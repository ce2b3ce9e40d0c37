//! Retention and online compaction against a real redb file, with writers running throughout.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::sync::Arc;
use std::time::Duration;

use berth_store::{RetentionPolicy, Store, StoreError, StoreOptions, TransitionSpec};
use berth_types::{EventKind, MachineId, Source, State};
use common::*;

const CYCLE: [State; 4] = [
    State::Starting,
    State::Started,
    State::Stopping,
    State::Stopped,
];

/// `machines` machines, each taken round the start/stop cycle `rounds` times.
async fn churn(store: &Store, prefix: &str, machines: usize, rounds: usize) {
    let mut tasks = Vec::new();
    for m in 0..machines {
        let store = store.clone();
        let id = format!("{prefix}{m}");
        tasks.push(tokio::spawn(async move {
            let rec = record(&id);
            store
                .write(move |w| w.create_machine(rec, Source::User, "test"))
                .await
                .unwrap();
            let id = MachineId::parse(&id).unwrap();
            for to in CYCLE.iter().cycle().take(rounds * 4) {
                let (id, to) = (id.clone(), *to);
                store
                    .write(move |w| {
                        w.transition(
                            &id,
                            TransitionSpec::new(to, EventKind::Start, Source::User, "churn"),
                        )
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

fn policy(max_per_machine: u64, max_events: u64, ttl: Duration) -> RetentionPolicy {
    RetentionPolicy {
        destroyed_machine_ttl: ttl,
        max_events_per_machine: max_per_machine,
        max_events,
        batch_rows: 100,
        pause: Duration::ZERO,
        export_hold: None,
    }
}

/// Waits until the history index has caught up with the log (retention only trims indexed rows).
async fn indexed(store: &Store) {
    for _ in 0..200 {
        let st = store.stats().unwrap();
        if st.history_seq + 1 >= st.next_seq {
            return;
        }
        // Any write lets the writer run the indexer's next slice.
        let _ = store.write(|_| Ok(())).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("history index never caught up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_caps_history_removes_destroyed_machines_and_bounds_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    churn(&store, "keep", 4, 10).await; // 41 transitions each
    tokio::task::block_in_place(|| {
        create(&store, "gone");
        for to in [State::Destroying, State::Destroyed] {
            transition(&store, "gone", to).unwrap();
        }
    });
    indexed(&store).await;
    let before = store.stats().unwrap();

    // Nothing is old enough yet: only the per-machine cap applies.
    let r = store
        .retain(&policy(10, 1_000_000, Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(r.machines_removed, 0);
    assert_eq!(r.history_rows_removed, 4 * (41 - 10));
    assert_eq!(r.events_removed, 0);
    let keep0 = MachineId::parse("keep0").unwrap();
    let h = store.history(&keep0).unwrap();
    assert_eq!(h.len(), 10);
    assert_eq!(
        h.iter().map(|e| e.version).collect::<Vec<_>>(),
        (32..=41).collect::<Vec<_>>()
    );
    let rec = store.machine(&keep0).unwrap().unwrap();
    assert_eq!((rec.version, rec.state), (41, State::Stopped));
    let report = store.check().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);

    // TTL zero: the destroyed machine goes, record and history; the log keeps its newest 50.
    let r = store.retain(&policy(10, 50, Duration::ZERO)).await.unwrap();
    assert_eq!(r.machines_removed, 1);
    assert_eq!(r.history_rows_removed, 3);
    let gone = MachineId::parse("gone").unwrap();
    assert!(store.machine(&gone).unwrap().is_none());
    assert!(store.history(&gone).unwrap().is_empty());
    let after = store.stats().unwrap();
    assert_eq!(after.tables["events"], 50);
    assert_eq!(r.events_removed, before.tables["events"] - 50);
    let oldest = after.first_seq.unwrap();
    assert_eq!(oldest, after.next_seq - 50);
    let report = store.check().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);

    // A consumer behind the log is told to resync, never silently skipped ahead.
    match store.events_after(oldest - 2, 10) {
        Err(StoreError::Expired { after, oldest: o }) => {
            assert_eq!((after, o), (oldest - 2, oldest))
        }
        other => panic!("expected Expired, got {other:?}"),
    }
    assert_eq!(store.events_after(oldest - 1, 10).unwrap()[0].seq, oldest);

    // Idempotent: a second pass finds nothing to do.
    let r = store.retain(&policy(10, 50, Duration::ZERO)).await.unwrap();
    assert!(r.is_empty(), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_compaction_shrinks_the_file_and_keeps_every_concurrent_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.redb");
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    // Bloat: lots of history, then retention removes most of it, leaving free pages.
    churn(&store, "bloat", 64, 40).await;
    indexed(&store).await;
    store.retain(&policy(4, 500, Duration::ZERO)).await.unwrap();
    let before = store.stats().unwrap();
    assert!(
        before.garbage_ratio() > 0.5,
        "test setup should leave garbage: {before:?}"
    );

    // Writers keep going through the whole compaction.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let rec = record(&format!("during{n}"));
                let ev = store
                    .write(move |w| w.create_machine(rec, Source::User, "during compaction"))
                    .await
                    .unwrap();
                acked.push(ev);
                n += 1;
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    let s = store.clone();
    let report = tokio::task::spawn_blocking(move || s.compact())
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = writer.await.unwrap();
    assert!(acked.len() > 10, "the writer should have kept writing");

    assert!(report.size_after < report.size_before, "{report:?}");
    assert!(
        report.allocated_after as f64 <= 1.3 * before.live_bytes as f64 + (1 << 20) as f64,
        "the file's disk usage after compaction should be close to the live bytes: {report:?}"
    );
    assert!(
        report.allocated_after < report.allocated_before,
        "{report:?}"
    );
    // redb may already have reserved a sparse tail (it grows by doubling), never more.
    assert!(
        report.size_after as f64 <= 2.0 * before.live_bytes as f64 + (1 << 20) as f64,
        "{report:?}"
    );
    let stats = store.stats().unwrap();
    assert_eq!(stats.last_compaction.as_ref(), Some(&report));
    assert!(stats.compaction.is_none());
    for ev in &acked {
        let rec = store.machine(&ev.machine_id).unwrap();
        assert!(
            rec.is_some(),
            "write acknowledged during compaction is lost: {ev:?}"
        );
        assert_eq!(store.events_after(ev.seq - 1, 1).unwrap()[0], *ev);
    }
    let check = store.check().unwrap();
    assert!(check.is_ok(), "{:?}", check.problems);

    // And it all survives a reopen of the swapped file.
    drop(store);
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    for ev in &acked {
        assert!(store.machine(&ev.machine_id).unwrap().is_some());
    }
    assert!(store.check().unwrap().is_ok());
    assert!(!dir.path().join("berth.redb.compact").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_compaction_at_a_time_and_a_full_disk_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.redb");
    let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = std::sync::Mutex::new(release_rx);
    let entered_tx = std::sync::Mutex::new(entered_tx);
    let options = StoreOptions {
        compaction_hook: Some(Arc::new(move |phase: &str| {
            if phase == "copy" {
                let _ = entered_tx.lock().unwrap().send(());
                let _ = release_rx.lock().unwrap().recv();
            }
        })),
        ..StoreOptions::default()
    };
    let store = Store::open(&path, options).unwrap();
    churn(&store, "m", 4, 2).await;
    let s = store.clone();
    let first = tokio::task::spawn_blocking(move || s.compact());
    entered_rx.recv().unwrap();
    let progress = store.stats().unwrap().compaction.unwrap();
    assert_eq!(progress.phase, "copy");
    let s = store.clone();
    let second = tokio::task::spawn_blocking(move || s.compact())
        .await
        .unwrap();
    assert!(
        matches!(second, Err(StoreError::CompactionRunning { .. })),
        "{second:?}"
    );
    release_tx.send(()).unwrap();
    first.await.unwrap().unwrap();

    // Not enough room: refused before anything is written.
    let tight = Store::open(
        dir.path().join("other.redb"),
        StoreOptions {
            compaction_reserve: u64::MAX / 4,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    tokio::task::block_in_place(|| create(&tight, "x"));
    let size = std::fs::metadata(dir.path().join("other.redb"))
        .unwrap()
        .len();
    let t = tight.clone();
    let err = tokio::task::spawn_blocking(move || t.compact())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, StoreError::NoSpace { .. }), "{err}");
    assert!(err.to_string().contains("not enough free space"), "{err}");
    assert!(!dir.path().join("other.redb.compact").exists());
    assert_eq!(
        std::fs::metadata(dir.path().join("other.redb"))
            .unwrap()
            .len(),
        size
    );
    assert!(tight.stats().unwrap().last_compaction.is_none());
    // A refused compaction leaves the store writing as before.
    tokio::task::block_in_place(|| transition(&tight, "x", State::Starting)).unwrap();
}
