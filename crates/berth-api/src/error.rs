//! API errors: every failure becomes `{"error", "code"}` with the right status.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_api_types::ErrorBody;
use berth_machine::{AdmissionError, LeaseError, OpError};
use berth_store::StoreError;

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code.
    pub code: &'static str,
    /// Human message.
    pub message: String,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    /// 400 `invalid`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", message)
    }
    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    /// 409 `conflict`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    /// 429 `overloaded`.
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", message)
    }
    /// 500 `internal`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::from(&e)
    }
}

impl From<&StoreError> for ApiError {
    fn from(e: &StoreError) -> Self {
        let msg = e.to_string();
        match e {
            StoreError::Expired { .. } => Self::new(StatusCode::GONE, "expired", msg),
            StoreError::CompactionRunning { .. } => Self::conflict(msg),
            StoreError::NoSpace { .. } => Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient_storage",
                msg,
            ),
            StoreError::NotFound(_) | StoreError::OperationNotFound(_) => Self::not_found(msg),
            StoreError::AlreadyExists(_)
            | StoreError::IllegalTransition { .. }
            | StoreError::VersionMismatch { .. }
            | StoreError::Busy { .. } => Self::conflict(msg),
            StoreError::Overloaded { .. } => Self::overloaded(msg),
            StoreError::Closed | StoreError::Poisoned(_) | StoreError::CommitFailed(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", msg)
            }
            _ => Self::internal(msg),
        }
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Store(s) => s.into(),
            OpError::Invalid(m) => Self::invalid(m),
            OpError::TooLarge(m) => Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", m),
            OpError::Admission(a) => {
                let msg = a.to_string();
                match a {
                    AdmissionError::IdempotencyMismatch { .. } => Self::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "idempotency_mismatch",
                        msg,
                    ),
                    AdmissionError::LimitReached { .. } | AdmissionError::NameTaken { .. } => {
                        Self::conflict(msg)
                    }
                }
            }
            OpError::Lease(l) => {
                let msg = l.to_string();
                match l {
                    LeaseError::Required(_) => {
                        Self::new(StatusCode::CONFLICT, "lease_required", msg)
                    }
                    LeaseError::Mismatch(_) => {
                        Self::new(StatusCode::CONFLICT, "lease_mismatch", msg)
                    }
                    LeaseError::NotHeld(_) => Self::not_found(msg),
                    LeaseError::Held { .. } | LeaseError::Destroyed(_) => Self::conflict(msg),
                }
            }
            other => Self::internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
            code: self.code.to_owned(),
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS
            || self.status == StatusCode::SERVICE_UNAVAILABLE
        {
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
        }
        resp
    }
}

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;
