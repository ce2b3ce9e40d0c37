//! The API's handlers through the router (`tower::ServiceExt::oneshot`), over a real agent on a
//! temp data dir: errors, validation, pagination, leases, cordon and query keys, without
//! starting berthd. Machines are created with `skip_start`, so no workload runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use berth_agent::{Agent, AgentConfig};
use berth_api::{ApiConfig, Shared, SlowOps};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Api {
    router: Router,
    _dir: tempfile::TempDir,
}

async fn api(max_machines: usize) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = AgentConfig::new(dir.path().to_path_buf());
    cfg.maintenance = None;
    cfg.reconcile_interval = Duration::from_secs(3600);
    let agent = Agent::start(cfg).await.unwrap();
    let shared = Shared::new(
        agent,
        ApiConfig {
            data_dir: dir.path().to_path_buf(),
            max_machines,
            slow_window: Duration::from_secs(60),
            metrics: None,
            export: None,
        },
        SlowOps::new(16),
    );
    let lane = berth_api::lane(shared, "socket", None, 64);
    Api {
        router: berth_api::router(lane),
        _dir: dir,
    }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

impl Api {
    async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        let resp = self
            .router
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, uri: &str) -> Answer {
        self.call(Method::GET, uri, None, &[]).await
    }

    async fn create(&self, name: &str) -> Answer {
        self.call(
            Method::POST,
            "/v1/machines",
            Some(
                json!({"name": name, "config": {"cmd": ["true"]}, "skip_start": true,
                        "metadata": {"team": if name.ends_with('0') { "a" } else { "b" }}}),
            ),
            &[],
        )
        .await
    }
}

/// A failure answered as `{"error","code"}` with this status and code.
#[track_caller]
fn refused(a: &Answer, status: u16, code: &str) {
    assert_eq!(
        (a.status.as_u16(), a.body["code"].as_str()),
        (status, Some(code)),
        "{}",
        a.body
    );
    assert!(
        a.body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{}",
        a.body
    );
    assert!(a.headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn errors_are_typed_bodies() {
    let api = api(10).await;
    refused(
        &api.get("/v1/machines/nosuchmachine").await,
        404,
        "not_found",
    );
    refused(&api.get("/v1/machines/bad..id").await, 400, "invalid");
    refused(&api.get("/v1/nothing").await, 404, "not_found");
    refused(
        &api.call(Method::PUT, "/v1/machines", None, &[]).await,
        405,
        "method_not_allowed",
    );
    let no_body = api.call(Method::POST, "/v1/machines", None, &[]).await;
    refused(&no_body, 400, "invalid");
    let misspelt = api
        .call(
            Method::POST,
            "/v1/machines",
            Some(json!({"config": {"cmd": ["true"]}, "skip_strat": true})),
            &[],
        )
        .await;
    refused(&misspelt, 400, "invalid");
    assert!(
        misspelt.body["error"]
            .as_str()
            .unwrap()
            .contains("skip_strat"),
        "{}",
        misspelt.body
    );
    refused(
        &api.call(
            Method::POST,
            "/v1/machines",
            Some(json!({"config": {"cmd": []}})),
            &[],
        )
        .await,
        400,
        "invalid",
    );
    let made = api.create("dup").await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
    refused(&api.create("dup").await, 409, "conflict");
    let id = made.body["id"].as_str().unwrap().to_owned();
    refused(
        &api.call(
            Method::POST,
            &format!("/v1/machines/{id}/signal"),
            Some(json!({"signal": "SIGTERM"})),
            &[],
        )
        .await,
        409,
        "conflict",
    );
    refused(
        &api.call(
            Method::POST,
            &format!("/v1/machines/{id}/signal"),
            Some(json!({"signal": "SIGNOPE"})),
            &[],
        )
        .await,
        400,
        "invalid",
    );
    let waited = api
        .get(&format!(
            "/v1/machines/{id}/wait?state=started&timeout=50ms"
        ))
        .await;
    refused(&waited, 408, "timeout");
}

#[tokio::test]
async fn unknown_query_keys_are_refused_by_name() {
    let api = api(10).await;
    let id = api.create("m0").await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for uri in [
        "/v1/machines?stat=started".to_owned(),
        format!("/v1/machines/{id}/wait?state=created&timout=1s"),
        format!("/v1/machines/{id}/logs?tale=5"),
        "/v1/events?afterr=0".to_owned(),
    ] {
        let a = api.get(&uri).await;
        refused(&a, 400, "invalid");
        let key = uri
            .split(['?', '&'])
            .find(|p| !p.starts_with("state=") && p.contains('=') && !p.starts_with('/'))
            .unwrap()
            .split('=')
            .next()
            .unwrap()
            .to_owned();
        assert!(
            a.body["error"].as_str().unwrap().contains(&key),
            "{uri}: {}",
            a.body
        );
    }
    let a = api
        .call(
            Method::DELETE,
            &format!("/v1/machines/{id}?forse=true"),
            None,
            &[],
        )
        .await;
    refused(&a, 400, "invalid");
    assert!(
        a.body["error"].as_str().unwrap().contains("forse"),
        "{}",
        a.body
    );
    let a = api
        .call(Method::POST, "/v1/host/reconcile?aprove=true", None, &[])
        .await;
    refused(&a, 400, "invalid");
    // Values of the wrong type, too.
    refused(
        &api.get("/v1/machines?include_destroyed=maybe").await,
        400,
        "invalid",
    );
    refused(&api.get("/v1/events?after=-1").await, 400, "invalid");
    refused(
        &api.get(&format!("/v1/machines/{id}/wait?state=sleeping"))
            .await,
        400,
        "invalid",
    );
    refused(
        &api.get(&format!("/v1/machines/{id}/logs?tail=100001"))
            .await,
        400,
        "invalid",
    );
    // The machine list's metadata keys stay open.
    let a = api
        .get("/v1/machines?metadata.team=a&metadata.anything=x")
        .await;
    assert_eq!(
        (a.status, a.body.as_array().map(Vec::len)),
        (StatusCode::OK, Some(0)),
        "{}",
        a.body
    );
    let a = api.get("/v1/machines?metadata.team=a").await;
    assert_eq!(a.body.as_array().map(Vec::len), Some(1), "{}", a.body);
    // And a known key with a valid value works.
    let a = api
        .get(&format!("/v1/machines/{id}/wait?state=created&timeout=1s"))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
}

#[tokio::test]
async fn the_list_pages_and_filters() {
    let api = api(100).await;
    let mut made = Vec::new();
    for i in 0..7 {
        made.push(
            api.create(&format!("p{i}")).await.body["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    made.sort();
    let mut seen = Vec::new();
    let mut uri = "/v1/machines?limit=3".to_owned();
    loop {
        let a = api.get(&uri).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        seen.extend(
            a.body
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_owned()),
        );
        match a.headers.get("berth-next-cursor") {
            Some(c) => uri = format!("/v1/machines?limit=3&cursor={}", c.to_str().unwrap()),
            None => break,
        }
    }
    assert_eq!(seen, made);
    for bad in [
        "limit=0",
        "limit=1001",
        "limit=abc",
        "cursor=abc",
        "limit=2&cursor=NOT..VALID",
        "state=nope",
    ] {
        refused(
            &api.get(&format!("/v1/machines?{bad}")).await,
            400,
            "invalid",
        );
    }
    let destroyed = api
        .call(
            Method::DELETE,
            &format!("/v1/machines/{}", made[0]),
            None,
            &[],
        )
        .await;
    assert_eq!(destroyed.status, StatusCode::OK, "{}", destroyed.body);
    assert_eq!(
        api.get("/v1/machines").await.body.as_array().map(Vec::len),
        Some(6)
    );
    assert_eq!(
        api.get("/v1/machines?include_destroyed=true")
            .await
            .body
            .as_array()
            .map(Vec::len),
        Some(7)
    );
    assert_eq!(
        api.get("/v1/machines?state=destroyed")
            .await
            .body
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

#[tokio::test]
async fn the_machine_limit_and_idempotency_keys() {
    let api = api(2).await;
    let body = json!({"config": {"cmd": ["true"]}, "skip_start": true});
    let key = [("idempotency-key", "k1")];
    let first = api
        .call(Method::POST, "/v1/machines", Some(body.clone()), &key)
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let again = api
        .call(Method::POST, "/v1/machines", Some(body.clone()), &key)
        .await;
    assert_eq!(
        again.body["id"], first.body["id"],
        "a replayed key answers the first machine"
    );
    let other = json!({"config": {"cmd": ["false"]}, "skip_start": true});
    refused(
        &api.call(Method::POST, "/v1/machines", Some(other), &key)
            .await,
        422,
        "idempotency_mismatch",
    );
    assert_eq!(api.create("second").await.status, StatusCode::CREATED);
    let over = api.create("third").await;
    refused(&over, 409, "conflict");
    assert!(
        over.body["error"].as_str().unwrap().contains("limit"),
        "{}",
        over.body
    );
}

#[tokio::test]
async fn leases_guard_mutations() {
    let api = api(10).await;
    let id = api.create("leased").await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let lease_uri = format!("/v1/machines/{id}/lease");
    refused(&api.get(&lease_uri).await, 404, "not_found");
    let got = api
        .call(
            Method::POST,
            &lease_uri,
            Some(json!({"ttl": "30s", "description": "ci"})),
            &[],
        )
        .await;
    assert_eq!(got.status, StatusCode::CREATED, "{}", got.body);
    let nonce = got.body["nonce"].as_str().unwrap().to_owned();
    assert_eq!(nonce.len(), 32);
    let shown = api.get(&lease_uri).await;
    assert_eq!(
        (
            shown.body["nonce"].as_str(),
            shown.body["description"].as_str()
        ),
        (Some(""), Some("ci")),
        "only the holder knows the nonce"
    );
    refused(
        &api.call(Method::POST, &lease_uri, None, &[]).await,
        409,
        "conflict",
    );
    let destroy = format!("/v1/machines/{id}");
    refused(
        &api.call(Method::DELETE, &destroy, None, &[]).await,
        409,
        "lease_required",
    );
    refused(
        &api.call(
            Method::DELETE,
            &destroy,
            None,
            &[("berth-lease-nonce", "0000")],
        )
        .await,
        409,
        "lease_mismatch",
    );
    refused(
        &api.call(
            Method::DELETE,
            &lease_uri,
            None,
            &[("berth-lease-nonce", "0000")],
        )
        .await,
        409,
        "lease_mismatch",
    );
    let done = api
        .call(
            Method::DELETE,
            &destroy,
            None,
            &[("berth-lease-nonce", &nonce)],
        )
        .await;
    assert_eq!(
        (done.status, done.body["state"].as_str()),
        (StatusCode::OK, Some("destroyed")),
        "{}",
        done.body
    );
    refused(
        &api.call(Method::POST, &lease_uri, None, &[]).await,
        409,
        "conflict",
    );
}

#[tokio::test]
async fn cordon_refuses_creates_and_survives_in_the_data_dir() {
    let api = api(10).await;
    let on = api.call(Method::POST, "/v1/host/cordon", None, &[]).await;
    assert_eq!(
        (on.status, on.body["cordoned"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{}",
        on.body
    );
    assert!(api._dir.path().join("cordoned").exists());
    refused(&api.create("refused").await, 409, "cordoned");
    assert_eq!(api.get("/v1/health").await.body["cordoned"], true);
    assert_eq!(
        api.get("/v1/machines").await.body.as_array().map(Vec::len),
        Some(0),
        "nothing was recorded"
    );
    let off = api.call(Method::POST, "/v1/host/uncordon", None, &[]).await;
    assert_eq!(off.body["cordoned"], false, "{}", off.body);
    assert_eq!(api.create("accepted").await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn host_health_db_and_events_answer_their_types() {
    let api = api(10).await;
    let id = api.create("e0").await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let h: berth_api_types::HostInfo =
        serde_json::from_value(api.get("/v1/host").await.body).unwrap();
    assert_eq!(h.machines.get("created"), Some(&1));
    let health: berth_api_types::Health =
        serde_json::from_value(api.get("/v1/health").await.body).unwrap();
    assert!(health.checks.contains_key("store_writer"), "{health:?}");
    let stats: berth_api_types::DbStats =
        serde_json::from_value(api.get("/v1/db/stats").await.body).unwrap();
    assert!(stats.next_seq > 1, "{stats:?}");
    let check: berth_api_types::DbCheck =
        serde_json::from_value(api.get("/v1/db/check").await.body).unwrap();
    assert!(check.ok, "{check:?}");
    let page: berth_api_types::EventsPage =
        serde_json::from_value(api.get("/v1/events?after=0&limit=1").await.body).unwrap();
    assert_eq!((page.events.len(), page.last_seq), (1, 1));
    let far = format!("/v1/events?after={}", stats.next_seq + 10);
    refused(&api.get(&far).await, 409, "conflict");
    let events: Vec<berth_types::Event> =
        serde_json::from_value(api.get(&format!("/v1/machines/{id}/events")).await.body).unwrap();
    assert!(!events.is_empty());
    let r: berth_api_types::ReconcileReport = serde_json::from_value(
        api.call(Method::POST, "/v1/host/reconcile", None, &[])
            .await
            .body,
    )
    .unwrap();
    assert_eq!(r.examined, 1, "{r:?}");
    let _: berth_api_types::ApproveReport = serde_json::from_value(
        api.call(Method::POST, "/v1/host/approve", None, &[])
            .await
            .body,
    )
    .unwrap();
    let _: Vec<berth_api_types::SlowOp> =
        serde_json::from_value(api.get("/v1/db/slow-ops").await.body).unwrap();
    let logs = api.get(&format!("/v1/machines/{id}/logs?tail=5")).await;
    assert_eq!(logs.status, StatusCode::OK, "{}", logs.body);
    refused(&api.get("/metrics").await, 503, "unavailable");
    let _ = Arc::new(());
}
