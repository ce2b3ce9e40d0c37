//! Config updates and rollbacks: a new config version recorded in one write (checked like a
//! create's, compare-and-swap on the current version), and for a started machine a durable
//! `update` operation that stops it with the old config's stop settings and starts it with the
//! new config.

use berth_store::{ConfigChange, StoreError};
use berth_types::{
    MachineConfig, MachineId, MachineRecord, OpKind, OperationRecord, Source, State,
};

use crate::plan::plan;
use crate::runner::{Effects, Machines, OpError, first_step_inline};

/// A request to update a machine's config.
#[derive(Debug, Clone)]
pub struct UpdateRequest {
    /// The whole new config (checked exactly like a create's).
    pub config: MachineConfig,
    /// Refuse unless this is the current config version
    /// ([`StoreError::ConfigVersionMismatch`]).
    pub current_version: Option<u64>,
    /// Record the new version without applying it to a started machine.
    pub skip_start: bool,
    /// Who asked.
    pub source: Source,
}

/// A recorded update.
#[derive(Debug, Clone)]
pub struct Updated {
    /// The machine as the write left it (with the new config version).
    pub machine: MachineRecord,
    /// The `update` operation that applies it, when the machine was started (run it with
    /// [`Machines::run`]).
    pub operation: Option<OperationRecord>,
}

/// The top-level config fields that differ between `old` and `new`, in field order
/// (`env`, `image`, ...); empty when they are the same.
pub fn changed_fields(old: &MachineConfig, new: &MachineConfig) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return Vec::new();
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

impl<E: Effects> Machines<E> {
    /// Records a new config version: checked like a create's config first (nothing recorded
    /// when it fails), then, in one write, the compare-and-swap on `current_version`, the old
    /// config kept as an older version, the `update` event, and — when the machine is started
    /// and `skip_start` is not set — the `update` operation with its first transition
    /// (→ restarting). A machine that is not started keeps its state: the new config is what its
    /// next start runs.
    pub async fn update(&self, id: &MachineId, req: UpdateRequest) -> Result<Updated, OpError> {
        let (config, image_digest) = self.checked_config(req.config).await?;
        self.record_update(
            id,
            config,
            image_digest,
            req.current_version,
            req.skip_start,
            req.source,
            "update",
        )
        .await
    }

    /// Records an older config version again, as a new version (the history only grows), and
    /// applies it like an update. `version` defaults to the one before the current. The version
    /// is read first and the write compares-and-swaps on the current version it saw, so a
    /// concurrent update makes the rollback fail rather than silently undo it.
    pub async fn rollback(
        &self,
        id: &MachineId,
        version: Option<u64>,
        source: Source,
    ) -> Result<Updated, OpError> {
        let versions = self
            .store()
            .config_versions(id)?
            .ok_or_else(|| StoreError::NotFound(id.clone()))?;
        let current = versions.first().map_or(1, |v| v.version);
        let target = match version {
            Some(v) => v,
            None if current > 1 => current - 1,
            None => {
                return Err(OpError::Invalid(format!(
                    "machine {id} has only config version {current}; there is no previous one to roll back to"
                )));
            }
        };
        let Some(old) = versions.iter().find(|v| v.version == target) else {
            let oldest = versions.last().map_or(current, |v| v.version);
            return Err(StoreError::NoConfigVersion {
                id: id.clone(),
                version: target,
                kept: format!("{oldest}..={current}"),
            }
            .into());
        };
        let (config, image_digest) = self.checked_config(old.config.clone()).await?;
        let what = format!("rollback to config version {target}");
        self.record_update(
            id,
            config,
            image_digest,
            Some(current),
            false,
            source,
            &what,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)] // one write's inputs, checked by the two callers above
    async fn record_update(
        &self,
        id: &MachineId,
        config: MachineConfig,
        image_digest: Option<String>,
        current_version: Option<u64>,
        skip_start: bool,
        source: Source,
        what: &str,
    ) -> Result<Updated, OpError> {
        let names: Vec<&'static str> = plan(OpKind::Update, true).iter().map(|s| s.name).collect();
        let id = id.clone();
        let what = what.to_owned();
        let updated = self
            .store()
            .write(move |w| {
                let rec = w
                    .machine(&id)?
                    .ok_or_else(|| StoreError::NotFound(id.clone()))?;
                let changed = changed_fields(&rec.config, &config);
                let old_stop = rec.config.stop.clone();
                let new_version = rec.config_version + 1;
                let apply = rec.state == State::Started && !skip_start;
                let changed = if changed.is_empty() {
                    "nothing".to_owned()
                } else {
                    changed.join(", ")
                };
                let reason = format!(
                    "{what}: config version {new_version} (changed: {changed}){}",
                    if apply {
                        "; restarting to apply it"
                    } else if rec.state == State::Started {
                        "; skip_start: applied at the next start"
                    } else {
                        ""
                    }
                );
                w.record_config(
                    &id,
                    ConfigChange {
                        config,
                        image_digest,
                        expect_config_version: current_version,
                        source,
                        reason,
                    },
                )?;
                let operation = if apply {
                    let params = berth_types::OpParams {
                        signal: Some(old_stop.signal),
                        timeout_ms: Some(
                            u64::try_from(old_stop.timeout.0.as_millis()).unwrap_or(u64::MAX),
                        ),
                        config_version: Some(new_version),
                        ..Default::default()
                    };
                    let op = w.begin_operation(&id, OpKind::Update, source, params, &names)?;
                    Some(first_step_inline(w, op, true)?)
                } else {
                    None
                };
                let machine = w
                    .machine(&id)?
                    .ok_or_else(|| StoreError::NotFound(id.clone()))?;
                Ok(Updated { machine, operation })
            })
            .await?;
        tracing::info!(
            machine = %updated.machine.id, config_version = updated.machine.config_version,
            applying = updated.operation.is_some(), "config version recorded"
        );
        Ok(updated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_fields_names_what_differs() {
        let a = MachineConfig::command(["sleep", "1"]);
        assert!(changed_fields(&a, &a).is_empty());
        let mut b = a.clone();
        b.env.insert("K".into(), "V".into());
        b.image = Some("oci:/x".into());
        assert_eq!(changed_fields(&a, &b), ["env", "image"]);
    }
}
