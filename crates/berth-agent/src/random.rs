//! Unguessable values (API tokens, lease nonces) from the OS random source, never a stand-in.

/// The OS random source failed: nothing that must be unguessable can be made.
#[derive(Debug)]
pub struct RandomError(pub String);

impl std::fmt::Display for RandomError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the OS random source failed: {}", self.0)
    }
}

impl std::error::Error for RandomError {}

/// A random hex string of `bytes` bytes of OS randomness; an error if the OS cannot give it
/// (never a predictable stand-in: tokens and lease nonces are made with it).
pub fn random_hex(bytes: usize) -> Result<String, RandomError> {
    random_hex_with(bytes, |b| getrandom::fill(b).map_err(|e| e.to_string()))
}

/// [`random_hex`] over a given source of randomness (for tests of its failure).
pub fn random_hex_with(
    bytes: usize,
    fill: impl FnOnce(&mut [u8]) -> Result<(), String>,
) -> Result<String, RandomError> {
    let mut b = vec![0u8; bytes];
    fill(&mut b).map_err(RandomError)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn random_hex_fails_when_the_os_does() {
        let r = super::random_hex_with(16, |_| Err("ENOSYS".into()));
        assert!(r.is_err(), "{r:?}");
        let ok = super::random_hex(16).map(|s| s.len());
        assert_eq!(ok.ok(), Some(32));
    }
}
