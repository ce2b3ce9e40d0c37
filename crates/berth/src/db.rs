//! `berth db stats|compact|check|slow-ops|backup`, through the agent or `--offline`.

use std::path::Path;

use crate::cli::{Cli, DbCmd, Fail, Out, print_json};
use crate::offline::{offline_check, offline_db, offline_store};
use crate::progress::{self, Progress};
use crate::render;
use berth_api_types::{CompactionReport, DbStats};
use berth_client::Client;

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
        DbCmd::Backup { file, offline, out } => backup(cli, file, *offline, out.json).await,
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
        online_compact(&cli.client()?, out.json).await?
    };
    if out.json {
        print_json(&report);
    } else {
        println!("compacted: {}", render::compaction(&report));
    }
    Ok(())
}

/// How often a compaction's progress is asked for.
const POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// `POST /v1/db/compact`, and on a terminal meanwhile its phase, rows copied and catch-up
/// rounds, read from `GET /v1/db/stats`.
async fn online_compact(c: &Client, json: bool) -> Result<CompactionReport, Fail> {
    let progress = Progress::spinner(json, "compacting");
    let compact = c.compact();
    tokio::pin!(compact);
    loop {
        tokio::select! {
            r = &mut compact => return Ok(r?),
            () = tokio::time::sleep(POLL), if progress.shown() => {
                if let Ok(DbStats { compaction: Some(p), .. }) = c.db_stats().await {
                    progress.say(format!(
                        "compacting: {}, {} rows copied, {} catch-up rounds",
                        p.phase, p.rows_copied, p.catch_up_rounds
                    ));
                }
            }
        }
    }
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

async fn backup(cli: &Cli, file: &Path, offline: bool, json: bool) -> Result<(), Fail> {
    if file.exists() {
        return Err(Fail(
            1,
            format!("{} exists; choose a new file", file.display()),
        ));
    }
    let (rows, bytes) = if offline {
        let rows = offline_db(cli)?
            .backup_to(file)
            .map_err(|e| Fail(1, e.to_string()))?;
        (Some(rows), std::fs::metadata(file).map(|m| m.len()).ok())
    } else {
        (None, Some(online_backup(&cli.client()?, file, json).await?))
    };
    if json {
        print_json(&serde_json::json!({"file": file, "bytes": bytes, "rows": rows}));
    } else if let Some(rows) = rows {
        println!("wrote {} ({rows} rows)", file.display());
    } else {
        println!("wrote {} ({} bytes)", file.display(), bytes.unwrap_or(0));
    }
    Ok(())
}

/// `GET /v1/db/backup` streamed into `file` as it arrives (a backup is never held in memory
/// whole), with the bytes received against the database's size on a terminal. A failed
/// backup leaves no file.
async fn online_backup(c: &Client, file: &Path, json: bool) -> Result<u64, Fail> {
    let fail = |e: std::io::Error| Fail(1, format!("writing {}: {e}", file.display()));
    // The snapshot is about the size of the file; the bar grows if it is more.
    let size = if progress::wanted(json) {
        c.db_stats().await.map(|s| s.file_size_bytes).unwrap_or(0)
    } else {
        0
    };
    let progress = Progress::bytes(json, size, "backing up");
    let mut out = std::fs::File::create_new(file).map_err(fail)?;
    let (mut bytes, mut error) = (0u64, None);
    let streamed = c
        .stream("/v1/db/backup", |chunk| {
            if error.is_none() {
                bytes += chunk.len() as u64;
                progress.advance(chunk.len() as u64);
                error = std::io::Write::write_all(&mut out, chunk).err();
            }
        })
        .await;
    drop(progress);
    if let Some(e) = error.or_else(|| out.sync_all().err()) {
        let _ = std::fs::remove_file(file);
        return Err(fail(e));
    }
    if let Err(e) = streamed {
        let _ = std::fs::remove_file(file);
        return Err(e.into());
    }
    Ok(bytes)
}
