//! A machine's output on the wire: `GET /v1/machines/{id}/logs?format=ndjson` sends one
//! [`LogLine`] per line of JSON; the default, `format=text`, the output itself.

use berth_types::Timestamp;
use serde::{Deserialize, Serialize};

/// How the logs route answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// The output as written (`text/plain`), a line per line; `timestamps=true` puts each line's
    /// time before it. The shim's run marks are left out.
    #[default]
    Text,
    /// One [`LogLine`] per line (`application/x-ndjson`), marks included; a follow that ended
    /// because the machine stopped (not because berthd went away) ends with a `stream: "end"`
    /// line, so a client knows when to resume after its last `at` instead.
    Ndjson,
}

/// Where a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// The workload's stdout.
    Stdout,
    /// The workload's stderr.
    Stderr,
    /// The supervisor's mark: `started instance=… pid=…` or `exited code=N` / `exited signal=S`.
    Run,
    /// The follow ended: the machine is not running (`text` says its state).
    End,
}

/// One record of a machine's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// When the supervisor read it; strictly increasing within a machine's log, so it is the
    /// cursor to resume after (`after=`). Absent for lines written before berth kept times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Timestamp>,
    /// Its stream.
    pub stream: LogStream,
    /// The text, without its newline (invalid UTF-8 replaced).
    pub text: String,
    /// The line continues in the stream's next record (it was longer than 16 KiB, or left
    /// unfinished for a while).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}
