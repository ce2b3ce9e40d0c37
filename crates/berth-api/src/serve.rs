//! The accept loop of a lane: a bound on its connections, a header read timeout (which also
//! closes idle keep-alive connections), back-off when the process runs out of file descriptors,
//! graceful shutdown, and well-formed answers for the errors hyper writes itself.
//!
//! axum's `serve` has none of these: a client holding thousands of half-open connections took
//! every file descriptor of the process, and then the unix socket, the database and the
//! machines' files with them.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use berth_api_types::{ErrorBody, REQUEST_ID_HEADER};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Largest request head (request line and headers) a connection may send: past it, 431.
pub const MAX_HEAD_BYTES: usize = 64 << 10;

/// A listener the accept loop can serve: TCP or a unix socket.
pub trait Listener: Send + 'static {
    /// A connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Accepts one connection.
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>>;
}

impl Listener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        tokio::net::TcpListener::poll_accept(self, cx).map_ok(|(s, _)| {
            let _ = s.set_nodelay(true);
            s
        })
    }
}

impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        tokio::net::UnixListener::poll_accept(self, cx).map_ok(|(s, _)| s)
    }
}

/// File descriptors a lane must leave to the rest of berthd.
#[derive(Debug, Clone, Copy)]
pub struct FdBudget {
    /// Descriptors kept for berthd's own files (the database, machine files, a pidfd per
    /// machine, shim launches), derived from `limits.max_machines`.
    pub reserve: u64,
    /// Descriptors the other lanes may hold (their connection limits).
    pub others: u64,
}

/// The fewest connections a clamped lane still accepts.
pub const MIN_CONNECTIONS: usize = 8;

impl FdBudget {
    /// The connections this lane may hold under an open-files soft limit of `soft`:
    /// `configured`, clamped so that the lane cannot eat the reserve (never below
    /// [`MIN_CONNECTIONS`]).
    pub fn clamp(&self, configured: usize, soft: u64) -> usize {
        let room = soft.saturating_sub(self.reserve.saturating_add(self.others));
        let room = usize::try_from(room).unwrap_or(usize::MAX);
        configured.min(room).max(MIN_CONNECTIONS.min(configured))
    }
}

/// How a lane serves its connections.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The lane's name (`socket`, `tcp`), the metrics' `lane` label.
    pub lane: &'static str,
    /// Most connections open at once; past it a new connection is closed at accept.
    pub max_connections: usize,
    /// A connection that has not sent a complete request head this long after it opened, or
    /// after its last response, is closed.
    pub header_timeout: Duration,
    /// When set, the connection limit is clamped to what the open-files limit leaves (read at
    /// each accept, so a lowered limit takes effect at once).
    pub fd_budget: Option<FdBudget>,
}

/// Registers the lane's connection metrics at zero (a counter born at 1 shows no increase).
pub fn register_metrics(lane: &'static str) {
    metrics::counter!("berth_api_connections_refused_total", "lane" => lane).increment(0);
    metrics::gauge!("berth_api_connections", "lane" => lane).set(0.0);
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting and waits for
/// the open connections to finish (idle ones are closed at once); the caller bounds that wait.
pub async fn serve<L: Listener>(
    mut listener: L,
    router: Router,
    cfg: ServeConfig,
    shutdown: impl Future<Output = ()> + Send,
) {
    register_metrics(cfg.lane);
    let mut lane = Lane::new(cfg, router);
    tokio::pin!(shutdown);
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            r = std::future::poll_fn(|cx| listener.poll_accept(cx)) => r,
        };
        match accepted {
            Ok(io) => {
                backoff = Duration::ZERO;
                lane.admit(io);
            }
            Err(e) if is_resource_error(&e) => {
                // Out of descriptors (or memory): accepting again at once would spin. Back off,
                // doubling to 1 s; the connections wait in the listen backlog meanwhile.
                backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                if backoff == Duration::from_millis(10) || backoff == Duration::from_secs(1) {
                    tracing::warn!(lane = lane.cfg.lane, error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed for want of resources; backing off");
                }
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(backoff) => {}
                }
            }
            Err(e) => {
                // A connection reset before it was accepted, and the like: that one only.
                tracing::debug!(lane = lane.cfg.lane, error = %e, "accept failed");
            }
        }
    }
    drop(listener);
    lane.graceful.shutdown().await;
}

/// One lane's connections: how they are served, how many are open, the limit last applied.
struct Lane {
    cfg: ServeConfig,
    router: Router,
    builder: Arc<hyper::server::conn::http1::Builder>,
    graceful: GracefulShutdown,
    open: Arc<AtomicUsize>,
    last_limit: usize,
}

impl Lane {
    fn new(cfg: ServeConfig, router: Router) -> Self {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(cfg.header_timeout)
            .keep_alive(true)
            .max_header_size(MAX_HEAD_BYTES)
            .max_buf_size(MAX_HEAD_BYTES);
        Lane {
            last_limit: cfg.max_connections,
            cfg,
            router,
            builder: Arc::new(builder),
            graceful: GracefulShutdown::new(),
            open: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The connection limit now: `max_connections`, clamped to what the open-files limit leaves
    /// when the lane has a budget (logged when it changes).
    fn limit(&mut self) -> usize {
        let cfg = &self.cfg;
        let limit = match (cfg.fd_budget, berth_agent::open_files_limit()) {
            (Some(b), Ok((soft, _))) => b.clamp(cfg.max_connections, soft),
            _ => cfg.max_connections,
        };
        if limit != self.last_limit {
            if limit < cfg.max_connections {
                tracing::warn!(
                    lane = cfg.lane,
                    limit,
                    configured = cfg.max_connections,
                    "the open-files limit leaves room for fewer connections than api.max_connections: clamped (raise LimitNOFILE)"
                );
            } else {
                tracing::info!(
                    lane = cfg.lane,
                    limit,
                    "connection limit back to api.max_connections"
                );
            }
            self.last_limit = limit;
        }
        limit
    }

    /// Serves an accepted connection on its own task, or, at the limit, closes it at once,
    /// before anything is read.
    fn admit<I>(&mut self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let lane = self.cfg.lane;
        let limit = self.limit();
        if self.open.load(Ordering::Acquire) >= limit {
            drop(io);
            metrics::counter!("berth_api_connections_refused_total", "lane" => lane).increment(1);
            note_refusal(lane, limit);
            return;
        }
        let n = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        metrics::gauge!("berth_api_connections", "lane" => lane).set(n as f64);
        let guard = OpenGuard {
            open: self.open.clone(),
            lane,
        };
        let (io, catcher) = Catching::new(io);
        let conn = self.builder.serve_connection(
            TokioIo::new(io),
            TowerToHyperService::new(self.router.clone()),
        );
        let conn = self.graceful.watch(conn);
        tokio::spawn(async move {
            let result = conn.await;
            catcher.finish(lane, result.as_ref().err()).await;
            drop(guard);
        });
    }
}

/// Logs refusals at most once a second per lane.
fn note_refusal(lane: &'static str, limit: usize) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = berth_types::Timestamp::now().as_nanos() / 1_000_000_000;
    if LAST.swap(now, Ordering::AcqRel) != now {
        tracing::warn!(
            lane,
            limit,
            "connection limit reached: refusing new connections (berth_api_connections_refused_total)"
        );
    }
}

fn is_resource_error(e: &io::Error) -> bool {
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    const ENOBUFS: i32 = 105;
    const ENOMEM: i32 = 12;
    matches!(e.raw_os_error(), Some(EMFILE | ENFILE | ENOBUFS | ENOMEM))
}

struct OpenGuard {
    open: Arc<AtomicUsize>,
    lane: &'static str,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let n = self.open.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        metrics::gauge!("berth_api_connections", "lane" => self.lane).set(n as f64);
    }
}

/// A connection's I/O, shared between hyper and the task that ran it, so that a response hyper
/// writes on its own (400, 414, 431 for a request it could not parse, before any service runs)
/// can be replaced by a well-formed one: such a head is held back, and once the connection ends
/// with hyper's parse error, `{"error","code"}` with `x-request-id` is written in its place. If
/// the connection ends any other way, the held bytes are written as they were.
struct Catching<S> {
    inner: Arc<Mutex<Held<S>>>,
}

struct Held<S> {
    io: S,
    held: Option<Vec<u8>>,
}

/// The task's handle on a [`Catching`] connection.
struct Catcher<S> {
    inner: Arc<Mutex<Held<S>>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Catching<S> {
    fn new(io: S) -> (Self, Catcher<S>) {
        let inner = Arc::new(Mutex::new(Held { io, held: None }));
        (
            Catching {
                inner: inner.clone(),
            },
            Catcher { inner },
        )
    }
}

fn poisoned() -> io::Error {
    io::Error::other("connection state poisoned")
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Catching<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Ok(mut g) = self.inner.lock() else {
            return Poll::Ready(Err(poisoned()));
        };
        Pin::new(&mut g.io).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Catching<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let Ok(mut g) = self.inner.lock() else {
            return Poll::Ready(Err(poisoned()));
        };
        if let Some(h) = &mut g.held {
            h.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        match hyper_error_head_at(buf) {
            Some(0) => {
                g.held = Some(buf.to_vec());
                Poll::Ready(Ok(buf.len()))
            }
            Some(k) => Pin::new(&mut g.io).poll_write(cx, &buf[..k]),
            None => Pin::new(&mut g.io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Ok(mut g) = self.inner.lock() else {
            return Poll::Ready(Err(poisoned()));
        };
        Pin::new(&mut g.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Ok(mut g) = self.inner.lock() else {
            return Poll::Ready(Err(poisoned()));
        };
        if g.held.is_some() {
            // The task writes the answer and shuts the connection down itself.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut g.io).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Catcher<S> {
    async fn finish(self, lane: &'static str, err: Option<&hyper::Error>) {
        let Ok(held) = Arc::try_unwrap(self.inner) else {
            return;
        };
        let Ok(Held { mut io, held }) = held.into_inner() else {
            return;
        };
        if let Some(e) = err {
            if e.is_timeout() {
                // No answer on a header timeout: the connection may be an idle keep-alive one,
                // where a 408 would be read as the answer to the client's next request.
                tracing::debug!(
                    lane,
                    "closing a connection that sent no complete request head in api.header_timeout"
                );
            } else {
                tracing::debug!(lane, error = %e, "connection ended with an error");
            }
        }
        let Some(bytes) = held else { return };
        let out = match err.filter(|e| e.is_parse()) {
            Some(e) => {
                let status = status_of(&bytes).unwrap_or(400);
                metrics::counter!("berth_api_requests_total", "route" => "unmatched", "method" => "other", "status" => status.to_string()).increment(1);
                error_response(status, &e.to_string())
            }
            None => bytes,
        };
        let write = async {
            io.write_all(&out).await?;
            io.flush().await?;
            io.shutdown().await
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), write).await;
    }
}

/// The status of a response head.
fn status_of(head: &[u8]) -> Option<u16> {
    std::str::from_utf8(head.get(9..12)?).ok()?.parse().ok()
}

/// Where `buf` ends with a response head of the kind hyper writes itself for a request it could
/// not parse (400, 414 or 431, no body, none of berth's headers), if it does.
fn hyper_error_head_at(buf: &[u8]) -> Option<usize> {
    if !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    // hyper's own heads are a few dozen bytes: look at the tail only.
    let from = buf.len().saturating_sub(1024);
    let start = (from..buf.len())
        .rev()
        .find(|&i| buf[i..].starts_with(b"HTTP/1."))?;
    let head = std::str::from_utf8(&buf[start..]).ok()?;
    let mut lines = head.strip_suffix("\r\n\r\n")?.split("\r\n");
    let status_line = lines.next()?;
    let status = status_line.get(9..12)?;
    if !matches!(status, "400" | "414" | "431") {
        return None;
    }
    for line in lines {
        let (name, value) = line.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "content-length" if value.trim() == "0" => {}
            "date" | "connection" => {}
            _ => return None,
        }
    }
    Some(start)
}

/// A complete, closing response with `{"error","code"}` and a fresh `x-request-id`.
fn error_response(status: u16, detail: &str) -> Vec<u8> {
    let (reason, code, what) = match status {
        414 => ("URI Too Long", "too_large", "the request URI is too long"),
        431 => (
            "Request Header Fields Too Large",
            "too_large",
            "the request head is too large (at most 64 KiB and 100 header fields)",
        ),
        _ => ("Bad Request", "invalid", "the request could not be parsed"),
    };
    let body = serde_json::to_vec(&ErrorBody {
        error: format!("{what}: {detail}"),
        code: code.to_owned(),
    })
    .unwrap_or_default();
    let id = crate::random_hex(8).unwrap_or_else(|_| "0".repeat(16));
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{REQUEST_ID_HEADER}: {id}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hyper_error_heads_only() {
        let h = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Wed, 02 Dec 2026 03:00:00 GMT\r\n\r\n";
        assert_eq!(hyper_error_head_at(h), Some(0));
        let mut tail =
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-request-id: 1\r\n\r\n{}".to_vec();
        let k = tail.len();
        tail.extend_from_slice(h);
        assert_eq!(hyper_error_head_at(&tail), Some(k));
        assert_eq!(
            hyper_error_head_at(
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nx-request-id: 1\r\n\r\n"
            ),
            None
        );
        assert_eq!(
            hyper_error_head_at(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"),
            None
        );
        assert_eq!(hyper_error_head_at(b"{\"a\":1}"), None);
    }

    #[test]
    fn the_budget_clamps_but_never_to_nothing() {
        let b = FdBudget {
            reserve: 300,
            others: 200,
        };
        assert_eq!(b.clamp(1024, 100_000), 1024);
        assert_eq!(b.clamp(1024, 1000), 500);
        assert_eq!(b.clamp(1024, 100), MIN_CONNECTIONS);
        assert_eq!(b.clamp(2, 100), 2);
    }
}
