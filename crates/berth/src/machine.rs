//! `berth machine ...`: list, status, create, start, stop, restart, destroy, wait, events
//! (update, versions and rollback are in `update.rs`).

use berth_api_types::{CreateMachine, StopRequest};
use berth_types::time::HumanDuration;
use berth_types::{MachineConfig, MachineRecord, RestartConfig, RestartPolicy, State};

use crate::cli::{Cli, CreateArgs, Fail, LifecycleArgs, MachineCmd, kv, print_json};
use crate::{outcome, render, resolve};

pub(crate) fn show(m: &MachineRecord, json: bool) {
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
            let id = &resolve::machine_id(&c, id).await?;
            let m = c.get(id).await?;
            let events = c.machine_events(id).await?;
            if out.json {
                print_json(&serde_json::json!({ "machine": m, "events": events }));
            } else {
                println!("{}", render::status(&m, &events));
            }
        }
        MachineCmd::Create(a) => {
            let m = c.create(&create_request(a)?, None).await?;
            let m = outcome::started(&c, m).await?;
            let m = if a.wait_healthy {
                c.wait_healthy(m.id.as_str(), "5m").await?
            } else {
                m
            };
            show(&m, a.out.json)
        }
        MachineCmd::Start(a) => {
            let id = resolve::machine_id(&c, &a.id).await?;
            let m = c.action(&id, "start").await?;
            show(&outcome::started(&c, m).await?, a.out.json)
        }
        MachineCmd::Restart(a) => {
            let id = resolve::machine_id(&c, &a.id).await?;
            show(&c.action(&id, "restart").await?, a.out.json)
        }
        MachineCmd::Stop(a) => {
            let id = resolve::machine_id(&c, &a.id).await?;
            let r = c.stop(&id, &stop_request(a)?).await;
            let quiet = [State::Stopped, State::Failed, State::Created];
            show(
                &outcome::idempotent(&c, &id, "stop", &quiet, r).await?,
                a.out.json,
            )
        }
        MachineCmd::Destroy(a) => {
            let id = resolve::machine_id(&c, &a.id).await?;
            let r = c.destroy(&id, a.force).await;
            let done = [State::Destroyed];
            show(
                &outcome::idempotent(&c, &id, "destroy", &done, r).await?,
                a.out.json,
            )
        }
        MachineCmd::Wait { id, state, timeout } => {
            let id = &resolve::machine_id(&c, id).await?;
            let m = c.wait(id, state, timeout).await?;
            println!("{}", render::machine_line(&m));
        }
        MachineCmd::Update(a) => crate::update::update(&c, a).await?,
        MachineCmd::Versions { id, out } => {
            let id = &resolve::machine_id(&c, id).await?;
            let versions = c.versions(id).await?;
            if out.json {
                print_json(&versions)
            } else {
                println!("{}", render::versions(&versions))
            }
        }
        MachineCmd::Rollback { id, to, out } => {
            crate::update::rollback(&c, id, *to, out.json).await?
        }
        MachineCmd::Events { id, out } => {
            let id = &resolve::machine_id(&c, id).await?;
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
    let policy = restart_policy(&a.restart)?;
    let mut config = MachineConfig::command(a.cmd.clone());
    config.env = kv(&a.env, "--env")?;
    config.restart = RestartConfig {
        policy,
        max_retries: None,
    };
    config.resources.memory_mb = a.memory;
    for c in &a.check {
        let (name, spec) = check_spec(c)?;
        config.checks.insert(name, spec);
    }
    Ok(CreateMachine {
        name: a.name.clone(),
        config,
        metadata: kv(&a.metadata, "--metadata")?,
        skip_start: a.skip_start,
    })
}

/// A `--check NAME=SPEC` value: `http:PORT[/PATH]`, `tcp:PORT`, or the check's JSON. The
/// agent validates the rest (400 naming the field).
fn check_spec(arg: &str) -> Result<(String, berth_types::CheckConfig), Fail> {
    let bad = |why: String| Fail(2, format!("--check {arg:?}: {why}"));
    let (name, spec) = arg
        .split_once('=')
        .ok_or_else(|| bad("must be NAME=SPEC".into()))?;
    let json = if spec.trim_start().starts_with('{') {
        serde_json::from_str(spec).map_err(|e| bad(format!("invalid JSON: {e}")))?
    } else {
        let (kind, rest) = spec
            .split_once(':')
            .ok_or_else(|| bad("SPEC is http:PORT[/PATH], tcp:PORT or JSON".into()))?;
        let (port, path) = match rest.split_once('/') {
            Some((p, path)) => (p, Some(format!("/{path}"))),
            None => (rest, None),
        };
        let port: u16 = port
            .parse()
            .map_err(|_| bad(format!("{port:?} is not a port")))?;
        let mut v = serde_json::json!({"type": kind, "port": port});
        if let Some(path) = path {
            v["path"] = serde_json::Value::String(path);
        }
        v
    };
    let spec = serde_json::from_value(json).map_err(|e| bad(e.to_string()))?;
    Ok((name.to_owned(), spec))
}

/// A `--restart` value.
pub(crate) fn restart_policy(p: &str) -> Result<RestartPolicy, Fail> {
    match p {
        "no" => Ok(RestartPolicy::No),
        "on-failure" => Ok(RestartPolicy::OnFailure),
        "always" => Ok(RestartPolicy::Always),
        other => Err(Fail(
            2,
            format!("--restart {other:?}: expected no, on-failure or always"),
        )),
    }
}

fn stop_request(a: &LifecycleArgs) -> Result<StopRequest, Fail> {
    let timeout = match &a.timeout {
        Some(t) => Some(HumanDuration::parse(t).map_err(|e| Fail(2, format!("--timeout: {e}")))?),
        None => None,
    };
    Ok(StopRequest {
        signal: a.signal.clone(),
        timeout,
    })
}
