//! The plan of each operation kind: an ordered list of steps.

use berth_types::{EventKind, OpKind, State};

/// What a step does outside the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing: the step is only its transition.
    None,
    /// Start the workload (or find it already started) and learn its pid.
    Spawn,
    /// Stop the workload if it runs: stop signal, then SIGKILL after the timeout.
    StopWorkload,
    /// Remove what the machine has on the host (its directory, cgroup, container).
    Cleanup,
}

/// One step of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanStep {
    /// Stored name (stable: it is on disk in operations in flight).
    pub name: &'static str,
    /// What it does outside the store, first.
    pub effect: Effect,
    /// The transition recorded with the step's completion, if any.
    pub to: Option<(State, EventKind)>,
}

const fn step(name: &'static str, effect: Effect, to: Option<(State, EventKind)>) -> PlanStep {
    PlanStep { name, effect, to }
}

impl PlanStep {
    /// What the step did, in words, for the reason of its transition (`create: <says>`); its
    /// stored name for a step without a transition.
    pub fn says(&self) -> &'static str {
        match self.to {
            Some((State::Starting, _)) => "starting the workload",
            Some((State::Started, _)) => "the workload runs",
            Some((State::Stopping, _)) => "stopping the workload",
            Some((State::Stopped, _)) => "the workload stopped",
            Some((State::Restarting, EventKind::Update)) => "stopping to apply the new config",
            Some((State::Restarting, _)) => "stopping to start again",
            Some((State::Destroying, _)) => "stopping and removing the machine",
            Some((State::Destroyed, _)) => "the machine is gone",
            _ => self.name,
        }
    }
}

const MARK_STARTING: PlanStep = step(
    "mark_starting",
    Effect::None,
    Some((State::Starting, EventKind::Start)),
);
const SPAWN: PlanStep = step(
    "spawn",
    Effect::Spawn,
    Some((State::Started, EventKind::Start)),
);
const MARK_STOPPING: PlanStep = step(
    "mark_stopping",
    Effect::None,
    Some((State::Stopping, EventKind::Stop)),
);
const STOP_TO_STOPPED: PlanStep = step(
    "stop_workload",
    Effect::StopWorkload,
    Some((State::Stopped, EventKind::Stop)),
);
const STOP_WORKLOAD: PlanStep = step("stop_workload", Effect::StopWorkload, None);
const MARK_RESTARTING: PlanStep = step(
    "mark_restarting",
    Effect::None,
    Some((State::Restarting, EventKind::Restart)),
);
const MARK_DESTROYING: PlanStep = step(
    "mark_destroying",
    Effect::None,
    Some((State::Destroying, EventKind::Destroy)),
);
const MARK_UPDATING: PlanStep = step(
    "mark_updating",
    Effect::None,
    Some((State::Restarting, EventKind::Update)),
);
const CLEANUP: PlanStep = step("cleanup", Effect::Cleanup, None);
const MARK_DESTROYED: PlanStep = step(
    "mark_destroyed",
    Effect::None,
    Some((State::Destroyed, EventKind::Destroy)),
);

/// Steps an earlier version stored that this one no longer has, each with what it did; an
/// operation left in flight with one of them resumes as if it were done (`prepare` made the
/// machine's directory at create; spawning makes it now).
pub const RETIRED_STEPS: &[(OpKind, &str)] = &[(OpKind::Create, "prepare")];

/// The plan for an operation. `start` matters only for `Create` (false with `skip_start`).
pub fn plan(kind: OpKind, start: bool) -> &'static [PlanStep] {
    match (kind, start) {
        // Spawning prepares the machine's directories itself (idempotently).
        (OpKind::Create, true) => &[MARK_STARTING, SPAWN],
        // A machine created but not started has nothing on the host: its directory is made
        // at its first start. The create is its one write.
        (OpKind::Create, false) => &[],
        (OpKind::Start, _) => &[MARK_STARTING, SPAWN],
        (OpKind::Stop, _) => &[MARK_STOPPING, STOP_TO_STOPPED],
        (OpKind::Restart, _) => &[MARK_RESTARTING, STOP_WORKLOAD, SPAWN],
        (OpKind::Destroy, _) => &[MARK_DESTROYING, STOP_WORKLOAD, CLEANUP, MARK_DESTROYED],
        // The record holds the new config from the write that begins it; the stop uses the old
        // config's stop settings, kept in the operation's params.
        (OpKind::Update, _) => &[MARK_UPDATING, STOP_WORKLOAD, SPAWN],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every plan's transitions, taken in order from a state the operation starts from, are legal.
    #[test]
    fn plans_follow_the_state_machine() {
        let cases = [
            (OpKind::Create, true, State::Created),
            (OpKind::Create, false, State::Created),
            (OpKind::Start, true, State::Stopped),
            (OpKind::Start, true, State::Created),
            (OpKind::Start, true, State::Failed),
            (OpKind::Stop, true, State::Started),
            (OpKind::Restart, true, State::Started),
            (OpKind::Restart, true, State::Stopped),
            (OpKind::Destroy, true, State::Started),
            (OpKind::Destroy, true, State::Stopped),
            (OpKind::Destroy, true, State::Created),
            (OpKind::Update, true, State::Started),
        ];
        for (kind, start, mut state) in cases {
            for s in plan(kind, start) {
                if let Some((to, _)) = s.to {
                    assert!(
                        state.can_transition_to(to),
                        "{kind:?}: {state} → {to} at {}",
                        s.name
                    );
                    state = to;
                }
            }
        }
    }

    #[test]
    fn step_names_are_unique_within_a_plan() {
        for kind in [
            OpKind::Create,
            OpKind::Start,
            OpKind::Stop,
            OpKind::Restart,
            OpKind::Destroy,
            OpKind::Update,
        ] {
            let names: Vec<_> = plan(kind, true).iter().map(|s| s.name).collect();
            let mut dedup = names.clone();
            dedup.sort_unstable();
            dedup.dedup();
            assert_eq!(names.len(), dedup.len(), "{kind:?}");
        }
    }
}
