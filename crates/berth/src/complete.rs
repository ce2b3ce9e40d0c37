//! Shell completions through clap's completion engine: the shell runs `berth` itself (with
//! `COMPLETE=SHELL` in its environment) for every TAB, so values can be asked of the agent.
//! Machine arguments offer the machines' names and ids (nothing, quietly, when the agent cannot
//! be reached); states, restart policies and signals offer their words; paths offer files;
//! hidden commands are never offered. `berth completions SHELL` prints the few lines a shell
//! sources to register this (what the packages ship).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use berth_client::{Client, Endpoint};
use clap::CommandFactory;
use clap_complete::engine::CompletionCandidate;
use clap_complete::env::Shells;

use crate::cli::{Cli, Fail};

/// The variable the registration scripts set when they run `berth` for a completion.
const VAR: &str = "COMPLETE";

/// Answers a completion request and exits when `COMPLETE` is set; returns otherwise.
pub(crate) fn answer_if_asked() {
    clap_complete::CompleteEnv::with_factory(Cli::command)
        .var(VAR)
        .bin("berth")
        .completer("berth")
        .complete();
}

/// `berth completions SHELL`: the registration script for SHELL.
pub(crate) fn registration(shell: clap_complete::Shell) -> Result<(), Fail> {
    let name = shell.to_string();
    let shells = Shells::builtins();
    let Some(completer) = shells.completer(&name) else {
        return Err(Fail(2, format!("no completions for {name}")));
    };
    completer
        .write_registration(VAR, "berth", "berth", "berth", &mut std::io::stdout())
        .map_err(|e| Fail(1, format!("writing the {name} completions: {e}")))
}

/// How long a completion waits for the agent before offering nothing.
const PATIENCE: Duration = Duration::from_millis(1500);

/// Every machine's id and name (destroyed ones aside), each with a word about it.
pub(crate) fn machines() -> Vec<CompletionCandidate> {
    let client = client_from_args(std::env::args_os().collect());
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Vec::new();
    };
    let listed =
        rt.block_on(async { tokio::time::timeout(PATIENCE, client.list(None, false)).await });
    let Ok(Ok(machines)) = listed else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(machines.len() * 2);
    for m in &machines {
        let id = m.id.to_string();
        let named = !m.name.is_empty() && m.name != id;
        if named {
            out.push(
                CompletionCandidate::new(&m.name).help(Some(format!("{id}, {}", m.state).into())),
            );
        }
        let about = if named {
            format!("{}, {}", m.name, m.state)
        } else {
            m.state.to_string()
        };
        out.push(CompletionCandidate::new(id).help(Some(about.into())));
    }
    out
}

/// The machine states (`--state`).
pub(crate) fn states() -> Vec<CompletionCandidate> {
    berth_types::state::ALL_STATES
        .iter()
        .map(|s| CompletionCandidate::new(s.as_str()))
        .collect()
}

/// Signal names (`--signal`).
pub(crate) fn signals() -> Vec<CompletionCandidate> {
    [
        "TERM", "INT", "HUP", "QUIT", "KILL", "USR1", "USR2", "WINCH", "STOP", "CONT",
    ]
    .into_iter()
    .map(CompletionCandidate::new)
    .collect()
}

/// The agent the command line being completed talks to: its `--socket` or `--data-dir` (as
/// typed so far), else the environment's, else the default data directory's socket. `--api`
/// is not followed: a completion does not send a token over the network.
fn client_from_args(args: Vec<OsString>) -> Client {
    let flag = |name: &str| -> Option<PathBuf> {
        let eq = format!("{name}=");
        let mut it = args.iter();
        let mut found = None;
        while let Some(a) = it.next() {
            let s = a.to_string_lossy();
            if s == name {
                found = it.next().map(PathBuf::from);
            } else if let Some(v) = s.strip_prefix(&eq) {
                found = Some(PathBuf::from(v));
            }
        }
        found.filter(|p| !p.as_os_str().is_empty())
    };
    let socket = flag("--socket")
        .or_else(|| std::env::var_os("BERTH_SOCKET").map(PathBuf::from))
        .filter(|p| !p.as_os_str().is_empty());
    let socket = socket.unwrap_or_else(|| {
        let dir = flag("--data-dir")
            .or_else(|| std::env::var_os("BERTH_DATA_DIR").map(PathBuf::from))
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(crate::cli::default_data_dir);
        dir.join("berth.sock")
    });
    Client::new(Endpoint::Unix(socket))
}
