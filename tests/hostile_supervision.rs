//! Hostile supervision: a real berthd whose view of its machines is taken away or lied to.
//! Unknown is never absent (EMFILE, a garbled shim.json), the workload's working directory is its
//! own, a killed supervisor, fds inherited by berthd, and a log replaced by a symbolic link.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_client::Method;
use berth_driver::proc::ProcessId;
use berth_types::{MachineRecord, RestartPolicy};

mod common;
use common::*;

fn body(cmd: &[&str], policy: RestartPolicy) -> berth_api_types::CreateMachine {
    let mut config = berth_types::MachineConfig::command(cmd.iter().copied());
    config.restart.policy = policy;
    berth_api_types::CreateMachine {
        name: None,
        config,
        metadata: Default::default(),
        skip_start: false,
    }
}

fn machine_dir(agent: &Agent, id: &str) -> PathBuf {
    agent.dir.join("machines").join(id)
}

fn shim_state(agent: &Agent, id: &str) -> berth_driver::files::ShimState {
    berth_driver::files::read_json(&machine_dir(agent, id).join("shim.json"))
        .unwrap()
        .unwrap()
}

/// Polls `f` until it returns `Some`, for up to `secs` seconds.
fn poll<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn alive(p: &ProcessId) -> bool {
    p.is_alive()
}

/// One reconciliation pass, now (`POST /v1/host/reconcile`).
fn reconcile_now(rt: &tokio::runtime::Runtime, agent: &Agent) {
    let r = rt
        .block_on(
            agent
                .socket()
                .raw(Method::POST, "/v1/host/reconcile", None, &[]),
        )
        .unwrap();
    assert!(r.status.is_success(), "{r:?}");
}

fn get(rt: &tokio::runtime::Runtime, agent: &Agent, id: &str) -> MachineRecord {
    rt.block_on(agent.socket().get(id)).unwrap()
}

fn health(rt: &tokio::runtime::Runtime, agent: &Agent) -> serde_json::Value {
    let r = rt
        .block_on(agent.socket().raw(Method::GET, "/v1/health", None, &[]))
        .unwrap();
    serde_json::from_slice(&r.body).unwrap()
}

fn metric(rt: &tokio::runtime::Runtime, agent: &Agent, name: &str) -> Option<f64> {
    let r = rt
        .block_on(agent.socket().raw(Method::GET, "/metrics", None, &[]))
        .unwrap();
    String::from_utf8_lossy(&r.body).lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// berthd runs out of file descriptors (its soft RLIMIT_NOFILE squeezed below what it has open,
/// so every open fails with EMFILE): reading shim.json fails. Started machines, `restart: always`
/// ones too, must stay started with their workloads and shim.json untouched; once descriptors
/// return, everything agrees again.
#[test]
fn emfile_leaves_started_machines_started() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start_logged(dir.path(), "");
    let rt = rt();
    let c = agent.socket();
    let mut machines = Vec::new();
    for policy in [RestartPolicy::No, RestartPolicy::Always] {
        let m = rt
            .block_on(c.create(&body(&["sleep", "1000"], policy), None))
            .unwrap();
        let id = m.id.to_string();
        let shim_json = std::fs::read(machine_dir(&agent, &id).join("shim.json")).unwrap();
        machines.push((m, shim_json, shim_state(&agent, &id)));
    }
    let pid = agent.child.as_ref().unwrap().id().to_string();
    let limits = |soft: &str| {
        let out = Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={soft}:")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let before = Command::new("prlimit")
        .args([
            "--pid",
            &pid,
            "--nofile",
            "--raw",
            "--noheadings",
            "-o",
            "SOFT",
        ])
        .output()
        .unwrap();
    let soft = String::from_utf8(before.stdout).unwrap().trim().to_owned();
    // 0, 1 and 2 are always open, so no new descriptor fits under 3.
    limits("3");
    // Several reconciliation passes (every 200 ms) meet EMFILE on every machine (two lines per
    // machine and pass say so). Bounded: whatever berthd logs, the assertions below decide.
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.log_text().matches("Too many open files").count() < 12 && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(25));
    }
    limits(&soft);
    poll(20, "the API to answer again", || {
        rt.block_on(agent.socket().health()).ok()
    });
    for (m, shim_json, state) in &machines {
        let now = get(&rt, &agent, m.id.as_str());
        assert_eq!(now.state.to_string(), "started", "{now:?}");
        assert_eq!(
            (now.pid, now.version, now.restarts),
            (m.pid, m.version, 0),
            "{now:?}"
        );
        assert!(
            alive(&state.workload) && alive(&state.shim),
            "the workload was touched"
        );
        assert_eq!(
            &std::fs::read(machine_dir(&agent, m.id.as_str()).join("shim.json")).unwrap(),
            shim_json,
            "shim.json was changed or removed"
        );
    }
    // Everything agrees again: no machine unknown, health ok, doctor clean.
    poll(20, "health to be ok again", || {
        (health(&rt, &agent)["checks"]["supervision_evidence"]["ok"] == true).then_some(())
    });
    poll(20, "berth doctor to agree", || {
        agent.cli(&["doctor"]).status.success().then_some(())
    });
    assert!(
        !agent.log_text().contains("panicked"),
        "{}",
        agent.log_text()
    );
    for (m, _, _) in &machines {
        assert!(
            agent
                .log_text()
                .lines()
                .any(|l| l.contains("cannot tell whether the workload runs")
                    && l.contains(m.id.as_str())
                    && l.contains("Too many open files")),
            "EMFILE was not met reading {}'s files:\n{}",
            m.id,
            agent.log_text()
        );
    }
    // The workloads are still supervised: an exit is still seen.
    let (m, _, state) = &machines[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(state.workload.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    poll(20, "the exit to be recorded", || {
        (get(&rt, &agent, m.id.as_str()).state.to_string() == "failed").then_some(())
    });
    let _ = agent.stop();
}

/// A garbled shim.json is unknown, not failed: the machine stays started and is shown as
/// unknown by health, the metric and `berth doctor`; once the file is whole, all agree again.
#[test]
fn a_garbled_shim_json_is_unknown_and_visible() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let rt = rt();
    let m = rt
        .block_on(
            agent
                .socket()
                .create(&body(&["sleep", "1000"], RestartPolicy::No), None),
        )
        .unwrap();
    let id = m.id.to_string();
    let path = machine_dir(&agent, &id).join("shim.json");
    let good = std::fs::read(&path).unwrap();
    std::fs::write(&path, b"{\"instance\": \"op-1\", \"shim\": ").unwrap();
    let h = poll(20, "health to be degraded", || {
        let h = health(&rt, &agent);
        (h["checks"]["supervision_evidence"]["ok"] == false).then_some(h)
    });
    assert_eq!(h["status"], "degraded", "{h}");
    let check = &h["checks"]["supervision_evidence"];
    assert!(check["detail"].as_str().unwrap().contains(&id), "{h}");
    assert_eq!(metric(&rt, &agent, "berth_machines_unknown"), Some(1.0));
    let doctor = agent.cli(&["doctor"]);
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        !doctor.status.success() && text.contains(&id) && text.contains("unknown"),
        "{text}"
    );
    // A few more passes change nothing.
    reconcile_now(&rt, &agent);
    let now = get(&rt, &agent, &id);
    assert_eq!(
        (now.state.to_string(), now.version),
        ("started".to_owned(), m.version)
    );

    std::fs::write(&path, &good).unwrap();
    poll(20, "health to be ok again", || {
        (health(&rt, &agent)["checks"]["supervision_evidence"]["ok"] == true).then_some(())
    });
    assert_eq!(metric(&rt, &agent, "berth_machines_unknown"), Some(0.0));
    assert!(agent.cli(&["doctor"]).status.success());
    assert_eq!(get(&rt, &agent, &id).state.to_string(), "started");
}

/// A workload's default working directory is `/` (or its user's home), never its machine's
/// directory: nothing it writes where it starts can touch its supervisor's state. A supervisor
/// found after an agent restart in a directory of the previous layout (with the `work/` that
/// earlier releases made the workload's) is still reattached.
#[test]
fn the_workloads_default_workdir_is_not_its_machine_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(dir.path(), "");
    let rt = rt();
    let m = rt
        .block_on(agent.socket().create(
            &body(&["sh", "-c", "pwd; sleep 1000"], RestartPolicy::No),
            None,
        ))
        .unwrap();
    let id = m.id.to_string();
    let out = poll(10, "the workload's output", || {
        let o = agent.cli(&["logs", &id]);
        let s = String::from_utf8_lossy(&o.stdout).into_owned();
        (!s.is_empty()).then_some(s)
    });
    assert_eq!(out.trim(), "/");
    let cwd = std::fs::read_link(format!("/proc/{}/cwd", m.pid.unwrap())).unwrap();
    assert_eq!(cwd, PathBuf::from("/"));
    let mdir = machine_dir(&agent, &id);
    assert!(
        !mdir.join("work").exists(),
        "no working directory is made in the machine's"
    );
    reconcile_now(&rt, &agent);
    let now = get(&rt, &agent, &id);
    assert_eq!(
        (now.state.to_string(), now.version),
        ("started".to_owned(), m.version),
        "{now:?}"
    );
    let state = shim_state(&agent, &id);
    assert!(alive(&state.workload));

    // An agent restart finds it in a directory of the previous layout and reattaches.
    assert!(agent.stop().success());
    std::fs::create_dir(mdir.join("work")).unwrap();
    std::fs::write(mdir.join("work/shim.json"), "hi\n").unwrap();
    agent.spawn();
    let host = rt.block_on(agent.socket().host()).unwrap();
    assert_eq!(host.supervision.reattached, 1, "{:?}", host.supervision);
    let now = get(&rt, &agent, &id);
    assert_eq!(
        (now.state.to_string(), now.pid),
        ("started".to_owned(), m.pid)
    );
    // It is still supervised (a stop is seen through), and starts again in `/`.
    let stopped = rt
        .block_on(agent.socket().stop(&id, &Default::default()))
        .unwrap();
    assert_eq!(stopped.state.to_string(), "stopped");
    assert!(!alive(&state.workload));
    let again = rt.block_on(agent.socket().action(&id, "start")).unwrap();
    assert_eq!(again.state.to_string(), "started");
    let cwd = std::fs::read_link(format!("/proc/{}/cwd", again.pid.unwrap())).unwrap();
    assert_eq!(cwd, PathBuf::from("/"));
}

/// SIGKILL a machine's berth-shim while its workload runs: the workload is not left running
/// unsupervised; it is killed, its exit recorded with the reason, restart policy applies
/// (`always`: restarted; `no`: failed) and `start` works again.
#[test]
fn a_killed_supervisor_is_handled() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let rt = rt();
    let c = agent.socket();
    let mut cases = Vec::new();
    for policy in [RestartPolicy::No, RestartPolicy::Always] {
        let m = rt
            .block_on(c.create(&body(&["sleep", "1000"], policy), None))
            .unwrap();
        let state = shim_state(&agent, m.id.as_str());
        cases.push((m, state));
    }
    for (_, s) in &cases {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(s.shim.pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    for (_, s) in &cases {
        poll(20, "the unsupervised workload to be killed", || {
            (!alive(&s.workload)).then_some(())
        });
    }
    let (never, _) = &cases[0];
    let failed = poll(20, "the machine to be recorded failed", || {
        let m = get(&rt, &agent, never.id.as_str());
        (m.state.to_string() == "failed").then_some(m)
    });
    let events = rt.block_on(c.machine_events(never.id.as_str())).unwrap();
    let last = events.last().unwrap();
    assert!(
        last.reason.contains("supervisor died; workload killed"),
        "{last:?} ({failed:?})"
    );
    let started = rt.block_on(c.action(never.id.as_str(), "start")).unwrap();
    assert_eq!(started.state.to_string(), "started");
    assert_ne!(started.pid, never.pid);

    let (always, _) = &cases[1];
    let restarted = poll(20, "the always machine to be restarted", || {
        let m = get(&rt, &agent, always.id.as_str());
        (m.state.to_string() == "started" && m.pid != always.pid && m.restarts == 1).then_some(m)
    });
    let events = rt.block_on(c.machine_events(always.id.as_str())).unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.reason.contains("supervisor died; workload killed")),
        "{events:?}"
    );
    let s = shim_state(&agent, always.id.as_str());
    assert_eq!(Some(s.workload.pid as u32), restarted.pid);
    assert!(alive(&s.workload) && alive(&s.shim));
}

/// The fds of every process of a pid, as (number, target).
fn fds(pid: i32) -> Vec<(i32, String)> {
    let mut v: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let n = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some((n, target.display().to_string()))
        })
        .collect();
    v.sort();
    v
}

/// An fd berthd inherits from its parent (not close-on-exec) never reaches a workload, nor its
/// supervisor: the workload has exactly 0, 1 and 2.
#[test]
fn inherited_fds_never_reach_a_workload() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("inherited-marker");
    std::fs::write(&marker, "x").unwrap();
    let file = std::fs::File::open(&marker).unwrap();
    // dup(2) gives a descriptor without close-on-exec: berthd inherits it.
    let leaked = nix::unistd::dup(&file).unwrap();
    let agent = Agent::start(&dir.path().join("data"), "");
    drop(leaked);
    let rt = rt();
    let m = rt
        .block_on(
            agent
                .socket()
                .create(&body(&["sleep", "1000"], RestartPolicy::No), None),
        )
        .unwrap();
    let berthd = agent.child.as_ref().unwrap().id() as i32;
    let marked = |pid: i32| fds(pid).iter().any(|(_, t)| t.contains("inherited-marker"));
    assert!(marked(berthd), "the test did not give berthd the fd");
    let s = shim_state(&agent, m.id.as_str());
    assert!(
        !marked(s.shim.pid),
        "the shim kept it: {:?}",
        fds(s.shim.pid)
    );
    let workload: Vec<i32> = fds(s.workload.pid).iter().map(|(n, _)| *n).collect();
    assert_eq!(workload, vec![0, 1, 2], "{:?}", fds(s.workload.pid));
}

/// A workload that replaces its output.log with a symbolic link to a secret file gets an error
/// through the API, never the file's content: tail, and a follow that was already running.
#[test]
fn log_reads_never_follow_a_link() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "TOP-SECRET\n".repeat(10)).unwrap();
    let agent = Agent::start(&dir.path().join("data"), "");
    let rt = rt();
    let c = agent.socket();
    let mut b = body(
        &[
            "sh",
            "-c",
            // The machine directory: the last argument of its shim ($PPID), since a workload
            // no longer works in it.
            "d=$(tr '\\0' '\\n' < /proc/$PPID/cmdline | tail -n 1); echo visible; \
             while [ ! -e \"$d/go\" ]; do sleep 0.05; done; \
             rm \"$d/logs/output.log\"; ln -s \"$SECRET\" \"$d/logs/output.log\"; sleep 1000",
        ],
        RestartPolicy::No,
    );
    b.config
        .env
        .insert("SECRET".into(), secret.display().to_string());
    let m = rt.block_on(c.create(&b, None)).unwrap();
    let id = m.id.to_string();
    let logs = machine_dir(&agent, &id).join("logs").join("output.log");
    poll(10, "the first output", || {
        std::fs::read_to_string(&logs)
            .ok()
            .filter(|s| s.contains("visible"))
    });
    // A follow that runs while the link is made.
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let path = format!("/v1/machines/{id}/logs?follow=true");
    let follower = agent.socket();
    let follow = rt.spawn(async move {
        let _ = follower
            .stream(&path, |chunk| g.lock().unwrap().extend_from_slice(chunk))
            .await;
    });
    poll(10, "the follow to start", || {
        String::from_utf8_lossy(&got.lock().unwrap())
            .contains("visible")
            .then_some(())
    });
    std::fs::write(machine_dir(&agent, &id).join("go"), "").unwrap();
    poll(10, "the workload to link its log", || {
        std::fs::symlink_metadata(&logs)
            .ok()
            .filter(|m| m.file_type().is_symlink())
    });
    let r = rt
        .block_on(c.raw(Method::GET, &format!("/v1/machines/{id}/logs"), None, &[]))
        .unwrap();
    let text = String::from_utf8_lossy(&r.body);
    assert!(!r.status.is_success(), "{} {text}", r.status);
    assert!(!text.contains("TOP-SECRET"), "{text}");
    let r = rt
        .block_on(c.raw(
            Method::GET,
            &format!("/v1/machines/{id}/logs?follow=true"),
            None,
            &[],
        ))
        .unwrap();
    assert!(!r.status.is_success(), "{}", r.status);
    assert!(!String::from_utf8_lossy(&r.body).contains("TOP-SECRET"));
    // The running follow ends instead of reading through the link.
    let ended = rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), follow).await });
    let seen = String::from_utf8_lossy(&got.lock().unwrap()).into_owned();
    assert!(!seen.contains("TOP-SECRET"), "{seen}");
    assert!(ended.is_ok(), "the follow did not end: {seen}");
}

/// Every supervisor on the host killed at once (an OOM killer, a careless `pkill berth-shim`):
/// killing every unsupervised workload is exactly the decision the blast-radius guard exists
/// for. Nothing is killed until an operator approves; then each is killed and recorded.
#[test]
fn supervisors_killed_together_leave_their_workloads_to_an_operator() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let rt = rt();
    let c = agent.socket();
    let mut cases = Vec::new();
    for _ in 0..6 {
        let m = rt
            .block_on(c.create(&body(&["sleep", "1000"], RestartPolicy::No), None))
            .unwrap();
        let state = shim_state(&agent, m.id.as_str());
        cases.push((m, state));
    }
    for (_, s) in &cases {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(s.shim.pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    poll(20, "the guard to hold the reconciliation back", || {
        let h = health(&rt, &agent);
        (h["checks"]["guard"]["ok"] == false).then_some(())
    });
    // Several passes later, every workload still runs and every machine is still started.
    for _ in 0..5 {
        let _ = health(&rt, &agent);
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    for (m, s) in &cases {
        assert!(alive(&s.workload), "{} was killed without approval", m.id);
        assert_eq!(get(&rt, &agent, m.id.as_str()).state.to_string(), "started");
    }
    let out = agent.cli(&["host", "approve"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (m, s) in &cases {
        poll(20, "the approved kill", || {
            (!alive(&s.workload)).then_some(())
        });
        let failed = poll(20, "the machine to be recorded failed", || {
            let r = get(&rt, &agent, m.id.as_str());
            (r.state.to_string() == "failed").then_some(r)
        });
        let events = rt.block_on(c.machine_events(m.id.as_str())).unwrap();
        assert!(
            events
                .last()
                .is_some_and(|e| e.reason.contains("supervisor died; workload killed")),
            "{events:?} ({failed:?})"
        );
    }
}

/// berthd's umask 077 keeps its own files private; a workload runs with the usual 022.
#[test]
fn a_workload_gets_the_usual_umask() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let rt = rt();
    let c = agent.socket();
    let m = rt
        .block_on(c.create(
            &body(&["sh", "-c", "umask; sleep 1000"], RestartPolicy::No),
            None,
        ))
        .unwrap();
    let out = poll(20, "the workload's output", || {
        let o = agent.cli(&["logs", m.id.as_str()]);
        let t = String::from_utf8_lossy(&o.stdout).into_owned();
        (!t.trim().is_empty()).then_some(t)
    });
    assert_eq!(out.trim(), "0022", "{out}");
}
