//! Collecting what no machine uses: image roots unused for `images.gc_unused_after`, cache
//! blobs no remaining image needs, and stale partial downloads, a few at a time.
//!
//! The store does not know machines: the caller passes an `in_use` predicate over manifest
//! digests. An image is "used" when pulled, imported or [`ImageStore::mark_used`]; a
//! collection skips any image used within `unused_after`, so an image a machine create has just
//! pulled (but not yet recorded) is never taken from under it. Each removal happens under the
//! image's flock, after checking again, and leaves `roots/` in one rename.

use std::collections::HashSet;
use std::fs::{self, File};
use std::path::Path;
use std::time::{Duration, SystemTime};

use oci_spec::image::ImageManifest;

use crate::blob::{self, sha256_hex};
use crate::error::io;
use crate::store::{ImageStore, LAST_USED, is_hex, sync_dir};
use crate::{ImageError, Resolved};

/// The gauge of images in the store.
pub const IMAGES: &str = "berth_images";
/// The gauge of disk space the store's roots occupy.
pub const IMAGE_BYTES: &str = "berth_image_bytes";

/// What one collection step did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    /// Manifest digests of the images removed.
    pub removed: Vec<String>,
    /// Unpacked bytes those images occupied.
    pub freed_bytes: u64,
    /// Cache blobs (and stale partial downloads) removed.
    pub blobs_removed: usize,
    /// Whether the step stopped at its limit with more left to collect.
    pub more: bool,
}

impl ImageStore {
    /// Records that the image is used now (a machine started from it).
    pub fn mark_used(&self, digest: &str) -> Result<(), ImageError> {
        let hex = sha256_hex(self.dir(), digest)?.to_owned();
        self.touch(&hex)
    }

    /// When the image was last used; `None` if the store does not have it.
    pub fn last_used(&self, digest: &str) -> Result<Option<SystemTime>, ImageError> {
        let hex = sha256_hex(self.dir(), digest)?;
        let path = self.dir().join("roots").join(hex).join(LAST_USED);
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(
                m.modified()
                    .map_err(io(format!("reading {}", path.display())))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(format!("reading {}", path.display()))(e)),
        }
    }

    /// Removes an image unless `in_use` says a machine uses it (then [`ImageError::InUse`]);
    /// false if the store did not have it. The caller keeps `in_use` true for any machine it
    /// is creating from this image.
    pub fn remove_unused(
        &self,
        digest: &str,
        in_use: &dyn Fn(&str) -> bool,
    ) -> Result<bool, ImageError> {
        let hex = sha256_hex(self.dir(), digest)?.to_owned();
        let _lock = self.lock(&hex)?;
        if in_use(digest) {
            return Err(ImageError::InUse {
                digest: digest.to_owned(),
            });
        }
        let removed = self.remove_locked(&hex)?;
        record_usage(self)?;
        Ok(removed)
    }

    /// One small collection step: at most `max_steps` removals (images first, oldest use
    /// first, then unneeded cache blobs), each of an image unused for `unused_after` and not
    /// `in_use`. Run it again while `more` is true.
    pub fn collect_garbage(
        &self,
        unused_after: Duration,
        in_use: &dyn Fn(&str) -> bool,
        max_steps: usize,
    ) -> Result<Collected, ImageError> {
        let now = SystemTime::now();
        let stale = |t: SystemTime| now.duration_since(t).is_ok_and(|age| age >= unused_after);
        let mut out = Collected::default();
        let mut candidates = Vec::new();
        for image in self.list()? {
            match self.last_used(&image.digest)? {
                Some(t) if stale(t) && !in_use(&image.digest) => candidates.push((t, image)),
                _ => {}
            }
        }
        candidates.sort_by_key(|(t, _)| *t);
        for (_, image) in candidates {
            if out.removed.len() >= max_steps {
                out.more = true;
                break;
            }
            self.collect_one(&image, &stale, in_use, &mut out)?;
        }
        if !out.more {
            self.collect_blobs(&stale, max_steps - out.removed.len(), &mut out)?;
        }
        record_usage(self)?;
        Ok(out)
    }

    fn collect_one(
        &self,
        image: &Resolved,
        stale: &dyn Fn(SystemTime) -> bool,
        in_use: &dyn Fn(&str) -> bool,
        out: &mut Collected,
    ) -> Result<(), ImageError> {
        let hex = sha256_hex(self.dir(), &image.digest)?.to_owned();
        let Some(_lock) = self.try_lock(&hex)? else {
            return Ok(()); // Being pulled or removed right now: not unused.
        };
        // Checked again under the lock: a pull may have used it since the listing.
        let still_stale = self.last_used(&image.digest)?.is_some_and(stale);
        if still_stale && !in_use(&image.digest) && self.remove_locked(&hex)? {
            out.removed.push(image.digest.clone());
            out.freed_bytes += image.unpacked_bytes;
        }
        Ok(())
    }

    /// Removes cache blobs no image in `roots/` needs, and partial downloads, when stale.
    fn collect_blobs(
        &self,
        stale: &dyn Fn(SystemTime) -> bool,
        budget: usize,
        out: &mut Collected,
    ) -> Result<(), ImageError> {
        let cache = self.cache_dir();
        let needed = self.needed_blobs()?;
        let mut removed = 0;
        for sub in ["blobs/sha256", "partial"] {
            let dir = cache.join(sub);
            for entry in fs::read_dir(&dir).map_err(io(format!("listing {}", dir.display())))? {
                let entry = entry.map_err(io(format!("listing {}", dir.display())))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let hex = name.split('.').next().unwrap_or_default().to_owned();
                if !is_hex(&hex) || (sub != "partial" && needed.contains(&hex)) {
                    continue;
                }
                let modified = entry.metadata().and_then(|m| m.modified());
                if !modified.is_ok_and(stale) {
                    continue;
                }
                if removed >= budget {
                    out.more = true;
                    break;
                }
                let Some(_lock) = self.try_lock(&hex)? else {
                    continue; // Being downloaded right now.
                };
                // A pull that reuses a blob renews its mtime first: checked again under the
                // lock. (A pull that renews it after this check fails with a missing blob,
                // and its retry downloads it again; nothing half-made is published.)
                if !fs::metadata(entry.path())
                    .and_then(|m| m.modified())
                    .is_ok_and(stale)
                {
                    continue;
                }
                remove_file(&entry.path())?;
                removed += 1;
            }
            sync_dir(&dir)?;
        }
        out.blobs_removed += removed;
        Ok(())
    }

    /// The hex digests of the blobs the images in `roots/` were pulled from.
    fn needed_blobs(&self) -> Result<HashSet<String>, ImageError> {
        let cache = self.cache_dir();
        let mut needed = HashSet::new();
        for image in self.list()? {
            let hex = sha256_hex(&cache, &image.digest)?.to_owned();
            let path = cache.join("blobs/sha256").join(&hex);
            let Ok(meta) = fs::metadata(&path) else {
                continue; // Imported from a layout, not pulled.
            };
            let Ok(bytes) = blob::read_json(&cache, &image.digest, meta.len()) else {
                continue;
            };
            needed.insert(hex);
            if let Ok(m) = serde_json::from_slice::<ImageManifest>(&bytes) {
                for d in std::iter::once(m.config()).chain(m.layers()) {
                    if let Some((_, h)) = d.digest().to_string().split_once(':') {
                        needed.insert(h.to_owned());
                    }
                }
            }
        }
        Ok(needed)
    }

    /// Every image and the disk space their roots occupy.
    pub fn usage(&self) -> Result<(usize, u64), ImageError> {
        let images = self.list()?;
        Ok((images.len(), images.iter().map(|i| i.unpacked_bytes).sum()))
    }

    /// Records that the image (by hex digest) is used now.
    pub(crate) fn touch(&self, hex: &str) -> Result<(), ImageError> {
        let path = self.dir().join("roots").join(hex).join(LAST_USED);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(format!("opening {}", path.display())))?;
        file.set_modified(SystemTime::now())
            .map_err(io(format!("touching {}", path.display())))
    }
}

/// Sets the store's gauges from what it holds.
pub(crate) fn record_usage(store: &ImageStore) -> Result<(), ImageError> {
    let (images, bytes) = store.usage()?;
    metrics::gauge!(IMAGES).set(images as f64);
    metrics::gauge!(IMAGE_BYTES).set(bytes as f64);
    Ok(())
}

fn remove_file(path: &Path) -> Result<(), ImageError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(format!("removing {}", path.display()))(e)),
    }
}
