//! The content-addressed store of unpacked image roots.
//!
//! ```text
//! <dir>/roots/<hex>/rootfs/      one image's root, keyed by its manifest digest (sha256:<hex>);
//!                                shared read-only by every machine of that image
//! <dir>/roots/<hex>/image.json   its `Resolved` (config defaults, unpacked size)
//! <dir>/tmp/<hex>.<pid>.<n>/     an unpack (or a removal) in progress; never used by a machine
//! <dir>/locks/<hex>.lock         flock held while one process unpacks or removes that image
//!                                (or downloads that blob, for a blob's digest)
//! <dir>/roots/<hex>/last_used    its mtime: when the image was last pulled, imported or used
//! <dir>/cache/                   an OCI image layout of blobs pulled from registries (`pull.rs`):
//!                                `blobs/sha256/<hex>` complete and verified only, `partial/<hex>`
//!                                a download in progress (resumed by the next pull of that blob)
//! ```
//!
//! A root appears only by `rename(2)` of a complete, synced temp directory into `roots/`, and
//! disappears only by the reverse rename before its deletion, so whatever is in `roots/` is
//! whole. Everything left in `tmp/` is debris from a crash, removed under the digest's lock.

use std::fs::{self, File};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::ImageError;
use crate::blob::{self, Hashing, sha256_hex};
use crate::error::{errno, io};
use crate::layout::{self, Compression, Image};
use crate::reference::LayoutRef;
use crate::unpack::Unpacker;

/// An image in the store: where its root is and what its config says a machine runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    /// The manifest digest, `sha256:…`: the image's identity.
    pub digest: String,
    /// The unpacked root filesystem (read-only, shared).
    pub rootfs: PathBuf,
    /// The config's Entrypoint.
    pub entrypoint: Vec<String>,
    /// The config's Cmd.
    pub cmd: Vec<String>,
    /// The config's Env, `K=V` each.
    pub env: Vec<String>,
    /// The config's WorkingDir, when set.
    pub workdir: Option<String>,
    /// The config's User, when set.
    pub user: Option<String>,
    /// Disk space the root occupies (allocated blocks, each inode counted once), like `du`.
    pub unpacked_bytes: u64,
}

/// What an import did.
#[derive(Debug, Clone)]
pub struct Import {
    /// The image.
    pub resolved: Resolved,
    /// Whether this call unpacked it (false: it was already in the store).
    pub unpacked: bool,
    /// How long the call took.
    pub elapsed: Duration,
}

/// The image store under one directory.
#[derive(Debug)]
pub struct ImageStore {
    dir: PathBuf,
}

/// The file in an image's directory whose mtime is when it was last used.
pub(crate) const LAST_USED: &str = "last_used";

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl ImageStore {
    /// Opens (creating) the store at `dir`, and removes debris of interrupted unpacks that no
    /// process is working on.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, ImageError> {
        let store = Self { dir: dir.into() };
        for sub in [
            "",
            "roots",
            "tmp",
            "locks",
            "cache",
            "cache/blobs/sha256",
            "cache/partial",
        ] {
            let path = store.dir.join(sub);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&path)
                .map_err(io(format!("creating {}", path.display())))?;
        }
        let marker = store.cache_dir().join("oci-layout");
        if !marker.exists() {
            fs::write(&marker, r#"{"imageLayoutVersion":"1.0.0"}"#)
                .map_err(io(format!("writing {}", marker.display())))?;
        }
        let tmp = store.dir.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(io(format!("listing {}", tmp.display())))? {
            let entry = entry.map_err(io(format!("listing {}", tmp.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(hex) = name.split('.').next().filter(|h| is_hex(h)) else {
                continue;
            };
            if let Some(_lock) = store.try_lock(hex)? {
                remove_tree(&entry.path())?;
            }
        }
        Ok(store)
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The OCI image layout that holds blobs pulled from registries.
    pub(crate) fn cache_dir(&self) -> PathBuf {
        self.dir.join("cache")
    }

    /// Resolves `oci:/path[:tag]`, verifies it, and unpacks it unless already in the store.
    pub fn import(&self, reference: &str) -> Result<Resolved, ImageError> {
        self.import_report(reference).map(|i| i.resolved)
    }

    /// [`ImageStore::import`], saying whether this call unpacked the image and how long it took.
    pub fn import_report(&self, reference: &str) -> Result<Import, ImageError> {
        let started = Instant::now();
        let image = layout::resolve(&LayoutRef::parse(reference)?)?;
        let hex = sha256_hex(&image.layout, &image.digest)?.to_owned();
        let done = |resolved, unpacked| Import {
            resolved,
            unpacked,
            elapsed: started.elapsed(),
        };
        if let Some(resolved) = self.read_root(&hex)? {
            self.touch(&hex)?;
            return Ok(done(resolved, false));
        }
        let _lock = self.lock(&hex)?;
        let (resolved, unpacked) = self.unpack_locked(&image, &hex, Blobs::Unverified)?;
        Ok(done(resolved, unpacked))
    }

    /// Unpacks `image` unless its root exists; the caller holds the lock of `hex`.
    pub(crate) fn unpack_locked(
        &self,
        image: &Image,
        hex: &str,
        blobs: Blobs,
    ) -> Result<(Resolved, bool), ImageError> {
        if let Some(resolved) = self.read_root(hex)? {
            self.touch(hex)?; // Another import finished it while we waited.
            return Ok((resolved, false));
        }
        self.clear_tmp(hex)?;
        Ok((self.unpack(image, hex, blobs)?, true))
    }

    /// The image with this manifest digest, if the store has it.
    pub fn get(&self, digest: &str) -> Result<Option<Resolved>, ImageError> {
        let hex = sha256_hex(&self.dir, digest)?;
        self.read_root(hex)
    }

    /// Every image in the store, by digest.
    pub fn list(&self) -> Result<Vec<Resolved>, ImageError> {
        let roots = self.dir.join("roots");
        let mut out = Vec::new();
        for entry in fs::read_dir(&roots).map_err(io(format!("listing {}", roots.display())))? {
            let entry = entry.map_err(io(format!("listing {}", roots.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_hex(&name)
                && let Some(r) = self.read_root(&name)?
            {
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    /// Removes an image's root; false if the store did not have it. The caller makes sure no
    /// machine uses it. The root leaves `roots/` in one rename, then is deleted.
    pub fn remove(&self, digest: &str) -> Result<bool, ImageError> {
        let hex = sha256_hex(&self.dir, digest)?.to_owned();
        let _lock = self.lock(&hex)?;
        self.remove_locked(&hex)
    }

    /// [`ImageStore::remove`], the caller holding the lock of `hex`.
    pub(crate) fn remove_locked(&self, hex: &str) -> Result<bool, ImageError> {
        let root = self.dir.join("roots").join(hex);
        if !root.exists() {
            return Ok(false);
        }
        let doomed = self.tmp_path(hex);
        fs::rename(&root, &doomed).map_err(io(format!("moving {} out", root.display())))?;
        sync_dir(&self.dir.join("roots"))?;
        remove_tree(&doomed)?;
        Ok(true)
    }

    fn unpack(&self, image: &Image, hex: &str, blobs: Blobs) -> Result<Resolved, ImageError> {
        let tmp = self.tmp_path(hex);
        let result = self.unpack_into(image, hex, &tmp, blobs);
        if result.is_err() {
            let _ = remove_tree(&tmp); // Best effort; the next open or import clears it.
        }
        result
    }

    fn unpack_into(
        &self,
        image: &Image,
        hex: &str,
        tmp: &Path,
        blobs: Blobs,
    ) -> Result<Resolved, ImageError> {
        let rootfs = tmp.join("rootfs");
        for d in [tmp, rootfs.as_path()] {
            fs::DirBuilder::new()
                .mode(0o755)
                .create(d)
                .map_err(io(format!("creating {}", d.display())))?;
            // Not the umask's choice: a non-root workload must be able to traverse its `/`.
            fs::set_permissions(d, fs::Permissions::from_mode(0o755))
                .map_err(io(format!("setting the mode of {}", d.display())))?;
        }
        let mut unpacker = Unpacker::new(&rootfs)?;
        let diff_ids = image.config.rootfs().diff_ids();
        for (layer, diff_id) in image.manifest.layers().iter().zip(diff_ids) {
            apply_layer(image, layer, diff_id, &mut unpacker, blobs)?;
        }
        let final_dir = self.dir.join("roots").join(hex);
        let resolved = resolved(image, final_dir.join("rootfs"), disk_usage(&rootfs)?);
        let meta = tmp.join("image.json");
        let json = serde_json::to_vec_pretty(&resolved).map_err(|e| ImageError::Io {
            context: "encoding image.json".to_owned(),
            source: e.into(),
        })?;
        fs::write(&meta, json).map_err(io(format!("writing {}", meta.display())))?;
        let used = tmp.join(LAST_USED);
        fs::write(&used, b"").map_err(io(format!("writing {}", used.display())))?;
        // One syncfs makes every file of the root durable before the rename publishes it.
        let dirfd = File::open(tmp).map_err(io(format!("opening {}", tmp.display())))?;
        nix::unistd::syncfs(&dirfd).map_err(errno(format!("syncing {}", tmp.display())))?;
        fs::rename(tmp, &final_dir).map_err(io(format!("publishing {}", final_dir.display())))?;
        sync_dir(&self.dir.join("roots"))?;
        if unpacker.skipped_devices > 0 {
            tracing::warn!(image = %image.digest, skipped = unpacker.skipped_devices, "device nodes in the image were not unpacked");
        }
        Ok(resolved)
    }

    pub(crate) fn read_root(&self, hex: &str) -> Result<Option<Resolved>, ImageError> {
        let dir = self.dir.join("roots").join(hex);
        let meta = dir.join("image.json");
        let bytes = match fs::read(&meta) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(format!("reading {}", meta.display()))(e)),
        };
        let mut r: Resolved = serde_json::from_slice(&bytes).map_err(|e| ImageError::Io {
            context: format!("reading {}", meta.display()),
            source: e.into(),
        })?;
        r.rootfs = dir.join("rootfs");
        Ok(Some(r))
    }

    fn lock_file(&self, hex: &str) -> Result<File, ImageError> {
        let path = self.dir.join("locks").join(format!("{hex}.lock"));
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(format!("opening {}", path.display())))
    }

    pub(crate) fn lock(&self, hex: &str) -> Result<Flock<File>, ImageError> {
        Flock::lock(self.lock_file(hex)?, FlockArg::LockExclusive)
            .map_err(|(_, e)| errno(format!("locking image {hex}"))(e))
    }

    pub(crate) fn try_lock(&self, hex: &str) -> Result<Option<Flock<File>>, ImageError> {
        match Flock::lock(self.lock_file(hex)?, FlockArg::LockExclusiveNonblock) {
            Ok(l) => Ok(Some(l)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(errno(format!("locking image {hex}"))(e)),
        }
    }

    pub(crate) fn tmp_path(&self, hex: &str) -> PathBuf {
        let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join("tmp")
            .join(format!("{hex}.{}.{seq}", std::process::id()))
    }

    /// Removes what interrupted unpacks of `hex` left; the caller holds its lock.
    fn clear_tmp(&self, hex: &str) -> Result<(), ImageError> {
        let tmp = self.dir.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(io(format!("listing {}", tmp.display())))? {
            let entry = entry.map_err(io(format!("listing {}", tmp.display())))?;
            if entry.file_name().to_string_lossy().split('.').next() == Some(hex) {
                remove_tree(&entry.path())?;
            }
        }
        Ok(())
    }
}

/// Whether the layer blobs an unpack reads still need their digests checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blobs {
    /// A layout's blobs, as found: each is hashed while it is read.
    Unverified,
    /// Blobs the caller has just verified (a pull): read as they are.
    Verified,
}

/// Streams one layer blob through digest and size checks (unless `blobs` says they were made),
/// decompression, the `diff_id` check and the unpacker. A blob that fails its digest is
/// reported as such, whatever else its content made go wrong (its half-applied entries are in
/// the temp dir, which is thrown away).
fn apply_layer(
    image: &Image,
    layer: &oci_spec::image::Descriptor,
    diff_id: &str,
    unpacker: &mut Unpacker,
    blobs: Blobs,
) -> Result<(), ImageError> {
    let path = &image.layout;
    let digest = layer.digest().to_string();
    let compression = layout::layer_compression(path, layer)?;
    let mut verified = blob::open(path, &digest, layer.size())?;
    let bad = |e: std::io::Error| ImageError::BadLayer {
        layer: digest.clone(),
        reason: e.to_string(),
    };
    let applied = (|| {
        let raw: Box<dyn std::io::Read + '_> = match blobs {
            Blobs::Unverified => Box::new(&mut verified),
            Blobs::Verified => Box::new(verified.inner_mut()),
        };
        let raw = std::io::BufReader::with_capacity(1 << 18, raw);
        let decoder: Box<dyn std::io::Read + '_> = match compression {
            Compression::None => Box::new(raw),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(raw)),
            Compression::Zstd => Box::new(zstd::Decoder::with_buffer(raw).map_err(bad)?),
        };
        let mut hashing = Hashing::new(decoder);
        unpacker.apply(&digest, &mut hashing)?;
        hashing.finish().map_err(bad)
    })();
    if blobs == Blobs::Unverified {
        verified.finish(path)?;
    }
    let actual = applied?;
    if actual != diff_id {
        return Err(ImageError::DigestMismatch {
            path: path.clone(),
            digest: format!("{diff_id} (diff_id of layer {digest})"),
            actual,
        });
    }
    Ok(())
}

fn resolved(image: &Image, rootfs: PathBuf, unpacked_bytes: u64) -> Resolved {
    let c = image.config.config().clone().unwrap_or_default();
    let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    Resolved {
        digest: image.digest.clone(),
        rootfs,
        entrypoint: c.entrypoint().clone().unwrap_or_default(),
        cmd: c.cmd().clone().unwrap_or_default(),
        env: c.env().clone().unwrap_or_default(),
        workdir: non_empty(c.working_dir()),
        user: non_empty(c.user()),
        unpacked_bytes,
    }
}

/// Allocated bytes under `root`, each inode once, symlinks not followed.
fn disk_usage(root: &Path) -> Result<u64, ImageError> {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_owned()];
    while let Some(path) = stack.pop() {
        let meta =
            fs::symlink_metadata(&path).map_err(io(format!("measuring {}", path.display())))?;
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        total += meta.blocks() * 512;
        if meta.is_dir() {
            for entry in fs::read_dir(&path).map_err(io(format!("measuring {}", path.display())))? {
                stack.push(
                    entry
                        .map_err(io(format!("measuring {}", path.display())))?
                        .path(),
                );
            }
        }
    }
    Ok(total)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), ImageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("syncing {}", dir.display())))
}

pub(crate) fn remove_tree(path: &Path) -> Result<(), ImageError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(format!("removing {}", path.display()))(e)),
    }
}

pub(crate) fn is_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
