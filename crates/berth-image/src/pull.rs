//! Pulls from OCI distribution registries into the store.
//!
//! A pull resolves the reference to a manifest (following an index to this host's platform),
//! keeps every manifest, config and layer as a blob of the store's cache layout, then unpacks
//! with the same code as a layout import. Layers are downloaded a few at a time, each streamed
//! to `cache/partial/<hex>`, hashed and size-checked as it arrives, and renamed into
//! `cache/blobs/` only once whole and verified; the unpack does not hash them again, and its one
//! syncfs before the root's rename makes blobs and root durable together (a blob found in the
//! cache is hashed before use, so one that a crash left half-written is downloaded again). So a
//! pull cut off anywhere (registry gone, berthd SIGKILLed) leaves no root, and the next pull
//! resumes the partial blob (HTTP range) or starts it again.
//!
//! Concurrent pulls of one image (threads or processes) pull it once: the download and unpack
//! run under the flock of the manifest's digest, each blob's download under the flock of its
//! own digest, and whoever comes second finds the root (or the blob) there.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use oci_client::Client;
use oci_client::client::BlobResponse;
use oci_spec::image::{Descriptor, Digest, ImageIndex, ImageManifest, MediaType};
use sha2::{Digest as _, Sha256};

use crate::blob::{self, JSON_MAX, sha256_hex};
use crate::error::io;
use crate::layout;
use crate::progress::Progress;
use crate::registry::{self, Auth, RegistryConfig, RegistryRef, describe};
use crate::store::{Blobs, ImageStore, sync_dir};
use crate::{ImageError, Resolved};

/// The counter of pulls, labelled `result` (`ok`, `error`).
pub const PULLS_TOTAL: &str = "berth_image_pulls_total";

const INDEX_MEDIA_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const ACCEPT: [&str; 4] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    INDEX_MEDIA_TYPES[0],
    INDEX_MEDIA_TYPES[1],
];
const MAX_INDEX_DEPTH: usize = 4;
/// Layer downloads one pull runs at once.
const PARALLEL_BLOBS: usize = 4;

/// What a pull did.
#[derive(Debug, Clone)]
pub struct Pull {
    /// The image; `resolved.digest` is the manifest digest the reference named at pull time
    /// (what a machine records as `image_digest`).
    pub resolved: Resolved,
    /// Blob bytes this call downloaded (0 when the image, or every blob, was there already).
    pub downloaded_bytes: u64,
    /// Whether this call unpacked the image (false: it was already in the store).
    pub unpacked: bool,
    /// How long the call took.
    pub elapsed: Duration,
}

/// Pulls registry references into an [`ImageStore`].
#[derive(Clone)]
pub struct Puller {
    store: Arc<ImageStore>,
    config: RegistryConfig,
}

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puller")
            .field("store", &self.store.dir())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Puller {
    /// A puller into `store`, reaching registries as `config` says.
    pub fn new(store: Arc<ImageStore>, config: RegistryConfig) -> Self {
        Self { store, config }
    }

    /// The store it pulls into.
    pub fn store(&self) -> &Arc<ImageStore> {
        &self.store
    }

    /// Pulls `REGISTRY/REPO[:TAG|@sha256:DIGEST]` unless the image it names is in the store.
    pub async fn pull(&self, reference: &str) -> Result<Pull, ImageError> {
        self.pull_with(reference, Progress::new()).await
    }

    /// [`Puller::pull`], counting the blob bytes on the host into `progress` as it goes.
    pub async fn pull_with(
        &self,
        reference: &str,
        progress: Arc<Progress>,
    ) -> Result<Pull, ImageError> {
        let started = Instant::now();
        let result = self.pull_inner(reference, started, progress).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(PULLS_TOTAL, "result" => outcome).increment(1);
        if let Err(e) = crate::gc::record_usage(&self.store) {
            tracing::warn!(error = %e, "measuring the image store");
        }
        result
    }

    async fn pull_inner(
        &self,
        reference: &str,
        started: Instant,
        progress: Arc<Progress>,
    ) -> Result<Pull, ImageError> {
        let r = RegistryRef::parse(reference)?;
        let auth = registry::auth_for(&self.config, &r.registry)?;
        // A client of its own: oci-client keeps the first credentials it was given for a
        // registry for good, so a shared one would never see credentials rotated in the file.
        let client = Arc::new(registry::client(&self.config));
        let manifest = self.fetch_manifest(&client, &r, &auth).await?;
        let (store, client, handle) = (
            self.store.clone(),
            client,
            tokio::runtime::Handle::current(),
        );
        // Flocks, file I/O and the unpack block: they run on a blocking thread, which drives
        // the network streams through the runtime's handle.
        let worker = tokio::task::spawn_blocking({
            let (r, auth) = (r.clone(), auth.clone());
            move || {
                Fetch {
                    store: &store,
                    client: &client,
                    handle: &handle,
                    r: &r,
                    auth: &auth,
                    progress: &progress,
                }
                .image(&manifest)
            }
        });
        let (resolved, downloaded_bytes, unpacked) = worker
            .await
            .map_err(|e| r.error(format!("the pull's worker failed: {e}")))??;
        Ok(Pull {
            resolved,
            downloaded_bytes,
            unpacked,
            elapsed: started.elapsed(),
        })
    }

    /// Resolves the reference to this platform's manifest, every manifest and index on the way
    /// kept (verified) as a blob of the cache; returns the manifest's descriptor.
    async fn fetch_manifest(
        &self,
        client: &Client,
        r: &RegistryRef,
        auth: &Auth,
    ) -> Result<Descriptor, ImageError> {
        auth.authorize(client, r).await?;
        let cache = self.store.cache_dir();
        let mut reference = r.to_client();
        for _ in 0..=MAX_INDEX_DEPTH {
            let (bytes, digest) = client
                .pull_manifest_raw(&reference, &auth.auth, &ACCEPT)
                .await
                .map_err(|e| auth.explain(r, &e))?;
            if bytes.len() as u64 > JSON_MAX {
                return Err(r.error(format!(
                    "manifest {digest} is {} bytes; the limit is {JSON_MAX}",
                    bytes.len()
                )));
            }
            if let Some(want) = &r.digest
                && reference.digest() == Some(want.as_str())
                && &digest != want
            {
                return Err(r.error(format!("served manifest {digest} for {want}")));
            }
            let actual = format!("sha256:{:x}", Sha256::digest(&bytes));
            if actual != digest {
                return Err(r.error(format!(
                    "manifest {digest} does not match its digest (its content hashes to {actual}); refusing it"
                )));
            }
            write_small_blob(&cache, &digest, &bytes)?;
            let media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("mediaType")?.as_str().map(str::to_owned))
                .unwrap_or_else(|| ACCEPT[0].to_owned());
            let descriptor = Descriptor::new(
                MediaType::from(media_type.as_str()),
                bytes.len() as u64,
                Digest::try_from(digest.as_str()).map_err(|_| ImageError::BadDigest {
                    digest: digest.clone(),
                })?,
            );
            if !INDEX_MEDIA_TYPES.contains(&media_type.as_str()) {
                return Ok(descriptor);
            }
            let index: ImageIndex = serde_json::from_slice(&bytes)
                .map_err(|e| r.error(format!("malformed index {digest}: {e}")))?;
            let child = layout::for_this_platform(&cache, &digest, &index)?;
            reference = r.at_digest(child.digest().as_ref());
        }
        Err(r.error(format!(
            "image indexes nested deeper than {MAX_INDEX_DEPTH}"
        )))
    }
}

/// One pull's blocking phase: blobs downloaded, the image unpacked.
struct Fetch<'a> {
    store: &'a ImageStore,
    client: &'a Client,
    handle: &'a tokio::runtime::Handle,
    r: &'a RegistryRef,
    auth: &'a Auth,
    progress: &'a Progress,
}

impl Fetch<'_> {
    fn image(&self, manifest_desc: &Descriptor) -> Result<(Resolved, u64, bool), ImageError> {
        let cache = self.store.cache_dir();
        let digest = manifest_desc.digest().to_string();
        let hex = sha256_hex(&cache, &digest)?.to_owned();
        if let Some(resolved) = self.store.read_root(&hex)? {
            self.store.touch(&hex)?;
            return Ok((resolved, 0, false));
        }
        let _lock = self.store.lock(&hex)?;
        if let Some(resolved) = self.store.read_root(&hex)? {
            self.store.touch(&hex)?; // Another pull finished it while we waited.
            return Ok((resolved, 0, false));
        }
        let manifest: ImageManifest =
            serde_json::from_slice(&blob::read_json(&cache, &digest, manifest_desc.size())?)
                .map_err(|e| self.r.error(format!("malformed manifest {digest}: {e}")))?;
        let total =
            manifest.config().size() + manifest.layers().iter().map(Descriptor::size).sum::<u64>();
        self.progress.set_total(total);
        let mut downloaded = self.blob(manifest.config())?;
        let image = layout::load(&cache, manifest_desc)?; // Refuses unknown layer types first.
        downloaded += self.layers(image.manifest.layers())?;
        // Every blob was verified by this pull (downloaded, or found and hashed): the unpack
        // does not hash them again, and its one syncfs makes them durable with the root.
        let (resolved, unpacked) = self.store.unpack_locked(&image, &hex, Blobs::Verified)?;
        Ok((resolved, downloaded, unpacked))
    }

    /// Makes sure the cache holds every layer, [`PARALLEL_BLOBS`] downloads at a time; returns
    /// the bytes downloaded, or the error of the first layer (in the manifest's order) that
    /// failed. Once one fails, no further download starts.
    fn layers(&self, layers: &[Descriptor]) -> Result<u64, ImageError> {
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let work = || {
            let mut out = Vec::new();
            while !failed.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(layer) = layers.get(i) else { break };
                let r = self.blob(layer);
                failed.fetch_or(r.is_err(), Ordering::Relaxed);
                out.push((i, r));
            }
            out
        };
        let mut results: Vec<(usize, Result<u64, ImageError>)> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..PARALLEL_BLOBS.min(layers.len()))
                .map(|_| s.spawn(work))
                .collect();
            let mut all = Vec::new();
            for w in workers {
                match w.join() {
                    Ok(done) => all.extend(done),
                    Err(_) => all.push((0, Err(self.r.error("a download thread panicked")))),
                }
            }
            all
        });
        results.sort_by_key(|(i, _)| *i);
        results.into_iter().map(|(_, r)| r).sum()
    }

    /// Makes sure the cache holds the blob, verified, downloading (or resuming) it under its
    /// flock; returns the bytes downloaded.
    fn blob(&self, d: &Descriptor) -> Result<u64, ImageError> {
        let cache = self.store.cache_dir();
        let digest = d.digest().to_string();
        let hex = sha256_hex(&cache, &digest)?.to_owned();
        let done = cache.join("blobs/sha256").join(&hex);
        if reuse(&cache, d, &done, false)? {
            self.progress.add(d.size());
            return Ok(0);
        }
        let _lock = self.store.lock(&hex)?;
        if reuse(&cache, d, &done, true)? {
            self.progress.add(d.size());
            return Ok(0); // Another pull downloaded it while we waited.
        }
        let partial = cache.join("partial").join(&hex);
        let n = self.download(&digest, d.size(), &partial)?;
        // Not synced here: a blob is only used by the unpack that follows (whose syncfs makes
        // it durable), or by a later pull, which verifies it first (so one a crash left
        // half-written is downloaded again).
        fs::rename(&partial, &done).map_err(io(format!("publishing {}", done.display())))?;
        Ok(n)
    }

    /// Downloads the blob into `partial`, resuming what is there; on return it is whole,
    /// synced and verified. A blob that fails verification is deleted, so the next pull
    /// starts it again; one cut off midway is kept, so the next pull resumes it.
    fn download(&self, digest: &str, size: u64, partial: &Path) -> Result<u64, ImageError> {
        let ctx = || format!("writing {}", partial.display());
        let mut file = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(partial)
            .map_err(io(ctx()))?;
        let mut have = file.metadata().map_err(io(ctx()))?.len();
        let mut hasher = Sha256::new();
        if have > size {
            have = 0;
        } else if have > 0 {
            hash_prefix(&mut file, &mut hasher).map_err(io(ctx()))?;
        }
        let reference = self.r.at_digest(digest);
        let lost = |e: &dyn std::error::Error| self.r.error(format!("blob {digest}: {}", e));
        let mut stream = if have > 0 {
            match self.handle.block_on(
                self.client
                    .pull_blob_stream_partial(&reference, digest, have, None),
            ) {
                Ok(BlobResponse::Partial(s)) => s,
                Ok(BlobResponse::Full(s)) => {
                    (have, hasher) = (0, Sha256::new()); // The registry ignored the range.
                    s
                }
                Err(e) => return Err(self.auth.explain(self.r, &e)),
            }
        } else {
            self.handle
                .block_on(self.client.pull_blob_stream(&reference, digest))
                .map_err(|e| self.auth.explain(self.r, &e))?
        };
        file.set_len(have).map_err(io(ctx()))?;
        file.seek(SeekFrom::Start(have)).map_err(io(ctx()))?;
        let resumed_at = have;
        self.progress.add(have);
        let mut out = std::io::BufWriter::with_capacity(1 << 20, &mut file);
        let mut cut: Option<String> = None;
        while let Some(chunk) = self.handle.block_on(stream.stream.next()) {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    cut = Some(describe(&e));
                    break;
                }
            };
            if have + chunk.len() as u64 > size {
                drop(out);
                let _ = fs::remove_file(partial);
                return Err(self.r.error(format!(
                    "blob {digest} is longer than its descriptor's {size} bytes; refusing it"
                )));
            }
            hasher.update(&chunk);
            out.write_all(&chunk).map_err(io(ctx()))?;
            have += chunk.len() as u64;
            self.progress.add(chunk.len() as u64);
        }
        out.flush().map_err(io(ctx()))?;
        drop(out);
        if have < size {
            file.sync_all().map_err(io(ctx()))?; // Kept for the next pull to resume.
            return Err(lost(&std::io::Error::other(format!(
                "the download stopped after {have} of {size} bytes ({}); the next pull resumes it",
                cut.unwrap_or_else(|| "the registry closed the stream".to_owned())
            ))));
        }
        let actual = format!("sha256:{:x}", hasher.finalize());
        if actual != digest {
            let _ = fs::remove_file(partial);
            return Err(self.r.error(format!(
                "blob {digest} does not match its digest (its content hashes to {actual}); refusing it"
            )));
        }
        Ok(have - resumed_at)
    }
}

/// Whether a blob is in the cache, whole: its mtime is renewed (so that a collection running
/// beside this pull does not take it for an unused one) and its content hashed. One that fails
/// (half-written when the host crashed before a sync) is removed when `locked` (the caller holds
/// its flock), so that it is downloaded again.
fn reuse(cache: &Path, d: &Descriptor, path: &Path, locked: bool) -> Result<bool, ImageError> {
    if !touch_blob(path)? {
        return Ok(false);
    }
    let digest = d.digest().to_string();
    match blob::open(cache, &digest, d.size())?.finish(cache) {
        Ok(()) => Ok(true),
        Err(ImageError::DigestMismatch { .. } | ImageError::SizeMismatch { .. }) => {
            if locked {
                tracing::warn!(blob = %digest, "a cached blob fails its digest; downloading it again");
                fs::remove_file(path).map_err(io(format!("removing {}", path.display())))?;
            }
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Renews a cached blob's mtime; false when it is not there.
fn touch_blob(path: &Path) -> Result<bool, ImageError> {
    match File::options().write(true).open(path) {
        Ok(f) => {
            f.set_modified(std::time::SystemTime::now())
                .map_err(io(format!("touching {}", path.display())))?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io(format!("opening {}", path.display()))(e)),
    }
}

fn hash_prefix(file: &mut File, hasher: &mut Sha256) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
}

/// Writes a small verified blob (a manifest, an index) into the cache, unless it is there.
fn write_small_blob(cache: &Path, digest: &str, bytes: &[u8]) -> Result<(), ImageError> {
    let hex = sha256_hex(cache, digest)?;
    let done = cache.join("blobs/sha256").join(hex);
    if touch_blob(&done)? {
        return Ok(());
    }
    let tmp = cache.join("partial").join(format!(
        "{hex}.{}.{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let ctx = || format!("writing {}", tmp.display());
    let mut f = File::create(&tmp).map_err(io(ctx()))?;
    f.write_all(bytes).map_err(io(ctx()))?;
    f.sync_all().map_err(io(ctx()))?;
    fs::rename(&tmp, &done).map_err(io(format!("publishing {}", done.display())))?;
    sync_dir(&cache.join("blobs/sha256"))
}
