//! Machines from registry images, through a real berthd and a real registry (Debian's
//! `docker-registry`) on loopback, images built with GNU tar and pushed with skopeo: a create
//! pulls what the host lacks (by tag, by digest) before anything is recorded; behind basic auth
//! and behind token auth (a token issuer run by the test), the right credentials from the
//! root-only credentials file pull and none or wrong ones are refused in words, leaving nothing;
//! a credentials file others can read and a registry that dies mid-pull leave no machine and no
//! image; a berthd SIGKILLed mid-pull pulls cleanly once restarted; `DELETE /v1/images/{digest}`
//! is refused while a machine uses the image; unused images are collected after
//! `images.gc_unused_after`.
//!
//! Image machines do not run on this agent yet (`check_config` refuses them after the image is
//! made ready): a create answers 400 "not supported" once the pull is done, or 201 once they
//! run; either way the image is pulled and nothing half-made is recorded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_client::{Client, Method};
use berth_store::{Store, StoreOptions};
use berth_types::{MachineConfig, MachineId, MachineRecord, Source, Timestamp};
use serde_json::{Value, json};

mod common;
use common::*;

#[path = "../crates/berth-image/tests/support/registry.rs"]
#[allow(dead_code)]
mod registry;
use registry::{Registry, SlowProxy};
#[path = "common/oci.rs"]
mod oci;
use oci::{image, insecure};
#[path = "common/token_issuer.rs"]
mod token_issuer;
use token_issuer::{TokenIssuer, TokenRequest};

async fn create(c: &Client, image: &str) -> (u16, Value) {
    let body =
        json!({"config": {"image": image, "cmd": ["/bin/busybox", "true"]}, "skip_start": true});
    post_machine(c, &body).await
}

async fn images(c: &Client) -> Vec<Value> {
    let r = c.raw(Method::GET, "/v1/images", None, &[]).await.unwrap();
    assert_eq!(r.status.as_u16(), 200);
    serde_json::from_slice(&r.body).unwrap()
}

async fn machines(c: &Client) -> Value {
    let r = c.raw(Method::GET, "/v1/machines", None, &[]).await.unwrap();
    serde_json::from_slice(&r.body).unwrap()
}

/// A create whose image had to be pulled: 201 with the digest (image machines run here), and
/// the pull as its own step in the machine's events. `first`: the first pull of this image,
/// which downloads it; later ones find it on the host.
async fn assert_pulled_create(c: &Client, reference: &str, digest: &str, first: bool) {
    let (status, body) = create(c, reference).await;
    assert_eq!(status, 201, "{reference}: {body}");
    assert_eq!(body["image_digest"], digest, "{body}");
    // The pull is its own step in the machine's events, right after the create, recorded in the
    // state it happened in.
    let id = body["id"].as_str().unwrap();
    let r = c
        .raw(Method::GET, &format!("/v1/machines/{id}/events"), None, &[])
        .await
        .unwrap();
    let events: Vec<Value> = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(events[0]["type"], "create", "{events:?}");
    let pull = &events[1];
    assert_eq!(pull["type"], "pull", "{events:?}");
    assert_eq!(
        (&pull["from"], &pull["to"]),
        (&json!("created"), &json!("created"))
    );
    let reason = pull["reason"].as_str().unwrap();
    assert!(
        reason.contains(reference) && reason.contains(digest),
        "{reason}"
    );
    let downloaded = reason.contains("MiB downloaded");
    assert_eq!(downloaded, first, "{reason}");
    let list = images(c).await;
    let img = list
        .iter()
        .find(|i| i["digest"] == digest)
        .unwrap_or_else(|| panic!("{list:?}"));
    assert!(img["size_bytes"].as_u64().unwrap() > 100_000, "{img}");
    assert!(
        img["references"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == reference),
        "{img}"
    );
}

#[test]
fn a_create_pulls_by_tag_and_by_digest_what_the_host_lacks() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(&tmp.path().join("registry"), None);
    let (layout, digest) = image(&tmp.path().join("img"), 0);
    reg.push(&layout, "v1", "app:v1");
    let agent = Agent::start(&tmp.path().join("agent"), &insecure(&reg.host(), ""));
    let c = agent.socket();
    rt().block_on(async {
        assert!(images(&c).await.is_empty());
        let by_tag = format!("{}/app:v1", reg.host());
        assert_pulled_create(&c, &by_tag, &digest, true).await;
        let by_digest = format!("{}/app@{digest}", reg.host());
        assert_pulled_create(&c, &by_digest, &digest, false).await;
        assert_eq!(images(&c).await.len(), 1, "one image, pulled once");
        // An unknown tag is the registry's answer in words, and nothing is recorded (the two
        // machines above are all there is).
        let before = machines(&c).await;
        assert_eq!(before.as_array().map(Vec::len), Some(2), "{before}");
        let (status, body) = create(&c, &format!("{}/app:nope", reg.host())).await;
        assert!(status == 400 || status == 502, "{status} {body}");
        assert!(body["error"].as_str().unwrap().contains("nope"), "{body}");
        assert_eq!(machines(&c).await, before);
    });
    let out = agent.cli(&["image", "ls"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(&digest[..19]),
        "{text}"
    );
}

/// A credentials file others can read is refused (it holds registry passwords), before any
/// request to the registry, and nothing is recorded.
#[test]
fn a_credentials_file_others_can_read_is_refused_and_nothing_is_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(&tmp.path().join("registry"), None);
    let (layout, _digest) = image(&tmp.path().join("img"), 0);
    reg.push(&layout, "v1", "app:v1");
    let creds = tmp.path().join("creds.json");
    let auths = json!({"auths": {reg.host(): {"username": "alice", "password": "s3cret"}}});
    std::fs::write(&creds, auths.to_string()).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).unwrap();
    let extra = format!("credentials_file = \"{}\"\n", creds.display());
    let agent = Agent::start(&tmp.path().join("agent"), &insecure(&reg.host(), &extra));
    let c = agent.socket();
    rt().block_on(async {
        let (status, body) = create(&c, &format!("{}/app:v1", reg.host())).await;
        assert!(status >= 400, "{status} {body}");
        let msg = body["error"].as_str().unwrap();
        assert!(
            msg.contains("creds.json") && msg.contains("chmod 600"),
            "{msg}"
        );
        assert_eq!(machines(&c).await, json!([]));
        assert!(images(&c).await.is_empty());
    });
}

#[test]
fn a_registry_dying_mid_pull_leaves_nothing_and_a_sigkilled_agent_pulls_cleanly_after() {
    let tmp = tempfile::tempdir().unwrap();
    let mut reg = Registry::start(&tmp.path().join("registry"), None);
    let (layout, digest) = image(&tmp.path().join("img"), 48 << 20);
    reg.push(&layout, "v1", "big:v1");
    let proxy = SlowProxy::start(reg.port);
    let reference = format!("{}/big:v1", proxy.host());
    let mut agent = Agent::start(&tmp.path().join("agent"), &insecure(&proxy.host(), ""));
    let partial = agent.dir.join("images/cache/partial");
    let c = agent.socket();
    let r = rt();
    // The registry dies mid-pull: a 502 in words, no machine, no image.
    r.block_on(async {
        let pull = tokio::spawn({
            let (c, reference) = (agent.socket(), reference.clone());
            async move { create(&c, &reference).await }
        });
        wait_bytes(&partial, 1 << 20);
        reg.kill();
        let (status, body) = pull.await.unwrap();
        assert_eq!(status, 502, "{body}");
        assert_eq!(body["code"], "bad_gateway", "{body}");
        assert_eq!(machines(&c).await, json!([]));
        assert!(images(&c).await.is_empty());
    });
    // berthd SIGKILLed mid-pull: after a restart the same create pulls the image whole.
    reg.restart();
    proxy.set_upstream(reg.port);
    let pull = std::thread::spawn({
        let (sock, reference) = (agent.socket(), reference.clone());
        move || rt().block_on(async move { create(&sock, &reference).await })
    });
    wait_bytes(&partial, 4 << 20);
    let mut child = agent.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = pull.join();
    agent.spawn();
    r.block_on(async {
        assert_eq!(
            machines(&c).await,
            json!([]),
            "the cut-off create recorded nothing"
        );
        assert!(images(&c).await.is_empty(), "no half image");
        assert_pulled_create(&c, &reference, &digest, true).await;
    });
}

/// Waits until the partial downloads under `dir` hold at least `n` bytes.
fn wait_bytes(dir: &Path, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let have: u64 = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        if have >= n {
            return;
        }
        assert!(Instant::now() < deadline, "the pull never got {n} bytes in");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Records a machine that uses `reference` (digest `digest`) straight into the agent's store
/// before berthd starts: image machines cannot be created on this agent yet.
fn plant_machine(data_dir: &Path, reference: &str, digest: &str) -> String {
    std::fs::create_dir_all(data_dir).unwrap();
    let store = Store::open(data_dir.join("berth.redb"), StoreOptions::default()).unwrap();
    let config: MachineConfig =
        serde_json::from_value(json!({"image": reference, "cmd": ["/bin/busybox", "true"]}))
            .unwrap();
    let id = MachineId::generate();
    let mut rec = MachineRecord::new(
        id.clone(),
        None,
        config,
        Default::default(),
        Timestamp::now(),
    );
    rec.image_digest = Some(digest.to_owned());
    rt().block_on(store.write(move |w| w.create_machine(rec, Source::User, "test").map(|_| ())))
        .unwrap();
    drop(store);
    id.to_string()
}

#[test]
fn removal_is_refused_while_in_use_and_unused_images_are_collected() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(&tmp.path().join("registry"), None);
    let (a_layout, a) = image(&tmp.path().join("a"), 0);
    let (b_layout, b) = image(&tmp.path().join("b"), 1 << 20);
    reg.push(&a_layout, "v1", "a:v1");
    reg.push(&b_layout, "v1", "b:v1");
    let data = tmp.path().join("agent");
    let used_by = plant_machine(&data, &format!("{}/a:v1", reg.host()), &a);
    let agent = Agent::start(&data, &insecure(&reg.host(), "gc_unused_after = \"2s\"\n"));
    let c = agent.socket();
    rt().block_on(async {
        for r in ["a:v1", "b:v1"] {
            let body = json!({"image": format!("{}/{r}", reg.host())}).to_string();
            let resp = c
                .raw(
                    Method::POST,
                    "/v1/images/pull",
                    Some(body.into_bytes()),
                    &[],
                )
                .await
                .unwrap();
            assert_eq!(
                resp.status.as_u16(),
                200,
                "{}",
                String::from_utf8_lossy(&resp.body)
            );
        }
        let list = images(&c).await;
        let img_a = list.iter().find(|i| i["digest"] == a).unwrap();
        assert_eq!(img_a["in_use_by"], json!([used_by]));
        let del = |d: String| {
            let c = c.clone();
            async move {
                c.raw(Method::DELETE, &format!("/v1/images/{d}"), None, &[])
                    .await
                    .unwrap()
            }
        };
        let r = del(a.clone()).await;
        assert_eq!(
            r.status.as_u16(),
            409,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(String::from_utf8_lossy(&r.body).contains(&used_by));
        let r = del(format!("sha256:{}", "0".repeat(64))).await;
        assert_eq!(r.status.as_u16(), 404);
        // The collector takes b (unused for 2s) and leaves a (its machine is not destroyed).
        let deadline = Instant::now() + Duration::from_secs(30);
        while images(&c).await.iter().any(|i| i["digest"] == b) {
            assert!(Instant::now() < deadline, "b was never collected");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            images(&c).await.iter().any(|i| i["digest"] == a),
            "a is in use"
        );
        // Once its machine is destroyed, a can be removed.
        c.destroy(&used_by, true).await.unwrap();
        let r = del(a.clone()).await;
        assert_eq!(
            r.status.as_u16(),
            204,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(images(&c).await.is_empty());
    });
}

/// Writes a root-only credentials file giving `user:password` for `host`.
fn write_credentials(path: &Path, host: &str, user: &str, password: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let auths = json!({"auths": {host: {"username": user, "password": password}}});
    std::fs::write(path, auths.to_string()).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// What the image store holds besides its cache: roots, and unpacks in progress.
fn store_entries(agent_dir: &Path) -> Vec<String> {
    ["roots", "tmp"]
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(agent_dir.join("images").join(d))
                .into_iter()
                .flatten()
        })
        .flatten()
        .map(|e| e.path().display().to_string())
        .collect()
}

/// A berthd reaching `reg` with a root-only `images.credentials_file` that has credentials for
/// another host only, and that file.
fn agent_with_credentials(tmp: &Path, reg: &Registry) -> (Agent, PathBuf) {
    let creds = tmp.join("creds.json");
    write_credentials(&creds, "other.example:5000", "bob", "x");
    let extra = format!("credentials_file = \"{}\"\n", creds.display());
    let agent = Agent::start(&tmp.join("agent"), &insecure(&reg.host(), &extra));
    (agent, creds)
}

/// What a refused create must say besides berth's own words: the registry's (or its token
/// issuer's) answer, without and with wrong credentials.
struct Answers<'a> {
    none: &'a [&'a str],
    wrong: &'a [&'a str],
}

/// A create of `reference` (at `host`) with no credentials for it in `creds`, then with
/// `user` and a wrong password: each is refused in words that say which and carry the
/// registry's answer, and nothing is recorded (no machine, no image, no root or unpack).
async fn assert_refused_without_right_credentials(
    c: &Client,
    agent: &Agent,
    creds: &Path,
    (host, reference, user): (&str, &str, &str),
    answers: Answers<'_>,
) {
    let (status, body) = create(c, reference).await;
    assert_eq!(status, 400, "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.contains("unauthorized") && msg.contains("requires credentials"),
        "{msg}"
    );
    assert!(msg.contains("creds.json"), "names the file: {msg}");
    for a in answers.none {
        assert!(msg.contains(a), "the registry's answer ({a}): {msg}");
    }
    write_credentials(creds, host, user, "wrong-password");
    let (status, body) = create(c, reference).await;
    assert_eq!(status, 400, "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.contains("refused the credentials") && msg.contains(host),
        "{msg}"
    );
    for a in answers.wrong {
        assert!(msg.contains(a), "the registry's answer ({a}): {msg}");
    }
    assert!(
        !msg.contains("wrong-password"),
        "no password in words: {msg}"
    );
    assert_eq!(machines(c).await, json!([]), "nothing recorded");
    assert!(images(c).await.is_empty());
    assert_eq!(store_entries(&agent.dir), Vec::<String>::new());
}

/// A registry with basic auth (htpasswd): no credentials and wrong ones are refused in words
/// that say which and name the registry's answer, nothing is recorded; the right ones, read
/// from the root-only `images.credentials_file` at each pull, pull the image.
#[test]
fn basic_auth_pulls_with_the_right_credentials_and_refuses_none_or_wrong_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(&tmp.path().join("registry"), Some(("alice", "s3cret")));
    let (layout, digest) = image(&tmp.path().join("img"), 0);
    reg.push(&layout, "v1", "app:v1");
    let (agent, creds) = agent_with_credentials(tmp.path(), &reg);
    let c = agent.socket();
    let (host, reference) = (reg.host(), format!("{}/app:v1", reg.host()));
    rt().block_on(async {
        let answers = Answers {
            none: &["401"],
            wrong: &["401"],
        };
        let names = (host.as_str(), reference.as_str(), "alice");
        assert_refused_without_right_credentials(&c, &agent, &creds, names, answers).await;
        write_credentials(&creds, &host, "alice", "s3cret");
        assert_pulled_create(&c, &reference, &digest, true).await;
    });
}

/// A registry with token auth (distribution's `auth: token`) and its token issuer, run by the
/// test: without credentials and with wrong ones the issuer refuses a token, the create is
/// refused in words with the issuer's answer and nothing is recorded; with the right ones the
/// issuer hands berthd a token for `repository:app:pull` as that user, and the image is pulled.
#[test]
fn token_auth_pulls_with_a_token_for_the_right_credentials_and_refuses_none_or_wrong_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let issuer = TokenIssuer::start(&tmp.path().join("issuer"), "alice", "s3cret");
    let reg = Registry::start_with(
        &tmp.path().join("registry"),
        registry::Auth::Token(issuer.registry_auth()),
    );
    let (layout, digest) = image(&tmp.path().join("img"), 0);
    reg.push(&layout, "v1", "app:v1");
    let pushed_with_a_token = issuer.requests().iter().any(|r| {
        r.granted
            && r.user.as_deref() == Some("alice")
            && r.scopes.iter().any(|s| s.contains("push"))
    });
    assert!(pushed_with_a_token, "{:?}", issuer.requests());
    issuer.clear();
    let (agent, creds) = agent_with_credentials(tmp.path(), &reg);
    let c = agent.socket();
    let (host, reference) = (reg.host(), format!("{}/app:v1", reg.host()));
    let pull = |user: Option<&str>, granted| TokenRequest {
        user: user.map(str::to_owned),
        scopes: vec!["repository:app:pull".to_owned()],
        granted,
    };
    rt().block_on(async {
        let answers = Answers {
            none: &["the token issuer requires credentials"],
            wrong: &["the token issuer refused the password of alice"],
        };
        let names = (host.as_str(), reference.as_str(), "alice");
        assert_refused_without_right_credentials(&c, &agent, &creds, names, answers).await;
        assert_eq!(
            issuer.requests(),
            vec![pull(None, false), pull(Some("alice"), false)],
            "the issuer refused a token to no user, then to alice with a wrong password"
        );
        issuer.clear();
        write_credentials(&creds, &host, "alice", "s3cret");
        assert_pulled_create(&c, &reference, &digest, true).await;
    });
    let requests = issuer.requests();
    assert!(
        !requests.is_empty() && requests.iter().all(|r| *r == pull(Some("alice"), true)),
        "the pull's token came from the issuer, for alice: {requests:?}"
    );
}

/// A layer blob corrupted in the registry's storage: the create fails naming the digest that
/// does not match, and leaves no machine, no image, no root or unpack in progress, and no
/// partial download to resume; once the blob is repaired the same create succeeds.
#[test]
fn a_tampered_blob_is_refused_naming_the_digest_and_nothing_is_left() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(&tmp.path().join("registry"), None);
    let (layout, digest) = image(&tmp.path().join("img"), 1 << 20);
    reg.push(&layout, "v1", "app:v1");
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(layout.join("blobs/sha256").join(&digest[7..])).unwrap(),
    )
    .unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    let stored = reg.blob_path(&layer);
    let original = std::fs::read(&stored).unwrap();
    let mut bad = original.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    std::fs::write(&stored, &bad).unwrap();
    let agent = Agent::start(&tmp.path().join("agent"), &insecure(&reg.host(), ""));
    let c = agent.socket();
    let reference = format!("{}/app:v1", reg.host());
    rt().block_on(async {
        let (status, body) = create(&c, &reference).await;
        assert_eq!(status, 502, "{body}");
        let msg = body["error"].as_str().unwrap();
        assert!(
            msg.contains(&layer) && msg.contains("does not match its digest"),
            "{msg}"
        );
        assert_eq!(machines(&c).await, json!([]), "nothing recorded");
        assert!(images(&c).await.is_empty());
        assert_eq!(store_entries(&agent.dir), Vec::<String>::new());
        let partial = agent.dir.join("images/cache/partial").join(&layer[7..]);
        assert!(!partial.exists(), "a bad blob is not kept to resume");
        std::fs::write(&stored, &original).unwrap();
        assert_pulled_create(&c, &reference, &digest, true).await;
    });
}

/// `POST /v1/images/pull` with `Accept: application/x-ndjson` streams the pull's progress over
/// the socket and ends with the image; the plain JSON answer stays the default; and `berth image
/// pull` on a terminal draws that progress, while piped it prints only its result.
#[test]
fn a_streamed_pull_carries_progress_then_the_image_and_the_cli_shows_it_on_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(&tmp.path().join("registry"), None);
    let (a_layout, a) = image(&tmp.path().join("a"), 16 << 20);
    let (b_layout, b) = image(&tmp.path().join("b"), 12 << 20);
    reg.push(&a_layout, "v1", "a:v1");
    reg.push(&b_layout, "v1", "b:v1");
    let proxy = SlowProxy::start(reg.port);
    let agent = Agent::start(&tmp.path().join("agent"), &insecure(&proxy.host(), ""));
    let c = agent.socket();
    let a_ref = format!("{}/a:v1", proxy.host());
    rt().block_on(async {
        let body = json!({"image": a_ref}).to_string().into_bytes();
        let ndjson = [("accept", "application/x-ndjson")];
        let r = c
            .raw(Method::POST, "/v1/images/pull", Some(body.clone()), &ndjson)
            .await
            .unwrap();
        assert_eq!(r.status.as_u16(), 200);
        assert_eq!(r.headers["content-type"], "application/x-ndjson");
        let lines: Vec<Value> = String::from_utf8_lossy(&r.body)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let (last, progress) = lines.split_last().unwrap();
        assert_eq!(last["type"], "done", "{lines:?}");
        assert_eq!(last["image"]["digest"], a, "{last}");
        assert!(!progress.is_empty(), "no progress line: {lines:?}");
        let total = progress[0]["total_bytes"].as_u64().unwrap();
        assert!(total > 16 << 20, "{lines:?}");
        let mut seen = 0;
        for p in progress {
            assert_eq!(p["type"], "progress", "{p}");
            assert_eq!(p["total_bytes"], total, "{p}");
            let done = p["downloaded_bytes"].as_u64().unwrap();
            assert!(done >= seen && done <= total, "{lines:?}");
            seen = done;
        }
        let first = progress[0]["downloaded_bytes"].as_u64().unwrap();
        assert!(first < total, "progress is seen before the end: {lines:?}");
        // Without the header: the plain JSON answer.
        let r = c
            .raw(Method::POST, "/v1/images/pull", Some(body), &[])
            .await
            .unwrap();
        assert_eq!(r.status.as_u16(), 200);
        assert_eq!(r.headers["content-type"], "application/json");
        let report: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(report["image"]["digest"], a, "{report}");
    });
    // A real pseudo-terminal (util-linux `script`): the bar shows bytes out of the total.
    let berth = common::built("berth", "berth");
    let on_tty = |reference: &str| {
        Command::new("script")
            .arg("-qec")
            .arg(format!(
                "stty cols 120; {} --data-dir {} image pull {reference}",
                berth.display(),
                agent.dir.display()
            ))
            .arg("/dev/null")
            .output()
            .unwrap()
    };
    let out = on_tty(&format!("{}/b:v1", proxy.host()));
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&b), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("pulling") && l.contains(" MiB/") && l.contains("MiB/s")),
        "a progress bar of bytes out of the total: {text}"
    );
    let out = on_tty(&format!("{}/b:nope", proxy.host()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && text.contains("nope"), "{text}");
    // Piped: the result alone, nothing on stderr.
    let out = agent.cli(&["image", "pull", &format!("{}/b:v1", proxy.host())]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&b), "{out:?}");
}
