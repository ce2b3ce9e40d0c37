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
    let mut cmd;
    let mut pid_file = None;
    let mut runtime_log = None;
    match &spec.oci {
        Some(oci) => {
            let n = EXEC_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tag = format!("{}-{n}", std::process::id());
            let pf = oci.bundle.join(format!("exec-{tag}.pid"));
            let log = oci.bundle.join(format!("exec-{tag}.log"));
            cmd = tokio::process::Command::new(&oci.runtime);
            cmd.arg("--log")
                .arg(&log)
                .args(["--log-format", "json", "exec", "--pid-file"])
                .arg(&pf)
                .arg(&oci.container_id)
                .args(&exec.cmd);
            pid_file = Some(pf);
            runtime_log = Some(log);
        }
        None => {
            let Some(path) = crate::shim::resolve(program, &spec) else {
                return Ok(ExecOutcome::not_started(
                    format!("{program}: not found in PATH\n"),
                    started,
                ));
            };
            cmd = tokio::process::Command::new(path);
            cmd.args(&exec.cmd[1..]).env_clear().envs(&spec.env);
            if !spec.env.contains_key("PATH") {
                cmd.env("PATH", crate::shim::DEFAULT_PATH);
            }
            let procs = match &spec.cgroup {
                Some(cg) => Some(
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(cg.join("cgroup.procs"))
                        .map_err(|e| {
                            DriverError::Launch(format!("open the machine's cgroup: {e}"))
                        })?,
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
            let mut procs = procs;
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
        }
    }
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
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(DriverError::Launch("exec: no pipes to the command".into()));
    };
    let child_pid = child.id().and_then(|p| i32::try_from(p).ok());
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let input = exec.stdin.clone();
    let is_image = spec.oci.is_some();
    let waited = async {
        let fed = async move {
            let _ = stdin.write_all(&input).await;
            drop(stdin);
        };
        let waiting = tokio::time::timeout(exec.timeout, child.wait());
        let ((), status) = tokio::join!(fed, waiting);
        // The command's process group: for an image machine the runtime's exec'd process (a
        // session leader, like every process the runtime starts), else the child itself.
        let group = if is_image {
            pid_file
                .as_deref()
                .and_then(|p| std::fs::read_to_string(p).ok())
                .and_then(|t| t.trim().parse::<i32>().ok())
        } else {
            child_pid
        };
        let timed_out = status.is_err();
        if timed_out || !is_image {
            // On timeout, everything it started; after an exit, what it left in its group.
            if let Some(g) = group {
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
    };
    let deadline = exec.timeout + DRAIN_GRACE;
    let ((status, timed_out), out_cut, err_cut) = tokio::join!(
        waited,
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
    for f in [pid_file.as_deref(), runtime_log.as_deref()]
        .into_iter()
        .flatten()
    {
        let _ = std::fs::remove_file(f);
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
    if timed_out {
        outcome.exit_code = 124;
        outcome.signal = Some("SIGKILL".to_owned());
        return Ok(outcome);
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
    Ok(outcome)
}
