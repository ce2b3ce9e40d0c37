//! The shim's side of an image machine: it mounts the machine's root (the image under its
//! writable layer), becomes a child subreaper, runs `<runtime> run --detach` with the log pipe
//! as the container's stdout and stderr, so that the container's init, once the runtime exits,
//! is the shim's own child. One runtime exec per launch: a stale container of the same id is
//! deleted first only when the bundle's mark says the runtime may hold one. From there it
//! supervises the init like any workload (pidfd, waitpid: the real exit code or signal), reads
//! the OOM count from the container's memory cgroup, and leaves nothing behind:
//! `<runtime> delete --force`, unmount.
#![allow(unsafe_code)]

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::Mode;
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;

use super::OciLaunch;
use super::bundle::BundleDirs;
use crate::files::{self, Spec};
use crate::logfmt::Stream;
use crate::logs::RecordLog;
use crate::proc::{self, ProcessId};
use crate::shim::{Started, drain, fail_launch, pump_until_exit, record_exit, record_started};
use crate::timing::Marks;

/// Mounts the machine's root: the image read-only under the machine's writable layer.
pub fn mount_root(oci: &OciLaunch) -> Result<(), String> {
    let dirs = BundleDirs::of_bundle(&oci.bundle);
    unmount_root(&oci.bundle);
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        oci.lower.display(),
        dirs.upper.display(),
        dirs.work.display()
    );
    nix::mount::mount(
        Some("overlay"),
        &dirs.rootfs,
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(|e| format!("mount the machine's root (overlay {opts}): {e}"))
}

/// Unmounts the machine's root if it is mounted (detached: nothing holds it after the
/// container is gone). Returns whether something was unmounted.
pub fn unmount_root(bundle: &Path) -> bool {
    nix::mount::umount2(&bundle.join("rootfs"), MntFlags::MNT_DETACH).is_ok()
}

/// Runs `<runtime> delete --force` for the container; quiet when it does not exist. Whether
/// the runtime said it succeeded (it does for a container it does not know).
pub fn delete(runtime: &Path, container_id: &str) -> bool {
    super::runtime::child_command(runtime)
        .args(["delete", "--force", container_id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The last error the runtime logged (its `--log` file, JSON lines).
fn runtime_error(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .rev()
        .find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["level"] == "error").then(|| v["msg"].as_str().unwrap_or("").to_owned())
        })
        .unwrap_or_else(|| text.lines().last().unwrap_or("no message").to_owned())
}

fn runtime_cmd(oci: &OciLaunch, verb: &str) -> Command {
    let mut c = super::runtime::child_command(&oci.runtime);
    c.arg("--log")
        .arg(oci.bundle.join("runtime.log"))
        .args(["--log-format", "json", verb]);
    c
}

/// `run --detach`: creates and starts the container in one runtime exec, with `out` and `err`
/// as the container's stdout and stderr; returns the init's pid. When the runtime exits, the
/// init (its child) is reparented to the shim, the child subreaper.
fn run_detached(oci: &OciLaunch, out: &OwnedFd, err: &OwnedFd) -> Result<i32, String> {
    let pid_file = oci.bundle.join("init.pid");
    let _ = std::fs::remove_file(&pid_file);
    let dup = |fd: &OwnedFd| {
        fd.try_clone()
            .map(Stdio::from)
            .map_err(|e| format!("dup: {e}"))
    };
    let status = runtime_cmd(oci, "run")
        .args(["--detach", "--bundle"])
        .arg(&oci.bundle)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(&oci.container_id)
        .stdin(Stdio::null())
        .stdout(dup(out)?)
        .stderr(dup(err)?)
        .status()
        .map_err(|e| format!("run {} run: {e}", oci.runtime.display()))?;
    if !status.success() {
        return Err(format!(
            "{} run failed: {}",
            oci.runtime.display(),
            runtime_error(&oci.bundle.join("runtime.log"))
        ));
    }
    let text = std::fs::read_to_string(&pid_file).map_err(|e| format!("read init.pid: {e}"))?;
    text.trim()
        .parse()
        .map_err(|_| format!("init.pid holds {text:?}, not a pid"))
}

/// The mark that the runtime may hold a container of this bundle: made before the runtime is
/// asked to run one, removed once it has deleted it. The runtime's state is on a tmpfs
/// (`/run/runc`, `/run/crun`) and this mark on disk, so a container the runtime knows always
/// has its mark (a reboot can leave a mark with no container, never the reverse), and a
/// launch without the mark needs no `delete` of a stale container first.
const CONTAINER_MARK: &str = "container";

/// Deletes the container if the runtime may hold one of this bundle, then forgets the mark.
fn delete_marked(oci: &OciLaunch) -> Result<(), String> {
    let mark = oci.bundle.join(CONTAINER_MARK);
    match std::fs::symlink_metadata(&mark) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("stat {}: {e}", mark.display())),
        Ok(_) => {}
    }
    if !delete(&oci.runtime, &oci.container_id) {
        return Err(format!(
            "{} delete --force {} failed",
            oci.runtime.display(),
            oci.container_id
        ));
    }
    std::fs::remove_file(&mark).map_err(|e| format!("remove {}: {e}", mark.display()))
}

/// Marks the bundle (see [`CONTAINER_MARK`]) before the runtime is asked to run a container.
fn mark_container(oci: &OciLaunch) -> Result<(), String> {
    let mark = oci.bundle.join(CONTAINER_MARK);
    std::fs::File::create(&mark)
        .map(drop)
        .map_err(|e| format!("create {}: {e}", mark.display()))
}

/// Reaps whatever orphans were reparented to the shim (the runtime's intermediate processes),
/// never `keep`: each exited child is looked at first without being reaped, and the search
/// stops at `keep`, whose exit status is the supervision loop's to collect.
fn reap_others(keep: Pid) {
    let peek = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    loop {
        match waitid(Id::All, peek | WaitPidFlag::__WALL) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(s) if s.pid() == Some(keep) => return,
            Ok(s) => match s.pid() {
                Some(other) => {
                    let _ = waitpid(other, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL));
                }
                None => return,
            },
        }
    }
}

/// Whether the container's memory cgroup recorded an OOM kill (cgroup v1 `memory.oom_control`,
/// or v2 `memory.events`).
fn oom_killed(cg: Option<&Path>) -> bool {
    let Some(cg) = cg else { return false };
    let count = |file: &str| {
        std::fs::read_to_string(cg.join(file)).ok().and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
    };
    count("memory.oom_control")
        .or_else(|| count("memory.events"))
        .is_some_and(|n| n > 0)
}

fn set_subreaper() -> Result<(), String> {
    // SAFETY: prctl with integer arguments only changes this process's attributes.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(format!(
            "prctl(PR_SET_CHILD_SUBREAPER): {}",
            std::io::Error::last_os_error()
        ))
    }
}

fn fail(
    dir: &Path,
    spec: &Spec,
    oci: &OciLaunch,
    ready: OwnedFd,
    msg: String,
) -> Result<i32, String> {
    let _ = delete_marked(oci);
    unmount_root(&oci.bundle);
    fail_launch(dir, spec, ready, msg)
}

/// Creates and starts the container; its init's identity once it runs.
fn launch(
    oci: &OciLaunch,
    out: &OwnedFd,
    err: &OwnedFd,
    marks: &mut Marks,
) -> Result<ProcessId, String> {
    set_subreaper()?;
    mount_root(oci)?;
    marks.mark("shim: root mounted");
    // A container an earlier shim left (killed before it deleted it) holds the id.
    delete_marked(oci)?;
    mark_container(oci)?;
    marks.mark("shim: stale container checked");
    // The runtime makes missing mount points (`/mnt/in` for a volume at that path) under its
    // umask: berthd's 077 would leave `/mnt` root-only and the volume out of an image user's
    // reach. The usual 022, for the run only (the shim's own files stay private).
    let old = nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
    let pid = run_detached(oci, out, err);
    nix::sys::stat::umask(old);
    let pid = pid?;
    marks.mark("runtime: run --detach");
    // The init may have exited already: it is the shim's child (a zombie until reaped), so
    // its identity can still be read, and its exit is left for the supervision loop.
    reap_others(Pid::from_raw(pid));
    ProcessId::of(pid).ok_or_else(|| "the container's init vanished before it started".into())
}

/// The shim's supervision of an image machine (see the module's header).
pub fn run(
    dir: &Path,
    spec: &Spec,
    oci: &OciLaunch,
    ready: OwnedFd,
    mut marks: Marks,
) -> Result<i32, String> {
    let mut log = match RecordLog::open(&dir.join(files::LOGS), spec.log_max_bytes, spec.log_keep) {
        Ok(l) => l,
        Err(e) => return fail(dir, spec, oci, ready, format!("open log: {e}")),
    };
    let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let boot_id = match proc::try_boot_id() {
        Ok(b) => b,
        Err(e) => return fail(dir, spec, oci, ready, format!("reading the boot id: {e}")),
    };
    marks.mark("shim: log, pipes, boot id");
    let workload = match launch(oci, &out_w, &err_w, &mut marks) {
        Ok(w) => w,
        Err(e) => return fail(dir, spec, oci, ready, e),
    };
    drop(out_w);
    drop(err_w);
    let child = Pid::from_raw(workload.pid);
    let started = Started {
        workload,
        boot_id,
        marks,
    };
    record_started(dir, spec, started, ready, &mut log)?;
    let outputs = [(&out_r, Stream::Stdout), (&err_r, Stream::Stderr)];
    let status = pump_until_exit(child, &outputs, &mut log)?;
    drain(&outputs, &mut log);
    let oom = oom_killed(oci.memory_cgroup.as_deref());
    let _ = delete_marked(oci);
    unmount_root(&oci.bundle);
    reap_others(child);
    record_exit(dir, spec, &mut log, status, oom)
}
