//! `POST /v1/machines/{id}/exec`: a command run inside a started machine. Bounded (the command's
//! size, its stdin, its timeout, the output kept per stream) and not an event: nothing is
//! recorded, it is logged.

use std::time::Duration;

use berth_api_types::{ExecRequest, ExecResult};
use berth_driver::exec::{ExecSpec, OUTPUT_LIMIT};
use berth_types::{MachineId, State};

use crate::Agent;
use crate::error::{CommandError, CommandResult, ErrorKind};

/// The timeout when the request names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest timeout a request may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);
/// Most arguments.
const MAX_ARGS: usize = 1024;
/// Most bytes in all arguments together.
const MAX_CMD_BYTES: usize = 64 << 10;
/// Most bytes of stdin.
const MAX_STDIN: usize = 1 << 20;

fn check(req: &ExecRequest) -> CommandResult<Duration> {
    if req.cmd.first().is_none_or(String::is_empty) {
        return Err(CommandError::invalid(
            "cmd: must name a program (a non-empty array whose first element is not empty)",
        ));
    }
    if req.cmd.len() > MAX_ARGS || req.cmd.iter().map(String::len).sum::<usize>() > MAX_CMD_BYTES {
        return Err(CommandError::new(
            ErrorKind::TooLarge,
            format!("cmd: at most {MAX_ARGS} arguments and {MAX_CMD_BYTES} bytes"),
        ));
    }
    if req.cmd.iter().any(|a| a.contains('\0')) {
        return Err(CommandError::invalid(
            "cmd: an argument contains a NUL byte",
        ));
    }
    if req.stdin.as_ref().is_some_and(|s| s.len() > MAX_STDIN) {
        return Err(CommandError::new(
            ErrorKind::TooLarge,
            format!("stdin: more than {MAX_STDIN} bytes"),
        ));
    }
    let timeout = req.timeout.map_or(DEFAULT_TIMEOUT, |t| t.0);
    if timeout.is_zero() || timeout > MAX_TIMEOUT {
        return Err(CommandError::invalid(format!(
            "timeout: must be more than 0 and at most {}",
            humantime::format_duration(MAX_TIMEOUT)
        )));
    }
    Ok(timeout)
}

impl Agent {
    /// Runs `req` inside machine `id`'s workload: `conflict` unless it is started.
    pub async fn exec(
        &self,
        id: &MachineId,
        req: ExecRequest,
        lease_nonce: Option<&str>,
    ) -> CommandResult<ExecResult> {
        let timeout = check(&req)?;
        let m = self.machine(id)?;
        self.machines().check_lease(id, lease_nonce)?;
        if m.state != State::Started {
            return Err(CommandError::conflict(format!(
                "machine {id} is {}, not started",
                m.state
            )));
        }
        let spec = ExecSpec {
            cmd: req.cmd,
            timeout,
            stdin: req.stdin.unwrap_or_default().into_bytes(),
        };
        let driver = self.driver().clone();
        let machine = id.to_string();
        let program = spec.cmd[0].clone();
        let out = self
            .detached(async move {
                driver.exec(&machine, &spec).await.map_err(|e| match e {
                    berth_driver::DriverError::NotRunning(_) => {
                        CommandError::conflict(e.to_string())
                    }
                    berth_driver::DriverError::Unknown(..) => {
                        CommandError::new(ErrorKind::Unavailable, e.to_string())
                    }
                    other => CommandError::internal(other.to_string()),
                })
            })
            .await?;
        tracing::info!(
            machine = %id,
            program,
            exit_code = out.exit_code,
            timed_out = out.timed_out,
            duration_ms = out.duration.as_millis() as u64,
            "exec"
        );
        Ok(ExecResult {
            exit_code: out.exit_code,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            signal: out.signal,
            timed_out: out.timed_out,
            stdout_truncated: out.stdout_truncated,
            stderr_truncated: out.stderr_truncated,
            output_limit: OUTPUT_LIMIT as u64,
            duration_ms: out.duration.as_millis() as u64,
        })
    }
}
