//! A real busybox image for the benchmarks, built from Debian's `busybox-static` (`/bin/busybox`)
//! into an OCI image layout (one uncompressed tar layer made by GNU tar, config, manifest,
//! index), with no network: the same image `tests/common/busybox.rs` builds for the e2e tests,
//! optionally with a file of `payload` random bytes to make a realistically sized image.

use std::path::Path;
use std::process::Command;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn sha256(path: &Path) -> Res<String> {
    let out = Command::new("sha256sum").arg(path).output()?;
    let text = String::from_utf8(out.stdout)?;
    match text.get(..64) {
        Some(hex) if out.status.success() => Ok(hex.to_owned()),
        _ => Err(format!("sha256sum {}: {text}", path.display()).into()),
    }
}

/// Stores `bytes` as a blob; returns (digest, size).
fn blob(layout: &Path, bytes: &[u8]) -> Res<(String, usize)> {
    let tmp = layout.join("blob.tmp");
    std::fs::write(&tmp, bytes)?;
    let hex = sha256(&tmp)?;
    std::fs::rename(&tmp, layout.join("blobs/sha256").join(&hex))?;
    Ok((format!("sha256:{hex}"), bytes.len()))
}

fn rootfs(root: &Path, payload: usize) -> Res<()> {
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        return Err("/bin/busybox is missing: apt-get install busybox-static".into());
    }
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "home/app"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy(busybox, root.join("bin/busybox"))?;
    let list = Command::new(busybox).arg("--list").output()?;
    for applet in String::from_utf8(list.stdout)?.lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
    )?;
    std::fs::write(root.join("etc/group"), "root:x:0:\napp:x:1000:\n")?;
    if payload > 0 {
        std::fs::write(root.join("payload"), crate::noise(payload, 0))?;
    }
    Ok(())
}

/// Writes the busybox image (plus `payload` random bytes in `/payload`) tagged `v1` at `layout`;
/// returns its `oci:` reference.
pub fn image(layout: &Path, payload: usize) -> Res<String> {
    let work = layout.with_extension("rootfs");
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(layout);
    rootfs(&work, payload)?;
    std::fs::create_dir_all(layout.join("blobs/sha256"))?;
    let tar = layout.join("layer.tar");
    let st = Command::new("tar")
        .args(["--numeric-owner", "-C"])
        .arg(&work)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()?;
    if !st.success() {
        return Err(format!("tar of {}: {st}", work.display()).into());
    }
    let layer = std::fs::read(&tar)?;
    std::fs::remove_file(&tar)?;
    std::fs::remove_dir_all(&work)?;
    let (layer_digest, layer_size) = blob(layout, &layer)?;
    drop(layer);
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/bin/sleep", "1000"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]}
    });
    let (config_digest, config_size) = blob(layout, &serde_json::to_vec(&config)?)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}]
    });
    let (m_digest, m_size) = blob(layout, &serde_json::to_vec(&manifest)?)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m_digest,
                        "size": m_size, "annotations": {"org.opencontainers.image.ref.name": "v1"}}]
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    Ok(format!("oci:{}:v1", layout.display()))
}
