//! Online backups: a consistent copy made in bounded memory, whatever the database's size.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::path::Path;
use std::process::Command;

use berth_store::{OfflineDb, Store, StoreOptions, TransitionSpec};
use berth_types::{EventKind, MachineId, Source, State};

/// Set in the child process that makes the backup (its memory is what is measured).
const CHILD_ENV: &str = "BERTH_STORE_BACKUP_CHILD";
/// Bytes of reason per transition, and transitions written: about 64 MiB of events, and as much
/// again in their history rows.
const REASON_BYTES: usize = 256 << 10;
const TRANSITIONS: usize = 256;
/// The most the backup may add to the child's peak resident memory. The database is several
/// times this; holding the copy (or the file) in memory would exceed it.
const GROWTH_BOUND: u64 = 40 << 20;

/// A kibibyte figure from `/proc/self/status`, in bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib << 10
}

fn populate(path: &Path) {
    let store = Store::open(path, StoreOptions::default()).unwrap();
    common::create(&store, "bulk");
    let id = MachineId::parse("bulk").unwrap();
    let reason = "r".repeat(REASON_BYTES);
    for batch in 0..TRANSITIONS / 16 {
        let (id, reason) = (id.clone(), reason.clone());
        store
            .write_blocking(move |w| {
                for i in 0..16 {
                    let to = match (batch * 16 + i) % 2 {
                        0 => State::Starting,
                        _ => State::Stopped,
                    };
                    w.transition(
                        &id,
                        TransitionSpec::new(to, EventKind::Start, Source::User, reason.clone()),
                    )?;
                }
                Ok(())
            })
            .unwrap();
    }
    store.close();
}

/// In the child: opens the store with a small page cache, resets the peak RSS, backs up, and
/// prints how much the peak grew (the report the parent reads).
#[allow(clippy::print_stdout)]
fn child(path: &Path, dest: &Path) {
    let store = Store::open(
        path,
        StoreOptions {
            cache_size: 4 << 20,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let before = status_bytes("VmRSS:");
    // "5" resets the peak resident set size to the current one (proc(5), clear_refs).
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let rows = store.backup_to(dest).unwrap();
    let peak = status_bytes("VmHWM:");
    println!("BACKUP rows={rows} growth={}", peak.saturating_sub(before));
}

#[test]
fn a_large_backup_is_made_in_bounded_memory_and_checks_clean() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let dir = Path::new(&dir);
        return child(&dir.join("berth.redb"), &dir.join("backup.redb"));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.redb");
    populate(&path);
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size > 3 * GROWTH_BOUND, "the database is only {size} bytes");

    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "a_large_backup_is_made_in_bounded_memory_and_checks_clean",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("BACKUP ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("no report from the child: {stdout}"));
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    let growth = field("growth=");
    assert!(
        growth < GROWTH_BOUND,
        "backing up a {size}-byte database grew the peak RSS by {growth} bytes"
    );

    // The copy is complete and consistent.
    let backup = OfflineDb::open(dir.path().join("backup.redb")).unwrap();
    let report = backup.check().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    let original = OfflineDb::open(&path).unwrap();
    assert_eq!(
        backup.stats().unwrap().tables,
        original.stats().unwrap().tables
    );
    let rows: u64 = original.stats().unwrap().tables.values().sum();
    assert_eq!(field("rows="), rows);
    assert_eq!(report.events as usize, TRANSITIONS + 1);
}
