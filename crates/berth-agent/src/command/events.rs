//! The host-wide event stream: a page after a cursor, long-polled.

use std::time::Duration;

use berth_api_types::EventsPage;

use crate::Agent;
use crate::error::{CommandError, CommandResult};

/// Longest long-poll of one events request.
pub const MAX_EVENTS_WAIT: Duration = Duration::from_secs(60);
/// Most events one page returns.
pub const MAX_EVENTS_PAGE: usize = 1000;

impl Agent {
    /// Events with `seq > after`, at most `limit` (clamped to 1..=1000); with none there yet,
    /// waits up to `wait` (at most a minute) for one. A cursor past the head is refused: it
    /// would wait for seqs this log gave to other events, or will never reach.
    pub async fn events_page(
        &self,
        after: u64,
        limit: usize,
        wait: Duration,
    ) -> CommandResult<EventsPage> {
        let limit = limit.clamp(1, MAX_EVENTS_PAGE);
        let wait = wait.min(MAX_EVENTS_WAIT);
        let store = self.store();
        let head = store.last_seq()?;
        if after > head {
            return Err(CommandError::conflict(format!(
                "after={after} is past this host's newest event (seq {head}): the database was probably replaced or restored from a backup, or the cursor belongs to another host; resync: list the machines, then follow from after={head}"
            )));
        }
        let mut seq = store.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            seq.borrow_and_update();
            let events = store.events_after(after, limit)?;
            if !events.is_empty() || tokio::time::Instant::now() >= deadline {
                if let Some(oldest) = events.first() {
                    // Event-stream lag: how long the oldest event returned waited for this caller.
                    let lag = berth_types::Timestamp::now().saturating_since(oldest.at);
                    metrics::histogram!("berth_events_stream_lag_seconds")
                        .record(lag.as_secs_f64());
                }
                let last_seq = events.last().map_or(after, |e| e.seq);
                return Ok(EventsPage { events, last_seq });
            }
            let stopping = self.stopping();
            let woke = tokio::select! {
                // berthd is stopping: answer now (the client resumes from its cursor).
                () = stopping.wait() => false,
                r = tokio::time::timeout_at(deadline, seq.changed()) => r.is_ok(),
            };
            if !woke {
                return Ok(EventsPage {
                    events: Vec::new(),
                    last_seq: after,
                });
            }
        }
    }
}
