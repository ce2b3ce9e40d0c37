//! Volume commands: list the host's named volumes, create one, remove one no machine mounts.
//!
//! Whether a machine mounts a volume is decided from the records (machines not destroyed whose
//! `mounts` name it), never from the running containers alone: a stopped machine that mounts a
//! volume would mount it again at its next start.

use std::collections::HashMap;

use berth_api_types::Volume;
use berth_driver::volumes::{VolumeError, VolumeInfo, Volumes};
use berth_types::{State, Timestamp};

use crate::Agent;
use crate::error::{CommandError, CommandResult, ErrorKind};

fn volume_error(e: VolumeError) -> CommandError {
    let kind = match &e {
        VolumeError::BadName(_) => ErrorKind::Invalid,
        VolumeError::NotFound(_) => ErrorKind::NotFound,
        VolumeError::Exists(_) => ErrorKind::Conflict,
        VolumeError::Io { .. } => ErrorKind::Internal,
    };
    CommandError::new(kind, e.to_string())
}

fn wire(v: VolumeInfo, users: &HashMap<String, Vec<String>>) -> Volume {
    let VolumeInfo {
        name,
        path,
        uid,
        gid,
        created,
    } = v;
    Volume {
        in_use_by: users.get(&name).cloned().unwrap_or_default(),
        name,
        path: path.display().to_string(),
        uid,
        gid,
        created_at: created.map(Timestamp::from_system_time),
    }
}

impl Agent {
    fn volumes_store(&self) -> Volumes {
        Volumes::new(self.driver().volumes_dir().to_owned())
    }

    /// Machines not destroyed, by the volumes their `mounts` name.
    fn volume_users(&self) -> CommandResult<HashMap<String, Vec<String>>> {
        let mut users: HashMap<String, Vec<String>> = HashMap::new();
        for m in self.store().machines()? {
            if m.state == State::Destroyed {
                continue;
            }
            for mount in &m.config.mounts {
                let list = users.entry(mount.volume.clone()).or_default();
                if !list.contains(&m.id.to_string()) {
                    list.push(m.id.to_string());
                }
            }
        }
        Ok(users)
    }

    /// Every named volume, with the machines that mount it.
    pub async fn volumes(&self) -> CommandResult<Vec<Volume>> {
        let me = self.clone();
        blocking(move || {
            let users = me.volume_users()?;
            let list = me.volumes_store().list().map_err(volume_error)?;
            Ok(list.into_iter().map(|v| wire(v, &users)).collect())
        })
        .await
    }

    /// Creates an empty volume: `invalid` for a bad name, `conflict` if it exists.
    pub async fn create_volume(&self, name: String) -> CommandResult<Volume> {
        let me = self.clone();
        blocking(move || {
            let v = me.volumes_store().create(&name).map_err(volume_error)?;
            tracing::info!(volume = %name, "volume created");
            Ok(wire(v, &me.volume_users()?))
        })
        .await
    }

    /// Removes a volume and its content: `not_found` if there is none, `conflict` while a
    /// machine that is not destroyed mounts it.
    pub async fn remove_volume(&self, name: String) -> CommandResult<()> {
        let me = self.clone();
        blocking(move || {
            let volumes = me.volumes_store();
            volumes.get(&name).map_err(volume_error)?;
            if let Some(users) = me.volume_users()?.get(&name) {
                return Err(CommandError::conflict(format!(
                    "volume {name} is mounted by machine(s) {}; destroy them first",
                    users.join(", ")
                )));
            }
            volumes.remove(&name).map_err(volume_error)?;
            tracing::info!(volume = %name, "volume removed");
            Ok(())
        })
        .await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> CommandResult<T> + Send + 'static,
) -> CommandResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CommandError::internal(format!("volume task failed: {e}")))?
}
