//! Named volumes: `<data_dir>/volumes/<name>/`, a directory each, bind-mounted into the image
//! machines whose `mounts` name it. A volume outlives every machine: destroy never touches it,
//! only `DELETE /v1/volumes/{name}` does (refused while a machine that is not destroyed mounts
//! it, which the agent decides from its records).
//!
//! `volumes/` itself is private to root (0700), so no host user reaches a volume through the
//! data dir; each volume directory is 0700 and owned by the user of the machine that last
//! mounted it writable (a volume made by `POST /v1/volumes` starts owned by root). A machine
//! whose `mounts` name a volume that does not exist creates it.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use berth_types::workload::validate_volume_name;

/// One volume on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Its name.
    pub name: String,
    /// Its directory.
    pub path: PathBuf,
    /// Owner of its directory (the user of the machine that last mounted it writable).
    pub uid: u32,
    /// Group of its directory.
    pub gid: u32,
    /// When its directory was made, where the filesystem records it (else its last change).
    pub created: Option<SystemTime>,
}

/// A volume operation's failure.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The name is not a valid volume name.
    #[error("name: {0}")]
    BadName(String),
    /// No such volume.
    #[error("volume {0} not found")]
    NotFound(String),
    /// It exists already.
    #[error("volume {0} exists already")]
    Exists(String),
    /// The filesystem refused.
    #[error("volume {name}: {what}: {err}")]
    Io {
        /// The volume.
        name: String,
        /// What was being done.
        what: &'static str,
        /// The error.
        err: std::io::Error,
    },
}

fn io(name: &str, what: &'static str) -> impl FnOnce(std::io::Error) -> VolumeError {
    let name = name.to_owned();
    move |err| VolumeError::Io { name, what, err }
}

/// The volumes under `dir` (`<data_dir>/volumes`).
#[derive(Debug, Clone)]
pub struct Volumes {
    dir: PathBuf,
}

impl Volumes {
    /// The volumes kept in `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// Where they are kept.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A volume's directory (the name must be valid).
    pub fn path(&self, name: &str) -> Result<PathBuf, VolumeError> {
        validate_volume_name(name).map_err(VolumeError::BadName)?;
        Ok(self.dir.join(name))
    }

    fn ensure_root(&self) -> Result<(), VolumeError> {
        std::fs::create_dir_all(&self.dir).map_err(io("(all)", "create the volumes directory"))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("(all)", "make the volumes directory private"))
    }

    fn info(&self, name: &str) -> Result<Option<VolumeInfo>, VolumeError> {
        let path = self.path(name)?;
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => m,
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(name, "stat")(e)),
        };
        Ok(Some(VolumeInfo {
            name: name.to_owned(),
            uid: meta.uid(),
            gid: meta.gid(),
            created: meta.created().or_else(|_| meta.modified()).ok(),
            path,
        }))
    }

    /// Every volume, by name.
    pub fn list(&self) -> Result<Vec<VolumeInfo>, VolumeError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("(all)", "list")(e)),
        };
        let mut out = Vec::new();
        for e in entries {
            let e = e.map_err(io("(all)", "list"))?;
            let name = e.file_name().to_string_lossy().into_owned();
            // Anything else in the directory (a leftover temporary) is not a volume.
            if validate_volume_name(&name).is_err() {
                continue;
            }
            if let Some(v) = self.info(&name)? {
                out.push(v);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// One volume, or `NotFound`.
    pub fn get(&self, name: &str) -> Result<VolumeInfo, VolumeError> {
        self.info(name)?
            .ok_or_else(|| VolumeError::NotFound(name.to_owned()))
    }

    /// Creates an empty volume owned by root, or `Exists`.
    pub fn create(&self, name: &str) -> Result<VolumeInfo, VolumeError> {
        let path = self.path(name)?;
        self.ensure_root()?;
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(VolumeError::Exists(name.to_owned()));
            }
            Err(e) => return Err(io(name, "create")(e)),
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
            .map_err(io(name, "chmod"))?;
        self.get(name)
    }

    /// Makes the volume ready for a machine running as `uid:gid`: created if missing, its
    /// directory 0700 and, for a writable mount, owned by that user (only the directory itself:
    /// what is inside keeps its owners).
    pub fn prepare_for(
        &self,
        name: &str,
        uid: u32,
        gid: u32,
        writable: bool,
    ) -> Result<PathBuf, VolumeError> {
        let path = self.path(name)?;
        self.ensure_root()?;
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(name, "create")(e)),
        }
        let meta = std::fs::symlink_metadata(&path).map_err(io(name, "stat"))?;
        if !meta.is_dir() {
            return Err(io(name, "check")(std::io::Error::other(
                "is not a directory",
            )));
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
            .map_err(io(name, "chmod"))?;
        if writable && (meta.uid(), meta.gid()) != (uid, gid) {
            nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                &path,
                Some(uid.into()),
                Some(gid.into()),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| io(name, "chown")(std::io::Error::from(e)))?;
        }
        Ok(path)
    }

    /// Removes a volume and everything in it, or `NotFound`. Whether a machine mounts it is the
    /// caller's check.
    pub fn remove(&self, name: &str) -> Result<(), VolumeError> {
        let v = self.get(name)?;
        std::fs::remove_dir_all(&v.path).map_err(io(name, "remove"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn create_list_prepare_remove() {
        let dir = tempfile::tempdir().unwrap();
        let v = Volumes::new(dir.path().join("volumes"));
        assert!(v.list().unwrap().is_empty());
        v.create("data").unwrap();
        assert!(matches!(v.create("data"), Err(VolumeError::Exists(_))));
        assert!(matches!(v.create("../x"), Err(VolumeError::BadName(_))));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dir.path().join("volumes")), 0o700);
        assert_eq!(mode(&dir.path().join("volumes/data")), 0o700);
        let p = v.prepare_for("other", 1000, 1000, true).unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
        let names: Vec<String> = v.list().unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["data", "other"]);
        std::fs::write(p.join("f"), "x").unwrap();
        v.remove("other").unwrap();
        assert!(matches!(v.remove("other"), Err(VolumeError::NotFound(_))));
        assert!(!p.exists());
    }
}
