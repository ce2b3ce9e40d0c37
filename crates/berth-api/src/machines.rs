//! `/v1/machines/...`: create, list, get, lifecycle, wait, events, logs, leases.

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_api_types::{
    CreateMachine, IDEMPOTENCY_HEADER, LEASE_HEADER, Lease, LeaseRequest, MAX_PAGE_LIMIT,
    NEXT_CURSOR_HEADER, SignalRequest, StopRequest,
};
use berth_machine::{Admission, CreateRequest, LeaseRecord, OpError};
use berth_types::time::HumanDuration;
use berth_types::{MachineId, MachineRecord, OpKind, Source, State as MState};
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ApiResult};
use crate::random_hex;
use crate::server::Lane;

/// Most lines `GET /v1/machines/{id}/logs?tail=N` returns.
pub const MAX_TAIL: usize = 100_000;

pub(crate) fn parse_id(raw: &str) -> ApiResult<MachineId> {
    MachineId::parse(raw).map_err(|e| ApiError::invalid(format!("invalid machine id {raw:?}: {e}")))
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("request body over {} bytes", crate::server::MAX_BODY),
            )
        } else {
            ApiError::invalid(r.body_text())
        }
    })
}

/// Parses a required JSON body.
pub(crate) fn parse_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> ApiResult<T> {
    let bytes = body_bytes(body)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid("a JSON body is required"));
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

/// Parses an optional JSON body (empty means all defaults).
pub(crate) fn parse_optional<T: DeserializeOwned + Default>(
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<T> {
    let bytes = body_bytes(body)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

fn machine_or_404(lane: &Lane, id: &MachineId) -> ApiResult<MachineRecord> {
    lane.shared
        .agent
        .store()
        .machine(id)?
        .ok_or_else(|| ApiError::not_found(format!("machine {id} not found")))
}

/// The lease nonce a request carries, if any.
fn lease_nonce(headers: &HeaderMap) -> Option<&str> {
    headers.get(LEASE_HEADER).and_then(|v| v.to_str().ok())
}

/// Runs an operation in its own task, so a client that goes away cannot cancel it half-way. A
/// workload that failed (spawn error...) is recorded on the machine, so the answer is the machine.
async fn detached<F>(lane: &Lane, id: &MachineId, op: F) -> ApiResult<MachineRecord>
where
    F: std::future::Future<Output = Result<MachineRecord, OpError>> + Send + 'static,
{
    let result = tokio::spawn(op)
        .await
        .map_err(|e| ApiError::internal(format!("operation task failed: {e}")))?;
    match result {
        Ok(m) => Ok(m),
        Err(OpError::Effect { .. }) => machine_or_404(lane, id),
        Err(e) => Err(e.into()),
    }
}

async fn run_op(
    lane: &Lane,
    id: MachineId,
    kind: OpKind,
    signal: Option<String>,
    timeout: Option<Duration>,
    nonce: Option<String>,
) -> ApiResult<MachineRecord> {
    let agent = lane.shared.agent.clone();
    let id2 = id.clone();
    detached(lane, &id, async move {
        agent
            .operate_leased(&id2, kind, signal, timeout, nonce.as_deref())
            .await
    })
    .await
}

pub(crate) async fn create(
    State(lane): State<Lane>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let _permit = lane.permit()?;
    let req: CreateMachine = parse_body(body)?;
    if lane.shared.is_cordoned() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "cordoned",
            "this host is cordoned: it accepts no new machines (POST /v1/host/uncordon)",
        ));
    }
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
    let id = MachineId::generate();
    let creq = CreateRequest {
        id: Some(id.clone()),
        name: req.name,
        config: req.config,
        metadata: req.metadata,
        skip_start: req.skip_start,
        source: Source::User,
    };
    let admission = Admission {
        max_machines: Some(lane.shared.cfg.max_machines),
        idempotency_key: key,
    };
    let agent = lane.shared.agent.clone();
    let task = tokio::spawn(async move { agent.admit(creq, admission).await });
    let result = task
        .await
        .map_err(|e| ApiError::internal(format!("operation task failed: {e}")))?;
    let m = match result {
        Ok(created) => created.machine,
        // The workload failed to start: the machine is recorded, failed, and is the answer.
        Err(OpError::Effect { .. }) => machine_or_404(&lane, &id)?,
        Err(e) => return Err(e.into()),
    };
    Ok((StatusCode::CREATED, Json(m)).into_response())
}

/// Parses `limit` and `cursor` of a list.
fn page_params(q: &HashMap<String, String>) -> ApiResult<(Option<usize>, Option<MachineId>)> {
    let limit = match q.get("limit") {
        None => None,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE_LIMIT).contains(&n) => Some(n),
            _ => {
                return Err(ApiError::invalid(format!(
                    "limit must be a number from 1 to {MAX_PAGE_LIMIT}, not {:?}",
                    l.chars().take(32).collect::<String>()
                )));
            }
        },
    };
    let cursor = match q.get("cursor") {
        None => None,
        Some(c) => Some(MachineId::parse(c).map_err(|e| {
            ApiError::invalid(format!(
                "cursor must be the {NEXT_CURSOR_HEADER} of an earlier page: {e}"
            ))
        })?),
    };
    if cursor.is_some() && limit.is_none() {
        return Err(ApiError::invalid("cursor needs a limit"));
    }
    Ok((limit, cursor))
}

pub(crate) async fn list(
    State(lane): State<Lane>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let state = match q.get("state") {
        Some(s) => Some(s.parse::<MState>().map_err(ApiError::invalid)?),
        None => None,
    };
    let include_destroyed = match q.get("include_destroyed").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "include_destroyed must be true or false, not {other:?}"
            )));
        }
    };
    for k in q.keys() {
        if !(["state", "include_destroyed", "limit", "cursor"].contains(&k.as_str())
            || k.starts_with("metadata."))
        {
            return Err(ApiError::invalid(format!(
                "unknown query parameter {:?}",
                k.chars().take(64).collect::<String>()
            )));
        }
    }
    let (limit, cursor) = page_params(&q)?;
    let wanted: Vec<(&str, &String)> = q
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("metadata.").map(|k| (k, v)))
        .collect();
    let page = lane
        .shared
        .agent
        .store()
        .machines_page(cursor.as_ref(), limit, |m| {
            (include_destroyed || state == Some(MState::Destroyed) || m.state != MState::Destroyed)
                && state.is_none_or(|s| m.state == s)
                && wanted.iter().all(|(k, v)| m.metadata.get(*k) == Some(*v))
        })?;
    let mut resp = Json(page.machines).into_response();
    if let Some(next) = page.next
        && let Ok(v) = axum::http::HeaderValue::from_str(next.as_str())
    {
        resp.headers_mut().insert(NEXT_CURSOR_HEADER, v);
    }
    Ok(resp)
}

pub(crate) async fn get(
    State(lane): State<Lane>,
    Path(id): Path<String>,
) -> ApiResult<Json<MachineRecord>> {
    Ok(Json(machine_or_404(&lane, &parse_id(&id)?)?))
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
    machine_or_404(&lane, &id)?;
    let nonce = lease_nonce(&headers).map(str::to_owned);
    Ok(Json(run_op(&lane, id, kind, signal, timeout, nonce).await?))
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
    lifecycle(
        lane,
        id,
        headers,
        OpKind::Stop,
        signal,
        req.timeout.map(|t| t.0),
    )
    .await
}

pub(crate) async fn signal(
    State(lane): State<Lane>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<MachineRecord>> {
    let _permit = lane.permit()?;
    let req: SignalRequest = parse_body(body)?;
    let sig = berth_types::config::normalize_signal(&req.signal).map_err(ApiError::invalid)?;
    let id = parse_id(&id)?;
    let m = machine_or_404(&lane, &id)?;
    lane.shared
        .agent
        .machines()
        .check_lease(&id, lease_nonce(&headers))?;
    if m.state != MState::Started {
        return Err(ApiError::conflict(format!(
            "machine {id} is {}, not started",
            m.state
        )));
    }
    lane.shared
        .agent
        .driver()
        .signal(id.as_str(), sig)
        .map_err(|e| ApiError::conflict(e.to_string()))?;
    tracing::info!(machine = %id, signal = sig, "signal sent at a user's request");
    Ok(Json(m))
}

pub(crate) async fn destroy(
    State(lane): State<Lane>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<MachineRecord>> {
    let force = match q.get("force").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "force must be true or false, not {other:?}"
            )));
        }
    };
    let parsed = parse_id(&id)?;
    let m = machine_or_404(&lane, &parsed)?;
    if m.state == MState::Started && !force {
        return Err(ApiError::conflict(format!(
            "machine {parsed} is running; stop it first or pass ?force=true"
        )));
    }
    let signal = force.then(|| "SIGKILL".to_owned());
    lifecycle(
        lane,
        id,
        headers,
        OpKind::Destroy,
        signal,
        force.then_some(Duration::ZERO),
    )
    .await
}

fn parse_duration(
    q: &HashMap<String, String>,
    key: &str,
    default: Duration,
    max: Duration,
) -> ApiResult<Duration> {
    match q.get(key) {
        None => Ok(default),
        Some(s) => {
            let d = HumanDuration::parse(s)
                .map_err(|e| ApiError::invalid(format!("{key}: {e}")))?
                .0;
            if d > max {
                return Err(ApiError::invalid(format!(
                    "{key} must be at most {}",
                    humantime::format_duration(max)
                )));
            }
            Ok(d)
        }
    }
}

pub(crate) async fn wait(
    State(lane): State<Lane>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<MachineRecord>> {
    let id = parse_id(&id)?;
    let want: MState = q
        .get("state")
        .ok_or_else(|| ApiError::invalid("state is required"))?
        .parse()
        .map_err(ApiError::invalid)?;
    let timeout = parse_duration(
        &q,
        "timeout",
        Duration::from_secs(30),
        Duration::from_secs(300),
    )?;
    let mut seq = lane.shared.agent.store().subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        seq.borrow_and_update();
        let m = machine_or_404(&lane, &id)?;
        if m.state == want {
            return Ok(Json(m));
        }
        if tokio::time::timeout_at(deadline, seq.changed())
            .await
            .is_err()
        {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!(
                    "machine {id} did not reach {want} within {}; it is {}",
                    humantime::format_duration(timeout),
                    m.state
                ),
            ));
        }
    }
}

pub(crate) async fn events(
    State(lane): State<Lane>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<berth_types::Event>>> {
    let id = parse_id(&id)?;
    let history = lane.shared.agent.store().history(&id)?;
    if history.is_empty() {
        machine_or_404(&lane, &id)?;
    }
    Ok(Json(history))
}

pub(crate) async fn logs(
    State(lane): State<Lane>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    machine_or_404(&lane, &id)?;
    let tail: usize = match q.get("tail") {
        None => 100,
        Some(t) => match t.parse() {
            Ok(n) if n <= MAX_TAIL => n,
            _ => {
                return Err(ApiError::invalid(format!(
                    "tail must be a number of lines from 0 to {MAX_TAIL}, not {:?}",
                    t.chars().take(32).collect::<String>()
                )));
            }
        },
    };
    let follow = matches!(q.get("follow").map(String::as_str), Some("true" | "1"));
    let dir = lane.shared.agent.driver().logs_dir(id.as_str());
    let initial = berth_driver::logs::tail(&dir, tail)
        .map_err(|e| ApiError::internal(format!("reading logs: {e}")))?;
    if !follow {
        return Ok(([("content-type", "text/plain; charset=utf-8")], initial).into_response());
    }
    // Every read goes through the driver, which follows no link in the workload's log directory.
    let start = match berth_driver::logs::read_from(&dir, u64::MAX, 0) {
        Ok(found) => found.map_or(0, |(len, _)| len),
        Err(e) => return Err(ApiError::internal(format!("reading logs: {e}"))),
    };
    let stream = futures_util::stream::unfold(
        (Some(initial), dir, start),
        |(first, dir, mut pos)| async move {
            if let Some(text) = first {
                return Some((Ok::<_, std::io::Error>(Bytes::from(text)), (None, dir, pos)));
            }
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                // Gone (destroyed) or no longer a plain file of its own (a link): the end.
                let (len, buf) = berth_driver::logs::read_from(&dir, pos, 1 << 20).ok()??;
                if len < pos {
                    pos = 0; // rotated
                    continue;
                }
                if !buf.is_empty() {
                    pos += buf.len() as u64;
                    return Some((Ok(Bytes::from(buf)), (None, dir, pos)));
                }
            }
        },
    );
    Ok((
        [("content-type", "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response())
}

fn wire_lease(l: LeaseRecord) -> Lease {
    Lease {
        machine_id: l.machine_id.to_string(),
        nonce: l.nonce,
        expires_at: l.expires_at,
        description: l.description,
    }
}

pub(crate) async fn lease_acquire(
    State(lane): State<Lane>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let req: LeaseRequest = parse_optional(body)?;
    let id = parse_id(&id)?;
    machine_or_404(&lane, &id)?;
    let lease = lane.shared.agent.machines().acquire_lease(
        &id,
        req.ttl.map(|t| t.0),
        req.description,
        lease_nonce(&headers),
        random_hex(16)?,
    )?;
    Ok((StatusCode::CREATED, Json(wire_lease(lease))).into_response())
}

pub(crate) async fn lease_get(
    State(lane): State<Lane>,
    Path(id): Path<String>,
) -> ApiResult<Json<Lease>> {
    let id = parse_id(&id)?;
    let mut lease = lane
        .shared
        .agent
        .machines()
        .lease(&id)
        .map(wire_lease)
        .ok_or_else(|| ApiError::not_found(format!("machine {id} has no lease")))?;
    lease.nonce = String::new(); // only the holder knows it
    Ok(Json(lease))
}

pub(crate) async fn lease_release(
    State(lane): State<Lane>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let id = parse_id(&id)?;
    lane.shared
        .agent
        .machines()
        .release_lease(&id, lease_nonce(&headers))?;
    Ok(StatusCode::NO_CONTENT)
}
