//! Frames: a 4-byte big-endian length, then an rkyv-encoded [`Frame`].
//!
//! A frame longer than [`MAX_FRAME_BYTES`] is refused before its body is
//! read, so a peer cannot make a node allocate without bound; a body that
//! does not validate is an error for that stream only.

use quinn::{RecvStream, SendStream};
use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;

use crate::error::{Error, Result};
use crate::types::{GroupId, NodeId};
use crate::wire::message::WireMessage;
use crate::wire::{decode, encode};

/// Largest frame accepted: a full append batch (raft-rs caps one message
/// at 1 MiB) to many groups, or a snapshot of a small group, with room.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// Everything that travels between nodes.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Frame {
    /// Raft messages of many groups, from one node to another.
    Raft {
        /// The sending node.
        from: NodeId,
        /// (group, message) pairs.
        batch: Vec<(GroupId, WireMessage)>,
    },
    /// The first frame of a snapshot transfer, on a stream of its own: the
    /// snapshot message, whose state follows in chunks.
    SnapshotBegin {
        /// The sending node.
        from: NodeId,
        /// The group.
        group: GroupId,
        /// The snapshot message; its data is a descriptor. Boxed: the
        /// other frames are far smaller than a message.
        msg: Box<WireMessage>,
    },
    /// A piece of a snapshot's state; the last has no `next`.
    SnapshotChunk(crate::storage::SnapshotChunk),
}

/// Writes one frame of any rkyv type.
pub async fn write_frame<T>(send: &mut SendStream, value: &T) -> Result<()>
where
    T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    let body = encode(value);
    if body.len() > MAX_FRAME_BYTES {
        return Err(Error::Invalid(format!(
            "frame of {} bytes exceeds {MAX_FRAME_BYTES}",
            body.len()
        )));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    send.write_all(&buf)
        .await
        .map_err(|e| Error::Unreachable(e.to_string()))
}

/// Reads one frame; `Ok(None)` when the stream ended cleanly between frames.
pub async fn read_frame<T>(recv: &mut RecvStream) -> Result<Option<T>>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
{
    Ok(read_sized_frame(recv).await?.map(|(v, _)| v))
}

/// Reads one frame with its length on the wire (prefix included).
pub async fn read_sized_frame<T>(recv: &mut RecvStream) -> Result<Option<(T, usize)>>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
{
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(Error::Unreachable(e.to_string())),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(Error::Corrupt {
            what: "frame",
            detail: format!("length {len} exceeds {MAX_FRAME_BYTES}"),
        });
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| Error::Unreachable(e.to_string()))?;
    decode("frame", &body).map(|v| Some((v, 4 + len)))
}
