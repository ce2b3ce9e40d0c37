//! A real busybox image, built in the test from Debian's `busybox-static` into an OCI image
//! layout (an uncompressed tar layer, config, manifest, index), with no network.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

/// Stores `bytes` as a blob; returns (digest, size).
fn blob(layout: &Path, bytes: &[u8]) -> (String, usize) {
    let tmp = layout.join("blob.tmp");
    std::fs::write(&tmp, bytes).unwrap();
    let hex = sha256(&tmp);
    std::fs::rename(&tmp, layout.join("blobs/sha256").join(&hex)).unwrap();
    (format!("sha256:{hex}"), bytes.len())
}

fn rootfs(root: &Path) {
    let busybox = Path::new("/bin/busybox");
    assert!(busybox.exists(), "busybox-static is installed");
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "home/app"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    let list = Command::new(busybox).arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\napp:x:1000:\nextra:x:2000:app\n",
    )
    .unwrap();
    let chmod = Command::new("chmod")
        .arg("1777")
        .arg(root.join("tmp"))
        .status()
        .unwrap();
    assert!(chmod.success());
    let chown = Command::new("chown")
        .arg("1000:1000")
        .arg(root.join("home/app"))
        .status()
        .unwrap();
    assert!(chown.success());
}

/// Writes the busybox image tagged `v1` at `layout`; returns its `oci:` reference.
pub fn image(layout: &Path) -> String {
    image_flavoured(layout, None)
}

/// The busybox image with `/etc/flavour` holding `flavour` (when given): two flavours are two
/// images with different digests.
pub fn image_flavoured(layout: &Path, flavour: Option<&str>) -> String {
    let work = layout.with_extension("rootfs");
    rootfs(&work);
    if let Some(f) = flavour {
        std::fs::write(work.join("etc/flavour"), f).unwrap();
    }
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let tar = layout.join("layer.tar");
    let st = Command::new("tar")
        .args(["--numeric-owner", "-C"])
        .arg(&work)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let layer = std::fs::read(&tar).unwrap();
    std::fs::remove_file(&tar).unwrap();
    let (layer_digest, layer_size) = blob(layout, &layer);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh", "-c", "echo default; sleep 1000"], "Env": ["PATH=/bin", "FROM_IMAGE=1"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]}
    });
    let (config_digest, config_size) = blob(layout, &serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}]
    });
    let (m_digest, m_size) = blob(layout, &serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m_digest,
                        "size": m_size, "annotations": {"org.opencontainers.image.ref.name": "v1"}}]
    });
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    format!("oci:{}:v1", layout.display())
}
