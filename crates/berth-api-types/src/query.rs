//! Query strings. Each route's keys are closed (an unknown key is refused, naming it), except
//! `metadata.KEY=VALUE` on the machine list, which the server collects into
//! [`MachineListQuery::metadata`] itself.

use std::collections::BTreeMap;

use berth_types::State;
use berth_types::time::HumanDuration;
use serde::{Deserialize, Serialize};

/// `GET /v1/machines?...`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineListQuery {
    /// Only machines in this state.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_state_words"
    )]
    pub state: Option<State>,
    /// Include destroyed machines.
    #[serde(default)]
    pub include_destroyed: bool,
    /// At most this many (1 to [`crate::MAX_PAGE_LIMIT`]); without it, every match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// The `berth-next-cursor` of the previous page (needs `limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// `metadata.KEY=VALUE` pairs: every one must match. Not a key of its own on the wire.
    #[serde(skip)]
    pub metadata: BTreeMap<String, String>,
}

/// `DELETE /v1/machines/{id}?force=`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestroyQuery {
    /// Destroy a running machine, killing it first.
    #[serde(default)]
    pub force: bool,
}

/// `GET /v1/machines/{id}/wait?state=&timeout=&healthy=`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// The state to wait for.
    #[serde(deserialize_with = "state_words")]
    pub state: State,
    /// How long to wait (default 30s, at most 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Also wait until every health check passes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub healthy: bool,
}

/// `GET /v1/machines/{id}/logs?tail=&follow=&since=&after=&timestamps=&format=`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Lines from the end (default 100; with `since` or `after`, every line after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<usize>,
    /// Keep the response open and send new output as it is written, until the machine stops.
    #[serde(default)]
    pub follow: bool,
    /// Only lines written at or after this: an RFC 3339 time, or a duration ago (`10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Only lines written strictly after this RFC 3339 time (a [`crate::LogLine`]'s `at`): how
    /// a follow resumes without repeating a line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<berth_types::Timestamp>,
    /// Text: put each line's time before it.
    #[serde(default)]
    pub timestamps: bool,
    /// `text` (default) or `ndjson`.
    #[serde(default)]
    pub format: crate::LogFormat,
}

/// `GET /v1/events?after=&limit=&wait=`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Events with a seq above this (default 0).
    #[serde(default)]
    pub after: u64,
    /// At most this many (default 100, clamped to 1..=1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Long-poll: wait up to this long (at most 60s) for an event when none is there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<HumanDuration>,
}

/// `POST /v1/host/reconcile?approve=`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileQuery {
    /// Override the blast-radius guard for this pass.
    #[serde(default)]
    pub approve: bool,
}

/// A state as a query value, refused in `State::from_str`'s words ("unknown state \"x\"; expected
/// one of ...") rather than serde's variant list.
fn state_words<'de, D: serde::Deserializer<'de>>(d: D) -> Result<State, D::Error> {
    let s = <std::borrow::Cow<'de, str> as Deserialize>::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

fn optional_state_words<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<State>, D::Error> {
    state_words(d).map(Some)
}
