//! Namespace ids: 16 random bytes shown as 32 lowercase hex characters.

use crate::KvError;
use std::fmt;

/// A namespace id in its stored form; displays as 32 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct NamespaceId(pub [u8; 16]);

/// Longest namespace title accepted, in bytes.
pub const MAX_TITLE_BYTES: usize = 512;

/// The page size of a namespace list when none is asked for, and the largest one.
pub const NAMESPACE_PAGE: (u32, u32) = (20, 1000);

/// The page size a namespace list asked for (0: the default), within the largest.
pub fn namespace_page_size(asked: u32) -> u32 {
    match asked {
        0 => NAMESPACE_PAGE.0,
        n => n.min(NAMESPACE_PAGE.1),
    }
}

impl NamespaceId {
    /// Parses the textual id; anything malformed names no namespace, so it is "not found".
    pub fn parse(text: &str) -> Result<Self, KvError> {
        let b = text.as_bytes();
        if b.len() != 32 {
            return Err(KvError::NamespaceNotFound);
        }
        let mut out = [0u8; 16];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            let hi = hex_val(pair[0]).ok_or(KvError::NamespaceNotFound)?;
            let lo = hex_val(pair[1]).ok_or(KvError::NamespaceNotFound)?;
            out[i] = (hi << 4) | lo;
        }
        Ok(NamespaceId(out))
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Encoded at once on the stack: every read names its namespace this way (in its tier key),
/// and formatting the sixteen bytes one by one showed in the hot read's profile.
impl fmt::Display for NamespaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut hex = [0u8; 32];
        hex::encode_to_slice(self.0, &mut hex).map_err(|_| fmt::Error)?;
        f.write_str(std::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for NamespaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NamespaceId({self})")
    }
}

/// Checks a namespace title: non-empty, bounded.
pub fn validate_title(title: &str) -> Result<(), KvError> {
    if title.is_empty() || title.len() > MAX_TITLE_BYTES {
        return Err(KvError::NamespaceTitleInvalid { max: MAX_TITLE_BYTES });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_malformed() {
        let id = NamespaceId([0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0, 0x0f, 0xf0, 0xff, 0, 0, 0, 0x10]);
        assert_eq!(id.to_string(), "0123456789abcdef000ff0ff00000010");
        assert_eq!(NamespaceId::parse(&id.to_string()).unwrap(), id);
        assert_eq!(NamespaceId::parse("AB").unwrap_err(), KvError::NamespaceNotFound);
        let upper = "ABABABABABABABABABABABABABABABAB";
        assert_eq!(NamespaceId::parse(upper).unwrap_err(), KvError::NamespaceNotFound);
    }
}
