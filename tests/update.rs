//! Config updates against a real berthd with real workloads: an update restarts a running
//! machine once with its new env; a stale `current_version` and an invalid config are refused
//! and change nothing; `skip_start` records without restarting; versions are listed newest
//! first; a rollback restores the previous config; berthd SIGKILLed at each step of an update
//! resumes to the new config; and the CLI's update, versions and rollback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use berth_api_types::{RollbackRequest, UpdateMachine};
use berth_client::{Client, ClientError, Method};
use berth_types::{EventKind, MachineConfig, MachineRecord, State};
use serde_json::{Value, json};

mod common;
use common::*;

/// A workload that prints its greeting and its pid, then sleeps as that same process.
fn greeter(greeting: &str) -> MachineConfig {
    let mut c = MachineConfig::command([
        "sh",
        "-c",
        "echo \"greeting=$GREETING pid=$$\"; exec sleep 1000",
    ]);
    c.env.insert("GREETING".into(), greeting.into());
    c
}

fn create(rt: &tokio::runtime::Runtime, c: &Client, config: MachineConfig) -> MachineRecord {
    let body = berth_api_types::CreateMachine {
        name: None,
        config,
        metadata: Default::default(),
        skip_start: false,
    };
    let m = rt.block_on(c.create(&body, None)).unwrap();
    assert_eq!(m.state, State::Started, "{m:?}");
    assert_eq!(m.config_version, 1);
    m
}

fn with_greeting(m: &MachineRecord, greeting: &str) -> MachineConfig {
    let mut c = m.config.clone();
    c.env.insert("GREETING".into(), greeting.into());
    c
}

fn logs(rt: &tokio::runtime::Runtime, c: &Client, id: &str) -> String {
    let r = rt
        .block_on(c.raw(
            Method::GET,
            &format!("/v1/machines/{id}/logs?tail=1000"),
            None,
            &[],
        ))
        .unwrap();
    String::from_utf8_lossy(&r.body).into_owned()
}

fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

fn poll<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The workload wrote `greeting=G pid=P` with its own pid: the new config really runs.
fn wait_greeting(rt: &tokio::runtime::Runtime, c: &Client, m: &MachineRecord, greeting: &str) {
    let line = format!("greeting={greeting} pid={}", m.pid.unwrap());
    poll(10, &line, || {
        logs(rt, c, m.id.as_str()).contains(&line).then_some(())
    });
}

fn update_raw(rt: &tokio::runtime::Runtime, c: &Client, id: &str, body: &Value) -> (u16, Value) {
    let r = rt
        .block_on(c.raw(
            Method::POST,
            &format!("/v1/machines/{id}"),
            Some(serde_json::to_vec(body).unwrap()),
            &[],
        ))
        .unwrap();
    (
        r.status.as_u16(),
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

#[test]
fn an_update_restarts_a_running_machine_once_with_its_new_env() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let (rt, c) = (rt(), agent.socket());
    let m = create(&rt, &c, greeter("one"));
    wait_greeting(&rt, &c, &m, "one");
    let old_pid = m.pid.unwrap();
    let before = rt.block_on(c.machine_events(m.id.as_str())).unwrap().len();

    let req = UpdateMachine {
        config: with_greeting(&m, "two"),
        current_version: Some(1),
        skip_start: false,
    };
    let u = rt.block_on(c.update(m.id.as_str(), &req)).unwrap();
    assert_eq!((u.state, u.config_version), (State::Started, 2), "{u:?}");
    assert_ne!(u.pid, Some(old_pid));
    assert!(!alive(old_pid), "the old workload still runs");
    wait_greeting(&rt, &c, &u, "two");
    assert_eq!(u.config.env["GREETING"], "two");

    // Exactly one restart: the update event, the update's restarting, one start.
    let events = rt.block_on(c.machine_events(m.id.as_str())).unwrap();
    let after: Vec<(EventKind, Option<State>, State)> = events[before..]
        .iter()
        .map(|e| (e.kind, e.from, e.to))
        .collect();
    assert_eq!(
        after,
        [
            (EventKind::Update, Some(State::Started), State::Started),
            (EventKind::Update, Some(State::Started), State::Restarting),
            (EventKind::Start, Some(State::Restarting), State::Started),
        ]
    );
    assert!(
        events[before].reason.contains("changed: env"),
        "{}",
        events[before].reason
    );
    // And it stays that way: no second start behind it.
    std::thread::sleep(Duration::from_millis(500));
    let now = rt.block_on(c.get(m.id.as_str())).unwrap();
    assert_eq!((now.pid, now.state), (u.pid, State::Started));
    assert_eq!(
        logs(&rt, &c, m.id.as_str()).matches("greeting=two").count(),
        1
    );
}

#[test]
fn stale_versions_and_invalid_configs_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let (rt, c) = (rt(), agent.socket());
    let m = create(&rt, &c, greeter("one"));
    let id = m.id.to_string();
    let cfg = |g: &str| serde_json::to_value(with_greeting(&m, g)).unwrap();
    let (s, v) = update_raw(
        &rt,
        &c,
        &id,
        &json!({"config": cfg("two"), "current_version": 1}),
    );
    assert_eq!(s, 200, "{v}");
    let current = rt.block_on(c.get(&id)).unwrap();
    let events = rt.block_on(c.machine_events(&id)).unwrap();
    let versions = rt.block_on(c.versions(&id)).unwrap();

    let (s, v) = update_raw(
        &rt,
        &c,
        &id,
        &json!({"config": cfg("three"), "current_version": 1}),
    );
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("version_mismatch")),
        "{v}"
    );
    assert!(v["error"].as_str().unwrap().contains("version 2"), "{v}");

    let mut bad = cfg("three");
    bad["stop"] = json!({"signal": "SIGNOPE"});
    for body in [
        json!({"config": bad}),
        json!({"config": {"cmd": []}}),
        json!({"config": cfg("three"), "surprise": true}),
        json!({"config": {"cmd": ["x"], "resources": {"cpus": -1}}}),
    ] {
        let (s, v) = update_raw(&rt, &c, &id, &body);
        assert_eq!(
            (s, v["code"].as_str()),
            (400, Some("invalid")),
            "{body}: {v}"
        );
    }
    // Nothing changed: the record, its history, its versions, its workload.
    assert_eq!(rt.block_on(c.get(&id)).unwrap(), current);
    assert_eq!(rt.block_on(c.machine_events(&id)).unwrap(), events);
    assert_eq!(rt.block_on(c.versions(&id)).unwrap(), versions);
    assert!(alive(current.pid.unwrap()));

    // A destroyed machine gets the error a start gets.
    rt.block_on(c.destroy(&id, true)).unwrap();
    let start = rt.block_on(c.action(&id, "start")).unwrap_err();
    let (s, v) = update_raw(&rt, &c, &id, &json!({"config": cfg("four")}));
    let ClientError::Api { status, body } = start else {
        panic!("{start}")
    };
    assert_eq!((s, v["code"].as_str()), (status, Some(body.code.as_str())));
    assert_eq!(v["error"].as_str(), Some(body.error.as_str()));
    // An unknown machine is 404.
    let (s, _) = update_raw(&rt, &c, "nosuchmachine", &json!({"config": cfg("x")}));
    assert_eq!(s, 404);
}

#[test]
fn skip_start_versions_and_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let (rt, c) = (rt(), agent.socket());
    let m = create(&rt, &c, greeter("one"));
    let id = m.id.to_string();
    let pid = m.pid.unwrap();

    // skip_start: recorded, not applied; the next restart runs it.
    let req = UpdateMachine {
        config: with_greeting(&m, "two"),
        current_version: None,
        skip_start: true,
    };
    let u = rt.block_on(c.update(&id, &req)).unwrap();
    assert_eq!(
        (u.config_version, u.pid, u.state),
        (2, Some(pid), State::Started)
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(pid));
    assert!(!logs(&rt, &c, &id).contains("greeting=two"));
    let r = rt.block_on(c.action(&id, "restart")).unwrap();
    wait_greeting(&rt, &c, &r, "two");

    let req = UpdateMachine {
        config: with_greeting(&m, "three"),
        current_version: Some(2),
        skip_start: false,
    };
    let u = rt.block_on(c.update(&id, &req)).unwrap();
    wait_greeting(&rt, &c, &u, "three");

    let versions = rt.block_on(c.versions(&id)).unwrap();
    let got: Vec<(u64, &str)> = versions
        .iter()
        .map(|v| (v.version, v.config.env["GREETING"].as_str()))
        .collect();
    assert_eq!(got, [(3, "three"), (2, "two"), (1, "one")], "newest first");
    assert!(
        versions
            .windows(2)
            .all(|w| w[0].created_at >= w[1].created_at)
    );

    // Rollback (default: the previous version) records it as a new version and applies it.
    let r = rt
        .block_on(c.rollback(&id, &RollbackRequest::default()))
        .unwrap();
    assert_eq!((r.config_version, r.state), (4, State::Started));
    assert_eq!(r.config.env["GREETING"], "two");
    wait_greeting(&rt, &c, &r, "two");
    let r = rt
        .block_on(c.rollback(&id, &RollbackRequest { version: Some(1) }))
        .unwrap();
    assert_eq!(
        (r.config_version, r.config.env["GREETING"].as_str()),
        (5, "one")
    );
    wait_greeting(&rt, &c, &r, "one");
    let err = rt
        .block_on(c.rollback(&id, &RollbackRequest { version: Some(99) }))
        .unwrap_err();
    assert_eq!(err.code(), Some("not_found"), "{err}");

    // A stopped machine keeps its state; its next start runs the new config.
    rt.block_on(c.stop(&id, &Default::default())).unwrap();
    let req = UpdateMachine {
        config: with_greeting(&m, "five"),
        current_version: Some(5),
        skip_start: false,
    };
    let u = rt.block_on(c.update(&id, &req)).unwrap();
    assert_eq!((u.state, u.config_version), (State::Stopped, 6));
    let s = rt.block_on(c.action(&id, "start")).unwrap();
    wait_greeting(&rt, &c, &s, "five");
}

/// The steps of an update at which berthd is SIGKILLed.
const UPDATE_STEPS: [&str; 4] = [
    "update:stop_workload:before",
    "update:stop_workload:after",
    "update:spawn:before",
    "update:spawn:after",
];

/// A workload that greets in its log, and how a test tells its runs apart.
trait Greeter {
    /// The machine's config with this greeting.
    fn config(&self, greeting: &str) -> MachineConfig;
    /// Whether `log` shows the workload of `m` (as recorded) greeting with `greeting`.
    fn greeted(&self, log: &str, m: &MachineRecord, greeting: &str) -> bool;
    /// The host pid of the workload that greeted with `greeting`, once it did.
    fn pid_of(&self, log: &str, id: &str, greeting: &str) -> Option<u32>;
}

/// A process machine: `sh` on the host prints its own pid.
struct HostGreeter;

impl Greeter for HostGreeter {
    fn config(&self, greeting: &str) -> MachineConfig {
        greeter(greeting)
    }

    fn greeted(&self, log: &str, m: &MachineRecord, greeting: &str) -> bool {
        log.contains(&format!("greeting={greeting} pid={}", m.pid.unwrap()))
    }

    fn pid_of(&self, log: &str, _id: &str, greeting: &str) -> Option<u32> {
        log.lines()
            .find_map(|l| l.split(&format!("greeting={greeting} pid=")).nth(1))
            .and_then(|p| p.trim().parse().ok())
    }
}

/// An image machine of busybox under runc: its shell is pid 1 in its own namespace, so each run
/// prints a fresh id instead, and its host pid is the container's init as runc reports it.
struct ImageGreeter {
    image: String,
}

impl Greeter for ImageGreeter {
    fn config(&self, greeting: &str) -> MachineConfig {
        let mut c = MachineConfig::command([
            "/bin/sh",
            "-c",
            "echo \"greeting=$GREETING run=$(cat /proc/sys/kernel/random/uuid)\"; exec sleep 1000",
        ]);
        c.image = Some(self.image.clone());
        c.env.insert("GREETING".into(), greeting.into());
        c
    }

    fn greeted(&self, log: &str, m: &MachineRecord, greeting: &str) -> bool {
        log.contains(&format!("greeting={greeting} run="))
            && m.pid.is_some()
            && runc_pid(m.id.as_str()) == m.pid
    }

    fn pid_of(&self, log: &str, id: &str, greeting: &str) -> Option<u32> {
        if log.contains(&format!("greeting={greeting} run=")) {
            runc_pid(id)
        } else {
            None
        }
    }
}

/// The host pid of machine `id`'s container init, as `runc state` says (`None` when runc does
/// not know the container or it does not run).
fn runc_pid(id: &str) -> Option<u32> {
    let out = std::process::Command::new("runc")
        .args(["state", &format!("berth-{id}")])
        .output()
        .unwrap();
    let state: Value = serde_json::from_slice(&out.stdout).ok()?;
    (state["status"] == "running")
        .then(|| state["pid"].as_u64())
        .flatten()
        .map(|p| p as u32)
}

/// berthd SIGKILLed at `point` of an update (paused there by `BERTH_FAULT_PAUSE_AT`): the
/// restarted agent resumes the operation and the machine ends running its new config, with
/// exactly one new workload and the old one gone.
fn sigkilled_update_resumes(dir: &std::path::Path, point: &str, g: &dyn Greeter) {
    let mut agent = Agent::start_logged(dir, "");
    let (rt, c) = (rt(), agent.socket());
    let m = create(&rt, &c, g.config("one"));
    let id = m.id.to_string();
    let old_pid = m.pid.unwrap();
    poll(20, "the first greeting", || {
        g.greeted(&logs(&rt, &c, &id), &m, "one").then_some(())
    });

    // Run berthd again with the pause point (workloads outlive a berthd restart).
    agent.stop();
    let mut cmd = agent.command();
    cmd.env("BERTH_FAULT_PAUSE_AT", point);
    agent.child = Some(cmd.spawn().unwrap());
    poll(15, "berthd to serve", || {
        (agent.dir.join("berth.sock").exists()
            && std::net::TcpStream::connect(("127.0.0.1", agent.port)).is_ok())
        .then_some(())
    });
    let req = UpdateMachine {
        config: with_greeting(&m, "two"),
        current_version: Some(1),
        skip_start: false,
    };
    let client = c.clone();
    let id2 = id.clone();
    let pending = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(client.update(&id2, &req))
    });
    let mark = format!("fault: operation paused at {point}");
    poll(15, &mark, || agent.log_text().contains(&mark).then_some(()));
    let recorded = rt.block_on(c.get(&id)).unwrap();
    assert_eq!(
        (recorded.config_version, recorded.state),
        (2, State::Restarting),
        "{point}"
    );
    let spawned_before_kill = (point == "update:spawn:after").then(|| {
        poll(20, "the new workload's greeting", || {
            g.pid_of(&logs(&rt, &c, &id), &id, "two")
        })
    });
    let mut child = agent.child.take().unwrap();
    child.kill().unwrap(); // SIGKILL, mid-operation
    child.wait().unwrap();
    let answer = pending.join().unwrap();
    assert!(answer.is_err(), "{point}: the update answered {answer:?}");

    agent.spawn();
    let done = poll(30, "the update to resume", || {
        let m = rt.block_on(c.get(&id)).ok()?;
        (m.state == State::Started && m.active_op.is_none()).then_some(m)
    });
    assert_eq!(done.config_version, 2, "{point}");
    assert_eq!(done.config.env["GREETING"], "two", "{point}");
    assert_ne!(done.pid, Some(old_pid), "{point}");
    assert!(!alive(old_pid), "{point}: the old workload still runs");
    if let Some(pid) = spawned_before_kill {
        assert_eq!(
            done.pid,
            Some(pid),
            "{point}: the resumed spawn started another workload"
        );
    }
    poll(20, "the new greeting", || {
        g.greeted(&logs(&rt, &c, &id), &done, "two").then_some(())
    });
    assert_eq!(
        logs(&rt, &c, &id).matches("greeting=two").count(),
        1,
        "{point}: exactly one new workload"
    );
    let events = rt.block_on(c.machine_events(&id)).unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind == EventKind::Update)
            .count(),
        2,
        "{point}: one update event and one restarting"
    );
}

/// [`sigkilled_update_resumes`] at every step, for a process machine.
#[test]
fn a_sigkilled_update_resumes_to_the_new_config_at_every_step() {
    for point in UPDATE_STEPS {
        let dir = tempfile::tempdir().unwrap();
        sigkilled_update_resumes(dir.path(), point, &HostGreeter);
    }
}

/// [`sigkilled_update_resumes`] at every step, for an image machine under runc: the old
/// container goes, the new one runs the new config, and the runtime holds no third one.
#[test]
fn a_sigkilled_update_of_an_image_machine_resumes_to_the_new_config_at_every_step() {
    for point in UPDATE_STEPS {
        let dir = tempfile::tempdir().unwrap();
        let image = busybox::image(&dir.path().join("busybox"));
        sigkilled_update_resumes(&dir.path().join("agent"), point, &ImageGreeter { image });
    }
}

#[path = "common/busybox.rs"]
mod busybox;

#[test]
fn the_cli_updates_lists_versions_and_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let (rt, c) = (rt(), agent.socket());
    let m = create(&rt, &c, greeter("one"));
    let name = m.id.to_string();

    let o = agent.cli(&[
        "machine",
        "update",
        &name,
        "--env",
        "GREETING=two",
        "--env",
        "EXTRA=x",
        "--restart",
        "always",
    ]);
    assert!(o.status.success(), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("config version 1 → 2"), "{out}");
    assert!(out.contains("env.GREETING: \"one\" → \"two\""), "{out}");
    assert!(out.contains("env.EXTRA: (unset) → \"x\""), "{out}");
    assert!(out.contains("restart: no → always"), "{out}");
    let u = rt.block_on(c.get(&name)).unwrap();
    assert_eq!(
        u.config.cmd, m.config.cmd,
        "only what the flags say changes"
    );
    wait_greeting(&rt, &c, &u, "two");

    // A stale --if-version: exit 1, said in CLI words, nothing changed.
    let o = agent.cli(&[
        "machine",
        "update",
        &name,
        "--env",
        "GREETING=three",
        "--if-version",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("was not updated") && err.contains("--if-version 1"),
        "{err}"
    );
    assert_eq!(rt.block_on(c.get(&name)).unwrap().config_version, 2);

    let o = agent.cli(&["machine", "versions", "--json", &name]);
    assert!(o.status.success(), "{o:?}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let numbers: Vec<u64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [2, 1]);
    let o = agent.cli(&["machine", "versions", &name]);
    assert!(o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("GREETING=one"));

    let o = agent.cli(&["machine", "rollback", &name]);
    assert!(o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("config version 2 → 3"));
    let r = rt.block_on(c.get(&name)).unwrap();
    assert_eq!(
        r.config.env.get("GREETING").map(String::as_str),
        Some("one")
    );
    assert!(!r.config.env.contains_key("EXTRA"));
    wait_greeting(&rt, &c, &r, "one");
    let o = agent.cli(&["machine", "rollback", &name, "--to", "2"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        rt.block_on(c.get(&name)).unwrap().config.env["GREETING"],
        "two"
    );
}
