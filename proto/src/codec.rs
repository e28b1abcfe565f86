//! The codec of every service: prost's, except that a request that does not decode is the
//! caller's fault. tonic answers INTERNAL for it; we answer INVALID_ARGUMENT with the HTTP
//! status 400 in the `kv-http-status` trailer, so that a key that is not UTF-8 gets the
//! contract's clear 400 (SPEC.md section 2) instead of looking like a server bug.

use crate::{HTTP_STATUS_TRAILER, KEY_NOT_UTF8};
use std::marker::PhantomData;
use tonic::codec::{BufferSettings, DecodeBuf, Decoder, ProstCodec};
use tonic::Status;

/// prost's codec with the decoding error mapped as the contract wants.
#[derive(Debug, Clone, Default)]
pub struct Codec<T, U>(ProstCodec<T, U>);

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as tonic::codec::Codec>::Encoder;
    type Decoder = CheckedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckedDecoder(PhantomData)
    }
}

/// prost's decoding whose errors are INVALID_ARGUMENT.
pub struct CheckedDecoder<U>(PhantomData<U>);

impl<U: prost::Message + Default> Decoder for CheckedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        prost::Message::decode(buf).map(Some).map_err(|e| malformed(&e))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// The status for a message that does not decode: the contract's words for a key that is
/// not UTF-8, else prost's account of where the message went wrong.
fn malformed(e: &prost::DecodeError) -> Status {
    let detail = e.to_string();
    let detail = detail.strip_prefix("failed to decode Protobuf message: ").unwrap_or(&detail);
    let field = detail.split(": ").next().unwrap_or_default();
    let is_key = [".key", ".keys", ".prefix"].iter().any(|f| field.ends_with(f));
    let message = if is_key && detail.contains("UTF-8") {
        KEY_NOT_UTF8.to_owned()
    } else {
        format!("Malformed request: {detail}")
    };
    let mut status = Status::invalid_argument(message);
    status.metadata_mut().insert(HTTP_STATUS_TRAILER, tonic::metadata::MetadataValue::from(400u16));
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[derive(Clone, PartialEq, prost::Message)]
    struct GetRequest {
        #[prost(string, tag = "2")]
        key: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Raw {
        #[prost(bytes = "vec", tag = "2")]
        key: Vec<u8>,
    }

    #[test]
    fn a_key_that_is_not_utf8_is_a_clear_400() {
        let bytes = Raw { key: vec![b'a', 0xff, 0xfe] }.encode_to_vec();
        let e = GetRequest::decode(bytes.as_slice()).unwrap_err();
        let s = malformed(&e);
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert_eq!(s.message(), "Key names must be valid UTF-8.");
        assert_eq!(s.metadata().get(HTTP_STATUS_TRAILER).unwrap(), "400");
    }

    #[test]
    fn other_malformed_messages_are_400_too() {
        let e = GetRequest::decode(&[0x12, 0x05, b'a'][..]).unwrap_err();
        let s = malformed(&e);
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(s.message().starts_with("Malformed request: "), "{}", s.message());
    }
}
