//! Every database operation is timed by name in the store's histograms; slow ones are counted
//! through the `metrics` facade.
//!
//! This binary installs a global debugging recorder (the writer runs on its own thread, so a
//! thread-local recorder would not see commits); it holds a single test for that reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use berth_store::{SLOW_OPS, Store, StoreOptions};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::{CompositeKey, MetricKind};

fn op_label(key: &CompositeKey) -> Option<String> {
    key.key()
        .labels()
        .find(|l| l.key() == "op")
        .map(|l| l.value().to_owned())
}

#[test]
fn operations_are_timed_by_name_and_slow_ones_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let hook_seen = seen.clone();
    let opts = StoreOptions {
        // Far above what an undelayed operation takes even on a loaded machine (at 15 ms the
        // open of a fresh file was seen to cross it while other builds ran).
        slow_op_threshold: Duration::from_millis(150),
        commit_delay: Duration::from_millis(200),
        slow_op_hook: Some(std::sync::Arc::new(move |s: &berth_store::SlowOp| {
            hook_seen.lock().unwrap().push(s.clone())
        })),
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path().join("berth.redb"), opts).unwrap();
    // Read before anything is committed: the events of later commits are answered from the
    // writer's memory, which is no database operation and is not timed.
    store.events_after(0, 10).unwrap();
    common::create(&store, "m1");
    store
        .machine(&berth_types::MachineId::parse("m1").unwrap())
        .unwrap();
    store.machines().unwrap();
    store
        .history(&berth_types::MachineId::parse("m1").unwrap())
        .unwrap();

    let durations = store.op_durations();
    assert_eq!(
        durations.iter().map(|d| d.op).collect::<Vec<_>>(),
        berth_store::OPS,
        "one histogram per op, in OPS order"
    );
    let timed: Vec<&str> = durations
        .iter()
        .filter(|d| d.count > 0)
        .map(|d| d.op)
        .collect();
    for op in [
        "open",
        "commit",
        "get_machine",
        "list_machines",
        "history",
        "events",
    ] {
        assert!(timed.contains(&op), "{op} not timed; timed: {timed:?}");
    }
    for d in &durations {
        assert_eq!(d.buckets.last().map(|b| b.1), Some(d.count), "{d:?}");
        assert!(d.buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{d:?}");
    }
    // The delayed commit took over 200 ms, so at least one commit lies above the 0.1 s bucket.
    let commit = durations.iter().find(|d| d.op == "commit").unwrap();
    let upto_100ms = commit.buckets.iter().find(|b| b.0 == 0.1).unwrap().1;
    assert!(upto_100ms < commit.count, "{commit:?}");
    assert!(commit.sum_seconds >= 0.2, "{commit:?}");

    let snapshot = snapshotter.snapshot().into_vec();
    let mut slow = Vec::new();
    for (key, _, _, value) in &snapshot {
        if let (MetricKind::Counter, name) = (key.kind(), key.key().name())
            && name == SLOW_OPS
            && let DebugValue::Counter(n) = value
        {
            slow.push((op_label(key).unwrap(), *n));
        }
    }
    assert_eq!(
        slow,
        [("commit".to_owned(), 1)],
        "only the delayed commit is slow"
    );
    // The hook sees what the WARN line says: what the commit was doing, and the fault.
    let seen = seen.lock().unwrap();
    let [s] = seen.as_slice() else {
        panic!("one slow op expected: {seen:?}")
    };
    assert_eq!((s.op, s.batch_size), ("commit", 1));
    assert!(s.bytes > 0 && s.duration >= Duration::from_millis(200));
    assert!(
        s.detail.contains("1 transitions recorded")
            && s.detail.contains("first machine m1")
            && s.detail.contains("fault.db_delay of 200ms"),
        "{}",
        s.detail
    );
}
