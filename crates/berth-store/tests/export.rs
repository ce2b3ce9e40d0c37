//! The fleet exporter's durable bookkeeping: the host id kept once, the export position saved
//! monotonically, and retention's export hold with its bound.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::time::Duration;

use berth_store::{RetentionPolicy, Store, StoreError};
use berth_types::State;
use common::{create, open, transition};

const CYCLE: [State; 4] = [
    State::Starting,
    State::Started,
    State::Stopping,
    State::Stopped,
];

/// Commits `n` transitions (a machine cycled through start and stop); returns the last seq.
fn events(store: &Store, id: &str, n: usize) -> u64 {
    create(store, id);
    let mut last = 0;
    for to in CYCLE.iter().cycle().take(n) {
        last = transition(store, id, *to).unwrap().seq;
    }
    last
}

async fn indexed(store: &Store) {
    for _ in 0..200 {
        let st = store.stats().unwrap();
        if st.history_seq + 1 >= st.next_seq {
            return;
        }
        let _ = store.write(|_| Ok(())).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("history index never caught up");
}

fn policy(max_events: u64, export_hold: Option<u64>) -> RetentionPolicy {
    RetentionPolicy {
        max_events,
        batch_rows: 7,
        pause: Duration::ZERO,
        export_hold,
        ..RetentionPolicy::default()
    }
}

fn oldest(store: &Store) -> u64 {
    match store.events_after(0, 1) {
        Ok(evs) => evs[0].seq,
        Err(StoreError::Expired { oldest, .. }) => oldest,
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_id_is_kept_once_and_the_cursor_only_moves_forward_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    assert_eq!(store.export_state().unwrap(), (None, Default::default()));
    let id = store.host_id_or_keep("first".into()).await.unwrap();
    assert_eq!(id, "first");
    assert_eq!(
        store.host_id_or_keep("second".into()).await.unwrap(),
        "first"
    );
    store.save_export_cursor(10).await.unwrap();
    store.save_export_cursor(4).await.unwrap();
    drop(store);

    let store = open(&dir);
    let (id, cursor) = store.export_state().unwrap();
    assert_eq!(id.as_deref(), Some("first"));
    assert_eq!(cursor.acked_seq, Some(10));
    assert_eq!(
        store.host_id_or_keep("third".into()).await.unwrap(),
        "first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_unexported_events_up_to_the_hold() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let last = tokio::task::block_in_place(|| events(&store, "m", 99)); // seqs 1..=100
    assert_eq!(last, 100);
    indexed(&store).await;
    store.save_export_cursor(30).await.unwrap();

    // max_events 10 would cut at 90; nothing above the export position (30) goes.
    store.retain(&policy(10, Some(1000))).await.unwrap();
    assert_eq!(oldest(&store), 31);

    // Once exported further, retention follows.
    store.save_export_cursor(60).await.unwrap();
    store.retain(&policy(10, Some(1000))).await.unwrap();
    assert_eq!(oldest(&store), 61);

    // Past the hold (at most 20 kept beyond the normal 10), they go anyway: cut at 90 - 20.
    store.retain(&policy(10, Some(20))).await.unwrap();
    assert_eq!(oldest(&store), 71);

    // Without export there is no hold.
    store.retain(&policy(10, None)).await.unwrap();
    assert_eq!(oldest(&store), 91);
    assert!(store.check().unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holes_are_recorded_merged_and_move_the_cursor_past_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.save_export_cursor(5).await.unwrap();
    let h = store.record_export_hole(6, 9).await.unwrap();
    assert_eq!((h.from, h.to, h.len()), (6, 9, 4));
    let h = store.record_export_hole(10, 12).await.unwrap();
    assert_eq!(
        (h.from, h.to),
        (6, 12),
        "an adjacent hole extends the last one"
    );
    store.record_export_hole(20, 25).await.unwrap();
    drop(store);
    let store = open(&dir);
    let (_, cursor) = store.export_state().unwrap();
    assert_eq!(cursor.acked_seq, Some(25));
    let holes: Vec<_> = cursor.holes.iter().map(|h| (h.from, h.to)).collect();
    assert_eq!(holes, vec![(6, 12), (20, 25)]);
}
