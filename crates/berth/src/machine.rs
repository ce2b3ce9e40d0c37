//! `berth machine ...`: list, status, create, start, stop, restart, destroy, wait, events
//! (update, versions and rollback are in `update.rs`).

use berth_api_types::{CreateMachine, ExecRequest, StopRequest};
use berth_client::Client;
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
    let c = &cli.client()?;
    match cmd {
        MachineCmd::List {
            state,
            quiet,
            all,
            out,
        } => list(c, state.as_deref(), *quiet, *all, out.json).await?,
        MachineCmd::Status { id, out } => status(c, id, out.json).await?,
        MachineCmd::Stats { id, out } => stats(c, id.as_deref(), out.json).await?,
        MachineCmd::Create(a) => create(c, a).await?,
        MachineCmd::Start(a) => {
            for_each(&a.id, &a.more, a.out.json, async |id| {
                let m = c
                    .action(&resolve::machine_id(c, id).await?, "start")
                    .await?;
                outcome::started(c, m).await
            })
            .await?
        }
        MachineCmd::Restart(a) => {
            for_each(&a.id, &a.more, a.out.json, async |id| {
                Ok(c.action(&resolve::machine_id(c, id).await?, "restart")
                    .await?)
            })
            .await?
        }
        MachineCmd::Stop(a) => {
            let req = stop_request(a)?;
            for_each(&a.id, &a.more, a.out.json, async |id| {
                let id = resolve::machine_id(c, id).await?;
                let r = c.stop(&id, &req).await;
                let quiet = [State::Stopped, State::Failed, State::Created];
                outcome::idempotent(c, &id, "stop", &quiet, r).await
            })
            .await?
        }
        MachineCmd::Destroy(a) => {
            for_each(&a.id, &a.more, a.out.json, async |id| {
                let id = resolve::machine_id(c, id).await?;
                let r = c.destroy(&id, a.force).await;
                outcome::idempotent(c, &id, "destroy", &[State::Destroyed], r).await
            })
            .await?
        }
        MachineCmd::Signal { id, signal, out } => {
            let id = resolve::machine_id(c, id).await?;
            show(&c.signal(&id, signal).await?, out.json)
        }
        MachineCmd::Wait { id, state, timeout } => {
            let id = &resolve::machine_id(c, id).await?;
            println!(
                "{}",
                render::machine_line(&c.wait(id, state, timeout).await?)
            );
        }
        MachineCmd::Update(a) => crate::update::update(c, a).await?,
        MachineCmd::Versions { id, out } => versions(c, id, out.json).await?,
        MachineCmd::Rollback { id, to, out } => {
            crate::update::rollback(c, id, *to, out.json).await?
        }
        MachineCmd::Events { id, out } => events(c, id, out.json).await?,
        MachineCmd::Exec {
            id,
            timeout,
            json,
            cmd,
        } => return exec(c, id, timeout.as_deref(), *json, cmd).await,
    }
    Ok(())
}

/// `berth machine ls`: a table, the ids alone (`-q`) or JSON.
async fn list(
    c: &Client,
    state: Option<&str>,
    quiet: bool,
    all: bool,
    json: bool,
) -> Result<(), Fail> {
    let ms = c.list(state, all).await?;
    if json {
        print_json(&ms);
    } else if quiet {
        for m in &ms {
            println!("{}", m.id);
        }
    } else {
        println!("{}", render::machines(&ms));
    }
    Ok(())
}

/// `berth machine status`: the machine, its event log, and beside them its usage and lease.
async fn status(c: &Client, id: &str, json: bool) -> Result<(), Fail> {
    let id = &resolve::machine_id(c, id).await?;
    let m = c.get(id).await?;
    let events = c.machine_events(id).await?;
    // Read beside the machine; each is shown as unknown when it cannot be read, and does not
    // fail the command: the machine and its log are what was asked for.
    let extras = render::StatusExtras {
        stats: c.stats(id).await.ok(),
        lease: c.lease(id).await.ok(),
    };
    if json {
        print_json(&serde_json::json!({
            "machine": m,
            "events": events,
            "stats": extras.stats,
            "lease": extras.lease.clone().flatten(),
        }));
    } else {
        println!("{}", render::status(&m, &events, &extras));
    }
    Ok(())
}

/// `berth machine stats [ID]`: one machine's usage, or every running machine's.
async fn stats(c: &Client, id: Option<&str>, json: bool) -> Result<(), Fail> {
    let ids = match id {
        Some(id) => vec![resolve::machine_id(c, id).await?],
        None => c
            .list(None, false)
            .await?
            .into_iter()
            .filter(|m| m.state.expects_process())
            .map(|m| m.id.to_string())
            .collect(),
    };
    let mut all = Vec::with_capacity(ids.len());
    for one in &ids {
        match c.stats(one).await {
            Ok(s) => all.push(s),
            // Destroyed between the list and now: no longer a machine to show.
            Err(e) if id.is_none() && e.code() == Some("not_found") => {}
            Err(e) => return Err(e.into()),
        }
    }
    match (json, id) {
        (true, Some(_)) => print_json(&all[0]),
        (true, None) => print_json(&all),
        (false, _) => println!("{}", render::stats(&all)),
    }
    Ok(())
}

/// `berth machine create`: the machine once started (exit 1 with the reason if it failed),
/// and with `--wait-healthy` once its checks pass.
async fn create(c: &Client, a: &CreateArgs) -> Result<(), Fail> {
    let m = c.create(&create_request(a)?, None).await?;
    let m = outcome::started(c, m).await?;
    let m = if a.wait_healthy {
        c.wait_healthy(m.id.as_str(), "5m").await?
    } else {
        m
    };
    show(&m, a.out.json);
    Ok(())
}

/// `berth machine versions`.
async fn versions(c: &Client, id: &str, json: bool) -> Result<(), Fail> {
    let versions = c.versions(&resolve::machine_id(c, id).await?).await?;
    if json {
        print_json(&versions)
    } else {
        println!("{}", render::versions(&versions))
    }
    Ok(())
}

/// `berth machine events`.
async fn events(c: &Client, id: &str, json: bool) -> Result<(), Fail> {
    let events = c.machine_events(&resolve::machine_id(c, id).await?).await?;
    if json {
        print_json(&events)
    } else {
        println!("{}", render::events(&events))
    }
    Ok(())
}

/// A lifecycle command's machines (`first`, then `more`), each handled by `one` in turn and
/// its result shown; the command fails with the worst exit code seen.
async fn for_each(
    first: &str,
    more: &[String],
    json: bool,
    one: impl AsyncFn(&str) -> Result<MachineRecord, Fail>,
) -> Result<(), Fail> {
    let mut each = Each::default();
    for id in std::iter::once(first).chain(more.iter().map(String::as_str)) {
        each.record(one(id).await, json);
    }
    each.result()
}

/// `berth machine exec`: the command's output on stdout and stderr, a note on stderr when it
/// was cut or timed out, and its exit code as berth's.
async fn exec(
    c: &Client,
    id: &str,
    timeout: Option<&str>,
    json: bool,
    cmd: &[String],
) -> Result<(), Fail> {
    use std::io::Write as _;
    let id = resolve::machine_id(c, id).await?;
    let timeout = match timeout {
        Some(t) => Some(HumanDuration::parse(t).map_err(|e| Fail(2, format!("--timeout: {e}")))?),
        None => None,
    };
    let req = ExecRequest {
        cmd: cmd.to_vec(),
        timeout,
        stdin: None,
    };
    let r = c.exec(&id, &req).await?;
    if json {
        print_json(&r);
    } else {
        let _ = std::io::stdout().write_all(r.stdout.as_bytes());
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().write_all(r.stderr.as_bytes());
        for (cut, what) in [
            (r.stdout_truncated, "stdout"),
            (r.stderr_truncated, "stderr"),
        ] {
            if cut {
                eprintln!("berth: {what} truncated at {} bytes", r.output_limit);
            }
        }
        if r.timed_out {
            eprintln!("berth: the command timed out and was killed");
        }
    }
    match u8::try_from(r.exit_code) {
        Ok(0) => Ok(()),
        Ok(code) => Err(Fail(code, String::new())),
        Err(_) => Err(Fail(1, format!("exit code {}", r.exit_code))),
    }
}

/// The create request `berth machine create` sends.
fn create_request(a: &CreateArgs) -> Result<CreateMachine, Fail> {
    let policy = restart_policy(&a.restart)?;
    let mut config = MachineConfig::command(a.cmd.clone());
    config.env = kv(&a.env, "--env")?;
    config.image = a.image.clone();
    config.user = a.user.clone();
    config.mounts = a
        .volume
        .iter()
        .map(|v| volume_arg(v))
        .collect::<Result<_, _>>()?;
    config.restart = RestartConfig {
        policy,
        max_retries: None,
    };
    config.resources.memory_mb = a.memory;
    for c in &a.check {
        let (name, spec) = check_spec(c)?;
        config.checks.insert(name, spec);
    }
    crate::config_flags::apply(&a.config, &mut config)?;
    Ok(CreateMachine {
        name: a.name.clone(),
        config,
        metadata: kv(&a.metadata, "--metadata")?,
        skip_start: a.skip_start,
    })
}

/// `--volume NAME:PATH[:ro]`.
fn volume_arg(v: &str) -> Result<berth_types::workload::MountConfig, Fail> {
    let bad = || {
        Fail(
            2,
            format!("--volume {v:?}: expected NAME:PATH or NAME:PATH:ro"),
        )
    };
    let (volume, rest) = v.split_once(':').ok_or_else(bad)?;
    let (path, read_only) = match rest.rsplit_once(':') {
        Some((p, "ro")) => (p, true),
        Some((p, "rw")) => (p, false),
        _ => (rest, false),
    };
    if volume.is_empty() || path.is_empty() {
        return Err(bad());
    }
    Ok(berth_types::workload::MountConfig {
        volume: volume.to_owned(),
        path: path.to_owned(),
        read_only,
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

/// A lifecycle command given several machines: each is handled in turn, its result shown (or its
/// error printed), and the command fails with the worst exit code seen.
#[derive(Default)]
struct Each {
    worst: Option<Fail>,
}

impl Each {
    fn record(&mut self, r: Result<MachineRecord, Fail>, json: bool) {
        match r {
            Ok(m) => show(&m, json),
            Err(f) => {
                if let Some(prev) = self.worst.take() {
                    eprintln!("berth: {}", prev.1);
                    self.worst = Some(if prev.0 >= f.0 { Fail(prev.0, f.1) } else { f });
                } else {
                    self.worst = Some(f);
                }
            }
        }
    }

    fn result(self) -> Result<(), Fail> {
        match self.worst {
            None => Ok(()),
            Some(f) => Err(f),
        }
    }
}
