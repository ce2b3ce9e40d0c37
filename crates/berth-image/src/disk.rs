//! The file system the image store lives on (the data directory's): its size and the space left,
//! for the gauges an alert compares the store's share against.

use crate::ImageError;
use crate::error::errno;
use crate::store::ImageStore;

/// The gauge of the data disk's size in bytes.
pub const DISK_SIZE_BYTES: &str = "berth_data_disk_size_bytes";
/// The gauge of bytes an unprivileged writer can still use on the data disk.
pub const DISK_AVAILABLE_BYTES: &str = "berth_data_disk_available_bytes";

impl ImageStore {
    /// (size, available) in bytes of the file system holding the store.
    pub fn disk(&self) -> Result<(u64, u64), ImageError> {
        let st = nix::sys::statvfs::statvfs(self.dir())
            .map_err(|e| errno(format!("statvfs {}", self.dir().display()))(e))?;
        #[allow(clippy::useless_conversion)] // the field types differ between targets
        let frag = u64::from(st.fragment_size());
        #[allow(clippy::useless_conversion)]
        let (blocks, avail) = (u64::from(st.blocks()), u64::from(st.blocks_available()));
        Ok((blocks.saturating_mul(frag), avail.saturating_mul(frag)))
    }
}
