//! The store under hostile conditions, with a real berthd, the real CLI and real files: damage is
//! found (every page, not only records) and never panics berthd; `--offline` never writes; a
//! full disk answers `unavailable` and the store recovers once space returns, without a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;
use common::*;

fn create_body(name: &str, skip_start: bool) -> berth_api_types::CreateMachine {
    let mut metadata = std::collections::BTreeMap::new();
    // Bulk, so that records span many pages.
    metadata.insert(
        "payload".to_owned(),
        format!("hostile-payload-{name}-{}", "x".repeat(400)),
    );
    berth_api_types::CreateMachine {
        name: Some(name.to_owned()),
        config: berth_types::MachineConfig::command(["sleep", "1000"]),
        metadata,
        skip_start,
    }
}

fn cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(built("berth", "berth"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The file's bytes and its modification time, to the nanosecond.
fn snapshot(path: &Path) -> (Vec<u8>, i64, i64) {
    let m = std::fs::metadata(path).unwrap();
    (std::fs::read(path).unwrap(), m.mtime(), m.mtime_nsec())
}

fn assert_untouched(path: &Path, before: &(Vec<u8>, i64, i64), what: &str) {
    let after = snapshot(path);
    assert!(
        after.0 == before.0,
        "{what} changed the bytes of {}",
        path.display()
    );
    assert_eq!(
        (after.1, after.2),
        (before.1, before.2),
        "{what} changed the mtime"
    );
}

fn populate(agent: &Agent, n: usize) {
    // Names are unique on a host: every call names its machines afresh.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let rt = rt();
    let c = agent.socket();
    rt.block_on(async {
        for _ in 0..n {
            let i = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            c.create(&create_body(&format!("m{i:04}"), true), None)
                .await
                .unwrap();
        }
    });
}

#[test]
fn offline_commands_never_write_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("berth.redb");
    let mut agent = Agent::start(dir.path(), "");
    populate(&agent, 20);
    assert!(agent.stop().success());

    // Cleanly closed: every offline read works and leaves the file byte for byte as it was.
    let before = snapshot(&db);
    for args in [
        &["db", "stats", "--offline", "--json"][..],
        &["db", "check", "--offline"][..],
    ] {
        let o = cli(dir.path(), args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        assert_untouched(&db, &before, &format!("{args:?}"));
    }
    let backup = dir.path().join("b1.redb");
    let o = cli(
        dir.path(),
        &["db", "backup", "--offline", backup.to_str().unwrap()],
    );
    assert!(o.status.success(), "backup: {}", text(&o));
    assert_untouched(&db, &before, "db backup --offline");
    let o = cli(dir.path(), &["db", "stats", "--offline", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tables"]["machines"], 20, "{v}");

    // Not closed cleanly (SIGKILL): each offline command says the file needs repair, exits 1,
    // and the file is untouched.
    agent.spawn();
    populate(&agent, 1);
    let mut child = agent.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let before = snapshot(&db);
    let backup2 = dir.path().join("b2.redb");
    for args in [
        &["db", "stats", "--offline"][..],
        &["db", "check", "--offline"][..],
        &["db", "backup", "--offline", backup2.to_str().unwrap()][..],
    ] {
        let o = cli(dir.path(), args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", text(&o));
        assert!(text(&o).contains("needs repair"), "{args:?}: {}", text(&o));
        assert_untouched(&db, &before, &format!("{args:?} on an unclean file"));
    }
    assert!(!backup2.exists());
    // Asked for explicitly, the repair happens and the check passes.
    let o = cli(dir.path(), &["db", "check", "--offline", "--repair"]);
    assert!(o.status.success(), "check --repair: {}", text(&o));
    assert!(text(&o).contains("repaired"), "{}", text(&o));
    let o = cli(dir.path(), &["db", "stats", "--offline", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tables"]["machines"], 21, "{v}");
}

/// Every offset at which `needle` occurs in `hay`.
fn find_all(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    hay.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

fn flip(path: &Path, offsets: &[usize]) {
    let mut bytes = std::fs::read(path).unwrap();
    for &o in offsets {
        bytes[o] ^= 0x5a;
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_damaged_page_that_no_record_check_reads_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("berth.redb");
    let mut agent = Agent::start_logged(dir.path(), "");
    populate(&agent, 30);
    let rt = rt();
    // The compaction leaves its report in the meta table: table data that no record checksum
    // covers and that the consistency check does not interpret.
    rt.block_on(agent.socket().compact()).unwrap();
    let ok = rt.block_on(agent.socket().db_check()).unwrap();
    assert!(ok.ok, "{ok:?}");
    assert!(agent.stop().success());

    let bytes = std::fs::read(&db).unwrap();
    let hits = find_all(&bytes, b"catch_up_rounds");
    assert!(!hits.is_empty(), "the compaction report is in the file");
    flip(&db, &hits.iter().map(|h| h + 3).collect::<Vec<_>>());

    // Offline: found, reported, exit 1, and the file is left as it was.
    let before = snapshot(&db);
    let o = cli(dir.path(), &["db", "check", "--offline", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["integrity_passed"], false, "{v}");
    assert!(!text(&o).contains("panicked"), "{}", text(&o));
    assert_untouched(&db, &before, "db check --offline on a damaged file");
    assert!(!dir.path().join("berth.redb.check").exists());

    // Online: berthd opens it (every record is intact), and its check finds the damaged page.
    agent.spawn();
    let v = rt.block_on(agent.socket().db_check()).unwrap();
    assert!(!v.ok, "{v:?}");
    assert!(!v.pages.passed, "{v:?}");
    let o = agent.cli(&["db", "check"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("redb integrity: FAILED"), "{}", text(&o));
    // Reads keep answering, and berthd exits cleanly, without a panic.
    assert_eq!(
        rt.block_on(agent.socket().list(None, false)).unwrap().len(),
        30
    );
    let status = agent.stop();
    let log = agent.log_text();
    assert!(!log.contains("panicked at"), "berthd panicked:\n{log}");
    assert!(status.success(), "berthd exit {status:?}:\n{log}");
}

#[test]
fn damage_in_the_middle_of_the_table_pages_is_refused_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("berth.redb");
    let mut agent = Agent::start_logged(dir.path(), "");
    populate(&agent, 120);
    assert!(agent.stop().success());

    // Damage the pages in the middle of the file that hold table data: the header area of every
    // 4 KiB page holding a record of the middle third of the machines.
    let bytes = std::fs::read(&db).unwrap();
    let mut pages: Vec<usize> = (40..80)
        .flat_map(|i| find_all(&bytes, format!("hostile-payload-m{i:04}").as_bytes()))
        .map(|o| o / 4096 * 4096)
        .collect();
    pages.sort_unstable();
    pages.dedup();
    assert!(pages.len() > 3, "payload pages found: {pages:?}");
    let offsets: Vec<usize> = pages
        .iter()
        .flat_map(|p| [p + 1, p + 2, p + 9, p + 600])
        .collect();
    flip(&db, &offsets);

    let before = snapshot(&db);
    let o = cli(dir.path(), &["db", "check", "--offline", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(!text(&o).contains("panicked at"), "{}", text(&o));
    assert_untouched(&db, &before, "db check --offline");
    let o = cli(dir.path(), &["db", "stats", "--offline"]);
    assert!(!text(&o).contains("panicked at"), "{}", text(&o));
    assert_untouched(&db, &before, "db stats --offline");

    // berthd refuses the file with a clear message and exits, without a panic.
    let out = agent
        .command()
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("damaged"), "{err}");
    assert!(!err.contains("panicked at"), "{err}");
    assert_untouched(&db, &before, "berthd refusing the file");
}

/// A tmpfs of `size` mounted on a new directory, unmounted on drop.
struct SmallFs {
    dir: PathBuf,
}

impl SmallFs {
    fn mount(parent: &Path, size: &str) -> SmallFs {
        let dir = parent.join("small");
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(
            ok.success(),
            "mounting a tmpfs needs root (this test runs as root in CI)"
        );
        SmallFs { dir }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Writes `path` until the file system is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xabu8; 64 << 10];
    loop {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    // The last bytes: whatever a partial chunk left.
    while f.write_all(&[0u8; 512]).is_ok() {}
    while f.write_all(&[0u8; 1]).is_ok() {}
    let _ = f.sync_all();
}

#[test]
fn a_full_disk_answers_unavailable_and_recovers_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = SmallFs::mount(tmp.path(), "24m");
    let dir = fs.dir.join("data");
    // berthd's log is on the full disk too: a log line it cannot write must not kill anything.
    let mut agent = Agent::start_logged(&dir, "");
    let rt = rt();
    let c = agent.socket();
    let mut acked: Vec<String> = Vec::new();
    rt.block_on(async {
        for i in 0..20 {
            let m = c
                .create(&create_body(&format!("a{i:04}"), true), None)
                .await
                .unwrap();
            acked.push(m.id.to_string());
        }
    });

    // Fill the disk; creates go on until one fails for want of space.
    let filler = fs.dir.join("filler");
    fill(&filler);
    let mut refused = None;
    let mut refused_name = String::new();
    rt.block_on(async {
        for i in 0..5000 {
            let name = format!("b{i:04}");
            match c.create(&create_body(&name, true), None).await {
                Ok(m) => acked.push(m.id.to_string()),
                Err(e) => {
                    refused = Some(e);
                    refused_name = name;
                    break;
                }
            }
        }
    });
    let refused = refused.expect("a create failed on the full disk");
    match &refused {
        berth_client::ClientError::Api { status, body } => {
            assert_eq!(
                (*status, body.code.as_str()),
                (503, "unavailable"),
                "{refused}"
            )
        }
        other => panic!("expected 503 unavailable, got {other}"),
    }
    // Reads keep working, and health says the store is degraded.
    let listed = rt.block_on(c.list(None, false)).unwrap();
    for id in &acked {
        assert!(
            listed.iter().any(|m| m.id.as_str() == id),
            "{id} missing while the disk is full"
        );
    }
    let h = rt.block_on(c.health()).unwrap();
    assert_eq!(
        h.status,
        "degraded",
        "{h:?} after {} acked; {refused}\n{}",
        acked.len(),
        agent.log_text()
    );

    // Space comes back: the next creates succeed, without restarting berthd.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    rt.block_on(async {
        loop {
            match c.create(&create_body("after", true), None).await {
                Ok(m) => {
                    acked.push(m.id.to_string());
                    break;
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "the store did not recover: {e}");
                    assert_eq!(e.code(), Some("unavailable"), "{e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    // The refused create left nothing behind: not even its name is taken.
    let again = rt
        .block_on(c.create(&create_body(&refused_name, true), None))
        .unwrap_or_else(|e| panic!("{refused_name} after recovery: {e}"));
    acked.push(again.id.to_string());
    let pid = agent.child.as_ref().unwrap().id();
    assert!(
        agent.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "berthd {pid} exited"
    );
    let listed = rt.block_on(c.list(None, false)).unwrap();
    for id in &acked {
        assert!(
            listed.iter().any(|m| m.id.as_str() == id),
            "acknowledged {id} lost"
        );
    }
    let h = rt.block_on(c.health()).unwrap();
    assert_eq!(h.status, "ok", "{h:?}");
    let v = rt.block_on(c.db_check()).unwrap();
    assert!(v.ok, "{v:?}");
    assert!(agent.stop().success(), "{}", agent.log_text());
    // And the file on disk has them all after a clean restart.
    agent.spawn();
    let listed = rt.block_on(agent.socket().list(None, false)).unwrap();
    assert_eq!(listed.len(), acked.len());
    agent.stop();
    drop(fs);
}
