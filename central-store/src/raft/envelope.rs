//! What every Raft message between central nodes travels in: openraft's types encoded with
//! bincode, labelled with the data format of the node that sent them.
//!
//! Entries go over the wire as they are stored, so two nodes of different formats would
//! read each other's entries wrongly (a trailing field of a newer format can even decode as
//! another field of an older one). Each message names its sender's format and is refused
//! by a node of another one, and decoding refuses bytes left over.

use crate::storage::FORMAT;
use bincode::Options;
use kv_proto::raft::v1::RaftMessage;
use serde::{de::DeserializeOwned, Serialize};

/// Encodes `value` for a peer.
pub fn seal<T: Serialize>(value: &T) -> Result<RaftMessage, bincode::Error> {
    Ok(RaftMessage { data: codec().serialize(value)?, format: FORMAT.to_owned() })
}

/// Decodes a peer's message, refusing one of another data format.
pub fn open<T: DeserializeOwned>(message: RaftMessage) -> Result<T, String> {
    if message.format != FORMAT {
        return Err(format!(
            "a peer sent data format {:?}, this node holds {FORMAT:?}: nodes of two formats must not share a group",
            message.format
        ));
    }
    codec().deserialize(&message.data).map_err(|e| format!("undecodable raft message: {e}"))
}

/// bincode as `bincode::serialize` writes it, but strict about trailing bytes.
fn codec() -> impl Options {
    bincode::DefaultOptions::new().with_fixint_encoding().reject_trailing_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_of_another_format_or_with_extra_bytes_are_refused() {
        let sealed = seal(&(7u64, "x".to_owned())).unwrap();
        assert_eq!(sealed.data, bincode::serialize(&(7u64, "x".to_owned())).unwrap(), "the encoding is unchanged");
        assert_eq!(open::<(u64, String)>(sealed.clone()).unwrap(), (7, "x".to_owned()));
        let older = RaftMessage { format: "kv-central-store data format 3".into(), ..sealed.clone() };
        assert!(open::<(u64, String)>(older).unwrap_err().contains("must not share a group"));
        let longer = RaftMessage { data: [sealed.data.clone(), vec![0; 8]].concat(), ..sealed };
        assert!(open::<(u64, String)>(longer).unwrap_err().contains("undecodable"));
    }
}
