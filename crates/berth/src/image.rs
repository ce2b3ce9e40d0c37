//! `berth image ls|pull|rm`: the host's image store.

use std::io::IsTerminal as _;
use std::time::Duration;

use berth_api_types::{Image, PullReport};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

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
            let report = pull(&c, reference, out.json).await?;
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

/// Pulls `reference`: on a terminal (stderr) with a progress bar of the blob bytes on the host
/// out of their total, streamed by the agent; piped, or for `--json`, with the plain answer and
/// nothing on stderr.
async fn pull(
    c: &berth_client::Client,
    reference: &str,
    json: bool,
) -> Result<PullReport, berth_client::ClientError> {
    if json || !std::io::stderr().is_terminal() {
        return c.pull_image(reference).await;
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(spinner_style());
    bar.set_message(format!("pulling {reference}"));
    bar.enable_steady_tick(Duration::from_millis(120));
    let result = c
        .pull_image_progress(reference, |done, total| {
            if bar.length() != Some(total) {
                bar.set_length(total);
                bar.set_style(bar_style());
            }
            bar.set_position(done);
        })
        .await;
    bar.finish_and_clear();
    result
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg} {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
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
