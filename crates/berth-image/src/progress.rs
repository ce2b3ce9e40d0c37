//! How far a pull has got, shared between the pull and whoever shows it (the API's streamed
//! answer to `POST /v1/images/pull`, and through it `berth image pull` on a terminal).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes of the image's blobs (config and layers) on the host, out of their total. Blobs that
/// were on the host already, and the resumed part of a partial download, count as on the host.
/// Both stay 0 until the manifest is read, and when the image itself is on the host already.
#[derive(Debug, Default)]
pub struct Progress {
    done: AtomicU64,
    total: AtomicU64,
}

impl Progress {
    /// A fresh one, to hand to [`crate::Puller::pull_with`] and read while it runs.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// `(bytes on the host, total bytes)`.
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    pub(crate) fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
}
