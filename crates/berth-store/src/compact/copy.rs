//! Compaction's copying: the snapshot into the new file, the keys written since, and the swap on
//! the writer thread.

#[allow(clippy::wildcard_imports)]
use super::*;

pub(super) fn copy_all(
    src: &ReadTransaction,
    dst: &Database,
    mut progress: impl FnMut(u64),
) -> Result<u64> {
    let mut rows = 0u64;
    for table in TABLES {
        table.copy(src, dst, COPY_CHUNK_ROWS, "compact: copy", &mut |n| {
            rows += n;
            progress(rows);
        })?;
    }
    Ok(rows)
}

/// Copies the keys in `dirty` from `src` (or removes them where `src` has none), and the whole
/// `meta` table, in one transaction of the given durability.
pub(super) fn apply_dirty(
    src: &ReadTransaction,
    dst: &Database,
    dirty: &Dirty,
    durability: redb::Durability,
) -> Result<()> {
    let mut txn = dst
        .begin_write()
        .map_err(StoreError::db("compact: catch up"))?;
    txn.set_durability(durability)
        .map_err(StoreError::db("compact: catch up"))?;
    let e = StoreError::db("compact: catch up");
    {
        macro_rules! sync_keys {
            ($def:expr, $keys:expr, |$k:ident| $key:expr) => {{
                let from = src
                    .open_table($def)
                    .map_err(StoreError::db("compact: read"))?;
                let mut to = txn
                    .open_table($def)
                    .map_err(StoreError::db("compact: catch up"))?;
                for $k in $keys {
                    let key = $key;
                    match from.get(key).map_err(StoreError::db("compact: read"))? {
                        Some(v) => {
                            to.insert(key, v.value())
                                .map_err(StoreError::db("compact: catch up"))?;
                        }
                        None => {
                            to.remove(key)
                                .map_err(StoreError::db("compact: catch up"))?;
                        }
                    }
                }
            }};
        }
        sync_keys!(MACHINES, &dirty.machines, |k| k.as_str());
        sync_keys!(OPERATIONS, &dirty.operations, |k| *k);
        sync_keys!(EVENTS, &dirty.events, |k| *k);
        sync_keys!(HISTORY, &dirty.history, |k| (k.0.as_str(), k.1));
        sync_keys!(CONFIG_VERSIONS, &dirty.config_versions, |k| (
            k.0.as_str(),
            k.1
        ));
        for table in TABLES
            .iter()
            .filter(|t| Dirty::COPIED_WHOLE.contains(&t.name()))
        {
            table.copy_into(src, &txn, "compact: catch up")?;
        }
    }
    txn.commit().map_err(e)
}

/// The swap, on the writer thread between commits. Returns how long writers were paused, how
/// many keys it copied, and the old database (to be closed outside the pause).
pub(super) fn swap(
    w: &mut Writer,
    new: Database,
    tmp: &Path,
    path: &Path,
    hook: Option<&(dyn Fn(&str) + Send + Sync)>,
) -> Result<(Duration, u64, Arc<Database>)> {
    let t0 = Instant::now();
    let dirty = w.dirty.take();
    w.dirty = Dirty::default();
    let snapshot =
        w.db.begin_read()
            .map_err(StoreError::db("compact: snapshot"))?;
    apply_dirty(&snapshot, &new, &dirty, redb::Durability::Immediate)?;
    drop(snapshot);
    if let Some(hook) = hook {
        hook("new-file-durable");
    }
    std::fs::rename(tmp, path).map_err(StoreError::io(format!(
        "rename {} over {}",
        tmp.display(),
        path.display()
    )))?;
    // From here on the path names the new file: the swap must complete.
    if let Some(hook) = hook {
        hook("renamed");
    }
    if let Err(e) = sync_dir(path) {
        tracing::error!(error = %e, "could not fsync the data directory after the compaction's rename; the new file is complete, but a power cut now could bring back the old name");
    }
    let new = Arc::new(new);
    *w.slot.write().unwrap_or_else(|e| e.into_inner()) = new.clone();
    let old = std::mem::replace(&mut w.db, new);
    debug_assert!(Arc::ptr_eq(&w.db, &slot_get(&w.slot)));
    // Closing the old database (redb flushes and frees its cache) happens after the pause, on
    // the compacting thread; readers still in it keep it open until they finish.
    Ok((t0.elapsed(), dirty.len() as u64, old))
}
