//! Applying layer archives to a root directory, without ever reaching outside it.
//!
//! Every path is resolved by the kernel inside the root (`openat2` with `RESOLVE_IN_ROOT`): an
//! absolute path or symlink means the root's own `/`, and `..` stops at the root. Entries whose
//! own path or hard-link target names `..` are refused outright; the last component of a path is
//! always created or removed relative to its parent's descriptor, without following it. So a
//! symlink planted by one entry (`evil -> /etc`) is followed by a later entry (`evil/passwd`) to
//! the root's `/etc`, never the host's; a hard link can only join two names inside the root.
//!
//! Whiteouts follow the image spec: `.wh.NAME` removes `NAME` from the layers below, and
//! `.wh..wh..opq` empties its directory of everything the layers below put there. Character
//! and block devices are skipped (logged and counted): an image has no business shipping them,
//! and the runtime provides `/dev`. Ownership (numeric), modes (setuid included) and file
//! mtimes are preserved; xattrs are not.

use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{
    FchmodatFlags, Mode, SFlag, fchmod, fchmodat, fstatat, futimens, mkdirat, mknodat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat, unlinkat};
use tar::EntryType;

use crate::ImageError;
use crate::error::errno;

const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// Applies layers, in order, to one root directory.
#[derive(Debug)]
pub struct Unpacker {
    root: OwnedFd,
    layer: String,
    /// Every path this layer wrote, with its ancestors: what an opaque whiteout keeps.
    written: HashSet<Vec<u8>>,
    /// Device nodes skipped so far.
    pub skipped_devices: u64,
    /// The copy buffer, reused for every file.
    buf: Vec<u8>,
}

/// A path inside the root, as normalized components.
type Components<'a> = Vec<&'a [u8]>;

impl Unpacker {
    /// An unpacker for the (existing, empty) directory `rootfs`.
    pub fn new(rootfs: &Path) -> Result<Self, ImageError> {
        let root = openat(
            nix::fcntl::AT_FDCWD,
            rootfs,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno(format!("opening {}", rootfs.display())))?;
        Ok(Self {
            root,
            layer: String::new(),
            written: HashSet::new(),
            skipped_devices: 0,
            buf: vec![0; 128 * 1024],
        })
    }

    /// Applies one layer's (uncompressed) tar stream, named `layer` (its digest) in errors.
    pub fn apply<R: Read>(&mut self, layer: &str, reader: R) -> Result<(), ImageError> {
        self.layer = layer.to_owned();
        self.written.clear();
        let mut archive = tar::Archive::new(reader);
        let entries = archive.entries().map_err(|e| self.bad_layer(&e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| self.bad_layer(&e))?;
            self.entry(&mut entry)?;
        }
        Ok(())
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ImageError> {
        let raw = entry.path_bytes().into_owned();
        let comps = self.normalize(&raw, &raw)?;
        let Some((name, parent)) = comps.split_last() else {
            if entry.header().entry_type() == EntryType::Directory {
                let root = self.root.try_clone().map_err(errno_io("the root"))?;
                return self.set_owner_mode(&root, entry.header(), &raw);
            }
            return Ok(());
        };
        if name.starts_with(WHITEOUT) {
            return self.whiteout(parent, name, &raw);
        }
        for i in 1..=comps.len() {
            self.written.insert(comps[..i].join(&b'/'));
        }
        let parent_fd = self
            .dir(parent, true, &raw)?
            .ok_or_else(|| self.unsafe_entry(&raw, "its parent directory could not be created"))?;
        let name = CString::new(*name).map_err(|_| self.unsafe_entry(&raw, "NUL in path"))?;
        match entry.header().entry_type() {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.file(&parent_fd, &name, entry, &raw)
            }
            EntryType::Directory => self.directory(&parent_fd, &name, entry.header(), &raw),
            EntryType::Symlink => self.symlink(&parent_fd, &name, entry, &raw),
            EntryType::Link => self.hardlink(&parent_fd, &name, entry, &raw),
            EntryType::Fifo => self.fifo(&parent_fd, &name, entry.header(), &raw),
            other => {
                self.skipped_devices +=
                    u64::from(matches!(other, EntryType::Char | EntryType::Block));
                tracing::warn!(
                    layer = %self.layer,
                    entry = %String::from_utf8_lossy(&raw),
                    kind = ?other,
                    "layer entry skipped: device nodes and unknown entry types are not unpacked"
                );
                Ok(())
            }
        }
    }

    /// Splits a path into components, dropping `/` and `.`, refusing `..`.
    fn normalize<'p>(&self, path: &'p [u8], entry: &[u8]) -> Result<Components<'p>, ImageError> {
        let mut out = Vec::new();
        for c in path.split(|&b| b == b'/') {
            match c {
                b"" | b"." => {}
                b".." => {
                    return Err(self.unsafe_entry(entry, "a path with `..` could leave the root"));
                }
                c => out.push(c),
            }
        }
        Ok(out)
    }

    /// Opens the directory at `comps` inside the root (`None` when it does not exist and
    /// `create` is false), creating missing ones (root-owned, 0755) when `create` is true.
    fn dir(
        &self,
        comps: &[&[u8]],
        create: bool,
        entry: &[u8],
    ) -> Result<Option<OwnedFd>, ImageError> {
        let mut cur = self.root.try_clone().map_err(errno_io("the root"))?;
        for i in 1..=comps.len() {
            let prefix = comps[..i].join(&b'/');
            match open_in_root(&self.root, &prefix) {
                Ok(fd) => cur = fd,
                Err(Errno::ENOENT) if create => {
                    match mkdirat(
                        &cur,
                        OsStr::from_bytes(comps[i - 1]),
                        Mode::from_bits_truncate(0o755),
                    ) {
                        Ok(()) => {}
                        Err(Errno::EEXIST) => {
                            return Err(self.unsafe_entry(
                                entry,
                                "a parent is a symlink to a directory that does not exist",
                            ));
                        }
                        Err(e) => return Err(self.io(entry, e)),
                    }
                    cur = open_in_root(&self.root, &prefix).map_err(|e| self.io(entry, e))?;
                    // Whatever berthd's umask: a directory the archive implies is 0755.
                    fchmod(&cur, Mode::from_bits_truncate(0o755)).map_err(|e| self.io(entry, e))?;
                }
                Err(Errno::ENOENT) => return Ok(None),
                Err(Errno::ENOTDIR) => {
                    return Err(self.unsafe_entry(entry, "a parent is not a directory"));
                }
                Err(e @ (Errno::ELOOP | Errno::EXDEV)) => {
                    return Err(self.unsafe_entry(entry, &format!("resolving a parent: {e}")));
                }
                Err(e) => return Err(self.io(entry, e)),
            }
        }
        Ok(Some(cur))
    }

    fn whiteout(&mut self, parent: &[&[u8]], name: &[u8], raw: &[u8]) -> Result<(), ImageError> {
        let Some(dir) = self.dir(parent, false, raw)? else {
            return Ok(()); // Nothing below to hide.
        };
        if name == OPAQUE {
            let prefix = parent.join(&b'/');
            for child in list(&dir).map_err(|e| self.io(raw, e))? {
                let mut path = prefix.clone();
                if !path.is_empty() {
                    path.push(b'/');
                }
                path.extend_from_slice(child.as_bytes());
                if !self.written.contains(&path) {
                    remove_at(&dir, &child).map_err(|e| self.io(raw, e))?;
                }
            }
            return Ok(());
        }
        if name.starts_with(b".wh..wh.") {
            return Ok(()); // Other AUFS metadata (`.wh..wh.plnk`): not part of the image.
        }
        let target = &name[WHITEOUT.len()..];
        if target.is_empty() {
            return Err(self.unsafe_entry(raw, "a whiteout that names nothing"));
        }
        let target = CString::new(target).map_err(|_| self.unsafe_entry(raw, "NUL in path"))?;
        remove_at(&dir, &target).map_err(|e| self.io(raw, e))
    }

    fn file<R: Read>(
        &mut self,
        parent: &OwnedFd,
        name: &CString,
        entry: &mut tar::Entry<'_, R>,
        raw: &[u8],
    ) -> Result<(), ImageError> {
        self.clear(parent, name, false, raw)?;
        let fd = openat(
            parent,
            name.as_c_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| self.io(raw, e))?;
        let mut file = File::from(fd);
        loop {
            let n = entry.read(&mut self.buf).map_err(|e| self.bad_layer(&e))?;
            if n == 0 {
                break;
            }
            file.write_all(&self.buf[..n])
                .map_err(|e| self.io(raw, Errno::from_raw(e.raw_os_error().unwrap_or(0))))?;
        }
        self.set_owner_mode(&file, entry.header(), raw)?;
        if let Ok(mtime) = entry.header().mtime() {
            let t = TimeSpec::new(i64::try_from(mtime).unwrap_or(0), 0);
            futimens(&file, &t, &t).map_err(|e| self.io(raw, e))?;
        }
        Ok(())
    }

    fn directory(
        &self,
        parent: &OwnedFd,
        name: &CString,
        header: &tar::Header,
        raw: &[u8],
    ) -> Result<(), ImageError> {
        if !self.clear(parent, name, true, raw)? {
            mkdirat(parent, name.as_c_str(), Mode::from_bits_truncate(0o700))
                .map_err(|e| self.io(raw, e))?;
        }
        let dir = openat(
            parent,
            name.as_c_str(),
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.io(raw, e))?;
        self.set_owner_mode(&dir, header, raw)
    }

    fn symlink<R: Read>(
        &self,
        parent: &OwnedFd,
        name: &CString,
        entry: &tar::Entry<'_, R>,
        raw: &[u8],
    ) -> Result<(), ImageError> {
        let target = entry
            .link_name_bytes()
            .ok_or_else(|| self.unsafe_entry(raw, "a symlink without a target"))?;
        self.clear(parent, name, false, raw)?;
        symlinkat(OsStr::from_bytes(&target), parent, name.as_c_str())
            .map_err(|e| self.io(raw, e))?;
        let (uid, gid) = owner(entry.header());
        fchownat(
            parent,
            name.as_c_str(),
            Some(uid),
            Some(gid),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.io(raw, e))
    }

    fn hardlink<R: Read>(
        &self,
        parent: &OwnedFd,
        name: &CString,
        entry: &tar::Entry<'_, R>,
        raw: &[u8],
    ) -> Result<(), ImageError> {
        let target = entry
            .link_name_bytes()
            .ok_or_else(|| self.unsafe_entry(raw, "a hard link without a target"))?;
        let comps = self.normalize(&target, raw)?;
        let Some((tname, tparent)) = comps.split_last() else {
            return Err(self.unsafe_entry(raw, "a hard link to the root"));
        };
        let tdir = self.dir(tparent, false, raw)?.ok_or_else(|| {
            self.unsafe_entry(raw, "its hard link's target does not exist in the root")
        })?;
        let tname = CString::new(*tname).map_err(|_| self.unsafe_entry(raw, "NUL in path"))?;
        self.clear(parent, name, false, raw)?;
        // No AT_SYMLINK_FOLLOW: a target that is a symlink is linked as the symlink itself.
        match linkat(
            &tdir,
            tname.as_c_str(),
            parent,
            name.as_c_str(),
            nix::fcntl::AtFlags::empty(),
        ) {
            Ok(()) => Ok(()),
            Err(Errno::ENOENT) => {
                Err(self.unsafe_entry(raw, "its hard link's target does not exist in the root"))
            }
            Err(e) => Err(self.io(raw, e)),
        }
    }

    fn fifo(
        &self,
        parent: &OwnedFd,
        name: &CString,
        header: &tar::Header,
        raw: &[u8],
    ) -> Result<(), ImageError> {
        self.clear(parent, name, false, raw)?;
        let mode = Mode::from_bits_truncate(header.mode().unwrap_or(0o644) & 0o7777);
        mknodat(parent, name.as_c_str(), SFlag::S_IFIFO, mode, 0).map_err(|e| self.io(raw, e))?;
        let (uid, gid) = owner(header);
        fchownat(
            parent,
            name.as_c_str(),
            Some(uid),
            Some(gid),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.io(raw, e))?;
        // mknodat's mode went through the umask. The name is the FIFO just made in this
        // private directory, so following it cannot lead anywhere else.
        fchmodat(parent, name.as_c_str(), mode, FchmodatFlags::FollowSymlink)
            .map_err(|e| self.io(raw, e))
    }

    /// Makes room for `name` in `parent`: removes what is there, except a directory when the
    /// new entry is one too (`keep_dir`; then returns true and the directory keeps its content).
    fn clear(
        &self,
        parent: &OwnedFd,
        name: &CString,
        keep_dir: bool,
        raw: &[u8],
    ) -> Result<bool, ImageError> {
        match fstatat(
            parent,
            name.as_c_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(self.io(raw, e)),
            Ok(st)
                if keep_dir
                    && SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR =>
            {
                Ok(true)
            }
            Ok(_) => {
                remove_at(parent, name).map_err(|e| self.io(raw, e))?;
                Ok(false)
            }
        }
    }

    /// Owner first, then mode: a chown clears setuid and setgid bits.
    fn set_owner_mode<F: AsFd>(
        &self,
        fd: &F,
        header: &tar::Header,
        raw: &[u8],
    ) -> Result<(), ImageError> {
        let (uid, gid) = owner(header);
        fchown(fd, Some(uid), Some(gid)).map_err(|e| self.io(raw, e))?;
        let mode = header.mode().map_err(|e| self.bad_layer(&e))? & 0o7777;
        fchmod(fd, Mode::from_bits_truncate(mode)).map_err(|e| self.io(raw, e))
    }

    fn unsafe_entry(&self, entry: &[u8], reason: &str) -> ImageError {
        ImageError::UnsafeEntry {
            layer: self.layer.clone(),
            entry: String::from_utf8_lossy(entry).chars().take(512).collect(),
            reason: reason.to_owned(),
        }
    }

    fn bad_layer(&self, e: &io::Error) -> ImageError {
        ImageError::BadLayer {
            layer: self.layer.clone(),
            reason: e.to_string(),
        }
    }

    fn io(&self, entry: &[u8], e: Errno) -> ImageError {
        ImageError::Io {
            context: format!(
                "layer {}: applying entry {:?}",
                self.layer,
                String::from_utf8_lossy(entry)
                    .chars()
                    .take(512)
                    .collect::<String>()
            ),
            source: io::Error::from(e),
        }
    }
}

fn errno_io(what: &'static str) -> impl FnOnce(io::Error) -> ImageError {
    move |source| ImageError::Io {
        context: format!("duplicating the descriptor of {what}"),
        source,
    }
}

fn owner(header: &tar::Header) -> (Uid, Gid) {
    let uid = header
        .uid()
        .ok()
        .and_then(|u| u32::try_from(u).ok())
        .unwrap_or(0);
    let gid = header
        .gid()
        .ok()
        .and_then(|g| u32::try_from(g).ok())
        .unwrap_or(0);
    (Uid::from_raw(uid), Gid::from_raw(gid))
}

/// Opens a directory at `path` resolved inside `root` (the kernel keeps it there).
fn open_in_root(root: &OwnedFd, path: &[u8]) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(root, OsStr::from_bytes(path), how)
}

/// The names in a directory, without `.` and `..`.
fn list(dir: &OwnedFd) -> Result<Vec<CString>, Errno> {
    let mut d = nix::dir::Dir::from_fd(
        dir.try_clone()
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?,
    )?;
    let mut names = Vec::new();
    for entry in d.iter() {
        let name = entry?.file_name().to_owned();
        if name.as_bytes() != b"." && name.as_bytes() != b".." {
            names.push(name);
        }
    }
    Ok(names)
}

/// Removes `name` in `dir` (recursively when a directory), never following a symlink.
pub(crate) fn remove_at(dir: &OwnedFd, name: &CString) -> Result<(), Errno> {
    let st = match fstatat(
        dir,
        name.as_c_str(),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Err(Errno::ENOENT) => return Ok(()),
        other => other?,
    };
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
        let child = openat(
            dir,
            name.as_c_str(),
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        for n in list(&child)? {
            remove_at(&child, &n)?;
        }
        unlinkat(dir, name.as_c_str(), UnlinkatFlags::RemoveDir)
    } else {
        unlinkat(dir, name.as_c_str(), UnlinkatFlags::NoRemoveDir)
    }
}
