//! `berth`: the operator CLI. Talks to the local agent over its unix socket (or `--api URL` with
//! a token), prints aligned tables for people and stable `--json` for scripts, and for the `db`
//! commands can open the data directory directly with `--offline` when no agent holds it.
//!
//! Exit codes: 0 ok; 1 the operation failed; 2 usage error; 3 agent unreachable; 4 not found.
//!
//! `cli.rs` holds clap's types; each command group has its own module (`machine`, `host`, `db`,
//! `stream` for events, `logs` for logs, `offline` for `--offline`); `render.rs` draws tables and lines for people.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod cli;
mod complete;
mod config_flags;
mod db;
mod host;
mod image;
mod logs;
mod machine;
mod manpages;
mod offline;
mod outcome;
mod progress;
mod render;
mod resolve;
mod stream;
mod update;
mod volume;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, Fail};

async fn run(cli: Cli) -> Result<(), Fail> {
    match &cli.command {
        Command::Completions { shell } => complete::registration(*shell),
        Command::Man { dir } => manpages::write_all(dir),
        Command::Machine(cmd) => machine::run(&cli, cmd).await,
        Command::Events {
            after,
            follow,
            json,
            machine,
        } => stream::events(&cli, *after, *follow, *json, machine.as_deref()).await,
        Command::Logs {
            id,
            tail,
            since,
            timestamps,
            follow,
        } => {
            let args = logs::LogsArgs {
                id: id.clone(),
                tail: *tail,
                since: since.clone(),
                timestamps: *timestamps,
                follow: *follow,
            };
            logs::run(&cli, &args).await
        }
        Command::Host(cmd) => host::run(&cli, cmd).await,
        Command::Db(cmd) => db::run(&cli, cmd).await,
        Command::Image(cmd) => image::run(&cli, cmd).await,
        Command::Volume(cmd) => volume::run(&cli, cmd).await,
        Command::Doctor { json } => host::doctor(&cli, *json).await,
    }
}

/// A reader that went away (`berth events | head -1`) is not an error of berth's: the print
/// macros panic on EPIPE, so such a panic ends the process quietly, as SIGPIPE would
/// (exit 141, 128 + SIGPIPE); any other panic is reported as before.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.contains("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    quiet_on_broken_pipe();
    complete::answer_if_asked();
    let cli = Cli::parse();
    render::set_wide(cli.wide);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, msg)) => {
            // An empty message is a code passed on (`machine exec` exits with its command's).
            if !msg.is_empty() {
                eprintln!("berth: {msg}");
            }
            ExitCode::from(code)
        }
    }
}
