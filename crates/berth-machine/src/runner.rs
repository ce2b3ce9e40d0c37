//! Running operations: record the plan, walk its steps, resume after a restart.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use berth_store::{Store, StoreError, TransitionSpec};
use berth_types::{
    EventKind, ExitInfo, MachineConfig, MachineId, MachineRecord, OpKind, OperationRecord, Source,
    State, Timestamp,
};

use crate::admission::{Admission, AdmissionError, Admitted};
use crate::leases::{LeaseRecord, Leases};
use crate::plan::{Effect, PlanStep, plan};

/// A failure of an effect (spawn, stop, ...); the message ends up in the failure event's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EffectError(pub String);

/// What operations do outside the store. Implemented by the driver.
///
/// Contract: every method is idempotent, because a step interrupted by a crash is run again.
/// `spawn` for a machine whose workload already runs returns that workload's pid; `stop_workload`
/// and `cleanup` for a machine with nothing to stop or remove succeed.
pub trait Effects: Send + Sync + 'static {
    /// Starts the workload, or finds it already started; returns its pid.
    fn spawn(&self, m: &MachineRecord) -> impl Future<Output = Result<u32, EffectError>> + Send;
    /// Stops the workload if it runs; returns how it exited (`None` if it was not running).
    fn stop_workload(
        &self,
        m: &MachineRecord,
        signal: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<Option<ExitInfo>, EffectError>> + Send;
    /// Removes what the machine has on the host (whatever `spawn` made; nothing is an answer).
    fn cleanup(&self, m: &MachineRecord) -> impl Future<Output = Result<(), EffectError>> + Send;
    /// Refuses a config this host cannot honour (a resource limit it cannot enforce), with a
    /// message naming the field. Called before anything is recorded.
    fn check_config(&self, config: &MachineConfig) -> Result<(), String>;
    /// Makes the config's image ready on the host (imported into the image store if it is not
    /// there yet) and returns its manifest digest and what making it ready took; `None` for a
    /// host-process machine. Called before anything is recorded: [`ImageError::Invalid`] for an
    /// image that cannot be used (message naming the field), [`ImageError::Host`] when the
    /// host's image store fails.
    fn resolve_image(
        &self,
        config: &MachineConfig,
    ) -> impl Future<Output = Result<Option<ReadyImage>, ImageError>> + Send {
        let refused = config.image.is_some();
        async move {
            if refused {
                Err(ImageError::Invalid(
                    "image: this host has no image store".into(),
                ))
            } else {
                Ok(None)
            }
        }
    }
    /// What the host says about the machine's workload right now (no side effects).
    fn observe(&self, m: &MachineRecord) -> crate::Observed;
    /// Workloads supervised on this host whose machine is not in `known` (no side effects).
    fn orphans(&self, known: &std::collections::BTreeSet<String>) -> Vec<String>;
    /// Kills a workload that runs without its supervisor ([`crate::Observed::Unsupervised`]),
    /// after proving its identity, and records its exit where `observe` will find it. Called
    /// only by reconciliation, once the blast-radius guard admitted the pass.
    fn kill_unsupervised(
        &self,
        m: &MachineRecord,
    ) -> impl Future<Output = Result<(), EffectError>> + Send {
        let _ = m;
        async { Err(EffectError("no unsupervised workloads on this host".into())) }
    }
}

/// A machine's image, ready on the host ([`Effects::resolve_image`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyImage {
    /// Its manifest digest, what the machine records as `image_digest`.
    pub digest: String,
    /// What making it ready took, in words, when it was not on the host yet (pulled: the
    /// reference, the bytes downloaded, the time): recorded as the machine's `pull` event in
    /// the write that records the machine or its new config.
    pub pulled: Option<String>,
}

/// Why a machine's image cannot be made ready ([`Effects::resolve_image`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// The image cannot be used (missing, malformed, unknown tag, digest mismatch, ...).
    #[error("{0}")]
    Invalid(String),
    /// The host's image store failed (its disk, its directory).
    #[error("{0}")]
    Host(String),
    /// The registry could not be reached or failed to serve the image (down, 5xx, cut off,
    /// timed out): nothing was recorded, and the same request may succeed later.
    #[error("{0}")]
    Registry(String),
}

/// Why an operation did not complete.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The store refused or failed (not found, illegal transition, busy, overloaded, ...).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An effect failed; the machine was moved to `failed` where the state machine allows.
    #[error("machine {id}: step {step} failed: {error}")]
    Effect {
        /// The machine.
        id: MachineId,
        /// The step.
        step: &'static str,
        /// What went wrong.
        error: EffectError,
    },
    /// The request is invalid: nothing was recorded.
    #[error("{0}")]
    Invalid(String),
    /// The request carries more than a limit allows (the message names the field and the
    /// limit): nothing was recorded.
    #[error("{0}")]
    TooLarge(String),
    /// The create was refused at admission (limit, name, Idempotency-Key): nothing was recorded.
    #[error(transparent)]
    Admission(#[from] crate::admission::AdmissionError),
    /// A lease refused the request.
    #[error(transparent)]
    Lease(#[from] crate::leases::LeaseError),
    /// The host could not prepare what the request needs (its image store failed): nothing was
    /// recorded.
    #[error("{0}")]
    Host(String),
    /// The registry the image is pulled from failed ([`ImageError::Registry`]): nothing was
    /// recorded.
    #[error("{0}")]
    Registry(String),
    /// The stored operation names a step this build does not know (written by another version).
    #[error("operation {op} has step {step:?}, which is not in its plan")]
    UnknownPlan {
        /// The operation.
        op: u64,
        /// The step.
        step: String,
    },
}

/// A finished operation.
#[derive(Debug, Clone)]
pub struct OpOutcome {
    /// The operation as recorded before it was removed.
    pub operation: OperationRecord,
    /// The machine afterwards.
    pub machine: MachineRecord,
}

/// A request to create a machine.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    /// Id; generated when absent.
    pub id: Option<MachineId>,
    /// Name; the id when absent.
    pub name: Option<String>,
    /// Validated config.
    pub config: MachineConfig,
    /// Labels.
    pub metadata: BTreeMap<String, String>,
    /// Record only; do not start.
    pub skip_start: bool,
    /// Who asked.
    pub source: Source,
}

/// The machine service: operations over the store and the effects.
#[derive(Debug)]
pub struct Machines<E> {
    store: Store,
    effects: Arc<E>,
    guard: Arc<crate::Guard>,
    leases: Arc<Leases>,
}

impl<E> Clone for Machines<E> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            effects: self.effects.clone(),
            guard: self.guard.clone(),
            leases: self.leases.clone(),
        }
    }
}

impl<E: Effects> Machines<E> {
    /// A service over `store` with `effects`.
    pub fn new(store: Store, effects: Arc<E>) -> Self {
        Self::with_guard(store, effects, Arc::default())
    }

    /// A service whose automated decisions ask `guard` first.
    pub fn with_guard(store: Store, effects: Arc<E>, guard: Arc<crate::Guard>) -> Self {
        Self {
            store,
            effects,
            guard,
            leases: Arc::default(),
        }
    }

    /// The blast-radius guard every automated decision asks.
    pub fn guard(&self) -> &Arc<crate::Guard> {
        &self.guard
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The effects.
    pub fn effects(&self) -> &Arc<E> {
        &self.effects
    }

    /// Records a machine and its create operation in one write; returns both. Run the operation
    /// with [`Machines::run`]. Names are unique as with [`Machines::admit`]; there is no machine
    /// limit and no Idempotency-Key.
    pub async fn create(
        &self,
        req: CreateRequest,
    ) -> Result<(MachineRecord, OperationRecord), OpError> {
        match self.admit(req, Admission::default()).await? {
            Admitted::Created { machine, operation } => Ok((machine, operation)),
            Admitted::Replayed(m) => Err(StoreError::AlreadyExists(m.id).into()),
        }
    }

    /// Admits a create: checks the request's bounds and config (nothing recorded if they fail),
    /// then, inside the one store write that records the machine, its create operation and its
    /// first transition, decides the Idempotency-Key (a reuse with the same request is that
    /// key's machine, with another request [`AdmissionError::IdempotencyMismatch`]), the name's
    /// uniqueness among machines not destroyed, and the machine limit. The writer serializes
    /// writes and its index covers every earlier write of the batch, so concurrent creates can
    /// never pass a limit or take a name twice.
    pub async fn admit(
        &self,
        req: CreateRequest,
        admission: Admission,
    ) -> Result<Admitted, OpError> {
        let key = admission.idempotency_key;
        crate::admission::check_request(&req, key.as_deref())?;
        let (config, image) = self.checked_config(req.config).await?;
        let (image_digest, pulled) = image.map_or((None, None), |i| (Some(i.digest), i.pulled));
        let req = CreateRequest { config, ..req };
        let digest = crate::admission::digest(&req);
        let id = req.id.clone().unwrap_or_else(MachineId::generate);
        let metadata = match &key {
            Some(k) => crate::admission::keyed_metadata(req.metadata, k, &digest),
            None => req.metadata,
        };
        let mut rec =
            MachineRecord::new(id.clone(), req.name, req.config, metadata, Timestamp::now());
        rec.image_digest = image_digest;
        let steps: Vec<&'static str> = plan(OpKind::Create, !req.skip_start)
            .iter()
            .map(|s| s.name)
            .collect();
        let source = req.source;
        let start = !req.skip_start;
        let params = berth_types::OpParams {
            start: Some(start),
            ..Default::default()
        };
        let max = admission.max_machines;
        let admitted = self
            .store
            .write(move |w| {
                if let Some(key) = key
                    && let Some(used) = w.idempotency_key(&key)
                    && let Some(m) = w.machine(&used.machine_id)?
                {
                    if used.digest != digest {
                        return Ok(Err(AdmissionError::IdempotencyMismatch { key, id: m.id }));
                    }
                    return Ok(Ok(Admitted::Replayed(m)));
                }
                if let Some(holder) = w.machine_named(&rec.name) {
                    return Ok(Err(AdmissionError::NameTaken {
                        name: rec.name,
                        id: holder,
                    }));
                }
                if let Some(max) = max
                    && w.live_machines() >= max
                {
                    return Ok(Err(AdmissionError::LimitReached { max }));
                }
                w.create_machine(rec, source, "create requested")?;
                if let Some(pulled) = &pulled {
                    w.note(&id, EventKind::Pull, source, pulled)?;
                }
                let op = w.begin_operation(&id, OpKind::Create, source, params, &steps)?;
                let operation = first_step_inline(w, op, start)?;
                if steps.is_empty() {
                    // Nothing to do outside the store: the operation ends in the write that
                    // begins it, so a create acknowledged is a create done (and one refused,
                    // say for a full disk, recorded nothing).
                    w.finish_operation(operation.id)?;
                }
                let machine = w
                    .machine(&id)?
                    .ok_or_else(|| StoreError::NotFound(id.clone()))?;
                Ok(Ok(Admitted::Created { machine, operation }))
            })
            .await??;
        Ok(admitted)
    }

    /// Checks a config as a create does, before anything is recorded: `MachineConfig::validate`
    /// (which also normalizes it), the image made ready (its digest returned), and
    /// `Effects::check_config` (limits the host cannot enforce). An update's config goes
    /// through exactly this.
    pub(crate) async fn checked_config(
        &self,
        mut config: MachineConfig,
    ) -> Result<(MachineConfig, Option<ReadyImage>), OpError> {
        config.validate().map_err(|e| {
            if e.too_large {
                OpError::TooLarge(e.to_string())
            } else {
                OpError::Invalid(e.to_string())
            }
        })?;
        let image = self
            .effects
            .resolve_image(&config)
            .await
            .map_err(|e| match e {
                ImageError::Invalid(m) => OpError::Invalid(m),
                ImageError::Host(m) => OpError::Host(m),
                ImageError::Registry(m) => OpError::Registry(m),
            })?;
        self.effects
            .check_config(&config)
            .map_err(OpError::Invalid)?;
        Ok((config, image))
    }

    /// A replayed create's machine once the first create's operation has finished (or after
    /// [`crate::admission::REPLAY_SETTLE`], as it is then).
    pub async fn settled(&self, m: MachineRecord) -> Result<MachineRecord, OpError> {
        let mut seq = self.store.subscribe();
        let deadline = tokio::time::Instant::now() + crate::admission::REPLAY_SETTLE;
        let mut m = m;
        loop {
            seq.borrow_and_update();
            m = self.machine(&m.id)?;
            if m.active_op.is_none()
                || tokio::time::timeout_at(deadline, seq.changed())
                    .await
                    .is_err()
            {
                return Ok(m);
            }
        }
    }

    /// Grants or extends a lease on a machine that is not destroyed (`holder`: the nonce of the
    /// lease held now, to extend it; `fresh`: the nonce of a new one).
    pub fn acquire_lease(
        &self,
        id: &MachineId,
        ttl: Option<Duration>,
        description: Option<String>,
        holder: Option<&str>,
        fresh: String,
    ) -> Result<LeaseRecord, OpError> {
        self.leases.acquire(
            id,
            || Ok(self.machine(id)?.state),
            ttl,
            description,
            holder,
            fresh,
        )
    }

    /// The lease held on a machine, if one is.
    pub fn lease(&self, id: &MachineId) -> Option<LeaseRecord> {
        self.leases.get(id)
    }

    /// Refuses a user's mutation of a leased machine without the lease's nonce.
    pub fn check_lease(&self, id: &MachineId, nonce: Option<&str>) -> Result<(), OpError> {
        Ok(self.leases.check(id, nonce)?)
    }

    /// Releases a lease (with its nonce while it is held).
    pub fn release_lease(&self, id: &MachineId, nonce: Option<&str>) -> Result<(), OpError> {
        Ok(self.leases.release(id, nonce)?)
    }

    /// Records an operation on an existing machine. Refused at once (nothing recorded) when the
    /// machine is busy or the plan's first transition is illegal from its current state.
    pub async fn begin(
        &self,
        id: &MachineId,
        kind: OpKind,
        source: Source,
        signal: Option<String>,
        timeout: Option<Duration>,
    ) -> Result<OperationRecord, OpError> {
        let params = berth_types::OpParams {
            timeout_ms: timeout.map(|t| t.as_millis() as u64),
            signal,
            ..Default::default()
        };
        let steps = plan(kind, true);
        let names: Vec<&'static str> = steps.iter().map(|s| s.name).collect();
        let first_to = steps.iter().find_map(|s| s.to).map(|(s, _)| s);
        let id = id.clone();
        let op = self
            .store
            .write(move |w| {
                let rec = w
                    .machine(&id)?
                    .ok_or_else(|| StoreError::NotFound(id.clone()))?;
                if let Some(op) = rec.active_op {
                    // A user's stop or destroy supersedes a restart berth began on its own (a
                    // crash-looping machine must be stoppable); anything else waits its turn.
                    let running = w.operation(op)?;
                    let supersedes = source == Source::User
                        && matches!(kind, OpKind::Stop | OpKind::Destroy)
                        && running.as_ref().is_some_and(|r| r.source == Source::Berth && r.kind == OpKind::Restart);
                    if !supersedes {
                        return Err(StoreError::Busy { id: id.clone(), op });
                    }
                    tracing::info!(machine = %id, superseded = op, ?kind, "user operation supersedes a policy restart");
                    w.finish_operation(op)?;
                }
                if let Some(to) = first_to {
                    rec.state
                        .transition(to)
                        .map_err(|source| StoreError::IllegalTransition {
                            id: id.clone(),
                            source,
                        })?;
                }
                let op = w.begin_operation(&id, kind, source, params, &names)?;
                first_step_inline(w, op, true)
            })
            .await?;
        Ok(op)
    }

    /// Records a restart berth decided on its own (a failing health check), with `reason` as
    /// the restart's reason. Refused like [`Machines::begin`] when the machine is busy or not
    /// started; the caller asked the blast-radius guard first.
    pub async fn begin_with_reason(
        &self,
        id: &MachineId,
        reason: String,
    ) -> Result<OperationRecord, OpError> {
        let params = berth_types::OpParams {
            reason: Some(reason),
            ..Default::default()
        };
        let names: Vec<&'static str> = plan(OpKind::Restart, true).iter().map(|s| s.name).collect();
        let id = id.clone();
        let op = self
            .store
            .write(move |w| {
                let rec = w
                    .machine(&id)?
                    .ok_or_else(|| StoreError::NotFound(id.clone()))?;
                if let Some(op) = rec.active_op {
                    return Err(StoreError::Busy { id: id.clone(), op });
                }
                rec.state.transition(State::Restarting).map_err(|source| {
                    StoreError::IllegalTransition {
                        id: id.clone(),
                        source,
                    }
                })?;
                let op = w.begin_operation(&id, OpKind::Restart, Source::Berth, params, &names)?;
                // The first step (mark_restarting) is only its transition: recorded here with
                // the reason, so the restart event says why.
                let first = names.first().copied().unwrap_or("mark_restarting");
                let spec = TransitionSpec::new(
                    State::Restarting,
                    berth_types::EventKind::Restart,
                    Source::Berth,
                    op.params.reason.clone().unwrap_or_default(),
                );
                w.transition(&id, spec)?;
                w.complete_step(op.id, first)
            })
            .await?;
        Ok(op)
    }

    /// Runs the create operation [`Machines::admit`] recorded: one planned with no steps (a
    /// create without start) ended in that write, and the machine as recorded is its outcome.
    pub async fn run_created(
        &self,
        machine: MachineRecord,
        operation: OperationRecord,
    ) -> Result<OpOutcome, OpError> {
        if operation.steps.is_empty() {
            return Ok(OpOutcome { operation, machine });
        }
        self.run(operation).await
    }

    /// Runs an operation's remaining steps to the end.
    pub async fn run(&self, op: OperationRecord) -> Result<OpOutcome, OpError> {
        let remaining = remaining_steps(&op)?;
        let mut op = op;
        let last = remaining.len();
        if last == 0 {
            let machine = if op.steps.is_empty() {
                // Planned with no steps: it ended in the write that began it.
                self.machine(&op.machine_id)?
            } else {
                self.finish(op.id).await?
            };
            return Ok(OpOutcome {
                operation: op,
                machine,
            });
        }
        let mut machine = self.machine(&op.machine_id)?;
        for (i, step) in remaining.into_iter().enumerate() {
            if step.effect != Effect::None && self.store.operation(op.id)?.is_none() {
                tracing::info!(machine = %op.machine_id, op = op.id, step = step.name, "operation was superseded; stopping here");
                return Err(StoreError::OperationNotFound(op.id).into());
            }
            crate::fault::pause(op.kind, step.name, "before").await;
            let (pid, exit) = match self.run_effect(step, &machine, &op).await {
                Ok(v) => v,
                Err(error) => {
                    tracing::warn!(machine = %op.machine_id, op = op.id, step = step.name, %error, "operation step failed");
                    self.fail(&op, step.name, &error).await?;
                    return Err(OpError::Effect {
                        id: op.machine_id.clone(),
                        step: step.name,
                        error,
                    });
                }
            };
            crate::fault::pause(op.kind, step.name, "after").await;
            match self.record_step(&op, step, pid, exit, i + 1 == last).await {
                Ok((m, o)) => {
                    machine = m;
                    op = o;
                }
                Err(e) => return Err(self.step_not_recorded(&op, step, &machine, e).await),
            }
        }
        if machine.state == State::Destroyed {
            self.leases.drop_machine(&machine.id);
        }
        Ok(OpOutcome {
            operation: op,
            machine,
        })
    }

    /// Records a step whose effect is done: its transition (if any), the step, and for the last
    /// step the end of the operation, in one write.
    async fn record_step(
        &self,
        op: &OperationRecord,
        step: &'static PlanStep,
        pid: Option<u32>,
        exit: Option<ExitInfo>,
        is_last: bool,
    ) -> Result<(MachineRecord, OperationRecord), StoreError> {
        let (op_id, id, name, source) = (op.id, op.machine_id.clone(), step.name, op.source);
        // An operation begun by supervision carries the exit that caused it and a reason,
        // both recorded with its first transition.
        let first = op.steps.iter().all(|s| s.done_at.is_none());
        let exit = exit.or_else(|| first.then(|| op.params.exit.clone()).flatten());
        let step_reason = first.then(|| op.params.reason.clone()).flatten();
        let (to, kind) = (step.to, op.kind);
        self.store
            .write(move |w| {
                if let Some((to, event_kind)) = to {
                    let why = step_reason.unwrap_or_else(|| reason(kind, step));
                    let mut spec = TransitionSpec::new(to, event_kind, source, why)
                        .with_pid(if to == State::Started { pid } else { None });
                    if let Some(exit) = exit {
                        spec = spec.with_exit(exit);
                    }
                    w.transition(&id, spec)?;
                }
                let op = w.complete_step(op_id, name)?;
                if is_last {
                    w.finish_operation(op_id)?;
                }
                let m = w
                    .machine(&id)?
                    .ok_or_else(|| StoreError::NotFound(id.clone()))?;
                Ok((m, op))
            })
            .await
    }

    /// A step's effect ran but its record was refused: undoes a spawn nobody wants any more and,
    /// when the machine moved on without this operation, ends the operation so it cannot keep
    /// the machine busy. Returns the error to report.
    async fn step_not_recorded(
        &self,
        op: &OperationRecord,
        step: &PlanStep,
        machine: &MachineRecord,
        e: StoreError,
    ) -> OpError {
        let moved_on = matches!(
            e,
            StoreError::IllegalTransition { .. } | StoreError::NotFound(_)
        );
        let superseded = matches!(e, StoreError::OperationNotFound(_));
        if !(moved_on || superseded) {
            return e.into();
        }
        if step.effect == Effect::Spawn {
            tracing::info!(machine = %op.machine_id, op = op.id, error = %e, "the operation cannot record its spawn; stopping the new workload");
            let _ = self
                .effects
                .stop_workload(machine, "SIGKILL", Duration::from_secs(5))
                .await;
        }
        if moved_on {
            // The machine moved on without us (reconciled, or changed by another version):
            // this operation can never complete, so it must not keep the machine busy.
            tracing::warn!(machine = %op.machine_id, op = op.id, step = step.name, error = %e, "abandoning operation");
            let op_id = op.id;
            if let Err(e) = self.store.write(move |w| w.finish_operation(op_id)).await {
                return e.into();
            }
        }
        e.into()
    }

    async fn run_effect(
        &self,
        step: &PlanStep,
        machine: &MachineRecord,
        op: &OperationRecord,
    ) -> Result<(Option<u32>, Option<ExitInfo>), EffectError> {
        match step.effect {
            Effect::None => Ok((None, None)),
            Effect::Spawn => {
                if let Some(ms) = op.params.delay_ms {
                    // Restart-policy backoff. After an agent restart the wait starts over, which
                    // only ever errs on the side of waiting longer.
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    if matches!(self.store.operation(op.id), Ok(None)) {
                        return Err(EffectError("superseded during the restart backoff".into()));
                    }
                }
                self.effects
                    .spawn(machine)
                    .await
                    .map(|pid| (Some(pid), None))
            }
            Effect::StopWorkload => {
                let signal = op
                    .params
                    .signal
                    .clone()
                    .unwrap_or_else(|| machine.config.stop.signal.clone());
                let timeout = op.params.timeout().unwrap_or(machine.config.stop.timeout.0);
                self.effects
                    .stop_workload(machine, &signal, timeout)
                    .await
                    .map(|exit| (None, exit))
            }
            Effect::Cleanup => self.effects.cleanup(machine).await.map(|()| (None, None)),
        }
    }

    /// Records a failed step: the machine goes to `failed` where that is legal, and the operation
    /// is removed, in one write.
    async fn fail(
        &self,
        op: &OperationRecord,
        step: &'static str,
        error: &EffectError,
    ) -> Result<(), OpError> {
        let (op_id, id, source) = (op.id, op.machine_id.clone(), op.source);
        let reason = format!("{step} failed: {error}");
        self.store
            .write(move |w| {
                let rec = w
                    .machine(&id)?
                    .ok_or_else(|| StoreError::NotFound(id.clone()))?;
                if rec.state.can_transition_to(State::Failed) {
                    w.transition(
                        &id,
                        TransitionSpec::new(State::Failed, EventKind::Fail, source, reason),
                    )?;
                }
                w.finish_operation(op_id)
            })
            .await?;
        Ok(())
    }

    async fn finish(&self, op_id: u64) -> Result<MachineRecord, OpError> {
        let machine = self
            .store
            .write(move |w| {
                let op = w
                    .operation(op_id)?
                    .ok_or(StoreError::OperationNotFound(op_id))?;
                w.finish_operation(op_id)?;
                w.machine(&op.machine_id)?
                    .ok_or_else(|| StoreError::NotFound(op.machine_id.clone()))
            })
            .await?;
        Ok(machine)
    }

    fn machine(&self, id: &MachineId) -> Result<MachineRecord, OpError> {
        Ok(self
            .store
            .machine(id)?
            .ok_or_else(|| StoreError::NotFound(id.clone()))?)
    }

    /// Resumes every operation left in flight (after a restart), oldest first, each from its first
    /// unfinished step. Returns each operation's id with its result.
    pub async fn resume_all(&self) -> Result<Vec<(u64, Result<OpOutcome, OpError>)>, OpError> {
        let ops = self.store.operations()?;
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            tracing::info!(
                machine = %op.machine_id, op = op.id, kind = ?op.kind, next_step = ?op.next_step(),
                resumes = op.resumes, "resuming operation left in flight"
            );
            let id = op.id;
            let op = match self.store.write(move |w| w.note_resumed(id)).await {
                Ok(op) => op,
                Err(e) => {
                    results.push((id, Err(e.into())));
                    continue;
                }
            };
            results.push((id, self.run(op).await));
        }
        Ok(results)
    }
}

/// Does an operation's first step in the write that records the operation, when that step is
/// only a transition (`mark_*`): one commit fewer per operation, with the same atomicity (the
/// operation, its step being done and the transition are one write). An operation begun by
/// supervision (with an exit to record) keeps its first step for the runner, which attaches the
/// exit and reason to it.
pub(crate) fn first_step_inline(
    w: &mut berth_store::WriteCtx<'_, '_>,
    op: OperationRecord,
    start: bool,
) -> Result<OperationRecord, StoreError> {
    let Some(step) = plan(op.kind, start).first() else {
        return Ok(op);
    };
    let (Effect::None, Some((to, event_kind))) = (step.effect, step.to) else {
        return Ok(op);
    };
    if op.params.exit.is_some() {
        return Ok(op);
    }
    let spec = TransitionSpec::new(to, event_kind, op.source, reason(op.kind, step));
    w.transition(&op.machine_id, spec)?;
    w.complete_step(op.id, step.name)
}

fn reason(kind: OpKind, step: &PlanStep) -> String {
    let verb = match kind {
        OpKind::Create => "create",
        OpKind::Start => "start",
        OpKind::Stop => "stop",
        OpKind::Restart => "restart",
        OpKind::Destroy => "destroy",
        OpKind::Update => "update",
    };
    format!("{verb}: {}", step.says())
}

/// The steps of `op`'s plan not yet done, in order; an operation recorded with a step its plan
/// does not have (written by another version) is refused rather than guessed at.
fn remaining_steps(op: &OperationRecord) -> Result<Vec<&'static PlanStep>, OpError> {
    let steps = plan(op.kind, op.params.start.unwrap_or(true));
    if let Some(stored) = op.steps.iter().find(|stored| {
        !steps.iter().any(|s| s.name == stored.name)
            && !crate::plan::RETIRED_STEPS.contains(&(op.kind, stored.name.as_str()))
    }) {
        return Err(OpError::UnknownPlan {
            op: op.id,
            step: stored.name.clone(),
        });
    }
    Ok(steps
        .iter()
        .filter(|s| {
            op.steps
                .iter()
                .any(|r| r.name == s.name && r.done_at.is_none())
        })
        .collect())
}
