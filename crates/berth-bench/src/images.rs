//! `bench images`: pull and unpack of a ~100 MiB image from a real local registry (Debian's
//! `docker-registry` on loopback, the image built with umoci and pushed with skopeo), beside
//! `skopeo copy` of the same image to a directory in the same run; the second pull of an image
//! (what a second machine of it costs); and 20 concurrent pulls of one new image, which must
//! download it once. `--mib N` sets the big image's size, `--runs R` how many times each of the
//! two is measured (alternately; the medians are compared).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_image::{ImageStore, Puller, RegistryConfig};
use serde::Serialize;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(Serialize)]
struct Report {
    image_bytes: u64,
    runs: usize,
    skopeo_copy_ms: f64,
    pull_unpack_ms: f64,
    ratio_to_skopeo: f64,
    target_ratio: f64,
    second_pull_ms: f64,
    second_pull_downloaded_bytes: u64,
    concurrent_pulls: usize,
    concurrent_image_bytes: u64,
    concurrent_downloaded_bytes: u64,
    concurrent_unpacks: usize,
    concurrent_wall_ms: f64,
}

/// The registry, killed by pid when dropped.
struct Registry {
    child: Child,
    port: u16,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_registry(dir: &Path) -> Res<Registry> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = format!(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
        dir.join("storage").display()
    );
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("config.yml"), config)?;
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let reg = Registry { child, port };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("the registry did not listen".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(reg)
}

fn run_ok(cmd: &mut Command) -> Res<()> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

/// An image of `files` files of `each` random bytes (one layer each), pushed as `repo:v1`.
fn push_image(dir: &Path, reg: &Registry, repo: &str, files: usize, each: usize) -> Res<()> {
    let layout = dir.join(repo);
    let l = layout.display().to_string();
    run_ok(Command::new("umoci").args(["init", "--layout", &l]))?;
    run_ok(Command::new("umoci").args(["new", "--image", &format!("{l}:v1")]))?;
    for i in 0..files {
        let content = dir.join(format!("{repo}-content-{i}"));
        std::fs::create_dir_all(&content)?;
        std::fs::write(
            content.join(format!("data{i}")),
            crate::noise(each, i as u64),
        )?;
        let c = content.display().to_string();
        run_ok(Command::new("umoci").args(["insert", "--image", &format!("{l}:v1"), &c, "/"]))?;
    }
    run_ok(Command::new("skopeo").args([
        "--insecure-policy",
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{l}:v1"),
        &format!("docker://127.0.0.1:{}/{repo}:v1", reg.port),
    ]))
}

fn puller(dir: &Path, reg: &Registry) -> Res<Puller> {
    let store = Arc::new(ImageStore::open(dir)?);
    let cfg = RegistryConfig {
        insecure_registries: vec![format!("127.0.0.1:{}", reg.port)],
        credentials_file: None,
    };
    Ok(Puller::new(store, cfg))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What to measure: `--mib N` (the big image's size, 4 layers; default 100) and `--runs R`
/// (skopeo and berth alternately, R times each, the medians compared; default 3).
struct Args {
    mib: usize,
    runs: usize,
}

fn args(rest: &[String]) -> Res<Args> {
    let mut a = Args { mib: 100, runs: 3 };
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a number"))?
            .parse::<usize>()
            .map_err(|e| format!("{flag}: {e}"))?;
        match flag.as_str() {
            "--mib" if value >= 4 => a.mib = value,
            "--runs" if value >= 1 => a.runs = value,
            _ => return Err(format!("unknown argument {flag} {value}").into()),
        }
    }
    Ok(a)
}

pub fn run(out: &Path, rest: &[String]) -> Res<()> {
    let a = args(rest)?;
    let tmp = std::env::temp_dir().join(format!("berth-bench-images-{}", std::process::id()));
    let result = bench(&tmp, out, &a);
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// `skopeo copy` of `reference` to a new directory.
fn skopeo_copy(reference: &str, dir: &Path) -> Res<Duration> {
    let started = Instant::now();
    run_ok(Command::new("skopeo").args([
        "--insecure-policy",
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{reference}"),
        &format!("dir:{}", dir.display()),
    ]))?;
    Ok(started.elapsed())
}

fn bench(tmp: &Path, out: &Path, a: &Args) -> Res<()> {
    let reg = start_registry(&tmp.join("registry"))?;
    push_image(tmp, &reg, "big", 4, (a.mib << 20) / 4)?;
    push_image(tmp, &reg, "shared", 2, 10 << 20)?;
    let big = format!("127.0.0.1:{}/big:v1", reg.port);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (mut skopeo, mut pulls, mut first) = (Vec::new(), Vec::new(), None);
    for i in 0..a.runs {
        skopeo.push(skopeo_copy(&big, &tmp.join(format!("skopeo-dir-{i}")))?);
        let _ = std::fs::remove_dir_all(tmp.join(format!("skopeo-dir-{i}")));
        let store = tmp.join(format!("store-{i}"));
        let p = puller(&store, &reg)?;
        let pulled = rt.block_on(p.pull(&big))?;
        pulls.push(pulled.elapsed);
        if i + 1 < a.runs {
            let _ = std::fs::remove_dir_all(&store);
        } else {
            first = Some((p, pulled));
        }
    }
    let (p, first) = first.ok_or("no run")?;
    let (skopeo, pull) = (median(skopeo), median(pulls));
    let second = rt.block_on(p.pull(&big))?;
    let (wall, results) = concurrent(&rt, &puller(&tmp.join("store2"), &reg)?, &reg, 20)?;
    let report = Report {
        image_bytes: first.downloaded_bytes,
        runs: a.runs,
        skopeo_copy_ms: ms(skopeo),
        pull_unpack_ms: ms(pull),
        ratio_to_skopeo: pull.as_secs_f64() / skopeo.as_secs_f64(),
        target_ratio: 1.2,
        second_pull_ms: ms(second.elapsed),
        second_pull_downloaded_bytes: second.downloaded_bytes,
        concurrent_pulls: results.len(),
        concurrent_image_bytes: results.iter().map(|r| r.0).max().unwrap_or(0),
        concurrent_downloaded_bytes: results.iter().map(|r| r.0).sum(),
        concurrent_unpacks: results.iter().filter(|r| r.1).count(),
        concurrent_wall_ms: ms(wall),
    };
    print(&report);
    std::fs::write(out.join("images.json"), serde_json::to_vec_pretty(&report)?)?;
    Ok(())
}

/// `n` pulls of one image not yet in the store, all at once: (downloaded bytes, unpacked) each.
fn concurrent(
    rt: &tokio::runtime::Runtime,
    p: &Puller,
    reg: &Registry,
    n: usize,
) -> Res<(Duration, Vec<(u64, bool)>)> {
    let reference = format!("127.0.0.1:{}/shared:v1", reg.port);
    let started = Instant::now();
    let results = rt.block_on(async {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let (p, r) = (p.clone(), reference.clone());
                tokio::spawn(async move { p.pull(&r).await })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await);
        }
        out
    });
    let wall = started.elapsed();
    let mut out = Vec::new();
    for r in results {
        let pull = r??;
        out.push((pull.downloaded_bytes, pull.unpacked));
    }
    Ok((wall, out))
}

fn print(r: &Report) {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "image of {:.1} MiB (4 layers of random bytes) from docker-registry on loopback, medians of {} runs:",
        mib(r.image_bytes),
        r.runs
    );
    println!(
        "  skopeo copy to a directory   {:>8.0} ms\n  berth pull + unpack          {:>8.0} ms  ({:.2}x skopeo; target <= {:.1}x)",
        r.skopeo_copy_ms, r.pull_unpack_ms, r.ratio_to_skopeo, r.target_ratio
    );
    println!(
        "  second pull (a second machine of the image): {:.1} ms, {} bytes downloaded",
        r.second_pull_ms, r.second_pull_downloaded_bytes
    );
    println!(
        "{} concurrent pulls of one new {:.1} MiB image: {:.1} MiB downloaded in all, {} unpack(s), {:.0} ms",
        r.concurrent_pulls,
        mib(r.concurrent_image_bytes),
        mib(r.concurrent_downloaded_bytes),
        r.concurrent_unpacks,
        r.concurrent_wall_ms
    );
}
