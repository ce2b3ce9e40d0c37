//! Host facts on `berth.hosts.<host_id>`: what the host is (capabilities, machines by state,
//! health) and the export's own state, published when they change (looked at once a second) and
//! at least every `facts_every`, so a control plane that starts late learns every host soon.
//! Plain NATS messages, not stored: the latest facts matter, not their history.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::status::Shared;
use crate::{ExportConfig, host_subject};

/// Gives the host's facts as a JSON object (capabilities, machines, health); called about once a
/// second, so it must be cheap.
pub type FactsFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

pub(crate) async fn publish_facts(
    shared: Arc<Shared>,
    cfg: Arc<ExportConfig>,
    facts: FactsFn,
    mut client_rx: watch::Receiver<Option<async_nats::Client>>,
) {
    let client = loop {
        if let Some(c) = client_rx.borrow_and_update().clone() {
            break c;
        }
        if client_rx.changed().await.is_err() {
            return;
        }
    };
    let subject = host_subject(&shared.host_id);
    let mut last: Option<(serde_json::Value, Instant)> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if client.connection_state() != async_nats::connection::State::Connected {
            last = None; // publish again as soon as the connection is back
            continue;
        }
        let status = shared.snapshot();
        // What counts as a change: the host's facts, the connection and the holes; not the
        // positions, which move with every event.
        let key = serde_json::json!([facts(), status.connected, status.holes]);
        let due = match &last {
            None => true,
            Some((prev, at)) => *prev != key || at.elapsed() >= cfg.facts_every,
        };
        if !due {
            continue;
        }
        let mut body = key[0].clone();
        if let Some(obj) = body.as_object_mut() {
            obj.insert("host_id".into(), shared.host_id.clone().into());
            obj.insert(
                "export".into(),
                serde_json::to_value(&status).unwrap_or_default(),
            );
            obj.insert(
                "at".into(),
                berth_types::Timestamp::now().to_string().into(),
            );
        }
        let Ok(payload) = serde_json::to_vec(&body) else {
            continue;
        };
        let sent = tokio::time::timeout(
            Duration::from_secs(1),
            client.publish(subject.clone(), payload.into()),
        )
        .await;
        if matches!(sent, Ok(Ok(()))) {
            last = Some((key, Instant::now()));
        }
    }
}
