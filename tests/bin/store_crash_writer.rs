//! Crash-test child: commits transitions from many concurrent tasks until it is killed.
//!
//! Usage: `store-crash-writer DB_PATH RUN_ID TASKS`. After each acknowledged write it prints
//! `ack MACHINE_ID VERSION SEQ` on stdout, so the parent knows exactly what was acknowledged
//! before the SIGKILL.

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
    let [_, path, run, tasks] = args.as_slice() else {
        return Err("usage: store-crash-writer DB_PATH RUN_ID TASKS".into());
    };
    let tasks: usize = tasks.parse()?;
    let store = Store::open(path, StoreOptions::default())?;
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
    let mut out = std::io::stdout().lock();
    // The parent reads these lines; if it has gone, there is nobody left to tell.
    let _ = writeln!(out, "ack {} {} {}", ev.machine_id, ev.version, ev.seq);
    let _ = out.flush();
}
