//! Recovery after a failed commit: the writer reopens the database from disk and refuses writes
//! until a retry backoff has passed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Writer;
use super::history::{Indexer, pending_history};
use crate::error::{Result, StoreError};
use crate::schema;

/// After a failed commit redb's in-memory state cannot be trusted (it latches the I/O error and
/// fails every later read and write on that handle). The writer then closes the database and
/// opens the file again, which reads the last committed state back from disk (redb repairs the
/// unclean close), and refuses writes until a retry backoff has passed; a successful commit ends
/// the episode. Nothing acknowledged is lost: only committed batches were ever acknowledged.
#[derive(Debug)]
pub(crate) struct Recovery {
    pub path: std::path::PathBuf,
    pub cache_size: usize,
    /// The database must be reopened before the next commit.
    pub needs_reopen: bool,
    /// No commit is attempted before this.
    pub retry_at: Option<Instant>,
    pub backoff: Duration,
    /// How many times the database was reopened; a compaction begun before a reopen is refused
    /// at its swap (its dirty-key tracking may have missed the reopened file's state).
    pub reopens: u64,
}

impl Recovery {
    pub fn new(path: std::path::PathBuf, cache_size: usize) -> Self {
        Self {
            path,
            cache_size,
            needs_reopen: false,
            retry_at: None,
            backoff: RECOVERY_BACKOFF_MIN,
            reopens: 0,
        }
    }
}

/// The first retry after a failed commit waits this long, doubling up to the max.
pub(crate) const RECOVERY_BACKOFF_MIN: Duration = Duration::from_millis(50);
const RECOVERY_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long a reopen waits for readers of the failed handle to finish.
const REOPEN_READERS_WAIT: Duration = Duration::from_secs(2);

impl Writer {
    /// reopen fails), or the retry backoff after a failed commit has not passed.
    pub(super) fn refuse_while_recovering(&mut self) -> Option<String> {
        if self.recovery.needs_reopen {
            if let Some(reason) = self.retry_wait() {
                return Some(reason);
            }
            if let Err(e) = self.reopen() {
                self.schedule_retry();
                return Some(format!("reopening the database failed: {e}"));
            }
        }
        self.retry_wait()
    }

    fn retry_wait(&self) -> Option<String> {
        let at = self.recovery.retry_at?;
        let now = Instant::now();
        (now < at).then(|| {
            format!(
                "a commit failed; the next attempt is in {} ms",
                (at - now).as_millis()
            )
        })
    }

    fn schedule_retry(&mut self) {
        let r = &mut self.recovery;
        r.retry_at = Some(Instant::now() + r.backoff);
        r.backoff = (r.backoff * 2).min(RECOVERY_BACKOFF_MAX);
    }

    /// After a failed commit: forget what the failed transaction may have left in memory, and
    /// reopen the database at once so that reads work again.
    pub(super) fn after_failed_commit(&mut self) {
        // The cache and the indexer may hold records and rows of the batch that did not commit.
        self.cache.clear();
        self.indexer = Indexer::default();
        self.recovery.needs_reopen = true;
        self.schedule_retry();
        if let Err(e) = self.reopen() {
            tracing::error!(error = %e, "could not reopen the database after a failed commit; retrying before the next write");
        }
    }

    /// Closes the database and opens the file again. Readers of the old handle are waited for
    /// (new readers wait on the slot's lock meanwhile); the reopened database has the last
    /// committed state, from which the counters and the pending history rows are reloaded.
    fn reopen(&mut self) -> Result<()> {
        let placeholder = Arc::new(
            redb::Builder::new()
                .create_with_backend(redb::backends::InMemoryBackend::new())
                .map_err(StoreError::db("reopen: placeholder"))?,
        );
        let slot = self.slot.clone();
        let mut guard = slot.write().unwrap_or_else(|e| e.into_inner());
        let mut old = std::mem::replace(&mut *guard, placeholder.clone());
        self.db = placeholder;
        let deadline = Instant::now() + REOPEN_READERS_WAIT;
        let old_db = loop {
            match Arc::try_unwrap(old) {
                Ok(db) => break db,
                Err(still) if Instant::now() < deadline => {
                    old = still;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(still) => {
                    *guard = still.clone();
                    self.db = still;
                    return Err(StoreError::CommitFailed(
                        "readers of the failed database did not finish; retrying".into(),
                    ));
                }
            }
        };
        let path = self.recovery.path.clone();
        // Closing a handle whose I/O failed reports errors (logged by redb) or, on a damaged
        // file, can panic; either way the file is reopened from disk below.
        if let Err(p) = schema::guarded(move || drop(old_db)) {
            tracing::warn!(panic = %p, "closing the failed database handle panicked");
        }
        let mut builder = redb::Builder::new();
        builder.set_cache_size(self.recovery.cache_size);
        let db = schema::guarded(|| builder.open(&path))
            .map_err(|p| StoreError::Damaged {
                path: path.clone(),
                reason: format!("reopening after a failed commit: redb panicked: {p}"),
            })?
            .map_err(StoreError::db("reopen after a failed commit"))?;
        let (next_seq, next_op_id) = Writer::load_counters(&db)?;
        let (rows, _) = pending_history(&db)?;
        // The failed batch's creates and destroys were applied to the admission index before the
        // commit failed: rebuild it from what the file holds.
        let admission = crate::admission::AdmissionIndex::load(&db)?;
        let db = Arc::new(db);
        *guard = db.clone();
        drop(guard);
        self.db = db;
        self.next_seq = next_seq;
        self.next_op_id = next_op_id;
        self.indexer = Indexer::default();
        self.indexer.pending = rows;
        self.admission = admission;
        self.recovery.needs_reopen = false;
        self.recovery.reopens += 1;
        tracing::warn!(path = %path.display(), reopens = self.recovery.reopens, "reopened the database after a failed commit");
        Ok(())
    }
}
