//! `berth events` (the host-wide event stream, followed with long polls).

use crate::cli::{Cli, Fail};
use crate::render;

/// Prints events after `after` (default: from the oldest kept); with `follow`, keeps going.
pub(crate) async fn events(
    cli: &Cli,
    after: Option<u64>,
    follow: bool,
    json: bool,
) -> Result<(), Fail> {
    let c = cli.client()?;
    let mut explicit = after.is_some();
    let mut after = after.unwrap_or(0);
    loop {
        let page = match c.events(after, 500, follow.then_some("30s")).await {
            Err(e) if e.code() == Some("expired") && !explicit => {
                // No --after: start from the oldest event retention kept.
                let oldest = c.db_stats().await?.first_seq.unwrap_or(1);
                eprintln!(
                    "berth: events before seq {oldest} were removed by retention; starting there"
                );
                after = oldest.saturating_sub(1);
                explicit = true;
                continue;
            }
            other => other?,
        };
        for e in &page.events {
            if json {
                println!("{}", serde_json::to_string(e).unwrap_or_default());
            } else {
                println!("{}", render::event_line(e));
            }
        }
        after = page.last_seq;
        if !follow && page.events.is_empty() {
            return Ok(());
        }
    }
}
