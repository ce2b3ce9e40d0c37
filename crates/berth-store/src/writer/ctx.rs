//! The write context a closure gets: typed reads and writes, staged per closure and applied to the
//! batch's transaction only if the closure returns `Ok`.

use std::collections::{BTreeMap, HashMap};

use berth_types::{
    ConfigVersion, Event, EventKind, ExitInfo, MachineId, MachineRecord, OpKind, OperationRecord,
    Source, State, StepRecord, Timestamp,
};
use redb::{ReadableTable, Table};

use super::dirty::Dirty;
use super::history::HistoryRow;
use crate::codec::{self, decode_at};
use crate::error::{Result, StoreError};
use crate::schema::{CONFIG_VERSIONS, EVENTS, HISTORY, MACHINES, META, OPERATIONS};

/// The writer's record cache is dropped when it grows past this (a host runs far fewer).
const MAX_CACHED_RECORDS: usize = 100_000;

/// Open tables of the batch's write transaction.
pub(crate) struct Tables<'txn> {
    pub(crate) machines: Table<'txn, &'static str, &'static [u8]>,
    pub(crate) events: Table<'txn, u64, &'static [u8]>,
    pub(crate) operations: Table<'txn, u64, &'static [u8]>,
}

impl<'txn> Tables<'txn> {
    /// Opens the tables every batch writes.
    pub(crate) fn open(txn: &'txn redb::WriteTransaction) -> Result<Self> {
        Ok(Self {
            machines: txn
                .open_table(MACHINES)
                .map_err(StoreError::db("open machines"))?,
            events: txn
                .open_table(EVENTS)
                .map_err(StoreError::db("open events"))?,
            operations: txn
                .open_table(OPERATIONS)
                .map_err(StoreError::db("open operations"))?,
        })
    }
}

/// What one closure has written, not yet applied to the transaction.
#[derive(Default)]
pub(crate) struct Staged {
    machines: BTreeMap<MachineId, MachineRecord>,
    events: Vec<Event>,
    operations: BTreeMap<u64, Option<OperationRecord>>,
    /// Older config versions written (`Some`) or removed (`None`), keyed (machine, version).
    config_versions: BTreeMap<(MachineId, u64), Option<ConfigVersion>>,
    meta: Vec<(&'static str, Vec<u8>)>,
    removals: Vec<Removal>,
    next_seq: u64,
    next_op_id: u64,
}

/// A row retention removes.
#[derive(Debug)]
pub(crate) enum Removal {
    Machine(MachineId),
    History(MachineId, u64),
    Event(u64),
}

/// A new config version to record ([`WriteCtx::record_config`]).
#[derive(Debug, Clone)]
pub struct ConfigChange {
    /// The new config (validated by the caller).
    pub config: berth_types::MachineConfig,
    /// Image machines: the digest the new config's image resolved to.
    pub image_digest: Option<String>,
    /// Refuse unless the current config version is this one (compare-and-swap).
    pub expect_config_version: Option<u64>,
    /// Who asked.
    pub source: Source,
    /// The `update` event's reason.
    pub reason: String,
}

/// A transition to record.
#[derive(Debug, Clone)]
pub struct TransitionSpec {
    /// Target state.
    pub to: State,
    /// Event type.
    pub kind: EventKind,
    /// Who caused it.
    pub source: Source,
    /// Why.
    pub reason: String,
    /// The workload's pid after the transition.
    pub pid: Option<u32>,
    /// Exit details, when caused by an exit.
    pub exit: Option<ExitInfo>,
    /// Refuse unless the machine is at this version.
    pub expect_version: Option<u64>,
}

impl TransitionSpec {
    /// A transition to `to` with no pid, exit or version check.
    pub fn new(to: State, kind: EventKind, source: Source, reason: impl Into<String>) -> Self {
        Self {
            to,
            kind,
            source,
            reason: reason.into(),
            pid: None,
            exit: None,
            expect_version: None,
        }
    }

    /// Sets the pid the machine has after the transition.
    pub fn with_pid(mut self, pid: Option<u32>) -> Self {
        self.pid = pid;
        self
    }

    /// Attaches exit details.
    pub fn with_exit(mut self, exit: ExitInfo) -> Self {
        self.exit = Some(exit);
        self
    }

    /// Requires the machine to be at `version`.
    pub fn expecting(mut self, version: u64) -> Self {
        self.expect_version = Some(version);
        self
    }
}

/// The view a write closure gets: typed reads and writes that keep the store's invariants.
///
/// Invariants it maintains: every transition is legal by [`State::can_transition_to`]; each
/// transition bumps the machine's version by one and appends history row `(id, version)` and one
/// event with the next `seq`, all in the same transaction as the record change.
pub struct WriteCtx<'a, 'txn> {
    pub(crate) tables: &'a mut Tables<'txn>,
    pub(crate) txn: &'a redb::WriteTransaction,
    pub(crate) dirty: &'a mut Dirty,
    pub(crate) cache: &'a mut HashMap<MachineId, MachineRecord>,
    pub(crate) admission: &'a mut crate::admission::AdmissionIndex,
    staged: Staged,
    committed_seq: u64,
    committed_op_id: u64,
    now: Timestamp,
    pub(crate) bytes: usize,
    /// History rows of the events this batch committed, for the writer to materialize.
    new_history: Vec<HistoryRow>,
    /// The events this batch committed, for the writer's ring of recent events.
    new_events: Vec<Event>,
    /// The highest event seq this batch removed (retention).
    events_removed_through: Option<u64>,
}

/// What a batch's closures left for the commit: the counters to continue from, the history rows
/// to materialize, and the bytes of records written.
pub(crate) struct BatchOutcome {
    pub next_seq: u64,
    pub next_op_id: u64,
    pub new_history: Vec<HistoryRow>,
    pub new_events: Vec<Event>,
    pub events_removed_through: Option<u64>,
    pub bytes: usize,
}

impl std::fmt::Debug for WriteCtx<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteCtx")
            .field("next_seq", &self.staged.next_seq)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

impl<'a, 'txn> WriteCtx<'a, 'txn> {
    /// A context over the batch's transaction, continuing from the committed counters.
    #[allow(clippy::too_many_arguments)] // the writer's state, lent for one batch
    pub(crate) fn new(
        tables: &'a mut Tables<'txn>,
        txn: &'a redb::WriteTransaction,
        dirty: &'a mut Dirty,
        cache: &'a mut HashMap<MachineId, MachineRecord>,
        admission: &'a mut crate::admission::AdmissionIndex,
        next_seq: u64,
        next_op_id: u64,
    ) -> Self {
        Self {
            tables,
            txn,
            dirty,
            cache,
            admission,
            staged: Staged::default(),
            committed_seq: next_seq,
            committed_op_id: next_op_id,
            now: Timestamp::now(),
            bytes: 0,
            new_history: Vec::new(),
            new_events: Vec::new(),
            events_removed_through: None,
        }
    }

    /// Ends the batch: what the commit needs from it.
    pub(crate) fn into_outcome(self) -> BatchOutcome {
        BatchOutcome {
            next_seq: self.committed_seq,
            next_op_id: self.committed_op_id,
            new_history: self.new_history,
            new_events: self.new_events,
            events_removed_through: self.events_removed_through,
            bytes: self.bytes,
        }
    }

    pub(super) fn begin_job(&mut self) {
        self.staged = Staged {
            next_seq: self.committed_seq,
            next_op_id: self.committed_op_id,
            ..Staged::default()
        };
    }

    pub(super) fn discard_staged(&mut self) {
        self.staged = Staged::default();
    }

    pub(super) fn flush_staged(&mut self) -> Result<()> {
        let staged = std::mem::take(&mut self.staged);
        if self.cache.len() > MAX_CACHED_RECORDS {
            self.cache.clear();
        }
        self.apply_machines(staged.machines)?;
        self.apply_events(staged.events)?;
        self.apply_operations(&staged.operations)?;
        self.apply_config_versions(&staged.config_versions)?;
        self.apply_removals(&staged.removals)?;
        self.apply_meta(&staged.meta)?;
        self.committed_seq = staged.next_seq;
        self.committed_op_id = staged.next_op_id;
        Ok(())
    }

    fn apply_machines(&mut self, machines: BTreeMap<MachineId, MachineRecord>) -> Result<()> {
        for (id, rec) in machines {
            let bytes = codec::encode(&rec);
            self.bytes += bytes.len();
            self.tables
                .machines
                .insert(id.as_str(), bytes.as_slice())
                .map_err(StoreError::db("write machine"))?;
            self.dirty.machine(id.as_str());
            self.admission.observe(&rec);
            self.cache.insert(id, rec);
        }
        Ok(())
    }

    fn apply_events(&mut self, events: Vec<Event>) -> Result<()> {
        for ev in events {
            let bytes = codec::encode(&ev);
            self.bytes += bytes.len();
            self.tables
                .events
                .insert(ev.seq, bytes.as_slice())
                .map_err(StoreError::db("write event"))?;
            self.dirty.event(ev.seq);
            self.new_history.push(HistoryRow {
                machine_id: ev.machine_id.clone(),
                version: ev.version,
                bytes,
            });
            self.new_events.push(ev);
        }
        Ok(())
    }

    fn apply_operations(
        &mut self,
        operations: &BTreeMap<u64, Option<OperationRecord>>,
    ) -> Result<()> {
        for (id, op) in operations {
            self.dirty.operation(*id);
            match op {
                Some(op) => {
                    let bytes = codec::encode(op);
                    self.bytes += bytes.len();
                    self.tables
                        .operations
                        .insert(*id, bytes.as_slice())
                        .map_err(StoreError::db("write operation"))?;
                }
                None => {
                    self.tables
                        .operations
                        .remove(*id)
                        .map_err(StoreError::db("remove operation"))?;
                }
            }
        }
        Ok(())
    }

    fn apply_config_versions(
        &mut self,
        versions: &BTreeMap<(MachineId, u64), Option<ConfigVersion>>,
    ) -> Result<()> {
        if versions.is_empty() {
            return Ok(());
        }
        let mut table = self
            .txn
            .open_table(CONFIG_VERSIONS)
            .map_err(StoreError::db("open config_versions"))?;
        for ((id, version), row) in versions {
            self.dirty.config_version(id.as_str(), *version);
            match row {
                Some(row) => {
                    let bytes = codec::encode(row);
                    self.bytes += bytes.len();
                    table
                        .insert((id.as_str(), *version), bytes.as_slice())
                        .map_err(StoreError::db("write config version"))?;
                }
                None => {
                    table
                        .remove((id.as_str(), *version))
                        .map_err(StoreError::db("remove config version"))?;
                }
            }
        }
        Ok(())
    }

    fn apply_removals(&mut self, removals: &[Removal]) -> Result<()> {
        if !removals.is_empty() {
            let mut history = self
                .txn
                .open_table(HISTORY)
                .map_err(StoreError::db("open history"))?;
            for r in removals {
                match r {
                    Removal::Machine(id) => {
                        self.tables
                            .machines
                            .remove(id.as_str())
                            .map_err(StoreError::db("remove machine"))?;
                        self.cache.remove(id);
                        self.admission.forget(id);
                        self.dirty.machine(id.as_str());
                    }
                    Removal::History(id, version) => {
                        history
                            .remove((id.as_str(), *version))
                            .map_err(StoreError::db("remove history"))?;
                        self.dirty.history(id.as_str(), *version);
                    }
                    Removal::Event(seq) => {
                        self.tables
                            .events
                            .remove(*seq)
                            .map_err(StoreError::db("remove event"))?;
                        self.dirty.event(*seq);
                        self.events_removed_through =
                            Some(self.events_removed_through.unwrap_or(0).max(*seq));
                    }
                }
            }
        }
        Ok(())
    }

    fn apply_meta(&mut self, meta: &[(&'static str, Vec<u8>)]) -> Result<()> {
        if !meta.is_empty() {
            let mut table = self
                .txn
                .open_table(META)
                .map_err(StoreError::db("write meta"))?;
            for (k, v) in meta {
                table
                    .insert(*k, v.as_slice())
                    .map_err(StoreError::db("write meta"))?;
            }
        }
        Ok(())
    }

    /// Stages the removal of a row (retention).
    pub(crate) fn remove(&mut self, r: Removal) {
        self.staged.removals.push(r);
    }

    /// Sets a `meta` key (the store's own bookkeeping, e.g. the last compaction's report).
    pub(crate) fn put_meta(&mut self, key: &'static str, value: Vec<u8>) {
        self.staged.meta.push((key, value));
    }

    /// The commit time shared by every write in the batch.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// The machine as this closure sees it (including its own staged writes).
    pub fn machine(&self, id: &MachineId) -> Result<Option<MachineRecord>> {
        if let Some(rec) = self.staged.machines.get(id) {
            return Ok(Some(rec.clone()));
        }
        if let Some(rec) = self.cache.get(id) {
            return Ok(Some(rec.clone()));
        }
        let Some(v) = self
            .tables
            .machines
            .get(id.as_str())
            .map_err(StoreError::db("read machine"))?
        else {
            return Ok(None);
        };
        decode_at("machines", id, v.value()).map(Some)
    }

    fn machine_required(&self, id: &MachineId) -> Result<MachineRecord> {
        self.machine(id)?
            .ok_or_else(|| StoreError::NotFound(id.clone()))
    }

    fn push_event(
        &mut self,
        rec: &mut MachineRecord,
        from: Option<State>,
        spec: TransitionSpec,
    ) -> Event {
        let ev = Event {
            seq: self.staged.next_seq,
            machine_id: rec.id.clone(),
            version: rec.version + 1,
            kind: spec.kind,
            from,
            to: spec.to,
            source: spec.source,
            at: self.now,
            reason: spec.reason,
            pid: spec.pid,
            exit: spec.exit,
        };
        self.staged.next_seq += 1;
        rec.apply(&ev);
        self.staged.events.push(ev.clone());
        ev
    }

    /// Records a new machine in `created` state with its creation event.
    pub fn create_machine(
        &mut self,
        mut rec: MachineRecord,
        source: Source,
        reason: &str,
    ) -> Result<Event> {
        if self.machine(&rec.id)?.is_some() {
            return Err(StoreError::AlreadyExists(rec.id));
        }
        rec.state = State::Created;
        rec.version = 0;
        rec.created_at = self.now;
        rec.pid = None;
        rec.exit = None;
        rec.restarts = 0;
        rec.active_op = None;
        let spec = TransitionSpec::new(State::Created, EventKind::Create, source, reason);
        let ev = self.push_event(&mut rec, None, spec);
        self.staged.machines.insert(rec.id.clone(), rec);
        Ok(ev)
    }

    /// Records an event that notes something that happened to the machine in its current state
    /// (`from` = `to`; [`Event::in_place`]): an image pulled for it. Refused for an unknown or
    /// destroyed machine.
    pub fn note(
        &mut self,
        id: &MachineId,
        kind: EventKind,
        source: Source,
        reason: &str,
    ) -> Result<Event> {
        let mut rec = self.machine_required(id)?;
        if rec.state == State::Destroyed {
            return Err(StoreError::NotFound(id.clone()));
        }
        let (state, pid) = (rec.state, rec.pid);
        let spec = TransitionSpec::new(state, kind, source, reason).with_pid(pid);
        let ev = self.push_event(&mut rec, Some(state), spec);
        self.staged.machines.insert(id.clone(), rec);
        Ok(ev)
    }

    /// Records a transition, refusing an illegal one or a version mismatch.
    pub fn transition(&mut self, id: &MachineId, spec: TransitionSpec) -> Result<Event> {
        let mut rec = self.machine_required(id)?;
        if let Some(expected) = spec.expect_version
            && expected != rec.version
        {
            return Err(StoreError::VersionMismatch {
                id: id.clone(),
                expected,
                actual: rec.version,
            });
        }
        rec.state
            .transition(spec.to)
            .map_err(|source| StoreError::IllegalTransition {
                id: id.clone(),
                source,
            })?;
        let from = rec.state;
        let ev = self.push_event(&mut rec, Some(from), spec);
        self.staged.machines.insert(id.clone(), rec);
        Ok(ev)
    }

    /// Replaces a machine's metadata (no transition, no version change).
    pub fn set_metadata(
        &mut self,
        id: &MachineId,
        metadata: BTreeMap<String, String>,
    ) -> Result<MachineRecord> {
        let mut rec = self.machine_required(id)?;
        rec.metadata = metadata;
        self.staged.machines.insert(id.clone(), rec.clone());
        Ok(rec)
    }

    /// Records a new config version of a machine: the config it replaces is kept as an older
    /// version, the one that falls out of the last [`crate::MAX_CONFIG_VERSIONS`] is removed,
    /// and one `update` event is appended (from and to the machine's current state: a config
    /// change is not a transition). Refused while an operation is in flight ([`StoreError::Busy`]),
    /// for a destroyed machine (the [`StoreError::IllegalTransition`] a start gets), and when
    /// `expect_config_version` is not the current version
    /// ([`StoreError::ConfigVersionMismatch`]), all against committed state and every earlier
    /// write of the batch.
    pub fn record_config(&mut self, id: &MachineId, change: ConfigChange) -> Result<Event> {
        let mut rec = self.machine_required(id)?;
        if let Some(op) = rec.active_op {
            return Err(StoreError::Busy { id: id.clone(), op });
        }
        if rec.state == State::Destroyed {
            return Err(StoreError::IllegalTransition {
                id: id.clone(),
                source: berth_types::IllegalTransition {
                    from: rec.state,
                    to: State::Starting,
                },
            });
        }
        if let Some(expected) = change.expect_config_version
            && expected != rec.config_version
        {
            return Err(StoreError::ConfigVersionMismatch {
                id: id.clone(),
                expected,
                actual: rec.config_version,
            });
        }
        let old = rec.current_config();
        let new_version = old.version + 1;
        if let Some(gone) = new_version.checked_sub(crate::MAX_CONFIG_VERSIONS)
            && gone > 0
        {
            self.staged.config_versions.insert((id.clone(), gone), None);
        }
        self.staged
            .config_versions
            .insert((id.clone(), old.version), Some(old));
        rec.config = change.config;
        rec.image_digest = change.image_digest;
        rec.config_version = new_version;
        rec.config_updated_at = Some(self.now);
        let (state, pid) = (rec.state, rec.pid);
        let spec = TransitionSpec::new(state, EventKind::Update, change.source, change.reason)
            .with_pid(pid);
        let ev = self.push_event(&mut rec, Some(state), spec);
        self.staged.machines.insert(id.clone(), rec);
        Ok(ev)
    }

    /// Records that one of a machine's health checks changed status: one `check` event from
    /// and to the machine's current state (not a transition). A passing result that changes
    /// nothing is never written; only changes come here.
    pub fn record_check(&mut self, id: &MachineId, reason: String) -> Result<Event> {
        let mut rec = self.machine_required(id)?;
        let (state, pid) = (rec.state, rec.pid);
        let spec =
            TransitionSpec::new(state, EventKind::Check, Source::Berth, reason).with_pid(pid);
        let ev = self.push_event(&mut rec, Some(state), spec);
        self.staged.machines.insert(id.clone(), rec);
        Ok(ev)
    }

    /// One of a machine's older config versions, as this closure sees it (the current one is
    /// the record's).
    pub fn older_config(&self, id: &MachineId, version: u64) -> Result<Option<ConfigVersion>> {
        if let Some(row) = self.staged.config_versions.get(&(id.clone(), version)) {
            return Ok(row.clone());
        }
        let table = self
            .txn
            .open_table(CONFIG_VERSIONS)
            .map_err(StoreError::db("read config version"))?;
        let Some(v) = table
            .get((id.as_str(), version))
            .map_err(StoreError::db("read config version"))?
        else {
            return Ok(None);
        };
        decode_at("config_versions", format!("({id}, {version})"), v.value()).map(Some)
    }

    /// Stages the removal of every older config version of `id` (retention, with its record).
    pub(crate) fn remove_config_versions(&mut self, id: &MachineId) -> Result<u64> {
        let versions: Vec<u64> = {
            let table = self
                .txn
                .open_table(CONFIG_VERSIONS)
                .map_err(StoreError::db("retention"))?;
            let mut out = Vec::new();
            for entry in table
                .range((id.as_str(), 0u64)..=(id.as_str(), u64::MAX))
                .map_err(StoreError::db("retention"))?
            {
                let (k, _) = entry.map_err(StoreError::db("retention"))?;
                out.push(k.value().1);
            }
            out
        };
        let n = versions.len() as u64;
        for v in versions {
            self.staged.config_versions.insert((id.clone(), v), None);
        }
        Ok(n)
    }

    /// An operation in flight, as this closure sees it.
    pub fn operation(&self, op_id: u64) -> Result<Option<OperationRecord>> {
        if let Some(op) = self.staged.operations.get(&op_id) {
            return Ok(op.clone());
        }
        let Some(v) = self
            .tables
            .operations
            .get(op_id)
            .map_err(StoreError::db("read operation"))?
        else {
            return Ok(None);
        };
        decode_at("operations", op_id, v.value()).map(Some)
    }

    /// Records a new operation on a machine; refused while another is in flight on it.
    pub fn begin_operation(
        &mut self,
        machine_id: &MachineId,
        kind: OpKind,
        source: Source,
        params: berth_types::OpParams,
        steps: &[&str],
    ) -> Result<OperationRecord> {
        let mut rec = self.machine_required(machine_id)?;
        if let Some(op) = rec.active_op {
            return Err(StoreError::Busy {
                id: machine_id.clone(),
                op,
            });
        }
        let op = OperationRecord {
            id: self.staged.next_op_id,
            machine_id: machine_id.clone(),
            kind,
            source,
            params,
            steps: steps
                .iter()
                .map(|s| StepRecord {
                    name: (*s).to_owned(),
                    done_at: None,
                })
                .collect(),
            created_at: self.now,
            resumes: 0,
        };
        self.staged.next_op_id += 1;
        rec.active_op = Some(op.id);
        self.staged.machines.insert(machine_id.clone(), rec);
        self.staged.operations.insert(op.id, Some(op.clone()));
        Ok(op)
    }

    /// Marks a step done (idempotent: a step already done stays as it was).
    pub fn complete_step(&mut self, op_id: u64, step: &str) -> Result<OperationRecord> {
        let mut op = self
            .operation(op_id)?
            .ok_or(StoreError::OperationNotFound(op_id))?;
        let now = self.now;
        let s = op
            .steps
            .iter_mut()
            .find(|s| s.name == step)
            .ok_or_else(|| StoreError::UnknownStep {
                op: op_id,
                step: step.to_owned(),
            })?;
        if s.done_at.is_none() {
            s.done_at = Some(now);
        }
        self.staged.operations.insert(op_id, Some(op.clone()));
        Ok(op)
    }

    /// Counts a resumption after restart.
    pub fn note_resumed(&mut self, op_id: u64) -> Result<OperationRecord> {
        let mut op = self
            .operation(op_id)?
            .ok_or(StoreError::OperationNotFound(op_id))?;
        op.resumes += 1;
        self.staged.operations.insert(op_id, Some(op.clone()));
        Ok(op)
    }

    /// Removes a finished (or abandoned) operation and frees its machine for the next one.
    pub fn finish_operation(&mut self, op_id: u64) -> Result<()> {
        let op = self
            .operation(op_id)?
            .ok_or(StoreError::OperationNotFound(op_id))?;
        if let Some(mut rec) = self.machine(&op.machine_id)?
            && rec.active_op == Some(op_id)
        {
            rec.active_op = None;
            self.staged.machines.insert(rec.id.clone(), rec);
        }
        self.staged.operations.insert(op_id, None);
        Ok(())
    }
}
