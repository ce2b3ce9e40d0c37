//! What a machine's workload gets beyond its command, through a real berthd: named volumes
//! (`/v1/volumes`, `berth volume`), `exec` (`/v1/machines/{id}/exec`, `berth machine exec`) in
//! image and process machines, and every new config field's bad values refused before anything
//! is recorded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use berth_client::{Client, Method};
use serde_json::{Value, json};

mod common;
use common::*;

#[path = "common/busybox.rs"]
mod busybox;

async fn call(c: &Client, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let r = c
        .raw(
            method,
            path,
            body.map(|b| serde_json::to_vec(&b).unwrap()),
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
    let (status, body) = post_machine(c, &json!({ "config": config })).await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

async fn exec(c: &Client, id: &str, req: Value) -> Value {
    let (status, body) = call(
        c,
        Method::POST,
        &format!("/v1/machines/{id}/exec"),
        Some(req),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
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

/// Volumes: created, listed with who mounts them, private and owned by the machine's user,
/// their content surviving destroy and a new machine, removal refused (409) while a machine that
/// is not destroyed mounts one; the CLI's `volume ls|create|rm`.
#[test]
fn volumes_are_listed_owned_kept_and_removed_only_when_unused() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let image = busybox::image(&dir.path().join("busybox"));
    let c = agent.socket();
    rt().block_on(async {
        let (s, v) = call(&c, Method::POST, "/v1/volumes", Some(json!({"name": "data"}))).await;
        assert_eq!(s, 201, "{v}");
        assert_eq!((v["name"].as_str(), v["uid"].as_u64()), (Some("data"), Some(0)), "{v}");
        let (s, v) = call(&c, Method::POST, "/v1/volumes", Some(json!({"name": "data"}))).await;
        assert_eq!((s, v["code"].as_str()), (409, Some("conflict")), "{v}");
        for bad in ["../etc", "", ".hidden", "a/b", &"x".repeat(64)] {
            let (s, v) = call(&c, Method::POST, "/v1/volumes", Some(json!({"name": bad}))).await;
            assert_eq!((s, v["code"].as_str()), (400, Some("invalid")), "{bad:?}: {v}");
            assert!(v["error"].as_str().unwrap().contains("name"), "{v}");
        }
        let vols = dir.path().join("volumes");
        assert_eq!(std::fs::metadata(&vols).unwrap().mode() & 0o777, 0o700, "private");

        let writer = create_ok(
            &c,
            json!({"image": image, "user": "app", "mounts": [{"volume": "data", "path": "/data"}],
                   "cmd": ["/bin/sh", "-c", "echo kept > /data/file && echo written; sleep 1000"]}),
        )
        .await;
        logs_until(&c, &writer, "written").await;
        let meta = std::fs::metadata(vols.join("data")).unwrap();
        assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o777), (1000, 1000, 0o700), "owned by the machine's user");
        let (s, list) = call(&c, Method::GET, "/v1/volumes", None).await;
        assert_eq!(s, 200);
        assert_eq!(list[0]["in_use_by"], json!([writer]), "{list}");
        let (s, v) = call(&c, Method::DELETE, "/v1/volumes/data", None).await;
        assert_eq!((s, v["code"].as_str()), (409, Some("conflict")), "{v}");
        assert!(v["error"].as_str().unwrap().contains(&writer), "{v}");
        // A stopped machine still mounts it (at its next start).
        c.stop(&writer, &Default::default()).await.unwrap();
        let (s, _) = call(&c, Method::DELETE, "/v1/volumes/data", None).await;
        assert_eq!(s, 409);
        c.destroy(&writer, true).await.unwrap();

        let reader = create_ok(
            &c,
            // The same user: a root workload without CAP_DAC_OVERRIDE (not in the default set)
            // cannot read another user's 0700 volume either.
            json!({"image": image, "user": "app", "mounts": [{"volume": "data", "path": "/mnt/in", "read_only": true}],
                   "cmd": ["/bin/sh", "-c", "echo got=$(cat /mnt/in/file); touch /mnt/in/x 2>/dev/null && echo rw || echo ro; echo done"]}),
        )
        .await;
        let log = logs_until(&c, &reader, "done").await;
        assert!(log.contains("got=kept") && log.contains("ro\n"), "survives destroy; read-only: {log}");
        c.destroy(&reader, true).await.unwrap();

        // The CLI.
        let out = agent.cli(&["volume", "create", "other"]);
        assert!(out.status.success(), "{out:?}");
        let out = agent.cli(&["volume", "ls"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("data") && text.contains("other"), "{text}");
        let out = agent.cli(&["volume", "ls", "--json"]);
        let list: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
        assert!(agent.cli(&["volume", "rm", "other"]).status.success());
        assert!(agent.cli(&["volume", "rm", "data"]).status.success());
        assert_eq!(agent.cli(&["volume", "rm", "data"]).status.code(), Some(4), "not found");
        assert!(!vols.join("data").exists());
        let (_, list) = call(&c, Method::GET, "/v1/volumes", None).await;
        assert_eq!(list, json!([]));
    });
}

/// exec in an image machine: runs in the container as its user, gives the exit code, stdin,
/// a timeout that kills it, output cut at the limit (and said so), 127 for a program that does
/// not exist, 409 on a machine not started; it is not an event. The CLI exits with its code.
#[test]
fn exec_in_an_image_machine() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let image = busybox::image(&dir.path().join("busybox"));
    let c = agent.socket();
    let id = rt().block_on(async {
        let id = create_ok(&c, json!({"image": image, "user": "app", "network": "none", "cmd": ["/bin/sleep", "1000"]})).await;
        let events = c.machine_events(&id).await.unwrap().len();
        let r = exec(&c, &id, json!({"cmd": ["/bin/sh", "-c", "id -u; echo err >&2; ls /proc | grep -c '^[0-9]'; exit 3"]})).await;
        assert_eq!(r["exit_code"], 3, "{r}");
        assert_eq!(r["stderr"], "err\n", "{r}");
        let lines: Vec<&str> = r["stdout"].as_str().unwrap().lines().collect();
        assert_eq!(lines[0], "1000", "the container's user: {r}");
        let procs: u32 = lines[1].parse().unwrap();
        assert!(procs <= 6, "inside the container's pid namespace: {r}");
        let r = exec(&c, &id, json!({"cmd": ["cat"], "stdin": "fed in\n"})).await;
        assert_eq!((r["exit_code"].as_i64(), r["stdout"].as_str()), (Some(0), Some("fed in\n")), "{r}");
        let t = Instant::now();
        let r = exec(&c, &id, json!({"cmd": ["sleep", "100"], "timeout": "1s"})).await;
        assert_eq!((r["timed_out"].as_bool(), r["exit_code"].as_i64()), (Some(true), Some(124)), "{r}");
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        let r = exec(&c, &id, json!({"cmd": ["/bin/sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' a"]})).await;
        let limit = r["output_limit"].as_u64().unwrap() as usize;
        assert_eq!(r["stdout"].as_str().unwrap().len(), limit, "cut at the limit");
        assert_eq!((r["stdout_truncated"].as_bool(), r["exit_code"].as_i64()), (Some(true), Some(0)));
        let r = exec(&c, &id, json!({"cmd": ["no-such-program"]})).await;
        assert_eq!(r["exit_code"], 127, "{r}");
        assert!(r["stderr"].as_str().unwrap().contains("no-such-program"), "{r}");
        for (bad, field) in [(json!({"cmd": []}), "cmd"), (json!({"cmd": ["true"], "timeout": "0s"}), "timeout"),
                             (json!({"cmd": ["true"], "timeout": "1h"}), "timeout"), (json!({"cmd": ["true"], "user": "x"}), "user")] {
            let (s, v) = call(&c, Method::POST, &format!("/v1/machines/{id}/exec"), Some(bad.clone())).await;
            assert_eq!((s, v["code"].as_str()), (400, Some("invalid")), "{bad}: {v}");
            assert!(v["error"].as_str().unwrap().contains(field), "{bad}: {v}");
        }
        assert_eq!(c.machine_events(&id).await.unwrap().len(), events, "exec is not an event");
        // Nothing of the execs is left in the container.
        let r = exec(&c, &id, json!({"cmd": ["/bin/sh", "-c", "ls /proc | grep -c '^[0-9]'; ps -o pid,args"]})).await;
        let n: u32 = r["stdout"].as_str().unwrap().lines().next().unwrap().parse().unwrap();
        assert!(n <= 4, "{r}");
        id
    });
    let out = agent.cli(&[
        "machine",
        "exec",
        &id,
        "--",
        "/bin/sh",
        "-c",
        "echo from-cli; exit 5",
    ]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-cli\n");
    let out = agent.cli(&[
        "machine",
        "exec",
        &id,
        "--timeout",
        "1s",
        "--",
        "sleep",
        "100",
    ]);
    assert_eq!(out.status.code(), Some(124), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("timed out"),
        "{out:?}"
    );
    rt().block_on(async {
        c.stop(&id, &Default::default()).await.unwrap();
        let (s, v) = call(
            &c,
            Method::POST,
            &format!("/v1/machines/{id}/exec"),
            Some(json!({"cmd": ["true"]})),
        )
        .await;
        assert_eq!((s, v["code"].as_str()), (409, Some("conflict")), "{v}");
    });
}

/// exec in a process machine: the machine's user, environment, working directory and cgroup;
/// a timeout kills everything the command started.
#[test]
fn exec_in_a_process_machine() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let c = agent.socket();
    rt().block_on(async {
        let id = create_ok(
            &c,
            json!({"user": "daemon", "env": {"GREETING": "hi"}, "cmd": ["sleep", "1000"]}),
        )
        .await;
        let r = exec(&c, &id, json!({"cmd": ["/bin/sh", "-c", "echo $(id -u):$(id -g) $(pwd) $GREETING; cat /proc/self/cgroup"]})).await;
        let out = r["stdout"].as_str().unwrap();
        assert!(out.starts_with("1:1 /usr/sbin hi\n"), "{r}");
        let host = c.host().await.unwrap();
        if host.capabilities.cgroup {
            assert!(out.contains(&id), "in the machine's cgroup: {r}");
        }
        let t = Instant::now();
        let r = exec(&c, &id, json!({"cmd": ["/bin/sh", "-c", "sleep 100 & sleep 100; echo never"], "timeout": "1s"})).await;
        assert_eq!((r["timed_out"].as_bool(), r["exit_code"].as_i64()), (Some(true), Some(124)), "{r}");
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        let r = exec(&c, &id, json!({"cmd": ["no-such-program"]})).await;
        assert_eq!(r["exit_code"], 127, "{r}");
        let r = exec(&c, &id, json!({"cmd": ["sh", "-c", "kill -9 $$"]})).await;
        assert_eq!((r["exit_code"].as_i64(), r["signal"].as_str()), (Some(137), Some("SIGKILL")), "{r}");
    });
}

/// Every new field's bad values: 400 `invalid` naming the field, and nothing recorded (no
/// machine, no volume, no machine directory).
#[test]
fn bad_workload_fields_are_refused_before_anything_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let image = busybox::image(&dir.path().join("busybox"));
    let missing = dir.path().join("no-such-layout").display().to_string();
    let c = agent.socket();
    let img = |extra: Value| {
        let mut cfg = json!({"image": image, "cmd": ["/bin/true"]});
        for (k, v) in extra.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        cfg
    };
    let proc_ = |extra: Value| {
        let mut cfg = json!({"cmd": ["/bin/true"]});
        for (k, v) in extra.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        cfg
    };
    let vol = |v: &str, p: &str| json!([{"volume": v, "path": p}]);
    let file = |p: &str, raw: &str, mode: u32| json!([{"path": p, "raw_value": raw, "mode": mode}]);
    let cases: Vec<(Value, &str)> = vec![
        (img(json!({"user": "a b"})), "user"),
        (img(json!({"user": ""})), "user"),
        (img(json!({"user": "nosuchuser"})), "user"),
        (img(json!({"user": "app:nosuchgroup"})), "user"),
        (proc_(json!({"user": "nosuchuser"})), "user"),
        (proc_(json!({"user": "54321"})), "user"),
        (
            img(json!({"mounts": vol("../etc", "/data")})),
            "mounts[0].volume",
        ),
        (img(json!({"mounts": vol("", "/data")})), "mounts[0].volume"),
        (img(json!({"mounts": vol("ok", "data")})), "mounts[0].path"),
        (
            img(json!({"mounts": vol("ok", "/a/../../etc")})),
            "mounts[0].path",
        ),
        (img(json!({"mounts": vol("ok", "/")})), "mounts[0].path"),
        (
            img(json!({"mounts": [{"volume": "a", "path": "/d"}, {"volume": "b", "path": "/d/"}]})),
            "mounts[1].path",
        ),
        (
            img(json!({"mounts": [{"volume": "a", "path": "/d", "colour": 1}]})),
            "colour",
        ),
        (proc_(json!({"mounts": vol("ok", "/data")})), "mounts"),
        (
            img(json!({"files": file("etc/x", "aGk=", 0o644)})),
            "files[0].path",
        ),
        (
            img(json!({"files": file("/../etc/passwd", "aGk=", 0o644)})),
            "files[0].path",
        ),
        (
            img(json!({"files": file("/etc/", "aGk=", 0o644)})),
            "files[0].path",
        ),
        (
            img(json!({"files": file("/etc/x", "not base64!", 0o644)})),
            "files[0].raw_value",
        ),
        (
            img(json!({"files": file("/etc/x", "aGk=", 0o70000)})),
            "files[0].mode",
        ),
        (
            proc_(json!({"files": file("/etc/x", "aGk=", 0o644)})),
            "files",
        ),
        (img(json!({"network": "bridge"})), "network"),
        (proc_(json!({"network": "none"})), "network"),
        (json!({"image": format!("oci:{missing}")}), "image"),
        (json!({"image": "oci:relative/path"}), "image"),
        (json!({"image": format!("{image}-nosuchtag")}), "image"),
        (json!({"env": {}}), "cmd"),
    ];
    rt().block_on(async {
        for (config, field) in &cases {
            let (status, body) = post_machine(&c, &json!({ "config": config })).await;
            assert_eq!(
                (status, body["code"].as_str()),
                (400, Some("invalid")),
                "{config}: {body}"
            );
            let msg = body["error"].as_str().unwrap();
            assert!(
                msg.contains(field),
                "{config}: the error names {field}: {msg}"
            );
        }
        assert!(
            c.list(None, true).await.unwrap().is_empty(),
            "no machine recorded"
        );
        let (_, vols) = call(&c, Method::GET, "/v1/volumes", None).await;
        assert_eq!(vols, json!([]), "no volume made");
    });
    let machines = dir.path().join("machines");
    let left: Vec<_> = std::fs::read_dir(&machines)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter()
            .all(|n| n.to_string_lossy().starts_with("oci-probe")),
        "no machine directory: {left:?}"
    );
    assert!(!Path::new(&dir.path().join("volumes/ok")).exists());
}

/// An update that changes an image machine's `image` and `mounts` re-resolves the image (a new
/// digest is recorded) and restarts it once under the runtime with the new root and the new
/// volume mounted; the old container is gone from the runtime.
#[test]
fn an_update_of_image_and_mounts_restarts_an_image_machine_under_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let one = busybox::image_flavoured(&dir.path().join("one"), Some("one"));
    let two = busybox::image_flavoured(&dir.path().join("two"), Some("two"));
    let c = agent.socket();
    rt().block_on(async {
        let cmd = json!(["/bin/sh", "-c",
            "echo flavour=$(cat /etc/flavour) pid=$$; echo in > /data/f 2>/dev/null && echo vol=yes || echo vol=no; exec sleep 1000"]);
        let id = create_ok(&c, json!({"image": one, "cmd": cmd})).await;
        logs_until(&c, &id, "flavour=one").await;
        let before = c.get(&id).await.unwrap();
        assert!(logs_until(&c, &id, "vol=").await.contains("vol=no"));
        let old_pid = before.pid.unwrap();

        let mut config = before.config.clone();
        config.image = Some(two.clone());
        config.mounts = serde_json::from_value(json!([{"volume": "data", "path": "/data"}])).unwrap();
        let req = berth_api_types::UpdateMachine { config, current_version: Some(1), skip_start: false };
        let u = c.update(&id, &req).await.unwrap();
        assert_eq!((u.state, u.config_version), (berth_types::State::Started, 2), "{u:?}");
        assert_ne!(u.pid, Some(old_pid), "restarted");
        assert!(u.image_digest.is_some() && u.image_digest != before.image_digest,
            "the new image resolved: {:?} → {:?}", before.image_digest, u.image_digest);
        assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(old_pid as i32), None).is_err(),
            "the old workload still runs");
        // `sh -c` is the container's pid 1.
        logs_until(&c, &id, "flavour=two pid=1").await;
        let after_log = logs_until(&c, &id, "vol=yes").await;
        assert_eq!(after_log.matches("flavour=two").count(), 1, "one start: {after_log}");
        assert_eq!(std::fs::read_to_string(dir.path().join("volumes/data/f")).unwrap(), "in\n");
        // exec reaches the new container.
        let ps = exec(&c, &id, json!({"cmd": ["/bin/cat", "/etc/flavour"]})).await;
        assert_eq!(ps["stdout"].as_str(), Some("two"), "{ps}");
        c.destroy(&id, true).await.unwrap();
    });
}

/// An `exec` check of an image machine runs inside its container (its root, its processes):
/// a file only the container has decides it, critical before and passing after.
#[test]
fn an_exec_check_runs_inside_an_image_machine() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let image = busybox::image(&dir.path().join("busybox"));
    let c = agent.socket();
    rt().block_on(async {
        let check = json!({"type": "exec", "command": ["/bin/sh", "-c", "cat /tmp/ok && test -f /tmp/ok"],
                           "interval": "2s", "timeout": "2s", "failures": 1});
        let id = create_ok(&c, json!({"image": image, "network": "none", "cmd": ["/bin/sleep", "1000"],
                                      "checks": {"inside": check}})).await;
        let status = async |want: &str| {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let (code, m) = call(&c, Method::GET, &format!("/v1/machines/{id}"), None).await;
                assert_eq!(code, 200, "{m}");
                let s = &m["checks"]["inside"];
                if s["status"] == want {
                    return s.clone();
                }
                assert!(Instant::now() < deadline, "never {want}: {m}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let s = status("critical").await;
        assert!(s["output"].as_str().unwrap().contains("/tmp/ok"), "{s}");
        // The host's /tmp is not the container's: a file there changes nothing.
        let host_file = Path::new("/tmp/ok");
        assert!(!host_file.exists(), "the test needs the host's /tmp/ok absent");
        let r = exec(&c, &id, json!({"cmd": ["/bin/sh", "-c", "echo inside > /tmp/ok"]})).await;
        assert_eq!(r["exit_code"], 0, "{r}");
        let s = status("passing").await;
        assert_eq!(s["output"], "inside", "{s}");
    });
}
