//! The per-machine series: one entry per machine that is not destroyed, rendered at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use berth_driver::usage::Usage;
use berth_types::state::ALL_STATES;
use berth_types::{MachineId, MachineRecord, State, Timestamp};

use super::{MACHINE_METRICS, family};

/// What the metrics know of one machine.
#[derive(Debug, Clone)]
struct Tracked {
    state: State,
    /// When its current state began (its last transition).
    since: Timestamp,
    pid: Option<u32>,
    restarts: u32,
    /// The last sample of its workload, only while it is started (and for that pid).
    usage: Option<Usage>,
}

/// The per-machine series: one entry per machine that is not destroyed.
///
/// Invariant: an entry exists only for a machine whose last observed record is not destroyed,
/// and it holds usage only while that record is `started` with the pid the usage was read for.
#[derive(Debug, Default)]
pub struct MachineSeries {
    machines: BTreeMap<MachineId, Tracked>,
}

impl MachineSeries {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes in a machine's current record: a destroyed one is forgotten; one that left
    /// `started` (or runs another pid) loses its usage.
    pub fn observe(&mut self, rec: &MachineRecord) {
        if rec.state == State::Destroyed {
            self.machines.remove(&rec.id);
            return;
        }
        let t = self.machines.entry(rec.id.clone()).or_insert(Tracked {
            state: rec.state,
            since: rec.updated_at,
            pid: rec.pid,
            restarts: rec.restarts,
            usage: None,
        });
        if !rec.state.expects_process() || t.pid != rec.pid {
            t.usage = None;
        }
        t.state = rec.state;
        t.since = rec.updated_at;
        t.pid = rec.pid;
        t.restarts = rec.restarts;
    }

    /// Whether a machine is tracked (not destroyed).
    pub fn contains(&self, id: &MachineId) -> bool {
        self.machines.contains_key(id)
    }

    /// Forgets a machine whose record is gone.
    pub fn forget(&mut self, id: &MachineId) {
        self.machines.remove(id);
    }

    /// Forgets everything (before a full resync).
    pub fn clear(&mut self) {
        self.machines.clear();
    }

    /// Machines whose workload runs, with its pid: what a sampler should read.
    pub fn running(&self) -> Vec<(MachineId, u32)> {
        self.machines
            .iter()
            .filter(|(_, t)| t.state.expects_process())
            .filter_map(|(id, t)| Some((id.clone(), t.pid?)))
            .collect()
    }

    /// Stores a usage sample read for `pid`, unless the machine moved on meanwhile (stopped,
    /// destroyed, restarted as another pid): a late sample never resurrects a series.
    pub fn set_usage(&mut self, id: &MachineId, pid: u32, usage: Usage) {
        if let Some(t) = self.machines.get_mut(id)
            && t.state.expects_process()
            && t.pid == Some(pid)
        {
            t.usage = Some(usage);
        }
    }

    /// Machines per state (every state but destroyed, zeros included).
    pub fn counts(&self) -> BTreeMap<State, u64> {
        let mut counts: BTreeMap<State, u64> = ALL_STATES
            .into_iter()
            .filter(|s| *s != State::Destroyed)
            .map(|s| (s, 0))
            .collect();
        for t in self.machines.values() {
            *counts.entry(t.state).or_insert(0) += 1;
        }
        counts
    }

    /// Machines tracked.
    pub fn len(&self) -> usize {
        self.machines.len()
    }

    /// Whether no machine is tracked.
    pub fn is_empty(&self) -> bool {
        self.machines.is_empty()
    }

    /// Appends the per-machine series in the Prometheus text format, as of `now`.
    pub fn render(&self, now: Timestamp, out: &mut String) {
        let [up, restarts, cpu, memory, transient] = MACHINE_METRICS else {
            return;
        };
        if self.machines.is_empty() {
            return;
        }
        family(out, up);
        for (id, t) in &self.machines {
            let v = u8::from(t.state.expects_process());
            let _ = writeln!(out, "{}{{machine_id=\"{}\"}} {v}", up.name, id.as_str());
        }
        family(out, restarts);
        for (id, t) in &self.machines {
            let _ = writeln!(
                out,
                "{}{{machine_id=\"{}\"}} {}",
                restarts.name,
                id.as_str(),
                t.restarts
            );
        }
        let sampled = || {
            self.machines
                .iter()
                .filter_map(|(id, t)| Some((id, t.usage?)))
        };
        if sampled().next().is_some() {
            family(out, cpu);
            for (id, u) in sampled() {
                let _ = writeln!(
                    out,
                    "{}{{machine_id=\"{}\"}} {}",
                    cpu.name,
                    id.as_str(),
                    u.cpu_seconds
                );
            }
            family(out, memory);
            for (id, u) in sampled() {
                let _ = writeln!(
                    out,
                    "{}{{machine_id=\"{}\"}} {}",
                    memory.name,
                    id.as_str(),
                    u.memory_bytes
                );
            }
        }
        let wedgeable = || self.machines.iter().filter(|(_, t)| t.state.is_transient());
        if wedgeable().next().is_some() {
            family(out, transient);
            for (id, t) in wedgeable() {
                let _ = writeln!(
                    out,
                    "{}{{machine_id=\"{}\",state=\"{}\"}} {:.3}",
                    transient.name,
                    id.as_str(),
                    t.state.as_str(),
                    now.saturating_since(t.since).as_secs_f64()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rec(id: &str, state: State, pid: Option<u32>) -> MachineRecord {
        let mut r = MachineRecord::new(
            MachineId::parse(id).unwrap(),
            None,
            berth_types::MachineConfig::command(["/bin/true"]),
            Default::default(),
            Timestamp::from_nanos(1_000_000_000),
        );
        r.state = state;
        r.pid = pid;
        r
    }

    fn usage() -> Usage {
        Usage {
            cpu_seconds: 1.5,
            memory_bytes: 4096,
        }
    }

    fn text(s: &MachineSeries) -> String {
        let mut out = String::new();
        s.render(Timestamp::from_nanos(61_000_000_000), &mut out);
        out
    }

    #[test]
    fn usage_lives_only_while_started_with_the_sampled_pid() {
        let mut s = MachineSeries::new();
        s.observe(&rec("a", State::Started, Some(10)));
        assert_eq!(s.running(), [(MachineId::parse("a").unwrap(), 10)]);
        s.set_usage(&MachineId::parse("a").unwrap(), 10, usage());
        let t = text(&s);
        assert!(t.contains("berth_machine_up{machine_id=\"a\"} 1\n"), "{t}");
        assert!(t.contains("berth_machine_cpu_seconds_total{machine_id=\"a\"} 1.5\n"));
        assert!(t.contains("berth_machine_memory_bytes{machine_id=\"a\"} 4096\n"));

        // Restarted as another pid: the old sample is dropped, a late one for the old pid too.
        s.observe(&rec("a", State::Started, Some(11)));
        s.set_usage(&MachineId::parse("a").unwrap(), 10, usage());
        assert!(!text(&s).contains("cpu_seconds"));

        // Stopping: no usage, and a sample that raced with the stop is refused.
        s.set_usage(&MachineId::parse("a").unwrap(), 11, usage());
        s.observe(&rec("a", State::Stopping, None));
        s.set_usage(&MachineId::parse("a").unwrap(), 11, usage());
        let t = text(&s);
        assert!(
            !t.contains("cpu_seconds") && !t.contains("memory_bytes"),
            "{t}"
        );
        assert!(t.contains("berth_machine_up{machine_id=\"a\"} 0\n"));
        // 60 s in a transient state.
        assert!(
            t.contains(
                "berth_machine_transient_seconds{machine_id=\"a\",state=\"stopping\"} 60.000\n"
            ),
            "{t}"
        );

        s.observe(&rec("a", State::Stopped, None));
        assert!(!text(&s).contains("transient"));
        s.observe(&rec("a", State::Destroyed, None));
        assert_eq!(text(&s), "");
        assert!(s.is_empty());
    }

    #[test]
    fn counts_every_state_but_destroyed() {
        let mut s = MachineSeries::new();
        s.observe(&rec("a", State::Started, Some(1)));
        s.observe(&rec("b", State::Started, Some(2)));
        s.observe(&rec("c", State::Failed, None));
        s.observe(&rec("d", State::Destroyed, None));
        let c = s.counts();
        assert_eq!(c.len(), 8);
        assert_eq!(c[&State::Started], 2);
        assert_eq!(c[&State::Failed], 1);
        assert_eq!(c[&State::Stopped], 0);
        assert!(!c.contains_key(&State::Destroyed));
        s.forget(&MachineId::parse("c").unwrap());
        assert_eq!(s.len(), 2);
    }
}
