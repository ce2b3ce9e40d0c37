//! The blast-radius guard: one mechanism in front of every destructive decision berth takes by
//! itself.
//!
//! A policy restart, a reconciliation that records what it observed (or kills what runs
//! unsupervised), and later a check's restart are each fine for one machine and suspicious for
//! most of a host at once: "everything died together" is more often a broken observation or a
//! host-wide fault (network, disk, an fd limit) than a fact, and acting on it everywhere is how
//! Hosted Graphite failed over every node. So every such decision asks the guard first.
//!
//! The guard counts the *distinct machines* acted on automatically within a sliding window (one
//! crash-looping machine is one machine, however often it restarts). A decision that would take
//! that count past both `min_machines` and `fraction` of the host's live machines is held back;
//! from then on the guard is *tripped*: every further guarded decision is held too, until an
//! operator approves (`POST /v1/host/approve`, `berth host approve`). Each hold is logged with the
//! inputs it saw, counted in `berth_guard_blocked_total{action}`, and listed in `/v1/health` and
//! `berth doctor`.
//!
//! Held decisions are not queued work that a restart could lose: a held restart leaves its
//! machine recorded stopped or failed with a reason saying so, and a held reconciliation leaves
//! the evidence on disk, where the next pass (after approval, or after an agent restart, guarded
//! again) finds it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use berth_types::{MachineId, Timestamp};
use serde::Serialize;

/// The kinds of automated decision the guard covers (the `action` label of
/// `berth_guard_blocked_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardAction {
    /// A restart decided by a machine's restart policy after its workload exited.
    Restart,
    /// A reconciliation pass recording what it observed (an exit found late, a vanished
    /// workload, a workload running without its supervisor).
    Reconcile,
}

impl GuardAction {
    /// Every action, for registering the counters at zero.
    pub const ALL: [GuardAction; 2] = [GuardAction::Restart, GuardAction::Reconcile];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            GuardAction::Restart => "restart",
            GuardAction::Reconcile => "reconcile",
        }
    }
}

/// Guard settings (`[guard]` in berthd's config).
#[derive(Debug, Clone, Copy)]
pub struct GuardConfig {
    /// Off: every decision proceeds (for hosts that run only a handful of machines on purpose).
    pub enabled: bool,
    /// Decisions are held only when they would act on more than this many machines...
    pub min_machines: usize,
    /// ...and on more than this fraction of the host's live machines...
    pub fraction: f64,
    /// ...within this window.
    pub window: Duration,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_machines: 3,
            fraction: 0.5,
            window: Duration::from_secs(60),
        }
    }
}

/// A decision the guard held back.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Held {
    /// The machine (or, for a held reconciliation pass, the first of its machines).
    pub machine_id: MachineId,
    /// What berth wanted to do.
    pub action: GuardAction,
    /// What it saw: the reason it would have recorded.
    pub observed: String,
    /// When it was held.
    pub at: Timestamp,
    /// The machine's record version when the decision was held; an approved restart runs only
    /// if nobody changed the machine since.
    pub version: u64,
}

/// What the guard says about a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead.
    Proceed,
    /// Held back; the caller records nothing destructive and reports it.
    Hold,
}

/// The guard's state, for health, host status and `berth doctor`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GuardStatus {
    /// Whether the guard is on.
    pub enabled: bool,
    /// Tripped: every guarded decision is held until an operator approves.
    pub tripped: bool,
    /// Why it tripped: the counts it saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tripped_because: Option<String>,
    /// Held decisions, oldest first (bounded: one per machine).
    pub held: Vec<Held>,
    /// Decisions held since the agent started, by action.
    pub blocked_total: BTreeMap<GuardAction, u64>,
    /// Distinct machines acted on automatically within the window.
    pub recent_machines: usize,
    /// The window.
    pub window_secs: u64,
}

#[derive(Debug, Default)]
struct State {
    /// (when, machine) of every admitted decision within the window.
    recent: VecDeque<(Instant, MachineId)>,
    tripped: Option<String>,
    /// One held decision per machine (the newest wins): bounded by the number of machines.
    held: BTreeMap<MachineId, Held>,
    blocked_total: BTreeMap<GuardAction, u64>,
}

/// The blast-radius guard. One per agent, shared by every automated decision.
#[derive(Debug)]
pub struct Guard {
    cfg: GuardConfig,
    state: Mutex<State>,
    /// The host's live (not destroyed) machines, as last counted by a reconciliation pass.
    live: AtomicUsize,
}

impl Guard {
    /// A guard with these settings; registers its counters at zero, so the first hold is an
    /// increase a rate can see.
    pub fn new(cfg: GuardConfig) -> Self {
        for a in GuardAction::ALL {
            metrics::counter!("berth_guard_blocked_total", "action" => a.as_str()).increment(0);
        }
        metrics::gauge!("berth_guard_held").set(0.0);
        Self {
            cfg,
            state: Mutex::new(State::default()),
            live: AtomicUsize::new(0),
        }
    }

    /// The settings.
    pub fn config(&self) -> &GuardConfig {
        &self.cfg
    }

    /// Tells the guard how many live machines the host has (reconciliation counts them).
    pub fn set_live(&self, n: usize) {
        self.live.store(n, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state inconsistent in a way that
        // matters more than refusing every decision would: keep going with what is there.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks to act on `machines` at once (one decision each). Either all proceed, and are
    /// counted in the window, or all are held.
    pub fn check(&self, action: GuardAction, machines: &[MachineId]) -> Verdict {
        self.check_at(action, machines, Instant::now())
    }

    fn check_at(&self, action: GuardAction, machines: &[MachineId], now: Instant) -> Verdict {
        if machines.is_empty() || !self.cfg.enabled {
            return Verdict::Proceed;
        }
        let live = self.live.load(Ordering::Relaxed);
        let mut s = self.lock();
        prune(&mut s.recent, self.cfg.window, now);
        let mut distinct: std::collections::BTreeSet<&MachineId> =
            s.recent.iter().map(|(_, m)| m).collect();
        distinct.extend(machines.iter());
        let n = distinct.len();
        // The live count may lag a reconciliation interval behind: never let it be smaller
        // than the machines seen acting.
        let base = live.max(n);
        let over = n > self.cfg.min_machines && (n as f64) > self.cfg.fraction * base as f64;
        if s.tripped.is_none() && !over {
            for m in machines {
                s.recent.push_back((now, m.clone()));
            }
            return Verdict::Proceed;
        }
        if s.tripped.is_none() {
            let why = format!(
                "{n} machines acted on automatically within {}s, more than {} and more than {:.0}% of the {base} live machines",
                self.cfg.window.as_secs(),
                self.cfg.min_machines,
                self.cfg.fraction * 100.0,
            );
            tracing::error!(
                action = action.as_str(), machines = ?machines, recent = n, live = base,
                "blast-radius guard tripped: {why}; holding back every automated restart and \
                 reconciliation until an operator approves (berth host approve)"
            );
            s.tripped = Some(why);
        }
        Verdict::Hold
    }

    /// Records what a held decision would have done, for the operator, and counts it in
    /// `berth_guard_blocked_total`. The same decision held again (a reconciliation pass seeing
    /// the same machine, unchanged, every interval) is neither logged nor counted again; returns
    /// whether it was new.
    pub fn hold(&self, held: Held) -> bool {
        let mut s = self.lock();
        let known = s.held.get(&held.machine_id).is_some_and(|h| {
            h.action == held.action && h.version == held.version && h.observed == held.observed
        });
        if !known {
            tracing::warn!(
                machine = %held.machine_id, action = held.action.as_str(), observed = %held.observed,
                "blast-radius guard: held back; approve with `berth host approve` once the host is healthy"
            );
            *s.blocked_total.entry(held.action).or_default() += 1;
            metrics::counter!("berth_guard_blocked_total", "action" => held.action.as_str())
                .increment(1);
            s.held.insert(held.machine_id.clone(), held);
        }
        metrics::gauge!("berth_guard_held").set(s.held.len() as f64);
        !known
    }

    /// An operator approved: the guard resets (window and trip), and the held decisions are
    /// returned for the caller to carry out.
    pub fn approve(&self) -> Vec<Held> {
        let held = self.take_held();
        self.reopen();
        held
    }

    /// The first half of an approval: the held decisions, taken out, while the guard stays
    /// tripped, so that no new automated decision races the approved ones while they begin.
    /// [`Guard::reopen`] is the second half.
    pub fn take_held(&self) -> Vec<Held> {
        let mut s = self.lock();
        let held: Vec<Held> = std::mem::take(&mut s.held).into_values().collect();
        metrics::gauge!("berth_guard_held").set(0.0);
        tracing::warn!(
            released = held.len(),
            "blast-radius guard: an operator approved; held decisions proceed"
        );
        held
    }

    /// The second half of an approval: the guard accepts automated decisions again. What was
    /// held meanwhile (asked again while the approved decisions began) is dropped: each asker
    /// asks again at its next failure or pass.
    pub fn reopen(&self) {
        let mut s = self.lock();
        s.tripped = None;
        s.recent.clear();
        s.held.clear();
        metrics::gauge!("berth_guard_held").set(0.0);
    }

    /// Whether the guard is tripped.
    pub fn is_tripped(&self) -> bool {
        self.lock().tripped.is_some()
    }

    /// The guard's state.
    pub fn status(&self) -> GuardStatus {
        let mut s = self.lock();
        prune(&mut s.recent, self.cfg.window, Instant::now());
        let mut held: Vec<Held> = s.held.values().cloned().collect();
        held.sort_by_key(|h| h.at);
        let distinct: std::collections::BTreeSet<&MachineId> =
            s.recent.iter().map(|(_, m)| m).collect();
        GuardStatus {
            enabled: self.cfg.enabled,
            tripped: s.tripped.is_some(),
            tripped_because: s.tripped.clone(),
            held,
            blocked_total: s.blocked_total.clone(),
            recent_machines: distinct.len(),
            window_secs: self.cfg.window.as_secs(),
        }
    }
}

/// Drops the decisions older than the window.
fn prune(recent: &mut VecDeque<(Instant, MachineId)>, window: Duration, now: Instant) {
    while recent
        .front()
        .is_some_and(|(t, _)| now.saturating_duration_since(*t) > window)
    {
        recent.pop_front();
    }
}

impl Default for Guard {
    fn default() -> Self {
        Self::new(GuardConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<MachineId> {
        (0..n)
            .map(|i| MachineId::parse(&format!("{:014x}", i + 1)).expect("id"))
            .collect()
    }

    fn guard(live: usize) -> Guard {
        let g = Guard::new(GuardConfig::default());
        g.set_live(live);
        g
    }

    #[test]
    fn one_machine_restarting_often_is_one_machine() {
        let g = guard(1);
        let m = ids(1);
        for _ in 0..100 {
            assert_eq!(g.check(GuardAction::Restart, &m), Verdict::Proceed);
        }
    }

    #[test]
    fn a_burst_past_half_of_the_host_trips_and_stays_tripped() {
        let g = guard(10);
        let m = ids(10);
        let now = Instant::now();
        for id in &m[..5] {
            assert_eq!(
                g.check_at(GuardAction::Restart, std::slice::from_ref(id), now),
                Verdict::Proceed
            );
        }
        assert_eq!(
            g.check_at(GuardAction::Restart, &m[5..6], now),
            Verdict::Hold,
            "the sixth of ten is more than half"
        );
        assert!(g.is_tripped());
        // Tripped: even a machine already acted on is held now.
        assert_eq!(
            g.check_at(GuardAction::Restart, &m[..1], now),
            Verdict::Hold
        );
        let held = |id: &MachineId, version| Held {
            machine_id: id.clone(),
            action: GuardAction::Restart,
            observed: "exited with code 1".into(),
            at: Timestamp::now(),
            version,
        };
        assert!(g.hold(held(&m[5], 4)));
        assert!(g.hold(held(&m[0], 7)));
        // The same decision seen again is not counted again; a new one is.
        assert!(!g.hold(held(&m[0], 7)));
        assert!(g.hold(held(&m[0], 9)));
        assert_eq!(
            g.status().blocked_total.get(&GuardAction::Restart),
            Some(&3)
        );
    }

    #[test]
    fn few_machines_never_trip() {
        let g = guard(3);
        assert_eq!(g.check(GuardAction::Reconcile, &ids(3)), Verdict::Proceed);
    }

    #[test]
    fn the_window_slides() {
        let g = guard(10);
        let m = ids(10);
        let t0 = Instant::now();
        assert_eq!(
            g.check_at(GuardAction::Restart, &m[..5], t0),
            Verdict::Proceed
        );
        let later = t0 + Duration::from_secs(61);
        assert_eq!(
            g.check_at(GuardAction::Restart, &m[5..10], later),
            Verdict::Proceed,
            "the first five left the window"
        );
    }

    #[test]
    fn a_batch_is_all_or_nothing() {
        let g = guard(10);
        assert_eq!(g.check(GuardAction::Reconcile, &ids(6)), Verdict::Hold);
        assert_eq!(g.status().recent_machines, 0);
    }

    #[test]
    fn approval_releases_and_resets() {
        let g = guard(10);
        let m = ids(10);
        assert_eq!(g.check(GuardAction::Reconcile, &m[..6]), Verdict::Hold);
        g.hold(Held {
            machine_id: m[0].clone(),
            action: GuardAction::Reconcile,
            observed: "gone".into(),
            at: Timestamp::now(),
            version: 3,
        });
        assert_eq!(g.status().held.len(), 1);
        let released = g.approve();
        assert_eq!(released.len(), 1);
        assert!(!g.is_tripped());
        assert!(g.status().held.is_empty());
        assert_eq!(g.check(GuardAction::Restart, &m[..1]), Verdict::Proceed);
    }

    #[test]
    fn off_means_off() {
        let g = Guard::new(GuardConfig {
            enabled: false,
            ..GuardConfig::default()
        });
        assert_eq!(g.check(GuardAction::Reconcile, &ids(50)), Verdict::Proceed);
    }

    #[test]
    fn holds_are_bounded_by_machines() {
        let g = guard(10);
        let m = ids(1);
        for v in 0..1000 {
            g.hold(Held {
                machine_id: m[0].clone(),
                action: GuardAction::Restart,
                observed: "x".into(),
                at: Timestamp::now(),
                version: v,
            });
        }
        assert_eq!(g.status().held.len(), 1);
    }
}
