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

mod ctx;
mod dirty;
mod history;
mod recovery;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use berth_types::{MachineId, MachineRecord};
use redb::{Database, ReadableDatabase, ReadableTable};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Result, StoreError};
use crate::schema::{self, EVENTS, KEY_NEXT_OP, KEY_NEXT_SEQ, META, OPERATIONS};
use crate::timing::Timings;

pub(crate) use ctx::{BatchOutcome, Removal, Tables};
pub use ctx::{ConfigChange, TransitionSpec, WriteCtx};
pub(crate) use dirty::Dirty;
pub(crate) use history::{Indexer, catch_up_history};
pub(crate) use recovery::{RECOVERY_BACKOFF_MIN, Recovery};

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
    Control(Control),
}

/// Work run on the writer thread between two commits.
pub(crate) type Control = Box<dyn FnOnce(&mut Writer) + Send>;

/// Counters the writer keeps, readable from any thread.
#[derive(Debug, Default)]
pub(crate) struct WriterCounters {
    pub commits: AtomicU64,
    pub writes: AtomicU64,
    /// Wall-clock nanoseconds when the last commit became durable (set before its seq is
    /// published), for an exporter's stage timing.
    pub last_commit_nanos: AtomicU64,
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
    /// The last commits' events, for readers (`recent.rs`); filled before `seq_tx` is sent.
    pub recent: Arc<std::sync::Mutex<crate::recent::RecentEvents>>,
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
            let control = self.gather(first, &mut batch);
            if !batch.is_empty() {
                self.commit_batch(&mut batch);
            }
            // A control message runs after the writes queued before it are committed.
            if let Some(f) = control {
                f(&mut self);
            }
        }
        self.flush_history_at_shutdown();
    }

    /// Takes what is queued after `first` into `batch`, up to the batch limit or the first
    /// control message (returned: it runs after the batch).
    fn gather(&mut self, first: Msg, batch: &mut Vec<BoxedJob>) -> Option<Control> {
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
        control
    }

    /// Commits `batch` (or refuses it while recovering) and answers every caller in it.
    fn commit_batch(&mut self, batch: &mut Vec<BoxedJob>) {
        if let Some(reason) = self.refuse_while_recovering() {
            let err = StoreError::Poisoned(reason);
            for job in batch.drain(..) {
                job.finish(Err(&err));
            }
            return;
        }
        let result = self.commit(batch);
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
            self.recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clear();
            self.after_failed_commit();
        }
    }

    /// Every handle is gone: materialize what is pending so a clean shutdown leaves the history
    /// index complete (a crash leaves it to `catch_up_history` at the next open).
    fn flush_history_at_shutdown(&mut self) {
        if self.indexer.is_idle() || self.poisoned.load(Ordering::Acquire) {
            return;
        }
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

    fn commit(&mut self, batch: &mut [BoxedJob]) -> Result<()> {
        let start = self.timings.start();
        let mut txn = self
            .db
            .begin_write()
            .map_err(StoreError::db("begin write"))?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(StoreError::db("set durability"))?;
        let outcome = {
            let mut tables = Tables::open(&txn)?;
            let mut ctx = WriteCtx::new(
                &mut tables,
                &txn,
                &mut self.dirty,
                &mut self.cache,
                &mut self.admission,
                self.next_seq,
                self.next_op_id,
            );
            for job in batch.iter_mut() {
                job.apply(&mut ctx)?;
            }
            ctx.into_outcome()
        };
        let BatchOutcome {
            next_seq,
            next_op_id,
            new_history,
            new_events,
            events_removed_through,
            bytes,
        } = outcome;
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
        self.counters
            .last_commit_nanos
            .store(berth_types::Timestamp::now().as_nanos(), Ordering::Release);
        {
            let mut recent = self
                .recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(seq) = events_removed_through {
                recent.forget_through(seq);
            }
            recent.append(new_events);
        }
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
