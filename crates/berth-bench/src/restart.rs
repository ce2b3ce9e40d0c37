//! `bench restart [--machines N] [--started N] [--events N] [--restarts N] [--keep-data]`: how fast a real
//! release `berthd` comes back on a data dir with a big history.
//!
//! Setup: the data dir is preloaded through the store (in large commits) with `--machines` minus
//! `--started` stopped machines (default 9,000) and their history, so that with the started ones
//! the event log holds `--events` (default 1,000,000) events; then berthd starts and creates
//! `--started` (default 1,000) machines through its API, each a real `/bin/sleep infinity` under
//! its supervisor. Then berthd is stopped (SIGTERM) and started again `--restarts` (default 5)
//! times, each timed from exec until ready: `READY=1` received on its `NOTIFY_SOCKET`, and
//! `GET /v1/health` answered on both lanes (the unix socket and TCP with the token). The agent
//! reattaches every running workload before it serves; `GET /v1/host` must then say every started
//! machine was reattached. RSS is read at ready and again once the first reconciliation pass has
//! finished. Afterwards every machine created is destroyed through the API, and any workload pid
//! recorded that is still alive is killed by pid.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_client::{Client, Endpoint};
use berth_store::{Store, StoreOptions, TransitionSpec};
use berth_types::{EventKind, MachineConfig, MachineId, MachineRecord, Source, State, Timestamp};
use serde::Serialize;

use crate::percentile;

const CLIENTS: usize = 16;
/// Events a machine created and started through the API adds: created, starting, started.
const EVENTS_PER_STARTED: u64 = 3;
/// Preloaded machines per write.
const PRELOAD_BATCH: usize = 100;
const CYCLE: [State; 4] = [
    State::Starting,
    State::Started,
    State::Stopping,
    State::Stopped,
];
const DEADLINE: Duration = Duration::from_secs(120);

struct Args {
    machines: usize,
    started: usize,
    events: u64,
    restarts: usize,
    /// Leave the data dir in place (to profile a start by hand).
    keep_data: bool,
}

fn parse(args: &[String]) -> Result<Args, Box<dyn std::error::Error>> {
    let mut a = Args {
        machines: 10_000,
        started: 1_000,
        events: 1_000_000,
        restarts: 5,
        keep_data: false,
    };
    let mut it = args.iter();
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--machines" => a.machines = v()?.parse()?,
            "--started" => a.started = v()?.parse()?,
            "--events" => a.events = v()?.parse()?,
            "--restarts" => a.restarts = v()?.parse()?,
            "--keep-data" => a.keep_data = true,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    if a.started > a.machines || a.restarts == 0 {
        return Err("need --started <= --machines and --restarts >= 1".into());
    }
    Ok(a)
}

/// One start of berthd, timed from exec (ms).
#[derive(Serialize, Clone)]
struct Start {
    /// Both lanes answered and `READY=1` was received: the later of the three.
    ready_ms: f64,
    notify_ready_ms: f64,
    socket_health_ms: f64,
    tcp_health_ms: f64,
    /// Workloads the agent reattached at start-up (from `GET /v1/host`).
    reattached: u64,
    rss_at_ready_mib: f64,
    /// CPU time (user + system) berthd had used when ready: what the start costs regardless of
    /// how loaded the machine is.
    cpu_at_ready_ms: f64,
    /// Once the first reconciliation pass has finished.
    rss_settled_mib: f64,
    /// When the first reconciliation pass had finished.
    reconciled_ms: f64,
}

#[derive(Serialize)]
struct Report {
    machines: usize,
    started: usize,
    events_in_log: u64,
    file_bytes: u64,
    preload_seconds: f64,
    create_seconds: f64,
    first_start: Start,
    restarts: Vec<Start>,
    ready_p50_ms: f64,
    ready_max_ms: f64,
    cpu_at_ready_p50_ms: f64,
    rss_after_start_mib: f64,
    target_ready_p50_ms: f64,
    target_rss_mib: f64,
}

fn record(i: usize) -> Result<MachineRecord, berth_types::IdError> {
    let mut config = MachineConfig::command(["/bin/sleep", "infinity"]);
    config.env.insert("APP".into(), "bench".into());
    config.env.insert("PADDING".into(), "p".repeat(200));
    Ok(MachineRecord::new(
        MachineId::parse(&format!("hist-{i:06}"))?,
        None,
        config,
        Default::default(),
        Timestamp::now(),
    ))
}

/// Writes `stopped` machines whose histories, with the started machines' events, make `events`
/// events in the log; in large commits (setup, not measured).
fn preload(path: &Path, a: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let stopped = a.machines - a.started;
    let transitions = a
        .events
        .saturating_sub(a.started as u64 * EVENTS_PER_STARTED + stopped as u64);
    // Whole cycles, so every machine ends stopped; spread evenly.
    let cycles = transitions / CYCLE.len() as u64;
    let per = |i: usize| {
        cycles / stopped.max(1) as u64 + u64::from((i as u64) < cycles % stopped.max(1) as u64)
    };
    let store = Store::open(path, StoreOptions::default())?;
    let rt = runtime()?;
    for first in (0..stopped).step_by(PRELOAD_BATCH) {
        let recs = (first..(first + PRELOAD_BATCH).min(stopped))
            .map(|i| record(i).map(|r| (r, per(i))))
            .collect::<Result<Vec<_>, _>>()?;
        rt.block_on(store.write(move |c| {
            for (rec, n) in recs {
                let id = rec.id.clone();
                c.create_machine(rec, Source::User, "bench")?;
                for to in CYCLE.iter().cycle().take(n as usize * CYCLE.len()) {
                    let spec = TransitionSpec::new(*to, EventKind::Start, Source::User, "bench");
                    c.transition(&id, spec)?;
                }
            }
            Ok(())
        }))?;
    }
    // A clean close writes the history index's outstanding rows.
    store.close();
    Ok(())
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// The berthd under test and what it needs to be started again.
struct Berthd {
    bin: PathBuf,
    dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    notify: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Berthd {
    fn socket(&self) -> Client {
        Client::new(Endpoint::Unix(self.dir.join("berth.sock")))
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Execs berthd and waits until it is ready; `at` is taken just before the exec.
    async fn start(&mut self) -> Result<Start, Box<dyn std::error::Error>> {
        let _ = std::fs::remove_file(&self.notify);
        let notify = UnixDatagram::bind(&self.notify)?;
        notify.set_nonblocking(true)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let at = Instant::now();
        self.child = Some(
            Command::new(&self.bin)
                .args(["--data-dir", self.dir.to_str().ok_or("path")?])
                .args(["--listen", &format!("127.0.0.1:{}", self.port)])
                .args(["--config", self.config.to_str().ok_or("path")?])
                .env("NOTIFY_SOCKET", &self.notify)
                .env("BERTH_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("run {}: {e}", self.bin.display()))?,
        );
        let (mut ready, mut sock, mut tcp) = (None, None, None);
        let ms = |at: Instant| Some(at.elapsed().as_secs_f64() * 1e3);
        let socket = self.socket();
        let mut buf = [0u8; 4096];
        while ready.is_none() || sock.is_none() || tcp.is_none() {
            if at.elapsed() > DEADLINE {
                return Err("berthd did not become ready".into());
            }
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                return Err(format!("berthd exited during start-up: {status}").into());
            }
            while let Ok(n) = notify.recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1")
                {
                    ready = ready.or(ms(at));
                }
            }
            if sock.is_none() && socket.health().await.is_ok() {
                sock = ms(at);
            }
            if tcp.is_none()
                && let Some(c) = self.tcp()
                && c.health().await.is_ok()
            {
                tcp = ms(at);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (ready, sock, tcp) = (
            ready.unwrap_or_default(),
            sock.unwrap_or_default(),
            tcp.unwrap_or_default(),
        );
        let rss_at_ready_mib = crate::rss_mib(self.pid());
        let cpu_at_ready_ms = crate::cpu_ms(self.pid());
        let (reattached, reconciled_ms) = self.reconciled(at).await?;
        Ok(Start {
            ready_ms: ready.max(sock).max(tcp),
            notify_ready_ms: ready,
            socket_health_ms: sock,
            tcp_health_ms: tcp,
            reattached,
            rss_at_ready_mib,
            cpu_at_ready_ms,
            rss_settled_mib: crate::rss_mib(self.pid()),
            reconciled_ms,
        })
    }

    /// The TCP lane's client, once berthd has written its token.
    fn tcp(&self) -> Option<Client> {
        let token = std::fs::read_to_string(self.dir.join("token")).ok()?;
        Some(Client::new(Endpoint::Tcp {
            addr: format!("127.0.0.1:{}", self.port),
            token: Some(token.trim().to_owned()),
        }))
    }

    /// Waits for the first reconciliation pass; returns the workloads reattached at start-up
    /// and when the pass was seen finished (ms since `at`).
    async fn reconciled(&self, at: Instant) -> Result<(u64, f64), Box<dyn std::error::Error>> {
        let socket = self.socket();
        loop {
            let host = socket.host().await?;
            let s = &host.supervision;
            if s.last_reconcile.is_some() {
                return Ok((s.reattached as u64, at.elapsed().as_secs_f64() * 1e3));
            }
            if at.elapsed() > DEADLINE {
                return Err("no reconciliation pass".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then waits for the exit (berthd drains; workloads keep running).
    fn stop(&mut self) -> Result<(), Box<dyn std::error::Error>> {
        if let Some(mut c) = self.child.take() {
            Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()?;
            let status = c.wait()?;
            if !status.success() {
                return Err(format!("berthd exited with {status} after SIGTERM").into());
            }
        }
        Ok(())
    }
}

/// Creates and starts `n` `/bin/sleep infinity` machines over the socket, `CLIENTS` at a time;
/// returns (id, workload pid) of each.
async fn create(client: &Client, n: usize) -> Result<Vec<(String, u32)>, String> {
    let mut tasks = Vec::new();
    for w in 0..CLIENTS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for _ in (w..n).step_by(CLIENTS) {
                let req = berth_api_types::CreateMachine {
                    name: None,
                    config: MachineConfig::command(["/bin/sleep", "infinity"]),
                    metadata: Default::default(),
                    skip_start: false,
                };
                let m = client.create(&req, None).await.map_err(|e| e.to_string())?;
                if m.state != State::Started {
                    return Err(format!("machine {} is {} after create", m.id, m.state));
                }
                out.push((m.id.to_string(), m.pid.unwrap_or(0)));
            }
            Ok::<_, String>(out)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.map_err(|e| e.to_string())??);
    }
    Ok(all)
}

/// Destroys every machine created (through berthd, if it runs), stops berthd, and kills by pid
/// any recorded workload still alive (one that is still a `sleep`: a pid is checked before it is
/// signalled).
fn cleanup(rt: &tokio::runtime::Runtime, d: &mut Berthd, created: &[(String, u32)]) {
    if d.child.is_some() {
        let client = d.socket();
        rt.block_on(async {
            let mut tasks = Vec::new();
            for chunk in created.chunks(created.len().div_ceil(CLIENTS).max(1)) {
                let (client, chunk) = (client.clone(), chunk.to_vec());
                tasks.push(tokio::spawn(async move {
                    for (id, _) in chunk {
                        let _ = client.destroy(&id, true).await;
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        });
    }
    if let Err(e) = d.stop() {
        println!("stopping berthd: {e}");
    }
    for (_, pid) in created {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if *pid != 0 && cmd.starts_with(b"/bin/sleep\0infinity") {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// The timed part: first start, the started machines, then the restarts.
async fn measure(
    d: &mut Berthd,
    a: &Args,
    created: &mut Vec<(String, u32)>,
) -> Result<(Start, f64, Vec<Start>), Box<dyn std::error::Error>> {
    let first = d.start().await?;
    println!(
        "first start: ready in {:.0} ms; creating {} started machines...",
        first.ready_ms, a.started
    );
    let t = Instant::now();
    created.extend(create(&d.socket(), a.started).await?);
    let create_seconds = t.elapsed().as_secs_f64();
    let mut restarts = Vec::new();
    for i in 0..a.restarts {
        d.stop()?;
        let s = d.start().await?;
        println!(
            "restart {}: ready {:.0} ms (READY=1 {:.0}, socket {:.0}, tcp {:.0}; CPU {:.0} ms), reattached {}, RSS {:.1} MiB at ready, {:.1} MiB after the first reconciliation ({:.0} ms)",
            i + 1,
            s.ready_ms,
            s.notify_ready_ms,
            s.socket_health_ms,
            s.tcp_health_ms,
            s.cpu_at_ready_ms,
            s.reattached,
            s.rss_at_ready_mib,
            s.rss_settled_mib,
            s.reconciled_ms
        );
        if s.reattached != a.started as u64 {
            return Err(format!(
                "berthd reattached {} workloads, not {}",
                s.reattached, a.started
            )
            .into());
        }
        restarts.push(s);
    }
    Ok((first, create_seconds, restarts))
}

pub fn run(out: &Path, args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let a = parse(args)?;
    let exe_dir = std::env::current_exe()?
        .parent()
        .ok_or("no exe dir")?
        .to_owned();
    let dir = out.join("restart-data");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let config = out.join("restart-berth.toml");
    std::fs::write(
        &config,
        format!(
            "[api]\nmax_connections = 64\n[limits]\nmax_machines = {}\n",
            a.machines
        ),
    )?;
    println!(
        "preloading {} stopped machines and their history...",
        a.machines - a.started
    );
    let t = Instant::now();
    preload(&dir.join("berth.redb"), &a)?;
    let preload_seconds = t.elapsed().as_secs_f64();
    let mut d = Berthd {
        bin: exe_dir.join("berthd"),
        dir: dir.clone(),
        config,
        log: out.join("restart-berthd.log"),
        notify: out.join("restart-notify.sock"),
        port: std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port(),
        child: None,
    };
    let _ = std::fs::remove_file(&d.log);
    let rt = runtime()?;
    let mut created = Vec::new();
    let measured = rt.block_on(measure(&mut d, &a, &mut created));
    let stats = rt.block_on(d.socket().db_stats()).ok();
    cleanup(&rt, &mut d, &created);
    let (first_start, create_seconds, restarts) = measured?;
    if !a.keep_data {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = std::fs::remove_file(&d.notify);

    let report = summarize(
        &a,
        stats,
        preload_seconds,
        first_start,
        create_seconds,
        restarts,
    );
    print(&report);
    let json = out.join("restart.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)?;
    println!("wrote {}", json.display());
    Ok(())
}

/// The report of one run: the restarts' distribution beside the targets.
fn summarize(
    a: &Args,
    stats: Option<berth_api_types::DbStats>,
    preload_seconds: f64,
    first_start: Start,
    create_seconds: f64,
    restarts: Vec<Start>,
) -> Report {
    let mut ready: Vec<f64> = restarts.iter().map(|s| s.ready_ms).collect();
    ready.sort_by(f64::total_cmp);
    let mut cpu: Vec<f64> = restarts.iter().map(|s| s.cpu_at_ready_ms).collect();
    cpu.sort_by(f64::total_cmp);
    let rss = restarts
        .iter()
        .map(|s| s.rss_settled_mib)
        .fold(0.0, f64::max);
    let (events_in_log, file_bytes) = stats.map_or((0, 0), |s| {
        (
            s.tables.get("events").copied().unwrap_or(0),
            s.file_allocated_bytes,
        )
    });
    Report {
        machines: a.machines,
        started: a.started,
        events_in_log,
        file_bytes,
        preload_seconds,
        create_seconds,
        first_start,
        ready_p50_ms: percentile(&ready, 50.0),
        ready_max_ms: ready.last().copied().unwrap_or(0.0),
        cpu_at_ready_p50_ms: percentile(&cpu, 50.0),
        rss_after_start_mib: rss,
        restarts,
        target_ready_p50_ms: 1000.0,
        target_rss_mib: 64.0,
    }
}

fn print(report: &Report) {
    println!(
        "{} machines ({} started), {} events, {:.0} MiB: ready p50 {:.0} ms, max {:.0} ms (target p50 <= 1000), CPU to ready p50 {:.0} ms; RSS after start {:.1} MiB (target <= 64)",
        report.machines,
        report.started,
        report.events_in_log,
        report.file_bytes as f64 / 1048576.0,
        report.ready_p50_ms,
        report.ready_max_ms,
        report.cpu_at_ready_p50_ms,
        report.rss_after_start_mib
    );
}
