//! Helpers shared by the store's integration tests.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
#![allow(dead_code)]

use std::collections::BTreeMap;

use berth_store::{Store, StoreOptions, TransitionSpec};
use berth_types::{EventKind, MachineConfig, MachineId, MachineRecord, Source, State, Timestamp};

pub fn record(id: &str) -> MachineRecord {
    MachineRecord::new(
        MachineId::parse(id).unwrap(),
        None,
        MachineConfig::command(["/bin/true"]),
        BTreeMap::new(),
        Timestamp::now(),
    )
}

pub fn create(store: &Store, id: &str) -> berth_types::Event {
    let rec = record(id);
    store
        .write_blocking(move |w| w.create_machine(rec, Source::User, "created by test"))
        .unwrap()
}

pub fn transition(store: &Store, id: &str, to: State) -> berth_store::Result<berth_types::Event> {
    let id = MachineId::parse(id).unwrap();
    store.write_blocking(move |w| {
        w.transition(
            &id,
            TransitionSpec::new(to, EventKind::Start, Source::User, "test"),
        )
    })
}

pub fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(dir.path().join("berth.redb"), StoreOptions::default()).unwrap()
}
