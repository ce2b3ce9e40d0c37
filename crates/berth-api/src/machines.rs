//! `/v1/machines/...`: create, list, get, lifecycle, wait, events, logs, leases. Each handler
//! parses its request and calls one command of the agent.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_api_types::{
    CreateMachine, DestroyQuery, ExecRequest, ExecResult, IDEMPOTENCY_HEADER, Lease, LeaseRequest,
    MachineListQuery, NEXT_CURSOR_HEADER, SignalRequest, StopRequest, WaitQuery,
};
use berth_types::{MachineRecord, OpKind};

use crate::error::{ApiError, ApiResult};
use crate::extract::{
    Query, QueryRejection, lease_nonce, parse_body, parse_id, parse_optional, query,
};
use crate::server::Lane;

/// Default and most time `GET /v1/machines/{id}/wait` waits.
const WAIT_DEFAULT: Duration = Duration::from_secs(30);
const WAIT_MAX: Duration = Duration::from_secs(300);

pub(crate) async fn create(
    State(lane): State<Lane>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let _permit = lane.permit()?;
    let req: CreateMachine = parse_body(body)?;
    let key = match headers.get(IDEMPOTENCY_HEADER) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| {
                    ApiError::invalid("Idempotency-Key must be printable ASCII characters")
                })?
                .to_owned(),
        ),
    };
    let m = lane.agent().create_machine(req, key).await?;
    Ok((StatusCode::CREATED, Json(m)).into_response())
}

/// The list's query: `metadata.KEY=VALUE` pairs are open, every other key is closed.
fn list_query(pairs: Vec<(String, String)>) -> ApiResult<MachineListQuery> {
    let (metadata, rest): (Vec<_>, Vec<_>) = pairs
        .into_iter()
        .partition(|(k, _)| k.starts_with("metadata."));
    let encoded = serde_urlencoded::to_string(&rest)
        .map_err(|e| ApiError::invalid(format!("invalid query string: {e}")))?;
    let mut q: MachineListQuery = query(crate::extract::parse_query(&encoded).map(Query))?;
    q.metadata = metadata
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix("metadata.").map(|k| (k.to_owned(), v)))
        .collect();
    Ok(q)
}

pub(crate) async fn list(
    State(lane): State<Lane>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult<Response> {
    let q = list_query(query(q)?)?;
    let page = lane.agent().list_machines(&q)?;
    let mut resp = Json(page.machines).into_response();
    if let Some(next) = page.next
        && let Ok(v) = HeaderValue::from_str(next.as_str())
    {
        resp.headers_mut().insert(NEXT_CURSOR_HEADER, v);
    }
    Ok(resp)
}

pub(crate) async fn get(
    State(lane): State<Lane>,
    Path(id): Path<String>,
) -> ApiResult<Json<MachineRecord>> {
    Ok(Json(lane.agent().machine(&parse_id(&id)?)?))
}

async fn lifecycle(
    lane: Lane,
    id: String,
    headers: HeaderMap,
    kind: OpKind,
    signal: Option<String>,
    timeout: Option<Duration>,
) -> ApiResult<Json<MachineRecord>> {
    let _permit = lane.permit()?;
    let id = parse_id(&id)?;
    let nonce = lease_nonce(&headers).map(str::to_owned);
    Ok(Json(
        lane.agent()
            .lifecycle(&id, kind, signal, timeout, nonce)
            .await?,
    ))
}

pub(crate) async fn start(
    State(lane): State<Lane>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<MachineRecord>> {
    lifecycle(lane, id, headers, OpKind::Start, None, None).await
}

pub(crate) async fn restart(
    State(lane): State<Lane>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<MachineRecord>> {
    lifecycle(lane, id, headers, OpKind::Restart, None, None).await
}

pub(crate) async fn stop(
    State(lane): State<Lane>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<MachineRecord>> {
    let req: StopRequest = parse_optional(body)?;
    let signal = match req.signal {
        Some(s) => Some(
            berth_types::config::normalize_signal(&s)
                .map_err(ApiError::invalid)?
                .to_owned(),
        ),
        None => None,
    };
    let timeout = req.timeout.map(|t| t.0);
    lifecycle(lane, id, headers, OpKind::Stop, signal, timeout).await
}

pub(crate) async fn signal(
    State(lane): State<Lane>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<MachineRecord>> {
    let _permit = lane.permit()?;
    let req: SignalRequest = parse_body(body)?;
    let id = parse_id(&id)?;
    let m = lane
        .agent()
        .signal_machine(&id, &req.signal, lease_nonce(&headers))?;
    Ok(Json(m))
}

pub(crate) async fn destroy(
    State(lane): State<Lane>,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Result<Query<DestroyQuery>, QueryRejection>,
) -> ApiResult<Json<MachineRecord>> {
    let q = query(q)?;
    let _permit = lane.permit()?;
    let id = parse_id(&id)?;
    let nonce = lease_nonce(&headers).map(str::to_owned);
    Ok(Json(
        lane.agent().destroy_machine(&id, q.force, nonce).await?,
    ))
}

pub(crate) async fn wait(
    State(lane): State<Lane>,
    Path(id): Path<String>,
    q: Result<Query<WaitQuery>, QueryRejection>,
) -> ApiResult<Json<MachineRecord>> {
    let id = parse_id(&id)?;
    let q = query(q)?;
    let timeout = q.timeout.map_or(WAIT_DEFAULT, |t| t.0);
    if timeout > WAIT_MAX {
        return Err(ApiError::invalid(format!(
            "timeout must be at most {}",
            humantime::format_duration(WAIT_MAX)
        )));
    }
    let agent = lane.agent();
    if q.healthy {
        return Ok(Json(agent.wait_healthy(&id, q.state, timeout).await?));
    }
    Ok(Json(agent.wait_for(&id, q.state, timeout).await?))
}

pub(crate) async fn checks(
    State(lane): State<Lane>,
    Path(id): Path<String>,
) -> ApiResult<Json<std::collections::BTreeMap<String, berth_types::CheckStatus>>> {
    Ok(Json(lane.agent().machine(&parse_id(&id)?)?.checks))
}

pub(crate) async fn stats(
    State(lane): State<Lane>,
    Path(id): Path<String>,
) -> ApiResult<Json<berth_api_types::MachineStats>> {
    Ok(Json(lane.agent().machine_stats(&parse_id(&id)?)?))
}

pub(crate) async fn events(
    State(lane): State<Lane>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<berth_types::Event>>> {
    Ok(Json(lane.agent().machine_events(&parse_id(&id)?)?))
}

pub(crate) async fn lease_acquire(
    State(lane): State<Lane>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let req: LeaseRequest = parse_optional(body)?;
    let id = parse_id(&id)?;
    let lease = lane
        .agent()
        .acquire_lease(&id, req, lease_nonce(&headers))?;
    Ok((StatusCode::CREATED, Json(lease)).into_response())
}

pub(crate) async fn lease_get(
    State(lane): State<Lane>,
    Path(id): Path<String>,
) -> ApiResult<Json<Lease>> {
    Ok(Json(lane.agent().lease_of(&parse_id(&id)?)?))
}

pub(crate) async fn lease_release(
    State(lane): State<Lane>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let id = parse_id(&id)?;
    lane.agent().release_lease(&id, lease_nonce(&headers))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Answers once the command exited or its timeout killed it.
pub(crate) async fn exec(
    State(lane): State<Lane>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<ExecResult>> {
    let _permit = lane.permit()?;
    let req: ExecRequest = parse_body(body)?;
    let id = parse_id(&id)?;
    Ok(Json(
        lane.agent().exec(&id, req, lease_nonce(&headers)).await?,
    ))
}
