//! berthd's configuration: embedded defaults, then `/etc/berth/berth.toml` (or `--config`), then
//! environment variables, then flags. Validated completely before any port is bound; an error
//! names the key and says what is wrong with it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The config file, as written. Every key is optional; unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub api: ApiSection,
    #[serde(default)]
    pub db: DbSection,
    #[serde(default)]
    pub retention: RetentionSection,
    #[serde(default)]
    pub compaction: CompactionSection,
    #[serde(default)]
    pub fault: FaultSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub reconcile: ReconcileSection,
    #[serde(default)]
    pub driver: DriverSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub export: ExportSection,
}

/// `[export]`: fleet export into NATS JetStream.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportSection {
    /// Empty: no export.
    pub nats_url: Option<String>,
    /// Empty: generated once and kept in the database.
    pub host_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// How often the CPU and memory of started machines are sampled.
    pub sample_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    pub listen: Option<String>,
    pub socket: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub max_inflight_mutations: Option<usize>,
    pub socket_max_inflight_mutations: Option<usize>,
    pub max_connections: Option<usize>,
    pub header_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbSection {
    pub slow_op_threshold: Option<String>,
    pub slow_op_window: Option<String>,
    pub write_queue: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSection {
    pub destroyed_machine_ttl: Option<String>,
    pub max_events_per_machine: Option<u64>,
    pub max_events: Option<u64>,
    pub interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompactionSection {
    pub auto: Option<bool>,
    pub min_file_size: Option<String>,
    pub garbage_ratio: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSection {
    pub db_delay: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub max_machines: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileSection {
    pub interval: Option<String>,
    pub blast_radius_guard: Option<bool>,
    pub guard_window: Option<String>,
    pub guard_min_machines: Option<usize>,
    pub guard_fraction: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriverSection {
    /// `auto` or `off`.
    pub cgroup: Option<String>,
    pub shim: Option<PathBuf>,
    pub log_max_size: Option<String>,
    pub log_keep: Option<u32>,
}

/// Flags and environment (flags win; clap reads the env variables).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub socket: Option<PathBuf>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: Option<SocketAddr>,
    pub socket: PathBuf,
    pub token_file: PathBuf,
    pub max_inflight: usize,
    pub socket_max_inflight: usize,
    /// Most connections per lane.
    pub max_connections: usize,
    /// A connection without a complete request head this long after it opened (or after its
    /// last response) is closed.
    pub header_timeout: Duration,
    pub slow_op_threshold: Duration,
    pub slow_op_window: Duration,
    pub write_queue: usize,
    pub db_delay: Duration,
    pub max_machines: usize,
    pub reconcile_interval: Duration,
    pub blast_radius_guard: bool,
    pub guard_window: Duration,
    pub guard_min_machines: usize,
    pub guard_fraction: f64,
    pub cgroup_off: bool,
    pub shim: Option<PathBuf>,
    pub log_max_bytes: u64,
    pub log_keep: u32,
    pub destroyed_machine_ttl: Duration,
    pub max_events_per_machine: u64,
    pub max_events: u64,
    pub retention_interval: Duration,
    pub compaction_auto: bool,
    pub compaction_min_file_size: u64,
    pub compaction_garbage_ratio: f64,
    pub config_file: Option<PathBuf>,
    pub metrics_sample_interval: Duration,
    /// `export.nats_url`; `None` when empty (no export).
    pub export_nats_url: Option<String>,
    /// `export.host_id`; `None` when empty (the one kept in the database).
    pub export_host_id: Option<String>,
}

/// A configuration error: which key, and why.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn duration(key: &str, v: Option<&String>, default: Duration) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => humantime::parse_duration(s.trim()).map_err(|e| {
            ConfigError(format!(
                "{key}: invalid duration {s:?}: {e} (examples: \"100ms\", \"24h\")"
            ))
        }),
    }
}

fn positive_duration(
    key: &str,
    v: Option<&String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let d = duration(key, v, default)?;
    if d.is_zero() {
        return Err(ConfigError(format!("{key}: must be longer than 0")));
    }
    Ok(d)
}

fn size(key: &str, v: Option<&String>, default: u64) -> Result<u64, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => s
            .trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|e| {
                ConfigError(format!(
                    "{key}: invalid size {s:?}: {e} (examples: \"64MiB\", \"1GiB\")"
                ))
            }),
    }
}

/// The default data directory: `/var/lib/berth` as root, else `$XDG_STATE_HOME/berth`
/// (falling back to `~/.local/state/berth`).
pub fn default_data_dir(is_root: bool) -> PathBuf {
    if is_root {
        return PathBuf::from("/var/lib/berth");
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("berth");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/state/berth")
}

/// Reads the config file: an explicit one must exist; the default one only if it exists.
pub fn read_file(explicit: Option<&Path>) -> Result<(File, Option<PathBuf>), ConfigError> {
    let (path, required) = match explicit {
        Some(p) => (p.to_owned(), true),
        None => (PathBuf::from("/etc/berth/berth.toml"), false),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let file: File = toml::from_str(&text).map_err(|e| {
                ConfigError(format!("{}: {}", path.display(), e.to_string().trim()))
            })?;
            Ok((file, Some(path)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            Ok((File::default(), None))
        }
        Err(e) => Err(ConfigError(format!("{}: {e}", path.display()))),
    }
}

impl Config {
    /// Builds and validates the configuration.
    pub fn build(
        file: File,
        config_file: Option<PathBuf>,
        o: &Overrides,
        is_root: bool,
    ) -> Result<Config, ConfigError> {
        let data_dir = o
            .data_dir
            .clone()
            .or(file.data_dir.clone())
            .unwrap_or_else(|| default_data_dir(is_root));
        if data_dir.as_os_str().is_empty() {
            return Err(ConfigError("data_dir: must not be empty".into()));
        }
        let listen_raw = o
            .listen
            .clone()
            .or(file.api.listen.clone())
            .unwrap_or_else(|| "127.0.0.1:4280".into());
        let listen = match listen_raw.as_str() {
            "" | "off" | "none" => None,
            s => Some(s.parse::<SocketAddr>().map_err(|e| {
                ConfigError(format!(
                    "api.listen: {s:?} is not an address like 127.0.0.1:4280 ({e})"
                ))
            })?),
        };
        let socket = o
            .socket
            .clone()
            .or(file.api.socket.clone())
            .unwrap_or_else(|| data_dir.join("berth.sock"));
        let token_file = file
            .api
            .token_file
            .clone()
            .unwrap_or_else(|| data_dir.join("token"));
        let ratio = file.compaction.garbage_ratio.unwrap_or(0.5);
        if !(0.0..1.0).contains(&ratio) {
            return Err(ConfigError(format!(
                "compaction.garbage_ratio: {ratio} must be at least 0 and below 1"
            )));
        }
        let guard_fraction = file.reconcile.guard_fraction.unwrap_or(0.5);
        if !(guard_fraction > 0.0 && guard_fraction <= 1.0) {
            return Err(ConfigError(format!(
                "reconcile.guard_fraction: {guard_fraction} must be above 0 and at most 1"
            )));
        }
        let cgroup_off = match file.driver.cgroup.as_deref() {
            None | Some("auto") => false,
            Some("off") => true,
            Some(other) => {
                return Err(ConfigError(format!(
                    "driver.cgroup: {other:?} must be \"auto\" or \"off\""
                )));
            }
        };
        let positive = |key: &str, v: Option<usize>, d: usize| -> Result<usize, ConfigError> {
            match v {
                Some(0) => Err(ConfigError(format!("{key}: must be at least 1"))),
                Some(n) => Ok(n),
                None => Ok(d),
            }
        };
        Ok(Config {
            listen,
            socket,
            token_file,
            max_inflight: positive(
                "api.max_inflight_mutations",
                file.api.max_inflight_mutations,
                64,
            )?,
            socket_max_inflight: positive(
                "api.socket_max_inflight_mutations",
                file.api.socket_max_inflight_mutations,
                16,
            )?,
            max_connections: positive("api.max_connections", file.api.max_connections, 1024)?,
            header_timeout: positive_duration(
                "api.header_timeout",
                file.api.header_timeout.as_ref(),
                Duration::from_secs(10),
            )?,
            slow_op_threshold: duration(
                "db.slow_op_threshold",
                file.db.slow_op_threshold.as_ref(),
                Duration::from_millis(100),
            )?,
            slow_op_window: duration(
                "db.slow_op_window",
                file.db.slow_op_window.as_ref(),
                Duration::from_secs(300),
            )?,
            write_queue: positive("db.write_queue", file.db.write_queue, 4096)?,
            db_delay: duration(
                "fault.db_delay",
                file.fault.db_delay.as_ref(),
                Duration::ZERO,
            )?,
            max_machines: positive("limits.max_machines", file.limits.max_machines, 1000)?,
            reconcile_interval: duration(
                "reconcile.interval",
                file.reconcile.interval.as_ref(),
                Duration::from_secs(10),
            )?,
            blast_radius_guard: file.reconcile.blast_radius_guard.unwrap_or(true),
            guard_window: positive_duration(
                "reconcile.guard_window",
                file.reconcile.guard_window.as_ref(),
                Duration::from_secs(60),
            )?,
            guard_min_machines: file.reconcile.guard_min_machines.unwrap_or(3),
            guard_fraction,
            cgroup_off,
            shim: file.driver.shim.clone(),
            log_max_bytes: size(
                "driver.log_max_size",
                file.driver.log_max_size.as_ref(),
                10 << 20,
            )?,
            log_keep: file.driver.log_keep.unwrap_or(2),
            destroyed_machine_ttl: duration(
                "retention.destroyed_machine_ttl",
                file.retention.destroyed_machine_ttl.as_ref(),
                Duration::from_secs(24 * 3600),
            )?,
            max_events_per_machine: at_least_one(
                "retention.max_events_per_machine",
                file.retention.max_events_per_machine.unwrap_or(1000),
            )?,
            max_events: at_least_one(
                "retention.max_events",
                file.retention.max_events.unwrap_or(100_000),
            )?,
            retention_interval: duration(
                "retention.interval",
                file.retention.interval.as_ref(),
                Duration::from_secs(60),
            )?,
            compaction_auto: file.compaction.auto.unwrap_or(true),
            compaction_min_file_size: size(
                "compaction.min_file_size",
                file.compaction.min_file_size.as_ref(),
                64 << 20,
            )?,
            compaction_garbage_ratio: ratio,
            metrics_sample_interval: positive_duration(
                "metrics.sample_interval",
                file.metrics.sample_interval.as_ref(),
                Duration::from_secs(5),
            )?,
            export_nats_url: export_nats_url(&file.export)?,
            export_host_id: export_host_id(&file.export)?,
            data_dir,
            config_file,
        })
    }
}

fn export_nats_url(e: &ExportSection) -> Result<Option<String>, ConfigError> {
    let url = e.nats_url.as_deref().map(str::trim).unwrap_or("");
    if url.is_empty() {
        return Ok(None);
    }
    let rest = url.strip_prefix("nats://").unwrap_or(url);
    let ok = !rest.contains(char::is_whitespace)
        && rest.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
    if !ok {
        return Err(ConfigError(format!(
            "export.nats_url: {url:?} is not like \"nats://127.0.0.1:4222\""
        )));
    }
    Ok(Some(url.to_owned()))
}

fn export_host_id(e: &ExportSection) -> Result<Option<String>, ConfigError> {
    let id = e.host_id.as_deref().map(str::trim).unwrap_or("");
    if id.is_empty() {
        return Ok(None);
    }
    let ok = id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(ConfigError(format!(
            "export.host_id: {id:?} must be 1 to 64 of A-Z, a-z, 0-9, '-' and '_' (it is part of NATS subjects)"
        )));
    }
    Ok(Some(id.to_owned()))
}

fn at_least_one(key: &str, v: u64) -> Result<u64, ConfigError> {
    if v == 0 {
        return Err(ConfigError(format!("{key}: must be at least 1")));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(toml_text: &str) -> Result<Config, String> {
        let file: File = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        Config::build(file, None, &Overrides::default(), true).map_err(|e| e.0)
    }

    #[test]
    fn embedded_defaults() {
        let c = build("").unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/berth"));
        assert_eq!(c.socket, PathBuf::from("/var/lib/berth/berth.sock"));
        assert_eq!(c.listen, Some("127.0.0.1:4280".parse().unwrap()));
        assert_eq!(c.token_file, PathBuf::from("/var/lib/berth/token"));
        assert_eq!(c.slow_op_threshold, Duration::from_millis(100));
        assert_eq!(c.compaction_min_file_size, 64 << 20);
        assert_eq!(c.max_connections, 1024);
        assert_eq!(c.header_timeout, Duration::from_secs(10));
    }

    #[test]
    fn errors_name_the_key() {
        for (text, want) in [
            ("[db]\nslow_op_threshold = \"fast\"", "db.slow_op_threshold"),
            ("[api]\nlisten = \"everywhere\"", "api.listen"),
            (
                "[compaction]\nmin_file_size = \"huge\"",
                "compaction.min_file_size",
            ),
            (
                "[compaction]\ngarbage_ratio = 1.5",
                "compaction.garbage_ratio",
            ),
            ("[db]\nbogus = 1", "unknown field `bogus`"),
            ("[fault]\ndb_delay = \"1 fortnight\"", "fault.db_delay"),
            (
                "[metrics]\nsample_interval = \"0s\"",
                "metrics.sample_interval",
            ),
            ("[api]\nmax_connections = 0", "api.max_connections"),
            ("[api]\nheader_timeout = \"0s\"", "api.header_timeout"),
            ("[export]\nnats_url = \"nats://\"", "export.nats_url"),
            ("[export]\nhost_id = \"a.b\"", "export.host_id"),
        ] {
            let err = build(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn flags_and_env_override_the_file() {
        let file: File =
            toml::from_str("data_dir = \"/srv/a\"\n[api]\nlisten = \"127.0.0.1:1\"").unwrap();
        let o = Overrides {
            data_dir: Some("/srv/b".into()),
            listen: Some("off".into()),
            ..Overrides::default()
        };
        let c = Config::build(file, None, &o, false).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/b"));
        assert_eq!(c.listen, None);
        assert_eq!(c.socket, PathBuf::from("/srv/b/berth.sock"));
    }
}
