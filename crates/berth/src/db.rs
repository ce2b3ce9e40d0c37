//! `berth db stats|compact|check|slow-ops|backup`, through the agent or `--offline`.

use std::path::Path;

use crate::cli::{Cli, DbCmd, Fail, Out, print_json};
use crate::offline::{offline_check, offline_db, offline_store};
use crate::render;

pub(crate) async fn run(cli: &Cli, cmd: &DbCmd) -> Result<(), Fail> {
    match cmd {
        DbCmd::Stats { out, offline } => stats(cli, out, *offline).await,
        DbCmd::Compact { offline, out } => compact(cli, out, *offline).await,
        DbCmd::Check {
            offline,
            repair,
            out,
        } => check(cli, out, *offline, *repair).await,
        DbCmd::SlowOps { out } => {
            let ops = cli.client()?.slow_ops().await?;
            if out.json {
                print_json(&ops)
            } else {
                println!("{}", render::slow_ops(&ops))
            }
            Ok(())
        }
        DbCmd::Backup { file, offline } => backup(cli, file, *offline).await,
    }
}

async fn stats(cli: &Cli, out: &Out, offline: bool) -> Result<(), Fail> {
    let v = if offline {
        let st = offline_db(cli)?
            .stats()
            .map_err(|e| Fail(1, e.to_string()))?;
        berth_agent::wire::db_stats(st)
    } else {
        cli.client()?.db_stats().await?
    };
    if out.json {
        print_json(&v)
    } else {
        println!("{}", render::db_stats(&v))
    }
    Ok(())
}

async fn compact(cli: &Cli, out: &Out, offline: bool) -> Result<(), Fail> {
    let report = if offline {
        let store = offline_store(cli)?;
        let report = tokio::task::spawn_blocking(move || store.compact())
            .await
            .map_err(|e| Fail(1, e.to_string()))?
            .map_err(|e| Fail(1, e.to_string()))?;
        berth_agent::wire::compaction_report(report)
    } else {
        cli.client()?.compact().await?
    };
    if out.json {
        print_json(&report);
    } else {
        println!("compacted: {}", render::compaction(&report));
    }
    Ok(())
}

async fn check(cli: &Cli, out: &Out, offline: bool, repair: bool) -> Result<(), Fail> {
    let v = if offline {
        offline_check(cli, repair)?
    } else {
        cli.client()?.db_check().await?
    };
    if out.json {
        print_json(&v);
    } else {
        println!("{}", render::db_check(&v, offline));
    }
    if v.ok {
        Ok(())
    } else {
        Err(Fail(1, "the check found problems".into()))
    }
}

async fn backup(cli: &Cli, file: &Path, offline: bool) -> Result<(), Fail> {
    if file.exists() {
        return Err(Fail(
            1,
            format!("{} exists; choose a new file", file.display()),
        ));
    }
    if offline {
        let rows = offline_db(cli)?
            .backup_to(file)
            .map_err(|e| Fail(1, e.to_string()))?;
        println!("wrote {} ({rows} rows)", file.display());
    } else {
        // Streamed to the file as it arrives: a backup is never held in memory whole.
        let fail = |e: std::io::Error| Fail(1, format!("writing {}: {e}", file.display()));
        let mut out = std::fs::File::create_new(file).map_err(fail)?;
        let (mut bytes, mut error) = (0u64, None);
        let streamed = cli
            .client()?
            .stream("/v1/db/backup", |chunk| {
                if error.is_none() {
                    bytes += chunk.len() as u64;
                    error = std::io::Write::write_all(&mut out, chunk).err();
                }
            })
            .await;
        if let Some(e) = error.or_else(|| out.sync_all().err()) {
            let _ = std::fs::remove_file(file);
            return Err(fail(e));
        }
        if let Err(e) = streamed {
            let _ = std::fs::remove_file(file);
            return Err(e.into());
        }
        println!("wrote {} ({bytes} bytes)", file.display());
    }
    Ok(())
}
