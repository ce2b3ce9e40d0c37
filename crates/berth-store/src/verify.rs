//! The history's records, verified in the background right after open.
//!
//! A safe open (see [`crate::schema`]) verifies every record a start reads or rewrites (machines,
//! operations, meta) before anything writes to the file. The history (`events`, `history`) is
//! most of the file and is only ever appended to or trimmed; checking its million records at open
//! made a restart take seconds (`cargo xtask bench restart`), so it is verified here instead, by
//! a thread that walks one read snapshot while the agent already serves:
//!
//! - compaction, which rewrites every page, waits until the pass has finished, and is refused if
//!   it found damage, so a damaged file is never copied over and lost;
//! - when it finds a damaged record (CRC mismatch, undecodable payload, a page redb cannot read),
//!   every later write is refused with [`crate::StoreError::HistoryDamaged`] naming the record:
//!   the file is kept for the operator (runbook `db-compaction.md`, "Restore from the backup"),
//!   and reads keep working;
//! - the pass stops early when the store closes.
//!
//! The outcome is [`Verification`], in `berth db stats` and in the agent's health.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase};
use serde::Serialize;

use crate::schema::{self, TABLES};

/// Where the background verification of the history stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Verification {
    /// Still walking the history.
    Running,
    /// Every record of the history was read and its checksum matched.
    Passed {
        /// Records checked.
        records: u64,
        /// How long the pass took.
        took_ms: u64,
    },
    /// A record or page could not be read back as written: writes are refused.
    Failed {
        /// What was found, naming the table and key.
        reason: String,
    },
    /// The pass was stopped before it finished (the store closed).
    Stopped,
}

/// The pass's state, shared with the store.
#[derive(Debug)]
pub(crate) struct VerifyState {
    outcome: Mutex<Verification>,
    done: Condvar,
    /// Set once the pass found damage; checked on every write.
    damaged: AtomicBool,
    /// Set when the store closes: the pass stops at its next record.
    stop: Arc<AtomicBool>,
}

impl VerifyState {
    /// A state for a file with nothing to verify (just created).
    pub(crate) fn passed() -> Arc<Self> {
        Arc::new(Self::new(Verification::Passed {
            records: 0,
            took_ms: 0,
        }))
    }

    fn new(outcome: Verification) -> Self {
        Self {
            outcome: Mutex::new(outcome),
            done: Condvar::new(),
            damaged: AtomicBool::new(false),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    pub(crate) fn get(&self) -> Verification {
        self.outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The damage found, if any: writes are refused with it.
    pub(crate) fn damage(&self) -> Option<String> {
        if !self.damaged.load(Ordering::Acquire) {
            return None;
        }
        match self.get() {
            Verification::Failed { reason } => Some(reason),
            _ => None,
        }
    }

    /// Blocks until the pass is no longer running (at most `timeout`), then says how it ended.
    pub(crate) fn wait(&self, timeout: Duration) -> Verification {
        let guard = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .done
            .wait_timeout_while(guard, timeout, |v| *v == Verification::Running)
            .unwrap_or_else(|e| e.into_inner());
        guard.clone()
    }

    /// Asks a running pass to stop.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    fn finish(&self, outcome: Verification) {
        if matches!(outcome, Verification::Failed { .. }) {
            self.damaged.store(true, Ordering::Release);
        }
        *self.outcome.lock().unwrap_or_else(|e| e.into_inner()) = outcome;
        self.done.notify_all();
    }
}

/// Starts the pass over the history tables of `db` on its own thread.
pub(crate) fn start(
    db: Arc<Database>,
    path: std::path::PathBuf,
) -> std::io::Result<(Arc<VerifyState>, std::thread::JoinHandle<()>)> {
    let state = Arc::new(VerifyState::new(Verification::Running));
    let shared = state.clone();
    let handle = std::thread::Builder::new()
        .name("berth-store-verify".into())
        .spawn(move || {
            let started = Instant::now();
            let outcome = match schema::guarded(|| walk(&db, &shared.stop)) {
                Ok(Ok(Some(records))) => Verification::Passed {
                    records,
                    took_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                },
                Ok(Ok(None)) => Verification::Stopped,
                Ok(Err(reason)) => Verification::Failed { reason },
                Err(panic) => Verification::Failed {
                    reason: format!("reading the history: {panic}"),
                },
            };
            match &outcome {
                Verification::Passed { records, took_ms } => tracing::info!(
                    records,
                    took_ms,
                    "every record of the history was verified"
                ),
                Verification::Failed { reason } => tracing::error!(
                    path = %path.display(),
                    %reason,
                    "the database is damaged: writes are refused from now on; the file is kept as it is (runbooks/db-compaction.md, \"Restore from the backup\")"
                ),
                _ => {}
            }
            drop(db);
            shared.finish(outcome);
        })?;
    Ok((state, handle))
}

/// Verifies every record of the history tables; `None` when stopped.
fn walk(db: &Database, stop: &AtomicBool) -> Result<Option<u64>, String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let mut records = 0;
    for table in TABLES.iter().filter(|t| t.is_history()) {
        match table.verify_records(&txn, stop)? {
            Some(n) => records += n,
            None => return Ok(None),
        }
    }
    Ok(Some(records))
}
