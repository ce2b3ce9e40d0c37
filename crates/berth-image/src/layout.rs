//! An OCI image layout on disk: its marker, its index, and the manifest and config a tag names.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};

use crate::ImageError;
use crate::blob;
use crate::error::io;
use crate::reference::LayoutRef;

/// The annotation that names a tag in index.json.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// How deep image indexes may nest before the layout is called malformed.
const MAX_INDEX_DEPTH: usize = 4;

/// The image a reference resolves to: its manifest (by digest) and its config.
#[derive(Debug)]
pub struct Image {
    /// The layout's directory.
    pub layout: PathBuf,
    /// The manifest's digest, `sha256:…`: the image's identity in the store.
    pub digest: String,
    /// The manifest.
    pub manifest: ImageManifest,
    /// The image's configuration.
    pub config: ImageConfiguration,
}

/// How a layer's archive is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// The compression a layer descriptor's media type names, or `Unsupported`.
pub fn layer_compression(layout: &Path, layer: &Descriptor) -> Result<Compression, ImageError> {
    let media = layer.media_type().to_string();
    match media.as_str() {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Ok(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Ok(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Ok(Compression::Zstd),
        _ => Err(unsupported(layout, layer, "layer media type")),
    }
}

/// Resolves a reference to its image, verifying every document read on the way.
pub fn resolve(r: &LayoutRef) -> Result<Image, ImageError> {
    check_marker(&r.path)?;
    let index = read_index_json(&r.path)?;
    let top = pick_tag(&r.path, &index, r)?;
    let manifest_desc = descend(&r.path, top, 0)?;
    load(&r.path, &manifest_desc)
}

/// The image whose manifest `manifest_desc` names, read (verified) from the layout at `path`
/// with its config, its layers' media types checked.
pub fn load(path: &Path, manifest_desc: &Descriptor) -> Result<Image, ImageError> {
    let r = LoadAt {
        path: path.to_owned(),
    };
    let digest = manifest_desc.digest().to_string();
    let manifest: ImageManifest = parse(
        &r.path,
        &format!("manifest {digest}"),
        &blob::read_json(&r.path, &digest, manifest_desc.size())?,
    )?;
    let config_desc = manifest.config();
    let config_media = config_desc.media_type().to_string();
    if !matches!(
        config_media.as_str(),
        "application/vnd.oci.image.config.v1+json"
            | "application/vnd.docker.container.image.v1+json"
    ) {
        return Err(unsupported(&r.path, config_desc, "config media type"));
    }
    let config_digest = config_desc.digest().to_string();
    let config: ImageConfiguration = parse(
        &r.path,
        &format!("config {config_digest}"),
        &blob::read_json(&r.path, &config_digest, config_desc.size())?,
    )?;
    for layer in manifest.layers() {
        layer_compression(&r.path, layer)?;
    }
    let diff_ids = config.rootfs().diff_ids().len();
    if diff_ids != manifest.layers().len() {
        return Err(ImageError::Malformed {
            path: r.path.clone(),
            what: format!("config {config_digest}"),
            reason: format!(
                "{diff_ids} diff_ids for the manifest's {} layers",
                manifest.layers().len()
            ),
        });
    }
    Ok(Image {
        layout: r.path,
        digest,
        manifest,
        config,
    })
}

/// Where `load` reads from (named like a `LayoutRef` so the checks above read the same).
struct LoadAt {
    path: PathBuf,
}

fn check_marker(path: &Path) -> Result<(), ImageError> {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(missing(path, "not a directory")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(missing(path, "no such directory"));
        }
        Err(e) => return Err(missing(path, &e.to_string())),
    }
    let not = |reason: String| ImageError::NotALayout {
        path: path.to_owned(),
        reason,
    };
    let marker = fs::read(path.join("oci-layout"))
        .map_err(|e| not(format!("cannot read its oci-layout file ({e})")))?;
    let version: serde_json::Value = serde_json::from_slice(&marker)
        .map_err(|e| not(format!("its oci-layout file is not JSON ({e})")))?;
    match version.get("imageLayoutVersion").and_then(|v| v.as_str()) {
        Some(v) if v.starts_with("1.") => Ok(()),
        Some(v) => Err(not(format!(
            "imageLayoutVersion {v:?} in oci-layout; this store reads 1.x"
        ))),
        None => Err(not("oci-layout has no imageLayoutVersion".to_owned())),
    }
}

fn read_index_json(path: &Path) -> Result<ImageIndex, ImageError> {
    let file = path.join("index.json");
    let meta = fs::metadata(&file).map_err(|e| ImageError::NotALayout {
        path: path.to_owned(),
        reason: format!("cannot read its index.json ({e})"),
    })?;
    if meta.len() > blob::JSON_MAX {
        return Err(malformed(
            path,
            "index.json",
            "larger than 4 MiB".to_owned(),
        ));
    }
    let bytes = fs::read(&file).map_err(io(format!("reading {}", file.display())))?;
    parse(path, "index.json", &bytes)
}

/// The index.json entry the tag names. A layout whose index holds one manifest and no tags at
/// all is taken to be that image when no tag was given.
fn pick_tag<'a>(
    path: &Path,
    index: &'a ImageIndex,
    r: &LayoutRef,
) -> Result<&'a Descriptor, ImageError> {
    let name = |d: &Descriptor| {
        d.annotations()
            .as_ref()
            .and_then(|a| a.get(REF_NAME))
            .cloned()
    };
    if let Some(d) = index
        .manifests()
        .iter()
        .find(|d| name(d).as_deref() == Some(r.tag.as_str()))
    {
        return Ok(d);
    }
    let known: Vec<String> = index.manifests().iter().filter_map(name).collect();
    if r.tag_defaulted && known.is_empty() && index.manifests().len() == 1 {
        return Ok(&index.manifests()[0]);
    }
    Err(ImageError::UnknownTag {
        path: path.to_owned(),
        tag: r.tag.clone(),
        known,
    })
}

/// Follows image indexes down to the manifest for this host's platform.
fn descend(path: &Path, d: &Descriptor, depth: usize) -> Result<Descriptor, ImageError> {
    match d.media_type() {
        MediaType::ImageManifest => Ok(d.clone()),
        MediaType::Other(m) if m == "application/vnd.docker.distribution.manifest.v2+json" => {
            Ok(d.clone())
        }
        MediaType::ImageIndex if depth < MAX_INDEX_DEPTH => {
            let digest = d.digest().to_string();
            let index: ImageIndex = parse(
                path,
                &format!("index {digest}"),
                &blob::read_json(path, &digest, d.size())?,
            )?;
            let child = for_this_platform(path, &digest, &index)?;
            descend(path, child, depth + 1)
        }
        MediaType::ImageIndex => Err(malformed(
            path,
            &format!("index {}", d.digest()),
            format!("image indexes nested deeper than {MAX_INDEX_DEPTH}"),
        )),
        _ => Err(unsupported(path, d, "manifest media type")),
    }
}

/// This host's platform in OCI (Go) terms.
pub fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        "arm" => "arm",
        other => other,
    };
    ("linux", arch)
}

pub(crate) fn for_this_platform<'a>(
    path: &Path,
    digest: &str,
    index: &'a ImageIndex,
) -> Result<&'a Descriptor, ImageError> {
    let (os, arch) = host_platform();
    let platform_of = |d: &Descriptor| {
        d.platform()
            .as_ref()
            .map(|p| format!("{}/{}", p.os(), p.architecture()))
    };
    let want = format!("{os}/{arch}");
    if let Some(d) = index
        .manifests()
        .iter()
        .find(|d| platform_of(d).as_deref() == Some(want.as_str()))
    {
        return Ok(d);
    }
    Err(ImageError::NoPlatform {
        path: path.to_owned(),
        digest: digest.to_owned(),
        platform: want,
        available: index.manifests().iter().filter_map(platform_of).collect(),
    })
}

fn parse<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &str,
    bytes: &[u8],
) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| malformed(path, what, e.to_string()))
}

fn missing(path: &Path, reason: &str) -> ImageError {
    ImageError::MissingLayout {
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}

fn malformed(path: &Path, what: &str, reason: String) -> ImageError {
    ImageError::Malformed {
        path: path.to_owned(),
        what: what.to_owned(),
        reason,
    }
}

fn unsupported(path: &Path, d: &Descriptor, what: &'static str) -> ImageError {
    ImageError::Unsupported {
        path: path.to_owned(),
        digest: d.digest().to_string(),
        what,
        media_type: d.media_type().to_string(),
    }
}
