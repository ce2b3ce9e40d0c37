//! Typed reads: each one a redb read transaction on the caller's thread, timed by name. Reads
//! never wait for the writer; they see the last committed batch. (The consistency check is in
//! `check.rs`, sizes in `stats.rs`, backups in `backup.rs`.)

use berth_types::{ConfigVersion, Event, MachineId, MachineRecord, OperationRecord};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::Store;
use crate::codec::decode_at;
use crate::error::{Result, StoreError};
use crate::schema::{CONFIG_VERSIONS, EVENTS, HISTORY, MACHINES, META, OPERATIONS};

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

/// Just enough of an event to filter the log by machine without building the whole event.
#[derive(serde::Deserialize)]
struct EventHead {
    machine_id: String,
    version: u64,
}

/// Every event with `seq <=` this has its row in the `history` table.
pub(crate) fn history_watermark(txn: &redb::ReadTransaction) -> Result<u64> {
    let meta = open_ro(txn, META, "history watermark")?;
    Ok(crate::schema::read_u64(&meta, crate::schema::KEY_HISTORY_SEQ)?.unwrap_or(0))
}

/// Opens a table of `txn`. A table (or a range over it) must not outlive the [`Snapshot`] it
/// came from: the snapshot is what keeps a compaction from giving back the file it reads.
pub(crate) fn open_ro<K: redb::Key + 'static, V: redb::Value + 'static>(
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

    /// Every machine, in id order, decoded one at a time and handed to `f` inside one read
    /// snapshot: a pass over ten thousand machines holds one record at a time, not all of them.
    /// `f` returns `false` to stop early.
    fn each_machine_unguarded(&self, f: &mut dyn FnMut(MachineRecord) -> bool) -> Result<usize> {
        let start = self.inner.timings.start();
        let txn = self.read_txn("list_machines")?;
        let table = open_ro(&txn, MACHINES, "list_machines")?;
        let mut n = 0;
        for entry in table.iter().map_err(StoreError::db("list_machines"))? {
            let (k, v) = entry.map_err(StoreError::db("list_machines"))?;
            n += 1;
            if !f(decode_at("machines", k.value(), v.value())?) {
                break;
            }
        }
        self.inner.timings.finish("list_machines", start, n, 0, || {
            format!("visit {n} machines")
        });
        Ok(n)
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

    /// A machine's config versions, newest first (the record's current one, then the older
    /// ones kept), from one snapshot; `None` for an unknown machine.
    fn config_versions_unguarded(&self, id: &MachineId) -> Result<Option<Vec<ConfigVersion>>> {
        let start = self.inner.timings.start();
        let txn = self.read_txn("config_versions")?;
        let machines = open_ro(&txn, MACHINES, "config_versions")?;
        let Some(v) = machines
            .get(id.as_str())
            .map_err(StoreError::db("config_versions"))?
        else {
            return Ok(None);
        };
        let rec: MachineRecord = decode_at("machines", id, v.value())?;
        let mut out = vec![rec.current_config()];
        let table = open_ro(&txn, CONFIG_VERSIONS, "config_versions")?;
        let range = (id.as_str(), 0u64)..=(id.as_str(), u64::MAX);
        for entry in table
            .range(range)
            .map_err(StoreError::db("config_versions"))?
            .rev()
        {
            let (k, v) = entry.map_err(StoreError::db("config_versions"))?;
            let (m, ver) = k.value();
            out.push(decode_at(
                "config_versions",
                format!("({m}, {ver})"),
                v.value(),
            )?);
        }
        let n = out.len();
        self.inner
            .timings
            .finish("config_versions", start, n, 0, || {
                format!("config versions of {id}: {n}")
            });
        Ok(Some(out))
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
}

/// The public reads: each runs its read with redb's panics caught. A damaged page can make redb
/// panic while it walks a tree; that is reported as [`StoreError::Damaged`] naming what was being
/// read, never a panic in the caller.
impl Store {
    pub(crate) fn guard_read<T>(
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

    /// Every machine, in id order, handed to `f` one at a time in one read snapshot (`f` returns
    /// `false` to stop); the number visited. What a pass over every machine uses instead of
    /// [`Store::machines`], whose `Vec` of every record is the largest allocation of a start on a
    /// host with ten thousand machines.
    pub fn each_machine(&self, mut f: impl FnMut(MachineRecord) -> bool) -> Result<usize> {
        self.guard_read(
            || "table machines".into(),
            || self.each_machine_unguarded(&mut f),
        )
    }

    /// A machine's history, oldest first (empty if the machine is unknown). The `history` index
    /// is merged with the event log above its watermark, in the same snapshot.
    pub fn history(&self, id: &MachineId) -> Result<Vec<Event>> {
        self.guard_read(
            || format!("tables history and events for machine {id}"),
            || self.history_unguarded(id),
        )
    }

    /// A machine's config versions, newest first: the current one (the record's), then the
    /// older ones kept (at most [`crate::MAX_CONFIG_VERSIONS`] in all); `None` for an unknown
    /// machine.
    pub fn config_versions(&self, id: &MachineId) -> Result<Option<Vec<ConfigVersion>>> {
        self.guard_read(
            || format!("tables machines and config_versions for machine {id}"),
            || self.config_versions_unguarded(id),
        )
    }

    /// Up to `limit` host-wide events with `seq > after`, oldest first: from the writer's ring
    /// of recent events when it holds them all (no read transaction, nothing decoded), else
    /// from the table.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        let recent = self
            .inner
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .after(after, limit);
        if let Some(events) = recent {
            return Ok(events);
        }
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
}
