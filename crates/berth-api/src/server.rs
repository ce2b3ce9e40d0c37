//! The router, its middleware (request id, auth, metrics) and the mutation bound.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
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

/// Registers each route and records it in [`ROUTES`], so the list cannot drift from what is
/// served (the OpenAPI test compares the two).
macro_rules! api_routes {
    ($( $method:ident $path:literal => $handler:path ),* $(,)?) => {
        /// Every (method, path) the API serves.
        pub const ROUTES: &[(&str, &str)] = &[ $( (stringify!($method), $path) ),* ];

        fn add_routes(r: Router<Lane>) -> Router<Lane> {
            r $( .route($path, axum::routing::$method($handler)) )*
        }
    };
}

api_routes! {
    get "/v1/health" => system::health,
    get "/metrics" => system::metrics,
    get "/v1/host" => system::host,
    post "/v1/host/cordon" => system::cordon,
    post "/v1/host/uncordon" => system::uncordon,
    post "/v1/host/reconcile" => system::reconcile,
    post "/v1/host/approve" => system::approve,
    post "/v1/machines" => machines::create,
    get "/v1/machines" => machines::list,
    get "/v1/machines/{id}" => machines::get,
    delete "/v1/machines/{id}" => machines::destroy,
    post "/v1/machines/{id}/start" => machines::start,
    post "/v1/machines/{id}/stop" => machines::stop,
    post "/v1/machines/{id}/restart" => machines::restart,
    post "/v1/machines/{id}/signal" => machines::signal,
    get "/v1/machines/{id}/wait" => machines::wait,
    get "/v1/machines/{id}/events" => machines::events,
    get "/v1/machines/{id}/logs" => machines::logs,
    post "/v1/machines/{id}/lease" => machines::lease_acquire,
    get "/v1/machines/{id}/lease" => machines::lease_get,
    delete "/v1/machines/{id}/lease" => machines::lease_release,
    get "/v1/events" => system::events,
    get "/v1/db/stats" => system::db_stats,
    post "/v1/db/compact" => system::db_compact,
    get "/v1/db/slow-ops" => system::slow_ops,
    get "/v1/db/backup" => system::db_backup,
    get "/v1/db/check" => system::db_check,
}

/// All routes of the public interface, for one lane.
pub fn router(lane: Lane) -> Router {
    add_routes(Router::new())
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
