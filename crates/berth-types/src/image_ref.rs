//! The syntax of a machine's `image`: a local OCI image layout or a registry reference.
//!
//! Only syntax lives here (no I/O): `berth-image` resolves a layout reference, and a registry
//! client resolves the other kind.

/// Longest image reference, in bytes.
pub const IMAGE_REF_MAX: usize = 4096;

/// The tag a reference without one names.
pub const DEFAULT_TAG: &str = "latest";

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef<'a> {
    /// `oci:/abs/path[:tag]`: an OCI image layout directory on this host.
    Layout {
        /// The layout's absolute path.
        path: &'a str,
        /// The tag (an index.json `org.opencontainers.image.ref.name`), `latest` when absent.
        tag: &'a str,
    },
    /// `REGISTRY/REPO[:TAG|@sha256:DIGEST]`: an image in an OCI distribution registry.
    Registry {
        /// `host[:port]`.
        registry: &'a str,
        /// The repository path, `/`-separated lowercase components.
        repository: &'a str,
        /// The tag, when given (and no digest).
        tag: Option<&'a str>,
        /// `sha256:…`, when given.
        digest: Option<&'a str>,
    },
}

/// Parses an image reference, or says in words what is wrong with it.
pub fn parse_image_ref(s: &str) -> Result<ImageRef<'_>, String> {
    if s.len() > IMAGE_REF_MAX {
        return Err(format!(
            "{} bytes long; the limit is {IMAGE_REF_MAX}",
            s.len()
        ));
    }
    if s.chars().any(char::is_control) {
        return Err("contains control characters".to_owned());
    }
    if let Some(rest) = s.strip_prefix("oci:") {
        return parse_layout(rest);
    }
    parse_registry(s)
}

/// Checks an image reference's syntax.
pub fn validate_image_ref(s: &str) -> Result<(), String> {
    parse_image_ref(s).map(|_| ())
}

fn parse_layout(rest: &str) -> Result<ImageRef<'_>, String> {
    if !rest.starts_with('/') {
        return Err(format!(
            "oci:{rest}: the layout's path must be absolute (oci:/path/to/layout[:tag])"
        ));
    }
    let after_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (path, tag) = match rest[after_slash..].rfind(':') {
        Some(i) => {
            let colon = after_slash + i;
            (&rest[..colon], &rest[colon + 1..])
        }
        None => (rest, DEFAULT_TAG),
    };
    if path.len() <= 1 {
        return Err(format!("oci:{rest}: names no layout directory"));
    }
    check_tag(tag)?;
    Ok(ImageRef::Layout { path, tag })
}

fn parse_registry(s: &str) -> Result<ImageRef<'_>, String> {
    let (name, digest) = match s.split_once('@') {
        Some((name, digest)) => {
            check_digest(digest)?;
            (name, Some(digest))
        }
        None => (s, None),
    };
    let Some((registry, path)) = name.split_once('/') else {
        return Err(format!(
            "{s:?} names no registry; expected oci:/path[:tag] or REGISTRY/REPO[:TAG|@sha256:DIGEST]"
        ));
    };
    check_registry(registry)?;
    let after_slash = path.rfind('/').map_or(0, |i| i + 1);
    let (repository, tag) = match path[after_slash..].rfind(':') {
        Some(i) if digest.is_none() => {
            let colon = after_slash + i;
            (&path[..colon], Some(&path[colon + 1..]))
        }
        Some(_) => return Err(format!("{s:?}: give a tag or a digest, not both")),
        None => (path, None),
    };
    for component in repository.split('/') {
        check_repo_component(component)?;
    }
    if let Some(tag) = tag {
        check_tag(tag)?;
    }
    Ok(ImageRef::Registry {
        registry,
        repository,
        tag,
        digest,
    })
}

fn check_tag(tag: &str) -> Result<(), String> {
    let ok = tag.len() <= 128
        && tag
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} must be 1 to 128 characters of A-Z a-z 0-9 _ . -, not starting with . or -"
        ))
    }
}

fn check_digest(digest: &str) -> Result<(), String> {
    let hex = digest.strip_prefix("sha256:").unwrap_or("");
    if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(format!(
            "digest {digest:?} must be sha256: and 64 lowercase hex digits"
        ))
    }
}

fn check_registry(registry: &str) -> Result<(), String> {
    let (host, port) = match registry.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    };
    let host_ok = !host.is_empty()
        && (host.contains('.') || host == "localhost")
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    if host_ok && port_ok {
        Ok(())
    } else {
        Err(format!(
            "registry {registry:?} must be a host name with a dot (or localhost) and an optional :PORT"
        ))
    }
}

fn check_repo_component(c: &str) -> Result<(), String> {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let ok = bytes.first().copied().is_some_and(alnum)
        && bytes.last().copied().is_some_and(alnum)
        && bytes
            .iter()
            .all(|&b| alnum(b) || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "repository component {c:?} must be lowercase letters and digits, separated by . _ -"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<ImageRef<'_>, &str>) {
        match (parse_image_ref(input), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{input}"),
            (Err(got), Err(want)) => assert!(got.contains(want), "{input}: {got}"),
            (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn layouts() {
        let layout = |path, tag| Ok(ImageRef::Layout { path, tag });
        check("oci:/srv/app", layout("/srv/app", "latest"));
        check("oci:/srv/app:v1.2", layout("/srv/app", "v1.2"));
        check("oci:/srv/a:b/app:v1", layout("/srv/a:b/app", "v1"));
        check("oci:srv/app", Err("must be absolute"));
        check("oci:/", Err("names no layout"));
        check("oci:/srv/app:", Err("tag \"\""));
        check("oci:/srv/app:-x", Err("tag"));
        check("oci:/srv/app\n", Err("control"));
    }

    #[test]
    fn registries() {
        let d = "sha256:".to_owned() + &"a".repeat(64);
        check(
            "127.0.0.1:5000/lib/busybox:1.36",
            Ok(ImageRef::Registry {
                registry: "127.0.0.1:5000",
                repository: "lib/busybox",
                tag: Some("1.36"),
                digest: None,
            }),
        );
        check(
            &format!("reg.example/app@{d}"),
            Ok(ImageRef::Registry {
                registry: "reg.example",
                repository: "app",
                tag: None,
                digest: Some(&d),
            }),
        );
        check("busybox", Err("names no registry"));
        check("docker/busybox", Err("registry \"docker\""));
        check("reg.example/App", Err("repository component"));
        check("reg.example/app@sha256:abc", Err("digest"));
        check(&format!("reg.example/app:v1@{d}"), Err("not both"));
        check(&"x".repeat(IMAGE_REF_MAX + 1), Err("the limit is 4096"));
    }
}
