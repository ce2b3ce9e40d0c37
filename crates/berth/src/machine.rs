//! `berth machine ...`: list, status, create, start, stop, restart, destroy, wait, events.

use berth_api_types::{CreateMachine, StopRequest};
use berth_client::Client;
use berth_types::time::HumanDuration;
use berth_types::{MachineConfig, MachineRecord, RestartConfig, RestartPolicy};

use crate::cli::{Cli, CreateArgs, Fail, LifecycleArgs, MachineCmd, kv, print_json};
use crate::render;

fn show(m: &MachineRecord, json: bool) {
    if json {
        print_json(m)
    } else {
        println!("{}", render::machine_line(m))
    }
}

pub(crate) async fn run(cli: &Cli, cmd: &MachineCmd) -> Result<(), Fail> {
    let c = cli.client()?;
    match cmd {
        MachineCmd::List {
            state,
            quiet,
            all,
            out,
        } => {
            let ms = c.list(state.as_deref(), *all).await?;
            if out.json {
                print_json(&ms);
            } else if *quiet {
                for m in &ms {
                    println!("{}", m.id);
                }
            } else {
                println!("{}", render::machines(&ms));
            }
        }
        MachineCmd::Status { id, out } => {
            let m = c.get(id).await?;
            let events = c.machine_events(id).await?;
            if out.json {
                print_json(&serde_json::json!({ "machine": m, "events": events }));
            } else {
                println!("{}", render::status(&m, &events));
            }
        }
        MachineCmd::Create(a) => show(&c.create(&create_request(a)?, None).await?, a.out.json),
        MachineCmd::Start(a) => show(&c.action(&a.id, "start").await?, a.out.json),
        MachineCmd::Restart(a) => show(&c.action(&a.id, "restart").await?, a.out.json),
        MachineCmd::Stop(a) => show(&stop(&c, a).await?, a.out.json),
        MachineCmd::Destroy(a) => show(&c.destroy(&a.id, a.force).await?, a.out.json),
        MachineCmd::Wait { id, state, timeout } => {
            let m = c.wait(id, state, timeout).await?;
            println!("{}", render::machine_line(&m));
        }
        MachineCmd::Events { id, out } => {
            let events = c.machine_events(id).await?;
            if out.json {
                print_json(&events)
            } else {
                println!("{}", render::events(&events))
            }
        }
    }
    Ok(())
}

/// The create request `berth machine create` sends.
fn create_request(a: &CreateArgs) -> Result<CreateMachine, Fail> {
    let policy = match a.restart.as_str() {
        "no" => RestartPolicy::No,
        "on-failure" => RestartPolicy::OnFailure,
        "always" => RestartPolicy::Always,
        other => {
            return Err(Fail(
                2,
                format!("--restart {other:?}: expected no, on-failure or always"),
            ));
        }
    };
    let mut config = MachineConfig::command(a.cmd.clone());
    config.env = kv(&a.env, "--env")?;
    config.restart = RestartConfig {
        policy,
        max_retries: None,
    };
    config.resources.memory_mb = a.memory;
    Ok(CreateMachine {
        name: a.name.clone(),
        config,
        metadata: kv(&a.metadata, "--metadata")?,
        skip_start: a.skip_start,
    })
}

async fn stop(c: &Client, a: &LifecycleArgs) -> Result<MachineRecord, Fail> {
    let timeout = match &a.timeout {
        Some(t) => Some(HumanDuration::parse(t).map_err(|e| Fail(2, format!("--timeout: {e}")))?),
        None => None,
    };
    let req = StopRequest {
        signal: a.signal.clone(),
        timeout,
    };
    Ok(c.stop(&a.id, &req).await?)
}
