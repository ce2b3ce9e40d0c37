//! A machine's configuration, as submitted by the control plane, and its validation.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::time::HumanDuration;

/// Signals a caller may name, by their conventional names.
pub const SIGNALS: [&str; 12] = [
    "SIGHUP", "SIGINT", "SIGQUIT", "SIGKILL", "SIGUSR1", "SIGUSR2", "SIGTERM", "SIGSTOP",
    "SIGCONT", "SIGWINCH", "SIGPWR", "SIGABRT",
];

/// Bounds on what a create may carry. A real control plane stays far below each; they exist so
/// that no request can make the agent hold (or store, or echo back) unbounded input.
pub mod limits {
    /// Longest machine name, in bytes.
    pub const NAME_MAX: usize = 63;
    /// Most metadata entries.
    pub const METADATA_ENTRIES: usize = 64;
    /// Longest metadata key, in bytes.
    pub const METADATA_KEY_MAX: usize = 128;
    /// Longest metadata value, in bytes.
    pub const METADATA_VALUE_MAX: usize = 1024;
    /// Most arguments in `cmd` (program included).
    pub const CMD_ARGS: usize = 1024;
    /// Most bytes in all of `cmd`'s arguments together.
    pub const CMD_BYTES: usize = 128 * 1024;
    /// Most environment variables.
    pub const ENV_ENTRIES: usize = 1024;
    /// Longest environment variable name, in bytes.
    pub const ENV_KEY_MAX: usize = 256;
    /// Longest environment variable value, in bytes (below Linux's 128 KiB per string).
    pub const ENV_VALUE_MAX: usize = 64 * 1024;
    /// Most bytes in the whole environment (names and values).
    pub const ENV_BYTES: usize = 256 * 1024;
    /// Longest working directory, in bytes (`PATH_MAX`).
    pub const WORKDIR_MAX: usize = 4096;
    /// Longest signal name accepted for parsing, in bytes.
    pub const SIGNAL_MAX: usize = 16;
    /// Longest lease description, in bytes.
    pub const LEASE_DESCRIPTION_MAX: usize = 1024;
    /// Longest Idempotency-Key, in bytes.
    pub const IDEMPOTENCY_KEY_MAX: usize = 255;
    /// Most health checks per machine.
    pub const CHECKS: usize = 16;
    /// Longest check name, in bytes.
    pub const CHECK_NAME_MAX: usize = 63;
    /// Longest http check path, in bytes.
    pub const CHECK_PATH_MAX: usize = 1024;
}

/// Normalizes a signal name (`TERM`, `sigterm`, `SIGTERM` → `SIGTERM`), or says why it is not one.
pub fn normalize_signal(name: &str) -> Result<&'static str, String> {
    if name.len() > limits::SIGNAL_MAX {
        return Err(format!(
            "unknown signal ({} bytes; a signal name is at most {} bytes); expected one of {}",
            name.len(),
            limits::SIGNAL_MAX,
            SIGNALS.join(", ")
        ));
    }
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    SIGNALS
        .iter()
        .find(|s| **s == full)
        .copied()
        .ok_or_else(|| {
            format!(
                "unknown signal {name:?}; expected one of {}",
                SIGNALS.join(", ")
            )
        })
}

/// What a machine runs and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Program and arguments; required and non-empty, except with an `image`, whose
    /// Entrypoint and Cmd are the default.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Environment variables for the workload.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory; the machine's own directory when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Restart policy.
    #[serde(default)]
    pub restart: RestartConfig,
    /// How to stop the workload.
    #[serde(default)]
    pub stop: StopConfig,
    /// Resource limits; each one is refused unless the host can enforce it.
    #[serde(default)]
    pub resources: ResourceLimits,
    /// The image the machine runs from (`oci:/path[:tag]`, or `REGISTRY/REPO[:TAG|@sha256:…]`);
    /// a host process when absent. Only its syntax is checked here; berth-image resolves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Who the workload runs as: `NAME` or `UID[:GID]` (for an image machine, looked up in the
    /// image; for a process machine, on the host). The image's user, or root, when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Named volumes mounted into the machine.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<crate::workload::MountConfig>,
    /// Files written into the machine's root before it starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<crate::workload::FileConfig>,
    /// An image machine's network (`host` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::workload::Network>,
    /// Health checks, by name; run by the agent while the machine is started.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<String, CheckConfig>,
}

/// What a health check probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckType {
    /// An HTTP GET of `path` on `port`: a 2xx or 3xx answer passes.
    Http,
    /// A TCP connect to `port`.
    Tcp,
    /// `command` runs to exit status 0.
    Exec,
}

/// What a check does after `failures` consecutive failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckAction {
    /// Only report.
    #[default]
    None,
    /// Restart the machine (through the blast-radius guard).
    Restart,
}

/// One health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// What it probes.
    #[serde(rename = "type")]
    pub kind: CheckType,
    /// Port (`http`, `tcp`), on the machine's loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// HTTP path (`http`; default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Program and arguments (`exec`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Time between two runs.
    #[serde(default = "default_check_interval")]
    pub interval: HumanDuration,
    /// Longest one run may take; a run past it fails.
    #[serde(default = "default_check_timeout")]
    pub timeout: HumanDuration,
    /// Time after the machine started before the first run.
    #[serde(default)]
    pub grace_period: HumanDuration,
    /// Consecutive failures that make the check act (and, for its status, critical).
    #[serde(default = "default_check_failures")]
    pub failures: u32,
    /// What it does then.
    #[serde(default)]
    pub action: CheckAction,
}

fn default_check_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

fn default_check_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}

fn default_check_failures() -> u32 {
    3
}

/// When berth restarts a workload that exited on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never.
    #[default]
    No,
    /// After a non-zero exit or a signal, up to `max_retries` times.
    OnFailure,
    /// After every exit not requested by a stop.
    Always,
}

impl RestartPolicy {
    /// The API's spelling: `no`, `on-failure`, `always`.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::No => "no",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Always => "always",
        }
    }
}

impl std::fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Restart policy and its retry budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartConfig {
    /// The policy.
    #[serde(default)]
    pub policy: RestartPolicy,
    /// Retry budget for `on-failure` (default 10 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

/// Stop signal and grace period before SIGKILL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopConfig {
    /// Signal sent first.
    #[serde(default = "default_stop_signal")]
    pub signal: String,
    /// Grace period before SIGKILL.
    #[serde(default = "default_stop_timeout")]
    pub timeout: HumanDuration,
}

fn default_stop_signal() -> String {
    "SIGTERM".to_owned()
}

fn default_stop_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

impl Default for StopConfig {
    fn default() -> Self {
        Self {
            signal: default_stop_signal(),
            timeout: default_stop_timeout(),
        }
    }
}

/// Resource limits.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceLimits {
    /// Memory limit in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// CPU limit in cores (fractions allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Maximum number of processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

/// A config value that is out of bounds; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config.{field}: {reason}")]
pub struct ConfigError {
    /// Dotted path of the offending field.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
    /// Whether it is a size or count over its limit (`too_large`) rather than a bad value.
    pub too_large: bool,
}

fn bad(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_owned(),
        reason: reason.into(),
        too_large: false,
    }
}

fn too_large(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_owned(),
        reason: reason.into(),
        too_large: true,
    }
}

/// `too_large` when `n` of `what` exceed `max`: "{n} {what}; the limit is {max}".
fn over_limit(field: &str, what: &str, n: usize, max: usize) -> Result<(), ConfigError> {
    if n > max {
        return Err(too_large(field, format!("{n} {what}; the limit is {max}")));
    }
    Ok(())
}

/// An input over a size or count limit, or malformed; the message names the field and the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InputError {
    /// What is wrong, naming the field.
    pub message: String,
    /// Whether it is about size (`too_large`, 413) rather than a bad value (`invalid`, 400).
    pub too_large: bool,
}

impl From<ConfigError> for InputError {
    fn from(e: ConfigError) -> Self {
        Self {
            message: e.to_string(),
            too_large: e.too_large,
        }
    }
}

fn input(too_large: bool, message: String) -> InputError {
    InputError { message, too_large }
}

/// Checks a machine name: 1 to [`limits::NAME_MAX`] bytes of `[A-Za-z0-9._-]`, starting with a
/// letter or digit (so it is safe in a URL, a shell and a log line).
pub fn validate_name(name: &str) -> Result<(), InputError> {
    if name.len() > limits::NAME_MAX {
        return Err(input(
            true,
            format!(
                "name: {} bytes long; the limit is {}",
                name.len(),
                limits::NAME_MAX
            ),
        ));
    }
    let ok_first = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_rest = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !(ok_first && ok_rest) {
        return Err(input(
            false,
            format!(
                "name: {name:?} must be 1 to {} characters of A-Z a-z 0-9 . _ -, starting with a letter or digit",
                limits::NAME_MAX
            ),
        ));
    }
    Ok(())
}

/// Checks caller-owned metadata: at most [`limits::METADATA_ENTRIES`] entries, keys of 1 to
/// [`limits::METADATA_KEY_MAX`] bytes without control characters, values up to
/// [`limits::METADATA_VALUE_MAX`] bytes.
pub fn validate_metadata(metadata: &BTreeMap<String, String>) -> Result<(), InputError> {
    if metadata.len() > limits::METADATA_ENTRIES {
        return Err(input(
            true,
            format!(
                "metadata: {} entries; the limit is {}",
                metadata.len(),
                limits::METADATA_ENTRIES
            ),
        ));
    }
    for (k, v) in metadata {
        if k.len() > limits::METADATA_KEY_MAX {
            return Err(input(
                true,
                format!(
                    "metadata: a key is {} bytes long; the limit is {}",
                    k.len(),
                    limits::METADATA_KEY_MAX
                ),
            ));
        }
        if k.is_empty() || k.chars().any(char::is_control) {
            return Err(input(
                false,
                format!("metadata: invalid key {k:?} (empty, or with control characters)"),
            ));
        }
        if v.len() > limits::METADATA_VALUE_MAX {
            return Err(input(
                true,
                format!(
                    "metadata.{k}: value is {} bytes long; the limit is {}",
                    v.len(),
                    limits::METADATA_VALUE_MAX
                ),
            ));
        }
    }
    Ok(())
}

impl MachineConfig {
    /// A config that runs `cmd` with every other field at its default.
    pub fn command<I, S>(cmd: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            cmd: cmd.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
            workdir: None,
            restart: RestartConfig::default(),
            stop: StopConfig::default(),
            resources: ResourceLimits::default(),
            image: None,
            user: None,
            mounts: Vec::new(),
            files: Vec::new(),
            network: None,
            checks: BTreeMap::new(),
        }
    }

    /// Checks every bound that does not depend on the host, and normalizes signal names.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        self.validate_cmd()?;
        self.validate_env()?;
        self.validate_workdir()?;
        self.validate_stop_and_restart()?;
        self.validate_resources()?;
        if let Some(image) = &self.image {
            crate::image_ref::validate_image_ref(image).map_err(|e| {
                if image.len() > crate::image_ref::IMAGE_REF_MAX {
                    too_large("image", e)
                } else {
                    bad("image", e)
                }
            })?;
        }
        self.validate_checks()?;
        self.validate_workload()
    }

    fn validate_cmd(&self) -> Result<(), ConfigError> {
        let cmd_defaults_to_image = self.cmd.is_empty() && self.image.is_some();
        if !cmd_defaults_to_image && self.cmd.first().is_none_or(String::is_empty) {
            return Err(bad(
                "cmd",
                "must name a program (a non-empty array of strings), unless an image gives the default",
            ));
        }
        over_limit("cmd", "arguments", self.cmd.len(), limits::CMD_ARGS)?;
        let cmd_bytes: usize = self.cmd.iter().map(String::len).sum();
        over_limit("cmd", "bytes of arguments", cmd_bytes, limits::CMD_BYTES)?;
        if let Some(i) = self.cmd.iter().position(|a| a.contains('\0')) {
            return Err(bad("cmd", format!("argument {i} contains a NUL byte")));
        }
        Ok(())
    }

    fn validate_env(&self) -> Result<(), ConfigError> {
        over_limit("env", "variables", self.env.len(), limits::ENV_ENTRIES)?;
        let mut env_bytes = 0;
        for (k, v) in &self.env {
            if k.len() > limits::ENV_KEY_MAX {
                return Err(too_large(
                    "env",
                    format!(
                        "a variable name is {} bytes long; the limit is {}",
                        k.len(),
                        limits::ENV_KEY_MAX
                    ),
                ));
            }
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(bad("env", format!("invalid variable name {k:?}")));
            }
            if v.len() > limits::ENV_VALUE_MAX {
                return Err(too_large(
                    &format!("env.{k}"),
                    format!(
                        "value is {} bytes long; the limit is {}",
                        v.len(),
                        limits::ENV_VALUE_MAX
                    ),
                ));
            }
            if v.contains('\0') {
                return Err(bad("env", format!("value of {k} contains a NUL byte")));
            }
            env_bytes += k.len() + v.len();
        }
        over_limit("env", "bytes in all", env_bytes, limits::ENV_BYTES)
    }

    fn validate_workdir(&self) -> Result<(), ConfigError> {
        let Some(w) = &self.workdir else {
            return Ok(());
        };
        if w.len() > limits::WORKDIR_MAX {
            return Err(too_large(
                "workdir",
                format!(
                    "{} bytes long; the limit is {}",
                    w.len(),
                    limits::WORKDIR_MAX
                ),
            ));
        }
        if !w.starts_with('/') || w.contains('\0') {
            return Err(bad("workdir", format!("{w:?} must be an absolute path")));
        }
        Ok(())
    }

    fn validate_stop_and_restart(&mut self) -> Result<(), ConfigError> {
        self.stop.signal = normalize_signal(&self.stop.signal)
            .map_err(|e| bad("stop.signal", e))?
            .to_owned();
        if self.stop.timeout.0 > Duration::from_secs(24 * 3600) {
            return Err(bad("stop.timeout", "must be at most 24h"));
        }
        if self.restart.max_retries.is_some() && self.restart.policy != RestartPolicy::OnFailure {
            return Err(bad(
                "restart.max_retries",
                "only applies to the on-failure policy",
            ));
        }
        Ok(())
    }

    fn validate_resources(&self) -> Result<(), ConfigError> {
        let r = &self.resources;
        if r.memory_mb == Some(0) {
            return Err(bad("resources.memory_mb", "must be at least 1"));
        }
        if let Some(c) = r.cpus
            && !(c.is_finite() && c > 0.0 && c <= 4096.0)
        {
            return Err(bad("resources.cpus", "must be a number of cores above 0"));
        }
        if r.pids == Some(0) {
            return Err(bad("resources.pids", "must be at least 1"));
        }
        Ok(())
    }

    fn validate_checks(&self) -> Result<(), ConfigError> {
        over_limit("checks", "checks", self.checks.len(), limits::CHECKS)?;
        for (name, c) in &self.checks {
            validate_check(name, c)?;
        }
        Ok(())
    }

    fn validate_workload(&self) -> Result<(), ConfigError> {
        if let Some(u) = &self.user {
            crate::workload::validate_user(u)?;
        }
        crate::workload::validate_mounts(&self.mounts)?;
        crate::workload::validate_files(&self.files)?;
        if self.image.is_none() {
            let only_for_images = [
                ("mounts", !self.mounts.is_empty()),
                ("files", !self.files.is_empty()),
                ("network", self.network.is_some()),
            ];
            if let Some((field, _)) = only_for_images.iter().find(|(_, set)| *set) {
                return Err(bad(field, "only applies to machines with an image"));
            }
        }
        Ok(())
    }
}

fn validate_check(name: &str, c: &CheckConfig) -> Result<(), ConfigError> {
    validate_check_name(name)?;
    let field = |f: &str| format!("checks.{name}.{f}");
    match c.kind {
        CheckType::Http | CheckType::Tcp => {
            if c.port.is_none_or(|p| p == 0) {
                return Err(bad(
                    &field("port"),
                    "required for an http or tcp check (1-65535)",
                ));
            }
            if !c.command.is_empty() {
                return Err(bad(&field("command"), "only an exec check has a command"));
            }
        }
        CheckType::Exec => validate_exec_check(c, &field)?,
    }
    if let Some(p) = &c.path {
        validate_check_path(c, p, &field)?;
    }
    validate_check_timing(c, &field)
}

fn validate_check_name(name: &str) -> Result<(), ConfigError> {
    let ok_name = !name.is_empty()
        && name.len() <= limits::CHECK_NAME_MAX
        && name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'));
    if ok_name {
        return Ok(());
    }
    Err(bad(
        "checks",
        format!(
            "invalid check name {:?}: 1 to {} characters of A-Z a-z 0-9 . _ -",
            name.chars()
                .take(limits::CHECK_NAME_MAX)
                .collect::<String>(),
            limits::CHECK_NAME_MAX
        ),
    ))
}

fn validate_exec_check(c: &CheckConfig, field: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    if c.command.first().is_none_or(String::is_empty) {
        return Err(bad(
            &field("command"),
            "an exec check must name a program (a non-empty array of strings)",
        ));
    }
    if c.command.len() > limits::CMD_ARGS
        || c.command.iter().map(String::len).sum::<usize>() > limits::CMD_BYTES
    {
        return Err(too_large(&field("command"), "over the limits of cmd"));
    }
    if c.command.iter().any(|a| a.contains('\0')) {
        return Err(bad(&field("command"), "an argument contains a NUL byte"));
    }
    if c.port.is_some() {
        return Err(bad(&field("port"), "an exec check has no port"));
    }
    Ok(())
}

fn validate_check_path(
    c: &CheckConfig,
    p: &str,
    field: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    if c.kind != CheckType::Http {
        return Err(bad(&field("path"), "only an http check has a path"));
    }
    if p.len() > limits::CHECK_PATH_MAX {
        return Err(too_large(
            &field("path"),
            format!("{} bytes; the limit is {}", p.len(), limits::CHECK_PATH_MAX),
        ));
    }
    if !p.starts_with('/') || p.chars().any(|ch| ch.is_control() || ch == ' ') {
        return Err(bad(
            &field("path"),
            "must start with / and hold no spaces or control characters",
        ));
    }
    Ok(())
}

fn validate_check_timing(
    c: &CheckConfig,
    field: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    let (interval, timeout) = (c.interval.0, c.timeout.0);
    if interval < Duration::from_millis(100) || interval > Duration::from_secs(24 * 3600) {
        return Err(bad(&field("interval"), "must be between 100ms and 24h"));
    }
    if timeout < Duration::from_millis(10) || timeout > interval {
        return Err(bad(
            &field("timeout"),
            "must be at least 10ms and at most the interval",
        ));
    }
    if c.grace_period.0 > Duration::from_secs(24 * 3600) {
        return Err(bad(&field("grace_period"), "must be at most 24h"));
    }
    if c.failures == 0 || c.failures > 1000 {
        return Err(bad(&field("failures"), "must be between 1 and 1000"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<MachineConfig, String> {
        let mut c: MachineConfig = serde_json::from_str(json).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn defaults_and_normalization() {
        let c = parse(r#"{"cmd":["/bin/sleep","10"],"stop":{"signal":"int"}}"#).unwrap();
        assert_eq!(c.stop.signal, "SIGINT");
        assert_eq!(c.stop.timeout.0, Duration::from_secs(10));
        assert_eq!(c.restart.policy, RestartPolicy::No);
    }

    #[test]
    fn an_image_machine_may_leave_cmd_to_the_image() {
        let c = parse(r#"{"image":"oci:/srv/images/app:v1"}"#).unwrap();
        assert!(c.cmd.is_empty());
        assert_eq!(c.image.as_deref(), Some("oci:/srv/images/app:v1"));
        let c = parse(r#"{"image":"oci:/srv/app","cmd":["/bin/sh"]}"#).unwrap();
        assert_eq!(c.cmd, ["/bin/sh"]);
        // Serialized without an image, a config reads back exactly as before.
        let json = serde_json::to_string(&MachineConfig::command(["x"])).unwrap();
        assert!(!json.contains("image"), "{json}");
    }

    #[test]
    fn precise_errors() {
        let cases = [
            (r#"{"cmd":[]}"#, "config.cmd"),
            (r#"{"cmd":["x"],"bogus":1}"#, "unknown field `bogus`"),
            (
                r#"{"cmd":["x"],"stop":{"signal":"SIGNOPE"}}"#,
                "config.stop.signal",
            ),
            (
                r#"{"cmd":["x"],"stop":{"timeout":"soon"}}"#,
                "invalid duration",
            ),
            (r#"{"cmd":["x"],"workdir":"rel"}"#, "config.workdir"),
            (
                r#"{"cmd":["x"],"resources":{"cpus":0}}"#,
                "config.resources.cpus",
            ),
            (
                r#"{"cmd":["x"],"restart":{"policy":"sometimes"}}"#,
                "unknown variant",
            ),
            (r#"{"cmd":["x"],"env":{"A=B":"c"}}"#, "config.env"),
            (r#"{"cmd":["x"],"image":"oci:rel/path"}"#, "config.image"),
            (r#"{"cmd":["x"],"image":"busybox"}"#, "config.image"),
            (
                r#"{"cmd":["x"],"checks":{"web":{"type":"http"}}}"#,
                "config.checks.web.port",
            ),
            (
                r#"{"cmd":["x"],"checks":{"web":{"type":"tcp","port":80,"interval":"1s","timeout":"5s"}}}"#,
                "config.checks.web.timeout",
            ),
            (
                r#"{"cmd":["x"],"checks":{"run":{"type":"exec","command":[]}}}"#,
                "config.checks.run.command",
            ),
            (
                r#"{"cmd":["x"],"checks":{"web":{"type":"http","port":80,"failures":0}}}"#,
                "config.checks.web.failures",
            ),
            (
                r#"{"cmd":["x"],"checks":{"web":{"type":"http","port":80,"path":"x y"}}}"#,
                "config.checks.web.path",
            ),
            (
                r#"{"cmd":["x"],"checks":{"a b":{"type":"tcp","port":80}}}"#,
                "config.checks",
            ),
            (r#"{}"#, "config.cmd"),
            (r#"{"cmd":[""],"image":"oci:/srv/app"}"#, "config.cmd"),
        ];
        for (json, want) in cases {
            let err = parse(json).unwrap_err();
            assert!(err.contains(want), "{json}: {err}");
        }
    }
}

#[cfg(test)]
mod bounds {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_bound_names_its_field_and_limit() {
        let big = |n: usize| "x".repeat(n);
        let mut c = MachineConfig::command(["x"]);
        c.cmd = vec!["x".into(); limits::CMD_ARGS + 1];
        let e = c.validate().unwrap_err();
        assert!(e.too_large && e.field == "cmd", "{e}");
        assert!(e.to_string().contains("1024"), "{e}");

        let mut c = MachineConfig::command([big(limits::CMD_BYTES + 1)]);
        assert!(c.validate().unwrap_err().too_large);

        let mut c = MachineConfig::command(["x"]);
        c.env.insert("K".into(), big(limits::ENV_VALUE_MAX + 1));
        let e = c.validate().unwrap_err();
        assert!(e.too_large && e.field == "env.K", "{e}");

        let mut c = MachineConfig::command(["x"]);
        for i in 0..=limits::ENV_ENTRIES {
            c.env.insert(format!("K{i}"), String::new());
        }
        assert!(c.validate().unwrap_err().too_large);

        let mut c = MachineConfig::command(["x"]);
        c.env.insert(big(limits::ENV_KEY_MAX + 1), String::new());
        assert!(c.validate().unwrap_err().too_large);

        let mut c = MachineConfig::command(["x"]);
        c.workdir = Some(format!("/{}", big(limits::WORKDIR_MAX)));
        assert!(c.validate().unwrap_err().too_large);

        // Right at the limits, everything passes.
        let mut c = MachineConfig::command([big(1000)]);
        c.env
            .insert(big(limits::ENV_KEY_MAX), big(limits::ENV_VALUE_MAX));
        c.validate().unwrap();

        let mut c = MachineConfig::command(["x"]);
        c.image = Some(format!("oci:/{}", big(crate::image_ref::IMAGE_REF_MAX)));
        let e = c.validate().unwrap_err();
        assert!(e.too_large && e.field == "image", "{e}");
        assert!(
            e.to_string().len() < 300,
            "a huge image reference is not echoed back"
        );
        c.image = Some("oci:/srv/images/app:v1".to_owned());
        c.validate().unwrap();

        let e = normalize_signal(&big(1 << 20)).unwrap_err();
        assert!(
            e.len() < 300,
            "a huge signal name is not echoed back: {} bytes",
            e.len()
        );
        assert_eq!(normalize_signal("term").unwrap(), "SIGTERM");
    }

    #[test]
    fn names_and_metadata() {
        validate_name("web-1.prod_a").unwrap();
        validate_name(&"a".repeat(limits::NAME_MAX)).unwrap();
        assert!(
            validate_name(&"a".repeat(limits::NAME_MAX + 1))
                .unwrap_err()
                .too_large
        );
        for bad in ["", "-x", "a b", "a/b", "é", "a\n"] {
            let e = validate_name(bad).unwrap_err();
            assert!(
                !e.too_large && e.message.starts_with("name:"),
                "{bad:?}: {e}"
            );
        }
        let mut m = BTreeMap::new();
        m.insert("k".to_owned(), "x".repeat(limits::METADATA_VALUE_MAX + 1));
        let e = validate_metadata(&m).unwrap_err();
        assert!(e.too_large && e.message.contains("metadata.k"), "{e}");
        let m: BTreeMap<String, String> = (0..=limits::METADATA_ENTRIES)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        assert!(validate_metadata(&m).unwrap_err().too_large);
        let mut m = BTreeMap::new();
        m.insert("a\u{7}".to_owned(), String::new());
        assert!(!validate_metadata(&m).unwrap_err().too_large);
    }
}
