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
         for ns in pid mnt ipc uts net; do echo ns-$ns=$(readlink /proc/self/ns/$ns); done; \
         test -e {data}/token && echo token-visible || echo no-token; \
         test -e {data}/berth.sock && echo socket-visible || echo no-socket; \
         test -e {data} && echo data-visible || echo no-data; \
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
        // Its own pid, mount, ipc, uts and (with network "none") net namespaces.
        for ns in ["pid", "mnt", "ipc", "uts", "net"] {
            let host = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
            let inside = log
                .lines()
                .find_map(|l| l.strip_prefix(&format!("ns-{ns}=")))
                .unwrap_or_else(|| panic!("no ns-{ns} in {log}"));
            assert!(inside.starts_with(&format!("{ns}:[")), "{ns}: {inside}");
            assert_ne!(inside, host.to_string_lossy(), "its own {ns} namespace: {log}");
        }
    });
}

/// A root workload in an image machine has the runtime's default capability set (not all of
/// them), the default masked and read-only paths, its own hostname, and the limits it asked for
/// in the runtime's cgroups.
#[test]
fn a_root_image_machine_is_confined_and_limited() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let image = busybox(dir.path());
    let script = "grep -E '^Cap(Eff|Bnd)' /proc/self/status; \
         echo timer_list=$(wc -c < /proc/timer_list) keys=$(wc -c < /proc/keys); echo firmware=$(ls /sys/firmware | wc -l); \
         (echo x > /proc/sys/kernel/hostname) 2>/dev/null && echo procsys-writable || echo procsys-readonly; \
         mount -t tmpfs none /tmp 2>/dev/null && echo mount-allowed || echo mount-refused; \
         echo host=$(hostname); echo uid=$(id -u); echo done; sleep 1000";
    let c = agent.socket();
    rt().block_on(async {
        let id = create_ok(
            &c,
            json!({"image": image, "cmd": ["/bin/sh", "-c", script],
                   "resources": {"memory_mb": 64, "cpus": 0.5, "pids": 50}}),
        )
        .await;
        let log = logs_until(&c, &id, "done").await;
        // AUDIT_WRITE (29), KILL (5), NET_BIND_SERVICE (10): runc's and crun's default set.
        assert!(log.contains("CapEff:\t0000000020000420"), "{log}");
        assert!(log.contains("CapBnd:\t0000000020000420"), "{log}");
        // Masked (the host has both, and /sys/firmware has entries here), read-only, no mounting.
        for claim in [
            "uid=0",
            "timer_list=0 keys=0",
            "firmware=0",
            "procsys-readonly",
            "mount-refused",
        ] {
            assert!(log.contains(claim), "{claim}: {log}");
        }
        assert!(
            log.contains(&format!("host={id}")),
            "its own hostname: {log}"
        );
        let cg = |ctrl: &str, file: &str| {
            let p = format!("/sys/fs/cgroup/{ctrl}/berth/{id}/{file}");
            std::fs::read_to_string(&p)
                .unwrap_or_else(|e| panic!("{p}: {e}"))
                .trim()
                .to_owned()
        };
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            assert_eq!(cg("", "memory.max"), "67108864");
            assert_eq!(cg("", "pids.max"), "50");
            assert_eq!(cg("", "cpu.max"), "50000 100000");
        } else {
            assert_eq!(cg("memory", "memory.limit_in_bytes"), "67108864");
            assert_eq!(cg("pids", "pids.max"), "50");
            assert_eq!(cg("cpu", "cpu.cfs_quota_us"), "50000");
        }
        c.destroy(&id, true).await.unwrap();
        assert!(
            !Path::new(&format!("/sys/fs/cgroup/pids/berth/{id}")).exists()
                && !Path::new(&format!("/sys/fs/cgroup/berth/{id}")).exists(),
            "destroy removes the runtime's cgroups"
        );
    });
}

/// Stop sends the stop signal and waits: a workload that handles it exits cleanly within the
/// timeout; one that ignores it (a shell as pid 1 has no default action for SIGTERM) is killed
/// once the timeout passes.
#[test]
fn an_image_machine_stops_with_timeout_and_escalation() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let image = busybox(dir.path());
    let c = agent.socket();
    rt().block_on(async {
        let polite = create_ok(
            &c,
            json!({"image": image, "cmd": ["/bin/sh", "-c",
                   "trap 'echo bye; exit 0' TERM; echo ready; while :; do sleep 0.1; done"]}),
        )
        .await;
        let stubborn = create_ok(
            &c,
            json!({"image": image, "cmd": ["/bin/sh", "-c", "echo ready; while :; do sleep 0.1; done"]}),
        )
        .await;
        logs_until(&c, &polite, "ready").await;
        logs_until(&c, &stubborn, "ready").await;
        let req = |secs: u64| berth_api_types::StopRequest {
            signal: None,
            timeout: Some(berth_types::time::HumanDuration(Duration::from_secs(secs))),
        };
        let t = Instant::now();
        let m = c.stop(&polite, &req(20)).await.unwrap();
        let took = t.elapsed();
        let exit = m.exit.clone().unwrap();
        assert_eq!((m.state.to_string(), exit.code, exit.requested_stop), ("stopped".to_owned(), Some(0), true), "{m:?}");
        assert!(took < Duration::from_secs(10), "it exited on SIGTERM: {took:?}");
        logs_until(&c, &polite, "bye").await;

        let t = Instant::now();
        let m = c.stop(&stubborn, &req(1)).await.unwrap();
        let took = t.elapsed();
        let exit = m.exit.clone().unwrap();
        assert_eq!(m.state.to_string(), "stopped", "{m:?}");
        assert_eq!(exit.signal.as_deref(), Some("SIGKILL"), "escalated: {exit:?}");
        assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(10), "{took:?}");
        // Stopped means gone from the runtime too, and it starts again.
        assert_eq!(runc_status(&stubborn), None);
        let again = c.action(&stubborn, "start").await.unwrap();
        assert_eq!(again.state.to_string(), "started");
        logs_until(&c, &stubborn, "ready").await;
    });
}

/// The runtime's status of one container (`running`, `stopped`, ...), or `None` when the runtime
/// says it does not exist. Asks for that container alone: `runc list` walks every container on
/// the host and skips, without failing, one that another test is creating or deleting meanwhile.
fn runc_status(id: &str) -> Option<String> {
    let out = std::process::Command::new("runc")
        .args(["state", &format!("berth-{id}")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        assert!(
            stderr.contains("does not exist"),
            "runc state berth-{id}: {stderr}"
        );
        return None;
    }
    let state: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Some(state["status"].as_str().unwrap().to_owned())
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
        assert_eq!(runc_status(&a).as_deref(), Some("running"), "running under runc");
        assert!(mounts().contains(&machine_dir.display().to_string()));
        c.destroy(&a, true).await.unwrap();
        c.destroy(&b, true).await.unwrap();
        assert_eq!((runc_status(&a), runc_status(&b)), (None, None), "nothing left in the runtime");
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

/// An image machine survives SIGKILL of berthd (same pid, no new transitions); another one that
/// exits while berthd is down has its exit recorded when it comes back.
#[test]
fn an_image_machine_survives_sigkill_of_berthd_and_an_exit_while_down_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(dir.path(), "");
    let image = busybox(dir.path());
    let c = agent.socket();
    let (id, pid, events, quitter) = rt().block_on(async {
        let id = create_ok(&c, json!({"image": image, "cmd": ["/bin/sleep", "1000"]})).await;
        let m = c.wait(&id, "started", "20s").await.unwrap();
        let events = c.machine_events(&id).await.unwrap().len();
        let quitter = create_ok(
            &c,
            json!({"image": image, "mounts": [{"volume": "signal", "path": "/signal"}],
                   "cmd": ["/bin/sh", "-c", "echo ready; while [ ! -e /signal/go ]; do sleep 0.05; done; exit 7"]}),
        )
        .await;
        logs_until(&c, &quitter, "ready").await;
        (id, m.pid.unwrap(), events, quitter)
    });
    let mut child = agent.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    // While berthd is down, the second workload exits; its shim records it.
    std::fs::write(dir.path().join("volumes/signal/go"), "").unwrap();
    let exit_file = dir.path().join("machines").join(&quitter).join("exit.json");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !exit_file.exists() {
        assert!(Instant::now() < deadline, "the workload did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the first workload runs on"
    );
    agent.spawn();
    let c = agent.socket();
    rt().block_on(async {
        let m = c.get(&id).await.unwrap();
        assert_eq!(m.pid, Some(pid), "reattached to the same workload");
        assert_eq!(m.state.to_string(), "started");
        assert_eq!(
            c.machine_events(&id).await.unwrap().len(),
            events,
            "no new transitions"
        );
        let q = c.wait(&quitter, "failed", "20s").await.unwrap();
        assert_eq!(q.exit.as_ref().and_then(|e| e.code), Some(7), "{q:?}");
        assert_eq!(runc_status(&quitter), None);
        // Still supervised: a stop is seen through.
        let m = c.stop(&id, &Default::default()).await.unwrap();
        assert_eq!(m.state.to_string(), "stopped");
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    });
}

/// A workload the kernel kills for exceeding its memory limit ends `failed` (an unclean exit,
/// restart policy `no`) with `oom_killed` recorded.
#[test]
fn an_image_machine_oom_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let image = busybox(dir.path());
    let c = agent.socket();
    rt().block_on(async {
        let oom = create_ok(
            &c,
            json!({"image": image, "resources": {"memory_mb": 16},
                   "cmd": ["/bin/sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived"]}),
        )
        .await;
        let m = c.wait(&oom, "failed", "30s").await.unwrap();
        let exit = m.exit.unwrap();
        assert!(exit.oom_killed, "the OOM kill is recorded: {exit:?}");
        assert_eq!(exit.signal.as_deref(), Some("SIGKILL"), "{exit:?}");
    });
}

/// A process machine runs as its `user` (a host user), in that user's home; an unknown user is
/// refused with 400 `invalid` naming `user`, and nothing is recorded.
#[test]
fn a_process_machine_runs_as_its_user() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let c = agent.socket();
    rt().block_on(async {
        let id = create_ok(
            &c,
            json!({"user": "daemon", "cmd": ["/bin/sh", "-c", "echo ids=$(id -u):$(id -g) cwd=$(pwd); echo done"]}),
        )
        .await;
        let log = logs_until(&c, &id, "done").await;
        assert!(log.contains("ids=1:1 cwd=/usr/sbin"), "{log}");
        let before = c.list(None, true).await.unwrap().len();
        for user in ["no-such-user-xyz", "54321", "daemon:no-such-group"] {
            let (status, body) =
                create(&c, json!({"config": {"user": user, "cmd": ["/bin/true"]}})).await;
            assert_eq!(status, 400, "{user}: {body}");
            assert_eq!(body["code"], "invalid", "{body}");
            assert!(body["error"].as_str().unwrap().contains("user"), "{body}");
        }
        assert_eq!(c.list(None, true).await.unwrap().len(), before, "nothing recorded");
    });
}

/// Each probe of [`HOSTILE`] as the workload reported it: `name` → `ok`, or `refused: <why>`.
fn probes(log: &str) -> std::collections::BTreeMap<String, String> {
    log.lines()
        .filter_map(|l| l.strip_prefix("probe "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// What a hostile workload tries, as `name command...` (run by [`hostile_script`]); every one
/// must fail. `$DATA`, `$AGENT`, `$VICTIM` and `$PORT` are berth's data dir, berthd's host pid,
/// a host process machine's pid and berthd's TCP port.
const HOSTILE: &[(&str, &str)] = &[
    // berth's token, database and data dir, directly and through the agent's /proc entry.
    ("read-token", "cat $DATA/token"),
    ("list-data", "ls $DATA"),
    ("read-token-via-proc", "cat /proc/$AGENT/root$DATA/token"),
    ("agent-cwd", "ls /proc/$AGENT/cwd/"),
    // The agent's unix socket: not there, nor through /proc; the API over TCP (the host's
    // network namespace) wants the token.
    ("socket", "test -S $DATA/berth.sock"),
    (
        "socket-via-proc",
        "test -S /proc/$AGENT/root$DATA/berth.sock",
    ),
    (
        "api-without-token",
        "wget -q -O /dev/null http://127.0.0.1:$PORT/v1/machines",
    ),
    // Host processes: neither seen nor signalled, nor entered.
    ("see-agent", "test -e /proc/$AGENT/status"),
    ("kill-agent", "kill -9 $AGENT"),
    ("kill-host-process", "kill -9 $VICTIM"),
    ("enter-agent", "nsenter -t $AGENT -m -p /bin/true"),
    // Writes outside its root and its writable volume.
    ("write-ro-volume", "touch /ro/planted"),
    ("write-proc-sys", "echo 1 > /proc/sys/vm/drop_caches"),
    ("write-sysrq", "echo h > /proc/sysrq-trigger"),
    ("write-sys", "touch /sys/planted"),
    ("cgroup-escape", "mkdir /sys/fs/cgroup/planted"),
    // Mounts (a tmpfs: see a_root_image_machine_is_confined_and_limited), devices, modules,
    // capabilities, the host's network.
    ("mount-bind", "mount --bind / /tmp"),
    ("mount-proc", "mount -t proc proc /tmp"),
    ("remount-sys-rw", "mount -o remount,rw /sys"),
    ("mknod", "mknod /tmp/disk b 8 0"),
    ("block-device", "test -n \"$(find /dev -type b)\""),
    ("insmod", "insmod /bin/busybox"),
    ("chroot-proc1", "chroot /proc/1/root /bin/true"),
    ("unshare-mount-ns", "unshare -m /bin/true"),
    (
        "raise-caps",
        "setpriv --inh-caps +sys_admin --ambient-caps +sys_admin /bin/true",
    ),
    ("sethostname", "hostname planted"),
    ("host-net-link", "ip link add planted0 type dummy"),
    ("host-net-addr", "ip addr add 10.254.254.1/32 dev lo"),
    ("kernel-log", "dmesg"),
];

/// The workload's script: each probe of [`HOSTILE`] runs in a subshell and prints
/// `probe NAME=ok` or `probe NAME=refused: <its first line of stderr>`; then positive controls
/// (its own root and volume are writable) and `done`.
fn hostile_script() -> String {
    let mut s = String::from(
        "p() { n=$1; shift; if err=$(sh -c \"$*\" 2>&1 >/dev/null); then echo \"probe $n=ok\"; \
         else echo \"probe $n=refused: $(echo \"$err\" | head -n 1)\"; fi; }\n",
    );
    for (name, cmd) in HOSTILE {
        s.push_str(&format!("p {name} '{}'\n", cmd.replace('\'', "'\\''")));
    }
    s.push_str(
        "touch /tmp/mine && echo own-root-writable; touch /data/mine-$(id -u) && echo volume-writable; \
         echo done; sleep 1000\n",
    );
    s
}

/// A hostile workload in an image machine, as a non-root image user and as root, tries to reach
/// berth (token, data dir, socket, API), the host's processes (berthd, another machine),
/// to write outside its root and volumes, to mount, make devices, load modules, raise
/// capabilities, change the host's network and read the kernel log: every attempt fails, for
/// the reason the sandbox gives, and berthd, the other machine and the host are unchanged.
#[test]
fn a_hostile_image_workload_cannot_reach_berth_or_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let image = busybox(dir.path());
    let agent_pid = agent.child.as_ref().unwrap().id();
    let token_before = agent.token();
    let c = agent.socket();
    rt().block_on(async {
        let victim = create_ok(&c, json!({"cmd": ["/bin/sleep", "1000"]})).await;
        let victim_pid = c.get(&victim).await.unwrap().pid.unwrap();
        // A read-only volume with something in it, and a writable one.
        let seed = create_ok(
            &c,
            json!({"image": image, "mounts": [{"volume": "ro", "path": "/ro"}],
                   "cmd": ["/bin/sh", "-c", "echo seed > /ro/seed && echo done"]}),
        )
        .await;
        logs_until(&c, &seed, "done").await;
        let env = json!({"DATA": dir.path().display().to_string(), "AGENT": agent_pid.to_string(),
                         "VICTIM": victim_pid.to_string(), "PORT": agent.port.to_string()});
        let mounts = json!([{"volume": "ro", "path": "/ro", "read_only": true},
                            {"volume": "rw", "path": "/data"}]);
        let mut logs = Vec::new();
        for user in ["app", "root"] {
            let id = create_ok(
                &c,
                json!({"image": image, "user": user, "env": env, "mounts": mounts,
                       "cmd": ["/bin/sh", "-c", hostile_script()]}),
            )
            .await;
            logs.push((user, logs_until(&c, &id, "\ndone").await));
        }
        for (user, log) in &logs {
            let got = probes(log);
            assert_eq!(got.len(), HOSTILE.len(), "{user}: every probe ran: {log}");
            for (name, _) in HOSTILE {
                let r = &got[*name];
                assert!(
                    r.starts_with("refused"),
                    "{user}: {name} must fail, got {r:?}: {log}"
                );
            }
            // The reasons: not there, no such process, no capability, read-only, 401.
            let why = |name: &str, reasons: &[&str]| {
                let r = &got[name];
                assert!(
                    reasons.iter().any(|w| r.contains(w)),
                    "{user}: {name}: {r}\n{got:#?}"
                );
            };
            why("read-token", &["No such file"]);
            why("read-token-via-proc", &["No such file"]);
            why("kill-agent", &["No such process"]);
            why("kill-host-process", &["No such process"]);
            why("api-without-token", &["401"]);
            // Root meets the read-only mount itself; a non-root user may be stopped by the
            // file's owner first, which is a refusal too.
            let read_only: &[&str] = if *user == "root" {
                &["Read-only file system"]
            } else {
                &["Read-only file system", "Permission denied"]
            };
            why("write-ro-volume", read_only);
            // Or absent: a kernel without magic SysRq has no trigger to pull.
            let sysrq: Vec<&str> = read_only.iter().copied().chain(["nonexistent"]).collect();
            why("write-sysrq", &sysrq);
            why("write-sys", read_only);
            why("mknod", &["not permitted"]);
            // insmod must fail (above); busybox may refuse the file before the kernel checks
            // the capability, so its words are not the proof.
            why("chroot-proc1", &["not permitted"]);
            why("unshare-mount-ns", &["not permitted"]);
            why("host-net-link", &["not permitted"]);
            why("host-net-addr", &["not permitted"]);
            for control in ["own-root-writable", "volume-writable"] {
                assert!(log.contains(control), "{user}: {control}: {log}");
            }
        }
        // berthd, the other machine and the host are as they were.
        assert!(
            Path::new(&format!("/proc/{agent_pid}")).exists(),
            "berthd lives"
        );
        assert_eq!(c.health().await.unwrap().status, "ok");
        let v = c.get(&victim).await.unwrap();
        assert_eq!(
            (v.state.to_string(), v.pid),
            ("started".to_owned(), Some(victim_pid))
        );
        assert_eq!(agent.token(), token_before);
        let tcp = agent.tcp(Some(token_before.clone()));
        assert!(
            !tcp.list(None, false).await.unwrap().is_empty(),
            "the API answers with the token"
        );
        assert!(!dir.path().join("volumes/ro/planted").exists());
        assert!(
            dir.path().join("volumes/rw/mine-1000").exists()
                && dir.path().join("volumes/rw/mine-0").exists()
        );
        assert!(
            !Path::new("/sys/class/net/planted0").exists(),
            "no link added on the host"
        );
        let lo = std::process::Command::new("ip")
            .args(["addr", "show", "lo"])
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&lo.stdout).contains("10.254.254.1"),
            "lo unchanged"
        );
    });
}
