//! The parts of a machine's config that shape what its workload sees: the user it runs as, the
//! named volumes mounted into it, the files written into its root before start, its network.
//!
//! Only what does not depend on the host is checked here (names, paths, sizes); whether a user
//! exists in an image or a volume exists on the host is the agent's check.

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Bounds on these fields.
pub mod limits {
    /// Longest `user`, in bytes.
    pub const USER_MAX: usize = 256;
    /// Most `mounts`.
    pub const MOUNTS: usize = 32;
    /// Most `files`.
    pub const FILES: usize = 64;
    /// Most decoded bytes in one file.
    pub const FILE_BYTES: usize = 1 << 20;
    /// Most decoded bytes in all files together.
    pub const FILES_BYTES: usize = 4 << 20;
    /// Longest path (mount point or file), in bytes.
    pub const PATH_MAX: usize = 4096;
    /// Longest volume name, in bytes.
    pub const VOLUME_NAME_MAX: usize = 63;
}

/// A named volume mounted into the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountConfig {
    /// The volume's name (see [`validate_volume_name`]).
    pub volume: String,
    /// Where it appears inside the machine (absolute).
    pub path: String,
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// A file written into the machine's root before it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Absolute path inside the machine's root.
    pub path: String,
    /// The content, base64 (standard alphabet, padded).
    pub raw_value: String,
    /// Permission bits (default 0644).
    #[serde(default = "default_mode")]
    pub mode: u32,
}

fn default_mode() -> u32 {
    0o644
}

impl FileConfig {
    /// The decoded content (valid once the config validated).
    pub fn bytes(&self) -> Result<Vec<u8>, String> {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(self.raw_value.as_bytes())
            .map_err(|e| format!("raw_value is not base64: {e}"))
    }
}

/// An image machine's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Network {
    /// The host's network namespace.
    #[default]
    Host,
    /// Its own network namespace with only a loopback interface.
    None,
}

fn bad(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_owned(),
        reason: reason.into(),
        too_large: false,
    }
}

fn too_large(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_owned(),
        reason: reason.into(),
        too_large: true,
    }
}

/// Checks a volume name: 1 to [`limits::VOLUME_NAME_MAX`] bytes of `[A-Za-z0-9._-]`, starting
/// with a letter or digit (it names a directory under the data dir: no `/`, no `..`).
pub fn validate_volume_name(name: &str) -> Result<(), String> {
    let ok_first = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_rest = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if name.len() > limits::VOLUME_NAME_MAX || !(ok_first && ok_rest) {
        return Err(format!(
            "a volume name is 1 to {} characters of A-Z a-z 0-9 . _ -, starting with a letter or digit",
            limits::VOLUME_NAME_MAX
        ));
    }
    Ok(())
}

/// Checks a path inside the machine: absolute, bounded, no NUL, no `..` component (so that,
/// joined under the machine's root, it stays there), and not the root itself.
pub fn validate_inner_path(path: &str) -> Result<(), String> {
    if path.len() > limits::PATH_MAX {
        return Err(format!(
            "{} bytes long; the limit is {}",
            path.len(),
            limits::PATH_MAX
        ));
    }
    if !path.starts_with('/') || path.contains('\0') {
        return Err("must be an absolute path".to_owned());
    }
    if path.split('/').any(|c| c == "..") {
        return Err("must not contain '..' (it would escape the machine's root)".to_owned());
    }
    if path.split('/').all(|c| c.is_empty() || c == ".") {
        return Err("must name something below the root, not the root itself".to_owned());
    }
    Ok(())
}

/// Checks `user`: a name (`[A-Za-z0-9._-]`) or `UID[:GID]`.
pub fn validate_user(user: &str) -> Result<(), ConfigError> {
    if user.len() > limits::USER_MAX {
        return Err(too_large(
            "user",
            format!(
                "{} bytes long; the limit is {}",
                user.len(),
                limits::USER_MAX
            ),
        ));
    }
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    let ok = match user.split_once(':') {
        Some((u, g)) => name_ok(u) && name_ok(g),
        None => name_ok(user),
    };
    if !ok {
        return Err(bad(
            "user",
            "must be a user name or UID, optionally followed by :GROUP or :GID",
        ));
    }
    Ok(())
}

/// Checks `mounts`: bounded, valid names and paths, no mount point twice.
pub fn validate_mounts(mounts: &[MountConfig]) -> Result<(), ConfigError> {
    if mounts.len() > limits::MOUNTS {
        return Err(too_large(
            "mounts",
            format!("{} mounts; the limit is {}", mounts.len(), limits::MOUNTS),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, m) in mounts.iter().enumerate() {
        validate_volume_name(&m.volume).map_err(|e| bad(&format!("mounts[{i}].volume"), e))?;
        validate_inner_path(&m.path).map_err(|e| bad(&format!("mounts[{i}].path"), e))?;
        if !seen.insert(m.path.trim_end_matches('/')) {
            return Err(bad(
                &format!("mounts[{i}].path"),
                format!("{} is mounted twice", m.path),
            ));
        }
    }
    Ok(())
}

/// Checks `files`: bounded count and sizes, valid paths, base64 content, mode bits only.
pub fn validate_files(files: &[FileConfig]) -> Result<(), ConfigError> {
    if files.len() > limits::FILES {
        return Err(too_large(
            "files",
            format!("{} files; the limit is {}", files.len(), limits::FILES),
        ));
    }
    let mut total = 0usize;
    for (i, f) in files.iter().enumerate() {
        validate_inner_path(&f.path).map_err(|e| bad(&format!("files[{i}].path"), e))?;
        if f.path.ends_with('/') {
            return Err(bad(&format!("files[{i}].path"), "must name a file"));
        }
        // Checked before decoding: base64 is 4 bytes for every 3.
        if f.raw_value.len() / 4 * 3 > limits::FILE_BYTES + 3 {
            return Err(too_large(
                &format!("files[{i}].raw_value"),
                format!("more than {} bytes decoded", limits::FILE_BYTES),
            ));
        }
        let n = f
            .bytes()
            .map_err(|e| bad(&format!("files[{i}].raw_value"), e))?
            .len();
        if n > limits::FILE_BYTES {
            return Err(too_large(
                &format!("files[{i}].raw_value"),
                format!("{n} bytes decoded; the limit is {}", limits::FILE_BYTES),
            ));
        }
        total += n;
        if f.mode > 0o7777 {
            return Err(bad(
                &format!("files[{i}].mode"),
                "must be permission bits (at most 0o7777, i.e. 4095)",
            ));
        }
    }
    if total > limits::FILES_BYTES {
        return Err(too_large(
            "files",
            format!("{total} bytes in all; the limit is {}", limits::FILES_BYTES),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn paths_that_escape_are_refused() {
        for p in ["etc/x", "/../x", "/a/../../x", "/", "//", "/./", "/a\0"] {
            assert!(validate_inner_path(p).is_err(), "{p:?}");
        }
        for p in ["/etc/app.conf", "/data", "/a/b/"] {
            validate_inner_path(p).unwrap();
        }
    }

    #[test]
    fn files_and_mounts_name_their_field() {
        let f = |path: &str, raw: &str, mode| FileConfig {
            path: path.into(),
            raw_value: raw.into(),
            mode,
        };
        let e = validate_files(&[f("/ok", "aGk=", 0o644), f("/x/../../y", "", 0o644)]).unwrap_err();
        assert_eq!(e.field, "files[1].path");
        let e = validate_files(&[f("/ok", "not base64!", 0o644)]).unwrap_err();
        assert_eq!(e.field, "files[0].raw_value");
        let e = validate_files(&[f("/ok", "", 0o17777)]).unwrap_err();
        assert_eq!(e.field, "files[0].mode");
        let big = "A".repeat((limits::FILE_BYTES / 3 + 2) * 4);
        assert!(
            validate_files(&[f("/ok", &big, 0o644)])
                .unwrap_err()
                .too_large
        );
        let m = |v: &str, p: &str| MountConfig {
            volume: v.into(),
            path: p.into(),
            read_only: false,
        };
        let e = validate_mounts(&[m("../etc", "/data")]).unwrap_err();
        assert_eq!(e.field, "mounts[0].volume");
        let e = validate_mounts(&[m("a", "/d"), m("b", "/d/")]).unwrap_err();
        assert_eq!(e.field, "mounts[1].path");
        validate_user("nobody").unwrap();
        validate_user("1000:1000").unwrap();
        assert_eq!(validate_user("a b").unwrap_err().field, "user");
        assert_eq!(validate_user("").unwrap_err().field, "user");
    }
}
