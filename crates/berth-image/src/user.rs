//! Users and groups as the image's own `/etc/passwd` and `/etc/group` define them.
//!
//! Both files are opened inside the image's root (`RESOLVE_IN_ROOT`), so an image whose
//! `/etc/passwd` is a symlink to `../../../../etc/passwd` reads its own file, never the host's.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::Mode;

use crate::ImageError;
use crate::error::errno;

/// The largest passwd or group file read.
const DB_MAX: u64 = 16 << 20;

/// Who a process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIds {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids (the groups of `/etc/group` that list the user), sorted, without
    /// the primary group.
    pub groups: Vec<u32>,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

/// Resolves `"NAME" | "UID" | "NAME:GROUP" | "UID:GID" | …` against the image at `rootfs`.
pub fn resolve_user(rootfs: &Path, spec: &str) -> Result<UserIds, ImageError> {
    let unknown = |reason: String| ImageError::UnknownUser {
        user: spec.chars().take(256).collect(),
        reason,
        rootfs: rootfs.to_owned(),
    };
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() || group.is_some_and(str::is_empty) {
        return Err(unknown(
            "expected NAME, UID, NAME:GROUP or UID:GID".to_owned(),
        ));
    }
    let passwd = read_db(rootfs, "etc/passwd")?;
    let entries: Vec<PasswdEntry<'_>> = passwd.as_deref().map(parse_passwd).unwrap_or_default();
    let numeric = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let entry = if numeric(user) {
        let uid: u32 = user
            .parse()
            .map_err(|_| unknown(format!("uid {user} is out of range")))?;
        entries.iter().find(|e| e.uid == uid)
    } else {
        let found = entries.iter().find(|e| e.name == user);
        if found.is_none() {
            return Err(unknown(match passwd {
                None => format!("no user {user:?}: the image has no /etc/passwd"),
                Some(_) => format!("no user {user:?} in the image's /etc/passwd"),
            }));
        }
        found
    };
    let uid = match entry {
        Some(e) => e.uid,
        None => user
            .parse()
            .map_err(|_| unknown(format!("uid {user} is out of range")))?,
    };
    let groups_db = read_db(rootfs, "etc/group")?;
    let groups = groups_db.as_deref().map(parse_group).unwrap_or_default();
    let gid = match group {
        Some(g) if numeric(g) => g
            .parse()
            .map_err(|_| unknown(format!("gid {g} is out of range")))?,
        Some(g) => groups
            .iter()
            .find(|(name, _, _)| *name == g)
            .map(|(_, gid, _)| *gid)
            .ok_or_else(|| unknown(format!("no group {g:?} in the image's /etc/group")))?,
        None => entry.map_or(0, |e| e.gid),
    };
    let mut supplementary: Vec<u32> = match entry {
        Some(e) => groups
            .iter()
            .filter(|(_, g, members)| *g != gid && members.contains(&e.name))
            .map(|(_, g, _)| *g)
            .collect(),
        None => Vec::new(),
    };
    supplementary.sort_unstable();
    supplementary.dedup();
    Ok(UserIds {
        uid,
        gid,
        groups: supplementary,
    })
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry<'_>> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(':');
            let name = f.next()?;
            let _password = f.next()?;
            let uid = f.next()?.parse().ok()?;
            let gid = f.next()?.parse().ok()?;
            Some(PasswdEntry { name, uid, gid })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<(&str, u32, Vec<&str>)> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(':');
            let name = f.next()?;
            let _password = f.next()?;
            let gid = f.next()?.parse().ok()?;
            let members = f
                .next()
                .unwrap_or("")
                .split(',')
                .filter(|m| !m.is_empty())
                .collect();
            Some((name, gid, members))
        })
        .collect()
}

/// Reads a file of the image, resolved inside its root; `None` when it does not exist.
fn read_db(rootfs: &Path, rel: &str) -> Result<Option<String>, ImageError> {
    let what = format!("{}/{rel}", rootfs.display());
    let root = openat(
        nix::fcntl::AT_FDCWD,
        rootfs,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno(format!(
        "opening the image root {}",
        rootfs.display()
    )))?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = match openat2(&root, OsStr::new(rel), how) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(errno(format!("opening {what}"))(e)),
    };
    let mut text = String::new();
    File::from(fd)
        .take(DB_MAX)
        .read_to_string(&mut text)
        .map_err(crate::error::io(format!("reading {what}")))?;
    Ok(Some(text))
}
