//! Modes come from the archive (or 0755 for directories it implies), never from berthd's umask.
//! A test binary of its own: the umask it sets is process-wide.
#![allow(clippy::unwrap_used)]

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use berth_image::ImageStore;
use nix::sys::stat::{Mode, umask};
use support::{Tar, single_layer};
use tar::EntryType;

#[test]
fn modes_do_not_depend_on_the_umask() {
    umask(Mode::from_bits_truncate(0o077));
    let tmp = tempfile::tempdir().unwrap();
    // No directory entries at all: usr/ and usr/bin/ are implied.
    let tar = Tar::new()
        .file("usr/bin/tool", b"#!/bin/sh\n", 0o755)
        .raw(EntryType::Fifo, "run/fifo", "", b"")
        .finish();
    let (layout, _) = single_layer(&tmp.path().join("layout"), &tar);
    let store = ImageStore::open(tmp.path().join("images")).unwrap();
    let r = store.import(&layout.reference("latest")).unwrap();
    let mode = |p: &str| fs::metadata(r.rootfs.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(""), 0o755, "the root");
    assert_eq!(mode("usr"), 0o755);
    assert_eq!(mode("usr/bin"), 0o755);
    assert_eq!(mode("usr/bin/tool"), 0o755);
    assert_eq!(mode("run/fifo"), 0o644, "the raw entry's mode");
}
