//! The fleet export against a real `nats-server -js`: every host's event log reaches the
//! `BERTH_EVENTS` stream exactly once, in order, with no gap, through agent SIGKILLs and NATS
//! outages; a slow or absent NATS affects nothing but the lag; retention holds unexported events
//! up to its bound and then records the hole instead of hiding it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/nats.rs"]
mod nats;
#[path = "common/proxy.rs"]
mod proxy;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use berth_api_types::CreateMachine;
use berth_client::{Client, Endpoint, Method};
use common::*;
use futures_util::StreamExt;
use nats::*;
use proxy::Proxy;

fn export_config(url: &str, host_id: Option<&str>) -> String {
    match host_id {
        Some(id) => format!("[export]\nnats_url = \"{url}\"\nhost_id = \"{id}\"\n"),
        None => format!("[export]\nnats_url = \"{url}\"\n"),
    }
}

fn machine(cmd: &[&str], skip_start: bool) -> CreateMachine {
    CreateMachine {
        name: None,
        config: berth_types::MachineConfig::command(cmd.iter().copied()),
        metadata: Default::default(),
        skip_start,
    }
}

/// A small deterministic generator (xorshift), seeded per run and printed, so a failure can be
/// replayed.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let seed = std::env::var("BERTH_FLEET_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("fleet seed: BERTH_FLEET_SEED={seed}");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A control plane placing, stopping, starting and destroying machines on one host through its
/// API, until `ops` of them succeeded; errors (the agent is being killed) are waited out.
async fn simulate(socket: PathBuf, ops: usize, seed: u64) -> usize {
    let c = Client::new(Endpoint::Unix(socket));
    let mut rng = Rng(seed | 1);
    let mut done = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while done < ops && Instant::now() < deadline {
        let Ok(ms) = c.list(None, false).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let r = if ms.len() < 2 || rng.below(3) == 0 {
            c.create(&machine(&["sleep", "1000"], rng.below(2) == 0), None)
                .await
        } else {
            let m = &ms[rng.below(ms.len() as u64) as usize];
            let id = m.id.as_str();
            match (m.state, rng.below(3)) {
                (berth_types::State::Started, 0) => c.destroy(id, true).await,
                (berth_types::State::Started, _) => c.stop(id, &Default::default()).await,
                (berth_types::State::Stopped | berth_types::State::Created, 0) => {
                    c.destroy(id, true).await
                }
                (berth_types::State::Stopped | berth_types::State::Created, _) => {
                    c.action(id, "start").await
                }
                _ => continue,
            }
        };
        match r {
            Ok(_) => done += 1,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    done
}

/// What the stream holds for `host`, checked against its log.
async fn assert_host_exported(js: &async_nats::jetstream::Context, c: &Client) -> usize {
    let status = caught_up(c, Duration::from_secs(30)).await;
    let host = status["host_id"].as_str().unwrap().to_owned();
    let holes: Vec<(u64, u64)> = status["holes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["from"].as_u64().unwrap(), h["to"].as_u64().unwrap()))
        .collect();
    let log = event_log(c).await;
    let streams = stream_by_host(js).await;
    let msgs = streams.get(&host).map(Vec::as_slice).unwrap_or(&[]);
    assert_stream_is_log(&host, msgs, &log, &holes);
    log.len()
}

#[test]
fn ten_agents_export_exactly_once_while_nats_and_agents_are_killed_at_random() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(&dir.path().join("nats"));
    let mut rng = Rng::seeded();
    let mut agents: Vec<Agent> = (0..10)
        .map(|i| {
            // Half name themselves; the others keep the id they generate.
            let id = format!("host-{i}");
            let cfg = export_config(&nats.url(), (i % 2 == 0).then_some(id.as_str()));
            Agent::start_logged(&dir.path().join(format!("a{i}")), &cfg)
        })
        .collect();
    let rt = rt();
    let sockets: Vec<PathBuf> = agents.iter().map(|a| a.dir.join("berth.sock")).collect();
    let seeds: Vec<u64> = (0..agents.len()).map(|_| rng.next()).collect();
    let finished = Arc::new(AtomicBool::new(false));
    let sim = {
        let finished = finished.clone();
        rt.spawn(async move {
            let tasks: Vec<_> = sockets
                .into_iter()
                .zip(seeds)
                .map(|(s, seed)| tokio::spawn(simulate(s, 10, seed)))
                .collect();
            let mut done = 0;
            for t in tasks {
                done += t.await.unwrap();
            }
            finished.store(true, Ordering::Release);
            done
        })
    };

    // Faults while the simulator runs: NATS killed and restarted, agents killed and restarted.
    // At least one NATS kill and three agent kills, even if the simulator is quick.
    let (mut nats_kills, mut agent_kills) = (0, 0);
    while !finished.load(Ordering::Acquire) || nats_kills < 1 || agent_kills < 3 {
        std::thread::sleep(Duration::from_millis(200 + rng.below(500)));
        if rng.below(3) == 0 || (agent_kills >= 3 && nats_kills == 0) {
            nats.kill();
            nats_kills += 1;
            std::thread::sleep(Duration::from_millis(100 + rng.below(700)));
            nats.spawn();
        } else {
            let a = &mut agents[rng.below(10) as usize];
            let mut child = a.child.take().unwrap();
            child.kill().unwrap(); // SIGKILL, by pid
            child.wait().unwrap();
            agent_kills += 1;
            a.spawn();
        }
    }
    let ops = rt.block_on(sim).unwrap();
    eprintln!("{ops} operations; faults: {nats_kills} NATS SIGKILLs, {agent_kills} agent SIGKILLs");
    assert!(ops >= 40, "the simulator did too little: {ops} operations");
    assert!(nats_kills + agent_kills >= 3, "too few faults injected");

    rt.block_on(async {
        let js = connect(&nats.url()).await;
        let mut events = 0;
        for a in &agents {
            events += assert_host_exported(&js, &a.socket()).await;
        }
        let streams = stream_by_host(&js).await;
        assert_eq!(streams.len(), 10, "one subject per host");
        assert!(streams.contains_key("host-0") && streams.contains_key("host-8"));
        eprintln!("{events} events, each exactly once in the stream");
    });
}

#[test]
fn export_resumes_after_agent_sigkill_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(&dir.path().join("nats"));
    let mut agent = Agent::start_logged(
        &dir.path().join("a"),
        &export_config(&nats.url(), Some("solo")),
    );
    let rt = rt();
    for round in 0..4 {
        // A burst of commits, and the agent SIGKILLed while it exports them.
        let c = agent.socket();
        rt.block_on(async {
            // Fewer at once than the socket lane's bound on mutations in flight (16).
            let creates: Vec<_> = (0..12)
                .map(|_| {
                    let c = agent.socket();
                    tokio::spawn(async move { c.create(&machine(&["true"], true), None).await })
                })
                .collect();
            for t in creates {
                t.await.unwrap().unwrap();
            }
            if round == 0 {
                caught_up(&c, Duration::from_secs(20)).await;
            }
        });
        let mut child = agent.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        agent.spawn();
    }
    rt.block_on(async {
        let js = connect(&nats.url()).await;
        let n = assert_host_exported(&js, &agent.socket()).await;
        assert!(n >= 48, "{n} events");
    });
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

async fn metrics(c: &Client) -> String {
    let r = c.raw(Method::GET, "/metrics", None, &[]).await.unwrap();
    String::from_utf8(r.body.to_vec()).unwrap()
}

#[test]
fn nats_down_then_up_only_lags_and_then_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::not_started(&dir.path().join("nats"));
    let agent = Agent::start_logged(
        &dir.path().join("a"),
        &export_config(&nats.url(), Some("lonely")),
    );
    let rt = rt();
    let c = agent.socket();
    rt.block_on(async {
        // With no NATS at all, commits go on as usual and export only lags.
        for _ in 0..20 {
            c.create(&machine(&["true"], true), None).await.unwrap();
        }
        let e = export_status(&c).await;
        assert_eq!(e["connected"], false, "{e}");
        assert!(e["lag_events"].as_u64().unwrap() >= 20, "{e}");
        assert!(metric(&metrics(&c).await, "berth_export_lag_events") >= 20.0);
    });
    let out = agent.cli(&["host", "status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("NOT CONNECTED as lonely") && text.contains("lag "),
        "{text}"
    );

    nats.spawn();
    rt.block_on(async {
        let js = connect(&nats.url()).await;
        assert_host_exported(&js, &c).await;
        let m = metrics(&c).await;
        assert_eq!(metric(&m, "berth_export_lag_events"), 0.0);
        assert!(metric(&m, "berth_export_published_total") >= 20.0);
    });
    // Down again in the middle of a burst, then back: still exactly the log.
    nats.kill();
    rt.block_on(async {
        for _ in 0..15 {
            c.create(&machine(&["true"], true), None).await.unwrap();
        }
    });
    nats.spawn();
    rt.block_on(async {
        let js = connect(&nats.url()).await;
        assert_host_exported(&js, &c).await;
    });
}

/// Whether `/v1/events?after=N` still has the events after `after` (not 410 expired).
async fn still_kept(c: &Client, after: u64) -> bool {
    let r = c
        .raw(
            Method::GET,
            &format!("/v1/events?after={after}&limit=1"),
            None,
            &[],
        )
        .await
        .unwrap();
    r.status.as_u16() == 200
}

async fn create_n(c: &Client, n: usize) {
    for _ in 0..n {
        c.create(&machine(&["true"], true), None).await.unwrap();
    }
}

#[test]
fn retention_holds_unexported_events_up_to_its_bound_then_records_the_hole() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(&dir.path().join("nats"));
    let agent = Agent::start_logged(
        &dir.path().join("a"),
        &format!(
            "[retention]\nmax_events = 20\ninterval = \"100ms\"\n{}",
            export_config(&nats.url(), Some("holey"))
        ),
    );
    let rt = rt();
    let c = agent.socket();
    let acked = rt.block_on(async {
        create_n(&c, 10).await;
        let e = caught_up(&c, Duration::from_secs(20)).await;
        // The position is saved every second; retention reads the saved one.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        e["acked_seq"].as_u64().unwrap()
    });
    nats.kill();
    // What was acknowledged (and saved) when NATS went away.
    let acked = rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let e = export_status(&c).await;
        assert!(e["acked_seq"].as_u64().unwrap() >= acked, "{e}");
        e["acked_seq"].as_u64().unwrap()
    });
    rt.block_on(async {
        // 35 unexported events: more than max_events, less than max_events + the hold (20 more).
        create_n(&c, 35).await;
        let head = export_status(&c).await["head_seq"].as_u64().unwrap();
        assert!(head <= acked + 36, "head {head}, acked {acked}");
        // Retention runs every 100 ms; give it many passes, and it must keep them all.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            still_kept(&c, acked).await,
            "retention removed unexported events"
        );
        // Past the bound: at most 20 + 20 are kept, so the oldest unexported go.
        create_n(&c, 45).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while still_kept(&c, acked).await {
            assert!(
                Instant::now() < deadline,
                "retention never went past the hold"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    nats.spawn();
    rt.block_on(async {
        let js = connect(&nats.url()).await;
        assert_host_exported(&js, &c).await;
        let e = export_status(&c).await;
        let holes = e["holes"].as_array().unwrap();
        assert_eq!(holes.len(), 1, "{e}");
        let (from, to) = (
            holes[0]["from"].as_u64().unwrap(),
            holes[0]["to"].as_u64().unwrap(),
        );
        // A publish buffered while NATS was down may still have been stored once it came
        // back: the hole starts after what the stream acknowledged, never before.
        assert!(from > acked && from <= acked + 2, "{e}");
        assert!(to > from, "{e}");
        let m = metrics(&c).await;
        assert_eq!(
            metric(&m, "berth_export_hole_events_total"),
            (to - from + 1) as f64
        );
    });
    let out = agent.cli(&["host", "status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1 HOLE(S)"), "{text}");
}

/// The connection to NATS dies with published events unstored (the server never read them)
/// while the host goes on committing, and comes back: the stream must still be the log in
/// order. A client that reconnects by itself and sends what it queued meanwhile stores the later
/// events first, and the replay of the lost ones after them (seen: seqs 9–13 before 6–8).
#[test]
fn a_connection_lost_with_unstored_publishes_never_reorders_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(&dir.path().join("nats"));
    let proxy = Proxy::start(nats.port);
    let agent = Agent::start_logged(
        &dir.path().join("a"),
        &export_config(&proxy.url(), Some("cut")),
    );
    let rt = rt();
    let c = agent.socket();
    rt.block_on(async {
        create_n(&c, 5).await;
        caught_up(&c, Duration::from_secs(20)).await;
        // Published, never stored: the proxy reads the client's bytes and drops them.
        proxy.swallow();
        let before = proxy.swallowed();
        create_n(&c, 3).await;
        poll_until(
            "the publishes to be swallowed",
            Duration::from_secs(10),
            || (proxy.swallowed() > before).then_some(()),
        );
        // The connection dies; reconnecting fails for a while; the host goes on committing.
        proxy.refuse();
        create_n(&c, 5).await;
        poll_until(
            "reconnections to be refused",
            Duration::from_secs(10),
            || (proxy.refused() >= 2).then_some(()),
        );
        create_n(&c, 2).await;
        proxy.forward();
        let js = connect(&nats.url()).await;
        let n = assert_host_exported(&js, &c).await;
        assert!(n >= 15, "{n} events");
    });
}

/// Credentials in `export.nats_url`, as NATS spells them (`user:pass@`, or `token@`), reach a
/// server that requires them; wrong ones leave the export lagging with the server's refusal.
#[test]
fn credentials_in_the_url_reach_a_server_that_requires_them() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let cases: [(&[&str], &str, &str); 3] = [
        (
            &["--user", "berth", "--pass", "s3cret"],
            "berth:s3cret@",
            "userpass",
        ),
        (&["--auth", "t0ken"], "t0ken@", "token"),
        (
            &["--user", "berth", "--pass", "s3cret"],
            "berth:wrong@",
            "refused",
        ),
    ];
    for (args, creds, host) in cases {
        let nats = Nats::start_with(&dir.path().join(host).join("nats"), args);
        let url = format!("nats://{creds}127.0.0.1:{}", nats.port);
        let agent = Agent::start_logged(
            &dir.path().join(host).join("a"),
            &export_config(&url, Some(host)),
        );
        let c = agent.socket();
        rt.block_on(async {
            create_n(&c, 3).await;
            if host == "refused" {
                let deadline = Instant::now() + Duration::from_secs(20);
                let e = loop {
                    let e = export_status(&c).await;
                    if e["last_error"].as_str().is_some_and(|s| s.contains("auth")) {
                        break e;
                    }
                    assert!(Instant::now() < deadline, "no refusal reported: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                };
                assert_eq!(e["connected"], false, "{e}");
                assert_eq!(e["published"], 0, "{e}");
                let err = e["last_error"].as_str().unwrap().to_lowercase();
                assert!(err.contains("auth"), "{e}");
                assert!(!err.contains("wrong"), "the password leaked: {e}");
            } else {
                let status = caught_up(&c, Duration::from_secs(20)).await;
                assert_eq!(status["connected"], true, "{status}");
                assert!(status["published"].as_u64().unwrap() >= 3, "{status}");
                // The host facts go through their own connection, with the same credentials.
                let nc = match creds.split_once(':') {
                    Some((user, pass)) => async_nats::ConnectOptions::new()
                        .user_and_password(user.into(), pass.trim_end_matches('@').into()),
                    None => {
                        async_nats::ConnectOptions::new().token(creds.trim_end_matches('@').into())
                    }
                };
                let nc = nc.connect(nats.url()).await.unwrap();
                let mut facts = nc.subscribe(format!("berth.hosts.{host}")).await.unwrap();
                create_n(&c, 1).await; // a change of the machine counts: facts are published
                let msg = tokio::time::timeout(Duration::from_secs(20), facts.next())
                    .await
                    .expect("no host facts within 20 s")
                    .unwrap();
                let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
                assert_eq!(v["host_id"], host, "{v}");
            }
        });
    }
}
