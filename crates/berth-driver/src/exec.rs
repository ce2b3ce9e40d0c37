//! Running a command inside a running machine (`POST /v1/machines/{id}/exec`), from what its
//! `spec.json` says the workload runs as:
//! - an image machine: `<runtime> exec` in its container, so the command gets the container's
//!   namespaces, root, user, environment, working directory, capabilities and cgroups (the
//!   runtime takes them from the bundle's `config.json`);
//! - a process machine: a child of berthd that takes the workload's environment, working
//!   directory, cgroup and user (in that order, in the forked child before `exec`), in its own
//!   session so that a timeout kills everything it started.
//!
//! Output is kept up to [`OUTPUT_LIMIT`] bytes per stream (the rest is read and dropped, so the
//! command never blocks on a full pipe); the timeout kills the command (SIGKILL to its process
//! group); an exec is not a machine event and records nothing.

#![allow(unsafe_code)]

use std::io::Write as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::files::{self, Spec};
use crate::{DriverError, Probe};

/// The most bytes of each stream an exec answers with.
pub const OUTPUT_LIMIT: usize = 1 << 20;
/// How long the output readers wait after the command is gone (a process that left its group
/// may hold a pipe open).
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// What to run.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    /// Program and arguments.
    pub cmd: Vec<String>,
    /// Killed after this.
    pub timeout: Duration,
    /// Its standard input.
    pub stdin: Vec<u8>,
}

/// How it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutcome {
    /// Exit code (128 + signal number when killed by a signal, 124 on timeout, 127 when it
    /// could not be started).
    pub exit_code: i32,
    /// The signal that ended it, if known.
    pub signal: Option<String>,
    /// The timeout killed it.
    pub timed_out: bool,
    /// Its standard output (at most [`OUTPUT_LIMIT`] bytes).
    pub stdout: Vec<u8>,
    /// Its standard error (likewise).
    pub stderr: Vec<u8>,
    /// Output was cut.
    pub stdout_truncated: bool,
    /// Error output was cut.
    pub stderr_truncated: bool,
    /// How long it ran.
    pub duration: Duration,
}

impl ExecOutcome {
    fn not_started(msg: String, started: Instant) -> Self {
        Self {
            exit_code: 127,
            signal: None,
            timed_out: false,
            stdout: Vec::new(),
            stderr: msg.into_bytes(),
            stdout_truncated: false,
            stderr_truncated: false,
            duration: started.elapsed(),
        }
    }
}

/// Reads `r` to its end into `buf`, keeping at most [`OUTPUT_LIMIT`] bytes; true when more
/// was read than kept.
async fn read_capped(mut r: impl tokio::io::AsyncRead + Unpin, buf: &mut Vec<u8>) -> bool {
    let mut chunk = vec![0u8; 64 * 1024];
    let mut truncated = false;
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return truncated,
            Ok(n) => {
                let room = OUTPUT_LIMIT.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk[..n.min(room)]);
                truncated |= n > room;
            }
        }
    }
}

static EXEC_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How the command is started: the runtime's `exec` in the container (with the pid file it
/// writes and its log, removed afterwards), or a child of berthd.
struct Started {
    cmd: tokio::process::Command,
    /// The runtime's pid file and log, for an image machine.
    runtime_files: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// `<runtime> exec` of the command in an image machine's container.
fn image_command(oci: &crate::oci::OciLaunch, exec: &ExecSpec) -> Started {
    let n = EXEC_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tag = format!("{}-{n}", std::process::id());
    let pid_file = oci.bundle.join(format!("exec-{tag}.pid"));
    let log = oci.bundle.join(format!("exec-{tag}.log"));
    let mut cmd = tokio::process::Command::from(crate::oci::runtime::child_command(&oci.runtime));
    cmd.arg("--log")
        .arg(&log)
        .args(["--log-format", "json", "exec", "--pid-file"])
        .arg(&pid_file)
        .arg(&oci.container_id)
        .args(&exec.cmd);
    Started {
        cmd,
        runtime_files: Some((pid_file, log)),
    }
}

/// The command as a process machine's workload would run: its environment, then (in the
/// forked child) its own session, the machine's cgroup, user and working directory. `None`
/// when the program is not found on the workload's `PATH`.
fn process_command(
    spec: &Spec,
    program: &str,
    exec: &ExecSpec,
) -> Result<Option<Started>, DriverError> {
    let Some(path) = crate::shim::resolve(program, spec) else {
        return Ok(None);
    };
    let mut cmd = tokio::process::Command::new(path);
    cmd.args(&exec.cmd[1..]).env_clear().envs(&spec.env);
    if !spec.env.contains_key("PATH") {
        cmd.env("PATH", crate::shim::DEFAULT_PATH);
    }
    let mut procs = match &spec.cgroup {
        Some(cg) => Some(
            std::fs::OpenOptions::new()
                .write(true)
                .open(cg.join("cgroup.procs"))
                .map_err(|e| DriverError::Launch(format!("open the machine's cgroup: {e}")))?,
        ),
        None => None,
    };
    let user = spec.user.as_ref().map(|u| {
        let groups: Vec<nix::unistd::Gid> = u
            .groups
            .iter()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        (u.uid, u.gid, groups)
    });
    let workdir = std::ffi::CString::new(spec.workdir.to_string_lossy().as_bytes())
        .map_err(|_| DriverError::Launch("the machine's workdir holds a NUL".into()))?;
    // SAFETY: the closure runs in the forked child before exec and only makes system
    // calls (setsid, write, setgroups, setgid, setuid, chdir) on values prepared before
    // the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid()?;
            if let Some(p) = procs.as_mut() {
                p.write_all(b"0")?;
            }
            if let Some((uid, gid, groups)) = &user {
                crate::user::HostUser::become_user(*uid, *gid, groups)?;
            }
            nix::unistd::chdir(workdir.as_c_str())?;
            Ok(())
        });
    }
    Ok(Some(Started {
        cmd,
        runtime_files: None,
    }))
}

/// Feeds the command its input and waits for it within the timeout; on timeout kills
/// everything it started (`group`: its process group, known once it runs). Returns its exit
/// status (`None` when killed by the timeout or unknown) and whether the timeout fired.
async fn wait_or_kill(
    child: &mut tokio::process::Child,
    mut stdin: tokio::process::ChildStdin,
    exec: &ExecSpec,
    is_image: bool,
    group: impl FnOnce() -> Option<i32>,
) -> (Option<std::process::ExitStatus>, bool) {
    let input = exec.stdin.clone();
    let fed = async move {
        let _ = stdin.write_all(&input).await;
        drop(stdin);
    };
    let waiting = tokio::time::timeout(exec.timeout, child.wait());
    let ((), status) = tokio::join!(fed, waiting);
    let timed_out = status.is_err();
    if timed_out || !is_image {
        // On timeout, everything it started; after an exit, what it left in its group.
        if let Some(g) = group() {
            let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
            if timed_out {
                // Not a group leader after all: the process itself.
                let _ = nix::sys::signal::kill(Pid::from_raw(g), Signal::SIGKILL);
            }
        }
    }
    let status = match status {
        Ok(s) => s.ok(),
        Err(_) => {
            // The runtime's exec reaps the process it was killed and exits on its own: kill
            // it only if it does not, since a process it leaves unreaped becomes a zombie
            // of the container's init.
            if tokio::time::timeout(DRAIN_GRACE, child.wait())
                .await
                .is_err()
            {
                let _ = child.start_kill();
                child.wait().await.ok();
            }
            None
        }
    };
    (status, timed_out)
}

/// The exit code and signal of a finished command: 124 on timeout, 128 + the signal number,
/// 255 when unknown; a runtime that could not start the command (no such program, say) is
/// 127, a command that could not be started.
fn conclude(outcome: &mut ExecOutcome, status: Option<std::process::ExitStatus>, is_image: bool) {
    if outcome.timed_out {
        outcome.exit_code = 124;
        outcome.signal = Some("SIGKILL".to_owned());
        return;
    }
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => outcome.exit_code = code,
            (None, Some(sig)) => {
                outcome.exit_code = 128 + sig;
                outcome.signal = Signal::try_from(sig).ok().map(|s| s.as_str().to_owned());
            }
            (None, None) => outcome.exit_code = 255,
        },
        None => outcome.exit_code = 255,
    }
    // The runtime's own failure to start the command (no such program, say) is 255 with its
    // reason on stderr: report it as a command that could not be started.
    if is_image && outcome.exit_code == 255 {
        let text = String::from_utf8_lossy(&outcome.stderr).into_owned();
        if text.contains("exec failed") || text.contains("executable file not found") {
            outcome.exit_code = 127;
        }
    }
}

/// Runs `exec` in machine `id`'s running workload (machine directory `dir`).
pub async fn run(
    dir: &Path,
    id: &str,
    probe: Probe,
    exec: &ExecSpec,
) -> Result<ExecOutcome, DriverError> {
    match probe {
        Probe::Running(s) if s.workload.is_alive() => {}
        Probe::Unknown { reason } => return Err(DriverError::Unknown(id.to_owned(), reason)),
        _ => return Err(DriverError::NotRunning(id.to_owned())),
    }
    let spec: Spec = files::read_json(&dir.join(files::SPEC))
        .map_err(|e| DriverError::Unknown(id.to_owned(), format!("read spec.json: {e}")))?
        .ok_or_else(|| DriverError::NotRunning(id.to_owned()))?;
    let started = Instant::now();
    let Some(program) = exec.cmd.first() else {
        return Err(DriverError::Launch("cmd: empty".into()));
    };
    let started_cmd = match &spec.oci {
        Some(oci) => image_command(oci, exec),
        None => match process_command(&spec, program, exec)? {
            Some(s) => s,
            None => {
                return Ok(ExecOutcome::not_started(
                    format!("{program}: not found in PATH\n"),
                    started,
                ));
            }
        },
    };
    run_started(started_cmd, program, exec, spec.oci.is_some(), started).await
}

/// Spawns the command with its stdin, stdout and stderr piped, feeds and reads them, waits
/// for it (or kills it on timeout), and removes the runtime's files.
async fn run_started(
    Started {
        mut cmd,
        runtime_files,
    }: Started,
    program: &str,
    exec: &ExecSpec,
    is_image: bool,
    started: Instant,
) -> Result<ExecOutcome, DriverError> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Ok(ExecOutcome::not_started(
                format!("{program}: {e}\n"),
                started,
            ));
        }
    };
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(DriverError::Launch("exec: no pipes to the command".into()));
    };
    let child_pid = child.id().and_then(|p| i32::try_from(p).ok());
    // The command's process group: for an image machine the runtime's exec'd process (a
    // session leader, like every process the runtime starts), else the child itself.
    let pid_file = runtime_files.as_ref().map(|(p, _)| p.clone());
    let group = move || match pid_file {
        Some(p) => std::fs::read_to_string(p)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok()),
        None => child_pid,
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let deadline = exec.timeout + DRAIN_GRACE;
    let ((status, timed_out), out_cut, err_cut) = tokio::join!(
        wait_or_kill(&mut child, stdin, exec, is_image, group),
        async {
            tokio::time::timeout(deadline, read_capped(stdout, &mut out))
                .await
                .unwrap_or(true)
        },
        async {
            tokio::time::timeout(deadline, read_capped(stderr, &mut err))
                .await
                .unwrap_or(true)
        },
    );
    if let Some((pid_file, log)) = &runtime_files {
        let _ = std::fs::remove_file(pid_file);
        let _ = std::fs::remove_file(log);
    }
    let mut outcome = ExecOutcome {
        exit_code: 0,
        signal: None,
        timed_out,
        stdout: out,
        stderr: err,
        stdout_truncated: out_cut,
        stderr_truncated: err_cut,
        duration: started.elapsed(),
    };
    conclude(&mut outcome, status, is_image);
    Ok(outcome)
}
