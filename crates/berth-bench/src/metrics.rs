//! `bench metrics`: what the metrics cost.
//!
//! 1. Scraping `/metrics` of a real release `berthd` running 1,000 started `/bin/sleep` machines
//!    (real processes under real supervisors), once every machine's CPU and memory series are
//!    present: latency of `GET /metrics` over the unix socket, sequentially, end to end (HTTP
//!    included). Budget: 20 ms.
//! 2. Timing every database operation, with the Prometheus recorder installed as in berthd (so
//!    each timing records into the real exporter). Budget: 2% of store throughput.
//!    - End to end: throughput with `StoreOptions::timing` on and off, the same workload, in
//!      alternating pairs of runs; the overhead is 1 - the median of the on/off ratios. Writes: 64
//!      writers doing transitions (fsync-bound, so the disk's noise dominates on a shared
//!      machine). Reads: `get_machine` from two threads, where timing weighs most.
//!    - Directly: the cost of timing one operation (`TimingProbe`, the store's own code path),
//!      times the operations per second each thread did, is the share of that thread's time
//!      spent timing: a bound that the disk's noise does not blur.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use berth_client::{Client, Endpoint, Method};
use berth_store::{Store, StoreOptions, TransitionSpec};
use berth_types::{EventKind, MachineConfig, MachineId, MachineRecord, Source, State, Timestamp};
use serde::Serialize;

use crate::percentile;

const MACHINES: usize = 1000;
const CLIENTS: usize = 16;
const SCRAPES: usize = 50;
const ROUNDS: usize = 10;
const WRITERS: usize = 64;
const WRITE_SECONDS: f64 = 1.5;
const READ_SECONDS: f64 = 1.0;
const PROBES: u32 = 2_000_000;

#[derive(Serialize)]
struct Scrape {
    machines: usize,
    scrapes: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    body_bytes: usize,
    series: usize,
    machine_series: usize,
    budget_ms: f64,
}

#[derive(Serialize)]
struct Overhead {
    rounds: usize,
    writers: usize,
    write_seconds_per_run: f64,
    writes_per_sec_timing_on: Vec<f64>,
    writes_per_sec_timing_off: Vec<f64>,
    write_overhead_pct: f64,
    read_seconds_per_run: f64,
    reads_per_sec_timing_on: Vec<f64>,
    reads_per_sec_timing_off: Vec<f64>,
    read_overhead_pct: f64,
    ns_per_timed_op: f64,
    commits_per_sec: f64,
    writer_thread_share_pct: f64,
    reads_per_sec_per_thread: f64,
    reader_thread_share_pct: f64,
    budget_pct: f64,
}

#[derive(Serialize)]
struct Report {
    scrape: Scrape,
    timing: Overhead,
    note: &'static str,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    percentile(&s, 50.0)
}

/// Series lines of a scrape, and those labelled `machine_id`.
fn count_series(text: &str) -> (usize, usize) {
    let lines = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let (mut all, mut machine) = (0, 0);
    for l in lines {
        all += 1;
        if l.contains("machine_id=") {
            machine += 1;
        }
    }
    (all, machine)
}

fn scrape_bench(out: &Path) -> Result<Scrape, Box<dyn std::error::Error>> {
    let dir = out.join("metrics-data");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut child = start_agent(&dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let client = Client::new(Endpoint::Unix(dir.join("berth.sock")));
    let result = rt.block_on(measure_scrapes(&client));
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(result?)
}

/// A release berthd on `dir` (socket only), once its socket answers.
fn start_agent(dir: &Path) -> Result<std::process::Child, Box<dyn std::error::Error>> {
    let exe_dir = std::env::current_exe()?
        .parent()
        .ok_or("no exe dir")?
        .to_owned();
    let berthd = exe_dir.join("berthd");
    let config = dir.join("berth.toml");
    std::fs::write(
        &config,
        "[api]\nmax_inflight_mutations = 64\n[limits]\nmax_machines = 2000\n",
    )?;
    let mut child = Command::new(&berthd)
        .args([
            "--data-dir",
            dir.to_str().ok_or("path")?,
            "--listen",
            "off",
            "--config",
            config.to_str().ok_or("path")?,
        ])
        .env("BERTH_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("run {}: {e}", berthd.display()))?;
    let socket = dir.join("berth.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("berthd did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

/// Creates the machines, waits until each is sampled, times the scrapes, then destroys every
/// machine and checks that no machine series remains.
async fn measure_scrapes(client: &Client) -> Result<Scrape, String> {
    let ids = create_machines(client).await?;
    wait_sampled(client).await?;
    let mut lat = Vec::new();
    let mut last = String::new();
    for _ in 0..SCRAPES {
        let (ms, text) = scrape(client).await?;
        lat.push(ms);
        last = text;
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let (series, machine_series) = count_series(&last);
    destroy_all(client, &ids).await;
    let (_, after) = scrape(client).await?;
    if after.contains("machine_id=") {
        return Err("series of destroyed machines remain".to_owned());
    }
    Ok(Scrape {
        machines: ids.len(),
        scrapes: SCRAPES,
        p50_ms: percentile(&lat, 50.0),
        p99_ms: percentile(&lat, 99.0),
        max_ms: lat.last().copied().unwrap_or(0.0),
        body_bytes: last.len(),
        series,
        machine_series,
        budget_ms: 20.0,
    })
}

/// `MACHINES` started `/bin/sleep` machines, created by `CLIENTS` concurrent clients.
async fn create_machines(client: &Client) -> Result<Vec<String>, String> {
    let mut tasks = Vec::new();
    for w in 0..CLIENTS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in (w..MACHINES).step_by(CLIENTS) {
                let req = berth_api_types::CreateMachine {
                    name: None,
                    config: MachineConfig::command(["/bin/sleep", "1000"]),
                    metadata: Default::default(),
                    skip_start: false,
                };
                let m = client.create(&req, None).await.map_err(|e| e.to_string())?;
                ids.push(m.id.to_string());
            }
            Ok::<_, String>(ids)
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.map_err(|e| e.to_string())??);
    }
    Ok(ids)
}

/// One GET /metrics: its latency (ms) and body.
async fn scrape(client: &Client) -> Result<(f64, String), String> {
    let t = Instant::now();
    let r = client
        .raw(Method::GET, "/metrics", None, &[])
        .await
        .map_err(|e| e.to_string())?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let text = String::from_utf8(r.body.to_vec()).map_err(|e| e.to_string())?;
    Ok((ms, text))
}

/// Waits for the sampler (every 5 s by default) to have every machine's CPU and memory.
async fn wait_sampled(client: &Client) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, text) = scrape(client).await?;
        let sampled = text
            .lines()
            .filter(|l| l.starts_with("berth_machine_memory_bytes{"))
            .count();
        if sampled == MACHINES {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("only {sampled} machines sampled after 60 s"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn destroy_all(client: &Client, ids: &[String]) {
    let mut tasks = Vec::new();
    for chunk in ids.chunks(ids.len().div_ceil(CLIENTS).max(1)) {
        let client = client.clone();
        let chunk = chunk.to_vec();
        tasks.push(tokio::spawn(async move {
            for id in chunk {
                let _ = client.destroy(&id, true).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

fn record(i: usize) -> MachineRecord {
    MachineRecord::new(
        MachineId::parse(&format!("bench-{i:05}")).unwrap_or_else(|_| MachineId::generate()),
        None,
        MachineConfig::command(["/bin/sleep", "infinity"]),
        Default::default(),
        Timestamp::now(),
    )
}

const CYCLE: [State; 4] = [
    State::Starting,
    State::Started,
    State::Stopping,
    State::Stopped,
];

fn options(timing: bool) -> StoreOptions {
    StoreOptions {
        timing,
        ..StoreOptions::default()
    }
}

/// Transitions and commits per second from `WRITERS` concurrent writers.
async fn writes(dir: &Path, timing: bool) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let path = dir.join("timing.redb");
    let _ = std::fs::remove_file(&path);
    let store = Store::open(&path, options(timing))?;
    for i in 0..WRITERS {
        let rec = record(i);
        store
            .write(move |w| w.create_machine(rec, Source::User, "bench"))
            .await?;
    }
    let done = Arc::new(AtomicU64::new(0));
    let commits_before = store.writer_stats().commits;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(WRITE_SECONDS);
    let mut tasks = Vec::new();
    for i in 0..WRITERS {
        let (store, done) = (store.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let id = record(i).id;
            let mut k = 0;
            while Instant::now() < end {
                let (id, to) = (id.clone(), CYCLE[k % CYCLE.len()]);
                k += 1;
                store
                    .write(move |w| {
                        w.transition(
                            &id,
                            TransitionSpec::new(to, EventKind::Start, Source::User, "bench"),
                        )
                    })
                    .await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, berth_store::StoreError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let rate = done.load(Ordering::Relaxed) as f64 / secs;
    let commits = (store.writer_stats().commits - commits_before) as f64 / secs;
    drop(store);
    std::fs::remove_file(&path)?;
    Ok((rate, commits))
}

/// `get_machine` reads per second from two threads.
fn reads(dir: &Path, timing: bool) -> Result<f64, Box<dyn std::error::Error>> {
    let path = dir.join("timing-reads.redb");
    let _ = std::fs::remove_file(&path);
    let store = Store::open(&path, options(timing))?;
    for i in 0..100 {
        let rec = record(i);
        store.write_blocking(move |w| w.create_machine(rec, Source::User, "bench"))?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let (store, stop, done) = (store.clone(), stop.clone(), done.clone());
            std::thread::spawn(move || {
                let ids: Vec<MachineId> = (0..100).map(|i| record(i).id).collect();
                let mut n = 0u64;
                let mut k = t;
                while !stop.load(Ordering::Relaxed) {
                    if store.machine(&ids[k % ids.len()]).is_err() {
                        break;
                    }
                    k += 1;
                    n += 1;
                }
                done.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(READ_SECONDS));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let rate = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    drop(store);
    std::fs::remove_file(&path)?;
    Ok(rate)
}

fn timing_bench(out: &Path) -> Result<Overhead, Box<dyn std::error::Error>> {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(berth_agent::telemetry::BUCKETS)?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| e.to_string())?;
    berth_agent::telemetry::describe();
    // As in berthd: the exporter's upkeep drains recorded samples into buckets every 5 s.
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(berth_agent::telemetry::UPKEEP_INTERVAL);
            handle.run_upkeep();
        }
    });
    let dir = out.join("timing-data");
    std::fs::create_dir_all(&dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // What timing one operation costs, through the store's own code path.
    let probe = berth_store::TimingProbe::new();
    probe.time_empty("get_machine");
    let t = Instant::now();
    for _ in 0..PROBES {
        probe.time_empty("get_machine");
    }
    let ns_per_timed_op = t.elapsed().as_nanos() as f64 / f64::from(PROBES);
    let (mut w_on, mut w_off, mut r_on, mut r_off) = (vec![], vec![], vec![], vec![]);
    let mut commits = Vec::new();
    for round in 0..ROUNDS {
        // Alternate which goes first, so a drift in the machine's load does not favour one.
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for timing in order {
            let (w, c) = rt.block_on(writes(&dir, timing))?;
            let r = reads(&dir, timing)?;
            commits.push(c);
            if timing {
                w_on.push(w);
                r_on.push(r);
            } else {
                w_off.push(w);
                r_off.push(r);
            }
        }
    }
    let _ = std::fs::remove_dir(&dir);
    // Runs of a pair are next to each other in time: compare within pairs.
    let pct = |on: &[f64], off: &[f64]| {
        let ratios: Vec<f64> = on.iter().zip(off).map(|(a, b)| a / b).collect();
        (1.0 - median(&ratios)) * 100.0
    };
    let commits_per_sec = median(&commits);
    let reads_per_sec_per_thread = median(&r_on) / 2.0;
    Ok(Overhead {
        ns_per_timed_op,
        commits_per_sec,
        // One timing per commit, on the single writer thread.
        writer_thread_share_pct: commits_per_sec * ns_per_timed_op / 1e9 * 100.0,
        reads_per_sec_per_thread,
        reader_thread_share_pct: reads_per_sec_per_thread * ns_per_timed_op / 1e9 * 100.0,
        rounds: ROUNDS,
        writers: WRITERS,
        write_seconds_per_run: WRITE_SECONDS,
        write_overhead_pct: pct(&w_on, &w_off),
        writes_per_sec_timing_on: w_on,
        writes_per_sec_timing_off: w_off,
        read_seconds_per_run: READ_SECONDS,
        read_overhead_pct: pct(&r_on, &r_off),
        reads_per_sec_timing_on: r_on,
        reads_per_sec_timing_off: r_off,
        budget_pct: 2.0,
    })
}

pub fn run(out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let scrape = scrape_bench(out)?;
    println!(
        "GET /metrics of a release berthd with {} started /bin/sleep machines ({} series, {} of them per machine, {} KiB), {} sequential scrapes over the unix socket:",
        scrape.machines,
        scrape.series,
        scrape.machine_series,
        scrape.body_bytes / 1024,
        scrape.scrapes
    );
    println!(
        "  p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (budget {} ms)",
        scrape.p50_ms, scrape.p99_ms, scrape.max_ms, scrape.budget_ms
    );
    let timing = timing_bench(out)?;
    let show = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "\ntiming every database operation, {} alternating rounds, Prometheus recorder installed:",
        timing.rounds
    );
    println!(
        "  one timed operation costs {:.0} ns (the store's code path, real exporter)",
        timing.ns_per_timed_op
    );
    println!(
        "  writes: {:.0} commits/s -> {:.3}% of the writer thread's time is timing (budget {}%)",
        timing.commits_per_sec, timing.writer_thread_share_pct, timing.budget_pct
    );
    println!(
        "  reads: {:.0} get_machine/s per thread -> {:.2}% of a reader thread's time is timing",
        timing.reads_per_sec_per_thread, timing.reader_thread_share_pct
    );
    println!(
        "  end to end, transitions/s, {} writers: on [{}] off [{}] -> overhead {:.2}% (median of pairs; budget {}%)",
        timing.writers,
        show(&timing.writes_per_sec_timing_on),
        show(&timing.writes_per_sec_timing_off),
        timing.write_overhead_pct,
        timing.budget_pct
    );
    println!(
        "  end to end, get_machine reads/s, 2 threads: on [{}] off [{}] -> overhead {:.2}% (median of pairs)",
        show(&timing.reads_per_sec_timing_on),
        show(&timing.reads_per_sec_timing_off),
        timing.read_overhead_pct
    );
    let report = Report {
        scrape,
        timing,
        note: "scrape: end-to-end GET /metrics (HTTP over the unix socket, catch-up with the event \
               log, exporter render, per-machine series) with real processes; usage is sampled in \
               the background every metrics.sample_interval, not on the scrape. timing: end-to-end \
               overhead = 1 - median of on/off ratios of adjacent runs (a negative figure is noise; \
               writes are fsync-bound and noisy on a shared disk); thread share = operations per \
               second on that thread x ns per timed op.",
    };
    let json = out.join("metrics.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)?;
    println!("\nwrote {}", json.display());
    Ok(())
}
