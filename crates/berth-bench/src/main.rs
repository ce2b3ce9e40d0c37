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
    if !["compaction", "aging", "restart", "fleet", "checks"].contains(&suite.as_str())
        && let Some(other) = rest.first()
    {
        return Err(format!("unknown argument {other:?}").into());
    }
    std::fs::create_dir_all(&out)?;
    match suite.as_str() {
        "store" => store::run(&out),
        "driver" => driver::run(&out),
        "api" => api::run(&out),
        "compaction" => compaction::run(&out, &rest),
        "metrics" => metrics::run(&out),
        "aging" => aging::run(&out, &rest),
        "restart" => restart::run(&out, &rest),
        "fleet" => fleet::run(&out, &rest),
        "images" => images::run(&out),
        "checks" => checks::run(&out, &rest),
        _ => Err(format!(
            "unknown suite {suite:?}; available: store, driver, api, compaction, metrics, aging, restart, fleet, images, checks"
        )
        .into()),
    }
}

/// Percentile of sorted samples (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
