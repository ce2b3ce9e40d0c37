//! Progress of long work on a terminal (`db compact`, `db backup`, and for `image pull` to
//! reuse): an `indicatif` spinner or byte bar on stderr, drawn only when both stdout and stderr
//! are terminals and `--json` was not asked for, so scripts and pipes see nothing of it. It is
//! cleared when the work ends; what the command prints then is unchanged.

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress display, or nothing when it must stay quiet.
#[derive(Debug)]
pub(crate) struct Progress(Option<ProgressBar>);

/// How often a spinner turns (and redraws) on its own.
const TICK: Duration = Duration::from_millis(120);

/// Whether progress may be drawn: a person watching (both outputs are a terminal) and no
/// machine-readable output asked for.
pub(crate) fn wanted(json: bool) -> bool {
    !json && std::io::stdout().is_terminal() && std::io::stderr().is_terminal()
}

impl Progress {
    /// A spinner with `msg`, for work whose end is not known.
    pub(crate) fn spinner(json: bool, msg: impl Into<String>) -> Self {
        if !wanted(json) {
            return Self(None);
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(msg.into());
        // Drawn at once: short work would otherwise end before the first tick.
        bar.tick();
        bar.enable_steady_tick(TICK);
        Self(Some(bar))
    }

    /// A bar of bytes towards `total` (an estimate: passing it grows the bar), with `msg`.
    pub(crate) fn bytes(json: bool, total: u64, msg: impl Into<String>) -> Self {
        if !wanted(json) {
            return Self(None);
        }
        let bar = ProgressBar::with_draw_target(Some(total.max(1)), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{wide_bar}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(msg.into());
        // Drawn at once: short work would otherwise end before the first tick.
        bar.tick();
        bar.enable_steady_tick(TICK);
        Self(Some(bar))
    }

    /// Replaces the words beside the spinner or bar.
    pub(crate) fn say(&self, msg: impl Into<String>) {
        if let Some(bar) = &self.0 {
            bar.set_message(msg.into());
        }
    }

    /// `n` more bytes done.
    pub(crate) fn advance(&self, n: u64) {
        if let Some(bar) = &self.0 {
            let done = bar.position() + n;
            if bar.length().is_some_and(|len| done > len) {
                bar.set_length(done);
            }
            bar.set_position(done);
        }
    }

    /// Whether anything is drawn (work done only for the display can be skipped otherwise).
    pub(crate) fn shown(&self) -> bool {
        self.0.is_some()
    }
}

impl Drop for Progress {
    /// Ended (done, failed or interrupted): the display is wiped so the command's own output
    /// starts on a clean line.
    fn drop(&mut self) {
        if let Some(bar) = self.0.take() {
            bar.finish_and_clear();
        }
    }
}
