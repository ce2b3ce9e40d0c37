//! `bench store`: transitions per second and acknowledgement latency at 1, 16 and 64 concurrent
//! writers, each transition a real state-machine transition through the store API (record update,
//! history append, event append, fsync before the ack), beside the disk's raw 4 KiB write+fsync.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use berth_store::{Store, StoreOptions, TransitionSpec};
use berth_types::{EventKind, MachineConfig, MachineId, MachineRecord, Source, State, Timestamp};
use serde::Serialize;

use crate::percentile;

const WRITERS: [usize; 3] = [1, 16, 64];
const DURATION: Duration = Duration::from_secs(4);
const WARMUP: Duration = Duration::from_millis(500);
const CYCLE: [State; 4] = [
    State::Starting,
    State::Started,
    State::Stopping,
    State::Stopped,
];

#[derive(Serialize)]
struct Row {
    writers: usize,
    transitions_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    transitions: usize,
    commits_per_sec: f64,
    mean_batch: f64,
}

#[derive(Serialize)]
struct Report {
    raw_fsync_per_sec: f64,
    raw_fdatasync_per_sec: f64,
    raw_append_fsync_per_sec: f64,
    results: Vec<Row>,
    seconds_per_run: f64,
    note: &'static str,
}

/// 4 KiB writes, each followed by a sync, for `n` iterations; returns syncs per second.
fn raw(dir: &Path, name: &str, n: usize, append: bool, data_only: bool) -> std::io::Result<f64> {
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    let block = [0x5au8; 4096];
    if !append {
        // Preallocate and make the allocation durable: the loop then measures data writes only.
        for _ in 0..256 {
            f.write_all(&block)?;
        }
        f.sync_all()?;
    }
    let start = Instant::now();
    for i in 0..n {
        if append {
            f.write_all(&block)?;
        } else {
            f.write_all_at(&block, (i as u64 % 256) * 4096)?;
        }
        if data_only {
            f.sync_data()?
        } else {
            f.sync_all()?
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    Ok(rate)
}

fn machine(i: usize) -> MachineRecord {
    let mut config = MachineConfig::command(["/bin/sleep", "infinity"]);
    config.env.insert("APP".into(), "bench".into());
    MachineRecord::new(
        MachineId::parse(&format!("bench-{i:05}")).unwrap_or_else(|_| MachineId::generate()),
        None,
        config,
        Default::default(),
        Timestamp::now(),
    )
}

async fn run_writers(dir: &Path, writers: usize) -> Result<Row, Box<dyn std::error::Error>> {
    let path = dir.join(format!("store-{writers}.redb"));
    let _ = std::fs::remove_file(&path);
    let store = Store::open(&path, StoreOptions::default())?;
    for i in 0..writers {
        let rec = machine(i);
        store
            .write(move |w| w.create_machine(rec, Source::User, "bench"))
            .await?;
    }
    let commits_before = commit_count(&store)?;
    let start = Instant::now();
    let measure_from = start + WARMUP;
    let end = measure_from + DURATION;
    let mut tasks = Vec::new();
    for i in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let id = machine(i).id;
            let mut lat = Vec::with_capacity(100_000);
            let mut k = 0usize;
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let to = CYCLE[k % CYCLE.len()];
                k += 1;
                let id = id.clone();
                let t = Instant::now();
                store
                    .write(move |w| {
                        w.transition(
                            &id,
                            TransitionSpec::new(to, EventKind::Start, Source::User, "bench"),
                        )
                    })
                    .await?;
                if t >= measure_from && Instant::now() <= end {
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
            Ok::<_, berth_store::StoreError>(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let after = commit_count(&store)?;
    let commits = (after.0 - commits_before.0, after.1 - commits_before.1);
    let report = store.check()?;
    if !report.is_ok() {
        return Err(format!("store check failed after the run: {:?}", report.problems).into());
    }
    drop(store);
    std::fs::remove_file(&path)?;
    all.sort_by(|a, b| a.total_cmp(b));
    let secs = DURATION.as_secs_f64();
    let n = all.len();
    Ok(Row {
        writers,
        transitions_per_sec: n as f64 / secs,
        p50_ms: percentile(&all, 50.0),
        p99_ms: percentile(&all, 99.0),
        max_ms: all.last().copied().unwrap_or(0.0),
        transitions: n,
        commits_per_sec: commits.0 as f64 / (secs + WARMUP.as_secs_f64()),
        mean_batch: if commits.0 == 0 {
            0.0
        } else {
            commits.1 as f64 / commits.0 as f64
        },
    })
}

/// (commits, writes) so far, from the store's own counters.
fn commit_count(store: &Store) -> Result<(u64, u64), berth_store::StoreError> {
    let s = store.writer_stats();
    Ok((s.commits, s.writes))
}

pub fn run(out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let dir = out.join("store-data");
    std::fs::create_dir_all(&dir)?;
    let raw_fsync = raw(&dir, "raw", 4000, false, false)?;
    let raw_fdatasync = raw(&dir, "raw", 4000, false, true)?;
    let raw_append = raw(&dir, "raw", 4000, true, false)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut results = Vec::new();
    for w in WRITERS {
        results.push(rt.block_on(run_writers(&dir, w))?);
    }
    let _ = std::fs::remove_dir(&dir);

    println!("raw 4 KiB write+fsync (preallocated file): {raw_fsync:>9.0} /s");
    println!("raw 4 KiB write+fdatasync (preallocated):  {raw_fdatasync:>9.0} /s");
    println!("raw 4 KiB append+fsync:                    {raw_append:>9.0} /s");
    println!();
    println!(
        "{:>7} {:>14} {:>8} {:>8} {:>8} {:>10} {:>10}",
        "writers", "transitions/s", "p50 ms", "p99 ms", "max ms", "commits/s", "batch"
    );
    for r in &results {
        println!(
            "{:>7} {:>14.0} {:>8.3} {:>8.3} {:>8.2} {:>10.0} {:>10.1}",
            r.writers,
            r.transitions_per_sec,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.commits_per_sec,
            r.mean_batch
        );
    }
    let report = Report {
        raw_fsync_per_sec: raw_fsync,
        raw_fdatasync_per_sec: raw_fdatasync,
        raw_append_fsync_per_sec: raw_append,
        results,
        seconds_per_run: DURATION.as_secs_f64(),
        note: "one transition = record update + history append + event append in the group commit, \
               Durability::Immediate, acknowledged after fsync",
    };
    let json = out.join("store.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)?;
    println!("\nwrote {}", json.display());
    Ok(())
}
