//! Host, health, metrics, the host-wide event stream and the database routes.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use berth_api_types::{Check, DbStats, EventsPage, Health, HostInfo, SlowOp};

use crate::error::{ApiError, ApiResult};
use crate::server::Lane;

pub(crate) async fn health(State(lane): State<Lane>) -> Json<Health> {
    let s = &lane.shared;
    let mut checks = BTreeMap::new();
    let store = s.agent.store();
    checks.insert(
        "store_writer".to_owned(),
        if store.is_poisoned() {
            Check {
                ok: false,
                detail: "the last database commit failed (a full disk?); writes answer unavailable while the store reopens the database and retries with backoff; it recovers by itself once a commit succeeds".into(),
            }
        } else {
            let w = store.writer_stats();
            Check {
                ok: true,
                detail: format!("{} commits, {} writes queued", w.commits, w.queued),
            }
        },
    );
    let window = s.cfg.slow_window;
    let now = berth_types::Timestamp::now();
    let recent: Vec<SlowOp> = s
        .slow_ops
        .list()
        .into_iter()
        .filter(|o| now.saturating_since(o.at) <= window)
        .collect();
    checks.insert(
        "db_slow_ops".to_owned(),
        match recent.first() {
            None => Check { ok: true, detail: format!("no slow database operation in the last {}", humantime::format_duration(window)) },
            Some(o) => Check {
                ok: false,
                detail: format!(
                    "{} slow database operation(s) in the last {}; latest: {} took {:.1} ms (see runbooks/db-slow-operations.md)",
                    recent.len(),
                    humantime::format_duration(window),
                    o.op,
                    o.duration_ms
                ),
            },
        },
    );
    let status = s.agent.status();
    let blocked = status.last_reconcile.as_ref().is_some_and(|r| r.blocked);
    checks.insert(
        "reconcile".to_owned(),
        Check {
            ok: !blocked,
            detail: if blocked {
                "the blast-radius guard blocked a reconciliation pass; an operator must look (POST /v1/host/reconcile?approve=true)".into()
            } else {
                "reconciliation is applying its findings".into()
            },
        },
    );
    let guard = &status.guard;
    checks.insert(
        "guard".to_owned(),
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
        },
    );
    let unknown = &status.unknown;
    checks.insert(
        "supervision_evidence".to_owned(),
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
        },
    );
    let ok = checks.values().all(|c| c.ok);
    Json(Health {
        status: if ok { "ok" } else { "degraded" }.into(),
        checks,
        cordoned: s.is_cordoned(),
    })
}

pub(crate) async fn metrics(State(lane): State<Lane>) -> Response {
    match lane.shared.cfg.metrics.clone() {
        // Rendering reads the store and formats every series: off the async workers.
        Some(render) => match tokio::task::spawn_blocking(move || render()).await {
            Ok(text) => ([("content-type", "text/plain; version=0.0.4")], text).into_response(),
            Err(e) => ApiError::internal(format!("rendering metrics: {e}")).into_response(),
        },
        None => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "no metrics recorder is installed",
        )
        .into_response(),
    }
}

pub(crate) async fn host(State(lane): State<Lane>) -> ApiResult<Json<HostInfo>> {
    let s = &lane.shared;
    let mut machines = BTreeMap::new();
    for m in s.agent.store().machines()? {
        *machines.entry(m.state.to_string()).or_insert(0u64) += 1;
    }
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    Ok(Json(HostInfo {
        hostname,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        data_dir: s.cfg.data_dir.display().to_string(),
        cordoned: s.is_cordoned(),
        machines,
        capabilities: serde_json::to_value(s.agent.driver().capabilities()).unwrap_or_default(),
        supervision: serde_json::to_value(s.agent.status()).unwrap_or_default(),
        export: s.cfg.export.as_ref().map(|f| f()),
    }))
}

pub(crate) async fn cordon(State(lane): State<Lane>) -> ApiResult<Json<HostInfo>> {
    lane.shared.set_cordoned(true)?;
    host(State(lane)).await
}

pub(crate) async fn uncordon(State(lane): State<Lane>) -> ApiResult<Json<HostInfo>> {
    lane.shared.set_cordoned(false)?;
    host(State(lane)).await
}

/// Runs a reconciliation pass now; `?approve=true` overrides the blast-radius guard.
/// An operator lets what the blast-radius guard held back proceed.
pub(crate) async fn approve(State(lane): State<Lane>) -> ApiResult<Json<serde_json::Value>> {
    let _permit = lane.permit()?;
    tracing::warn!(
        lane = lane.name,
        "an operator approved the automated decisions the blast-radius guard held back"
    );
    let report = lane.shared.agent.approve().await;
    serde_json::to_value(report)
        .map(Json)
        .map_err(|e| ApiError::internal(format!("encoding the approval report: {e}")))
}

pub(crate) async fn reconcile(
    State(lane): State<Lane>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<serde_json::Value>> {
    let _permit = lane.permit()?;
    let approve = q.get("approve").is_some_and(|v| v == "true");
    if approve {
        tracing::warn!(
            lane = lane.name,
            "an operator approved a reconciliation pass past the blast-radius guard"
        );
    }
    let report = lane
        .shared
        .agent
        .reconcile_once(approve)
        .await
        .ok_or_else(|| ApiError::internal("reconciliation failed; see the log"))?;
    Ok(Json(serde_json::to_value(report).unwrap_or_default()))
}

pub(crate) async fn events(
    State(lane): State<Lane>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<EventsPage>> {
    let num = |k: &str, default: u64| -> ApiResult<u64> {
        q.get(k).map_or(Ok(default), |v| {
            v.parse().map_err(|_| {
                ApiError::invalid(format!("{k} must be a non-negative integer, not {v:?}"))
            })
        })
    };
    let after = num("after", 0)?;
    let limit = num("limit", 100)?.clamp(1, 1000) as usize;
    let wait = match q.get("wait") {
        None => Duration::ZERO,
        Some(w) => berth_types::time::HumanDuration::parse(w)
            .map_err(|e| ApiError::invalid(format!("wait: {e}")))?
            .0
            .min(Duration::from_secs(60)),
    };
    let store = lane.shared.agent.store();
    // A cursor past the head would otherwise wait forever for seqs this log already gave to
    // other events, or will never reach: refuse it.
    let head = store.last_seq()?;
    if after > head {
        return Err(ApiError::conflict(format!(
            "after={after} is past this host's newest event (seq {head}): the database was probably replaced or restored from a backup, or the cursor belongs to another host; resync: list the machines, then follow from after={head}"
        )));
    }
    let mut seq = store.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        seq.borrow_and_update();
        let events = store.events_after(after, limit)?;
        if !events.is_empty() || tokio::time::Instant::now() >= deadline {
            if let Some(oldest) = events.first() {
                // Event-stream lag: how long the oldest event returned waited for this caller.
                let lag = berth_types::Timestamp::now().saturating_since(oldest.at);
                metrics::histogram!("berth_events_stream_lag_seconds").record(lag.as_secs_f64());
            }
            let last_seq = events.last().map_or(after, |e| e.seq);
            return Ok(Json(EventsPage { events, last_seq }));
        }
        if tokio::time::timeout_at(deadline, seq.changed())
            .await
            .is_err()
        {
            return Ok(Json(EventsPage {
                events: Vec::new(),
                last_seq: after,
            }));
        }
    }
}

pub(crate) async fn db_stats(State(lane): State<Lane>) -> ApiResult<Json<DbStats>> {
    let st = lane.shared.agent.store().stats()?;
    Ok(Json(DbStats {
        garbage_ratio: st.garbage_ratio(),
        file_size_bytes: st.file_size_bytes,
        file_allocated_bytes: st.file_allocated_bytes,
        live_bytes: st.live_bytes,
        tables: st.tables,
        last_compaction: st
            .last_compaction
            .and_then(|c| serde_json::to_value(c).ok()),
        next_seq: st.next_seq,
        history_seq: st.history_seq,
        first_seq: st.first_seq,
        compaction: st.compaction.and_then(|c| serde_json::to_value(c).ok()),
    }))
}

/// Compacts online (or joins the compaction running) and answers with its report when the new
/// file is in place. Reads and writes are served throughout.
pub(crate) async fn db_compact(State(lane): State<Lane>) -> ApiResult<Json<serde_json::Value>> {
    let report = lane
        .shared
        .agent
        .compact()
        .await
        .map_err(|e| ApiError::from(&*e))?;
    Ok(Json(serde_json::to_value(report).unwrap_or_default()))
}

pub(crate) async fn slow_ops(State(lane): State<Lane>) -> Json<Vec<SlowOp>> {
    Json(lane.shared.slow_ops.list())
}

/// A consistent snapshot of the database, taken without pausing writers, as the response body.
pub(crate) async fn db_backup(State(lane): State<Lane>) -> ApiResult<Response> {
    let dir = lane.shared.cfg.data_dir.join("backups");
    std::fs::create_dir_all(&dir)
        .map_err(|e| ApiError::internal(format!("create {}: {e}", dir.display())))?;
    let path = dir.join(format!("backup-{}.redb", crate::random_hex(6)?));
    let store = lane.shared.agent.store().clone();
    let p = path.clone();
    let bytes = tokio::task::spawn_blocking(move || {
        let r = store
            .backup_to(&p)
            .map_err(ApiError::from)
            .and_then(|_| std::fs::read(&p).map_err(|e| ApiError::internal(e.to_string())));
        let _ = std::fs::remove_file(&p);
        r
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    let _ = path;
    Ok((
        [("content-type", "application/octet-stream")],
        Body::from(bytes),
    )
        .into_response())
}

/// Check of the live database: every page's checksum (on a copy made between two commits, see
/// `Store::verify_pages`), then every record and the cross-table invariants in one read snapshot.
pub(crate) async fn db_check(State(lane): State<Lane>) -> ApiResult<Json<serde_json::Value>> {
    let store = lane.shared.agent.store().clone();
    let (pages, report) = tokio::task::spawn_blocking(move || {
        let pages = store.verify_pages()?;
        store.check().map(|report| (pages, report))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(serde_json::json!({
        "ok": pages.passed && report.is_ok(),
        "integrity_passed": pages.passed,
        "pages": pages,
        "schema_version": berth_store::SCHEMA_VERSION,
        "report": report,
    })))
}
