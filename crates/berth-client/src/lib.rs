//! A typed client for berth's HTTP API, over the unix socket (no token) or TCP (bearer token).
//!
//! Architecture invariant: no retries, no caching — each call is one request, sent once, and
//! every failure says whether the agent was unreachable or answered with an error. Connections
//! are kept alive and reused (a control plane placing machines pays one connection, not one per
//! request): a request goes on an idle connection that answered less than [`REUSE_WITHIN`] ago,
//! and only a request the connection never wrote (it had closed) moves to a fresh one.

mod images;
mod volumes;

use std::path::PathBuf;

use berth_api_types::{
    ApproveReport, CompactionReport, ConfigVersion, CreateMachine, DbCheck, DbStats, ErrorBody,
    EventsPage, Health, HostInfo, ReconcileReport, RollbackRequest, SlowOp, StopRequest,
    UpdateMachine,
};
use berth_types::{Event, MachineRecord};
use http_body_util::{BodyExt, Full};
pub use hyper::Method;
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

/// Where the agent listens.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// The unix socket.
    Unix(PathBuf),
    /// TCP `host:port`, with a bearer token.
    Tcp {
        /// `host:port`.
        addr: String,
        /// The token from the agent's token file.
        token: Option<String>,
    },
}

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No agent answered.
    #[error("cannot reach berthd at {endpoint}: {reason}")]
    Unreachable {
        /// Where we tried.
        endpoint: String,
        /// Why it failed.
        reason: String,
    },
    /// The agent answered with an error.
    #[error("{} ({})", .body.error, .body.code)]
    Api {
        /// HTTP status.
        status: u16,
        /// The error body.
        body: ErrorBody,
    },
    /// The answer could not be understood.
    #[error("unexpected answer from berthd: {0}")]
    Decode(String),
}

impl ClientError {
    /// The API error code, if the agent answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { body, .. } => Some(&body.code),
            _ => None,
        }
    }
}

/// A response: status, headers and body.
#[derive(Debug)]
pub struct Response {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: hyper::HeaderMap,
    /// Body.
    pub body: Bytes,
}

/// The client. Clones share its idle connections.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
    lease_nonce: Option<String>,
    idle: std::sync::Arc<std::sync::Mutex<Vec<Idle>>>,
    reuse: bool,
}

/// A kept-alive connection, ready for its next request, and when it became so.
struct Idle {
    since: std::time::Instant,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl std::fmt::Debug for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idle").field("since", &self.since).finish()
    }
}

/// How long after its last answer an idle connection is reused: well inside the agent's
/// `api.header_timeout`, after which the agent closes it (a request written just as the agent
/// closes the connection would be lost in between).
pub const REUSE_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);
/// Idle connections kept per client (and its clones).
const MAX_IDLE: usize = 16;

/// Machines per page when [`Client::list`] pages through `GET /v1/machines`.
pub const LIST_PAGE: usize = 500;

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Client {
    /// A client for `endpoint`.
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            lease_nonce: None,
            idle: Default::default(),
            reuse: true,
        }
    }

    /// A client that opens a fresh connection for every request: for a caller asking whether
    /// the agent *accepts* connections (systemd's watchdog), which a kept-alive one cannot tell.
    pub fn fresh_connections(mut self) -> Self {
        self.reuse = false;
        self
    }

    /// An idle connection young enough to reuse (older ones are dropped, which closes them).
    fn take_idle(&self) -> Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(c) = idle.pop() {
            if c.since.elapsed() < REUSE_WITHIN && !c.sender.is_closed() {
                return Some(c.sender);
            }
        }
        None
    }

    /// Keeps `sender` for a next request once its connection is ready again (the answer read
    /// to its end); a connection that closes, or an answer never read to its end, is dropped.
    fn recycle(&self, mut sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>) {
        if !self.reuse {
            return;
        }
        let idle = self.idle.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_err() {
                return;
            }
            let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.retain(|c| c.since.elapsed() < REUSE_WITHIN && !c.sender.is_closed());
            if idle.len() < MAX_IDLE {
                idle.push(Idle {
                    since: std::time::Instant::now(),
                    sender,
                });
            }
        });
    }

    /// Sends `nonce` as `berth-lease-nonce` with every request (the holder of a machine's lease
    /// mutating it), unless a request names its own.
    pub fn with_lease_nonce(mut self, nonce: Option<String>) -> Self {
        self.lease_nonce = nonce;
        self
    }

    fn describe(&self) -> String {
        match &self.endpoint {
            Endpoint::Unix(p) => p.display().to_string(),
            Endpoint::Tcp { addr, .. } => format!("http://{addr}"),
        }
    }

    /// Builds a request (with the token on TCP) and sends it on a fresh connection.
    async fn send_request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable {
            endpoint: self.describe(),
            reason,
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "berthd");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        if let Endpoint::Tcp { token: Some(t), .. } = &self.endpoint {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(n) = &self.lease_nonce
            && !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case(berth_api_types::LEASE_HEADER))
        {
            req = req.header(berth_api_types::LEASE_HEADER, n.as_str());
        }
        let mut req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        while let Some(mut sender) = self.take_idle() {
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    self.recycle(sender);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // Never written (the connection had closed): it goes on another one.
                    Some(unsent) => req = unsent,
                    None => return Err(unreachable(e.into_error().to_string())),
                },
            }
        }
        let mut sender = match &self.endpoint {
            Endpoint::Unix(p) => {
                let s = tokio::net::UnixStream::connect(p)
                    .await
                    .map_err(|e| unreachable(e.to_string()))?;
                open(TokioIo::new(s)).await.map_err(unreachable)?
            }
            Endpoint::Tcp { addr, .. } => {
                let s = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| unreachable(e.to_string()))?;
                open(TokioIo::new(s)).await.map_err(unreachable)?
            }
        };
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        self.recycle(sender);
        Ok(resp)
    }

    /// One raw request; the whole body is read.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<Response, ClientError> {
        let resp = self.send_request(method, path, body, headers).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?
            .to_bytes();
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// Sends a request whose answer is read as it arrives: the body of a success, or the API's
    /// error read whole.
    pub(crate) async fn send_streaming(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<hyper::body::Incoming, ClientError> {
        let resp = self.send_request(method, path, body, headers).await?;
        let status = resp.status();
        let body = resp.into_body();
        if status.is_success() {
            return Ok(body);
        }
        let bytes = body
            .collect()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?
            .to_bytes();
        Err(api_error(status, &bytes))
    }

    /// A streaming GET: calls `chunk` with each piece of the body as it arrives.
    pub async fn stream(
        &self,
        path: &str,
        mut chunk: impl FnMut(&[u8]),
    ) -> Result<(), ClientError> {
        let mut body = self.send_streaming(Method::GET, path, None, &[]).await?;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Decode(e.to_string()))?;
            if let Some(data) = frame.data_ref() {
                chunk(data);
            }
        }
        Ok(())
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<T, ClientError> {
        let r = self.raw(method, path, body, headers).await?;
        if !r.status.is_success() {
            return Err(api_error(r.status, &r.body));
        }
        serde_json::from_slice(&r.body)
            .map_err(|e| ClientError::Decode(format!("{e}: {}", String::from_utf8_lossy(&r.body))))
    }

    /// `POST /v1/machines`.
    pub async fn create(
        &self,
        req: &CreateMachine,
        idempotency_key: Option<&str>,
    ) -> Result<MachineRecord, ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Decode(e.to_string()))?;
        let headers: Vec<(&str, &str)> = idempotency_key
            .map(|k| ("idempotency-key", k))
            .into_iter()
            .collect();
        self.call(Method::POST, "/v1/machines", Some(body), &headers)
            .await
    }

    /// `GET /v1/machines`: every match, fetched a page of [`LIST_PAGE`] at a time.
    pub async fn list(
        &self,
        state: Option<&str>,
        include_destroyed: bool,
    ) -> Result<Vec<MachineRecord>, ClientError> {
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let (page, next) = self
                .list_page(state, include_destroyed, LIST_PAGE, cursor.as_deref())
                .await?;
            out.extend(page);
            match next {
                Some(n) if Some(&n) != cursor.as_ref() => cursor = Some(n),
                _ => return Ok(out),
            }
        }
    }

    /// One page of `GET /v1/machines` (at most `limit`, after `cursor`), and the cursor of the
    /// next page when more remain (`berth-next-cursor`).
    pub async fn list_page(
        &self,
        state: Option<&str>,
        include_destroyed: bool,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<(Vec<MachineRecord>, Option<String>), ClientError> {
        let mut q = vec![format!("limit={limit}")];
        if let Some(s) = state {
            q.push(format!("state={}", enc(s)));
        }
        if include_destroyed {
            q.push("include_destroyed=true".into());
        }
        if let Some(c) = cursor {
            q.push(format!("cursor={}", enc(c)));
        }
        let path = format!("/v1/machines?{}", q.join("&"));
        let r = self.raw(Method::GET, &path, None, &[]).await?;
        if !r.status.is_success() {
            return Err(api_error(r.status, &r.body));
        }
        let page = serde_json::from_slice(&r.body).map_err(|e| {
            ClientError::Decode(format!("{e}: {}", String::from_utf8_lossy(&r.body)))
        })?;
        let next = r
            .headers
            .get(berth_api_types::NEXT_CURSOR_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok((page, next))
    }

    /// `GET /v1/machines/{id}`.
    pub async fn get(&self, id: &str) -> Result<MachineRecord, ClientError> {
        self.call(Method::GET, &format!("/v1/machines/{}", enc(id)), None, &[])
            .await
    }

    /// `POST /v1/machines/{id}`: update its config.
    pub async fn update(
        &self,
        id: &str,
        req: &UpdateMachine,
    ) -> Result<MachineRecord, ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.call(
            Method::POST,
            &format!("/v1/machines/{}", enc(id)),
            Some(body),
            &[],
        )
        .await
    }

    /// `GET /v1/machines/{id}/versions`: its config versions, newest first.
    pub async fn versions(&self, id: &str) -> Result<Vec<ConfigVersion>, ClientError> {
        self.call(
            Method::GET,
            &format!("/v1/machines/{}/versions", enc(id)),
            None,
            &[],
        )
        .await
    }

    /// `POST /v1/machines/{id}/rollback`.
    pub async fn rollback(
        &self,
        id: &str,
        req: &RollbackRequest,
    ) -> Result<MachineRecord, ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.call(
            Method::POST,
            &format!("/v1/machines/{}/rollback", enc(id)),
            Some(body),
            &[],
        )
        .await
    }

    /// `POST /v1/machines/{id}/start|restart`.
    pub async fn action(&self, id: &str, action: &str) -> Result<MachineRecord, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/machines/{}/{action}", enc(id)),
            None,
            &[],
        )
        .await
    }

    /// `POST /v1/machines/{id}/stop`.
    pub async fn stop(&self, id: &str, req: &StopRequest) -> Result<MachineRecord, ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.call(
            Method::POST,
            &format!("/v1/machines/{}/stop", enc(id)),
            Some(body),
            &[],
        )
        .await
    }

    /// `POST /v1/machines/{id}/signal`.
    pub async fn signal(&self, id: &str, signal: &str) -> Result<MachineRecord, ClientError> {
        let body = serde_json::to_vec(&serde_json::json!({ "signal": signal }))
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        self.call(
            Method::POST,
            &format!("/v1/machines/{}/signal", enc(id)),
            Some(body),
            &[],
        )
        .await
    }

    /// `DELETE /v1/machines/{id}`.
    pub async fn destroy(&self, id: &str, force: bool) -> Result<MachineRecord, ClientError> {
        self.call(
            Method::DELETE,
            &format!("/v1/machines/{}?force={force}", enc(id)),
            None,
            &[],
        )
        .await
    }

    /// `GET /v1/machines/{id}/wait?state=started&healthy=true`: started with every check passing.
    pub async fn wait_healthy(
        &self,
        id: &str,
        timeout: &str,
    ) -> Result<MachineRecord, ClientError> {
        self.call(
            Method::GET,
            &format!(
                "/v1/machines/{}/wait?state=started&healthy=true&timeout={}",
                enc(id),
                enc(timeout)
            ),
            None,
            &[],
        )
        .await
    }

    /// `GET /v1/machines/{id}/checks`: each health check's status.
    pub async fn checks(
        &self,
        id: &str,
    ) -> Result<std::collections::BTreeMap<String, berth_types::CheckStatus>, ClientError> {
        self.call(
            Method::GET,
            &format!("/v1/machines/{}/checks", enc(id)),
            None,
            &[],
        )
        .await
    }

    /// `GET /v1/machines/{id}/wait`.
    pub async fn wait(
        &self,
        id: &str,
        state: &str,
        timeout: &str,
    ) -> Result<MachineRecord, ClientError> {
        self.call(
            Method::GET,
            &format!(
                "/v1/machines/{}/wait?state={}&timeout={}",
                enc(id),
                enc(state),
                enc(timeout)
            ),
            None,
            &[],
        )
        .await
    }

    /// What a machine's workload uses now.
    pub async fn stats(&self, id: &str) -> Result<berth_api_types::MachineStats, ClientError> {
        self.call(
            Method::GET,
            &format!("/v1/machines/{}/stats", enc(id)),
            None,
            &[],
        )
        .await
    }

    /// A machine's lease, if one is held (its nonce is never shown).
    pub async fn lease(&self, id: &str) -> Result<Option<berth_api_types::Lease>, ClientError> {
        match self
            .call(
                Method::GET,
                &format!("/v1/machines/{}/lease", enc(id)),
                None,
                &[],
            )
            .await
        {
            Ok(l) => Ok(Some(l)),
            Err(e) if e.code() == Some("not_found") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/machines/{id}/events`.
    pub async fn machine_events(&self, id: &str) -> Result<Vec<Event>, ClientError> {
        self.call(
            Method::GET,
            &format!("/v1/machines/{}/events", enc(id)),
            None,
            &[],
        )
        .await
    }

    /// `GET /v1/events`.
    pub async fn events(
        &self,
        after: u64,
        limit: usize,
        wait: Option<&str>,
    ) -> Result<EventsPage, ClientError> {
        let w = wait
            .map(|w| format!("&wait={}", enc(w)))
            .unwrap_or_default();
        self.call(
            Method::GET,
            &format!("/v1/events?after={after}&limit={limit}{w}"),
            None,
            &[],
        )
        .await
    }

    /// `GET /v1/host`.
    pub async fn host(&self) -> Result<HostInfo, ClientError> {
        self.call(Method::GET, "/v1/host", None, &[]).await
    }

    /// `POST /v1/host/cordon|uncordon`.
    pub async fn set_cordon(&self, on: bool) -> Result<HostInfo, ClientError> {
        let path = if on {
            "/v1/host/cordon"
        } else {
            "/v1/host/uncordon"
        };
        self.call(Method::POST, path, None, &[]).await
    }

    /// `GET /v1/health`.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.call(Method::GET, "/v1/health", None, &[]).await
    }

    /// `GET /v1/db/stats`.
    pub async fn db_stats(&self) -> Result<DbStats, ClientError> {
        self.call(Method::GET, "/v1/db/stats", None, &[]).await
    }

    /// `GET /v1/db/slow-ops`.
    pub async fn slow_ops(&self) -> Result<Vec<SlowOp>, ClientError> {
        self.call(Method::GET, "/v1/db/slow-ops", None, &[]).await
    }

    /// `POST /v1/host/approve`: release what the blast-radius guard held back.
    pub async fn approve(&self) -> Result<ApproveReport, ClientError> {
        self.call(Method::POST, "/v1/host/approve", None, &[]).await
    }

    /// `GET /v1/db/check`.
    pub async fn db_check(&self) -> Result<DbCheck, ClientError> {
        self.call(Method::GET, "/v1/db/check", None, &[]).await
    }

    /// `POST /v1/db/compact`.
    pub async fn compact(&self) -> Result<CompactionReport, ClientError> {
        self.call(Method::POST, "/v1/db/compact", None, &[]).await
    }

    /// `POST /v1/host/reconcile`: a reconciliation pass now (`approve`: past the guard).
    pub async fn reconcile(&self, approve: bool) -> Result<ReconcileReport, ClientError> {
        let path = format!("/v1/host/reconcile?approve={approve}");
        self.call(Method::POST, &path, None, &[]).await
    }

    /// `GET /v1/db/backup`: the snapshot's bytes.
    pub async fn backup(&self) -> Result<Bytes, ClientError> {
        let r = self.raw(Method::GET, "/v1/db/backup", None, &[]).await?;
        if !r.status.is_success() {
            return Err(api_error(r.status, &r.body));
        }
        Ok(r.body)
    }
}

fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    let body = serde_json::from_slice::<ErrorBody>(body).unwrap_or_else(|_| ErrorBody {
        error: String::from_utf8_lossy(body).into_owned(),
        code: "internal".into(),
    });
    ClientError::Api {
        status: status.as_u16(),
        body,
    }
}

/// A new HTTP/1 connection over `io`, driven by its own task.
async fn open<S>(io: S) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String>
where
    S: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}
