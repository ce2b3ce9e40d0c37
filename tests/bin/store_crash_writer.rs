//! Crash-test child: commits transitions from many concurrent tasks until it is killed.
//!
//! Usage: `store-crash-writer DB_PATH RUN_ID TASKS [COMPACT_AT]`. After each acknowledged write it
//! prints `ack MACHINE_ID VERSION SEQ` on stdout, so the parent knows exactly what was
//! acknowledged before the SIGKILL.
//!
//! With `COMPACT_AT` (a compaction phase name, or `done`), it starts an online compaction after a
//! short while; when the compaction reaches that phase it prints `phase NAME` and stays there
//! forever (writers keep going unless the phase holds the writer thread), so the parent can kill
//! it in exactly that phase. `done` lets the compaction finish and keeps writing to the new file.

use std::io::Write;

use berth_store::{Store, StoreOptions, TransitionSpec};
use berth_types::{EventKind, MachineConfig, MachineId, MachineRecord, Source, State, Timestamp};

const CYCLE: [State; 4] = [
    State::Starting,
    State::Started,
    State::Stopping,
    State::Stopped,
];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().collect();
    let (path, run, tasks, compact_at) = match args.as_slice() {
        [_, path, run, tasks] => (path, run, tasks, None),
        [_, path, run, tasks, at] => (path, run, tasks, Some(at.clone())),
        _ => return Err("usage: store-crash-writer DB_PATH RUN_ID TASKS [COMPACT_AT]".into()),
    };
    let tasks: usize = tasks.parse()?;
    let mut options = StoreOptions::default();
    if let Some(at) = compact_at.clone() {
        options.compaction_hook = Some(std::sync::Arc::new(move |phase: &str| {
            if phase == at {
                say(&format!("phase {phase}"));
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(3600));
                }
            }
        }));
    }
    let store = Store::open(path, options)?;
    if let Some(at) = compact_at {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let result = tokio::task::spawn_blocking(move || store.compact()).await;
            match result {
                Ok(Ok(_)) if at == "done" => say("phase done"),
                Ok(Ok(_)) => say("compaction finished without reaching the phase"),
                Ok(Err(e)) => say(&format!("compaction failed: {e}")),
                Err(e) => say(&format!("compaction panicked: {e}")),
            }
        });
    }
    let mut handles = Vec::new();
    for t in 0..tasks {
        let store = store.clone();
        let run = run.clone();
        handles.push(tokio::spawn(async move {
            for n in 0u64.. {
                let id = MachineId::parse(&format!("r{run}-t{t}-{n}"))?;
                let rec = MachineRecord::new(
                    id.clone(),
                    None,
                    MachineConfig::command(["/bin/true"]),
                    Default::default(),
                    Timestamp::now(),
                );
                let ev = store
                    .write(move |w| w.create_machine(rec, Source::User, "crash test"))
                    .await?;
                ack(&ev);
                for to in CYCLE.iter().cycle().take(8) {
                    let (id, to) = (id.clone(), *to);
                    let ev = store
                        .write(move |w| {
                            w.transition(
                                &id,
                                TransitionSpec::new(
                                    to,
                                    EventKind::Start,
                                    Source::Berth,
                                    "crash test",
                                ),
                            )
                        })
                        .await?;
                    ack(&ev);
                }
            }
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    for h in handles {
        h.await??;
    }
    Ok(())
}

fn ack(ev: &berth_types::Event) {
    say(&format!("ack {} {} {}", ev.machine_id, ev.version, ev.seq));
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // The parent reads these lines; if it has gone, there is nobody left to tell.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
