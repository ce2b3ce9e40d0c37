//! Files berth cannot trust are refused with a clear error and left byte-for-byte unchanged.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::path::Path;

use berth_store::schema::{META, Migration, migrate};
use berth_store::{SCHEMA_VERSION, Store, StoreError, StoreOptions};
use common::*;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

fn populated(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let path = dir.path().join("berth.redb");
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    for i in 0..200 {
        create(&store, &format!("m{i}"));
        transition(&store, &format!("m{i}"), berth_types::State::Starting).unwrap();
    }
    store.close();
    path
}

fn open_err(path: &Path) -> StoreError {
    Store::open(path, StoreOptions::default()).expect_err("a damaged file must be refused")
}

/// Damages the file with `damage`, then checks the open is refused and the bytes are unchanged.
fn refused_untouched(damage: impl FnOnce(&mut Vec<u8>)) -> StoreError {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(&dir);
    let mut bytes = std::fs::read(&path).unwrap();
    damage(&mut bytes);
    std::fs::write(&path, &bytes).unwrap();
    let err = open_err(&path);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "the file was modified: {err}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "stray files left: {leftovers:?}");
    err
}

#[test]
fn truncated_file() {
    for keep in [0.5, 0.1] {
        let err = refused_untouched(|b| b.truncate((b.len() as f64 * keep) as usize));
        assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
        assert!(err.to_string().contains("left untouched"), "{err}");
    }
}

#[test]
fn truncated_to_a_few_bytes() {
    let err = refused_untouched(|b| b.truncate(100));
    assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
}

#[test]
fn random_bytes_over_every_page() {
    // A deterministic pseudo-random pattern, 16 bytes every 512, past the header region.
    let err = refused_untouched(|b| {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut off = 4096;
        while off + 16 < b.len() {
            for byte in &mut b[off..off + 16] {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *byte = x as u8;
            }
            off += 512;
        }
    });
    assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
}

#[test]
fn random_bytes_in_the_header() {
    let err = refused_untouched(|b| {
        for (i, byte) in b[..64].iter_mut().enumerate() {
            *byte = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
    });
    assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
}

#[test]
fn a_file_that_is_not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.redb");
    std::fs::write(&path, b"this is a text file, not a database\n".repeat(100)).unwrap();
    let before = std::fs::read(&path).unwrap();
    let err = open_err(&path);
    assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

fn set_schema_version(path: &Path, v: u32) {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(META)
        .unwrap()
        .insert("schema_version", v.to_le_bytes().as_slice())
        .unwrap();
    txn.commit().unwrap();
}

#[test]
fn newer_schema_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(&dir);
    set_schema_version(&path, SCHEMA_VERSION + 1);
    let before = std::fs::read(&path).unwrap();
    let err = open_err(&path);
    assert!(
        matches!(err, StoreError::SchemaTooNew { found, .. } if found == SCHEMA_VERSION + 1),
        "{err}"
    );
    assert!(
        err.to_string().contains("newer than this berth supports"),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn a_redb_file_without_berth_schema_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<u64, u64>::new("other"))
            .unwrap()
            .insert(1, 2)
            .unwrap();
        txn.commit().unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let err = open_err(&path);
    assert!(matches!(err, StoreError::NotBerth { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

fn add_marker(txn: &redb::WriteTransaction) -> berth_store::Result<()> {
    let mut meta = txn.open_table(META).expect("meta");
    meta.insert("migrated", b"yes".as_slice()).expect("insert");
    Ok(())
}

#[test]
fn migration_copies_the_file_aside_then_upgrades() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(&dir);
    let original = std::fs::read(&path).unwrap();
    let steps = [Migration {
        from: SCHEMA_VERSION,
        description: "test step",
        apply: add_marker,
    }];
    migrate(&path, SCHEMA_VERSION, &steps, SCHEMA_VERSION + 1).unwrap();

    let backup = dir.path().join(format!("berth.redb.v{SCHEMA_VERSION}.bak"));
    assert_eq!(
        std::fs::read(&backup).unwrap(),
        original,
        "the copy aside is the pre-migration file"
    );
    let db = redb::Database::open(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    assert_eq!(meta.get("migrated").unwrap().unwrap().value(), b"yes");
    let v = meta
        .get("schema_version")
        .unwrap()
        .unwrap()
        .value()
        .to_vec();
    assert_eq!(
        u32::from_le_bytes(v.try_into().unwrap()),
        SCHEMA_VERSION + 1
    );
    drop((meta, txn, db));
    // This build does not know the new version, so it refuses the migrated file.
    assert!(matches!(open_err(&path), StoreError::SchemaTooNew { .. }));
    // A missing step is an error, not a silent skip.
    let err = migrate(&backup, SCHEMA_VERSION, &[], SCHEMA_VERSION + 1).unwrap_err();
    assert!(
        err.to_string().contains("no migration from schema version"),
        "{err}"
    );
}

/// A copy of the file taken while a store holds it looks exactly like a file after a crash.
fn unclean_copy(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let live = dir.path().join("live.redb");
    let store = Store::open(&live, StoreOptions::default()).unwrap();
    for i in 0..50 {
        create(&store, &format!("m{i}"));
    }
    let copy = dir.path().join("berth.redb");
    std::fs::copy(&live, &copy).unwrap();
    drop(store);
    std::fs::remove_file(&live).unwrap();
    copy
}

#[test]
fn an_unclean_file_is_repaired_with_every_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = unclean_copy(&dir);
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    assert_eq!(store.open_kind(), berth_store::OpenKind::Repaired);
    assert_eq!(store.machines().unwrap().len(), 50);
    assert!(store.check().unwrap().is_ok());
    drop(store);
    assert!(
        !dir.path().join("berth.redb.pre-repair").exists(),
        "the repair copy is removed"
    );
}

#[test]
fn an_unclean_damaged_file_is_put_back_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = unclean_copy(&dir);
    let mut bytes = std::fs::read(&path).unwrap();
    let mut off = 4096;
    while off + 8 < bytes.len() {
        bytes[off..off + 8].copy_from_slice(&0xdead_beef_dead_beef_u64.to_le_bytes());
        off += 1024;
    }
    std::fs::write(&path, &bytes).unwrap();
    let err = open_err(&path);
    assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert!(!dir.path().join("berth.redb.pre-repair").exists());
}

#[test]
fn a_corrupt_record_is_named_by_table_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(&dir);
    {
        // Valid redb, valid page checksums, but a record whose payload no longer matches its CRC.
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(berth_store::schema::MACHINES).unwrap();
            let mut bytes = t.get("m7").unwrap().unwrap().value().to_vec();
            let last = bytes.len() - 3;
            bytes[last] ^= 0x01;
            t.insert("m7", bytes.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let err = open_err(&path);
    let msg = err.to_string();
    assert!(
        msg.contains("table machines") && msg.contains("\"m7\""),
        "{msg}"
    );
    assert!(msg.contains("checksum mismatch"), "{msg}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

/// Flips a byte of the payload of event `seq`, keeping redb's pages valid.
fn corrupt_event(path: &Path, seq: u64) {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(berth_store::schema::EVENTS).unwrap();
        let mut bytes = t.get(seq).unwrap().unwrap().value().to_vec();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x01;
        t.insert(seq, bytes.as_slice()).unwrap();
    }
    txn.commit().unwrap();
}

#[test]
fn a_damaged_history_found_after_open_stops_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(&dir);
    corrupt_event(&path, 123);
    // The history is verified in the background: the open itself succeeds and reads work.
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    assert_eq!(store.machines().unwrap().len(), 200);
    let outcome = store.wait_verified(std::time::Duration::from_secs(60));
    let berth_store::Verification::Failed { reason } = outcome else {
        panic!("the damaged event was not found: {outcome:?}");
    };
    assert!(
        reason.contains("table events") && reason.contains("123"),
        "{reason}"
    );
    assert!(reason.contains("checksum mismatch"), "{reason}");
    // From then on nothing writes to the file: not a transition, not a compaction.
    let err = transition(&store, "m3", berth_types::State::Started).unwrap_err();
    assert!(matches!(err, StoreError::HistoryDamaged { .. }), "{err}");
    assert!(
        err.to_string().contains("restore it from a backup"),
        "{err}"
    );
    let err = store.compact().unwrap_err();
    assert!(matches!(err, StoreError::HistoryDamaged { .. }), "{err}");
    let (machines, last_seq) = (store.machines().unwrap(), store.last_seq().unwrap());
    drop(store);
    let db = redb::Database::open(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let events = txn.open_table(berth_store::schema::EVENTS).unwrap();
    assert_eq!(events.len().unwrap(), 400, "an event was written");
    assert_eq!(events.last().unwrap().unwrap().0.value(), last_seq);
    let m3 = machines.iter().find(|m| m.id.as_str() == "m3").unwrap();
    assert_eq!(m3.state, berth_types::State::Starting);
}

#[test]
fn a_sound_history_passes_its_verification_after_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(&dir);
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let outcome = store.wait_verified(std::time::Duration::from_secs(60));
    // 200 machines × (created, starting): each an event and a history row.
    assert!(
        matches!(
            outcome,
            berth_store::Verification::Passed { records: 800, .. }
        ),
        "{outcome:?}"
    );
    transition(&store, "m3", berth_types::State::Started).unwrap();
    store.compact().unwrap();
}
