//! Bad layouts and tampered blobs are refused with an error that names what is wrong, and
//! leave nothing in the store.
#![allow(clippy::unwrap_used)]

mod support;

use std::fs;
use std::path::Path;

use berth_image::{ImageError, ImageStore};
use serde_json::json;
use support::{Desc, GZIP, INDEX, Layout, MANIFEST, Tar, busybox, single_layer};

fn refused(store_dir: &Path, reference: &str) -> ImageError {
    let store = ImageStore::open(store_dir).unwrap();
    let err = store.import(reference).unwrap_err();
    assert!(
        err.is_bad_input(),
        "{err}: the image is at fault, not the store"
    );
    assert!(store.list().unwrap().is_empty(), "{err}: nothing is stored");
    assert_eq!(
        fs::read_dir(store_dir.join("roots")).unwrap().count(),
        0,
        "{err}"
    );
    assert_eq!(
        fs::read_dir(store_dir.join("tmp")).unwrap().count(),
        0,
        "{err}: no debris"
    );
    err
}

fn contains(err: &ImageError, words: &[&str]) {
    let msg = err.to_string();
    for w in words {
        assert!(msg.contains(w), "{msg:?} should mention {w:?}");
    }
}

#[test]
fn missing_and_malformed_layouts_say_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    let nowhere = tmp.path().join("nowhere");
    let e = refused(&images, &format!("oci:{}", nowhere.display()));
    assert!(matches!(e, ImageError::MissingLayout { .. }), "{e}");
    contains(&e, &["nowhere", "no such directory"]);

    let plain = tmp.path().join("plain");
    fs::create_dir(&plain).unwrap();
    let e = refused(&images, &format!("oci:{}", plain.display()));
    assert!(matches!(e, ImageError::NotALayout { .. }), "{e}");
    contains(&e, &["plain", "is not an OCI image layout", "oci-layout"]);

    fs::write(
        plain.join("oci-layout"),
        r#"{"imageLayoutVersion":"2.0.0"}"#,
    )
    .unwrap();
    contains(
        &refused(&images, &format!("oci:{}", plain.display())),
        &["2.0.0"],
    );

    fs::write(
        plain.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    contains(
        &refused(&images, &format!("oci:{}", plain.display())),
        &["index.json"],
    );
    fs::write(plain.join("index.json"), "{not json").unwrap();
    let e = refused(&images, &format!("oci:{}", plain.display()));
    assert!(matches!(e, ImageError::Malformed { .. }), "{e}");
    contains(&e, &["malformed index.json"]);

    let e = refused(&images, "oci:relative/path");
    assert!(matches!(e, ImageError::BadReference { .. }), "{e}");
}

#[test]
fn an_unknown_tag_lists_the_known_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let (layout, _) = busybox(&tmp.path().join("layout"));
    let e = refused(&tmp.path().join("images"), &layout.reference("v2"));
    assert!(matches!(e, ImageError::UnknownTag { .. }), "{e}");
    contains(&e, &["no tag \"v2\"", "known tags: v1, latest", "layout"]);
}

#[test]
fn a_tampered_layer_is_refused_by_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let (layout, manifest) = busybox(&tmp.path().join("layout"));
    let layer = first_layer(&layout, &manifest);
    let path = layout.blob_path(&layer);
    let mut bytes = fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    fs::write(&path, &bytes).unwrap();
    let e = refused(&tmp.path().join("images"), &layout.reference("v1"));
    assert!(matches!(e, ImageError::DigestMismatch { .. }), "{e}");
    contains(&e, &[&layer, "does not match its digest"]);
}

#[test]
fn a_layer_of_the_wrong_size_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (layout, manifest) = busybox(&tmp.path().join("layout"));
    let layer = first_layer(&layout, &manifest);
    let path = layout.blob_path(&layer);
    let bytes = fs::read(&path).unwrap();

    fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let e = refused(&tmp.path().join("images"), &layout.reference("v1"));
    assert!(
        matches!(
            e,
            ImageError::SizeMismatch { .. } | ImageError::DigestMismatch { .. }
        ),
        "{e}"
    );
    contains(&e, &[&layer]);

    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0; 4096]);
    fs::write(&path, &longer).unwrap();
    let e = refused(&tmp.path().join("images"), &layout.reference("v1"));
    assert!(matches!(e, ImageError::SizeMismatch { .. }), "{e}");
    contains(&e, &[&layer, &format!("descriptor says {}", bytes.len())]);
}

#[test]
fn a_layer_whose_content_does_not_match_its_diff_id_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(&tmp.path().join("layout"));
    let mut l = layout.layer(GZIP, &Tar::new().file("a", b"a", 0o644).finish());
    l.diff_id = support::sha256(b"something else");
    let m = layout.image(&[l], json!({}));
    layout.tags(&[("latest", &m)]);
    let e = refused(&tmp.path().join("images"), &layout.reference("latest"));
    assert!(matches!(e, ImageError::DigestMismatch { .. }), "{e}");
    contains(&e, &["diff_id"]);
}

#[test]
fn a_tampered_manifest_a_missing_blob_and_an_unknown_media_type_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    let (layout, manifest) = single_layer(
        &tmp.path().join("a"),
        &Tar::new().file("x", b"x", 0o644).finish(),
    );
    let path = layout.blob_path(&manifest.digest);
    let original = fs::read(&path).unwrap();
    fs::write(
        &path,
        String::from_utf8(original.clone())
            .unwrap()
            .replace("\"schemaVersion\":2", "\"schemaVersion\":3"),
    )
    .unwrap();
    let e = refused(&images, &layout.reference("latest"));
    assert!(matches!(e, ImageError::DigestMismatch { .. }), "{e}");
    contains(&e, &[&manifest.digest]);

    fs::remove_file(&path).unwrap();
    let e = refused(&images, &layout.reference("latest"));
    assert!(matches!(e, ImageError::MissingBlob { .. }), "{e}");
    contains(&e, &[&manifest.digest, "missing"]);

    // A manifest that is valid JSON but not a manifest.
    let junk = layout.blob(MANIFEST, br#"{"schemaVersion":2,"layers":"no"}"#);
    layout.tags(&[("latest", &junk)]);
    let e = refused(&images, &layout.reference("latest"));
    assert!(matches!(e, ImageError::Malformed { .. }), "{e}");
    contains(&e, &["malformed manifest", &junk.digest]);

    let weird = Layout::new(&tmp.path().join("b"));
    let l = weird.layer("application/vnd.example.layer.v1+squashfs", b"whatever");
    let m = weird.image(std::slice::from_ref(&l), json!({}));
    weird.tags(&[("latest", &m)]);
    let e = refused(&images, &weird.reference("latest"));
    assert!(matches!(e, ImageError::Unsupported { .. }), "{e}");
    contains(&e, &[&l.digest, "squashfs"]);
}

#[test]
fn an_image_index_resolves_to_this_hosts_platform() {
    let tmp = tempfile::tempdir().unwrap();
    let (layout, manifest) = single_layer(
        &tmp.path().join("layout"),
        &Tar::new().file("ours", b"1", 0o644).finish(),
    );
    let other = layout.image(
        &[layout.layer(GZIP, &Tar::new().file("theirs", b"2", 0o644).finish())],
        json!({}),
    );
    let entry = |d: &Desc, os: &str, arch: &str| {
        let mut v = d.json();
        v["platform"] = json!({"os": os, "architecture": arch});
        v
    };
    let arch = support::crate_arch();
    let foreign = if arch == "s390x" { "arm64" } else { "s390x" };
    let index = json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": [
        entry(&other, "linux", foreign), entry(&manifest, "linux", arch)]});
    let index = layout.blob(INDEX, &serde_json::to_vec(&index).unwrap());
    layout.tags(&[("multi", &index)]);
    let store = ImageStore::open(tmp.path().join("images")).unwrap();
    let r = store.import(&layout.reference("multi")).unwrap();
    assert_eq!(r.digest, manifest.digest);
    assert!(r.rootfs.join("ours").exists() && !r.rootfs.join("theirs").exists());

    let only_foreign = json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": [entry(&other, "linux", foreign)]});
    let only_foreign = layout.blob(INDEX, &serde_json::to_vec(&only_foreign).unwrap());
    layout.tags(&[("foreign", &only_foreign)]);
    let e = store.import(&layout.reference("foreign")).unwrap_err();
    assert!(matches!(e, ImageError::NoPlatform { .. }), "{e}");
    contains(&e, &[&format!("linux/{arch}"), &format!("linux/{foreign}")]);
}

fn first_layer(layout: &Layout, manifest: &Desc) -> String {
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.blob_path(&manifest.digest)).unwrap()).unwrap();
    m["layers"][0]["digest"].as_str().unwrap().to_owned()
}
