//! cgroup v2: one cgroup per machine, for grouping, killing the whole tree, accounting and, where
//! the controller is enabled, limits.
//!
//! Three situations are handled: a cgroup2 hierarchy with controllers (a pure v2 host), one
//! without (hybrid hosts such as the dev machines: cgroup2 at `/sys/fs/cgroup/unified`, memory
//! and cpu bound to v1), and no usable cgroup2 at all (no mount, or no permission), where berth
//! falls back to process groups and refuses every limit.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use berth_types::ResourceLimits;
use serde::Serialize;

/// What this host can enforce and measure; reported by `GET /v1/host`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// Machines get their own cgroup.
    pub cgroup: bool,
    /// The parent cgroup berth uses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_root: Option<String>,
    /// `cgroup.kill` kills a machine's whole tree at once.
    pub cgroup_kill: bool,
    /// `cpu.stat` gives per-machine CPU time.
    pub cpu_accounting: bool,
    /// `memory.current` gives per-machine memory.
    pub memory_accounting: bool,
    /// `resources.memory_mb` can be enforced.
    pub memory_limit: bool,
    /// `resources.cpus` can be enforced.
    pub cpu_limit: bool,
    /// `resources.pids` can be enforced.
    pub pids_limit: bool,
    /// Why cgroups are not used, when they are not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_unavailable: Option<String>,
    /// The OCI runtime image machines run under (`runc`, `crun`), when one works here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oci_runtime: Option<String>,
    /// Why image machines cannot run here, when they cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oci_unavailable: Option<String>,
    /// `resources.memory_mb` can be enforced on image machines (by the runtime).
    pub image_memory_limit: bool,
    /// `resources.cpus` can be enforced on image machines.
    pub image_cpu_limit: bool,
    /// `resources.pids` can be enforced on image machines.
    pub image_pids_limit: bool,
}

impl Capabilities {
    /// Refuses a limit the host cannot enforce, naming it: never silently ignored.
    pub fn check(&self, r: &ResourceLimits) -> Result<(), String> {
        let why = || {
            self.cgroup_unavailable.clone().unwrap_or_else(|| {
                "its controller is not enabled in this host's cgroup v2 hierarchy".into()
            })
        };
        if r.memory_mb.is_some() && !self.memory_limit {
            return Err(format!(
                "config.resources.memory_mb: this host cannot enforce a memory limit ({})",
                why()
            ));
        }
        if r.cpus.is_some() && !self.cpu_limit {
            return Err(format!(
                "config.resources.cpus: this host cannot enforce a CPU limit ({})",
                why()
            ));
        }
        if r.pids.is_some() && !self.pids_limit {
            return Err(format!(
                "config.resources.pids: this host cannot enforce a pids limit ({})",
                why()
            ));
        }
        Ok(())
    }
}

impl Capabilities {
    /// Refuses what an image machine cannot get here: no working runtime, or a limit the
    /// runtime cannot enforce on this host's cgroups.
    pub fn check_image(&self, r: &ResourceLimits) -> Result<(), String> {
        if let Some(why) = &self.oci_unavailable {
            return Err(format!(
                "image: this host has no working OCI runtime to run image machines ({why})"
            ));
        }
        let refuse = |field: &str, what: &str| {
            Err(format!(
                "config.resources.{field}: this host cannot enforce a {what} limit on image machines (no such cgroup controller for the OCI runtime)"
            ))
        };
        if r.memory_mb.is_some() && !self.image_memory_limit {
            return refuse("memory_mb", "memory");
        }
        if r.cpus.is_some() && !self.image_cpu_limit {
            return refuse("cpus", "CPU");
        }
        if r.pids.is_some() && !self.image_pids_limit {
            return refuse("pids", "pids");
        }
        Ok(())
    }
}

/// Where a machine's cgroup lives and what it can do.
#[derive(Debug, Clone)]
pub struct Cgroups {
    root: PathBuf,
    controllers: BTreeSet<String>,
    kill: bool,
}

/// Finds the cgroup2 mount point in a mountinfo text.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // Fields: ... mount_point ... - fstype source options
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        if fstype == "cgroup2" {
            left.split_whitespace().nth(4).map(PathBuf::from)
        } else {
            None
        }
    })
}

impl Cgroups {
    /// Sets up `root` (created if needed) under the cgroup2 hierarchy mounted at `mount`, enabling
    /// every controller berth uses that the hierarchy offers.
    pub fn setup(mount: &Path, root: &Path) -> Result<Self, String> {
        let available = std::fs::read_to_string(mount.join("cgroup.controllers"))
            .map_err(|e| format!("{} is not a cgroup2 hierarchy: {e}", mount.display()))?;
        std::fs::create_dir_all(root)
            .map_err(|e| format!("cannot create cgroup {}: {e}", root.display()))?;
        let wanted: Vec<&str> = available
            .split_whitespace()
            .filter(|c| ["memory", "cpu", "pids"].contains(c))
            .collect();
        // Controllers must be enabled in every ancestor's subtree_control down to berth's root.
        let mut enabled: BTreeSet<String> = wanted.iter().map(|s| s.to_string()).collect();
        let mut chain = vec![root.to_owned()];
        let mut p = root.parent();
        while let Some(dir) = p {
            if !dir.starts_with(mount) {
                break;
            }
            chain.push(dir.to_owned());
            p = dir.parent();
        }
        for dir in chain.iter().rev() {
            for c in enabled.clone() {
                if std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}")).is_err() {
                    enabled.remove(&c);
                }
            }
        }
        let kill = root.join("cgroup.kill").exists() || {
            // The root of a hierarchy has no cgroup.kill; a child shows whether the kernel has it.
            let probe = root.join(".probe");
            let ok = std::fs::create_dir(&probe).is_ok() && probe.join("cgroup.kill").exists();
            let _ = std::fs::remove_dir(&probe);
            ok
        };
        Ok(Self {
            root: root.to_owned(),
            controllers: enabled,
            kill,
        })
    }

    /// Detects the host's cgroup2 hierarchy and sets up `<mount>/<name>`.
    pub fn detect(name: &str) -> Result<Self, String> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("reading mountinfo: {e}"))?;
        let mount = cgroup2_mount(&mountinfo).ok_or("no cgroup2 hierarchy is mounted")?;
        Self::setup(&mount, &mount.join(name))
    }

    /// What this setup can enforce and measure.
    pub fn capabilities(&self) -> Capabilities {
        let has = |c: &str| self.controllers.contains(c);
        Capabilities {
            cgroup: true,
            cgroup_root: Some(self.root.display().to_string()),
            cgroup_kill: self.kill,
            cpu_accounting: true,
            memory_accounting: has("memory"),
            memory_limit: has("memory"),
            cpu_limit: has("cpu"),
            pids_limit: has("pids"),
            cgroup_unavailable: None,
            ..Capabilities::default()
        }
    }

    /// A machine's cgroup directory.
    pub fn path(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Creates a machine's cgroup and applies its limits.
    pub fn create(&self, id: &str, limits: &ResourceLimits) -> std::io::Result<PathBuf> {
        let dir = self.path(id);
        std::fs::create_dir_all(&dir)?;
        if let Some(mb) = limits.memory_mb {
            std::fs::write(dir.join("memory.max"), (mb * 1024 * 1024).to_string())?;
        }
        if let Some(cpus) = limits.cpus {
            let period = 100_000u64;
            let quota = ((cpus * period as f64).round() as u64).max(1000);
            std::fs::write(dir.join("cpu.max"), format!("{quota} {period}"))?;
        }
        if let Some(pids) = limits.pids {
            std::fs::write(dir.join("pids.max"), pids.to_string())?;
        }
        Ok(dir)
    }

    /// Kills every process in a machine's cgroup.
    pub fn kill(&self, id: &str) -> std::io::Result<()> {
        kill_dir(&self.path(id), self.kill)
    }

    /// Removes a machine's cgroup once it is empty (kills what is left first).
    pub fn remove(&self, id: &str) -> std::io::Result<()> {
        let dir = self.path(id);
        if !dir.exists() {
            return Ok(());
        }
        for attempt in 0..50 {
            match std::fs::remove_dir(&dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(_) if attempt < 49 => {
                    let _ = self.kill(id);
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// CPU time (µs) and memory (bytes, where accounted) of a machine.
    pub fn usage(&self, id: &str) -> Option<(u64, Option<u64>)> {
        let dir = self.path(id);
        let cpu = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
        let usec = cpu
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse().ok())?;
        let mem = std::fs::read_to_string(dir.join("memory.current"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        Some((usec, mem))
    }
}

/// Kills every process of a cgroup directory: `cgroup.kill` when the kernel has it, otherwise
/// SIGKILL to each pid listed until none is left.
pub fn kill_dir(dir: &Path, has_kill: bool) -> std::io::Result<()> {
    if has_kill {
        match std::fs::write(dir.join("cgroup.kill"), "1") {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(_) => {}
        }
    }
    for _ in 0..10 {
        let procs = match std::fs::read_to_string(dir.join("cgroup.procs")) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let pids: Vec<i32> = procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.is_empty() {
            return Ok(());
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Ok(())
}

/// Whether the kernel OOM-killed something in the cgroup at `dir`.
pub fn oom_killed(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("memory.events"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse::<u64>().ok())
        })
        .is_some_and(|n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let mi = "30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n\
                  31 25 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            cgroup2_mount(mi),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount("31 25 0:27 / /x rw - cgroup cgroup rw\n"),
            None
        );
    }

    /// A pure cgroup v2 host cannot be had here; this lays out its interface files in a temporary
    /// directory and checks that controllers are enabled down the chain and limits written.
    #[test]
    fn pure_v2_layout_enables_controllers_and_writes_limits() {
        let mount = tempfile::tempdir().unwrap();
        std::fs::write(
            mount.path().join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        )
        .unwrap();
        let cg = Cgroups::setup(mount.path(), &mount.path().join("berth")).unwrap();
        let caps = cg.capabilities();
        assert!(caps.memory_limit && caps.cpu_limit && caps.pids_limit && caps.memory_accounting);
        let limits = ResourceLimits {
            memory_mb: Some(64),
            cpus: Some(0.5),
            pids: Some(100),
        };
        assert_eq!(caps.check(&limits), Ok(()));
        let dir = cg.create("m1", &limits).unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("memory.max"), (64u64 << 20).to_string());
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("pids.max"), "100");
        let enabled =
            std::fs::read_to_string(mount.path().join("berth/cgroup.subtree_control")).unwrap();
        assert!(enabled.starts_with('+'), "{enabled}");
    }

    #[test]
    fn limits_without_controllers_are_refused_by_name() {
        let caps = Capabilities {
            cgroup: true,
            cpu_accounting: true,
            ..Capabilities::default()
        };
        let err = caps
            .check(&ResourceLimits {
                memory_mb: Some(64),
                ..ResourceLimits::default()
            })
            .unwrap_err();
        assert!(err.starts_with("config.resources.memory_mb"), "{err}");
        let err = caps
            .check(&ResourceLimits {
                cpus: Some(1.0),
                ..ResourceLimits::default()
            })
            .unwrap_err();
        assert!(err.starts_with("config.resources.cpus"), "{err}");
        assert_eq!(caps.check(&ResourceLimits::default()), Ok(()));
    }
}
