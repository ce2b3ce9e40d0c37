//! `berth host status|health|cordon|uncordon|approve` and `berth doctor`.

use crate::cli::{Cli, Fail, HostCmd, print_json};
use crate::render;

pub(crate) async fn run(cli: &Cli, cmd: &HostCmd) -> Result<(), Fail> {
    let c = cli.client()?;
    match cmd {
        HostCmd::Status { out } => {
            let h = c.host().await?;
            if out.json {
                print_json(&h)
            } else {
                let health = c.health().await?;
                println!("{}", render::host(&h, &health))
            }
        }
        HostCmd::Health { out } => {
            let health = c.health().await?;
            if out.json {
                print_json(&health)
            } else {
                println!("{}", render::health(&health))
            }
            if health.status != "ok" {
                let failing = render::failing(&health);
                return Err(Fail(1, format!("the host is {}: {failing}", health.status)));
            }
        }
        HostCmd::Cordon => {
            c.set_cordon(true).await?;
            println!("host cordoned: new machines are refused; existing ones keep running");
        }
        HostCmd::Uncordon => {
            c.set_cordon(false).await?;
            println!("host uncordoned: new machines are accepted");
        }
        HostCmd::Approve { out } => {
            let r = c.approve().await?;
            if out.json {
                print_json(&r)
            } else {
                println!("{}", render::approve(&r))
            }
        }
    }
    Ok(())
}

/// Compares the database with the live processes; exits 1 on any disagreement. It asks the
/// agent for a reconciliation pass now (what the pass finds it corrects, as the periodic one
/// would), so what it reports is this moment's, not the last periodic pass's; if the pass
/// cannot be run, the last one is reported and that is said.
pub(crate) async fn doctor(cli: &Cli, json: bool) -> Result<(), Fail> {
    let c = cli.client()?;
    let fresh = c.reconcile(false).await;
    let host = c.host().await?;
    let machines = c.list(None, false).await?;
    let report = match fresh {
        Ok(pass) => render::doctor(&host, &machines, Some(pass)),
        Err(e) => {
            eprintln!("berth: could not run a reconciliation pass now ({e}); showing the last one");
            render::doctor(&host, &machines, None)
        }
    };
    if json {
        print_json(&report)
    } else {
        println!("{}", render::doctor_text(&report))
    }
    if !report.problems.is_empty() {
        return Err(Fail(1, "doctor found problems".into()));
    }
    Ok(())
}
