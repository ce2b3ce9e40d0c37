//! `berth-bench SUITE [--out DIR]`: the benchmarks behind `cargo xtask bench SUITE`.
//!
//! Each suite prints a table and writes `DIR/SUITE.json` (default `target/bench`).
#![allow(clippy::print_stdout)]

mod aging;
mod api;
mod busybox;
mod checks;
mod compaction;
mod driver;
mod fleet;
mod images;
mod metrics;
mod restart;
mod store;

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let suite = args.next().unwrap_or_default();
    let mut out = PathBuf::from("target/bench");
    let mut rest = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => {
                out = args
                    .next()
                    .map(PathBuf::from)
                    .ok_or("--out needs a directory")?
            }
            _ => rest.push(a),
        }
    }
    if ![
        "compaction",
        "aging",
        "restart",
        "fleet",
        "checks",
        "driver",
        "images",
    ]
    .contains(&suite.as_str())
        && let Some(other) = rest.first()
    {
        return Err(format!("unknown argument {other:?}").into());
    }
    std::fs::create_dir_all(&out)?;
    match suite.as_str() {
        "store" => store::run(&out),
        "driver" => driver::run(&out, &rest),
        "api" => api::run(&out),
        "compaction" => compaction::run(&out, &rest),
        "metrics" => metrics::run(&out),
        "aging" => aging::run(&out, &rest),
        "restart" => restart::run(&out, &rest),
        "fleet" => fleet::run(&out, &rest),
        "images" => images::run(&out, &rest),
        "checks" => checks::run(&out, &rest),
        _ => Err(format!(
            "unknown suite {suite:?}; available: store, driver, api, compaction, metrics, aging, restart, fleet, images, checks"
        )
        .into()),
    }
}

/// Resident memory of `pid` in MiB (`VmRSS`), 0 when it cannot be read.
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")?
                    .split_whitespace()
                    .next()?
                    .parse::<f64>()
                    .ok()
            })
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// User + system CPU time of `pid` itself (not its reaped children), in ms, from
/// `/proc/<pid>/stat`; 0 when it cannot be read.
pub fn cpu_ms(pid: u32) -> f64 {
    stat_cpu_ms(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
}

/// User + system CPU time, in ms, of a `/proc/.../stat` line (0 when it cannot be parsed).
pub fn stat_cpu_ms(stat: &str) -> f64 {
    // Fields after the command (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: f64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<f64>().ok())
        .sum();
    ticks * 1000.0 / berth_driver::usage::clock_ticks() as f64
}

/// `n` bytes no compressor or deduplication shrinks (xorshift from `seed`).
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ seed;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Percentile of sorted samples (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
