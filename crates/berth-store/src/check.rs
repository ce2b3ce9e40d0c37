//! The consistency check: every record decoded and the cross-table invariants verified in one
//! snapshot ([`Store::check`]; page checksums are `offline::verify_pages`'s).

use std::collections::BTreeMap;

use berth_types::{Event, MachineRecord, OperationRecord};
use redb::ReadableTable;
use serde::Serialize;

use crate::Store;
use crate::codec::decode_at;
use crate::error::{Result, StoreError};
use crate::read::{history_watermark, open_ro};
use crate::schema::{EVENTS, HISTORY, MACHINES, META, OPERATIONS};

/// What [`Store::check`] found.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CheckReport {
    /// Machines examined.
    pub machines: u64,
    /// Events examined.
    pub events: u64,
    /// Lowest and highest seq in the event log.
    pub seq_range: Option<(u64, u64)>,
    /// Operations in flight.
    pub operations: u64,
    /// Every invariant violation found; empty means healthy.
    pub problems: Vec<String>,
}

impl CheckReport {
    /// Whether no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl Store {
    /// Decodes every record and checks the cross-table invariants in one snapshot:
    /// keys match their records; the event log's seqs are contiguous and below `next_seq`; every
    /// event is the same as its history row; each machine's history is versions `1..=version`
    /// (or a contiguous suffix of them, where retention trimmed it) and, when complete, folds to
    /// the record; every operation in flight belongs to a machine that points back at it.
    fn check_unguarded(&self) -> Result<CheckReport> {
        let start = self.inner.timings.start();
        let txn = self.read_txn("check")?;
        let report = check_of(&txn)?;
        let n = report.machines + report.events;
        self.inner
            .timings
            .finish("check", start, n as usize, 0, || "consistency check".into());
        Ok(report)
    }

    /// Decodes every record and checks the cross-table invariants in one snapshot (see
    /// `check_of`). A redb error or panic while reading is reported as a problem, not an error.
    /// Page checksums are verified by [`Store::verify_pages`].
    pub fn check(&self) -> Result<CheckReport> {
        match self.guard_read(|| "every table (check)".into(), || self.check_unguarded()) {
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
}

/// [`Store::check`] over one read transaction.
pub(crate) fn check_of(txn: &redb::ReadTransaction) -> Result<CheckReport> {
    {
        let mut report = CheckReport::default();
        let p = &mut report.problems;

        let meta = open_ro(txn, META, "check")?;
        let next_seq = crate::schema::next_seq(&meta, &open_ro(txn, EVENTS, "check")?)?;

        let history_t = open_ro(txn, HISTORY, "check")?;
        let mut histories: BTreeMap<String, Vec<Event>> = BTreeMap::new();
        for entry in history_t.iter().map_err(StoreError::db("check"))? {
            let (k, v) = entry.map_err(StoreError::db("check"))?;
            let (m, ver) = k.value();
            match decode_at::<Event>("history", format!("({m}, {ver})"), v.value()) {
                Ok(ev) => {
                    if ev.machine_id.as_str() != m || ev.version != ver {
                        p.push(format!(
                            "history ({m}, {ver}) holds event for ({}, {})",
                            ev.machine_id, ev.version
                        ));
                    }
                    histories.entry(m.to_owned()).or_default().push(ev);
                }
                Err(e) => p.push(e.to_string()),
            }
        }

        let watermark = history_watermark(txn)?;
        let mut machine_ids = std::collections::BTreeSet::new();
        for entry in open_ro(txn, MACHINES, "check")?
            .iter()
            .map_err(StoreError::db("check"))?
        {
            let (k, _) = entry.map_err(StoreError::db("check"))?;
            machine_ids.insert(k.value().to_owned());
        }
        // Where retention trimmed a history, its index rows start above version 1; an event of a
        // version below that (or of a machine retention removed whole) has no row, rightly.
        let first_indexed: BTreeMap<String, u64> = histories
            .iter()
            .filter_map(|(m, h)| h.first().map(|e| (m.clone(), e.version)))
            .collect();
        let events_t = open_ro(txn, EVENTS, "check")?;
        let mut prev: Option<u64> = None;
        for entry in events_t.iter().map_err(StoreError::db("check"))? {
            let (k, v) = entry.map_err(StoreError::db("check"))?;
            let seq = k.value();
            report.events += 1;
            if let Some(prev) = prev
                && seq != prev + 1
            {
                p.push(format!("event log gap: seq {prev} is followed by {seq}"));
            }
            report.seq_range = Some((report.seq_range.map_or(seq, |r| r.0), seq));
            prev = Some(seq);
            if seq >= next_seq {
                p.push(format!("event seq {seq} is not below next_seq {next_seq}"));
            }
            match decode_at::<Event>("events", seq, v.value()) {
                Ok(ev) => {
                    if ev.seq != seq {
                        p.push(format!("events[{seq}] holds seq {}", ev.seq));
                    }
                    let in_history = histories
                        .get(ev.machine_id.as_str())
                        .and_then(|h| h.iter().find(|h| h.version == ev.version));
                    match (seq <= watermark, in_history) {
                        (true, Some(h)) if *h != ev => {
                            p.push(format!("events[{seq}] differs from its history row"))
                        }
                        (true, None) => {
                            let m = ev.machine_id.as_str();
                            let trimmed = match first_indexed.get(m) {
                                Some(first) => ev.version < *first,
                                None => !machine_ids.contains(m),
                            };
                            if !trimmed {
                                p.push(format!(
                                    "events[{seq}] is below the history watermark {watermark} but has no history row"
                                ));
                            }
                        }
                        // Materialized by a generation still in progress.
                        (false, Some(h)) if *h != ev => {
                            p.push(format!("events[{seq}] differs from its history row"))
                        }
                        (false, Some(_)) => {}
                        // Not yet materialized: the log is this transition's history row.
                        (false, None) => histories
                            .entry(ev.machine_id.to_string())
                            .or_default()
                            .push(ev),
                        (true, Some(_)) => {}
                    }
                }
                Err(e) => p.push(e.to_string()),
            }
        }

        let machines_t = open_ro(txn, MACHINES, "check")?;
        let mut active_ops: BTreeMap<u64, String> = BTreeMap::new();
        for entry in machines_t.iter().map_err(StoreError::db("check"))? {
            let (k, v) = entry.map_err(StoreError::db("check"))?;
            let id = k.value();
            report.machines += 1;
            let rec: MachineRecord = match decode_at("machines", id, v.value()) {
                Ok(r) => r,
                Err(e) => {
                    p.push(e.to_string());
                    continue;
                }
            };
            if rec.id.as_str() != id {
                p.push(format!("machines[{id}] holds machine {}", rec.id));
            }
            if let Some(op) = rec.active_op {
                active_ops.insert(op, id.to_owned());
            }
            let history = histories.remove(id).unwrap_or_default();
            check_history(&rec, &history, p);
        }
        for (m, h) in &histories {
            if let Some(first) = h.first()
                && first.version == 1
            {
                // Complete history of a machine whose record is gone: only retention may do that.
                p.push(format!("history of {m} has no machine record"));
            }
        }

        let ops_t = open_ro(txn, OPERATIONS, "check")?;
        for entry in ops_t.iter().map_err(StoreError::db("check"))? {
            let (k, v) = entry.map_err(StoreError::db("check"))?;
            report.operations += 1;
            match decode_at::<OperationRecord>("operations", k.value(), v.value()) {
                Ok(op) => {
                    if active_ops.get(&op.id).map(String::as_str) != Some(op.machine_id.as_str()) {
                        p.push(format!(
                            "operation {} is not the active operation of machine {}",
                            op.id, op.machine_id
                        ));
                    }
                    active_ops.remove(&op.id);
                }
                Err(e) => p.push(e.to_string()),
            }
        }
        for (op, m) in active_ops {
            p.push(format!(
                "machine {m} points at operation {op}, which is not in flight"
            ));
        }
        Ok(report)
    }
}

fn check_history(rec: &MachineRecord, history: &[Event], p: &mut Vec<String>) {
    let Some(first) = history.first() else {
        // Retention removes a destroyed machine's history before its record.
        if rec.state != berth_types::State::Destroyed {
            p.push(format!("machine {} has no history", rec.id));
        }
        return;
    };
    for pair in history.windows(2) {
        if pair[1].version != pair[0].version + 1 {
            p.push(format!(
                "history of {} jumps from version {} to {}",
                rec.id, pair[0].version, pair[1].version
            ));
        }
        if pair[1].from != Some(pair[0].to) {
            p.push(format!(
                "history of {} version {} starts from {:?}, previous ended in {}",
                rec.id, pair[1].version, pair[1].from, pair[0].to
            ));
        }
    }
    for ev in history {
        if let Some(from) = ev.from
            && !from.can_transition_to(ev.to)
        {
            p.push(format!(
                "history of {} version {} is illegal: {from} → {}",
                rec.id, ev.version, ev.to
            ));
        }
    }
    let last = history.last().unwrap_or(first);
    if last.version != rec.version {
        p.push(format!(
            "machine {} is at version {} but its history ends at {}",
            rec.id, rec.version, last.version
        ));
    }
    if first.version == 1 {
        let mut folded = rec.clone();
        folded.state = berth_types::State::Created;
        folded.version = 0;
        folded.pid = None;
        folded.exit = None;
        folded.restarts = 0;
        for ev in history {
            folded.apply(ev);
        }
        if folded.history_view() != rec.history_view() {
            p.push(format!(
                "machine {} does not match the fold of its history: record {:?}, fold {:?}",
                rec.id,
                rec.history_view(),
                folded.history_view()
            ));
        }
    }
}
