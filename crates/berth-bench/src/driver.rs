//! `bench driver`: create→started latency of real `/bin/sleep` machines through the agent core
//! (store writes, shim launch, fork/exec, confirmation), and the memory each supervisor costs.

use std::path::Path;
use std::time::Instant;

use berth_agent::{Agent, AgentConfig};
use berth_machine::CreateRequest;
use berth_types::{MachineConfig, MachineId, OpKind, Source};
use serde::Serialize;

use crate::percentile;

const MACHINES: usize = 100;

#[derive(Serialize)]
struct Report {
    machines: usize,
    create_to_started_p50_ms: f64,
    create_to_started_p99_ms: f64,
    create_to_started_max_ms: f64,
    shim_rss_kib_max: u64,
    shim_rss_kib_mean: f64,
    shim_pss_kib_mean: f64,
}

/// VmRSS and Pss (proportional: shared pages split among the processes that map them) in KiB.
fn memory_kib(pid: i32) -> (u64, u64) {
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    (field(&status, "VmRSS:"), field(&rollup, "Pss:"))
}

pub fn run(out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let dir = out.join("driver-data");
    let _ = std::fs::remove_dir_all(&dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        let agent = Agent::start(AgentConfig::new(dir.clone())).await?;
        let mut lat = Vec::new();
        let mut ids = Vec::new();
        for i in 0..MACHINES {
            let id = MachineId::parse(&format!("bench-{i:04}"))?;
            let req = CreateRequest {
                id: Some(id.clone()),
                name: None,
                config: MachineConfig::command(["/bin/sleep", "1000"]),
                metadata: Default::default(),
                skip_start: false,
                source: Source::User,
            };
            let t = Instant::now();
            let m = agent.create(req).await?;
            lat.push(t.elapsed().as_secs_f64() * 1e3);
            if m.state != berth_types::State::Started {
                return Err(format!("{id} is {} after create", m.state).into());
            }
            ids.push(id);
        }
        let mut rss = Vec::new();
        let mut pss = Vec::new();
        for id in &ids {
            if let berth_driver::Probe::Running(s) = agent.driver().probe(id.as_str()) {
                let (r, p) = memory_kib(s.shim.pid);
                rss.push(r);
                pss.push(p);
            }
        }
        for id in &ids {
            agent
                .operate(id, OpKind::Destroy, Some("SIGKILL".into()), None)
                .await?;
        }
        lat.sort_by(|a, b| a.total_cmp(b));
        Ok::<_, Box<dyn std::error::Error>>(Report {
            machines: MACHINES,
            create_to_started_p50_ms: percentile(&lat, 50.0),
            create_to_started_p99_ms: percentile(&lat, 99.0),
            create_to_started_max_ms: lat.last().copied().unwrap_or(0.0),
            shim_rss_kib_max: rss.iter().copied().max().unwrap_or(0),
            shim_rss_kib_mean: rss.iter().sum::<u64>() as f64 / rss.len().max(1) as f64,
            shim_pss_kib_mean: pss.iter().sum::<u64>() as f64 / pss.len().max(1) as f64,
        })
    })?;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{MACHINES} machines of /bin/sleep, created and started one after another through the agent core:"
    );
    println!(
        "  create → started   p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
        report.create_to_started_p50_ms,
        report.create_to_started_p99_ms,
        report.create_to_started_max_ms
    );
    println!(
        "  supervisor (berth-shim) RSS   max {} KiB   mean {:.0} KiB   (PSS mean {:.0} KiB)",
        report.shim_rss_kib_max, report.shim_rss_kib_mean, report.shim_pss_kib_mean
    );
    let json = out.join("driver.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)?;
    println!("\nwrote {}", json.display());
    Ok(())
}
