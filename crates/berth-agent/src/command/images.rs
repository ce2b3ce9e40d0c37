//! Image commands: list the host's images, pull one, remove one no machine uses.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use berth_api_types::{Image, PullReport};
use berth_types::{Timestamp, image_ref::parse_image_ref};

use crate::Agent;
use crate::error::{CommandError, CommandResult, ErrorKind};
use crate::images::{Images, Progress};

impl Agent {
    /// Every image in the host's store, with the machines that use it.
    pub async fn images(&self) -> CommandResult<Vec<Image>> {
        let (images, store) = (self.images.clone(), self.store().clone());
        blocking(move || {
            let users = Images::users(&store)
                .ok_or_else(|| CommandError::internal("cannot read which machines use images"))?;
            let list = images.store().list().map_err(|e| image_error(&e))?;
            list.into_iter()
                .map(|r| describe(&images, &users, &r.digest, r.unpacked_bytes))
                .collect()
        })
        .await
    }

    /// Pulls (or imports) an image; answers once it is in the store.
    pub async fn pull_image(&self, reference: String) -> CommandResult<PullReport> {
        self.pull_image_with(reference, Progress::new()).await
    }

    /// [`Agent::pull_image`], the pull's bytes counted into `progress` as they arrive.
    pub async fn pull_image_with(
        &self,
        reference: String,
        progress: Arc<Progress>,
    ) -> CommandResult<PullReport> {
        parse_image_ref(&reference).map_err(|e| CommandError::invalid(format!("image: {e}")))?;
        let me = self.clone();
        self.detached(async move {
            let started = Instant::now();
            let resolved = me
                .images
                .ready_with(&reference, false, progress)
                .await
                .map_err(|e| image_error(&e))?
                .resolved;
            let elapsed_ms = started.elapsed().as_millis() as u64;
            let image = me
                .images()
                .await?
                .into_iter()
                .find(|i| i.digest == resolved.digest)
                .ok_or_else(|| {
                    CommandError::conflict(format!(
                        "image {}: removed during the pull",
                        resolved.digest
                    ))
                })?;
            Ok(PullReport { image, elapsed_ms })
        })
        .await
    }

    /// Removes an image: `not_found` if the store does not have it, `conflict` while a machine
    /// that is not destroyed uses it (or a create is about to).
    pub async fn remove_image(&self, digest: String) -> CommandResult<()> {
        let (images, store) = (self.images.clone(), self.store().clone());
        blocking(move || {
            if !digest.starts_with("sha256:") {
                return Err(CommandError::invalid(format!(
                    "digest: {digest:?} is not sha256:<64 hex digits>"
                )));
            }
            let users = Images::users(&store)
                .ok_or_else(|| CommandError::internal("cannot read which machines use images"))?;
            let removed = images
                .store()
                .remove_unused(&digest, &|d| images.in_use(&users, d))
                .map_err(|e| match users.get(&digest) {
                    Some(m) if matches!(e, berth_image::ImageError::InUse { .. }) => {
                        CommandError::conflict(format!(
                            "image {digest} is used by machine(s) {}; destroy them first",
                            m.join(", ")
                        ))
                    }
                    _ => image_error(&e),
                })?;
            images.record_usage();
            if removed {
                Ok(())
            } else {
                Err(CommandError::not_found(format!("image {digest} not found")))
            }
        })
        .await
    }
}

fn describe(
    images: &Images,
    users: &HashMap<String, Vec<String>>,
    digest: &str,
    size_bytes: u64,
) -> CommandResult<Image> {
    let store = images.store();
    let err = |e: berth_image::ImageError| image_error(&e);
    Ok(Image {
        digest: digest.to_owned(),
        references: store.references(digest).map_err(err)?,
        size_bytes,
        created_at: store
            .created(digest)
            .map_err(err)?
            .map(Timestamp::from_system_time),
        last_used_at: store
            .last_used(digest)
            .map_err(err)?
            .map(Timestamp::from_system_time),
        in_use_by: users.get(digest).cloned().unwrap_or_default(),
    })
}

/// An image store error as a command error: bad input 400, in use 409, registry 502, else 500.
fn image_error(e: &berth_image::ImageError) -> CommandError {
    let kind = if matches!(e, berth_image::ImageError::InUse { .. }) {
        ErrorKind::Conflict
    } else if e.is_bad_input() {
        ErrorKind::Invalid
    } else if e.is_registry() {
        ErrorKind::BadGateway
    } else {
        ErrorKind::Internal
    };
    CommandError::new(kind, format!("image: {e}"))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> CommandResult<T> + Send + 'static,
) -> CommandResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CommandError::internal(format!("image task failed: {e}")))?
}
