//! Where a launch spends its time: each step marks the moment it ended on the host's monotonic
//! clock, which the agent, the shim and its launcher share, so one timeline covers all three.
//! The shim sends its marks back in its launch result; the driver keeps the last launch's
//! timeline of each machine ([`crate::Driver::launch_phases`]) and logs it at debug level.
#![allow(unsafe_code)]

use serde::{Deserialize, Serialize};

/// Now on `CLOCK_MONOTONIC`, in ns (the same clock in every process of the host).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into the timespec it is given, which lives here.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if r != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Named moments of one launch, in the order they happened: `(step, when it ended)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marks(pub Vec<(String, u64)>);

impl Marks {
    /// Marks that `step` ended now.
    pub fn mark(&mut self, step: &str) {
        self.0.push((step.to_owned(), monotonic_ns()));
    }

    /// Whether nothing was marked.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each step and how long it took (since the previous mark; the first since `start`).
    pub fn durations(&self, start: u64) -> Vec<(String, std::time::Duration)> {
        let mut prev = start;
        self.0
            .iter()
            .map(|(step, at)| {
                let d = std::time::Duration::from_nanos(at.saturating_sub(prev));
                prev = (*at).max(prev);
                (step.clone(), d)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_between_consecutive_marks() {
        let m = Marks(vec![
            ("a".into(), 110),
            ("b".into(), 150),
            ("c".into(), 150),
        ]);
        let d: Vec<(String, u64)> = m
            .durations(100)
            .into_iter()
            .map(|(s, d)| (s, d.as_nanos() as u64))
            .collect();
        assert_eq!(d, [("a".into(), 10), ("b".into(), 40), ("c".into(), 0)]);
    }

    #[test]
    fn the_clock_moves_forward() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(a > 0 && b >= a);
    }
}
