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
    CreateMachine, IDEMPOTENCY_HEADER, LEASE_HEADER, Lease, LeaseRequest, SignalRequest,
    StopRequest,
};
use berth_machine::{CreateRequest, OpError};
use berth_types::time::HumanDuration;
use berth_types::{MachineId, MachineRecord, OpKind, Source, State as MState, Timestamp};
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ApiResult};
use crate::random_hex;
use crate::server::Lane;

/// Metadata key under which a create's Idempotency-Key is kept (so it survives restarts).
pub const IDEMPOTENCY_LABEL: &str = "berth/idempotency-key";

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

/// A mutation on a leased machine must carry the lease's nonce.
fn check_lease(lane: &Lane, id: &MachineId, headers: &HeaderMap) -> ApiResult<()> {
    let leases = lane
        .shared
        .leases
        .lock()
        .map_err(|_| ApiError::internal("lease table poisoned"))?;
    let Some(lease) = leases
        .get(id.as_str())
        .filter(|l| l.expires_at > Timestamp::now())
    else {
        return Ok(());
    };
    match headers.get(LEASE_HEADER).and_then(|v| v.to_str().ok()) {
        None => Err(ApiError::new(
            StatusCode::CONFLICT,
            "lease_required",
            format!("machine {id} is leased; send its nonce in {LEASE_HEADER}"),
        )),
        Some(n) if n == lease.nonce => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "lease_mismatch",
            format!("{LEASE_HEADER} does not match the lease on machine {id}"),
        )),
    }
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
) -> ApiResult<MachineRecord> {
    let agent = lane.shared.agent.clone();
    let id2 = id.clone();
    detached(lane, &id, async move {
        agent.operate(&id2, kind, signal, timeout).await
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
    let key = headers
        .get(IDEMPOTENCY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(key) = &key {
        if key.is_empty() || key.len() > 255 {
            return Err(ApiError::invalid(
                "Idempotency-Key must be 1 to 255 characters",
            ));
        }
        // A retry returns the machine the first request made.
        let known = lane
            .shared
            .idempotency
            .lock()
            .map_err(|_| ApiError::internal("poisoned"))?
            .get(key)
            .cloned();
        let existing = match known {
            Some(Some(id)) => Some(id),
            Some(None) => {
                return Err(ApiError::conflict(
                    "a create with this Idempotency-Key is in progress",
                ));
            }
            None => lane
                .shared
                .agent
                .store()
                .machines()?
                .into_iter()
                .find(|m| m.metadata.get(IDEMPOTENCY_LABEL) == Some(key))
                .map(|m| m.id.to_string()),
        };
        if let Some(id) = existing {
            let m = machine_or_404(&lane, &parse_id(&id)?)?;
            return Ok((StatusCode::CREATED, Json(m)).into_response());
        }
        lane.shared
            .idempotency
            .lock()
            .map_err(|_| ApiError::internal("poisoned"))?
            .insert(key.clone(), None);
    }
    let result = create_inner(&lane, req, key.clone()).await;
    if let Some(key) = key
        && let Ok(mut map) = lane.shared.idempotency.lock()
    {
        match &result {
            Ok(m) => map.insert(key, Some(m.id.to_string())),
            Err(_) => map.remove(&key),
        };
    }
    result.map(|m| (StatusCode::CREATED, Json(m)).into_response())
}

async fn create_inner(
    lane: &Lane,
    req: CreateMachine,
    key: Option<String>,
) -> ApiResult<MachineRecord> {
    if req.metadata.keys().any(|k| k.starts_with("berth/")) {
        return Err(ApiError::invalid(
            "metadata keys starting with berth/ are reserved",
        ));
    }
    // Counting live machines decodes every record; the table's row count (O(1)) is an upper
    // bound, so the exact count is only needed near the limit.
    let store = lane.shared.agent.store();
    let max = lane.shared.cfg.max_machines;
    let near = store.machine_rows()? as usize >= max;
    if near
        && store
            .machines()?
            .iter()
            .filter(|m| m.state != MState::Destroyed)
            .count()
            >= max
    {
        return Err(ApiError::conflict(format!(
            "this host runs its limit of {} machines (limits.max_machines)",
            lane.shared.cfg.max_machines
        )));
    }
    let mut metadata = req.metadata;
    if let Some(key) = key {
        metadata.insert(IDEMPOTENCY_LABEL.to_owned(), key);
    }
    let id = MachineId::generate();
    let creq = CreateRequest {
        id: Some(id.clone()),
        name: req.name,
        config: req.config,
        metadata,
        skip_start: req.skip_start,
        source: Source::User,
    };
    let agent = lane.shared.agent.clone();
    detached(lane, &id, async move { agent.create(creq).await }).await
}

pub(crate) async fn list(
    State(lane): State<Lane>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Vec<MachineRecord>>> {
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
        if !(k == "state" || k == "include_destroyed" || k.starts_with("metadata.")) {
            return Err(ApiError::invalid(format!("unknown query parameter {k:?}")));
        }
    }
    let wanted: Vec<(&str, &String)> = q
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("metadata.").map(|k| (k, v)))
        .collect();
    let out = lane
        .shared
        .agent
        .store()
        .machines()?
        .into_iter()
        .filter(|m| {
            include_destroyed || state == Some(MState::Destroyed) || m.state != MState::Destroyed
        })
        .filter(|m| state.is_none_or(|s| m.state == s))
        .filter(|m| wanted.iter().all(|(k, v)| m.metadata.get(*k) == Some(*v)))
        .collect();
    Ok(Json(out))
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
    check_lease(&lane, &id, &headers)?;
    Ok(Json(run_op(&lane, id, kind, signal, timeout).await?))
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
    check_lease(&lane, &id, &headers)?;
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
    let r = lifecycle(
        lane.clone(),
        id,
        headers,
        OpKind::Destroy,
        signal,
        force.then_some(Duration::ZERO),
    )
    .await?;
    if let Ok(mut l) = lane.shared.leases.lock() {
        l.remove(parsed.as_str());
    }
    Ok(r)
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
        Some(t) => t
            .parse()
            .map_err(|_| ApiError::invalid(format!("tail must be a number of lines, not {t:?}")))?,
    };
    let follow = matches!(q.get("follow").map(String::as_str), Some("true" | "1"));
    let dir = lane.shared.agent.driver().logs_dir(id.as_str());
    let initial = berth_driver::logs::tail(&dir, tail)
        .map_err(|e| ApiError::internal(format!("reading logs: {e}")))?;
    if !follow {
        return Ok(([("content-type", "text/plain; charset=utf-8")], initial).into_response());
    }
    let path = berth_driver::logs::current(&dir);
    let start = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let stream = futures_util::stream::unfold(
        (Some(initial), path, start),
        |(first, path, mut pos)| async move {
            if let Some(text) = first {
                return Some((
                    Ok::<_, std::io::Error>(Bytes::from(text)),
                    (None, path, pos),
                ));
            }
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let len = match std::fs::metadata(&path) {
                    Ok(m) => m.len(),
                    Err(_) => return None, // the machine's directory is gone (destroyed)
                };
                if len < pos {
                    pos = 0; // rotated
                }
                if len > pos {
                    use std::io::{Read, Seek, SeekFrom};
                    let mut f = std::fs::File::open(&path).ok()?;
                    f.seek(SeekFrom::Start(pos)).ok()?;
                    let mut buf = Vec::new();
                    f.take(1 << 20).read_to_end(&mut buf).ok()?;
                    pos += buf.len() as u64;
                    return Some((Ok(Bytes::from(buf)), (None, path, pos)));
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

pub(crate) async fn lease_acquire(
    State(lane): State<Lane>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let req: LeaseRequest = parse_optional(body)?;
    let id = parse_id(&id)?;
    machine_or_404(&lane, &id)?;
    let ttl = req.ttl.map_or(Duration::from_secs(30), |t| t.0);
    if ttl.is_zero() || ttl > Duration::from_secs(3600) {
        return Err(ApiError::invalid("ttl must be between 1ms and 1h"));
    }
    let mut leases = lane
        .shared
        .leases
        .lock()
        .map_err(|_| ApiError::internal("poisoned"))?;
    let now = Timestamp::now();
    let expires_at = Timestamp::from_nanos(now.as_nanos() + ttl.as_nanos() as u64);
    if let Some(held) = leases.get(id.as_str()).filter(|l| l.expires_at > now) {
        // The holder may extend it with its nonce.
        if headers.get(LEASE_HEADER).and_then(|v| v.to_str().ok()) != Some(held.nonce.as_str()) {
            return Err(ApiError::conflict(format!(
                "machine {id} is leased until {}",
                held.expires_at
            )));
        }
    }
    let nonce = match leases.get(id.as_str()).filter(|l| l.expires_at > now) {
        Some(l) => l.nonce.clone(),
        None => random_hex(16)?,
    };
    let lease = Lease {
        machine_id: id.to_string(),
        nonce,
        expires_at,
        description: req.description,
    };
    leases.insert(id.to_string(), lease.clone());
    Ok((StatusCode::CREATED, Json(lease)).into_response())
}

pub(crate) async fn lease_get(
    State(lane): State<Lane>,
    Path(id): Path<String>,
) -> ApiResult<Json<Lease>> {
    let id = parse_id(&id)?;
    let leases = lane
        .shared
        .leases
        .lock()
        .map_err(|_| ApiError::internal("poisoned"))?;
    leases
        .get(id.as_str())
        .filter(|l| l.expires_at > Timestamp::now())
        .cloned()
        .map(|mut l| {
            l.nonce = String::new(); // only the holder knows it
            Json(l)
        })
        .ok_or_else(|| ApiError::not_found(format!("machine {id} has no lease")))
}

pub(crate) async fn lease_release(
    State(lane): State<Lane>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let id = parse_id(&id)?;
    check_lease(&lane, &id, &headers)?;
    lane.shared
        .leases
        .lock()
        .map_err(|_| ApiError::internal("poisoned"))?
        .remove(id.as_str());
    Ok(StatusCode::NO_CONTENT)
}
