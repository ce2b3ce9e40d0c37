//! What can go wrong with an image, in words that name the path, tag or digest at fault.

use std::path::PathBuf;

/// An image that cannot be resolved, verified, unpacked or read back.
///
/// Every message names what is wrong and where (the layout's path, the tag, the blob's digest),
/// so that an operator can act on it without reading code.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference is not of the form `oci:/abs/path[:tag]`.
    #[error("image {reference:?}: {reason}")]
    BadReference {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Nothing (or not a directory) at the layout's path.
    #[error("image layout {}: {reason}", path.display())]
    MissingLayout {
        /// The layout's directory.
        path: PathBuf,
        /// Why it cannot be used (does not exist, not a directory, unreadable).
        reason: String,
    },
    /// The directory is not an OCI image layout (no or bad `oci-layout`, or no `index.json`).
    #[error("{} is not an OCI image layout: {reason}", path.display())]
    NotALayout {
        /// The layout's directory.
        path: PathBuf,
        /// What is missing or wrong.
        reason: String,
    },
    /// No manifest in the layout's index carries the tag.
    #[error("image layout {}: no tag {tag:?}; known tags: {}", path.display(), known_tags(known))]
    UnknownTag {
        /// The layout's directory.
        path: PathBuf,
        /// The tag asked for.
        tag: String,
        /// The tags the index names.
        known: Vec<String>,
    },
    /// An image index has no manifest for this host's platform.
    #[error("image index {digest} in {}: no manifest for {platform}; it has {}", path.display(), known_tags(available))]
    NoPlatform {
        /// The layout's directory.
        path: PathBuf,
        /// The index's digest.
        digest: String,
        /// This host's platform (`linux/amd64`).
        platform: String,
        /// The platforms the index offers.
        available: Vec<String>,
    },
    /// A JSON document (index, manifest, config) that does not parse or breaks the spec.
    #[error("image layout {}: malformed {what}: {reason}", path.display())]
    Malformed {
        /// The layout's directory.
        path: PathBuf,
        /// Which document (`manifest sha256:…`, `index.json`).
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A blob named by a descriptor is not in the layout.
    #[error("image layout {}: blob {digest} is missing", path.display())]
    MissingBlob {
        /// The layout's directory.
        path: PathBuf,
        /// The blob's digest.
        digest: String,
    },
    /// A blob's content does not hash to its digest, or a layer's content to its `diff_id`.
    #[error("image layout {}: blob {digest} does not match its digest (its content hashes to {actual}); refusing it", path.display())]
    DigestMismatch {
        /// The layout's directory.
        path: PathBuf,
        /// The digest the descriptor (or the config's `diff_ids`) names.
        digest: String,
        /// What the content actually hashes to.
        actual: String,
    },
    /// A blob is longer or shorter than its descriptor says.
    #[error("image layout {}: blob {digest} is {actual} bytes, its descriptor says {expected}; refusing it", path.display())]
    SizeMismatch {
        /// The layout's directory.
        path: PathBuf,
        /// The blob's digest.
        digest: String,
        /// The size its descriptor gives.
        expected: u64,
        /// Its size on disk (or how far past `expected` reading got).
        actual: u64,
    },
    /// A descriptor's media type (or digest algorithm) this store does not handle.
    #[error("image layout {}: {digest} has unsupported {what} {media_type:?}", path.display())]
    Unsupported {
        /// The layout's directory.
        path: PathBuf,
        /// The descriptor's digest.
        digest: String,
        /// `media type` or `digest algorithm`.
        what: &'static str,
        /// The value found.
        media_type: String,
    },
    /// A layer entry that would reach outside the root, or that cannot be applied safely.
    #[error("layer {layer}: entry {entry:?} refused: {reason}")]
    UnsafeEntry {
        /// The layer's digest.
        layer: String,
        /// The entry's path as the archive gives it.
        entry: String,
        /// Why it is refused.
        reason: String,
    },
    /// A layer archive that cannot be read (truncated, corrupt compression, bad tar header).
    #[error("layer {layer}: unreadable archive: {reason}")]
    BadLayer {
        /// The layer's digest.
        layer: String,
        /// What went wrong.
        reason: String,
    },
    /// A user (or group) the image's `/etc/passwd` (or `/etc/group`) does not name.
    #[error("user {user:?}: {reason} (looked up in the image's {})", rootfs.display())]
    UnknownUser {
        /// The user spec as given.
        user: String,
        /// What was not found.
        reason: String,
        /// The image root it was looked up in.
        rootfs: PathBuf,
    },
    /// A digest that is not `sha256:` and 64 lowercase hex digits.
    #[error("{digest:?} is not an image digest (expected sha256: and 64 lowercase hex digits)")]
    BadDigest {
        /// The digest as given.
        digest: String,
    },
    /// A registry refused the pull for want of (valid) credentials.
    #[error("registry {registry}: unauthorized to pull {reference}: {detail}")]
    Unauthorized {
        /// `host[:port]`.
        registry: String,
        /// The reference being pulled.
        reference: String,
        /// Whether credentials were sent, and from where.
        detail: String,
    },
    /// A registry that cannot be reached, answers with an error, or serves content that is not
    /// what its digest says.
    #[error("registry {registry}: pulling {reference}: {reason}")]
    Registry {
        /// `host[:port]`.
        registry: String,
        /// The reference being pulled.
        reference: String,
        /// What went wrong, in words.
        reason: String,
    },
    /// The credentials file (`images.credentials_file`) cannot be used.
    #[error("credentials file {}: {reason}", path.display())]
    Credentials {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The image cannot be removed: a machine uses it.
    #[error("image {digest} is in use by a machine; destroy its machines first")]
    InUse {
        /// The image's manifest digest.
        digest: String,
    },
    /// An I/O failure of the store itself.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl ImageError {
    /// Whether the image (or the reference, or the user spec) is at fault, as opposed to the
    /// store's own I/O: what an API answers with 400 `invalid` rather than 500.
    pub fn is_bad_input(&self) -> bool {
        !matches!(
            self,
            Self::Io { .. } | Self::Registry { .. } | Self::Credentials { .. } | Self::InUse { .. }
        )
    }

    /// Whether the registry (or the way to it) is at fault: what an API answers with 502.
    pub fn is_registry(&self) -> bool {
        matches!(self, Self::Registry { .. } | Self::Unauthorized { .. })
    }
}

fn known_tags(known: &[String]) -> String {
    if known.is_empty() {
        "none".to_owned()
    } else {
        known.join(", ")
    }
}

/// Wraps an I/O error with what was being done.
pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let context = context.into();
    move |source| ImageError::Io { context, source }
}

/// Wraps a nix error with what was being done.
pub(crate) fn errno(context: impl Into<String>) -> impl FnOnce(nix::Error) -> ImageError {
    let context = context.into();
    move |e| ImageError::Io {
        context,
        source: std::io::Error::from(e),
    }
}
