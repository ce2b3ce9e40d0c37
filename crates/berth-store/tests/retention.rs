//! Retention on an idle store: a pass with nothing to remove writes nothing (no commit, so no
//! fsync once a minute on a host where nothing happens).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::time::Duration;

use berth_store::{RetentionPolicy, Store};
use berth_types::State;
use common::*;

fn policy(max_per_machine: u64, max_events: u64) -> RetentionPolicy {
    RetentionPolicy {
        destroyed_machine_ttl: Duration::from_secs(3600),
        max_events_per_machine: max_per_machine,
        max_events,
        batch_rows: 100,
        pause: Duration::ZERO,
        export_hold: None,
    }
}

/// Three machines, each created then started and stopped five times: 63 events, 21 per machine.
fn three_machines_started_and_stopped_five_times(store: &Store) {
    for m in 0..3 {
        let id = format!("m{m}");
        create(store, &id);
        for _ in 0..5 {
            for to in [
                State::Starting,
                State::Started,
                State::Stopping,
                State::Stopped,
            ] {
                transition(store, &id, to).unwrap();
            }
        }
    }
}

/// Waits until the history index has caught up with the log.
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
async fn a_retention_pass_with_nothing_to_remove_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    tokio::task::block_in_place(|| three_machines_started_and_stopped_five_times(&store));
    indexed(&store).await;

    // Something to remove: a per-machine cap of 10 (each has 21 history rows) and a log of 30.
    let trims = store.retain(&policy(10, 30)).await.unwrap();
    assert_eq!(trims.history_rows_removed, 3 * (21 - 10), "{trims:?}");
    assert_eq!(trims.events_removed, 63 - 30, "{trims:?}");
    indexed(&store).await;

    // Nothing left to remove (and the index is caught up): the pass must not commit at all,
    // neither for the host-wide log nor for the machines above the per-machine cap.
    for pass in 0..3 {
        let before = store.writer_stats().commits;
        let r = store.retain(&policy(10, 30)).await.unwrap();
        assert!(r.is_empty(), "pass {pass}: {r:?}");
        let after = store.writer_stats().commits;
        assert_eq!(
            after - before,
            0,
            "pass {pass}: an idle retention pass committed {} times",
            after - before
        );
    }

    // And it still removes what becomes removable: one more transition per machine.
    tokio::task::block_in_place(|| {
        for m in 0..3 {
            transition(&store, &format!("m{m}"), State::Starting).unwrap();
        }
    });
    indexed(&store).await;
    let r = store.retain(&policy(10, 30)).await.unwrap();
    assert_eq!(r.history_rows_removed, 3, "{r:?}");
    assert_eq!(r.events_removed, 3, "{r:?}");
    assert!(store.check().unwrap().is_ok());
}

/// What `events_after` answers for every `after` up to `last`, as seqs (or the oldest kept,
/// for `Expired`).
fn answers(store: &Store, last: u64) -> Vec<Result<Vec<berth_types::Event>, u64>> {
    (0..=last + 1)
        .map(|after| match store.events_after(after, 7) {
            Ok(v) => Ok(v),
            Err(berth_store::StoreError::Expired { oldest, .. }) => Err(oldest),
            Err(e) => panic!("events after {after}: {e}"),
        })
        .collect()
}

/// The writer keeps the last commits' events in memory and readers are answered from there:
/// the answers must be exactly the table's, before and after retention removes events (a
/// reader behind retention is told `Expired`, never handed events the table no longer has).
/// The reopened store has nothing in memory and reads the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_from_memory_are_the_tables_before_and_after_retention() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    tokio::task::block_in_place(|| three_machines_started_and_stopped_five_times(&store));
    indexed(&store).await;
    let last = store.last_seq().unwrap();
    assert_eq!(last, 63);
    let before = answers(&store, last);
    assert!(before.iter().all(Result::is_ok), "nothing removed yet");

    let trims = store.retain(&policy(1000, 30)).await.unwrap();
    assert_eq!(trims.events_removed, 33, "{trims:?}");
    let after = answers(&store, last);
    for (n, a) in after.iter().enumerate() {
        if n < 33 {
            assert_eq!(a, &Err(34), "after {n}: removed events are not answered");
        } else {
            assert_eq!(a, &before[n], "after {n}");
        }
    }
    drop(store);
    let reopened = open(&dir);
    assert_eq!(
        answers(&reopened, last),
        after,
        "the table answers the same"
    );
}
