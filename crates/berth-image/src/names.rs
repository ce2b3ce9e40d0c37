//! The references an image was asked for by (`REGISTRY/REPO:TAG`, `oci:/path:tag`), kept beside
//! its root so `berth image ls` can show them, and when its root was made.
//!
//! The list lives in `roots/<hex>/references` (one reference a line), rewritten whole through a
//! temporary file and a rename under the image's flock, so a reader sees the old list or the new.
//! It is a convenience: an image is identified by its digest, and an unreadable list is reported,
//! never taken for an empty one.

use std::fs;
use std::io::Write as _;
use std::time::SystemTime;

use crate::ImageError;
use crate::blob::sha256_hex;
use crate::error::io;
use crate::store::ImageStore;

const REFERENCES: &str = "references";
/// At most this many references are kept per image (the newest).
const MAX_REFERENCES: usize = 32;

impl ImageStore {
    /// Adds `reference` to the references of the image `digest` (no-op if the store does not
    /// have the image or already lists it).
    pub fn add_reference(&self, digest: &str, reference: &str) -> Result<(), ImageError> {
        let hex = sha256_hex(self.dir(), digest)?.to_owned();
        let _lock = self.lock(&hex)?;
        let root = self.dir().join("roots").join(&hex);
        if !root.is_dir() {
            return Ok(());
        }
        let mut refs = self.references(digest)?;
        if refs.iter().any(|r| r == reference) {
            return Ok(());
        }
        refs.push(reference.to_owned());
        if refs.len() > MAX_REFERENCES {
            refs.drain(..refs.len() - MAX_REFERENCES);
        }
        let tmp = root.join(format!("{REFERENCES}.tmp"));
        let path = root.join(REFERENCES);
        let mut f = fs::File::create(&tmp).map_err(io(format!("writing {}", tmp.display())))?;
        for r in &refs {
            writeln!(f, "{r}").map_err(io(format!("writing {}", tmp.display())))?;
        }
        f.sync_all()
            .map_err(io(format!("syncing {}", tmp.display())))?;
        fs::rename(&tmp, &path).map_err(io(format!("renaming {}", tmp.display())))
    }

    /// The references the image was asked for by, oldest first (empty if none were kept).
    pub fn references(&self, digest: &str) -> Result<Vec<String>, ImageError> {
        let hex = sha256_hex(self.dir(), digest)?;
        let path = self.dir().join("roots").join(hex).join(REFERENCES);
        match fs::read_to_string(&path) {
            Ok(s) => Ok(s
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io(format!("reading {}", path.display()))(e)),
        }
    }

    /// When the image's root was published (its directory's birth time, else its change time);
    /// `None` if the store does not have it.
    pub fn created(&self, digest: &str) -> Result<Option<SystemTime>, ImageError> {
        let hex = sha256_hex(self.dir(), digest)?;
        let path = self.dir().join("roots").join(hex).join("rootfs");
        match fs::symlink_metadata(&path) {
            Ok(m) => Ok(m.created().or_else(|_| m.modified()).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(format!("reading {}", path.display()))(e)),
        }
    }
}
