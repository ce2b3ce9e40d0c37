//! The history indexer: materializes the `history` table from the event log in bulk generations,
//! a slice per commit, behind the `history_seq` watermark.

use std::time::{Duration, Instant};

use berth_types::{Event, MachineId};
use redb::{Database, ReadableDatabase};

use super::dirty::Dirty;
use crate::codec::decode_at;
use crate::error::{Result, StoreError};
use crate::schema::{self, EVENTS, HISTORY, KEY_HISTORY_SEQ, META};

/// A history row waiting to be materialized into the `history` table.
pub(crate) struct HistoryRow {
    pub(crate) machine_id: MachineId,
    pub(crate) version: u64,
    pub(crate) bytes: Vec<u8>,
}

/// A new generation of the history index starts at most this often (unless rows pile up)...
/// At 50 ms, a host placing 10 machines a second wrote the `history` table and the watermark
/// in `meta` with every commit; at 250 ms, one commit in about three (agents' CPU per event
/// under `bench fleet` ~6% lower). A history read merges the log above the watermark, so it
/// sees every event either way; only the rows it scans grow, within `HISTORY_FLUSH_ROWS`.
const HISTORY_FLUSH_INTERVAL: Duration = Duration::from_millis(250);
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
    pub(super) pending: Vec<HistoryRow>,
    generation: std::collections::VecDeque<HistoryRow>,
    generation_through: u64,
    last_generation: Option<Instant>,
}

impl Indexer {
    /// Runs inside a commit, after its writes: takes the batch's new rows, maybe starts a
    /// generation, and writes the next slice. `through` is the last seq this commit holds.
    pub(super) fn work(
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
    pub(super) fn finish(
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

    pub(super) fn is_idle(&self) -> bool {
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
pub(super) fn materialize(
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
pub(super) fn pending_history(db: &Database) -> Result<(Vec<HistoryRow>, u64)> {
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
