//! A child process commits transitions from many concurrent tasks and is SIGKILLed at random
//! moments, many times over. After each kill: redb's integrity check passes, every write that was
//! acknowledged before the kill is present, and the event log has no gap.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use berth_store::{Store, StoreOptions, check_file_integrity};

const RUNS: u64 = 30;
const TASKS: &str = "32";

/// xorshift: deterministic "random" kill times, so a failure can be replayed.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.redb");
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    // Every ack ever seen: (machine, version) -> seq.
    let mut acked: BTreeMap<(String, u64), u64> = BTreeMap::new();
    let mut runs_with_acks = 0;
    let mut repaired = 0;

    for run in 0..RUNS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_store-crash-writer"))
            .args([path.to_str().unwrap(), &run.to_string(), TASKS])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        });
        let wait_ms = 30 + next(&mut rng) % 400;
        std::thread::sleep(Duration::from_millis(wait_ms));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(
            status.code().is_none(),
            "run {run}: child exited by itself ({status}) instead of being killed"
        );
        let lines = reader.join().unwrap();
        let before = acked.len();
        for line in &lines {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let ["ack", id, version, seq] = parts.as_slice() else {
                panic!("run {run}: unexpected line {line:?}");
            };
            acked.insert(
                (id.to_string(), version.parse().unwrap()),
                seq.parse().unwrap(),
            );
        }
        if acked.len() > before {
            runs_with_acks += 1;
        }

        // redb's own integrity check (after its crash repair) passes.
        let integrity = check_file_integrity(&path)
            .unwrap_or_else(|e| panic!("run {run}: integrity check: {e}"));
        assert!(
            integrity.passed,
            "run {run}: redb integrity check failed: {integrity:?}"
        );
        repaired += usize::from(integrity.repaired_on_open);

        let store = Store::open(&path, StoreOptions::default()).unwrap();
        let report = store.check().unwrap();
        assert!(report.is_ok(), "run {run}: {:?}", report.problems);
        let events = store.events_after(0, usize::MAX).unwrap();
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "run {run}: event log has a gap"
        );
        let machines: BTreeMap<String, berth_types::MachineRecord> = store
            .machines()
            .unwrap()
            .into_iter()
            .map(|m| (m.id.to_string(), m))
            .collect();
        let by_seq: BTreeMap<u64, &berth_types::Event> =
            events.iter().map(|e| (e.seq, e)).collect();
        for ((id, version), seq) in &acked {
            let ev = by_seq
                .get(seq)
                .unwrap_or_else(|| panic!("run {run}: acked seq {seq} ({id} v{version}) lost"));
            assert_eq!(
                (ev.machine_id.as_str(), ev.version),
                (id.as_str(), *version),
                "run {run}: seq {seq}"
            );
            let rec = machines
                .get(id.as_str())
                .unwrap_or_else(|| panic!("run {run}: acked machine {id} lost"));
            assert!(
                rec.version >= *version,
                "run {run}: {id} at v{} < acked v{version}",
                rec.version
            );
        }
        store.close();
    }
    assert!(
        runs_with_acks >= RUNS as usize * 3 / 4,
        "only {runs_with_acks} of {RUNS} runs acknowledged anything"
    );
    // SIGKILL leaves the file needing redb's repair; if it never did, the kills missed every write.
    assert!(
        repaired >= RUNS as usize / 2,
        "only {repaired} of {RUNS} kills left a file to repair"
    );
    assert!(
        acked.len() > 1000,
        "only {} writes acknowledged in all; the test proves little",
        acked.len()
    );
}

/// The compaction phases a SIGKILL can land in, in order; `done` is after the swap, with writes
/// going to the new file.
const PHASES: [&str; 9] = [
    "copy",
    "shrink",
    "catch-up",
    "swap",
    "new-file-durable",
    "renamed",
    "swapped",
    "released",
    "done",
];

#[test]
fn acknowledged_writes_survive_sigkill_in_every_compaction_phase() {
    for (run, phase) in PHASES.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.redb");
        let mut child = Command::new(env!("CARGO_BIN_EXE_store-crash-writer"))
            .args([path.to_str().unwrap(), &run.to_string(), "8", phase])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let marker = format!("phase {phase}");
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
                .unwrap_or_else(|_| {
                    let _ = child.kill();
                    panic!("{phase}: the compaction never reached the phase")
                });
            assert!(
                !line.starts_with("compaction"),
                "{phase}: {line} (the phase was never reached)"
            );
            let reached = line == marker;
            lines.push(line);
            if reached {
                break;
            }
        }
        // Let writers run on inside the phase (or on the new file, after it), then kill.
        std::thread::sleep(Duration::from_millis(150));
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(rx.try_iter());

        let mut acked: BTreeMap<u64, (String, u64)> = BTreeMap::new();
        for line in &lines {
            if let ["ack", id, version, seq] = line.split_whitespace().collect::<Vec<_>>()[..] {
                acked.insert(
                    seq.parse().unwrap(),
                    (id.to_owned(), version.parse().unwrap()),
                );
            }
        }
        assert!(acked.len() > 100, "{phase}: only {} acks", acked.len());

        let integrity = check_file_integrity(&path).unwrap();
        assert!(integrity.passed, "{phase}: {integrity:?}");
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        assert!(
            !dir.path().join("berth.redb.compact").exists(),
            "{phase}: the unfinished copy should be removed at open"
        );
        let report = store.check().unwrap();
        assert!(report.is_ok(), "{phase}: {:?}", report.problems);
        let events: BTreeMap<u64, berth_types::Event> = store
            .events_after(0, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|e| (e.seq, e))
            .collect();
        for (seq, (id, version)) in &acked {
            let ev = events
                .get(seq)
                .unwrap_or_else(|| panic!("{phase}: acked seq {seq} ({id} v{version}) lost"));
            assert_eq!(
                (ev.machine_id.as_str(), ev.version),
                (id.as_str(), *version)
            );
        }
        let swapped = store.stats().unwrap().last_compaction.is_some();
        // Before the swap the old file is kept; from the rename on, the new one is the file.
        // (`last_compaction` is written just after the swap, so only `done` is sure to have it.)
        if *phase == "done" {
            assert!(swapped, "{phase}: the finished compaction is not recorded");
        }
        store.close();
    }
}
