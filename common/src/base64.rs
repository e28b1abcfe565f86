//! base64 as JavaScript's `atob` reads it, for the `base64: true` items of bulk writes (REST
//! bodies and wrangler's files): padding optional, whitespace (wrapped lines) ignored.

use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig};
use base64::Engine;

const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes `text`; the error says why it is not base64.
pub fn decode(text: &str) -> Result<Vec<u8>, String> {
    let compact: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    LENIENT.decode(compact).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_read_as_atob_reads_it() {
        assert_eq!(decode("AAEC/w==").unwrap(), [0, 1, 2, 255]);
        assert_eq!(decode("AAEC/w").unwrap(), [0, 1, 2, 255], "padding is optional");
        assert_eq!(decode("AA\nEC/w==\n").unwrap(), [0, 1, 2, 255], "wrapped lines");
        assert!(decode("!!").is_err());
    }
}
