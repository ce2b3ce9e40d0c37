//! berthd's configuration, in layers, each overriding the one before: embedded defaults, then
//! `/etc/berth/berth.toml` (or `--config` / `BERTH_CONFIG`), then `BERTH_<SECTION>__<KEY>`
//! environment variables (`BERTH_DB__SLOW_OP_THRESHOLD=250ms` is `[db] slow_op_threshold`), then
//! `BERTH_DATA_DIR`, `BERTH_LISTEN`, `BERTH_SOCKET`, then flags. The file and the environment are
//! merged by `figment` and read into [`File`], typed (durations and sizes parse there), so an
//! error names the key and where it came from; [`Config::build`] adds the defaults and checks
//! ranges. Everything is validated before any port is bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_types::time::HumanDuration;
use bytesize::ByteSize;
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

/// The config file (and `BERTH_<SECTION>__<KEY>` variables), as written. Every key is optional;
/// unknown keys are errors.
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
    pub images: ImagesSection,
    #[serde(default)]
    pub export: ExportSection,
    #[serde(default)]
    pub runtime: RuntimeSection,
}

/// `[runtime]`: what runs image machines.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSection {
    /// `auto` (crun, then runc, on PATH; the first that really runs a container here), a name
    /// on PATH, or a path.
    pub oci: Option<String>,
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
    pub sample_interval: Option<HumanDuration>,
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
    pub header_timeout: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbSection {
    pub slow_op_threshold: Option<HumanDuration>,
    pub slow_op_window: Option<HumanDuration>,
    pub write_queue: Option<usize>,
    pub cache_size: Option<ByteSize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSection {
    pub destroyed_machine_ttl: Option<HumanDuration>,
    pub max_events_per_machine: Option<u64>,
    pub max_events: Option<u64>,
    pub interval: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompactionSection {
    pub auto: Option<bool>,
    pub min_file_size: Option<ByteSize>,
    pub garbage_ratio: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSection {
    pub db_delay: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub max_machines: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileSection {
    pub interval: Option<HumanDuration>,
    pub blast_radius_guard: Option<bool>,
    pub guard_window: Option<HumanDuration>,
    pub guard_min_machines: Option<usize>,
    pub guard_fraction: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriverSection {
    /// `auto` or `off`.
    pub cgroup: Option<String>,
    pub shim: Option<PathBuf>,
    pub log_max_size: Option<ByteSize>,
    pub log_keep: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesSection {
    /// Images no machine has used for this long are collected.
    pub gc_unused_after: Option<HumanDuration>,
    /// `HOST:PORT` registries pulled over plain HTTP.
    pub insecure_registries: Option<Vec<String>>,
    /// A root-only docker-style credentials file; empty: anonymous pulls only.
    pub credentials_file: Option<PathBuf>,
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
    pub db_cache_size: usize,
    pub db_delay: Duration,
    pub max_machines: usize,
    pub reconcile_interval: Duration,
    pub blast_radius_guard: bool,
    pub guard_window: Duration,
    pub guard_min_machines: usize,
    pub guard_fraction: f64,
    pub cgroup_off: bool,
    pub shim: Option<PathBuf>,
    /// `runtime.oci`.
    pub oci_runtime: String,
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
    pub images_gc_unused_after: Duration,
    pub insecure_registries: Vec<String>,
    pub registry_credentials_file: Option<PathBuf>,
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

/// A duration key: its value, or the default.
fn duration(v: Option<HumanDuration>, default: Duration) -> Duration {
    v.map_or(default, |d| d.0)
}

/// A duration key that must not be zero.
/// `images.insecure_registries`: each `HOST:PORT`, as an image reference names it.
fn insecure_registries(v: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    let v = v.unwrap_or_default();
    for r in &v {
        let ok = r.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok()
        });
        if !ok {
            return Err(ConfigError(format!(
                "images.insecure_registries: {r:?} is not HOST:PORT"
            )));
        }
    }
    Ok(v)
}

fn positive_duration(
    key: &str,
    v: Option<HumanDuration>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let d = duration(v, default);
    if d.is_zero() {
        return Err(ConfigError(format!("{key}: must be longer than 0")));
    }
    Ok(d)
}

/// A size key: its value in bytes, or the default.
/// `db.cache_size`: redb's page cache. Small by default: a host's hot records (its machines, the
/// recent events) fit in a few MiB, and every page the cache holds is resident memory (a full
/// walk such as `Table::stats` fills it).
fn cache_size(v: Option<ByteSize>) -> Result<usize, ConfigError> {
    let bytes = size(v, berth_store::DEFAULT_CACHE_SIZE as u64);
    if bytes < 1 << 20 {
        return Err(ConfigError(format!(
            "db.cache_size: {} is below the minimum of 1 MiB",
            ByteSize(bytes)
        )));
    }
    usize::try_from(bytes).map_err(|_| ConfigError(format!("db.cache_size: {bytes} is too large")))
}

fn size(v: Option<ByteSize>, default: u64) -> u64 {
    v.map_or(default, |b| b.as_u64())
}

/// A count key that must be at least 1.
fn positive(key: &str, v: Option<usize>, default: usize) -> Result<usize, ConfigError> {
    match v {
        Some(0) => Err(ConfigError(format!("{key}: must be at least 1"))),
        Some(n) => Ok(n),
        None => Ok(default),
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

/// The default config file, read only if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/berth/berth.toml";

/// Reads the config file (an explicit one must exist; the default one only if it exists) and
/// the `BERTH_<SECTION>__<KEY>` environment variables over it.
pub fn read_file(explicit: Option<&Path>) -> Result<(File, Option<PathBuf>), ConfigError> {
    read_layers(explicit, Env::prefixed("BERTH_"))
}

/// [`read_file`] with the environment provider given (tests pass one without the process's).
fn read_layers(explicit: Option<&Path>, env: Env) -> Result<(File, Option<PathBuf>), ConfigError> {
    let path = explicit.map_or_else(|| PathBuf::from(DEFAULT_CONFIG_FILE), Path::to_owned);
    let found = match std::fs::metadata(&path) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => false,
        Err(e) => return Err(ConfigError(format!("{}: {e}", path.display()))),
    };
    let mut figment = Figment::new();
    if found {
        figment = figment.merge(Toml::file_exact(&path));
    }
    // Only `SECTION__KEY` variables are config keys: `BERTH_DATA_DIR`, `BERTH_LISTEN` and
    // `BERTH_SOCKET` are read with the flags, and `BERTH_LOG`, `BERTH_TOKEN`, ... are not config.
    let env = env.filter(|k| k.as_str().contains("__")).split("__");
    let file: File = figment
        .merge(env)
        .extract()
        .map_err(|e| ConfigError(describe(e)))?;
    Ok((file, found.then_some(path)))
}

/// A figment error as one line per problem: what is wrong, with which key, from which layer.
fn describe(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let from = e
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    Some(src) => format!(" (from {src})"),
                    None => format!(" (from {})", m.name),
                })
                .unwrap_or_default();
            if key.is_empty() {
                format!("{}{from}", e.kind)
            } else {
                format!("{key}: {}{from}", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl Config {
    /// Builds and validates the configuration: `file` (the file and environment layers) under
    /// the flags in `o`, with the embedded defaults for whatever neither sets.
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
        let api = Api::build(&file.api, o, &data_dir)?;
        let reconcile = Reconcile::build(&file.reconcile)?;
        let store = StoreKeys::build(&file)?;
        Ok(Config {
            listen: api.listen,
            socket: api.socket,
            token_file: api.token_file,
            max_inflight: api.max_inflight,
            socket_max_inflight: api.socket_max_inflight,
            max_connections: api.max_connections,
            header_timeout: api.header_timeout,
            slow_op_threshold: store.slow_op_threshold,
            slow_op_window: store.slow_op_window,
            write_queue: store.write_queue,
            db_cache_size: store.cache_size,
            db_delay: duration(file.fault.db_delay, Duration::ZERO),
            max_machines: positive("limits.max_machines", file.limits.max_machines, 1000)?,
            reconcile_interval: reconcile.interval,
            blast_radius_guard: reconcile.guard,
            guard_window: reconcile.guard_window,
            guard_min_machines: reconcile.guard_min_machines,
            guard_fraction: reconcile.guard_fraction,
            cgroup_off: cgroup_off(file.driver.cgroup.as_deref())?,
            shim: file.driver.shim.clone(),
            oci_runtime: file
                .runtime
                .oci
                .clone()
                .unwrap_or_else(|| "auto".to_owned()),
            log_max_bytes: size(file.driver.log_max_size, 10 << 20),
            log_keep: file.driver.log_keep.unwrap_or(2),
            destroyed_machine_ttl: store.destroyed_machine_ttl,
            max_events_per_machine: store.max_events_per_machine,
            max_events: store.max_events,
            retention_interval: store.retention_interval,
            compaction_auto: store.compaction_auto,
            compaction_min_file_size: store.compaction_min_file_size,
            compaction_garbage_ratio: store.compaction_garbage_ratio,
            metrics_sample_interval: positive_duration(
                "metrics.sample_interval",
                file.metrics.sample_interval,
                Duration::from_secs(5),
            )?,
            images_gc_unused_after: positive_duration(
                "images.gc_unused_after",
                file.images.gc_unused_after,
                Duration::from_secs(24 * 3600),
            )?,
            insecure_registries: insecure_registries(file.images.insecure_registries.clone())?,
            registry_credentials_file: file
                .images
                .credentials_file
                .clone()
                .filter(|p| !p.as_os_str().is_empty()),
            export_nats_url: export_nats_url(&file.export)?,
            export_host_id: export_host_id(&file.export)?,
            data_dir,
            config_file,
        })
    }
}

/// The `[api]` keys, resolved.
struct Api {
    listen: Option<SocketAddr>,
    socket: PathBuf,
    token_file: PathBuf,
    max_inflight: usize,
    socket_max_inflight: usize,
    max_connections: usize,
    header_timeout: Duration,
}

impl Api {
    fn build(a: &ApiSection, o: &Overrides, data_dir: &Path) -> Result<Self, ConfigError> {
        let listen_raw = o
            .listen
            .clone()
            .or(a.listen.clone())
            .unwrap_or_else(|| "127.0.0.1:4280".into());
        let listen = match listen_raw.as_str() {
            "" | "off" | "none" => None,
            s => Some(s.parse::<SocketAddr>().map_err(|e| {
                ConfigError(format!(
                    "api.listen: {s:?} is not an address like 127.0.0.1:4280 ({e})"
                ))
            })?),
        };
        Ok(Api {
            listen,
            socket: o
                .socket
                .clone()
                .or(a.socket.clone())
                .unwrap_or_else(|| data_dir.join("berth.sock")),
            token_file: a
                .token_file
                .clone()
                .unwrap_or_else(|| data_dir.join("token")),
            max_inflight: positive("api.max_inflight_mutations", a.max_inflight_mutations, 64)?,
            socket_max_inflight: positive(
                "api.socket_max_inflight_mutations",
                a.socket_max_inflight_mutations,
                16,
            )?,
            max_connections: positive("api.max_connections", a.max_connections, 1024)?,
            header_timeout: positive_duration(
                "api.header_timeout",
                a.header_timeout,
                Duration::from_secs(10),
            )?,
        })
    }
}

/// The `[reconcile]` keys, resolved.
struct Reconcile {
    interval: Duration,
    guard: bool,
    guard_window: Duration,
    guard_min_machines: usize,
    guard_fraction: f64,
}

impl Reconcile {
    fn build(r: &ReconcileSection) -> Result<Self, ConfigError> {
        let guard_fraction = r.guard_fraction.unwrap_or(0.5);
        if !(guard_fraction > 0.0 && guard_fraction <= 1.0) {
            return Err(ConfigError(format!(
                "reconcile.guard_fraction: {guard_fraction} must be above 0 and at most 1"
            )));
        }
        Ok(Reconcile {
            interval: duration(r.interval, Duration::from_secs(10)),
            guard: r.blast_radius_guard.unwrap_or(true),
            guard_window: positive_duration(
                "reconcile.guard_window",
                r.guard_window,
                Duration::from_secs(60),
            )?,
            guard_min_machines: r.guard_min_machines.unwrap_or(3),
            guard_fraction,
        })
    }
}

/// The database's keys (`[db]`, `[retention]`, `[compaction]`), resolved.
struct StoreKeys {
    slow_op_threshold: Duration,
    slow_op_window: Duration,
    write_queue: usize,
    cache_size: usize,
    destroyed_machine_ttl: Duration,
    max_events_per_machine: u64,
    max_events: u64,
    retention_interval: Duration,
    compaction_auto: bool,
    compaction_min_file_size: u64,
    compaction_garbage_ratio: f64,
}

impl StoreKeys {
    fn build(f: &File) -> Result<Self, ConfigError> {
        let ratio = f.compaction.garbage_ratio.unwrap_or(0.5);
        if !(0.0..1.0).contains(&ratio) {
            return Err(ConfigError(format!(
                "compaction.garbage_ratio: {ratio} must be at least 0 and below 1"
            )));
        }
        let r = &f.retention;
        Ok(StoreKeys {
            slow_op_threshold: duration(f.db.slow_op_threshold, Duration::from_millis(100)),
            slow_op_window: duration(f.db.slow_op_window, Duration::from_secs(300)),
            write_queue: positive("db.write_queue", f.db.write_queue, 4096)?,
            cache_size: cache_size(f.db.cache_size)?,
            destroyed_machine_ttl: duration(
                r.destroyed_machine_ttl,
                Duration::from_secs(24 * 3600),
            ),
            max_events_per_machine: at_least_one(
                "retention.max_events_per_machine",
                r.max_events_per_machine.unwrap_or(1000),
            )?,
            max_events: at_least_one("retention.max_events", r.max_events.unwrap_or(100_000))?,
            retention_interval: duration(r.interval, Duration::from_secs(60)),
            compaction_auto: f.compaction.auto.unwrap_or(true),
            compaction_min_file_size: size(f.compaction.min_file_size, 64 << 20),
            compaction_garbage_ratio: ratio,
        })
    }
}

/// `driver.cgroup`: `auto` (use cgroups where the host has them) or `off`.
fn cgroup_off(v: Option<&str>) -> Result<bool, ConfigError> {
    match v {
        None | Some("auto") => Ok(false),
        Some("off") => Ok(true),
        Some(other) => Err(ConfigError(format!(
            "driver.cgroup: {other:?} must be \"auto\" or \"off\""
        ))),
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
            "export.nats_url: {:?} is not like \"nats://127.0.0.1:4222\"",
            berth_export::redact_url(url)
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

    /// Builds from `toml_text` as a config file, with no environment layer.
    fn build_file(toml_text: &str) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.toml");
        std::fs::write(&path, toml_text).unwrap();
        read_layers(Some(&path), Env::prefixed("BERTH_NOBODY_SETS_THIS_"))
            .and_then(|(file, p)| Config::build(file, p, &Overrides::default(), true))
            .map_err(|e| e.0)
    }

    fn build(toml_text: &str) -> Result<Config, String> {
        build_file(toml_text)
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
        assert_eq!(c.images_gc_unused_after, Duration::from_secs(24 * 3600));
        assert!(c.insecure_registries.is_empty() && c.registry_credentials_file.is_none());
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
            ("[db]\nbogus = 1", "db.bogus: unknown field"),
            ("[fault]\ndb_delay = \"1 fortnight\"", "fault.db_delay"),
            (
                "[metrics]\nsample_interval = \"0s\"",
                "metrics.sample_interval",
            ),
            ("[api]\nmax_connections = 0", "api.max_connections"),
            ("[api]\nheader_timeout = \"0s\"", "api.header_timeout"),
            (
                "[images]\ninsecure_registries = [\"http://r:5000\"]",
                "images.insecure_registries",
            ),
            (
                "[images]\ngc_unused_after = \"0s\"",
                "images.gc_unused_after",
            ),
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

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature
    fn every_key_has_an_environment_override_over_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "berth.toml",
                "[db]\nslow_op_threshold = \"1s\"\n[limits]\nmax_machines = 5",
            )?;
            jail.set_env("BERTH_DB__SLOW_OP_THRESHOLD", "250ms");
            jail.set_env("BERTH_COMPACTION__MIN_FILE_SIZE", "1MiB");
            jail.set_env("BERTH_RECONCILE__BLAST_RADIUS_GUARD", "false");
            // Not config keys: read elsewhere, and no error for them.
            jail.set_env("BERTH_LOG", "debug");
            jail.set_env("BERTH_TOKEN", "x");
            let path = jail.directory().join("berth.toml");
            let (file, _) = read_file(Some(&path)).map_err(|e| e.0)?;
            let c = Config::build(file, None, &Overrides::default(), true).map_err(|e| e.0)?;
            assert_eq!(c.slow_op_threshold, Duration::from_millis(250));
            assert_eq!(c.compaction_min_file_size, 1 << 20);
            assert!(!c.blast_radius_guard);
            assert_eq!(
                c.max_machines, 5,
                "the file still counts where env is silent"
            );
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature
    fn a_bad_environment_value_names_its_key_and_variable() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("berth.toml", "")?;
            jail.set_env("BERTH_DB__SLOW_OP_THRESHOLD", "soon");
            let path = jail.directory().join("berth.toml");
            let err = read_file(Some(&path)).unwrap_err().0;
            assert!(err.contains("db.slow_op_threshold"), "{err}");
            assert!(
                err.contains("BERTH_"),
                "names the environment as the source: {err}"
            );
            jail.set_env("BERTH_DB__SLOW_OP_THRESHOLD", "1s");
            jail.set_env("BERTH_DB__BOGUS", "1");
            let err = read_file(Some(&path)).unwrap_err().0;
            assert!(err.contains("db.bogus: unknown field"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn an_explicit_config_file_must_exist() {
        let err = read_layers(
            Some(Path::new("/nonexistent/berth.toml")),
            Env::prefixed("BERTH_NOBODY_SETS_THIS_"),
        )
        .unwrap_err()
        .0;
        assert!(err.contains("/nonexistent/berth.toml"), "{err}");
    }
}
