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

/// Normalizes a signal name (`TERM`, `sigterm`, `SIGTERM` → `SIGTERM`), or says why it is not one.
pub fn normalize_signal(name: &str) -> Result<&'static str, String> {
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
    /// Program and arguments; required and non-empty.
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
}

fn bad(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_owned(),
        reason: reason.into(),
    }
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
        }
    }

    /// Checks every bound that does not depend on the host, and normalizes signal names.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        if self.cmd.is_empty() || self.cmd[0].is_empty() {
            return Err(bad(
                "cmd",
                "must name a program (a non-empty array of strings)",
            ));
        }
        if let Some(arg) = self.cmd.iter().find(|a| a.contains('\0')) {
            return Err(bad("cmd", format!("argument {arg:?} contains a NUL byte")));
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(bad("env", format!("invalid variable name {k:?}")));
            }
            if v.contains('\0') {
                return Err(bad("env", format!("value of {k} contains a NUL byte")));
            }
        }
        if let Some(w) = &self.workdir
            && !w.starts_with('/')
        {
            return Err(bad("workdir", format!("{w:?} must be an absolute path")));
        }
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
        ];
        for (json, want) in cases {
            let err = parse(json).unwrap_err();
            assert!(err.contains(want), "{json}: {err}");
        }
    }
}
