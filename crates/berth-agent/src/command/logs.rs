//! A machine's output: its records (the last lines, or those after a time), and following what
//! it writes next until the machine stops. Every read goes through the driver's reader
//! (`berth_driver::logread`), which follows rotations by file identity and no link.

use std::path::PathBuf;
use std::time::Duration;

use berth_api_types::{LogLine, LogStream};
use berth_driver::logfmt::{Record, Stream};
use berth_driver::logread::{self, LogReader, Select, Step};
use berth_types::{MachineId, State, Timestamp};

use crate::Agent;
use crate::error::{CommandError, CommandResult};

/// How often an idle follower looks for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(50);
/// About the most bytes one follower step reads.
const FOLLOW_CHUNK: u64 = 1 << 20;

/// New output of a machine as it is written.
#[derive(Debug)]
pub struct LogFollower {
    agent: Agent,
    id: MachineId,
    reader: LogReader,
    ended: Option<String>,
}

/// How a follow ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowEnd {
    /// The machine is not running (its state, in words): there is nothing more to follow.
    Stopped(String),
    /// berthd is stopping, or the log cannot be read: a client may resume from its cursor.
    Interrupted,
}

impl LogFollower {
    /// The next records written, or how the follow ended.
    pub async fn next(&mut self) -> Result<Vec<LogLine>, FollowEnd> {
        let stopping = self.agent.stopping();
        tokio::select! {
            biased;
            () = stopping.wait() => Err(FollowEnd::Interrupted),
            r = self.poll() => r,
        }
    }

    async fn poll(&mut self) -> Result<Vec<LogLine>, FollowEnd> {
        if let Some(state) = self.ended.take() {
            return Err(FollowEnd::Stopped(state));
        }
        loop {
            match self.reader.step(FOLLOW_CHUNK) {
                Ok(Step::Records(r)) if !r.is_empty() => return Ok(lines(&r)),
                Ok(Step::Records(_)) => continue,
                Ok(Step::Idle) => {}
                Err(e) => {
                    tracing::warn!(machine = %self.id, "log follow ended: {e}");
                    return Err(FollowEnd::Interrupted);
                }
            }
            if let Some(state) = self.not_running() {
                // Its supervisor is gone, so everything is written: read to the end (across a
                // last rotation too), then end.
                let mut rest = Vec::new();
                while let Ok(Step::Records(r)) = self.reader.step(u64::MAX) {
                    rest.extend(r);
                }
                if rest.is_empty() {
                    return Err(FollowEnd::Stopped(state));
                }
                self.ended = Some(state);
                return Ok(lines(&rest));
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }

    /// The machine's state in words if it no longer runs (nothing more will be written).
    fn not_running(&self) -> Option<String> {
        match self.agent.store().machine(&self.id) {
            Ok(Some(m)) => (!runs(m.state)).then(|| m.state.to_string()),
            Ok(None) => Some("gone".to_owned()),
            Err(_) => None, // unknown is not stopped: look again
        }
    }
}

/// A machine in this state may still write output.
fn runs(state: State) -> bool {
    matches!(
        state,
        State::Starting | State::Started | State::Stopping | State::Restarting
    )
}

/// Records as wire lines.
fn lines(recs: &[Record]) -> Vec<LogLine> {
    recs.iter()
        .map(|r| LogLine {
            at: r.at,
            stream: match r.stream {
                Stream::Stdout => LogStream::Stdout,
                Stream::Stderr => LogStream::Stderr,
                Stream::Run => LogStream::Run,
            },
            text: String::from_utf8_lossy(&r.text).into_owned(),
            partial: r.partial,
        })
        .collect()
}

fn read_error(e: std::io::Error) -> CommandError {
    CommandError::internal(format!("reading logs: {e}"))
}

/// Which of a machine's lines a read returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogSelect {
    /// Only lines strictly after this time (a cursor; `since` is a cursor 1 ns before it).
    pub after: Option<Timestamp>,
    /// Only the last this many lines of output (with the marks among them).
    pub tail: Option<usize>,
}

/// Renders lines as plain text, one line per line of output (its pieces joined again), with
/// its time before it if asked; the supervisor's marks are left out. Keeps state between
/// calls, so a follow renders chunk by chunk.
#[derive(Debug, Default)]
pub struct LogText {
    timestamps: bool,
    /// The stream whose line is unfinished (its last piece was partial).
    open: Option<LogStream>,
}

impl LogText {
    /// A renderer; `timestamps` puts each line's time (RFC 3339) before it.
    pub fn new(timestamps: bool) -> Self {
        Self {
            timestamps,
            open: None,
        }
    }

    /// The text of `lines`.
    pub fn render(&mut self, lines: &[LogLine]) -> String {
        let mut out = String::new();
        for l in lines {
            if matches!(l.stream, LogStream::Run | LogStream::End) {
                continue;
            }
            match self.open {
                Some(s) if s == l.stream => {}
                open => {
                    if open.is_some() {
                        out.push('\n');
                    }
                    if self.timestamps
                        && let Some(at) = l.at
                    {
                        out.push_str(&at.to_string());
                        out.push(' ');
                    }
                }
            }
            out.push_str(&l.text);
            if l.partial {
                self.open = Some(l.stream);
            } else {
                out.push('\n');
                self.open = None;
            }
        }
        out
    }
}

impl Agent {
    /// A machine's records that `select` asks for, and a follower for what it writes after them.
    /// A destroyed machine's logs are gone with it: `not_found`, saying so.
    pub fn read_logs(
        &self,
        id: &MachineId,
        select: LogSelect,
    ) -> CommandResult<(Vec<LogLine>, LogFollower)> {
        let select = Select {
            after: select.after,
            tail: select.tail,
        };
        let m = self.machine(id)?;
        if matches!(m.state, State::Destroyed | State::Destroying) {
            return Err(CommandError::not_found(format!(
                "machine {id} was destroyed; its logs were removed with it"
            )));
        }
        let dir: PathBuf = self.driver().logs_dir(id.as_str());
        let (recs, reader) = match logread::open(&dir, select).map_err(read_error)? {
            Some(found) => found,
            // Never started: nothing yet, and a follower that waits for the log to appear.
            None => (Vec::new(), logread::LogReader::empty(&dir, select.after)),
        };
        let follower = LogFollower {
            agent: self.clone(),
            id: id.clone(),
            reader,
            ended: None,
        };
        Ok((lines(&recs), follower))
    }

    /// A machine's last `tail` lines as text.
    pub fn machine_logs(&self, id: &MachineId, tail: usize) -> CommandResult<String> {
        let select = LogSelect {
            after: None,
            tail: Some(tail),
        };
        let (lines, _) = self.read_logs(id, select)?;
        Ok(LogText::new(false).render(&lines))
    }
}
