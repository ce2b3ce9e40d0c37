//! Sizes and row counts of the database file: [`Store::stats`] and the offline equivalent.

use std::collections::BTreeMap;

use redb::ReadableTable;
use serde::Serialize;

use crate::Store;
use crate::error::{Result, StoreError};
use crate::read::{history_watermark, open_ro};
use crate::schema::{EVENTS, META, TABLES};

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

impl Store {
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

    /// File size, bytes in use and rows per table.
    pub fn stats(&self) -> Result<StoreStats> {
        self.guard_read(|| "every table (stats)".into(), || self.stats_unguarded())
    }
}

/// [`Store::stats`] over one read transaction (no compaction progress: that is the store's).
pub(crate) fn stats_of(txn: &redb::ReadTransaction, path: &std::path::Path) -> Result<StoreStats> {
    {
        let (file_size_bytes, file_allocated_bytes) = crate::compact::file_sizes(path)?;
        let mut tables = BTreeMap::new();
        let mut live_bytes = 0u64;
        for table in TABLES {
            let (rows, live) = table.rows_and_live_bytes(txn)?;
            tables.insert(table.name().to_owned(), rows);
            live_bytes += live;
        }
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
