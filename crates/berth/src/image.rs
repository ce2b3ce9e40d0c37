//! `berth image ls|pull|rm`: the host's image store.

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use berth_api_types::Image;

use crate::cli::{Cli, Fail, ImageCmd, print_json};

pub(crate) async fn run(cli: &Cli, cmd: &ImageCmd) -> Result<(), Fail> {
    let c = cli.client()?;
    match cmd {
        ImageCmd::Ls { out } => {
            let images = c.images().await?;
            if out.json {
                print_json(&images)
            } else {
                print!("{}", table(&images))
            }
        }
        ImageCmd::Pull { reference, out } => {
            let report = with_spinner(reference, c.pull_image(reference)).await?;
            if out.json {
                print_json(&report)
            } else {
                println!(
                    "{} {} ({}) in {:.1}s",
                    reference,
                    report.image.digest,
                    bytes(report.image.size_bytes),
                    report.elapsed_ms as f64 / 1000.0
                )
            }
        }
        ImageCmd::Rm { digest } => {
            c.remove_image(digest).await?;
            println!("removed {digest}");
        }
    }
    Ok(())
}

/// Awaits `f`, showing a spinner and the time elapsed on stderr while it is a terminal.
async fn with_spinner<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    let mut err = std::io::stderr();
    if !err.is_terminal() {
        return f.await;
    }
    const FRAMES: [char; 4] = ['|', '/', '-', '\\'];
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(120));
    tokio::pin!(f);
    let mut i = 0usize;
    loop {
        tokio::select! {
            out = &mut f => {
                let _ = write!(err, "\r\x1b[2K");
                return out;
            }
            _ = tick.tick() => {
                let secs = started.elapsed().as_secs_f64();
                let _ = write!(err, "\r{} pulling {what} … {secs:.1}s", FRAMES[i % FRAMES.len()]);
                let _ = err.flush();
                i += 1;
            }
        }
    }
}

fn table(images: &[Image]) -> String {
    let mut out = format!(
        "{:<20} {:>10} {:<20} {:<12} {}\n",
        "DIGEST", "SIZE", "LAST USED", "IN USE BY", "REFERENCES"
    );
    for i in images {
        let short = i.digest.get(..19).unwrap_or(&i.digest);
        let used = i
            .last_used_at
            .map(|t| t.to_string())
            .unwrap_or_else(|| "-".into());
        let users = if i.in_use_by.is_empty() {
            "-".to_owned()
        } else {
            i.in_use_by.len().to_string()
        };
        out.push_str(&format!(
            "{short:<20} {:>10} {:<20} {users:<12} {}\n",
            bytes(i.size_bytes),
            used.get(..19).unwrap_or(&used),
            i.references.join(", ")
        ));
    }
    out
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
