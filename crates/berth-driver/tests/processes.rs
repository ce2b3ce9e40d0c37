//! The driver against real processes: start, exit codes, logs, process trees, stop escalation,
//! signals, idempotent spawn, reattachment by a new driver, pid reuse, cgroups.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use berth_driver::{CgroupMode, Driver, DriverConfig, DriverError, Probe};
use berth_types::{MachineConfig, MachineId, ResourceLimits};

fn driver(dir: &tempfile::TempDir, cgroup: CgroupMode) -> Driver {
    let mut cfg = DriverConfig::new(dir.path().join("machines"));
    cfg.shim = PathBuf::from(env!("CARGO_BIN_EXE_berth-shim"));
    cfg.shim_args = Vec::new();
    cfg.cgroup = cgroup;
    Driver::new(cfg).unwrap()
}

fn sh(script: &str) -> MachineConfig {
    MachineConfig::command(["/bin/sh", "-c", script])
}

fn id() -> String {
    MachineId::generate().to_string()
}

/// Pids whose process group is `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields[0] != "Z" && fields[2].parse::<i32>() == Ok(pgid) {
            out.push(pid);
        }
    }
    out
}

fn alive(pid: i32) -> bool {
    berth_driver::proc::ProcessId::of(pid).is_some_and(|p| p.is_alive())
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn exit_code_and_output_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(&dir, CgroupMode::Off);
    let m = id();
    let pid = d
        .spawn(&m, &sh("echo to-stdout; echo to-stderr >&2; exit 3"), "1")
        .await
        .unwrap();
    assert!(pid > 1);
    let exit = d.wait_exit(&m).await.unwrap();
    assert_eq!(
        (exit.code, exit.signal.as_deref(), exit.instance.as_str()),
        (Some(3), None, "1")
    );
    let log = berth_driver::logs::tail(&d.logs_dir(&m), 10).unwrap();
    assert!(
        log.contains("to-stdout") && log.contains("to-stderr"),
        "{log}"
    );
    assert!(matches!(d.probe(&m), Probe::Exited(_)));
}

#[tokio::test]
async fn env_and_workdir_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(&dir, CgroupMode::Off);
    let m = id();
    let mut cfg = sh("echo \"$GREETING from $(pwd)\"; env | grep -c BERTH_LEAK || true");
    cfg.env.insert("GREETING".into(), "hello".into());
    cfg.workdir = Some("/tmp".into());
    // SAFETY-free way to check nothing is inherited: this variable is set only in the test process.
    // (The workload's environment is exactly its config's.)
    d.spawn(&m, &cfg, "1").await.unwrap();
    d.wait_exit(&m).await.unwrap();
    let log = berth_driver::logs::tail(&d.logs_dir(&m), 10).unwrap();
    assert!(log.contains("hello from /tmp"), "{log}");
    assert!(
        log.contains("\n0\n") || log.ends_with("0\n"),
        "no inherited variables expected: {log}"
    );
}

#[tokio::test]
async fn a_program_that_cannot_start_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(&dir, CgroupMode::Off);
    let err = d
        .spawn(&id(), &MachineConfig::command(["no-such-program-xyz"]), "1")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not found in PATH"), "{err}");
    let err = d
        .spawn(&id(), &MachineConfig::command(["/etc/hostname"]), "1")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("exec /etc/hostname"), "{err}");
}

#[tokio::test]
async fn stop_takes_the_whole_tree_down() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(&dir, CgroupMode::Off);
    let m = id();
    let pid = d
        .spawn(&m, &sh("sleep 1000 & sleep 1000 & wait"), "1")
        .await
        .unwrap();
    wait_until("the workload's children", || group_members(pid).len() >= 3).await;
    let members = group_members(pid);
    let exit = d
        .stop(&m, "SIGTERM", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.signal.as_deref(), Some("SIGTERM"));
    for p in members {
        wait_until("every member of the tree to die", || !alive(p)).await;
    }
    // Stopping again is a no-op that returns the same exit.
    assert_eq!(
        d.stop(&m, "SIGTERM", Duration::from_secs(1))
            .await
            .unwrap()
            .unwrap()
            .signal
            .as_deref(),
        Some("SIGTERM")
    );
}

#[tokio::test]
async fn a_workload_ignoring_sigterm_is_killed_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(&dir, CgroupMode::Off);
    let m = id();
    let pid = d
        .spawn(&m, &sh("trap '' TERM; sleep 1000 & wait; sleep 1000"), "1")
        .await
        .unwrap();
    wait_until("the child", || group_members(pid).len() >= 2).await;
    let started = Instant::now();
    let exit = d
        .stop(&m, "TERM", Duration::from_millis(400))
        .await
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(exit.signal.as_deref(), Some("SIGKILL"));
    assert!(
        took >= Duration::from_millis(400),
        "killed before the timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(group_members(pid).is_empty());
}

#[tokio::test]
async fn signals_reach_the_workload() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(&dir, CgroupMode::Off);
    let m = id();
    d.spawn(
        &m,
        &sh("trap 'echo got-usr1; exit 7' USR1; while :; do sleep 0.05; done"),
        "1",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    d.signal(&m, "SIGUSR1").unwrap();
    let exit = d.wait_exit(&m).await.unwrap();
    assert_eq!(exit.code, Some(7));
    assert!(
        berth_driver::logs::tail(&d.logs_dir(&m), 5)
            .unwrap()
            .contains("got-usr1")
    );
    assert!(matches!(
        d.signal(&m, "SIGUSR1"),
        Err(DriverError::NotRunning(_))
    ));
    assert!(matches!(
        d.signal(&m, "SIGBOGUS"),
        Err(DriverError::BadSignal(_))
    ));
}

#[tokio::test]
async fn spawn_is_idempotent_per_instance_and_survives_a_new_driver() {
    let dir = tempfile::tempdir().unwrap();
    let m = id();
    let pid = {
        let d = driver(&dir, CgroupMode::Off);
        let pid = d.spawn(&m, &sh("sleep 1000"), "op-7").await.unwrap();
        assert_eq!(
            d.spawn(&m, &sh("sleep 1000"), "op-7").await.unwrap(),
            pid,
            "same launch, same process"
        );
        assert!(matches!(
            d.spawn(&m, &sh("sleep 1000"), "op-8").await,
            Err(DriverError::AlreadyRunning(_))
        ));
        pid
    };
    // A new driver (as after an agent restart) finds the same workload running.
    let d = driver(&dir, CgroupMode::Off);
    match d.probe(&m) {
        Probe::Running(s) => assert_eq!((s.workload.pid, s.instance.as_str()), (pid, "op-7")),
        other => panic!("{other:?}"),
    }
    assert!(alive(pid));
    d.stop(&m, "SIGKILL", Duration::from_secs(1)).await.unwrap();
    d.cleanup(&m).unwrap();
    assert!(!d.dir(&m).exists());
}

/// Kills a helper process even when the test panics.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A recorded pid that now names another process is not mistaken for the shim or workload.
#[tokio::test]
async fn pid_reuse_does_not_confuse_the_probe() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(&dir, CgroupMode::Off);
    let m = id();
    d.spawn(&m, &sh("exit 0"), "1").await.unwrap();
    d.wait_exit(&m).await.unwrap();
    let state_path = d.dir(&m).join("shim.json");
    let mut state: berth_driver::files::ShimState = berth_driver::files::read_json(&state_path)
        .unwrap()
        .unwrap();
    // Another live process takes the recorded pids, as the kernel may hand them out again. Start
    // times have a resolution of one clock tick (10 ms); a pid cannot be reused within one.
    std::thread::sleep(Duration::from_millis(50));
    let mut other = KillOnDrop(
        std::process::Command::new("sleep")
            .arg("1000")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let other = &mut other.0;
    state.shim.pid = other.id() as i32;
    state.workload.pid = other.id() as i32;
    berth_driver::files::write_json(&state_path, &state).unwrap();
    std::fs::remove_file(d.dir(&m).join("exit.json")).unwrap();
    match d.probe(&m) {
        Probe::Lost { workload_alive, .. } => assert!(
            !workload_alive,
            "an unrelated process was taken for the workload"
        ),
        other => panic!("expected Lost, got {other:?}"),
    }
    assert!(matches!(
        d.signal(&m, "SIGKILL"),
        Err(DriverError::NotRunning(_))
    ));
    assert!(
        alive(other.id() as i32),
        "the unrelated process must not be signalled"
    );
}

/// This host's cgroup2 (or, where there is none, the fallback): grouping, cgroup.kill of a
/// process that left the process group, accounting, and limits refused when not enforceable.
#[tokio::test]
async fn cgroups_where_available() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(&dir, CgroupMode::Auto);
    let caps = d.capabilities().clone();
    let detected = berth_driver::cgroup::Cgroups::detect("berth");
    assert_eq!(caps.cgroup, detected.is_ok(), "{caps:?}");
    let m = id();
    // The escaped child leaves the process group; only the cgroup still holds it.
    let pid = d
        .spawn(&m, &sh("setsid sleep 1000 & sleep 1000"), "1")
        .await
        .unwrap();
    if caps.cgroup {
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(cg.contains(&format!("/berth/{m}")), "{cg}");
        wait_until("the escaped child", || {
            std::fs::read_to_string(format!(
                "{}/cgroup.procs",
                caps.cgroup_root.as_ref().unwrap().to_owned() + "/" + &m
            ))
            .map(|p| p.lines().count() >= 2)
            .unwrap_or(false)
        })
        .await;
        let procs = std::fs::read_to_string(format!(
            "{}/{m}/cgroup.procs",
            caps.cgroup_root.as_ref().unwrap()
        ))
        .unwrap();
        let escaped: Vec<i32> = procs
            .lines()
            .filter_map(|l| l.parse().ok())
            .filter(|p| *p != pid)
            .collect();
        assert!(d.usage(&m).is_some(), "cpu.stat is readable");
        d.stop(&m, "SIGTERM", Duration::from_secs(5)).await.unwrap();
        for p in escaped {
            wait_until("the escaped process to be killed with its cgroup", || {
                !alive(p)
            })
            .await;
        }
        d.cleanup(&m).unwrap();
        assert!(
            !std::path::Path::new(&format!("{}/{m}", caps.cgroup_root.as_ref().unwrap())).exists()
        );
    } else {
        assert!(caps.cgroup_unavailable.is_some());
        d.stop(&m, "SIGKILL", Duration::from_secs(1)).await.unwrap();
    }
    // Limits: refused by name unless the controller is enabled.
    let limits = ResourceLimits {
        memory_mb: Some(64),
        ..ResourceLimits::default()
    };
    assert_eq!(caps.check(&limits).is_ok(), caps.memory_limit);
}

/// No usable cgroup2 (here: a directory that is not one): the driver falls back to process
/// groups, says why, and refuses every limit.
#[tokio::test]
async fn without_cgroup_access_workloads_still_run_and_limits_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fake = tempfile::tempdir().unwrap();
    let d = driver(
        &dir,
        CgroupMode::Root {
            mount: fake.path().to_owned(),
            root: fake.path().join("berth"),
        },
    );
    let caps = d.capabilities();
    assert!(!caps.cgroup);
    assert!(
        caps.cgroup_unavailable
            .as_deref()
            .unwrap()
            .contains("not a cgroup2 hierarchy")
    );
    for limits in [
        ResourceLimits {
            memory_mb: Some(1),
            ..ResourceLimits::default()
        },
        ResourceLimits {
            cpus: Some(0.5),
            ..ResourceLimits::default()
        },
        ResourceLimits {
            pids: Some(10),
            ..ResourceLimits::default()
        },
    ] {
        assert!(caps.check(&limits).is_err());
    }
    let m = id();
    d.spawn(&m, &sh("exit 5"), "1").await.unwrap();
    assert_eq!(d.wait_exit(&m).await.unwrap().code, Some(5));
}

/// A supervisor costs at most 2 MiB of resident memory (`cargo xtask bench driver` measures it
/// over 100 machines in a release build).
#[tokio::test]
async fn a_supervisor_stays_under_two_mib_of_rss() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(&dir, CgroupMode::Off);
    let m = id();
    d.spawn(&m, &MachineConfig::command(["sleep", "1000"]), "1")
        .await
        .unwrap();
    let Probe::Running(state) = d.probe(&m) else {
        panic!("not running")
    };
    let status = std::fs::read_to_string(format!("/proc/{}/status", state.shim.pid)).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap();
    d.stop(&m, "SIGKILL", Duration::from_secs(1)).await.unwrap();
    assert!(rss_kib <= 2048, "berth-shim uses {rss_kib} KiB");
}

/// The agent's own open-files limit and OOM score are not passed on: each workload gets the
/// limits the driver is configured with and an `oom_score_adj` of 0.
#[tokio::test]
async fn workloads_get_their_own_limits_not_the_agents() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = DriverConfig::new(dir.path().join("machines"));
    cfg.shim = PathBuf::from(env!("CARGO_BIN_EXE_berth-shim"));
    cfg.shim_args = Vec::new();
    cfg.cgroup = CgroupMode::Off;
    let (_, hard) = berth_driver::limits::nofile_limit().unwrap();
    let soft = 200.min(hard);
    cfg.workload_nofile = Some((soft, hard));
    let d = Driver::new(cfg).unwrap();
    // The shim inherits this test process's score; raising it needs no privilege. The shim
    // process is the test's child, so the test itself keeps its own score.
    // Lowering it back afterwards needs CAP_SYS_RESOURCE: only as root (as CI runs) is the
    // score raised; otherwise it is already what the workload must get or not lowerable.
    let root = nix::unistd::geteuid().is_root();
    let m = id();
    let before = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap();
    if root {
        std::fs::write("/proc/self/oom_score_adj", "300").unwrap();
    }
    let spawned = d
        .spawn(
            &m,
            &sh("ulimit -Sn; ulimit -Hn; cat /proc/self/oom_score_adj"),
            "1",
        )
        .await;
    if root {
        std::fs::write("/proc/self/oom_score_adj", before.trim()).unwrap();
    }
    spawned.unwrap();
    d.wait_exit(&m).await.unwrap();
    let log = berth_driver::logs::tail(&d.logs_dir(&m), 10).unwrap();
    let hard_text = if hard == u64::MAX {
        "unlimited".to_owned()
    } else {
        hard.to_string()
    };
    assert_eq!(log, format!("{soft}\n{hard_text}\n0\n"));
}

/// A shim.json that cannot be read is unknown, never absent: spawn, stop, signal and cleanup
/// refuse and remove nothing, and nothing is killed; once it reads again, all is as it was.
#[tokio::test]
async fn unreadable_state_is_unknown_and_nothing_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(&dir, CgroupMode::Off);
    let m = id();
    let pid = d.spawn(&m, &sh("sleep 1000"), "1").await.unwrap();
    let path = d.dir(&m).join("shim.json");
    let good = std::fs::read(&path).unwrap();
    std::fs::write(&path, b"{\"instance\":").unwrap();
    assert!(
        matches!(d.probe(&m), Probe::Unknown { .. }),
        "{:?}",
        d.probe(&m)
    );
    assert!(matches!(
        d.spawn(&m, &sh("sleep 1000"), "2").await,
        Err(DriverError::Unknown(..))
    ));
    assert!(matches!(
        d.stop(&m, "SIGTERM", Duration::from_secs(1)).await,
        Err(DriverError::Unknown(..))
    ));
    assert!(matches!(
        d.signal(&m, "SIGTERM"),
        Err(DriverError::Unknown(..))
    ));
    assert!(matches!(d.cleanup(&m), Err(DriverError::Unknown(..))));
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"{\"instance\":",
        "shim.json was touched"
    );
    assert!(alive(pid), "the workload was touched");
    std::fs::write(&path, &good).unwrap();
    match d.probe(&m) {
        Probe::Running(s) => assert_eq!(s.workload.pid, pid),
        other => panic!("expected Running, got {other:?}"),
    }
    d.stop(&m, "SIGKILL", Duration::from_secs(5)).await.unwrap();
}

/// A shim killed while its workload runs: waiting for the exit reports the lost supervisor and
/// touches nothing (killing is the guarded caller's decision); settling it kills the workload
/// (its identity proven) and records its exit with the note, so a new launch can follow.
#[tokio::test]
async fn a_dead_shim_is_settled() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(&dir, CgroupMode::Off);
    let m = id();
    let pid = d.spawn(&m, &sh("sleep 1000"), "1").await.unwrap();
    let state: berth_driver::files::ShimState =
        berth_driver::files::read_json(&d.dir(&m).join("shim.json"))
            .unwrap()
            .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(state.shim.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let lost = tokio::time::timeout(Duration::from_secs(10), d.wait_exit(&m))
        .await
        .unwrap();
    assert!(
        matches!(lost, Err(berth_driver::DriverError::Lost(_))),
        "{lost:?}"
    );
    assert!(alive(pid), "waiting for an exit killed the workload");
    let rec = d
        .settle_lost(&m)
        .unwrap()
        .expect("a lost supervisor to settle");
    assert_eq!(rec.note.as_deref(), Some(berth_driver::SUPERVISOR_DIED));
    assert!(!alive(pid), "the unsupervised workload still runs");
    assert!(matches!(d.probe(&m), Probe::Exited(_)));
    let again = d.spawn(&m, &sh("sleep 1000"), "2").await.unwrap();
    assert_ne!(again, pid);
    d.stop(&m, "SIGKILL", Duration::from_secs(5)).await.unwrap();
}

/// A process machine's `user`: the shim takes the user's supplementary groups, group and uid in
/// the forked child before exec (here through a spec naming groups no host user needs to have),
/// and the default working directory is the user's home, or `/`, never the machine's directory.
#[tokio::test]
async fn the_user_groups_and_default_workdir_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(&dir, CgroupMode::Off);
    // Through the driver: a host user by name; nobody's home (/nonexistent) does not exist.
    let m = id();
    let mut cfg = sh("echo ids=$(id -u):$(id -g):$(id -G) cwd=$(pwd) home=$HOME user=$USER");
    cfg.user = Some("nobody".into());
    d.spawn(&m, &cfg, "1").await.unwrap();
    d.wait_exit(&m).await.unwrap();
    let log = berth_driver::logs::tail(&d.logs_dir(&m), 10).unwrap();
    assert!(
        log.contains("ids=65534:65534:65534 cwd=/ home=/nonexistent user=nobody"),
        "{log}"
    );
    // Root's home exists: it is the default working directory.
    let m = id();
    let mut cfg = sh("echo cwd=$(pwd)");
    cfg.user = Some("root".into());
    d.spawn(&m, &cfg, "1").await.unwrap();
    d.wait_exit(&m).await.unwrap();
    let log = berth_driver::logs::tail(&d.logs_dir(&m), 10).unwrap();
    assert!(log.contains("cwd=/root"), "{log}");
    // No user: `/`.
    let m = id();
    d.spawn(&m, &sh("echo cwd=$(pwd)"), "1").await.unwrap();
    d.wait_exit(&m).await.unwrap();
    let log = berth_driver::logs::tail(&d.logs_dir(&m), 10).unwrap();
    assert!(log.contains("cwd=/\n"), "{log}");
    // An unknown user is a launch error, never a workload run as root.
    let mut cfg = sh("echo ran");
    cfg.user = Some("no-such-user-xyz".into());
    let err = d.spawn(&id(), &cfg, "1").await.unwrap_err();
    assert!(err.to_string().contains("user: no user"), "{err}");

    // Through the shim itself: supplementary groups as the spec gives them.
    let mdir = dir.path().join("by-hand");
    std::fs::create_dir_all(mdir.join("logs")).unwrap();
    let spec = berth_driver::files::Spec {
        instance: "1".into(),
        cmd: vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo ids=$(id -u):$(id -g):$(id -G)".into(),
        ],
        env: Default::default(),
        workdir: "/".into(),
        cgroup: None,
        log_max_bytes: 1 << 20,
        log_keep: 1,
        nofile: None,
        oom_score_adj: None,
        user: Some(berth_driver::user::HostUser {
            uid: 4242,
            gid: 4343,
            groups: vec![4343, 4444, 4545],
            name: None,
            home: None,
        }),
        oci: None,
    };
    std::fs::write(mdir.join("spec.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth-shim"))
        .arg(&mdir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    wait_until("the shim's exit record", || mdir.join("exit.json").exists()).await;
    let log = berth_driver::logs::tail(&mdir.join("logs"), 10).unwrap();
    assert!(log.contains("ids=4242:4343:4343 4444 4545"), "{log}");
}
