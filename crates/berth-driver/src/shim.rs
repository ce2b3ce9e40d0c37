//! `berth-shim`: the per-machine supervisor that outlives the agent.
//!
//! `berth-shim <machine dir>` is run by the agent for each start. It forks: the first process (the
//! *launcher*) waits only until the workload is confirmed running (or failed to start), prints one
//! JSON line with the outcome and exits, so the agent never has the long-lived shim as a child.
//! The second (the *shim*) starts its own session, detaches from the agent's stdio, forks the
//! workload into a session and process group of its own (and its cgroup), and then:
//!
//! - copies the workload's stdout and stderr (two pipes) into the rotating log as timestamped
//!   records (see `logfmt`), with a mark where each run starts and ends;
//! - reaps it, kills whatever it left in its process group and cgroup;
//! - writes `exit.json` (code or signal, OOM, time) atomically and durably, and exits.
//!
//! The agent watches the shim through a pidfd and reads `exit.json` when it exits, whether the
//! agent was running at that moment or learns of it after a restart. The shim is single-threaded
//! and allocates nothing after fork in the child, and uses a few hundred KiB of memory.
#![allow(unsafe_code)]
// The launcher's one line on stdout is its protocol with the agent.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use crate::files::{self, ExitRecord, ShimState, Spec};
use crate::logfmt::Stream;
use crate::logs::RecordLog;
use crate::proc::{self, ProcessId};
use crate::timing::Marks;

/// What the launcher prints for the agent.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct LaunchResult {
    /// The workload's pid, when it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// Why it did not start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When each of the shim's steps of a successful launch ended (see [`crate::timing`]).
    #[serde(default, skip_serializing_if = "Marks::is_empty")]
    pub marks: Marks,
}

pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Entry point of the `berth-shim` binary. Returns the process exit code.
pub fn main(args: &[String]) -> i32 {
    let Some(dir) = args.get(1).map(PathBuf::from) else {
        eprintln!("usage: berth-shim <machine dir>");
        return 2;
    };
    let mut marks = Marks::default();
    marks.mark("shim: exec'd");
    // Whatever the agent inherited from its parent (and passed on without close-on-exec) is
    // not the shim's, nor its workload's: only stdin, stdout and stderr are kept.
    close_fds_from(3, None);
    let spec: Spec = match files::read_json(&dir.join(files::SPEC)) {
        Ok(Some(s)) => s,
        Ok(None) => return launcher_fail(&format!("{} has no {}", dir.display(), files::SPEC)),
        Err(e) => return launcher_fail(&format!("reading spec: {e}")),
    };
    let (ready_r, ready_w) = match nix::unistd::pipe2(OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => return launcher_fail(&format!("pipe: {e}")),
    };
    // SAFETY: the launcher is single-threaded (no runtime, no threads started), so the child may
    // do anything after fork.
    match unsafe { nix::unistd::fork() } {
        Err(e) => launcher_fail(&format!("fork: {e}")),
        Ok(ForkResult::Parent { .. }) => {
            drop(ready_w);
            let mut out = String::new();
            let mut buf = [0u8; 512];
            while let Ok(n) = nix::unistd::read(&ready_r, &mut buf) {
                if n == 0 {
                    break;
                }
                out.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            let result: LaunchResult = serde_json::from_str(out.trim()).unwrap_or(LaunchResult {
                error: Some("the shim died before reporting".into()),
                ..LaunchResult::default()
            });
            let ok = result.pid.is_some();
            println!("{}", serde_json::to_string(&result).unwrap_or_default());
            if ok { 0 } else { 1 }
        }
        Ok(ForkResult::Child) => {
            drop(ready_r);
            marks.mark("shim: spec read, forked");
            supervise(&dir, &spec, ready_w, marks)
        }
    }
}

/// Closes every descriptor from `first` up, except `keep`. Only system calls (it runs in the
/// forked child too): `close_range(2)`, or, on kernels without it, `close(2)` up to the limit.
fn close_fds_from(first: u32, keep: Option<i32>) {
    let ranges = match keep.and_then(|k| u32::try_from(k).ok()) {
        Some(k) if k >= first => [(first, k.saturating_sub(1)), (k + 1, u32::MAX)],
        _ => [(first, u32::MAX), (1, 0)],
    };
    for (lo, hi) in ranges {
        if lo > hi {
            continue;
        }
        // SAFETY: close_range takes integers only; closing descriptors this process owns (and
        // holds no Rust handle to, or keeps out of the range) cannot invalidate memory.
        let r = unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0u32) };
        if r == 0 {
            continue;
        }
        let max = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1024, |(soft, _)| soft.min(1 << 20));
        let top = u64::from(hi).min(max.saturating_sub(1));
        let mut fd = u64::from(lo);
        while fd <= top {
            // SAFETY: as above; close of a descriptor that is not open fails with EBADF.
            unsafe { libc::close(fd as i32) };
            fd += 1;
        }
    }
}

fn launcher_fail(msg: &str) -> i32 {
    let r = LaunchResult {
        error: Some(msg.to_owned()),
        ..LaunchResult::default()
    };
    println!("{}", serde_json::to_string(&r).unwrap_or_default());
    1
}

pub(crate) fn report(ready: OwnedFd, result: &LaunchResult) {
    let line = serde_json::to_string(result).unwrap_or_default();
    let _ = nix::unistd::write(&ready, line.as_bytes());
}

/// Resolves the program like a shell would, with the workload's own PATH.
pub(crate) fn resolve(program: &str, spec: &Spec) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    let path = spec
        .env
        .get("PATH")
        .map(String::as_str)
        .unwrap_or(DEFAULT_PATH);
    std::env::split_paths(path)
        .map(|d| d.join(program))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn cstring(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

fn detach_stdio(dir: &Path) {
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdin(null.as_fd());
        let _ = nix::unistd::dup2_stdout(null.as_fd());
    }
    if let Ok(log) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("shim.log"))
    {
        let _ = nix::unistd::dup2_stderr(log.as_fd());
    }
}

/// The long-lived shim. Never returns to the launcher's code path: exits the process.
fn supervise(dir: &Path, spec: &Spec, ready: OwnedFd, marks: Marks) -> i32 {
    let _ = nix::unistd::setsid();
    detach_stdio(dir);
    // SAFETY: setting a signal disposition to SIG_IGN installs no handler code.
    unsafe {
        let _ = nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigIgn);
        let _ = nix::sys::signal::signal(Signal::SIGHUP, SigHandler::SigIgn);
    }
    match run_workload(dir, spec, ready, marks) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth-shim: {e}");
            1
        }
    }
}

/// A launch that never ran: records it (code 127 and why) as the instance's exit, and tells the
/// launcher why.
pub(crate) fn fail_launch(
    dir: &Path,
    spec: &Spec,
    ready: OwnedFd,
    msg: String,
) -> Result<i32, String> {
    let record = ExitRecord {
        instance: spec.instance.clone(),
        code: Some(127),
        signal: None,
        oom_killed: false,
        at_ns: files::now_ns(),
        error: Some(msg.clone()),
        note: None,
    };
    let _ = files::write_json(&dir.join(files::EXIT), &record);
    report(
        ready,
        &LaunchResult {
            error: Some(msg),
            ..LaunchResult::default()
        },
    );
    Ok(1)
}

fn run_workload(dir: &Path, spec: &Spec, ready: OwnedFd, mut marks: Marks) -> Result<i32, String> {
    if let Some(oci) = &spec.oci {
        return crate::oci::container::run(dir, spec, oci, ready, marks);
    }
    let Some(program) = spec.cmd.first() else {
        return fail_launch(dir, spec, ready, "empty cmd".into());
    };
    let Some(path) = resolve(program, spec) else {
        return fail_launch(dir, spec, ready, format!("{program}: not found in PATH"));
    };
    let prepared = Prepared::new(spec, &path)?;
    let mut log = RecordLog::open(&dir.join(files::LOGS), spec.log_max_bytes, spec.log_keep)
        .map_err(|e| format!("open log: {e}"))?;
    let pipes = Pipes::new()?;
    let boot_id = match proc::try_boot_id() {
        Ok(b) => b,
        Err(e) => return fail_launch(dir, spec, ready, format!("reading the boot id: {e}")),
    };
    let (child, out_r, stderr_r) = match fork_workload(prepared, pipes) {
        Ok(forked) => forked,
        Err(msg) => return fail_launch(dir, spec, ready, msg),
    };
    marks.mark("shim: workload exec'd");
    let workload =
        ProcessId::of(child.as_raw()).ok_or("the workload vanished before it was recorded")?;
    let started = Started {
        workload,
        boot_id,
        marks,
    };
    record_started(dir, spec, started, ready, &mut log)?;
    let outputs = [(&out_r, Stream::Stdout), (&stderr_r, Stream::Stderr)];
    let status = pump_until_exit(child, &outputs, &mut log)?;
    // Whatever the workload left behind in its group goes with it.
    let _ = nix::sys::signal::killpg(child, Signal::SIGKILL);
    if let Some(cg) = &spec.cgroup {
        let _ = crate::cgroup::kill_dir(cg, cg.join("cgroup.kill").exists());
    }
    drain(&outputs, &mut log);
    let oom = spec
        .cgroup
        .as_deref()
        .is_some_and(crate::cgroup::oom_killed);
    record_exit(dir, spec, &mut log, status, oom)
}

/// The running workload: `shim.json` names the shim and the workload (atomic but not fsynced:
/// it matters only while the processes it names exist, and no process survives the power loss
/// that could lose it; after a reboot the boot id tells the probe so), the launcher learns the
/// pid, and the log marks the start.
pub(crate) fn record_started(
    dir: &Path,
    spec: &Spec,
    started: Started,
    ready: OwnedFd,
    log: &mut RecordLog,
) -> Result<(), String> {
    let Started {
        workload,
        boot_id,
        mut marks,
    } = started;
    let shim =
        ProcessId::of(std::process::id() as i32).ok_or("cannot read the shim's own identity")?;
    let pid = workload.pid;
    let state = ShimState {
        instance: spec.instance.clone(),
        shim,
        workload,
        boot_id,
        started_at_ns: files::now_ns(),
    };
    files::write_json_fast(&dir.join(files::STATE), &state)
        .map_err(|e| format!("write shim.json: {e}"))?;
    marks.mark("shim: shim.json written");
    report(
        ready,
        &LaunchResult {
            pid: Some(pid),
            error: None,
            marks,
        },
    );
    let _ = log.mark(&format!("started instance={} pid={pid}", spec.instance));
    Ok(())
}

/// A workload that runs: who it is, in which boot, and the launch's marks so far.
pub(crate) struct Started {
    pub(crate) workload: ProcessId,
    pub(crate) boot_id: String,
    pub(crate) marks: Marks,
}

/// How the workload ended: marked in the log, and `exit.json` written atomically and durably
/// (the only record of it).
pub(crate) fn record_exit(
    dir: &Path,
    spec: &Spec,
    log: &mut RecordLog,
    status: WaitStatus,
    oom_killed: bool,
) -> Result<i32, String> {
    let (code, signal) = match status {
        WaitStatus::Exited(_, code) => (Some(code), None),
        WaitStatus::Signaled(_, sig, _) => (None, Some(sig.as_str().to_owned())),
        other => (None, Some(format!("{other:?}"))),
    };
    let _ = log.mark(&match (&code, &signal) {
        (Some(c), _) => format!("exited code={c}"),
        (None, Some(s)) => format!("exited signal={s}"),
        (None, None) => "exited".to_owned(),
    });
    let record = ExitRecord {
        instance: spec.instance.clone(),
        code,
        signal,
        oom_killed,
        at_ns: files::now_ns(),
        error: None,
        note: None,
    };
    files::write_json(&dir.join(files::EXIT), &record)
        .map_err(|e| format!("write exit.json: {e}"))?;
    Ok(0)
}

/// What a process machine's workload is made of, prepared before the fork (the child must
/// not allocate).
struct Prepared {
    path: CString,
    /// The program as resolved, for messages.
    shown: String,
    argv: Vec<CString>,
    envp: Vec<CString>,
    workdir: CString,
    cgroup_procs: Option<std::fs::File>,
    nofile: Option<(u64, u64)>,
    oom_score_adj: Option<Vec<u8>>,
    user: Option<(u32, u32, Vec<nix::unistd::Gid>)>,
}

impl Prepared {
    fn new(spec: &Spec, path: &Path) -> Result<Self, String> {
        let argv: Vec<CString> = spec
            .cmd
            .iter()
            .map(|a| cstring(a))
            .collect::<Result<_, _>>()?;
        let mut envp: Vec<CString> = spec
            .env
            .iter()
            .map(|(k, v)| cstring(&format!("{k}={v}")))
            .collect::<Result<_, _>>()?;
        if !spec.env.contains_key("PATH") {
            envp.push(cstring(&format!("PATH={DEFAULT_PATH}"))?);
        }
        let cgroup_procs = match &spec.cgroup {
            Some(cg) => Some(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(cg.join("cgroup.procs"))
                    .map_err(|e| format!("open {}/cgroup.procs: {e}", cg.display()))?,
            ),
            None => None,
        };
        let user = spec.user.as_ref().map(|u| {
            let groups = u.groups.iter().map(|g| nix::unistd::Gid::from_raw(*g));
            (u.uid, u.gid, groups.collect())
        });
        Ok(Self {
            path: cstring(&path.to_string_lossy())?,
            shown: path.display().to_string(),
            argv,
            envp,
            workdir: cstring(&spec.workdir.to_string_lossy())?,
            cgroup_procs,
            nofile: spec.nofile,
            oom_score_adj: spec.oom_score_adj.map(|v| v.to_string().into_bytes()),
            user,
        })
    }
}

/// The workload's stdin (`/dev/null`), its stdout and stderr pipes, and the exec-error pipe.
struct Pipes {
    devnull: std::fs::File,
    out: (OwnedFd, OwnedFd),
    stderr: (OwnedFd, OwnedFd),
    exec_err: (OwnedFd, OwnedFd),
}

impl Pipes {
    fn new() -> Result<Self, String> {
        let devnull =
            std::fs::File::open("/dev/null").map_err(|e| format!("open /dev/null: {e}"))?;
        let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
        Ok(Self {
            devnull,
            out: pipe()?,
            stderr: pipe()?,
            exec_err: pipe()?,
        })
    }
}

/// Forks the workload and waits until it has exec'd: its pid and the read ends of its stdout
/// and stderr, or why it did not start.
fn fork_workload(p: Prepared, pipes: Pipes) -> Result<(Pid, OwnedFd, OwnedFd), String> {
    let Pipes {
        devnull,
        out: (out_r, out_w),
        stderr: (stderr_r, stderr_w),
        exec_err: (err_r, err_w),
    } = pipes;
    // SAFETY: the shim is single-threaded; the child only makes system calls on values prepared
    // above and then execs or _exits.
    let child = match unsafe { nix::unistd::fork() } {
        Err(e) => return Err(format!("fork: {e}")),
        Ok(ForkResult::Child) => {
            let errno = exec_child(&ChildSetup {
                path: &p.path,
                argv: &p.argv,
                envp: &p.envp,
                workdir: &p.workdir,
                cgroup_procs: p.cgroup_procs.as_ref(),
                devnull: &devnull,
                out: &out_w,
                err_out: &stderr_w,
                nofile: p.nofile,
                oom_score_adj: p.oom_score_adj.as_deref(),
                user: p.user.as_ref().map(|(u, g, gs)| (*u, *g, gs.as_slice())),
                keep: err_w.as_raw_fd(),
            });
            let _ = nix::unistd::write(&err_w, &(errno as i32).to_le_bytes());
            // SAFETY: _exit is async-signal-safe and skips the parent's atexit handlers and buffers.
            unsafe { libc::_exit(127) }
        }
        Ok(ForkResult::Parent { child }) => child,
    };
    drop(out_w);
    drop(stderr_w);
    drop(err_w);
    let shown = p.shown;
    drop(p.cgroup_procs);
    // A CLOEXEC pipe: EOF means exec succeeded, four bytes are the errno of a failed exec.
    let mut errno = [0u8; 4];
    let n = nix::unistd::read(&err_r, &mut errno).unwrap_or(0);
    if n == 4 {
        let _ = waitpid(child, None);
        let e = nix::errno::Errno::from_raw(i32::from_le_bytes(errno));
        return Err(format!("exec {shown}: {}", e.desc()));
    }
    Ok((child, out_r, stderr_r))
}

/// Everything the forked child needs, prepared before the fork (the child must not allocate).
struct ChildSetup<'a> {
    path: &'a CString,
    argv: &'a [CString],
    envp: &'a [CString],
    workdir: &'a CString,
    cgroup_procs: Option<&'a std::fs::File>,
    devnull: &'a std::fs::File,
    out: &'a OwnedFd,
    /// The workload's stderr.
    err_out: &'a OwnedFd,
    nofile: Option<(u64, u64)>,
    /// The decimal text to write to `/proc/self/oom_score_adj`.
    oom_score_adj: Option<&'a [u8]>,
    /// Who to become (uid, gid, supplementary groups) after joining the cgroup, before exec.
    user: Option<(u32, u32, &'a [nix::unistd::Gid])>,
    /// The one descriptor above 2 left open until exec (close-on-exec): the exec-error pipe.
    keep: i32,
}

/// In the forked child: become the workload. Returns only if exec failed (with errno).
fn exec_child(c: &ChildSetup<'_>) -> nix::errno::Errno {
    let ChildSetup {
        path,
        argv,
        envp,
        workdir,
        cgroup_procs,
        devnull,
        out,
        err_out,
        nofile,
        oom_score_adj,
        user,
        keep,
    } = *c;
    // The agent's own limits are not the workload's (see `limits`). Best effort: a workload
    // that keeps the shim's is better than one that does not run.
    let _ = crate::limits::apply_nofile(nofile);
    if let Some(value) = oom_score_adj
        && let Ok(fd) = nix::fcntl::open(
            c"/proc/self/oom_score_adj",
            OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
    {
        let _ = nix::unistd::write(&fd, value);
    }
    // Its own session and process group: signals to the group reach the whole workload tree and
    // nothing else, and the agent's terminal or process group never reaches it.
    if let Err(e) = nix::unistd::setsid() {
        return e;
    }
    if let Some(mut procs) = cgroup_procs {
        // "0" moves the writing process.
        if procs.write_all(b"0").is_err() {
            return nix::errno::Errno::last();
        }
    }
    // Dispositions set to ignore and the signal mask survive exec: give the workload defaults.
    for sig in [Signal::SIGPIPE, Signal::SIGHUP] {
        // SAFETY: restoring the default disposition installs no handler code.
        let _ = unsafe { nix::sys::signal::signal(sig, SigHandler::SigDfl) };
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    // The user last: joining the cgroup and setting limits needed the shim's privileges. A
    // failure is the exec's failure: never run as root a workload that asked for another user.
    if let Some((uid, gid, groups)) = user
        && let Err(e) = crate::user::HostUser::become_user(uid, gid, groups)
    {
        return e;
    }
    // berthd runs with umask 077 so that its own files are private; a workload gets the usual
    // 022, as under a service manager.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    if let Err(e) = nix::unistd::chdir(workdir.as_c_str()) {
        return e;
    }
    if let Err(e) = nix::unistd::dup2_stdin(devnull.as_fd())
        .and_then(|()| nix::unistd::dup2_stdout(out.as_fd()))
        .and_then(|()| nix::unistd::dup2_stderr(err_out.as_fd()))
    {
        return e;
    }
    // Nothing above 2 reaches the workload but what it is given: whatever the shim (or the
    // agent before it) had open is closed here, not merely trusted to be close-on-exec.
    close_fds_from(3, Some(keep));
    match nix::unistd::execve(path, argv, envp) {
        Err(e) => e,
        Ok(never) => match never {},
    }
}

/// How long an unfinished line waits for its end before it is written as a piece.
const PARTIAL_AFTER_MS: u16 = 200;

/// Copies output to the log until the workload exits; returns its wait status.
pub(crate) fn pump_until_exit(
    child: Pid,
    outputs: &[(&OwnedFd, Stream); 2],
    log: &mut RecordLog,
) -> Result<WaitStatus, String> {
    let pidfd = proc::pidfd_open(child.as_raw()).map_err(|e| format!("pidfd_open: {e}"))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut open = [true, true];
    loop {
        let mut fds = vec![PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        let polled: Vec<usize> = (0..2).filter(|&i| open[i]).collect();
        for &i in &polled {
            fds.push(PollFd::new(outputs[i].0.as_fd(), PollFlags::POLLIN));
        }
        let timeout = if log.has_pending() {
            PollTimeout::from(PARTIAL_AFTER_MS)
        } else {
            PollTimeout::NONE
        };
        let ready = match poll(&mut fds, timeout) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("poll: {e}")),
            Ok(n) => n,
        };
        let exited = fds[0].any().unwrap_or(false);
        let readable: Vec<usize> = polled
            .iter()
            .enumerate()
            .filter(|(k, _)| fds[k + 1].any().unwrap_or(false))
            .map(|(_, &i)| i)
            .collect();
        drop(fds);
        if ready == 0 {
            let _ = log.flush(true);
        }
        for i in readable {
            let (fd, stream) = outputs[i];
            match nix::unistd::read(fd, &mut buf) {
                Ok(0) => open[i] = false,
                Ok(n) => {
                    let _ = log.push(stream, &buf[..n]);
                }
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                Err(_) => open[i] = false,
            }
        }
        if exited {
            return waitpid(child, None).map_err(|e| format!("waitpid: {e}"));
        }
    }
}

/// Reads whatever output is left without waiting (a surviving grandchild may hold a pipe),
/// and writes out unfinished lines whole.
pub(crate) fn drain(outputs: &[(&OwnedFd, Stream); 2], log: &mut RecordLog) {
    let mut buf = vec![0u8; 64 * 1024];
    for &(fd, stream) in outputs {
        let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
        while let Ok(n) = nix::unistd::read(fd, &mut buf) {
            if n == 0 {
                break;
            }
            let _ = log.push(stream, &buf[..n]);
        }
    }
    let _ = log.flush(false);
}
