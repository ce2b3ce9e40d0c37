//! The operator's CLI against a real berthd: machines addressed by name and id prefix, exit
//! codes that say whether the user got what they asked for, idempotent stop and destroy, and
//! a pipe closed early (`berth events | head -1`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};

mod common;
use common::*;

fn create(agent: &Agent, args: &[&str]) -> String {
    let mut all = vec!["machine", "create", "--json"];
    all.extend_from_slice(args);
    let o = agent.cli(&all);
    assert!(o.status.success(), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["id"].as_str().unwrap().to_owned()
}

#[test]
fn names_and_prefixes_address_machines() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&dir.path().join("data"), "");
    let a = create(&agent, &["--name", "web", "--", "sleep", "1000"]);
    let b = create(&agent, &["--", "sleep", "1000"]);
    let o = agent.cli(&["machine", "status", "--json", "web"]);
    assert!(o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains(&a));
    let o = agent.cli(&["machine", "status", "--json", &b[..b.len() - 2]]);
    assert!(o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains(&b));
    // Enough machines that two ids share a first character: that prefix is ambiguous
    // (exit 2, the candidates listed).
    let mut ids = vec![a.clone(), b.clone()];
    for _ in 0..20 {
        ids.push(create(&agent, &["--skip-start", "--", "true"]));
    }
    let (x, y) = ids
        .iter()
        .enumerate()
        .flat_map(|(i, x)| ids[i + 1..].iter().map(move |y| (x, y)))
        .find(|(x, y)| x[..1] == y[..1])
        .expect("two of 22 ids share a first character");
    let o = agent.cli(&["machine", "status", &x[..1]]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(x.as_str()) && err.contains(y.as_str()),
        "{err}"
    );
    let o = agent.cli(&["machine", "status", "no-such-machine"]);
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    // Stop twice, destroy twice: both succeed.
    assert!(agent.cli(&["machine", "stop", "web"]).status.success());
    let o = agent.cli(&["machine", "stop", "web"]);
    assert!(o.status.success(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already stopped"),
        "{o:?}"
    );
    assert!(agent.cli(&["machine", "destroy", &a]).status.success());
    let o = agent.cli(&["machine", "destroy", &a]);
    assert!(o.status.success(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already destroyed"),
        "{o:?}"
    );
}

#[test]
fn a_failed_create_exits_1_with_the_reason_and_a_closed_pipe_is_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&dir.path().join("data"), "");
    let o = agent.cli(&["machine", "create", "--", "pyhton3-no-such-program"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("failed"), "{err}");
    assert!(err.contains("pyhton3-no-such-program"), "the reason: {err}");
    for _ in 0..3 {
        create(&agent, &["--", "true"]);
    }
    // `berth events | head -1`: the reader goes away after one line.
    let mut events = Command::new(built("berth", "berth"))
        .arg("--data-dir")
        .arg(&agent.dir)
        .args(["events", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = events.stdout.take().unwrap();
    let head = Command::new("head").arg("-1").stdin(out).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&head.stdout).lines().count(), 1);
    // The follow writes again at the next event; make one.
    create(&agent, &["--", "true"]);
    let o = events.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(o.status.code(), Some(101), "{err}");
}
