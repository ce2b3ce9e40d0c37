//! Test images for the registry tests: an OCI image layout of busybox (and optionally a big file
//! of noise), its layer made by GNU tar, and the `[images]` config that reaches a loopback
//! registry over plain HTTP. Needs the `registry` module (`crates/berth-image/tests/support`).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use crate::registry::noise;

/// An image tagged `v1` with busybox and, if `big` > 0, a file of that many random bytes, as an
/// OCI image layout (one plain-tar layer made by GNU tar); returns the layout and its manifest
/// digest.
pub fn image(dir: &Path, big: usize) -> (PathBuf, String) {
    let layout = dir.join("layout");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let content = dir.join("content");
    std::fs::create_dir_all(content.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", content.join("bin/busybox")).unwrap();
    if big > 0 {
        std::fs::write(content.join("big"), noise(big)).unwrap();
    }
    let tar = dir.join("layer.tar");
    let out = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-cf"])
        .arg(&tar)
        .arg("-C")
        .arg(&content)
        .arg(".")
        .output()
        .expect("tar");
    assert!(out.status.success(), "tar: {out:?}");
    let layer = blob_file(&blobs, &tar);
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    let config = json!({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/bin/busybox", "sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.0]},
    });
    let config = blob_bytes(&blobs, &serde_json::to_vec(&config).unwrap());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0, "size": config.1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.0, "size": layer.1}],
    });
    let manifest = blob_bytes(&blobs, &serde_json::to_vec(&manifest).unwrap());
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest.0, "size": manifest.1,
        "annotations": {"org.opencontainers.image.ref.name": "v1"},
    }]});
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    (layout, manifest.0)
}

/// Moves `file` into `blobs` under its digest: (digest, size).
fn blob_file(blobs: &Path, file: &Path) -> (String, u64) {
    let out = Command::new("sha256sum")
        .arg(file)
        .output()
        .expect("sha256sum");
    let text = String::from_utf8(out.stdout).unwrap();
    let hex = text.split_whitespace().next().unwrap().to_owned();
    let size = std::fs::metadata(file).unwrap().len();
    std::fs::rename(file, blobs.join(&hex)).unwrap();
    (format!("sha256:{hex}"), size)
}

fn blob_bytes(blobs: &Path, bytes: &[u8]) -> (String, u64) {
    let tmp = blobs.join("incoming");
    std::fs::write(&tmp, bytes).unwrap();
    blob_file(blobs, &tmp)
}

pub fn insecure(host: &str, extra: &str) -> String {
    format!("[images]\ninsecure_registries = [\"{host}\"]\n{extra}")
}
