//! Supervision end to end, with real processes: the agent (in `agent-harness`) is SIGKILLed and
//! restarted around running workloads, exits that happen while it is down, restart policies, and
//! the blast-radius guard.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use berth_driver::proc::ProcessId;
use serde_json::{Value, json};

/// The supervisor binary, built once per test process so it is never stale when this package's
/// tests run on their own (under `cargo xtask test` the build is a no-op).
fn shim_path() -> PathBuf {
    static BUILD: std::sync::Once = std::sync::Once::new();
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = Command::new(cargo)
            .args(["build", "-p", "berth-driver", "--bin", "berth-shim"])
            .status()
            .unwrap();
        assert!(ok.success(), "building berth-shim failed");
    });
    Path::new(env!("CARGO_BIN_EXE_agent-harness"))
        .parent()
        .unwrap()
        .join("berth-shim")
}

/// The agent as a real process.
struct Harness {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Harness {
    fn start(data: &Path) -> Harness {
        let mut child = Command::new(env!("CARGO_BIN_EXE_agent-harness"))
            .arg(data)
            .env("BERTH_SHIM", shim_path())
            .env("BERTH_RECONCILE_MS", "200")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&line).unwrap(),
            json!({"ready": true}),
            "{line}"
        );
        Harness {
            child,
            stdin,
            stdout,
        }
    }

    fn call(&mut self, cmd: Value) -> Result<Value, String> {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        match v.get("ok") {
            Some(ok) => Ok(ok.clone()),
            None => Err(v["error"].as_str().unwrap_or_default().to_owned()),
        }
    }

    fn ok(&mut self, cmd: Value) -> Value {
        let c = cmd.clone();
        self.call(cmd).unwrap_or_else(|e| panic!("{c}: {e}"))
    }

    fn get(&mut self, id: &str) -> Value {
        self.ok(json!({"op": "get", "id": id}))
    }

    /// Waits until `f` holds for machine `id`.
    fn wait_for(&mut self, id: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let m = self.get(id);
            if f(&m) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "{id}: timed out waiting for {what}; last: {m}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// SIGKILL: no chance to clean up anything.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `done` until it holds (panics after 20 s, naming `what`).
fn poll(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The report of the agent's first reconciliation pass, once it has run.
fn first_reconcile(h: &mut Harness) -> Value {
    let mut report = Value::Null;
    poll("the first reconciliation pass", || {
        report = h.ok(json!({"op": "status"}))["last_reconcile"].clone();
        !report.is_null()
    });
    report
}

fn sh(script: &str) -> Value {
    json!({"cmd": ["/bin/sh", "-c", script]})
}

fn pid_of(m: &Value) -> i32 {
    m["pid"].as_i64().unwrap_or_else(|| panic!("no pid: {m}")) as i32
}

/// Destroys every listed machine (killing its workload), so no test leaves processes behind.
fn destroy_all(h: &mut Harness, ids: &[String]) {
    for id in ids {
        let _ = h.call(json!({"op": "destroy", "id": id, "timeout_ms": 1000}));
    }
}

#[test]
fn workloads_survive_the_agent_being_killed_and_are_reattached() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::start(dir.path());
    let ids: Vec<String> = (0..20).map(|i| format!("m{i:02}")).collect();
    let mut pids = Vec::new();
    for id in &ids {
        let m = h.ok(json!({"op": "create", "id": id, "config": {"cmd": ["sleep", "1000"]}}));
        assert_eq!(m["state"], "started", "{m}");
        pids.push(ProcessId::of(pid_of(&m)).unwrap());
    }
    let versions: Vec<Value> = ids.iter().map(|id| h.get(id)["version"].clone()).collect();
    h.kill();

    std::thread::sleep(Duration::from_millis(300));
    for (id, p) in ids.iter().zip(&pids) {
        assert!(p.is_alive(), "{id}'s workload died with the agent");
    }

    let mut h = Harness::start(dir.path());
    let status = h.ok(json!({"op": "status"}));
    assert_eq!(status["reattached"], 20, "{status}");
    // Let a few reconciliation passes run: none may restart or fail anything.
    std::thread::sleep(Duration::from_millis(700));
    for ((id, p), version) in ids.iter().zip(&pids).zip(&versions) {
        let m = h.get(id);
        assert_eq!(m["state"], "started", "{m}");
        assert_eq!(pid_of(&m), p.pid, "{id} was restarted");
        assert_eq!(&m["version"], version, "{id} got new transitions: {m}");
        assert!(p.is_alive());
    }
    let report = h.ok(json!({"op": "status"}))["last_reconcile"].clone();
    assert_eq!(report["planned"], json!([]), "{report}");

    // Exits after reattachment are still seen.
    let victim = ProcessId::of(pids[0].pid).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let m = h.wait_for(&ids[0], "the kill to be recorded", |m| {
        m["state"] == "failed"
    });
    assert_eq!(m["exit"]["signal"], "SIGKILL", "{m}");
    destroy_all(&mut h, &ids);
    for p in &pids {
        assert!(!p.is_alive());
    }
}

#[test]
fn an_exit_while_the_agent_is_down_is_recorded_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::start(dir.path());
    h.ok(json!({"op": "create", "id": "quitter", "config": sh("sleep 0.4; exit 3")}));
    h.ok(json!({"op": "create", "id": "clean", "config": sh("sleep 0.4; exit 0")}));
    h.kill();
    let killed_at = Instant::now();
    std::thread::sleep(Duration::from_millis(900));
    let restarted_at = std::time::SystemTime::now();

    let mut h = Harness::start(dir.path());
    let m = h.wait_for("quitter", "the exit to be recorded", |m| {
        m["state"] == "failed"
    });
    assert_eq!(m["exit"]["code"], 3, "{m}");
    // The exit time is when it happened (before the restart), not when the agent learned it.
    let at = humantime::parse_rfc3339(m["exit"]["at"].as_str().unwrap()).unwrap();
    assert!(
        at < restarted_at,
        "exit time {at:?} should precede the restart"
    );
    let history = h.ok(json!({"op": "history", "id": "quitter"}));
    let last = history.as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["source"].as_str(), last["type"].as_str()),
        (Some("berth"), Some("exit"))
    );
    assert_eq!(last["reason"], "exited with code 3");
    let m = h.wait_for("clean", "the clean exit", |m| m["state"] == "stopped");
    assert_eq!(m["exit"]["code"], 0);
    assert!(killed_at.elapsed() < Duration::from_secs(10));
    destroy_all(&mut h, &["quitter".into(), "clean".into()]);
}

#[test]
fn restart_policies_with_real_processes() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::start(dir.path());
    let flaky = json!({"cmd": ["/bin/sh", "-c", "exit 1"], "restart": {"policy": "on-failure", "max_retries": 2}});
    h.ok(json!({"op": "create", "id": "flaky", "config": flaky}));
    let m = h.wait_for("flaky", "retries to run out", |m| m["state"] == "failed");
    assert_eq!(m["restarts"], 2, "{m}");
    let history = h.ok(json!({"op": "history", "id": "flaky"}));
    let restarts: Vec<&Value> = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["to"] == "restarting")
        .collect();
    assert_eq!(restarts.len(), 2);
    assert!(
        restarts[1]["reason"].as_str().unwrap().contains("in 200ms"),
        "{}",
        restarts[1]
    );

    let always =
        json!({"cmd": ["/bin/sh", "-c", "sleep 0.05; exit 0"], "restart": {"policy": "always"}});
    h.ok(json!({"op": "create", "id": "always", "config": always}));
    h.wait_for("always", "three restarts", |m| {
        m["restarts"].as_u64() >= Some(3)
    });
    let before = h.get("always")["restarts"].as_u64().unwrap();
    // A user stop supersedes the policy's restart loop and ends it for good.
    h.ok(json!({"op": "stop", "id": "always", "timeout_ms": 1000}));
    let m = h.wait_for("always", "a stopped state", |m| {
        m["state"] == "stopped" && m["active_op"].is_null()
    });
    std::thread::sleep(Duration::from_millis(800));
    let after = h.get("always");
    assert_eq!(
        after["state"], "stopped",
        "{after} (restarts before stop: {before}, at stop: {m})"
    );

    let never = json!({"cmd": ["/bin/sh", "-c", "exit 0"]});
    h.ok(json!({"op": "create", "id": "oneshot", "config": never}));
    let m = h.wait_for("oneshot", "stopped", |m| m["state"] == "stopped");
    assert_eq!(
        (m["restarts"].as_u64(), m["exit"]["code"].as_i64()),
        (Some(0), Some(0))
    );
    destroy_all(&mut h, &["flaky".into(), "always".into(), "oneshot".into()]);
}

#[test]
fn the_blast_radius_guard_holds_when_most_workloads_vanish_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::start(dir.path());
    let ids: Vec<String> = (0..6).map(|i| format!("g{i}")).collect();
    let mut shims = Vec::new();
    for id in &ids {
        let m = h.ok(json!({"op": "create", "id": id, "config": {"cmd": ["sleep", "1000"]}}));
        let state: berth_driver::files::ShimState =
            berth_driver::files::read_json(&dir.path().join("machines").join(id).join("shim.json"))
                .unwrap()
                .unwrap();
        assert_eq!(state.workload.pid, pid_of(&m));
        shims.push(state);
    }
    h.kill();
    // Something takes out every supervisor and workload at once (as a bad reboot would).
    for s in &shims {
        for p in [s.shim.pid, s.workload.pid] {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    poll("every killed process to be gone", || {
        shims.iter().all(|s| {
            [s.shim.pid, s.workload.pid]
                .iter()
                .all(|p| nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), None).is_err())
        })
    });

    let mut h = Harness::start(dir.path());
    let report = first_reconcile(&mut h);
    assert_eq!(report["blocked"], true, "{report}");
    assert_eq!(report["planned"].as_array().unwrap().len(), 6);
    for id in &ids {
        assert_eq!(
            h.get(id)["state"],
            "started",
            "the guard must leave {id} alone"
        );
    }
    // An operator approves the pass.
    let report = h.ok(json!({"op": "reconcile", "approve": true}));
    assert_eq!(
        (report["blocked"].as_bool(), report["applied"].as_u64()),
        (Some(false), Some(6)),
        "{report}"
    );
    for id in &ids {
        let m = h.get(id);
        assert_eq!(m["state"], "failed", "{m}");
    }
    let last = h
        .ok(json!({"op": "history", "id": "g0"}))
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert!(
        last["reason"]
            .as_str()
            .unwrap()
            .contains("no exit recorded"),
        "{last}"
    );
    destroy_all(&mut h, &ids);
}

#[test]
fn orphaned_supervisors_are_reported_not_killed() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path());
    drop(h);
    // A supervisor whose machine the store does not know (e.g. a record lost to a restore).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut cfg = berth_driver::DriverConfig::new(dir.path().join("machines"));
    cfg.shim = shim_path();
    cfg.shim_args = Vec::new();
    let driver = berth_driver::Driver::new(cfg).unwrap();
    let pid = rt
        .block_on(driver.spawn(
            "stray",
            &berth_types::MachineConfig::command(["sleep", "1000"]),
            "x",
        ))
        .unwrap();
    let mut h = Harness::start(dir.path());
    let report = first_reconcile(&mut h);
    assert_eq!(report["orphans"], json!(["stray"]), "{report}");
    assert!(
        ProcessId::of(pid).unwrap().is_alive(),
        "an orphan must not be killed"
    );
    rt.block_on(driver.stop("stray", "SIGKILL", Duration::from_secs(1)))
        .unwrap();
    driver.cleanup("stray").unwrap();
}

#[test]
fn a_limit_this_host_cannot_enforce_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::start(dir.path());
    let caps = berth_driver::cgroup::Cgroups::detect("berth")
        .map(|c| c.capabilities())
        .unwrap_or_default();
    let err = h.call(json!({"op": "create", "id": "big", "config": {"cmd": ["sleep", "1"], "resources": {"memory_mb": 64}}}));
    if caps.memory_limit {
        assert!(err.is_ok(), "{err:?}");
        destroy_all(&mut h, &["big".into()]);
    } else {
        let err = err.unwrap_err();
        assert!(
            err.starts_with("config.resources.memory_mb: this host cannot enforce"),
            "{err}"
        );
        assert!(
            h.call(json!({"op": "get", "id": "big"})).is_err(),
            "nothing may be recorded"
        );
    }
}
