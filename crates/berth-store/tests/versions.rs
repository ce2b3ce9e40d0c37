//! Config versions: an update is a compare-and-swap on the current version, keeps the config
//! it replaces, never keeps more than `MAX_CONFIG_VERSIONS` per machine, leaves a history the
//! consistency check accepts, and a destroyed machine's versions go with it. A file of the
//! first schema is migrated to one with the versions table.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::time::Duration;

use berth_store::{
    ConfigChange, MAX_CONFIG_VERSIONS, RetentionPolicy, Store, StoreError, StoreOptions,
};
use berth_types::{EventKind, MachineConfig, MachineId, Source, State};
use common::*;

fn config(tag: u64) -> MachineConfig {
    let mut c = MachineConfig::command(["/bin/true"]);
    c.env.insert("TAG".into(), tag.to_string());
    c
}

fn update(store: &Store, id: &str, tag: u64, expect: Option<u64>) -> berth_store::Result<u64> {
    let id = MachineId::parse(id).unwrap();
    store.write_blocking(move |w| {
        w.record_config(
            &id,
            ConfigChange {
                config: config(tag),
                image_digest: None,
                expect_config_version: expect,
                source: Source::User,
                reason: format!("update to {tag}"),
            },
        )?;
        Ok(w.machine(&id)?.unwrap().config_version)
    })
}

fn tag(c: &MachineConfig) -> Option<&str> {
    c.env.get("TAG").map(String::as_str)
}

#[test]
fn an_update_is_a_compare_and_swap_that_keeps_what_it_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    create(&store, "m1");
    let id = MachineId::parse("m1").unwrap();
    assert_eq!(store.machine(&id).unwrap().unwrap().config_version, 1);
    assert_eq!(update(&store, "m1", 2, Some(1)).unwrap(), 2);
    let before = store.machine(&id).unwrap().unwrap();
    let events = store.history(&id).unwrap().len();
    let err = update(&store, "m1", 3, Some(1)).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::ConfigVersionMismatch {
                expected: 1,
                actual: 2,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        store.machine(&id).unwrap().unwrap(),
        before,
        "a refused update changed the record"
    );
    assert_eq!(store.history(&id).unwrap().len(), events);
    let versions = store.config_versions(&id).unwrap().unwrap();
    let got: Vec<(u64, Option<&str>)> = versions
        .iter()
        .map(|v| (v.version, tag(&v.config)))
        .collect();
    assert_eq!(got, [(2, Some("2")), (1, None)], "newest first");
    // The update event is recorded in the state the machine was in, and the check accepts it.
    let last = store.history(&id).unwrap().pop().unwrap();
    assert_eq!(
        (last.kind, last.from, last.to),
        (EventKind::Update, Some(State::Created), State::Created)
    );
    let report = store.check().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert!(
        store
            .config_versions(&MachineId::parse("nope").unwrap())
            .unwrap()
            .is_none()
    );
}

#[test]
fn versions_are_bounded_and_go_with_a_destroyed_machine() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    create(&store, "m1");
    create(&store, "m2");
    let id = MachineId::parse("m1").unwrap();
    for t in 2..=40 {
        update(&store, "m1", t, None).unwrap();
    }
    update(&store, "m2", 2, None).unwrap();
    let versions = store.config_versions(&id).unwrap().unwrap();
    assert_eq!(versions.len() as u64, MAX_CONFIG_VERSIONS);
    let numbers: Vec<u64> = versions.iter().map(|v| v.version).collect();
    let want: Vec<u64> = (40 - MAX_CONFIG_VERSIONS + 1..=40).rev().collect();
    assert_eq!(numbers, want);
    assert!(
        versions
            .iter()
            .all(|v| tag(&v.config) == Some(&v.version.to_string()) || v.version == 1)
    );
    let rows = |s: &Store| s.stats().unwrap().tables["config_versions"];
    assert_eq!(
        rows(&store),
        MAX_CONFIG_VERSIONS - 1 + 1,
        "m1's older ones and m2's one"
    );

    // Destroy m1; retention removes its record and its versions, and keeps m2's.
    for to in [State::Destroying, State::Destroyed] {
        transition(&store, "m1", to).unwrap();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let policy = RetentionPolicy {
        destroyed_machine_ttl: Duration::ZERO,
        ..RetentionPolicy::default()
    };
    // The history index must catch up before retention may remove the machine.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.machine(&id).unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "retention never removed m1"
        );
        rt.block_on(store.retain(&policy)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(store.config_versions(&id).unwrap().is_none());
    assert_eq!(rows(&store), 1, "only m2's older version is left");
    let report = store.check().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

#[test]
fn a_destroyed_machine_refuses_an_update_like_a_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    create(&store, "m1");
    for to in [State::Destroying, State::Destroyed] {
        transition(&store, "m1", to).unwrap();
    }
    let start = transition(&store, "m1", State::Starting).unwrap_err();
    let upd = update(&store, "m1", 2, None).unwrap_err();
    assert_eq!(upd.to_string(), start.to_string());
    let id = MachineId::parse("m1").unwrap();
    assert_eq!(store.config_versions(&id).unwrap().unwrap().len(), 1);
    // And a machine busy with an operation refuses it too.
    create(&store, "m2");
    let m2 = MachineId::parse("m2").unwrap();
    store
        .write_blocking({
            let m2 = m2.clone();
            move |w| {
                w.begin_operation(
                    &m2,
                    berth_types::OpKind::Start,
                    Source::User,
                    Default::default(),
                    &["x"],
                )
            }
        })
        .unwrap();
    assert!(matches!(
        update(&store, "m2", 2, None),
        Err(StoreError::Busy { .. })
    ));
}

#[test]
fn a_first_schema_file_is_migrated_to_have_the_versions_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.redb");
    {
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        create(&store, "m1");
        store.close();
    }
    // Make it a schema-1 file: no config_versions table, schema_version 1.
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        assert!(
            txn.delete_table(berth_store::schema::CONFIG_VERSIONS)
                .unwrap()
        );
        txn.open_table(berth_store::schema::META)
            .unwrap()
            .insert("schema_version", 1u32.to_le_bytes().as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    assert!(dir.path().join("berth.redb.v1.bak").exists());
    assert_eq!(update(&store, "m1", 2, Some(1)).unwrap(), 2);
    let id = MachineId::parse("m1").unwrap();
    assert_eq!(store.config_versions(&id).unwrap().unwrap().len(), 2);
    assert!(
        store
            .stats()
            .unwrap()
            .tables
            .contains_key("config_versions")
    );
}
