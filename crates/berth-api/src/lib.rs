//! berth's HTTP API. The same routes are served on the unix socket (the operator's lane: no
//! token, file permissions are the guard) and on TCP (bearer token); each lane has its own bound
//! on concurrent mutations, so a flood on TCP never locks the operator out.
//!
//! Architecture invariant: handlers parse and validate, then call the agent core; they hold no
//! machine state of their own beyond the cordon flag (admission and leases are the core's). A lifecycle
//! operation runs in its own task, so a client that disconnects cannot cancel it half-way.
//! Every failure is `{"error", "code"}`; every response carries `x-request-id`.

mod error;
mod machines;
pub mod serve;
mod server;
mod system;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_agent::Agent;
use berth_api_types::SlowOp;
use tokio::sync::Semaphore;

pub use error::{ApiError, ApiResult};
pub use server::{Lane, ROUTES, router};

/// Recent slow database operations, bounded (the newest `capacity`).
#[derive(Debug)]
pub struct SlowOps {
    ring: Mutex<VecDeque<SlowOp>>,
    capacity: usize,
}

impl SlowOps {
    /// An empty ring.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            ring: Mutex::new(VecDeque::new()),
            capacity,
        })
    }

    /// Records one (called from the store's slow-op hook).
    pub fn push(&self, s: &berth_store::SlowOp) {
        if let Ok(mut r) = self.ring.lock() {
            if r.len() == self.capacity {
                r.pop_front();
            }
            r.push_back(SlowOp {
                op: s.op.to_owned(),
                duration_ms: s.duration.as_secs_f64() * 1e3,
                threshold_ms: s.threshold.as_secs_f64() * 1e3,
                at: s.at,
                batch_size: s.batch_size,
                bytes: s.bytes,
                detail: s.detail.clone(),
            });
        }
    }

    /// Newest first.
    pub fn list(&self) -> Vec<SlowOp> {
        self.ring
            .lock()
            .map(|r| r.iter().rev().cloned().collect())
            .unwrap_or_default()
    }
}

/// API settings.
#[derive(Clone)]
pub struct ApiConfig {
    /// The data directory (for the cordon flag and host info).
    pub data_dir: PathBuf,
    /// Most machines (not destroyed) on this host.
    pub max_machines: usize,
    /// A health check turns `degraded` while a slow operation happened within this window.
    pub slow_window: Duration,
    /// Renders `/metrics`.
    pub metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    /// The fleet export's state for `GET /v1/host`; `None` when export is off.
    pub export: Option<Arc<dyn Fn() -> serde_json::Value + Send + Sync>>,
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
    cordoned: AtomicBool,
    slow_ops: Arc<SlowOps>,
}

impl Shared {
    /// Shared state over a running agent. The cordon flag is read back from the data dir.
    pub fn new(agent: Agent, cfg: ApiConfig, slow_ops: Arc<SlowOps>) -> Arc<Self> {
        let cordoned = cfg.data_dir.join("cordoned").exists();
        Arc::new(Self {
            agent,
            cfg,
            cordoned: AtomicBool::new(cordoned),
            slow_ops,
        })
    }

    /// The agent.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    fn is_cordoned(&self) -> bool {
        self.cordoned.load(Ordering::Acquire)
    }

    fn set_cordoned(&self, on: bool) -> ApiResult<()> {
        let flag = self.cfg.data_dir.join("cordoned");
        let r = if on {
            std::fs::write(&flag, b"cordoned\n")
        } else {
            std::fs::remove_file(&flag).or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
        };
        r.map_err(|e| ApiError::internal(format!("persisting the cordon flag: {e}")))?;
        self.cordoned.store(on, Ordering::Release);
        tracing::info!(cordoned = on, "host cordon changed");
        Ok(())
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

/// The OS random source failed: nothing that must be unguessable can be made.
#[derive(Debug)]
pub struct RandomError(pub String);

impl std::fmt::Display for RandomError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the OS random source failed: {}", self.0)
    }
}

impl std::error::Error for RandomError {}

impl From<RandomError> for ApiError {
    fn from(e: RandomError) -> Self {
        ApiError::internal(e.to_string())
    }
}

/// A random hex string of `bytes` bytes of OS randomness; an error if the OS cannot give it
/// (never a predictable stand-in: tokens and lease nonces are made with it).
pub fn random_hex(bytes: usize) -> Result<String, RandomError> {
    random_hex_with(bytes, |b| getrandom::fill(b).map_err(|e| e.to_string()))
}

/// [`random_hex`] over a given source of randomness (for tests of its failure).
pub fn random_hex_with(
    bytes: usize,
    fill: impl FnOnce(&mut [u8]) -> Result<(), String>,
) -> Result<String, RandomError> {
    let mut b = vec![0u8; bytes];
    fill(&mut b).map_err(RandomError)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn random_hex_fails_when_the_os_does() {
        let r = super::random_hex_with(16, |_| Err("ENOSYS".into()));
        assert!(r.is_err(), "{r:?}");
        let ok = super::random_hex(16).map(|s| s.len());
        assert_eq!(ok.ok(), Some(32));
    }
}
