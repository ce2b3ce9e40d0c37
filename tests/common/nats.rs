//! A real `nats-server -js` on a free loopback port with its store in a temp dir (killed by pid),
//! and reading back what the fleet export put into the stream.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_types::Event;

/// A nats-server process; restarted on the same port with the same store.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    store: PathBuf,
    /// More `nats-server` arguments (e.g. `--user`, `--pass`, `--auth`).
    extra: Vec<String>,
}

impl Nats {
    pub fn start(dir: &Path) -> Nats {
        Self::start_with(dir, &[])
    }

    /// A server started with more arguments.
    pub fn start_with(dir: &Path, extra: &[&str]) -> Nats {
        let mut n = Nats {
            child: None,
            port: crate::common::free_port(),
            store: dir.join("jetstream"),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        n.spawn();
        n
    }

    /// A server that is not running yet: its port is chosen, nothing listens on it.
    pub fn not_started(dir: &Path) -> Nats {
        Nats {
            child: None,
            port: crate::common::free_port(),
            store: dir.join("jetstream"),
            extra: Vec::new(),
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn spawn(&mut self) {
        assert!(self.child.is_none());
        std::fs::create_dir_all(&self.store).unwrap();
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(&self.store)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is not installed (apt-get install nats-server; cargo xtask test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, by pid.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One message of the stream, as a consumer sees it.
#[derive(Debug, Clone)]
pub struct Msg {
    pub stream_seq: u64,
    pub msg_id: String,
    pub body: serde_json::Value,
}

pub async fn connect(url: &str) -> async_nats::jetstream::Context {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match async_nats::connect(url).await {
            Ok(c) => return async_nats::jetstream::new(c),
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot connect to {url}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Every message of `BERTH_EVENTS`, by host (from its subject), in stream order.
pub async fn stream_by_host(js: &async_nats::jetstream::Context) -> BTreeMap<String, Vec<Msg>> {
    let mut stream = js.get_stream("BERTH_EVENTS").await.unwrap();
    let info = stream.info().await.unwrap().clone();
    let mut out: BTreeMap<String, Vec<Msg>> = BTreeMap::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        if info.state.messages == 0 {
            break;
        }
        let m = stream.get_raw_message(seq).await.unwrap();
        let host = m
            .subject
            .as_str()
            .strip_prefix("berth.events.")
            .unwrap()
            .to_owned();
        let msg_id = m
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        out.entry(host).or_default().push(Msg {
            stream_seq: m.sequence,
            msg_id,
            body: serde_json::from_slice(&m.payload).unwrap(),
        });
    }
    out
}

/// Asserts that a host's messages are exactly its event log: every seq from 1 to the head once,
/// in order (no gap, no duplicate), except the `holes` the host recorded as lost to retention;
/// each body the logged event plus `host_id` (for the events the log still keeps), each
/// `Nats-Msg-Id` `<host>:<seq>`.
pub fn assert_stream_is_log(host: &str, msgs: &[Msg], log: &[Event], holes: &[(u64, u64)]) {
    let in_hole = |seq: u64| holes.iter().any(|(a, b)| (*a..=*b).contains(&seq));
    let head = log.last().map_or(0, |e| e.seq);
    let want_seqs: Vec<u64> = (1..=head).filter(|s| !in_hole(*s)).collect();
    let got_seqs: Vec<u64> = msgs
        .iter()
        .map(|m| m.body["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        got_seqs, want_seqs,
        "host {host}: the stream's seqs are not the event log's (holes: {holes:?})"
    );
    let logged: std::collections::HashMap<u64, &Event> = log.iter().map(|e| (e.seq, e)).collect();
    for m in msgs {
        let seq = m.body["seq"].as_u64().unwrap();
        assert_eq!(
            m.msg_id,
            format!("{host}:{seq}"),
            "host {host}: Nats-Msg-Id"
        );
        let mut body = m.body.clone();
        let h = body.as_object_mut().unwrap().remove("host_id");
        assert_eq!(h, Some(serde_json::Value::String(host.into())));
        if let Some(e) = logged.get(&seq) {
            assert_eq!(
                body,
                serde_json::to_value(e).unwrap(),
                "host {host}: seq {seq} differs from the log"
            );
        }
    }
    for e in log {
        assert!(
            !in_hole(e.seq),
            "host {host}: seq {} is kept yet recorded as a hole",
            e.seq
        );
    }
}

/// A host's event log as far as it keeps it, through its API (from the oldest kept event:
/// `after` below it is 410, so the start is searched for).
pub async fn event_log(c: &berth_client::Client) -> Vec<Event> {
    let expired = |after: u64| async move {
        matches!(c.events(after, 1, None).await, Err(e) if e.code() == Some("expired"))
    };
    let mut after = 0;
    if expired(0).await {
        // Invariant: `lo` is expired, `hi` is not.
        let (mut lo, mut hi) = (0u64, 1u64 << 40);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if expired(mid).await {
                lo = mid
            } else {
                hi = mid
            }
        }
        after = hi;
    }
    let mut out = Vec::new();
    loop {
        let page = c.events(after, 1000, None).await.unwrap();
        if page.events.is_empty() {
            return out;
        }
        after = page.last_seq;
        out.extend(page.events);
    }
}

/// The export part of `GET /v1/host`.
pub async fn export_status(c: &berth_client::Client) -> serde_json::Value {
    let status = c
        .host()
        .await
        .unwrap()
        .export
        .expect("export is configured");
    serde_json::to_value(status).unwrap()
}

/// Waits until the host's export has acknowledged everything it committed.
pub async fn caught_up(c: &berth_client::Client, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let e = export_status(c).await;
        if e["connected"] == true && e["lag_events"] == 0 && e["acked_seq"] == e["head_seq"] {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "export did not catch up within {within:?}: {e}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
