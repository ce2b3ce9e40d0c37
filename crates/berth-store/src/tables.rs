//! What can be done to any table of the schema, generically over its key type, so that the code
//! which goes over *every* table (creating a fresh file, the checksum walk of the safe open,
//! stats, backups, compaction's copy) walks the one list, [`crate::schema::TABLES`], and a new
//! table cannot be added to some of those places and forgotten in others.

use redb::{
    Database, Key, ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition,
    TableError, TableHandle, WriteTransaction,
};

use std::sync::atomic::{AtomicBool, Ordering};

use crate::codec;
use crate::error::{Result, StoreError};

/// A table of the schema, as listed in [`crate::schema::TABLES`].
pub(crate) trait AnyTable: Sync {
    /// Its name in the file.
    fn name(&self) -> &str;

    /// Creates it (empty) if the file does not have it yet.
    fn create(&self, txn: &WriteTransaction) -> Result<()>;

    /// Its rows and the bytes redb reports for it (stored + metadata + fragmentation).
    fn rows_and_live_bytes(&self, txn: &ReadTransaction) -> Result<(u64, u64)>;

    /// Whether it is history (append-only, most of the file): verified in the background after
    /// open rather than before it (see `verify.rs`).
    fn is_history(&self) -> bool;

    /// Decodes every value that is a codec record (meta's raw integers are not), checking its
    /// CRC; a table the file lacks passes. Returns the records checked, or `None` if `stop` was
    /// set before the walk finished.
    fn verify_records(
        &self,
        txn: &ReadTransaction,
        stop: &AtomicBool,
    ) -> std::result::Result<Option<u64>, String>;

    /// Writes every row of `src` into `dst`'s table, in `dst`'s transaction.
    fn copy_into(
        &self,
        src: &ReadTransaction,
        dst: &WriteTransaction,
        what: &'static str,
    ) -> Result<()>;

    /// Copies every row of `src` into `dst`, `chunk_rows` rows per durable commit (so the
    /// copy's dirty pages never pile up in memory), calling `progress` with the rows of each
    /// commit. `what` names the operation in errors.
    fn copy(
        &self,
        src: &ReadTransaction,
        dst: &Database,
        chunk_rows: u64,
        what: &'static str,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64>;
}

/// A table whose values are bytes, keyed by `K`.
pub(crate) struct Table<K: Key + 'static> {
    def: TableDefinition<'static, K, &'static [u8]>,
    /// Whether its values are codec records.
    records: bool,
    /// Whether it is history.
    history: bool,
}

impl<K: Key + 'static> Table<K> {
    /// A table of codec records.
    pub(crate) const fn records(def: TableDefinition<'static, K, &'static [u8]>) -> Self {
        Self {
            def,
            records: true,
            history: false,
        }
    }

    /// A table of codec records that is history.
    pub(crate) const fn history(def: TableDefinition<'static, K, &'static [u8]>) -> Self {
        Self {
            def,
            records: true,
            history: true,
        }
    }

    /// A table of raw values (meta).
    pub(crate) const fn raw(def: TableDefinition<'static, K, &'static [u8]>) -> Self {
        Self {
            def,
            records: false,
            history: false,
        }
    }
}

impl<K: Key + Sync + 'static> AnyTable for Table<K> {
    fn name(&self) -> &str {
        self.def.name()
    }

    fn create(&self, txn: &WriteTransaction) -> Result<()> {
        txn.open_table(self.def).map_err(StoreError::db("init"))?;
        Ok(())
    }

    fn rows_and_live_bytes(&self, txn: &ReadTransaction) -> Result<(u64, u64)> {
        let t = txn.open_table(self.def).map_err(StoreError::db("stats"))?;
        let rows = t.len().map_err(StoreError::db("stats"))?;
        let s = t.stats().map_err(StoreError::db("stats"))?;
        Ok((
            rows,
            s.stored_bytes() + s.metadata_bytes() + s.fragmented_bytes(),
        ))
    }

    fn is_history(&self) -> bool {
        self.history
    }

    fn verify_records(
        &self,
        txn: &ReadTransaction,
        stop: &AtomicBool,
    ) -> std::result::Result<Option<u64>, String> {
        if !self.records {
            return Ok(Some(0));
        }
        let name = self.name();
        let table = match txn.open_table(self.def) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Some(0)),
            Err(e) => return Err(format!("table {name}: {e}")),
        };
        let mut n = 0;
        for entry in table.iter().map_err(|e| format!("table {name}: {e}"))? {
            if stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let (k, v) = entry.map_err(|e| format!("table {name}: {e}"))?;
            codec::decode::<serde::de::IgnoredAny>(v.value()).map_err(|r| {
                format!("corrupt record in table {name} at key {:?}: {r}", k.value())
            })?;
            n += 1;
        }
        Ok(Some(n))
    }

    fn copy_into(
        &self,
        src: &ReadTransaction,
        dst: &WriteTransaction,
        what: &'static str,
    ) -> Result<()> {
        let from = src.open_table(self.def).map_err(StoreError::db(what))?;
        let mut to = dst.open_table(self.def).map_err(StoreError::db(what))?;
        for entry in from.iter().map_err(StoreError::db(what))? {
            let (k, v) = entry.map_err(StoreError::db(what))?;
            to.insert(k.value(), v.value())
                .map_err(StoreError::db(what))?;
        }
        Ok(())
    }

    fn copy(
        &self,
        src: &ReadTransaction,
        dst: &Database,
        chunk_rows: u64,
        what: &'static str,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64> {
        let table = src.open_table(self.def).map_err(StoreError::db(what))?;
        let mut iter = table.iter().map_err(StoreError::db(what))?;
        let mut rows = 0u64;
        loop {
            let mut txn = dst.begin_write().map_err(StoreError::db(what))?;
            txn.set_durability(redb::Durability::Immediate)
                .map_err(StoreError::db(what))?;
            let mut n = 0u64;
            {
                let mut t = txn.open_table(self.def).map_err(StoreError::db(what))?;
                for entry in iter.by_ref() {
                    let (k, v) = entry.map_err(StoreError::db(what))?;
                    t.insert(k.value(), v.value())
                        .map_err(StoreError::db(what))?;
                    n += 1;
                    if n >= chunk_rows {
                        break;
                    }
                }
            }
            txn.commit().map_err(StoreError::db(what))?;
            rows += n;
            progress(n);
            if n < chunk_rows {
                return Ok(rows);
            }
        }
    }
}
