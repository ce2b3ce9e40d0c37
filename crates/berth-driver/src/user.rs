//! Who a process machine runs as: config `user` (`NAME`, `UID`, `NAME:GROUP` or `UID:GID`)
//! resolved against the host's user database (NSS, through `getpwnam_r` and friends).
//!
//! A name that does not exist is refused; so is a numeric UID without a passwd entry unless its
//! group is given (`UID:GID`): a made-up uid must not silently run in group 0. Supplementary
//! groups are the user's groups (`getgrouplist`) for a user with a passwd entry, none otherwise,
//! so the workload never keeps the root groups of its supervisor.

use std::path::PathBuf;

use nix::unistd::{Gid, Group, Uid, User};
use serde::{Deserialize, Serialize};

/// A resolved host user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids (including the primary group, as `getgrouplist` gives them).
    pub groups: Vec<u32>,
    /// The user's name, when it has a passwd entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The user's home directory, when it has a passwd entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<PathBuf>,
}

fn numeric(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Resolves `spec` on this host, or says why it cannot (the message names no field: the
/// caller prefixes `user: `).
pub fn resolve(spec: &str) -> Result<HostUser, String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() || group.is_some_and(str::is_empty) {
        return Err("expected NAME, UID, NAME:GROUP or UID:GID".to_owned());
    }
    let lookup = |e: nix::errno::Errno| format!("looking up user {user:?}: {e}");
    let entry = if numeric(user) {
        let uid: u32 = user
            .parse()
            .map_err(|_| format!("uid {user} is out of range"))?;
        User::from_uid(Uid::from_raw(uid)).map_err(lookup)?
    } else {
        Some(
            User::from_name(user)
                .map_err(lookup)?
                .ok_or_else(|| format!("no user {user:?} on this host"))?,
        )
    };
    let uid = match &entry {
        Some(e) => e.uid.as_raw(),
        None => user
            .parse()
            .map_err(|_| format!("uid {user} is out of range"))?,
    };
    let gid = match group {
        Some(g) if numeric(g) => g.parse().map_err(|_| format!("gid {g} is out of range"))?,
        Some(g) => Group::from_name(g)
            .map_err(|e| format!("looking up group {g:?}: {e}"))?
            .ok_or_else(|| format!("no group {g:?} on this host"))?
            .gid
            .as_raw(),
        None => match &entry {
            Some(e) => e.gid.as_raw(),
            None => {
                return Err(format!(
                    "uid {uid} has no entry in the host's user database; give its group as {uid}:GID"
                ));
            }
        },
    };
    let groups = match &entry {
        Some(e) => {
            let name = std::ffi::CString::new(e.name.as_bytes())
                .map_err(|_| format!("user {:?} has a NUL in its name", e.name))?;
            let mut g: Vec<u32> = nix::unistd::getgrouplist(&name, Gid::from_raw(gid))
                .map_err(|e| format!("listing the groups of {user:?}: {e}"))?
                .into_iter()
                .map(Gid::as_raw)
                .collect();
            g.sort_unstable();
            g.dedup();
            g
        }
        None => vec![gid],
    };
    Ok(HostUser {
        uid,
        gid,
        groups,
        name: entry.as_ref().map(|e| e.name.clone()),
        home: entry.map(|e| e.dir),
    })
}

impl HostUser {
    /// The working directory a process machine gets when its config names none: the user's home
    /// directory when it exists, else `/`.
    pub fn default_workdir(&self) -> PathBuf {
        self.home
            .as_ref()
            .filter(|h| h.is_absolute() && h.is_dir())
            .cloned()
            .unwrap_or_else(|| PathBuf::from("/"))
    }

    /// Takes this identity: supplementary groups, then the group, then the user (the order in
    /// which each step still has the privilege the next one needs). Async-signal-safe: for the
    /// forked child before `exec`, with `groups` prepared before the fork.
    pub fn become_user(uid: u32, gid: u32, groups: &[Gid]) -> Result<(), nix::errno::Errno> {
        nix::unistd::setgroups(groups)?;
        nix::unistd::setgid(Gid::from_raw(gid))?;
        nix::unistd::setuid(Uid::from_raw(uid))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_and_ids_resolve_and_unknowns_are_refused() {
        let root = resolve("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(root.default_workdir(), PathBuf::from("/root"));
        let nobody = resolve("nobody").unwrap();
        assert_eq!(nobody.uid, 65534);
        assert!(nobody.groups.contains(&nobody.gid));
        let n = resolve("65534:1234").unwrap();
        assert_eq!((n.uid, n.gid), (65534, 1234));
        let made_up = resolve("54321:54321").unwrap();
        assert_eq!(
            (made_up.uid, made_up.gid, made_up.groups.clone()),
            (54321, 54321, vec![54321])
        );
        assert_eq!(made_up.default_workdir(), PathBuf::from("/"));
        for bad in [
            "no-such-user-here",
            "54321",
            "root:no-such-group",
            ":0",
            "0:",
            "99999999999",
        ] {
            assert!(resolve(bad).is_err(), "{bad}");
        }
    }
}
