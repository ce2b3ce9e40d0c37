//! `bench checks [--machines N] [--window SECS] [--settle SECS]`: what health checks cost a real
//! release `berthd`.
//!
//! berthd runs as its own process; through its API the bench creates `--machines` (default
//! 1,000) started machines, each a real HTTP server (`busybox httpd -f`, on a free port of its
//! own on 127.0.0.1) with one `http` check every second. Once every check has passed, and
//! `--settle` seconds more (default 5), the bench does nothing for `--window` seconds (default
//! 60) and measures across them, from outside: berthd's CPU time (utime + stime of
//! `/proc/PID/stat`) as a share of one core (target <= 5%); the store writer's commits (the
//! `store_writer` detail of `/v1/health`, and `berth_db_operation_duration_seconds_count
//! {op="commit"}` of `/metrics`; target 0: a passing result is not a write); and, from
//! `berth_check_duration_seconds{type="http"}`, the checks run per second and their latency
//! (p50, p99, interpolated within the histogram's buckets). `--no-checks` runs the same machines
//! without checks: berthd's baseline with that many supervised workloads. Afterwards every machine is
//! destroyed through the API, berthd is stopped, and any recorded workload pid still alive
//! (and still a busybox) is killed by pid.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_client::{Client, Endpoint, Method};
use berth_types::{MachineConfig, State};
use serde::Serialize;

const CLIENTS: usize = 16;
const DEADLINE: Duration = Duration::from_secs(300);
/// Ports tried for the servers: below the ephemeral range, so that the checks' own outgoing
/// connections never sit on one.
const PORTS: std::ops::Range<u16> = 20_000..32_000;
const TARGET_CPU_PERCENT: f64 = 5.0;

struct Args {
    machines: usize,
    window: u64,
    settle: u64,
    checks: bool,
}

fn parse(args: &[String]) -> Result<Args, Box<dyn std::error::Error>> {
    let mut a = Args {
        machines: 1_000,
        window: 60,
        settle: 5,
        checks: true,
    };
    let mut it = args.iter();
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--machines" => a.machines = v()?.parse()?,
            "--window" => a.window = v()?.parse()?,
            "--settle" => a.settle = v()?.parse()?,
            "--no-checks" => a.checks = false,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    if a.machines == 0 || a.window == 0 {
        return Err("need --machines >= 1 and --window >= 1".into());
    }
    Ok(a)
}

#[derive(Serialize)]
struct Report {
    machines: usize,
    /// False for a `--no-checks` baseline.
    checks: bool,
    check_interval_s: f64,
    window_s: f64,
    agent_cpu_percent_of_one_core: f64,
    agent_cpu_ms: f64,
    /// The same, per thread name (threads alive at the window's end; the busiest first).
    agent_cpu_percent_by_thread: Vec<(String, f64)>,
    target_cpu_percent: f64,
    /// Store writer commits during the window (`/v1/health`).
    db_commits: u64,
    /// The same from `berth_db_operation_duration_seconds_count{op="commit"}`.
    db_commits_metric: u64,
    /// Events committed during the window (the last seq's growth).
    events: u64,
    checks_run: u64,
    checks_per_second: f64,
    check_latency_p50_ms: f64,
    check_latency_p99_ms: f64,
    check_latency_mean_ms: f64,
    /// Checks passing at the window's end.
    passing_after: usize,
    agent_rss_mib: f64,
    /// `/proc/loadavg` at the window's end: the machine is shared.
    loadavg: String,
    create_seconds: f64,
    all_passing_seconds: f64,
}

/// `n` distinct ports of [`PORTS`] free on 127.0.0.1 right now.
fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let mut out = Vec::with_capacity(n);
    for p in PORTS {
        if out.len() == n {
            break;
        }
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            out.push(p);
        }
    }
    if out.len() < n {
        return Err(format!("only {} free ports in {PORTS:?}", out.len()));
    }
    Ok(out)
}

fn machine_config(
    busybox: &str,
    port: u16,
    root: &Path,
    checks: bool,
) -> Result<MachineConfig, String> {
    let mut v = serde_json::json!({
        "cmd": [busybox, "httpd", "-f", "-p", format!("127.0.0.1:{port}"), "-h", root],
    });
    if checks {
        v["checks"] = serde_json::json!({"web": {"type": "http", "port": port, "path": "/",
            "interval": "1s", "timeout": "1s", "failures": 3, "action": "none"}});
    }
    serde_json::from_value(v).map_err(|e| format!("machine config: {e}"))
}

/// A `Prometheus` text exposition's value for `series` (its exact name and labels).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// The `http` checks' duration histogram: (upper bound, cumulative count) pairs, `+Inf` last
/// as infinity, and the sum.
fn check_histogram(text: &str) -> (Vec<(f64, f64)>, f64) {
    let prefix = "berth_check_duration_seconds_bucket{type=\"http\",le=\"";
    let buckets = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(prefix)?;
            let (le, v) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, v.trim().parse().ok()?))
        })
        .collect();
    let sum = value(text, "berth_check_duration_seconds_sum{type=\"http\"}").unwrap_or(0.0);
    (buckets, sum)
}

/// The `q` quantile of the observations between two cumulative histograms, interpolated
/// linearly within its bucket (like PromQL's `histogram_quantile`).
fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, c)| {
            let b = before
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0.0, |(_, c)| *c);
            (*le, c - b)
        })
        .collect();
    let Some(&(_, total)) = delta.last() else {
        return 0.0;
    };
    if total <= 0.0 {
        return 0.0;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, c) in &delta {
        if c >= rank {
            if le.is_infinite() {
                return lower.0;
            }
            let span = c - lower.1;
            let frac = if span > 0.0 {
                (rank - lower.1) / span
            } else {
                1.0
            };
            return lower.0 + (le - lower.0) * frac;
        }
        lower = (le, c);
    }
    lower.0
}

struct Berthd {
    dir: PathBuf,
    child: Option<Child>,
}

impl Berthd {
    fn start(bin: &Path, dir: &Path, config: &Path, log: &Path) -> Result<Self, String> {
        let log = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        // The TCP lane on a free port (the bench talks to the unix socket).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("a free port: {e}"))?
            .port();
        let child = Command::new(bin)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir)
            .arg("--config")
            .arg(config)
            .env("BERTH_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("run {}: {e}", bin.display()))?;
        Ok(Self {
            dir: dir.to_owned(),
            child: Some(child),
        })
    }

    fn client(&self) -> Client {
        Client::new(Endpoint::Unix(self.dir.join("berth.sock")))
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    async fn ready(&mut self) -> Result<(), String> {
        let at = Instant::now();
        let c = self.client();
        loop {
            if let Some(ch) = self.child.as_mut()
                && let Ok(Some(status)) = ch.try_wait()
            {
                return Err(format!("berthd exited during start-up: {status}"));
            }
            if c.health().await.is_ok() {
                return Ok(());
            }
            if at.elapsed() > Duration::from_secs(60) {
                return Err("berthd did not answer within 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then waits for the exit.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }
}

/// Creates the machines, `CLIENTS` at a time; returns (id, workload pid) of each.
async fn create(
    client: &Client,
    configs: Vec<MachineConfig>,
) -> Result<Vec<(String, u32)>, String> {
    let n = configs.len();
    let configs = std::sync::Arc::new(configs);
    let mut tasks = Vec::new();
    for w in 0..CLIENTS {
        let (client, configs) = (client.clone(), configs.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in (w..n).step_by(CLIENTS) {
                let req = berth_api_types::CreateMachine {
                    name: None,
                    config: configs[i].clone(),
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
    let mut first_err = None;
    for t in tasks {
        match t.await.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(v) => all.extend(v),
            Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    match first_err {
        // The ones created are still returned through the error path's cleanup below.
        Some(e) => Err(format!("{e} (after {} created)", all.len())),
        None => Ok(all),
    }
}

/// How many machines' `web` check passes.
async fn passing(client: &Client) -> Result<usize, String> {
    let ms = client
        .list(Some("started"), false)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ms
        .iter()
        .filter(|m| {
            m.checks
                .get("web")
                .is_some_and(|c| c.status == berth_types::CheckHealth::Passing)
        })
        .count())
}

async fn commits(client: &Client) -> Result<u64, String> {
    let h = client.health().await.map_err(|e| e.to_string())?;
    let detail = h
        .checks
        .get("store_writer")
        .map(|c| c.detail.clone())
        .unwrap_or_default();
    detail
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or(format!("no commit count in {detail:?}"))
}

async fn scrape(client: &Client) -> Result<String, String> {
    let r = client
        .raw(Method::GET, "/metrics", None, &[])
        .await
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&r.body).into_owned())
}

/// What is read on each side of the window.
struct Sample {
    at: Instant,
    cpu_ms: f64,
    /// CPU time of each of berthd's threads, by name.
    threads: BTreeMap<String, f64>,
    commits: u64,
    metrics: String,
}

/// CPU time (ms, utime + stime) of `pid`'s live threads, summed by thread name (`comm`).
fn thread_cpu_ms(pid: u32) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in dir.flatten() {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let (Some((head, _)), Some(open)) = (stat.rsplit_once(')'), stat.find('(')) else {
            continue;
        };
        let name = head.get(open + 1..).unwrap_or_default().to_owned();
        *out.entry(name).or_default() += crate::stat_cpu_ms(&stat);
    }
    out
}

async fn measure(
    d: &Berthd,
    a: &Args,
    busybox: &str,
    root: &Path,
    created: &mut Vec<(String, u32)>,
) -> Result<Report, Box<dyn std::error::Error>> {
    let client = d.client();
    let ports = free_ports(a.machines)?;
    let configs = ports
        .iter()
        .map(|p| machine_config(busybox, *p, root, a.checks))
        .collect::<Result<Vec<_>, _>>()?;
    println!(
        "creating {} machines (busybox httpd{})...",
        a.machines,
        if a.checks {
            ", an http check every 1 s"
        } else {
            ", no checks"
        }
    );
    let t = Instant::now();
    let made = create(&client, configs).await;
    let create_seconds = t.elapsed().as_secs_f64();
    // Whatever was created is destroyed afterwards, even when some creates failed.
    if let Ok(list) = client.list(None, false).await {
        created.extend(list.iter().map(|m| (m.id.to_string(), m.pid.unwrap_or(0))));
    }
    made?;
    let all_passing_seconds = wait_passing(&client, a).await?;
    println!(
        "created in {create_seconds:.1} s; every check passing {all_passing_seconds:.1} s later; settling {} s, then measuring {} s...",
        a.settle, a.window
    );
    tokio::time::sleep(Duration::from_secs(a.settle)).await;
    let pid = d.pid();
    // The bench's own requests cost berthd CPU too: they are made outside the window (before
    // its first CPU reading, after its last).
    let requests = async || -> Result<(u64, String), String> {
        Ok((commits(&client).await?, scrape(&client).await?))
    };
    let sample = async |end: bool| -> Result<Sample, String> {
        let before = (Instant::now(), crate::cpu_ms(pid), thread_cpu_ms(pid));
        let (commits, metrics) = requests().await?;
        let (at, cpu_ms, threads) = if end {
            before
        } else {
            (Instant::now(), crate::cpu_ms(pid), thread_cpu_ms(pid))
        };
        Ok(Sample {
            at,
            cpu_ms,
            threads,
            commits,
            metrics,
        })
    };
    let s0 = sample(false).await?;
    tokio::time::sleep(Duration::from_secs(a.window)).await;
    let s1 = sample(true).await?;
    let passing_after = passing(&client).await?;
    Ok(report(
        a,
        &s0,
        &s1,
        passing_after,
        pid,
        create_seconds,
        all_passing_seconds,
    ))
}

/// Waits until every machine's check passes (at once without checks); returns the seconds taken.
async fn wait_passing(client: &Client, a: &Args) -> Result<f64, Box<dyn std::error::Error>> {
    let t = Instant::now();
    loop {
        let n = passing(client).await?;
        if n == a.machines || !a.checks {
            break;
        }
        if t.elapsed() > DEADLINE {
            return Err(format!("only {n} of {} checks passing", a.machines).into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let all_passing_seconds = t.elapsed().as_secs_f64();
    Ok(all_passing_seconds)
}

/// The report of a window from its first sample `s0` to its last `s1`.
fn report(
    a: &Args,
    s0: &Sample,
    s1: &Sample,
    passing_after: usize,
    pid: u32,
    create_seconds: f64,
    all_passing_seconds: f64,
) -> Report {
    let secs = s1.at.duration_since(s0.at).as_secs_f64();
    let commit_metric = |t: &str| {
        value(
            t,
            "berth_db_operation_duration_seconds_count{op=\"commit\"}",
        )
        .unwrap_or(0.0)
    };
    let seq = |t: &str| value(t, "berth_events_last_seq").unwrap_or(0.0);
    let (h0, sum0) = check_histogram(&s0.metrics);
    let (h1, sum1) = check_histogram(&s1.metrics);
    let count = |h: &[(f64, f64)]| h.last().map_or(0.0, |(_, c)| *c);
    let runs = count(&h1) - count(&h0);
    let cpu = s1.cpu_ms - s0.cpu_ms;
    let mut by_thread: Vec<(String, f64)> = s1
        .threads
        .iter()
        .map(|(name, ms)| {
            let before = s0.threads.get(name).copied().unwrap_or(0.0);
            (name.clone(), (ms - before) / (secs * 1e3) * 100.0)
        })
        .collect();
    by_thread.sort_by(|a, b| b.1.total_cmp(&a.1));
    Report {
        machines: a.machines,
        checks: a.checks,
        check_interval_s: 1.0,
        window_s: secs,
        agent_cpu_percent_of_one_core: cpu / (secs * 1e3) * 100.0,
        agent_cpu_ms: cpu,
        agent_cpu_percent_by_thread: by_thread,
        target_cpu_percent: TARGET_CPU_PERCENT,
        db_commits: s1.commits - s0.commits,
        db_commits_metric: (commit_metric(&s1.metrics) - commit_metric(&s0.metrics)) as u64,
        events: (seq(&s1.metrics) - seq(&s0.metrics)) as u64,
        checks_run: runs as u64,
        checks_per_second: runs / secs,
        check_latency_p50_ms: quantile(&h0, &h1, 0.5) * 1e3,
        check_latency_p99_ms: quantile(&h0, &h1, 0.99) * 1e3,
        check_latency_mean_ms: if runs > 0.0 {
            (sum1 - sum0) / runs * 1e3
        } else {
            0.0
        },
        passing_after,
        agent_rss_mib: crate::rss_mib(pid),
        loadavg: std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        create_seconds,
        all_passing_seconds,
    }
}

/// Destroys every machine created (through berthd), stops berthd, and kills by pid any
/// recorded workload still alive that is still a busybox.
fn cleanup(rt: &tokio::runtime::Runtime, d: &mut Berthd, created: &[(String, u32)]) {
    let client = d.client();
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
    d.stop();
    for (_, pid) in created {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if *pid != 0 && cmd.windows(7).any(|w| w == b"busybox") {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

fn busybox() -> Result<String, String> {
    for p in ["/usr/bin/busybox", "/bin/busybox"] {
        if Path::new(p).exists() {
            return Ok(p.to_owned());
        }
    }
    Err("busybox not found (apt-get install busybox-static)".into())
}

pub fn run(out: &Path, args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let a = parse(args)?;
    let busybox = busybox()?;
    let exe_dir = std::env::current_exe()?
        .parent()
        .ok_or("no exe dir")?
        .to_owned();
    let work = std::fs::canonicalize(out)?.join("checks-data");
    let _ = std::fs::remove_dir_all(&work);
    let (dir, root) = (work.join("data"), work.join("www"));
    std::fs::create_dir_all(&dir)?;
    std::fs::create_dir_all(&root)?;
    std::fs::write(root.join("index.html"), "ok\n")?;
    let config = work.join("berth.toml");
    std::fs::write(
        &config,
        format!(
            "[api]\nmax_connections = 64\n[limits]\nmax_machines = {}\n",
            a.machines + 16
        ),
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut d = Berthd::start(
        &exe_dir.join("berthd"),
        &dir,
        &config,
        &out.join("checks-berthd.log"),
    )?;
    let mut created = Vec::new();
    let measured = rt.block_on(async {
        d.ready().await?;
        measure(&d, &a, &busybox, &root, &mut created).await
    });
    cleanup(&rt, &mut d, &created);
    let report = measured?;
    let _ = std::fs::remove_dir_all(&work);

    println!(
        "{} started machines (busybox httpd), {}; berthd measured for {:.1} s (shared, loaded host: loadavg {}):",
        report.machines,
        if report.checks {
            "one http check each every 1 s"
        } else {
            "no checks (baseline)"
        },
        report.window_s,
        report.loadavg
    );
    println!(
        "  berthd CPU           {:>8.2} % of one core  ({:.0} ms; target <= {TARGET_CPU_PERCENT} %)",
        report.agent_cpu_percent_of_one_core, report.agent_cpu_ms
    );
    let threads: Vec<String> = report
        .agent_cpu_percent_by_thread
        .iter()
        .take(4)
        .map(|(n, p)| format!("{n} {p:.2} %"))
        .collect();
    println!("    by thread          {}", threads.join(", "));
    println!(
        "  database commits     {:>8}   ({} by the commit histogram, {} events; target 0)",
        report.db_commits, report.db_commits_metric, report.events
    );
    println!(
        "  checks run           {:>8.1} /s  ({} in the window; {} of {} passing at its end)",
        report.checks_per_second, report.checks_run, report.passing_after, report.machines
    );
    println!(
        "  check latency        p50 {:.2} ms   p99 {:.2} ms   mean {:.2} ms",
        report.check_latency_p50_ms, report.check_latency_p99_ms, report.check_latency_mean_ms
    );
    println!("  berthd RSS           {:>8.1} MiB", report.agent_rss_mib);
    let json = out.join(if report.checks {
        "checks.json"
    } else {
        "checks-baseline.json"
    });
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)?;
    println!("wrote {}", json.display());
    Ok(())
}
