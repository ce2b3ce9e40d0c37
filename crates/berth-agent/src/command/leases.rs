//! Lease commands: acquire or extend, show (without the nonce), release.

use berth_api_types::{Lease, LeaseRequest};
use berth_types::MachineId;

use crate::error::{CommandError, CommandResult};
use crate::{Agent, random_hex, wire};

impl Agent {
    /// Grants a lease, or extends the one `holder` (its nonce) holds.
    pub fn acquire_lease(
        &self,
        id: &MachineId,
        req: LeaseRequest,
        holder: Option<&str>,
    ) -> CommandResult<Lease> {
        self.machine(id)?;
        let fresh = random_hex(16).map_err(|e| CommandError::internal(e.to_string()))?;
        let lease = self.machines().acquire_lease(
            id,
            req.ttl.map(|t| t.0),
            req.description,
            holder,
            fresh,
        )?;
        Ok(wire::lease(lease))
    }

    /// The lease held on a machine, without its nonce (only the holder knows it).
    pub fn lease_of(&self, id: &MachineId) -> CommandResult<Lease> {
        let mut lease = self
            .machines()
            .lease(id)
            .map(wire::lease)
            .ok_or_else(|| CommandError::not_found(format!("machine {id} has no lease")))?;
        lease.nonce = String::new();
        Ok(lease)
    }

    /// Releases a lease (with its nonce while it is held).
    pub fn release_lease(&self, id: &MachineId, holder: Option<&str>) -> CommandResult<()> {
        Ok(self.machines().release_lease(id, holder)?)
    }
}
