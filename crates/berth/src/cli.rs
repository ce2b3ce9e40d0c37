//! The command line: clap's types (every subcommand, flag and help text), the failure type with
//! its exit code, and what every command shares (the data dir, the client, `--json` output).

use std::collections::BTreeMap;
use std::path::PathBuf;

use berth_client::{Client, ClientError, Endpoint};
use clap::{Args, Parser, Subcommand, ValueHint};
use clap_complete::engine::ArgValueCandidates;

use crate::complete;

/// The `--restart` words (anything else is a usage error, exit 2).
const RESTART_POLICIES: [&str; 3] = ["no", "on-failure", "always"];

/// Operate the berth agent on this host.
#[derive(Debug, Parser)]
#[command(name = "berth", version, about, propagate_version = true)]
pub(crate) struct Cli {
    /// The agent's unix socket (default <data-dir>/berth.sock).
    #[arg(long, global = true, env = "BERTH_SOCKET", value_hint = ValueHint::FilePath)]
    pub(crate) socket: Option<PathBuf>,
    /// Talk to an agent over TCP instead, e.g. http://10.0.0.5:4280.
    #[arg(long, global = true, env = "BERTH_API", value_hint = ValueHint::Url)]
    pub(crate) api: Option<String>,
    /// Bearer token for --api (default: read from <data-dir>/token).
    #[arg(long, global = true, env = "BERTH_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// The agent's data directory (default /var/lib/berth as root, else $XDG_STATE_HOME/berth).
    #[arg(long, global = true, env = "BERTH_DATA_DIR", value_hint = ValueHint::DirPath)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Print tables whole instead of fitting them to the terminal's width.
    #[arg(long, global = true)]
    pub(crate) wide: bool,
    /// The nonce of a lease you hold on the machine: sent with every request, so that
    /// mutations of a leased machine are allowed.
    #[arg(
        long,
        global = true,
        env = "BERTH_LEASE_NONCE",
        hide_env_values = true,
        value_name = "NONCE"
    )]
    pub(crate) lease_nonce: Option<String>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

// Parsed once per process and never moved around: the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
        /// Only this machine's events (id, name or unique id prefix).
        #[arg(long, value_name = "ID", add = ArgValueCandidates::new(complete::machines))]
        machine: Option<String>,
    },
    /// A machine's output: its stdout on stdout, its stderr on stderr, and where each run
    /// started and ended on stderr.
    Logs {
        /// Machine id, name or unique id prefix.
        #[arg(add = ArgValueCandidates::new(complete::machines))]
        id: String,
        /// Lines from the end (default 100; with --since, every line since).
        #[arg(long, short = 'n')]
        tail: Option<usize>,
        /// Only lines written since this: a duration ago (10m, 2h) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Put the time each line was written before it.
        #[arg(long, short)]
        timestamps: bool,
        /// Keep following until the machine stops (across berthd restarts).
        #[arg(long, short)]
        follow: bool,
    },
    /// This host: status, cordon, uncordon.
    #[command(subcommand)]
    Host(HostCmd),
    /// The database: stats, compact, check, slow-ops, backup.
    #[command(subcommand)]
    Db(DbCmd),
    /// The host's image store: ls, pull, rm.
    #[command(subcommand, alias = "images")]
    Image(ImageCmd),
    /// Named volumes: ls, create, rm.
    #[command(subcommand, alias = "volumes")]
    Volume(VolumeCmd),
    /// Compare the database with the live processes.
    Doctor {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print the script that registers berth's completions with a shell (source it, or put it
    /// where the shell loads completions). The shell then asks berth itself at each TAB, so
    /// machine names and ids are offered too.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (berth.1 and one per subcommand) into DIR; `cargo xtask dist` uses it.
    #[command(hide = true)]
    Man {
        /// An existing directory.
        #[arg(value_hint = ValueHint::DirPath)]
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum MachineCmd {
    /// List machines.
    #[command(alias = "ls")]
    List {
        /// Only machines in this state.
        #[arg(long, value_parser = state_name, add = ArgValueCandidates::new(complete::states))]
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
        /// Machine id, name or unique id prefix.
        #[arg(add = ArgValueCandidates::new(complete::machines))]
        id: String,
        #[command(flatten)]
        out: Out,
    },
    /// What machines use now: CPU time and memory of the current run, restarts, uptime (every
    /// running machine without ID).
    Stats {
        /// Machine id, name or unique id prefix.
        #[arg(add = ArgValueCandidates::new(complete::machines))]
        id: Option<String>,
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
    /// Send a signal to a machine's workload (it keeps its state; the restart policy decides
    /// what happens if the workload exits).
    Signal {
        /// Machine id, name or unique id prefix.
        #[arg(add = ArgValueCandidates::new(complete::machines))]
        id: String,
        /// The signal: TERM, SIGHUP, 9, ...
        #[arg(long, short, add = ArgValueCandidates::new(complete::signals))]
        signal: String,
        #[command(flatten)]
        out: Out,
    },
    /// Wait for a machine to reach a state.
    Wait {
        /// Machine id, name or unique id prefix.
        #[arg(add = ArgValueCandidates::new(complete::machines))]
        id: String,
        /// The state to wait for (it returns at once, exit 1, when the machine is failed or
        /// destroyed and so will not get there on its own).
        #[arg(long, default_value = "started", value_parser = state_name, add = ArgValueCandidates::new(complete::states))]
        state: String,
        /// How long to wait.
        #[arg(long, default_value = "30s")]
        timeout: String,
    },
    /// A machine's event log.
    Events {
        /// Machine id, name or unique id prefix.
        #[arg(add = ArgValueCandidates::new(complete::machines))]
        id: String,
        #[command(flatten)]
        out: Out,
    },
    /// Run a command inside a started machine; exits with the command's exit code (124 when
    /// the timeout killed it, 127 when it could not be started).
    Exec {
        /// Machine id, name or unique id prefix.
        #[arg(add = ArgValueCandidates::new(complete::machines))]
        id: String,
        /// Kill the command after this long (default 30s, at most 10m).
        #[arg(long)]
        timeout: Option<String>,
        /// Print the whole answer as JSON instead of the command's output.
        #[arg(long)]
        json: bool,
        /// The command to run.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Change a machine's config: only what the flags say, recorded as a new config version;
    /// a started machine is restarted with it (unless --skip-start). Prints what changed.
    Update(UpdateArgs),
    /// A machine's config versions, newest first.
    Versions {
        /// Machine id, name or unique id prefix.
        #[arg(add = ArgValueCandidates::new(complete::machines))]
        id: String,
        #[command(flatten)]
        out: Out,
    },
    /// Restore an older config version (default: the previous one), recorded as a new version
    /// and applied like an update.
    Rollback {
        /// Machine id, name or unique id prefix.
        #[arg(add = ArgValueCandidates::new(complete::machines))]
        id: String,
        /// The config version to restore.
        #[arg(long = "to", value_name = "VERSION")]
        to: Option<u64>,
        #[command(flatten)]
        out: Out,
    },
}

#[derive(Debug, Args)]
pub(crate) struct UpdateArgs {
    /// Machine id, name or unique id prefix.
    #[arg(add = ArgValueCandidates::new(complete::machines))]
    pub(crate) id: String,
    /// Set an environment variable, K=V (repeatable; the others are kept).
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    pub(crate) env: Vec<String>,
    /// The image to run (oci:/path[:tag] or REGISTRY/REPO[:TAG|@sha256:DIGEST]).
    #[arg(long, value_name = "REF")]
    pub(crate) image: Option<String>,
    /// Restart policy: no, on-failure, always.
    #[arg(long, value_name = "POLICY", value_parser = RESTART_POLICIES)]
    pub(crate) restart: Option<String>,
    /// Memory limit in MiB.
    #[arg(long, value_name = "MB")]
    pub(crate) memory: Option<u64>,
    /// Refuse unless the machine's config is at this version (default: the version read).
    #[arg(long = "if-version", value_name = "N")]
    pub(crate) if_version: Option<u64>,
    /// Record the new version without restarting a started machine.
    #[arg(long)]
    pub(crate) skip_start: bool,
    #[command(flatten)]
    pub(crate) config: ConfigFlags,
    #[command(flatten)]
    pub(crate) out: Out,
}

/// The config fields create and update share a flag for (beyond env, image, restart, memory).
#[derive(Debug, Args)]
pub(crate) struct ConfigFlags {
    /// The working directory the command starts in.
    #[arg(long, value_name = "DIR")]
    pub(crate) workdir: Option<String>,
    /// How many restarts the restart policy may make in a row (default: no bound).
    #[arg(long, value_name = "N")]
    pub(crate) max_retries: Option<u32>,
    /// The signal that asks the workload to stop (default TERM).
    #[arg(long, value_name = "SIGNAL", add = ArgValueCandidates::new(complete::signals))]
    pub(crate) stop_signal: Option<String>,
    /// How long a stop waits after the signal before SIGKILL (default 10s).
    #[arg(long, value_name = "DURATION")]
    pub(crate) stop_timeout: Option<String>,
    /// CPU limit in cores (fractions allowed, e.g. 0.5).
    #[arg(long, value_name = "CORES")]
    pub(crate) cpus: Option<f64>,
    /// Limit on the number of processes.
    #[arg(long, value_name = "N")]
    pub(crate) pids: Option<u64>,
    /// An image machine's network: host (the host's) or none (loopback only).
    #[arg(long, value_name = "NETWORK", value_parser = ["host", "none"])]
    pub(crate) network: Option<String>,
    /// Put a local file into the machine at PATH, PATH=LOCAL_FILE (its content and permission
    /// bits; repeatable; a file already at PATH is replaced).
    #[arg(long = "file", value_name = "PATH=LOCAL_FILE", value_hint = ValueHint::FilePath)]
    pub(crate) file: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct Out {
    /// Machine-readable output.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct IdArgs {
    /// Machine id, name or unique id prefix.
    #[arg(add = ArgValueCandidates::new(complete::machines))]
    pub(crate) id: String,
    /// More machines, each handled in turn (the exit code is the worst).
    #[arg(add = ArgValueCandidates::new(complete::machines))]
    pub(crate) more: Vec<String>,
    #[command(flatten)]
    pub(crate) out: Out,
}

#[derive(Debug, Args)]
pub(crate) struct LifecycleArgs {
    /// Machine id, name or unique id prefix.
    #[arg(add = ArgValueCandidates::new(complete::machines))]
    pub(crate) id: String,
    /// More machines, each handled in turn (the exit code is the worst).
    #[arg(add = ArgValueCandidates::new(complete::machines))]
    pub(crate) more: Vec<String>,
    /// Signal to send first.
    #[arg(long, add = ArgValueCandidates::new(complete::signals))]
    pub(crate) signal: Option<String>,
    /// Grace period before SIGKILL.
    #[arg(long)]
    pub(crate) timeout: Option<String>,
    /// Destroy a running machine (killing it first).
    #[arg(long)]
    pub(crate) force: bool,
    #[command(flatten)]
    pub(crate) out: Out,
}

#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// Name.
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Environment variable, K=V (repeatable).
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    pub(crate) env: Vec<String>,
    /// Restart policy: no, on-failure, always.
    #[arg(long, value_name = "POLICY", default_value = "no", value_parser = RESTART_POLICIES)]
    pub(crate) restart: String,
    /// Memory limit in MiB.
    #[arg(long)]
    pub(crate) memory: Option<u64>,
    /// Run it from this image (oci:/path[:tag] or REGISTRY/REPO[:TAG|@sha256:DIGEST]) under
    /// the OCI runtime; without a command, the image's Entrypoint and Cmd.
    #[arg(long)]
    pub(crate) image: Option<String>,
    /// Who it runs as: NAME or UID[:GID] (a host user, or for an image machine the image's).
    #[arg(long)]
    pub(crate) user: Option<String>,
    /// Mount a named volume, NAME:PATH[:ro] (repeatable; image machines).
    #[arg(long = "volume", short = 'v', value_name = "NAME:PATH")]
    pub(crate) volume: Vec<String>,
    /// Record it without starting it.
    #[arg(long)]
    pub(crate) skip_start: bool,
    /// Metadata label, K=V (repeatable).
    #[arg(long = "metadata", value_name = "K=V")]
    pub(crate) metadata: Vec<String>,
    /// A health check, NAME=SPEC (repeatable): `http:PORT[/PATH]`, `tcp:PORT`, or the check's
    /// JSON (`{"type":"http","port":8080,"interval":"5s","action":"restart"}`).
    #[arg(long = "check", value_name = "NAME=SPEC")]
    pub(crate) check: Vec<String>,
    /// Wait until it is started and every check passes.
    #[arg(long)]
    pub(crate) wait_healthy: bool,
    #[command(flatten)]
    pub(crate) config: ConfigFlags,
    #[command(flatten)]
    pub(crate) out: Out,
    /// The command to run (optional with --image).
    #[arg(last = true, required_unless_present = "image")]
    pub(crate) cmd: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum HostCmd {
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
pub(crate) enum ImageCmd {
    /// Every image: digest, size, last use, the machines using it, its references.
    Ls {
        #[command(flatten)]
        out: Out,
    },
    /// Pull REGISTRY/REPO[:TAG|@sha256:DIGEST] (or import oci:/path[:tag]); waits until done.
    Pull {
        /// The image reference.
        reference: String,
        #[command(flatten)]
        out: Out,
    },
    /// Remove an image no machine uses (refused while one does).
    Rm {
        /// The manifest digest, sha256:...
        digest: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum VolumeCmd {
    /// Every named volume: name, owner, the machines mounting it, its directory.
    Ls {
        #[command(flatten)]
        out: Out,
    },
    /// Create an empty volume.
    Create {
        /// 1 to 63 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit.
        name: String,
        #[command(flatten)]
        out: Out,
    },
    /// Remove a volume and its content (refused while a machine mounts it).
    Rm {
        /// The volume's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum DbCmd {
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
        #[arg(value_hint = ValueHint::FilePath)]
        file: PathBuf,
        /// Open the data directory directly, read-only (no agent may hold it; a file that needs
        /// repair is refused untouched).
        #[arg(long)]
        offline: bool,
        #[command(flatten)]
        out: Out,
    },
}

/// A failure with its exit code.
pub(crate) struct Fail(pub(crate) u8, pub(crate) String);

impl From<ClientError> for Fail {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::Unreachable { .. } => 3,
            ClientError::Api { status: 404, .. } => 4,
            _ => 1,
        };
        Fail(code, cli_words(&e.to_string()))
    }
}

/// The agent's words for the API (`?force=true`) as the flags that do the same here.
fn cli_words(msg: &str) -> String {
    msg.replace("pass ?force=true", "use --force")
        .replace(
            "(POST /v1/host/reconcile?approve=true)",
            "(berth host approve)",
        )
        .replace(
            "send its nonce in berth-lease-nonce",
            "pass its nonce with --lease-nonce (or BERTH_LEASE_NONCE)",
        )
        .replace(
            "berth-lease-nonce does not match",
            "--lease-nonce does not match",
        )
}

/// A `--state` value: one of the states (a usage error, exit 2, otherwise).
fn state_name(s: &str) -> Result<String, String> {
    s.parse::<berth_types::State>()
        .map(|st| st.as_str().to_owned())
}

pub(crate) fn default_data_dir() -> PathBuf {
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
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(default_data_dir)
    }

    pub(crate) fn client(&self) -> Result<Client, Fail> {
        if let Some(n) = &self.lease_nonce
            && (n.is_empty() || !n.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(Fail(
                2,
                "--lease-nonce: a nonce is printable ASCII without spaces, as the lease's \
                 `nonce` field shows it"
                    .into(),
            ));
        }
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
            let token = match &self.token {
                Some(t) => t.clone(),
                None => {
                    let file = self.data_dir().join("token");
                    match std::fs::read_to_string(&file) {
                        Ok(t) => t.trim().to_owned(),
                        Err(e) => {
                            return Err(Fail(
                                2,
                                format!(
                                    "--api needs a token: reading {}: {e} (pass --token or \
                                     BERTH_TOKEN, or --data-dir for the agent's directory)",
                                    file.display()
                                ),
                            ));
                        }
                    }
                }
            };
            let token = Some(token);
            return Ok(Client::new(Endpoint::Tcp { addr, token })
                .with_lease_nonce(self.lease_nonce.clone()));
        }
        Ok(Client::new(Endpoint::Unix(
            self.socket
                .clone()
                .unwrap_or_else(|| self.data_dir().join("berth.sock")),
        ))
        .with_lease_nonce(self.lease_nonce.clone()))
    }
}

pub(crate) fn kv(items: &[String], what: &str) -> Result<BTreeMap<String, String>, Fail> {
    items
        .iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| Fail(2, format!("{what} {s:?} must be K=V")))
        })
        .collect()
}

pub(crate) fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}
