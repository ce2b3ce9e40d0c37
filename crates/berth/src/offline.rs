//! `--offline`: the data directory's database opened directly, when no agent holds it (its lock
//! refuses while one does). Reads open it read-only; only `db compact --offline` writes.

use crate::cli::{Cli, Fail};

pub(crate) fn offline_fail(e: berth_store::StoreError) -> Fail {
    match e {
        berth_store::StoreError::Locked { .. } => Fail(
            1,
            format!("{e}; an agent holds the data dir: run without --offline"),
        ),
        other => Fail(1, other.to_string()),
    }
}

/// The data dir's database opened read-only: nothing an offline read does writes to it.
pub(crate) fn offline_db(cli: &Cli) -> Result<berth_store::OfflineDb, Fail> {
    let path = cli.data_dir().join("berth.redb");
    if !path.exists() {
        return Err(Fail(1, format!("{} does not exist", path.display())));
    }
    berth_store::OfflineDb::open(&path).map_err(offline_fail)
}

/// The data dir's database opened for writing (an offline compaction), repairing it if needed.
pub(crate) fn offline_store(cli: &Cli) -> Result<berth_store::Store, Fail> {
    let path = cli.data_dir().join("berth.redb");
    if !path.exists() {
        return Err(Fail(1, format!("{} does not exist", path.display())));
    }
    berth_store::Store::open(&path, berth_store::StoreOptions::default()).map_err(|e| match e {
        berth_store::StoreError::Locked { .. } => Fail(
            1,
            format!("{e}; an agent holds the data dir: run without --offline"),
        ),
        other => Fail(1, other.to_string()),
    })
}

/// `berth db check --offline [--repair]`: the page check and the consistency check on the file.
pub(crate) fn offline_check(cli: &Cli, repair: bool) -> Result<berth_api_types::DbCheck, Fail> {
    let path = cli.data_dir().join("berth.redb");
    let mut repaired_on_open = false;
    if repair {
        if !path.exists() {
            return Err(Fail(1, format!("{} does not exist", path.display())));
        }
        // The safe open: a damaged file is refused and left as it was.
        let integrity = berth_store::check_file_integrity(&path).map_err(offline_fail)?;
        repaired_on_open = integrity.repaired_on_open;
    }
    let db = offline_db(cli)?;
    let pages = db.verify_pages().map_err(offline_fail)?;
    let report = db.check().map_err(offline_fail)?;
    Ok(berth_agent::wire::db_check(
        pages,
        report,
        Some(repaired_on_open),
    ))
}
