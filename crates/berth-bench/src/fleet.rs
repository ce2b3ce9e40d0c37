//! `bench fleet [--agents N] [--machines M] [--rate R]`: a real `nats-server -js` and N real
//! release berthd agents exporting into it (plus a few without export, for the RSS baseline). A
//! simulated control plane places M machines across the agents over their APIs at R creates/s
//! fleet-wide (one event each), on a fixed schedule; a JetStream consumer on `berth.events.>`
//! measures each event's latency from its commit on the host (the event's `at`) to its delivery.
//! Then the RSS an agent pays for export: export agents against the baseline agents, same load.
//! `--stages` also breaks each event's path into stages (see `stages.rs`).

mod stages;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use berth_client::{Client, Endpoint};
use futures_util::StreamExt;
use serde::Serialize;

use crate::percentile;

/// Agents without export, for the RSS baseline.
const BASELINE: usize = 4;

#[derive(Serialize)]
struct Report {
    agents: usize,
    machines: usize,
    offered_events_per_sec: f64,
    achieved_events_per_sec: f64,
    delivered: usize,
    commit_to_consumer_p50_ms: f64,
    commit_to_consumer_p99_ms: f64,
    commit_to_consumer_max_ms: f64,
    /// The host's idle CPU (%) while the machines were placed.
    host_idle_percent: f64,
    /// CPU time the hypervisor gave to others while placing (%, `steal` in /proc/stat): a
    /// figure taken with much steal says more about the neighbours than about berth.
    host_steal_percent: f64,
    /// CPU time (user + system) per event while placing: all exporting agents together...
    agents_cpu_ms_per_event: f64,
    /// ...and nats-server.
    nats_cpu_ms_per_event: f64,
    rss_export_agent_mib: f64,
    rss_baseline_agent_mib: f64,
    rss_export_cost_mib: f64,
}

struct Args {
    agents: usize,
    machines: usize,
    rate: f64,
    stages: bool,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        agents: 100,
        machines: 10_000,
        rate: 1000.0,
        stages: false,
    };
    let mut it = args.iter();
    while let Some(k) = it.next() {
        if k == "--stages" {
            a.stages = true;
            continue;
        }
        let v = it.next().ok_or(format!("{k} needs a value"))?;
        let bad = |e: String| format!("{k} {v}: {e}");
        match k.as_str() {
            "--agents" => a.agents = v.parse().map_err(|e| bad(format!("{e}")))?,
            "--machines" => a.machines = v.parse().map_err(|e| bad(format!("{e}")))?,
            "--rate" => a.rate = v.parse().map_err(|e| bad(format!("{e}")))?,
            _ => return Err(format!("unknown argument {k:?}")),
        }
    }
    if a.agents == 0 || a.machines == 0 || a.rate <= 0.0 {
        return Err("--agents, --machines and --rate must be positive".into());
    }
    Ok(a)
}

fn free_port() -> Result<u16, std::io::Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The processes started, killed by pid when dropped.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_agent(
    exe_dir: &Path,
    dir: &Path,
    export: Option<(&str, String)>,
    max_machines: usize,
    trace: Option<&Path>,
) -> Result<Child, Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    let config = dir.join("berth.toml");
    let mut text = format!("[api]\nlisten = \"off\"\n[limits]\nmax_machines = {max_machines}\n");
    if let Some((url, host)) = export {
        text.push_str(&format!(
            "[export]\nnats_url = \"{url}\"\nhost_id = \"{host}\"\n"
        ));
    }
    std::fs::write(&config, text)?;
    let mut cmd = Command::new(exe_dir.join("berthd"));
    if let Some(dir) = trace {
        cmd.env("BERTH_EXPORT_TRACE", dir);
    }
    Ok(cmd
        .arg("--data-dir")
        .arg(dir)
        .arg("--config")
        .arg(&config)
        .env("BERTH_SHIM", exe_dir.join("berth-shim"))
        .env("BERTH_LOG", "error")
        .stdout(Stdio::null())
        .spawn()?)
}

fn wait_sockets(dirs: &[PathBuf]) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    for d in dirs {
        while !d.join("berth.sock").exists() {
            if Instant::now() > deadline {
                return Err(format!("berthd in {} did not start", d.display()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

pub fn run(out: &Path, args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let a = parse(args)?;
    let exe_dir = std::env::current_exe()?
        .parent()
        .ok_or("no exe dir")?
        .to_owned();
    let root = out.join("fleet-data");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let port = free_port()?;
    let url = format!("nats://127.0.0.1:{port}");
    let mut procs = Procs(Vec::new());
    procs.0.push(
        Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(root.join("nats"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("nats-server (apt-get install nats-server): {e}"))?,
    );
    let per_agent = a.machines.div_ceil(a.agents);
    let trace_dir = root.join("trace");
    std::fs::create_dir_all(&trace_dir)?;
    let trace = a.stages.then_some(trace_dir.as_path());
    let mut dirs = Vec::new();
    for i in 0..a.agents + BASELINE {
        let dir = root.join(format!("a{i}"));
        let export = (i < a.agents).then(|| (url.as_str(), format!("bench-{i}")));
        procs
            .0
            .push(start_agent(&exe_dir, &dir, export, per_agent + 10, trace)?);
        dirs.push(dir);
    }
    wait_sockets(&dirs)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let pids = Pids {
        nats: procs.0[0].id(),
        agents: procs.0[1..=a.agents].iter().map(Child::id).collect(),
    };
    let m = rt.block_on(measure(&a, &url, &dirs, per_agent, &pids))?;
    let (lat, elapsed) = (m.lat, m.elapsed);
    // The baseline agents get the same machines at the same per-agent rate (after the measured
    // phase, so they do not load it): their RSS then differs from the exporting agents' only
    // by the export.
    rt.block_on(place(
        &dirs[a.agents..],
        per_agent,
        a.agents,
        a.rate,
        tokio::time::Instant::now(),
    ))?;
    // Settle, then the agents' RSS: export agents against baseline ones with the same load.
    std::thread::sleep(Duration::from_secs(2));
    let rss: Vec<f64> = procs.0[1..]
        .iter()
        .map(|c| crate::rss_mib(c.id()))
        .collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (export_rss, base_rss) = (mean(&rss[..a.agents]), mean(&rss[a.agents..]));
    drop(procs);
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let report = Report {
        agents: a.agents,
        machines: per_agent * a.agents,
        offered_events_per_sec: a.rate,
        achieved_events_per_sec: (per_agent * a.agents) as f64 / elapsed,
        delivered: lat.len(),
        commit_to_consumer_p50_ms: percentile(&lat, 50.0),
        commit_to_consumer_p99_ms: percentile(&lat, 99.0),
        commit_to_consumer_max_ms: lat.last().copied().unwrap_or(0.0),
        host_idle_percent: m.idle_percent,
        host_steal_percent: m.steal_percent,
        agents_cpu_ms_per_event: m.agents_cpu_ms / (per_agent * a.agents) as f64,
        nats_cpu_ms_per_event: m.nats_cpu_ms / (per_agent * a.agents) as f64,
        rss_export_agent_mib: export_rss,
        rss_baseline_agent_mib: base_rss,
        rss_export_cost_mib: export_rss - base_rss,
    };
    println!(
        "fleet: {} release berthd agents exporting to one nats-server -js ({} more without export, for the baseline)",
        report.agents, BASELINE
    );
    println!(
        "  {} machines placed at {:.0} creates/s offered ({:.0}/s achieved), one event each",
        report.machines, report.offered_events_per_sec, report.achieved_events_per_sec
    );
    println!(
        "  commit on the host → delivery to a JetStream consumer: {} events, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        report.delivered,
        report.commit_to_consumer_p50_ms,
        report.commit_to_consumer_p99_ms,
        report.commit_to_consumer_max_ms
    );
    println!(
        "  host CPU idle while placing: {:.1}% of 2 cores (steal {:.1}%); load average {}",
        report.host_idle_percent,
        report.host_steal_percent,
        loadavg.trim()
    );
    println!(
        "  CPU per event while placing: {:.3} ms in the agents, {:.3} ms in nats-server",
        report.agents_cpu_ms_per_event, report.nats_cpu_ms_per_event
    );
    if a.stages {
        stages::report(&trace_dir, &m.deliveries);
    }
    let _ = std::fs::remove_dir_all(&root);
    println!(
        "  agent RSS: {:.1} MiB with export, {:.1} MiB without: export costs {:.1} MiB",
        report.rss_export_agent_mib, report.rss_baseline_agent_mib, report.rss_export_cost_mib
    );
    let json = out.join("fleet.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)?;
    println!("\nwrote {}", json.display());
    Ok(())
}

/// The processes whose CPU time [`measure`] reads.
struct Pids {
    nats: u32,
    agents: Vec<u32>,
}

/// A process's CPU time so far (user + system, all threads), in ms: `/proc/<pid>/stat` fields
/// 14 and 15, in USER_HZ ticks (100 per second on every Linux architecture berth runs on).
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let after = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64 * 10.0
}

/// What [`measure`] saw.
struct Measured {
    /// Each event's commit→delivery latency (ms, sorted).
    lat: Vec<f64>,
    /// The placing phase's duration (s).
    elapsed: f64,
    /// The host's idle CPU (%) while placing.
    idle_percent: f64,
    /// The hypervisor's steal (%) while placing.
    steal_percent: f64,
    /// CPU time of the exporting agents, and of nats-server, while placing (ms).
    agents_cpu_ms: f64,
    nats_cpu_ms: f64,
    deliveries: Vec<stages::Delivery>,
}

/// The part of a message body the consumer reads: the event's seq and time, and its host.
#[derive(serde::Deserialize)]
struct Delivered {
    seq: u64,
    at: berth_types::Timestamp,
    host_id: String,
}

/// Places the machines on a fixed schedule and collects each event's commit→delivery latency.
async fn measure(
    a: &Args,
    url: &str,
    dirs: &[PathBuf],
    per_agent: usize,
    pids: &Pids,
) -> Result<Measured, String> {
    let js = async_nats::jetstream::new(
        async_nats::connect(url)
            .await
            .map_err(|e| format!("connect {url}: {e}"))?,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let stream = loop {
        match js.get_stream(berth_export_stream()).await {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => return Err(format!("the agents never created the stream: {e}")),
        }
    };
    let consumer = stream
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::New,
            ack_policy: AckPolicy::None,
            filter_subject: "berth.events.>".into(),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("consumer: {e}"))?;
    let total = per_agent * a.agents;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| format!("consume: {e}"))?;
    let collector = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(total);
        let mut deliveries = Vec::with_capacity(total);
        let end = tokio::time::Instant::now() + Duration::from_secs(120);
        while lat.len() < total {
            let Ok(Some(Ok(m))) = tokio::time::timeout_at(end, messages.next()).await else {
                break;
            };
            let now = berth_types::Timestamp::now();
            // The body is the event as stored, plus host_id.
            if let Ok(d) = serde_json::from_slice::<Delivered>(&m.payload) {
                lat.push(now.saturating_since(d.at).as_secs_f64() * 1e3);
                deliveries.push(stages::Delivery {
                    host: d.host_id,
                    seq: d.seq,
                    delivered: now.as_nanos(),
                });
            }
        }
        (lat, deliveries)
    });
    // Every agent's export connected before the clock starts: a hundred agents starting (their
    // sessions connecting, the stream looked up) is not what the figure is about.
    for (i, dir) in dirs.iter().take(a.agents).enumerate() {
        let c = Client::new(Endpoint::Unix(dir.join("berth.sock")));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let up = c
                .host()
                .await
                .ok()
                .and_then(|h| h.export)
                .is_some_and(|e| e.connected);
            if up {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("agent {i}'s export never connected"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The schedule: create k (over all agents, round-robin) is due at t0 + k / rate.
    let t0 = tokio::time::Instant::now() + Duration::from_millis(200);
    let started = Instant::now();
    let cpu0 = stages::cpu_jiffies();
    let steal0 = stages::steal_jiffies();
    let agents_cpu = || pids.agents.iter().map(|p| cpu_ms(*p)).sum::<f64>();
    let (agents0, nats0) = (agents_cpu(), cpu_ms(pids.nats));
    place(&dirs[..a.agents], per_agent, a.agents, a.rate, t0).await?;
    let elapsed = started.elapsed().as_secs_f64() - 0.2;
    let cpu1 = stages::cpu_jiffies();
    let idle_percent = stages::idle_percent(cpu0, cpu1);
    let all = (cpu1.0 + cpu1.1).saturating_sub(cpu0.0 + cpu0.1).max(1);
    let steal_percent = 100.0 * stages::steal_jiffies().saturating_sub(steal0) as f64 / all as f64;
    let (agents_cpu_ms, nats_cpu_ms) = (agents_cpu() - agents0, cpu_ms(pids.nats) - nats0);
    let (mut lat, deliveries) = collector.await.map_err(|e| e.to_string())?;
    lat.sort_by(|x, y| x.total_cmp(y));
    Ok(Measured {
        lat,
        elapsed,
        idle_percent,
        steal_percent,
        agents_cpu_ms,
        nats_cpu_ms,
        deliveries,
    })
}

/// Places `per_agent` machines on each of `dirs`' agents, one at a time per agent: the `k`-th
/// create over `agents` agents round-robin (agent `i`'s `j`-th is `k = j * agents + i`) is due
/// at `t0 + k / rate`, so each agent places `rate / agents` per second.
async fn place(
    dirs: &[PathBuf],
    per_agent: usize,
    agents: usize,
    rate: f64,
    t0: tokio::time::Instant,
) -> Result<(), String> {
    let mut tasks = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let c = Client::new(Endpoint::Unix(dir.join("berth.sock")));
        let dir = dir.display().to_string();
        tasks.push(tokio::spawn(async move {
            for j in 0..per_agent {
                let k = j * agents + i;
                tokio::time::sleep_until(t0 + Duration::from_secs_f64(k as f64 / rate)).await;
                c.create(&placed(), None)
                    .await
                    .map_err(|e| format!("create on the agent in {dir}: {e}"))?;
            }
            Ok::<_, String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

fn berth_export_stream() -> &'static str {
    berth_export::STREAM
}

fn placed() -> berth_api_types::CreateMachine {
    berth_api_types::CreateMachine {
        name: None,
        config: berth_types::MachineConfig::command(["/bin/sleep", "1000"]),
        metadata: Default::default(),
        skip_start: true,
    }
}
