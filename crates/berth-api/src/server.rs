//! The router, its middleware (request id, auth, metrics) and the mutation bound.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use berth_api_types::REQUEST_ID_HEADER;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{ApiError, ApiResult};
use crate::{Shared, machines, random_hex, system};

/// One listener's view: shared state, its token (TCP) and its own mutation bound.
#[derive(Debug, Clone)]
pub struct Lane {
    pub(crate) shared: Arc<Shared>,
    pub(crate) name: &'static str,
    pub(crate) token: Option<String>,
    pub(crate) permits: Arc<Semaphore>,
}

impl Lane {
    /// A permit to mutate, or an immediate 429: mutations never queue without bound.
    pub(crate) fn permit(&self) -> ApiResult<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!("berth_api_refused_total", "lane" => self.name).increment(1);
            ApiError::overloaded(format!(
                "too many mutations in flight on the {} lane; retry shortly (the unix socket is the operator's lane)",
                self.name
            ))
        })
    }
}

/// Largest accepted request body.
pub const MAX_BODY: usize = 1 << 20;

/// All routes of the public interface, for one lane.
pub fn router(lane: Lane) -> Router {
    Router::new()
        .route("/v1/health", get(system::health))
        .route("/metrics", get(system::metrics))
        .route("/v1/host", get(system::host))
        .route("/v1/host/cordon", post(system::cordon))
        .route("/v1/host/uncordon", post(system::uncordon))
        .route("/v1/host/reconcile", post(system::reconcile))
        .route("/v1/machines", post(machines::create).get(machines::list))
        .route(
            "/v1/machines/{id}",
            get(machines::get).delete(machines::destroy),
        )
        .route("/v1/machines/{id}/start", post(machines::start))
        .route("/v1/machines/{id}/stop", post(machines::stop))
        .route("/v1/machines/{id}/restart", post(machines::restart))
        .route("/v1/machines/{id}/signal", post(machines::signal))
        .route("/v1/machines/{id}/wait", get(machines::wait))
        .route("/v1/machines/{id}/events", get(machines::events))
        .route("/v1/machines/{id}/logs", get(machines::logs))
        .route(
            "/v1/machines/{id}/lease",
            post(machines::lease_acquire)
                .get(machines::lease_get)
                .delete(machines::lease_release),
        )
        .route("/v1/events", get(system::events))
        .route("/v1/db/stats", get(system::db_stats))
        .route("/v1/db/compact", post(system::db_compact))
        .route("/v1/db/slow-ops", get(system::slow_ops))
        .route("/v1/db/backup", get(system::db_backup))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(axum::middleware::from_fn_with_state(lane.clone(), auth))
        .layer(axum::middleware::from_fn(observe))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(lane)
}

/// TCP requires `Authorization: Bearer <token>`; the socket lane has no token.
async fn auth(State(lane): State<Lane>, req: Request, next: Next) -> Response {
    if let Some(token) = &lane.token {
        let ok = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes()));
        if !ok {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token (see api.token_file)",
            )
            .into_response();
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Request id, per-route metrics and a log line per request.
async fn observe(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(|| random_hex(8));
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_owned();
    let method = req.method().as_str().to_owned();
    let start = Instant::now();
    let mut resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    let secs = start.elapsed().as_secs_f64();
    metrics::counter!("berth_api_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("berth_api_request_duration_seconds", "route" => route.clone())
        .record(secs);
    tracing::debug!(request_id = %id, %method, %route, status = resp.status().as_u16(), ms = secs * 1e3, "request");
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    resp
}
