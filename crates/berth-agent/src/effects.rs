//! The driver as the machine layer's `Effects`, plus exit watchers.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_driver::files::{self, ShimState};
use berth_driver::{Driver, DriverError, Probe, exit_info};
use berth_machine::{EffectError, Effects, Observed};
use berth_types::{ExitInfo, MachineRecord};
use tokio::sync::mpsc;

/// A workload's supervisor exited.
#[derive(Debug)]
pub struct ExitNotice {
    /// The machine.
    pub machine_id: String,
    /// The workload pid it was watching.
    pub pid: u32,
    /// How the workload exited (or why that is unknown).
    pub result: Result<ExitInfo, String>,
}

/// Effects on this host, through the driver.
#[derive(Debug)]
pub struct HostEffects {
    driver: Arc<Driver>,
    exits: mpsc::UnboundedSender<ExitNotice>,
    watched: Mutex<HashSet<(String, i32)>>,
}

fn effect_err(e: DriverError) -> EffectError {
    EffectError(e.to_string())
}

impl HostEffects {
    /// Effects that report exits on `exits`.
    pub fn new(driver: Arc<Driver>, exits: mpsc::UnboundedSender<ExitNotice>) -> Self {
        Self {
            driver,
            exits,
            watched: Mutex::new(HashSet::new()),
        }
    }

    /// The driver.
    pub fn driver(&self) -> &Arc<Driver> {
        &self.driver
    }

    /// Watches a machine's supervisor (once per workload) and reports its exit.
    pub fn watch(&self, id: &str, pid: i32) {
        let key = (id.to_owned(), pid);
        {
            let Ok(mut w) = self.watched.lock() else {
                return;
            };
            if !w.insert(key.clone()) {
                return;
            }
        }
        let driver = self.driver.clone();
        let tx = self.exits.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            let result = driver
                .wait_exit(&id)
                .await
                .map(|r| exit_info(&r, false))
                .map_err(|e| e.to_string());
            let _ = tx.send(ExitNotice {
                machine_id: id,
                pid: pid as u32,
                result,
            });
        });
    }

    /// Forgets a watch (its notice was handled).
    pub fn unwatch(&self, id: &str, pid: u32) {
        if let Ok(mut w) = self.watched.lock() {
            w.remove(&(id.to_owned(), pid as i32));
        }
    }
}

impl Effects for HostEffects {
    async fn prepare(&self, m: &MachineRecord) -> Result<(), EffectError> {
        self.driver.prepare(m.id.as_str()).map_err(effect_err)
    }

    async fn spawn(&self, m: &MachineRecord) -> Result<u32, EffectError> {
        // The operation's id names the launch, so a resumed operation finds its own workload.
        let instance = m
            .active_op
            .map_or_else(|| "adhoc".to_owned(), |op| format!("op-{op}"));
        let pid = self
            .driver
            .spawn(m.id.as_str(), &m.config, &instance)
            .await
            .map_err(effect_err)?;
        self.watch(m.id.as_str(), pid);
        u32::try_from(pid).map_err(|_| EffectError(format!("invalid pid {pid}")))
    }

    async fn stop_workload(
        &self,
        m: &MachineRecord,
        signal: &str,
        timeout: Duration,
    ) -> Result<Option<ExitInfo>, EffectError> {
        match self.driver.stop(m.id.as_str(), signal, timeout).await {
            Ok(rec) => Ok(rec.map(|r| exit_info(&r, true))),
            // The supervisor was gone; whatever it left has been killed. Nothing runs now.
            Err(DriverError::Lost(_)) => Ok(None),
            Err(e) => Err(effect_err(e)),
        }
    }

    async fn cleanup(&self, m: &MachineRecord) -> Result<(), EffectError> {
        self.driver.cleanup(m.id.as_str()).map_err(effect_err)
    }

    fn check_config(&self, config: &berth_types::MachineConfig) -> Result<(), String> {
        self.driver.capabilities().check(&config.resources)
    }

    fn observe(&self, m: &MachineRecord) -> Observed {
        match self.driver.probe(m.id.as_str()) {
            Probe::Running(s) => Observed::Running {
                pid: s.workload.pid as u32,
            },
            Probe::Exited(rec) => {
                let pid = files::read_json::<ShimState>(
                    &self.driver.dir(m.id.as_str()).join(files::STATE),
                )
                .ok()
                .flatten()
                .map_or(0, |s| s.workload.pid as u32);
                Observed::Exited {
                    pid,
                    exit: exit_info(&rec, false),
                }
            }
            Probe::Lost {
                state,
                workload_alive,
            } => Observed::Gone {
                reason: if state.boot_id != berth_driver::proc::boot_id() {
                    "the host rebooted since the workload started".to_owned()
                } else if workload_alive {
                    format!(
                        "its supervisor died; the workload (pid {}) runs unsupervised",
                        state.workload.pid
                    )
                } else {
                    "its supervisor and workload are gone with no exit recorded".to_owned()
                },
            },
            Probe::NotStarted => Observed::NotStarted,
        }
    }

    fn orphans(&self, known: &BTreeSet<String>) -> Vec<String> {
        self.driver
            .scan()
            .into_iter()
            .filter(|(id, p)| matches!(p, Probe::Running(_)) && !known.contains(id))
            .map(|(id, _)| id)
            .collect()
    }
}
