//! Config updates: update, rollback and the list of versions. The new version is recorded in
//! one write (`Machines::update`); a started machine then runs its `update` operation to the
//! end, in its own task like every mutation.

use berth_api_types::{ConfigVersion, RollbackRequest, UpdateMachine};
use berth_machine::{OpError, UpdateRequest, Updated};
use berth_types::{MachineId, MachineRecord, Source};

use crate::Agent;
use crate::error::{CommandError, CommandResult};

impl Agent {
    /// A user's update: the new config checked like a create's, recorded as a new version
    /// (compare-and-swap on `current_version`), and applied to a started machine unless
    /// `skip_start`; refused without the lease's nonce while a lease is held.
    pub async fn update_machine(
        &self,
        id: &MachineId,
        req: UpdateMachine,
        lease_nonce: Option<String>,
    ) -> CommandResult<MachineRecord> {
        self.machine(id)?;
        let me = self.clone();
        let id = id.clone();
        self.detached(async move {
            me.machines().check_lease(&id, lease_nonce.as_deref())?;
            let req = UpdateRequest {
                config: req.config,
                current_version: req.current_version,
                skip_start: req.skip_start,
                source: Source::User,
            };
            let updated = me.machines().update(&id, req).await;
            me.apply_update(&id, updated).await
        })
        .await
    }

    /// A user's rollback: the older version (default: the previous one) recorded as a new
    /// version and applied like an update.
    pub async fn rollback_machine(
        &self,
        id: &MachineId,
        req: RollbackRequest,
        lease_nonce: Option<String>,
    ) -> CommandResult<MachineRecord> {
        self.machine(id)?;
        let me = self.clone();
        let id = id.clone();
        self.detached(async move {
            me.machines().check_lease(&id, lease_nonce.as_deref())?;
            let updated = me.machines().rollback(&id, req.version, Source::User).await;
            me.apply_update(&id, updated).await
        })
        .await
    }

    /// Runs a recorded update's operation, if it has one; a failed start is recorded on the
    /// machine, which is the answer.
    async fn apply_update(
        &self,
        id: &MachineId,
        updated: Result<Updated, OpError>,
    ) -> CommandResult<MachineRecord> {
        let updated = updated?;
        let Some(op) = updated.operation else {
            return Ok(updated.machine);
        };
        match self.machines().run(op).await {
            Ok(out) => {
                self.after_op(&out.machine);
                Ok(out.machine)
            }
            Err(OpError::Effect { .. }) => self.machine(id),
            Err(e) => Err(e.into()),
        }
    }

    /// A machine's config versions, newest first.
    pub fn machine_versions(&self, id: &MachineId) -> CommandResult<Vec<ConfigVersion>> {
        self.store()
            .config_versions(id)?
            .ok_or_else(|| CommandError::not_found(format!("machine {id} not found")))
    }
}
