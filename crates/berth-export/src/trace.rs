//! Stage timing of the export path, for `cargo xtask bench fleet --stages`: with
//! `BERTH_EXPORT_TRACE=DIR` in berthd's environment, every acknowledged event appends one line to
//! `DIR/<host_id>.trace`:
//!
//! `seq at committed read published acked` (wall-clock nanoseconds since the epoch)
//!
//! `at` is the event's own timestamp (stamped when its group commit began), `committed` when the
//! store last made a commit durable as the exporter read the event (that event's commit, or a
//! later one if another landed meanwhile), `read` when the export task read it from the log,
//! `published` when the publish was handed to the client, `acked` when the export task took its
//! JetStream acknowledgement. Off (and free) without the variable.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::Mutex;

use berth_types::Timestamp;

/// Wall-clock nanoseconds now.
pub(crate) fn now() -> u64 {
    Timestamp::now().as_nanos()
}

/// An event's times up to its publish.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stamps {
    pub seq: u64,
    pub at: u64,
    pub committed: u64,
    pub read: u64,
    pub published: u64,
}

#[derive(Debug)]
pub(crate) struct Trace {
    out: Option<Mutex<BufWriter<File>>>,
}

impl Trace {
    /// The trace file named by `BERTH_EXPORT_TRACE`, or none.
    pub fn from_env(host_id: &str) -> Self {
        let out = std::env::var_os("BERTH_EXPORT_TRACE").and_then(|dir| {
            let path = std::path::Path::new(&dir).join(format!("{host_id}.trace"));
            match File::options().create(true).append(true).open(&path) {
                Ok(f) => Some(Mutex::new(BufWriter::new(f))),
                Err(e) => {
                    tracing::warn!(error = %e, path = %path.display(), "no export trace");
                    None
                }
            }
        });
        Self { out }
    }

    pub fn enabled(&self) -> bool {
        self.out.is_some()
    }

    pub fn acked(&self, s: &Stamps, acked: u64) {
        if let Some(Ok(mut w)) = self.out.as_ref().map(|m| m.lock()) {
            let _ = writeln!(
                w,
                "{} {} {} {} {} {acked}",
                s.seq, s.at, s.committed, s.read, s.published
            );
        }
    }

    /// Writes out what is buffered (when the exporter goes idle: the agent may be SIGKILLed).
    pub fn flush(&self) {
        if let Some(Ok(mut w)) = self.out.as_ref().map(|m| m.lock()) {
            let _ = w.flush();
        }
    }
}
