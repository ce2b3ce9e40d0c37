//! `GET /v1/images`, `POST /v1/images/pull` and `DELETE /v1/images/{digest}`: the host's image
//! store.

use berth_types::Timestamp;
use serde::{Deserialize, Serialize};

/// One image in the host's store (an element of `GET /v1/images`, the answer of a pull).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The manifest digest, `sha256:…`: the image's identity (what machines record as
    /// `image_digest`).
    pub digest: String,
    /// The references it was pulled or imported by (`REGISTRY/REPO:TAG`, `oci:/path:tag`).
    pub references: Vec<String>,
    /// Disk space its unpacked root occupies, in bytes.
    pub size_bytes: u64,
    /// When it was unpacked on this host, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
    /// When it was last pulled, imported or used by a create, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<Timestamp>,
    /// The machines (not destroyed) that use it: while any does, it cannot be removed.
    pub in_use_by: Vec<String>,
}

/// `POST /v1/images/pull`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullImage {
    /// `REGISTRY/REPO[:TAG|@sha256:DIGEST]` (or `oci:/path[:tag]`, imported).
    pub image: String,
}

/// The answer of `POST /v1/images/pull`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullReport {
    /// The image, as `GET /v1/images` shows it.
    pub image: Image,
    /// How long the pull took, in milliseconds.
    pub elapsed_ms: u64,
}

/// The media type a client sends in `Accept` to have `POST /v1/images/pull` stream its
/// progress, one [`PullEvent`] per line.
pub const PULL_STREAM_MEDIA_TYPE: &str = "application/x-ndjson";

/// One line of `POST /v1/images/pull` answered as `application/x-ndjson` (asked for with
/// `Accept: application/x-ndjson`): `progress` lines while the pull runs, then exactly one
/// `done` or `error` line, the last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PullEvent {
    /// How far the pull has got: bytes of the image's blobs (config and layers) on the host
    /// (blobs already there count), out of their total.
    Progress {
        /// Bytes on the host so far.
        downloaded_bytes: u64,
        /// The blobs' total size.
        total_bytes: u64,
    },
    /// The pull is done: what the plain JSON answer would have been.
    Done(PullReport),
    /// The pull failed: the status and error body the plain answer would have carried.
    Error {
        /// The HTTP status the plain answer would have had.
        status: u16,
        /// A sentence for a person.
        error: String,
        /// The stable code (as in [`crate::ErrorBody`]).
        code: String,
    },
}
