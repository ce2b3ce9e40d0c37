//! Every database operation is reported through the `metrics` facade by name.
//!
//! This binary installs a global debugging recorder (the writer runs on its own thread, so a
//! thread-local recorder would not see commits); it holds a single test for that reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use berth_store::{OP_DURATION, SLOW_OPS, Store, StoreOptions};
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
    common::create(&store, "m1");
    store
        .machine(&berth_types::MachineId::parse("m1").unwrap())
        .unwrap();
    store.machines().unwrap();
    store
        .history(&berth_types::MachineId::parse("m1").unwrap())
        .unwrap();
    store.events_after(0, 10).unwrap();

    let snapshot = snapshotter.snapshot().into_vec();
    let mut timed = Vec::new();
    let mut slow = Vec::new();
    for (key, _, _, value) in &snapshot {
        match (key.kind(), key.key().name()) {
            (MetricKind::Histogram, name) if name == OP_DURATION => {
                if let DebugValue::Histogram(samples) = value {
                    assert!(!samples.is_empty());
                }
                timed.push(op_label(key).unwrap());
            }
            (MetricKind::Counter, name) if name == SLOW_OPS => {
                if let DebugValue::Counter(n) = value {
                    slow.push((op_label(key).unwrap(), *n));
                }
            }
            _ => {}
        }
    }
    for op in [
        "open",
        "commit",
        "get_machine",
        "list_machines",
        "history",
        "events",
    ] {
        assert!(
            timed.iter().any(|t| t == op),
            "{op} not timed; timed: {timed:?}"
        );
    }
    // Every timed op has its slow-op counter from its first use (at zero: a later first slow
    // operation is then an increase); only the delayed commit counted one.
    for op in &timed {
        assert!(
            slow.iter().any(|(s, _)| s == op),
            "{op} has no slow-op counter"
        );
    }
    let counted: Vec<_> = slow.iter().filter(|(_, n)| *n > 0).cloned().collect();
    assert_eq!(
        counted,
        [("commit".to_owned(), 1)],
        "only the delayed commit is slow"
    );
    for op in &timed {
        assert!(
            berth_store::OPS.contains(&op.as_str()),
            "{op} is not in OPS"
        );
    }
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
