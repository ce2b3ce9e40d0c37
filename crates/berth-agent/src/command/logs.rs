//! A machine's output: its last lines, and following what it writes next. Every read goes
//! through the driver, which follows no link in the workload's log directory.

use std::path::PathBuf;
use std::time::Duration;

use berth_types::MachineId;

use crate::Agent;
use crate::error::{CommandError, CommandResult};

/// How often a follower looks for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// Most bytes one follower read returns.
const FOLLOW_CHUNK: u64 = 1 << 20;

/// New output of a machine as it is written.
#[derive(Debug)]
pub struct LogFollower {
    dir: PathBuf,
    pos: u64,
}

impl LogFollower {
    /// The next output written; `None` once the log is gone (the machine destroyed) or is no
    /// longer a plain file of its own (a link).
    pub async fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            tokio::time::sleep(FOLLOW_POLL).await;
            let (len, buf) =
                berth_driver::logs::read_from(&self.dir, self.pos, FOLLOW_CHUNK).ok()??;
            if len < self.pos {
                self.pos = 0; // rotated
                continue;
            }
            if !buf.is_empty() {
                self.pos += buf.len() as u64;
                return Some(buf);
            }
        }
    }
}

fn read_error(e: std::io::Error) -> CommandError {
    CommandError::internal(format!("reading logs: {e}"))
}

impl Agent {
    /// A machine's last `tail` lines.
    pub fn machine_logs(&self, id: &MachineId, tail: usize) -> CommandResult<String> {
        self.machine(id)?;
        berth_driver::logs::tail(&self.driver().logs_dir(id.as_str()), tail).map_err(read_error)
    }

    /// A machine's last `tail` lines and a follower for what it writes after them.
    pub fn follow_logs(&self, id: &MachineId, tail: usize) -> CommandResult<(String, LogFollower)> {
        let initial = self.machine_logs(id, tail)?;
        let dir = self.driver().logs_dir(id.as_str());
        let pos = berth_driver::logs::read_from(&dir, u64::MAX, 0)
            .map_err(read_error)?
            .map_or(0, |(len, _)| len);
        Ok((initial, LogFollower { dir, pos }))
    }
}
