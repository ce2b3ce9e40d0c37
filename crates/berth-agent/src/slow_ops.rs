//! Recent slow database operations, bounded, for `GET /v1/db/slow-ops` and the health check.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use berth_api_types::SlowOp;

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
            r.push_back(crate::wire::slow_op(s));
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
