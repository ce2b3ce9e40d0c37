//! The exporter's state, shared by its tasks: the acknowledged position, the log's head, the lag
//! metrics, and the task that saves the position in batches.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

pub use berth_api_types::ExportStatus;
use berth_store::{ExportCursor, ExportHole, Store};

#[derive(Debug)]
pub(crate) struct Shared {
    pub host_id: String,
    acked: AtomicU64,
    head: AtomicU64,
    published: AtomicU64,
    connected: AtomicBool,
    /// Whether a connection state was ever reported (the first failure is logged too).
    reported: AtomicBool,
    holes: Mutex<Vec<ExportHole>>,
    last_error: Mutex<Option<String>>,
}

impl Shared {
    pub fn new(host_id: String, cursor: ExportCursor, head: u64) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            host_id,
            acked: AtomicU64::new(cursor.acked_seq.unwrap_or(0)),
            head: AtomicU64::new(head),
            published: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            reported: AtomicBool::new(false),
            holes: Mutex::new(cursor.holes),
            last_error: Mutex::new(None),
        })
    }

    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// Moves the acknowledged position to `seq` (never back).
    pub fn set_acked(&self, seq: u64) {
        self.acked.fetch_max(seq, Ordering::AcqRel);
        self.update_lag();
    }

    pub fn count_published(&self) {
        self.published.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("berth_export_published_total").increment(1);
    }

    pub fn set_head(&self, seq: u64) {
        self.head.fetch_max(seq, Ordering::AcqRel);
        self.update_lag();
    }

    fn update_lag(&self) {
        let lag = self
            .head
            .load(Ordering::Acquire)
            .saturating_sub(self.acked());
        metrics::gauge!("berth_export_lag_events").set(lag as f64);
    }

    /// Records the connection's state; logs each change (and the first failure) once.
    pub fn set_connected(&self, up: bool, error: Option<String>) {
        let was = self.connected.swap(up, Ordering::AcqRel);
        let first = !self.reported.swap(true, Ordering::AcqRel);
        if up && !was {
            tracing::info!(host_id = %self.host_id, acked = self.acked(), "fleet export connected");
        } else if !up && (was || first) {
            tracing::warn!(
                host_id = %self.host_id, acked = self.acked(), error = error.as_deref().unwrap_or(""),
                "fleet export cannot publish to NATS; retrying (events wait in the database, the export lags)"
            );
        }
        metrics::gauge!("berth_export_connected").set(if up { 1.0 } else { 0.0 });
        if let Ok(mut e) = self.last_error.lock() {
            *e = error;
        }
    }

    pub fn add_hole(&self, hole: ExportHole) {
        if let Ok(mut holes) = self.holes.lock() {
            match holes.last_mut() {
                Some(last) if last.from == hole.from => *last = hole,
                _ => holes.push(hole),
            }
            if holes.len() > 100 {
                let excess = holes.len() - 100;
                holes.drain(..excess);
            }
        }
    }

    pub fn snapshot(&self) -> ExportStatus {
        let acked = self.acked();
        let head = self.head.load(Ordering::Acquire);
        ExportStatus {
            host_id: self.host_id.clone(),
            connected: self.connected.load(Ordering::Acquire),
            acked_seq: acked,
            head_seq: head,
            lag_events: head.saturating_sub(acked),
            published: self.published.load(Ordering::Relaxed),
            holes: self.holes.lock().map(|h| h.clone()).unwrap_or_default(),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }
}

/// Registers the export series at zero, so that an alert's `increase()` sees the first hole and
/// the lag gauge exists before the first commit.
pub(crate) fn register_metrics() {
    metrics::counter!("berth_export_published_total").increment(0);
    metrics::counter!("berth_export_hole_events_total").increment(0);
    metrics::gauge!("berth_export_lag_events").set(0.0);
    metrics::gauge!("berth_export_connected").set(0.0);
}

/// Follows the log's head (for the lag) without reading the log: the store's commit signal.
pub(crate) async fn follow_head(store: Store, shared: std::sync::Arc<Shared>) {
    let mut rx = store.subscribe();
    loop {
        let head = *rx.borrow_and_update();
        shared.set_head(head);
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Saves the acknowledged position every `every` when it moved: one ordinary write, grouped
/// with whatever else commits, so export never adds a commit per event.
pub(crate) async fn save_position(store: Store, shared: std::sync::Arc<Shared>, every: Duration) {
    let mut saved = store
        .export_state()
        .ok()
        .and_then(|(_, c)| c.acked_seq)
        .unwrap_or(0);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let acked = shared.acked();
        if acked <= saved {
            continue;
        }
        match store.save_export_cursor(acked).await {
            Ok(()) => saved = acked,
            Err(berth_store::StoreError::Closed) => return,
            Err(e) => {
                tracing::warn!(error = %e, acked, "saving the export position failed; will retry")
            }
        }
    }
}
