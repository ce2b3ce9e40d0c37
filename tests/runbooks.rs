//! The runbooks, executed: every `sh` block of a runbook is run, in order, against a real berthd,
//! and each step's outcome is checked. A runbook that drifts from the binaries fails here.
//!
//! `systemctl stop|start berthd` lines act on the test's own berthd; everything else runs through
//! `sh -c` with the built `berth` first on `PATH` and `BERTH_DATA_DIR` set to the test's data dir.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

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
                // ratio; what compaction promises is a file close to the live bytes.
                let live = st["live_bytes"].as_u64().unwrap();
                assert!(
                    size as f64 <= 1.3 * live as f64 + (1 << 20) as f64,
                    "{step}: {st}"
                );
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
