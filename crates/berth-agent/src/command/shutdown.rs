//! The agent's "berthd is stopping" flag: long requests (log follows, event long polls) end on
//! it at once, so they never hold berthd's drain; a client resumes from its cursor against the
//! next agent.

use std::sync::Arc;

use tokio::sync::watch;

use crate::Agent;

/// Shared by every clone of an agent.
#[derive(Debug, Clone)]
pub struct Stopping(Arc<watch::Sender<bool>>);

impl Default for Stopping {
    fn default() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }
}

impl Stopping {
    /// Resolves once the agent is stopping (at once if it is).
    pub async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }
}

impl Agent {
    /// berthd is stopping: long requests end now (their clients resume from their cursors).
    pub fn begin_shutdown(&self) {
        self.stopping.0.send_replace(true);
    }

    /// The stopping flag, for long requests to end on.
    pub fn stopping(&self) -> Stopping {
        self.stopping.clone()
    }
}
