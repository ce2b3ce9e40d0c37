//! The admission index: what a create must be decided against, kept by the writer thread.
//!
//! The writer is the only writer, so it can keep, in memory, an exact view of the machines that
//! are not destroyed (their ids and names) and of the Idempotency-Keys recently used, updated as
//! each closure's writes are applied. A create's closure then decides the machine limit, the
//! name's uniqueness and the key's reuse in O(1), against committed state *and* every earlier
//! closure of its batch: two concurrent creates can never both pass a check that only one of
//! them may pass.
//!
//! The index is built at open from the `machines` table (one scan) and holds nothing the table
//! does not: a create's key and body digest are kept in the machine's metadata
//! ([`IDEMPOTENCY_KEY_LABEL`], [`IDEMPOTENCY_DIGEST_LABEL`]), written in the same write as the
//! machine, so a retry is recognised after a restart. Keys are forgotten [`IDEMPOTENCY_TTL`]
//! after their machine's creation, and at most [`MAX_IDEMPOTENCY_KEYS`] are held (the oldest go
//! first), so the map never grows without bound.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use berth_types::{MachineId, MachineRecord, State, Timestamp};
use redb::{ReadableDatabase, ReadableTable};

use crate::Store;
use crate::codec::decode_at;
use crate::error::{Result, StoreError};
use crate::schema::MACHINES;
use crate::writer::WriteCtx;

/// Metadata key holding the Idempotency-Key a machine was created with.
pub const IDEMPOTENCY_KEY_LABEL: &str = "berth/idempotency-key";
/// Metadata key holding the digest of the create request that key was first used with.
pub const IDEMPOTENCY_DIGEST_LABEL: &str = "berth/idempotency-digest";
/// How long an Idempotency-Key is remembered after the create that used it.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);
/// Most Idempotency-Keys remembered at once; past it the oldest is forgotten early.
pub const MAX_IDEMPOTENCY_KEYS: usize = 100_000;

/// What an Idempotency-Key was used for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUse {
    /// The machine the first create made.
    pub machine_id: MachineId,
    /// The digest of that create's request.
    pub digest: String,
    /// When that machine was created.
    pub at: Timestamp,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct AdmissionIndex {
    /// Machines not destroyed: id → name.
    live: HashMap<MachineId, String>,
    /// Names of machines not destroyed → the machines holding them (one, except in a file
    /// written before names were unique).
    names: HashMap<String, Vec<MachineId>>,
    keys: HashMap<String, KeyUse>,
    /// Keys in the order they were recorded, for expiry.
    key_order: VecDeque<(Timestamp, String)>,
}

impl AdmissionIndex {
    /// Builds the index from the committed machines.
    pub(crate) fn load(db: &redb::Database) -> Result<AdmissionIndex> {
        let txn = db.begin_read().map_err(StoreError::db("load admission"))?;
        let table = txn
            .open_table(MACHINES)
            .map_err(StoreError::db("load admission"))?;
        let mut index = AdmissionIndex::default();
        let mut keyed = Vec::new();
        for entry in table.iter().map_err(StoreError::db("load admission"))? {
            let (k, v) = entry.map_err(StoreError::db("load admission"))?;
            let rec: MachineRecord = decode_at("machines", k.value(), v.value())?;
            index.observe_state(&rec);
            if let Some(key) = rec.metadata.get(IDEMPOTENCY_KEY_LABEL) {
                keyed.push((rec.created_at, key.clone(), rec.id.clone(), digest_of(&rec)));
            }
        }
        // Oldest first, so a key used again after it expired maps to its newest machine.
        keyed.sort();
        let now = Timestamp::now();
        for (at, key, machine_id, digest) in keyed {
            index.record_key(
                key,
                KeyUse {
                    machine_id,
                    digest,
                    at,
                },
            );
        }
        index.expire(now);
        Ok(index)
    }

    /// Follows a record the writer is about to apply.
    pub(crate) fn observe(&mut self, rec: &MachineRecord) {
        self.observe_state(rec);
        if let Some(key) = rec.metadata.get(IDEMPOTENCY_KEY_LABEL)
            && rec.version <= 2
            && self.keys.get(key).is_none_or(|u| u.machine_id != rec.id)
        {
            // A machine's key is recorded by the write that creates it (version 1, or 2 with
            // its first step done inline); later writes of the same record change nothing.
            let (key, digest) = (key.clone(), digest_of(rec));
            self.record_key(
                key,
                KeyUse {
                    machine_id: rec.id.clone(),
                    digest,
                    at: rec.created_at,
                },
            );
        }
    }

    fn observe_state(&mut self, rec: &MachineRecord) {
        if rec.state == State::Destroyed {
            self.forget(&rec.id);
        } else if !self.live.contains_key(&rec.id) {
            self.live.insert(rec.id.clone(), rec.name.clone());
            self.names
                .entry(rec.name.clone())
                .or_default()
                .push(rec.id.clone());
        }
    }

    /// Follows a machine row being removed (retention) or destroyed.
    pub(crate) fn forget(&mut self, id: &MachineId) {
        let Some(name) = self.live.remove(id) else {
            return;
        };
        if let Some(ids) = self.names.get_mut(&name) {
            ids.retain(|i| i != id);
            if ids.is_empty() {
                self.names.remove(&name);
            }
        }
    }

    fn record_key(&mut self, key: String, usage: KeyUse) {
        self.key_order.push_back((usage.at, key.clone()));
        self.keys.insert(key, usage);
        while self.key_order.len() > MAX_IDEMPOTENCY_KEYS {
            self.pop_oldest_key();
        }
    }

    fn pop_oldest_key(&mut self) {
        if let Some((at, key)) = self.key_order.pop_front()
            && self.keys.get(&key).is_some_and(|u| u.at == at)
        {
            self.keys.remove(&key);
        }
    }

    /// Forgets keys older than the TTL.
    pub(crate) fn expire(&mut self, now: Timestamp) {
        let ttl = IDEMPOTENCY_TTL.as_nanos() as u64;
        while let Some((at, _)) = self.key_order.front() {
            if now.as_nanos().saturating_sub(at.as_nanos()) <= ttl {
                break;
            }
            self.pop_oldest_key();
        }
    }

    #[cfg(test)]
    pub(crate) fn key_count(&self) -> usize {
        self.keys.len()
    }
}

/// The body digest a record was created with (empty for a record without one).
fn digest_of(rec: &MachineRecord) -> String {
    rec.metadata
        .get(IDEMPOTENCY_DIGEST_LABEL)
        .cloned()
        .unwrap_or_default()
}

/// Admission lookups for a write closure. They see committed state and every earlier closure
/// of the batch, but not this closure's own staged writes: check first, then create.
impl WriteCtx<'_, '_> {
    /// Machines on this host that are not destroyed.
    pub fn live_machines(&self) -> usize {
        self.admission.live.len()
    }

    /// The machine (not destroyed) that has this name, if any.
    pub fn machine_named(&self, name: &str) -> Option<MachineId> {
        self.admission
            .names
            .get(name)
            .and_then(|ids| ids.first())
            .cloned()
    }

    /// What this Idempotency-Key was used for within its TTL, if it was.
    pub fn idempotency_key(&mut self, key: &str) -> Option<KeyUse> {
        let now = self.now();
        self.admission.expire(now);
        self.admission.keys.get(key).cloned()
    }
}

/// One page of machines, in id order.
#[derive(Debug, Clone, PartialEq)]
pub struct MachinePage {
    /// The machines on this page.
    pub machines: Vec<MachineRecord>,
    /// The id to continue after, when more machines match.
    pub next: Option<MachineId>,
}

impl Store {
    /// Machines after `after` (in id order) that `filter` accepts, at most `limit` of them
    /// (`None`: every one), read in one snapshot. Only the rows it walks are decoded.
    pub fn machines_page(
        &self,
        after: Option<&MachineId>,
        limit: Option<usize>,
        mut filter: impl FnMut(&MachineRecord) -> bool,
    ) -> Result<MachinePage> {
        use std::ops::Bound;
        let start = self.inner.timings.start();
        let txn = self.read_txn("list_machines")?;
        let table = txn
            .open_table(MACHINES)
            .map_err(StoreError::db("list_machines"))?;
        let lower = match after {
            Some(id) => Bound::Excluded(id.as_str()),
            None => Bound::Unbounded,
        };
        let range = table
            .range::<&str>((lower, Bound::Unbounded))
            .map_err(StoreError::db("list_machines"))?;
        let mut machines = Vec::new();
        let mut next = None;
        let mut walked = 0;
        for entry in range {
            let (k, v) = entry.map_err(StoreError::db("list_machines"))?;
            let rec: MachineRecord = decode_at("machines", k.value(), v.value())?;
            walked += 1;
            if !filter(&rec) {
                continue;
            }
            if limit.is_some_and(|l| machines.len() >= l) {
                next = machines.last().map(|m: &MachineRecord| m.id.clone());
                break;
            }
            machines.push(rec);
        }
        self.inner
            .timings
            .finish("list_machines", start, walked, 0, || {
                format!("list a page of machines ({walked} read)")
            });
        Ok(MachinePage { machines, next })
    }
}

/// Metadata of a machine without the keys berth reserves for itself (`berth/...`).
pub fn user_metadata(metadata: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    metadata
        .iter()
        .filter(|(k, _)| !k.starts_with("berth/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rec(id: &str, name: &str, state: State, key: Option<&str>, at: u64) -> MachineRecord {
        let mut metadata = BTreeMap::new();
        if let Some(k) = key {
            metadata.insert(IDEMPOTENCY_KEY_LABEL.to_owned(), k.to_owned());
            metadata.insert(IDEMPOTENCY_DIGEST_LABEL.to_owned(), "d".to_owned());
        }
        let mut r = MachineRecord::new(
            MachineId::parse(id).unwrap(),
            Some(name.to_owned()),
            berth_types::MachineConfig::command(["true"]),
            metadata,
            Timestamp::from_nanos(at),
        );
        r.state = state;
        r.version = 1;
        r
    }

    #[test]
    fn names_and_counts_follow_destroys() {
        let mut ix = AdmissionIndex::default();
        ix.observe(&rec("a", "web", State::Started, None, 1));
        ix.observe(&rec("b", "db", State::Started, None, 1));
        assert_eq!(ix.live.len(), 2);
        assert_eq!(ix.names.get("web").unwrap()[0].as_str(), "a");
        ix.observe(&rec("a", "web", State::Destroying, None, 1));
        assert_eq!(ix.live.len(), 2, "destroying still counts");
        ix.observe(&rec("a", "web", State::Destroyed, None, 1));
        assert_eq!(ix.live.len(), 1);
        assert!(
            !ix.names.contains_key("web"),
            "a destroyed machine frees its name"
        );
        ix.forget(&MachineId::parse("b").unwrap());
        assert!(ix.live.is_empty() && ix.names.is_empty());
    }

    #[test]
    fn keys_expire_and_are_capped() {
        let mut ix = AdmissionIndex::default();
        let day = IDEMPOTENCY_TTL.as_nanos() as u64;
        ix.observe(&rec("a", "a", State::Started, Some("k1"), 10));
        ix.observe(&rec("b", "b", State::Started, Some("k2"), 20));
        assert_eq!(ix.key_count(), 2);
        ix.expire(Timestamp::from_nanos(15 + day));
        assert_eq!(ix.key_count(), 1, "k1 expired, k2 not yet");
        assert!(ix.keys.contains_key("k2"));
        ix.expire(Timestamp::from_nanos(25 + day));
        assert_eq!(ix.key_count(), 0);
        assert!(ix.key_order.is_empty(), "expired keys leave no trace");
        for i in 0..(MAX_IDEMPOTENCY_KEYS + 10) {
            ix.record_key(
                format!("k{i}"),
                KeyUse {
                    machine_id: MachineId::parse("a").unwrap(),
                    digest: String::new(),
                    at: Timestamp::from_nanos(100 + i as u64),
                },
            );
        }
        assert_eq!(ix.key_count(), MAX_IDEMPOTENCY_KEYS);
        assert!(!ix.keys.contains_key("k0"), "the oldest went first");
    }
}
