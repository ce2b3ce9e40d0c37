//! Collection of unused images in small steps, and removal refused while a machine uses one.
#![allow(clippy::unwrap_used)]

mod support;

use std::fs;
use std::time::{Duration, SystemTime};

use berth_image::{ImageError, ImageStore};
use support::{Tar, single_layer};

fn image(dir: &std::path::Path, name: &str) -> String {
    let (layout, _) = single_layer(
        &dir.join(name),
        &Tar::new().file(name, name.as_bytes(), 0o644).finish(),
    );
    layout.reference("latest")
}

/// Makes the image look last used `ago`.
fn used_ago(store: &ImageStore, digest: &str, ago: Duration) {
    let path = store
        .dir()
        .join("roots")
        .join(digest.trim_start_matches("sha256:"))
        .join("last_used");
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() - ago)
        .unwrap();
}

#[test]
fn unused_images_are_collected_in_small_steps_and_used_ones_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path().join("images")).unwrap();
    let day = Duration::from_secs(24 * 3600);
    let digests: Vec<String> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| store.import(&image(tmp.path(), n)).unwrap().digest)
        .collect();
    let (in_use, fresh) = (digests[0].clone(), digests[3].clone());
    for d in &digests[..3] {
        used_ago(&store, d, day + Duration::from_secs(60));
    }
    let uses = |d: &str| d == in_use;

    // Two candidates (b, c), one removal per step.
    let first = store.collect_garbage(day, &uses, 1).unwrap();
    assert_eq!(first.removed.len(), 1);
    assert!(first.more);
    assert!(first.freed_bytes > 0);
    let second = store.collect_garbage(day, &uses, 1).unwrap();
    assert_eq!(second.removed.len(), 1);
    let third = store.collect_garbage(day, &uses, 1).unwrap();
    assert!(third.removed.is_empty() && !third.more, "{third:?}");

    let mut removed = [first.removed, second.removed].concat();
    removed.sort();
    let mut expected = vec![digests[1].clone(), digests[2].clone()];
    expected.sort();
    assert_eq!(removed, expected);
    let left: Vec<String> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|i| i.digest)
        .collect();
    let mut want = vec![in_use.clone(), fresh.clone()];
    want.sort();
    assert_eq!(
        left, want,
        "the image in use and the recently used one stay"
    );

    // Using an image again (an import, or mark_used) renews it.
    used_ago(&store, &fresh, day * 2);
    store.mark_used(&fresh).unwrap();
    assert!(
        store
            .collect_garbage(day, &|_| false, 10)
            .unwrap()
            .removed
            .len()
            == 1
    );
    assert!(store.get(&fresh).unwrap().is_some());
    assert!(
        store.get(&in_use).unwrap().is_none(),
        "collected once no longer in use"
    );
}

#[test]
fn removal_is_refused_while_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path().join("images")).unwrap();
    let digest = store.import(&image(tmp.path(), "a")).unwrap().digest;
    let e = store.remove_unused(&digest, &|d| d == digest).unwrap_err();
    assert!(matches!(e, ImageError::InUse { .. }), "{e}");
    assert!(e.to_string().contains(&digest), "{e}");
    assert!(
        store
            .get(&digest)
            .unwrap()
            .unwrap()
            .rootfs
            .join("a")
            .is_file()
    );
    assert!(store.remove_unused(&digest, &|_| false).unwrap());
    assert!(store.get(&digest).unwrap().is_none());
    assert!(!store.remove_unused(&digest, &|_| false).unwrap());
    assert_eq!(store.usage().unwrap(), (0, 0));
}
