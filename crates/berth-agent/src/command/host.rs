//! Host commands: facts and supervision status, cordon, health, reconcile and approve.

use std::collections::BTreeMap;

use berth_api_types::{ApproveReport, Check, Health, HostInfo, ReconcileReport};

use crate::error::{CommandError, CommandResult};
use crate::{Agent, SupervisionStatus, wire};

impl Agent {
    /// Whether the host refuses new machines.
    pub fn is_cordoned(&self) -> bool {
        self.cordon.is_on()
    }

    /// Cordons (refuses new machines) or uncordons the host; answers the host afterwards.
    pub async fn set_cordoned(&self, on: bool) -> CommandResult<HostInfo> {
        self.cordon.set(on).await?;
        self.host_info()
    }

    /// Host facts, capabilities and what supervision has seen.
    pub fn host_info(&self) -> CommandResult<HostInfo> {
        let mut machines = BTreeMap::new();
        self.store().each_machine(|m| {
            *machines.entry(m.state.to_string()).or_insert(0u64) += 1;
            true
        })?;
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        Ok(HostInfo {
            hostname,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            data_dir: self.data_dir.display().to_string(),
            cordoned: self.is_cordoned(),
            machines,
            capabilities: wire::capabilities(self.driver().capabilities()),
            supervision: wire::supervision(self.status()),
            export: None,
        })
    }

    /// The health checks: `degraded` while any fails.
    pub fn health(&self) -> Health {
        let status = self.status();
        let checks: BTreeMap<String, Check> = [
            ("store_writer", self.writer_check()),
            ("db_slow_ops", self.slow_ops_check()),
            ("reconcile", reconcile_check(&status)),
            ("guard", guard_check(&status)),
            ("db_verification", self.verification_check()),
            ("supervision_evidence", evidence_check(&status)),
        ]
        .into_iter()
        .map(|(k, c)| (k.to_owned(), c))
        .collect();
        let ok = checks.values().all(|c| c.ok);
        Health {
            status: if ok { "ok" } else { "degraded" }.into(),
            checks,
            cordoned: self.is_cordoned(),
        }
    }

    fn writer_check(&self) -> Check {
        let store = self.store();
        if store.is_poisoned() {
            return Check {
                ok: false,
                detail: "the last database commit failed (a full disk?); writes answer unavailable while the store reopens the database and retries with backoff; it recovers by itself once a commit succeeds".into(),
            };
        }
        let w = store.writer_stats();
        Check {
            ok: true,
            detail: format!("{} commits, {} writes queued", w.commits, w.queued),
        }
    }

    /// The background verification of the database's history after open (berth-store's
    /// `verify.rs`): running or passed is healthy; damage found is not.
    fn verification_check(&self) -> Check {
        match self.store().verification() {
            berth_store::Verification::Running => Check {
                ok: true,
                detail: "verifying the history's records after open".into(),
            },
            berth_store::Verification::Passed { records, took_ms } => Check {
                ok: true,
                detail: format!("{records} history record(s) verified after open in {took_ms} ms"),
            },
            berth_store::Verification::Stopped => Check {
                ok: true,
                detail: "the verification was stopped (the store is closing)".into(),
            },
            berth_store::Verification::Failed { reason } => Check {
                ok: false,
                detail: format!(
                    "the database is damaged ({reason}); writes are refused — restore it from a backup (runbooks/db-compaction.md, \"Restore from the backup\")"
                ),
            },
        }
    }

    fn slow_ops_check(&self) -> Check {
        let window = self.commands.slow_window;
        let now = berth_types::Timestamp::now();
        let recent: Vec<_> = self
            .commands
            .slow_ops
            .list()
            .into_iter()
            .filter(|o| now.saturating_since(o.at) <= window)
            .collect();
        let window = humantime::format_duration(window);
        match recent.first() {
            None => Check {
                ok: true,
                detail: format!("no slow database operation in the last {window}"),
            },
            Some(o) => Check {
                ok: false,
                detail: format!(
                    "{} slow database operation(s) in the last {window}; latest: {} took {:.1} ms (see runbooks/db-slow-operations.md)",
                    recent.len(),
                    o.op,
                    o.duration_ms
                ),
            },
        }
    }

    /// Runs a reconciliation pass now; `approve` overrides the blast-radius guard.
    pub async fn host_reconcile(&self, approve: bool) -> CommandResult<ReconcileReport> {
        let me = self.clone();
        self.detached(async move {
            me.reconcile_once(approve)
                .await
                .map(wire::reconcile_report)
                .ok_or_else(|| CommandError::internal("reconciliation failed; see the log"))
        })
        .await
    }

    /// An operator lets what the blast-radius guard held back proceed.
    pub async fn host_approve(&self) -> CommandResult<ApproveReport> {
        let me = self.clone();
        self.detached(async move { Ok(wire::approve_report(me.approve().await)) })
            .await
    }
}

fn reconcile_check(status: &SupervisionStatus) -> Check {
    let blocked = status.last_reconcile.as_ref().is_some_and(|r| r.blocked);
    Check {
        ok: !blocked,
        detail: if blocked {
            "the blast-radius guard blocked a reconciliation pass; an operator must look (POST /v1/host/reconcile?approve=true)".into()
        } else {
            "reconciliation is applying its findings".into()
        },
    }
}

fn guard_check(status: &SupervisionStatus) -> Check {
    let guard = &status.guard;
    Check {
        ok: !guard.tripped,
        detail: if guard.tripped {
            format!(
                "the blast-radius guard holds {} automated decision(s) back ({}); check the host, then approve with `berth host approve` (POST /v1/host/approve)",
                guard.held.len(),
                guard.tripped_because.as_deref().unwrap_or("tripped")
            )
        } else if !guard.enabled {
            "the blast-radius guard is off (reconcile.blast_radius_guard = false)".into()
        } else {
            format!(
                "{} machine(s) acted on automatically in the last {}s",
                guard.recent_machines, guard.window_secs
            )
        },
    }
}

fn evidence_check(status: &SupervisionStatus) -> Check {
    let unknown = &status.unknown;
    Check {
        ok: unknown.is_empty(),
        detail: match unknown.first() {
            None => "every started machine's state could be read".into(),
            Some(u) => format!(
                "{} machine(s) whose state cannot be read, left as recorded (see berth doctor); {}: {}",
                unknown.len(),
                u.machine_id,
                u.reason
            ),
        },
    }
}
