//! Hand-crafted hostile layers: nothing they do reaches outside the image's root.
//!
//! Each case runs against a fresh store, with a directory `outside` (holding `secret`) beside
//! it; after the import, whatever its outcome, `outside` is exactly as it was.
#![allow(clippy::unwrap_used)]

mod support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_image::{ImageError, ImageStore, Resolved};
use serde_json::json;
use support::{Layout, TAR, Tar, single_layer, tree};
use tar::EntryType;

struct Case {
    _tmp: tempfile::TempDir,
    outside: PathBuf,
    before: Vec<String>,
}

impl Case {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), "host secret").unwrap();
        let before = tree(tmp.path());
        Self {
            _tmp: tmp,
            outside,
            before,
        }
    }

    fn base(&self) -> &Path {
        self._tmp.path()
    }

    /// The outside path as a tar entry would name it (absolute).
    fn out(&self, rest: &str) -> String {
        format!("{}/{rest}", self.outside.display())
    }

    fn import(&self, tar: Vec<u8>) -> Result<Resolved, ImageError> {
        let (layout, _) = single_layer(&self.base().join("layout"), &tar);
        self.import_layout(&layout)
    }

    fn import_layout(&self, layout: &Layout) -> Result<Resolved, ImageError> {
        let store = ImageStore::open(self.base().join("images")).unwrap();
        let result = store.import(&layout.reference("latest"));
        self.check_outside_untouched();
        result
    }

    fn check_outside_untouched(&self) {
        assert_eq!(
            fs::read_to_string(self.outside.join("secret")).unwrap(),
            "host secret"
        );
        assert_eq!(
            fs::metadata(self.outside.join("secret")).unwrap().nlink(),
            1,
            "no hard link to a host file"
        );
        let now: Vec<String> = tree(self.base())
            .into_iter()
            .filter(|p| !p.starts_with("layout") && !p.starts_with("images"))
            .collect();
        let before: Vec<String> = self.before.clone();
        assert_eq!(
            now, before,
            "nothing appeared or vanished outside the store"
        );
    }
}

fn unsafe_entry(result: Result<Resolved, ImageError>, words: &str) {
    match result {
        Err(e @ ImageError::UnsafeEntry { .. }) => {
            assert!(e.to_string().contains(words), "{e} should say {words:?}");
        }
        other => panic!("expected an unsafe entry refused, got {other:?}"),
    }
}

#[test]
fn dot_dot_paths_are_refused() {
    let c = Case::new();
    let r = c.import(
        Tar::new()
            .raw(EntryType::Regular, "../../outside/pwned", "", b"x")
            .finish(),
    );
    unsafe_entry(r, "`..`");
    let c = Case::new();
    let r = c.import(
        Tar::new()
            .raw(EntryType::Regular, "a/../../outside/.wh.secret", "", b"")
            .finish(),
    );
    unsafe_entry(r, "`..`");
}

#[test]
fn absolute_paths_land_inside_the_root() {
    let c = Case::new();
    let abs = c.out("pwned");
    let r = c
        .import(Tar::new().raw(EntryType::Regular, &abs, "", b"x").finish())
        .unwrap();
    assert_eq!(
        fs::read_to_string(r.rootfs.join(abs.trim_start_matches('/'))).unwrap(),
        "x"
    );
}

#[test]
fn writes_through_a_symlink_stay_inside_the_root() {
    // An absolute symlink to the host's directory, then a file written through it: the link
    // means the root's own copy of that path, which does not exist, so the entry is refused.
    let c = Case::new();
    let r = c.import(
        Tar::new()
            .symlink("link", &c.outside.display().to_string())
            .file("link/pwned", b"x", 0o644)
            .finish(),
    );
    unsafe_entry(r, "symlink to a directory that does not exist");

    // A symlink climbing with `..` stops at the root.
    let c = Case::new();
    let up = "../".repeat(20);
    let r = c
        .import(
            Tar::new()
                .symlink("up", &up)
                .file("up/pwned", b"x", 0o644)
                .finish(),
        )
        .unwrap();
    assert_eq!(fs::read_to_string(r.rootfs.join("pwned")).unwrap(), "x");

    // An absolute symlink to a directory the root has: the root's own.
    let c = Case::new();
    let r = c
        .import(
            Tar::new()
                .dir("etc", 0o755)
                .symlink("cfg", "/etc")
                .file("cfg/pwned", b"x", 0o644)
                .finish(),
        )
        .unwrap();
    assert_eq!(fs::read_to_string(r.rootfs.join("etc/pwned")).unwrap(), "x");

    // A file entry over a symlink to a host file replaces the link, never writes through it.
    let c = Case::new();
    let r = c
        .import(
            Tar::new()
                .symlink("evil", &c.out("secret"))
                .file("evil", b"overwritten", 0o644)
                .finish(),
        )
        .unwrap();
    assert_eq!(
        fs::read_to_string(r.rootfs.join("evil")).unwrap(),
        "overwritten"
    );
}

#[test]
fn hard_links_cannot_reach_outside() {
    let c = Case::new();
    unsafe_entry(
        c.import(
            Tar::new()
                .raw(EntryType::Link, "hl", "../outside/secret", b"")
                .finish(),
        ),
        "`..`",
    );

    let c = Case::new();
    let abs = c.out("secret");
    unsafe_entry(
        c.import(Tar::new().raw(EntryType::Link, "hl", &abs, b"").finish()),
        "does not exist in the root",
    );

    let c = Case::new();
    let tar = Tar::new()
        .symlink("link", &c.outside.display().to_string())
        .raw(EntryType::Link, "hl", "link/secret", b"")
        .finish();
    unsafe_entry(c.import(tar), "does not exist in the root");

    // A hard link to a symlink that points out links the symlink itself.
    let c = Case::new();
    let tar = Tar::new()
        .symlink("s", &c.out("secret"))
        .raw(EntryType::Link, "hl", "s", b"")
        .finish();
    let r = c.import(tar).unwrap();
    assert!(
        fs::symlink_metadata(r.rootfs.join("hl"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn whiteouts_and_opaque_dirs_through_symlinks_stay_inside_the_root() {
    let c = Case::new();
    let outside = c.outside.display().to_string();
    let tar = Tar::new()
        .symlink("link", &outside)
        .raw(EntryType::Regular, "link/.wh.secret", "", b"")
        .raw(EntryType::Regular, "link/.wh..wh..opq", "", b"")
        .finish();
    c.import(tar).unwrap();

    // With the root's own copy of the directory present, the opaque whiteout empties that copy.
    let c = Case::new();
    let layout = Layout::new(&c.base().join("layout"));
    let inner = c.out("secret");
    let l1 = layout.layer(
        TAR,
        &Tar::new()
            .file(inner.trim_start_matches('/'), b"image's own", 0o644)
            .finish(),
    );
    let l2 = layout.layer(
        TAR,
        &Tar::new()
            .symlink("link", &c.outside.display().to_string())
            .raw(EntryType::Regular, "link/.wh..wh..opq", "", b"")
            .finish(),
    );
    let m = layout.image(&[l1, l2], json!({}));
    layout.tags(&[("latest", &m)]);
    let r = c.import_layout(&layout).unwrap();
    let own_copy = r.rootfs.join(c.outside.strip_prefix("/").unwrap());
    assert!(own_copy.is_dir() && fs::read_dir(&own_copy).unwrap().count() == 0);
}

#[test]
fn device_nodes_are_skipped() {
    let c = Case::new();
    let tar = Tar::new()
        .raw(EntryType::Char, "dev/mem", "", b"")
        .raw(EntryType::Block, "dev/sda", "", b"")
        .raw(EntryType::Fifo, "run/fifo", "", b"")
        .finish();
    let r = c.import(tar).unwrap();
    assert!(fs::symlink_metadata(r.rootfs.join("dev/mem")).is_err());
    assert!(fs::symlink_metadata(r.rootfs.join("dev/sda")).is_err());
    use std::os::unix::fs::FileTypeExt;
    assert!(
        fs::symlink_metadata(r.rootfs.join("run/fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
}
