//! Every response type reads back the JSON the server writes today (the field names of
//! interface.md and the runbooks) and writes it out again unchanged.

use berth_api_types::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// `doc` parses as `T` and serializes back to the same JSON.
fn round_trip<T: Serialize + DeserializeOwned + std::fmt::Debug>(doc: Value) -> T {
    let t: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{} does not parse: {e}\n{doc}", std::any::type_name::<T>()));
    let back = serde_json::to_value(&t).expect("serializes");
    assert_eq!(
        back,
        doc,
        "{} changed on the way back",
        std::any::type_name::<T>()
    );
    t
}

const AT: &str = "2026-12-02T06:00:00.123456789Z";

fn reconcile() -> Value {
    json!({"examined": 3, "planned": [{"machine_id": "m2", "recorded": "started", "observed": "vanished"}],
           "applied": 1, "blocked": false, "orphans": ["zz"], "stranded": ["m3"]})
}

fn held() -> Value {
    json!({"machine_id": "m1", "action": "restart", "observed": "exited 1", "at": AT, "version": 7})
}

fn supervision() -> Value {
    json!({
        "last_reconcile": reconcile(), "resumed_operations": 1, "reattached": 2,
        "unknown": [{"machine_id": "m6", "reason": "EACCES", "since": AT, "attempts": 3}],
        "guard": {"enabled": true, "tripped": true, "tripped_because": "5 of 6", "held": [held()],
                  "blocked_total": {"restart": 2, "reconcile": 1}, "recent_machines": 4, "window_secs": 60}
    })
}

#[test]
fn host_info() {
    let h: HostInfo = round_trip(json!({
        "hostname": "h", "version": "0.1.0", "data_dir": "/var/lib/berth", "cordoned": false,
        "machines": {"started": 2},
        "capabilities": {"cgroup": true, "cgroup_root": "/sys/fs/cgroup/berth", "cgroup_kill": true,
                         "cpu_accounting": true, "memory_accounting": true, "memory_limit": true,
                         "cpu_limit": true, "pids_limit": false, "image_memory_limit": true,
                         "image_cpu_limit": true, "image_pids_limit": false},
        "supervision": supervision(),
    }));
    assert_eq!(h.supervision.guard.held[0].action, GuardAction::Restart);
    round_trip::<Capabilities>(json!({
        "cgroup": false, "cgroup_kill": false, "cpu_accounting": false, "memory_accounting": false,
        "memory_limit": false, "cpu_limit": false, "pids_limit": false,
        "image_memory_limit": false, "image_cpu_limit": false, "image_pids_limit": false,
        "cgroup_unavailable": "no cgroup v2"
    }));
    let empty: SupervisionStatus = round_trip(json!({
        "last_reconcile": null, "resumed_operations": 0, "reattached": 0, "unknown": [],
        "guard": {"enabled": false, "tripped": false, "held": [], "blocked_total": {},
                  "recent_machines": 0, "window_secs": 60}
    }));
    assert!(empty.last_reconcile.is_none());
}

#[test]
fn health() {
    let h: Health = round_trip(json!({
        "status": "degraded", "cordoned": true,
        "checks": {"guard": {"ok": false, "detail": "held"}, "store_writer": {"ok": true, "detail": "1 commits"}}
    }));
    assert!(!h.checks["guard"].ok);
}

#[test]
fn reconcile_and_approve() {
    let mut approved = reconcile();
    approved["approved"] = json!(true);
    let r: ReconcileReport = round_trip(approved);
    assert!(r.approved);
    let a: ApproveReport = round_trip(json!({
        "released": [held()], "restarted": ["m4"], "skipped": [], "reconcile": reconcile()
    }));
    assert_eq!(a.restarted.len(), 1);
    round_trip::<ApproveReport>(
        json!({"released": [], "restarted": [], "skipped": [], "reconcile": null}),
    );
}

fn compaction() -> Value {
    json!({"at": AT, "duration_ms": 12, "size_before": 1048576, "size_after": 524288,
           "allocated_before": 900000, "allocated_after": 400000, "live_bytes": 300000,
           "max_pause_ms": 1.5, "rows_copied": 99, "catch_up_rounds": 2, "keys_caught_up": 3})
}

#[test]
fn db_stats_and_compaction() {
    round_trip::<CompactionReport>(compaction());
    let s: DbStats = round_trip(json!({
        "file_size_bytes": 4096, "file_allocated_bytes": 4096, "live_bytes": 1024,
        "garbage_ratio": 0.75, "tables": {"machines": 3, "events": 10},
        "last_compaction": compaction(), "next_seq": 11, "history_seq": 10, "first_seq": 1,
        "compaction": {"started_at": AT, "phase": "copy", "rows_copied": 5, "catch_up_rounds": 0}
    }));
    assert_eq!(s.compaction.map(|c| c.phase).as_deref(), Some("copy"));
    // A report written before berth recorded disk usage still reads.
    let mut old = compaction();
    if let Some(m) = old.as_object_mut() {
        m.remove("allocated_before");
        m.remove("allocated_after");
    }
    let r: CompactionReport = serde_json::from_value(old).expect("an old report reads");
    assert_eq!(r.allocated_after, 0);
}

#[test]
fn db_check() {
    let doc = json!({
        "ok": false, "integrity_passed": true, "pages": {"passed": true, "detail": "12 pages"},
        "schema_version": 1,
        "report": {"machines": 2, "events": 9, "seq_range": [1, 9], "operations": 0,
                   "problems": ["machine m1: bad"]}
    });
    let c: DbCheck = round_trip(doc.clone());
    assert_eq!(c.report.problems.len(), 1);
    assert_eq!(c.repaired_on_open, None);
    let mut offline = doc;
    offline["repaired_on_open"] = json!(false);
    assert_eq!(round_trip::<DbCheck>(offline).repaired_on_open, Some(false));
}

#[test]
fn slow_ops_events_leases_errors() {
    round_trip::<Vec<SlowOp>>(
        json!([{"op": "commit", "duration_ms": 12.5, "threshold_ms": 10.0,
        "at": AT, "batch_size": 3, "bytes": 100, "detail": "3 writes"}]),
    );
    round_trip::<EventsPage>(json!({"events": [], "last_seq": 4}));
    round_trip::<Lease>(json!({"machine_id": "m1", "nonce": "ab", "expires_at": AT}));
    round_trip::<ErrorBody>(json!({"error": "no", "code": "invalid"}));
}

#[test]
fn closed_queries_refuse_unknown_keys() {
    let e = serde_json::from_value::<WaitQuery>(json!({"state": "started", "timout": "1s"}))
        .expect_err("a misspelt key is refused");
    assert!(e.to_string().contains("timout"), "{e}");
    let q: MachineListQuery =
        serde_json::from_value(json!({"state": "stopped", "limit": 5})).expect("parses");
    assert_eq!((q.state, q.limit), (Some(State::Stopped), Some(5)));
    assert!(serde_json::from_value::<EventsQuery>(json!({"after": 1, "x": 1})).is_err());
}
