//! The publishing loop: one NATS client for the exporter's life (it reconnects by itself), and
//! sessions on it. A session makes sure the stream exists, then publishes events in seq order
//! from the first unacknowledged one, with at most `max_in_flight` unacknowledged, advancing the
//! position only over acknowledgements, in order. Any failure ends the session; the next one
//! starts again from the position, and the stream's de-duplication drops what was already stored.

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage, stream};
use berth_store::{Store, StoreError};
use berth_types::Event;
use tokio::sync::watch;

use crate::status::Shared;
use crate::trace::{self, Stamps, Trace};
use crate::{ExportConfig, STREAM, event_subject, msg_id};

/// Events read from the log at a time.
const READ_BATCH: usize = 512;

pub(crate) async fn run(
    store: Store,
    shared: Arc<Shared>,
    cfg: Arc<ExportConfig>,
    client_tx: watch::Sender<Option<async_nats::Client>>,
) {
    let options = async_nats::ConnectOptions::new()
        .name(format!("berthd {}", shared.host_id))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(cfg.ack_timeout))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis(100u64 << attempts.min(5)).min(Duration::from_secs(2))
        });
    let client = match options.connect(cfg.nats_url.as_str()).await {
        Ok(c) => c,
        Err(e) => {
            // Only a malformed address fails here (connecting is retried in the background).
            tracing::error!(error = %e, url = %cfg.nats_url, "fleet export disabled: cannot use export.nats_url");
            shared.set_connected(false, Some(e.to_string()));
            return;
        }
    };
    client_tx.send_replace(Some(client.clone()));
    let js = jetstream::new(client.clone());
    let mut backoff = Duration::from_millis(100);
    loop {
        if !wait_connected(&client, Duration::from_secs(2)).await {
            shared.set_connected(false, Some(format!("not connected to {}", cfg.nats_url)));
            continue;
        }
        match session(&store, &shared, &cfg, &js).await {
            Ok(()) => return, // the store closed: the agent is shutting down
            Err(e) => shared.set_connected(false, Some(e)),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
        if client.connection_state() == async_nats::connection::State::Connected {
            backoff = Duration::from_millis(100);
        }
    }
}

/// Whether the client is connected, waiting up to `within` for it.
async fn wait_connected(client: &async_nats::Client, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while client.connection_state() != async_nats::connection::State::Connected {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
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

/// One session; `Ok(())` only when the store has closed.
async fn session(
    store: &Store,
    shared: &Shared,
    cfg: &ExportConfig,
    js: &jetstream::Context,
) -> Result<(), String> {
    ensure_stream(js, cfg).await?;
    shared.set_connected(true, None);
    let subject = event_subject(&shared.host_id);
    let mut commits = store.subscribe();
    let mut next = shared.acked() + 1;
    let tracer = Trace::from_env(&shared.host_id);
    let mut pending: VecDeque<(Event, u64, u64)> = VecDeque::new();
    let mut inflight: VecDeque<(Stamps, PublishAckFuture)> = VecDeque::new();
    loop {
        while inflight.len() < cfg.max_in_flight.max(1) {
            if pending.is_empty() {
                match read(store, next - 1)? {
                    None => return Ok(()),
                    Some(Read::Events(evs)) => {
                        let (read, committed) = if tracer.enabled() {
                            (trace::now(), store.last_commit_done().as_nanos())
                        } else {
                            (0, 0)
                        };
                        pending.extend(evs.into_iter().map(|ev| (ev, committed, read)));
                    }
                    Some(Read::Expired { oldest }) if inflight.is_empty() => {
                        skip_expired(store, shared, next - 1, oldest).await?;
                        next = oldest;
                        continue;
                    }
                    // Settle what is in flight before moving the position past a hole.
                    Some(Read::Expired { .. }) => break,
                }
            }
            let Some((ev, committed, read)) = pending.pop_front() else {
                break;
            };
            let msg = PublishMessage::build()
                .payload(body(&ev, &shared.host_id)?)
                .message_id(msg_id(&shared.host_id, ev.seq));
            let ack = js
                .send_publish(subject.clone(), msg)
                .await
                .map_err(|e| format!("publish seq {}: {e}", ev.seq))?;
            next = ev.seq + 1;
            let stamps = Stamps {
                seq: ev.seq,
                at: ev.at.as_nanos(),
                committed,
                read,
                published: if tracer.enabled() { trace::now() } else { 0 },
            };
            inflight.push_back((stamps, ack));
        }
        if let Some((stamps, ack)) = inflight.pop_front() {
            let seq = stamps.seq;
            let ack = tokio::time::timeout(cfg.ack_timeout, ack.into_future())
                .await
                .map_err(|_| {
                    format!(
                        "no acknowledgement for seq {seq} within {:?}",
                        cfg.ack_timeout
                    )
                })?
                .map_err(|e| format!("publish seq {seq}: {e}"))?;
            if ack.stream != STREAM {
                return Err(format!(
                    "seq {seq} was stored in stream {:?}, not {STREAM}",
                    ack.stream
                ));
            }
            if !ack.duplicate {
                shared.count_published();
            }
            shared.set_acked(seq);
            if tracer.enabled() {
                tracer.acked(&stamps, trace::now());
            }
            continue;
        }
        tracer.flush();
        // Idle: wait for the next commit (or a second, to notice events removed meanwhile).
        if let Ok(Err(_)) = tokio::time::timeout(Duration::from_secs(1), commits.changed()).await {
            return Ok(());
        }
    }
}
