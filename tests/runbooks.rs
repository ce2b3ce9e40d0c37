//! The runbooks, executed: every `sh` block of a runbook is run, in order, against a real berthd,
//! and each step's outcome is checked. A runbook that drifts from the binaries fails here.
//!
//! `systemctl stop|start berthd` lines act on the test's own berthd; everything else runs through
//! `sh -c` with the built `berth` first on `PATH` and `BERTH_DATA_DIR` set to the test's data dir.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/nats.rs"]
mod nats;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use berth_store::{Store, StoreOptions, TransitionSpec};
use berth_types::{EventKind, MachineConfig, MachineId, MachineRecord, Source, State, Timestamp};
use common::*;
use serde_json::Value;

/// The commands of a runbook's `sh` blocks, one per line, in order.
fn commands(runbook: &str) -> Vec<String> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../runbooks")
            .join(runbook),
    )
    .unwrap();
    let mut out = Vec::new();
    let mut in_sh = false;
    for line in text.lines() {
        let t = line.trim();
        if let Some(lang) = t.strip_prefix("```") {
            in_sh = !in_sh && lang == "sh";
            continue;
        }
        if in_sh && !t.is_empty() && !t.starts_with('#') {
            out.push(t.to_owned());
        }
    }
    out
}

/// A database with a lot of history, written before berthd starts; retention then trims it,
/// leaving most of the file as garbage.
fn bloat(data: &Path) {
    std::fs::create_dir_all(data).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Store::open(data.join("berth.redb"), StoreOptions::default()).unwrap();
        let mut tasks = Vec::new();
        for m in 0..64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let id = MachineId::parse(&format!("bloat{m}")).unwrap();
                let rec = MachineRecord::new(
                    id.clone(),
                    None,
                    MachineConfig::command(["/bin/true"]),
                    Default::default(),
                    Timestamp::now(),
                );
                store
                    .write(move |w| w.create_machine(rec, Source::User, "bloat"))
                    .await
                    .unwrap();
                for to in [
                    State::Starting,
                    State::Started,
                    State::Stopping,
                    State::Stopped,
                ]
                .iter()
                .cycle()
                .take(160)
                {
                    let (id, to) = (id.clone(), *to);
                    store
                        .write(move |w| {
                            w.transition(
                                &id,
                                TransitionSpec::new(to, EventKind::Start, Source::User, "bloat"),
                            )
                        })
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        store.close();
    });
}

fn sh(cmd: &str, data: &Path, cwd: &Path) -> Output {
    sh_with(cmd, data, cwd, &[])
}

/// [`sh`] with more environment (`BERTH_CONFIG`, `MACHINE`, ...).
fn sh_with(cmd: &str, data: &Path, cwd: &Path, env: &[(&str, &str)]) -> Output {
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("sh")
        .args(["-c", cmd])
        .env("PATH", path)
        .env("BERTH_DATA_DIR", data)
        .env_remove("BERTH_API")
        .env_remove("BERTH_SOCKET")
        .env_remove("BERTH_CONFIG")
        .envs(env.iter().copied())
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn stats(agent: &Agent) -> Value {
    let out = agent.cli(&["db", "stats", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn db_compaction_runbook() {
    let expected = [
        "berth db stats",
        "berth db stats --json",
        "berth host status",
        "berth db backup berth-before-compaction.redb",
        "berth db compact",
        "berth db stats",
        "berth db check",
        "systemctl stop berthd",
        "berth db check --offline",
        "berth db compact --offline",
        "systemctl start berthd",
        "berth db check",
        "systemctl stop berthd",
        "mv ${BERTH_DATA_DIR:-/var/lib/berth}/berth.redb ${BERTH_DATA_DIR:-/var/lib/berth}/berth.redb.broken",
        "cp berth-before-compaction.redb ${BERTH_DATA_DIR:-/var/lib/berth}/berth.redb",
        "berth db check --offline",
        "systemctl start berthd",
        "berth doctor",
    ];
    let cmds = commands("db-compaction.md");
    assert_eq!(
        cmds, expected,
        "the runbook's commands changed: update this test with them"
    );

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cwd = tmp.path().join("oncall");
    std::fs::create_dir_all(&cwd).unwrap();
    bloat(&built_data(&data));
    let mut agent = Agent::start(
        &data,
        "[retention]\nmax_events_per_machine = 4\nmax_events = 500\ninterval = \"200ms\"\n\
         [compaction]\nauto = false\n",
    );
    // The alert's condition: retention has trimmed the history, the file has not shrunk.
    let deadline = Instant::now() + Duration::from_secs(60);
    let bloated = loop {
        let st = stats(&agent);
        if st["garbage_ratio"].as_f64().unwrap() > 0.5
            && st["tables"]["history"].as_u64() <= Some(64 * 4 + 64)
        {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "retention never trimmed the history: {st}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let size_before = bloated["file_size_bytes"].as_u64().unwrap();

    for (i, cmd) in cmds.iter().enumerate() {
        let step = format!("step {} `{cmd}`", i + 1);
        match cmd.as_str() {
            "systemctl stop berthd" => {
                assert!(agent.stop().success(), "{step}");
                continue;
            }
            "systemctl start berthd" => {
                agent.spawn();
                continue;
            }
            _ => {}
        }
        let out = sh(cmd, &data, &cwd);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{step} failed: {stdout}{stderr}");
        match i + 1 {
            1 => assert!(stdout.contains("Garbage ratio"), "{step}: {stdout}"),
            2 => {
                let v: Value = serde_json::from_str(&stdout).unwrap();
                assert!(v["garbage_ratio"].as_f64().unwrap() > 0.5, "{step}: {v}");
            }
            3 => assert!(stdout.contains("ok"), "{step}: {stdout}"),
            4 => {
                assert!(
                    stdout.starts_with("wrote berth-before-compaction.redb"),
                    "{step}: {stdout}"
                );
                assert!(cwd.join("berth-before-compaction.redb").exists());
            }
            5 | 10 => assert!(stdout.starts_with("compacted: "), "{step}: {stdout}"),
            6 => {
                assert!(stdout.contains("Last compaction"), "{step}: {stdout}");
                let st = stats(&agent);
                let size = st["file_size_bytes"].as_u64().unwrap();
                assert!(
                    size < size_before / 2,
                    "{step}: {size} is not much below {size_before}"
                );
                // redb keeps about 1 MiB of fixed overhead, so a small file stays "garbage" by
                // ratio; what compaction promises is a file whose disk usage is close to the
                // live bytes (its length may include redb's sparse reservation, at most as much
                // again).
                assert!(stdout.contains("On disk"), "{step}: {stdout}");
                let live = st["live_bytes"].as_u64().unwrap() as f64;
                let on_disk = st["file_allocated_bytes"].as_u64().unwrap();
                assert!(on_disk > 0, "{step}: {st}");
                assert!(
                    on_disk as f64 <= 1.3 * live + (1 << 20) as f64,
                    "{step}: {st}"
                );
                assert!(size as f64 <= 2.0 * live + (1 << 20) as f64, "{step}: {st}");
                assert!(
                    st["last_compaction"]["max_pause_ms"].as_f64().is_some(),
                    "{step}: {st}"
                );
            }
            7 | 12 => assert!(stdout.contains("database OK"), "{step}: {stdout}"),
            9 | 16 => {
                assert!(stdout.contains("redb integrity: ok"), "{step}: {stdout}");
                assert!(stdout.contains("database OK"), "{step}: {stdout}");
            }
            14 => assert!(data.join("berth.redb.broken").exists(), "{step}"),
            15 => assert!(data.join("berth.redb").exists(), "{step}"),
            18 => {}
            _ => {}
        }
    }
    // The restored database is the backup: the same 64 machines, and the agent serves it.
    let out = agent.cli(&["machine", "list", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 64);
}

/// The data dir, created (berthd creates it too; the bloat is written before it starts).
fn built_data(data: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(data).unwrap();
    data.to_owned()
}

/// One step's result: its exit code and output.
struct Step {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs a runbook command against the test's berthd: `systemctl stop|start|restart berthd` act on
/// `agent`; `journalctl -u berthd ...` reads the agent's log file (the rest of a pipeline runs as
/// written); everything else runs through `sh -c` with `env`.
fn step(agent: &mut Agent, cmd: &str, cwd: &Path, env: &[(&str, &str)]) -> Step {
    match cmd {
        "systemctl stop berthd" => {
            assert!(agent.stop().success(), "berthd did not stop cleanly");
            return Step {
                code: Some(0),
                stdout: String::new(),
                stderr: String::new(),
            };
        }
        "systemctl start berthd" => {
            agent.spawn();
            return Step {
                code: Some(0),
                stdout: String::new(),
                stderr: String::new(),
            };
        }
        "systemctl restart berthd" => {
            assert!(agent.stop().success(), "berthd did not stop cleanly");
            agent.spawn();
            return Step {
                code: Some(0),
                stdout: String::new(),
                stderr: String::new(),
            };
        }
        _ => {}
    }
    let cmd = match cmd.strip_prefix("journalctl -u berthd") {
        Some(rest) => {
            let log = agent
                .log
                .clone()
                .expect("journalctl needs Agent::start_logged");
            let pipeline = rest.find('|').map_or("", |i| &rest[i..]);
            format!("cat '{}' {pipeline}", log.display())
        }
        None => cmd.to_owned(),
    };
    let out = sh_with(&cmd, &agent.dir, cwd, env);
    Step {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `f` until it returns true (or panics after `secs`).
fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of a sample line `name{labels} value` in a /metrics text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn db_slow_operations_runbook() {
    let expected = [
        "berth host health",
        "berth db slow-ops",
        r#"curl -s --unix-socket ${BERTH_DATA_DIR:-/var/lib/berth}/berth.sock http://localhost/metrics | grep 'op="commit"' | grep -v _bucket"#,
        r"grep -A3 '^\[fault\]' ${BERTH_CONFIG:-/etc/berth/berth.toml}",
        "cat /proc/pressure/io",
        "berth db stats",
        "journalctl -u berthd --since -15min | grep 'slow database operation'",
        "sed -i '/^db_delay/d' ${BERTH_CONFIG:-/etc/berth/berth.toml}",
        "systemctl restart berthd",
        "berth host health",
        "berth db slow-ops",
    ];
    let cmds = commands("db-slow-operations.md");
    assert_eq!(
        cmds, expected,
        "the runbook's commands changed: update this test with them"
    );

    // The drill: every commit delayed past the threshold.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cwd = tmp.path().join("oncall");
    std::fs::create_dir_all(&cwd).unwrap();
    let mut agent = Agent::start_logged(
        &data,
        "[db]\nslow_op_threshold = \"100ms\"\nslow_op_window = \"10m\"\n\
         [fault]\ndb_delay = \"150ms\"\n",
    );
    let config = agent.config.to_str().unwrap().to_owned();
    let env = [("BERTH_CONFIG", config.as_str())];
    // Two creates: two commits, each slow (a create without start is one write).
    for _ in 0..2 {
        let out = agent.cli(&["machine", "create", "--skip-start", "--", "/bin/true"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    for (i, cmd) in cmds.iter().enumerate() {
        let s = step(&mut agent, cmd, &cwd, &env);
        let what = format!("step {} `{cmd}`:\n{}{}", i + 1, s.stdout, s.stderr);
        let ok = s.code == Some(0);
        match i + 1 {
            1 => {
                assert_eq!(s.code, Some(1), "degraded exits 1: {what}");
                assert!(
                    s.stdout
                        .starts_with("status: degraded (failing: db_slow_ops)"),
                    "{what}"
                );
                assert!(
                    s.stderr.contains("the host is degraded: db_slow_ops"),
                    "{what}"
                );
            }
            2 => {
                assert!(ok, "{what}");
                assert!(
                    s.stdout.contains("commit") && s.stdout.contains("fault.db_delay"),
                    "{what}"
                );
                assert!(s.stdout.contains("transitions recorded"), "{what}");
            }
            3 => {
                assert!(ok, "{what}");
                let n = sample(&s.stdout, r#"berth_db_slow_operations_total{op="commit"}"#);
                assert!(n.is_some_and(|n| n >= 2.0), "{what}");
                assert!(
                    s.stdout
                        .contains(r#"berth_db_operation_duration_seconds_count{op="commit"}"#),
                    "{what}"
                );
                assert!(!s.stdout.contains("_bucket"), "{what}");
            }
            4 => assert!(ok && s.stdout.contains("db_delay = \"150ms\""), "{what}"),
            5 => assert!(ok && s.stdout.contains("some avg10="), "{what}"),
            6 => assert!(ok && s.stdout.contains("Garbage ratio"), "{what}"),
            7 => {
                assert!(ok, "{what}");
                // The commit's line (a loaded machine may also log a slow open before it).
                let line = s
                    .stdout
                    .lines()
                    .find(|l| l.contains("op=\"commit\""))
                    .unwrap_or_else(|| panic!("no slow commit logged: {what}"));
                for field in [
                    "WARN",
                    "op=\"commit\"",
                    "threshold_ms=100",
                    "batch_size=1",
                    "bytes=",
                    "detail=group commit of 1 writes: 1 transitions recorded",
                    "fault.db_delay of 150ms",
                ] {
                    assert!(
                        line.contains(field),
                        "{field} missing from the WARN line: {line}"
                    );
                }
                // At least the injected 150 ms, whatever a loaded machine adds on top.
                let took: f64 = line
                    .split("duration_ms=")
                    .nth(1)
                    .and_then(|r| r.split(' ').next())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("no duration_ms in the WARN line: {line}"));
                assert!(took >= 150.0, "{line}");
            }
            8 => {
                assert!(ok, "{what}");
                let text = std::fs::read_to_string(&agent.config).unwrap();
                assert!(!text.contains("db_delay"), "{text}");
            }
            10 => assert!(ok && s.stdout.starts_with("status: ok"), "{what}"),
            11 => assert!(
                ok && s.stdout.contains("no slow database operations recorded"),
                "{what}"
            ),
            _ => {}
        }
    }
    // Fixed: commits are fast again and nothing new is slow.
    let out = agent.cli(&["machine", "create", "--skip-start", "--", "/bin/true"]);
    assert!(out.status.success());
    let out = agent.cli(&["db", "slow-ops", "--json"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
}

#[test]
fn machine_wedged_runbook() {
    let expected = [
        "curl -s --unix-socket ${BERTH_DATA_DIR:-/var/lib/berth}/berth.sock http://localhost/metrics | grep '^berth_machine_transient_seconds'",
        "berth machine status \"$MACHINE\"",
        "berth doctor",
        "ps -o pid,stat,wchan:32,args --sid \"$(jq -r .workload.pid ${BERTH_DATA_DIR:-/var/lib/berth}/machines/$MACHINE/shim.json)\"",
        "kill -s KILL -- \"-$(jq -r .workload.pid ${BERTH_DATA_DIR:-/var/lib/berth}/machines/$MACHINE/shim.json)\"",
        "berth machine wait \"$MACHINE\" --state stopped --timeout 60s",
        "systemctl restart berthd",
        "berth machine status \"$MACHINE\"",
        "curl -s --unix-socket ${BERTH_DATA_DIR:-/var/lib/berth}/berth.sock http://localhost/metrics | grep '^berth_machine_transient_seconds' || echo 'no machine in a transient state'",
    ];
    let cmds = commands("machine-wedged.md");
    assert_eq!(
        cmds, expected,
        "the runbook's commands changed: update this test with them"
    );

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cwd = tmp.path().join("oncall");
    std::fs::create_dir_all(&cwd).unwrap();
    let mut agent = Agent::start_logged(&data, "");
    // A workload that ignores SIGTERM, and a stop that waits 10 minutes before SIGKILL.
    let out = agent.cli(&[
        "machine",
        "create",
        "--",
        "sh",
        "-c",
        "trap '' TERM; while :; do sleep 1; done",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let stopper = {
        let c = agent.socket();
        let id = id.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(c.stop(
                &id,
                &berth_api_types::StopRequest {
                    signal: None,
                    timeout: Some(berth_types::time::HumanDuration(Duration::from_secs(600))),
                },
            ))
        })
    };
    let env = [("MACHINE", id.as_str())];
    eventually(20, "the machine to be stopping", || {
        let s = step(
            &mut agent,
            "berth machine list --state stopping -q",
            &cwd,
            &env,
        );
        s.stdout.contains(&id)
    });
    std::thread::sleep(Duration::from_millis(1200));

    for (i, cmd) in cmds.iter().enumerate() {
        let s = step(&mut agent, cmd, &cwd, &env);
        let what = format!("step {} `{cmd}`:\n{}{}", i + 1, s.stdout, s.stderr);
        let ok = s.code == Some(0);
        match i + 1 {
            1 => {
                assert!(ok, "{what}");
                let series = format!(
                    r#"berth_machine_transient_seconds{{machine_id="{id}",state="stopping"}}"#
                );
                let secs = sample(&s.stdout, &series);
                assert!(secs.is_some_and(|s| s >= 1.0), "{what}");
            }
            2 => assert!(ok && s.stdout.contains("stopping"), "{what}"),
            3 => assert!(
                ok && s.stdout.contains("agree"),
                "an operation is in flight: {what}"
            ),
            4 => {
                assert!(ok, "{what}");
                assert!(
                    s.stdout.contains("trap") && s.stdout.contains("sleep"),
                    "{what}"
                );
            }
            5 => assert!(ok, "{what}"),
            6 => assert!(ok, "{what}"),
            8 => {
                assert!(ok && s.stdout.contains("stopped"), "{what}");
                assert!(
                    s.stdout.contains("signal 9") || s.stdout.contains("SIGKILL"),
                    "{what}"
                );
            }
            9 => assert!(
                ok && s.stdout.trim() == "no machine in a transient state",
                "{what}"
            ),
            _ => {}
        }
    }
    let stopped = stopper.join().unwrap().unwrap();
    assert_eq!(stopped.state.to_string(), "stopped");
}

#[test]
fn agent_down_runbook() {
    let expected = [
        "berth host status",
        "curl -sS --max-time 5 --unix-socket ${BERTH_DATA_DIR:-/var/lib/berth}/berth.sock http://localhost/v1/health",
        "journalctl -u berthd -n 20 --no-pager",
        "berth db check --offline --repair",
        "systemctl start berthd",
        "berth host health",
        "berth machine list",
    ];
    let cmds = commands("agent-down.md");
    assert_eq!(
        cmds, expected,
        "the runbook's commands changed: update this test with them"
    );

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cwd = tmp.path().join("oncall");
    std::fs::create_dir_all(&cwd).unwrap();
    let mut agent = Agent::start_logged(&data, "");
    let out = agent.cli(&["machine", "create", "--", "sleep", "1000"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();

    // The outage: berthd is killed, and the restart systemd attempts fails on a bad edit.
    let mut child = agent.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let good = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(
        &agent.config,
        format!("{good}[db]\nslow_op_threshold = \"fast\"\n"),
    )
    .unwrap();
    let status = agent.command().status().unwrap();
    assert_eq!(status.code(), Some(78));

    for (i, cmd) in cmds.iter().enumerate() {
        if *cmd == "systemctl start berthd" {
            // The operator's fix: the key the journal named.
            std::fs::write(&agent.config, &good).unwrap();
        }
        let s = step(&mut agent, cmd, &cwd, &[]);
        let what = format!("step {} `{cmd}`:\n{}{}", i + 1, s.stdout, s.stderr);
        let ok = s.code == Some(0);
        match i + 1 {
            1 => {
                assert_eq!(s.code, Some(3), "{what}");
                assert!(s.stderr.contains("cannot reach berthd"), "{what}");
            }
            2 => {
                assert_eq!(s.code, Some(7), "{what}");
                assert!(s.stderr.contains("Couldn't connect"), "{what}");
            }
            3 => {
                assert!(ok, "{what}");
                let last = s.stdout.lines().last().unwrap_or_default();
                assert!(
                    last.contains("invalid configuration") && last.contains("db.slow_op_threshold"),
                    "{what}"
                );
            }
            4 => assert!(ok && s.stdout.contains("database OK"), "{what}"),
            6 => assert!(ok && s.stdout.starts_with("status: ok"), "{what}"),
            7 => {
                assert!(ok, "{what}");
                let line = s
                    .stdout
                    .lines()
                    .find(|l| l.contains(&id))
                    .unwrap_or_default();
                assert!(line.contains("started"), "the machine kept running: {what}");
            }
            _ => {}
        }
    }
}

#[test]
fn guard_tripped_runbook() {
    let expected = [
        "berth host health",
        "berth doctor",
        "berth machine list --state failed",
        "journalctl -u berthd | grep 'blast-radius guard'",
        "df -h ${BERTH_DATA_DIR:-/var/lib/berth}",
        "berth host approve",
        "berth host health",
        "berth machine list",
    ];
    let cmds = commands("guard-tripped.md");
    assert_eq!(
        cmds, expected,
        "the runbook's commands changed: update this test with them"
    );

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cwd = tmp.path().join("oncall");
    std::fs::create_dir_all(&cwd).unwrap();
    let crash = tmp.path().join("shared-dependency-is-down");
    let mut agent = Agent::start_logged(&data, "");
    // Six machines that share a dependency; when it breaks, they all crash together, and keep
    // crashing while it is broken.
    let script = format!(
        "while [ ! -e '{}' ]; do sleep 0.1; done; exit 3",
        crash.display()
    );
    let mut ids = Vec::new();
    for _ in 0..6 {
        let out = agent.cli(&[
            "machine",
            "create",
            "--restart",
            "always",
            "--",
            "sh",
            "-c",
            &script,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        ids.push(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .unwrap()
                .to_owned(),
        );
    }
    std::fs::write(&crash, b"down").unwrap();
    // Without the guard these six would restart into the same fault forever; with it, a few
    // restart, then every restart is held and each machine is recorded failed, saying why.
    eventually(
        30,
        "all six machines to be failed with a held restart",
        || {
            let s = step(
                &mut agent,
                "berth machine list --state failed -q",
                &cwd,
                &[],
            );
            ids.iter().all(|id| s.stdout.contains(id.as_str()))
        },
    );
    let held = agent.cli(&["machine", "status", &ids[5], "--json"]);
    let held: Value = serde_json::from_slice(&held.stdout).unwrap();
    assert!(
        held.to_string()
            .contains("restart held back by the blast-radius guard"),
        "{held}"
    );

    for (i, cmd) in cmds.iter().enumerate() {
        if *cmd == "berth host approve" {
            // The operator's fix: the shared dependency is back.
            std::fs::remove_file(&crash).unwrap();
        }
        let mut s = step(&mut agent, cmd, &cwd, &[]);
        if i + 1 == 8 {
            // The approved restarts run in the background.
            eventually(30, "the held machines to run again", || {
                s = step(&mut agent, cmd, &cwd, &[]);
                ids.iter().all(|id| {
                    s.stdout
                        .lines()
                        .any(|l| l.contains(id.as_str()) && l.contains("started"))
                })
            });
        }
        let what = format!("step {} `{cmd}`:\n{}{}", i + 1, s.stdout, s.stderr);
        let ok = s.code == Some(0);
        match i + 1 {
            1 => {
                assert_eq!(s.code, Some(1), "{what}");
                assert!(
                    s.stdout.contains("guard") && s.stdout.contains("blast-radius guard holds"),
                    "{what}"
                );
            }
            2 => {
                assert_eq!(s.code, Some(1), "{what}");
                assert!(s.stdout.contains("berth host approve"), "{what}");
                assert!(
                    s.stdout.contains(&ids[5]),
                    "doctor names what is held: {what}"
                );
            }
            3 => {
                assert!(ok, "{what}");
                assert!(
                    ids.iter().all(|id| s.stdout.contains(id.as_str())),
                    "{what}"
                );
            }
            4 => assert!(ok && s.stdout.contains("tripped"), "{what}"),
            5 => assert!(ok, "{what}"),
            6 => {
                assert!(ok, "{what}");
                assert!(s.stdout.contains("6 restart(s) running"), "{what}");
            }
            7 => assert!(ok && s.stdout.starts_with("status: ok"), "{what}"),
            _ => {}
        }
    }
}

#[test]
fn export_lagging_runbook() {
    let expected = [
        "berth host status",
        "berth host status --json",
        "journalctl -u berthd | grep 'fleet export'",
        "grep -A2 '^\\[export\\]' ${BERTH_CONFIG:-/etc/berth/berth.toml}",
        "berth host status",
    ];
    let cmds = commands("export-lagging.md");
    assert_eq!(
        cmds, expected,
        "the runbook's commands changed: update this test with them"
    );

    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path().join("oncall");
    std::fs::create_dir_all(&cwd).unwrap();
    // NATS is down from the start: the host works, its export lags.
    let mut nats = nats::Nats::not_started(&tmp.path().join("nats"));
    let mut agent = Agent::start_logged(
        &tmp.path().join("data"),
        &format!(
            "[export]\nnats_url = \"{}\"\nhost_id = \"oncall-host\"\n",
            nats.url()
        ),
    );
    for _ in 0..5 {
        let out = agent.cli(&["machine", "create", "--skip-start", "--", "true"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let config = agent.config.display().to_string();
    let env = [("BERTH_CONFIG", config.as_str())];
    eventually(10, "the export failure to be logged", || {
        agent
            .log_text()
            .contains("fleet export cannot publish to NATS")
    });
    for (i, cmd) in cmds.iter().enumerate() {
        if i + 1 == 5 {
            // The operator's fix: NATS is back.
            nats.spawn();
        }
        let mut s = step(&mut agent, cmd, &cwd, &env);
        if i + 1 == 5 {
            eventually(20, "the export to catch up", || {
                s = step(&mut agent, cmd, &cwd, &env);
                s.stdout.contains("connected as oncall-host") && s.stdout.contains("lag 0 event(s)")
            });
        }
        let what = format!("step {} `{cmd}`:\n{}{}", i + 1, s.stdout, s.stderr);
        assert_eq!(s.code, Some(0), "{what}");
        match i + 1 {
            1 => assert!(
                s.stdout.contains("NOT CONNECTED as oncall-host") && !s.stdout.contains("lag 0 "),
                "{what}"
            ),
            2 => {
                let v: Value = serde_json::from_str(&s.stdout).unwrap();
                assert_eq!(v["export"]["connected"], false, "{what}");
                assert!(v["export"]["lag_events"].as_u64().unwrap() >= 5, "{what}");
                assert!(
                    v["export"]["last_error"]
                        .as_str()
                        .unwrap()
                        .contains("not connected"),
                    "{what}"
                );
            }
            3 => assert!(s.stdout.contains("cannot publish to NATS"), "{what}"),
            4 => assert!(s.stdout.contains(&nats.url()), "{what}"),
            _ => {}
        }
    }
}

#[path = "common/oci.rs"]
mod oci;
#[path = "../crates/berth-image/tests/support/registry.rs"]
#[allow(dead_code)]
mod registry;

#[test]
fn image_store_full_runbook() {
    let expected = [
        "df -h ${BERTH_DATA_DIR:-/var/lib/berth}",
        "du -sh ${BERTH_DATA_DIR:-/var/lib/berth}/images",
        "berth image ls",
        "berth image rm \"$DIGEST\"",
        "grep -A3 '^\\[images\\]' ${BERTH_CONFIG:-/etc/berth/berth.toml}",
        "berth image ls",
        "df -h ${BERTH_DATA_DIR:-/var/lib/berth}",
    ];
    let cmds = commands("image-store-full.md");
    assert_eq!(
        cmds, expected,
        "the runbook's commands changed: update this test with them"
    );
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path().join("oncall");
    std::fs::create_dir_all(&cwd).unwrap();
    let reg = registry::Registry::start(&tmp.path().join("registry"), None);
    let (layout, digest) = oci::image(&tmp.path().join("img"), 2 << 20);
    reg.push(&layout, "v1", "app:v1");
    let mut agent = Agent::start(&tmp.path().join("data"), &oci::insecure(&reg.host(), ""));
    let reference = format!("{}/app:v1", reg.host());
    let out = agent.cli(&["image", "pull", &reference]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = agent.config.display().to_string();
    let env = [
        ("BERTH_CONFIG", config.as_str()),
        ("DIGEST", digest.as_str()),
    ];
    for (i, cmd) in cmds.iter().enumerate() {
        let s = step(&mut agent, cmd, &cwd, &env);
        let what = format!("step {} `{cmd}`:\n{}{}", i + 1, s.stdout, s.stderr);
        assert_eq!(s.code, Some(0), "{what}");
        match i + 1 {
            1 | 7 => assert!(s.stdout.contains("Use%"), "{what}"),
            2 => assert!(
                s.stdout.contains("M\t") && s.stdout.contains("images"),
                "{what}"
            ),
            3 => assert!(
                s.stdout.contains(&digest[..19]) && s.stdout.contains(&reference),
                "{what}"
            ),
            4 => assert!(s.stdout.contains(&format!("removed {digest}")), "{what}"),
            5 => assert!(s.stdout.contains("insecure_registries"), "{what}"),
            6 => assert!(!s.stdout.contains(&digest[..19]), "{what}"),
            _ => {}
        }
    }
}
