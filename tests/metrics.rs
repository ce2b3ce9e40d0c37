//! `/metrics` of a real berthd, scraped over TCP with the bearer token as Prometheus does: it passes
//! `promtool check metrics`, exports every metric berth declares, labels API series by route
//! template, and forgets dead machines (a stopped machine's CPU and memory series are gone at the
//! next scrape, a destroyed machine's `machine_id` appears nowhere). And the `[fault] db_delay`
//! drill end to end: slow commits are counted, listed, and turn `/v1/health` degraded for
//! `db.slow_op_window`, then ok again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_agent::telemetry::{DB_OP_DURATION, MACHINE_METRICS, METRICS, PROCESS_CPU};
use berth_client::{Client, Method};
use common::*;
use serde_json::Value;

async fn scrape(c: &Client) -> String {
    let r = c.raw(Method::GET, "/metrics", None, &[]).await.unwrap();
    assert_eq!(r.status, 200);
    String::from_utf8(r.body.to_vec()).unwrap()
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

fn promtool_check_metrics(text: &str) -> String {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is missing: install Debian's prometheus package (cargo xtask test does)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{said}"
    );
    said
}

fn create(agent: &Agent, cmd: &[&str]) -> String {
    let mut args = vec!["machine", "create", "--"];
    args.extend_from_slice(cmd);
    let out = agent.cli(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Kills a workload's process group (a machine wedged in a long stop cannot be destroyed).
fn kill_workload(agent: &Agent, id: &str) {
    let shim: Value = serde_json::from_slice(
        &std::fs::read(agent.dir.join("machines").join(id).join("shim.json")).unwrap(),
    )
    .unwrap();
    let pid = shim["workload"]["pid"].as_i64().unwrap() as i32;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(-pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

#[test]
fn metrics_pass_promtool_and_forget_dead_machines() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "[metrics]\nsample_interval = \"100ms\"\n");
    let rt = rt();
    let c = agent.tcp(Some(agent.token()));
    let runs = create(&agent, &["sleep", "1000"]);
    let stops = create(&agent, &["sleep", "1000"]);
    let dies = create(&agent, &["sleep", "1000"]);
    // A machine held in `stopping`: it ignores SIGTERM and its stop waits 10 minutes.
    let wedged = create(
        &agent,
        &["sh", "-c", "trap '' TERM; while :; do sleep 1; done"],
    );
    let stopper = {
        let c = agent.socket();
        let id = wedged.clone();
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

    rt.block_on(async {
        // Some traffic on routes with ids and on the event stream.
        c.get(&runs).await.unwrap();
        c.machine_events(&runs).await.unwrap();
        c.events(0, 10, None).await.unwrap();

        let cpu = |id: &str| format!(r#"berth_machine_cpu_seconds_total{{machine_id="{id}"}}"#);
        let mem = |id: &str| format!(r#"berth_machine_memory_bytes{{machine_id="{id}"}}"#);
        let up = |id: &str| format!(r#"berth_machine_up{{machine_id="{id}"}}"#);
        let deadline = Instant::now() + Duration::from_secs(20);
        let text = loop {
            let t = scrape(&c).await;
            let sampled = [&runs, &stops, &dies]
                .iter()
                .all(|id| value(&t, &cpu(id)).is_some() && value(&t, &mem(id)).is_some());
            if sampled && t.contains(&format!(r#"machine_id="{wedged}",state="stopping""#)) {
                break t;
            }
            assert!(Instant::now() < deadline, "machines never sampled:\n{t}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let said = promtool_check_metrics(&text);
        assert!(said.trim().is_empty(), "promtool has remarks:\n{said}");

        // Every metric berth declares is exported, with its HELP and TYPE.
        for m in METRICS
            .iter()
            .chain(MACHINE_METRICS)
            .chain([&PROCESS_CPU, &DB_OP_DURATION])
        {
            assert!(
                text.contains(&format!("# TYPE {} ", m.name)),
                "{} is not exported",
                m.name
            );
            assert!(
                text.contains(&format!("# HELP {} ", m.name)),
                "{} has no HELP",
                m.name
            );
        }
        assert_eq!(value(&text, &up(&runs)), Some(1.0));
        assert!(value(&text, &mem(&runs)).unwrap() > 0.0);
        assert_eq!(
            value(&text, r#"berth_machines{state="started"}"#),
            Some(3.0)
        );
        assert_eq!(
            value(&text, r#"berth_machines{state="stopping"}"#),
            Some(1.0)
        );
        assert!(value(&text, "berth_process_resident_memory_bytes").unwrap() > 1e6);
        assert!(value(&text, "berth_process_open_fds").unwrap() >= 4.0);
        assert!(value(&text, "berth_db_file_size_bytes").unwrap() > 0.0);
        assert!(value(&text, "berth_events_stream_lag_seconds_count").unwrap() >= 1.0);
        // API series by route template, never by id.
        assert!(text.contains(r#"route="/v1/machines/{id}",method="GET",status="200""#));
        assert!(text.contains(r#"route="/v1/machines/{id}/events""#));
        assert!(
            !text
                .lines()
                .any(|l| l.contains("route=") && l.contains(&runs))
        );

        // Stopped: CPU and memory gone at the very next scrape; up 0; restarts stays.
        c.stop(&stops, &Default::default()).await.unwrap();
        let text = scrape(&c).await;
        assert_eq!(value(&text, &up(&stops)), Some(0.0));
        assert!(value(&text, &cpu(&stops)).is_none(), "{text}");
        assert!(value(&text, &mem(&stops)).is_none(), "{text}");
        assert!(text.contains(&format!(
            r#"berth_machine_restarts_total{{machine_id="{stops}"}} 0"#
        )));
        assert_eq!(
            value(&text, r#"berth_machines{state="stopped"}"#),
            Some(1.0)
        );

        // Destroyed: no series carries its id, at the very next scrape.
        c.destroy(&dies, true).await.unwrap();
        let text = scrape(&c).await;
        assert!(
            !text.contains(&dies),
            "a destroyed machine left series:\n{text}"
        );
        assert!(value(&text, &cpu(&runs)).is_some());
        // ... and later samples do not bring it back.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let text = scrape(&c).await;
        assert!(!text.contains(&dies));
        assert!(value(&text, &cpu(&stops)).is_none());
        promtool_check_metrics(&text);
    });
    kill_workload(&agent, &wedged);
    assert_eq!(
        stopper.join().unwrap().unwrap().state.to_string(),
        "stopped"
    );
}

#[test]
fn a_db_delay_drill_degrades_health_for_the_window_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start_logged(
        dir.path(),
        "[db]\nslow_op_threshold = \"100ms\"\nslow_op_window = \"3s\"\n\
         [retention]\ninterval = \"1h\"\n[fault]\ndb_delay = \"150ms\"\n",
    );
    let rt = rt();
    let c = agent.socket();
    rt.block_on(async {
        let health = c.health().await.unwrap();
        assert_eq!(health.status, "ok", "{health:?}");
        let before = Instant::now();
        let m = c
            .create(
                &berth_api_types::CreateMachine {
                    name: None,
                    config: berth_types::MachineConfig::command(["/bin/true"]),
                    metadata: Default::default(),
                    skip_start: true,
                },
                None,
            )
            .await
            .unwrap();
        assert!(before.elapsed() >= Duration::from_millis(150));

        let health = c.health().await.unwrap();
        assert_eq!(health.status, "degraded");
        let check = &health.checks["db_slow_ops"];
        assert!(!check.ok);
        // The reported duration includes the injected 150 ms delay (and whatever the loaded
        // machine adds on top of it).
        let took: f64 = check
            .detail
            .split("latest: commit took ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|ms| ms.parse().ok())
            .unwrap_or_else(|| panic!("no commit duration in {check:?}"));
        assert!(took >= 150.0, "{check:?}");
        for (name, other) in &health.checks {
            assert!(other.ok || name == "db_slow_ops", "{name}: {other:?}");
        }

        let ops = c.slow_ops().await.unwrap();
        assert!(!ops.is_empty());
        for o in &ops {
            assert_eq!(o.op, "commit");
            assert!(o.duration_ms >= 150.0 && o.threshold_ms == 100.0, "{o:?}");
            assert!(o.batch_size >= 1, "{o:?}");
            assert!(o.detail.contains("fault.db_delay of 150ms"), "{o:?}");
        }
        assert!(
            ops.iter()
                .any(|o| o.bytes > 0 && o.detail.contains(&format!("first machine {}", m.id))),
            "{ops:?}"
        );
        let text = String::from_utf8(
            c.raw(Method::GET, "/metrics", None, &[])
                .await
                .unwrap()
                .body
                .to_vec(),
        )
        .unwrap();
        assert_eq!(
            value(&text, r#"berth_db_slow_operations_total{op="commit"}"#),
            Some(ops.len() as f64)
        );
        assert_eq!(
            value(&text, r#"berth_db_slow_operations_total{op="get_machine"}"#),
            Some(0.0)
        );

        // No write for the window: healthy again, while the ring still lists what happened.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let health = c.health().await.unwrap();
            if health.status == "ok" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still degraded long after the window: {health:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(c.slow_ops().await.unwrap().len(), ops.len());
    });
    let log = agent.log_text();
    let warns: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("slow database operation"))
        .collect();
    assert!(!warns.is_empty(), "{log}");
    for w in warns {
        for field in [
            "WARN",
            "op=\"commit\"",
            "duration_ms=",
            "batch_size=",
            "bytes=",
            "detail=",
        ] {
            assert!(w.contains(field), "{field} missing: {w}");
        }
    }
}
