//! `GET /v1/machines/{id}/logs`: a machine's output as text (the default, compatible with the
//! first version of the route) or as NDJSON records, from its last lines or a time on, and
//! followed until the machine stops, or until berthd stops (the client resumes with `after`).

use std::time::SystemTime;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use berth_agent::{FollowEnd, LogFollower, LogSelect, LogText};
use berth_api_types::{LogFormat, LogLine, LogStream, LogsQuery, MAX_LOG_TAIL};
use berth_types::Timestamp;
use berth_types::time::HumanDuration;
use futures_util::StreamExt;

use crate::error::{ApiError, ApiResult};
use crate::extract::{Query, QueryRejection, parse_id, query};
use crate::server::Lane;

/// Lines `GET /v1/machines/{id}/logs` returns without `tail` (and without `since`/`after`).
const TAIL_DEFAULT: usize = 100;
const TEXT: (&str, &str) = ("content-type", "text/plain; charset=utf-8");
const NDJSON: (&str, &str) = ("content-type", "application/x-ndjson");

/// `since`: an RFC 3339 time, or a duration before now; as an exclusive cursor.
fn since_cursor(since: &str) -> ApiResult<Timestamp> {
    let at = match humantime::parse_rfc3339_weak(since.trim()) {
        Ok(t) => t,
        Err(_) => {
            let ago = HumanDuration::parse(since).map_err(|_| {
                ApiError::invalid(format!(
                    "since: {since:?} is neither an RFC 3339 time nor a duration such as \"10m\""
                ))
            })?;
            SystemTime::now()
                .checked_sub(ago.0)
                .unwrap_or(SystemTime::UNIX_EPOCH)
        }
    };
    Ok(Timestamp::from_nanos(
        Timestamp::from_system_time(at).as_nanos().saturating_sub(1),
    ))
}

fn select(q: &LogsQuery) -> ApiResult<LogSelect> {
    let since = q.since.as_deref().map(since_cursor).transpose()?;
    let after = match (since, q.after) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let tail = match q.tail {
        Some(t) if t > MAX_LOG_TAIL => {
            return Err(ApiError::invalid(format!(
                "tail must be a number of lines from 0 to {MAX_LOG_TAIL}, not {t}"
            )));
        }
        Some(t) => Some(t),
        None if after.is_some() => None,
        None => Some(TAIL_DEFAULT),
    };
    Ok(LogSelect { after, tail })
}

pub(crate) async fn logs(
    State(lane): State<Lane>,
    Path(id): Path<String>,
    q: Result<Query<LogsQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let q = query(q)?;
    let (initial, follower) = lane.agent().read_logs(&id, select(&q)?)?;
    let mut text = LogText::new(q.timestamps);
    match (q.format, q.follow) {
        (LogFormat::Text, false) => Ok(([TEXT], text.render(&initial)).into_response()),
        (LogFormat::Ndjson, false) => Ok(([NDJSON], ndjson(&initial)).into_response()),
        (LogFormat::Text, true) => {
            let first = Bytes::from(text.render(&initial));
            let body = follow(follower, first, move |chunk| match chunk {
                Ok(lines) => Some(text.render(&lines)),
                Err(_) => None,
            });
            Ok(([TEXT], body).into_response())
        }
        (LogFormat::Ndjson, true) => {
            let first = Bytes::from(ndjson(&initial));
            let body = follow(follower, first, |chunk| match chunk {
                Ok(lines) => Some(ndjson(&lines)),
                Err(FollowEnd::Stopped(state)) => Some(ndjson(&[LogLine {
                    at: None,
                    stream: LogStream::End,
                    text: state,
                    partial: false,
                }])),
                Err(FollowEnd::Interrupted) => None,
            });
            Ok(([NDJSON], body).into_response())
        }
    }
}

fn ndjson(lines: &[LogLine]) -> String {
    let mut out = String::new();
    for l in lines {
        if let Ok(s) = serde_json::to_string(l) {
            out.push_str(&s);
            out.push('\n');
        }
    }
    out
}

/// A body: `first`, then what `render` makes of each step of the follower, until it ends (the
/// rendering of the end, if any, is the last chunk).
fn follow(
    follower: LogFollower,
    first: Bytes,
    render: impl FnMut(Result<Vec<LogLine>, FollowEnd>) -> Option<String> + Send + 'static,
) -> Body {
    let head = futures_util::stream::once(async move { Ok::<_, std::io::Error>(first) });
    let rest = futures_util::stream::unfold(
        (Some(follower), render),
        |(follower, mut render)| async move {
            let mut f = follower?;
            let step = f.next().await;
            let ended = step.is_err();
            let chunk = render(step)?;
            let next = if ended { None } else { Some(f) };
            Some((Ok(Bytes::from(chunk)), (next, render)))
        },
    );
    Body::from_stream(head.chain(rest))
}
