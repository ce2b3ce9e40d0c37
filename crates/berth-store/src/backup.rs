//! Online backup: a consistent copy of one read snapshot, written to a new file while writers
//! carry on.

use redb::ReadableTable;

use crate::Store;
use crate::error::{Result, StoreError};
use crate::read::open_ro;
use crate::schema::{EVENTS, HISTORY, MACHINES, META, OPERATIONS};

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

    /// Writes a consistent copy of the database, as of one read snapshot, to a new file at
    /// `dest` (which must not exist). Writers are not paused: this is how berth backs up online.
    pub fn backup_to(&self, dest: &std::path::Path) -> Result<u64> {
        self.guard_read(
            || "every table (backup)".into(),
            || self.backup_to_unguarded(dest),
        )
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
