//! Leases: a client's exclusive claim on a machine for a while. While one is held, a user's
//! mutation of the machine must carry its nonce.
//!
//! Kept in memory (an agent restart drops them, as their holders retry anyway), and bounded:
//! a lease is only granted on a machine that is not destroyed, lasts at most [`MAX_LEASE_TTL`],
//! is dropped when its machine is destroyed, and expired leases are evicted at every grant, so
//! the map never holds more than one lease per machine that is not destroyed (plus those that
//! expired since the last grant).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use berth_types::config::limits;
use berth_types::{MachineId, State, Timestamp};

use crate::runner::OpError;

/// The longest lease.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(3600);
/// A lease's length when the request names none.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);

/// A lease as held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The machine.
    pub machine_id: MachineId,
    /// What the holder sends with each mutation.
    pub nonce: String,
    /// When it lapses.
    pub expires_at: Timestamp,
    /// Who holds it, for people.
    pub description: Option<String>,
}

/// Why a lease operation (or a mutation under a lease) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// The machine is leased and the mutation carried no nonce.
    #[error("machine {0} is leased; send its nonce in berth-lease-nonce")]
    Required(MachineId),
    /// The nonce sent is not the lease's.
    #[error("berth-lease-nonce does not match the lease on machine {0}")]
    Mismatch(MachineId),
    /// Someone else holds the lease.
    #[error("machine {id} is leased until {until}")]
    Held {
        /// The machine.
        id: MachineId,
        /// Until when.
        until: Timestamp,
    },
    /// The machine is destroyed (or being destroyed): there is nothing to lease.
    #[error("machine {0} is destroyed; it cannot be leased")]
    Destroyed(MachineId),
    /// The machine has no lease.
    #[error("machine {0} has no lease")]
    NotHeld(MachineId),
}

/// The leases of this host's machines.
#[derive(Debug, Default)]
pub(crate) struct Leases {
    map: Mutex<HashMap<MachineId, LeaseRecord>>,
}

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<MachineId, LeaseRecord>> {
        // A panic while holding the lock leaves a map that is still a valid map.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Grants or extends a lease. `state` reads the machine's current state (under the lease
    /// lock, so a destroy finishing meanwhile drops what this grants); `fresh` is the nonce of a
    /// new lease.
    pub(crate) fn acquire(
        &self,
        id: &MachineId,
        state: impl FnOnce() -> Result<State, OpError>,
        ttl: Option<Duration>,
        description: Option<String>,
        holder: Option<&str>,
        fresh: String,
    ) -> Result<LeaseRecord, OpError> {
        let ttl = ttl.unwrap_or(DEFAULT_LEASE_TTL);
        if ttl.is_zero() || ttl > MAX_LEASE_TTL {
            return Err(OpError::Invalid("ttl must be between 1ms and 1h".into()));
        }
        if let Some(d) = &description
            && d.len() > limits::LEASE_DESCRIPTION_MAX
        {
            return Err(OpError::TooLarge(format!(
                "description: {} bytes long; the limit is {}",
                d.len(),
                limits::LEASE_DESCRIPTION_MAX
            )));
        }
        let mut map = self.lock();
        if matches!(state()?, State::Destroyed | State::Destroying) {
            return Err(OpError::Lease(LeaseError::Destroyed(id.clone())));
        }
        let now = Timestamp::now();
        map.retain(|_, l| l.expires_at > now);
        let nonce = match map.get(id) {
            Some(held) if holder == Some(held.nonce.as_str()) => held.nonce.clone(),
            Some(held) => {
                return Err(OpError::Lease(LeaseError::Held {
                    id: id.clone(),
                    until: held.expires_at,
                }));
            }
            None => fresh,
        };
        let lease = LeaseRecord {
            machine_id: id.clone(),
            nonce,
            expires_at: Timestamp::from_nanos(
                now.as_nanos()
                    .saturating_add(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX)),
            ),
            description,
        };
        map.insert(id.clone(), lease.clone());
        Ok(lease)
    }

    /// The lease held on `id`, if one is.
    pub(crate) fn get(&self, id: &MachineId) -> Option<LeaseRecord> {
        let mut map = self.lock();
        let now = Timestamp::now();
        if map.get(id).is_some_and(|l| l.expires_at <= now) {
            map.remove(id);
        }
        map.get(id).cloned()
    }

    /// Refuses a mutation of a leased machine without the lease's nonce.
    pub(crate) fn check(&self, id: &MachineId, nonce: Option<&str>) -> Result<(), LeaseError> {
        let Some(lease) = self.get(id) else {
            return Ok(());
        };
        match nonce {
            None => Err(LeaseError::Required(id.clone())),
            Some(n) if n == lease.nonce => Ok(()),
            Some(_) => Err(LeaseError::Mismatch(id.clone())),
        }
    }

    /// Releases a lease (the holder's nonce is required while it is held).
    pub(crate) fn release(&self, id: &MachineId, nonce: Option<&str>) -> Result<(), LeaseError> {
        self.check(id, nonce)?;
        self.lock().remove(id);
        Ok(())
    }

    /// Drops a destroyed machine's lease.
    pub(crate) fn drop_machine(&self, id: &MachineId) {
        self.lock().remove(id);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn id(s: &str) -> MachineId {
        MachineId::parse(s).unwrap()
    }

    #[test]
    fn expired_leases_are_evicted_and_destroyed_machines_refused() {
        let l = Leases::default();
        for i in 0..100 {
            l.acquire(
                &id(&format!("m{i}")),
                || Ok(State::Started),
                Some(Duration::from_millis(1)),
                None,
                None,
                "n".into(),
            )
            .unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
        l.acquire(
            &id("x"),
            || Ok(State::Stopped),
            None,
            None,
            None,
            "n".into(),
        )
        .unwrap();
        assert_eq!(
            l.len(),
            1,
            "expired leases are gone once another is granted"
        );
        let e = l
            .acquire(
                &id("d"),
                || Ok(State::Destroyed),
                None,
                None,
                None,
                "n".into(),
            )
            .unwrap_err();
        assert!(matches!(e, OpError::Lease(LeaseError::Destroyed(_))), "{e}");
        let e = l
            .acquire(
                &id("y"),
                || Ok(State::Started),
                None,
                Some("d".repeat(limits::LEASE_DESCRIPTION_MAX + 1)),
                None,
                "n".into(),
            )
            .unwrap_err();
        assert!(matches!(e, OpError::TooLarge(_)), "{e}");
        l.drop_machine(&id("x"));
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn holder_extends_others_are_refused() {
        let l = Leases::default();
        let a = l
            .acquire(
                &id("m"),
                || Ok(State::Started),
                None,
                None,
                None,
                "n1".into(),
            )
            .unwrap();
        let e = l
            .acquire(
                &id("m"),
                || Ok(State::Started),
                None,
                None,
                None,
                "n2".into(),
            )
            .unwrap_err();
        assert!(matches!(e, OpError::Lease(LeaseError::Held { .. })));
        let b = l
            .acquire(
                &id("m"),
                || Ok(State::Started),
                None,
                None,
                Some("n1"),
                "n3".into(),
            )
            .unwrap();
        assert_eq!(a.nonce, b.nonce);
        assert_eq!(l.check(&id("m"), None), Err(LeaseError::Required(id("m"))));
        assert_eq!(
            l.check(&id("m"), Some("no")),
            Err(LeaseError::Mismatch(id("m")))
        );
        l.release(&id("m"), Some("n1")).unwrap();
        assert!(l.get(&id("m")).is_none());
    }
}
