//! The one place the agent's, the store's, the machine layer's and the driver's values become
//! the API's wire types (`berth-api-types`). Each conversion destructures its source without
//! `..`, so a field added below is a compile error here until the wire type says what to do.

use berth_api_types as api;

/// The store's figures as `GET /v1/db/stats` shows them.
pub fn db_stats(st: berth_store::StoreStats) -> api::DbStats {
    let garbage_ratio = st.garbage_ratio();
    let berth_store::StoreStats {
        file_size_bytes,
        file_allocated_bytes,
        live_bytes,
        tables,
        next_seq,
        history_seq,
        first_seq,
        last_compaction,
        compaction,
    } = st;
    api::DbStats {
        file_size_bytes,
        file_allocated_bytes,
        live_bytes,
        garbage_ratio,
        tables,
        last_compaction: last_compaction.map(compaction_report),
        next_seq,
        history_seq,
        first_seq,
        compaction: compaction.map(compaction_progress),
    }
}

/// A finished compaction.
pub fn compaction_report(r: berth_store::CompactionReport) -> api::CompactionReport {
    let berth_store::CompactionReport {
        at,
        duration_ms,
        size_before,
        size_after,
        allocated_before,
        allocated_after,
        live_bytes,
        max_pause_ms,
        rows_copied,
        catch_up_rounds,
        keys_caught_up,
    } = r;
    api::CompactionReport {
        at,
        duration_ms,
        size_before,
        size_after,
        allocated_before,
        allocated_after,
        live_bytes,
        max_pause_ms,
        rows_copied,
        catch_up_rounds,
        keys_caught_up,
    }
}

/// A compaction in progress.
pub fn compaction_progress(p: berth_store::CompactionProgress) -> api::CompactionProgress {
    let berth_store::CompactionProgress {
        started_at,
        phase,
        rows_copied,
        catch_up_rounds,
    } = p;
    api::CompactionProgress {
        started_at,
        phase,
        rows_copied,
        catch_up_rounds,
    }
}

/// The page check and the consistency check as one answer.
pub fn db_check(
    pages: berth_store::PageCheck,
    report: berth_store::CheckReport,
    repaired_on_open: Option<bool>,
) -> api::DbCheck {
    let berth_store::PageCheck { passed, detail } = pages;
    let berth_store::CheckReport {
        machines,
        events,
        seq_range,
        operations,
        problems,
    } = report;
    api::DbCheck {
        ok: passed && problems.is_empty(),
        integrity_passed: passed,
        pages: api::PageCheck { passed, detail },
        repaired_on_open,
        schema_version: berth_store::SCHEMA_VERSION,
        report: api::CheckReport {
            machines,
            events,
            seq_range,
            operations,
            problems,
        },
    }
}

/// A slow database operation.
pub fn slow_op(s: &berth_store::SlowOp) -> api::SlowOp {
    api::SlowOp {
        op: s.op.to_owned(),
        duration_ms: s.duration.as_secs_f64() * 1e3,
        threshold_ms: s.threshold.as_secs_f64() * 1e3,
        at: s.at,
        batch_size: s.batch_size,
        bytes: s.bytes,
        detail: s.detail.clone(),
    }
}

/// What the host can enforce and measure.
pub fn capabilities(c: &berth_driver::Capabilities) -> api::Capabilities {
    let berth_driver::Capabilities {
        cgroup,
        cgroup_root,
        cgroup_kill,
        cpu_accounting,
        memory_accounting,
        memory_limit,
        cpu_limit,
        pids_limit,
        cgroup_unavailable,
        oci_runtime,
        oci_unavailable,
        image_memory_limit,
        image_cpu_limit,
        image_pids_limit,
    } = c.clone();
    api::Capabilities {
        cgroup,
        cgroup_root,
        cgroup_kill,
        cpu_accounting,
        memory_accounting,
        memory_limit,
        cpu_limit,
        pids_limit,
        cgroup_unavailable,
        oci_runtime,
        oci_unavailable,
        image_memory_limit,
        image_cpu_limit,
        image_pids_limit,
    }
}

/// What supervision has seen lately.
pub fn supervision(s: crate::SupervisionStatus) -> api::SupervisionStatus {
    let crate::SupervisionStatus {
        last_reconcile,
        resumed_operations,
        reattached,
        unknown,
        guard,
    } = s;
    api::SupervisionStatus {
        last_reconcile: last_reconcile.map(reconcile_report),
        resumed_operations,
        reattached,
        unknown: unknown.into_iter().map(unknown_machine).collect(),
        guard: guard_status(guard),
    }
}

fn unknown_machine(u: crate::UnknownMachine) -> api::UnknownMachine {
    let crate::UnknownMachine {
        machine_id,
        reason,
        since,
        attempts,
    } = u;
    api::UnknownMachine {
        machine_id,
        reason,
        since,
        attempts,
    }
}

/// A reconciliation pass.
pub fn reconcile_report(r: berth_machine::ReconcileReport) -> api::ReconcileReport {
    let berth_machine::ReconcileReport {
        examined,
        planned,
        applied,
        blocked,
        approved,
        orphans,
        stranded,
    } = r;
    api::ReconcileReport {
        examined,
        planned: planned.into_iter().map(planned_fix).collect(),
        applied,
        blocked,
        approved,
        orphans,
        stranded,
    }
}

fn planned_fix(p: berth_machine::Planned) -> api::Planned {
    // The exit to record, its pid and whether to kill first are the pass's own business.
    let berth_machine::Planned {
        machine_id,
        recorded,
        observed,
        exit: _,
        pid: _,
        kill: _,
    } = p;
    api::Planned {
        machine_id,
        recorded,
        observed,
    }
}

fn guard_action(a: berth_machine::GuardAction) -> api::GuardAction {
    match a {
        berth_machine::GuardAction::Restart => api::GuardAction::Restart,
        berth_machine::GuardAction::Reconcile => api::GuardAction::Reconcile,
    }
}

fn held(h: berth_machine::Held) -> api::Held {
    let berth_machine::Held {
        machine_id,
        action,
        observed,
        at,
        version,
    } = h;
    api::Held {
        machine_id,
        action: guard_action(action),
        observed,
        at,
        version,
    }
}

fn guard_status(g: berth_machine::GuardStatus) -> api::GuardStatus {
    let berth_machine::GuardStatus {
        enabled,
        tripped,
        tripped_because,
        held: holds,
        blocked_total,
        recent_machines,
        window_secs,
    } = g;
    api::GuardStatus {
        enabled,
        tripped,
        tripped_because,
        held: holds.into_iter().map(held).collect(),
        blocked_total: blocked_total
            .into_iter()
            .map(|(a, n)| (guard_action(a), n))
            .collect(),
        recent_machines,
        window_secs,
    }
}

/// What an operator's approval released.
pub fn approve_report(r: crate::ApproveReport) -> api::ApproveReport {
    let crate::ApproveReport {
        released,
        restarted,
        skipped,
        reconcile,
    } = r;
    api::ApproveReport {
        released: released.into_iter().map(held).collect(),
        restarted,
        skipped,
        reconcile: reconcile.map(reconcile_report),
    }
}

/// A lease as the API shows it.
pub fn lease(l: berth_machine::LeaseRecord) -> api::Lease {
    let berth_machine::LeaseRecord {
        machine_id,
        nonce,
        expires_at,
        description,
    } = l;
    api::Lease {
        machine_id: machine_id.to_string(),
        nonce,
        expires_at,
        description,
    }
}

#[cfg(test)]
mod tests {
    //! Before the wire types, the API answered these values serialized as they are: each
    //! conversion must put exactly the same JSON on the wire.

    use berth_types::{ExitInfo, MachineId, State, Timestamp};
    use serde::Serialize;
    use serde_json::{Value, to_value};

    fn same<A: Serialize, B: Serialize>(internal: &A, wire: &B) {
        let (a, b) = (
            to_value(internal).expect("serializes"),
            to_value(wire).expect("serializes"),
        );
        assert_eq!(a, b, "the wire type changed the JSON");
        assert!(matches!(a, Value::Object(ref m) if !m.is_empty()), "{a}");
    }

    fn id(s: &str) -> MachineId {
        MachineId::parse(s).expect("a valid id")
    }

    fn at() -> Timestamp {
        Timestamp::from_nanos(1_700_000_000_123_456_789)
    }

    fn held() -> berth_machine::Held {
        berth_machine::Held {
            machine_id: id("m1"),
            action: berth_machine::GuardAction::Reconcile,
            observed: "exited 1".into(),
            at: at(),
            version: 7,
        }
    }

    fn reconcile(approved: bool) -> berth_machine::ReconcileReport {
        berth_machine::ReconcileReport {
            examined: 3,
            planned: vec![berth_machine::Planned {
                machine_id: id("m2"),
                recorded: State::Started,
                observed: "vanished".into(),
                exit: ExitInfo::default(),
                pid: Some(4),
                kill: true,
            }],
            applied: 1,
            blocked: true,
            approved,
            orphans: vec!["zz".into()],
            stranded: vec![id("m3")],
        }
    }

    #[test]
    fn reconcile_and_approve_reports_keep_their_json() {
        for approved in [false, true] {
            let r = reconcile(approved);
            same(&r, &super::reconcile_report(r.clone()));
        }
        let a = crate::ApproveReport {
            released: vec![held()],
            restarted: vec![id("m4")],
            skipped: vec![id("m5")],
            reconcile: Some(reconcile(true)),
        };
        same(&a, &super::approve_report(a.clone()));
    }

    #[test]
    fn supervision_status_keeps_its_json() {
        let mut blocked_total = std::collections::BTreeMap::new();
        blocked_total.insert(berth_machine::GuardAction::Restart, 2);
        blocked_total.insert(berth_machine::GuardAction::Reconcile, 1);
        for tripped_because in [None, Some("5 of 6 machines".to_owned())] {
            let s = crate::SupervisionStatus {
                last_reconcile: Some(reconcile(false)),
                resumed_operations: 2,
                reattached: 5,
                unknown: vec![crate::UnknownMachine {
                    machine_id: "m6".into(),
                    reason: "EACCES".into(),
                    since: at(),
                    attempts: 3,
                }],
                guard: berth_machine::GuardStatus {
                    enabled: true,
                    tripped: tripped_because.is_some(),
                    tripped_because,
                    held: vec![held()],
                    blocked_total: blocked_total.clone(),
                    recent_machines: 4,
                    window_secs: 60,
                },
            };
            same(&s, &super::supervision(s.clone()));
        }
        let empty = crate::SupervisionStatus::default();
        same(&empty, &super::supervision(empty.clone()));
    }

    #[test]
    fn capabilities_keep_their_json() {
        let mut c = berth_driver::Capabilities {
            cgroup: true,
            cgroup_root: Some("/sys/fs/cgroup/berth".into()),
            cgroup_kill: true,
            cpu_accounting: true,
            memory_accounting: false,
            memory_limit: true,
            cpu_limit: false,
            pids_limit: true,
            cgroup_unavailable: None,
            oci_runtime: Some("/usr/sbin/runc".into()),
            image_memory_limit: true,
            ..Default::default()
        };
        same(&c, &super::capabilities(&c));
        c.cgroup_root = None;
        c.cgroup_unavailable = Some("no cgroup v2".into());
        same(&c, &super::capabilities(&c));
    }

    #[test]
    fn compaction_and_check_reports_keep_their_json() {
        let r = berth_store::CompactionReport {
            at: at(),
            duration_ms: 12,
            size_before: 1 << 20,
            size_after: 1 << 19,
            allocated_before: 900_000,
            allocated_after: 400_000,
            live_bytes: 300_000,
            max_pause_ms: 1.5,
            rows_copied: 99,
            catch_up_rounds: 2,
            keys_caught_up: 3,
        };
        same(&r, &super::compaction_report(r.clone()));
        let p = berth_store::CompactionProgress {
            started_at: at(),
            phase: "copy".into(),
            rows_copied: 5,
            catch_up_rounds: 0,
        };
        same(&p, &super::compaction_progress(p.clone()));
        // The check's answer was built with json!{...} from the store's reports.
        let pages = berth_store::PageCheck {
            passed: true,
            detail: "12 pages".into(),
        };
        let report = berth_store::CheckReport {
            machines: 2,
            events: 9,
            seq_range: Some((1, 9)),
            operations: 0,
            problems: vec!["machine m1: bad".into()],
        };
        let before = serde_json::json!({
            "ok": false, "integrity_passed": true, "pages": pages,
            "schema_version": berth_store::SCHEMA_VERSION, "report": report,
        });
        same(
            &before,
            &super::db_check(pages.clone(), report.clone(), None),
        );
        let check = super::db_check(pages, report, Some(true));
        assert_eq!(
            to_value(&check).expect("serializes")["repaired_on_open"],
            true
        );
    }
}
