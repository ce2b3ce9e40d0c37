//! Logs that never lose a line: a real berthd, a real workload writing at a firehose rate across
//! many rotations, the real `berth logs -f` following it through an agent restart, and what it
//! printed compared with what was written. Also streams, times, `--since`, the marks between
//! runs, a follow that ends when the machine stops, and a destroyed machine's logs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_client::Method;
use berth_types::RestartPolicy;

mod common;
use common::*;

fn body(cmd: &[&str], policy: RestartPolicy) -> berth_api_types::CreateMachine {
    let mut config = berth_types::MachineConfig::command(cmd.iter().copied());
    config.restart.policy = policy;
    berth_api_types::CreateMachine {
        name: None,
        config,
        metadata: Default::default(),
        skip_start: false,
    }
}

fn poll<T>(secs: u64, what: &str, f: impl FnMut() -> Option<T>) -> T {
    poll_until(what, std::time::Duration::from_secs(secs), f)
}

/// Writes `N` numbered lines of 95 bytes at `RATE` bytes a second (block-buffered, so writes
/// cut lines anywhere), then exits 0.
const FIREHOSE: &str = r#"use Time::HiRes qw(time sleep); my ($n, $rate) = @ARGV; my $pad = "x" x 80;
my $t0 = time; my $bytes = 0;
for my $i (0 .. $n - 1) {
  my $l = sprintf("line %08d %s\n", $i, $pad); print $l; $bytes += length $l;
  if ($i % 500 == 499) { my $ahead = $bytes / $rate - (time - $t0); sleep($ahead) if $ahead > 0; }
}"#;

fn berth_cmd(agent: &Agent) -> Command {
    let mut c = Command::new(built("berth", "berth"));
    c.arg("--data-dir").arg(&agent.dir);
    c
}

#[test]
fn a_follow_at_4mb_per_second_across_rotations_and_agent_restarts_gets_every_line_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(
        &dir.path().join("data"),
        "[driver]\nlog_max_size = \"1MiB\"\nlog_keep = 64\n",
    );
    let rt = rt();
    const N: usize = 340_000; // 32 MB: 30 rotations of 1 MiB at 4 MB/s, about 8 s
    const RATE: usize = 4_000_000;
    let m = rt
        .block_on(agent.socket().create(
            &body(
                &["perl", "-e", FIREHOSE, &N.to_string(), &RATE.to_string()],
                RestartPolicy::No,
            ),
            None,
        ))
        .unwrap();
    let id = m.id.to_string();
    let out_path = dir.path().join("followed.txt");
    let started = Instant::now();
    let mut follow = berth_cmd(&agent)
        .args(["logs", "-f", "--tail", "100000", &id])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // An agent restart in the middle of the firehose: the follow must resume where it was.
    poll(20, "a few rotations", || {
        dir.path()
            .join(format!("data/machines/{id}/logs/output.log.3"))
            .exists()
            .then_some(())
    });
    let t = Instant::now();
    assert!(agent.stop().success());
    let stop_took = t.elapsed();
    agent.spawn();
    // And a hard death (SIGKILL) a few rotations later, while the follow is still reading.
    poll(30, "more rotations", || {
        dir.path()
            .join(format!("data/machines/{id}/logs/output.log.9"))
            .exists()
            .then_some(())
    });
    assert!(
        follow.try_wait().unwrap().is_none(),
        "the follow ended before the second restart"
    );
    let mut child = agent.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    agent.spawn();
    let status = poll(60, "the follow to end with the machine", || {
        follow.try_wait().unwrap()
    });
    let elapsed = started.elapsed();
    let mut stderr = String::new();
    use std::io::Read;
    follow
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{status}: {stderr}");
    let text = std::fs::read_to_string(&out_path).unwrap();
    let pad = "x".repeat(80);
    let mut expect = 0usize;
    for (k, line) in text.lines().enumerate() {
        let want = format!("line {expect:08} {pad}");
        assert_eq!(
            line, want,
            "line {k} of the follow: a line lost, repeated or split (stderr: {stderr})"
        );
        expect += 1;
    }
    assert_eq!(expect, N, "every line once (stderr: {stderr})");
    let rotations = (1..=64)
        .filter(|n| {
            dir.path()
                .join(format!("data/machines/{id}/logs/output.log.{n}"))
                .exists()
        })
        .count();
    assert!(rotations >= 5, "only {rotations} rotations");
    assert!(
        stderr.contains("reconnecting"),
        "the follow saw the restart: {stderr}"
    );
    assert!(
        stop_took < Duration::from_secs(5),
        "a follow held berthd's shutdown for {stop_took:?}"
    );
    eprintln!(
        "follow: {N} lines, {} bytes, {rotations} rotations, a SIGTERM and a SIGKILL restart (stop took {stop_took:?}); \
         {:.1} MB/s over {elapsed:?} from the start of the follow to its end",
        text.len(),
        text.len() as f64 / elapsed.as_secs_f64() / 1e6
    );
}

#[test]
fn logs_show_streams_times_since_and_the_mark_between_runs() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&dir.path().join("data"), "");
    let rt = rt();
    let mut b = body(
        &["sh", "-c", "echo to-out; echo to-err >&2; exit 3"],
        RestartPolicy::OnFailure,
    );
    b.config.restart.max_retries = Some(1);
    let m = rt.block_on(agent.socket().create(&b, None)).unwrap();
    let id = m.id.to_string();
    poll(20, "two runs and the end", || {
        let m = rt.block_on(agent.socket().get(&id)).ok()?;
        let o = agent.cli(&["logs", &id]);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        (m.state.to_string() == "failed" && err.matches("run exited with code 3").count() == 2)
            .then_some(())
    });
    let o = agent.cli(&["logs", &id]);
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout), "to-out\nto-out\n");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(err.matches("to-err\n").count(), 2, "{err}");
    assert_eq!(err.matches("run started (pid").count(), 2, "{err}");
    // The plain-text route stays what it was: the output, both streams, no marks.
    let r = rt
        .block_on(
            agent
                .socket()
                .raw(Method::GET, &format!("/v1/machines/{id}/logs"), None, &[]),
        )
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "to-out\nto-err\nto-out\nto-err\n"
    );
    // Times: RFC 3339 before every line.
    let o = agent.cli(&["logs", "--timestamps", &id]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    for line in out.lines() {
        let (ts, text) = line.split_once(' ').unwrap();
        humantime::parse_rfc3339(ts).unwrap();
        assert_eq!(text, "to-out");
    }
    // --since: an hour ago is everything, a time after the last line nothing.
    let o = agent.cli(&["logs", "--since", "1h", &id]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "to-out\nto-out\n");
    let later =
        humantime::format_rfc3339_nanos(std::time::SystemTime::now() + Duration::from_secs(2))
            .to_string();
    let o = agent.cli(&["logs", "--since", &later, &id]);
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout), "");
    let o = agent.cli(&["logs", "--since", "yesterday-ish", &id]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("since"));
}

#[test]
fn a_follow_ends_when_the_machine_exits_and_destroyed_logs_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&dir.path().join("data"), "");
    let rt = rt();
    let m = rt
        .block_on(agent.socket().create(
            &body(
                &["sh", "-c", "echo hi; sleep 1; echo bye"],
                RestartPolicy::No,
            ),
            None,
        ))
        .unwrap();
    let id = m.id.to_string();
    let t = Instant::now();
    let o = agent.cli(&["logs", "-f", &id]);
    assert!(o.status.success(), "{o:?}");
    assert!(t.elapsed() < Duration::from_secs(15));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hi\nbye\n");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(err.contains("follow ended"), "{err}");
    rt.block_on(agent.socket().destroy(&id, true)).unwrap();
    let o = agent.cli(&["logs", &id]);
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("destroyed"),
        "{o:?}"
    );
}
