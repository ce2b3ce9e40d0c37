//! The single writer: group commit over a bounded queue.
//!
//! Every write is a closure over a [`WriteCtx`]. Callers enqueue closures with `try_send` (a full
//! queue is an immediate [`StoreError::Overloaded`]); one OS thread drains whatever is queued, runs
//! each closure in turn inside one redb write transaction, commits with `Durability::Immediate`,
//! and only then answers every caller in the batch.
//!
//! A closure's writes are staged in the context and applied to the transaction only if the
//! closure returns `Ok`, so a refused write (illegal transition, unknown machine) changes nothing
//! while the rest of its batch commits. Later closures in a batch see earlier ones' writes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use berth_types::{
    Event, EventKind, ExitInfo, MachineId, MachineRecord, OpKind, OperationRecord, Source, State,
    StepRecord, Timestamp,
};
use redb::{Database, ReadableDatabase, ReadableTable, Table};
use tokio::sync::{mpsc, oneshot};

use crate::codec;
use crate::error::{Result, StoreError};
use crate::schema::{
    self, EVENTS, HISTORY, KEY_HISTORY_SEQ, KEY_NEXT_OP, KEY_NEXT_SEQ, MACHINES, META, OPERATIONS,
};
use crate::timing::Timings;

/// A job the writer runs: applies its closure, later learns whether the commit succeeded.
pub(crate) trait Job: Send {
    /// Runs the closure against the batch. An `Err` here means the transaction itself is broken.
    fn apply(&mut self, ctx: &mut WriteCtx<'_, '_>) -> Result<()>;
    /// Answers the caller once the batch's fate is known.
    fn finish(self: Box<Self>, committed: Result<(), &StoreError>);
}

pub(crate) struct TypedJob<T, F> {
    pub f: Option<F>,
    pub out: Option<Result<T>>,
    pub reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Job for TypedJob<T, F>
where
    T: Send + 'static,
    F: FnOnce(&mut WriteCtx<'_, '_>) -> Result<T> + Send + 'static,
{
    fn apply(&mut self, ctx: &mut WriteCtx<'_, '_>) -> Result<()> {
        let Some(f) = self.f.take() else {
            return Ok(());
        };
        ctx.begin_job();
        let out = f(ctx);
        match &out {
            Ok(_) => ctx.flush_staged()?,
            Err(_) => ctx.discard_staged(),
        }
        self.out = Some(out);
        Ok(())
    }

    fn finish(self: Box<Self>, committed: Result<(), &StoreError>) {
        let answer = match committed {
            Ok(()) => self.out.unwrap_or(Err(StoreError::Closed)),
            Err(e) => Err(StoreError::CommitFailed(e.to_string())),
        };
        // The caller may have given up waiting; nothing to do then.
        let _ = self.reply.send(answer);
    }
}

pub(crate) type BoxedJob = Box<dyn Job>;

/// What the writer's queue carries: writes, and (rarely) work the store itself needs done on the
/// writer thread between commits, such as the steps of an online compaction.
pub(crate) enum Msg {
    Job(BoxedJob),
    Control(Box<dyn FnOnce(&mut Writer) + Send>),
}

/// Keys written since tracking was switched on: what an online compaction must copy again.
/// Recording an extra key is harmless (the copy re-reads it from a later snapshot); missing one
/// would lose a write, so every insert and remove in the writer records its key.
#[derive(Debug, Default)]
pub(crate) struct Dirty {
    pub enabled: bool,
    pub machines: BTreeSet<String>,
    pub events: BTreeSet<u64>,
    pub operations: BTreeSet<u64>,
    pub history: BTreeSet<(String, u64)>,
}

impl Dirty {
    pub fn len(&self) -> usize {
        self.machines.len() + self.events.len() + self.operations.len() + self.history.len()
    }

    /// Hands over what was recorded; tracking stays as it was.
    pub fn take(&mut self) -> Dirty {
        let enabled = self.enabled;
        let out = std::mem::take(self);
        self.enabled = enabled;
        out
    }

    pub fn machine(&mut self, id: &str) {
        if self.enabled {
            self.machines.insert(id.to_owned());
        }
    }
    pub fn event(&mut self, seq: u64) {
        if self.enabled {
            self.events.insert(seq);
        }
    }
    pub fn operation(&mut self, id: u64) {
        if self.enabled {
            self.operations.insert(id);
        }
    }
    pub fn history(&mut self, id: &str, version: u64) {
        if self.enabled {
            self.history.insert((id.to_owned(), version));
        }
    }
}

/// Open tables of the batch's write transaction.
pub(crate) struct Tables<'txn> {
    pub(crate) machines: Table<'txn, &'static str, &'static [u8]>,
    pub(crate) events: Table<'txn, u64, &'static [u8]>,
    pub(crate) operations: Table<'txn, u64, &'static [u8]>,
}

/// What one closure has written, not yet applied to the transaction.
#[derive(Default)]
struct Staged {
    machines: BTreeMap<MachineId, MachineRecord>,
    events: Vec<Event>,
    operations: BTreeMap<u64, Option<OperationRecord>>,
    meta: Vec<(&'static str, Vec<u8>)>,
    removals: Vec<Removal>,
    next_seq: u64,
    next_op_id: u64,
}

/// A row retention removes.
#[derive(Debug)]
pub(crate) enum Removal {
    Machine(MachineId),
    History(MachineId, u64),
    Event(u64),
}

/// A transition to record.
#[derive(Debug, Clone)]
pub struct TransitionSpec {
    /// Target state.
    pub to: State,
    /// Event type.
    pub kind: EventKind,
    /// Who caused it.
    pub source: Source,
    /// Why.
    pub reason: String,
    /// The workload's pid after the transition.
    pub pid: Option<u32>,
    /// Exit details, when caused by an exit.
    pub exit: Option<ExitInfo>,
    /// Refuse unless the machine is at this version.
    pub expect_version: Option<u64>,
}

impl TransitionSpec {
    /// A transition to `to` with no pid, exit or version check.
    pub fn new(to: State, kind: EventKind, source: Source, reason: impl Into<String>) -> Self {
        Self {
            to,
            kind,
            source,
            reason: reason.into(),
            pid: None,
            exit: None,
            expect_version: None,
        }
    }

    /// Sets the pid the machine has after the transition.
    pub fn with_pid(mut self, pid: Option<u32>) -> Self {
        self.pid = pid;
        self
    }

    /// Attaches exit details.
    pub fn with_exit(mut self, exit: ExitInfo) -> Self {
        self.exit = Some(exit);
        self
    }

    /// Requires the machine to be at `version`.
    pub fn expecting(mut self, version: u64) -> Self {
        self.expect_version = Some(version);
        self
    }
}

/// The view a write closure gets: typed reads and writes that keep the store's invariants.
///
/// Invariants it maintains: every transition is legal by [`State::can_transition_to`]; each
/// transition bumps the machine's version by one and appends history row `(id, version)` and one
/// event with the next `seq`, all in the same transaction as the record change.
pub struct WriteCtx<'a, 'txn> {
    pub(crate) tables: &'a mut Tables<'txn>,
    pub(crate) txn: &'a redb::WriteTransaction,
    pub(crate) dirty: &'a mut Dirty,
    pub(crate) cache: &'a mut HashMap<MachineId, MachineRecord>,
    pub(crate) admission: &'a mut crate::admission::AdmissionIndex,
    staged: Staged,
    committed_seq: u64,
    committed_op_id: u64,
    now: Timestamp,
    pub(crate) bytes: usize,
    /// History rows of the events this batch committed, for the writer to materialize.
    new_history: Vec<HistoryRow>,
}

/// A history row waiting to be materialized into the `history` table.
pub(crate) struct HistoryRow {
    machine_id: MachineId,
    version: u64,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for WriteCtx<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteCtx")
            .field("next_seq", &self.staged.next_seq)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

impl<'a, 'txn> WriteCtx<'a, 'txn> {
    fn begin_job(&mut self) {
        self.staged = Staged {
            next_seq: self.committed_seq,
            next_op_id: self.committed_op_id,
            ..Staged::default()
        };
    }

    fn discard_staged(&mut self) {
        self.staged = Staged::default();
    }

    fn flush_staged(&mut self) -> Result<()> {
        let staged = std::mem::take(&mut self.staged);
        if self.cache.len() > MAX_CACHED_RECORDS {
            self.cache.clear();
        }
        for (id, rec) in staged.machines {
            let bytes = codec::encode(&rec);
            self.bytes += bytes.len();
            self.tables
                .machines
                .insert(id.as_str(), bytes.as_slice())
                .map_err(StoreError::db("write machine"))?;
            self.dirty.machine(id.as_str());
            self.admission.observe(&rec);
            self.cache.insert(id, rec);
        }
        for ev in staged.events {
            let bytes = codec::encode(&ev);
            self.bytes += bytes.len();
            self.tables
                .events
                .insert(ev.seq, bytes.as_slice())
                .map_err(StoreError::db("write event"))?;
            self.dirty.event(ev.seq);
            self.new_history.push(HistoryRow {
                machine_id: ev.machine_id,
                version: ev.version,
                bytes,
            });
        }
        for (id, op) in &staged.operations {
            self.dirty.operation(*id);
            match op {
                Some(op) => {
                    let bytes = codec::encode(op);
                    self.bytes += bytes.len();
                    self.tables
                        .operations
                        .insert(*id, bytes.as_slice())
                        .map_err(StoreError::db("write operation"))?;
                }
                None => {
                    self.tables
                        .operations
                        .remove(*id)
                        .map_err(StoreError::db("remove operation"))?;
                }
            }
        }
        if !staged.removals.is_empty() {
            let mut history = self
                .txn
                .open_table(HISTORY)
                .map_err(StoreError::db("open history"))?;
            for r in &staged.removals {
                match r {
                    Removal::Machine(id) => {
                        self.tables
                            .machines
                            .remove(id.as_str())
                            .map_err(StoreError::db("remove machine"))?;
                        self.cache.remove(id);
                        self.admission.forget(id);
                        self.dirty.machine(id.as_str());
                    }
                    Removal::History(id, version) => {
                        history
                            .remove((id.as_str(), *version))
                            .map_err(StoreError::db("remove history"))?;
                        self.dirty.history(id.as_str(), *version);
                    }
                    Removal::Event(seq) => {
                        self.tables
                            .events
                            .remove(*seq)
                            .map_err(StoreError::db("remove event"))?;
                        self.dirty.event(*seq);
                    }
                }
            }
        }
        if !staged.meta.is_empty() {
            let mut meta = self
                .txn
                .open_table(META)
                .map_err(StoreError::db("write meta"))?;
            for (k, v) in &staged.meta {
                meta.insert(*k, v.as_slice())
                    .map_err(StoreError::db("write meta"))?;
            }
        }
        self.committed_seq = staged.next_seq;
        self.committed_op_id = staged.next_op_id;
        Ok(())
    }

    /// Stages the removal of a row (retention).
    pub(crate) fn remove(&mut self, r: Removal) {
        self.staged.removals.push(r);
    }

    /// Sets a `meta` key (the store's own bookkeeping, e.g. the last compaction's report).
    pub(crate) fn put_meta(&mut self, key: &'static str, value: Vec<u8>) {
        self.staged.meta.push((key, value));
    }

    /// The commit time shared by every write in the batch.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// The machine as this closure sees it (including its own staged writes).
    pub fn machine(&self, id: &MachineId) -> Result<Option<MachineRecord>> {
        if let Some(rec) = self.staged.machines.get(id) {
            return Ok(Some(rec.clone()));
        }
        if let Some(rec) = self.cache.get(id) {
            return Ok(Some(rec.clone()));
        }
        let Some(v) = self
            .tables
            .machines
            .get(id.as_str())
            .map_err(StoreError::db("read machine"))?
        else {
            return Ok(None);
        };
        decode_at("machines", id, v.value()).map(Some)
    }

    fn machine_required(&self, id: &MachineId) -> Result<MachineRecord> {
        self.machine(id)?
            .ok_or_else(|| StoreError::NotFound(id.clone()))
    }

    fn push_event(
        &mut self,
        rec: &mut MachineRecord,
        from: Option<State>,
        spec: TransitionSpec,
    ) -> Event {
        let ev = Event {
            seq: self.staged.next_seq,
            machine_id: rec.id.clone(),
            version: rec.version + 1,
            kind: spec.kind,
            from,
            to: spec.to,
            source: spec.source,
            at: self.now,
            reason: spec.reason,
            pid: spec.pid,
            exit: spec.exit,
        };
        self.staged.next_seq += 1;
        rec.apply(&ev);
        self.staged.events.push(ev.clone());
        ev
    }

    /// Records a new machine in `created` state with its creation event.
    pub fn create_machine(
        &mut self,
        mut rec: MachineRecord,
        source: Source,
        reason: &str,
    ) -> Result<Event> {
        if self.machine(&rec.id)?.is_some() {
            return Err(StoreError::AlreadyExists(rec.id));
        }
        rec.state = State::Created;
        rec.version = 0;
        rec.created_at = self.now;
        rec.pid = None;
        rec.exit = None;
        rec.restarts = 0;
        rec.active_op = None;
        let spec = TransitionSpec::new(State::Created, EventKind::Create, source, reason);
        let ev = self.push_event(&mut rec, None, spec);
        self.staged.machines.insert(rec.id.clone(), rec);
        Ok(ev)
    }

    /// Records a transition, refusing an illegal one or a version mismatch.
    pub fn transition(&mut self, id: &MachineId, spec: TransitionSpec) -> Result<Event> {
        let mut rec = self.machine_required(id)?;
        if let Some(expected) = spec.expect_version
            && expected != rec.version
        {
            return Err(StoreError::VersionMismatch {
                id: id.clone(),
                expected,
                actual: rec.version,
            });
        }
        rec.state
            .transition(spec.to)
            .map_err(|source| StoreError::IllegalTransition {
                id: id.clone(),
                source,
            })?;
        let from = rec.state;
        let ev = self.push_event(&mut rec, Some(from), spec);
        self.staged.machines.insert(id.clone(), rec);
        Ok(ev)
    }

    /// Replaces a machine's metadata (no transition, no version change).
    pub fn set_metadata(
        &mut self,
        id: &MachineId,
        metadata: BTreeMap<String, String>,
    ) -> Result<MachineRecord> {
        let mut rec = self.machine_required(id)?;
        rec.metadata = metadata;
        self.staged.machines.insert(id.clone(), rec.clone());
        Ok(rec)
    }

    /// An operation in flight, as this closure sees it.
    pub fn operation(&self, op_id: u64) -> Result<Option<OperationRecord>> {
        if let Some(op) = self.staged.operations.get(&op_id) {
            return Ok(op.clone());
        }
        let Some(v) = self
            .tables
            .operations
            .get(op_id)
            .map_err(StoreError::db("read operation"))?
        else {
            return Ok(None);
        };
        decode_at("operations", op_id, v.value()).map(Some)
    }

    /// Records a new operation on a machine; refused while another is in flight on it.
    pub fn begin_operation(
        &mut self,
        machine_id: &MachineId,
        kind: OpKind,
        source: Source,
        params: berth_types::OpParams,
        steps: &[&str],
    ) -> Result<OperationRecord> {
        let mut rec = self.machine_required(machine_id)?;
        if let Some(op) = rec.active_op {
            return Err(StoreError::Busy {
                id: machine_id.clone(),
                op,
            });
        }
        let op = OperationRecord {
            id: self.staged.next_op_id,
            machine_id: machine_id.clone(),
            kind,
            source,
            params,
            steps: steps
                .iter()
                .map(|s| StepRecord {
                    name: (*s).to_owned(),
                    done_at: None,
                })
                .collect(),
            created_at: self.now,
            resumes: 0,
        };
        self.staged.next_op_id += 1;
        rec.active_op = Some(op.id);
        self.staged.machines.insert(machine_id.clone(), rec);
        self.staged.operations.insert(op.id, Some(op.clone()));
        Ok(op)
    }

    /// Marks a step done (idempotent: a step already done stays as it was).
    pub fn complete_step(&mut self, op_id: u64, step: &str) -> Result<OperationRecord> {
        let mut op = self
            .operation(op_id)?
            .ok_or(StoreError::OperationNotFound(op_id))?;
        let now = self.now;
        let s = op
            .steps
            .iter_mut()
            .find(|s| s.name == step)
            .ok_or_else(|| StoreError::UnknownStep {
                op: op_id,
                step: step.to_owned(),
            })?;
        if s.done_at.is_none() {
            s.done_at = Some(now);
        }
        self.staged.operations.insert(op_id, Some(op.clone()));
        Ok(op)
    }

    /// Counts a resumption after restart.
    pub fn note_resumed(&mut self, op_id: u64) -> Result<OperationRecord> {
        let mut op = self
            .operation(op_id)?
            .ok_or(StoreError::OperationNotFound(op_id))?;
        op.resumes += 1;
        self.staged.operations.insert(op_id, Some(op.clone()));
        Ok(op)
    }

    /// Removes a finished (or abandoned) operation and frees its machine for the next one.
    pub fn finish_operation(&mut self, op_id: u64) -> Result<()> {
        let op = self
            .operation(op_id)?
            .ok_or(StoreError::OperationNotFound(op_id))?;
        if let Some(mut rec) = self.machine(&op.machine_id)?
            && rec.active_op == Some(op_id)
        {
            rec.active_op = None;
            self.staged.machines.insert(rec.id.clone(), rec);
        }
        self.staged.operations.insert(op_id, None);
        Ok(())
    }
}

pub(crate) fn decode_at<T: serde::de::DeserializeOwned>(
    table: &'static str,
    key: impl std::fmt::Display,
    bytes: &[u8],
) -> Result<T> {
    codec::decode(bytes).map_err(|reason| StoreError::Corrupt {
        table,
        key: key.to_string(),
        reason,
    })
}

/// Counters the writer keeps, readable from any thread.
#[derive(Debug, Default)]
pub(crate) struct WriterCounters {
    pub commits: AtomicU64,
    pub writes: AtomicU64,
}

/// State the writer thread owns.
pub(crate) struct Writer {
    pub db: Arc<Database>,
    pub rx: mpsc::Receiver<Msg>,
    pub max_batch: usize,
    pub commit_delay: Duration,
    pub timings: Timings,
    pub poisoned: Arc<AtomicBool>,
    pub counters: Arc<WriterCounters>,
    /// The last committed seq, published after each commit (for long-polls).
    pub seq_tx: tokio::sync::watch::Sender<u64>,
    pub next_seq: u64,
    pub next_op_id: u64,
    pub indexer: Indexer,
    /// Shared with readers: where a compaction's swap publishes the new database.
    pub slot: crate::DbSlot,
    /// Keys written while an online compaction is copying the file.
    pub dirty: Dirty,
    /// Decoded machine records as last committed: the writer is the only writer, so it can skip
    /// reading and decoding a record it already holds.
    pub cache: HashMap<MachineId, MachineRecord>,
    /// Live machines, their names and recent Idempotency-Keys (`admission.rs`).
    pub admission: crate::admission::AdmissionIndex,
    /// What a failed commit needs to recover (see [`Recovery`]).
    pub recovery: Recovery,
}

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
const RECOVERY_BACKOFF_MIN: Duration = Duration::from_millis(50);
const RECOVERY_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long a reopen waits for readers of the failed handle to finish.
const REOPEN_READERS_WAIT: Duration = Duration::from_secs(2);

/// The writer's record cache is dropped when it grows past this (a host runs far fewer).
const MAX_CACHED_RECORDS: usize = 100_000;

/// A new generation of the history index starts at least this often...
const HISTORY_FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// ...or when this many rows wait (bounding the writer's memory and a history read's log scan).
const HISTORY_FLUSH_ROWS: usize = 2048;
/// Rows written per commit while a generation is in progress (whole machines at a time), so the
/// cost is spread over several commits instead of stalling one.
const HISTORY_SLICE_ROWS: usize = 256;

/// Materializes the `history` index from the event log.
///
/// Committed events wait in `pending`. Every [`HISTORY_FLUSH_INTERVAL`] (or
/// [`HISTORY_FLUSH_ROWS`] rows) they become a *generation*, sorted by (machine, version), which
/// later commits write a slice at a time, each slice holding whole machines, so that the rows
/// of a machine in the index are always a prefix of its history. When the last slice is written,
/// the `history_seq` watermark moves to the generation's last seq in the same transaction.
/// Writing many rows per machine at once touches each machine's leaf once per generation rather
/// than once per transition: that is what makes group commit cheap for many machines.
#[derive(Default)]
pub(crate) struct Indexer {
    pending: Vec<HistoryRow>,
    generation: std::collections::VecDeque<HistoryRow>,
    generation_through: u64,
    last_generation: Option<Instant>,
}

impl Indexer {
    /// Runs inside a commit, after its writes: takes the batch's new rows, maybe starts a
    /// generation, and writes the next slice. `through` is the last seq this commit holds.
    fn work(
        &mut self,
        txn: &redb::WriteTransaction,
        dirty: &mut Dirty,
        new_rows: Vec<HistoryRow>,
        through: u64,
    ) -> Result<usize> {
        self.pending.extend(new_rows);
        let due = self.pending.len() >= HISTORY_FLUSH_ROWS
            || self
                .last_generation
                .is_none_or(|t| t.elapsed() >= HISTORY_FLUSH_INTERVAL);
        if self.generation.is_empty() && !self.pending.is_empty() && due {
            let mut rows = std::mem::take(&mut self.pending);
            rows.sort_unstable_by(|a, b| {
                (&a.machine_id, a.version).cmp(&(&b.machine_id, b.version))
            });
            self.generation = rows.into();
            self.generation_through = through;
        }
        if self.generation.is_empty() {
            return Ok(0);
        }
        let mut history = txn
            .open_table(HISTORY)
            .map_err(StoreError::db("open history"))?;
        let mut written = 0;
        while let Some(row) = self.generation.front() {
            let boundary = self
                .generation
                .get(1)
                .is_none_or(|next| next.machine_id != row.machine_id);
            history
                .insert((row.machine_id.as_str(), row.version), row.bytes.as_slice())
                .map_err(StoreError::db("write history"))?;
            dirty.history(row.machine_id.as_str(), row.version);
            self.generation.pop_front();
            written += 1;
            if boundary && written >= HISTORY_SLICE_ROWS {
                break;
            }
        }
        if self.generation.is_empty() {
            set_watermark(txn, self.generation_through)?;
            self.last_generation = Some(Instant::now());
        }
        Ok(written)
    }

    /// Writes everything outstanding (at shutdown).
    fn finish(
        &mut self,
        txn: &redb::WriteTransaction,
        dirty: &mut Dirty,
        through: u64,
    ) -> Result<()> {
        let mut rows: Vec<HistoryRow> = self.generation.drain(..).collect();
        rows.append(&mut self.pending);
        for row in &rows {
            dirty.history(row.machine_id.as_str(), row.version);
        }
        materialize(txn, rows, through)
    }

    fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.generation.is_empty()
    }
}

fn set_watermark(txn: &redb::WriteTransaction, through: u64) -> Result<()> {
    let mut meta = txn.open_table(META).map_err(StoreError::db("write meta"))?;
    meta.insert(KEY_HISTORY_SEQ, through.to_le_bytes().as_slice())
        .map_err(StoreError::db("write meta"))?;
    Ok(())
}

/// Writes history rows and moves the watermark: every event with `seq <= through` has its row.
fn materialize(
    txn: &redb::WriteTransaction,
    mut rows: Vec<HistoryRow>,
    through: u64,
) -> Result<()> {
    rows.sort_unstable_by(|a, b| (&a.machine_id, a.version).cmp(&(&b.machine_id, b.version)));
    let mut history = txn
        .open_table(HISTORY)
        .map_err(StoreError::db("open history"))?;
    for row in &rows {
        history
            .insert((row.machine_id.as_str(), row.version), row.bytes.as_slice())
            .map_err(StoreError::db("write history"))?;
    }
    set_watermark(txn, through)
}

/// The history rows of every event above the watermark, read in one snapshot, and the last seq.
fn pending_history(db: &Database) -> Result<(Vec<HistoryRow>, u64)> {
    let what = "read pending history";
    let txn = db.begin_read().map_err(StoreError::db(what))?;
    let meta = txn.open_table(META).map_err(StoreError::db(what))?;
    let events = txn.open_table(EVENTS).map_err(StoreError::db(what))?;
    rows_above_watermark(&meta, &events, what)
}

/// The history rows of every event above `meta`'s watermark, and the last seq (the watermark when
/// there is none), from the tables of a read or a write transaction.
fn rows_above_watermark(
    meta: &impl redb::ReadableTable<&'static str, &'static [u8]>,
    events: &impl redb::ReadableTable<u64, &'static [u8]>,
    what: &'static str,
) -> Result<(Vec<HistoryRow>, u64)> {
    let watermark = schema::read_u64(meta, KEY_HISTORY_SEQ)?.unwrap_or(0);
    let mut rows = Vec::new();
    let mut last = watermark;
    for entry in events
        .range(watermark.saturating_add(1)..)
        .map_err(StoreError::db(what))?
    {
        let (k, v) = entry.map_err(StoreError::db(what))?;
        let ev: Event = decode_at("events", k.value(), v.value())?;
        last = k.value();
        rows.push(HistoryRow {
            machine_id: ev.machine_id,
            version: ev.version,
            bytes: v.value().to_vec(),
        });
    }
    Ok((rows, last))
}

/// At open: materializes every event above the watermark (left by a crash), in one durable
/// transaction, so the writer starts with nothing pending.
pub(crate) fn catch_up_history(db: &Database) -> Result<usize> {
    let txn = db
        .begin_write()
        .map_err(StoreError::db("catch up history"))?;
    let rows = {
        let what = "catch up history";
        let meta = txn.open_table(META).map_err(StoreError::db(what))?;
        let events = txn.open_table(EVENTS).map_err(StoreError::db(what))?;
        rows_above_watermark(&meta, &events, what)?
    };
    let (rows, last) = rows;
    let n = rows.len();
    if n == 0 {
        txn.abort().map_err(StoreError::db("catch up history"))?;
        return Ok(0);
    }
    materialize(&txn, rows, last)?;
    txn.commit().map_err(StoreError::db("catch up history"))?;
    Ok(n)
}

impl Writer {
    /// Reads the counters the writer continues from.
    pub fn load_counters(db: &Database) -> Result<(u64, u64)> {
        let txn = db.begin_read().map_err(StoreError::db("load counters"))?;
        let meta = txn
            .open_table(META)
            .map_err(StoreError::db("load counters"))?;
        let mut next_seq = schema::read_u64(&meta, KEY_NEXT_SEQ)?.unwrap_or(1);
        // Belt and braces: never reuse a seq that is in the log, whatever meta says.
        let events = txn
            .open_table(EVENTS)
            .map_err(StoreError::db("load counters"))?;
        if let Some((k, _)) = events.last().map_err(StoreError::db("load counters"))? {
            next_seq = next_seq.max(k.value() + 1);
        }
        let mut next_op = schema::read_u64(&meta, KEY_NEXT_OP)?.unwrap_or(1);
        let ops = txn
            .open_table(OPERATIONS)
            .map_err(StoreError::db("load counters"))?;
        if let Some((k, _)) = ops.last().map_err(StoreError::db("load counters"))? {
            next_op = next_op.max(k.value() + 1);
        }
        Ok((next_seq, next_op))
    }

    /// The writer loop: runs until every sender is gone.
    pub fn run(mut self) {
        let mut batch: Vec<BoxedJob> = Vec::with_capacity(self.max_batch);
        while let Some(first) = self.rx.blocking_recv() {
            let mut control = None;
            match first {
                Msg::Job(job) => batch.push(job),
                Msg::Control(f) => control = Some(f),
            }
            while control.is_none() && batch.len() < self.max_batch {
                match self.rx.try_recv() {
                    Ok(Msg::Job(job)) => batch.push(job),
                    Ok(Msg::Control(f)) => control = Some(f),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                // A control message runs after the writes queued before it are committed.
                if let Some(f) = control {
                    f(&mut self);
                }
                continue;
            }
            if let Some(reason) = self.refuse_while_recovering() {
                let err = StoreError::Poisoned(reason);
                for job in batch.drain(..) {
                    job.finish(Err(&err));
                }
                if let Some(f) = control {
                    f(&mut self);
                }
                continue;
            }
            let result = self.commit(&mut batch);
            match &result {
                Err(e) => {
                    tracing::error!(error = %e, writes = batch.len(), "database commit failed; writes are refused while the store reopens the database and retries");
                    self.poisoned.store(true, Ordering::Release);
                }
                Ok(()) => {
                    if self.poisoned.swap(false, Ordering::AcqRel) {
                        tracing::info!("database commits succeed again; the store has recovered");
                    }
                    self.recovery.backoff = RECOVERY_BACKOFF_MIN;
                    self.recovery.retry_at = None;
                }
            }
            let outcome = result.as_ref().map(|_| ());
            for job in batch.drain(..) {
                job.finish(outcome);
            }
            if result.is_err() {
                self.after_failed_commit();
            }
            if let Some(f) = control {
                f(&mut self);
            }
        }
        // Every handle is gone: materialize what is pending so a clean shutdown leaves the
        // history index complete (a crash leaves it to `catch_up_history` at the next open).
        if !self.indexer.is_idle() && !self.poisoned.load(Ordering::Acquire) {
            let through = self.next_seq - 1;
            let indexer = &mut self.indexer;
            let result = self
                .db
                .begin_write()
                .map_err(StoreError::db("flush history"))
                .and_then(|txn| {
                    indexer.finish(&txn, &mut self.dirty, through)?;
                    txn.commit().map_err(StoreError::db("flush history"))
                });
            if let Err(e) = result {
                tracing::error!(error = %e, "could not flush the history index at shutdown; it is rebuilt at the next open");
            }
        }
    }

    /// Whether a batch must be refused now, and why: the database still needs reopening (and the
    /// reopen fails), or the retry backoff after a failed commit has not passed.
    fn refuse_while_recovering(&mut self) -> Option<String> {
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
    fn after_failed_commit(&mut self) {
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

    fn commit(&mut self, batch: &mut [BoxedJob]) -> Result<()> {
        let start = self.timings.start();
        let mut txn = self
            .db
            .begin_write()
            .map_err(StoreError::db("begin write"))?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(StoreError::db("set durability"))?;
        let bytes;
        let new_history;
        let (next_seq, next_op_id) = {
            let mut tables = Tables {
                machines: txn
                    .open_table(MACHINES)
                    .map_err(StoreError::db("open machines"))?,
                events: txn
                    .open_table(EVENTS)
                    .map_err(StoreError::db("open events"))?,
                operations: txn
                    .open_table(OPERATIONS)
                    .map_err(StoreError::db("open operations"))?,
            };
            let mut ctx = WriteCtx {
                tables: &mut tables,
                txn: &txn,
                dirty: &mut self.dirty,
                cache: &mut self.cache,
                admission: &mut self.admission,
                staged: Staged::default(),
                committed_seq: self.next_seq,
                committed_op_id: self.next_op_id,
                now: Timestamp::now(),
                bytes: 0,
                new_history: Vec::new(),
            };
            for job in batch.iter_mut() {
                job.apply(&mut ctx)?;
            }
            bytes = ctx.bytes;
            new_history = std::mem::take(&mut ctx.new_history);
            (ctx.committed_seq, ctx.committed_op_id)
        };
        // What the batch did, for the slow-op log line (only formatted when it is slow).
        let transitions = new_history.len();
        let first_machine = new_history.first().map(|r| r.machine_id.clone());
        let indexed = self
            .indexer
            .work(&txn, &mut self.dirty, new_history, next_seq - 1)?;
        // The next seq follows from the log's last key, so a commit that only adds events leaves
        // meta alone (one table fewer to write per commit). Operation ids are not derivable (a
        // finished operation is deleted), so they are written whenever one is allocated.
        if next_op_id != self.next_op_id {
            let mut meta = txn.open_table(META).map_err(StoreError::db("write meta"))?;
            meta.insert(KEY_NEXT_SEQ, next_seq.to_le_bytes().as_slice())
                .map_err(StoreError::db("write meta"))?;
            meta.insert(KEY_NEXT_OP, next_op_id.to_le_bytes().as_slice())
                .map_err(StoreError::db("write meta"))?;
        }
        if !self.commit_delay.is_zero() {
            std::thread::sleep(self.commit_delay);
        }
        txn.commit().map_err(StoreError::db("commit"))?;
        self.next_seq = next_seq;
        self.next_op_id = next_op_id;
        let n = batch.len();
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        self.seq_tx.send_replace(next_seq - 1);
        self.counters.writes.fetch_add(n as u64, Ordering::Relaxed);
        let delay = self.commit_delay;
        self.timings.finish("commit", start, n, bytes, || {
            let mut d = format!(
                "group commit of {n} writes: {transitions} transitions recorded, {indexed} history index rows written, {bytes} bytes of records"
            );
            if let Some(m) = first_machine {
                d.push_str(&format!(" (first machine {m})"));
            }
            if !delay.is_zero() {
                d.push_str(&format!("; includes the injected fault.db_delay of {delay:?}"));
            }
            d
        });
        Ok(())
    }
}
