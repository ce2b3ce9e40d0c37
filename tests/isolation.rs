//! Image machines under a real OCI runtime (runc), through a real berthd, shown from inside the
//! machine: its own pid 1, no host processes, berth's data dir, token and socket out of reach,
//! the default capability set only, `network: "none"` with only `lo`, the user honoured, the
//! image's root read-only and a writable layer per machine, a volume shared and surviving
//! destroy, files written before start; reattach after SIGKILL of berthd, an exit while it is
//! down recorded, OOM recorded, and destroy leaving nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use berth_client::{Client, Method};
use serde_json::{Value, json};

mod common;
use common::*;

async fn create(c: &Client, body: Value) -> (u16, Value) {
    let r = c
        .raw(
            Method::POST,
            "/v1/machines",
            Some(serde_json::to_vec(&body).unwrap()),
            &[],
        )
        .await
        .unwrap();
    (
        r.status.as_u16(),
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

async fn create_ok(c: &Client, config: Value) -> String {
    let (status, body) = create(c, json!({ "config": config })).await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// The machine's log once it contains `marker` (polled).
async fn logs_until(c: &Client, id: &str, marker: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c
            .raw(Method::GET, &format!("/v1/machines/{id}/logs"), None, &[])
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&r.body).into_owned();
        if text.contains(marker) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{id}: no {marker:?} in its log: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn busybox(dir: &Path) -> String {
    busybox::image(&dir.join("busybox"))
}

#[path = "common/busybox.rs"]
mod busybox;

fn b64(s: &str) -> String {
    // A tiny standard base64 encoder (the tests need no crate for it).
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in s.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn an_image_machine_sees_only_itself() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let image = busybox(dir.path());
    let data = dir.path().display().to_string();
    let script = format!(
        "echo uid=$(id -u) gid=$(id -g) groups=$(id -G); echo pid=$$; \
         echo procs=$(ls /proc | grep -c '^[0-9]'); \
         test -e {data}/token && echo token-visible || echo no-token; \
         test -e {data}/berth.sock && echo socket-visible || echo no-socket; \
         ls /proc/1/root{data} >/dev/null 2>&1 && echo data-visible || echo no-data; \
         grep CapEff /proc/self/status; echo nets=$(ls /sys/class/net | tr '\\n' ,); \
         touch /bin/written 2>/dev/null && echo bin-writable || echo bin-readonly; \
         echo conf=$(cat /etc/app.conf) mode=$(stat -c %a /etc/app.conf); \
         echo env=$FROM_IMAGE; echo done"
    );
    let c = agent.socket();
    rt().block_on(async {
        let id = create_ok(
            &c,
            json!({"image": image, "user": "app", "network": "none", "cmd": ["/bin/sh", "-c", script],
                   "files": [{"path": "/etc/app.conf", "raw_value": b64("hello"), "mode": 0o600}]}),
        )
        .await;
        let log = logs_until(&c, &id, "done").await;
        assert!(log.contains("uid=1000 gid=1000 groups=1000 2000"), "user and groups: {log}");
        assert!(log.contains("pid=1\n"), "pid 1 is the workload: {log}");
        // The shell, the subshell of `$(...)`, ls and grep: a handful, where the host has hundreds.
        let procs: u32 = log
            .lines()
            .find_map(|l| l.strip_prefix("procs="))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(u32::MAX);
        assert!(procs <= 6, "no host processes: {log}");
        for claim in ["no-token", "no-socket", "no-data", "bin-readonly", "conf=hello mode=600", "env=1"] {
            assert!(log.contains(claim), "{claim}: {log}");
        }
        assert!(log.contains("CapEff:\t0000000000000000"), "a non-root user has no capability: {log}");
        assert!(log.contains("nets=lo,\n"), "network none: only lo: {log}");
    });
}

fn runc_list() -> String {
    let out = std::process::Command::new("runc")
        .arg("list")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mounts() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap()
}

#[test]
fn layers_are_per_machine_volumes_are_shared_and_destroy_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let image = busybox(dir.path());
    let c = agent.socket();
    rt().block_on(async {
        let vol = json!([{"volume": "shared", "path": "/data"}]);
        let a = create_ok(
            &c,
            json!({"image": image, "mounts": vol,
                   "cmd": ["/bin/sh", "-c", "echo hi > /data/hello && touch /bin/marker && echo written; sleep 1000"]}),
        )
        .await;
        logs_until(&c, &a, "written").await;
        let b = create_ok(
            &c,
            json!({"image": image, "mounts": vol,
                   "cmd": ["/bin/sh", "-c", "echo vol=$(cat /data/hello); test -e /bin/marker && echo layer-shared || echo layer-own; echo done"]}),
        )
        .await;
        let log = logs_until(&c, &b, "done").await;
        assert!(log.contains("vol=hi"), "the volume is shared: {log}");
        assert!(log.contains("layer-own"), "each machine has its own writable layer: {log}");
        let machine_dir = dir.path().join("machines").join(&a);
        assert!(runc_list().contains(&format!("berth-{a}")), "running under runc: {}", runc_list());
        assert!(mounts().contains(&machine_dir.display().to_string()));
        c.destroy(&a, true).await.unwrap();
        c.destroy(&b, true).await.unwrap();
        let listed = runc_list();
        assert!(!listed.contains(&format!("berth-{a}")) && !listed.contains(&format!("berth-{b}")), "{listed}");
        assert!(!mounts().contains(&machine_dir.display().to_string()), "no mount is left");
        assert!(!machine_dir.exists(), "the bundle is gone");
        let images = std::process::Command::new("find")
            .arg(dir.path().join("images"))
            .args(["-name", "marker"])
            .output()
            .unwrap();
        assert!(images.stdout.is_empty(), "the image's root was not written to");
        let hello = dir.path().join("volumes/shared/hello");
        assert_eq!(std::fs::read_to_string(hello).unwrap(), "hi\n", "the volume survives destroy");
    });
}

#[test]
fn an_image_machine_survives_sigkill_of_berthd_and_its_oom_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(dir.path(), "");
    let image = busybox(dir.path());
    let c = agent.socket();
    let (id, pid, events) = rt().block_on(async {
        let id = create_ok(&c, json!({"image": image, "cmd": ["/bin/sleep", "1000"]})).await;
        let m = c.wait(&id, "started", "20s").await.unwrap();
        let events = c.machine_events(&id).await.unwrap().len();
        (id, m.pid.unwrap(), events)
    });
    let mut child = agent.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    agent.spawn();
    let c = agent.socket();
    rt().block_on(async {
        let m = c.get(&id).await.unwrap();
        assert_eq!(m.pid, Some(pid), "reattached to the same workload");
        assert_eq!(m.state.to_string(), "started");
        assert_eq!(c.machine_events(&id).await.unwrap().len(), events, "no new transitions");
        let oom = create_ok(
            &c,
            json!({"image": image, "resources": {"memory_mb": 16},
                   "cmd": ["/bin/sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived"]}),
        )
        .await;
        let m = c.wait(&oom, "stopped", "30s").await.unwrap();
        let exit = m.exit.unwrap();
        assert!(exit.oom_killed, "the OOM kill is recorded: {exit:?}");
    });
}
