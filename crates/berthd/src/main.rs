//! `berthd`: the per-host agent. Reads its configuration (validated before any port is bound),
//! opens the data directory (refusing one held by another agent), starts the agent core, serves
//! the API on the unix socket and on TCP, and on SIGTERM/SIGINT stops accepting, drains, and exits
//! 0 — workloads keep running under their supervisors.
#![allow(clippy::print_stderr)]

mod config;
mod private;
mod systemd;

#[cfg(test)]
mod packaged_config;

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use berth_agent::{Agent, AgentConfig};
use berth_api::{ApiConfig, Shared, SlowOps};
use clap::Parser;

/// The per-host berth agent.
///
/// Runs this host's machines (supervised workloads), keeps their state in one database in the
/// data directory, and serves the HTTP API on a unix socket and on TCP; `berth` is its CLI.
/// On SIGTERM or SIGINT it drains and exits 0: the machines keep running under their
/// supervisors, and the next start reattaches to them. Under systemd (Type=notify) it reports
/// readiness and feeds the watchdog while its database and API respond.
/// Exit status: 0 after a clean stop, 78 for an invalid configuration, 1 for any other failure.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Config file (default: /etc/berth/berth.toml, only if it exists).
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// Data directory (default: /var/lib/berth as root, else $XDG_STATE_HOME/berth).
    #[arg(long, env = "BERTH_DATA_DIR")]
    data_dir: Option<std::path::PathBuf>,
    /// TCP address of the API (default 127.0.0.1:4280; "off" for none).
    #[arg(long, env = "BERTH_LISTEN")]
    listen: Option<String>,
    /// Unix socket of the API (default <data_dir>/berth.sock).
    #[arg(long, env = "BERTH_SOCKET")]
    socket: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    // `berthd shim <machine dir>`: the per-machine supervisor, when no berth-shim binary is
    // installed beside berthd. Dispatched before any runtime or logging is set up.
    let raw: Vec<String> = std::env::args().collect();
    if raw.get(1).map(String::as_str) == Some("shim") {
        let args = [raw[0].clone(), raw.get(2).cloned().unwrap_or_default()];
        return ExitCode::from(u8::try_from(berth_driver::shim::main(&args)).unwrap_or(1));
    }
    // `berthd man <dir>`: writes berthd.1 there (for `cargo xtask dist`). Hidden, like `shim`.
    if raw.get(1).map(String::as_str) == Some("man") {
        let dir = std::path::PathBuf::from(raw.get(2).map_or("", String::as_str));
        use clap::CommandFactory;
        return match clap_mangen::generate_to(Args::command(), &dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("berthd: writing the man page to {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        };
    }
    // SAFETY: nothing has started a thread yet (no runtime, no logging, no store).
    #[allow(unsafe_code)]
    unsafe {
        systemd::take_environment()
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            // async-nats logs "max reconnection attempts reached" at ERROR each time an
            // export session's connection ends, which is by design (berth-export's
            // publish.rs); the exporter logs its own connection changes. Silenced unless the
            // filter names async_nats itself.
            match std::env::var("BERTH_LOG").or_else(|_| std::env::var("RUST_LOG")) {
                Ok(f) if f.contains("async_nats") => f,
                Ok(f) if !f.trim().is_empty() => format!("{f},async_nats::connector=off"),
                _ => "info,async_nats::connector=off".into(),
            },
        )
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr a file on a full disk) is dropped: by
        // default tracing reports it with eprintln!, which panics the logging thread (it killed
        // the store's writer thread on a full disk).
        .log_internal_errors(false)
        // Colours only on a terminal: under systemd the journal would keep the escape codes
        // and `journalctl | grep 'op="commit"'` would miss the slow-op lines.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let overrides = config::Overrides {
        config: args.config,
        data_dir: args.data_dir,
        listen: args.listen,
        socket: args.socket,
    };
    let is_root = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0
    });
    let cfg = match config::read_file(overrides.config.as_deref()).and_then(|(file, path)| {
        config::Config::build(file, path, &overrides, is_root.unwrap_or(false))
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berthd: invalid configuration: {e}");
            return ExitCode::from(78);
        }
    };
    // Everything berthd creates is private, whatever umask it was started with: the database,
    // the token, the socket, the machines' specs (which hold their env, secrets included).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berthd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berthd: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

/// Why berthd stops, and its exit status (78: configuration, including an unsafe token file).
#[derive(Debug)]
struct Fatal {
    code: u8,
    message: String,
}

impl From<String> for Fatal {
    fn from(message: String) -> Self {
        Fatal { code: 1, message }
    }
}

fn config_error(message: String) -> Fatal {
    Fatal { code: 78, message }
}

async fn run(cfg: config::Config) -> Result<(), Fatal> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.data_dir)
        .map_err(|e| format!("cannot create data dir {}: {e}", cfg.data_dir.display()))?;
    private::make_private_dir(&cfg.data_dir)?;
    // Checked before anything starts; created (if missing) once the store's lock is held.
    let token = private::existing_token(&cfg.token_file)?;
    private::make_private_files(&cfg.data_dir, &cfg.token_file)?;
    let prometheus = install_metrics()?;
    let slow = SlowOps::new(256);
    let agent_cfg = agent_config(&cfg, &slow)?;

    // Opening the store takes the data dir's lock: a second agent stops here, before it could
    // touch the first one's socket.
    let agent = Agent::start(agent_cfg).await.map_err(|e| e.to_string())?;
    let token = match token {
        Some(t) => t,
        None => private::new_token(&cfg.token_file, berth_api::random_hex(32))?,
    };
    // A database created by this start is 0600 already (umask); one restored by hand may not be.
    private::make_private_files(&cfg.data_dir, &cfg.token_file)?;
    let exporter = start_export(&cfg, &agent).await?;
    let telemetry = agent.telemetry().clone();
    let render = Arc::new(move || telemetry.render(|| prometheus.render()))
        as Arc<dyn Fn() -> String + Send + Sync>;
    let shared = Shared::new(
        agent,
        ApiConfig {
            data_dir: cfg.data_dir.clone(),
            max_machines: cfg.max_machines,
            slow_window: cfg.slow_op_window,
            metrics: Some(render),
            export: exporter.map(|e| {
                Arc::new(move || e.status())
                    as Arc<dyn Fn() -> berth_export::ExportStatus + Send + Sync>
            }),
        },
        slow,
    );

    // Handlers before the socket exists: a SIGTERM arriving as soon as a client can connect
    // must drain, not kill.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let (unix, tcp) = bind(&cfg).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let servers = serve(&cfg, &shared, token, unix, tcp, &stop_rx);
    tracing::info!(
        data_dir = %cfg.data_dir.display(), socket = %cfg.socket.display(), listen = ?cfg.listen,
        config = ?cfg.config_file, "berthd ready"
    );
    systemd::notify("READY=1");
    systemd::spawn_watchdog(shared.clone(), cfg.socket.clone(), stop_rx.clone());
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
    }
    systemd::notify("STOPPING=1");
    let _ = stop_tx.send(true);
    // Log follows and event long polls end now instead of holding the drain.
    shared.agent().begin_shutdown();
    drain(servers).await;
    let _ = std::fs::remove_file(&cfg.socket);
    tracing::info!("berthd stopped; workloads keep running under their supervisors");
    Ok(())
}

/// How long a stopping berthd waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits for the lanes to finish their requests in flight, for at most [`DRAIN_TIMEOUT`].
async fn drain(servers: Vec<tokio::task::JoinHandle<()>>) {
    let all = async {
        for s in servers {
            let _ = s.await;
        }
    };
    if tokio::time::timeout(DRAIN_TIMEOUT, all).await.is_err() {
        tracing::warn!(
            "requests still in flight after {DRAIN_TIMEOUT:?}; exiting anyway (operations resume at the next start)"
        );
    }
}

/// Installs the Prometheus recorder and its upkeep.
fn install_metrics() -> Result<metrics_exporter_prometheus::PrometheusHandle, Fatal> {
    // Buckets, not the exporter's default summaries: quantiles of a summary cannot be
    // aggregated or taken over a time window, and the alert rules need both.
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(berth_agent::telemetry::BUCKETS)
        .map_err(|e| format!("cannot configure the metrics recorder: {e}"))?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    berth_agent::telemetry::describe();
    // The exporter keeps every histogram sample until a scrape or an upkeep drains it: without
    // this, an agent that nobody scrapes grows without bound.
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(berth_agent::telemetry::UPKEEP_INTERVAL).await;
            upkeep.run_upkeep();
        }
    });
    Ok(prometheus)
}

/// The agent core's configuration from berthd's.
fn agent_config(cfg: &config::Config, slow: &Arc<SlowOps>) -> Result<AgentConfig, Fatal> {
    let hook_ring = slow.clone();
    let mut agent_cfg = AgentConfig::new(cfg.data_dir.clone());
    agent_cfg.store.slow_op_threshold = cfg.slow_op_threshold;
    agent_cfg.store.commit_delay = cfg.db_delay;
    agent_cfg.store.queue_capacity = cfg.write_queue;
    agent_cfg.store.cache_size = cfg.db_cache_size;
    agent_cfg.store.slow_op_hook = Some(Arc::new(move |s: &berth_store::SlowOp| hook_ring.push(s)));
    if cfg.cgroup_off {
        agent_cfg.driver.cgroup = berth_driver::CgroupMode::Off;
    }
    if let Some(shim) = &cfg.shim {
        agent_cfg.driver.shim = shim.clone();
        agent_cfg.driver.shim_args = Vec::new();
    }
    agent_cfg.driver.oci = berth_driver::oci::RuntimeChoice::parse(&cfg.oci_runtime);
    agent_cfg.driver.workload_nofile = raise_nofile(cfg.max_machines);
    agent_cfg.driver.log_max_bytes = cfg.log_max_bytes;
    agent_cfg.driver.log_keep = cfg.log_keep;
    agent_cfg.reconcile.guard = cfg.blast_radius_guard;
    agent_cfg.reconcile.guard_window = cfg.guard_window;
    agent_cfg.reconcile.guard_min = cfg.guard_min_machines;
    agent_cfg.reconcile.guard_fraction = cfg.guard_fraction;
    agent_cfg.reconcile_interval = cfg.reconcile_interval;
    agent_cfg.images.gc_unused_after = cfg.images_gc_unused_after;
    agent_cfg.images.registry = berth_agent::images::RegistryConfig {
        insecure_registries: cfg.insecure_registries.clone(),
        credentials_file: cfg.registry_credentials_file.clone(),
    };
    agent_cfg.telemetry.sample_interval = cfg.metrics_sample_interval;
    agent_cfg.maintenance = Some(berth_agent::MaintenanceConfig {
        retention: berth_store::RetentionPolicy {
            destroyed_machine_ttl: cfg.destroyed_machine_ttl,
            max_events_per_machine: cfg.max_events_per_machine,
            max_events: cfg.max_events,
            // With export on, unexported events are kept up to as many again as max_events.
            export_hold: cfg.export_nats_url.as_ref().map(|_| cfg.max_events),
            ..Default::default()
        },
        interval: cfg.retention_interval,
        auto_compaction: cfg.compaction_auto.then_some(berth_agent::AutoCompaction {
            min_file_size: cfg.compaction_min_file_size,
            garbage_ratio: cfg.compaction_garbage_ratio,
        }),
    });
    if !cfg.db_delay.is_zero() {
        tracing::warn!(delay = ?cfg.db_delay, "fault injection: every database commit is delayed (fault.db_delay)");
    }
    if !agent_cfg.driver.shim.exists() {
        return Err(format!(
            "the supervisor binary {} does not exist (driver.shim)",
            agent_cfg.driver.shim.display()
        )
        .into());
    }
    Ok(agent_cfg)
}

/// Raises the open-files soft limit to the hard limit, returning the limits berthd started with
/// (which workloads keep). A pidfd per running machine plus connections: the default soft limit
/// (1024) is below what `limits.max_machines` allows.
fn raise_nofile(max_machines: usize) -> Option<(u64, u64)> {
    let before = match berth_driver::limits::raise_nofile_limit() {
        Ok(before) => {
            let now = berth_driver::limits::nofile_limit().unwrap_or(before);
            if now != before {
                tracing::info!(
                    soft_before = before.0,
                    soft = now.0,
                    "raised the open-files limit to its hard limit; workloads keep the one berthd started with"
                );
            }
            Some(before)
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-files limit");
            None
        }
    };
    if let Ok((soft, _)) = berth_driver::limits::nofile_limit() {
        let needed = (max_machines as u64).saturating_add(256);
        if soft < needed {
            tracing::warn!(
                soft,
                needed,
                "the open-files limit is below limits.max_machines plus headroom: raise LimitNOFILE"
            );
        }
    }
    before
}

/// Binds the unix socket (0600, replacing a stale one) and, unless `api.listen` is off, TCP.
async fn bind(
    cfg: &config::Config,
) -> Result<(tokio::net::UnixListener, Option<tokio::net::TcpListener>), Fatal> {
    match std::fs::remove_file(&cfg.socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("removing stale {}: {e}", cfg.socket.display()).into());
        }
        _ => {}
    }
    let unix = tokio::net::UnixListener::bind(&cfg.socket)
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.socket.display()))?;
    std::fs::set_permissions(&cfg.socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod {}: {e}", cfg.socket.display()))?;
    let tcp = match cfg.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?,
        ),
        None => None,
    };
    Ok((unix, tcp))
}

/// Serves the socket lane and, if bound, the TCP lane (token required), until `stop` turns true.
fn serve(
    cfg: &config::Config,
    shared: &Arc<Shared>,
    token: String,
    unix: tokio::net::UnixListener,
    tcp: Option<tokio::net::TcpListener>,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let shutdown = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let socket_lane = berth_api::lane(shared.clone(), "socket", None, cfg.socket_max_inflight);
    let mut servers = vec![tokio::spawn(berth_api::serve::serve(
        unix,
        berth_api::router(socket_lane),
        berth_api::serve::ServeConfig {
            lane: "socket",
            max_connections: cfg.max_connections,
            header_timeout: cfg.header_timeout,
            fd_budget: None,
        },
        shutdown(stop.clone()),
    ))];
    let Some(tcp) = tcp else {
        berth_api::serve::register_metrics("tcp");
        return servers;
    };
    // The TCP lane must never take the descriptors berthd's own files need: a pidfd per
    // machine and a few for each launch, the database, the socket lane's connections.
    let budget = berth_api::serve::FdBudget {
        reserve: fd_reserve(cfg.max_machines),
        others: cfg.max_connections as u64,
    };
    if let Ok((soft, _)) = berth_driver::limits::nofile_limit() {
        let limit = budget.clamp(cfg.max_connections, soft);
        if limit < cfg.max_connections {
            tracing::warn!(
                soft,
                reserve = budget.reserve,
                limit,
                configured = cfg.max_connections,
                "the open-files limit leaves the TCP lane fewer connections than api.max_connections: clamped (raise LimitNOFILE)"
            );
        }
    }
    let tcp_lane = berth_api::lane(shared.clone(), "tcp", Some(token), cfg.max_inflight);
    servers.push(tokio::spawn(berth_api::serve::serve(
        tcp,
        berth_api::router(tcp_lane),
        berth_api::serve::ServeConfig {
            lane: "tcp",
            max_connections: cfg.max_connections,
            header_timeout: cfg.header_timeout,
            fd_budget: Some(budget),
        },
        shutdown(stop.clone()),
    )));
    servers
}

/// Starts the fleet export when `export.nats_url` is set. It only reads the store and runs in
/// the background: a slow or absent NATS never delays start-up, commits or shutdown.
async fn start_export(
    cfg: &config::Config,
    agent: &Agent,
) -> Result<Option<berth_export::Exporter>, Fatal> {
    let Some(url) = &cfg.export_nats_url else {
        return Ok(None);
    };
    let mut export_cfg = berth_export::ExportConfig::new(url.clone());
    export_cfg.host_id = cfg.export_host_id.clone();
    let (telemetry, driver, facts_agent) = (
        agent.telemetry().clone(),
        agent.driver().clone(),
        agent.clone(),
    );
    let facts: berth_export::FactsFn = Arc::new(move || {
        let status = facts_agent.status();
        let degraded = status.guard.tripped || !status.unknown.is_empty();
        let machines: std::collections::BTreeMap<String, u64> = telemetry
            .machine_counts()
            .into_iter()
            .map(|(s, n)| (s.to_string(), n))
            .collect();
        serde_json::json!({
            "hostname": std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default(),
            "version": env!("CARGO_PKG_VERSION"),
            "capabilities": driver.capabilities(),
            "machines": machines,
            "health": if degraded { "degraded" } else { "ok" },
        })
    });
    let exporter = berth_export::Exporter::start(agent.store().clone(), export_cfg, facts)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Some(exporter))
}

/// Descriptors kept for berthd's own files: 256 for the process itself (the database, logs,
/// the runtime, shim launches in flight) and two per machine (its pidfd, and a file of its
/// directory being read or a log being followed).
fn fd_reserve(max_machines: usize) -> u64 {
    256 + 2 * max_machines as u64
}
