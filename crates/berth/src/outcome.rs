//! Whether the user got what they asked for, in the exit code: a create or start that ends
//! `failed` exits 1 with the reason; stopping a machine that is not running and destroying one
//! that is destroyed already succeed (nothing to do, and said so).

use berth_client::{Client, ClientError};
use berth_types::{MachineRecord, State};

use crate::cli::Fail;

/// `m` as the answer to a create or start: an error with the reason if it failed.
pub(crate) async fn started(c: &Client, m: MachineRecord) -> Result<MachineRecord, Fail> {
    if m.state != State::Failed {
        return Ok(m);
    }
    let reason = c
        .machine_events(m.id.as_str())
        .await
        .ok()
        .and_then(|es| es.last().map(|e| e.reason.clone()))
        .unwrap_or_else(|| "no reason recorded".to_owned());
    Err(Fail(1, format!("machine {} failed: {reason}", m.id)))
}

/// A stop or destroy that the agent refused because there is nothing to do is a success: the
/// machine as it is, after saying so on stderr.
pub(crate) async fn idempotent(
    c: &Client,
    id: &str,
    verb: &str,
    done: &[State],
    r: Result<MachineRecord, ClientError>,
) -> Result<MachineRecord, Fail> {
    match r {
        Err(e @ ClientError::Api { status: 409, .. }) => {
            let m = c.get(id).await.map_err(|_| Fail::from(e.clone_msg()))?;
            if done.contains(&m.state) {
                eprintln!(
                    "berth: machine {id} is already {}; nothing to {verb}",
                    m.state
                );
                Ok(m)
            } else {
                Err(e.into())
            }
        }
        other => Ok(other?),
    }
}

trait CloneMsg {
    fn clone_msg(&self) -> ClientError;
}

impl CloneMsg for ClientError {
    fn clone_msg(&self) -> ClientError {
        ClientError::Decode(self.to_string())
    }
}
