//! Test images for the registry tests: an OCI image layout written by Debian's umoci (busybox,
//! and optionally a big file of noise), and the `[images]` config that reaches a loopback
//! registry over plain HTTP. Needs the `registry` module (`crates/berth-image/tests/support`).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::registry::noise;

/// An image tagged `v1` with busybox and, if `big` > 0, a file of that many random bytes;
/// returns the layout and its manifest digest.
pub fn image(dir: &Path, big: usize) -> (PathBuf, String) {
    let layout = dir.join("layout");
    let l = layout.to_str().unwrap().to_owned();
    let content = dir.join("content");
    std::fs::create_dir_all(content.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", content.join("bin/busybox")).unwrap();
    if big > 0 {
        std::fs::write(content.join("big"), noise(big)).unwrap();
    }
    let c = content.to_str().unwrap().to_owned();
    for args in [
        vec!["init", "--layout", &l],
        vec!["new", "--image", &format!("{l}:v1")],
        vec!["insert", "--image", &format!("{l}:v1"), &c, "/"],
    ] {
        let out = Command::new("umoci").args(&args).output().expect("umoci");
        assert!(out.status.success(), "umoci {args:?}: {out:?}");
    }
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    (layout, digest)
}

pub fn insecure(host: &str, extra: &str) -> String {
    format!("[images]\ninsecure_registries = [\"{host}\"]\n{extra}")
}
