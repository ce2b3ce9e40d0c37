//! `bench driver`: create→started latency through the agent core (store writes, shim launch,
//! confirmation) of real `/bin/sleep` process machines and of image machines (a busybox OCI
//! layout under the host's OCI runtime), beside a bare `runc run -d` of a copy of the bundle
//! berth wrote, in the same run and interleaved with the image machines; the memory each
//! supervisor costs; and the disk 100 machines of one image occupy (allocated blocks, each
//! inode once, never crossing into a mounted root), for busybox and for a realistically sized
//! image. Everything is destroyed at the end and the runtime is asked that nothing is left.
//!
//! For each image machine it also reads where the launch spent its time (the driver's phase
//! marks, on the monotonic clock the agent and the shim share) and reports each phase's p50 and
//! p99, with what the agent adds before and after (API, store, image resolution) as the rest.
//!
//! Flags: `--machines N` (default 100) machines of each kind; `--image-only` skips the process
//! machines and the sized image's disk figure (for iterating on the image machines' latency).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use berth_agent::{Agent, AgentConfig};
use berth_driver::oci::OciLaunch;
use berth_driver::oci::bundle::BundleDirs;
use berth_driver::oci::container::{mount_root, unmount_root};
use berth_machine::CreateRequest;
use berth_types::{MachineConfig, MachineId, OpKind, Source};
use serde::Serialize;

use crate::{busybox, percentile};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const MACHINES: usize = 100;

/// What to run.
struct Options {
    machines: usize,
    image_only: bool,
}

impl Options {
    fn parse(args: &[String]) -> Res<Self> {
        let mut o = Options {
            machines: MACHINES,
            image_only: false,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--machines" => {
                    o.machines = it
                        .next()
                        .and_then(|n| n.parse().ok())
                        .filter(|&n| n > 0)
                        .ok_or("--machines needs a positive number")?;
                }
                "--image-only" => o.image_only = true,
                other => return Err(format!("unknown argument {other:?}").into()),
            }
        }
        Ok(o)
    }
}

/// One phase of an image machine's launch over all the machines.
#[derive(Serialize)]
struct PhaseFigure {
    phase: String,
    p50_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
}

/// The agent's part of each create (everything outside the driver's launch), then each of the
/// driver's phases, in the order they happen.
fn phase_figures(samples: &[(f64, Vec<(String, std::time::Duration)>)]) -> Vec<PhaseFigure> {
    let mut order: Vec<String> = vec!["agent: API, store, image (create minus launch)".into()];
    let mut values: std::collections::HashMap<String, Vec<f64>> = Default::default();
    for (total, phases) in samples {
        let launch: f64 = phases.iter().map(|(_, d)| d.as_secs_f64() * 1e3).sum();
        values
            .entry(order[0].clone())
            .or_default()
            .push((total - launch).max(0.0));
        for (name, d) in phases {
            if !order.contains(name) {
                order.push(name.clone());
            }
            values
                .entry(name.clone())
                .or_default()
                .push(d.as_secs_f64() * 1e3);
        }
    }
    order
        .into_iter()
        .map(|phase| {
            let v = values.remove(&phase).unwrap_or_default();
            let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
            let (p50, p99, _) = stats(v);
            PhaseFigure {
                phase,
                p50_ms: p50,
                p99_ms: p99,
                mean_ms: mean,
            }
        })
        .collect()
}
/// The realistically sized image of the disk figure: busybox plus this many random bytes.
const PAYLOAD: usize = 64 << 20;
/// What each machine of that image writes into its own root.
const OWN_WRITE: usize = 64 << 10;

#[derive(Serialize)]
struct Report {
    // Process machines (`/bin/sleep` on the host).
    machines: usize,
    create_to_started_p50_ms: f64,
    create_to_started_p99_ms: f64,
    create_to_started_max_ms: f64,
    shim_rss_kib_max: u64,
    shim_rss_kib_mean: f64,
    shim_pss_kib_mean: f64,
    // Image machines (busybox `sleep` under the OCI runtime), through the same agent core.
    runtime: String,
    runtime_version: String,
    image_machines: usize,
    image_create_to_started_p50_ms: f64,
    image_create_to_started_p99_ms: f64,
    image_create_to_started_max_ms: f64,
    image_shim_rss_kib_max: u64,
    image_shim_rss_kib_mean: f64,
    image_shim_pss_kib_mean: f64,
    /// A bare `<runtime> run -d` of a copy of the bundle berth wrote (overlay mount included).
    bare_run_containers: usize,
    bare_run_p50_ms: f64,
    bare_run_p99_ms: f64,
    bare_run_max_ms: f64,
    image_to_bare_p99_ratio: f64,
    target_image_to_bare_p99_ratio: f64,
    /// Where an image machine's create→started goes.
    image_phases: Vec<PhaseFigure>,
    shim_rss_budget_kib: u64,
    disk: Vec<Disk>,
    load_average_start: String,
    load_average_end: String,
}

/// The disk that machines of one image occupy.
#[derive(Serialize)]
struct Disk {
    image: String,
    machines: usize,
    /// The image's unpacked root in the store (allocated blocks, each inode once).
    image_bytes: u64,
    /// What the machines' directories add: bundles (writable layer, overlay work dir,
    /// `config.json`) and berth's per-machine files (spec, shim state, log).
    machines_bytes: u64,
    /// Of `machines_bytes`, the bundles.
    bundles_bytes: u64,
    /// Of `machines_bytes`, the regular files the workloads wrote into their own roots.
    own_writes_bytes: u64,
    /// `(image + machines) / (image + own writes)`.
    ratio: f64,
    target_ratio: f64,
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

/// (p50, p99, max) of samples.
fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (
        percentile(&v, 50.0),
        percentile(&v, 99.0),
        v.last().copied().unwrap_or(0.0),
    )
}

/// (max, mean) of RSS and mean of PSS.
fn mem_stats(rss: &[u64], pss: &[u64]) -> (u64, f64, f64) {
    (
        rss.iter().copied().max().unwrap_or(0),
        rss.iter().sum::<u64>() as f64 / rss.len().max(1) as f64,
        pss.iter().sum::<u64>() as f64 / pss.len().max(1) as f64,
    )
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Allocated bytes under `root` (st_blocks × 512, like `du`): each inode once across `seen`,
/// never crossing into another file system (a machine's mounted root). Returns (all, the
/// regular files among them).
fn du(root: &Path, seen: &mut HashSet<(u64, u64)>) -> Res<(u64, u64)> {
    let top = std::fs::symlink_metadata(root)?;
    let dev = top.dev();
    let mut total = (0, 0);
    let mut stack = vec![(root.to_owned(), top)];
    while let Some((path, m)) = stack.pop() {
        if m.dev() != dev || !seen.insert((m.dev(), m.ino())) {
            continue;
        }
        let bytes = m.blocks() * 512;
        total.0 += bytes;
        if m.is_file() {
            total.1 += bytes;
        }
        if m.is_dir() {
            for e in std::fs::read_dir(&path)? {
                let e = e?;
                stack.push((e.path(), e.metadata()?));
            }
        }
    }
    Ok(total)
}

fn request(id: &MachineId, config: MachineConfig) -> CreateRequest {
    CreateRequest {
        id: Some(id.clone()),
        name: None,
        config,
        metadata: Default::default(),
        skip_start: false,
        source: Source::User,
    }
}

/// Creates a machine, returns how long create→started took (ms).
async fn create_timed(agent: &Agent, id: &MachineId, config: MachineConfig) -> Res<f64> {
    let t = Instant::now();
    let m = agent.create(request(id, config)).await?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if m.state != berth_types::State::Started {
        return Err(format!("{id} is {} after create", m.state).into());
    }
    Ok(ms)
}

fn shim_memory(agent: &Agent, ids: &[MachineId]) -> (Vec<u64>, Vec<u64>) {
    let mut rss = Vec::new();
    let mut pss = Vec::new();
    for id in ids {
        if let berth_driver::Probe::Running(s) = agent.driver().probe(id.as_str()) {
            let (r, p) = memory_kib(s.shim.pid);
            rss.push(r);
            pss.push(p);
        }
    }
    (rss, pss)
}

fn image_config(image: &str, cmd: &[&str]) -> MachineConfig {
    let mut c = MachineConfig::command(cmd.iter().copied());
    c.image = Some(image.to_owned());
    c
}

/// Bare runtime containers, each from its own copy of a bundle berth wrote; whatever was
/// started is deleted by id and unmounted by [`Bare::cleanup`].
struct Bare {
    runtime: PathBuf,
    lower: PathBuf,
    config: serde_json::Value,
    dir: PathBuf,
    live: Vec<(String, PathBuf)>,
}

impl Bare {
    /// Runs container `n`: mounts its root as the shim does (the image under a writable layer
    /// of its own) and runs `<runtime> run -d`, both timed; returns ms.
    fn run(&mut self, n: usize) -> Res<f64> {
        let cid = format!("berth-bench-bare-{}-{n:04}", std::process::id());
        let bundle = self.dir.join(&cid);
        BundleDirs::of_bundle(&bundle).create()?;
        let mut cfg = self.config.clone();
        cfg["linux"]["cgroupsPath"] = serde_json::json!(format!("/berth/{cid}"));
        cfg["hostname"] = serde_json::json!(format!("bare-{n:04}"));
        std::fs::write(bundle.join("config.json"), serde_json::to_vec(&cfg)?)?;
        let oci = OciLaunch {
            runtime: self.runtime.clone(),
            container_id: cid.clone(),
            bundle: bundle.clone(),
            lower: self.lower.clone(),
            memory_cgroup: None,
        };
        self.live.push((cid.clone(), bundle.clone()));
        let t = Instant::now();
        mount_root(&oci)?;
        // `run -d` hands its stdio to the container: a pipe here would stay open as long as
        // the workload runs. Errors go to the runtime's log.
        let log = bundle.join("runtime.log");
        let status = Command::new(&self.runtime)
            .arg("--log")
            .arg(&log)
            .args(["run", "-d", "--bundle"])
            .arg(&bundle)
            .arg(&cid)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if !status.success() {
            return Err(format!(
                "{} run {cid}: {}",
                self.runtime.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            )
            .into());
        }
        Ok(ms)
    }

    /// Deletes every container started (`delete -f ID`), unmounts and removes its bundle.
    fn cleanup(&mut self) -> Res<()> {
        for (cid, bundle) in self.live.drain(..) {
            let _ = Command::new(&self.runtime)
                .args(["delete", "-f", &cid])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            unmount_root(&bundle);
            if !runtime_forgot(&self.runtime, &cid)? {
                return Err(format!("{cid} is still known to the runtime after delete").into());
            }
            std::fs::remove_dir_all(&bundle)?;
        }
        Ok(())
    }
}

/// Whether `<runtime> state ID` says the container does not exist.
fn runtime_forgot(runtime: &Path, cid: &str) -> Res<bool> {
    let out = Command::new(runtime)
        .args(["state", cid])
        .stdin(Stdio::null())
        .output()?;
    Ok(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("does not exist"))
}

/// Everything the bench made, destroyed whatever happened.
struct Made {
    ids: Vec<MachineId>,
    bare: Option<Bare>,
}

async fn destroy_all(agent: &Agent, made: &mut Made) -> Res<()> {
    let mut first_err: Option<Box<dyn std::error::Error>> = None;
    for id in made.ids.drain(..) {
        if let Err(e) = agent
            .operate(&id, OpKind::Destroy, Some("SIGKILL".into()), None)
            .await
        {
            first_err.get_or_insert_with(|| format!("destroy {id}: {e}").into());
        }
    }
    if let Some(b) = made.bare.as_mut()
        && let Err(e) = b.cleanup()
    {
        first_err.get_or_insert(e);
    }
    first_err.map_or(Ok(()), Err)
}

/// Process machines: latency and shim memory.
async fn process_machines(
    agent: &Agent,
    made: &mut Made,
    count: usize,
) -> Res<(Vec<f64>, Vec<u64>, Vec<u64>)> {
    let mut lat = Vec::new();
    let mut ids = Vec::new();
    for i in 0..count {
        let id = MachineId::parse(&format!("bench-{i:04}"))?;
        made.ids.push(id.clone());
        lat.push(create_timed(agent, &id, MachineConfig::command(["/bin/sleep", "1000"])).await?);
        ids.push(id);
    }
    let (rss, pss) = shim_memory(agent, &ids);
    destroy_all(agent, made).await?;
    Ok((lat, rss, pss))
}

/// The image machines' part of the report.
struct ImageFigures {
    runtime: String,
    lat: Vec<f64>,
    bare: Vec<f64>,
    rss: Vec<u64>,
    pss: Vec<u64>,
    disk: Disk,
    /// Each machine's create→started (ms) and its launch's phases.
    phases: Vec<(f64, Vec<(String, std::time::Duration)>)>,
}

/// The image root (`lower`) and `config.json` berth wrote for machine `id`.
fn bundle_of(agent: &Agent, id: &MachineId) -> Res<(PathBuf, serde_json::Value)> {
    let dir = agent.driver().dir(id.as_str());
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(berth_driver::files::SPEC))?)?;
    let lower = spec["oci"]["lower"]
        .as_str()
        .ok_or("spec.json of an image machine names no image root")?;
    let config = serde_json::from_slice(&std::fs::read(dir.join("bundle/config.json"))?)?;
    Ok((PathBuf::from(lower), config))
}

/// The disk figure of `ids`, all machines of the image whose root is `lower`.
fn disk(agent: &Agent, name: &str, lower: &Path, ids: &[MachineId]) -> Res<Disk> {
    let mut seen = HashSet::new();
    let image_dir = lower.parent().ok_or("the image root has no parent")?;
    let (image_bytes, _) = du(image_dir, &mut seen)?;
    let (mut machines, mut bundles, mut own) = (0, 0, 0);
    for id in ids {
        let dir = agent.driver().dir(id.as_str());
        let mut inner = HashSet::new();
        let (b, _) = du(&dir.join("bundle"), &mut inner)?;
        let (_, w) = du(&dir.join("bundle/upper"), &mut HashSet::new())?;
        for key in inner {
            seen.insert(key);
        }
        let (rest, _) = du(&dir, &mut seen)?;
        machines += b + rest;
        bundles += b;
        own += w;
    }
    Ok(Disk {
        image: name.to_owned(),
        machines: ids.len(),
        image_bytes,
        machines_bytes: machines,
        bundles_bytes: bundles,
        own_writes_bytes: own,
        ratio: (image_bytes + machines) as f64 / (image_bytes + own).max(1) as f64,
        target_ratio: 1.1,
    })
}

/// Image machines of busybox, each followed or preceded (alternately) by a bare runtime
/// container of the same bundle.
async fn image_machines(
    agent: &Agent,
    layouts: &Path,
    made: &mut Made,
    count: usize,
) -> Res<ImageFigures> {
    let runtime = agent
        .driver()
        .oci_runtime()
        .ok_or("no OCI runtime works on this host")?
        .clone();
    let image = busybox::image(&layouts.join("busybox"), 0)?;
    // The first machine imports (unpacks) the image: not a figure. Its bundle is the one the
    // bare containers copy.
    let warm = MachineId::parse("bench-img-warm")?;
    made.ids.push(warm.clone());
    create_timed(agent, &warm, image_config(&image, &["/bin/sleep", "1000"])).await?;
    let (lower, config) = bundle_of(agent, &warm)?;
    std::fs::create_dir_all(layouts.join("bare"))?;
    made.bare = Some(Bare {
        runtime: runtime.path.clone(),
        lower: lower.clone(),
        config,
        dir: layouts.join("bare"),
        live: Vec::new(),
    });
    let mut lat = Vec::new();
    let mut bare = Vec::new();
    let mut ids = Vec::new();
    let mut phases = Vec::new();
    for i in 0..count {
        let id = MachineId::parse(&format!("bench-img-{i:04}"))?;
        made.ids.push(id.clone());
        let cfg = image_config(&image, &["/bin/sleep", "1000"]);
        let b = made.bare.as_mut().ok_or("no bare runtime")?;
        let ms = if i % 2 == 0 {
            bare.push(b.run(i)?);
            create_timed(agent, &id, cfg).await?
        } else {
            let ms = create_timed(agent, &id, cfg).await?;
            bare.push(b.run(i)?);
            ms
        };
        lat.push(ms);
        let launch = agent
            .driver()
            .launch_phases(id.as_str())
            .ok_or_else(|| format!("{id}: the driver kept no launch phases"))?;
        phases.push((ms, launch));
        ids.push(id);
    }
    let (rss, pss) = shim_memory(agent, &ids);
    let disk = disk(agent, "busybox", &lower, &ids)?;
    destroy_all(agent, made).await?;
    for id in &ids {
        let cid = berth_driver::oci::container_id(id.as_str());
        if !runtime_forgot(&runtime.path, &cid)? {
            return Err(format!("{cid} is still known to the runtime after destroy").into());
        }
    }
    Ok(ImageFigures {
        runtime: runtime.name,
        lat,
        bare,
        rss,
        pss,
        disk,
        phases,
    })
}

/// The disk figure of a realistically sized image whose machines each write `OWN_WRITE` bytes.
async fn sized_image_disk(
    agent: &Agent,
    layouts: &Path,
    made: &mut Made,
    count: usize,
) -> Res<Disk> {
    let image = busybox::image(&layouts.join("payload"), PAYLOAD)?;
    let script =
        format!("head -c {OWN_WRITE} /dev/urandom > /tmp/own && echo written; exec sleep 1000");
    let mut ids = Vec::new();
    for i in 0..count {
        let id = MachineId::parse(&format!("bench-big-{i:04}"))?;
        made.ids.push(id.clone());
        create_timed(
            agent,
            &id,
            image_config(&image, &["/bin/sh", "-c", &script]),
        )
        .await?;
        ids.push(id);
    }
    // Each wrote its file once its log says so.
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    for id in &ids {
        let log = agent.driver().logs_dir(id.as_str());
        loop {
            let text = std::fs::read_dir(&log)?
                .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
                .any(|b| String::from_utf8_lossy(&b).contains("written"));
            if text {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{id} did not write its file").into());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let (lower, _) = bundle_of(agent, &ids[0])?;
    let name = format!("busybox + {} MiB", PAYLOAD >> 20);
    let d = disk(agent, &name, &lower, &ids)?;
    destroy_all(agent, made).await?;
    Ok(d)
}

fn runtime_version(name: &str) -> String {
    Command::new(name)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_default()
}

pub fn run(out: &Path, args: &[String]) -> Res<()> {
    let opts = Options::parse(args)?;
    // Absolute: an `oci:` reference names its layout by an absolute path.
    let dir = std::path::absolute(out.join("driver-data"))?;
    let layouts = std::path::absolute(out.join("driver-layouts"))?;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&layouts);
    std::fs::create_dir_all(&layouts)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let load_start = loadavg();
    let result = rt.block_on(async {
        let agent = Agent::start(AgentConfig::new(dir.clone())).await?;
        let mut made = Made {
            ids: Vec::new(),
            bare: None,
        };
        let figures = async {
            let n = opts.machines;
            let p = if opts.image_only {
                (Vec::new(), Vec::new(), Vec::new())
            } else {
                process_machines(&agent, &mut made, n).await?
            };
            let i = image_machines(&agent, &layouts, &mut made, n).await?;
            let big = if opts.image_only {
                None
            } else {
                Some(sized_image_disk(&agent, &layouts, &mut made, n).await?)
            };
            Ok::<_, Box<dyn std::error::Error>>((p, i, big))
        }
        .await;
        // Whatever happened, nothing is left running.
        let cleaned = destroy_all(&agent, &mut made).await;
        let figures = figures?;
        cleaned?;
        Ok::<_, Box<dyn std::error::Error>>(figures)
    });
    let ((lat, rss, pss), img, big) = result?;
    // Nothing may still be mounted below the data dir before it is removed.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let data = dir.display().to_string();
    if mountinfo.contains(&data) || mountinfo.contains(&layouts.display().to_string()) {
        return Err(format!("a mount is left under {data}").into());
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&layouts);
    let lat_len = lat.len();
    let (p50, p99, max) = stats(lat);
    let (rss_max, rss_mean, pss_mean) = mem_stats(&rss, &pss);
    let (i50, i99, imax) = stats(img.lat.clone());
    let (b50, b99, bmax) = stats(img.bare.clone());
    let (irss_max, irss_mean, ipss_mean) = mem_stats(&img.rss, &img.pss);
    let report = Report {
        machines: lat_len,
        create_to_started_p50_ms: p50,
        create_to_started_p99_ms: p99,
        create_to_started_max_ms: max,
        shim_rss_kib_max: rss_max,
        shim_rss_kib_mean: rss_mean,
        shim_pss_kib_mean: pss_mean,
        runtime_version: runtime_version(&img.runtime),
        runtime: img.runtime,
        image_machines: img.lat.len(),
        image_create_to_started_p50_ms: i50,
        image_create_to_started_p99_ms: i99,
        image_create_to_started_max_ms: imax,
        image_shim_rss_kib_max: irss_max,
        image_shim_rss_kib_mean: irss_mean,
        image_shim_pss_kib_mean: ipss_mean,
        bare_run_containers: img.bare.len(),
        bare_run_p50_ms: b50,
        bare_run_p99_ms: b99,
        bare_run_max_ms: bmax,
        image_to_bare_p99_ratio: i99 / b99.max(f64::MIN_POSITIVE),
        target_image_to_bare_p99_ratio: 1.5,
        image_phases: phase_figures(&img.phases),
        shim_rss_budget_kib: 2048,
        disk: std::iter::once(img.disk).chain(big).collect(),
        load_average_start: load_start,
        load_average_end: loadavg(),
    };
    print(&report);
    let json = out.join("driver.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)?;
    println!("\nwrote {}", json.display());
    Ok(())
}

fn print(r: &Report) {
    println!(
        "{} machines of /bin/sleep, created and started one after another through the agent core:",
        r.machines
    );
    println!(
        "  create → started   p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
        r.create_to_started_p50_ms, r.create_to_started_p99_ms, r.create_to_started_max_ms
    );
    println!(
        "  supervisor (berth-shim) RSS   max {} KiB   mean {:.0} KiB   (PSS mean {:.0} KiB)",
        r.shim_rss_kib_max, r.shim_rss_kib_mean, r.shim_pss_kib_mean
    );
    println!(
        "\n{} image machines of busybox `sleep` under {} ({}), each beside a bare `{} run -d` of a copy of its bundle:",
        r.image_machines, r.runtime, r.runtime_version, r.runtime
    );
    println!(
        "  image machine create → started   p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
        r.image_create_to_started_p50_ms,
        r.image_create_to_started_p99_ms,
        r.image_create_to_started_max_ms
    );
    println!(
        "  bare {} run -d (+ overlay mount)   p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
        r.runtime, r.bare_run_p50_ms, r.bare_run_p99_ms, r.bare_run_max_ms
    );
    println!(
        "  p99 image / bare   {:.2}   (target <= {:.1})",
        r.image_to_bare_p99_ratio, r.target_image_to_bare_p99_ratio
    );
    println!("  where an image machine's create → started goes (ms):");
    for p in &r.image_phases {
        println!(
            "    {:<52} p50 {:>6.2}   p99 {:>6.2}   mean {:>6.2}",
            p.phase, p.p50_ms, p.p99_ms, p.mean_ms
        );
    }
    println!(
        "  supervisor (berth-shim) RSS   max {} KiB   mean {:.0} KiB   (PSS mean {:.0} KiB; budget {} KiB)",
        r.image_shim_rss_kib_max,
        r.image_shim_rss_kib_mean,
        r.image_shim_pss_kib_mean,
        r.shim_rss_budget_kib
    );
    let kib = |b: u64| b as f64 / 1024.0;
    for d in &r.disk {
        println!(
            "\ndisk of {} machines of {} (allocated blocks, each inode once):",
            d.machines, d.image
        );
        println!(
            "  image unpacked {:.0} KiB   machines add {:.0} KiB ({:.1} KiB each; bundles {:.0} KiB)   their own writes {:.0} KiB",
            kib(d.image_bytes),
            kib(d.machines_bytes),
            kib(d.machines_bytes) / d.machines.max(1) as f64,
            kib(d.bundles_bytes),
            kib(d.own_writes_bytes)
        );
        println!(
            "  (image + machines) / (image + own writes)   {:.3}   (target <= {:.1})",
            d.ratio, d.target_ratio
        );
    }
    println!(
        "\nload average at start {}, at end {} (2 cores, shared with other builds)",
        r.load_average_start, r.load_average_end
    );
}
