//! berthd under systemd: the packaged unit passes `systemd-analyze verify`, and the real berthd
//! speaks the notify protocol — `READY=1`, then `WATCHDOG=1` only while its store writer and its
//! API respond, `STOPPING=1` when it drains.
//!
//! The tests play systemd's part: they bind the datagram socket named by `NOTIFY_SOCKET` and set
//! `WATCHDOG_USEC` (1 s, so berthd checks every 250 ms).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The packaged unit, with ExecStart pointing at the built berthd (verify insists that the
/// binary exists) and the man pages its Documentation= names generated from the binaries.
#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(repo().join("packaging/systemd/berthd.service")).unwrap();
    assert!(unit.contains("\nExecStart=/usr/bin/berthd\n"));
    let berthd = built("berthd", "berthd");
    let unit = unit.replace(
        "\nExecStart=/usr/bin/berthd\n",
        &format!("\nExecStart={}\n", berthd.display()),
    );
    let path = dir.path().join("berthd.service");
    std::fs::write(&path, unit).unwrap();
    let man1 = dir.path().join("man/man1");
    std::fs::create_dir_all(&man1).unwrap();
    for bin in [berthd, built("berth", "berth")] {
        let ok = Command::new(bin).arg("man").arg(&man1).status().unwrap();
        assert!(ok.success());
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .env("MANPATH", dir.path().join("man"))
        .output()
        .expect(
            "systemd-analyze (Debian package systemd) must be installed; cargo xtask test does it",
        );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "systemd-analyze verify: {said}");
    assert!(
        said.trim().is_empty(),
        "systemd-analyze verify warned: {said}"
    );
    // And it does check: an unknown setting is reported.
    std::fs::write(
        &path,
        std::fs::read_to_string(&path)
            .unwrap()
            .replace("KillMode=process", "KillMode=process\nKillMood=calm"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .env("MANPATH", dir.path().join("man"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("KillMood"));
}

/// A berthd started the way systemd starts the unit, reporting to `notify`.
struct Supervised {
    child: Option<Child>,
    notify: UnixDatagram,
    data: PathBuf,
}

impl Supervised {
    fn start(dir: &Path, config: &str) -> Supervised {
        let notify_path = dir.join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        let config_path = dir.join("berth.toml");
        std::fs::write(&config_path, config).unwrap();
        let data = dir.join("data");
        let child = Command::new(built("berthd", "berthd"))
            .args(["--data-dir", data.to_str().unwrap(), "--listen", "off"])
            .arg("--config")
            .arg(&config_path)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("WATCHDOG_USEC", "1000000")
            .env("BERTH_SHIM", built("berth-shim", "berth-driver"))
            .env("BERTH_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut s = Supervised {
            child: Some(child),
            notify,
            data,
        };
        let first = s.next(Duration::from_secs(20));
        assert_eq!(first.as_deref(), Some("READY=1"), "the first message");
        s
    }

    /// The next message, if one arrives within `wait`.
    fn next(&mut self, wait: Duration) -> Option<String> {
        self.notify.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 256];
        match self.notify.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).trim_end().to_owned()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// Every message that arrives during `window`, with when it arrived.
    fn during(&mut self, window: Duration) -> Vec<(Instant, String)> {
        let end = Instant::now() + window;
        let mut got = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            if left.is_zero() {
                break;
            }
            if let Some(m) = self.next(left) {
                got.push((Instant::now(), m));
            }
        }
        got
    }

    /// SIGTERM; the exit status and what berthd logged.
    fn stop(&mut self) -> (std::process::ExitStatus, String) {
        let child = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn pings(msgs: &[(Instant, String)]) -> Vec<Instant> {
    msgs.iter()
        .filter(|(_, m)| m == "WATCHDOG=1")
        .map(|(t, _)| *t)
        .collect()
}

#[test]
fn the_watchdog_is_fed_while_the_agent_responds_and_starves_when_its_api_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Supervised::start(dir.path(), "");
    let msgs = agent.during(Duration::from_secs(3));
    let fed = pings(&msgs);
    assert!(fed.len() >= 4, "a ping every 250 ms or so: {msgs:?}");
    let longest = fed.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        longest < Duration::from_millis(900),
        "pings well within the 1 s period; longest gap {longest:?}"
    );

    // The API becomes unreachable (its socket is gone, as if someone removed it): berthd still
    // runs, but must stop feeding the watchdog so that systemd restarts it.
    std::fs::remove_file(agent.data.join("berth.sock")).unwrap();
    // A check already past its API call may still ping once.
    std::thread::sleep(Duration::from_millis(600));
    let _ = agent.during(Duration::from_millis(10));
    let after = agent.during(Duration::from_millis(1500));
    assert!(
        pings(&after).is_empty(),
        "no ping once the API is unreachable: {after:?}"
    );

    let (status, log) = agent.stop();
    assert!(status.success(), "{status:?}: {log}");
    assert!(
        log.contains("not feeding systemd's watchdog: GET /v1/health failed"),
        "the log says why: {log}"
    );
    assert_eq!(
        agent.next(Duration::from_secs(5)).as_deref(),
        Some("STOPPING=1"),
        "draining is announced"
    );
}

#[test]
fn a_stalled_store_starves_the_watchdog_while_the_api_still_answers() {
    let dir = tempfile::tempdir().unwrap();
    // Every commit takes 1 s: far past the 250 ms each check allows.
    let mut agent = Supervised::start(dir.path(), "[fault]\ndb_delay = \"1s\"\n");
    let msgs = agent.during(Duration::from_secs(3));
    assert!(
        pings(&msgs).is_empty(),
        "no ping while the store cannot commit in time: {msgs:?}"
    );
    // The API alone is not enough.
    let health = rt().block_on(
        berth_client::Client::new(berth_client::Endpoint::Unix(agent.data.join("berth.sock")))
            .health(),
    );
    assert!(health.is_ok(), "{health:?}");
    let (status, log) = agent.stop();
    assert!(status.success(), "{status:?}: {log}");
    assert!(
        log.contains("not feeding systemd's watchdog: a store write did not commit within 250ms"),
        "the log says why: {log}"
    );
}

#[path = "common/busybox.rs"]
mod busybox;

/// The machine's log once it contains `marker` (polled).
fn log_with(c: &berth_client::Client, id: &str, marker: &str) -> String {
    let rt = rt();
    poll_until(
        &format!("{marker:?} in {id}'s log"),
        Duration::from_secs(20),
        || {
            let r = rt
                .block_on(c.raw(
                    berth_client::Method::GET,
                    &format!("/v1/machines/{id}/logs"),
                    None,
                    &[],
                ))
                .unwrap();
            let text = String::from_utf8_lossy(&r.body).into_owned();
            text.contains(marker).then_some(text)
        },
    )
}

/// Under `Type=notify` berthd's environment names systemd's socket; nothing berthd starts may
/// inherit it. runc given `NOTIFY_SOCKET` waits for the container to say `READY=1`, so its
/// probe timed out (READY came 30 s late and image machines were refused) and a container
/// would never have started; a workload could have notified systemd as berthd.
#[test]
fn nothing_berthd_starts_inherits_what_systemd_set_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let image = busybox::image(&dir.path().join("busybox"));
    let mut agent = Supervised::start(dir.path(), "");
    let c = berth_client::Client::new(berth_client::Endpoint::Unix(agent.data.join("berth.sock")));
    let rt = rt();
    let mut ids = Vec::new();
    for config in [
        serde_json::json!({"image": image, "cmd": ["sh", "-c", "env; echo END; sleep 1000"]}),
        serde_json::json!({"cmd": ["sh", "-c", "env; echo END; sleep 1000"]}),
    ] {
        let (status, body) =
            rt.block_on(post_machine(&c, &serde_json::json!({ "config": config })));
        assert_eq!(status, 201, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let env = log_with(&c, id, "END");
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            assert!(!env.contains(var), "{id} inherited {var}: {env}");
        }
    }
    for id in &ids {
        rt.block_on(c.destroy(id, true)).unwrap();
    }
    // berthd itself still talks to systemd.
    let msgs = agent.during(Duration::from_millis(800));
    assert!(
        !pings(&msgs).is_empty(),
        "the watchdog is still fed: {msgs:?}"
    );
    let (status, log) = agent.stop();
    assert!(status.success(), "{status:?}: {log}");
}
