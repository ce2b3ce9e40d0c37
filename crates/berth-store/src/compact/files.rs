//! Compaction's file handling: the copy's path and leftovers, free space, fsyncs, and releasing
//! the old file's blocks a slice at a time.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Where the compacted copy is built.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".compact");
    path.with_file_name(name)
}

/// At open: a `.compact` file is the unfinished copy of a compaction that crashed before its
/// swap. The live file is complete without it.
pub(crate) fn remove_leftover(path: &Path) -> Result<()> {
    let tmp = tmp_path(path);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {
            tracing::warn!(file = %tmp.display(), "removed the copy left by a compaction that did not finish");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(format!("remove {}", tmp.display()))(e)),
    }
}

/// Bytes available to an unprivileged writer in the file system holding `dir`.
pub(super) fn available_bytes(dir: &Path) -> Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| {
        StoreError::io(format!("statvfs {}", dir.display()))(std::io::Error::from(e))
    })?;
    #[allow(clippy::useless_conversion)] // the field types differ between targets
    Ok(u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size())))
}

/// Whether `available` bytes leave room for a copy of `live` bytes plus the margin and reserve.
pub(crate) fn space_needed(live: u64, reserve: u64) -> u64 {
    (live as f64 * (1.0 + SPACE_MARGIN)) as u64 + reserve
}

/// Flushes the copy's written pages to disk outside the pause: the swap's durable commit then
/// only has the last few keys to sync, not the whole file.
pub(super) fn flush(tmp: &Path) -> Result<()> {
    std::fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(StoreError::io(format!("fsync {}", tmp.display())))
}

pub(super) fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Our own handle on the old file, so that closing its database does not free its blocks all at
/// once (see [`release_old_file`]). Without it (it should not fail: the store has the file open
/// itself) the old file's space is freed at its last close, as redb would; not a reason to give up.
pub(super) fn hold_open(path: &Path) -> Option<std::fs::File> {
    match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot hold the old database file open; its space is freed at once when it closes");
            None
        }
    }
}

/// Gives the old file's blocks back a slice at a time. It is already unlinked (renamed over) and
/// closed by redb; freeing a gigabyte of extents in one go (the last close) is one large
/// filesystem journal transaction, and every live commit's fsync would wait behind it.
pub(super) fn release_old_file(file: &std::fs::File) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = file.metadata() else {
        return;
    };
    // Truncating acts on the inode: if the old file still has a name (a hard link someone made,
    // say for a backup), it is somebody's data, not ours to shrink.
    if meta.nlink() != 0 {
        return;
    }
    let mut len = meta.len();
    while len > RELEASE_SLICE_BYTES {
        len -= RELEASE_SLICE_BYTES;
        if file.set_len(len).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A file's length and how many of its bytes hold data rather than holes: its disk usage,
/// counted from its extents (`SEEK_DATA`/`SEEK_HOLE`), so that a compressing filesystem (whose
/// `st_blocks` is the compressed size) measures the same as any other. A filesystem without hole
/// support reports the whole length as data.
pub(crate) fn file_sizes(path: &Path) -> Result<(u64, u64)> {
    let file =
        std::fs::File::open(path).map_err(StoreError::io(format!("open {}", path.display())))?;
    let len = file
        .metadata()
        .map_err(StoreError::io(format!("stat {}", path.display())))?
        .len();
    Ok((len, data_bytes(&file, len)))
}

pub(super) fn data_bytes(file: &std::fs::File, len: u64) -> u64 {
    use nix::unistd::{Whence, lseek};
    let mut data = 0u64;
    let mut pos: i64 = 0;
    let end = i64::try_from(len).unwrap_or(i64::MAX);
    while pos < end {
        let start = match lseek(file, pos, Whence::SeekData) {
            Ok(s) => s,
            // ENXIO: no data past `pos`.
            Err(nix::errno::Errno::ENXIO) => break,
            // No SEEK_DATA here: count everything.
            Err(_) => return len,
        };
        let stop = match lseek(file, start, Whence::SeekHole) {
            Ok(s) => s.min(end),
            Err(_) => return len,
        };
        data += u64::try_from(stop - start).unwrap_or(0);
        pos = stop;
    }
    data
}
