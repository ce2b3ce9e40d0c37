//! The on-disk schema: tables, the meta table, opening a file safely, and migrations.
//!
//! Tables (all values are [`crate::codec`] records unless noted):
//!
//! | table        | key                      | value                                   |
//! |--------------|--------------------------|-----------------------------------------|
//! | `meta`       | `&str`                   | raw little-endian integers (see below)  |
//! | `machines`   | machine id               | [`berth_types::MachineRecord`]          |
//! | `history`    | (machine id, version)    | [`berth_types::Event`]                  |
//! | `events`     | seq (`u64`)              | [`berth_types::Event`]                  |
//! | `operations` | operation id (`u64`)     | [`berth_types::OperationRecord`]        |
//! | `config_versions` | (machine id, version) | [`berth_types::ConfigVersion`]        |
//!
//! `config_versions` holds each machine's *older* configs (the record holds the current one):
//! an update writes the version it replaces, and removes the one that falls out of the last
//! [`crate::MAX_CONFIG_VERSIONS`], in the same write; retention removes a destroyed machine's
//! rows with its record.
//!
//! `history` keys sort by machine then version, so one machine's history is one contiguous range.
//! It is an index over the event log: a transition's event is written in the same transaction as
//! its record change, and the writer copies events into `history` in bulk (every 50 ms, every
//! 2048 events, at shutdown, and at open after a crash), advancing the `history_seq` watermark in
//! the same transaction. Readers merge `history` with the log above the watermark.
//!
//! Meta keys: `schema_version` (u32), `next_seq`, `next_op_id`, `history_seq` (u64). They are raw
//! integers, not codec records, so that any future berth can read the schema version.
//! `next_seq` is a floor: the next seq is the greater of it and the log's last seq + 1, so a
//! commit that only appends events need not write meta. Whatever deletes events from the log
//! (retention) must raise `next_seq` first, so that a seq is never reused.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use redb::{
    Database, DatabaseError, ReadOnlyDatabase, ReadableDatabase, ReadableTable, TableDefinition,
};

use crate::error::{Result, StoreError};
use crate::tables::{AnyTable, Table};

/// Current machine records.
pub const MACHINES: TableDefinition<&str, &[u8]> = TableDefinition::new("machines");
/// Each machine's transition history, keyed (machine id, version).
pub const HISTORY: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("history");
/// The host-wide event log, keyed by seq.
pub const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// Durable operations in flight, keyed by operation id.
pub const OPERATIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("operations");
/// Each machine's older config versions, keyed (machine id, version).
pub const CONFIG_VERSIONS: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("config_versions");
/// Schema version and counters.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Every table of the schema: the one list that creating a file, the checksum walk, stats,
/// backups and compaction's copy go over (see `tables.rs`). A new table is added here (and to
/// [`TABLE_NAMES`]; the tests check the two agree with the definitions above).
pub(crate) const TABLES: [&dyn AnyTable; 6] = [
    &Table::records(MACHINES),
    &Table::history(HISTORY),
    &Table::history(EVENTS),
    &Table::records(OPERATIONS),
    &Table::records(CONFIG_VERSIONS),
    &Table::raw(META),
];

/// Names of every table, for stats and checks, in the order of [`TABLES`].
pub const TABLE_NAMES: [&str; 6] = [
    "machines",
    "history",
    "events",
    "operations",
    "config_versions",
    "meta",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = 2;

pub(crate) const KEY_SCHEMA: &str = "schema_version";
pub(crate) const KEY_NEXT_SEQ: &str = "next_seq";
pub(crate) const KEY_NEXT_OP: &str = "next_op_id";
pub(crate) const KEY_HISTORY_SEQ: &str = "history_seq";

/// One schema migration: upgrades a file from `from` to `from + 1` inside one write transaction.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The version it upgrades from.
    pub from: u32,
    /// What it does, for the log.
    pub description: &'static str,
    /// The upgrade.
    pub apply: fn(&redb::WriteTransaction) -> Result<()>,
}

/// The migrations this build knows, oldest first; a future schema appends its step here and
/// bumps [`SCHEMA_VERSION`].
pub const MIGRATIONS: &[Migration] = &[Migration {
    from: 1,
    description: "add the config_versions table (machine config updates keep older versions)",
    apply: |txn| {
        txn.open_table(CONFIG_VERSIONS)
            .map_err(StoreError::db("migrate: create config_versions"))?;
        Ok(())
    },
}];

/// How an existing file was found when it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenKind {
    /// There was no file; a new one was created.
    Created,
    /// The file had been closed cleanly.
    Clean,
    /// The file had not been closed cleanly (crash, kill, power loss) and redb repaired it.
    Repaired,
}

/// The next seq to assign: the greater of the `next_seq` floor and the log's last seq + 1.
pub(crate) fn next_seq(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    events: &impl ReadableTable<u64, &'static [u8]>,
) -> Result<u64> {
    let floor = read_u64(meta, KEY_NEXT_SEQ)?.unwrap_or(1);
    let last = events.last().map_err(StoreError::db("read last event"))?;
    Ok(floor.max(last.map_or(1, |(k, _)| k.value() + 1)))
}

pub(crate) fn read_u64(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<u64>> {
    let Some(v) = meta.get(key).map_err(StoreError::db("read meta"))? else {
        return Ok(None);
    };
    let bytes: [u8; 8] = v.value().try_into().map_err(|_| StoreError::Corrupt {
        table: "meta",
        key: key.to_owned(),
        reason: format!("expected 8 bytes, found {}", v.value().len()),
    })?;
    Ok(Some(u64::from_le_bytes(bytes)))
}

fn read_schema(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<u32>, String> {
    let Some(v) = meta.get(KEY_SCHEMA).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let bytes: [u8; 4] = v
        .value()
        .try_into()
        .map_err(|_| format!("schema_version is {} bytes, not 4", v.value().len()))?;
    Ok(Some(u32::from_le_bytes(bytes)))
}

std::thread_local! {
    /// Set while this thread runs [`guarded`]: a panic there is caught and reported as an error.
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Installs (once) a panic hook that keeps quiet about panics [`guarded`] catches: they are
/// reported as errors naming what was read, so the default hook's "thread panicked at" line on
/// stderr would only mislead. Every other panic goes to the hook that was there before.
fn quiet_guarded_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(|g| g.get()) {
                previous(info);
            }
        }));
    });
}

/// Runs `f`, turning a panic inside redb (which a damaged file can cause) into an error.
pub(crate) fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    quiet_guarded_panics();
    let outer = GUARDED.with(|g| g.replace(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(outer));
    r.map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "redb panicked".to_owned())
    })
}

fn damaged(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::Damaged {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn classify_open_error(path: &Path, e: DatabaseError) -> StoreError {
    match e {
        DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
            path: path.to_owned(),
        },
        other => damaged(path, other.to_string()),
    }
}

/// What a read-only look at an existing file found.
enum Probe {
    /// Cleanly closed; schema version (if any) and every record's checksum verified.
    Clean(Option<u32>),
    /// Not closed cleanly: redb must repair it before anything can be read.
    NeedsRepair,
}

/// The page cache of the read-only pass over an existing file at open: it reads each page once,
/// so a cache gains nothing, while redb's default (1 GiB) made every start allocate and free
/// one as large as the file (`cargo xtask bench restart`'s profile: 8% of the open, freeing it).
const PROBE_CACHE_BYTES: usize = 16 << 20;

/// Reads an existing file without modifying it.
fn probe(path: &Path) -> Result<Probe> {
    let opened = guarded(|| {
        redb::Builder::new()
            .set_cache_size(PROBE_CACHE_BYTES)
            .open_read_only(path)
    })
    .map_err(|p| damaged(path, format!("redb could not read the file header: {p}")))?;
    let db = match opened {
        Ok(db) => db,
        Err(DatabaseError::RepairAborted) => return Ok(Probe::NeedsRepair),
        Err(e) => return Err(classify_open_error(path, e)),
    };
    let version = guarded(|| read_schema_ro(&db))
        .map_err(|p| damaged(path, p))?
        .map_err(|r| damaged(path, r))?;
    if version.is_some_and(|v| v > SCHEMA_VERSION) {
        return Ok(Probe::Clean(version));
    }
    guarded(|| verify_checksums(&db))
        .map_err(|p| damaged(path, format!("reading records: {p}")))?
        .map_err(|r| damaged(path, r))?;
    Ok(Probe::Clean(version))
}

fn read_schema_ro(db: &ReadOnlyDatabase) -> Result<Option<u32>, String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    match txn.open_table(META) {
        Ok(meta) => read_schema(&meta),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Walks every table of a read-only database that is not history (those are verified in the
/// background after open, see `verify.rs`) and checks each record's checksum. A damaged page
/// shows up as a redb error, a panic (caught by the caller) or a checksum mismatch.
fn verify_checksums(db: &ReadOnlyDatabase) -> Result<(), String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let never = std::sync::atomic::AtomicBool::new(false);
    TABLES
        .iter()
        .filter(|t| !t.is_history())
        .try_for_each(|t| t.verify_records(&txn, &never).map(drop))
}

/// Opens (or creates) the database at `path` so that a file berth cannot trust is never modified.
///
/// 1. No file, or an empty one: create a fresh database at [`SCHEMA_VERSION`].
/// 2. Otherwise look at it read-only first: a cleanly closed file has its schema version read
///    and every record's checksum verified before anything writes to it, except the history's,
///    which a background pass verifies once the store is open (`verify.rs`).
/// 3. A file not closed cleanly needs redb's repair, which writes. It is copied aside first, then
///    opened with redb's full integrity check; if that fails the copy is put back, so the file
///    is byte-for-byte what it was.
/// 4. A newer schema is refused untouched; an older one is copied aside and migrated.
pub(crate) fn open_database(path: &Path, cache_size: usize) -> Result<(Database, OpenKind)> {
    let exists = match std::fs::metadata(path) {
        Ok(m) => m.len() > 0,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(StoreError::io(format!("stat {}", path.display()))(e)),
    };
    let mut builder = redb::Builder::new();
    builder.set_cache_size(cache_size);
    if !exists {
        let db = builder
            .create(path)
            .map_err(|e| classify_open_error(path, e))?;
        init_fresh(&db)?;
        return Ok((db, OpenKind::Created));
    }

    let (db, kind) = match probe(path)? {
        Probe::Clean(version) => {
            check_version(path, version)?;
            let db = guarded(|| builder.open(path))
                .map_err(|p| damaged(path, p))?
                .map_err(|e| classify_open_error(path, e))?;
            (db, OpenKind::Clean)
        }
        Probe::NeedsRepair => (open_with_repair(path, &mut builder)?, OpenKind::Repaired),
    };
    let version = read_schema_rw(path, &db)?;
    if version < SCHEMA_VERSION {
        drop(db);
        migrate(path, version, MIGRATIONS, SCHEMA_VERSION)?;
        let db = builder
            .open(path)
            .map_err(|e| classify_open_error(path, e))?;
        return Ok((db, kind));
    }
    Ok((db, kind))
}

fn check_version(path: &Path, version: Option<u32>) -> Result<()> {
    match version {
        None => Err(StoreError::NotBerth {
            path: path.to_owned(),
            reason: "it has no schema_version in a meta table".into(),
        }),
        Some(v) if v > SCHEMA_VERSION => Err(StoreError::SchemaTooNew {
            path: path.to_owned(),
            found: v,
            supported: SCHEMA_VERSION,
        }),
        Some(0) => Err(StoreError::NotBerth {
            path: path.to_owned(),
            reason: "schema_version 0 was never written by berth".into(),
        }),
        Some(_) => Ok(()),
    }
}

fn read_schema_rw(path: &Path, db: &Database) -> Result<u32> {
    let txn = db.begin_read().map_err(StoreError::db("read schema"))?;
    let version = match txn.open_table(META) {
        Ok(meta) => read_schema(&meta).map_err(|r| damaged(path, r))?,
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(damaged(path, e.to_string())),
    };
    check_version(path, version)?;
    Ok(version.unwrap_or(0))
}

pub(crate) fn aside_path(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

fn sync_dir(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(StoreError::io(format!("fsync directory {}", dir.display())))?;
    }
    Ok(())
}

fn open_with_repair(path: &Path, builder: &mut redb::Builder) -> Result<Database> {
    let copy = aside_path(path, ".pre-repair");
    std::fs::copy(path, &copy).map_err(StoreError::io(format!(
        "copy {} aside before repairing it",
        path.display()
    )))?;
    builder.set_check_integrity_on_open(true);
    let opened = guarded(|| builder.open(path));
    builder.set_check_integrity_on_open(false);
    let failure = match opened {
        Ok(Ok(db)) => match read_schema_rw(path, &db) {
            Ok(_) => {
                tracing::warn!(path = %path.display(), "database was not closed cleanly; redb repaired it");
                std::fs::remove_file(&copy).map_err(StoreError::io("remove repair copy"))?;
                return Ok(db);
            }
            Err(e) => {
                drop(db);
                e
            }
        },
        Ok(Err(DatabaseError::DatabaseAlreadyOpen)) => {
            let _ = std::fs::remove_file(&copy);
            return Err(StoreError::Locked {
                path: path.to_owned(),
            });
        }
        Ok(Err(e)) => damaged(path, format!("repair failed: {e}")),
        Err(panic) => damaged(path, format!("repair failed: {panic}")),
    };
    // Put the original back so the operator finds the file exactly as it was.
    std::fs::rename(&copy, path).map_err(StoreError::io(format!(
        "restore {} from {}",
        path.display(),
        copy.display()
    )))?;
    sync_dir(path)?;
    Err(failure)
}

fn init_fresh(db: &Database) -> Result<()> {
    let txn = db.begin_write().map_err(StoreError::db("init"))?;
    {
        let mut meta = txn.open_table(META).map_err(StoreError::db("init"))?;
        meta.insert(KEY_SCHEMA, SCHEMA_VERSION.to_le_bytes().as_slice())
            .map_err(StoreError::db("init"))?;
        meta.insert(KEY_NEXT_SEQ, 1u64.to_le_bytes().as_slice())
            .map_err(StoreError::db("init"))?;
        meta.insert(KEY_NEXT_OP, 1u64.to_le_bytes().as_slice())
            .map_err(StoreError::db("init"))?;
    }
    for table in TABLES {
        table.create(&txn)?;
    }
    txn.commit().map_err(StoreError::db("init"))
}

/// Upgrades the file at `path` from `from` to `target` with `migrations`, after copying the file
/// aside to `<file>.v<from>.bak` (kept, so an operator can roll back).
pub fn migrate(path: &Path, from: u32, migrations: &[Migration], target: u32) -> Result<()> {
    let backup = aside_path(path, &format!(".v{from}.bak"));
    std::fs::copy(path, &backup).map_err(StoreError::io(format!(
        "copy {} to {}",
        path.display(),
        backup.display()
    )))?;
    sync_dir(path)?;
    let db = Database::open(path).map_err(|e| classify_open_error(path, e))?;
    let txn = db.begin_write().map_err(StoreError::db("migrate"))?;
    let mut version = from;
    while version < target {
        let step = migrations
            .iter()
            .find(|m| m.from == version)
            .ok_or_else(|| StoreError::NotBerth {
                path: path.to_owned(),
                reason: format!("no migration from schema version {version}"),
            })?;
        tracing::info!(
            from = version,
            to = version + 1,
            what = step.description,
            "migrating database"
        );
        (step.apply)(&txn)?;
        version += 1;
    }
    {
        let mut meta = txn.open_table(META).map_err(StoreError::db("migrate"))?;
        meta.insert(KEY_SCHEMA, version.to_le_bytes().as_slice())
            .map_err(StoreError::db("migrate"))?;
    }
    txn.commit().map_err(StoreError::db("migrate"))?;
    tracing::info!(backup = %backup.display(), "migration done; the pre-migration copy is kept");
    Ok(())
}

/// What [`check_file_integrity`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntegrityReport {
    /// The file had not been closed cleanly and redb repaired it on open (normal after a crash).
    pub repaired_on_open: bool,
    /// redb's full check (every page checksum, allocator state) passed after the open.
    pub passed: bool,
}

/// Runs redb's full integrity check on a file no process holds, after the same safety checks as
/// an open (a damaged file is refused untouched).
pub fn check_file_integrity(path: &Path) -> Result<IntegrityReport> {
    let (mut db, kind) = open_database(path, 64 << 20)?;
    let passed = guarded(|| db.check_integrity())
        .map_err(|p| damaged(path, p))?
        .map_err(|e| damaged(path, e.to_string()))?;
    Ok(IntegrityReport {
        repaired_on_open: kind == OpenKind::Repaired,
        passed,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
    use std::collections::BTreeSet;

    use super::*;

    /// Every `TableDefinition` this file declares, read from its source: a table defined but
    /// left out of [`TABLES`] (and so out of stats, backups and compaction's copy) fails here.
    #[test]
    fn every_table_defined_is_in_the_one_list() {
        let source = include_str!("schema.rs");
        let defined: BTreeSet<&str> = source
            .split("TableDefinition::new(\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .collect();
        let listed: BTreeSet<&str> = TABLES.iter().map(|t| t.name()).collect();
        assert_eq!(listed.len(), TABLES.len(), "a table is listed twice");
        assert_eq!(defined, listed);
        let names: Vec<&str> = TABLES.iter().map(|t| t.name()).collect();
        assert_eq!(names, TABLE_NAMES);
    }

    /// A fresh file holds exactly the listed tables.
    #[test]
    fn a_fresh_file_has_every_listed_table() {
        let dir = tempfile::tempdir().unwrap();
        let (db, kind) = open_database(&dir.path().join("berth.redb"), 1 << 20).unwrap();
        assert_eq!(kind, OpenKind::Created);
        let txn = db.begin_read().unwrap();
        let in_file: BTreeSet<String> = txn
            .list_tables()
            .unwrap()
            .map(|t| redb::TableHandle::name(&t).to_owned())
            .collect();
        let listed: BTreeSet<String> = TABLE_NAMES.iter().map(|n| (*n).to_owned()).collect();
        assert_eq!(in_file, listed);
    }
}
