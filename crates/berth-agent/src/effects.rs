//! The driver as the machine layer's `Effects`, plus exit watchers.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_driver::files::{self, ShimState};
use berth_driver::{Driver, DriverError, Probe, exit_info};
use berth_machine::{EffectError, Effects, ImageError, Observed, ReadyImage};
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

/// A machine whose workload's state could not be read: nothing was recorded or deleted for it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UnknownMachine {
    /// The machine.
    pub machine_id: String,
    /// What could not be read, and why.
    pub reason: String,
    /// Since when (the first observation of this run of failures).
    pub since: berth_types::Timestamp,
    /// Observations that failed in a row.
    pub attempts: u64,
}

/// Effects on this host, through the driver.
#[derive(Debug)]
pub struct HostEffects {
    driver: Arc<Driver>,
    exits: mpsc::UnboundedSender<ExitNotice>,
    watched: Mutex<HashSet<(String, i32)>>,
    unknown: Mutex<BTreeMap<String, UnknownMachine>>,
    /// The host's image store; without one, image machines are refused.
    images: Option<Arc<berth_image::ImageStore>>,
    /// Imports and pulls into that store, and the images creates are about to record.
    pulls: Option<Arc<crate::images::Images>>,
}

/// An image store's error as the machine layer classifies it: the image or the request at fault
/// (400), the registry (502), or the host's own store (500).
fn image_error(e: &berth_image::ImageError) -> ImageError {
    if e.is_bad_input() {
        ImageError::Invalid(format!("image: {e}"))
    } else if e.is_registry() {
        ImageError::Registry(format!("image: {e}"))
    } else {
        ImageError::Host(format!("image: {e}"))
    }
}

/// Checks the user and the program against the image before anything is recorded; the digest the
/// machine will run and what the pull did.
fn checked_run(
    config: &berth_types::MachineConfig,
    resolved: berth_image::Resolved,
    pulled: Option<String>,
) -> Result<Option<ReadyImage>, ImageError> {
    let run = crate::image_run::image_run(config, &resolved)
        .map_err(|e| ImageError::Invalid(format!("user: {e}")))?;
    crate::image_run::check_args(&run).map_err(ImageError::Invalid)?;
    Ok(Some(ReadyImage {
        digest: resolved.digest,
        pulled,
    }))
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
            unknown: Mutex::new(BTreeMap::new()),
            images: None,
            pulls: None,
        }
    }

    /// These effects with an image store, which image machines' images are imported into.
    pub fn with_images(mut self, images: Arc<berth_image::ImageStore>) -> Self {
        self.images = Some(images);
        self
    }

    /// These effects pulling registry images (and importing layouts) through `pulls`, whose
    /// store becomes the image store.
    pub fn with_pulls(mut self, pulls: Arc<crate::images::Images>) -> Self {
        self.images = Some(pulls.store().clone());
        self.pulls = Some(pulls);
        self
    }

    /// Machines whose state could not be read at their last observation (for health, metrics
    /// and `berth doctor`).
    pub fn unknown(&self) -> Vec<UnknownMachine> {
        self.unknown
            .lock()
            .map(|u| u.values().cloned().collect())
            .unwrap_or_default()
    }

    fn set_unknown(&self, id: &str, reason: Option<&str>) {
        let Ok(mut u) = self.unknown.lock() else {
            return;
        };
        match reason {
            Some(reason) => {
                let e = u.entry(id.to_owned()).or_insert_with(|| UnknownMachine {
                    machine_id: id.to_owned(),
                    reason: reason.to_owned(),
                    since: berth_types::Timestamp::now(),
                    attempts: 0,
                });
                e.reason = reason.to_owned();
                e.attempts += 1;
            }
            None => {
                if u.remove(id).is_some() {
                    tracing::info!(machine = id, "the workload's state can be read again");
                }
            }
        }
        metrics::gauge!("berth_machines_unknown").set(u.len() as f64);
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
            let result = match driver.wait_exit(&id).await {
                // The agent killed a workload whose supervisor had died: reconciliation
                // records it with that reason, under its guard.
                Ok(r) if r.note.is_some() => Err(r.note.unwrap_or_default()),
                Ok(r) => Ok(exit_info(&r, false)),
                Err(e) => Err(e.to_string()),
            };
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

impl HostEffects {
    /// An image machine's run, from its recorded image digest; `None` for a process machine.
    fn image_run_of(
        &self,
        m: &MachineRecord,
    ) -> Result<Option<berth_driver::oci::ImageRun>, EffectError> {
        if m.config.image.is_none() {
            return Ok(None);
        }
        let (Some(images), Some(digest)) = (&self.images, &m.image_digest) else {
            return Err(EffectError(
                "image: the machine has no recorded image digest, or this host no image store"
                    .into(),
            ));
        };
        let resolved = images
            .get(digest)
            .map_err(|e| EffectError(format!("image {digest}: {e}")))?
            .ok_or_else(|| EffectError(format!("image {digest} is not in the image store")))?;
        crate::image_run::image_run(&m.config, &resolved)
            .map(Some)
            .map_err(|e| EffectError(format!("user: {e}")))
    }
}

impl Effects for HostEffects {
    async fn spawn(&self, m: &MachineRecord) -> Result<u32, EffectError> {
        // The operation's id names the launch, so a resumed operation finds its own workload.
        let instance = m
            .active_op
            .map_or_else(|| "adhoc".to_owned(), |op| format!("op-{op}"));
        let run = self.image_run_of(m)?;
        let pid = self
            .driver
            .spawn_with(m.id.as_str(), &m.config, &instance, run.as_ref())
            .await
            .map_err(effect_err)?;
        self.set_unknown(m.id.as_str(), None);
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
        self.driver.cleanup(m.id.as_str()).map_err(effect_err)?;
        self.set_unknown(m.id.as_str(), None);
        Ok(())
    }

    async fn resolve_image(
        &self,
        config: &berth_types::MachineConfig,
    ) -> Result<Option<ReadyImage>, ImageError> {
        let Some(reference) = config.image.clone() else {
            return Ok(None);
        };
        if let Some(pulls) = self.pulls.clone() {
            return match pulls.ready(&reference, true).await {
                Ok(ready) => checked_run(config, ready.resolved, ready.pulled),
                Err(e) => Err(image_error(&e)),
            };
        }
        let Some(images) = self.images.clone() else {
            return Err(ImageError::Invalid(
                "image: this host has no image store".into(),
            ));
        };
        // Importing reads and unpacks files: off the async threads.
        let imported = tokio::task::spawn_blocking(move || images.import(&reference))
            .await
            .map_err(|e| ImageError::Host(format!("image: the import task failed: {e}")))?;
        let resolved = imported.map_err(|e| image_error(&e))?;
        checked_run(config, resolved, None)
    }

    fn check_config(&self, config: &berth_types::MachineConfig) -> Result<(), String> {
        if config.image.is_some() {
            return self.driver.capabilities().check_image(&config.resources);
        }
        if let Some(user) = &config.user {
            // Refused before anything is recorded: a user the host does not know.
            berth_driver::user::resolve(user).map_err(|e| format!("user: {e}"))?;
        }
        self.driver.capabilities().check(&config.resources)
    }

    fn observe(&self, m: &MachineRecord) -> Observed {
        let id = m.id.as_str();
        let probe = self.driver.probe(id);
        if let Probe::Unknown { reason } = &probe {
            tracing::warn!(
                machine = id, recorded_state = %m.state, recorded_pid = ?m.pid, reason = %reason,
                "cannot tell whether the workload runs: nothing recorded, nothing removed; will look again"
            );
            self.set_unknown(id, Some(reason));
        } else {
            self.set_unknown(id, None);
        }
        match probe {
            Probe::Unknown { reason } => Observed::Unknown { reason },
            Probe::Running(s) => {
                // A workload found running (after its state was unreadable, say) is watched.
                self.watch(id, s.workload.pid);
                Observed::Running {
                    pid: s.workload.pid as u32,
                }
            }
            Probe::Exited(rec) => {
                let pid = match files::read_json::<ShimState>(
                    &self.driver.dir(id).join(files::STATE),
                ) {
                    Ok(s) => s.map_or(0, |s| s.workload.pid as u32),
                    Err(e) => {
                        // The exit record is evidence; which pid it was for is not known.
                        tracing::warn!(machine = id, error = %e, "reading shim.json of an exited workload");
                        0
                    }
                };
                match rec.note {
                    Some(note) => Observed::Gone {
                        reason: format!("{note} (pid {pid})"),
                    },
                    None => Observed::Exited {
                        pid,
                        exit: exit_info(&rec, false),
                    },
                }
            }
            Probe::Lost {
                state,
                workload_alive: true,
            } if state.boot_id == berth_driver::proc::boot_id() => Observed::Unsupervised {
                pid: state.workload.pid as u32,
            },
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

    async fn kill_unsupervised(&self, m: &MachineRecord) -> Result<(), EffectError> {
        let driver = self.driver.clone();
        let id = m.id.as_str().to_owned();
        // settle_lost waits (bounded) for the killed workload to go: off the async threads.
        match tokio::task::spawn_blocking(move || driver.settle_lost(&id)).await {
            Ok(r) => r.map(|_| ()).map_err(effect_err),
            Err(e) => Err(EffectError(format!(
                "killing the unsupervised workload: {e}"
            ))),
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
