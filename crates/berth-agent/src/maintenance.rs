//! Database maintenance while the agent serves: periodic retention passes, online compaction on
//! request, and automatic compaction when the file is large and mostly garbage.
//!
//! One compaction runs at a time: a request made while one runs joins it and gets its report.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_store::{CompactionReport, RetentionPolicy, StoreError};
use tokio::sync::watch;

use crate::Agent;

/// When to compact without being asked (`[compaction]`).
#[derive(Debug, Clone, Copy)]
pub struct AutoCompaction {
    /// Never while the file holds fewer written bytes than this (`compaction.min_file_size`).
    pub min_file_size: u64,
    /// Only when at least this share of the file is garbage (`compaction.garbage_ratio`).
    pub garbage_ratio: f64,
}

/// Retention and automatic compaction settings.
#[derive(Debug, Clone)]
pub struct MaintenanceConfig {
    /// What retention keeps.
    pub retention: RetentionPolicy,
    /// Time between two passes (`retention.interval`).
    pub interval: Duration,
    /// `None` when `compaction.auto = false`.
    pub auto_compaction: Option<AutoCompaction>,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            retention: RetentionPolicy::default(),
            interval: Duration::from_secs(60),
            auto_compaction: Some(AutoCompaction {
                min_file_size: 64 << 20,
                garbage_ratio: 0.5,
            }),
        }
    }
}

type Outcome = Option<Result<CompactionReport, Arc<StoreError>>>;

/// The compaction in flight, for requests to join.
#[derive(Debug, Clone, Default)]
pub(crate) struct Compactions {
    running: Arc<Mutex<Option<watch::Receiver<Outcome>>>>,
}

impl Agent {
    /// Compacts the database online, or joins the compaction already running; resolves with its
    /// report once the new file is in place.
    pub async fn compact(&self) -> Result<CompactionReport, Arc<StoreError>> {
        let mut rx = {
            let mut running = self
                .compactions
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match running.as_ref() {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    *running = Some(rx.clone());
                    let store = self.store().clone();
                    let slot = self.compactions.running.clone();
                    tokio::spawn(async move {
                        let result = tokio::task::spawn_blocking(move || store.compact())
                            .await
                            .unwrap_or_else(|e| {
                                Err(StoreError::Io {
                                    context: "compaction task".into(),
                                    source: std::io::Error::other(e.to_string()),
                                })
                            })
                            .map_err(Arc::new);
                        *slot.lock().unwrap_or_else(|e| e.into_inner()) = None;
                        tx.send_replace(Some(result));
                    });
                    rx
                }
            }
        };
        let outcome = rx
            .wait_for(Option::is_some)
            .await
            .map(|o| o.clone())
            .unwrap_or(None);
        outcome.unwrap_or_else(|| Err(Arc::new(StoreError::Closed)))
    }

    /// One retention pass, then an automatic compaction if it is due.
    pub async fn maintain(&self, cfg: &MaintenanceConfig) {
        if let Err(e) = self.store().retain(&cfg.retention).await {
            tracing::warn!(error = %e, "retention pass failed; it is retried at the next interval");
        }
        let Some(auto) = cfg.auto_compaction else {
            return;
        };
        let stats = match self.store().stats() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "could not read database stats for automatic compaction");
                return;
            }
        };
        let ratio = stats.garbage_ratio();
        // Disk usage, not length: redb's sparse reservation after a growth step (or right after
        // a compaction) is neither garbage nor reclaimable, and must not trigger another run.
        if stats.used_bytes() >= auto.min_file_size && ratio >= auto.garbage_ratio {
            tracing::info!(
                file_size = stats.file_size_bytes,
                on_disk = stats.used_bytes(),
                live_bytes = stats.live_bytes,
                garbage_ratio = ratio,
                "garbage is high: compacting online"
            );
            if let Err(e) = self.compact().await {
                tracing::warn!(error = %e, "automatic compaction failed");
            }
        }
    }

    pub(crate) fn spawn_maintenance(&self, cfg: MaintenanceConfig) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(cfg.interval).await;
                me.maintain(&cfg).await;
            }
        });
    }
}
