//! Hostile admission: concurrent creates against the machine limit, one name, one
//! Idempotency-Key; key reuse with another body (across a restart); leases on destroyed
//! machines; oversized input of every kind; list pagination. Each against a real berthd.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use berth_client::{Client, Method};
use serde_json::{Value, json};

mod common;
use common::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

/// Room for every concurrent request on the operator lane: the admission check is what is
/// under test, not the lane's bound.
const WIDE: &str = "[api]\nsocket_max_inflight_mutations = 256\n";

async fn post(c: &Client, path: &str, body: Value, headers: &[(&str, &str)]) -> (u16, Value) {
    let r = c
        .raw(
            Method::POST,
            path,
            Some(serde_json::to_vec(&body).unwrap()),
            headers,
        )
        .await
        .unwrap();
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status.as_u16(), v)
}

async fn create(c: &Client, body: Value, key: Option<&str>) -> (u16, Value) {
    let headers: Vec<(&str, &str)> = key.map(|k| ("idempotency-key", k)).into_iter().collect();
    post(c, "/v1/machines", body, &headers).await
}

fn sleeper() -> Value {
    json!({"config": {"cmd": ["sleep", "1000"]}, "skip_start": true})
}

/// Fires `n` creates at once, each its own connection; returns every (status, body).
async fn burst(c: &Client, n: usize, body: Value, key: Option<&str>) -> Vec<(u16, Value)> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (c, body, key) = (c.clone(), body.clone(), key.map(str::to_owned));
            tokio::spawn(async move { create(&c, body, key.as_deref()).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn count(results: &[(u16, Value)], status: u16) -> usize {
    results.iter().filter(|(s, _)| *s == status).count()
}

#[test]
fn concurrent_creates_never_pass_the_machine_limit() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &format!("{WIDE}[limits]\nmax_machines = 20\n"));
    let c = agent.socket();
    rt().block_on(async {
        let results = burst(&c, 64, sleeper(), None).await;
        assert_eq!(
            count(&results, 201),
            20,
            "exactly the limit is created: {results:?}"
        );
        assert_eq!(
            count(&results, 409),
            44,
            "the rest are refused: {results:?}"
        );
        for (s, v) in &results {
            if *s == 409 {
                assert_eq!(v["code"], "conflict");
                assert!(
                    v["error"].as_str().unwrap().contains("limits.max_machines"),
                    "{v}"
                );
            }
        }
        assert_eq!(c.list(None, false).await.unwrap().len(), 20);
        // Destroying one makes room for exactly one.
        let one = c.list(None, false).await.unwrap()[0].id.to_string();
        c.destroy(&one, true).await.unwrap();
        let again = burst(&c, 8, sleeper(), None).await;
        assert_eq!(count(&again, 201), 1, "{again:?}");
        assert_eq!(c.list(None, false).await.unwrap().len(), 20);
    });
}

#[test]
fn concurrent_creates_of_one_name_make_one_machine() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), WIDE);
    let c = agent.socket();
    rt().block_on(async {
        let body = json!({"name": "web", "config": {"cmd": ["sleep", "1000"]}, "skip_start": true});
        let results = burst(&c, 32, body.clone(), None).await;
        assert_eq!(count(&results, 201), 1, "{results:?}");
        assert_eq!(count(&results, 409), 31, "{results:?}");
        let winner = results.iter().find(|(s, _)| *s == 201).unwrap().1["id"]
            .as_str()
            .unwrap()
            .to_owned();
        for (s, v) in &results {
            if *s == 409 {
                assert_eq!(v["code"], "conflict");
                let msg = v["error"].as_str().unwrap();
                assert!(msg.contains("web") && msg.contains(&winner), "{msg}");
            }
        }
        let named: Vec<_> = c
            .list(None, false)
            .await
            .unwrap()
            .into_iter()
            .filter(|m| m.name == "web")
            .collect();
        assert_eq!(named.len(), 1);
        // A destroyed machine gives its name back.
        c.destroy(&winner, true).await.unwrap();
        let (s, v) = create(&c, body, None).await;
        assert_eq!(s, 201, "{v}");
        assert_ne!(v["id"].as_str().unwrap(), winner);
    });
}

#[test]
fn an_idempotency_key_is_one_request_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(dir.path(), WIDE);
    let rt = rt();
    let a = json!({"name": "a", "config": {"cmd": ["sleep", "1000"]}, "skip_start": true});
    let b = json!({"name": "b", "config": {"cmd": ["sleep", "1000"]}, "skip_start": true});
    let first = rt.block_on(async {
        let c = agent.socket();
        let (s, first) = create(&c, a.clone(), Some("key-1")).await;
        assert_eq!(s, 201, "{first}");
        let (s, same) = create(&c, a.clone(), Some("key-1")).await;
        assert_eq!(s, 201, "{same}");
        assert_eq!(same["id"], first["id"], "a retry is the same machine");
        let (s, v) = create(&c, b.clone(), Some("key-1")).await;
        assert_eq!(s, 422, "{v}");
        assert_eq!(v["code"], "idempotency_mismatch", "{v}");
        assert!(v["error"].as_str().unwrap().contains("key-1"), "{v}");
        // Another body for a key changes nothing.
        assert_eq!(c.list(None, false).await.unwrap().len(), 1);
        // The key's machine is not shown a reserved label it did not send... but keeps it.
        assert_eq!(first["metadata"]["berth/idempotency-key"], "key-1");
        first
    });
    agent.stop();
    agent.spawn();
    rt.block_on(async {
        let c = agent.socket();
        let (s, v) = create(&c, a.clone(), Some("key-1")).await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["id"], first["id"], "recognised after a restart");
        let (s, v) = create(&c, b.clone(), Some("key-1")).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (422, Some("idempotency_mismatch")),
            "{v}"
        );
        assert_eq!(c.list(None, false).await.unwrap().len(), 1);
    });
}

#[test]
fn concurrent_creates_with_one_key_make_one_machine() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), WIDE);
    let c = agent.socket();
    rt().block_on(async {
        // Started (not skip_start), so most retries arrive while the first create still runs.
        let body = json!({"config": {"cmd": ["sleep", "1000"]}});
        let results = burst(&c, 24, body, Some("same-key")).await;
        assert_eq!(
            count(&results, 201),
            24,
            "every retry answers the machine: {results:?}"
        );
        let ids: BTreeSet<&str> = results
            .iter()
            .map(|(_, v)| v["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 1, "one machine: {ids:?}");
        for (_, v) in &results {
            assert_eq!(
                v["state"], "started",
                "a retry answers once the create is done: {v}"
            );
        }
        assert_eq!(c.list(None, false).await.unwrap().len(), 1);
    });
}

#[test]
fn leases_are_bounded_and_end_with_their_machine() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let c = agent.socket();
    rt().block_on(async {
        let (_, m) = create(&c, sleeper(), None).await;
        let id = m["id"].as_str().unwrap().to_owned();
        let lease_path = format!("/v1/machines/{id}/lease");
        // A description of any size was accepted.
        let (s, v) = post(
            &c,
            &lease_path,
            json!({"description": "x".repeat(64 * 1024)}),
            &[],
        )
        .await;
        assert_eq!((s, v["code"].as_str()), (413, Some("too_large")), "{v}");
        assert!(v["error"].as_str().unwrap().contains("description"), "{v}");
        let (s, lease) = post(&c, &lease_path, json!({"description": "deployer"}), &[]).await;
        assert_eq!(s, 201, "{lease}");
        let nonce = lease["nonce"].as_str().unwrap().to_owned();
        // Destroying the machine (with the nonce) drops its lease...
        let r = c
            .raw(
                Method::DELETE,
                &format!("/v1/machines/{id}"),
                None,
                &[("berth-lease-nonce", &nonce)],
            )
            .await
            .unwrap();
        assert_eq!(
            r.status.as_u16(),
            200,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        let r = c.raw(Method::GET, &lease_path, None, &[]).await.unwrap();
        assert_eq!(
            r.status.as_u16(),
            404,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        // ...and a destroyed machine cannot be leased.
        let (s, v) = post(&c, &lease_path, json!({}), &[]).await;
        assert_eq!((s, v["code"].as_str()), (409, Some("conflict")), "{v}");
        assert!(v["error"].as_str().unwrap().contains("destroyed"), "{v}");
        // A lease lapses at its ttl: then another holder can take it.
        let (_, m) = create(&c, sleeper(), None).await;
        let path = format!("/v1/machines/{}/lease", m["id"].as_str().unwrap());
        let (s, _) = post(&c, &path, json!({"ttl": "100ms"}), &[]).await;
        assert_eq!(s, 201);
        let (s, _) = post(&c, &path, json!({}), &[]).await;
        assert_eq!(s, 409, "held");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (s, _) = post(&c, &path, json!({}), &[]).await;
            if s == 201 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the lease never lapsed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

/// What, the body, the Idempotency-Key, then the status, code and words the error must carry.
type Case = (
    &'static str,
    Value,
    Option<String>,
    u16,
    &'static str,
    &'static [&'static str],
);

#[test]
fn oversized_input_is_refused_naming_the_field_and_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let c = agent.socket();
    let cmd = |extra: Value| {
        let mut body = json!({"config": {"cmd": ["sleep", "1000"]}, "skip_start": true});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let many = |n: usize, value: &str| -> Value {
        (0..n)
            .map(|i| (format!("K{i}"), Value::String(value.to_owned())))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let cases: Vec<Case> = vec![
        (
            "long name",
            cmd(json!({"name": "n".repeat(64)})),
            None,
            413,
            "too_large",
            &["name", "63"],
        ),
        (
            "name charset",
            cmd(json!({"name": "a b/../c"})),
            None,
            400,
            "invalid",
            &["name"],
        ),
        (
            "name start",
            cmd(json!({"name": "-rf"})),
            None,
            400,
            "invalid",
            &["name"],
        ),
        (
            "metadata entries",
            cmd(json!({"metadata": many(65, "v")})),
            None,
            413,
            "too_large",
            &["metadata", "64"],
        ),
        (
            "metadata value",
            cmd(json!({"metadata": {"team": "v".repeat(2048)}})),
            None,
            413,
            "too_large",
            &["metadata.team", "1024"],
        ),
        (
            "metadata key",
            cmd(
                json!({"metadata": std::iter::once(("k".repeat(200), json!("v"))).collect::<serde_json::Map<_, _>>()}),
            ),
            None,
            413,
            "too_large",
            &["metadata", "128"],
        ),
        (
            "reserved metadata",
            cmd(json!({"metadata": {"berth/idempotency-key": "forged"}})),
            None,
            400,
            "invalid",
            &["berth/"],
        ),
        (
            "env value",
            json!({"config": {"cmd": ["true"], "env": {"BIG": "v".repeat(100 * 1024)}}, "skip_start": true}),
            None,
            413,
            "too_large",
            &["config.env.BIG", "65536"],
        ),
        (
            "env entries",
            json!({"config": {"cmd": ["true"], "env": many(1025, "")}, "skip_start": true}),
            None,
            413,
            "too_large",
            &["config.env", "1024"],
        ),
        (
            "env total",
            json!({"config": {"cmd": ["true"], "env": many(8, &"v".repeat(60 * 1024))}, "skip_start": true}),
            None,
            413,
            "too_large",
            &["config.env", "262144"],
        ),
        (
            "cmd args",
            json!({"config": {"cmd": vec!["x"; 2000]}, "skip_start": true}),
            None,
            413,
            "too_large",
            &["config.cmd", "1024"],
        ),
        (
            "cmd bytes",
            json!({"config": {"cmd": ["echo", "a".repeat(200 * 1024)]}, "skip_start": true}),
            None,
            413,
            "too_large",
            &["config.cmd", "131072"],
        ),
        (
            "workdir",
            json!({"config": {"cmd": ["true"], "workdir": format!("/{}", "d".repeat(5000))}, "skip_start": true}),
            None,
            413,
            "too_large",
            &["config.workdir", "4096"],
        ),
        (
            "idempotency key",
            sleeper(),
            Some("k".repeat(300)),
            413,
            "too_large",
            &["Idempotency-Key", "255"],
        ),
    ];
    rt().block_on(async {
        for (what, body, key, status, code, needles) in cases {
            let (s, v) = create(&c, body, key.as_deref()).await;
            assert_eq!((s, v["code"].as_str()), (status, Some(code)), "{what}: {v}");
            let msg = v["error"].as_str().unwrap();
            for n in needles {
                assert!(msg.contains(n), "{what}: {msg:?} does not name {n:?}");
            }
            assert!(msg.len() < 1024, "{what}: the error echoes the input ({} bytes)", msg.len());
        }
        // A huge stop signal is refused without being echoed back.
        let (s, v) = create(
            &c,
            json!({"config": {"cmd": ["true"], "stop": {"signal": "S".repeat(500 * 1024)}}, "skip_start": true}),
            None,
        )
        .await;
        assert_eq!((s, v["code"].as_str()), (400, Some("invalid")), "{v}");
        assert!(v["error"].as_str().unwrap().len() < 1024, "echoed: {} bytes", v["error"].as_str().unwrap().len());
        assert!(c.list(None, true).await.unwrap().is_empty(), "a refused create recorded something");
        // Right at the limits, a create is accepted.
        let (s, v) = create(
            &c,
            json!({"name": "n".repeat(63), "metadata": many(64, &"v".repeat(1024)),
                   "config": {"cmd": ["true"], "env": {"E": "v".repeat(64 * 1024)}}, "skip_start": true}),
            None,
        )
        .await;
        assert_eq!(s, 201, "{v}");
        let id = v["id"].as_str().unwrap();
        let r = c
            .raw(Method::GET, &format!("/v1/machines/{id}/logs?tail=99999999999"), None, &[])
            .await
            .unwrap();
        assert_eq!(r.status.as_u16(), 400, "{}", String::from_utf8_lossy(&r.body));
    });
}

#[test]
fn the_machine_list_pages_with_limit_and_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let c = agent.socket();
    rt().block_on(async {
        let mut made = BTreeSet::new();
        for _ in 0..7 {
            let (s, v) = create(&c, sleeper(), None).await;
            assert_eq!(s, 201, "{v}");
            made.insert(v["id"].as_str().unwrap().to_owned());
        }
        // One destroyed machine is skipped by the filter without ending a page early.
        let gone = made.iter().nth(2).unwrap().clone();
        c.destroy(&gone, true).await.unwrap();
        made.remove(&gone);
        let all = c.raw(Method::GET, "/v1/machines", None, &[]).await.unwrap();
        assert!(
            all.headers.get("berth-next-cursor").is_none(),
            "no limit, no cursor"
        );
        assert_eq!(
            serde_json::from_slice::<Vec<Value>>(&all.body)
                .unwrap()
                .len(),
            6
        );
        let mut seen = Vec::new();
        let mut pages = 0;
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                None => "/v1/machines?limit=4".to_owned(),
                Some(cur) => format!("/v1/machines?limit=4&cursor={cur}"),
            };
            let r = c.raw(Method::GET, &path, None, &[]).await.unwrap();
            assert_eq!(
                r.status.as_u16(),
                200,
                "{}",
                String::from_utf8_lossy(&r.body)
            );
            let page: Vec<Value> = serde_json::from_slice(&r.body).unwrap();
            assert!(page.len() <= 4);
            pages += 1;
            seen.extend(page.iter().map(|m| m["id"].as_str().unwrap().to_owned()));
            match r.headers.get("berth-next-cursor") {
                Some(next) => cursor = Some(next.to_str().unwrap().to_owned()),
                None => break,
            }
        }
        assert_eq!(pages, 2);
        let unique: BTreeSet<String> = seen.iter().cloned().collect();
        assert_eq!(unique.len(), seen.len(), "a machine on two pages: {seen:?}");
        assert_eq!(unique, made);
        // The client pages through on its own.
        let listed: BTreeSet<String> = c
            .list(None, false)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.id.to_string())
            .collect();
        assert_eq!(listed, made);
        let (page, next) = c.list_page(None, true, 7, None).await.unwrap();
        assert_eq!((page.len(), next), (7, None), "include_destroyed pages too");
        for bad in [
            "limit=0",
            "limit=-1",
            "limit=abc",
            "limit=100000",
            "limit=2&cursor=NOT..VALID",
            "cursor=abc",
        ] {
            let r = c
                .raw(Method::GET, &format!("/v1/machines?{bad}"), None, &[])
                .await
                .unwrap();
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(
                (r.status.as_u16(), v["code"].as_str()),
                (400, Some("invalid")),
                "{bad}: {v}"
            );
        }
    });
}
