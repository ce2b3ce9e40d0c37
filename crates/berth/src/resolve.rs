//! Addressing a machine: wherever the CLI takes `ID` it also takes the machine's name or a
//! unique prefix of its id. The API takes full ids only, so the CLI resolves first: an exact id,
//! then a name (names are unique among machines not destroyed), then an id prefix. An
//! ambiguous prefix is a usage error (exit 2) listing the candidates.

use berth_client::{Client, ClientError};
use berth_types::{MachineRecord, State};

use crate::cli::Fail;

/// The full id `arg` names.
pub(crate) async fn machine_id(c: &Client, arg: &str) -> Result<String, Fail> {
    match c.get(arg).await {
        Ok(m) => return Ok(m.id.to_string()),
        Err(ClientError::Api {
            status: 404 | 400, ..
        }) => {}
        Err(e) => return Err(e.into()),
    }
    let all = c.list(None, true).await?;
    pick(&all, arg).map(|m| m.id.to_string())
}

/// The machine `arg` names among `all`: a name of a machine not destroyed, else the one
/// destroyed machine of that name, else the machines whose id starts with `arg`.
fn pick<'a>(all: &'a [MachineRecord], arg: &str) -> Result<&'a MachineRecord, Fail> {
    let named: Vec<&MachineRecord> = all.iter().filter(|m| m.name == arg).collect();
    let live: Vec<&&MachineRecord> = named
        .iter()
        .filter(|m| m.state != State::Destroyed)
        .collect();
    if let [m] = live.as_slice() {
        return Ok(m);
    }
    if let Some(m) = named.iter().max_by_key(|m| m.updated_at) {
        return Ok(m);
    }
    let prefixed: Vec<&MachineRecord> = all
        .iter()
        .filter(|m| !arg.is_empty() && m.id.as_str().starts_with(arg))
        .collect();
    match prefixed.as_slice() {
        [m] => Ok(m),
        [] => Err(Fail(
            4,
            format!("no machine has the id, name or id prefix {arg:?}"),
        )),
        many => {
            let list: Vec<String> = many
                .iter()
                .map(|m| {
                    if m.name.is_empty() || m.name == m.id.as_str() {
                        format!("  {} ({})", m.id, m.state)
                    } else {
                        format!("  {} ({}, {})", m.id, m.name, m.state)
                    }
                })
                .collect();
            Err(Fail(
                2,
                format!(
                    "{arg:?} is the prefix of {} machines' ids; say which:\n{}",
                    many.len(),
                    list.join("\n")
                ),
            ))
        }
    }
}
