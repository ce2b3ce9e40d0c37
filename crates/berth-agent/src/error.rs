//! The agent's command errors: what went wrong, classified for any front end (the HTTP API maps
//! each kind to a status and a code), so no front end needs the store's or the machine layer's
//! error types.

use berth_machine::{AdmissionError, LeaseError, OpError};
use berth_store::StoreError;

/// What kind of failure a command met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or out of bounds: nothing was recorded.
    Invalid,
    /// No such machine, operation or lease.
    NotFound,
    /// The request conflicts with the machine's or the host's state.
    Conflict,
    /// The machine is leased and the request carried no nonce.
    LeaseRequired,
    /// The request carried another lease's nonce.
    LeaseMismatch,
    /// An update named a config version that is no longer current.
    VersionMismatch,
    /// An Idempotency-Key was reused for a different request.
    IdempotencyMismatch,
    /// The host is cordoned: it accepts no new machines.
    Cordoned,
    /// The request carries more than a limit allows.
    TooLarge,
    /// The event-log cursor is older than what retention kept.
    Expired,
    /// The disk is full.
    InsufficientStorage,
    /// Too much is queued: retry shortly.
    Overloaded,
    /// The store cannot write now (closed, or recovering from a failed commit).
    Unavailable,
    /// A wait ran out of time.
    Timeout,
    /// An upstream the request needs (an image registry) failed: nothing was recorded.
    BadGateway,
    /// Anything else.
    Internal,
}

/// A command's failure: its kind and a sentence for a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CommandError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What happened, for a person.
    pub message: String,
}

/// A command's result.
pub type CommandResult<T> = Result<T, CommandError>;

impl CommandError {
    /// A new error.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
    /// [`ErrorKind::Invalid`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }
    /// [`ErrorKind::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    /// [`ErrorKind::Conflict`].
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }
    /// [`ErrorKind::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}

impl From<StoreError> for CommandError {
    fn from(e: StoreError) -> Self {
        Self::from(&e)
    }
}

impl From<&StoreError> for CommandError {
    fn from(e: &StoreError) -> Self {
        let kind = match e {
            StoreError::Expired { .. } => ErrorKind::Expired,
            StoreError::CompactionRunning { .. } => ErrorKind::Conflict,
            StoreError::NoSpace { .. } => ErrorKind::InsufficientStorage,
            StoreError::NotFound(_)
            | StoreError::OperationNotFound(_)
            | StoreError::NoConfigVersion { .. } => ErrorKind::NotFound,
            StoreError::ConfigVersionMismatch { .. } => ErrorKind::VersionMismatch,
            StoreError::AlreadyExists(_)
            | StoreError::IllegalTransition { .. }
            | StoreError::VersionMismatch { .. }
            | StoreError::Busy { .. } => ErrorKind::Conflict,
            StoreError::Overloaded { .. } => ErrorKind::Overloaded,
            StoreError::Closed
            | StoreError::Poisoned(_)
            | StoreError::CommitFailed(_)
            | StoreError::Verifying
            | StoreError::HistoryDamaged { .. } => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        };
        Self::new(kind, e.to_string())
    }
}

impl From<OpError> for CommandError {
    fn from(e: OpError) -> Self {
        let msg = e.to_string();
        let kind = match e {
            OpError::Store(s) => return s.into(),
            OpError::Invalid(_) => ErrorKind::Invalid,
            OpError::TooLarge(_) => ErrorKind::TooLarge,
            OpError::Registry(_) => ErrorKind::BadGateway,
            OpError::Admission(AdmissionError::IdempotencyMismatch { .. }) => {
                ErrorKind::IdempotencyMismatch
            }
            OpError::Admission(
                AdmissionError::LimitReached { .. } | AdmissionError::NameTaken { .. },
            ) => ErrorKind::Conflict,
            OpError::Lease(LeaseError::Required(_)) => ErrorKind::LeaseRequired,
            OpError::Lease(LeaseError::Mismatch(_)) => ErrorKind::LeaseMismatch,
            OpError::Lease(LeaseError::NotHeld(_)) => ErrorKind::NotFound,
            OpError::Lease(LeaseError::Held { .. } | LeaseError::Destroyed(_)) => {
                ErrorKind::Conflict
            }
            _ => ErrorKind::Internal,
        };
        Self::new(kind, msg)
    }
}
