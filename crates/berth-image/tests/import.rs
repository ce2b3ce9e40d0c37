//! Importing real OCI image layouts: layers in order, whiteouts, opaque dirs, compressions,
//! config defaults, idempotence and concurrency.
#![allow(clippy::unwrap_used)]

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use berth_image::ImageStore;
use support::busybox;

#[test]
fn busybox_image_unpacks_layers_in_order_with_whiteouts_and_opaque_dirs() {
    let tmp = tempfile::tempdir().unwrap();
    let (layout, manifest) = busybox(&tmp.path().join("layout"));
    let store = ImageStore::open(tmp.path().join("images")).unwrap();

    let import = store.import_report(&layout.reference("v1")).unwrap();
    let r = &import.resolved;
    assert!(import.unpacked);
    assert_eq!(r.digest, manifest.digest);
    let root = &r.rootfs;
    assert_eq!(
        root,
        &tmp.path()
            .join("images/roots")
            .join(&manifest.digest[7..])
            .join("rootfs")
    );

    // Layer 1 (gzip): the binary, byte for byte, with its mode; a hard link; setuid kept.
    assert_eq!(
        fs::read(root.join("bin/busybox")).unwrap(),
        fs::read("/bin/busybox").unwrap()
    );
    let bb = fs::metadata(root.join("bin/busybox")).unwrap();
    assert_eq!(bb.permissions().mode() & 0o7777, 0o755);
    assert_eq!(bb.mtime(), 1_700_000_000);
    let hl = fs::metadata(root.join("bin/busybox-hardlink")).unwrap();
    assert_eq!((hl.ino(), hl.nlink()), (bb.ino(), 2));
    assert_eq!(
        fs::metadata(root.join("bin/setuid-tool")).unwrap().mode() & 0o7777,
        0o4755
    );
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap().to_str(),
        Some("busybox")
    );
    assert_eq!(
        fs::metadata(root.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    let home = fs::metadata(root.join("home/user")).unwrap();
    assert_eq!(
        (home.uid(), home.gid(), home.mode() & 0o777),
        (1000, 1000, 0o750)
    );

    // Layer 2 (plain tar): the whiteout removed tmp/gone; the opaque dir dropped app's old
    // content but kept what the same layer put there.
    assert!(!root.join("tmp/gone").exists());
    assert!(root.join("tmp").is_dir());
    assert!(!root.join("app/old.txt").exists());
    assert!(!root.join("app/sub").exists());
    assert_eq!(
        fs::read_to_string(root.join("app/new.txt")).unwrap(),
        "from the second layer"
    );
    assert!(!root.join("app/.wh..wh..opq").exists() && !root.join("tmp/.wh.gone").exists());

    // Layer 3 (zstd), with ownership.
    assert_eq!(
        fs::read_to_string(root.join("etc/motd")).unwrap(),
        "hello from zstd\n"
    );
    let notes = fs::metadata(root.join("home/user/notes")).unwrap();
    assert_eq!(
        (notes.uid(), notes.gid(), notes.mode() & 0o777),
        (1000, 1000, 0o600)
    );

    // The config's defaults.
    assert_eq!(r.entrypoint, ["/bin/sh", "-c"]);
    assert_eq!(r.cmd, ["cat /etc/motd"]);
    assert_eq!(r.env, ["PATH=/bin", "GREETING=hi"]);
    assert_eq!(r.workdir.as_deref(), Some("/app"));
    assert_eq!(r.user.as_deref(), Some("user"));

    // It is a working root: busybox runs in it and sees the merged layers.
    let out = Command::new("chroot")
        .arg(root)
        .args(["/bin/sh", "-c", "cat /etc/motd; ls /app"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from zstd\nnew.txt\n"
    );

    let busybox_size = bb.len();
    assert!(
        r.unpacked_bytes >= busybox_size,
        "{} < {busybox_size}",
        r.unpacked_bytes
    );
    assert!(
        r.unpacked_bytes < busybox_size * 2,
        "{}: the hard link counted twice?",
        r.unpacked_bytes
    );
    eprintln!(
        "busybox image: unpacked in {:.1} ms, {} bytes on disk ({} KiB; busybox itself {} bytes)",
        import.elapsed.as_secs_f64() * 1000.0,
        r.unpacked_bytes,
        r.unpacked_bytes / 1024,
        busybox_size
    );

    // get, list, and the default tag.
    assert_eq!(store.get(&r.digest).unwrap().as_ref(), Some(r));
    assert_eq!(store.list().unwrap(), vec![r.clone()]);
    let latest = store
        .import(&format!("oci:{}", layout.dir.display()))
        .unwrap();
    assert_eq!(&latest, r);
}

#[test]
fn a_second_import_is_a_no_op_and_remove_takes_the_root_away() {
    let tmp = tempfile::tempdir().unwrap();
    let (layout, _) = busybox(&tmp.path().join("layout"));
    let store = ImageStore::open(tmp.path().join("images")).unwrap();
    let first = store.import_report(&layout.reference("v1")).unwrap();
    let marker = first.resolved.rootfs.join("etc/motd");
    let ino = fs::metadata(&marker).unwrap().ino();

    let again = ImageStore::open(tmp.path().join("images")).unwrap();
    let second = again.import_report(&layout.reference("latest")).unwrap();
    assert!(!second.unpacked, "the same image is not unpacked twice");
    assert_eq!(second.resolved, first.resolved);
    assert_eq!(
        fs::metadata(&marker).unwrap().ino(),
        ino,
        "the root was not rewritten"
    );

    assert!(store.remove(&first.resolved.digest).unwrap());
    assert!(!first.resolved.rootfs.exists());
    assert_eq!(store.get(&first.resolved.digest).unwrap(), None);
    assert!(store.list().unwrap().is_empty());
    assert!(
        !store.remove(&first.resolved.digest).unwrap(),
        "removing twice is false, not an error"
    );
    assert_eq!(
        fs::read_dir(tmp.path().join("images/tmp")).unwrap().count(),
        0
    );
    assert!(
        store
            .import_report(&layout.reference("v1"))
            .unwrap()
            .unpacked,
        "imported anew after removal"
    );
}

#[test]
fn concurrent_imports_of_one_image_unpack_it_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (layout, manifest) = busybox(&tmp.path().join("layout"));
    let reference = layout.reference("v1");
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                // A store each, as separate processes would have: only the lock file is shared.
                s.spawn(|| {
                    let store = ImageStore::open(tmp.path().join("images")).unwrap();
                    store.import_report(&reference).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let unpacked = results.iter().filter(|r| r.unpacked).count();
    assert_eq!(unpacked, 1, "exactly one import unpacks");
    assert!(results.iter().all(|r| r.resolved.digest == manifest.digest));
    assert_eq!(
        fs::read_dir(tmp.path().join("images/roots"))
            .unwrap()
            .count(),
        1
    );
    assert_eq!(
        fs::read_dir(tmp.path().join("images/tmp")).unwrap().count(),
        0
    );
}
