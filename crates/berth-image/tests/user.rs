//! Users resolved from the image's own /etc/passwd and /etc/group, never the host's.
#![allow(clippy::unwrap_used)]

mod support;

use std::fs;
use std::path::Path;

use berth_image::{ImageError, ImageStore, UserIds, resolve_user};
use support::{GROUP, PASSWD, Tar, busybox, single_layer};

fn ids(uid: u32, gid: u32, groups: &[u32]) -> UserIds {
    UserIds {
        uid,
        gid,
        groups: groups.to_vec(),
    }
}

fn unknown(rootfs: &Path, spec: &str, words: &str) {
    match resolve_user(rootfs, spec) {
        Err(e @ ImageError::UnknownUser { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(words) && msg.contains(&format!("{spec:?}")),
                "{msg}"
            );
        }
        other => panic!("{spec}: expected an unknown user, got {other:?}"),
    }
}

#[test]
fn users_and_groups_come_from_the_image() {
    let tmp = tempfile::tempdir().unwrap();
    let (layout, _) = busybox(&tmp.path().join("layout"));
    let store = ImageStore::open(tmp.path().join("images")).unwrap();
    let root = store.import(&layout.reference("v1")).unwrap().rootfs;

    assert_eq!(resolve_user(&root, "root").unwrap(), ids(0, 0, &[]));
    assert_eq!(
        resolve_user(&root, "user").unwrap(),
        ids(1000, 1000, &[10, 29])
    );
    assert_eq!(
        resolve_user(&root, "1000").unwrap(),
        ids(1000, 1000, &[10, 29])
    );
    assert_eq!(
        resolve_user(&root, "user:wheel").unwrap(),
        ids(1000, 10, &[29])
    );
    assert_eq!(
        resolve_user(&root, "user:4242").unwrap(),
        ids(1000, 4242, &[10, 29])
    );
    // A uid the image does not name runs with gid 0 and no supplementary groups.
    assert_eq!(resolve_user(&root, "4242").unwrap(), ids(4242, 0, &[]));
    assert_eq!(resolve_user(&root, "4242:7").unwrap(), ids(4242, 7, &[]));

    // A user every Debian host has, which the image does not: never looked up on the host.
    assert!(
        fs::read_to_string("/etc/passwd")
            .unwrap()
            .contains("daemon:")
    );
    unknown(
        &root,
        "daemon",
        "no user \"daemon\" in the image's /etc/passwd",
    );
    unknown(&root, "user:nogroup", "no group \"nogroup\"");
    unknown(&root, "", "expected NAME");
    unknown(&root, "99999999999", "out of range");
}

#[test]
fn a_passwd_symlinked_out_of_the_root_reads_the_images_own_files() {
    let tmp = tempfile::tempdir().unwrap();
    // A file on the host naming a user the image does not have.
    let host = tmp.path().join("host-passwd");
    fs::write(&host, "intruder:x:4444:4444::/:/bin/sh\n").unwrap();
    let host_abs = host.display().to_string();
    let host_rel = host_abs.trim_start_matches('/');
    let up = "../".repeat(16);
    for target in [host_abs.clone(), format!("{up}{host_rel}")] {
        // The image's /etc/passwd points at the host file's path, and the image has its own
        // file at that path: inside the root, that is the one read.
        let tar = Tar::new()
            .file(host_rel, PASSWD.as_bytes(), 0o644)
            .file("etc/group", GROUP.as_bytes(), 0o644)
            .symlink("etc/passwd", &target)
            .finish();
        let dir = tempfile::tempdir_in(tmp.path()).unwrap();
        let (layout, _) = single_layer(&dir.path().join("layout"), &tar);
        let store = ImageStore::open(dir.path().join("images")).unwrap();
        let root = store.import(&layout.reference("latest")).unwrap().rootfs;
        unknown(&root, "intruder", "in the image's /etc/passwd");
        assert_eq!(
            resolve_user(&root, "user").unwrap(),
            ids(1000, 1000, &[10, 29])
        );
    }

    let bare = tmp.path().join("bare");
    fs::create_dir(&bare).unwrap();
    unknown(&bare, "root", "the image has no /etc/passwd");
    assert_eq!(resolve_user(&bare, "0:0").unwrap(), ids(0, 0, &[]));
}
