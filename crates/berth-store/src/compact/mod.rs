//! Online compaction: the database file is rebuilt while the agent keeps reading and writing.
//!
//! redb's own `Database::compact` needs the database to itself, so it blocks every writer for its
//! whole run. berth instead builds a compacted copy beside the live file:
//!
//! 1. **Space**: refuses unless the file system has room for the live data plus a reserve.
//! 2. **Snapshot**: switches on dirty-key tracking in the writer between two commits, then opens
//!    a read snapshot. Every commit before the switch is in the snapshot; every later one has its
//!    keys recorded (a commit in between is in both, which is harmless: copies are idempotent).
//! 3. **Copy**: every table of the snapshot, in key order, into `<file>.compact`, in small durable
//!    commits, then shrunk with redb's own `compact()` (the copy is private). The writer keeps
//!    committing to the live file meanwhile.
//! 4. **Catch up**: takes the recorded keys (on the writer thread, between commits), opens a newer
//!    snapshot and copies those keys, or removes them where they are gone; repeats while rounds
//!    are large.
//! 5. **Swap**, on the writer thread — the only pause writers see: copies the last few keys,
//!    commits the copy durably, renames it over the live file, fsyncs the directory, and publishes
//!    the new database to readers. Readers still inside a snapshot of the old file finish on it.
//! 6. **Release**: once the last reader of the old file is gone, its blocks are freed a slice at
//!    a time, so no live commit's fsync waits behind one huge filesystem transaction.
//!
//! Crash safety: before the rename the live file is untouched and holds every acknowledged write
//! (the `.compact` leftover is deleted at the next open); the rename is atomic, and the new file
//! was durably committed, with every write acknowledged so far, before it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_types::Timestamp;
use redb::{Database, ReadTransaction, ReadableDatabase};
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use crate::schema::{CONFIG_VERSIONS, EVENTS, HISTORY, MACHINES, OPERATIONS, TABLES};
use crate::writer::{Dirty, Writer};
use crate::{Store, slot_get};

mod copy;
mod files;

use copy::{apply_dirty, copy_all, swap};
use files::{available_bytes, flush, hold_open, release_old_file, sync_dir};
pub(crate) use files::{file_sizes, remove_leftover, space_needed, tmp_path};

/// The meta key holding the last [`CompactionReport`] (JSON).
pub(crate) const KEY_LAST_COMPACTION: &str = "last_compaction";

/// Rows per bulk commit while copying. Each commit is durable: its few MiB reach the disk before
/// the next, so the copy never piles up dirty pages that a live commit's fsync would have to wait
/// behind (non-durable commits left them in redb's cache, written all at once by the shrink).
const COPY_CHUNK_ROWS: u64 = 8_192;
/// A catch-up round this small is left to the swap.
const SMALL_ROUND_KEYS: usize = 512;
/// Catch-up rounds before swapping regardless (a writer faster than the copy cannot starve it).
const MAX_ROUNDS: u32 = 16;
/// How long the compaction waits for reads of the old file to finish before it frees the file's
/// blocks gradually; past it, the last reader frees them when it finishes.
const OLD_READERS_WAIT: Duration = Duration::from_secs(30);
/// Free space the copy needs beyond the live data, as a fraction of it.
const SPACE_MARGIN: f64 = 0.2;
/// The old file is truncated this much at a time when its blocks are given back.
const RELEASE_SLICE_BYTES: u64 = 32 << 20;

/// What a finished compaction did (also kept in the database as the last compaction).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompactionReport {
    /// When it started.
    pub at: Timestamp,
    /// How long it took, from the start until the old file's space was given back.
    pub duration_ms: u64,
    /// File length before.
    pub size_before: u64,
    /// File length after (redb may already have extended the new file sparsely).
    pub size_after: u64,
    /// Disk space the file occupied before.
    #[serde(default)]
    pub allocated_before: u64,
    /// Disk space the file occupies after.
    #[serde(default)]
    pub allocated_after: u64,
    /// Live bytes before.
    pub live_bytes: u64,
    /// The longest time writers were paused (the swap).
    pub max_pause_ms: f64,
    /// Rows copied from the first snapshot.
    pub rows_copied: u64,
    /// Catch-up rounds before the swap.
    pub catch_up_rounds: u32,
    /// Keys copied again because they were written during the compaction.
    pub keys_caught_up: u64,
}

/// A compaction in progress, for stats and logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompactionProgress {
    /// When it started.
    pub started_at: Timestamp,
    /// `space`, `copy`, `catch-up` or `swap`.
    pub phase: String,
    /// Rows copied so far from the first snapshot.
    pub rows_copied: u64,
    /// Catch-up rounds so far.
    pub catch_up_rounds: u32,
}

/// How long a compaction waits for the history's verification after open.
const VERIFY_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

impl Store {
    /// Compacts the database online (see the module docs); blocks the calling thread until the
    /// swap is done. Fails with [`StoreError::CompactionRunning`] while another one runs and with
    /// [`StoreError::NoSpace`] when the copy would not fit; either way nothing changes.
    pub fn compact(&self) -> Result<CompactionReport> {
        // A copy of a file whose history is not yet verified could carry damage over and replace
        // the evidence: wait for the verification after open (seconds on a big file).
        match self.wait_verified(VERIFY_WAIT) {
            crate::Verification::Passed { .. } => {}
            crate::Verification::Failed { reason } => {
                return Err(StoreError::HistoryDamaged {
                    path: self.inner.path.clone(),
                    reason,
                });
            }
            crate::Verification::Running => {
                return Err(StoreError::Verifying);
            }
            crate::Verification::Stopped => return Err(StoreError::Closed),
        }
        let started_at = Timestamp::now();
        {
            let mut slot = self
                .inner
                .compaction
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(running) = slot.as_ref() {
                return Err(StoreError::CompactionRunning {
                    started: running.started_at.to_string(),
                });
            }
            *slot = Some(CompactionProgress {
                started_at,
                phase: "space".into(),
                rows_copied: 0,
                catch_up_rounds: 0,
            });
        }
        let tmp = tmp_path(&self.inner.path);
        let result = self.compact_inner(started_at, &tmp);
        if result.is_err() {
            // Stop tracking (it may still be on) and drop the partial copy; the live file is
            // untouched.
            let _ = self.control(|w| w.dirty = Dirty::default());
            if let Err(e) = std::fs::remove_file(&tmp)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(file = %tmp.display(), error = %e, "could not remove the partial compaction copy");
            }
        }
        *self
            .inner
            .compaction
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        metrics::counter!("berth_db_compactions_total", "result" => outcome).increment(1);
        match &result {
            Ok(r) => {
                metrics::histogram!("berth_db_compaction_pause_seconds")
                    .record(r.max_pause_ms / 1000.0);
                tracing::info!(
                    duration_ms = r.duration_ms,
                    size_before = r.size_before,
                    size_after = r.size_after,
                    allocated_before = r.allocated_before,
                    allocated_after = r.allocated_after,
                    max_pause_ms = r.max_pause_ms,
                    rows = r.rows_copied,
                    rounds = r.catch_up_rounds,
                    "online compaction done"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "online compaction failed; the database is unchanged")
            }
        }
        result
    }

    /// The compaction in progress, if any.
    pub fn compaction_progress(&self) -> Option<CompactionProgress> {
        self.inner
            .compaction
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_progress(&self, f: impl FnOnce(&mut CompactionProgress)) {
        if let Some(p) = self
            .inner
            .compaction
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            f(p);
        }
    }

    fn phase(&self, name: &'static str) {
        self.set_progress(|p| p.phase = name.into());
        tracing::info!(phase = name, "online compaction");
        if let Some(hook) = &self.inner.compaction_hook {
            hook(name);
        }
    }

    fn compact_inner(&self, started_at: Timestamp, tmp: &Path) -> Result<CompactionReport> {
        let t0 = Instant::now();
        let path = self.inner.path.clone();
        let (size_before, allocated_before) = file_sizes(&path)?;
        let live_bytes = self.stats()?.live_bytes;
        self.check_space(&path, live_bytes)?;
        remove_leftover(&path)?;
        self.phase("copy");
        let (new, epoch, rows_copied) = self.copy_snapshot(tmp)?;
        self.phase("catch-up");
        let (rounds, mut caught_up) = self.catch_up(&new)?;
        flush(tmp)?;
        self.phase("swap");
        let old_file = hold_open(&path);
        let hook = self.inner.compaction_hook.clone();
        let (tmp_owned, swap_path) = (tmp.to_owned(), path.clone());
        let (pause, last_keys, old) = self.control(move |w: &mut Writer| {
            if w.recovery.reopens != epoch || w.recovery.needs_reopen {
                // A commit failed since the copy began and the writer reopened the file (or must):
                // what the copy missed is not known for sure, so the copy is abandoned.
                return Err(StoreError::CommitFailed(
                    "a commit failed during the compaction; the compacted copy is abandoned".into(),
                ));
            }
            swap(w, new, &tmp_owned, &swap_path, hook.as_deref())
        })??;
        caught_up += last_keys;
        self.phase("release");
        self.release(old, old_file);
        let (size_after, allocated_after) = file_sizes(&path)?;
        let report = CompactionReport {
            at: started_at,
            duration_ms: t0.elapsed().as_millis() as u64,
            size_before,
            size_after,
            allocated_before,
            allocated_after,
            live_bytes,
            max_pause_ms: pause.as_secs_f64() * 1000.0,
            rows_copied,
            catch_up_rounds: rounds,
            keys_caught_up: caught_up,
        };
        self.keep_report(&report)?;
        Ok(report)
    }

    /// Refuses unless the data dir's file system has room for a copy of `live_bytes`.
    fn check_space(&self, path: &Path, live_bytes: u64) -> Result<()> {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        let needed = space_needed(live_bytes, self.inner.compaction_reserve);
        let available = available_bytes(&dir)?;
        if available < needed {
            return Err(StoreError::NoSpace {
                dir,
                needed,
                available,
            });
        }
        Ok(())
    }

    /// Switches on dirty-key tracking, copies a snapshot taken after it into `tmp` and shrinks
    /// the copy. Returns the copy, the writer's reopen count when tracking began, and the rows.
    fn copy_snapshot(&self, tmp: &Path) -> Result<(Database, u64, u64)> {
        let epoch = self.control(|w| {
            w.dirty = Dirty {
                enabled: true,
                ..Dirty::default()
            };
            w.recovery.reopens
        })?;
        let snapshot = self
            .db()
            .begin_read()
            .map_err(StoreError::db("compact: snapshot"))?;
        let mut builder = redb::Builder::new();
        builder.set_cache_size(self.inner.cache_size);
        let mut new = builder
            .create(tmp)
            .map_err(StoreError::db("compact: create copy"))?;
        let mut last_log = Instant::now();
        let rows_copied = copy_all(&snapshot, &new, |rows| {
            self.set_progress(|p| p.rows_copied = rows);
            if last_log.elapsed() >= Duration::from_secs(2) {
                last_log = Instant::now();
                tracing::info!(rows, "online compaction: copying");
            }
        })?;
        drop(snapshot);
        self.phase("shrink");
        // The copy is private: redb's own compaction can have it exclusively, and gives back what
        // the bulk load over-allocated while the file grew.
        while new.compact().map_err(|e| StoreError::Db {
            op: "compact: shrink copy",
            source: Box::new(e.into()),
        })? {}
        flush(tmp)?;
        Ok((new, epoch, rows_copied))
    }

    /// Copies the keys written meanwhile, in rounds, until a round is small (or there were
    /// [`MAX_ROUNDS`]). Returns the rounds and the keys copied.
    fn catch_up(&self, new: &Database) -> Result<(u32, u64)> {
        let mut rounds = 0;
        let mut caught_up = 0u64;
        loop {
            let dirty = self.control(|w| w.dirty.take())?;
            let snapshot = self
                .db()
                .begin_read()
                .map_err(StoreError::db("compact: snapshot"))?;
            rounds += 1;
            caught_up += dirty.len() as u64;
            // Durable, outside the pause: redb's first durable commit after the bulk copy does
            // the deferred bookkeeping of every non-durable one, which must not land in the swap.
            apply_dirty(&snapshot, new, &dirty, redb::Durability::Immediate)?;
            self.set_progress(|p| p.catch_up_rounds = rounds);
            tracing::info!(
                round = rounds,
                keys = dirty.len(),
                "online compaction: caught up"
            );
            if dirty.len() <= SMALL_ROUND_KEYS || rounds >= MAX_ROUNDS {
                return Ok((rounds, caught_up));
            }
        }
    }

    /// After the swap: waits (up to [`OLD_READERS_WAIT`]) for the old database's last reader,
    /// closes it, and gives its blocks back a slice at a time through `old_file`.
    fn release(&self, old: Arc<Database>, old_file: Option<std::fs::File>) {
        // New readers get the new database; those already reading the old one (a backup, say)
        // finish on it. Only once the last one is gone may its blocks be given back.
        let deadline = Instant::now() + OLD_READERS_WAIT;
        while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let alone = match Arc::try_unwrap(old) {
            Ok(db) => {
                drop(db);
                true
            }
            Err(old) => {
                drop(old);
                false
            }
        };
        if let Some(hook) = &self.inner.compaction_hook {
            hook("swapped");
        }
        match (alone, old_file) {
            (true, Some(file)) => release_old_file(&file),
            (true, None) => {}
            (false, _) => tracing::info!(
                "readers still use the old database file; its space is freed when the last one finishes"
            ),
        }
        if let Some(hook) = &self.inner.compaction_hook {
            hook("released");
        }
    }

    /// Records the report through the writer like any write, so it survives restarts.
    fn keep_report(&self, report: &CompactionReport) -> Result<()> {
        let bytes = serde_json::to_vec(report).map_err(|e| StoreError::Io {
            context: "encode compaction report".into(),
            source: std::io::Error::other(e),
        })?;
        self.write_blocking(move |w| {
            w.put_meta(KEY_LAST_COMPACTION, bytes);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use berth_types::{MachineConfig, MachineId, MachineRecord, Source};
    use redb::ReadableTable;

    use super::*;
    use crate::StoreOptions;
    use crate::schema::MACHINES;

    fn create(store: &Store, id: &str) {
        let rec = MachineRecord::new(
            MachineId::parse(id).unwrap(),
            None,
            MachineConfig::command(["/bin/true"]),
            BTreeMap::new(),
            Timestamp::now(),
        );
        store
            .write_blocking(move |w| w.create_machine(rec, Source::User, "test"))
            .unwrap();
    }

    /// The report kept in the database reads back equal to the one returned (this pause once
    /// came back as 0.498893 without serde_json's exact float parsing).
    #[test]
    fn a_kept_report_reads_back_exactly() {
        let report = CompactionReport {
            at: Timestamp::now(),
            duration_ms: 16,
            size_before: 9310208,
            size_after: 528384,
            allocated_before: 5943296,
            allocated_after: 348160,
            live_bytes: 315392,
            max_pause_ms: 0.498_893_000_000_000_03,
            rows_copied: 1059,
            catch_up_rounds: 1,
            keys_caught_up: 60,
        };
        let bytes = serde_json::to_vec(&report).unwrap();
        let back: CompactionReport = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, report);
    }

    /// A reader inside a snapshot of the old file keeps reading it intact after the swap: the
    /// compaction frees the old file's blocks only once that reader is gone.
    #[test]
    fn the_old_file_is_released_only_after_its_last_reader() {
        let dir = tempfile::tempdir().unwrap();
        let phases = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = phases.clone();
        let store = Store::open(
            dir.path().join("berth.redb"),
            StoreOptions {
                compaction_hook: Some(Arc::new(move |p: &str| {
                    seen.lock().unwrap().push(p.to_owned())
                })),
                ..StoreOptions::default()
            },
        )
        .unwrap();
        for i in 0..2000 {
            create(&store, &format!("m{i}"));
        }
        let reader = store.read_txn("test").unwrap();
        let compactor = {
            let store = store.clone();
            std::thread::spawn(move || store.compact())
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !phases.lock().unwrap().iter().any(|p| p == "renamed") {
            assert!(Instant::now() < deadline, "no swap: {:?}", phases.lock());
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !phases.lock().unwrap().iter().any(|p| p == "swapped"),
            "the old database was let go while a reader was in it: {:?}",
            phases.lock()
        );
        // New reads see the new file; the old snapshot still reads every row.
        assert!(
            store
                .machine(&MachineId::parse("m1999").unwrap())
                .unwrap()
                .is_some()
        );
        let machines = reader.open_table(MACHINES).unwrap();
        let mut rows = 0;
        for row in machines.iter().unwrap() {
            let (_, v) = row.unwrap();
            assert!(!v.value().is_empty());
            rows += 1;
        }
        assert_eq!(rows, 2000);
        drop(machines);
        drop(reader);
        compactor.join().unwrap().unwrap();
        let phases = phases.lock().unwrap().clone();
        let tail: Vec<&str> = phases
            .iter()
            .rev()
            .take(2)
            .rev()
            .map(String::as_str)
            .collect();
        assert_eq!(tail, ["swapped", "released"], "{phases:?}");
    }
}
