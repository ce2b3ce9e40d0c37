//! Blobs of a layout, read through a reader that checks their size and digest as it goes.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::ImageError;
use crate::error::io;

/// The largest JSON document (index, manifest, config) read into memory.
pub const JSON_MAX: u64 = 4 << 20;

/// Splits `sha256:HEX` into its hex part, refusing other algorithms and malformed digests.
pub fn sha256_hex<'a>(layout: &Path, digest: &'a str) -> Result<&'a str, ImageError> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(ImageError::BadDigest {
            digest: digest.to_owned(),
        });
    };
    if algorithm != "sha256" {
        return Err(ImageError::Unsupported {
            path: layout.to_owned(),
            digest: digest.to_owned(),
            what: "digest algorithm",
            media_type: algorithm.to_owned(),
        });
    }
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ImageError::BadDigest {
            digest: digest.to_owned(),
        });
    }
    Ok(hex)
}

/// Opens the blob `digest` of the layout at `layout`, to be read through [`Verified`].
pub fn open(layout: &Path, digest: &str, size: u64) -> Result<Verified<File>, ImageError> {
    let hex = sha256_hex(layout, digest)?;
    let path: PathBuf = layout.join("blobs").join("sha256").join(hex);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ImageError::MissingBlob {
                path: layout.to_owned(),
                digest: digest.to_owned(),
            });
        }
        Err(e) => return Err(io(format!("opening {}", path.display()))(e)),
    };
    Ok(Verified::new(file, digest, size))
}

/// Reads a whole (small) JSON blob, verified, refusing one over [`JSON_MAX`] before reading it.
pub fn read_json(layout: &Path, digest: &str, size: u64) -> Result<Vec<u8>, ImageError> {
    if size > JSON_MAX {
        return Err(ImageError::Malformed {
            path: layout.to_owned(),
            what: format!("document {digest}"),
            reason: format!("{size} bytes; the limit for a manifest or config is {JSON_MAX}"),
        });
    }
    let mut reader = open(layout, digest, size)?;
    let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    reader
        .read_to_end(&mut buf)
        .map_err(|e| reader.explain(layout, e))?;
    reader.finish(layout)?;
    Ok(buf)
}

/// A reader that hashes what passes through it, refuses to read past the expected size, and at
/// the end ([`Verified::finish`]) checks the size and the digest.
#[derive(Debug)]
pub struct Verified<R> {
    inner: R,
    digest: String,
    expected: u64,
    read: u64,
    hasher: Sha256,
    overrun: bool,
}

impl<R: Read> Verified<R> {
    /// Wraps `inner`, expected to hold `expected` bytes hashing to `digest` (`sha256:…`).
    pub fn new(inner: R, digest: &str, expected: u64) -> Self {
        Self {
            inner,
            digest: digest.to_owned(),
            expected,
            read: 0,
            hasher: Sha256::new(),
            overrun: false,
        }
    }

    /// The reader underneath, to read past the checks (a blob verified already).
    pub fn inner_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Reads the rest to the end (hashing it), then checks size and digest.
    pub fn finish(mut self, layout: &Path) -> Result<(), ImageError> {
        io::copy(&mut self, &mut io::sink()).map_err(|e| self.explain(layout, e))?;
        if self.read != self.expected {
            return Err(self.size_mismatch(layout));
        }
        let actual = format!("sha256:{:x}", self.hasher.finalize_reset());
        if actual != self.digest {
            return Err(ImageError::DigestMismatch {
                path: layout.to_owned(),
                digest: self.digest.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// Turns a read error into the image error it stands for (a size overrun, or I/O).
    pub fn explain(&self, layout: &Path, e: io::Error) -> ImageError {
        if self.overrun {
            self.size_mismatch(layout)
        } else {
            io(format!(
                "reading blob {} of {}",
                self.digest,
                layout.display()
            ))(e)
        }
    }

    fn size_mismatch(&self, layout: &Path) -> ImageError {
        ImageError::SizeMismatch {
            path: layout.to_owned(),
            digest: self.digest.clone(),
            expected: self.expected,
            actual: self.read,
        }
    }
}

impl<R: Read> Read for Verified<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Read at most one byte past the expected end: enough to prove an overrun.
        let room = self.expected.saturating_sub(self.read).saturating_add(1);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.read += n as u64;
        self.hasher.update(&buf[..n]);
        if self.read > self.expected {
            self.overrun = true;
            return Err(io::Error::other("blob longer than its descriptor says"));
        }
        Ok(n)
    }
}

/// A reader that hashes what passes through it (a layer's uncompressed content, its `diff_id`).
#[derive(Debug)]
pub struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Hashing<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// Reads the rest to the end and returns the digest of everything read, `sha256:…`.
    pub fn finish(mut self) -> io::Result<String> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(format!("sha256:{:x}", self.hasher.finalize()))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}
