//! Machine commands: create (admitted), list, lifecycle operations, signal, wait, history.

use std::time::Duration;

use berth_api_types::{CreateMachine, MAX_PAGE_LIMIT, MachineListQuery, MachineStats};
use berth_machine::{Admission, Admitted, CreateRequest, OpError};
use berth_types::{Event, MachineId, MachineRecord, OpKind, Source, State};

use crate::Agent;
use crate::error::{CommandError, CommandResult, ErrorKind};

/// One page of machines, in id order.
#[derive(Debug, Clone, PartialEq)]
pub struct MachinePage {
    /// The machines on this page.
    pub machines: Vec<MachineRecord>,
    /// Pass as `cursor` for the next page, when more machines match.
    pub next: Option<MachineId>,
}

impl Agent {
    /// Admits a user's create (cordon, bounds, Idempotency-Key, unique name, machine limit,
    /// decided with the write that records it) and runs it. A replayed key answers the machine
    /// its first create made, once that create is done; a workload that failed to start leaves
    /// the machine recorded `failed`, which is the answer.
    pub async fn create_machine(
        &self,
        req: CreateMachine,
        idempotency_key: Option<String>,
    ) -> CommandResult<MachineRecord> {
        let me = self.clone();
        self.detached(async move { me.admit_and_run(req, idempotency_key).await })
            .await
    }

    async fn admit_and_run(
        &self,
        req: CreateMachine,
        idempotency_key: Option<String>,
    ) -> CommandResult<MachineRecord> {
        let id = MachineId::generate();
        let creq = CreateRequest {
            id: Some(id.clone()),
            name: req.name,
            config: req.config,
            metadata: req.metadata,
            skip_start: req.skip_start,
            source: Source::User,
        };
        let admission = Admission {
            max_machines: self.commands.max_machines,
            idempotency_key,
        };
        let admitted = {
            let _cordon = self.cordon.admit().await?;
            self.machines().admit(creq, admission).await?
        };
        let result = match admitted {
            Admitted::Created { machine, operation } => self
                .machines()
                .run_created(machine, operation)
                .await
                .map(|o| {
                    self.after_op(&o.machine);
                    o.machine
                }),
            Admitted::Replayed(m) => self.machines().settled(m).await,
        };
        self.recorded_on_effect_failure(&id, result)
    }

    /// An effect that failed (spawn error...) is recorded on the machine: the machine is the
    /// answer.
    fn recorded_on_effect_failure(
        &self,
        id: &MachineId,
        result: Result<MachineRecord, OpError>,
    ) -> CommandResult<MachineRecord> {
        match result {
            Ok(mut m) => {
                self.checks.fill(&mut m);
                Ok(m)
            }
            Err(OpError::Effect { .. }) => self.machine(id),
            Err(e) => Err(e.into()),
        }
    }

    /// Machines matching `q`, paged by `limit` and `cursor` (validated here).
    pub fn list_machines(&self, q: &MachineListQuery) -> CommandResult<MachinePage> {
        if let Some(l) = q.limit
            && !(1..=MAX_PAGE_LIMIT).contains(&l)
        {
            return Err(CommandError::invalid(format!(
                "limit must be a number from 1 to {MAX_PAGE_LIMIT}, not {l}"
            )));
        }
        let cursor = match &q.cursor {
            None => None,
            Some(c) => Some(MachineId::parse(c).map_err(|e| {
                CommandError::invalid(format!(
                    "cursor must be the {} of an earlier page: {e}",
                    berth_api_types::NEXT_CURSOR_HEADER
                ))
            })?),
        };
        if cursor.is_some() && q.limit.is_none() {
            return Err(CommandError::invalid("cursor needs a limit"));
        }
        let page = self.store().machines_page(cursor.as_ref(), q.limit, |m| {
            (q.include_destroyed
                || q.state == Some(State::Destroyed)
                || m.state != State::Destroyed)
                && q.state.is_none_or(|s| m.state == s)
                && q.metadata.iter().all(|(k, v)| m.metadata.get(k) == Some(v))
        })?;
        let mut machines = page.machines;
        for m in &mut machines {
            self.checks.fill(m);
        }
        Ok(MachinePage {
            machines,
            next: page.next,
        })
    }

    /// A user's lifecycle operation (start, stop, restart, destroy), run to completion; refused
    /// without the lease's nonce while a lease is held.
    pub async fn lifecycle(
        &self,
        id: &MachineId,
        kind: OpKind,
        signal: Option<String>,
        timeout: Option<Duration>,
        lease_nonce: Option<String>,
    ) -> CommandResult<MachineRecord> {
        self.machine(id)?;
        let me = self.clone();
        let id = id.clone();
        self.detached(async move {
            let r = me
                .operate_leased(&id, kind, signal, timeout, lease_nonce.as_deref())
                .await;
            me.recorded_on_effect_failure(&id, r)
        })
        .await
    }

    /// Destroys a machine; a running one only with `force` (SIGKILL, no grace period).
    pub async fn destroy_machine(
        &self,
        id: &MachineId,
        force: bool,
        lease_nonce: Option<String>,
    ) -> CommandResult<MachineRecord> {
        let m = self.machine(id)?;
        if m.state == State::Started && !force {
            return Err(CommandError::conflict(format!(
                "machine {id} is running; stop it first or pass ?force=true"
            )));
        }
        let signal = force.then(|| "SIGKILL".to_owned());
        let timeout = force.then_some(Duration::ZERO);
        self.lifecycle(id, OpKind::Destroy, signal, timeout, lease_nonce)
            .await
    }

    /// Sends a signal (a name `normalize_signal` accepts) to a started machine's workload.
    pub fn signal_machine(
        &self,
        id: &MachineId,
        signal: &str,
        lease_nonce: Option<&str>,
    ) -> CommandResult<MachineRecord> {
        let sig = berth_types::config::normalize_signal(signal).map_err(CommandError::invalid)?;
        let m = self.machine(id)?;
        self.machines().check_lease(id, lease_nonce)?;
        if m.state != State::Started {
            return Err(CommandError::conflict(format!(
                "machine {id} is {}, not started",
                m.state
            )));
        }
        self.driver()
            .signal(id.as_str(), sig)
            .map_err(|e| CommandError::conflict(e.to_string()))?;
        tracing::info!(machine = %id, signal = sig, "signal sent at a user's request");
        Ok(m)
    }

    /// Waits until the machine is in `want`, or `timeout` passes (`timeout`).
    pub async fn wait_for(
        &self,
        id: &MachineId,
        want: State,
        timeout: Duration,
    ) -> CommandResult<MachineRecord> {
        let mut seq = self.store().subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            seq.borrow_and_update();
            let m = self.machine(id)?;
            if m.state == want {
                return Ok(m);
            }
            // Failed (no restart left), destroying and destroyed lead nowhere else without an
            // operator: waiting out the timeout would only delay the answer.
            let dead_end = matches!(
                m.state,
                State::Failed | State::Destroying | State::Destroyed
            ) && !(m.state == State::Destroying && want == State::Destroyed);
            if dead_end {
                return Err(CommandError::conflict(format!(
                    "machine {id} is {} and will not reach {want} on its own",
                    m.state
                )));
            }
            if tokio::time::timeout_at(deadline, seq.changed())
                .await
                .is_err()
            {
                return Err(CommandError::new(
                    ErrorKind::Timeout,
                    format!(
                        "machine {id} did not reach {want} within {}; it is {}",
                        humantime::format_duration(timeout),
                        m.state
                    ),
                ));
            }
        }
    }

    /// Waits until the machine is in `want` and every health check passes; answers `conflict`
    /// at once when it reached a state it cannot get there from (failed, destroyed, or a
    /// settled state other than `want`), `timeout` when time runs out.
    pub async fn wait_healthy(
        &self,
        id: &MachineId,
        want: State,
        timeout: Duration,
    ) -> CommandResult<MachineRecord> {
        let mut seq = self.store().subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            seq.borrow_and_update();
            let m = self.machine(id)?;
            let healthy = m
                .checks
                .values()
                .all(|c| c.status == berth_types::CheckHealth::Passing);
            if m.state == want && healthy {
                return Ok(m);
            }
            let dead_end = matches!(m.state, State::Failed | State::Destroyed)
                || (m.active_op.is_none()
                    && !m.state.is_transient()
                    && m.state != want
                    && want != State::Failed);
            if dead_end {
                return Err(CommandError::conflict(format!(
                    "machine {id} is {} and cannot become {want} and healthy without an operation",
                    m.state
                )));
            }
            // Check results that change nothing are not events: look again at least every
            // 250ms besides every committed event.
            let next = (tokio::time::Instant::now() + Duration::from_millis(250)).min(deadline);
            let _ = tokio::time::timeout_at(next, seq.changed()).await;
            if tokio::time::Instant::now() >= deadline {
                let m = self.machine(id)?;
                let failing: Vec<String> = m
                    .checks
                    .iter()
                    .filter(|(_, c)| c.status != berth_types::CheckHealth::Passing)
                    .map(|(n, c)| format!("{n} is {} ({})", c.status.as_str(), c.output))
                    .collect();
                return Err(CommandError::new(
                    ErrorKind::Timeout,
                    format!(
                        "machine {id} did not become {want} and healthy within {}; it is {}{}",
                        humantime::format_duration(timeout),
                        m.state,
                        if failing.is_empty() {
                            String::new()
                        } else {
                            format!("; {}", failing.join(", "))
                        }
                    ),
                ));
            }
        }
    }

    /// A machine's events, oldest first.
    pub fn machine_events(&self, id: &MachineId) -> CommandResult<Vec<Event>> {
        let history = self.store().history(id)?;
        if history.is_empty() {
            self.machine(id)?;
        }
        Ok(history)
    }

    /// What a machine's workload uses now, read at this instant (from its cgroup, else its
    /// process), and when its current run began. A usage that cannot be read is absent.
    pub fn machine_stats(&self, id: &MachineId) -> CommandResult<MachineStats> {
        let m = self.machine(id)?;
        let running = m.state.expects_process();
        let usage = m
            .pid
            .filter(|_| running)
            .and_then(|pid| i32::try_from(pid).ok())
            .and_then(|pid| self.driver().workload_usage(id.as_str(), pid));
        let started_at = if running {
            self.store()
                .history(id)?
                .iter()
                .rev()
                .find(|e| e.to == State::Started && e.from != Some(State::Started))
                .map(|e| e.at)
        } else {
            None
        };
        Ok(MachineStats {
            id: m.id.to_string(),
            name: m.name.clone(),
            state: m.state,
            pid: m.pid.filter(|_| running),
            cpu_seconds: usage.map(|u| u.cpu_seconds),
            memory_bytes: usage.map(|u| u.memory_bytes),
            memory_limit_bytes: m
                .config
                .resources
                .memory_mb
                .map(|mb| mb.saturating_mul(1 << 20)),
            restarts: m.restarts,
            started_at,
        })
    }
}
