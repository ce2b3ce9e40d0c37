//! Record encoding: `[format u8][crc32 u32 LE][JSON payload]`.
//!
//! The format byte lets a later schema change the payload encoding record by record; the CRC
//! catches bytes damaged outside redb (redb's own page checksums are only verified on repair).
//! JSON keeps records self-describing, so adding a field with a serde default needs no migration.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The only record format so far.
pub const FORMAT_V1: u8 = 1;
const HEADER: usize = 5;

/// Encodes a value as a versioned, checksummed record.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(&[FORMAT_V1, 0, 0, 0, 0]);
    // Serializing our own types into a Vec cannot fail: no maps with non-string keys, no I/O.
    if serde_json::to_writer(&mut buf, value).is_err() {
        buf.truncate(HEADER);
        buf.extend_from_slice(b"null");
    }
    let crc = crc32fast::hash(&buf[HEADER..]);
    buf[1..HEADER].copy_from_slice(&crc.to_le_bytes());
    buf
}

/// Decodes a record, or says what is wrong with it (the caller adds table and key).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    if bytes.len() < HEADER {
        return Err(format!(
            "record is {} bytes, shorter than its header",
            bytes.len()
        ));
    }
    if bytes[0] != FORMAT_V1 {
        return Err(format!("unknown record format {}", bytes[0]));
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[1..HEADER]);
    let want = u32::from_le_bytes(crc);
    let got = crc32fast::hash(&bytes[HEADER..]);
    if want != got {
        return Err(format!(
            "checksum mismatch (stored {want:08x}, computed {got:08x})"
        ));
    }
    serde_json::from_slice(&bytes[HEADER..]).map_err(|e| format!("undecodable payload: {e}"))
}

/// Decodes a record read from `table` at `key`, naming both when it is corrupt.
pub(crate) fn decode_at<T: DeserializeOwned>(
    table: &'static str,
    key: impl std::fmt::Display,
    bytes: &[u8],
) -> crate::error::Result<T> {
    decode(bytes).map_err(|reason| crate::error::StoreError::Corrupt {
        table,
        key: key.to_string(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_detection() {
        let v = vec!["a".to_owned(), "b".to_owned()];
        let mut bytes = encode(&v);
        assert_eq!(decode::<Vec<String>>(&bytes).unwrap(), v);
        let last = bytes.len() - 2;
        bytes[last] ^= 0x20;
        assert!(
            decode::<Vec<String>>(&bytes)
                .unwrap_err()
                .contains("checksum")
        );
        assert!(
            decode::<Vec<String>>(&[9, 0, 0, 0, 0])
                .unwrap_err()
                .contains("format 9")
        );
        assert!(decode::<Vec<String>>(&[1]).unwrap_err().contains("shorter"));
    }
}
