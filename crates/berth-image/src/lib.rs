//! berth's image store: OCI image layouts (`oci:/path[:tag]`) resolved, verified blob by blob
//! while streaming, and unpacked atomically into a content-addressed store of root filesystems
//! that every machine of an image shares read-only.
//!
//! - [`ImageStore`]: `open`, `import`, `get`, `list`, `remove` (see `store.rs` for the layout
//!   on disk and why a crash never leaves a half root that a machine could use).
//! - [`Resolved`]: an image's root and the defaults its config gives a machine.
//! - [`resolve_user`]: a user spec looked up in the image's own `/etc/passwd` and `/etc/group`.
//! - [`ImageError`]: every failure, in words that name the path, tag or digest.

mod blob;
mod error;
mod layout;
mod reference;
mod store;
mod unpack;
mod user;

pub use error::ImageError;
pub use layout::host_platform;
pub use reference::LayoutRef;
pub use store::{ImageStore, Import, Resolved};
pub use user::{UserIds, resolve_user};
