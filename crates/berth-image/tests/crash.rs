//! A SIGKILL in the middle of an unpack leaves no root a machine could use, and the next
//! import starts clean and succeeds.
#![allow(clippy::unwrap_used)]

mod support;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_image::ImageStore;
use support::{Tar, single_layer};

const FILES: usize = 48;
const FILE_SIZE: usize = 1 << 20;

/// Not a test: the child process the crash test runs (and kills), importing the layout named
/// by the environment into the store named by it.
#[test]
#[ignore = "run by unpack_killed_midway_leaves_no_usable_root, as its child process"]
fn child_process_import() {
    // Run on its own (--include-ignored), it has nothing to import.
    let (Ok(store), Ok(reference)) = (
        std::env::var("BERTH_IMAGE_CHILD_STORE"),
        std::env::var("BERTH_IMAGE_CHILD_REF"),
    ) else {
        return;
    };
    ImageStore::open(store).unwrap().import(&reference).unwrap();
}

/// Files unpacked so far, wherever the unpack writes them (`tmp/*` or `roots/*`).
fn unpacked_files(images: &Path) -> usize {
    let mut n = 0;
    for sub in ["tmp", "roots"] {
        let Ok(entries) = fs::read_dir(images.join(sub)) else {
            continue;
        };
        n += entries
            .filter_map(Result::ok)
            .filter_map(|e| fs::read_dir(e.path().join("rootfs/data")).ok())
            .map(Iterator::count)
            .sum::<usize>();
    }
    n
}

#[test]
fn unpack_killed_midway_leaves_no_usable_root() {
    let tmp = tempfile::tempdir().unwrap();
    let data = vec![0xa5u8; FILE_SIZE];
    let mut tar = Tar::new().dir("data", 0o755);
    for i in 0..FILES {
        tar = tar.file(&format!("data/{i:03}"), &data, 0o644);
    }
    let (layout, manifest) = single_layer(&tmp.path().join("layout"), &tar.finish());
    let images = tmp.path().join("images");
    ImageStore::open(&images).unwrap();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process_import",
            "--ignored",
            "--nocapture",
        ])
        .env("BERTH_IMAGE_CHILD_STORE", &images)
        .env("BERTH_IMAGE_CHILD_REF", layout.reference("latest"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while unpacked_files(&images) < 2 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the child finished before it could be killed"
        );
        assert!(
            Instant::now() < deadline,
            "the child never started unpacking"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL, by pid.
    child.wait().unwrap();

    let partial = unpacked_files(&images);
    assert!(
        partial > 0 && partial < FILES + 1,
        "killed mid-unpack ({partial} files written)"
    );
    assert_eq!(
        fs::read_dir(images.join("roots")).unwrap().count(),
        0,
        "no root was published"
    );

    let store = ImageStore::open(&images).unwrap();
    assert_eq!(store.get(&manifest.digest).unwrap(), None);
    assert!(store.list().unwrap().is_empty());
    assert_eq!(
        fs::read_dir(images.join("tmp")).unwrap().count(),
        0,
        "open removed the debris"
    );

    let import = store.import_report(&layout.reference("latest")).unwrap();
    assert!(import.unpacked);
    let files = fs::read_dir(import.resolved.rootfs.join("data")).unwrap();
    let sizes: Vec<u64> = files
        .map(|e| e.unwrap().metadata().unwrap().len())
        .collect();
    assert_eq!(sizes, vec![FILE_SIZE as u64; FILES]);
}
