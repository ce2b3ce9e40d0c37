//! Verifying every page, and reading a file no agent holds without writing a byte to it.
//!
//! redb checks its page checksums only when it repairs a file (or on `check_integrity`, which
//! needs the database to itself and may repair it). Reads walk pages without checking them, so a
//! damaged page that still parses (a key, a branch, slack in a leaf) passes a walk of every
//! record. Both the online and the offline check therefore verify pages on a *copy* of the file,
//! made where it is consistent: online, on the writer thread between two commits (the file then
//! holds exactly the last durable commit, as after a power cut); offline, a cleanly closed file.
//! redb opens the copy with its integrity check, which verifies every page reachable from the
//! last commit; the original is never opened for writing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::{DatabaseError, ReadOnlyDatabase, ReadableDatabase, RepairSession};
use serde::Serialize;

use crate::Store;
use crate::backup::backup_of;
use crate::check::{CheckReport, check_of};
use crate::error::{Result, StoreError};
use crate::schema::{aside_path, guarded};
use crate::stats::{StoreStats, stats_of};

/// What the page check found.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PageCheck {
    /// Every page reachable from the last commit matches its checksum.
    pub passed: bool,
    /// What was verified, or what failed.
    pub detail: String,
}

/// redb reports this repair progress only after the last commit's pages failed their checksums,
/// just before it falls back to the commit before it (`Database::do_repair`, redb 4.5). On a
/// copy of a complete commit that fallback would hide the damage, so the check aborts there.
const PRIMARY_FAILED_PROGRESS: f64 = 0.3;

/// The suffix of the copy the page check works on, beside the database file.
pub(crate) const CHECK_SUFFIX: &str = ".check";

/// Removes a copy a page check left behind (a crash during the check).
pub(crate) fn remove_leftover(path: &Path) -> Result<()> {
    let copy = aside_path(path, CHECK_SUFFIX);
    match std::fs::remove_file(&copy) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(format!("remove {}", copy.display()))(e)),
    }
}

/// Verifies every page of `copy`, a private copy of a complete commit (it is written to).
fn verify_copy(copy: &Path) -> PageCheck {
    let primary_failed = Arc::new(AtomicBool::new(false));
    let flag = primary_failed.clone();
    let mut builder = redb::Builder::new();
    builder
        .set_cache_size(16 << 20)
        .set_check_integrity_on_open(true)
        .set_repair_callback(move |s: &mut RepairSession| {
            if (s.progress() - PRIMARY_FAILED_PROGRESS).abs() < 1e-9 {
                flag.store(true, Ordering::Release);
                s.abort();
            }
        });
    let fail = |detail: String| PageCheck {
        passed: false,
        detail,
    };
    match guarded(|| builder.open(copy)) {
        Ok(Ok(db)) => {
            // The copy is ours; an error closing it says nothing about the original.
            let _ = guarded(move || drop(db));
            PageCheck {
                passed: true,
                detail: "every page reachable from the last commit matches its checksum".into(),
            }
        }
        Ok(Err(_)) if primary_failed.load(Ordering::Acquire) => fail(
            "pages of the last commit fail their checksums: the file is damaged (redb would fall \
             back to the commit before it, losing acknowledged writes)"
                .into(),
        ),
        Ok(Err(e)) => fail(format!("redb's page check failed: {e}")),
        Err(panic) => fail(format!("redb panicked verifying pages: {panic}")),
    }
}

/// Copies `path` to its check copy with `copy` (which decides when it is consistent), verifies
/// it, and removes it.
fn verify_via_copy(
    path: &Path,
    copy_file: impl FnOnce(&Path, &Path) -> Result<()>,
) -> Result<PageCheck> {
    remove_leftover(path)?;
    let copy = aside_path(path, CHECK_SUFFIX);
    let result = copy_file(path, &copy).map(|()| verify_copy(&copy));
    let _ = std::fs::remove_file(&copy);
    result
}

impl Store {
    /// Verifies the checksum of every page reachable from the last commit, on a copy of the file
    /// made on the writer thread between two commits (writes wait while it is copied; the copy,
    /// `berth.redb.check` beside the file, needs as much free space as the file and is removed
    /// afterwards). Blocking: call it off the async runtime.
    pub fn verify_pages(&self) -> Result<PageCheck> {
        let start = self.inner.timings.start();
        let store = self.clone();
        let r = verify_via_copy(&self.inner.path, move |src, dst| {
            let (src, dst) = (src.to_owned(), dst.to_owned());
            store
                .control(move |_w| std::fs::copy(&src, &dst))?
                .map(|_| ())
                .map_err(StoreError::io("copy the database for the page check"))
        });
        self.inner
            .timings
            .finish("check", start, 0, 0, || "page check".into());
        r
    }
}

/// A database file opened read-only, for `berth db … --offline`: nothing it does writes to the
/// file. A file that was not closed cleanly is refused ([`StoreError::NeedsRepair`]): reading it
/// needs redb's repair, which writes.
pub struct OfflineDb {
    path: PathBuf,
    db: ReadOnlyDatabase,
}

impl std::fmt::Debug for OfflineDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfflineDb")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl OfflineDb {
    /// Opens `path` read-only. Refuses a file an agent holds ([`StoreError::Locked`]), one that
    /// needs repair ([`StoreError::NeedsRepair`]) and one redb cannot read ([`StoreError::Damaged`]).
    pub fn open(path: impl AsRef<Path>) -> Result<OfflineDb> {
        let path = path.as_ref().to_owned();
        let damaged = |reason: String| StoreError::Damaged {
            path: path.clone(),
            reason,
        };
        let opened = guarded(|| redb::Builder::new().open_read_only(&path))
            .map_err(|p| damaged(format!("redb could not read the file header: {p}")))?;
        let db = match opened {
            Ok(db) => db,
            Err(DatabaseError::RepairAborted) => return Err(StoreError::NeedsRepair { path }),
            Err(DatabaseError::DatabaseAlreadyOpen) => return Err(StoreError::Locked { path }),
            Err(e) => return Err(damaged(e.to_string())),
        };
        Ok(OfflineDb { path, db })
    }

    fn read<T>(
        &self,
        what: &str,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T>,
    ) -> Result<T> {
        guarded(|| {
            let txn = self
                .db
                .begin_read()
                .map_err(StoreError::db("offline read"))?;
            f(&txn)
        })
        .map_err(|p| StoreError::Damaged {
            path: self.path.clone(),
            reason: format!("redb panicked reading {what}: {p}"),
        })?
    }

    /// Sizes and row counts, as [`Store::stats`].
    pub fn stats(&self) -> Result<StoreStats> {
        self.read("every table (stats)", |txn| stats_of(txn, &self.path))
    }

    /// The consistency check, as [`Store::check`].
    pub fn check(&self) -> Result<CheckReport> {
        match self.read("every table (check)", check_of) {
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

    /// A consistent copy to the new file `dest`, as [`Store::backup_to`].
    pub fn backup_to(&self, dest: &Path) -> Result<u64> {
        if dest.exists() {
            return Err(StoreError::Io {
                context: format!("backup to {}", dest.display()),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "destination exists",
                ),
            });
        }
        self.read("every table (backup)", |txn| backup_of(txn, dest))
    }

    /// Verifies every page, as [`Store::verify_pages`], on a copy beside the file.
    pub fn verify_pages(&self) -> Result<PageCheck> {
        verify_via_copy(&self.path, |src, dst| {
            std::fs::copy(src, dst)
                .map(|_| ())
                .map_err(StoreError::io("copy the database for the page check"))
        })
    }
}
