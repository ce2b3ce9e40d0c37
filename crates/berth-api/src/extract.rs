//! Parsing a request's parts: the machine id of the path, JSON bodies, typed query strings and
//! the lease header. A malformed part is a 400 `invalid` naming what is wrong.

use axum::body::Bytes;
use axum::extract::FromRequestParts;
use axum::extract::rejection::BytesRejection;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use berth_api_types::LEASE_HEADER;
use berth_types::MachineId;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ApiResult};

pub(crate) fn parse_id(raw: &str) -> ApiResult<MachineId> {
    MachineId::parse(raw).map_err(|e| ApiError::invalid(format!("invalid machine id {raw:?}: {e}")))
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("request body over {} bytes", crate::server::MAX_BODY),
            )
        } else {
            ApiError::invalid(r.body_text())
        }
    })
}

/// Parses a required JSON body.
pub(crate) fn parse_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> ApiResult<T> {
    let bytes = body_bytes(body)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid("a JSON body is required"));
    }
    from_json(&bytes)
}

/// Deserializes a JSON body; a value of the wrong type or shape is reported with the field it
/// was given for (`invalid JSON body: config.network: unknown variant ...`).
fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path.is_empty() || path == "." {
            ApiError::invalid(format!("invalid JSON body: {}", e.inner()))
        } else {
            ApiError::invalid(format!("invalid JSON body: {path}: {}", e.inner()))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))?;
    Ok(value)
}

/// Parses an optional JSON body (empty means all defaults).
pub(crate) fn parse_optional<T: DeserializeOwned + Default>(
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<T> {
    let bytes = body_bytes(body)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    from_json(&bytes)
}

/// A typed query string. Unlike axum's `Query`, a value that does not parse is reported with the
/// key it was given for (`after: invalid digit found in string`), found by `serde_path_to_error`.
pub(crate) struct Query<T>(pub(crate) T);

/// Why a query string did not parse, in words that name the key.
pub(crate) struct QueryRejection(String);

impl axum::response::IntoResponse for QueryRejection {
    fn into_response(self) -> axum::response::Response {
        match query::<()>(Err(self)) {
            Ok(()) => StatusCode::BAD_REQUEST.into_response(),
            Err(e) => e.into_response(),
        }
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = QueryRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parse_query(parts.uri.query().unwrap_or_default()).map(Query)
    }
}

/// Parses a raw query string (without the `?`) into `T`.
pub(crate) fn parse_query<T: DeserializeOwned>(raw: &str) -> Result<T, QueryRejection> {
    let pairs = form_urlencoded::parse(raw.as_bytes());
    serde_path_to_error::deserialize(serde_urlencoded::Deserializer::new(pairs)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        QueryRejection(if path == "." || path.is_empty() {
            inner
        } else {
            format!("{path}: {inner}")
        })
    })
}

/// A typed query string: a key the route does not take, or a value of the wrong type, is a 400
/// `invalid` naming the key.
pub(crate) fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(t)| t).map_err(|QueryRejection(text)| {
        ApiError::invalid(format!(
            "invalid query string: {}",
            text.chars().take(256).collect::<String>()
        ))
    })
}

/// The lease nonce a request carries, if any.
pub(crate) fn lease_nonce(headers: &HeaderMap) -> Option<&str> {
    headers.get(LEASE_HEADER).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use berth_api_types::{EventsQuery, LogsQuery, MachineListQuery, WaitQuery};

    use super::*;

    fn err<T: DeserializeOwned>(raw: &str) -> String {
        match parse_query::<T>(raw) {
            Ok(_) => panic!("{raw:?} parsed"),
            Err(QueryRejection(text)) => text,
        }
    }

    #[test]
    fn a_value_that_does_not_parse_names_its_key() {
        let text = err::<EventsQuery>("after=minus");
        assert!(text.starts_with("after: "), "{text}");
        let text = err::<EventsQuery>("after=1&limit=abc");
        assert!(text.starts_with("limit: "), "{text}");
        let text = err::<LogsQuery>("tail=");
        assert!(text.starts_with("tail: "), "{text}");
    }

    #[test]
    fn an_unknown_state_is_refused_in_words_listing_the_states() {
        let text = err::<WaitQuery>("state=sleeping");
        assert!(
            text.starts_with("state: unknown state \"sleeping\""),
            "{text}"
        );
        assert!(text.contains("stopped"), "{text}");
        let text = err::<MachineListQuery>("state=bogus");
        assert!(text.starts_with("state: unknown state"), "{text}");
        assert!(parse_query::<MachineListQuery>("state=started").is_ok());
    }

    #[test]
    fn an_unknown_key_is_named() {
        let text = err::<EventsQuery>("afterr=1");
        assert!(text.contains("`afterr`"), "{text}");
    }

    #[test]
    fn good_queries_parse() {
        let q: EventsQuery = parse_query("after=7&limit=3").unwrap_or_default();
        assert_eq!((q.after, q.limit), (7, Some(3)));
        assert!(parse_query::<EventsQuery>("").is_ok_and(|q| q == EventsQuery::default()));
    }
}
