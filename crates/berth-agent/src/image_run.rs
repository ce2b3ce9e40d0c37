//! What an image machine runs, from its image's defaults and its config: the program (config
//! `cmd`, else the image's Entrypoint + Cmd), the environment (the image's Env, overridden by
//! the config's), the working directory (config, image, `/`) and the user (config, image, root;
//! looked up in the image's own `/etc/passwd` and `/etc/group`).

use berth_driver::oci::ImageRun;
use berth_image::{ImageError, Resolved, resolve_user};
use berth_types::MachineConfig;

/// Resolves an image machine's run from its image, or says which field is wrong.
pub fn image_run(config: &MachineConfig, image: &Resolved) -> Result<ImageRun, ImageError> {
    let args = if config.cmd.is_empty() {
        image
            .entrypoint
            .iter()
            .chain(image.cmd.iter())
            .cloned()
            .collect()
    } else {
        config.cmd.clone()
    };
    let mut env: Vec<String> = image
        .env
        .iter()
        .filter(|kv| {
            let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
            !config.env.contains_key(key)
        })
        .cloned()
        .collect();
    env.extend(config.env.iter().map(|(k, v)| format!("{k}={v}")));
    if !env.iter().any(|kv| kv.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned());
    }
    let cwd = config
        .workdir
        .clone()
        .or_else(|| image.workdir.clone().filter(|w| w.starts_with('/')))
        .unwrap_or_else(|| "/".to_owned());
    let user = config
        .user
        .clone()
        .or_else(|| image.user.clone().filter(|u| !u.is_empty()));
    let (uid, gid, groups) = match user {
        Some(spec) => {
            let ids = resolve_user(&image.rootfs, &spec)?;
            (ids.uid, ids.gid, ids.groups)
        }
        None => (0, 0, Vec::new()),
    };
    Ok(ImageRun {
        rootfs: image.rootfs.clone(),
        args,
        env,
        cwd,
        uid,
        gid,
        groups,
    })
}

/// Says why an image machine has nothing to run.
pub fn check_args(run: &ImageRun) -> Result<(), String> {
    if run.args.first().is_none_or(String::is_empty) {
        return Err(
            "cmd: the image has no Entrypoint or Cmd, so the config must give a cmd".to_owned(),
        );
    }
    Ok(())
}
