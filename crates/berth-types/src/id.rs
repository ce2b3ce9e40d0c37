//! Machine identifiers.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest machine id accepted; redb keys stay small and URLs stay readable.
pub const MAX_ID_LEN: usize = 64;

/// Why a string is not a valid machine id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// machine id is empty
    #[error("machine id is empty")]
    Empty,
    /// machine id is longer than the limit
    #[error("machine id is {0} bytes long; the limit is {MAX_ID_LEN}")]
    TooLong(usize),
    /// machine id contains a character outside `[a-z0-9_-]`
    #[error("machine id contains {0:?}; only lowercase letters, digits, '-' and '_' are allowed")]
    BadChar(char),
}

/// A machine's id: 1 to 64 characters of `[a-z0-9_-]`.
///
/// Generated ids are 14 lowercase hex digits, as control planes used to Fly's API expect.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MachineId(String);

impl MachineId {
    /// Parses and validates an id.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        if s.len() > MAX_ID_LEN {
            return Err(IdError::TooLong(s.len()));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
        {
            return Err(IdError::BadChar(c));
        }
        Ok(Self(s.to_owned()))
    }

    /// A fresh random id (56 bits of entropy from the OS).
    pub fn generate() -> Self {
        let mut bytes = [0u8; 7];
        // The OS random source failing is not recoverable for an agent; fall back to time+counter
        // rather than panic, since ids only need to be unique on this host.
        if getrandom::fill(&mut bytes).is_err() {
            let nanos = crate::time::Timestamp::now().as_nanos();
            bytes.copy_from_slice(&nanos.to_le_bytes()[..7]);
        }
        let mut s = String::with_capacity(14);
        for b in bytes {
            s.push_str(&format!("{b:02x}"));
        }
        Self(s)
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for MachineId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::parse(&s)
    }
}

impl From<MachineId> for String {
    fn from(id: MachineId) -> String {
        id.0
    }
}

impl std::str::FromStr for MachineId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = MachineId::generate();
        let b = MachineId::generate();
        assert_eq!(a.as_str().len(), 14);
        assert_eq!(MachineId::parse(a.as_str()), Ok(a.clone()));
        assert_ne!(a, b);
    }

    #[test]
    fn rejects_bad_ids() {
        assert_eq!(MachineId::parse(""), Err(IdError::Empty));
        assert_eq!(MachineId::parse("ABC"), Err(IdError::BadChar('A')));
        assert_eq!(MachineId::parse("a/b"), Err(IdError::BadChar('/')));
        assert_eq!(MachineId::parse(&"a".repeat(65)), Err(IdError::TooLong(65)));
        assert!(serde_json::from_str::<MachineId>("\"x y\"").is_err());
    }
}
