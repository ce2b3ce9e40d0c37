//! Database commands: stats, online compaction, check, slow operations, backup.

use std::path::Path;

use berth_api_types::{CompactionReport, DbCheck, DbStats, SlowOp};

use crate::error::{CommandError, CommandResult};
use crate::{Agent, wire};

impl Agent {
    /// File size, live bytes, garbage ratio, rows per table, compactions.
    pub fn db_stats(&self) -> CommandResult<DbStats> {
        Ok(wire::db_stats(self.store().stats()?))
    }

    /// Compacts online (or joins the compaction running); answers its report once the new file
    /// is in place. Reads and writes are served throughout.
    pub async fn db_compact(&self) -> CommandResult<CompactionReport> {
        let me = self.clone();
        self.detached(async move {
            me.compact()
                .await
                .map(wire::compaction_report)
                .map_err(|e| CommandError::from(&*e))
        })
        .await
    }

    /// Every page's checksum (on a copy made between two commits, see `Store::verify_pages`),
    /// then every record and the cross-table invariants in one read snapshot.
    pub async fn db_check(&self) -> CommandResult<DbCheck> {
        let store = self.store().clone();
        let (pages, report) = tokio::task::spawn_blocking(move || {
            let pages = store.verify_pages()?;
            store.check().map(|report| (pages, report))
        })
        .await
        .map_err(|e| CommandError::internal(e.to_string()))??;
        Ok(wire::db_check(pages, report, None))
    }

    /// Recent slow database operations, newest first.
    pub fn slow_ops(&self) -> Vec<SlowOp> {
        self.commands.slow_ops.list()
    }

    /// Writes a consistent snapshot of the database to `dest`, without pausing writers;
    /// returns the rows written.
    pub fn backup_to(&self, dest: &Path) -> CommandResult<u64> {
        Ok(self.store().backup_to(dest)?)
    }
}
