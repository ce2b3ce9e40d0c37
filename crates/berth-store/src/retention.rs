//! Retention: keeps the database from growing without bound.
//!
//! Three rules, applied in small batches — each batch one ordinary write through the writer, of at
//! most [`RetentionPolicy::batch_rows`] rows — with a pause between batches, so a normal write never
//! waits behind retention for more than one small commit:
//!
//! - a destroyed machine's history, then its record and its older config versions, is deleted
//!   once it has been destroyed for longer than `destroyed_machine_ttl`;
//! - a machine's history is capped at `max_events_per_machine` rows, oldest first (the record stays
//!   the truth; `check` knows a trimmed history is a suffix);
//! - the host-wide event log keeps its newest `max_events` events; a consumer asking for older ones
//!   gets [`crate::StoreError::Expired`] and must resync.
//!
//! Only rows already materialized in the history index (seq at or below the `history_seq`
//! watermark) are ever removed, so retention and the indexer never race over a row.
//!
//! A pass writes nothing when there is nothing to remove: before each write, a read snapshot
//! tells whether the write would find a row (the write decides again, on the latest data). An
//! idle host thus pays no commit, and no fsync, per pass. The one exception is an index behind
//! the log (the indexer only advances inside a commit): then the events pass writes once, even
//! with nothing to remove, so the last rows of a host that went quiet are indexed, and trimmable.

use std::time::Duration;

use berth_types::{Event, MachineId, State, Timestamp};
use redb::ReadableTable;
use serde::Serialize;

use crate::Store;
use crate::codec::decode_at;
use crate::error::{Result, StoreError};
use crate::read::{history_watermark, open_ro};
use crate::schema::{EVENTS, HISTORY, KEY_HISTORY_SEQ, META};
use crate::writer::{Removal, WriteCtx};

/// What to keep.
#[derive(Debug, Clone)]
pub struct RetentionPolicy {
    /// A destroyed machine's history and record are kept this long (`retention.destroyed_machine_ttl`).
    pub destroyed_machine_ttl: Duration,
    /// History rows kept per machine (`retention.max_events_per_machine`).
    pub max_events_per_machine: u64,
    /// Events kept in the host-wide log (`retention.max_events`).
    pub max_events: u64,
    /// Rows removed per write at most.
    pub batch_rows: usize,
    /// Pause between two batches.
    pub pause: Duration,
    /// With fleet export on: how many events beyond `max_events` the log may keep while they wait
    /// to be exported (above the saved export position). Past it retention removes them anyway,
    /// and the exporter records the hole when it finds them gone. `None`: no export, no hold.
    pub export_hold: Option<u64>,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self {
            destroyed_machine_ttl: Duration::from_secs(24 * 3600),
            max_events_per_machine: 1000,
            max_events: 1_000_000,
            batch_rows: 512,
            pause: Duration::from_millis(5),
            export_hold: None,
        }
    }
}

/// What one retention pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetentionReport {
    /// Destroyed machines whose record and history were removed.
    pub machines_removed: u64,
    /// History rows removed (trimmed or of removed machines).
    pub history_rows_removed: u64,
    /// Events removed from the host-wide log.
    pub events_removed: u64,
    /// Writes it took.
    pub batches: u64,
}

impl RetentionReport {
    /// Whether the pass removed anything.
    pub fn is_empty(&self) -> bool {
        self.machines_removed == 0 && self.history_rows_removed == 0 && self.events_removed == 0
    }
}

fn watermark(ctx: &WriteCtx<'_, '_>) -> Result<u64> {
    let meta = ctx
        .txn
        .open_table(META)
        .map_err(StoreError::db("retention"))?;
    Ok(crate::schema::read_u64(&meta, KEY_HISTORY_SEQ)?.unwrap_or(0))
}

/// Stages the removal of up to `limit` of `id`'s oldest history rows with a version below
/// `below` that are materialized; returns how many.
fn trim_history(
    ctx: &mut WriteCtx<'_, '_>,
    id: &MachineId,
    below: u64,
    limit: usize,
) -> Result<u64> {
    let mark = watermark(ctx)?;
    let mut victims = Vec::new();
    {
        let history = ctx
            .txn
            .open_table(HISTORY)
            .map_err(StoreError::db("retention"))?;
        for entry in history
            .range((id.as_str(), 0u64)..(id.as_str(), below))
            .map_err(StoreError::db("retention"))?
        {
            if victims.len() >= limit {
                break;
            }
            let (k, v) = entry.map_err(StoreError::db("retention"))?;
            let (m, version) = k.value();
            let ev: Event = decode_at("history", format!("({m}, {version})"), v.value())?;
            if ev.seq > mark {
                break;
            }
            victims.push(version);
        }
    }
    let n = victims.len() as u64;
    for version in victims {
        ctx.remove(Removal::History(id.clone(), version));
    }
    Ok(n)
}

/// Whether any event above the watermark (not yet in the index) belongs to `id`.
fn has_pending_events(ctx: &WriteCtx<'_, '_>, id: &MachineId) -> Result<bool> {
    #[derive(serde::Deserialize)]
    struct Head {
        machine_id: String,
    }
    let mark = watermark(ctx)?;
    for entry in ctx
        .tables
        .events
        .range(mark.saturating_add(1)..)
        .map_err(StoreError::db("retention"))?
    {
        let (k, v) = entry.map_err(StoreError::db("retention"))?;
        let head: Head = decode_at("events", k.value(), v.value())?;
        if head.machine_id == id.as_str() {
            return Ok(true);
        }
    }
    Ok(false)
}

impl Store {
    /// One retention pass over the whole store (see the module docs). Safe to run while the
    /// agent serves: every batch is a small ordinary write.
    pub async fn retain(&self, policy: &RetentionPolicy) -> Result<RetentionReport> {
        let mut report = RetentionReport::default();
        let now = Timestamp::now();
        let keep = policy.max_events_per_machine.max(1);
        // What to do, decided over one snapshot holding one record at a time; done afterwards.
        let mut expired = Vec::new();
        let mut trim = Vec::new();
        self.each_machine(|rec| {
            if rec.state == State::Destroyed
                && now.saturating_since(rec.updated_at) >= policy.destroyed_machine_ttl
            {
                expired.push(rec.id);
            } else if rec.version > keep {
                trim.push((rec.id, rec.version - keep + 1));
            }
            true
        })?;
        for id in &expired {
            self.remove_destroyed(id, policy, &mut report).await?;
        }
        for (id, below) in &trim {
            self.trim_machine(id, *below, policy, &mut report).await?;
        }
        self.trim_events(policy, &mut report).await?;
        if !report.is_empty() {
            tracing::info!(
                machines = report.machines_removed,
                history_rows = report.history_rows_removed,
                events = report.events_removed,
                batches = report.batches,
                "retention removed old history"
            );
        }
        Ok(report)
    }

    /// Removes a destroyed machine's history in batches, then its record (once no event of it
    /// is still waiting to be indexed).
    async fn remove_destroyed(
        &self,
        id: &MachineId,
        policy: &RetentionPolicy,
        report: &mut RetentionReport,
    ) -> Result<()> {
        let limit = policy.batch_rows.max(1);
        loop {
            let id = id.clone();
            let (rows, removed) = self
                .write(move |w| {
                    let Some(cur) = w.machine(&id)? else {
                        return Ok((0, false));
                    };
                    if cur.state != State::Destroyed {
                        return Ok((0, false));
                    }
                    let rows = trim_history(w, &id, u64::MAX, limit)?;
                    if rows == 0 && !has_pending_events(w, &id)? {
                        // At most MAX_CONFIG_VERSIONS - 1 rows: with the record, in one batch.
                        w.remove_config_versions(&id)?;
                        w.remove(Removal::Machine(id));
                        return Ok((0, true));
                    }
                    Ok((rows, false))
                })
                .await?;
            report.batches += 1;
            report.history_rows_removed += rows;
            if removed {
                report.machines_removed += 1;
            }
            if rows == 0 {
                return Ok(());
            }
            tokio::time::sleep(policy.pause).await;
        }
    }

    /// Trims a live machine's history rows below version `below`, in batches.
    async fn trim_machine(
        &self,
        id: &MachineId,
        below: u64,
        policy: &RetentionPolicy,
        report: &mut RetentionReport,
    ) -> Result<()> {
        let limit = policy.batch_rows.max(1);
        if !self.history_trimmable(id, below)? {
            return Ok(());
        }
        loop {
            let id = id.clone();
            let rows = self
                .write(move |w| trim_history(w, &id, below, limit))
                .await?;
            report.batches += 1;
            report.history_rows_removed += rows;
            if rows < limit as u64 {
                return Ok(());
            }
            tokio::time::sleep(policy.pause).await;
        }
    }

    /// Removes the host-wide events past `max_events`, in batches, never past the indexing
    /// watermark nor (with export on) past the export hold.
    async fn trim_events(
        &self,
        policy: &RetentionPolicy,
        report: &mut RetentionReport,
    ) -> Result<()> {
        let limit = policy.batch_rows.max(1);
        let max_events = policy.max_events.max(1);
        let export_hold = policy.export_hold;
        if !self.events_trimmable(max_events, export_hold)? {
            return Ok(());
        }
        loop {
            let removed = self
                .write(move |w| {
                    let mark = watermark(w)?;
                    let Some(last) = w
                        .tables
                        .events
                        .last()
                        .map_err(StoreError::db("retention"))?
                        .map(|(k, _)| k.value())
                    else {
                        return Ok(0u64);
                    };
                    let mut cutoff = last.saturating_sub(max_events).min(mark);
                    if let Some(hold) = export_hold {
                        cutoff = export_floor(w, cutoff, hold)?;
                    }
                    remove_events_through(w, cutoff, limit)
                })
                .await?;
            report.batches += 1;
            report.events_removed += removed;
            if removed < limit as u64 {
                return Ok(());
            }
            tokio::time::sleep(policy.pause).await;
        }
    }
}

impl Store {
    /// Whether `id` has a materialized history row below version `below`, in the last committed
    /// snapshot (what [`trim_history`] would find first).
    fn history_trimmable(&self, id: &MachineId, below: u64) -> Result<bool> {
        let txn = self.read_txn("retention")?;
        let mark = history_watermark(&txn)?;
        let history = open_ro(&txn, HISTORY, "retention")?;
        let first = history
            .range((id.as_str(), 0u64)..(id.as_str(), below))
            .map_err(StoreError::db("retention"))?
            .next();
        let Some(entry) = first else {
            return Ok(false);
        };
        let (k, v) = entry.map_err(StoreError::db("retention"))?;
        let (m, version) = k.value();
        let ev: Event = decode_at("history", format!("({m}, {version})"), v.value())?;
        Ok(ev.seq <= mark)
    }

    /// Whether the events pass has a reason to write, in the last committed snapshot: an event
    /// at or below the cutoff it would compute, or an index behind the log (see the module docs).
    fn events_trimmable(&self, max_events: u64, export_hold: Option<u64>) -> Result<bool> {
        let (first, last, mark) = {
            let txn = self.read_txn("retention")?;
            let mark = history_watermark(&txn)?;
            let events = open_ro(&txn, EVENTS, "retention")?;
            let last = events
                .last()
                .map_err(StoreError::db("retention"))?
                .map(|(k, _)| k.value());
            (first_seq(&events)?, last, mark)
        };
        let (Some(first), Some(last)) = (first, last) else {
            return Ok(false);
        };
        if mark < last {
            return Ok(true);
        }
        let mut cutoff = last.saturating_sub(max_events).min(mark);
        if let Some(hold) = export_hold {
            let acked = self.export_state()?.1.acked_seq.unwrap_or(0);
            cutoff = held_cutoff(cutoff, acked, hold);
        }
        Ok(first <= cutoff)
    }
}

/// Removes up to `limit` of the oldest events with a seq at most `cutoff`.
fn remove_events_through(w: &mut WriteCtx<'_, '_>, cutoff: u64, limit: usize) -> Result<u64> {
    let mut victims = Vec::new();
    for entry in w
        .tables
        .events
        .range(..=cutoff)
        .map_err(StoreError::db("retention"))?
    {
        if victims.len() >= limit {
            break;
        }
        let (k, _) = entry.map_err(StoreError::db("retention"))?;
        victims.push(k.value());
    }
    let n = victims.len() as u64;
    for seq in victims {
        w.remove(Removal::Event(seq));
    }
    Ok(n)
}

/// The highest seq retention may remove with export on: nothing above the saved export position,
/// unless that would keep more than `hold` events beyond the normal cutoff.
fn export_floor(ctx: &WriteCtx<'_, '_>, cutoff: u64, hold: u64) -> Result<u64> {
    let acked = ctx.export_cursor()?.acked_seq.unwrap_or(0);
    Ok(held_cutoff(cutoff, acked, hold))
}

/// `cutoff` lowered to the export position `acked`, but by no more than `hold` events.
fn held_cutoff(cutoff: u64, acked: u64, hold: u64) -> u64 {
    cutoff.min(acked.max(cutoff.saturating_sub(hold)))
}

/// The oldest seq kept in `events`, if any.
pub(crate) fn first_seq(events: &impl ReadableTable<u64, &'static [u8]>) -> Result<Option<u64>> {
    Ok(events
        .first()
        .map_err(StoreError::db("events"))?
        .map(|(k, _)| k.value()))
}
