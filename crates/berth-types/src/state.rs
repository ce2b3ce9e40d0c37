//! Machine states and the transitions between them: the pure state machine.
//!
//! The table in [`State::can_transition_to`] is the single definition of what is legal. The store
//! checks every transition against it inside the write transaction that persists it, so no caller
//! can persist an illegal one.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A machine's lifecycle state (the names are part of the public interface).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Recorded, never started (or created with `skip_start`).
    Created,
    /// A start is in progress: recorded before the workload is spawned.
    Starting,
    /// The workload is confirmed running.
    Started,
    /// A stop is in progress: the stop signal has been or is about to be sent.
    Stopping,
    /// The workload is not running; it may be started again.
    Stopped,
    /// A restart (user-requested or by restart policy) is in progress.
    Restarting,
    /// The workload could not be started, or exited unsuccessfully with no restart left.
    Failed,
    /// A destroy is in progress.
    Destroying,
    /// Gone; only history remains, until retention removes it.
    Destroyed,
}

/// Every state, in lifecycle order.
pub const ALL_STATES: [State; 9] = [
    State::Created,
    State::Starting,
    State::Started,
    State::Stopping,
    State::Stopped,
    State::Restarting,
    State::Failed,
    State::Destroying,
    State::Destroyed,
];

/// A transition the state machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a machine cannot go from {from} to {to}")]
pub struct IllegalTransition {
    /// The machine's current state.
    pub from: State,
    /// The requested state.
    pub to: State,
}

impl State {
    /// Whether the state machine allows `self → to`.
    pub const fn can_transition_to(self, to: State) -> bool {
        use State::*;
        matches!(
            (self, to),
            (Created, Starting | Destroying)
                | (Starting, Started | Failed | Stopping | Stopped | Destroying)
                | (
                    Started,
                    Stopping | Stopped | Restarting | Failed | Destroying
                )
                | (Stopping, Stopped | Failed | Destroying)
                | (Stopped, Starting | Restarting | Destroying)
                | (
                    Restarting,
                    Starting | Started | Stopping | Stopped | Failed | Destroying
                )
                | (Failed, Starting | Restarting | Destroying)
                | (Destroying, Destroyed)
        )
    }

    /// Checks `self → to`, returning a typed error when it is illegal.
    pub const fn transition(self, to: State) -> Result<State, IllegalTransition> {
        if self.can_transition_to(to) {
            Ok(to)
        } else {
            Err(IllegalTransition { from: self, to })
        }
    }

    /// A state an operation passes through; a machine stuck in one is wedged.
    pub const fn is_transient(self) -> bool {
        matches!(
            self,
            State::Starting | State::Stopping | State::Restarting | State::Destroying
        )
    }

    /// Whether the workload process is expected to exist in this state.
    pub const fn expects_process(self) -> bool {
        matches!(self, State::Started)
    }

    /// The lowercase wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Starting => "starting",
            State::Started => "started",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Restarting => "restarting",
            State::Failed => "failed",
            State::Destroying => "destroying",
            State::Destroyed => "destroyed",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for State {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ALL_STATES
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = ALL_STATES.iter().map(|s| s.as_str()).collect();
                format!("unknown state {s:?}; expected one of {}", names.join(", "))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destroyed_is_terminal_and_every_other_state_can_be_destroyed() {
        for s in ALL_STATES {
            assert!(!State::Destroyed.can_transition_to(s));
            if s != State::Destroyed && s != State::Destroying {
                assert!(s.can_transition_to(State::Destroying), "{s} → destroying");
            }
        }
    }

    #[test]
    fn no_self_transitions() {
        for s in ALL_STATES {
            assert_eq!(s.transition(s), Err(IllegalTransition { from: s, to: s }));
        }
    }

    #[test]
    fn every_state_is_reachable_from_created() {
        let mut seen = vec![State::Created];
        let mut i = 0;
        while i < seen.len() {
            for to in ALL_STATES {
                if seen[i].can_transition_to(to) && !seen.contains(&to) {
                    seen.push(to);
                }
            }
            i += 1;
        }
        assert_eq!(seen.len(), ALL_STATES.len());
    }

    #[test]
    fn names_round_trip() {
        for s in ALL_STATES {
            assert_eq!(s.as_str().parse::<State>(), Ok(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert!(
            "running"
                .parse::<State>()
                .unwrap_err()
                .contains("expected one of")
        );
    }
}
