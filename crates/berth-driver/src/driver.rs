//! The agent's side of the driver: launch, watch, stop, signal, reattach, clean up.
#![allow(unsafe_code)]

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use berth_types::MachineConfig;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::cgroup::{Capabilities, Cgroups};
use crate::files::{self, ExitRecord, ShimState, Spec};
use crate::proc;
use crate::shim::LaunchResult;
use crate::timing::{self, Marks};

/// How the driver uses cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupMode {
    /// Use the host's cgroup2 hierarchy if there is one and it is writable.
    Auto,
    /// Do not use cgroups (process groups only; every limit is refused).
    Off,
    /// Use this directory (inside a cgroup2 mount) as berth's parent cgroup.
    Root {
        /// The cgroup2 mount point.
        mount: PathBuf,
        /// berth's parent cgroup under it.
        root: PathBuf,
    },
}

/// Driver settings.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Where machine directories live (`<data_dir>/machines`).
    pub machines_dir: PathBuf,
    /// The supervisor executable: `berth-shim`, or an executable with a shim subcommand.
    pub shim: PathBuf,
    /// Arguments before the machine directory (e.g. `["shim"]` for `berthd shim <dir>`).
    pub shim_args: Vec<String>,
    /// cgroup use.
    pub cgroup: CgroupMode,
    /// Rotate a machine's log at this size.
    pub log_max_bytes: u64,
    /// Rotated log files kept.
    pub log_keep: u32,
    /// How long a launch may take before it is considered failed.
    pub launch_timeout: Duration,
    /// Open-files limits (soft, hard) for workloads; `None` leaves them inherited. berthd sets
    /// the limits it started with before it raised its own (see [`crate::limits`]).
    pub workload_nofile: Option<(u64, u64)>,
    /// `oom_score_adj` for workloads (0 by default: whatever protects or exposes the agent is
    /// not passed on); `None` leaves it inherited.
    pub workload_oom_score_adj: Option<i32>,
    /// Which OCI runtime runs image machines (`runtime.oci`).
    pub oci: crate::oci::RuntimeChoice,
    /// Where named volumes live (`<data_dir>/volumes`).
    pub volumes_dir: PathBuf,
}

impl DriverConfig {
    /// Defaults for a data directory, with the shim found beside the running executable.
    pub fn new(machines_dir: PathBuf) -> Self {
        // BERTH_SHIM, else a berth-shim beside this executable, else this executable's own
        // hidden `shim` subcommand (berthd has one).
        let exe = std::env::current_exe().ok();
        let beside = exe
            .as_ref()
            .and_then(|p| p.parent().map(|d| d.join("berth-shim")));
        let (shim, shim_args) = match (std::env::var_os("BERTH_SHIM"), beside, exe) {
            (Some(s), _, _) => (PathBuf::from(s), Vec::new()),
            (None, Some(b), _) if b.exists() => (b, Vec::new()),
            (None, _, Some(exe)) => (exe, vec!["shim".to_owned()]),
            (None, _, None) => (PathBuf::from("berth-shim"), Vec::new()),
        };
        let volumes_dir = machines_dir
            .parent()
            .map_or_else(|| machines_dir.join("volumes"), |d| d.join("volumes"));
        Self {
            volumes_dir,
            oci: crate::oci::RuntimeChoice::Auto,
            machines_dir,
            shim,
            shim_args,
            cgroup: CgroupMode::Auto,
            log_max_bytes: 10 << 20,
            log_keep: 2,
            launch_timeout: Duration::from_secs(10),
            workload_nofile: None,
            workload_oom_score_adj: Some(0),
        }
    }
}

/// Errors from the driver.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The workload could not be started.
    #[error("{0}")]
    Launch(String),
    /// A workload of another launch still runs.
    #[error("a workload from an earlier start (instance {0}) is still running")]
    AlreadyRunning(String),
    /// The signal name is not one berth knows.
    #[error("{0}")]
    BadSignal(String),
    /// Nothing runs for this machine.
    #[error("machine {0} has no running workload")]
    NotRunning(String),
    /// The supervisor vanished without recording the exit.
    #[error("the supervisor of machine {0} exited without recording how the workload exited")]
    Lost(String),
    /// What the machine's files or `/proc` say could not be read: nothing can be concluded.
    #[error("the state of machine {0}'s workload cannot be told now: {1}")]
    Unknown(String, String),
    /// I/O.
    #[error("{context}: {source}")]
    Io {
        /// What the driver was doing.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DriverError {
    let context = context.into();
    move |source| DriverError::Io { context, source }
}

/// What a machine's directory says about its workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// No launch recorded.
    NotStarted,
    /// The shim (and so the workload's supervision) is alive.
    Running(ShimState),
    /// The workload exited and its shim recorded how.
    Exited(ExitRecord),
    /// The shim is gone without an exit record (killed, or the host rebooted).
    Lost {
        /// The last recorded instance.
        state: ShimState,
        /// Whether the workload itself still runs, unsupervised.
        workload_alive: bool,
    },
    /// The evidence could not be read (EMFILE, EACCES, EIO, a torn or garbled file, `/proc`
    /// unreadable): nothing can be concluded, and nothing may be done on it. Try again later.
    Unknown {
        /// What failed, with its inputs (the path and the error).
        reason: String,
    },
}

/// The note of an exit record the agent wrote for a workload whose supervisor had died.
pub const SUPERVISOR_DIED: &str = "supervisor died; workload killed";

/// Reads one of a machine's files as evidence: absent is `Ok(None)`, anything else that goes
/// wrong (EMFILE, EACCES, EIO, garbled JSON) is an error naming the file.
fn evidence<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, String> {
    files::read_json(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

/// Runs workloads under per-machine shims.
#[derive(Debug)]
pub struct Driver {
    cfg: DriverConfig,
    cgroups: Option<Cgroups>,
    caps: Capabilities,
    oci: Option<crate::oci::OciRuntime>,
    oci_limits: crate::oci::runtime::RuntimeLimits,
    /// Each machine's last launch timeline: when it began, and its marks.
    timelines: std::sync::Mutex<std::collections::HashMap<String, (u64, Marks)>>,
}

impl Driver {
    /// A driver; detects cgroups per `cfg.cgroup` and falls back to process groups.
    pub fn new(cfg: DriverConfig) -> Result<Self, DriverError> {
        std::fs::create_dir_all(&cfg.machines_dir)
            .map_err(io(format!("create {}", cfg.machines_dir.display())))?;
        let detected = match &cfg.cgroup {
            CgroupMode::Off => Err("disabled by configuration".to_owned()),
            CgroupMode::Auto => Cgroups::detect("berth"),
            CgroupMode::Root { mount, root } => Cgroups::setup(mount, root),
        };
        let (cgroups, caps) = match detected {
            Ok(cg) => {
                let caps = cg.capabilities();
                (Some(cg), caps)
            }
            Err(why) => {
                tracing::warn!(reason = %why, "not using cgroups: machines are grouped by process group and no resource limit can be enforced");
                (
                    None,
                    Capabilities {
                        cgroup_unavailable: Some(why),
                        ..Capabilities::default()
                    },
                )
            }
        };
        let mut caps = caps;
        let oci = match crate::oci::runtime::detect(&cfg.oci, &cfg.machines_dir) {
            Ok(rt) => {
                caps.oci_runtime = Some(rt.name.clone());
                Some(rt)
            }
            Err(why) => {
                tracing::warn!(reason = %why, "no working OCI runtime: image machines are refused");
                caps.oci_unavailable = Some(why);
                None
            }
        };
        let oci_limits = crate::oci::runtime::RuntimeLimits::detect();
        caps.image_memory_limit = oci.is_some() && oci_limits.memory;
        caps.image_cpu_limit = oci.is_some() && oci_limits.cpu;
        caps.image_pids_limit = oci.is_some() && oci_limits.pids;
        tracing::info!(?caps, "driver capabilities");
        Ok(Self {
            cfg,
            cgroups,
            caps,
            oci,
            oci_limits,
            timelines: Default::default(),
        })
    }

    /// What this host can enforce and measure.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// A machine's directory.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.cfg.machines_dir.join(id)
    }

    /// A machine's log directory.
    pub fn logs_dir(&self, id: &str) -> PathBuf {
        self.dir(id).join(files::LOGS)
    }

    /// Creates the machine's directories (idempotent). The workload gets none of them: its
    /// default working directory is its user's home or `/` (see [`crate::user`]), never the
    /// directory holding its supervisor's state.
    pub fn prepare(&self, id: &str) -> Result<(), DriverError> {
        let d = self.logs_dir(id);
        std::fs::create_dir_all(&d).map_err(io(format!("create {}", d.display())))?;
        Ok(())
    }

    /// What the machine's directory says about its workload.
    ///
    /// Only positive evidence is an answer: a file that does not exist, an exit record, a
    /// process proven gone or proven another (pid, start time, boot id). Any failure to read
    /// (a file, the boot id, `/proc`) is [`Probe::Unknown`].
    pub fn probe(&self, id: &str) -> Probe {
        match self.try_probe(id) {
            Ok(p) => p,
            Err(reason) => Probe::Unknown { reason },
        }
    }

    fn try_probe(&self, id: &str) -> Result<Probe, String> {
        let dir = self.dir(id);
        let Some(state) = evidence::<ShimState>(&dir.join(files::STATE))? else {
            let exit: Option<ExitRecord> = evidence(&dir.join(files::EXIT))?;
            return Ok(exit.map_or(Probe::NotStarted, Probe::Exited));
        };
        let boot = proc::try_boot_id().map_err(|e| format!("reading the boot id: {e}"))?;
        let this_boot = state.boot_id == boot;
        let alive = |p: &proc::ProcessId, what: &str| {
            p.liveness()
                .map_err(|e| format!("reading /proc/{}/stat ({what}): {e}", p.pid))
        };
        if this_boot && alive(&state.shim, "the shim")? {
            return Ok(Probe::Running(state));
        }
        // Read after the shim is known gone: it writes exit.json before it exits.
        let exit: Option<ExitRecord> = evidence(&dir.join(files::EXIT))?;
        Ok(match exit {
            Some(rec) if rec.instance == state.instance => Probe::Exited(rec),
            _ => Probe::Lost {
                workload_alive: this_boot && alive(&state.workload, "the workload")?,
                state,
            },
        })
    }

    /// A supervisor that died while its workload runs: kills the workload (its identity proven
    /// by pid, start time and boot id, and held by a pidfd) with its process group and cgroup,
    /// waits for it to go, and records its exit for that instance with the note
    /// [`SUPERVISOR_DIED`], so the restart policy applies and the machine can be started again.
    /// Returns the record written, or `None` when the probe found no such case.
    pub fn settle_lost(&self, id: &str) -> Result<Option<ExitRecord>, DriverError> {
        let state = match self.probe(id) {
            Probe::Lost {
                state,
                workload_alive: true,
            } => state,
            Probe::Unknown { reason } => return Err(DriverError::Unknown(id.to_owned(), reason)),
            _ => return Ok(None),
        };
        let unknown = |e: std::io::Error| {
            DriverError::Unknown(
                id.to_owned(),
                format!(
                    "proving the workload's identity (pid {}): {e}",
                    state.workload.pid
                ),
            )
        };
        tracing::warn!(
            machine = id, shim_pid = state.shim.pid, workload_pid = state.workload.pid,
            instance = %state.instance,
            "the supervisor died while its workload runs: killing the unsupervised workload"
        );
        if let Some(fd) = state.workload.try_pidfd().map_err(unknown)? {
            // The leader is held by its pidfd, so its pid (the group's id) names this group.
            let _ = nix::sys::signal::killpg(Pid::from_raw(state.workload.pid), Signal::SIGKILL);
            let _ = proc::pidfd_send_signal(&fd, Signal::SIGKILL);
        }
        if let Some(cg) = &self.cgroups {
            let _ = cg.kill(id);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while state.workload.liveness().map_err(unknown)? {
            if std::time::Instant::now() > deadline {
                return Err(DriverError::Launch(format!(
                    "the unsupervised workload of {id} (pid {}) did not die after SIGKILL",
                    state.workload.pid
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let rec = ExitRecord {
            instance: state.instance.clone(),
            code: None,
            signal: Some("SIGKILL".to_owned()),
            oom_killed: false,
            at_ns: files::now_ns(),
            error: None,
            note: Some(SUPERVISOR_DIED.to_owned()),
        };
        files::write_json(&self.dir(id).join(files::EXIT), &rec).map_err(io("write exit.json"))?;
        Ok(Some(rec))
    }

    /// Starts the workload for launch `instance`, or, if that launch already happened (a resumed
    /// operation), returns its pid without starting anything: idempotent.
    pub async fn spawn(
        &self,
        id: &str,
        config: &MachineConfig,
        instance: &str,
    ) -> Result<i32, DriverError> {
        self.spawn_with(id, config, instance, None).await
    }

    /// [`Driver::spawn`], of an image machine under the OCI runtime when `image` is given.
    pub async fn spawn_with(
        &self,
        id: &str,
        config: &MachineConfig,
        instance: &str,
        image: Option<&crate::oci::ImageRun>,
    ) -> Result<i32, DriverError> {
        let began = timing::monotonic_ns();
        let mut marks = Marks::default();
        if let Some(pid) = self.launched_or_settled(id, instance)? {
            return Ok(pid);
        }
        marks.mark("driver: probe");
        self.prepare(id)?;
        let dir = self.dir(id);
        clear_stale(&dir)?;
        marks.mark("driver: directories");
        let oci = match image {
            Some(run) => {
                let oci = self.prepare_bundle(id, config, run)?;
                marks.mark("driver: bundle");
                Some(oci)
            }
            None => None,
        };
        let spec = self.launch_spec(id, config, instance, oci)?;
        // Not fsynced: after a crash the launch is retried and writes it again.
        files::write_json_fast(&dir.join(files::SPEC), &spec).map_err(io("write spec.json"))?;
        marks.mark("driver: spec.json");
        let (pid, shim_marks) = self.run_shim(&dir).await?;
        marks.0.extend(shim_marks.0);
        marks.mark("driver: shim reported");
        self.keep_timeline(id, began, marks);
        Ok(pid)
    }

    /// Keeps (and logs at debug level) the timeline of machine `id`'s launch.
    fn keep_timeline(&self, id: &str, began: u64, marks: Marks) {
        tracing::debug!(machine = id, phases = ?marks.durations(began), "launch timeline");
        if let Ok(mut t) = self.timelines.lock() {
            t.insert(id.to_owned(), (began, marks));
        }
    }

    /// Where machine `id`'s last launch by this driver spent its time: each step, in order,
    /// and how long it took (the agent's steps, the shim's and the runtime's).
    pub fn launch_phases(&self, id: &str) -> Option<Vec<(String, Duration)>> {
        let t = self.timelines.lock().ok()?;
        let (began, marks) = t.get(id)?;
        Some(marks.durations(*began))
    }

    /// What an earlier start of launch `instance` left: its workload's pid when that launch
    /// already happened (running, or exited after it ran), `None` when a launch is to be made.
    /// A workload of another launch still running is refused; one whose supervisor died is
    /// killed first, so that it does not run on beside the new one.
    fn launched_or_settled(&self, id: &str, instance: &str) -> Result<Option<i32>, DriverError> {
        match self.probe(id) {
            Probe::Running(s) if s.instance == instance => return Ok(Some(s.workload.pid)),
            Probe::Exited(r) if r.instance == instance && r.error.is_none() => {
                if let Some(s) = files::read_json::<ShimState>(&self.dir(id).join(files::STATE))
                    .ok()
                    .flatten()
                {
                    return Ok(Some(s.workload.pid));
                }
            }
            Probe::Running(s) => return Err(DriverError::AlreadyRunning(s.instance)),
            Probe::Unknown { reason } => return Err(DriverError::Unknown(id.to_owned(), reason)),
            Probe::Lost {
                workload_alive: true,
                ..
            } => {
                self.settle_lost(id)?;
            }
            _ => {}
        }
        Ok(None)
    }

    /// The shim's `spec.json` for a launch: the cgroup (a process machine's; an image machine's
    /// cgroups are the runtime's), the user resolved now (the host's user database may have
    /// changed since the create checked it; an image machine's is the bundle's), the working
    /// directory and the environment with the user's `HOME`, `USER` and `LOGNAME` as defaults.
    fn launch_spec(
        &self,
        id: &str,
        config: &MachineConfig,
        instance: &str,
        oci: Option<crate::oci::OciLaunch>,
    ) -> Result<Spec, DriverError> {
        let cgroup = match &self.cgroups {
            Some(_) if oci.is_some() => None,
            Some(cg) => Some(
                cg.create(id, &config.resources)
                    .map_err(io(format!("create cgroup for {id}")))?,
            ),
            None => None,
        };
        let user = match (&config.user, &oci) {
            (Some(u), None) => Some(
                crate::user::resolve(u).map_err(|e| DriverError::Launch(format!("user: {e}")))?,
            ),
            _ => None,
        };
        let workdir = match (&config.workdir, &user) {
            (Some(w), _) => PathBuf::from(w),
            (None, Some(u)) => u.default_workdir(),
            (None, None) => PathBuf::from("/"),
        };
        let mut env = config.env.clone();
        if let Some(u) = &user {
            if let Some(home) = &u.home {
                env.entry("HOME".to_owned())
                    .or_insert_with(|| home.to_string_lossy().into_owned());
            }
            if let Some(name) = &u.name {
                env.entry("USER".to_owned()).or_insert_with(|| name.clone());
                env.entry("LOGNAME".to_owned())
                    .or_insert_with(|| name.clone());
            }
        }
        Ok(Spec {
            instance: instance.to_owned(),
            cmd: config.cmd.clone(),
            env,
            workdir,
            user,
            cgroup,
            log_max_bytes: self.cfg.log_max_bytes,
            log_keep: self.cfg.log_keep,
            nofile: self.cfg.workload_nofile,
            oom_score_adj: self.cfg.workload_oom_score_adj,
            oci,
        })
    }

    /// Runs the shim for the machine directory `dir` and reads its launcher's one line: the
    /// workload's pid and the shim's marks, or why it did not start.
    async fn run_shim(&self, dir: &Path) -> Result<(i32, Marks), DriverError> {
        let launch =
            tokio::process::Command::from(crate::oci::runtime::child_command(&self.cfg.shim))
                .args(&self.cfg.shim_args)
                .arg(dir)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .output();
        let out = tokio::time::timeout(self.cfg.launch_timeout, launch)
            .await
            .map_err(|_| {
                DriverError::Launch(format!(
                    "the shim did not report within {:?}",
                    self.cfg.launch_timeout
                ))
            })?
            .map_err(io(format!("run {}", self.cfg.shim.display())))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let result: LaunchResult = serde_json::from_str(text.trim()).map_err(|_| {
            DriverError::Launch(format!(
                "the shim {} failed ({}): {}{}",
                self.cfg.shim.display(),
                out.status,
                text.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        })?;
        match result {
            LaunchResult {
                pid: Some(pid),
                marks,
                ..
            } => Ok((pid, marks)),
            LaunchResult { error, .. } => Err(DriverError::Launch(
                error.unwrap_or_else(|| "unknown launch failure".into()),
            )),
        }
    }

    /// Waits until the machine's shim exits, then returns how the workload exited.
    ///
    /// A supervisor that died is reported as [`DriverError::Lost`], its workload left as it is:
    /// whether to kill an unsupervised workload ([`Driver::settle_lost`]) is the caller's
    /// guarded decision. While the evidence cannot be read ([`Probe::Unknown`]) it waits and
    /// reads again; unknown is never taken for an exit.
    pub async fn wait_exit(&self, id: &str) -> Result<ExitRecord, DriverError> {
        let mut unknown = 0u32;
        let mut retry = async |reason: &str| {
            if unknown.is_multiple_of(32) {
                tracing::warn!(
                    machine = id,
                    reason,
                    attempts = unknown + 1,
                    "cannot tell whether the workload's supervisor runs; retrying"
                );
            }
            unknown += 1;
            tokio::time::sleep(Duration::from_millis(50 << unknown.min(5))).await;
        };
        loop {
            match self.probe(id) {
                Probe::Exited(rec) => return Ok(rec),
                Probe::NotStarted => return Err(DriverError::NotRunning(id.to_owned())),
                // A dead supervisor is reported, never settled here: killing its unsupervised
                // workload is reconciliation's decision, behind the blast-radius guard.
                Probe::Lost { .. } => return Err(DriverError::Lost(id.to_owned())),
                Probe::Unknown { reason } => retry(&reason).await,
                Probe::Running(state) => {
                    // A pidfd becomes readable when the process exits; if the shim is already
                    // gone (or its pid reused), probing again settles it.
                    let fd = match state.shim.try_pidfd() {
                        Ok(Some(fd)) => fd,
                        Ok(None) => {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                            continue;
                        }
                        Err(e) => {
                            retry(&format!("pidfd_open({}) (the shim): {e}", state.shim.pid)).await;
                            continue;
                        }
                    };
                    // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open and
                    // refers to the same pidfd for the AsyncFd's whole life.
                    let afd = unsafe { tokio::io::unix::AsyncFd::register(fd) }
                        .map_err(|e| io("watch pidfd")(std::io::Error::other(e.to_string())))?;
                    let _ = afd.readable().await.map_err(io("watch pidfd"))?;
                    // The shim writes exit.json before it exits; give a dying shim a moment to
                    // be reaped so the probe does not see it as alive.
                    for _ in 0..100 {
                        if !state.shim.is_alive() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            }
        }
    }

    /// Sends `signal` to the workload's process group.
    pub fn signal(&self, id: &str, signal: &str) -> Result<(), DriverError> {
        let sig = Signal::from_str(
            berth_types::config::normalize_signal(signal).map_err(DriverError::BadSignal)?,
        )
        .map_err(|e| DriverError::BadSignal(e.to_string()))?;
        let state = match self.probe(id) {
            Probe::Running(state) => state,
            Probe::Unknown { reason } => return Err(DriverError::Unknown(id.to_owned(), reason)),
            _ => return Err(DriverError::NotRunning(id.to_owned())),
        };
        if !state.workload.is_alive() {
            return Err(DriverError::NotRunning(id.to_owned()));
        }
        nix::sys::signal::killpg(Pid::from_raw(state.workload.pid), sig)
            .map_err(|e| io(format!("signal {id}"))(std::io::Error::from(e)))
    }

    /// Kills everything the machine runs, at once.
    pub fn kill_all(&self, id: &str) {
        if let Probe::Running(state) | Probe::Lost { state, .. } = self.probe(id)
            && state.workload.is_alive()
        {
            let _ = nix::sys::signal::killpg(Pid::from_raw(state.workload.pid), Signal::SIGKILL);
        }
        if let Some(cg) = &self.cgroups {
            let _ = cg.kill(id);
        }
    }

    /// Stops the workload: `signal` to its process group, then SIGKILL to everything after
    /// `timeout`. Idempotent: returns the recorded exit if it had already exited, `None` if it
    /// never ran.
    pub async fn stop(
        &self,
        id: &str,
        signal: &str,
        timeout: Duration,
    ) -> Result<Option<ExitRecord>, DriverError> {
        match self.probe(id) {
            Probe::NotStarted => return Ok(None),
            Probe::Exited(rec) => return Ok(Some(rec)),
            Probe::Unknown { reason } => return Err(DriverError::Unknown(id.to_owned(), reason)),
            Probe::Lost {
                workload_alive: true,
                ..
            } => {
                return match self.settle_lost(id)? {
                    Some(rec) => Ok(Some(rec)),
                    None => Err(DriverError::Lost(id.to_owned())),
                };
            }
            Probe::Lost { .. } => return Err(DriverError::Lost(id.to_owned())),
            Probe::Running(_) => {}
        }
        match self.signal(id, signal) {
            Ok(()) | Err(DriverError::NotRunning(_)) => {}
            Err(e) => return Err(e),
        }
        if let Ok(done) = tokio::time::timeout(timeout, self.wait_exit(id)).await {
            return done.map(Some);
        }
        tracing::info!(
            machine = id,
            ?timeout,
            signal,
            "workload ignored its stop signal; killing it"
        );
        self.kill_all(id);
        match tokio::time::timeout(Duration::from_secs(10), self.wait_exit(id)).await {
            Ok(done) => done.map(Some),
            Err(_) => Err(DriverError::Launch(format!(
                "machine {id} did not exit after SIGKILL"
            ))),
        }
    }

    /// Builds an image machine's bundle: directories, `config.json`, its files in the writable
    /// layer, its volumes' directories.
    fn prepare_bundle(
        &self,
        id: &str,
        config: &MachineConfig,
        run: &crate::oci::ImageRun,
    ) -> Result<crate::oci::OciLaunch, DriverError> {
        let Some(rt) = &self.oci else {
            return Err(DriverError::Launch(
                "this host has no working OCI runtime for image machines".into(),
            ));
        };
        crate::oci::bundle::prepare(
            &self.dir(id),
            config,
            run,
            crate::oci::bundle::BundleContext {
                machine_id: id,
                volumes_dir: &self.cfg.volumes_dir,
                nofile: self.cfg.workload_nofile,
                oom_score_adj: self.cfg.workload_oom_score_adj,
            },
        )
        .map_err(DriverError::Launch)?;
        Ok(crate::oci::OciLaunch {
            runtime: rt.path.clone(),
            container_id: crate::oci::container_id(id),
            bundle: crate::oci::bundle::BundleDirs::of(&self.dir(id)).bundle,
            lower: run.rootfs.clone(),
            memory_cgroup: self.oci_limits.memory_root.as_ref().map(|r| r.join(id)),
        })
    }

    /// Runs a command inside the machine's running workload (see [`crate::exec`]).
    pub async fn exec(
        &self,
        id: &str,
        exec: &crate::exec::ExecSpec,
    ) -> Result<crate::exec::ExecOutcome, DriverError> {
        crate::exec::run(&self.dir(id), id, self.probe(id), exec).await
    }

    /// The OCI runtime image machines run under, if one works here.
    pub fn oci_runtime(&self) -> Option<&crate::oci::OciRuntime> {
        self.oci.as_ref()
    }

    /// The volumes directory.
    pub fn volumes_dir(&self) -> &Path {
        &self.cfg.volumes_dir
    }

    /// Removes what the runtime holds for an image machine: its container and root mount.
    fn cleanup_container(&self, id: &str) -> Result<(), DriverError> {
        let dirs = crate::oci::bundle::BundleDirs::of(&self.dir(id));
        if !dirs.bundle.exists() {
            return Ok(());
        }
        if let Some(rt) = &self.oci {
            crate::oci::container::delete(&rt.path, &crate::oci::container_id(id));
        }
        crate::oci::container::unmount_root(&dirs.bundle);
        if crate::oci::bundle::is_mounted(&dirs.rootfs) {
            return Err(DriverError::Launch(format!(
                "the root of machine {id} is still mounted at {}",
                dirs.rootfs.display()
            )));
        }
        Ok(())
    }

    /// Removes the machine's cgroup and directory (its workload must be stopped).
    /// Refuses while the machine's state cannot be read: its files are the only record of a
    /// workload that may still run.
    pub fn cleanup(&self, id: &str) -> Result<(), DriverError> {
        if let Probe::Unknown { reason } = self.probe(id) {
            return Err(DriverError::Unknown(id.to_owned(), reason));
        }
        self.kill_all(id);
        if let Ok(mut t) = self.timelines.lock() {
            t.remove(id);
        }
        self.cleanup_container(id)?;
        if let Some(cg) = &self.cgroups {
            cg.remove(id)
                .map_err(io(format!("remove cgroup of {id}")))?;
        }
        match std::fs::remove_dir_all(self.dir(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io(format!("remove {}", self.dir(id).display()))(e))
            }
            _ => Ok(()),
        }
    }

    /// CPU time (µs) and memory (bytes, where accounted) of a machine, from its cgroup.
    pub fn usage(&self, id: &str) -> Option<(u64, Option<u64>)> {
        self.cgroups.as_ref()?.usage(id)
    }

    /// What a machine's workload uses, for its metrics: from its cgroup when it has one (every
    /// process of the workload), otherwise from the workload process `pid` itself (its own time
    /// and that of the children it reaped).
    pub fn workload_usage(&self, id: &str, pid: i32) -> Option<crate::usage::Usage> {
        let from_cgroup = self
            .cgroups
            .as_ref()
            .and_then(|cg| crate::usage::cgroup(&cg.path(id)));
        from_cgroup.or_else(|| {
            crate::usage::process(pid).map(|p| crate::usage::Usage {
                cpu_seconds: p.cpu_seconds,
                memory_bytes: p.rss_bytes,
            })
        })
    }

    /// Every machine directory and what it says: for reattachment and orphan detection.
    pub fn scan(&self) -> Vec<(String, Probe)> {
        let Ok(entries) = std::fs::read_dir(&self.cfg.machines_dir) else {
            return Vec::new();
        };
        let mut out: Vec<(String, Probe)> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .map(|id| {
                let p = self.probe(&id);
                (id, p)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The machines directory.
    pub fn machines_dir(&self) -> &Path {
        &self.cfg.machines_dir
    }
}

/// Removes the shim state and exit record of an earlier launch, before a new one.
fn clear_stale(dir: &Path) -> Result<(), DriverError> {
    for f in [files::STATE, files::EXIT] {
        match std::fs::remove_file(dir.join(f)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io(format!("remove stale {f}"))(e));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Converts a shim's exit record into the domain's exit info.
pub fn exit_info(rec: &ExitRecord, requested_stop: bool) -> berth_types::ExitInfo {
    berth_types::ExitInfo {
        code: rec.code,
        signal: rec.signal.clone(),
        oom_killed: rec.oom_killed,
        requested_stop,
        at: berth_types::Timestamp::from_nanos(rec.at_ns),
    }
}
