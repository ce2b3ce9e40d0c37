//! The operator's CLI against a real berthd: machines addressed by name and id prefix, exit
//! codes that say whether the user got what they asked for, idempotent stop and destroy, and
//! a pipe closed early (`berth events | head -1`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};

mod common;
use common::*;
#[path = "common/busybox.rs"]
mod busybox;

fn create(agent: &Agent, args: &[&str]) -> String {
    let mut all = vec!["machine", "create", "--json"];
    all.extend_from_slice(args);
    let o = agent.cli(&all);
    assert!(o.status.success(), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["id"].as_str().unwrap().to_owned()
}

#[test]
fn names_and_prefixes_address_machines() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&dir.path().join("data"), "");
    let a = create(&agent, &["--name", "web", "--", "sleep", "1000"]);
    let b = create(&agent, &["--", "sleep", "1000"]);
    let o = agent.cli(&["machine", "status", "--json", "web"]);
    assert!(o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains(&a));
    let o = agent.cli(&["machine", "status", "--json", &b[..b.len() - 2]]);
    assert!(o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains(&b));
    // Enough machines that two ids share a first character: that prefix is ambiguous
    // (exit 2, the candidates listed).
    let mut ids = vec![a.clone(), b.clone()];
    for _ in 0..20 {
        ids.push(create(&agent, &["--skip-start", "--", "true"]));
    }
    let (x, y) = ids
        .iter()
        .enumerate()
        .flat_map(|(i, x)| ids[i + 1..].iter().map(move |y| (x, y)))
        .find(|(x, y)| x[..1] == y[..1])
        .expect("two of 22 ids share a first character");
    let o = agent.cli(&["machine", "status", &x[..1]]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(x.as_str()) && err.contains(y.as_str()),
        "{err}"
    );
    let o = agent.cli(&["machine", "status", "no-such-machine"]);
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    // Stop twice, destroy twice: both succeed.
    assert!(agent.cli(&["machine", "stop", "web"]).status.success());
    let o = agent.cli(&["machine", "stop", "web"]);
    assert!(o.status.success(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already stopped"),
        "{o:?}"
    );
    assert!(agent.cli(&["machine", "destroy", &a]).status.success());
    let o = agent.cli(&["machine", "destroy", &a]);
    assert!(o.status.success(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already destroyed"),
        "{o:?}"
    );
}

#[test]
fn a_failed_create_exits_1_with_the_reason_and_a_closed_pipe_is_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&dir.path().join("data"), "");
    let o = agent.cli(&["machine", "create", "--", "pyhton3-no-such-program"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("failed"), "{err}");
    assert!(err.contains("pyhton3-no-such-program"), "the reason: {err}");
    for _ in 0..3 {
        create(&agent, &["--", "true"]);
    }
    // `berth events | head -1`: the reader goes away after one line.
    let mut events = Command::new(built("berth", "berth"))
        .arg("--data-dir")
        .arg(&agent.dir)
        .args(["events", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = events.stdout.take().unwrap();
    let head = Command::new("head").arg("-1").stdin(out).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&head.stdout).lines().count(), 1);
    // The follow writes again at the next event; make one.
    create(&agent, &["--", "true"]);
    let o = events.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(o.status.code(), Some(101), "{err}");
}

fn poll<T>(secs: u64, what: &str, f: impl FnMut() -> Option<T>) -> T {
    poll_until(what, std::time::Duration::from_secs(secs), f)
}

fn state_of(agent: &Agent, id: &str) -> String {
    let o = agent.cli(&["machine", "status", "--json", id]);
    assert!(o.status.success(), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["machine"]["state"].as_str().unwrap().to_owned()
}

#[test]
fn usage_errors_dead_end_waits_cli_words_several_ids_and_signal() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&dir.path().join("data"), "");
    // A bogus state is a usage error.
    for args in [
        &["machine", "ls", "--state", "bogus"][..],
        &["machine", "wait", "x", "--state", "bogus"][..],
    ] {
        let o = agent.cli(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("bogus"),
            "{o:?}"
        );
    }
    // A failed machine will not become started: wait says so at once.
    let o = agent.cli(&[
        "machine",
        "create",
        "--name",
        "bad",
        "--",
        "/no/such/program",
    ]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let t = std::time::Instant::now();
    let o = agent.cli(&[
        "machine",
        "wait",
        "bad",
        "--state",
        "started",
        "--timeout",
        "60s",
    ]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(10),
        "wait took {:?}",
        t.elapsed()
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("failed"),
        "{o:?}"
    );
    // --api without a token file names the file it looked for.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = Command::new(built("berth", "berth"))
        .arg("--data-dir")
        .arg(&empty)
        .args(["--api", &format!("http://127.0.0.1:{}", agent.port)])
        .args(["machine", "ls"])
        .env_remove("BERTH_TOKEN")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&*empty.join("token").to_string_lossy()),
        "{err}"
    );
    // Errors speak CLI: the flag, not the query string.
    let a = create(&agent, &["--name", "a", "--", "sleep", "1000"]);
    let b = create(&agent, &["--name", "b", "--", "sleep", "1000"]);
    let o = agent.cli(&["machine", "destroy", "a"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--force") && !err.contains("?force"), "{err}");
    // Several ids in one command.
    let o = agent.cli(&["machine", "stop", "a", &b]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(state_of(&agent, &a), "stopped");
    assert_eq!(state_of(&agent, &b), "stopped");
    // One bad id among good ones: the others are still handled, the exit code says not all were.
    let o = agent.cli(&["machine", "start", "a", "no-such-machine", "b"]);
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    assert_eq!(state_of(&agent, &a), "started");
    assert_eq!(state_of(&agent, &b), "started");
    // A signal reaches the workload.
    create(
        &agent,
        &[
            "--name",
            "trap",
            "--",
            "sh",
            "-c",
            "trap 'echo got-hup; exit 3' HUP; echo ready; while :; do sleep 0.1; done",
        ],
    );
    poll(20, "the trap to be set", || {
        let o = agent.cli(&["logs", "trap"]);
        String::from_utf8_lossy(&o.stdout)
            .contains("ready")
            .then_some(())
    });
    let o = agent.cli(&["machine", "signal", "trap", "--signal", "HUP"]);
    assert!(o.status.success(), "{o:?}");
    poll(20, "the workload to answer the signal", || {
        let o = agent.cli(&["logs", "trap"]);
        String::from_utf8_lossy(&o.stdout)
            .contains("got-hup")
            .then_some(())
    });
}

#[test]
fn events_follow_filters_by_machine_shows_names_and_resumes_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(&dir.path().join("data"), "");
    let web = create(&agent, &["--name", "web", "--", "sleep", "1000"]);
    let other = create(&agent, &["--name", "other", "--", "sleep", "1000"]);
    let out = dir.path().join("events.txt");
    let mut follow = Command::new(built("berth", "berth"))
        .arg("--data-dir")
        .arg(&agent.dir)
        .args(["events", "--follow", "--machine", "web"])
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(&out).unwrap_or_default();
    poll(20, "web's first events", || {
        read().contains("started").then_some(())
    });
    // berthd dies hard mid-follow and comes back.
    let mut child = agent.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    agent.spawn();
    assert!(
        agent
            .cli(&["machine", "stop", "web", "other"])
            .status
            .success()
    );
    poll(30, "web's stop after the restart", || {
        read().contains("→ stopped").then_some(())
    });
    let _ = follow.kill();
    let _ = follow.wait();
    let text = read();
    let mut last = 0u64;
    for line in text.lines() {
        assert!(line.contains(&web) && line.contains("(web)"), "{text}");
        assert!(!line.contains(&other), "{text}");
        let seq: u64 = line.split_whitespace().next().unwrap().parse().unwrap();
        assert!(
            seq > last,
            "seq {seq} after {last}: repeated or out of order\n{text}"
        );
        last = seq;
    }
    let mut err = String::new();
    use std::io::Read;
    follow
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("reconnecting"), "{err}");
}

#[test]
fn tables_fit_the_terminal_unless_wide_and_escape_control_characters() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&dir.path().join("data"), "");
    let long = format!(
        "echo one\necho two\u{1b}[31m; sleep 1000 # {}",
        "x".repeat(200)
    );
    let id = create(&agent, &["--name", "web", "--", "sh", "-c", &long]);
    // A real pseudo-terminal 70 columns wide (util-linux `script`).
    let berth = built("berth", "berth");
    let on_tty = |extra: &str| {
        let o = Command::new("script")
            .args(["-qec"])
            .arg(format!(
                "stty cols 70; {} --data-dir {} machine ls {extra}",
                berth.display(),
                agent.dir.display()
            ))
            .arg("/dev/null")
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        String::from_utf8_lossy(&o.stdout).replace('\r', "")
    };
    let fitted = on_tty("");
    let rows: Vec<&str> = fitted.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(rows.len(), 2, "a header and one row:\n{fitted}");
    for r in &rows {
        assert!(r.chars().count() <= 70, "wider than the terminal: {r:?}");
    }
    assert!(rows[1].contains(&id) && rows[1].contains('…'), "{fitted}");
    let wide = on_tty("--wide");
    let rows: Vec<&str> = wide.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(rows.len(), 2, "{wide}");
    assert!(
        rows[1].contains(&"x".repeat(200)),
        "--wide shows it whole: {wide}"
    );
    // Piped: whole, one line per machine, the newline and the escape shown escaped.
    let o = agent.cli(&["machine", "ls"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        out.lines().filter(|l| !l.trim().is_empty()).count(),
        2,
        "{out}"
    );
    assert!(!out.contains('\u{1b}'), "a raw escape: {out:?}");
    assert!(out.contains("echo one\\necho two"), "{out}");
}

/// Whether `text` holds an RFC 3339 time with a fraction of a second (`16:23:56.266578697Z`).
fn has_fractional_seconds(text: &str) -> bool {
    text.split(|c: char| c.is_whitespace() || "(),;".contains(c))
        .any(|w| w.len() > 20 && w.contains('T') && w.ends_with('Z') && w.contains('.'))
}

#[test]
fn status_shows_the_whole_config_lease_usage_and_checks_in_words_and_stats_reads_usage() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&dir.path().join("data"), "");
    let id = create(
        &agent,
        &[
            "--name",
            "full",
            "--env",
            "SECRET=hunter2",
            "--restart",
            "on-failure",
            "--check",
            "port=tcp:1",
            "--",
            "sh",
            "-c",
            "sleep 1000",
        ],
    );
    let c = agent.socket();
    let rt = rt();
    let nonce = rt.block_on(async {
        let r = c
            .raw(
                berth_client::Method::POST,
                &format!("/v1/machines/{id}/lease"),
                Some(br#"{"ttl": "1h", "description": "deploy-42"}"#.to_vec()),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(r.status.as_u16(), 201, "{r:?}");
        let lease: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        lease["nonce"].as_str().unwrap().to_owned()
    });
    // The check on a closed port goes critical after its first run.
    let status = poll(30, "the check to run", || {
        let o = agent.cli(&["machine", "status", "full"]);
        assert!(o.status.success(), "{o:?}");
        let s = String::from_utf8_lossy(&o.stdout).into_owned();
        s.contains("Check port")
            .then_some(s)
            .filter(|s| !s.contains("not run yet"))
    });
    for want in [
        "SECRET",
        "on-failure, at most 10 times (0 restarts since the last start)",
        "SIGTERM, then SIGKILL after 10s",
        "held by deploy-42 until",
        "tcp :1 every 10s",
        "root (berth's)",
        "create: the workload runs",
        "started since",
    ] {
        assert!(status.contains(want), "{want:?} missing:\n{status}");
    }
    let usage = status.lines().find(|l| l.contains("Usage")).unwrap();
    assert!(usage.contains("memory") && usage.contains("up "), "{usage}");
    for never in ["hunter2", "mark_starting", "OnFailure", "(User)", "Some("] {
        assert!(!status.contains(never), "{never:?} shown:\n{status}");
    }
    assert!(
        !has_fractional_seconds(&status),
        "times to the second:\n{status}"
    );

    // stats: the same machine's usage, as JSON and as a table of every running machine.
    let o = agent.cli(&["machine", "stats", "full", "--json"]);
    assert!(o.status.success(), "{o:?}");
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["id"], id.as_str());
    assert!(
        s["cpu_seconds"].is_number() && s["memory_bytes"].as_u64() > Some(0),
        "{s}"
    );
    assert!(s["started_at"].is_string() && s["pid"].is_u64(), "{s}");
    let other = create(&agent, &["--skip-start", "--", "sleep", "1"]);
    let o = agent.cli(&["machine", "stats"]);
    assert!(o.status.success(), "{o:?}");
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains(&id) && table.contains("MiB"), "{table}");
    assert!(!table.contains(&other), "only running machines: {table}");

    // Leased: a stop without the nonce is refused in the CLI's words; with it, allowed.
    let o = agent.cli(&["machine", "stop", "full"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--lease-nonce") && !err.contains("berth-lease-nonce"),
        "{err}"
    );
    let o = agent.cli(&["--lease-nonce", "bad\nnonce", "machine", "stop", "full"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "a nonce that is no header value: {o:?}"
    );
    let o = agent.cli(&["--lease-nonce", &nonce, "machine", "stop", "full"]);
    assert!(o.status.success(), "{o:?}");
    // Stopped: nothing runs, so no usage is claimed (absent, not zero).
    let o = agent.cli(&["machine", "stats", "full", "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["state"], "stopped", "{s}");
    assert!(
        s.get("memory_bytes").is_none() && s.get("pid").is_none() && s.get("started_at").is_none(),
        "{s}"
    );
}

/// What bash offers at a TAB after `line` (the word being completed is the last of `line`,
/// empty when `line` ends in a space): the script `berth completions bash` prints is sourced in
/// a real bash with the built `berth` first on PATH, and its completion function run as bash's
/// programmable completion runs it (COMP_WORDS, COMP_CWORD).
fn bash_offers(agent: &Agent, line: &str) -> Vec<String> {
    let berth = built("berth", "berth");
    let script = Command::new(&berth)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(script.status.success(), "{script:?}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("berth.bash");
    std::fs::write(&file, &script.stdout).unwrap();
    let path = format!(
        "{}:{}",
        berth.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = Command::new("bash")
        .arg("-c")
        .arg(
            r#"source "$1"; read -r -a COMP_WORDS <<< "$2"; [[ "$2" == *" " ]] && COMP_WORDS+=("");
               COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); COMP_LINE="$2"; COMP_POINT=${#2}; COMP_TYPE=9;
               _clap_complete_berth berth "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}";
               printf '%s\n' "${COMPREPLY[@]}""#,
        )
        .arg("bash")
        .arg(&file)
        .arg(line)
        .env("PATH", path)
        .env("BERTH_DATA_DIR", &agent.dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn completions_offer_machines_states_and_policies_and_hide_hidden_commands() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&dir.path().join("data"), "");
    let web = create(&agent, &["--name", "web", "--", "sleep", "1000"]);
    let db = create(&agent, &["--name", "db", "--skip-start", "--", "true"]);
    let has = |offered: &[String], want: &[&str], line: &str| {
        for w in want {
            assert!(
                offered.iter().any(|o| o == w),
                "`{line}<TAB>` does not offer {w}: {offered:?}"
            );
        }
    };
    // Machine names and ids wherever a machine is asked for.
    for line in [
        "berth machine status ",
        "berth machine stop web ",
        "berth logs ",
        "berth events --machine ",
    ] {
        has(&bash_offers(&agent, line), &["web", "db", &web, &db], line);
    }
    let offered = bash_offers(&agent, "berth machine destroy w");
    assert_eq!(offered, vec!["web".to_owned()], "only what the word starts");
    // Words, not files, for states, policies and signals.
    let states = bash_offers(&agent, "berth machine ls --state ");
    has(
        &states,
        &["started", "stopped", "failed", "destroyed"],
        "--state",
    );
    let policies = bash_offers(&agent, "berth machine create --restart ");
    assert_eq!(policies, ["no", "on-failure", "always"], "--restart");
    let policies = bash_offers(&agent, "berth machine update web --restart ");
    assert_eq!(policies, ["no", "on-failure", "always"], "update --restart");
    has(
        &bash_offers(&agent, "berth machine stop web --signal "),
        &["TERM", "KILL"],
        "--signal",
    );
    // Subcommands, without the hidden `man`.
    let top = bash_offers(&agent, "berth ");
    has(
        &top,
        &["machine", "logs", "events", "doctor", "completions"],
        "berth",
    );
    assert!(
        !top.iter().any(|c| c == "man"),
        "the hidden man is offered: {top:?}"
    );
    // The agent down: still words and commands, no machines, no error, quickly.
    let down = Agent::start(&dir.path().join("empty"), "");
    let mut gone = down;
    gone.stop();
    let t = std::time::Instant::now();
    let offered = bash_offers(&gone, "berth machine status ");
    // clap still offers the flags; what it must not do is invent machines or fail.
    assert!(offered.iter().all(|c| c.starts_with("--")), "{offered:?}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t.elapsed()
    );
    has(
        &bash_offers(&gone, "berth machine "),
        &["status", "create"],
        "machine",
    );
}

/// `berth ARGS` in a real pseudo-terminal (util-linux `script`) 100 columns wide: everything
/// it wrote there, stdout and stderr together, escapes included.
fn on_a_terminal(agent: &Agent, args: &str) -> String {
    let o = Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "stty cols 100; {} --data-dir {} {args}",
            built("berth", "berth").display(),
            agent.dir.display()
        ))
        .arg("/dev/null")
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    String::from_utf8_lossy(&o.stdout).replace('\r', "")
}

#[test]
fn compact_and_backup_show_progress_on_a_terminal_only() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&dir.path().join("data"), "");
    for _ in 0..3 {
        create(&agent, &["--skip-start", "--", "true"]);
    }
    let backups = tempfile::tempdir().unwrap();
    let file = |n: &str| backups.path().join(n).display().to_string();

    let shown = on_a_terminal(&agent, "db compact");
    assert!(
        shown.contains("compacting"),
        "no progress on a terminal: {shown:?}"
    );
    assert!(shown.contains("compacted:"), "{shown:?}");
    let shown = on_a_terminal(&agent, &format!("db backup {}", file("tty.redb")));
    assert!(
        shown.contains("backing up"),
        "no progress on a terminal: {shown:?}"
    );
    assert!(shown.contains("wrote "), "{shown:?}");

    // --json on a terminal, and both through pipes: the result only.
    let shown = on_a_terminal(&agent, "db compact --json");
    assert!(!shown.contains("compacting"), "{shown:?}");
    let shown = on_a_terminal(&agent, &format!("db backup --json {}", file("json.redb")));
    assert!(!shown.contains("backing up"), "{shown:?}");
    let v: serde_json::Value = serde_json::from_str(shown.trim()).unwrap();
    assert!(v["bytes"].as_u64().unwrap() > 0, "{v}");
    for args in [
        vec!["db".to_owned(), "compact".to_owned()],
        vec!["db".to_owned(), "backup".to_owned(), file("piped.redb")],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = agent.cli(&args);
        assert!(o.status.success(), "{o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.is_empty(), "progress through a pipe: {err:?}");
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(out.lines().count(), 1, "{out:?}");
        assert!(!out.contains('\u{1b}'), "{out:?}");
    }
}

/// The lines of the section `title` of a roff page (up to the next `.SH`).
fn roff_section<'a>(page: &'a str, title: &str) -> Option<Vec<&'a str>> {
    let mut lines = page
        .lines()
        .skip_while(|l| *l != format!(".SH {title}") && *l != format!(".SH \"{title}\""));
    lines.next()?;
    Some(lines.take_while(|l| !l.starts_with(".SH")).collect())
}

#[test]
fn every_man_page_has_examples_and_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(built("berth", "berth"))
        .arg("man")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for want in [
        "berth.1",
        "berth-machine-create.1",
        "berth-logs.1",
        "berth-db-compact.1",
    ] {
        assert!(pages.iter().any(|p| p == want), "{want} missing: {pages:?}");
    }
    assert!(
        !pages.iter().any(|p| p == "berth-man.1"),
        "the hidden man has a page"
    );
    for page in &pages {
        let path = dir.path().join(page);
        let roff = std::fs::read_to_string(&path).unwrap();
        let examples =
            roff_section(&roff, "EXAMPLES").unwrap_or_else(|| panic!("{page}: no EXAMPLES"));
        let commands: Vec<&&str> = examples.iter().filter(|l| l.contains("berth")).collect();
        assert!(
            !commands.is_empty(),
            "{page}: EXAMPLES without a berth command: {examples:?}"
        );
        let exit =
            roff_section(&roff, "EXIT STATUS").unwrap_or_else(|| panic!("{page}: no EXIT STATUS"));
        let exit = exit.join("\n");
        for code in ["0", "1", "2", "3", "4"] {
            assert!(
                exit.contains(&format!("\\fB{code}\\fR")),
                "{page}: exit code {code}: {exit}"
            );
        }
        assert!(
            exit.contains("unreachable") || exit.contains("could not be reached"),
            "{page}: {exit}"
        );
        // man renders both headings.
        let text = Command::new("man")
            .arg("--local-file")
            .arg(&path)
            .env("MANWIDTH", "100")
            .env("PAGER", "cat")
            .output()
            .unwrap();
        assert!(text.status.success(), "{text:?}");
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(
            text.contains("\nEXAMPLES\n") && text.contains("\nEXIT STATUS\n"),
            "{page}:\n{text}"
        );
    }
    let exec = std::fs::read_to_string(dir.path().join("berth-machine-exec.1")).unwrap();
    assert!(exec.contains("124"), "exec's own codes: {exec}");
}

#[test]
fn doctor_runs_a_fresh_reconciliation_pass() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(&dir.path().join("data"), "");
    // The periodic pass once an hour: each doctor below, right after a create, reports a pass
    // that saw that machine, so its own.
    agent.stop();
    std::fs::write(&agent.config, "[reconcile]\ninterval = \"1h\"\n").unwrap();
    agent.spawn();
    for n in 1..=4 {
        create(&agent, &["--", "sleep", "1000"]);
        let o = agent.cli(&["doctor", "--json"]);
        assert!(o.status.success(), "{o:?}");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["fresh_pass"], true, "{v}");
        assert_eq!(v["machines"], n, "{v}");
        assert_eq!(v["last_reconcile"]["examined"], n, "a stale pass: {v}");
    }
}

#[test]
fn create_and_update_have_a_flag_for_every_config_field() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&dir.path().join("data"), "");
    let local = dir.path().join("app.conf");
    std::fs::write(&local, "port = 8080\n").unwrap();
    std::fs::set_permissions(&local, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let file = format!("/etc/app.conf={}", local.display());
    // `files` only apply to machines with an image, `max_retries` only to on-failure.
    let image = busybox::image(&dir.path().join("layout"));
    let id = create(
        &agent,
        &[
            "--skip-start",
            "--image",
            &image,
            "--restart",
            "on-failure",
            "--workdir",
            "/tmp",
            "--max-retries",
            "3",
            "--stop-signal",
            "INT",
            "--stop-timeout",
            "3s",
            "--cpus",
            "0.5",
            "--pids",
            "64",
            "--file",
            &file,
            "--user",
            "65534",
            "--",
            "sleep",
            "1000",
        ],
    );
    let o = agent.cli(&["machine", "status", "--json", &id]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let c = &v["machine"]["config"];
    assert_eq!(c["workdir"], "/tmp", "{c}");
    assert_eq!(c["restart"]["max_retries"], 3, "{c}");
    assert_eq!(c["stop"]["signal"], "SIGINT", "{c}");
    assert_eq!(c["stop"]["timeout"], "3s", "{c}");
    assert_eq!(c["resources"]["cpus"], 0.5, "{c}");
    assert_eq!(c["resources"]["pids"], 64, "{c}");
    assert_eq!(c["files"][0]["path"], "/etc/app.conf", "{c}");
    assert_eq!(c["files"][0]["mode"], 0o640, "{c}");
    assert_eq!(c["files"][0]["raw_value"], "cG9ydCA9IDgwODAK", "{c}");
    let o = agent.cli(&[
        "machine",
        "update",
        &id,
        "--cpus",
        "1",
        "--pids",
        "32",
        "--max-retries",
        "5",
    ]);
    assert!(o.status.success(), "{o:?}");
    let said = String::from_utf8_lossy(&o.stdout);
    for line in [
        "cpus: 0.5 CPUs → 1 CPUs",
        "pids: 64 → 32",
        "max retries: 3 → 5",
    ] {
        assert!(said.contains(line), "{line:?} not in {said}");
    }
    // A bad value is a usage error.
    let o = agent.cli(&["machine", "create", "--stop-timeout", "soon", "--", "true"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let o = agent.cli(&["machine", "create", "--network", "bridge", "--", "true"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
}
