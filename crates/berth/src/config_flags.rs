//! The config flags `machine create` and `machine update` share (workdir, restart bound, stop
//! signal and timeout, CPU and process limits, network, files): each given one is set on the
//! config; the agent validates the values (400 naming the field).

use std::os::unix::fs::PermissionsExt as _;

use base64::Engine as _;
use berth_types::MachineConfig;
use berth_types::time::HumanDuration;
use berth_types::workload::{FileConfig, Network};

use crate::cli::{ConfigFlags, Fail};

/// Sets on `config` every field `f` names.
pub(crate) fn apply(f: &ConfigFlags, config: &mut MachineConfig) -> Result<(), Fail> {
    if let Some(w) = &f.workdir {
        config.workdir = Some(w.clone());
    }
    if let Some(n) = f.max_retries {
        config.restart.max_retries = Some(n);
    }
    if let Some(s) = &f.stop_signal {
        config.stop.signal = s.clone();
    }
    if let Some(t) = &f.stop_timeout {
        config.stop.timeout =
            HumanDuration::parse(t).map_err(|e| Fail(2, format!("--stop-timeout: {e}")))?;
    }
    if let Some(c) = f.cpus {
        config.resources.cpus = Some(c);
    }
    if let Some(p) = f.pids {
        config.resources.pids = Some(p);
    }
    if let Some(n) = &f.network {
        config.network = Some(if n == "none" {
            Network::None
        } else {
            Network::Host
        });
    }
    for arg in &f.file {
        let file = file_arg(arg)?;
        config.files.retain(|old| old.path != file.path);
        config.files.push(file);
    }
    Ok(())
}

/// A `--file PATH=LOCAL_FILE`: the local file's content and permission bits.
fn file_arg(arg: &str) -> Result<FileConfig, Fail> {
    let (path, local) = arg
        .split_once('=')
        .filter(|(p, l)| !p.is_empty() && !l.is_empty())
        .ok_or_else(|| Fail(2, format!("--file {arg:?}: expected PATH=LOCAL_FILE")))?;
    let read = |e: std::io::Error| Fail(2, format!("--file {arg:?}: reading {local}: {e}"));
    let content = std::fs::read(local).map_err(read)?;
    let mode = std::fs::metadata(local).map_err(read)?.permissions().mode() & 0o7777;
    Ok(FileConfig {
        path: path.to_owned(),
        raw_value: base64::engine::general_purpose::STANDARD.encode(content),
        mode,
    })
}
