//! The router, its middleware (request id, auth, metrics) and the mutation bound.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use berth_api_types::REQUEST_ID_HEADER;
use subtle::ConstantTimeEq;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{ApiError, ApiResult};
use crate::{Shared, images, logs, machines, random_hex, system, update, volumes};

/// One listener's view: shared state, its token (TCP) and its own mutation bound.
#[derive(Debug, Clone)]
pub struct Lane {
    pub(crate) shared: Arc<Shared>,
    pub(crate) name: &'static str,
    pub(crate) token: Option<String>,
    pub(crate) permits: Arc<Semaphore>,
}

impl Lane {
    /// The agent this lane's requests command.
    pub(crate) fn agent(&self) -> &berth_agent::Agent {
        self.shared.agent()
    }

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
    post "/v1/machines/{id}" => update::update,
    get "/v1/machines/{id}/versions" => update::versions,
    post "/v1/machines/{id}/rollback" => update::rollback,
    post "/v1/machines/{id}/start" => machines::start,
    post "/v1/machines/{id}/stop" => machines::stop,
    post "/v1/machines/{id}/restart" => machines::restart,
    post "/v1/machines/{id}/signal" => machines::signal,
    get "/v1/machines/{id}/wait" => machines::wait,
    get "/v1/machines/{id}/events" => machines::events,
    get "/v1/machines/{id}/checks" => machines::checks,
    get "/v1/machines/{id}/stats" => machines::stats,
    get "/v1/machines/{id}/logs" => logs::logs,
    post "/v1/machines/{id}/lease" => machines::lease_acquire,
    get "/v1/machines/{id}/lease" => machines::lease_get,
    delete "/v1/machines/{id}/lease" => machines::lease_release,
    get "/v1/events" => system::events,
    get "/v1/db/stats" => system::db_stats,
    post "/v1/db/compact" => system::db_compact,
    get "/v1/db/slow-ops" => system::slow_ops,
    get "/v1/db/backup" => system::db_backup,
    get "/v1/db/check" => system::db_check,
    get "/v1/images" => images::list,
    post "/v1/images/pull" => images::pull,
    delete "/v1/images/{digest}" => images::remove,
    get "/v1/volumes" => volumes::list,
    post "/v1/volumes" => volumes::create,
    delete "/v1/volumes/{name}" => volumes::remove,
    post "/v1/machines/{id}/exec" => machines::exec,
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

/// TCP requires `Authorization: Bearer <token>` (the scheme in any case, RFC 7235); the socket
/// lane has no token.
async fn auth(State(lane): State<Lane>, req: Request, next: Next) -> Response {
    if let Some(token) = &lane.token {
        let ok = req
            .headers()
            .get("authorization")
            .and_then(|v| bearer(v.as_bytes()))
            .is_some_and(|given| bool::from(given.ct_eq(token.as_bytes())));
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

/// The credentials of a `Bearer` authorization header: the scheme is case-insensitive and
/// separated from the token by one or more spaces.
fn bearer(v: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = v.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    let start = rest.iter().position(|&b| b != b' ')?;
    let token = &rest[start..];
    let end = token.iter().rposition(|&b| b != b' ')? + 1;
    Some(&token[..end])
}

/// The `method` label: one of the methods HTTP defines, else `other`, so a client cannot create
/// a series per made-up method.
pub(crate) fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// The error code of a status, for errors not produced by berth's handlers (axum's rejections,
/// 405 and the like).
pub(crate) fn code_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 | 403 => "unauthorized",
        404 => "not_found",
        405 => "method_not_allowed",
        408 | 504 => "timeout",
        409 => "conflict",
        410 => "expired",
        413 | 414 | 431 => "too_large",
        429 => "overloaded",
        503 => "unavailable",
        500..=599 => "internal",
        _ => "invalid",
    }
}

/// Largest error body from a layer below the handlers (a rejection's text) kept as the message.
const MAX_REJECTION_BODY: usize = 16 << 10;

/// An error answered without berth's `{"error","code"}` body (axum's 405 and its extractors'
/// rejections are plain text or empty) gets one, keeping the status and headers (`Allow`).
async fn well_formed(resp: Response) -> Response {
    let is_json = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if resp.status().as_u16() < 400 || is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, MAX_REJECTION_BODY)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = match (text.is_empty(), parts.status.as_u16()) {
        (false, _) => text,
        (true, 405) => "this route does not take that method (see the Allow header)".to_owned(),
        (true, _) => parts
            .status
            .canonical_reason()
            .unwrap_or("error")
            .to_lowercase(),
    };
    let fresh = ApiError::new(parts.status, code_for(parts.status), message).into_response();
    let (fresh_parts, body) = fresh.into_parts();
    parts.headers.remove("content-length");
    for (k, v) in &fresh_parts.headers {
        parts.headers.insert(k.clone(), v.clone());
    }
    Response::from_parts(parts, body)
}

/// Request id, per-route metrics and a log line per request.
async fn observe(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(request_id);
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_owned();
    let method = method_label(req.method());
    let start = Instant::now();
    let mut resp = well_formed(next.run(req).await).await;
    let status = resp.status().as_u16().to_string();
    let secs = start.elapsed().as_secs_f64();
    metrics::counter!("berth_api_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("berth_api_request_duration_seconds", "route" => route.clone())
        .record(secs);
    tracing::debug!(request_id = %id, %method, %route, status = resp.status().as_u16(), ms = secs * 1e3, "request");
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    resp
}

/// A fresh request id: OS randomness, or (should the OS refuse it) a process-wide counter: a
/// request id needs to be unique, not secret.
fn request_id() -> String {
    random_hex(8).unwrap_or_else(|_| {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        format!(
            "c{:015x}",
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        )
    })
}
