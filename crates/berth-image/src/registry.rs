//! The way to a registry: a parsed `REGISTRY/REPO[:TAG|@sha256:DIGEST]`, the credentials for
//! it, and an OCI distribution client speaking HTTPS (system roots) or, for the registries
//! named in `images.insecure_registries`, plain HTTP.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use berth_types::image_ref::{DEFAULT_TAG, ImageRef, parse_image_ref};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use crate::ImageError;

/// How to reach registries: which speak plain HTTP, and where credentials are.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// `HOST:PORT` entries pulled over plain HTTP (`images.insecure_registries`).
    pub insecure_registries: Vec<String>,
    /// A root-only docker-style `config.json` (`{"auths": {"HOST[:PORT]": {"auth": base64
    /// of user:password} or {"username", "password"}}}`), `images.credentials_file`; read at
    /// every pull, so rotated credentials apply without a restart.
    pub credentials_file: Option<PathBuf>,
}

/// A registry reference, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRef {
    /// `host[:port]`.
    pub registry: String,
    /// The repository.
    pub repository: String,
    /// The tag (`latest` when neither tag nor digest is given).
    pub tag: Option<String>,
    /// `sha256:…`, when given.
    pub digest: Option<String>,
    /// The reference as given.
    pub given: String,
}

impl RegistryRef {
    /// Parses `REGISTRY/REPO[:TAG|@sha256:DIGEST]` (the syntax `berth_types::image_ref` checks).
    pub fn parse(reference: &str) -> Result<Self, ImageError> {
        let bad = |reason: String| ImageError::BadReference {
            reference: reference.chars().take(256).collect(),
            reason,
        };
        match parse_image_ref(reference).map_err(bad)? {
            ImageRef::Registry {
                registry,
                repository,
                tag,
                digest,
            } => Ok(Self {
                registry: registry.to_owned(),
                repository: repository.to_owned(),
                tag: match (tag, digest) {
                    (None, None) => Some(DEFAULT_TAG.to_owned()),
                    (t, _) => t.map(str::to_owned),
                },
                digest: digest.map(str::to_owned),
                given: reference.to_owned(),
            }),
            ImageRef::Layout { .. } => Err(bad(
                "a local OCI image layout is imported, not pulled".to_owned()
            )),
        }
    }

    /// The client's reference: by digest when one is given, else by tag.
    pub(crate) fn to_client(&self) -> Reference {
        match (&self.digest, &self.tag) {
            (Some(d), _) => {
                Reference::with_digest(self.registry.clone(), self.repository.clone(), d.clone())
            }
            (None, t) => Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                t.clone().unwrap_or_else(|| DEFAULT_TAG.to_owned()),
            ),
        }
    }

    /// The same repository, naming `digest`.
    pub(crate) fn at_digest(&self, digest: &str) -> Reference {
        Reference::with_digest(
            self.registry.clone(),
            self.repository.clone(),
            digest.to_owned(),
        )
    }

    /// A registry error about this reference.
    pub(crate) fn error(&self, reason: impl Into<String>) -> ImageError {
        ImageError::Registry {
            registry: self.registry.clone(),
            reference: self.given.clone(),
            reason: reason.into(),
        }
    }
}

/// The credentials for one registry, and where they came from (for error messages).
#[derive(Debug, Clone)]
pub(crate) struct Auth {
    pub auth: RegistryAuth,
    pub source: Option<PathBuf>,
}

impl Auth {
    /// Authorizes the pull up front. oci-client otherwise fetches a bearer token lazily, and
    /// when the token issuer refuses one (or cannot be reached) it drops that answer and goes
    /// on without a token: the registry's bare 401 would be all that is left to tell. Asked
    /// here, the issuer's answer comes back, in its words. The token is cached in `client`
    /// for the pull's requests (for a registry with basic auth, the credentials are).
    pub(crate) async fn authorize(
        &self,
        client: &Client,
        r: &RegistryRef,
    ) -> Result<(), ImageError> {
        client
            .auth(&r.to_client(), &self.auth, RegistryOperation::Pull)
            .await
            .map(|_| ())
            .map_err(|e| self.explain(r, &e))
    }

    /// Maps a client error to the image error that says what happened, in words.
    pub(crate) fn explain(&self, r: &RegistryRef, e: &OciDistributionError) -> ImageError {
        use oci_client::errors::OciErrorCode;
        let denied = match e {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => true,
            OciDistributionError::RegistryError { envelope, .. } => envelope
                .errors
                .iter()
                .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)),
            OciDistributionError::ServerError { code, .. } => matches!(code, 401 | 403),
            _ => false,
        };
        if !denied {
            return r.error(describe(e));
        }
        let answer = registry_answer(e);
        let detail = match (&self.auth, &self.source) {
            (RegistryAuth::Anonymous, Some(f)) => format!(
                "it requires credentials and {} has none for {}",
                f.display(),
                r.registry
            ),
            (RegistryAuth::Anonymous, None) => {
                "it requires credentials and none are configured (images.credentials_file)"
                    .to_owned()
            }
            (_, source) => format!(
                "it refused the credentials for {} from {}",
                r.registry,
                source.as_deref().unwrap_or(Path::new("?")).display()
            ),
        };
        ImageError::Unauthorized {
            registry: r.registry.clone(),
            reference: r.given.clone(),
            detail: format!("{detail} ({answer})"),
        }
    }
}

/// What a registry (or its token issuer) said when it refused a request, in its own words: the
/// HTTP status and the error codes and messages of its body, where the client kept them.
fn registry_answer(e: &OciDistributionError) -> String {
    let answer = match e {
        OciDistributionError::AuthenticationFailure(body) => {
            let body: String = body.chars().take(300).collect();
            return format!("its token issuer answered {}", body.trim());
        }
        OciDistributionError::UnauthorizedError { .. } => "401 Unauthorized".to_owned(),
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .map(|e| {
                let status = match e.code {
                    oci_client::errors::OciErrorCode::Denied => "403 Forbidden: ",
                    oci_client::errors::OciErrorCode::Unauthorized => "401 Unauthorized: ",
                    _ => "",
                };
                format!("{status}{:?}: {}", e.code, e.message)
            })
            .collect::<Vec<_>>()
            .join("; "),
        OciDistributionError::ServerError { code, message, .. } => {
            let message: String = message.chars().take(200).collect();
            format!("{code}: {}", message.trim())
        }
        other => describe(other),
    };
    format!("the registry answered {answer}")
}

/// A client error in words, with its causes (reqwest's top-level message hides them).
pub(crate) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The credentials configured for `registry` (anonymous when none).
pub(crate) fn auth_for(config: &RegistryConfig, registry: &str) -> Result<Auth, ImageError> {
    let Some(path) = &config.credentials_file else {
        return Ok(Auth {
            auth: RegistryAuth::Anonymous,
            source: None,
        });
    };
    let auths = read_credentials(path)?;
    let auth = match auths.get(registry) {
        Some((user, password)) => RegistryAuth::Basic(user.clone(), password.clone()),
        None => RegistryAuth::Anonymous,
    };
    Ok(Auth {
        auth,
        source: Some(path.clone()),
    })
}

/// Reads a docker-style credentials file, refusing one that others than its owner (root or
/// berthd's user) can read or write.
fn read_credentials(path: &Path) -> Result<HashMap<String, (String, String)>, ImageError> {
    let bad = |reason: String| ImageError::Credentials {
        path: path.to_owned(),
        reason,
    };
    let meta = fs::metadata(path).map_err(|e| bad(format!("cannot read it ({e})")))?;
    let euid = nix::unistd::geteuid().as_raw();
    if meta.mode() & 0o077 != 0 {
        return Err(bad(format!(
            "mode {:o} lets others read it; it must be private to its owner (chmod 600)",
            meta.mode() & 0o7777
        )));
    }
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(bad(format!(
            "owned by uid {}; it must be owned by root or by berthd's user",
            meta.uid()
        )));
    }
    if meta.len() > 1 << 20 {
        return Err(bad("larger than 1 MiB".to_owned()));
    }
    let bytes = fs::read(path).map_err(|e| bad(format!("cannot read it ({e})")))?;
    let doc: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("not JSON ({e})")))?;
    let Some(auths) = doc.get("auths").and_then(|a| a.as_object()) else {
        return Err(bad(r#"no "auths" object"#.to_owned()));
    };
    let mut out = HashMap::new();
    for (registry, entry) in auths {
        let field = |k: &str| entry.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let pair = match (field("username"), field("password"), field("auth")) {
            (Some(u), Some(p), _) => (u, p),
            (_, _, Some(auth)) => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| {
                        bad(format!("{registry}: auth is not base64 of user:password"))
                    })?;
                let (u, p) = decoded
                    .split_once(':')
                    .ok_or_else(|| bad(format!("{registry}: auth is not user:password")))?;
                (u.to_owned(), p.to_owned())
            }
            _ => {
                return Err(bad(format!(
                    "{registry}: give auth, or username and password"
                )));
            }
        };
        out.insert(registry.clone(), pair);
    }
    Ok(out)
}

/// An OCI distribution client: HTTPS with the system's roots, plain HTTP for the insecure
/// registries, the host's platform picked by berth itself (not the client) from an index.
pub(crate) fn client(config: &RegistryConfig) -> Client {
    // reqwest is built without a default crypto provider; ring is installed once per process
    // (an error only means one is installed already).
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::HttpsExcept(
            config.insecure_registries.clone(),
        ),
        platform_resolver: None,
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn parses_tag_digest_and_default() {
        let r = RegistryRef::parse("127.0.0.1:5000/lib/busybox:v1").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "lib/busybox", Some("v1"))
        );
        let r = RegistryRef::parse("reg.example/app").unwrap();
        assert_eq!(r.tag.as_deref(), Some("latest"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = RegistryRef::parse(&format!("reg.example/app@{d}")).unwrap();
        assert_eq!((r.tag, r.digest.as_deref()), (None, Some(d.as_str())));
        assert!(RegistryRef::parse("oci:/x").is_err());
    }

    #[test]
    fn credentials_file_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        fs::write(
            &path,
            format!(r#"{{"auths": {{"r.example:5000": {{"auth": "{auth}"}}}}}}"#),
        )
        .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let config = RegistryConfig {
            credentials_file: Some(path.clone()),
            ..Default::default()
        };
        let e = auth_for(&config, "r.example:5000").unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let a = auth_for(&config, "r.example:5000").unwrap();
        assert!(
            matches!(a.auth, RegistryAuth::Basic(ref u, ref p) if u == "alice" && p == "s3cret")
        );
        let a = auth_for(&config, "other:5000").unwrap();
        assert!(matches!(a.auth, RegistryAuth::Anonymous));
    }
}
