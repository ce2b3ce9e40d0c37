//! berth's HTTP API. The same routes are served on the unix socket (the operator's lane: no
//! token, file permissions are the guard) and on TCP (bearer token); each lane has its own bound
//! on concurrent mutations, so a flood on TCP never locks the operator out.
//!
//! Architecture invariant: handlers parse and validate into typed requests (`berth-api-types`),
//! then call one command of the agent core (`berth_agent::Agent`), which owns admission (cordon,
//! limit, names, Idempotency-Keys, leases) and runs every mutation in its own task, so a client
//! that disconnects cannot cancel it half-way. This crate depends on the agent, the API types
//! and `berth-types` only: never on the store, the driver or the machine layer.
//! Every failure is `{"error", "code"}`; every response carries `x-request-id`.

mod error;
mod extract;
mod images;
mod logs;
mod machines;
pub mod serve;
mod server;
mod system;
mod update;
mod volumes;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_agent::{Agent, CommandConfig};
use tokio::sync::Semaphore;

pub use berth_agent::{RandomError, SlowOps, random_hex, random_hex_with};
pub use error::{ApiError, ApiResult};
pub use server::{Lane, ROUTES, router};

/// API settings.
#[derive(Clone)]
pub struct ApiConfig {
    /// The data directory (backups are staged in its `backups/`).
    pub data_dir: PathBuf,
    /// Most machines (not destroyed) on this host.
    pub max_machines: usize,
    /// A health check turns `degraded` while a slow operation happened within this window.
    pub slow_window: Duration,
    /// Renders `/metrics`.
    pub metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    /// The fleet export's state for `GET /v1/host`; `None` when export is off.
    pub export: Option<Arc<dyn Fn() -> berth_api_types::ExportStatus + Send + Sync>>,
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("data_dir", &self.data_dir)
            .field("max_machines", &self.max_machines)
            .finish_non_exhaustive()
    }
}

/// State shared by both lanes.
#[derive(Debug)]
pub struct Shared {
    agent: Agent,
    cfg: ApiConfig,
}

impl Shared {
    /// Shared state over a running agent, which gets the API's settings for its commands (the
    /// machine limit, the slow-op window and ring); the cordon flag is the agent's.
    pub fn new(agent: Agent, cfg: ApiConfig, slow_ops: Arc<SlowOps>) -> Arc<Self> {
        let agent = agent.with_commands(CommandConfig {
            max_machines: Some(cfg.max_machines),
            slow_window: cfg.slow_window,
            slow_ops,
        });
        Arc::new(Self { agent, cfg })
    }

    /// The agent.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }
}

/// A lane: shared state, an optional bearer token, and a bound on concurrent mutations.
pub fn lane(
    shared: Arc<Shared>,
    name: &'static str,
    token: Option<String>,
    max_inflight: usize,
) -> Lane {
    // At zero from the start, so the first refusal is an increase a rate can see.
    metrics::counter!("berth_api_refused_total", "lane" => name).increment(0);
    Lane {
        shared,
        name,
        token,
        permits: Arc::new(Semaphore::new(max_inflight.max(1))),
    }
}
