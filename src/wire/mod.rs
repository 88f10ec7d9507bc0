//! Byte encodings: rkyv with validation for everything Flotilla defines.
//!
//! Every value that crosses a process boundary or lands on disk (commands in
//! Raft entries, the catalog, snapshot payloads) is rkyv-encoded and decoded
//! through [`decode`], which validates the bytes with bytecheck before any
//! field is touched. A malformed buffer becomes [`Error::Corrupt`], never a
//! panic. Raft's own protobuf types stay inside the node: [`message`] mirrors
//! them for the network, and storage keeps raft entries on local disk in
//! the encoding raft-rs gives them.

pub mod message;

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;

use crate::error::{Error, Result};

/// Encodes a value with rkyv.
pub fn encode<T>(value: &T) -> Vec<u8>
where
    T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    match rkyv::to_bytes::<rancor::Error>(value) {
        Ok(bytes) => bytes.into_vec(),
        // Serializing our own in-memory types into a growable buffer has no
        // failure mode short of allocation failure.
        Err(e) => panic!("rkyv serialization of an in-memory value failed: {e}"),
    }
}

/// Validates and decodes bytes produced by [`encode`]. `what` names the
/// value in the error message.
pub fn decode<T>(what: &'static str, bytes: &[u8]) -> Result<T>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
{
    // Entries and redb values carry no alignment guarantee; rkyv needs one.
    let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<T, rancor::Error>(&aligned).map_err(|e| Error::Corrupt {
        what,
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
    struct Sample {
        id: u64,
        name: String,
        tags: Vec<Vec<u8>>,
    }

    #[test]
    fn round_trip_preserves_the_value() {
        let s = Sample {
            id: 7,
            name: "seven".into(),
            tags: vec![b"a".to_vec(), vec![]],
        };
        let bytes = encode(&s);
        assert_eq!(decode::<Sample>("sample", &bytes).unwrap(), s);
    }

    #[test]
    fn truncated_or_garbage_bytes_are_an_error_not_a_panic() {
        let s = Sample {
            id: 1,
            name: "x".repeat(100),
            tags: vec![vec![1; 50]],
        };
        let bytes = encode(&s);
        for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            let err = decode::<Sample>("sample", &bytes[..cut]).unwrap_err();
            assert!(
                matches!(err, Error::Corrupt { what: "sample", .. }),
                "{err}"
            );
        }
        let garbage = vec![0xffu8; bytes.len()];
        assert!(decode::<Sample>("sample", &garbage).is_err());
    }
}
