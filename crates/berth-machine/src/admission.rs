//! Admission of a create: bounded input, the machine limit, unique names and Idempotency-Keys,
//! all decided inside the store write that records the machine (see `berth_store::admission`).

use std::collections::BTreeMap;
use std::time::Duration;

use berth_store::admission::{IDEMPOTENCY_DIGEST_LABEL, IDEMPOTENCY_KEY_LABEL};
use berth_types::config::{InputError, limits, validate_metadata, validate_name};
use berth_types::{MachineId, MachineRecord, OperationRecord};

use crate::runner::{CreateRequest, OpError};

/// How a create is admitted, beyond the request itself.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    /// Most machines (not destroyed) on the host; `None`: no limit.
    pub max_machines: Option<usize>,
    /// The caller's Idempotency-Key: a create with a key used within its TTL returns the
    /// machine that key made (if the request is the same) instead of making another.
    pub idempotency_key: Option<String>,
}

/// Why a create was refused at admission (nothing was recorded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    /// The host runs its limit of machines.
    #[error("this host runs its limit of {max} machines (limits.max_machines)")]
    LimitReached {
        /// The limit.
        max: usize,
    },
    /// Another machine that is not destroyed has this name.
    #[error("name {name:?} is taken by machine {id}")]
    NameTaken {
        /// The name.
        name: String,
        /// The machine holding it.
        id: MachineId,
    },
    /// The Idempotency-Key was used for a different request.
    #[error(
        "Idempotency-Key {key:?} was used for a different request (it made machine {id}); use a new key for a new request"
    )]
    IdempotencyMismatch {
        /// The key.
        key: String,
        /// The machine the first request made.
        id: MachineId,
    },
}

/// What the store write of an admitted create did.
#[derive(Debug, Clone)]
// Returned once per decision, never stored in bulk: boxing the operation buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum Admitted {
    /// A new machine and its create operation (run it with `Machines::run`).
    Created {
        /// The machine as recorded.
        machine: MachineRecord,
        /// Its create operation.
        operation: OperationRecord,
    },
    /// The Idempotency-Key's earlier create, with the same request: its machine.
    Replayed(MachineRecord),
}

/// A create's outcome, once run.
#[derive(Debug, Clone)]
pub struct Created {
    /// The machine.
    pub machine: MachineRecord,
    /// Whether it was made by an earlier request with the same Idempotency-Key.
    pub replayed: bool,
}

fn input_error(e: InputError) -> OpError {
    if e.too_large {
        OpError::TooLarge(e.message)
    } else {
        OpError::Invalid(e.message)
    }
}

/// Checks what a create carries besides its config (which `MachineConfig::validate` checks).
pub(crate) fn check_request(req: &CreateRequest, key: Option<&str>) -> Result<(), OpError> {
    if let Some(name) = &req.name {
        validate_name(name).map_err(input_error)?;
    }
    if req.metadata.keys().any(|k| k.starts_with("berth/")) {
        return Err(OpError::Invalid(
            "metadata keys starting with berth/ are reserved".into(),
        ));
    }
    validate_metadata(&req.metadata).map_err(input_error)?;
    if let Some(key) = key {
        if key.len() > limits::IDEMPOTENCY_KEY_MAX {
            return Err(OpError::TooLarge(format!(
                "Idempotency-Key: {} bytes long; the limit is {}",
                key.len(),
                limits::IDEMPOTENCY_KEY_MAX
            )));
        }
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_graphic()) {
            return Err(OpError::Invalid(format!(
                "Idempotency-Key must be 1 to {} printable ASCII characters",
                limits::IDEMPOTENCY_KEY_MAX
            )));
        }
    }
    Ok(())
}

/// The digest of a create request, stable across builds and restarts (FNV-1a, 128 bits, over
/// its canonical JSON). Recorded with the key, so a reuse with another body is recognised.
pub(crate) fn digest(req: &CreateRequest) -> String {
    let canonical = serde_json::json!({
        "name": req.name,
        "config": req.config,
        "metadata": req.metadata,
        "skip_start": req.skip_start,
    });
    let bytes = serde_json::to_vec(&canonical).unwrap_or_default();
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for b in bytes {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    format!("{h:032x}")
}

/// The metadata recorded with a keyed create.
pub(crate) fn keyed_metadata(
    mut metadata: BTreeMap<String, String>,
    key: &str,
    digest: &str,
) -> BTreeMap<String, String> {
    metadata.insert(IDEMPOTENCY_KEY_LABEL.to_owned(), key.to_owned());
    metadata.insert(IDEMPOTENCY_DIGEST_LABEL.to_owned(), digest.to_owned());
    metadata
}

/// How long a replayed create waits for the first create's operation to finish.
pub(crate) const REPLAY_SETTLE: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;
    use berth_types::{MachineConfig, Source};

    fn req(name: Option<&str>) -> CreateRequest {
        CreateRequest {
            id: None,
            name: name.map(str::to_owned),
            config: MachineConfig::command(["true"]),
            metadata: BTreeMap::new(),
            skip_start: false,
            source: Source::User,
        }
    }

    #[test]
    fn digest_tells_bodies_apart_and_is_stable() {
        assert_eq!(digest(&req(Some("a"))), digest(&req(Some("a"))));
        assert_ne!(digest(&req(Some("a"))), digest(&req(Some("b"))));
        assert_ne!(digest(&req(None)), digest(&req(Some("a"))));
        let mut r = req(None);
        r.skip_start = true;
        assert_ne!(digest(&r), digest(&req(None)));
        // Pinned: a digest recorded by this build must match after an upgrade.
        assert_eq!(digest(&req(None)).len(), 32);
    }

    #[test]
    fn request_bounds() {
        assert!(matches!(
            check_request(&req(Some(&"a".repeat(64))), None),
            Err(OpError::TooLarge(_))
        ));
        assert!(matches!(
            check_request(&req(Some("a b")), None),
            Err(OpError::Invalid(_))
        ));
        assert!(matches!(
            check_request(&req(None), Some(&"k".repeat(256))),
            Err(OpError::TooLarge(_))
        ));
        assert!(matches!(
            check_request(&req(None), Some("with space")),
            Err(OpError::Invalid(_))
        ));
        let mut r = req(None);
        r.metadata.insert("berth/x".into(), String::new());
        assert!(matches!(check_request(&r, None), Err(OpError::Invalid(_))));
        check_request(&req(Some("web-1")), Some("req-42")).unwrap_or_else(|e| panic!("{e}"));
    }
}
