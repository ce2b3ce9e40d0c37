//! berthd and the berth CLI end to end: the real binaries, a real socket and TCP port, real
//! processes. Lifecycle, wait, the event stream across a restart, auth, bad input (and that it
//! changes nothing), overload, the operator lane, idempotent creates, cordon, start-up refusals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_client::ClientError;
use berth_client::Method;
use serde_json::{Value, json};

mod common;
use common::*;

fn create_body(cmd: &[&str]) -> berth_api_types::CreateMachine {
    berth_api_types::CreateMachine {
        name: None,
        config: berth_types::MachineConfig::command(cmd.iter().copied()),
        metadata: Default::default(),
        skip_start: false,
    }
}

#[test]
fn lifecycle_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let rt = rt();
    let c = agent.tcp(Some(agent.token()));
    rt.block_on(async {
        let m = c
            .create(&create_body(&["sleep", "1000"]), None)
            .await
            .unwrap();
        assert_eq!(m.state.to_string(), "started");
        let id = m.id.to_string();
        assert_eq!(c.get(&id).await.unwrap().pid, m.pid);
        let stopped = c.stop(&id, &Default::default()).await.unwrap();
        assert_eq!(stopped.state.to_string(), "stopped");
        assert_eq!(
            c.action(&id, "start").await.unwrap().state.to_string(),
            "started"
        );
        assert_eq!(
            c.action(&id, "restart").await.unwrap().state.to_string(),
            "started"
        );
        let gone = c.destroy(&id, true).await.unwrap();
        assert_eq!(gone.state.to_string(), "destroyed");
        assert!(c.list(None, false).await.unwrap().is_empty());
        assert_eq!(c.list(None, true).await.unwrap().len(), 1);
        let evs: Vec<String> = c
            .machine_events(&id)
            .await
            .unwrap()
            .iter()
            .map(|e| e.to.to_string())
            .collect();
        assert_eq!(evs.first().map(String::as_str), Some("created"));
        assert_eq!(evs.last().map(String::as_str), Some("destroyed"));
        // Every response carries a request id.
        let r = c.raw(Method::GET, "/v1/health", None, &[]).await.unwrap();
        assert!(r.headers.contains_key("x-request-id"));
    });
}

#[test]
fn lifecycle_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let out = agent.cli(&[
        "machine",
        "create",
        "--name",
        "web",
        "-e",
        "WORD=hello",
        "--json",
        "--",
        "sh",
        "-c",
        "echo $WORD; sleep 1000",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = m["id"].as_str().unwrap().to_owned();
    assert_eq!(m["state"], "started");
    let ls = String::from_utf8(agent.cli(&["machine", "ls"]).stdout).unwrap();
    assert!(
        ls.contains(&id) && ls.contains("web") && ls.contains("started") && ls.contains("ago"),
        "{ls}"
    );
    assert_eq!(
        String::from_utf8(agent.cli(&["machine", "ls", "-q"]).stdout)
            .unwrap()
            .trim(),
        id
    );
    // The workload writes its line on its own time: poll for it.
    let logs = common::poll_until(
        "the workload's line in its logs",
        Duration::from_secs(10),
        || {
            let logs = agent.cli(&["logs", &id]);
            let text = String::from_utf8(logs.stdout).unwrap();
            (!text.is_empty()).then_some(text)
        },
    );
    assert_eq!(logs, "hello\n");
    assert!(
        agent
            .cli(&["machine", "stop", &id, "--timeout", "2s"])
            .status
            .success()
    );
    let status = String::from_utf8(agent.cli(&["machine", "status", &id]).stdout).unwrap();
    assert!(
        status.contains("stopped")
            && status.contains("Event log")
            && status.contains("stop: the workload stopped")
            && !status.contains("stop_workload"),
        "{status}"
    );
    let wait = agent.cli(&[
        "machine",
        "wait",
        &id,
        "--state",
        "stopped",
        "--timeout",
        "1s",
    ]);
    assert!(wait.status.success());
    assert!(agent.cli(&["machine", "destroy", &id]).status.success());
    // Exit codes: not found 4, usage 2.
    assert_eq!(
        agent
            .cli(&["machine", "status", "nosuchmachine"])
            .status
            .code(),
        Some(4)
    );
    assert_eq!(agent.cli(&["machine", "frobnicate"]).status.code(), Some(2));
    let events: Vec<Value> = String::from_utf8(agent.cli(&["events", "--json"]).stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(events.len() >= 6);
    let check = agent.cli(&["db", "check"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("database OK"));
    // --offline refuses while the agent holds the data dir.
    let offline = agent.cli(&["db", "stats", "--offline"]);
    assert_eq!(offline.status.code(), Some(1));
    let err = String::from_utf8_lossy(&offline.stderr);
    assert!(err.contains("run without --offline"), "{err}");
    let doctor = agent.cli(&["doctor", "--json"]);
    assert!(
        doctor.status.success(),
        "{}",
        String::from_utf8_lossy(&doctor.stdout)
    );
}

#[test]
fn wait_and_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let rt = rt();
    let c = agent.socket();
    rt.block_on(async {
        let m = c
            .create(&create_body(&["sh", "-c", "sleep 0.3; exit 0"]), None)
            .await
            .unwrap();
        let id = m.id.to_string();
        let t = Instant::now();
        let done = c.wait(&id, "stopped", "10s").await.unwrap();
        assert_eq!(done.state.to_string(), "stopped");
        assert!(t.elapsed() < Duration::from_secs(5));
        let t = Instant::now();
        let err = c.wait(&id, "started", "300ms").await.unwrap_err();
        assert!(
            matches!(&err, ClientError::Api { status: 408, .. }),
            "{err}"
        );
        assert_eq!(err.code(), Some("timeout"));
        assert!(t.elapsed() >= Duration::from_millis(300));
    });
}

#[test]
fn the_event_stream_resumes_across_a_restart_with_no_gap_and_no_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(dir.path(), "");
    let rt = rt();
    let mut seen: Vec<u64> = Vec::new();
    let mut after = 0;
    rt.block_on(async {
        let c = agent.socket();
        for _ in 0..3 {
            c.create(&create_body(&["sleep", "1000"]), None)
                .await
                .unwrap();
        }
        let page = c.events(after, 4, None).await.unwrap();
        seen.extend(page.events.iter().map(|e| e.seq));
        after = page.last_seq;
    });
    assert!(agent.stop().success(), "berthd exits 0 on SIGTERM");
    agent.spawn();
    rt.block_on(async {
        let c = agent.socket();
        let ms = c.list(None, false).await.unwrap();
        assert_eq!(ms.len(), 3, "workloads kept running across the restart");
        for m in &ms {
            assert_eq!(m.state.to_string(), "started");
            c.stop(m.id.as_str(), &Default::default()).await.unwrap();
        }
        loop {
            let page = c.events(after, 5, Some("200ms")).await.unwrap();
            if page.events.is_empty() {
                break;
            }
            seen.extend(page.events.iter().map(|e| e.seq));
            after = page.last_seq;
        }
    });
    assert_eq!(
        seen,
        (1..=seen.len() as u64).collect::<Vec<_>>(),
        "gap or duplicate in {seen:?}"
    );
    assert!(seen.len() >= 3 * 3 + 3 * 2);
}

#[test]
fn tcp_needs_the_token_and_the_socket_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let rt = rt();
    rt.block_on(async {
        for token in [None, Some("wrong".to_owned())] {
            let err = agent.tcp(token).health().await.unwrap_err();
            assert!(
                matches!(&err, ClientError::Api { status: 401, .. }),
                "{err}"
            );
        }
        agent.tcp(Some(agent.token())).health().await.unwrap();
        agent.socket().health().await.unwrap();
    });
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| {
        std::fs::metadata(dir.path().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("token"), 0o600);
    assert_eq!(mode("berth.sock"), 0o600);
}

/// Method, path, body, expected status, code, and a phrase the message must contain.
type Case = (
    Method,
    String,
    Option<String>,
    u16,
    &'static str,
    &'static str,
);

#[test]
fn bad_input_gets_a_precise_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "[limits]\nmax_machines = 2\n");
    let rt = rt();
    let c = agent.socket();
    rt.block_on(async {
        let m = c
            .create(&create_body(&["sleep", "1000"]), None)
            .await
            .unwrap();
        let id = m.id.to_string();
        let snapshot = || async {
            (
                c.list(None, true).await.unwrap(),
                c.events(0, 1000, None).await.unwrap().last_seq,
            )
        };
        let before = snapshot().await;
        let huge = format!("{{\"config\":{{\"cmd\":[\"{}\"]}}}}", "x".repeat(1 << 20));
        let cases: Vec<Case> = vec![
            (
                Method::POST,
                "/v1/machines".into(),
                Some(huge),
                413,
                "too_large",
                "body",
            ),
            (
                Method::POST,
                "/v1/machines".into(),
                Some("{not json".into()),
                400,
                "invalid",
                "JSON",
            ),
            (
                Method::POST,
                "/v1/machines".into(),
                Some(r#"{"config":{"cmd":["x"]},"colour":"red"}"#.into()),
                400,
                "invalid",
                "unknown field `colour`",
            ),
            (
                Method::POST,
                "/v1/machines".into(),
                Some(r#"{"config":{"cmd":["x"],"stop":{"timeout":"soon"}}}"#.into()),
                400,
                "invalid",
                "invalid duration",
            ),
            (
                Method::POST,
                "/v1/machines".into(),
                Some(r#"{"config":{"cmd":["x"],"stop":{"signal":"SIGNOPE"}}}"#.into()),
                400,
                "invalid",
                "unknown signal",
            ),
            (
                Method::POST,
                "/v1/machines".into(),
                Some(r#"{"config":{"cmd":[]}}"#.into()),
                400,
                "invalid",
                "config.cmd",
            ),
            (
                Method::GET,
                "/v1/machines/NOT..VALID".into(),
                None,
                400,
                "invalid",
                "invalid machine id",
            ),
            (
                Method::GET,
                "/v1/machines/nosuchmachine".into(),
                None,
                404,
                "not_found",
                "not found",
            ),
            (
                Method::POST,
                format!("/v1/machines/{id}/start"),
                None,
                409,
                "conflict",
                "cannot go from started to starting",
            ),
            (
                Method::POST,
                format!("/v1/machines/{id}/signal"),
                Some(r#"{"signal":"SIGWHAT"}"#.into()),
                400,
                "invalid",
                "unknown signal",
            ),
            (
                Method::POST,
                format!("/v1/machines/{id}/stop"),
                Some(r#"{"timeout":"forever"}"#.into()),
                400,
                "invalid",
                "invalid duration",
            ),
            (
                Method::GET,
                format!("/v1/machines/{id}/wait?state=sleeping"),
                None,
                400,
                "invalid",
                "unknown state",
            ),
            (
                Method::GET,
                "/v1/events?after=minus".into(),
                None,
                400,
                "invalid",
                "after",
            ),
            (
                Method::DELETE,
                format!("/v1/machines/{id}"),
                None,
                409,
                "conflict",
                "force=true",
            ),
        ];
        for (method, path, body, status, code, needle) in cases {
            let r = c
                .raw(method.clone(), &path, body.map(String::into_bytes), &[])
                .await
                .unwrap();
            let v: Value = serde_json::from_slice(&r.body).unwrap_or(json!({}));
            assert_eq!(r.status.as_u16(), status, "{method} {path}: {v}");
            assert_eq!(v["code"], code, "{method} {path}: {v}");
            assert!(
                v["error"].as_str().unwrap_or_default().contains(needle),
                "{method} {path}: {v}"
            );
        }
        assert_eq!(
            snapshot().await,
            before,
            "a refused request changed something"
        );
        // The machine limit refuses with conflict.
        c.create(&create_body(&["sleep", "1000"]), None)
            .await
            .unwrap();
        let err = c
            .create(&create_body(&["sleep", "1000"]), None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("conflict"), "{err}");
        assert!(err.to_string().contains("limits.max_machines"));
    });
}

#[test]
fn idempotent_creates_and_cordon() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let rt = rt();
    let c = agent.socket();
    rt.block_on(async {
        let a = c
            .create(&create_body(&["sleep", "1000"]), Some("req-42"))
            .await
            .unwrap();
        let b = c
            .create(&create_body(&["sleep", "1000"]), Some("req-42"))
            .await
            .unwrap();
        assert_eq!(a.id, b.id, "a retried create returns the original machine");
        assert_eq!(c.list(None, false).await.unwrap().len(), 1);
        c.set_cordon(true).await.unwrap();
        let err = c
            .create(&create_body(&["sleep", "1000"]), None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("cordoned"));
        assert!(c.health().await.unwrap().cordoned);
        assert!(
            c.get(a.id.as_str()).await.unwrap().state.to_string() == "started",
            "existing machines keep running"
        );
        c.set_cordon(false).await.unwrap();
        c.create(&create_body(&["sleep", "1000"]), None)
            .await
            .unwrap();
    });
}

#[test]
fn overload_is_refused_at_once_and_the_operator_lane_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "[api]\nmax_inflight_mutations = 1\n");
    let rt = rt();
    rt.block_on(async {
        let tcp = agent.tcp(Some(agent.token()));
        // A workload that ignores SIGTERM makes its stop take the whole grace period.
        let m = tcp
            .create(
                &create_body(&["sh", "-c", "trap '' TERM; sleep 1000"]),
                None,
            )
            .await
            .unwrap();
        let id = m.id.to_string();
        let slow = {
            let tcp = tcp.clone();
            let id = id.clone();
            tokio::spawn(async move {
                let req = berth_api_types::StopRequest {
                    signal: None,
                    timeout: Some(berth_types::time::HumanDuration(Duration::from_secs(2))),
                };
                tcp.stop(&id, &req).await
            })
        };
        // The stop holds the lane's only mutation slot while it waits out the grace period.
        let deadline = Instant::now() + Duration::from_secs(10);
        while tcp.get(&id).await.unwrap().state != berth_types::State::Stopping {
            assert!(Instant::now() < deadline, "the stop never began");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The TCP lane is saturated: an immediate 429 with Retry-After.
        let t = Instant::now();
        let r = tcp
            .raw(
                Method::POST,
                "/v1/machines",
                Some(br#"{"config":{"cmd":["true"]}}"#.to_vec()),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(r.status.as_u16(), 429);
        assert_eq!(r.headers.get("retry-after").unwrap(), "1");
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "the refusal must not wait"
        );
        // Reads are not mutations; the operator's socket lane still mutates.
        tcp.get(&id).await.unwrap();
        let op = agent
            .socket()
            .create(&create_body(&["sleep", "1000"]), None)
            .await
            .unwrap();
        assert_eq!(op.state.to_string(), "started");
        let stopped = slow.await.unwrap().unwrap();
        assert_eq!(stopped.exit.unwrap().signal.as_deref(), Some("SIGKILL"));
    });
}

#[test]
fn startup_refusals_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    // A second agent on the same data dir.
    let out = Command::new(built("berthd", "berthd"))
        .args([
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--listen",
            "off",
            "--socket",
        ])
        .arg(dir.path().join("other.sock"))
        .env("BERTH_SHIM", built("berth-shim", "berth-driver"))
        .env("BERTH_LOG", "error")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another berthd"), "{err}");
    assert!(
        dir.path().join("berth.sock").exists(),
        "the first agent's socket is untouched"
    );
    drop(agent);
    // A bad config names the key, before anything is bound.
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[db]\nslow_op_threshold = \"quickly\"\n").unwrap();
    let port = free_port();
    let out = Command::new(built("berthd", "berthd"))
        .args([
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("db.slow_op_threshold") && err.lines().count() == 1,
        "{err}"
    );
}

fn openapi() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Validates `v` against `schema`, a schema of the OpenAPI document (OpenAPI 3.1 schemas are
/// JSON Schema 2020-12), with the document's components beside it so `$ref`s resolve.
fn validate(v: &Value, schema: &Value, doc: &Value, at: &str) -> Result<(), String> {
    let validator = schema_validator(schema, doc).map_err(|e| format!("{at}: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(v)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("{at}: {errors:?} in {v}"))
    }
}

fn schema_validator(schema: &Value, doc: &Value) -> Result<jsonschema::Validator, String> {
    let mut root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": doc["components"].clone(),
    });
    if let (Some(r), Some(s)) = (root.as_object_mut(), schema.as_object()) {
        for (k, v) in s {
            r.insert(k.clone(), v.clone());
        }
    }
    jsonschema::draft202012::new(&root).map_err(|e| e.to_string())
}

/// Every schema of the document is a valid JSON Schema (2020-12), and the checker catches what
/// it should: a missing required field, a field of the wrong type, an undocumented field.
#[test]
fn the_openapi_schemas_are_valid_json_schema() {
    let doc = openapi();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    assert!(schemas.len() > 5, "{}", schemas.len());
    for (name, s) in schemas {
        jsonschema::meta::validate(s).unwrap_or_else(|e| panic!("schema {name}: {e}"));
        schema_validator(s, &doc).unwrap_or_else(|e| panic!("schema {name}: {e}"));
    }
    let error = json!({"$ref": "#/components/schemas/Error"});
    assert!(
        validate(
            &json!({"error": "e", "code": "invalid"}),
            &error,
            &doc,
            "ok"
        )
        .is_ok()
    );
    assert!(validate(&json!({"error": "e"}), &error, &doc, "missing").is_err());
    assert!(
        validate(
            &json!({"error": 1, "code": "invalid"}),
            &error,
            &doc,
            "type"
        )
        .is_err()
    );
}

/// The OpenAPI document and the server agree: every served route is documented, every
/// documented route is served, and real responses are valid against the document's schemas.
#[test]
fn the_openapi_document_matches_the_server() {
    let doc = openapi();
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    documented.sort();
    let mut served: Vec<(String, String)> = berth_api::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    served.sort();
    assert_eq!(
        served, documented,
        "served routes (left) and documented routes (right) differ"
    );

    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let c = agent.socket();
    let rt = rt();
    let check = |what: &str, body: &[u8], schema: Value| {
        let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| panic!("{what}: {e}"));
        validate(&v, &schema, &doc, what).unwrap_or_else(|e| panic!("{e}"));
    };
    let response_schema = |path: &str, method: &str, status: &str| {
        doc["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
            .clone()
    };
    rt.block_on(async {
        let m = c
            .create(&create_body(&["sleep", "1000"]), None)
            .await
            .unwrap();
        let id = m.id.to_string();
        let r = c
            .raw(Method::GET, &format!("/v1/machines/{id}/stats"), None, &[])
            .await
            .unwrap();
        check(
            "stats of a started machine",
            &r.body,
            response_schema("/v1/machines/{id}/stats", "get", "200"),
        );
        let stats: Value = serde_json::from_slice(&r.body).unwrap();
        assert!(
            stats["cpu_seconds"].is_number()
                && stats["memory_bytes"].as_u64() > Some(0)
                && stats["started_at"].is_string()
                && stats["pid"] == serde_json::json!(m.pid),
            "{stats}"
        );
        let lease = c
            .raw(Method::POST, &format!("/v1/machines/{id}/lease"), None, &[])
            .await
            .unwrap();
        assert_eq!(lease.status.as_u16(), 201);
        check(
            "lease",
            &lease.body,
            response_schema("/v1/machines/{id}/lease", "post", "201"),
        );
        let nonce = serde_json::from_slice::<Value>(&lease.body).unwrap()["nonce"]
            .as_str()
            .unwrap()
            .to_owned();
        // While leased, a mutation without the nonce is refused; with it, allowed.
        let r = c
            .raw(Method::POST, &format!("/v1/machines/{id}/stop"), None, &[])
            .await
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&r.body).unwrap()["code"],
            "lease_required"
        );
        let r = c
            .raw(
                Method::POST,
                &format!("/v1/machines/{id}/stop"),
                None,
                &[("berth-lease-nonce", "nope")],
            )
            .await
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&r.body).unwrap()["code"],
            "lease_mismatch"
        );
        let r = c
            .raw(
                Method::POST,
                &format!("/v1/machines/{id}/stop"),
                None,
                &[("berth-lease-nonce", &nonce)],
            )
            .await
            .unwrap();
        assert_eq!(r.status.as_u16(), 200);
        check(
            "stop",
            &r.body,
            response_schema("/v1/machines/{id}/stop", "post", "200"),
        );
        let r = c
            .raw(
                Method::DELETE,
                &format!("/v1/machines/{id}/lease"),
                None,
                &[("berth-lease-nonce", &nonce)],
            )
            .await
            .unwrap();
        assert_eq!(r.status.as_u16(), 204);

        for (path, doc_path) in [
            ("/v1/machines".to_owned(), "/v1/machines"),
            (format!("/v1/machines/{id}"), "/v1/machines/{id}"),
            (
                format!("/v1/machines/{id}/events"),
                "/v1/machines/{id}/events",
            ),
            (
                format!("/v1/machines/{id}/stats"),
                "/v1/machines/{id}/stats",
            ),
            ("/v1/events?after=0".to_owned(), "/v1/events"),
            ("/v1/health".to_owned(), "/v1/health"),
            ("/v1/host".to_owned(), "/v1/host"),
            ("/v1/db/stats".to_owned(), "/v1/db/stats"),
            ("/v1/db/slow-ops".to_owned(), "/v1/db/slow-ops"),
        ] {
            let r = c.raw(Method::GET, &path, None, &[]).await.unwrap();
            assert_eq!(r.status.as_u16(), 200, "{path}");
            check(&path, &r.body, response_schema(doc_path, "get", "200"));
        }
        for (method, path, doc_path, name) in [
            (Method::GET, "/v1/db/check", "/v1/db/check", "get"),
            (Method::POST, "/v1/db/compact", "/v1/db/compact", "post"),
            (
                Method::POST,
                "/v1/host/reconcile?approve=false",
                "/v1/host/reconcile",
                "post",
            ),
            (Method::POST, "/v1/host/approve", "/v1/host/approve", "post"),
            (Method::POST, "/v1/host/cordon", "/v1/host/cordon", "post"),
            (
                Method::POST,
                "/v1/host/uncordon",
                "/v1/host/uncordon",
                "post",
            ),
        ] {
            let r = c.raw(method, path, None, &[]).await.unwrap();
            assert_eq!(
                r.status.as_u16(),
                200,
                "{path}: {}",
                String::from_utf8_lossy(&r.body)
            );
            check(path, &r.body, response_schema(doc_path, name, "200"));
        }
        let r = c
            .raw(Method::GET, "/v1/machines/nosuchmachine", None, &[])
            .await
            .unwrap();
        check(
            "404",
            &r.body,
            json!({"$ref": "#/components/schemas/Error"}),
        );
        let r = c
            .raw(Method::GET, "/v1/nothing/here", None, &[])
            .await
            .unwrap();
        assert_eq!(r.status.as_u16(), 404);
        let metrics = c.raw(Method::GET, "/metrics", None, &[]).await.unwrap();
        assert!(
            String::from_utf8_lossy(&metrics.body).contains("berth_db_operation_duration_seconds")
        );
        let backup = c.backup().await.unwrap();
        assert!(backup.len() > 4096, "a backup is a redb file");
    });
}

/// With NOTIFY_SOCKET set (systemd's Type=notify), berthd says READY=1 once it serves.
#[test]
fn berthd_notifies_systemd_when_ready() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let listener = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let data = dir.path().join("data");
    let mut child = KillOnDrop(
        Command::new(built("berthd", "berthd"))
            .args(["--data-dir", data.to_str().unwrap(), "--listen", "off"])
            .env("NOTIFY_SOCKET", &notify)
            .env("BERTH_SHIM", built("berth-shim", "berth-driver"))
            .env("BERTH_LOG", "warn")
            .spawn()
            .unwrap(),
    );
    let mut buf = [0u8; 64];
    let n = listener.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1\n");
    assert!(
        data.join("berth.sock").exists(),
        "READY=1 comes after the socket is served"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.0.wait().unwrap().success());
    assert!(
        !data.join("berth.sock").exists(),
        "the socket is removed on a clean stop"
    );
}

/// Retention bounds the host-wide log; a consumer behind it gets 410 `expired` (documented), never
/// a silent skip, and `berth events` without `--after` starts from the oldest event kept.
#[test]
fn a_consumer_behind_retention_is_told_to_resync() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        dir.path(),
        "[retention]\nmax_events = 2\ninterval = \"100ms\"\n",
    );
    let rt = rt();
    let c = agent.socket();
    rt.block_on(async {
        for _ in 0..4 {
            let mut body = create_body(&["sleep", "1000"]);
            body.skip_start = true;
            c.create(&body, None).await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let first = loop {
            let st = c.db_stats().await.unwrap();
            if let Some(first) = st.first_seq.filter(|f| *f > 1) {
                break first;
            }
            assert!(
                Instant::now() < deadline,
                "retention never trimmed the log: {st:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let r = c
            .raw(Method::GET, "/v1/events?after=0", None, &[])
            .await
            .unwrap();
        assert_eq!(r.status.as_u16(), 410);
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["code"], "expired", "{body}");
        assert!(body["error"].as_str().unwrap().contains("resync"), "{body}");
        let doc = openapi();
        validate(
            &body,
            &doc["paths"]["/v1/events"]["get"]["responses"]["410"]["content"]["application/json"]
                ["schema"],
            &doc,
            "410",
        )
        .unwrap();
        let page = c.events(first - 1, 100, None).await.unwrap();
        assert_eq!(page.events[0].seq, first);
    });
    let out = agent.cli(&["events", "--json"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("removed by retention"));
    let out = agent.cli(&["events", "--after", "0"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an explicit --after behind the log fails"
    );
}

/// berthd raises its own open-files limit (a pidfd per machine) to the hard limit, and its
/// workloads keep the limit berthd was started with.
#[test]
fn berthd_raises_its_open_files_limit_but_workloads_keep_the_original() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let low = 512.min(hard);
    let dir = tempfile::tempdir().unwrap();
    // Started with a low soft limit (children inherit it), then this process gets its own back.
    setrlimit(Resource::RLIMIT_NOFILE, low, hard).unwrap();
    let agent = Agent::start(dir.path(), "");
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();

    let pid = agent.child.as_ref().unwrap().id();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        fields[3], fields[4],
        "berthd's soft limit is its hard limit: {line}"
    );
    assert_eq!(fields[4], hard.to_string(), "{line}");

    let out = agent.cli(&[
        "machine",
        "create",
        "--json",
        "--",
        "sh",
        "-c",
        "ulimit -Sn; sleep 1000",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = m["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    let logs = loop {
        let logs = String::from_utf8(agent.cli(&["logs", &id]).stdout).unwrap();
        if !logs.is_empty() || Instant::now() > deadline {
            break logs;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(logs, format!("{low}\n"));
    assert!(
        agent
            .cli(&["machine", "stop", &id, "--timeout", "2s"])
            .status
            .success()
    );
    assert!(agent.cli(&["machine", "destroy", &id]).status.success());
}
