//! The host's images as the agent sees them: making a machine's image ready at create (imported
//! from a local layout or pulled from a registry, bounded by `pull_timeout`), which images are in
//! use, and the background collection of images unused for `images.gc_unused_after`.
//!
//! A create pulls *before* anything is recorded (so a failed pull leaves no machine); between
//! the pull and the write that records the machine, the image is "pending" here and counts as
//! in use, so neither `DELETE /v1/images/{digest}` nor the collector takes it from under the
//! create. Collection runs a few removals at a time on a blocking thread, never on the async
//! workers and never inside a store write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_image::{ImageError, ImageStore, Pull, Puller, Resolved};
pub use berth_image::{Progress, RegistryConfig};
use berth_store::Store;
use berth_types::State;

/// The `[images]` settings the agent uses.
#[derive(Debug, Clone)]
pub struct ImagesConfig {
    /// How to reach registries (`insecure_registries`, `credentials_file`).
    pub registry: RegistryConfig,
    /// Images no machine has used for this long are collected.
    pub gc_unused_after: Duration,
    /// A pull (at create or `POST /v1/images/pull`) that takes longer fails with a timeout.
    pub pull_timeout: Duration,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        Self {
            registry: RegistryConfig::default(),
            gc_unused_after: Duration::from_secs(24 * 3600),
            pull_timeout: Duration::from_secs(600),
        }
    }
}

/// An image made ready ([`Images::ready`]).
#[derive(Debug, Clone)]
pub struct Ready {
    /// The image.
    pub resolved: Resolved,
    /// For a registry reference, what the pull did, in words (a create records it as the
    /// machine's `pull` event); `None` for an imported `oci:` layout.
    pub pulled: Option<String>,
}

/// What a pull did, for the machine's `pull` event: the reference, the digest, what was
/// downloaded and unpacked, how long it took.
pub fn pull_note(reference: &str, p: &Pull) -> String {
    let what = if p.downloaded_bytes > 0 {
        format!(
            "{:.1} MiB downloaded{}",
            p.downloaded_bytes as f64 / (1u64 << 20) as f64,
            if p.unpacked { " and unpacked" } else { "" }
        )
    } else if p.unpacked {
        "unpacked from blobs already on the host".to_owned()
    } else {
        "already on the host, nothing downloaded".to_owned()
    };
    format!(
        "pulled {reference}: {} ({what}, {:.1} s)",
        p.resolved.digest,
        p.elapsed.as_secs_f64()
    )
}

/// How long an image made ready for a create counts as in use before the create records it.
const PENDING_FOR: Duration = Duration::from_secs(120);
/// Removals one collection step makes before it yields.
const GC_STEP: usize = 4;

/// The image store, its puller and the images creates are about to record.
#[derive(Debug)]
pub struct Images {
    store: Arc<ImageStore>,
    puller: Puller,
    cfg: ImagesConfig,
    pending: Mutex<HashMap<String, Instant>>,
}

impl Images {
    /// Over `store`, pulling as `cfg` says.
    pub fn new(store: Arc<ImageStore>, cfg: ImagesConfig) -> Arc<Self> {
        let puller = Puller::new(store.clone(), cfg.registry.clone());
        // At zero from the start, so the first pull of either outcome is an increase.
        for result in ["ok", "error"] {
            metrics::counter!(berth_image::PULLS_TOTAL, "result" => result).increment(0);
        }
        Arc::new(Self {
            store,
            puller,
            cfg,
            pending: Mutex::new(HashMap::new()),
        })
    }

    /// The store.
    pub fn store(&self) -> &Arc<ImageStore> {
        &self.store
    }

    /// The settings.
    pub fn config(&self) -> &ImagesConfig {
        &self.cfg
    }

    /// Makes `reference` ready: imports an `oci:` layout, pulls anything else (at most
    /// `pull_timeout`); records the reference beside the image and, for a create (`for_create`),
    /// holds it as pending until the create has had time to record its machine.
    pub async fn ready(&self, reference: &str, for_create: bool) -> Result<Ready, ImageError> {
        self.ready_with(reference, for_create, Progress::new())
            .await
    }

    /// [`Images::ready`], a pull's bytes counted into `progress` as they arrive.
    pub async fn ready_with(
        &self,
        reference: &str,
        for_create: bool,
        progress: Arc<Progress>,
    ) -> Result<Ready, ImageError> {
        let (resolved, pulled) = if reference.starts_with("oci:") {
            let (store, r) = (self.store.clone(), reference.to_owned());
            let resolved = tokio::task::spawn_blocking(move || store.import(&r))
                .await
                .map_err(|e| task_failed("import", &e))??;
            (resolved, None)
        } else {
            let p = self.pull(reference, progress).await?;
            let note = pull_note(reference, &p);
            (p.resolved, Some(note))
        };
        if for_create {
            self.hold(&resolved.digest);
        }
        let (store, d, r) = (
            self.store.clone(),
            resolved.digest.clone(),
            reference.to_owned(),
        );
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.add_reference(&d, &r)).await {
            tracing::warn!(image = reference, error = %e, "recording the image's reference");
        }
        Ok(Ready { resolved, pulled })
    }

    /// Pulls a registry reference, bounded by `pull_timeout`.
    async fn pull(&self, reference: &str, progress: Arc<Progress>) -> Result<Pull, ImageError> {
        let timeout = self.cfg.pull_timeout;
        tracing::info!(image = reference, "pulling image");
        let pull = self.puller.pull_with(reference, progress);
        match tokio::time::timeout(timeout, pull).await {
            Ok(Ok(p)) => {
                tracing::info!(
                    image = reference, digest = %p.resolved.digest, bytes = p.downloaded_bytes,
                    unpacked = p.unpacked, elapsed_ms = p.elapsed.as_millis() as u64, "pulled image"
                );
                Ok(p)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => {
                metrics::counter!(berth_image::PULLS_TOTAL, "result" => "error").increment(1);
                Err(ImageError::Registry {
                    registry: reference.split('/').next().unwrap_or_default().to_owned(),
                    reference: reference.to_owned(),
                    reason: format!(
                        "the pull did not finish within {}",
                        humantime::format_duration(timeout)
                    ),
                })
            }
        }
    }

    fn hold(&self, digest: &str) {
        if let Ok(mut p) = self.pending.lock() {
            p.retain(|_, t| t.elapsed() < PENDING_FOR);
            p.insert(digest.to_owned(), Instant::now());
        }
    }

    fn is_pending(&self, digest: &str) -> bool {
        self.pending
            .lock()
            .map(|p| p.get(digest).is_some_and(|t| t.elapsed() < PENDING_FOR))
            // A poisoned lock: we cannot tell, so the image counts as in use.
            .unwrap_or(true)
    }

    /// The machines (not destroyed) using each image, by manifest digest, read from `store`;
    /// `None` when the store cannot be read (then nothing may be removed).
    pub fn users(store: &Store) -> Option<HashMap<String, Vec<String>>> {
        let mut users: HashMap<String, Vec<String>> = HashMap::new();
        let visited = store.each_machine(|m| {
            if m.state != State::Destroyed
                && let Some(d) = &m.image_digest
            {
                users.entry(d.clone()).or_default().push(m.id.to_string());
            }
            true
        });
        if let Err(e) = visited {
            tracing::warn!(error = %e, "reading machines to see which images are in use");
            return None;
        }
        Some(users)
    }

    /// Whether the image is used by a machine in `users` or by a create about to record one.
    pub fn in_use(&self, users: &HashMap<String, Vec<String>>, digest: &str) -> bool {
        users.contains_key(digest) || self.is_pending(digest)
    }

    /// One collection step (blocking: call it off the async workers): removes at most a few
    /// images unused for `gc_unused_after`; true when more remain.
    pub fn collect_step(&self, store: &Store) -> Result<bool, ImageError> {
        let Some(users) = Self::users(store) else {
            return Ok(false);
        };
        let done = self.store.collect_garbage(
            self.cfg.gc_unused_after,
            &|d| self.in_use(&users, d),
            GC_STEP,
        )?;
        for d in &done.removed {
            tracing::info!(digest = %d, "collected unused image");
        }
        Ok(done.more)
    }

    /// Sets `berth_images` and `berth_image_bytes` from what the store holds.
    pub fn record_usage(&self) {
        match self.store.usage() {
            Ok((n, bytes)) => {
                metrics::gauge!(berth_image::IMAGES).set(n as f64);
                metrics::gauge!(berth_image::IMAGE_BYTES).set(bytes as f64);
            }
            Err(e) => tracing::warn!(error = %e, "measuring the image store"),
        }
        match self.store.disk() {
            Ok((size, available)) => {
                metrics::gauge!(berth_image::DISK_SIZE_BYTES).set(size as f64);
                metrics::gauge!(berth_image::DISK_AVAILABLE_BYTES).set(available as f64);
            }
            Err(e) => tracing::warn!(error = %e, "measuring the data disk"),
        }
    }

    /// Runs collection forever: a pass every `interval`, each a series of small steps on a
    /// blocking thread.
    pub(crate) fn spawn_collector(self: &Arc<Self>, store: Store) {
        let me = self.clone();
        let interval =
            (self.cfg.gc_unused_after / 2).clamp(Duration::from_secs(1), Duration::from_secs(300));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                loop {
                    let (m, s) = (me.clone(), store.clone());
                    let step = tokio::task::spawn_blocking(move || m.collect_step(&s)).await;
                    match step {
                        Ok(Ok(true)) => tokio::task::yield_now().await,
                        Ok(Ok(false)) => break,
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "collecting unused images");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "the image collection task failed");
                            break;
                        }
                    }
                }
                me.record_usage();
            }
        });
    }
}

fn task_failed(what: &str, e: &tokio::task::JoinError) -> ImageError {
    ImageError::Io {
        context: format!("the image {what} task failed"),
        source: std::io::Error::other(e.to_string()),
    }
}
