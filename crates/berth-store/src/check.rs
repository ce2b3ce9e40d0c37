//! The consistency check: every record decoded and the cross-table invariants verified in one
//! snapshot ([`Store::check`]; page checksums are `offline::verify_pages`'s).

use std::collections::{BTreeMap, BTreeSet};

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

/// Each machine's history as the check sees it: the index rows, then (by [`check_events`]) the
/// log's events not yet materialized.
type Histories = BTreeMap<String, Vec<Event>>;

/// [`Store::check`] over one read transaction.
pub(crate) fn check_of(txn: &redb::ReadTransaction) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let meta = open_ro(txn, META, "check")?;
    let next_seq = crate::schema::next_seq(&meta, &open_ro(txn, EVENTS, "check")?)?;
    let mut histories = read_histories(txn, &mut report.problems)?;
    check_events(txn, next_seq, &mut histories, &mut report)?;
    let active_ops = check_machines(txn, &mut histories, &mut report)?;
    for (m, h) in &histories {
        if let Some(first) = h.first()
            && first.version == 1
        {
            // Complete history of a machine whose record is gone: only retention may do that.
            report
                .problems
                .push(format!("history of {m} has no machine record"));
        }
    }
    check_operations(txn, active_ops, &mut report)?;
    Ok(report)
}

/// The `history` index, each row checked against its key.
fn read_histories(txn: &redb::ReadTransaction, p: &mut Vec<String>) -> Result<Histories> {
    let mut histories = Histories::new();
    for entry in open_ro(txn, HISTORY, "check")?
        .iter()
        .map_err(StoreError::db("check"))?
    {
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
    Ok(histories)
}

/// The ids of every machine record.
fn machine_ids(txn: &redb::ReadTransaction) -> Result<BTreeSet<String>> {
    let mut ids = BTreeSet::new();
    for entry in open_ro(txn, MACHINES, "check")?
        .iter()
        .map_err(StoreError::db("check"))?
    {
        let (k, _) = entry.map_err(StoreError::db("check"))?;
        ids.insert(k.value().to_owned());
    }
    Ok(ids)
}

/// Where an event of the log stands against the history index.
struct IndexView<'a> {
    watermark: u64,
    machine_ids: BTreeSet<String>,
    /// Where retention trimmed a history, its index rows start above version 1; an event of a
    /// version below that (or of a machine retention removed whole) has no row, rightly.
    first_indexed: BTreeMap<String, u64>,
    histories: &'a mut Histories,
}

/// The event log: seqs contiguous and below `next_seq`, each event equal to its history row
/// (events above the watermark without one are added to `histories`).
fn check_events(
    txn: &redb::ReadTransaction,
    next_seq: u64,
    histories: &mut Histories,
    report: &mut CheckReport,
) -> Result<()> {
    let mut view = IndexView {
        watermark: history_watermark(txn)?,
        machine_ids: machine_ids(txn)?,
        first_indexed: histories
            .iter()
            .filter_map(|(m, h)| h.first().map(|e| (m.clone(), e.version)))
            .collect(),
        histories,
    };
    let mut prev: Option<u64> = None;
    for entry in open_ro(txn, EVENTS, "check")?
        .iter()
        .map_err(StoreError::db("check"))?
    {
        let (k, v) = entry.map_err(StoreError::db("check"))?;
        let seq = k.value();
        report.events += 1;
        let p = &mut report.problems;
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
            Ok(ev) => check_event(seq, ev, &mut view, p),
            Err(e) => p.push(e.to_string()),
        }
    }
    Ok(())
}

/// One event of the log against its history row.
fn check_event(seq: u64, ev: Event, view: &mut IndexView<'_>, p: &mut Vec<String>) {
    if ev.seq != seq {
        p.push(format!("events[{seq}] holds seq {}", ev.seq));
    }
    let watermark = view.watermark;
    let in_history = view
        .histories
        .get(ev.machine_id.as_str())
        .and_then(|h| h.iter().find(|h| h.version == ev.version));
    match (seq <= watermark, in_history) {
        // Below the watermark, or materialized by a generation still in progress.
        (_, Some(h)) if *h != ev => p.push(format!("events[{seq}] differs from its history row")),
        (_, Some(_)) => {}
        (true, None) => {
            let m = ev.machine_id.as_str();
            let trimmed = match view.first_indexed.get(m) {
                Some(first) => ev.version < *first,
                None => !view.machine_ids.contains(m),
            };
            if !trimmed {
                p.push(format!(
                    "events[{seq}] is below the history watermark {watermark} but has no history row"
                ));
            }
        }
        // Not yet materialized: the log is this transition's history row.
        (false, None) => view
            .histories
            .entry(ev.machine_id.to_string())
            .or_default()
            .push(ev),
    }
}

/// Every machine record against its key and its history (taken out of `histories`); returns the
/// operations the records point at.
fn check_machines(
    txn: &redb::ReadTransaction,
    histories: &mut Histories,
    report: &mut CheckReport,
) -> Result<BTreeMap<u64, String>> {
    let mut active_ops = BTreeMap::new();
    for entry in open_ro(txn, MACHINES, "check")?
        .iter()
        .map_err(StoreError::db("check"))?
    {
        let (k, v) = entry.map_err(StoreError::db("check"))?;
        let id = k.value();
        report.machines += 1;
        let p = &mut report.problems;
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
    Ok(active_ops)
}

/// Every operation in flight belongs to a machine that points back at it, and the other way round.
fn check_operations(
    txn: &redb::ReadTransaction,
    mut active_ops: BTreeMap<u64, String>,
    report: &mut CheckReport,
) -> Result<()> {
    for entry in open_ro(txn, OPERATIONS, "check")?
        .iter()
        .map_err(StoreError::db("check"))?
    {
        let (k, v) = entry.map_err(StoreError::db("check"))?;
        report.operations += 1;
        let p = &mut report.problems;
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
        report.problems.push(format!(
            "machine {m} points at operation {op}, which is not in flight"
        ));
    }
    Ok(())
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
        // A config change (`update`), an image pull (`pull`) and a health check's change of
        // status (`check`) are recorded in the state they happened in.
        let in_place = matches!(
            ev.kind,
            berth_types::EventKind::Update
                | berth_types::EventKind::Pull
                | berth_types::EventKind::Check
        ) && ev.in_place();
        if let Some(from) = ev.from
            && !in_place
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
