//! Choosing the OCI runtime: `runtime.oci` is `auto` (crun, then runc, on `PATH`), a name on
//! `PATH`, or a path. A candidate is used only once it has actually run a container on this
//! host: Debian's crun is on `PATH` on hybrid-cgroup hosts (cgroup v1 controllers plus an empty
//! cgroup2 at `/sys/fs/cgroup/unified`) where it refuses to run anything, so finding it is not
//! enough. The probe runs `/usr/bin/true` from the host's `/usr`, read-only, in a throwaway bundle.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Variables a service manager sets for berthd alone. A child that inherits them acts on them:
/// runc given `NOTIFY_SOCKET` passes the socket into the container and waits for the
/// container to say `READY=1`, so under systemd (`Type=notify`) every container start hung
/// until its timeout. berthd removes them from its environment at start; every runtime, shim
/// and exec berth-driver starts removes them again, for anyone else embedding this crate.
pub const SERVICE_MANAGER_ENV: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
];

/// A command for a program berth-driver starts (a runtime, a shim), without
/// [`SERVICE_MANAGER_ENV`].
pub fn child_command(path: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(path);
    for v in SERVICE_MANAGER_ENV {
        c.env_remove(v);
    }
    c
}

/// `runtime.oci` as configured.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RuntimeChoice {
    /// crun, then runc, whichever first works.
    #[default]
    Auto,
    /// This name on `PATH`, or this path.
    Named(String),
}

impl RuntimeChoice {
    /// Parses `auto` or anything else as a name or path.
    pub fn parse(s: &str) -> Self {
        match s.trim() {
            "" | "auto" => Self::Auto,
            other => Self::Named(other.to_owned()),
        }
    }
}

/// A runtime that has been seen to work here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciRuntime {
    /// Its executable.
    pub path: PathBuf,
    /// Its file name (`runc`, `crun`).
    pub name: String,
}

fn on_path(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Which limits the runtime can enforce on this host, from the cgroup hierarchies it would use:
/// cgroup v1 controllers mounted under `/sys/fs/cgroup/<name>`, or a cgroup2 root offering them.
/// Returns (memory, cpu, pids) and the memory cgroup of a container at `/berth/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuntimeLimits {
    /// `resources.memory_mb`.
    pub memory: bool,
    /// `resources.cpus`.
    pub cpu: bool,
    /// `resources.pids`.
    pub pids: bool,
    /// The directory under which containers' memory cgroups are (`…/berth`).
    pub memory_root: Option<PathBuf>,
}

impl RuntimeLimits {
    /// Looks at `/sys/fs/cgroup`.
    pub fn detect() -> Self {
        let base = Path::new("/sys/fs/cgroup");
        if let Ok(ctrl) = std::fs::read_to_string(base.join("cgroup.controllers")) {
            let has = |c: &str| ctrl.split_whitespace().any(|x| x == c);
            return Self {
                memory: has("memory"),
                cpu: has("cpu"),
                pids: has("pids"),
                memory_root: has("memory").then(|| base.join("berth")),
            };
        }
        let v1 = |c: &str| base.join(c).join("tasks").exists();
        Self {
            memory: v1("memory"),
            cpu: v1("cpu"),
            pids: v1("pids"),
            memory_root: v1("memory").then(|| base.join("memory").join("berth")),
        }
    }
}

/// Finds the runtime to use under `scratch` (a directory for the probe's bundle), or says why
/// there is none: each candidate and what it answered.
pub fn detect(choice: &RuntimeChoice, scratch: &Path) -> Result<OciRuntime, String> {
    let candidates: Vec<String> = match choice {
        RuntimeChoice::Auto => vec!["crun".into(), "runc".into()],
        RuntimeChoice::Named(n) => vec![n.clone()],
    };
    let mut why = Vec::new();
    for name in candidates {
        let Some(path) = on_path(&name) else {
            why.push(format!("{name}: not found"));
            continue;
        };
        match probe_patiently(&path, scratch) {
            Ok(()) => {
                let name = path
                    .file_name()
                    .map_or(name.clone(), |n| n.to_string_lossy().into_owned());
                return Ok(OciRuntime { path, name });
            }
            Err(e) => why.push(format!("{}: {e}", path.display())),
        }
    }
    Err(why.join("; "))
}

/// How many times a candidate is tried before it is called broken: one failure can be
/// something else on the host using the runtime at that moment, and a host that wrongly
/// decides it has no runtime refuses every image machine until it restarts.
const PROBE_ATTEMPTS: u32 = 3;

/// Probes until one attempt works, at most [`PROBE_ATTEMPTS`] times; the error is the last
/// attempt's (a runtime that cannot work here fails the same way each time).
fn probe_patiently(runtime: &Path, scratch: &Path) -> Result<(), String> {
    let mut attempt = 1;
    loop {
        match probe(runtime, scratch) {
            Ok(()) => return Ok(()),
            Err(e) if attempt >= PROBE_ATTEMPTS => return Err(e),
            Err(e) => {
                tracing::debug!(runtime = %runtime.display(), attempt, error = %e, "an OCI runtime probe failed; trying again");
                attempt += 1;
                std::thread::sleep(Duration::from_millis(100 * u64::from(attempt)));
            }
        }
    }
}

/// A name no other probe uses, on this host or in this process: concurrent probes that shared
/// a container id or a cgroup (two agents starting at once, or tests) broke each other's
/// cgroups ("resulting devices cgroup doesn't precisely match target", "cgroup.procs: no such
/// file or directory"), and the loser concluded the host had no runtime.
fn probe_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "berth-probe-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn probe_config(name: &str) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["/usr/bin/true"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                    "env": ["PATH=/usr/bin"], "noNewPrivileges": true},
        "root": {"path": "rootfs", "readonly": true},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]}
        ],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}],
                  "cgroupsPath": format!("/berth-probe/{name}")}
    })
}

/// Runs a trivial container with `runtime`; Ok when it exited 0.
fn probe(runtime: &Path, scratch: &Path) -> Result<(), String> {
    let id = probe_name();
    let bundle = scratch.join(&id);
    let _ = std::fs::remove_dir_all(&bundle);
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs).map_err(|e| format!("create {}: {e}", rootfs.display()))?;
    for (link, target) in [
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        let _ = std::os::unix::fs::symlink(target, rootfs.join(link));
    }
    let config = serde_json::to_vec(&probe_config(&id)).map_err(|e| e.to_string())?;
    std::fs::write(bundle.join("config.json"), config).map_err(|e| e.to_string())?;
    let out = run_bounded(
        child_command(runtime)
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(&id),
        Duration::from_secs(10),
    );
    let _ = child_command(runtime)
        .args(["delete", "--force", &id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(&bundle);
    out
}

fn run_bounded(cmd: &mut std::process::Command, limit: Duration) -> Result<(), String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + limit;
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) if status.success() => return Ok(()),
            Some(status) => {
                let mut err = String::new();
                if let Some(mut s) = child.stderr.take() {
                    use std::io::Read as _;
                    let _ = s.read_to_string(&mut err);
                }
                let last = err.lines().last().unwrap_or("").trim().to_owned();
                return Err(format!("a probe container failed ({status}): {last}"));
            }
            None if std::time::Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("a probe container did not finish within {limit:?}"));
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_missing_runtime_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = detect(&RuntimeChoice::Named("no-such-runtime".into()), dir.path()).unwrap_err();
        assert!(e.contains("no-such-runtime: not found"), "{e}");
    }

    #[test]
    fn runc_works_here_when_installed() {
        let dir = tempfile::tempdir().unwrap();
        let rt = detect(&RuntimeChoice::Named("runc".into()), dir.path()).unwrap();
        assert_eq!(rt.name, "runc");
    }

    /// Seen failing before probes had names of their own: concurrent probes shared a container
    /// id and a cgroup, and some concluded that runc did not work.
    #[test]
    fn concurrent_probes_do_not_break_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let runc = on_path("runc").expect("runc is installed by cargo xtask test");
        let results: Vec<Result<(), String>> = std::thread::scope(|s| {
            let probes: Vec<_> = (0..6)
                .map(|_| s.spawn(|| (0..5).try_for_each(|_| probe(&runc, dir.path()))))
                .collect();
            probes.into_iter().map(|p| p.join().unwrap()).collect()
        });
        let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(failed.is_empty(), "probes failed: {failed:?}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "probe bundles left behind: {left:?}");
    }
}
