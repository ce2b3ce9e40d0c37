//! Online backup: a consistent copy of one read snapshot, written to a new file while writers
//! carry on.

use crate::Store;
use crate::error::{Result, StoreError};
use crate::schema::TABLES;

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

/// Rows per durable commit of a backup's copy: the copy's dirty pages reach the disk a chunk at a
/// time instead of piling up in memory until one commit at the end.
pub(crate) const BACKUP_CHUNK_ROWS: u64 = 4_096;
/// The backup file's page cache: what the copy holds in memory, whatever the database's size.
pub(crate) const BACKUP_CACHE_BYTES: usize = 8 << 20;

/// [`Store::backup_to`] over one read transaction; `dest` must not exist. A backup that fails
/// leaves no file behind.
pub(crate) fn backup_of(txn: &redb::ReadTransaction, dest: &std::path::Path) -> Result<u64> {
    let out = redb::Builder::new()
        .set_cache_size(BACKUP_CACHE_BYTES)
        .create(dest)
        .map_err(StoreError::db("backup"))?;
    let copied = TABLES.iter().try_fold(0u64, |rows, table| {
        Ok::<_, StoreError>(rows + table.copy(txn, &out, BACKUP_CHUNK_ROWS, "backup", &mut |_| {})?)
    });
    drop(out);
    if copied.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    copied
}
