//! The data directory's privacy: the directory is 0700, the files directly in it are private,
//! and the API token is a regular 0600 file of berthd's own user, created from OS randomness only.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::{Fatal, config_error};

/// Reads an existing API token, refusing a file that is not safe to trust: it must be a regular
/// file (opened without following a symbolic link), owned by berthd's user, with no permission
/// for group or other. `None`: there is none yet.
pub fn existing_token(path: &Path) -> Result<Option<String>, Fatal> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let what = |why: String| config_error(format!("api.token_file {}: {why}", path.display()));
    let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK;
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) => {
            return Err(what(
                "is a symbolic link; berthd does not follow links to its token (replace it with the file itself)".into(),
            ));
        }
        Err(e) => return Err(what(format!("cannot be opened: {e}"))),
    };
    let meta = f
        .metadata()
        .map_err(|e| what(format!("cannot be examined: {e}")))?;
    if !meta.file_type().is_file() {
        return Err(what("is not a regular file".into()));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(what(format!(
            "is owned by uid {}, not by berthd's user (uid {euid}); chown it",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(what(format!(
            "has mode {mode:04o}: group or other may use it; chmod 600 it"
        )));
    }
    let mut t = String::new();
    f.read_to_string(&mut t)
        .map_err(|e| what(format!("cannot be read: {e}")))?;
    if t.trim().is_empty() {
        return Err(what(
            "is empty; delete it to have a new token generated".into(),
        ));
    }
    Ok(Some(t.trim().to_owned()))
}

/// Makes `dir` mode 0700 whatever it was, saying so when it changes anything.
pub fn make_private_dir(dir: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("chmod 700 {}: {e}", dir.display()))?;
        tracing::warn!(path = %dir.display(), was = %format!("{mode:04o}"), "the data directory was not private: made it 0700");
    }
    Ok(())
}

/// Takes group and other permissions off every regular file directly in the data directory
/// (the database and its side files, the cordon flag), never following a link. The token file
/// is not fixed but checked ([`existing_token`]); `machines/` belongs to the driver.
pub fn make_private_files(dir: &Path, skip: &Path) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path == skip {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o7777;
        if !meta.file_type().is_file() || mode & 0o077 == 0 {
            continue;
        }
        let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags.bits())
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        f.set_permissions(std::fs::Permissions::from_mode(mode & 0o700))
            .map_err(|e| format!("chmod {}: {e}", path.display()))?;
        tracing::warn!(path = %path.display(), was = %format!("{mode:04o}"), now = %format!("{:04o}", mode & 0o700), "a file in the data directory was readable by others: made it private");
    }
    Ok(())
}

/// Creates the API token (0600, random) on first start. Without OS randomness there is no token.
pub fn new_token(
    path: &Path,
    token: Result<String, berth_api::RandomError>,
) -> Result<String, Fatal> {
    let token = token.map_err(|e| format!("cannot make an API token: {e}"))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    writeln!(f, "{token}")
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    tracing::info!(path = %path.display(), "created a new API token");
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_token_without_os_randomness() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("token");
        let r = new_token(
            &path,
            berth_api::random_hex_with(32, |_| Err("getrandom: ENOSYS".into())),
        );
        let e = r.err().map(|e| e.message).unwrap_or_default();
        assert!(e.contains("cannot make an API token"), "{e}");
        assert!(!path.exists(), "no token file is written");
    }
}
