//! The events of the last commits, kept in memory by the writer: what the agent's followers
//! (the export session, the metrics follower, the checks scheduler, event streams and waits)
//! ask for is almost always what was just committed, and each of them used to pay a read
//! transaction and a decode per commit to learn it.
//!
//! Invariant: the ring holds a contiguous run of committed events ending at the last committed
//! seq, or nothing. Events enter only after their commit is durable (before the seq is
//! published), leave when retention removes them (and everything older with them), and the
//! whole ring is dropped when a commit fails (the database is reopened and may hold more or
//! less than the writer believed). [`RecentEvents::after`] answers only when the ring covers
//! the request; otherwise the caller reads the table, exactly as before.

use std::collections::VecDeque;

use berth_types::Event;

/// How many events the ring keeps: followers are a few events behind; a reader further back
/// reads the table.
pub(crate) const RECENT_EVENTS: usize = 1024;

#[derive(Debug)]
pub(crate) struct RecentEvents {
    events: VecDeque<Event>,
    cap: usize,
}

impl RecentEvents {
    pub fn new(cap: usize) -> Self {
        Self {
            events: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// A commit's events, in seq order. A gap (which the writer never makes) empties the ring
    /// rather than letting it answer across the gap.
    pub fn append(&mut self, new: Vec<Event>) {
        if let (Some(last), Some(first)) = (self.events.back(), new.first())
            && first.seq != last.seq + 1
        {
            self.events.clear();
        }
        self.events.extend(new);
        while self.events.len() > self.cap {
            self.events.pop_front();
        }
    }

    /// Retention removed events up to `seq`: they, and anything older, are no longer answered.
    pub fn forget_through(&mut self, seq: u64) {
        while self.events.front().is_some_and(|e| e.seq <= seq) {
            self.events.pop_front();
        }
    }

    pub fn clear(&mut self) {
        self.events.clear();
    }

    /// Up to `limit` events with `seq > after`, oldest first, when the ring holds every one of
    /// them (`after` at or past the seq before its first event); `None` sends the caller to the
    /// table.
    pub fn after(&self, after: u64, limit: usize) -> Option<Vec<Event>> {
        let first = self.events.front()?.seq;
        let from = after.checked_add(1)?;
        if from < first {
            return None;
        }
        let skip = usize::try_from(from - first).unwrap_or(usize::MAX);
        Some(self.events.iter().skip(skip).take(limit).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use berth_types::{EventKind, MachineId, Source, State, Timestamp};

    fn ev(seq: u64) -> Event {
        Event {
            seq,
            machine_id: MachineId::generate(),
            version: 1,
            kind: EventKind::Create,
            from: None,
            to: State::Created,
            source: Source::User,
            at: Timestamp::now(),
            reason: String::new(),
            pid: None,
            exit: None,
        }
    }

    fn seqs(v: Option<Vec<Event>>) -> Option<Vec<u64>> {
        v.map(|v| v.iter().map(|e| e.seq).collect())
    }

    #[test]
    fn it_answers_only_what_it_holds_entirely() {
        let mut r = RecentEvents::new(4);
        assert_eq!(seqs(r.after(0, 10)), None, "empty: read the table");
        r.append((5..=7).map(ev).collect());
        assert_eq!(seqs(r.after(4, 10)), Some(vec![5, 6, 7]));
        assert_eq!(seqs(r.after(5, 1)), Some(vec![6]));
        assert_eq!(seqs(r.after(7, 10)), Some(vec![]), "caught up");
        assert_eq!(seqs(r.after(3, 10)), None, "seq 4 is not held");
        r.append((8..=9).map(ev).collect());
        assert_eq!(seqs(r.after(4, 10)), None, "5 fell out of a ring of 4");
        assert_eq!(seqs(r.after(5, 10)), Some(vec![6, 7, 8, 9]));
        r.forget_through(7);
        assert_eq!(seqs(r.after(5, 10)), None, "retention removed 6 and 7");
        assert_eq!(seqs(r.after(7, 10)), Some(vec![8, 9]));
        r.append(vec![ev(12)]);
        assert_eq!(seqs(r.after(9, 10)), None, "a gap empties the ring");
        assert_eq!(seqs(r.after(11, 10)), Some(vec![12]));
        r.clear();
        assert_eq!(seqs(r.after(11, 10)), None);
        assert_eq!(seqs(r.after(u64::MAX, 10)), None);
    }
}
