//! The publishing loop, in sessions. A session opens its own NATS connection, makes sure the
//! stream exists, then publishes events in seq order from the first unacknowledged one, with at
//! most `max_in_flight` unacknowledged, advancing the position only over acknowledgements, in
//! order. Any failure ends the session; the next one starts again from the position, and the
//! stream's de-duplication drops what was already stored.
//!
//! **A session's connection is never resumed.** A NATS client reconnects by itself and then
//! sends what was queued while it was disconnected; if the connection dropped with seqs 8 and 9
//! written but never stored, the queued 10, 11, … would be stored first, and the replay of 8
//! and 9 would land after them: the stream out of order. So a session's client refuses every
//! connection after its first (its auth callback fails, and it gives up after one attempt):
//! what it had queued dies with it, and only a new session, starting from the acknowledged
//! position, publishes again. Host facts, which are not ordered, use a long-lived client that
//! reconnects as usual.

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::context::{PublishAckFuture, PublishError};
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, message::PublishMessage, stream};
use async_nats::{Auth, AuthError, ConnectOptions, ServerAddr};
use berth_store::{Store, StoreError};
use berth_types::Event;
use tokio::sync::watch;

use crate::status::Shared;
use crate::trace::{self, Stamps, Trace};
use crate::{ExportConfig, STREAM, event_subject, msg_id, redact_url};

/// Events read from the log at a time.
const READ_BATCH: usize = 512;

/// How long a session may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) async fn run(
    store: Store,
    shared: Arc<Shared>,
    cfg: Arc<ExportConfig>,
    client_tx: watch::Sender<Option<async_nats::Client>>,
) {
    let addr = match ServerAddr::from_str(&cfg.nats_url) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, url = %redact_url(&cfg.nats_url), "fleet export disabled: cannot use export.nats_url");
            shared.set_connected(false, Some(e.to_string()));
            return;
        }
    };
    // Facts: one client for the exporter's life, reconnecting by itself.
    let facts_client = with_url_credentials(ConnectOptions::new(), &addr)
        .name(format!("berthd {} facts", shared.host_id))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(CONNECT_TIMEOUT)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis(100u64 << attempts.min(5)).min(Duration::from_secs(2))
        })
        .connect(addr.clone())
        .await;
    match facts_client {
        Ok(c) => {
            client_tx.send_replace(Some(c));
        }
        Err(e) => tracing::warn!(error = %e, "fleet export: no client for host facts"),
    }
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = match session_client(&addr, &shared, &cfg).await {
            Ok(client) => session(&store, &shared, &cfg, &client).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => return, // the store closed: the agent is shutting down
            Err(e) => {
                tracing::debug!(error = %e, "fleet export session ended");
                shared.set_connected(false, Some(e));
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
        if shared.snapshot().connected {
            backoff = Duration::from_millis(100);
        }
    }
}

/// Credentials in the URL, as NATS spells them: `user:pass@`, or a token as `token@`
/// (async-nats itself does not use a URL's credentials).
fn url_credentials(addr: &ServerAddr) -> Auth {
    let mut auth = Auth::new();
    match (addr.username(), addr.password()) {
        (Some(user), Some(pass)) => {
            auth.username = Some(user.to_owned());
            auth.password = Some(pass.to_owned());
        }
        (Some(token), None) => auth.token = Some(token.to_owned()),
        _ => {}
    }
    auth
}

fn with_url_credentials(options: ConnectOptions, addr: &ServerAddr) -> ConnectOptions {
    match url_credentials(addr) {
        Auth {
            username: Some(user),
            password: Some(pass),
            ..
        } => options.user_and_password(user, pass),
        Auth {
            token: Some(token), ..
        } => options.token(token),
        _ => options,
    }
}

/// A client for one session: it connects once and never again (see the module's doc).
async fn session_client(
    addr: &ServerAddr,
    shared: &Shared,
    cfg: &ExportConfig,
) -> Result<async_nats::Client, String> {
    let used = Arc::new(AtomicBool::new(false));
    let addr_for_auth = addr.clone();
    ConnectOptions::with_auth_callback(move |_nonce| {
        let first = !used.swap(true, Ordering::SeqCst);
        let auth = url_credentials(&addr_for_auth);
        async move {
            if !first {
                return Err(AuthError::new(
                    "an export session never resumes its connection",
                ));
            }
            Ok(auth)
        }
    })
    .name(format!("berthd {}", shared.host_id))
    .connection_timeout(CONNECT_TIMEOUT)
    .request_timeout(Some(cfg.ack_timeout))
    .max_reconnects(Some(1))
    .reconnect_delay_callback(|_| Duration::ZERO)
    .connect(addr.clone())
    .await
    .map_err(|e| format!("not connected to {}: {e}", redact_url(&cfg.nats_url)))
}

async fn ensure_stream(js: &jetstream::Context, cfg: &ExportConfig) -> Result<(), String> {
    js.get_or_create_stream(stream::Config {
        name: STREAM.to_owned(),
        subjects: vec!["berth.events.>".to_owned()],
        storage: stream::StorageType::File,
        duplicate_window: cfg.duplicate_window,
        ..Default::default()
    })
    .await
    .map(|_| ())
    .map_err(|e| format!("stream {STREAM}: {e}"))
}

/// The message body: the event as stored, plus `host_id`.
pub(crate) fn body(ev: &Event, host_id: &str) -> Result<bytes::Bytes, String> {
    let mut v = serde_json::to_value(ev).map_err(|e| e.to_string())?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("host_id".into(), serde_json::Value::String(host_id.into()));
    }
    serde_json::to_vec(&v)
        .map(bytes::Bytes::from)
        .map_err(|e| e.to_string())
}

enum Read {
    Events(Vec<Event>),
    /// Retention removed events from `after + 1` up to `oldest - 1`.
    Expired {
        oldest: u64,
    },
}

fn read(store: &Store, after: u64) -> Result<Option<Read>, String> {
    match store.events_after(after, READ_BATCH) {
        Ok(evs) => Ok(Some(Read::Events(evs))),
        Err(StoreError::Expired { oldest, .. }) => Ok(Some(Read::Expired { oldest })),
        Err(StoreError::Closed) => Ok(None),
        Err(e) => Err(format!("reading the event log: {e}")),
    }
}

/// Events after `after` are gone from the log before they were exported: a hole, recorded and
/// counted, never hidden.
async fn skip_expired(
    store: &Store,
    shared: &Shared,
    after: u64,
    oldest: u64,
) -> Result<(), String> {
    let to = oldest.saturating_sub(1);
    let hole = store
        .record_export_hole(after + 1, to)
        .await
        .map_err(|e| format!("recording an export hole: {e}"))?;
    metrics::counter!("berth_export_hole_events_total").increment(to - after);
    tracing::error!(
        from = after + 1, to, host_id = %shared.host_id,
        "fleet export hole: retention removed events before they were exported (the export hold was exceeded); consumers must resync this host from its API"
    );
    shared.add_hole(hole);
    shared.set_acked(to);
    Ok(())
}

/// A publish awaiting its acknowledgement.
struct InFlight {
    stamps: Stamps,
    ack: AckFuture,
    deadline: tokio::time::Instant,
}

type AckFuture = <PublishAckFuture as IntoFuture>::IntoFuture;

/// One session's publishing state: the next seq to publish, events read and not yet published,
/// and publishes not yet acknowledged (in seq order).
struct Window<'a> {
    store: &'a Store,
    shared: &'a Shared,
    cfg: &'a ExportConfig,
    js: &'a jetstream::Context,
    subject: String,
    tracer: Trace,
    next: u64,
    pending: VecDeque<(Event, u64, u64)>,
    inflight: VecDeque<InFlight>,
}

/// What [`Window::fill`] stopped at.
enum Filled {
    /// The log has nothing more, or the window is full.
    Waiting,
    /// The log lost events here: what is in flight must settle before the position moves on.
    Hole,
    /// The store closed.
    Closed,
}

impl Window<'_> {
    fn room(&self) -> bool {
        self.inflight.len() < self.cfg.max_in_flight.max(1)
    }

    /// Publishes what the log has after `next`, while the window has room.
    async fn fill(&mut self) -> Result<Filled, String> {
        while self.room() {
            if self.pending.is_empty() {
                match read(self.store, self.next - 1)? {
                    None => return Ok(Filled::Closed),
                    Some(Read::Events(evs)) => {
                        let (read, committed) = if self.tracer.enabled() {
                            (trace::now(), self.store.last_commit_done().as_nanos())
                        } else {
                            (0, 0)
                        };
                        self.pending
                            .extend(evs.into_iter().map(|ev| (ev, committed, read)));
                    }
                    Some(Read::Expired { oldest }) if self.inflight.is_empty() => {
                        skip_expired(self.store, self.shared, self.next - 1, oldest).await?;
                        self.next = oldest;
                        continue;
                    }
                    Some(Read::Expired { .. }) => return Ok(Filled::Hole),
                }
            }
            let Some((ev, committed, read)) = self.pending.pop_front() else {
                break;
            };
            self.publish(&ev, committed, read).await?;
        }
        Ok(Filled::Waiting)
    }

    async fn publish(&mut self, ev: &Event, committed: u64, read: u64) -> Result<(), String> {
        let msg = PublishMessage::build()
            .payload(body(ev, &self.shared.host_id)?)
            .message_id(msg_id(&self.shared.host_id, ev.seq));
        let ack = self
            .js
            .send_publish(self.subject.clone(), msg)
            .await
            .map_err(|e| format!("publish seq {}: {e}", ev.seq))?;
        self.next = ev.seq + 1;
        let stamps = Stamps {
            seq: ev.seq,
            at: ev.at.as_nanos(),
            committed,
            read,
            published: if self.tracer.enabled() {
                trace::now()
            } else {
                0
            },
        };
        self.inflight.push_back(InFlight {
            stamps,
            ack: ack.into_future(),
            deadline: tokio::time::Instant::now() + self.cfg.ack_timeout,
        });
        Ok(())
    }

    /// The oldest publish's acknowledgement arrived: moves the position over it.
    fn settle(&mut self, ack: Result<PublishAck, PublishError>) -> Result<(), String> {
        let Some(done) = self.inflight.pop_front() else {
            return Ok(());
        };
        let seq = done.stamps.seq;
        let ack = ack.map_err(|e| format!("publish seq {seq}: {e}"))?;
        if ack.stream != STREAM {
            return Err(format!(
                "seq {seq} was stored in stream {:?}, not {STREAM}",
                ack.stream
            ));
        }
        if !ack.duplicate {
            self.shared.count_published();
        }
        self.shared.set_acked(seq);
        if self.tracer.enabled() {
            self.tracer.acked(&done.stamps, trace::now());
        }
        Ok(())
    }
}

/// One session; `Ok(())` only when the store has closed.
///
/// While publishes await their acknowledgements, the loop also listens for commits: an event
/// committed meanwhile is published at once if the window has room, instead of waiting behind
/// the acknowledgements of the events before it.
async fn session(
    store: &Store,
    shared: &Shared,
    cfg: &ExportConfig,
    client: &async_nats::Client,
) -> Result<(), String> {
    let js = &jetstream::new(client.clone());
    ensure_stream(js, cfg).await?;
    shared.set_connected(true, None);
    let mut commits = store.subscribe();
    let mut w = Window {
        store,
        shared,
        cfg,
        js,
        subject: event_subject(&shared.host_id),
        tracer: Trace::from_env(&shared.host_id),
        next: shared.acked() + 1,
        pending: VecDeque::new(),
        inflight: VecDeque::new(),
    };
    loop {
        let listen = match w.fill().await? {
            Filled::Closed => return Ok(()),
            Filled::Hole => false,
            Filled::Waiting => w.room(),
        };
        let Some(front) = w.inflight.front_mut() else {
            w.tracer.flush();
            if client.connection_state() != async_nats::connection::State::Connected {
                return Err(format!(
                    "the connection to {} was lost",
                    redact_url(&cfg.nats_url)
                ));
            }
            // Idle: wait for the next commit (or a second, to notice events removed meanwhile).
            if let Ok(Err(_)) =
                tokio::time::timeout(Duration::from_secs(1), commits.changed()).await
            {
                return Ok(());
            }
            continue;
        };
        let seq = front.stamps.seq;
        tokio::select! {
            biased;
            ack = tokio::time::timeout_at(front.deadline, &mut front.ack) => {
                let ack = ack.map_err(|_| {
                    format!("no acknowledgement for seq {seq} within {:?}", cfg.ack_timeout)
                })?;
                w.settle(ack)?;
            }
            changed = commits.changed(), if listen => {
                if changed.is_err() {
                    return Ok(());
                }
            }
        }
    }
}
