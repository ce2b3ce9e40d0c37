//! `bench fleet --stages`: where an event's commit→delivery time goes. The agents write each
//! event's times (`BERTH_EXPORT_TRACE`, see berth-export's `trace.rs`); the consumer's delivery
//! times are joined to them by (host, seq), and each stage's distribution is printed, with the
//! mean of each stage over the slowest 1% (what the tail is made of).

use std::collections::HashMap;
use std::path::Path;

use crate::percentile;

/// One delivery the consumer saw: host, seq, delivered (wall-clock ns).
pub struct Delivery {
    pub host: String,
    pub seq: u64,
    pub delivered: u64,
}

/// The stages, in path order: (name, from-index, to-index) over the joined times
/// `[at, committed, read, published, acked, delivered]`.
const STAGES: &[(&str, usize, usize)] = &[
    ("at → commit durable (batch + fsync)", 0, 1),
    ("commit durable → export read", 1, 2),
    ("export read → publish handed to client", 2, 3),
    ("publish → JetStream ack taken", 3, 4),
    ("publish → consumer delivery", 3, 5),
    ("at → consumer delivery (total)", 0, 5),
];

fn read_traces(dir: &Path) -> HashMap<(String, u64), [u64; 5]> {
    let mut out = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Some(host) = path.file_stem().and_then(|s| s.to_str()).map(String::from) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for line in text.lines() {
            let v: Vec<u64> = line.split(' ').filter_map(|x| x.parse().ok()).collect();
            if let [seq, at, committed, read, published, acked] = v[..] {
                // The commit time read at the exporter's wake can be a later commit's.
                let committed = committed.max(at).min(read);
                out.insert((host.clone(), seq), [at, committed, read, published, acked]);
            }
        }
    }
    out
}

fn ms(from: u64, to: u64) -> f64 {
    (to as f64 - from as f64) / 1e6
}

/// Prints the stage breakdown of `deliveries` joined with the traces in `dir`.
pub fn report(dir: &Path, deliveries: &[Delivery]) {
    let traces = read_traces(dir);
    let mut rows: Vec<[u64; 6]> = deliveries
        .iter()
        .filter_map(|d| {
            let t = traces.get(&(d.host.clone(), d.seq))?;
            Some([t[0], t[1], t[2], t[3], t[4], d.delivered])
        })
        .collect();
    println!(
        "  stages ({} of {} deliveries traced; ms; negative: the consumer had it before the exporter took the ack):",
        rows.len(),
        deliveries.len()
    );
    if rows.is_empty() {
        return;
    }
    rows.sort_by_key(|r| r[5].saturating_sub(r[0]));
    let tail = &rows[rows.len() - rows.len().div_ceil(100)..];
    println!(
        "    {:<42} {:>8} {:>8} {:>8} {:>8}  {:>12}",
        "stage", "p50", "p90", "p99", "max", "slowest 1%"
    );
    for (name, a, b) in STAGES {
        let mut v: Vec<f64> = rows.iter().map(|r| ms(r[*a], r[*b])).collect();
        v.sort_by(|x, y| x.total_cmp(y));
        let tail_mean = tail.iter().map(|r| ms(r[*a], r[*b])).sum::<f64>() / tail.len() as f64;
        println!(
            "    {name:<42} {:>8.2} {:>8.2} {:>8.2} {:>8.2}  {:>12.2}",
            percentile(&v, 50.0),
            percentile(&v, 90.0),
            percentile(&v, 99.0),
            v.last().copied().unwrap_or(0.0),
            tail_mean
        );
    }
}

/// Jiffies (busy, idle) of all CPUs from `/proc/stat` (idle includes iowait).
/// The host's steal time so far (jiffies): CPU the hypervisor gave to other guests.
pub fn steal_jiffies() -> u64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("cpu "))
        .and_then(|l| l.split_whitespace().nth(8))
        .and_then(|x| x.parse().ok())
        .unwrap_or(0)
}

pub fn cpu_jiffies() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    let total: u64 = v.iter().take(8).sum();
    (total - idle, idle)
}

/// The host's idle share (%) between two [`cpu_jiffies`] readings.
pub fn idle_percent(before: (u64, u64), after: (u64, u64)) -> f64 {
    let busy = after.0.saturating_sub(before.0) as f64;
    let idle = after.1.saturating_sub(before.1) as f64;
    if busy + idle == 0.0 {
        return 0.0;
    }
    100.0 * idle / (busy + idle)
}
