//! Parsing a request's parts: the machine id of the path, JSON bodies, typed query strings and
//! the lease header. A malformed part is a 400 `invalid` naming what is wrong.

use axum::body::Bytes;
use axum::extract::Query;
use axum::extract::rejection::{BytesRejection, QueryRejection};
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
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

/// Parses an optional JSON body (empty means all defaults).
pub(crate) fn parse_optional<T: DeserializeOwned + Default>(
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<T> {
    let bytes = body_bytes(body)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

/// A typed query string: a key the route does not take, or a value of the wrong type, is a 400
/// `invalid` (serde's message names an unknown key).
pub(crate) fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(t)| t).map_err(|r| {
        let text = r.body_text();
        let text = text
            .strip_prefix("Failed to deserialize query string: ")
            .unwrap_or(&text);
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
