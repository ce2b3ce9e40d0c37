//! berth's image store: OCI image layouts (`oci:/path[:tag]`) resolved, verified blob by blob
//! while streaming, and unpacked atomically into a content-addressed store of root filesystems
//! that every machine of an image shares read-only.
//!
//! - [`ImageStore`]: `open`, `import`, `get`, `list`, `remove` (see `store.rs` for the layout
//!   on disk and why a crash never leaves a half root that a machine could use).
//! - [`Resolved`]: an image's root and the defaults its config gives a machine.
//! - [`resolve_user`]: a user spec looked up in the image's own `/etc/passwd` and `/etc/group`.
//! - [`Puller`]: `pull` of `REGISTRY/REPO[:TAG|@sha256:DIGEST]` into the same store
//!   (`pull.rs`: verified while streamed, resumable, pulled once however many ask), its
//!   [`Progress`] readable while it runs.
//! - [`ImageStore::collect_garbage`], [`ImageStore::remove_unused`]: removal of unused images
//!   in small steps, refused while the caller's `in_use` says a machine uses one (`gc.rs`).
//! - [`ImageError`]: every failure, in words that name the path, tag or digest.

mod blob;
mod disk;
mod error;
mod gc;
mod layout;
mod names;
mod progress;
mod pull;
mod reference;
mod registry;
mod store;
mod unpack;
mod user;

pub use disk::{DISK_AVAILABLE_BYTES, DISK_SIZE_BYTES};
pub use error::ImageError;
pub use gc::{Collected, IMAGE_BYTES, IMAGES};
pub use layout::host_platform;
pub use progress::Progress;
pub use pull::{PULLS_TOTAL, Pull, Puller};
pub use reference::LayoutRef;
pub use registry::{RegistryConfig, RegistryRef};
pub use store::{ImageStore, Import, Resolved};
pub use user::{UserIds, resolve_user};
