//! `bench aging [--transitions N] [--preload-mib M] [--maintenance-interval S] [--cache-mib C]`: does the store
//! decay as its file ages?
//!
//! flyd's BoltDB commits a transition 20× slower on a file holding 1 GiB of history of which 80%
//! was deleted than on a fresh one (every commit rewrites a freelist of ~430k pages). This suite
//! runs the same churn twice through the real store, opened by the real agent core (berthd's
//! store options, its retention policy and automatic compaction, its telemetry sampling):
//!
//! - **fresh**: an empty data directory;
//! - **aged**: a file first loaded with `--preload-mib` of history in large commits, 80% of which
//!   retention then removes.
//!
//! The churn: 16 writers, each taking machine after machine through its life (create, 8
//! transitions, destroy: 10 writes, each acknowledged after fsync), until N writes in all. The
//! agent's maintenance pass (`Agent::maintain`, what berthd runs every `retention.interval`) runs
//! at the start of each run and every `--maintenance-interval` seconds (default berthd's 60), so
//! on the aged file the automatic compaction runs during the churn.
//!
//! Reported per tenth of each run (by acknowledged writes): p50/p99 ack latency, writes per
//! second, and at its end the file's length, its bytes on disk and the live bytes; then totals.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use berth_agent::{Agent, AgentConfig, MaintenanceConfig};
use berth_store::{RetentionPolicy, Store, StoreStats, TransitionSpec};
use berth_types::{EventKind, MachineConfig, MachineId, MachineRecord, Source, State, Timestamp};
use serde::Serialize;

use crate::percentile;

const WRITERS: usize = 16;
/// Writes in one machine's life: create, 8 transitions, destroy.
const LIFE: usize = 10;
const LIFE_TRANSITIONS: [State; 8] = [
    State::Starting,
    State::Started,
    State::Stopping,
    State::Stopped,
    State::Starting,
    State::Started,
    State::Stopping,
    State::Stopped,
];
/// Padding of an event's reason: a stored event is then about 250 bytes.
const REASON_BYTES: usize = 110;
/// Padding of a record's environment: a stored record is then about 600 bytes.
const RECORD_BYTES: usize = 600;
/// Transitions per preload write (large commits: setup, not measured).
const PRELOAD_BATCH: usize = 4096;
/// Machines the preloaded history belongs to.
const PRELOAD_MACHINES: usize = 4096;

struct Args {
    transitions: usize,
    preload_mib: u64,
    interval: Duration,
    /// redb's page cache, bytes (berthd's `db.cache_size`).
    cache: usize,
}

fn parse(args: &[String]) -> Result<Args, Box<dyn std::error::Error>> {
    let mut a = Args {
        transitions: 200_000,
        preload_mib: 1024,
        interval: MaintenanceConfig::default().interval,
        cache: berth_store::DEFAULT_CACHE_SIZE,
    };
    let mut it = args.iter();
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--transitions" => a.transitions = v()?.parse()?,
            "--preload-mib" => a.preload_mib = v()?.parse()?,
            "--maintenance-interval" => a.interval = Duration::from_secs_f64(v()?.parse()?),
            "--cache-mib" => a.cache = v()?.parse::<usize>()? << 20,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    if a.transitions < WRITERS * LIFE * 10 {
        return Err(format!("--transitions must be at least {}", WRITERS * LIFE * 10).into());
    }
    Ok(a)
}

/// The file's sizes at one moment.
#[derive(Serialize, Clone, Copy, Default)]
struct Sizes {
    file_length_bytes: u64,
    /// The bytes of the file holding data (`StoreStats::used_bytes`: extents, not holes).
    on_disk_bytes: u64,
    /// What `du` shows (`st_blocks`).
    du_bytes: u64,
    live_bytes: u64,
}

fn du(store: &Store) -> u64 {
    std::fs::metadata(store.path())
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
        .unwrap_or(0)
}

fn sizes(store: &Store) -> Sizes {
    let s: Option<StoreStats> = store.stats().ok();
    let du = du(store);
    s.map(|s| Sizes {
        file_length_bytes: s.file_size_bytes,
        on_disk_bytes: s.used_bytes(),
        du_bytes: du,
        live_bytes: s.live_bytes,
    })
    .unwrap_or_default()
}

#[derive(Serialize)]
struct Tenth {
    writes: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    transitions_per_sec: f64,
    /// At the end of this tenth.
    #[serde(flatten)]
    sizes: Sizes,
}

/// One maintenance pass: when it ran (s since the churn began) and whether it compacted.
#[derive(Serialize)]
struct Pass {
    start_s: f64,
    seconds: f64,
    compacted: bool,
}

#[derive(Serialize)]
struct Run {
    transitions: usize,
    seconds: f64,
    transitions_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    start: Sizes,
    per_tenth: Vec<Tenth>,
    maintenance: Vec<Pass>,
    /// After the churn, once the maintenance pass in flight (if any) finished.
    final_file_length_bytes: u64,
    final_on_disk_bytes: u64,
    final_du_bytes: u64,
    final_live_bytes: u64,
    final_on_disk_over_live: f64,
}

#[derive(Serialize)]
struct Preload {
    target_mib: u64,
    transitions: u64,
    seconds: f64,
    before_retention: Sizes,
    after_retention: Sizes,
    events_removed: u64,
    history_rows_removed: u64,
}

#[derive(Serialize)]
struct Report {
    writers: usize,
    record_bytes: usize,
    event_bytes: usize,
    maintenance_interval_s: f64,
    fresh: Run,
    preload: Preload,
    aged: Run,
    aged_p99_over_fresh_p99: f64,
    target_p99_ratio: f64,
    target_on_disk_over_live: f64,
    note: &'static str,
}

fn reason() -> String {
    "r".repeat(REASON_BYTES)
}

/// A machine record of about [`RECORD_BYTES`] stored.
fn record(id: MachineId) -> MachineRecord {
    let mut config = MachineConfig::command(["/bin/sleep", "infinity"]);
    config.env.insert("APP".into(), "bench".into());
    let mut rec = MachineRecord::new(id, None, config, Default::default(), Timestamp::now());
    let len = serde_json::to_vec(&rec).map(|v| v.len()).unwrap_or(0);
    let pad = RECORD_BYTES.saturating_sub(len + 12);
    rec.config.env.insert("PADDING".into(), "p".repeat(pad));
    rec
}

fn spec(to: State) -> TransitionSpec {
    TransitionSpec::new(to, EventKind::Start, Source::User, reason())
}

/// The agent core on `dir` as berthd runs it, except that this suite calls the maintenance
/// pass itself (to time it) and reconciliation never runs during the churn (the churned
/// machines have no workloads).
async fn agent(dir: &Path, cache: usize) -> Result<Agent, Box<dyn std::error::Error>> {
    let mut cfg = AgentConfig::new(dir.to_owned());
    cfg.store.cache_size = cache;
    cfg.maintenance = None;
    cfg.reconcile_interval = Duration::from_secs(86_400);
    Ok(Agent::start(cfg).await?)
}

/// One writer: whole machine lives until `lives` are done; each write's (end, latency) in ms.
async fn churn_writer(
    store: Store,
    w: usize,
    lives: usize,
    epoch: Instant,
    done: Arc<AtomicU64>,
) -> Result<Vec<(f64, f64)>, String> {
    let mut out = Vec::with_capacity(lives * LIFE);
    let ms = |t: Instant| t.duration_since(epoch).as_secs_f64() * 1e3;
    for n in 0..lives {
        let id = MachineId::parse(&format!("churn-{w:02}-{n:07}")).map_err(|e| e.to_string())?;
        let t = Instant::now();
        let rec = record(id.clone());
        store
            .write(move |c| c.create_machine(rec, Source::User, "bench"))
            .await
            .map_err(|e| e.to_string())?;
        out.push((ms(Instant::now()), t.elapsed().as_secs_f64() * 1e3));
        done.fetch_add(1, Ordering::Relaxed);
        for to in LIFE_TRANSITIONS {
            let id = id.clone();
            let t = Instant::now();
            store
                .write(move |c| c.transition(&id, spec(to)))
                .await
                .map_err(|e| e.to_string())?;
            out.push((ms(Instant::now()), t.elapsed().as_secs_f64() * 1e3));
            done.fetch_add(1, Ordering::Relaxed);
        }
        let id = id.clone();
        let t = Instant::now();
        store
            .write(move |c| {
                c.transition(&id, spec(State::Destroying))?;
                c.transition(&id, spec(State::Destroyed))
            })
            .await
            .map_err(|e| e.to_string())?;
        out.push((ms(Instant::now()), t.elapsed().as_secs_f64() * 1e3));
        done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(out)
}

/// The maintenance pass berthd runs, at once and then every `interval` until `stop`.
async fn maintenance(
    agent: Agent,
    interval: Duration,
    epoch: Instant,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<Pass> {
    let cfg = MaintenanceConfig::default();
    let last = |a: &Agent| {
        a.store()
            .stats()
            .ok()
            .and_then(|s| s.last_compaction)
            .map(|c| (c.at, c.duration_ms))
    };
    let mut passes = Vec::new();
    while !*stop.borrow() {
        let before = last(&agent);
        let t = Instant::now();
        agent.maintain(&cfg).await;
        passes.push(Pass {
            start_s: t.duration_since(epoch).as_secs_f64(),
            seconds: t.elapsed().as_secs_f64(),
            compacted: last(&agent) != before,
        });
        let _ = tokio::time::timeout(interval, stop.wait_for(|s| *s)).await;
    }
    passes
}

/// The file's sizes each time another tenth of `total` writes has been acknowledged.
async fn monitor(store: Store, done: Arc<AtomicU64>, total: usize) -> Vec<Sizes> {
    let mut out = Vec::with_capacity(10);
    while out.len() < 10 {
        let d = done.load(Ordering::Relaxed) as usize;
        if d >= (out.len() + 1) * total / 10 {
            out.push(sizes(&store));
            continue;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    out
}

fn tenths(samples: &[(f64, f64)], at_end: &[Sizes]) -> Vec<Tenth> {
    let n = samples.len();
    let mut prev_end = 0.0;
    (0..10)
        .map(|k| {
            let chunk = &samples[k * n / 10..(k + 1) * n / 10];
            let end = chunk.last().map_or(prev_end, |s| s.0);
            let mut lat: Vec<f64> = chunk.iter().map(|s| s.1).collect();
            lat.sort_by(f64::total_cmp);
            let secs = ((end - prev_end) / 1e3).max(1e-9);
            prev_end = end;
            Tenth {
                writes: chunk.len(),
                p50_ms: percentile(&lat, 50.0),
                p99_ms: percentile(&lat, 99.0),
                max_ms: lat.last().copied().unwrap_or(0.0),
                transitions_per_sec: chunk.len() as f64 / secs,
                sizes: at_end.get(k).copied().unwrap_or_default(),
            }
        })
        .collect()
}

/// The churn, with maintenance running beside it.
async fn churn(
    agent: &Agent,
    transitions: usize,
    interval: Duration,
) -> Result<Run, Box<dyn std::error::Error>> {
    let store = agent.store().clone();
    let lives = transitions.div_ceil(WRITERS * LIFE);
    let total = lives * WRITERS * LIFE;
    let start = sizes(&store);
    let done = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let epoch = Instant::now();
    let maint = tokio::spawn(maintenance(agent.clone(), interval, epoch, stop_rx));
    let mon = tokio::spawn(monitor(store.clone(), done.clone(), total));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        tasks.push(tokio::spawn(churn_writer(
            store.clone(),
            w,
            lives,
            epoch,
            done.clone(),
        )));
    }
    let mut samples = Vec::with_capacity(total);
    for t in tasks {
        samples.extend(t.await??);
    }
    let seconds = epoch.elapsed().as_secs_f64();
    let at_end = mon.await?;
    stop_tx.send_replace(true);
    let maintenance = maint.await?;
    let fin = sizes(&store);
    samples.sort_by(|a, b| a.0.total_cmp(&b.0));
    let per_tenth = tenths(&samples, &at_end);
    let mut lat: Vec<f64> = samples.iter().map(|s| s.1).collect();
    lat.sort_by(f64::total_cmp);
    Ok(Run {
        transitions: lat.len(),
        seconds,
        transitions_per_sec: lat.len() as f64 / seconds,
        p50_ms: percentile(&lat, 50.0),
        p99_ms: percentile(&lat, 99.0),
        max_ms: lat.last().copied().unwrap_or(0.0),
        start,
        per_tenth,
        maintenance,
        final_file_length_bytes: fin.file_length_bytes,
        final_on_disk_bytes: fin.on_disk_bytes,
        final_du_bytes: fin.du_bytes,
        final_live_bytes: fin.live_bytes,
        final_on_disk_over_live: fin.on_disk_bytes as f64 / fin.live_bytes.max(1) as f64,
    })
}

/// Loads about `target` bytes of history in large commits (4,096 transitions each, one per
/// machine, every machine left `stopped`), then lets retention remove 80% of it.
async fn preload(store: &Store, target_mib: u64) -> Result<Preload, Box<dyn std::error::Error>> {
    let t = Instant::now();
    let ids: Vec<MachineId> = (0..PRELOAD_MACHINES)
        .map(|i| MachineId::parse(&format!("aged-{i:05}")))
        .collect::<Result<_, _>>()?;
    let recs: Vec<MachineRecord> = ids.iter().cloned().map(record).collect();
    store
        .write(move |c| {
            for r in recs {
                c.create_machine(r, Source::User, "bench")?;
            }
            Ok(())
        })
        .await?;
    let cycle = &LIFE_TRANSITIONS[..4];
    let mut rounds = 0u64;
    // The file's disk usage (`st_blocks`, cheap) stands for its size here: `Store::stats` walks
    // every page.
    while !rounds.is_multiple_of(4) || du(store) < target_mib << 20 {
        for chunk in ids.chunks(PRELOAD_BATCH) {
            let (chunk, to) = (chunk.to_vec(), cycle[(rounds % 4) as usize]);
            store
                .write(move |c| {
                    for id in &chunk {
                        c.transition(id, spec(to))?;
                    }
                    Ok(())
                })
                .await?;
        }
        rounds += 1;
        // Keep the history index up with the log (each commit writes one 256-row slice of it),
        // so the file's size counts both copies of every event.
        for _ in 0..PRELOAD_MACHINES.div_ceil(256) + 2 {
            store.write(|_| Ok(())).await?;
        }
    }
    // Retention only trims rows the history index has materialized: let it catch up.
    loop {
        let st = store.stats()?;
        if st.history_seq + 1 >= st.next_seq {
            break;
        }
        // Each commit writes one slice (256 rows) of the index.
        let slices = (st.next_seq - st.history_seq) / 256 + 1;
        for _ in 0..slices {
            store.write(|_| Ok(())).await?;
        }
    }
    let before_retention = sizes(store);
    let transitions = rounds * PRELOAD_MACHINES as u64;
    let report = store
        .retain(&RetentionPolicy {
            max_events_per_machine: rounds / 5,
            max_events: transitions / 5,
            batch_rows: 4096,
            pause: Duration::ZERO,
            ..RetentionPolicy::default()
        })
        .await?;
    Ok(Preload {
        target_mib,
        transitions,
        seconds: t.elapsed().as_secs_f64(),
        before_retention,
        after_retention: sizes(store),
        events_removed: report.events_removed,
        history_rows_removed: report.history_rows_removed,
    })
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// Bytes of the newest stored event, as encoded.
fn event_bytes(store: &Store) -> usize {
    let next = store.stats().map(|s| s.next_seq).unwrap_or(1);
    store
        .events_after(next.saturating_sub(3), 1)
        .ok()
        .and_then(|e| e.first().and_then(|e| serde_json::to_vec(e).ok()))
        .map_or(0, |v| v.len() + 5)
}

pub fn run(out: &Path, args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let a = parse(args)?;
    let base = out.join("aging-data");
    let _ = std::fs::remove_dir_all(&base);
    let (fresh_dir, aged_dir) = (base.join("fresh"), base.join("aged"));
    println!("fresh: {} writes by {WRITERS} writers...", a.transitions);
    // One runtime per run: dropping it ends the agent's tasks and closes its store.
    let (fresh, event_bytes) = runtime()?.block_on(async {
        let agent = agent(&fresh_dir, a.cache).await?;
        let run = churn(&agent, a.transitions, a.interval).await?;
        Ok::<_, Box<dyn std::error::Error>>((run, event_bytes(agent.store())))
    })?;
    print_run("fresh", &fresh);
    println!("aged: preloading {} MiB of history...", a.preload_mib);
    let (preload, aged) = runtime()?.block_on(async {
        let agent = agent(&aged_dir, a.cache).await?;
        let preload = preload(agent.store(), a.preload_mib).await?;
        println!(
            "  {} transitions in {:.0} s; on disk {:.0} MiB, live {:.0} MiB after retention",
            preload.transitions,
            preload.seconds,
            mib(preload.after_retention.on_disk_bytes),
            mib(preload.after_retention.live_bytes)
        );
        let run = churn(&agent, a.transitions, a.interval).await?;
        Ok::<_, Box<dyn std::error::Error>>((preload, run))
    })?;
    print_run("aged", &aged);
    let _ = std::fs::remove_dir_all(&base);
    let report = Report {
        writers: WRITERS,
        record_bytes: RECORD_BYTES,
        event_bytes,
        maintenance_interval_s: a.interval.as_secs_f64(),
        aged_p99_over_fresh_p99: aged.p99_ms / fresh.p99_ms.max(1e-9),
        fresh,
        preload,
        aged,
        target_p99_ratio: 1.2,
        target_on_disk_over_live: 1.5,
        note: "each write acknowledged after fsync: a create, a transition, or a destroy \
               (destroying + destroyed in one write); maintenance = Agent::maintain with \
               berthd's default retention and automatic compaction, at the start of each run \
               and every maintenance_interval_s",
    };
    println!(
        "aged p99 / fresh p99 = {:.2} (target <= 1.2); aged on disk / live at the end = {:.2} (target <= 1.5)",
        report.aged_p99_over_fresh_p99, report.aged.final_on_disk_over_live
    );
    let json = out.join("aging.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)?;
    println!("wrote {}", json.display());
    Ok(())
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

fn print_run(name: &str, r: &Run) {
    println!(
        "{name}: {} writes in {:.1} s, {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
        r.transitions, r.seconds, r.transitions_per_sec, r.p50_ms, r.p99_ms, r.max_ms
    );
    println!(
        "  {:>5} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10} {:>10}",
        "tenth", "p50 ms", "p99 ms", "max ms", "writes/s", "len MiB", "disk MiB", "live MiB"
    );
    for (k, t) in r.per_tenth.iter().enumerate() {
        println!(
            "  {:>5} {:>8.2} {:>8.2} {:>8.1} {:>8.0} {:>10.0} {:>10.0} {:>10.0}",
            k + 1,
            t.p50_ms,
            t.p99_ms,
            t.max_ms,
            t.transitions_per_sec,
            mib(t.sizes.file_length_bytes),
            mib(t.sizes.on_disk_bytes),
            mib(t.sizes.live_bytes)
        );
    }
    for p in &r.maintenance {
        println!(
            "  maintenance at {:.1} s took {:.1} s{}",
            p.start_s,
            p.seconds,
            if p.compacted { " (compacted)" } else { "" }
        );
    }
    println!(
        "  final: length {:.0} MiB, on disk {:.0} MiB (du {:.0} MiB), live {:.0} MiB: {:.2}x live",
        mib(r.final_file_length_bytes),
        mib(r.final_on_disk_bytes),
        mib(r.final_du_bytes),
        mib(r.final_live_bytes),
        r.final_on_disk_over_live
    );
}
