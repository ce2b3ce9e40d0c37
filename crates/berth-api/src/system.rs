//! Host, health, metrics, the host-wide event stream and the database routes. Each handler
//! parses its request and calls one command of the agent.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use berth_api_types::{
    ApproveReport, CompactionReport, DbCheck, DbStats, EventsPage, EventsQuery, Health, HostInfo,
    ReconcileQuery, ReconcileReport, SlowOp,
};

use crate::error::{ApiError, ApiResult};
use crate::extract::{Query, QueryRejection, query};
use crate::server::Lane;

/// Events one page returns without `limit`.
const EVENTS_DEFAULT_LIMIT: u64 = 100;

pub(crate) async fn health(State(lane): State<Lane>) -> Json<Health> {
    Json(lane.agent().health())
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
    let mut host = lane.agent().host_info()?;
    // The exporter is berthd's, beside the agent: its state joins the agent's facts here.
    host.export = lane.shared.cfg.export.as_ref().map(|f| f());
    Ok(Json(host))
}

pub(crate) async fn cordon(State(lane): State<Lane>) -> ApiResult<Json<HostInfo>> {
    Ok(Json(lane.agent().set_cordoned(true).await?))
}

pub(crate) async fn uncordon(State(lane): State<Lane>) -> ApiResult<Json<HostInfo>> {
    Ok(Json(lane.agent().set_cordoned(false).await?))
}

/// An operator lets what the blast-radius guard held back proceed.
pub(crate) async fn approve(State(lane): State<Lane>) -> ApiResult<Json<ApproveReport>> {
    let _permit = lane.permit()?;
    tracing::warn!(
        lane = lane.name,
        "an operator approved the automated decisions the blast-radius guard held back"
    );
    Ok(Json(lane.agent().host_approve().await?))
}

/// Runs a reconciliation pass now; `?approve=true` overrides the blast-radius guard.
pub(crate) async fn reconcile(
    State(lane): State<Lane>,
    q: Result<Query<ReconcileQuery>, QueryRejection>,
) -> ApiResult<Json<ReconcileReport>> {
    let q = query(q)?;
    let _permit = lane.permit()?;
    if q.approve {
        tracing::warn!(
            lane = lane.name,
            "an operator approved a reconciliation pass past the blast-radius guard"
        );
    }
    Ok(Json(lane.agent().host_reconcile(q.approve).await?))
}

pub(crate) async fn events(
    State(lane): State<Lane>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> ApiResult<Json<EventsPage>> {
    let q = query(q)?;
    let limit = usize::try_from(q.limit.unwrap_or(EVENTS_DEFAULT_LIMIT)).unwrap_or(usize::MAX);
    let wait = q.wait.map_or(Duration::ZERO, |w| w.0);
    Ok(Json(lane.agent().events_page(q.after, limit, wait).await?))
}

pub(crate) async fn db_stats(State(lane): State<Lane>) -> ApiResult<Json<DbStats>> {
    Ok(Json(lane.agent().db_stats()?))
}

/// Compacts online (or joins the compaction running) and answers with its report when the new
/// file is in place. Reads and writes are served throughout.
pub(crate) async fn db_compact(State(lane): State<Lane>) -> ApiResult<Json<CompactionReport>> {
    Ok(Json(lane.agent().db_compact().await?))
}

pub(crate) async fn slow_ops(State(lane): State<Lane>) -> Json<Vec<SlowOp>> {
    Json(lane.agent().slow_ops())
}

/// A consistent snapshot of the database, taken without pausing writers, streamed as the
/// response body: the store writes it to a file under `backups/` in the data dir, which is
/// unlinked once open and read out [`BACKUP_CHUNK_BYTES`] at a time, so a backup's memory does
/// not grow with the database.
pub(crate) async fn db_backup(State(lane): State<Lane>) -> ApiResult<Response> {
    let dir = lane.shared.cfg.data_dir.join("backups");
    std::fs::create_dir_all(&dir)
        .map_err(|e| ApiError::internal(format!("create {}: {e}", dir.display())))?;
    let path = dir.join(format!("backup-{}.redb", crate::random_hex(6)?));
    let agent = lane.shared.agent.clone();
    let (file, len) = tokio::task::spawn_blocking(move || {
        let r = agent
            .backup_to(&path)
            .map_err(ApiError::from)
            .and_then(|_| {
                let file =
                    std::fs::File::open(&path).map_err(|e| ApiError::internal(e.to_string()))?;
                let len = file
                    .metadata()
                    .map_err(|e| ApiError::internal(e.to_string()))?
                    .len();
                Ok((file, len))
            });
        // The open file streams on without its name; nothing is left behind.
        let _ = std::fs::remove_file(&path);
        r
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok((
        [
            ("content-type", "application/octet-stream".to_owned()),
            ("content-length", len.to_string()),
        ],
        Body::from_stream(file_chunks(file)),
    )
        .into_response())
}

/// Bytes per chunk of a streamed backup.
pub(crate) const BACKUP_CHUNK_BYTES: usize = 64 << 10;

/// `file`, read on a blocking thread [`BACKUP_CHUNK_BYTES`] at a time; at most two chunks wait
/// for a slow client.
fn file_chunks(
    mut file: std::fs::File,
) -> impl futures_util::Stream<Item = std::io::Result<axum::body::Bytes>> + Send + 'static {
    use std::io::Read;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<axum::body::Bytes>>(2);
    tokio::task::spawn_blocking(move || {
        loop {
            let mut buf = vec![0u8; BACKUP_CHUNK_BYTES];
            let chunk = match file.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    Ok(axum::body::Bytes::from(buf))
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
            let failed = chunk.is_err();
            // A closed channel is a client that went away.
            if tx.blocking_send(chunk).is_err() || failed {
                return;
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
}

/// Check of the live database: every page's checksum (on a copy made between two commits, see
/// `Store::verify_pages`), then every record and the cross-table invariants in one read snapshot.
pub(crate) async fn db_check(State(lane): State<Lane>) -> ApiResult<Json<DbCheck>> {
    Ok(Json(lane.agent().db_check().await?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly by design
    use futures_util::StreamExt;

    use super::*;

    /// A backup is read out a chunk at a time, never as one allocation, and arrives whole.
    #[tokio::test]
    async fn a_file_streams_in_bounded_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..(5 * BACKUP_CHUNK_BYTES + 17))
            .map(|i| i as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        let mut stream = Box::pin(file_chunks(std::fs::File::open(&path).unwrap()));
        let mut got = Vec::new();
        let mut chunks = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            assert!(chunk.len() <= BACKUP_CHUNK_BYTES, "{}", chunk.len());
            got.extend_from_slice(&chunk);
            chunks += 1;
        }
        assert!(chunks >= 6, "{chunks}");
        assert_eq!(got, data);
    }
}
