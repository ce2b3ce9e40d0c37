//! `bench compaction`: online compaction of a large, mostly-garbage database while one writer
//! commits continuously.
//!
//! Setup: a database of about `--size-mib` MiB (default 1024) of machine history, written through
//! the store (64 concurrent writers, events of a realistic few hundred bytes), then retention keeps only the newest events,
//! leaving at least 70% of the file as garbage. Then, with one writer committing transitions back
//! to back: a baseline window without compaction, and a window spanning the whole compaction.
//! Reported: compaction duration, the longest write stall (the slowest acknowledged write during
//! compaction), p99 write latency with and without compaction, the store's own longest pause, and
//! file size before and after beside the live bytes.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use berth_store::{RetentionPolicy, Store, StoreOptions, StoreStats, TransitionSpec};
use berth_types::{EventKind, MachineConfig, MachineId, MachineRecord, Source, State, Timestamp};
use serde::Serialize;

use crate::percentile;

const CYCLE: [State; 4] = [
    State::Starting,
    State::Started,
    State::Stopping,
    State::Stopped,
];
const BASELINE: Duration = Duration::from_secs(5);
/// A reason of a realistic size: events are a few hundred bytes, many to a page.
const REASON_BYTES: usize = 160;

#[derive(Serialize)]
struct Latencies {
    writes: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

#[derive(Serialize)]
struct Report {
    target_size_mib: u64,
    setup_seconds: f64,
    size_before_bytes: u64,
    live_bytes_before: u64,
    garbage_ratio_before: f64,
    size_after_bytes: u64,
    /// Disk space the file occupies (what `du` shows); the length above can include redb's
    /// sparse reservation.
    on_disk_before_bytes: u64,
    on_disk_after_bytes: u64,
    on_disk_after_over_live: f64,
    live_bytes_after: u64,
    size_after_over_live: f64,
    size_after_over_live_before: f64,
    compaction_seconds: f64,
    store_max_pause_ms: f64,
    longest_write_stall_ms: f64,
    /// The compaction phase the longest stall began in.
    longest_stall_phase: String,
    /// How long each phase took (ms), in order.
    phase_ms: Vec<(String, f64)>,
    without_compaction: Latencies,
    during_compaction: Latencies,
    catch_up_rounds: u32,
    keys_caught_up: u64,
}

fn latencies(mut v: Vec<f64>) -> Latencies {
    v.sort_by(f64::total_cmp);
    Latencies {
        writes: v.len(),
        p50_ms: percentile(&v, 50.0),
        p99_ms: percentile(&v, 99.0),
        max_ms: v.last().copied().unwrap_or(0.0),
    }
}

fn record(id: &MachineId) -> MachineRecord {
    MachineRecord::new(
        id.clone(),
        None,
        MachineConfig::command(["/bin/sleep", "1000"]),
        Default::default(),
        Timestamp::now(),
    )
}

/// Writes about `target` bytes of history (each event and its history row carry `reason`).
async fn bloat(store: &Store, target: u64) -> Result<u64, Box<dyn std::error::Error>> {
    let reason = "x".repeat(REASON_BYTES);
    let writers = 64u64;
    // Each transition stores its event twice (log and history index), and B-tree pages are
    // partly empty after inserts in machine order: about 1.5 KiB of file per transition.
    let per_writer = target / (writers * 1500) + 1;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let reason = reason.clone();
        let id = MachineId::parse(&format!("bloat{w}"))?;
        tasks.push(tokio::spawn(async move {
            let rec = record(&id);
            store
                .write(move |c| c.create_machine(rec, Source::User, "bench"))
                .await?;
            for to in CYCLE.iter().cycle().take(per_writer as usize) {
                let (id, to, reason) = (id.clone(), *to, reason.clone());
                store
                    .write(move |c| {
                        c.transition(
                            &id,
                            TransitionSpec::new(to, EventKind::Start, Source::Berth, reason),
                        )
                    })
                    .await?;
            }
            Ok::<(), berth_store::StoreError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(per_writer)
}

/// One writer taking a machine round the cycle until `stop`; returns each write's latency (ms).
/// Each write's start (since `epoch`) and latency, both in ms.
type Writes = Vec<(f64, f64)>;

fn writer(
    store: Store,
    stop: Arc<AtomicBool>,
    id: MachineId,
    epoch: Instant,
) -> tokio::task::JoinHandle<Writes> {
    tokio::spawn(async move {
        let rec = record(&id);
        let _ = store
            .write(move |c| c.create_machine(rec, Source::User, "bench"))
            .await;
        let mut out = Vec::new();
        for to in CYCLE.iter().cycle() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let (id, to) = (id.clone(), *to);
            let t = Instant::now();
            let r = store
                .write(move |c| {
                    c.transition(
                        &id,
                        TransitionSpec::new(to, EventKind::Start, Source::Berth, "bench"),
                    )
                })
                .await;
            if r.is_ok() {
                out.push((
                    t.duration_since(epoch).as_secs_f64() * 1000.0,
                    t.elapsed().as_secs_f64() * 1000.0,
                ));
            }
        }
        out
    })
}

pub fn run(out: &Path, args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let mut size_mib = 1024u64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--size-mib" => {
                size_mib = it.next().ok_or("--size-mib needs a number")?.parse()?;
            }
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = out.join("compaction-db");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("berth.redb");
    let report = rt.block_on(measure(&path, size_mib))?;
    let _ = std::fs::remove_dir_all(&dir);
    print(&report);
    std::fs::write(
        out.join("compaction.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    Ok(())
}

/// A file of about `size_mib` of history, most of it then removed by retention: its stats
/// and how long making it took.
async fn aged_file(
    store: &Store,
    size_mib: u64,
) -> Result<(StoreStats, f64), Box<dyn std::error::Error>> {
    let t = Instant::now();
    println!("writing about {size_mib} MiB of history...");
    let per_machine = bloat(store, size_mib << 20).await?;
    println!("retention: keeping the newest events only...");
    // Retention only trims rows the history index has materialized: let it catch up.
    for _ in 0..1000 {
        let st = store.stats()?;
        if st.history_seq + 1 >= st.next_seq {
            break;
        }
        store.write(|_| Ok(())).await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    store
        .retain(&RetentionPolicy {
            // Keep a fifth: at least 70% of the file becomes garbage.
            max_events_per_machine: per_machine / 5,
            max_events: per_machine * 64 / 5,
            batch_rows: 2048,
            pause: Duration::ZERO,
            ..RetentionPolicy::default()
        })
        .await?;
    let setup_seconds = t.elapsed().as_secs_f64();
    let before = store.stats()?;
    println!(
        "database: {:.0} MiB, live {:.0} MiB, garbage {:.0}% (setup {setup_seconds:.0} s)",
        before.file_size_bytes as f64 / 1048576.0,
        before.live_bytes as f64 / 1048576.0,
        before.garbage_ratio() * 100.0
    );
    Ok((before, setup_seconds))
}

/// Ages a file at `path`, then writes without and during a compaction of it.
async fn measure(path: &Path, size_mib: u64) -> Result<Report, Box<dyn std::error::Error>> {
    let epoch = Instant::now();
    let phases = Arc::new(std::sync::Mutex::new(Vec::<(f64, String)>::new()));
    let hook_phases = phases.clone();
    let store = Store::open(
        path,
        StoreOptions {
            compaction_hook: Some(Arc::new(move |phase: &str| {
                if let Ok(mut p) = hook_phases.lock() {
                    p.push((epoch.elapsed().as_secs_f64() * 1000.0, phase.to_owned()));
                }
            })),
            ..StoreOptions::default()
        },
    )?;
    let (before, setup_seconds) = aged_file(&store, size_mib).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(
        store.clone(),
        stop.clone(),
        MachineId::parse("baseline")?,
        epoch,
    );
    tokio::time::sleep(BASELINE).await;
    stop.store(true, Ordering::Relaxed);
    let baseline = w.await?;

    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(
        store.clone(),
        stop.clone(),
        MachineId::parse("during")?,
        epoch,
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let s = store.clone();
    let compaction = tokio::task::spawn_blocking(move || s.compact()).await??;
    let compaction_seconds = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let during = w.await?;
    let after = store.stats()?;
    let phases = phases.lock().map(|p| p.clone()).unwrap_or_default();
    let stall_phase = longest_stall_phase(&phases, &during);
    let phase_ms = phases
        .windows(2)
        .map(|w| (w[0].1.clone(), w[1].0 - w[0].0))
        .collect::<Vec<_>>();
    let during = latencies(during.into_iter().map(|(_, l)| l).collect());
    Ok(Report {
        target_size_mib: size_mib,
        setup_seconds,
        size_before_bytes: before.file_size_bytes,
        live_bytes_before: before.live_bytes,
        garbage_ratio_before: before.garbage_ratio(),
        size_after_bytes: after.file_size_bytes,
        on_disk_before_bytes: before.used_bytes(),
        on_disk_after_bytes: after.used_bytes(),
        on_disk_after_over_live: after.used_bytes() as f64 / after.live_bytes.max(1) as f64,
        live_bytes_after: after.live_bytes,
        size_after_over_live: after.file_size_bytes as f64 / after.live_bytes.max(1) as f64,
        size_after_over_live_before: after.file_size_bytes as f64 / before.live_bytes.max(1) as f64,
        compaction_seconds,
        store_max_pause_ms: compaction.max_pause_ms,
        longest_write_stall_ms: during.max_ms,
        longest_stall_phase: stall_phase,
        phase_ms,
        without_compaction: latencies(baseline.into_iter().map(|(_, l)| l).collect()),
        during_compaction: during,
        catch_up_rounds: compaction.catch_up_rounds,
        keys_caught_up: compaction.keys_caught_up,
    })
}

/// The phase the longest stall of `during` (start ms, latency ms) started in.
fn longest_stall_phase(phases: &[(f64, String)], during: &[(f64, f64)]) -> String {
    let worst = during
        .iter()
        .copied()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or_default();
    phases
        .iter()
        .rev()
        .find(|(at, _)| *at <= worst.0)
        .map(|(_, p)| p.clone())
        .unwrap_or_else(|| "before".into())
}

fn print(report: &Report) {
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "file before {:.0} MiB on disk, {:.0} MiB long (live {:.0} MiB, garbage {:.0}%)",
        mib(report.on_disk_before_bytes),
        mib(report.size_before_bytes),
        mib(report.live_bytes_before),
        report.garbage_ratio_before * 100.0,
    );
    println!(
        "file after  {:.0} MiB on disk ({:.2}x live), {:.0} MiB long ({:.2}x live; redb's sparse reservation) (live {:.0} MiB)",
        mib(report.on_disk_after_bytes),
        report.on_disk_after_over_live,
        mib(report.size_after_bytes),
        report.size_after_over_live,
        mib(report.live_bytes_after),
    );
    println!(
        "compaction {:.1} s, longest write stall {:.1} ms (store's swap pause {:.1} ms), {} catch-up rounds",
        report.compaction_seconds,
        report.longest_write_stall_ms,
        report.store_max_pause_ms,
        report.catch_up_rounds
    );
    println!(
        "longest stall began in phase {}; phases: {}",
        report.longest_stall_phase,
        report
            .phase_ms
            .iter()
            .map(|(p, ms)| format!("{p} {ms:.0} ms"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("                      writes   p50 ms   p99 ms   max ms");
    for (name, l) in [
        ("without compaction", &report.without_compaction),
        ("during compaction", &report.during_compaction),
    ] {
        println!(
            "{name:<20} {:>8} {:>8.2} {:>8.2} {:>8.2}",
            l.writes, l.p50_ms, l.p99_ms, l.max_ms
        );
    }
}
