//! `berth`: the operator CLI. Talks to the local agent over its unix socket (or `--api URL` with
//! a token), prints aligned tables for people and stable `--json` for scripts, and for the `db`
//! commands can open the data directory directly with `--offline` when no agent holds it.
//!
//! Exit codes: 0 ok; 1 the operation failed; 2 usage error; 3 agent unreachable; 4 not found.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod render;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use berth_api_types::{CreateMachine, StopRequest};
use berth_client::{Client, ClientError, Endpoint};
use berth_types::time::HumanDuration;
use berth_types::{MachineConfig, RestartConfig, RestartPolicy};
use clap::{Args, CommandFactory, Parser, Subcommand};

/// Operate the berth agent on this host.
#[derive(Debug, Parser)]
#[command(name = "berth", version, about, propagate_version = true)]
struct Cli {
    /// The agent's unix socket (default <data-dir>/berth.sock).
    #[arg(long, global = true, env = "BERTH_SOCKET")]
    socket: Option<PathBuf>,
    /// Talk to an agent over TCP instead, e.g. http://10.0.0.5:4280.
    #[arg(long, global = true, env = "BERTH_API")]
    api: Option<String>,
    /// Bearer token for --api (default: read from <data-dir>/token).
    #[arg(long, global = true, env = "BERTH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The agent's data directory (default /var/lib/berth as root, else $XDG_STATE_HOME/berth).
    #[arg(long, global = true, env = "BERTH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage machines.
    #[command(subcommand, alias = "machines", alias = "m")]
    Machine(MachineCmd),
    /// The host-wide event stream.
    Events {
        /// Only events after this seq (default: from the oldest event kept).
        #[arg(long)]
        after: Option<u64>,
        /// Keep following new events.
        #[arg(long, short)]
        follow: bool,
        /// One JSON event per line.
        #[arg(long)]
        json: bool,
    },
    /// A machine's output.
    Logs {
        /// Machine id.
        id: String,
        /// Lines from the end.
        #[arg(long, short = 'n', default_value_t = 100)]
        tail: usize,
        /// Keep following.
        #[arg(long, short)]
        follow: bool,
    },
    /// This host: status, cordon, uncordon.
    #[command(subcommand)]
    Host(HostCmd),
    /// The database: stats, compact, check, slow-ops, backup.
    #[command(subcommand)]
    Db(DbCmd),
    /// Compare the database with the live processes.
    Doctor {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print shell completions.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (berth.1 and one per subcommand) into DIR; `cargo xtask dist` uses it.
    #[command(hide = true)]
    Man {
        /// An existing directory.
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum MachineCmd {
    /// List machines.
    #[command(alias = "ls")]
    List {
        /// Only machines in this state.
        #[arg(long)]
        state: Option<String>,
        /// Only print ids.
        #[arg(short, long)]
        quiet: bool,
        /// Include destroyed machines.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        out: Out,
    },
    /// A machine's details and event log.
    Status {
        /// Machine id.
        id: String,
        #[command(flatten)]
        out: Out,
    },
    /// Create (and start) a machine.
    Create(CreateArgs),
    /// Start a machine.
    Start(IdArgs),
    /// Stop a machine.
    Stop(LifecycleArgs),
    /// Restart a machine.
    Restart(IdArgs),
    /// Destroy a machine.
    Destroy(LifecycleArgs),
    /// Wait for a machine to reach a state.
    Wait {
        /// Machine id.
        id: String,
        /// The state to wait for.
        #[arg(long, default_value = "started")]
        state: String,
        /// How long to wait.
        #[arg(long, default_value = "30s")]
        timeout: String,
    },
    /// A machine's event log.
    Events {
        /// Machine id.
        id: String,
        #[command(flatten)]
        out: Out,
    },
}

#[derive(Debug, Args)]
struct Out {
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct IdArgs {
    /// Machine id.
    id: String,
    #[command(flatten)]
    out: Out,
}

#[derive(Debug, Args)]
struct LifecycleArgs {
    /// Machine id.
    id: String,
    /// Signal to send first.
    #[arg(long)]
    signal: Option<String>,
    /// Grace period before SIGKILL.
    #[arg(long)]
    timeout: Option<String>,
    /// Destroy a running machine (killing it first).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    out: Out,
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// Name.
    #[arg(long)]
    name: Option<String>,
    /// Environment variable, K=V (repeatable).
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    env: Vec<String>,
    /// Restart policy: no, on-failure, always.
    #[arg(long, default_value = "no")]
    restart: String,
    /// Memory limit in MiB.
    #[arg(long)]
    memory: Option<u64>,
    /// Record it without starting it.
    #[arg(long)]
    skip_start: bool,
    /// Metadata label, K=V (repeatable).
    #[arg(long = "metadata", value_name = "K=V")]
    metadata: Vec<String>,
    #[command(flatten)]
    out: Out,
    /// The command to run.
    #[arg(last = true, required = true)]
    cmd: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum HostCmd {
    /// Host facts, capabilities and supervision status.
    Status {
        #[command(flatten)]
        out: Out,
    },
    /// The agent's health checks; exits 1 while the host is degraded.
    Health {
        #[command(flatten)]
        out: Out,
    },
    /// Refuse new machines (existing ones keep running).
    Cordon,
    /// Accept new machines again.
    Uncordon,
    /// Let the automated decisions the blast-radius guard held back proceed (held restarts
    /// run, a held reconciliation pass is applied). Check the host first: the guard trips when
    /// most machines fail at once, which is usually the host's fault.
    Approve {
        #[command(flatten)]
        out: Out,
    },
}

#[derive(Debug, Subcommand)]
enum DbCmd {
    /// Size, live bytes, garbage ratio, rows per table.
    Stats {
        #[command(flatten)]
        out: Out,
        /// Open the data directory directly, read-only (no agent may hold it; a file that needs
        /// repair is refused untouched).
        #[arg(long)]
        offline: bool,
    },
    /// Compact the database (online through the agent; it keeps serving meanwhile).
    Compact {
        /// Open the data directory directly (no agent may hold it).
        #[arg(long)]
        offline: bool,
        #[command(flatten)]
        out: Out,
    },
    /// Integrity and consistency check: every page's checksum, every record, the cross-table
    /// invariants.
    ///
    /// With --offline the file is opened read-only and never written (the page check works on a
    /// copy beside it, removed afterwards). A file that was not closed cleanly needs repair,
    /// which writes: the check then says so and exits 1, unless --repair is given.
    Check {
        /// Open the data directory directly (no agent may hold it); the file is not modified.
        #[arg(long)]
        offline: bool,
        /// With --offline: repair a file that was not closed cleanly first, as berthd's open
        /// does (a copy is kept aside as berth.redb.pre-repair until the repair succeeded).
        #[arg(long, requires = "offline")]
        repair: bool,
        #[command(flatten)]
        out: Out,
    },
    /// Recent slow database operations.
    SlowOps {
        #[command(flatten)]
        out: Out,
    },
    /// Write a consistent snapshot of the database to FILE.
    Backup {
        /// Destination file (must not exist).
        file: PathBuf,
        /// Open the data directory directly, read-only (no agent may hold it; a file that needs
        /// repair is refused untouched).
        #[arg(long)]
        offline: bool,
    },
}

/// A failure with its exit code.
struct Fail(u8, String);

impl From<ClientError> for Fail {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::Unreachable { .. } => 3,
            ClientError::Api { status: 404, .. } => 4,
            _ => 1,
        };
        Fail(code, e.to_string())
    }
}

fn default_data_dir() -> PathBuf {
    let root = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0
    });
    if root.unwrap_or(false) {
        return PathBuf::from("/var/lib/berth");
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("berth");
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(".local/state/berth")
}

impl Cli {
    fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(default_data_dir)
    }

    fn client(&self) -> Result<Client, Fail> {
        if let Some(api) = &self.api {
            let addr = api
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_owned();
            if addr.starts_with("https://") {
                return Err(Fail(
                    2,
                    "--api: https is not supported; use the unix socket or an http:// address"
                        .into(),
                ));
            }
            let token = self.token.clone().or_else(|| {
                std::fs::read_to_string(self.data_dir().join("token"))
                    .ok()
                    .map(|t| t.trim().to_owned())
            });
            return Ok(Client::new(Endpoint::Tcp { addr, token }));
        }
        Ok(Client::new(Endpoint::Unix(
            self.socket
                .clone()
                .unwrap_or_else(|| self.data_dir().join("berth.sock")),
        )))
    }
}

fn kv(items: &[String], what: &str) -> Result<BTreeMap<String, String>, Fail> {
    items
        .iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| Fail(2, format!("{what} {s:?} must be K=V")))
        })
        .collect()
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn offline_fail(e: berth_store::StoreError) -> Fail {
    match e {
        berth_store::StoreError::Locked { .. } => Fail(
            1,
            format!("{e}; an agent holds the data dir: run without --offline"),
        ),
        other => Fail(1, other.to_string()),
    }
}

/// The data dir's database opened read-only: nothing an offline read does writes to it.
fn offline_db(cli: &Cli) -> Result<berth_store::OfflineDb, Fail> {
    let path = cli.data_dir().join("berth.redb");
    if !path.exists() {
        return Err(Fail(1, format!("{} does not exist", path.display())));
    }
    berth_store::OfflineDb::open(&path).map_err(offline_fail)
}

/// The data dir's database opened for writing (an offline compaction), repairing it if needed.
fn offline_store(cli: &Cli) -> Result<berth_store::Store, Fail> {
    let path = cli.data_dir().join("berth.redb");
    if !path.exists() {
        return Err(Fail(1, format!("{} does not exist", path.display())));
    }
    berth_store::Store::open(&path, berth_store::StoreOptions::default()).map_err(|e| match e {
        berth_store::StoreError::Locked { .. } => Fail(
            1,
            format!("{e}; an agent holds the data dir: run without --offline"),
        ),
        other => Fail(1, other.to_string()),
    })
}

/// `berth db check --offline [--repair]`: the page check and the consistency check on the file.
fn offline_check(cli: &Cli, repair: bool) -> Result<berth_api_types::DbCheck, Fail> {
    let path = cli.data_dir().join("berth.redb");
    let mut repaired_on_open = false;
    if repair {
        if !path.exists() {
            return Err(Fail(1, format!("{} does not exist", path.display())));
        }
        // The safe open: a damaged file is refused and left as it was.
        let integrity = berth_store::check_file_integrity(&path).map_err(offline_fail)?;
        repaired_on_open = integrity.repaired_on_open;
    }
    let db = offline_db(cli)?;
    let pages = db.verify_pages().map_err(offline_fail)?;
    let report = db.check().map_err(offline_fail)?;
    Ok(berth_agent::wire::db_check(
        pages,
        report,
        Some(repaired_on_open),
    ))
}

async fn run(cli: Cli) -> Result<(), Fail> {
    match &cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "berth", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { dir } => clap_mangen::generate_to(Cli::command(), dir)
            .map_err(|e| Fail(1, format!("writing man pages to {}: {e}", dir.display()))),
        Command::Machine(cmd) => machine(&cli, cmd).await,
        Command::Events {
            after,
            follow,
            json,
        } => {
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
                    if *json {
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
        Command::Logs { id, tail, follow } => {
            let c = cli.client()?;
            let path = format!("/v1/machines/{id}/logs?tail={tail}&follow={follow}");
            c.stream(&path, |b| {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(b);
                let _ = out.flush();
            })
            .await?;
            Ok(())
        }
        Command::Host(cmd) => {
            let c = cli.client()?;
            match cmd {
                HostCmd::Status { out } => {
                    let h = c.host().await?;
                    if out.json {
                        print_json(&h)
                    } else {
                        let health = c.health().await?;
                        println!("{}", render::host(&h, &health))
                    }
                }
                HostCmd::Health { out } => {
                    let health = c.health().await?;
                    if out.json {
                        print_json(&health)
                    } else {
                        println!("{}", render::health(&health))
                    }
                    if health.status != "ok" {
                        return Err(Fail(
                            1,
                            format!(
                                "the host is {}: {}",
                                health.status,
                                render::failing(&health)
                            ),
                        ));
                    }
                }
                HostCmd::Cordon => {
                    c.set_cordon(true).await?;
                    println!("host cordoned: new machines are refused; existing ones keep running");
                }
                HostCmd::Uncordon => {
                    c.set_cordon(false).await?;
                    println!("host uncordoned: new machines are accepted");
                }
                HostCmd::Approve { out } => {
                    let r = c.approve().await?;
                    if out.json {
                        print_json(&r)
                    } else {
                        println!("{}", render::approve(&r))
                    }
                }
            }
            Ok(())
        }
        Command::Db(cmd) => db(&cli, cmd).await,
        Command::Doctor { json } => {
            let c = cli.client()?;
            let host = c.host().await?;
            let machines = c.list(None, false).await?;
            let report = render::doctor(&host, &machines);
            if *json {
                print_json(&report)
            } else {
                println!("{}", render::doctor_text(&report))
            }
            if !report.problems.is_empty() {
                return Err(Fail(1, "doctor found problems".into()));
            }
            Ok(())
        }
    }
}

async fn machine(cli: &Cli, cmd: &MachineCmd) -> Result<(), Fail> {
    let c = cli.client()?;
    let show = |m: &berth_types::MachineRecord, json: bool| {
        if json {
            print_json(m)
        } else {
            println!("{}", render::machine_line(m))
        }
    };
    match cmd {
        MachineCmd::List {
            state,
            quiet,
            all,
            out,
        } => {
            let ms = c.list(state.as_deref(), *all).await?;
            if out.json {
                print_json(&ms);
            } else if *quiet {
                for m in &ms {
                    println!("{}", m.id);
                }
            } else {
                println!("{}", render::machines(&ms));
            }
        }
        MachineCmd::Status { id, out } => {
            let m = c.get(id).await?;
            let events = c.machine_events(id).await?;
            if out.json {
                print_json(&serde_json::json!({ "machine": m, "events": events }));
            } else {
                println!("{}", render::status(&m, &events));
            }
        }
        MachineCmd::Create(a) => {
            let policy = match a.restart.as_str() {
                "no" => RestartPolicy::No,
                "on-failure" => RestartPolicy::OnFailure,
                "always" => RestartPolicy::Always,
                other => {
                    return Err(Fail(
                        2,
                        format!("--restart {other:?}: expected no, on-failure or always"),
                    ));
                }
            };
            let mut config = MachineConfig::command(a.cmd.clone());
            config.env = kv(&a.env, "--env")?;
            config.restart = RestartConfig {
                policy,
                max_retries: None,
            };
            config.resources.memory_mb = a.memory;
            let req = CreateMachine {
                name: a.name.clone(),
                config,
                metadata: kv(&a.metadata, "--metadata")?,
                skip_start: a.skip_start,
            };
            show(&c.create(&req, None).await?, a.out.json);
        }
        MachineCmd::Start(a) => show(&c.action(&a.id, "start").await?, a.out.json),
        MachineCmd::Restart(a) => show(&c.action(&a.id, "restart").await?, a.out.json),
        MachineCmd::Stop(a) => {
            let timeout = match &a.timeout {
                Some(t) => {
                    Some(HumanDuration::parse(t).map_err(|e| Fail(2, format!("--timeout: {e}")))?)
                }
                None => None,
            };
            show(
                &c.stop(
                    &a.id,
                    &StopRequest {
                        signal: a.signal.clone(),
                        timeout,
                    },
                )
                .await?,
                a.out.json,
            );
        }
        MachineCmd::Destroy(a) => show(&c.destroy(&a.id, a.force).await?, a.out.json),
        MachineCmd::Wait { id, state, timeout } => {
            let m = c.wait(id, state, timeout).await?;
            println!("{}", render::machine_line(&m));
        }
        MachineCmd::Events { id, out } => {
            let events = c.machine_events(id).await?;
            if out.json {
                print_json(&events)
            } else {
                println!("{}", render::events(&events))
            }
        }
    }
    Ok(())
}

async fn db(cli: &Cli, cmd: &DbCmd) -> Result<(), Fail> {
    match cmd {
        DbCmd::Stats { out, offline } => {
            let v = if *offline {
                let st = offline_db(cli)?
                    .stats()
                    .map_err(|e| Fail(1, e.to_string()))?;
                berth_agent::wire::db_stats(st)
            } else {
                cli.client()?.db_stats().await?
            };
            if out.json {
                print_json(&v)
            } else {
                println!("{}", render::db_stats(&v))
            }
            Ok(())
        }
        DbCmd::Compact { offline, out } => {
            let report = if *offline {
                let store = offline_store(cli)?;
                let report = tokio::task::spawn_blocking(move || store.compact())
                    .await
                    .map_err(|e| Fail(1, e.to_string()))?
                    .map_err(|e| Fail(1, e.to_string()))?;
                berth_agent::wire::compaction_report(report)
            } else {
                cli.client()?.compact().await?
            };
            if out.json {
                print_json(&report);
            } else {
                println!("compacted: {}", render::compaction(&report));
            }
            Ok(())
        }
        DbCmd::Check {
            offline,
            repair,
            out,
        } => {
            let v = if *offline {
                offline_check(cli, *repair)?
            } else {
                cli.client()?.db_check().await?
            };
            if out.json {
                print_json(&v);
            } else {
                println!("{}", render::db_check(&v, *offline));
            }
            if v.ok {
                Ok(())
            } else {
                Err(Fail(1, "the check found problems".into()))
            }
        }
        DbCmd::SlowOps { out } => {
            let ops = cli.client()?.slow_ops().await?;
            if out.json {
                print_json(&ops)
            } else {
                println!("{}", render::slow_ops(&ops))
            }
            Ok(())
        }
        DbCmd::Backup { file, offline } => {
            if file.exists() {
                return Err(Fail(
                    1,
                    format!("{} exists; choose a new file", file.display()),
                ));
            }
            if *offline {
                let rows = offline_db(cli)?
                    .backup_to(file)
                    .map_err(|e| Fail(1, e.to_string()))?;
                println!("wrote {} ({rows} rows)", file.display());
            } else {
                let bytes = cli.client()?.backup().await?;
                std::fs::write(file, &bytes)
                    .map_err(|e| Fail(1, format!("writing {}: {e}", file.display())))?;
                println!("wrote {} ({} bytes)", file.display(), bytes.len());
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
            eprintln!("berth: {msg}");
            ExitCode::from(code)
        }
    }
}
