//! `berth events` (the host-wide event stream, followed with long polls). A follow keeps its
//! cursor (the last seq printed) and, when berthd goes away (a restart), reconnects and resumes
//! strictly after it, so no event is lost or repeated. Lines show machine names, looked up once
//! and again when an unknown machine appears.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth_client::{Client, ClientError};

use crate::cli::{Cli, Fail};
use crate::{render, resolve};

/// How long a follow keeps trying to reach a berthd that went away.
const RECONNECT_FOR: Duration = Duration::from_secs(120);

/// Machine ids to names, for the lines people read.
#[derive(Default)]
struct Names(HashMap<String, String>);

impl Names {
    async fn get(&mut self, c: &Client, id: &str) -> Option<String> {
        if !self.0.contains_key(id) {
            if let Ok(all) = c.list(None, true).await {
                self.0 = all
                    .into_iter()
                    .map(|m| (m.id.to_string(), m.name))
                    .collect();
            }
            // Gone (retention removed it) or unreachable: no name, and no second look.
            self.0.entry(id.to_owned()).or_default();
        }
        self.0
            .get(id)
            .filter(|n| !n.is_empty() && n.as_str() != id)
            .cloned()
    }
}

/// Prints events after `after` (default: from the oldest kept); with `follow`, keeps going;
/// with `machine`, only that machine's.
pub(crate) async fn events(
    cli: &Cli,
    after: Option<u64>,
    follow: bool,
    json: bool,
    machine: Option<&str>,
) -> Result<(), Fail> {
    let c = cli.client()?;
    let only = match machine {
        Some(m) => Some(resolve::machine_id(&c, m).await?),
        None => None,
    };
    let mut names = Names::default();
    let mut explicit = after.is_some();
    let mut after = after.unwrap_or(0);
    let mut lost_at: Option<Instant> = None;
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
            Err(ClientError::Unreachable { .. } | ClientError::Decode(_)) if follow => {
                // berthd went away mid-follow (a restart): resume after the last seq printed.
                let since = *lost_at.get_or_insert_with(|| {
                    eprintln!("berth: lost berthd; reconnecting to resume the follow");
                    Instant::now()
                });
                if since.elapsed() > RECONNECT_FOR {
                    return Err(Fail(
                        3,
                        format!("berthd did not come back within {RECONNECT_FOR:?}"),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            other => other?,
        };
        lost_at = None;
        for e in &page.events {
            if only
                .as_deref()
                .is_some_and(|id| id != e.machine_id.as_str())
            {
                continue;
            }
            if json {
                println!("{}", serde_json::to_string(e).unwrap_or_default());
            } else {
                let name = names.get(&c, e.machine_id.as_str()).await;
                println!("{}", render::event_line(e, name.as_deref()));
            }
        }
        after = page.last_seq.max(after);
        if !follow && page.events.is_empty() {
            return Ok(());
        }
    }
}
