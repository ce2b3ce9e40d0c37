//! Fleet export: every event this host commits, published into NATS JetStream exactly once and in
//! order, plus the host's facts, so a control plane learns what every host did without polling.
//!
//! Architecture invariant: export never slows the host. It only *reads* the store (the event log,
//! after commit) and saves its position in batches as an ordinary write; a slow or absent NATS
//! shows as export lag and nothing else: no commit waits for it, the number of unacknowledged
//! messages is bounded ([`ExportConfig::max_in_flight`]), and its tasks are dropped at shutdown
//! without being waited for.
//!
//! Exactly once, no gap: events are published in seq order with `Nats-Msg-Id: <host_id>:<seq>`;
//! the position advances only over acknowledged messages; after any failure (or a restart, from
//! the saved position) publishing resumes at the first unacknowledged seq, and JetStream's
//! duplicate window ([`ExportConfig::duplicate_window`]) drops the overlap.
//!
//! API boundary: [`Exporter::start`], [`Exporter::status`], the names ([`STREAM`],
//! [`event_subject`], [`host_subject`], [`msg_id`]).

mod facts;
mod publish;
mod status;
mod trace;

use std::sync::Arc;
use std::time::Duration;

use berth_store::Store;

pub use facts::FactsFn;
pub use status::ExportStatus;
use status::Shared;

/// The JetStream stream every host publishes into.
pub const STREAM: &str = "BERTH_EVENTS";

/// The subject of a host's events.
pub fn event_subject(host_id: &str) -> String {
    format!("berth.events.{host_id}")
}

/// The subject of a host's facts.
pub fn host_subject(host_id: &str) -> String {
    format!("berth.hosts.{host_id}")
}

/// The `Nats-Msg-Id` of an event.
pub fn msg_id(host_id: &str, seq: u64) -> String {
    format!("{host_id}:{seq}")
}

/// `url` as it may be shown (logs, `berth host status`, host facts): a password or token in it
/// replaced by `***`, the user name kept.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => format!("{scheme}://***@{host}"),
    }
}

/// Whether `id` can be a host id: it goes into subjects and message ids, so 1 to 64 of
/// `[A-Za-z0-9_-]`.
pub fn valid_host_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// How to export.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// The NATS server (`export.nats_url`).
    pub nats_url: String,
    /// The host id (`export.host_id`); `None`: the one kept in the database, generated once.
    pub host_id: Option<String>,
    /// Most messages published and not yet acknowledged.
    pub max_in_flight: usize,
    /// How long an acknowledgement may take before the session starts over.
    pub ack_timeout: Duration,
    /// How often the acknowledged position is saved (one ordinary write when it moved).
    pub save_every: Duration,
    /// The stream's duplicate window when berth creates it: it must cover a replay from the
    /// saved position after a restart or an outage.
    pub duplicate_window: Duration,
    /// Facts are published on change (at most once a second) and at least this often.
    pub facts_every: Duration,
}

impl ExportConfig {
    /// Defaults for a server at `nats_url`.
    pub fn new(nats_url: impl Into<String>) -> Self {
        Self {
            nats_url: nats_url.into(),
            host_id: None,
            max_in_flight: 256,
            ack_timeout: Duration::from_secs(5),
            save_every: Duration::from_secs(1),
            duplicate_window: Duration::from_secs(600),
            facts_every: Duration::from_secs(30),
        }
    }
}

/// Errors starting the exporter.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The database could not be read or written.
    #[error("export: {0}")]
    Store(#[from] berth_store::StoreError),
    /// The configured host id cannot be used in a subject.
    #[error("export.host_id: {0:?} must be 1 to 64 of A-Z, a-z, 0-9, '-' and '_'")]
    InvalidHostId(String),
    /// The OS random source failed, so no host id could be generated.
    #[error("export: cannot generate a host id: {0}")]
    Random(String),
}

/// The running exporter: its tasks, and its state for `berth host status` and metrics.
#[derive(Debug, Clone)]
pub struct Exporter {
    shared: Arc<Shared>,
}

impl Exporter {
    /// Resolves the host id, then starts publishing in the background. Returns at once whether or
    /// not NATS is reachable.
    pub async fn start(
        store: Store,
        cfg: ExportConfig,
        facts: FactsFn,
    ) -> Result<Exporter, ExportError> {
        let host_id = match &cfg.host_id {
            Some(id) if valid_host_id(id) => id.clone(),
            Some(id) => return Err(ExportError::InvalidHostId(id.clone())),
            None => store.host_id_or_keep(generate_host_id()?).await?,
        };
        let (_, mut cursor) = store.export_state()?;
        if cursor.acked_seq.is_none() {
            // Export starts at the oldest event kept: those trimmed before it was enabled were
            // never promised. From here on, whatever retention removes unexported is a hole.
            let start = oldest_kept(&store)?.saturating_sub(1);
            store.save_export_cursor(start).await?;
            cursor.acked_seq = Some(start);
        }
        let shared = Shared::new(host_id, cursor, store.last_seq()?);
        status::register_metrics();
        tracing::info!(
            host_id = %shared.host_id, nats = %redact_url(&cfg.nats_url),
            acked = ?shared.snapshot().acked_seq, "fleet export starting"
        );
        let cfg = Arc::new(cfg);
        tokio::spawn(status::follow_head(store.clone(), shared.clone()));
        tokio::spawn(status::save_position(
            store.clone(),
            shared.clone(),
            cfg.save_every,
        ));
        let (client_tx, client_rx) = tokio::sync::watch::channel(None);
        tokio::spawn(facts::publish_facts(
            shared.clone(),
            cfg.clone(),
            facts,
            client_rx,
        ));
        tokio::spawn(publish::run(store, shared.clone(), cfg, client_tx));
        Ok(Exporter { shared })
    }

    /// The host id in use.
    pub fn host_id(&self) -> &str {
        &self.shared.host_id
    }

    /// The export state now.
    pub fn status(&self) -> ExportStatus {
        self.shared.snapshot()
    }
}

/// The oldest seq in the log, or the next one if the log is empty.
fn oldest_kept(store: &Store) -> Result<u64, ExportError> {
    match store.events_after(0, 1) {
        Ok(evs) => match evs.first() {
            Some(ev) => Ok(ev.seq),
            None => Ok(store.last_seq()? + 1),
        },
        Err(berth_store::StoreError::Expired { oldest, .. }) => Ok(oldest),
        Err(e) => Err(e.into()),
    }
}

fn generate_host_id() -> Result<String, ExportError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| ExportError::Random(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_shown_without_its_secret() {
        assert_eq!(
            redact_url("nats://berth:s3cret@10.0.0.1:4222"),
            "nats://berth:***@10.0.0.1:4222"
        );
        assert_eq!(redact_url("nats://t0ken@nats:4222"), "nats://***@nats:4222");
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redact_url("127.0.0.1:4222"), "127.0.0.1:4222");
        assert_eq!(redact_url("nats://a:b@c@h:1"), "nats://a:***@h:1");
    }
}
