//! `bench api`: a real release `berthd` on loopback. Create+start of `/bin/sleep` machines over
//! HTTP from 16 concurrent clients (the create returns once the machine is started), twice:
//! - *saturated*: each client sends its next create as soon as the last one answered, which gives
//!   the rate the host sustains; its latency is mostly queueing (16 in flight / rate);
//! - *paced*: the 16 clients together offer 200 creates/s on a fixed schedule, and each latency
//!   counts from the create's scheduled time (so a slow answer delays and penalises the ones
//!   after it: no coordinated omission): create→started latency at the target rate.
//!
//! Then GET /v1/machines/{id} throughput over keep-alive connections; berthd's RSS when idle.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_client::{Client, Endpoint};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Serialize;

use crate::percentile;

const CLIENTS: usize = 16;
const MACHINES: usize = 400;
const GET_SECONDS: u64 = 3;
/// The paced phase's offered rate, all clients together.
const PACED_RATE: f64 = 200.0;
const PACED_SECONDS: f64 = 4.0;

#[derive(Serialize)]
struct Report {
    create_clients: usize,
    machines: usize,
    creates_per_sec: f64,
    create_to_started_p50_ms: f64,
    create_to_started_p99_ms: f64,
    paced_offered_per_sec: f64,
    paced_machines: usize,
    paced_achieved_per_sec: f64,
    paced_create_to_started_p50_ms: f64,
    paced_create_to_started_p99_ms: f64,
    paced_create_to_started_max_ms: f64,
    get_connections: usize,
    gets_per_sec: f64,
    get_p99_ms: f64,
    idle_rss_mib: f64,
    rss_with_machines_mib: f64,
    machines_running: usize,
}

/// Creates `total` started `/bin/sleep` machines from [`CLIENTS`] clients: back to back, or with
/// `rate` creates/s offered on a fixed schedule (client w sends create i, i = w, w + CLIENTS, ...,
/// at t0 + i / rate). Each latency counts from when its create was due. Returns the sorted
/// latencies (ms), the machine ids and the phase's duration (s).
async fn create_phase(
    client: &Client,
    total: usize,
    rate: Option<f64>,
) -> Result<(Vec<f64>, Vec<String>, f64), String> {
    let t0 =
        tokio::time::Instant::now() + Duration::from_millis(if rate.is_some() { 50 } else { 0 });
    let mut tasks = Vec::new();
    for w in 0..CLIENTS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut ids = Vec::new();
            for i in (w..total).step_by(CLIENTS) {
                let due = match rate {
                    Some(rate) => {
                        let due = t0 + Duration::from_secs_f64(i as f64 / rate);
                        tokio::time::sleep_until(due).await;
                        due
                    }
                    None => tokio::time::Instant::now(),
                };
                let req = berth_api_types::CreateMachine {
                    name: None,
                    config: berth_types::MachineConfig::command(["/bin/sleep", "1000"]),
                    metadata: Default::default(),
                    skip_start: false,
                };
                let m = client.create(&req, None).await.map_err(|e| e.to_string())?;
                lat.push(due.elapsed().as_secs_f64() * 1e3);
                if m.state != berth_types::State::Started {
                    return Err(format!("{} is {}", m.id, m.state));
                }
                ids.push(m.id.to_string());
            }
            Ok::<_, String>((lat, ids))
        }));
    }
    let mut lat = Vec::new();
    let mut ids = Vec::new();
    for t in tasks {
        let (l, i) = t.await.map_err(|e| e.to_string())??;
        lat.extend(l);
        ids.extend(i);
    }
    let secs = t0.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok((lat, ids, secs))
}

pub fn run(out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let dir = out.join("api-data");
    let (mut child, port) = start_berthd(&dir)?;
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss = crate::rss_mib(child.id());
    let token = std::fs::read_to_string(dir.join("token"))?
        .trim()
        .to_owned();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let client = Client::new(Endpoint::Tcp {
            addr: format!("127.0.0.1:{port}"),
            token: Some(token.clone()),
        });
        // Create + start: saturated, then paced.
        let (lat, mut ids, create_secs) = create_phase(&client, MACHINES, None).await?;
        let paced_total = (PACED_RATE * PACED_SECONDS) as usize;
        let (paced_lat, paced_ids, paced_secs) =
            create_phase(&client, paced_total, Some(PACED_RATE)).await?;
        ids.extend(paced_ids);

        // GETs over keep-alive connections.
        let get_lat = get_phase(port, &token, &ids).await?;
        let rss_with = crate::rss_mib(child.id());
        for id in &ids {
            let _ = client.destroy(id, true).await;
        }
        Ok::<_, String>(Report {
            create_clients: CLIENTS,
            machines: lat.len(),
            creates_per_sec: lat.len() as f64 / create_secs,
            create_to_started_p50_ms: percentile(&lat, 50.0),
            create_to_started_p99_ms: percentile(&lat, 99.0),
            paced_offered_per_sec: PACED_RATE,
            paced_machines: paced_lat.len(),
            paced_achieved_per_sec: paced_lat.len() as f64 / paced_secs,
            paced_create_to_started_p50_ms: percentile(&paced_lat, 50.0),
            paced_create_to_started_p99_ms: percentile(&paced_lat, 99.0),
            paced_create_to_started_max_ms: paced_lat.last().copied().unwrap_or(0.0),
            get_connections: CLIENTS,
            gets_per_sec: get_lat.len() as f64 / GET_SECONDS as f64,
            get_p99_ms: percentile(&get_lat, 99.0),
            idle_rss_mib: idle_rss,
            rss_with_machines_mib: rss_with,
            machines_running: ids.len(),
        })
    });
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let report = result?;
    print(&report);
    let json = out.join("api.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)?;
    println!("\nwrote {}", json.display());
    Ok(())
}

/// A release berthd on a fresh `dir`, listening on a free loopback port, once it answers.
fn start_berthd(dir: &Path) -> Result<(std::process::Child, u16), Box<dyn std::error::Error>> {
    let exe_dir = std::env::current_exe()?
        .parent()
        .ok_or("no exe dir")?
        .to_owned();
    let berthd = exe_dir.join("berthd");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = dir.join("berth.toml");
    std::fs::write(
        &config,
        "[api]\nmax_inflight_mutations = 64\n[limits]\nmax_machines = 10000\n",
    )?;
    let mut child = Command::new(&berthd)
        .args([
            "--data-dir",
            dir.to_str().ok_or("path")?,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--config",
            config.to_str().ok_or("path")?,
        ])
        .env("BERTH_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("run {}: {e}", berthd.display()))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() || !dir.join("token").exists()
    {
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("berthd did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((child, port))
}

/// GETs of machines over keep-alive connections for `GET_SECONDS`: every latency, sorted.
async fn get_phase(port: u16, token: &str, ids: &[String]) -> Result<Vec<f64>, String> {
    let end = Instant::now() + Duration::from_secs(GET_SECONDS);
    let mut tasks = Vec::new();
    for w in 0..CLIENTS {
        let path = format!("/v1/machines/{}", ids[w % ids.len()]);
        let token = token.to_owned();
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|e| e.to_string())?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let mut lat = Vec::new();
            while Instant::now() < end {
                let req = hyper::Request::get(&path)
                    .header("host", "berthd")
                    .header("authorization", format!("Bearer {token}"))
                    .body(Full::new(Bytes::new()))
                    .map_err(|e| e.to_string())?;
                let t = Instant::now();
                let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
                let ok = resp.status().is_success();
                resp.into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?;
                if !ok {
                    return Err("GET failed".to_owned());
                }
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            Ok::<_, String>(lat)
        }));
    }
    let mut get_lat = Vec::new();
    for t in tasks {
        get_lat.extend(t.await.map_err(|e| e.to_string())??);
    }
    get_lat.sort_by(|a, b| a.total_cmp(b));
    Ok(get_lat)
}

fn print(report: &Report) {
    println!("berthd (release) on loopback TCP with a bearer token:");
    println!(
        "  saturated: create+start of {} /bin/sleep machines, {} clients back to back: {:.0} machines/s; create→started p50 {:.1} ms, p99 {:.1} ms",
        report.machines,
        report.create_clients,
        report.creates_per_sec,
        report.create_to_started_p50_ms,
        report.create_to_started_p99_ms
    );
    println!(
        "  paced: {:.0} creates/s offered by {} clients on a fixed schedule, {} machines ({:.0}/s achieved); create→started from the scheduled time p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        report.paced_offered_per_sec,
        report.create_clients,
        report.paced_machines,
        report.paced_achieved_per_sec,
        report.paced_create_to_started_p50_ms,
        report.paced_create_to_started_p99_ms,
        report.paced_create_to_started_max_ms
    );
    println!(
        "  GET /v1/machines/{{id}}, {} keep-alive connections: {:.0} requests/s, p99 {:.2} ms",
        report.get_connections, report.gets_per_sec, report.get_p99_ms
    );
    println!(
        "  berthd RSS: idle {:.1} MiB; with {} machines {:.1} MiB",
        report.idle_rss_mib, report.machines_running, report.rss_with_machines_mib
    );
}
