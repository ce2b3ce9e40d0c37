//! `berth logs ID [--tail N] [--since D] [--timestamps] [--follow]`: a machine's output, read as
//! NDJSON records. The workload's stdout goes to stdout and its stderr to stderr; the marks
//! where a run starts and ends go to stderr. A follow ends when the machine stops (the agent
//! says so with a last `end` record); when berthd goes away instead (a restart), it reconnects
//! and resumes strictly after the last record it printed, so no line is lost or repeated.

use std::io::Write;
use std::time::{Duration, Instant};

use berth_api_types::{LogLine, LogStream};
use berth_client::ClientError;
use berth_types::Timestamp;

use crate::cli::{Cli, Fail};

/// How long a follow keeps trying to reach a berthd that went away.
const RECONNECT_FOR: Duration = Duration::from_secs(120);

/// What `berth logs` was asked.
#[derive(Debug, Clone)]
pub(crate) struct LogsArgs {
    pub(crate) id: String,
    pub(crate) tail: Option<usize>,
    pub(crate) since: Option<String>,
    pub(crate) timestamps: bool,
    pub(crate) follow: bool,
}

/// Prints records as they come, joining the pieces of long lines.
#[derive(Debug, Default)]
struct Printer {
    timestamps: bool,
    /// The stream whose line is unfinished.
    open: Option<LogStream>,
    cursor: Option<Timestamp>,
    ended: Option<String>,
    buf: Vec<u8>,
}

impl Printer {
    fn feed(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            if let Ok(l) = serde_json::from_slice::<LogLine>(&line) {
                self.print(&l);
            }
        }
    }

    fn print(&mut self, l: &LogLine) {
        if let Some(at) = l.at {
            self.cursor = Some(at);
        }
        let time = match (self.timestamps, l.at) {
            (true, Some(at)) => format!("{at} "),
            _ => String::new(),
        };
        match l.stream {
            LogStream::End => self.ended = Some(l.text.clone()),
            LogStream::Run => {
                self.close_line();
                let _ = writeln!(std::io::stderr(), "{time}── {} ──", mark_words(&l.text));
            }
            LogStream::Stdout | LogStream::Stderr => {
                if self.open.is_some_and(|s| s != l.stream) {
                    self.close_line();
                }
                let text = if self.open.is_some() {
                    l.text.clone()
                } else {
                    format!("{time}{}", l.text)
                };
                let nl = if l.partial { "" } else { "\n" };
                let r = if l.stream == LogStream::Stderr {
                    write!(std::io::stderr(), "{text}{nl}")
                } else {
                    write!(std::io::stdout().lock(), "{text}{nl}")
                };
                if r.is_err_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) {
                    // The reader went away (`berth logs -f ID | head`): end quietly.
                    std::process::exit(141);
                }
                self.open = l.partial.then_some(l.stream);
            }
        }
    }

    /// Ends an unfinished line before anything else is printed.
    fn close_line(&mut self) {
        match self.open.take() {
            Some(LogStream::Stderr) => eprintln!(),
            Some(_) => println!(),
            None => {}
        }
    }
}

/// The supervisor's mark in words: `started instance=… pid=P` → `run started (pid P)`.
fn mark_words(text: &str) -> String {
    let field = |k: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(k).map(str::to_owned))
    };
    if text.starts_with("started") {
        match field("pid=") {
            Some(pid) => format!("run started (pid {pid})"),
            None => "run started".to_owned(),
        }
    } else if let Some(code) = field("code=") {
        format!("run exited with code {code}")
    } else if let Some(sig) = field("signal=") {
        format!("run killed by {sig}")
    } else {
        text.to_owned()
    }
}

fn path(a: &LogsArgs, cursor: Option<Timestamp>, started: Timestamp, resumed: bool) -> String {
    let mut p = format!(
        "/v1/machines/{}/logs?format=ndjson&follow={}",
        a.id, a.follow
    );
    match (resumed, cursor) {
        (_, Some(c)) if resumed => p.push_str(&format!("&after={c}")),
        (true, _) => p.push_str(&format!("&after={started}")),
        (false, _) => {
            if let Some(s) = &a.since {
                p.push_str(&format!("&since={}", encode(s)));
            }
            if let Some(t) = a.tail {
                p.push_str(&format!("&tail={t}"));
            }
        }
    }
    p
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs `berth logs`.
pub(crate) async fn run(cli: &Cli, a: &LogsArgs) -> Result<(), Fail> {
    let c = cli.client()?;
    let a = &LogsArgs {
        id: crate::resolve::machine_id(&c, &a.id).await?,
        ..a.clone()
    };
    let mut p = Printer {
        timestamps: a.timestamps,
        ..Printer::default()
    };
    let started = Timestamp::now();
    let mut resumed = false;
    let mut lost_at: Option<Instant> = None;
    loop {
        let r = c
            .stream(&path(a, p.cursor, started, resumed), |b| p.feed(b))
            .await;
        p.close_line();
        let _ = std::io::stdout().flush();
        if let Some(state) = &p.ended {
            eprintln!("berth: machine {} is {state}; follow ended", a.id);
            return Ok(());
        }
        if !a.follow {
            return r.map_err(Into::into);
        }
        match r {
            // berthd went away mid-follow (a clean end without `end`, or a cut connection).
            Ok(()) | Err(ClientError::Decode(_)) => {}
            Err(ClientError::Unreachable { .. }) if resumed => {
                if lost_at.is_some_and(|t| t.elapsed() > RECONNECT_FOR) {
                    return Err(Fail(
                        3,
                        format!("berthd did not come back within {RECONNECT_FOR:?}"),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        if lost_at.is_none() {
            eprintln!("berth: lost berthd; reconnecting to resume the follow");
        }
        lost_at.get_or_insert_with(Instant::now);
        resumed = true;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
