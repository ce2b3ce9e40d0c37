//! Reads: each one a redb read transaction on the caller's thread, timed by name. Reads never wait
//! for the writer; they see the last committed batch.

use std::collections::BTreeMap;

use berth_types::{Event, MachineId, MachineRecord, OperationRecord};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::Serialize;

use crate::Store;
use crate::codec::decode_at;
use crate::error::{Result, StoreError};
use crate::schema::{EVENTS, HISTORY, MACHINES, META, OPERATIONS};

/// A read transaction together with the database it reads. Holding the `Arc` is what tells a
/// compaction that replaced this database when its last reader is gone, and only then does it
/// give the old file's blocks back (see `compact::release_old_file`).
pub(crate) struct Snapshot {
    // Declared first: dropped before the database it reads.
    txn: redb::ReadTransaction,
    _db: std::sync::Arc<redb::Database>,
}

impl std::ops::Deref for Snapshot {
    type Target = redb::ReadTransaction;
    fn deref(&self) -> &redb::ReadTransaction {
        &self.txn
    }
}

/// Sizes and row counts.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoreStats {
    /// The file's length (`ls -l`).
    pub file_size_bytes: u64,
    /// The bytes of the file that hold data rather than holes: the disk it occupies, before any
    /// compression. redb extends its file sparsely, doubling it when it runs out of pages, so
    /// right after a compaction or a growth step the length can be up to twice this; the
    /// unwritten tail is neither data nor garbage.
    pub file_allocated_bytes: u64,
    /// Bytes redb reports as holding data (stored + metadata + fragmentation inside pages).
    pub live_bytes: u64,
    /// Rows per table.
    pub tables: BTreeMap<String, u64>,
    /// The next event seq to be assigned.
    pub next_seq: u64,
    /// Every event up to this seq has its row in the `history` index; later ones are read from
    /// the log until the writer materializes them.
    pub history_seq: u64,
    /// The lowest seq still in the event log (retention removes older ones).
    pub first_seq: Option<u64>,
    /// The last online compaction that finished.
    pub last_compaction: Option<crate::CompactionReport>,
    /// The compaction running now.
    pub compaction: Option<crate::CompactionProgress>,
}

impl StoreStats {
    /// The bytes of the file that hold written pages ([`Self::file_allocated_bytes`]), at least
    /// the live bytes and at most the length. (Below the live bytes it cannot be, short of pages
    /// not yet written back; the garbage ratio then reads 0, never the length's reservation.)
    pub fn used_bytes(&self) -> u64 {
        self.file_allocated_bytes
            .max(self.live_bytes)
            .min(self.file_size_bytes.max(self.live_bytes))
    }

    /// `1 - live/used`: the share of the file's written pages that is garbage (freed pages and
    /// slack), what a compaction would give back. The sparse tail redb reserves when it grows
    /// is not counted: compacting cannot reclaim it, and counting it would make a freshly
    /// compacted file look half garbage.
    pub fn garbage_ratio(&self) -> f64 {
        let used = self.used_bytes();
        if used == 0 {
            0.0
        } else {
            1.0 - (self.live_bytes as f64 / used as f64).min(1.0)
        }
    }
}

/// What [`Store::check`] found.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CheckReport {
    /// Machines examined.
    pub machines: u64,
    /// Events examined.
    pub events: u64,
    /// Lowest and highest seq in the event log.
    pub seq_range: Option<(u64, u64)>,
    /// Operations in flight.
    pub operations: u64,
    /// Every invariant violation found; empty means healthy.
    pub problems: Vec<String>,
}

impl CheckReport {
    /// Whether no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Just enough of an event to filter the log by machine without building the whole event.
#[derive(serde::Deserialize)]
struct EventHead {
    machine_id: String,
    version: u64,
}

/// Every event with `seq <=` this has its row in the `history` table.
fn history_watermark(txn: &redb::ReadTransaction) -> Result<u64> {
    let meta = open_ro(txn, META, "history watermark")?;
    Ok(crate::schema::read_u64(&meta, crate::schema::KEY_HISTORY_SEQ)?.unwrap_or(0))
}

/// Opens a table of `txn`. A table (or a range over it) must not outlive the [`Snapshot`] it
/// came from: the snapshot is what keeps a compaction from giving back the file it reads.
fn open_ro<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    def: TableDefinition<K, V>,
    op: &'static str,
) -> Result<redb::ReadOnlyTable<K, V>> {
    txn.open_table(def).map_err(StoreError::db(op))
}

impl Store {
    pub(crate) fn read_txn(&self, op: &'static str) -> Result<Snapshot> {
        let db = self.db();
        let txn = db.begin_read().map_err(StoreError::db(op))?;
        Ok(Snapshot { txn, _db: db })
    }

    /// One machine, if it exists.
    fn machine_unguarded(&self, id: &MachineId) -> Result<Option<MachineRecord>> {
        let start = self.inner.timings.start();
        let txn = self.read_txn("get_machine")?;
        let table = open_ro(&txn, MACHINES, "get_machine")?;
        let rec = match table
            .get(id.as_str())
            .map_err(StoreError::db("get_machine"))?
        {
            Some(v) => Some(decode_at("machines", id, v.value())?),
            None => None,
        };
        self.inner
            .timings
            .finish("get_machine", start, 1, 0, || format!("get machine {id}"));
        Ok(rec)
    }

    /// Every machine, in id order.
    fn machines_unguarded(&self) -> Result<Vec<MachineRecord>> {
        let start = self.inner.timings.start();
        let txn = self.read_txn("list_machines")?;
        let table = open_ro(&txn, MACHINES, "list_machines")?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(StoreError::db("list_machines"))? {
            let (k, v) = entry.map_err(StoreError::db("list_machines"))?;
            out.push(decode_at("machines", k.value(), v.value())?);
        }
        let n = out.len();
        self.inner.timings.finish("list_machines", start, n, 0, || {
            format!("list {n} machines")
        });
        Ok(out)
    }

    /// A machine's history, oldest first (empty if the machine is unknown).
    ///
    /// The `history` table is an index the writer materializes from the event log in bulk; events
    /// above its `history_seq` watermark are read from the log, in the same snapshot.
    fn history_unguarded(&self, id: &MachineId) -> Result<Vec<Event>> {
        let start = self.inner.timings.start();
        let txn = self.read_txn("history")?;
        let table = open_ro(&txn, HISTORY, "history")?;
        let mut out: Vec<Event> = Vec::new();
        let range = (id.as_str(), 0u64)..=(id.as_str(), u64::MAX);
        for entry in table.range(range).map_err(StoreError::db("history"))? {
            let (k, v) = entry.map_err(StoreError::db("history"))?;
            let (m, ver) = k.value();
            out.push(decode_at("history", format!("({m}, {ver})"), v.value())?);
        }
        let watermark = history_watermark(&txn)?;
        let events = open_ro(&txn, EVENTS, "history")?;
        for entry in events
            .range(watermark.saturating_add(1)..)
            .map_err(StoreError::db("history"))?
        {
            let (k, v) = entry.map_err(StoreError::db("history"))?;
            let head: EventHead = decode_at("events", k.value(), v.value())?;
            // Rows of a machine in the index are a prefix of its history: take from the log only
            // what comes after it.
            if head.machine_id == id.as_str()
                && out.last().is_none_or(|last| head.version > last.version)
            {
                out.push(decode_at("events", k.value(), v.value())?);
            }
        }
        let n = out.len();
        self.inner.timings.finish("history", start, n, 0, || {
            format!("history of {id}: {n} rows")
        });
        Ok(out)
    }

    /// Up to `limit` host-wide events with `seq > after`, oldest first.
    fn events_after_unguarded(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        let start = self.inner.timings.start();
        let txn = self.read_txn("events")?;
        let table = open_ro(&txn, EVENTS, "events")?;
        if let Some(oldest) = crate::retention::first_seq(&table)?
            && after.saturating_add(1) < oldest
        {
            return Err(StoreError::Expired { after, oldest });
        }
        let mut out = Vec::new();
        for entry in table
            .range(after.saturating_add(1)..)
            .map_err(StoreError::db("events"))?
        {
            if out.len() >= limit {
                break;
            }
            let (k, v) = entry.map_err(StoreError::db("events"))?;
            out.push(decode_at("events", k.value(), v.value())?);
        }
        let n = out.len();
        self.inner.timings.finish("events", start, n, 0, || {
            format!("events after {after}: {n}")
        });
        Ok(out)
    }

    /// The highest seq committed so far (0 if none).
    fn last_seq_unguarded(&self) -> Result<u64> {
        let txn = self.read_txn("last_seq")?;
        let meta = open_ro(&txn, META, "last_seq")?;
        let events = open_ro(&txn, EVENTS, "last_seq")?;
        Ok(crate::schema::next_seq(&meta, &events)? - 1)
    }

    /// Operations in flight, oldest first: after a restart, the ones to resume.
    fn operations_unguarded(&self) -> Result<Vec<OperationRecord>> {
        let start = self.inner.timings.start();
        let txn = self.read_txn("operations")?;
        let table = open_ro(&txn, OPERATIONS, "operations")?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(StoreError::db("operations"))? {
            let (k, v) = entry.map_err(StoreError::db("operations"))?;
            out.push(decode_at("operations", k.value(), v.value())?);
        }
        let n = out.len();
        self.inner.timings.finish("operations", start, n, 0, || {
            format!("{n} operations in flight")
        });
        Ok(out)
    }

    /// Rows in the machines table (destroyed machines included until retention removes them);
    /// O(1), from redb's table header.
    pub fn machine_rows(&self) -> Result<u64> {
        let txn = self.read_txn("machine_rows")?;
        let table = open_ro(&txn, MACHINES, "machine_rows")?;
        table.len().map_err(StoreError::db("machine_rows"))
    }

    /// One operation in flight, if it still is.
    fn operation_unguarded(&self, op_id: u64) -> Result<Option<OperationRecord>> {
        let start = self.inner.timings.start();
        let txn = self.read_txn("operation")?;
        let table = open_ro(&txn, OPERATIONS, "operation")?;
        let op = match table.get(op_id).map_err(StoreError::db("operation"))? {
            Some(v) => Some(decode_at("operations", op_id, v.value())?),
            None => None,
        };
        self.inner
            .timings
            .finish("operation", start, 1, 0, || format!("operation {op_id}"));
        Ok(op)
    }

    /// File size, bytes in use and rows per table.
    fn stats_unguarded(&self) -> Result<StoreStats> {
        let start = self.inner.timings.start();
        let txn = self.read_txn("stats")?;
        let mut st = stats_of(&txn, &self.inner.path)?;
        st.compaction = self.compaction_progress();
        self.inner
            .timings
            .finish("stats", start, 0, 0, || "stats".into());
        Ok(st)
    }
}

/// [`Store::stats`] over one read transaction (no compaction progress: that is the store's).
pub(crate) fn stats_of(txn: &redb::ReadTransaction, path: &std::path::Path) -> Result<StoreStats> {
    {
        let (file_size_bytes, file_allocated_bytes) = crate::compact::file_sizes(path)?;
        let mut tables = BTreeMap::new();
        let mut live_bytes = 0u64;
        macro_rules! count {
            ($def:expr, $name:literal) => {{
                let t = open_ro(txn, $def, "stats")?;
                tables.insert($name.to_owned(), t.len().map_err(StoreError::db("stats"))?);
                let s = t.stats().map_err(StoreError::db("stats"))?;
                live_bytes += s.stored_bytes() + s.metadata_bytes() + s.fragmented_bytes();
            }};
        }
        count!(MACHINES, "machines");
        count!(HISTORY, "history");
        count!(EVENTS, "events");
        count!(OPERATIONS, "operations");
        count!(META, "meta");
        let meta = open_ro(txn, META, "stats")?;
        let next_seq = crate::schema::next_seq(&meta, &open_ro(txn, EVENTS, "stats")?)?;
        let history_seq = history_watermark(txn)?;
        let first_seq = open_ro(txn, EVENTS, "stats")?
            .first()
            .map_err(StoreError::db("stats"))?
            .map(|(k, _)| k.value());
        let last_compaction = match meta
            .get(crate::compact::KEY_LAST_COMPACTION)
            .map_err(StoreError::db("stats"))?
        {
            // A report this build cannot read is not worth failing stats over.
            Some(v) => serde_json::from_slice(v.value()).ok(),
            None => None,
        };
        Ok(StoreStats {
            file_size_bytes,
            file_allocated_bytes,
            live_bytes,
            tables,
            next_seq,
            history_seq,
            first_seq,
            last_compaction,
            compaction: None,
        })
    }
}

impl Store {
    /// Decodes every record and checks the cross-table invariants in one snapshot:
    /// keys match their records; the event log's seqs are contiguous and below `next_seq`; every
    /// event is the same as its history row; each machine's history is versions `1..=version`
    /// (or a contiguous suffix of them, where retention trimmed it) and, when complete, folds to
    /// the record; every operation in flight belongs to a machine that points back at it.
    fn check_unguarded(&self) -> Result<CheckReport> {
        let start = self.inner.timings.start();
        let txn = self.read_txn("check")?;
        let report = check_of(&txn)?;
        let n = report.machines + report.events;
        self.inner
            .timings
            .finish("check", start, n as usize, 0, || "consistency check".into());
        Ok(report)
    }
}

/// [`Store::check`] over one read transaction.
pub(crate) fn check_of(txn: &redb::ReadTransaction) -> Result<CheckReport> {
    {
        let mut report = CheckReport::default();
        let p = &mut report.problems;

        let meta = open_ro(txn, META, "check")?;
        let next_seq = crate::schema::next_seq(&meta, &open_ro(txn, EVENTS, "check")?)?;

        let history_t = open_ro(txn, HISTORY, "check")?;
        let mut histories: BTreeMap<String, Vec<Event>> = BTreeMap::new();
        for entry in history_t.iter().map_err(StoreError::db("check"))? {
            let (k, v) = entry.map_err(StoreError::db("check"))?;
            let (m, ver) = k.value();
            match decode_at::<Event>("history", format!("({m}, {ver})"), v.value()) {
                Ok(ev) => {
                    if ev.machine_id.as_str() != m || ev.version != ver {
                        p.push(format!(
                            "history ({m}, {ver}) holds event for ({}, {})",
                            ev.machine_id, ev.version
                        ));
                    }
                    histories.entry(m.to_owned()).or_default().push(ev);
                }
                Err(e) => p.push(e.to_string()),
            }
        }

        let watermark = history_watermark(txn)?;
        let mut machine_ids = std::collections::BTreeSet::new();
        for entry in open_ro(txn, MACHINES, "check")?
            .iter()
            .map_err(StoreError::db("check"))?
        {
            let (k, _) = entry.map_err(StoreError::db("check"))?;
            machine_ids.insert(k.value().to_owned());
        }
        // Where retention trimmed a history, its index rows start above version 1; an event of a
        // version below that (or of a machine retention removed whole) has no row, rightly.
        let first_indexed: BTreeMap<String, u64> = histories
            .iter()
            .filter_map(|(m, h)| h.first().map(|e| (m.clone(), e.version)))
            .collect();
        let events_t = open_ro(txn, EVENTS, "check")?;
        let mut prev: Option<u64> = None;
        for entry in events_t.iter().map_err(StoreError::db("check"))? {
            let (k, v) = entry.map_err(StoreError::db("check"))?;
            let seq = k.value();
            report.events += 1;
            if let Some(prev) = prev
                && seq != prev + 1
            {
                p.push(format!("event log gap: seq {prev} is followed by {seq}"));
            }
            report.seq_range = Some((report.seq_range.map_or(seq, |r| r.0), seq));
            prev = Some(seq);
            if seq >= next_seq {
                p.push(format!("event seq {seq} is not below next_seq {next_seq}"));
            }
            match decode_at::<Event>("events", seq, v.value()) {
                Ok(ev) => {
                    if ev.seq != seq {
                        p.push(format!("events[{seq}] holds seq {}", ev.seq));
                    }
                    let in_history = histories
                        .get(ev.machine_id.as_str())
                        .and_then(|h| h.iter().find(|h| h.version == ev.version));
                    match (seq <= watermark, in_history) {
                        (true, Some(h)) if *h != ev => {
                            p.push(format!("events[{seq}] differs from its history row"))
                        }
                        (true, None) => {
                            let m = ev.machine_id.as_str();
                            let trimmed = match first_indexed.get(m) {
                                Some(first) => ev.version < *first,
                                None => !machine_ids.contains(m),
                            };
                            if !trimmed {
                                p.push(format!(
                                    "events[{seq}] is below the history watermark {watermark} but has no history row"
                                ));
                            }
                        }
                        // Materialized by a generation still in progress.
                        (false, Some(h)) if *h != ev => {
                            p.push(format!("events[{seq}] differs from its history row"))
                        }
                        (false, Some(_)) => {}
                        // Not yet materialized: the log is this transition's history row.
                        (false, None) => histories
                            .entry(ev.machine_id.to_string())
                            .or_default()
                            .push(ev),
                        (true, Some(_)) => {}
                    }
                }
                Err(e) => p.push(e.to_string()),
            }
        }

        let machines_t = open_ro(txn, MACHINES, "check")?;
        let mut active_ops: BTreeMap<u64, String> = BTreeMap::new();
        for entry in machines_t.iter().map_err(StoreError::db("check"))? {
            let (k, v) = entry.map_err(StoreError::db("check"))?;
            let id = k.value();
            report.machines += 1;
            let rec: MachineRecord = match decode_at("machines", id, v.value()) {
                Ok(r) => r,
                Err(e) => {
                    p.push(e.to_string());
                    continue;
                }
            };
            if rec.id.as_str() != id {
                p.push(format!("machines[{id}] holds machine {}", rec.id));
            }
            if let Some(op) = rec.active_op {
                active_ops.insert(op, id.to_owned());
            }
            let history = histories.remove(id).unwrap_or_default();
            check_history(&rec, &history, p);
        }
        for (m, h) in &histories {
            if let Some(first) = h.first()
                && first.version == 1
            {
                // Complete history of a machine whose record is gone: only retention may do that.
                p.push(format!("history of {m} has no machine record"));
            }
        }

        let ops_t = open_ro(txn, OPERATIONS, "check")?;
        for entry in ops_t.iter().map_err(StoreError::db("check"))? {
            let (k, v) = entry.map_err(StoreError::db("check"))?;
            report.operations += 1;
            match decode_at::<OperationRecord>("operations", k.value(), v.value()) {
                Ok(op) => {
                    if active_ops.get(&op.id).map(String::as_str) != Some(op.machine_id.as_str()) {
                        p.push(format!(
                            "operation {} is not the active operation of machine {}",
                            op.id, op.machine_id
                        ));
                    }
                    active_ops.remove(&op.id);
                }
                Err(e) => p.push(e.to_string()),
            }
        }
        for (op, m) in active_ops {
            p.push(format!(
                "machine {m} points at operation {op}, which is not in flight"
            ));
        }
        Ok(report)
    }
}

fn check_history(rec: &MachineRecord, history: &[Event], p: &mut Vec<String>) {
    let Some(first) = history.first() else {
        // Retention removes a destroyed machine's history before its record.
        if rec.state != berth_types::State::Destroyed {
            p.push(format!("machine {} has no history", rec.id));
        }
        return;
    };
    for pair in history.windows(2) {
        if pair[1].version != pair[0].version + 1 {
            p.push(format!(
                "history of {} jumps from version {} to {}",
                rec.id, pair[0].version, pair[1].version
            ));
        }
        if pair[1].from != Some(pair[0].to) {
            p.push(format!(
                "history of {} version {} starts from {:?}, previous ended in {}",
                rec.id, pair[1].version, pair[1].from, pair[0].to
            ));
        }
    }
    for ev in history {
        if let Some(from) = ev.from
            && !from.can_transition_to(ev.to)
        {
            p.push(format!(
                "history of {} version {} is illegal: {from} → {}",
                rec.id, ev.version, ev.to
            ));
        }
    }
    let last = history.last().unwrap_or(first);
    if last.version != rec.version {
        p.push(format!(
            "machine {} is at version {} but its history ends at {}",
            rec.id, rec.version, last.version
        ));
    }
    if first.version == 1 {
        let mut folded = rec.clone();
        folded.state = berth_types::State::Created;
        folded.version = 0;
        folded.pid = None;
        folded.exit = None;
        folded.restarts = 0;
        for ev in history {
            folded.apply(ev);
        }
        if folded.history_view() != rec.history_view() {
            p.push(format!(
                "machine {} does not match the fold of its history: record {:?}, fold {:?}",
                rec.id,
                rec.history_view(),
                folded.history_view()
            ));
        }
    }
}

impl Store {
    /// Writes a consistent copy of the database, as of one read snapshot, to a new file at
    /// `dest` (which must not exist). Writers are not paused: this is how berth backs up online.
    fn backup_to_unguarded(&self, dest: &std::path::Path) -> Result<u64> {
        let start = self.inner.timings.start();
        if dest.exists() {
            return Err(StoreError::Io {
                context: format!("backup to {}", dest.display()),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "destination exists",
                ),
            });
        }
        let txn = self.read_txn("backup")?;
        let rows = backup_of(&txn, dest)?;
        self.inner
            .timings
            .finish("backup", start, rows as usize, 0, || {
                format!("backup of {rows} rows")
            });
        Ok(rows)
    }
}

/// [`Store::backup_to`] over one read transaction; `dest` must not exist.
pub(crate) fn backup_of(txn: &redb::ReadTransaction, dest: &std::path::Path) -> Result<u64> {
    {
        let out = redb::Database::create(dest).map_err(StoreError::db("backup"))?;
        let w = out.begin_write().map_err(StoreError::db("backup"))?;
        let mut rows = 0u64;
        macro_rules! copy {
            ($def:expr) => {{
                let src = open_ro(txn, $def, "backup")?;
                let mut dst = w.open_table($def).map_err(StoreError::db("backup"))?;
                for entry in src.iter().map_err(StoreError::db("backup"))? {
                    let (k, v) = entry.map_err(StoreError::db("backup"))?;
                    dst.insert(k.value(), v.value())
                        .map_err(StoreError::db("backup"))?;
                    rows += 1;
                }
            }};
        }
        copy!(META);
        copy!(MACHINES);
        copy!(HISTORY);
        copy!(EVENTS);
        copy!(OPERATIONS);
        w.commit().map_err(StoreError::db("backup"))?;
        drop(out);
        Ok(rows)
    }
}

/// The public reads: each runs its read with redb's panics caught. A damaged page can make redb
/// panic while it walks a tree; that is reported as [`StoreError::Damaged`] naming what was being
/// read, never a panic in the caller.
impl Store {
    fn guard_read<T>(
        &self,
        what: impl FnOnce() -> String,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        crate::schema::guarded(f).map_err(|panic| StoreError::Damaged {
            path: self.inner.path.clone(),
            reason: format!("redb panicked reading {}: {panic}", what()),
        })?
    }

    /// One machine, if it exists.
    pub fn machine(&self, id: &MachineId) -> Result<Option<MachineRecord>> {
        self.guard_read(
            || format!("table machines at key {id}"),
            || self.machine_unguarded(id),
        )
    }

    /// Every machine, in id order.
    pub fn machines(&self) -> Result<Vec<MachineRecord>> {
        self.guard_read(|| "table machines".into(), || self.machines_unguarded())
    }

    /// A machine's history, oldest first (empty if the machine is unknown). The `history` index
    /// is merged with the event log above its watermark, in the same snapshot.
    pub fn history(&self, id: &MachineId) -> Result<Vec<Event>> {
        self.guard_read(
            || format!("tables history and events for machine {id}"),
            || self.history_unguarded(id),
        )
    }

    /// Up to `limit` host-wide events with `seq > after`, oldest first.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        self.guard_read(
            || format!("table events after seq {after}"),
            || self.events_after_unguarded(after, limit),
        )
    }

    /// The highest seq committed so far (0 if none).
    pub fn last_seq(&self) -> Result<u64> {
        self.guard_read(
            || "tables meta and events (last seq)".into(),
            || self.last_seq_unguarded(),
        )
    }

    /// Operations in flight, oldest first: after a restart, the ones to resume.
    pub fn operations(&self) -> Result<Vec<OperationRecord>> {
        self.guard_read(|| "table operations".into(), || self.operations_unguarded())
    }

    /// One operation in flight, if it still is.
    pub fn operation(&self, op_id: u64) -> Result<Option<OperationRecord>> {
        self.guard_read(
            || format!("table operations at key {op_id}"),
            || self.operation_unguarded(op_id),
        )
    }

    /// File size, bytes in use and rows per table.
    pub fn stats(&self) -> Result<StoreStats> {
        self.guard_read(|| "every table (stats)".into(), || self.stats_unguarded())
    }

    /// Decodes every record and checks the cross-table invariants in one snapshot (see
    /// `check_of`). A redb error or panic while reading is reported as a problem, not an error.
    /// Page checksums are verified by [`Store::verify_pages`].
    pub fn check(&self) -> Result<CheckReport> {
        match self.guard_read(|| "every table (check)".into(), || self.check_unguarded()) {
            Ok(r) => Ok(r),
            Err(
                e @ (StoreError::Db { .. }
                | StoreError::Damaged { .. }
                | StoreError::Corrupt { .. }),
            ) => Ok(CheckReport {
                problems: vec![format!("reading the database failed: {e}")],
                ..CheckReport::default()
            }),
            Err(e) => Err(e),
        }
    }

    /// Writes a consistent copy of the database, as of one read snapshot, to a new file at
    /// `dest` (which must not exist). Writers are not paused: this is how berth backs up online.
    pub fn backup_to(&self, dest: &std::path::Path) -> Result<u64> {
        self.guard_read(
            || "every table (backup)".into(),
            || self.backup_to_unguarded(dest),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(file: u64, allocated: u64, live: u64) -> StoreStats {
        StoreStats {
            file_size_bytes: file,
            file_allocated_bytes: allocated,
            live_bytes: live,
            tables: BTreeMap::new(),
            next_seq: 1,
            history_seq: 0,
            first_seq: None,
            last_compaction: None,
            compaction: None,
        }
    }

    #[test]
    fn a_sparse_reservation_is_not_garbage() {
        // Just compacted: redb doubled the length, the disk holds the data.
        let s = stats(200 << 20, 100 << 20, 95 << 20);
        assert_eq!(s.used_bytes(), 100 << 20);
        assert!(
            (s.garbage_ratio() - 0.05).abs() < 1e-9,
            "{}",
            s.garbage_ratio()
        );
    }

    #[test]
    fn freed_pages_on_disk_are_garbage() {
        let s = stats(1024 << 20, 1024 << 20, 128 << 20);
        assert!((s.garbage_ratio() - 0.875).abs() < 1e-9);
    }

    #[test]
    fn data_below_the_live_bytes_is_not_read_as_garbage() {
        // Never the length's sparse reservation: that would re-trigger compaction.
        let s = stats(200 << 20, 0, 95 << 20);
        assert_eq!(s.used_bytes(), 95 << 20);
        assert_eq!(s.garbage_ratio(), 0.0);
        assert_eq!(stats(0, 0, 0).garbage_ratio(), 0.0);
    }

    #[test]
    fn holes_are_not_counted_as_data() {
        use std::io::{Seek, SeekFrom, Write};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&[1u8; 1 << 20]).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(32 << 20)).unwrap();
        f.write_all(&[2u8; 1 << 20]).unwrap();
        f.sync_all().unwrap();
        let (len, data) = crate::compact::file_sizes(&path).unwrap();
        assert_eq!(len, 64 << 20);
        // Filesystems allocate in blocks of up to a few KiB; without hole support all is data.
        assert!(
            (2 << 20..=(2 << 20) + (64 << 10)).contains(&data) || data == len,
            "{data}"
        );
    }
}
