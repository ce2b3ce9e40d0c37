//! berth's durable store: the single source of truth for this host's machines.
//!
//! Architecture invariant: a write is acknowledged only after the redb transaction holding it has
//! been committed with `Durability::Immediate`; every write goes through the one writer thread
//! ([`writer`]), and no other code holds a redb write transaction. Nothing here knows about HTTP or
//! processes; the state machine it enforces comes from `berth-types`.
//!
//! API boundary: [`Store`] (open, typed reads, [`Store::write`] with a closure over [`WriteCtx`]),
//! [`StoreOptions`], [`StoreError`], the slow-op hook ([`SlowOp`]).

pub mod admission;
mod backup;
mod check;
mod codec;
mod compact;
mod error;
mod export;
mod offline;
mod read;
mod recent;
mod retention;
pub mod schema;
mod stats;
mod tables;
mod timing;
mod verify;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use redb::Database;
use tokio::sync::{mpsc, oneshot};

pub use berth_types::ExportHole;
pub use check::CheckReport;
pub use compact::{CompactionProgress, CompactionReport};
pub use error::{Result, StoreError};
pub use export::ExportCursor;
pub use offline::{OfflineDb, PageCheck};
pub use retention::{RetentionPolicy, RetentionReport};
pub use schema::{IntegrityReport, OpenKind, SCHEMA_VERSION, check_file_integrity};
pub use stats::StoreStats;
pub use timing::{
    DURATION_BUCKETS, OP_DURATION, OPS, OpDurations, SLOW_OPS, SlowOp, SlowOpHook, TimingProbe,
};
pub use verify::Verification;
pub use writer::{ConfigChange, TransitionSpec, WriteCtx};

use timing::Timings;

/// Most config versions kept per machine, the current one included: an update removes the
/// version that falls out of this window in the write that records the new one, so a machine
/// updated in a loop never grows the `config_versions` table past `MAX_CONFIG_VERSIONS - 1`
/// rows. A rollback can go back this far.
pub const MAX_CONFIG_VERSIONS: u64 = 16;
use writer::{BoxedJob, Msg, TypedJob, Writer, WriterCounters};

/// Tunables of a [`Store`].
#[derive(Clone)]
pub struct StoreOptions {
    /// Writes that may wait for the writer; past this, [`StoreError::Overloaded`] at once.
    pub queue_capacity: usize,
    /// Most writes in one commit.
    pub max_batch: usize,
    /// An operation slower than this is reported as slow (`db.slow_op_threshold`).
    pub slow_op_threshold: Duration,
    /// Called for each slow operation, after the WARN log line and the counter.
    pub slow_op_hook: Option<SlowOpHook>,
    /// Added to every commit (`fault.db_delay`), for drills and tests.
    pub commit_delay: Duration,
    /// Whether to time operations (on in production; off only to measure timing's own cost).
    pub timing: bool,
    /// redb's page cache, in bytes.
    pub cache_size: usize,
    /// Free space a compaction must leave on the data dir's file system beyond its copy.
    pub compaction_reserve: u64,
    /// Called with the name of each compaction phase as it starts (for crash tests and drills):
    /// `copy`, `shrink`, `catch-up`, `swap`, `new-file-durable`, `renamed` (the last two on the writer
    /// thread, while writers wait), `release` (waiting for the old file's last readers), `swapped`
    /// (the old database closed), `released` (its space given back).
    pub compaction_hook: Option<CompactionHook>,
}

/// See [`StoreOptions::compaction_hook`].
pub type CompactionHook = Arc<dyn Fn(&str) + Send + Sync>;

/// redb's page cache by default (`StoreOptions::cache_size`, berthd's `db.cache_size`): 16 MiB.
/// Every cached page is resident memory, and a walk of every page (`Table::stats`, the
/// verification after open) fills the cache to this bound, so it is most of what berthd's RSS
/// grows by after start; a small cache, on the other hand, is what a freshly compacted file's
/// writes wait on (its pages are all new to the cache). Measured on an idle 2-core host:
/// `cargo xtask bench restart` (10,000 machines, 1,000,000 events) RSS after start 82–92 MiB at
/// 32 MiB, 56–63 at 16, 42–45 at 8; `cargo xtask bench aging` aged p99 / fresh p99 1.19 at 32,
/// 1.16 at 16, 1.61 at 8 (target ≤ 1.2). Half of it at most buffers a commit's dirty pages.
pub const DEFAULT_CACHE_SIZE: usize = 16 << 20;

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            queue_capacity: 4096,
            max_batch: 1024,
            slow_op_threshold: Duration::from_millis(100),
            slow_op_hook: None,
            commit_delay: Duration::ZERO,
            timing: true,
            cache_size: DEFAULT_CACHE_SIZE,
            compaction_reserve: 64 << 20,
            compaction_hook: None,
        }
    }
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("queue_capacity", &self.queue_capacity)
            .field("max_batch", &self.max_batch)
            .field("slow_op_threshold", &self.slow_op_threshold)
            .field("commit_delay", &self.commit_delay)
            .field("timing", &self.timing)
            .field("cache_size", &self.cache_size)
            .field("compaction_reserve", &self.compaction_reserve)
            .finish_non_exhaustive()
    }
}

/// The open database, replaced (by the writer thread, between commits) when an online compaction
/// swaps in the rebuilt file. Readers clone the `Arc` and keep reading the file they started on.
pub(crate) type DbSlot = Arc<RwLock<Arc<Database>>>;

struct Inner {
    path: PathBuf,
    db: DbSlot,
    /// `None` only while dropping.
    tx: Option<mpsc::Sender<Msg>>,
    writer: Option<std::thread::JoinHandle<()>>,
    capacity: usize,
    timings: Timings,
    poisoned: Arc<AtomicBool>,
    counters: Arc<WriterCounters>,
    seq_rx: tokio::sync::watch::Receiver<u64>,
    /// The last commits' events, which the writer keeps (`recent.rs`).
    recent: Arc<Mutex<recent::RecentEvents>>,
    open_kind: OpenKind,
    /// The compaction in progress, if any (one at a time).
    compaction: Mutex<Option<CompactionProgress>>,
    cache_size: usize,
    compaction_reserve: u64,
    compaction_hook: Option<CompactionHook>,
    /// The background verification of the history (see `verify.rs`).
    verification: Arc<verify::VerifyState>,
    verifier: Option<std::thread::JoinHandle<()>>,
}

/// What the writer has done since the store was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterStats {
    /// Commits (batches) made durable.
    pub commits: u64,
    /// Writes acknowledged in them.
    pub writes: u64,
    /// Writes waiting in the queue now.
    pub queued: usize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The verifier holds the database open: stop it first.
        self.verification.stop();
        if let Some(h) = self.verifier.take()
            && h.join().is_err()
        {
            tracing::error!("the history verification thread panicked");
        }
        // Closing the queue lets the writer commit what is queued and exit; joining it means the
        // file is closed (and its lock released) when the last handle is gone.
        self.tx = None;
        if let Some(h) = self.writer.take()
            && h.join().is_err()
        {
            tracing::error!("the database writer thread panicked while closing");
        }
        // redb can panic closing a damaged file (its close walks the trees): catch it, so that
        // berthd still exits with a message rather than a panic. The file is then left as after a
        // crash, and the next open repairs it safely (or refuses it as damaged).
        let Ok(placeholder) =
            redb::Builder::new().create_with_backend(redb::backends::InMemoryBackend::new())
        else {
            return;
        };
        let db = std::mem::replace(
            &mut *self.db.write().unwrap_or_else(|e| e.into_inner()),
            Arc::new(placeholder),
        );
        if let Err(panic) = schema::guarded(move || drop(db)) {
            tracing::error!(
                path = %self.path.display(),
                panic = %panic,
                "closing the database failed: redb panicked (the file is damaged?); it was not closed cleanly — run `berth db check --offline` before starting berthd again"
            );
        }
    }
}

/// A handle to the open store; cheap to clone. When the last handle is dropped the writer
/// commits what was queued, exits, and the file is closed.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens or creates the database at `path` (see [`schema`] for how a file is vetted first)
    /// and starts the writer thread.
    pub fn open(path: impl AsRef<Path>, options: StoreOptions) -> Result<Store> {
        let path = path.as_ref().to_owned();
        let timings = Timings::new(
            options.slow_op_threshold,
            options.slow_op_hook.clone(),
            options.timing,
        );
        let start = timings.start();
        compact::remove_leftover(&path)?;
        offline::remove_leftover(&path)?;
        let (db, open_kind) = schema::open_database(&path, options.cache_size)?;
        let caught_up = writer::catch_up_history(&db)?;
        if caught_up > 0 {
            tracing::info!(
                rows = caught_up,
                "materialized history rows left pending by an unclean shutdown"
            );
        }
        let db: DbSlot = Arc::new(RwLock::new(Arc::new(db)));
        let (next_seq, next_op_id) = Writer::load_counters(&slot_get(&db))?;
        let admission = admission::AdmissionIndex::load(&slot_get(&db))?;
        timings.finish("open", start, 0, 0, || format!("open {}", path.display()));
        let (tx, rx) = mpsc::channel(options.queue_capacity.max(1));
        let poisoned = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(WriterCounters::default());
        let (seq_tx, seq_rx) = tokio::sync::watch::channel(next_seq - 1);
        let recent = Arc::new(Mutex::new(recent::RecentEvents::new(recent::RECENT_EVENTS)));
        let writer = Writer {
            seq_tx,
            recent: recent.clone(),
            counters: counters.clone(),
            db: slot_get(&db),
            slot: db.clone(),
            dirty: writer::Dirty::default(),
            rx,
            max_batch: options.max_batch.max(1),
            commit_delay: options.commit_delay,
            timings: timings.clone(),
            poisoned: poisoned.clone(),
            next_seq,
            next_op_id,
            indexer: writer::Indexer::default(),
            cache: Default::default(),
            admission,
            recovery: writer::Recovery::new(path.clone(), options.cache_size),
        };
        let handle = std::thread::Builder::new()
            .name("berth-store-writer".into())
            .spawn(move || writer.run())
            .map_err(StoreError::io("spawn the store writer thread"))?;
        // Started last: nothing after it can fail, so no error path leaves it holding the file.
        let (verification, verifier) = match open_kind {
            OpenKind::Created => (verify::VerifyState::passed(), None),
            _ => {
                let (state, handle) = verify::start(slot_get(&db), path.clone())
                    .map_err(StoreError::io("spawn the history verification thread"))?;
                (state, Some(handle))
            }
        };
        Ok(Store {
            inner: Arc::new(Inner {
                path,
                db,
                tx: Some(tx),
                writer: Some(handle),
                capacity: options.queue_capacity.max(1),
                timings,
                poisoned,
                counters,
                seq_rx,
                recent,
                open_kind,
                compaction: Mutex::new(None),
                cache_size: options.cache_size,
                compaction_reserve: options.compaction_reserve,
                compaction_hook: options.compaction_hook.clone(),
                verification,
                verifier,
            }),
        })
    }

    /// Where the background verification of the history stands (see `verify.rs`).
    pub fn verification(&self) -> Verification {
        self.inner.verification.get()
    }

    /// Waits (at most `timeout`) until the history's verification is no longer running.
    pub fn wait_verified(&self, timeout: Duration) -> Verification {
        self.inner.verification.wait(timeout)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// How the file was found when it was opened.
    pub fn open_kind(&self) -> OpenKind {
        self.inner.open_kind
    }

    /// Whether the last commit failed and none has succeeded since: writes are refused while the
    /// writer reopens the database and waits out its retry backoff (see *The life of a write*).
    pub fn is_poisoned(&self) -> bool {
        self.inner.poisoned.load(Ordering::Acquire)
    }

    /// The last committed event seq, updated after every commit: await `changed()` to learn of
    /// new events or transitions without polling.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.seq_rx.clone()
    }

    /// When the last commit became durable (the epoch before the first). It is set before the
    /// commit's seq reaches [`Store::subscribe`], so a subscriber woken by a commit reads that
    /// commit's time, or a later one's if another committed meanwhile.
    pub fn last_commit_done(&self) -> berth_types::Timestamp {
        berth_types::Timestamp::from_nanos(
            self.inner
                .counters
                .last_commit_nanos
                .load(Ordering::Acquire),
        )
    }

    /// Commits and writes so far, and the queue's depth.
    pub fn writer_stats(&self) -> WriterStats {
        let queued = self
            .inner
            .tx
            .as_ref()
            .map_or(0, |tx| tx.max_capacity() - tx.capacity());
        WriterStats {
            commits: self.inner.counters.commits.load(Ordering::Relaxed),
            writes: self.inner.counters.writes.load(Ordering::Relaxed),
            queued,
        }
    }

    fn enqueue<T, F>(&self, f: F) -> Result<oneshot::Receiver<Result<T>>>
    where
        T: Send + 'static,
        F: FnOnce(&mut WriteCtx<'_, '_>) -> Result<T> + Send + 'static,
    {
        if let Some(reason) = self.inner.verification.damage() {
            return Err(StoreError::HistoryDamaged {
                path: self.inner.path.clone(),
                reason,
            });
        }
        let (reply, rx) = oneshot::channel();
        let job: BoxedJob = Box::new(TypedJob {
            f: Some(f),
            out: None,
            reply,
        });
        let tx = self.inner.tx.as_ref().ok_or(StoreError::Closed)?;
        tx.try_send(Msg::Job(job)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                metrics::counter!("berth_db_writes_refused_total", "reason" => "overloaded")
                    .increment(1);
                StoreError::Overloaded {
                    capacity: self.inner.capacity,
                }
            }
            mpsc::error::TrySendError::Closed(_) => StoreError::Closed,
        })?;
        Ok(rx)
    }

    /// Runs `f` in the writer's next batch; resolves once that batch is durable.
    ///
    /// Fails at once with [`StoreError::Overloaded`] when the queue is full. If `f` returns an
    /// error, nothing it wrote is applied and the error is returned after the batch commits.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut WriteCtx<'_, '_>) -> Result<T> + Send + 'static,
    {
        let rx = self.enqueue(f)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// [`Store::write`] for callers outside an async runtime.
    pub fn write_blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut WriteCtx<'_, '_>) -> Result<T> + Send + 'static,
    {
        let rx = self.enqueue(f)?;
        rx.blocking_recv().map_err(|_| StoreError::Closed)?
    }

    /// Drops this handle; if it is the last one, waits until queued writes are committed and the
    /// file is closed.
    pub fn close(self) {
        drop(self);
    }
}

/// The database in `slot` now.
pub(crate) fn slot_get(slot: &DbSlot) -> Arc<Database> {
    // A poisoned lock only means a panic elsewhere while holding it; the Arc inside is intact.
    slot.read().unwrap_or_else(|e| e.into_inner()).clone()
}

impl Store {
    /// How long each kind of operation has taken since the store opened (every one of [`OPS`],
    /// in that order), for an exporter to render as `berth_db_operation_duration_seconds`.
    pub fn op_durations(&self) -> Vec<OpDurations> {
        self.inner.timings.snapshot()
    }

    /// The database file as it is now (a compaction may have swapped it).
    pub(crate) fn db(&self) -> Arc<Database> {
        slot_get(&self.inner.db)
    }

    /// Runs `f` on the writer thread between two commits (no write is in flight meanwhile) and
    /// returns its result. Control messages wait in the queue like writes, but are never refused
    /// as overload: the caller is the store itself.
    pub(crate) fn control<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Writer) -> T + Send + 'static,
    ) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        let tx = self.inner.tx.as_ref().ok_or(StoreError::Closed)?;
        tx.blocking_send(Msg::Control(Box::new(move |w: &mut Writer| {
            let _ = reply.send(f(w));
        })))
        .map_err(|_| StoreError::Closed)?;
        rx.blocking_recv().map_err(|_| StoreError::Closed)
    }
}
