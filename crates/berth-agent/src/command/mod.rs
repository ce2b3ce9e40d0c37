//! The agent's commands: everything a front end (the HTTP API) asks of the agent, with typed
//! requests in and `berth-api-types` values out. The agent owns admission (cordon, the machine
//! limit, unique names, Idempotency-Keys, leases) and decides it with the write; a front end
//! parses and renders, nothing else.
//!
//! Every mutation runs in its own task, so a caller that goes away (a client that disconnects)
//! cannot cancel it half-way.

mod cordon;
mod db;
mod events;
mod exec;
mod host;
mod images;
mod leases;
mod logs;
mod machines;
mod shutdown;
mod update;
mod volumes;

use std::sync::Arc;
use std::time::Duration;

use berth_types::{MachineId, MachineRecord};

pub(crate) use cordon::Cordon;
pub use logs::{FollowEnd, LogFollower, LogSelect, LogText};
pub use machines::MachinePage;
pub use shutdown::Stopping;

use crate::error::{CommandError, CommandResult};
use crate::{Agent, SlowOps};

/// The front end's settings for the commands.
#[derive(Debug, Clone)]
pub struct CommandConfig {
    /// Most machines (not destroyed) on this host (`limits.max_machines`); `None`: no limit.
    pub max_machines: Option<usize>,
    /// The health check turns `degraded` while a slow operation happened within this window.
    pub slow_window: Duration,
    /// The ring the store's slow-op hook fills.
    pub slow_ops: Arc<SlowOps>,
}

impl Default for CommandConfig {
    fn default() -> Self {
        Self {
            max_machines: None,
            slow_window: Duration::from_secs(60),
            slow_ops: SlowOps::new(256),
        }
    }
}

impl Agent {
    /// This agent with the front end's settings (the cordon flag stays shared with every clone).
    pub fn with_commands(mut self, cfg: CommandConfig) -> Agent {
        self.commands = Arc::new(cfg);
        self
    }

    /// A machine, or `not_found`.
    pub fn machine(&self, id: &MachineId) -> CommandResult<MachineRecord> {
        let mut m = self
            .store()
            .machine(id)?
            .ok_or_else(|| CommandError::not_found(format!("machine {id} not found")))?;
        self.checks.fill(&mut m);
        Ok(m)
    }

    /// Runs `f` in its own task, so the caller's going away cannot cancel it half-way.
    async fn detached<T, F>(&self, f: F) -> CommandResult<T>
    where
        T: Send + 'static,
        F: std::future::Future<Output = CommandResult<T>> + Send + 'static,
    {
        tokio::spawn(f)
            .await
            .map_err(|e| CommandError::internal(format!("operation task failed: {e}")))?
    }
}
