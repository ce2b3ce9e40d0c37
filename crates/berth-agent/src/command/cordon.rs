//! The host's cordon: while it is on, creates are refused. The flag is the file
//! `<data_dir>/cordoned`, so it survives a restart.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{RwLock, RwLockReadGuard};

use crate::error::{CommandError, CommandResult, ErrorKind};

/// The cordon flag, and the gate that orders it with admission: a create holds the gate (read)
/// from its cordon check until its machine is recorded, and turning the cordon on waits for
/// the gate (write), so once `berth host cordon` answered no create admitted before it commits.
#[derive(Debug)]
pub(crate) struct Cordon {
    flag: PathBuf,
    on: AtomicBool,
    gate: RwLock<()>,
}

impl Cordon {
    /// The cordon as the data dir records it.
    pub(crate) fn open(data_dir: &std::path::Path) -> Self {
        let flag = data_dir.join("cordoned");
        Self {
            on: AtomicBool::new(flag.exists()),
            flag,
            gate: RwLock::new(()),
        }
    }

    pub(crate) fn is_on(&self) -> bool {
        self.on.load(Ordering::Acquire)
    }

    /// Admission's hold on the cordon: refused while the host is cordoned.
    pub(crate) async fn admit(&self) -> CommandResult<RwLockReadGuard<'_, ()>> {
        let g = self.gate.read().await;
        if self.is_on() {
            return Err(CommandError::new(
                ErrorKind::Cordoned,
                "this host is cordoned: it accepts no new machines (POST /v1/host/uncordon)",
            ));
        }
        Ok(g)
    }

    /// Turns the cordon on or off, persisted before it takes effect.
    pub(crate) async fn set(&self, on: bool) -> CommandResult<()> {
        let _g = self.gate.write().await;
        let r = if on {
            std::fs::write(&self.flag, b"cordoned\n")
        } else {
            std::fs::remove_file(&self.flag).or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
        };
        r.map_err(|e| CommandError::internal(format!("persisting the cordon flag: {e}")))?;
        self.on.store(on, Ordering::Release);
        tracing::info!(cordoned = on, "host cordon changed");
        Ok(())
    }
}
