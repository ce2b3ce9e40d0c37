//! Dead machines leave no series: 10,000 machines are created, started, stopped and destroyed
//! through the real store, and the agent's metrics (the real Prometheus exporter plus the
//! per-machine series) are scraped along the way. After every round the number of series is back
//! to its baseline and no `machine_id` is left.
//!
//! This binary installs the global metrics recorder, so it holds a single test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use berth_agent::Telemetry;
use berth_driver::{CgroupMode, Driver, DriverConfig};
use berth_store::{Store, StoreOptions, TransitionSpec};
use berth_types::{EventKind, MachineConfig, MachineId, MachineRecord, Source, State, Timestamp};

const CYCLES: usize = 10_000;
const PER_ROUND: usize = 250;

/// Sample lines (series) of a scrape.
fn series(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

fn step(to: State) -> TransitionSpec {
    TransitionSpec::new(to, EventKind::Start, Source::User, "test")
}

/// Creates and starts `ids` (the workload pid is this test process, whose usage is real).
async fn start_all(store: &Store, ids: &[MachineId]) {
    let pid = std::process::id();
    let mut tasks = Vec::new();
    for id in ids {
        let (store, id) = (store.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            store
                .write(move |w| {
                    let rec = MachineRecord::new(
                        id.clone(),
                        None,
                        MachineConfig::command(["/bin/sleep", "1"]),
                        Default::default(),
                        Timestamp::now(),
                    );
                    w.create_machine(rec, Source::User, "test")?;
                    w.transition(&id, step(State::Starting))?;
                    w.transition(&id, step(State::Started).with_pid(Some(pid)))
                })
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Moves every machine of `ids` through `path`.
async fn move_all(store: &Store, ids: &[MachineId], path: &'static [State]) {
    let mut tasks = Vec::new();
    for id in ids {
        let (store, id) = (store.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            store
                .write(move |w| {
                    for to in path {
                        w.transition(&id, step(*to))?;
                    }
                    Ok(())
                })
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_return_to_baseline_after_ten_thousand_machines() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(berth_agent::telemetry::BUCKETS)
        .unwrap()
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).unwrap();
    berth_agent::telemetry::describe();

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("berth.redb"), StoreOptions::default()).unwrap();
    let mut dcfg = DriverConfig::new(dir.path().join("machines"));
    dcfg.cgroup = CgroupMode::Off;
    let driver = Arc::new(Driver::new(dcfg).unwrap());
    let telemetry = Telemetry::new(store.clone(), driver).unwrap();
    let scrape = || telemetry.render(|| handle.render());

    // A warm-up round uses every label value the cycles use; the baseline is taken after it.
    let warm: Vec<MachineId> = (0..4)
        .map(|i| MachineId::parse(&format!("warm-{i}")).unwrap())
        .collect();
    start_all(&store, &warm).await;
    move_all(
        &store,
        &warm,
        &[
            State::Stopping,
            State::Stopped,
            State::Destroying,
            State::Destroyed,
        ],
    )
    .await;
    let first = scrape();
    let baseline = series(&first).len();
    assert!(!first.contains("machine_id"), "{first}");

    let start = Instant::now();
    for round in 0..CYCLES / PER_ROUND {
        let ids: Vec<MachineId> = (0..PER_ROUND)
            .map(|i| MachineId::parse(&format!("m{round}-{i}")).unwrap())
            .collect();
        start_all(&store, &ids).await;
        telemetry.sample_machines();
        let text = scrape();
        // Each started machine: up, restarts, cpu, memory.
        assert_eq!(
            series(&text).len(),
            baseline + 4 * PER_ROUND,
            "round {round}: started machines"
        );
        let one = ids[round % PER_ROUND].as_str();
        for name in [
            "berth_machine_up",
            "berth_machine_restarts_total",
            "berth_machine_cpu_seconds_total",
            "berth_machine_memory_bytes",
        ] {
            assert!(
                text.contains(&format!("{name}{{machine_id=\"{one}\"}}")),
                "round {round}: {name} of {one} missing"
            );
        }
        if round % 2 == 0 {
            // Stopped: its CPU and memory series are gone at once, up is 0, restarts stays.
            move_all(&store, &ids, &[State::Stopping, State::Stopped]).await;
            telemetry.sample_machines();
            let text = scrape();
            assert_eq!(
                series(&text).len(),
                baseline + 2 * PER_ROUND,
                "round {round}: stopped machines"
            );
            assert!(text.contains(&format!("berth_machine_up{{machine_id=\"{one}\"}} 0")));
            assert!(!text.contains("berth_machine_cpu_seconds_total{"));
            assert!(!text.contains("berth_machine_memory_bytes{"));
            move_all(&store, &ids, &[State::Destroying, State::Destroyed]).await;
        } else {
            move_all(&store, &ids, &[State::Destroying, State::Destroyed]).await;
        }
        // A sample racing with the destroy must not bring anything back.
        telemetry.sample_machines();
        let text = scrape();
        assert!(
            !text.contains("machine_id"),
            "round {round}: a destroyed machine left a series"
        );
        assert_eq!(series(&text).len(), baseline, "round {round}: baseline");
        assert_eq!(telemetry.tracked(), 0);
    }
    let text = scrape();
    assert_eq!(series(&text).len(), baseline);
    assert!(text.contains(&format!(
        "berth_machine_transitions_total{{to=\"destroyed\"}} {}",
        CYCLES + warm.len()
    )));
    eprintln!(
        "{CYCLES} machines created, started and destroyed in {:.1?}",
        start.elapsed()
    );
}
