//! The fleet exporter's durable bookkeeping, kept in `meta` (so compaction and backups carry it):
//!
//! - `host_id` (UTF-8): the host's stable identity in the fleet, generated once and kept;
//! - `export_seq` (u64 LE): the last event seq the export target acknowledged. It is written in
//!   batches (the exporter saves it every so often, riding the ordinary group commit), so it may
//!   lag the truth: after a crash the exporter replays from it and the target's de-duplication
//!   absorbs the overlap. It only moves forward;
//! - `export_holes` (JSON): ranges of events that were removed by retention (past its export
//!   hold, see [`crate::RetentionPolicy::export_hold`]) before they could be exported. They are
//!   recorded, never hidden: a consumer resyncs from the host's API.

use berth_types::ExportHole;
use serde::Serialize;

use crate::Store;
use crate::error::{Result, StoreError};
use crate::schema::{META, read_u64};
use crate::writer::WriteCtx;

pub(crate) const KEY_HOST_ID: &str = "host_id";
pub(crate) const KEY_EXPORT_SEQ: &str = "export_seq";
pub(crate) const KEY_EXPORT_HOLES: &str = "export_holes";

/// The durable export position.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExportCursor {
    /// The last seq acknowledged by the target; `None` if export never acknowledged anything.
    pub acked_seq: Option<u64>,
    /// Events lost to retention before they were exported, oldest first.
    pub holes: Vec<ExportHole>,
}

fn read_meta(
    meta: &impl redb::ReadableTable<&'static str, &'static [u8]>,
) -> Result<(Option<String>, ExportCursor)> {
    let host_id = match meta
        .get(KEY_HOST_ID)
        .map_err(StoreError::db("read host_id"))?
    {
        None => None,
        Some(v) => {
            Some(
                String::from_utf8(v.value().to_vec()).map_err(|_| StoreError::Corrupt {
                    table: "meta",
                    key: KEY_HOST_ID.into(),
                    reason: "not UTF-8".into(),
                })?,
            )
        }
    };
    let acked_seq = read_u64(meta, KEY_EXPORT_SEQ)?;
    let holes = match meta
        .get(KEY_EXPORT_HOLES)
        .map_err(StoreError::db("read export_holes"))?
    {
        None => Vec::new(),
        Some(v) => serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
            table: "meta",
            key: KEY_EXPORT_HOLES.into(),
            reason: e.to_string(),
        })?,
    };
    Ok((host_id, ExportCursor { acked_seq, holes }))
}

impl WriteCtx<'_, '_> {
    /// The export position as committed before this batch.
    pub(crate) fn export_cursor(&self) -> Result<ExportCursor> {
        let meta = self
            .txn
            .open_table(META)
            .map_err(StoreError::db("read export cursor"))?;
        Ok(read_meta(&meta)?.1)
    }

    fn host_id(&self) -> Result<Option<String>> {
        let meta = self
            .txn
            .open_table(META)
            .map_err(StoreError::db("read host_id"))?;
        Ok(read_meta(&meta)?.0)
    }
}

impl Store {
    /// The kept host id and export position.
    pub fn export_state(&self) -> Result<(Option<String>, ExportCursor)> {
        let txn = self.read_txn("export_state")?;
        let meta = txn
            .open_table(META)
            .map_err(StoreError::db("export_state"))?;
        read_meta(&meta)
    }

    /// The host id kept in the database; if there is none yet, keeps `candidate` and returns it.
    /// Decided inside one write, so two callers cannot keep different ids.
    pub async fn host_id_or_keep(&self, candidate: String) -> Result<String> {
        self.write(move |w| match w.host_id()? {
            Some(id) => Ok(id),
            None => {
                w.put_meta(KEY_HOST_ID, candidate.clone().into_bytes());
                Ok(candidate)
            }
        })
        .await
    }

    /// Saves the export position: `acked` if it is beyond the saved one (it never moves back).
    /// One ordinary write, grouped with whatever else commits: call it every so often, not per
    /// event.
    pub async fn save_export_cursor(&self, acked: u64) -> Result<()> {
        self.write(move |w| {
            if w.export_cursor()?.acked_seq.is_none_or(|a| a < acked) {
                w.put_meta(KEY_EXPORT_SEQ, acked.to_le_bytes().to_vec());
            }
            Ok(())
        })
        .await
    }

    /// Records that events `from..=to` were removed before they were exported, and moves the
    /// saved position past them; returns the hole as recorded (merged with an adjacent one).
    pub async fn record_export_hole(&self, from: u64, to: u64) -> Result<ExportHole> {
        self.write(move |w| {
            let mut cursor = w.export_cursor()?;
            let now = w.now();
            let hole = match cursor.holes.last_mut() {
                Some(last) if last.to.saturating_add(1) >= from => {
                    last.to = last.to.max(to);
                    last.at = now;
                    last.clone()
                }
                _ => {
                    let hole = ExportHole { from, to, at: now };
                    cursor.holes.push(hole.clone());
                    hole
                }
            };
            // Bounded: a consumer needs the recent holes; the count of old ones is in the log.
            if cursor.holes.len() > 100 {
                let excess = cursor.holes.len() - 100;
                cursor.holes.drain(..excess);
            }
            let json = serde_json::to_vec(&cursor.holes).map_err(|e| StoreError::Corrupt {
                table: "meta",
                key: KEY_EXPORT_HOLES.into(),
                reason: e.to_string(),
            })?;
            w.put_meta(KEY_EXPORT_HOLES, json);
            if cursor.acked_seq.is_none_or(|a| a < to) {
                w.put_meta(KEY_EXPORT_SEQ, to.to_le_bytes().to_vec());
            }
            Ok(hole)
        })
        .await
    }
}
