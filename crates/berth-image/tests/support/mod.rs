//! Builds real OCI image layouts inside the tests, with tar, flate2 and zstd, no network.
#![allow(clippy::unwrap_used, dead_code)]

pub mod registry;

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// A descriptor: media type, digest, size.
#[derive(Debug, Clone)]
pub struct Desc {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    /// For layers: the digest of the uncompressed tar.
    pub diff_id: String,
}

impl Desc {
    pub fn json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// An OCI image layout directory being written.
#[derive(Debug)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: &Path) -> Self {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Self {
            dir: dir.to_owned(),
        }
    }

    pub fn reference(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.dir.display())
    }

    pub fn blob(&self, media_type: &str, bytes: &[u8]) -> Desc {
        let digest = sha256(bytes);
        fs::write(self.blob_path(&digest), bytes).unwrap();
        Desc {
            media_type: media_type.to_owned(),
            digest: digest.clone(),
            size: bytes.len() as u64,
            diff_id: digest,
        }
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// A layer blob from an uncompressed tar, compressed as `media_type` says.
    pub fn layer(&self, media_type: &str, tar: &[u8]) -> Desc {
        let bytes = match media_type {
            GZIP => {
                use std::io::Write;
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(tar).unwrap();
                e.finish().unwrap()
            }
            ZSTD => zstd::encode_all(tar, 3).unwrap(),
            _ => tar.to_vec(),
        };
        let mut d = self.blob(media_type, &bytes);
        d.diff_id = sha256(tar);
        d
    }

    /// A config blob and a manifest over `layers`; returns the manifest's descriptor.
    pub fn image(&self, layers: &[Desc], config: Value) -> Desc {
        let config = json!({
            "architecture": crate_arch(),
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
        });
        let config = self.blob(
            "application/vnd.oci.image.config.v1+json",
            &serde_json::to_vec(&config).unwrap(),
        );
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": config.json(),
            "layers": layers.iter().map(Desc::json).collect::<Vec<_>>(),
        });
        self.blob(MANIFEST, &serde_json::to_vec(&manifest).unwrap())
    }

    /// Writes index.json naming each descriptor by its tag.
    pub fn tags(&self, tags: &[(&str, &Desc)]) {
        let manifests: Vec<Value> = tags
            .iter()
            .map(|(tag, d)| {
                let mut v = d.json();
                v["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
                v
            })
            .collect();
        let index = json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": manifests});
        fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    }
}

pub fn crate_arch() -> &'static str {
    berth_image::host_platform().1
}

/// A tar archive being written, entry by entry, including hostile entries no well-behaved
/// tool would write.
pub struct Tar {
    b: tar::Builder<Vec<u8>>,
}

impl Default for Tar {
    fn default() -> Self {
        Self::new()
    }
}

impl Tar {
    pub fn new() -> Self {
        Self {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h
    }

    pub fn file(self, path: &str, data: &[u8], mode: u32) -> Self {
        self.owned_file(path, data, mode, 0, 0)
    }

    pub fn owned_file(mut self, path: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.b.append_data(&mut h, path, data).unwrap();
        self
    }

    pub fn dir(self, path: &str, mode: u32) -> Self {
        self.owned_dir(path, mode, 0, 0)
    }

    pub fn owned_dir(mut self, path: &str, mode: u32, uid: u64, gid: u64) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0);
        h.set_uid(uid);
        h.set_gid(gid);
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Link, 0o644, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    /// An entry written byte for byte, bypassing the tar crate's path checks (which refuse
    /// `..`), as a hostile image would.
    pub fn raw(mut self, kind: tar::EntryType, path: &str, link: &str, data: &[u8]) -> Self {
        let mut h = Self::header(kind, 0o644, data.len() as u64);
        {
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name = [0; 100];
            gnu.name[..path.len()].copy_from_slice(path.as_bytes());
            gnu.linkname = [0; 100];
            gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n";
pub const GROUP: &str = "root:x:0:\nuser:x:1000:\nwheel:x:10:user\naudio:x:29:other,user\n";

/// The busybox test image: three layers (gzip, plain tar, zstd); the second deletes a file
/// (whiteout) and replaces a directory (opaque), the third adds a file. Tagged `v1` and
/// `latest`. Returns the layout and the manifest descriptor.
pub fn busybox(dir: &Path) -> (Layout, Desc) {
    let layout = Layout::new(dir);
    let busybox = fs::read("/bin/busybox").expect("busybox-static installed (/bin/busybox)");
    let mut base = Tar::new()
        .dir("bin", 0o755)
        .dir("etc", 0o755)
        .dir("tmp", 0o1777)
        .owned_dir("home/user", 0o750, 1000, 1000)
        .file("bin/busybox", &busybox, 0o755)
        .hardlink("bin/busybox-hardlink", "bin/busybox")
        .file("bin/setuid-tool", b"#!/bin/sh\n", 0o4755)
        .file("etc/passwd", PASSWD.as_bytes(), 0o644)
        .file("etc/group", GROUP.as_bytes(), 0o644)
        .dir("app", 0o755)
        .file("app/old.txt", b"from the base layer", 0o644)
        .file("app/sub/deep.txt", b"deep", 0o644)
        .file("tmp/gone", b"to be whited out", 0o644);
    for applet in ["sh", "ls", "cat", "id", "echo"] {
        base = base.symlink(&format!("bin/{applet}"), "busybox");
    }
    let l1 = layout.layer(GZIP, &base.finish());
    let l2 = layout.layer(
        TAR,
        &Tar::new()
            .file("app/new.txt", b"from the second layer", 0o644)
            .raw(tar::EntryType::Regular, "app/.wh..wh..opq", "", b"")
            .raw(tar::EntryType::Regular, "tmp/.wh.gone", "", b"")
            .finish(),
    );
    let l3 = layout.layer(
        ZSTD,
        &Tar::new()
            .file("etc/motd", b"hello from zstd\n", 0o644)
            .owned_file("home/user/notes", b"mine", 0o600, 1000, 1000)
            .finish(),
    );
    let manifest = layout.image(
        &[l1, l2, l3],
        json!({
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["cat /etc/motd"],
            "Env": ["PATH=/bin", "GREETING=hi"],
            "WorkingDir": "/app",
            "User": "user",
        }),
    );
    layout.tags(&[("v1", &manifest), ("latest", &manifest)]);
    (layout, manifest)
}

/// A one-layer image over `tar`, tagged `latest`.
pub fn single_layer(dir: &Path, tar: &[u8]) -> (Layout, Desc) {
    let layout = Layout::new(dir);
    let l = layout.layer(TAR, tar);
    let m = layout.image(&[l], json!({}));
    layout.tags(&[("latest", &m)]);
    (layout, m)
}

/// Names under a directory, recursively, sorted (for "nothing changed out there").
pub fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}
