//! The store's error type. Each variant's message is written for the person reading a log line
//! or an API error body: it names the thing and says what to do where there is something to do.

use std::path::PathBuf;

use berth_types::{IllegalTransition, MachineId};

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The write queue is full: the caller should back off and retry.
    #[error("the database write queue is full ({capacity} writes pending); retry shortly")]
    Overloaded {
        /// The queue's capacity.
        capacity: usize,
    },
    /// No machine with this id.
    #[error("machine {0} not found")]
    NotFound(MachineId),
    /// A machine with this id already exists.
    #[error("machine {0} already exists")]
    AlreadyExists(MachineId),
    /// The state machine forbids the requested transition.
    #[error("machine {id}: {source}")]
    IllegalTransition {
        /// The machine.
        id: MachineId,
        /// The refused transition.
        source: IllegalTransition,
    },
    /// The caller expected another version (optimistic concurrency).
    #[error("machine {id} is at version {actual}, not the expected {expected}")]
    VersionMismatch {
        /// The machine.
        id: MachineId,
        /// What the caller expected.
        expected: u64,
        /// What is stored.
        actual: u64,
    },
    /// An update named a config version that is no longer the current one (someone else
    /// updated the machine since the caller read it).
    #[error(
        "machine {id}'s config is at version {actual}, not {expected}: it was changed since; read it again and retry"
    )]
    ConfigVersionMismatch {
        /// The machine.
        id: MachineId,
        /// The version the caller named as current.
        expected: u64,
        /// The current version.
        actual: u64,
    },
    /// The machine keeps no such config version (never recorded, or older than the last
    /// [`crate::MAX_CONFIG_VERSIONS`]).
    #[error("machine {id} has no config version {version} (it keeps versions {kept})")]
    NoConfigVersion {
        /// The machine.
        id: MachineId,
        /// The version asked for.
        version: u64,
        /// The versions it keeps, e.g. `3..=7`.
        kept: String,
    },
    /// The machine already has an operation in flight.
    #[error("machine {id} is busy with operation {op}")]
    Busy {
        /// The machine.
        id: MachineId,
        /// The operation in flight.
        op: u64,
    },
    /// No operation with this id is in flight.
    #[error("operation {0} not found")]
    OperationNotFound(u64),
    /// A step name that is not in the operation's plan.
    #[error("operation {op} has no step {step:?}")]
    UnknownStep {
        /// The operation.
        op: u64,
        /// The step asked for.
        step: String,
    },
    /// A stored record that fails to decode.
    #[error("corrupt record in table {table} at key {key}: {reason}")]
    Corrupt {
        /// Table name.
        table: &'static str,
        /// Key, rendered.
        key: String,
        /// What failed.
        reason: String,
    },
    /// The file was written by a newer or unknown schema; it was not modified.
    #[error(
        "{path}: schema version {found} is newer than this berth supports ({supported}); \
         the file was left untouched — run a newer berth or restore a backup"
    )]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// The version found.
        found: u32,
        /// The newest version this build knows.
        supported: u32,
    },
    /// The file is a redb database but not a berth one, or its schema marker is unreadable.
    #[error("{path} is not a berth database ({reason}); the file was left untouched")]
    NotBerth {
        /// The database file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The file cannot be trusted; it was left exactly as found.
    #[error(
        "{path} is damaged and cannot be trusted ({reason}); the file was left untouched — \
         restore it from a backup (see runbooks/db-compaction.md)"
    )]
    Damaged {
        /// The database file.
        path: PathBuf,
        /// What was found.
        reason: String,
    },
    /// The history's verification after open has not finished yet (compaction waits for it).
    #[error("the database's history is still being verified after open; try again in a minute")]
    Verifying,
    /// The verification of the history after open found a record or page that cannot be read
    /// back as written: every write is refused from then on (reads still work).
    #[error(
        "{path} is damaged ({reason}), found by the verification of its history after open; \
         writes are refused and the file is kept as it is — restore it from a backup (see \
         runbooks/db-compaction.md, \"Restore from the backup\")"
    )]
    HistoryDamaged {
        /// The database file.
        path: PathBuf,
        /// What was found, naming table and key.
        reason: String,
    },
    /// The file was not closed cleanly and reading it needs redb's repair, which writes to it; an
    /// offline command refuses that unless asked.
    #[error(
        "{path} was not closed cleanly (berthd crashed or was killed) and needs repair, which \
         writes to it; the file was left untouched — start berthd (it repairs safely, keeping a \
         copy aside) or run `berth db check --offline --repair`"
    )]
    NeedsRepair {
        /// The database file.
        path: PathBuf,
    },
    /// Another process holds the database.
    #[error("{path} is held by another process (is another berthd running on this data dir?)")]
    Locked {
        /// The database file.
        path: PathBuf,
    },
    /// A compaction is already running; only one runs at a time.
    #[error("a compaction is already running (started {started}); wait for it or join it")]
    CompactionRunning {
        /// When the running one started (RFC 3339).
        started: String,
    },
    /// Not enough free disk space for the compacted copy; nothing was changed.
    #[error(
        "not enough free space in {dir} to compact: the copy needs about {needed} bytes \
         (live data plus a reserve) and {available} are available; free space or compact offline \
         onto another disk (see runbooks/db-compaction.md)"
    )]
    NoSpace {
        /// The data directory.
        dir: PathBuf,
        /// Bytes the compaction needs.
        needed: u64,
        /// Bytes free for an unprivileged writer.
        available: u64,
    },
    /// The events asked for were removed by retention: the consumer must resync.
    #[error(
        "events after seq {after} are no longer kept (the oldest kept is {oldest}); resync: \
         list the machines, then follow the stream from the current last seq"
    )]
    Expired {
        /// What the consumer asked for.
        after: u64,
        /// The oldest seq still in the log.
        oldest: u64,
    },
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
    /// A commit failed recently; writes are refused until the store has reopened the database
    /// and the retry backoff has passed (a full disk: free space and writes resume by themselves).
    #[error(
        "the database refuses writes for now after a failed commit ({0}); it reopens the file and \
         retries by itself — if the disk is full, free space"
    )]
    Poisoned(String),
    /// A commit failed; the write was not acknowledged.
    #[error("commit failed, write not applied: {0}")]
    CommitFailed(String),
    /// An error from redb.
    #[error("database error during {op}: {source}")]
    Db {
        /// What the store was doing.
        op: &'static str,
        /// redb's error.
        source: Box<redb::Error>,
    },
    /// An I/O error outside redb.
    #[error("{context}: {source}")]
    Io {
        /// What the store was doing.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

impl StoreError {
    /// A closure mapping any redb error to [`StoreError::Db`] tagged with `op`.
    pub(crate) fn db<E: Into<redb::Error>>(op: &'static str) -> impl FnOnce(E) -> StoreError {
        move |e| StoreError::Db {
            op,
            source: Box::new(e.into()),
        }
    }

    /// A closure mapping an I/O error to [`StoreError::Io`] with context.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
        let context = context.into();
        move |source| StoreError::Io { context, source }
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Overloaded { .. })
    }
}

/// Result alias for the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
