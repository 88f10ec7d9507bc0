//! Streams and frames: every stream opens with one byte naming its
//! [`StreamKind`], then carries frames, each a 4-byte big-endian length
//! and an rkyv-encoded body.
//!
//! The kind comes first so that a node decides whether the peer's
//! certificate may open such a stream, and how large a frame on it may
//! be, before it reads any body. Each kind has its own limit, sized from
//! the largest legal message of that kind:
//!
//! | kind | carries | limit |
//! |---|---|---|
//! | [`StreamKind::Request`] | one [`crate::api::RpcRequest`] (bi stream) | [`MAX_REQUEST_FRAME_BYTES`] |
//! | (its answer) | one [`crate::api::RpcResponse`] | [`MAX_RESPONSE_FRAME_BYTES`] |
//! | [`StreamKind::Raft`] | batches of Raft messages (uni stream) | [`MAX_RAFT_FRAME_BYTES`] |
//! | [`StreamKind::Snapshot`] | snapshot chunks | [`MAX_SNAPSHOT_FRAME_BYTES`] |
//!
//! A frame declaring more than its kind allows is refused as soon as its
//! length is read. A frame within the limit is still not allocated at its
//! declared length: [`read_body`] grows the buffer as bytes arrive, so a
//! peer that declares a large frame and sends a few bytes holds only those
//! bytes, and one that stops sending halfway is cut off after
//! [`FRAME_STALL`]. The sending side never writes a frame over its kind's
//! limit ([`write_frame`] refuses it, and Raft batches are split before
//! they get there, [`split_batch`]).
//!
//! Left out: the serving of snapshot streams. The kind and its limit are
//! reserved; a node refuses such a stream until it serves them.

use std::time::Duration;

use quinn::{RecvStream, SendStream};
use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;

use crate::certs::Role;
use crate::error::{Error, Result};
use crate::kv::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
use crate::types::{GroupId, NodeId};
use crate::wire::message::WireMessage;
use crate::wire::{decode, encode};

/// Room for everything in a request besides its key and values: the rkyv
/// layout, the command's session fields, and a batch's per-operation
/// records (a batch's keys and values are held to less than a CAS's by
/// the kv limits).
const REQUEST_OVERHEAD_BYTES: usize = 64 * 1024;
/// Largest request frame: a compare-and-swap, the largest legal request,
/// holds a key and two values (expected and new) at their limits.
pub const MAX_REQUEST_FRAME_BYTES: usize =
    MAX_KEY_BYTES + 2 * MAX_VALUE_BYTES + REQUEST_OVERHEAD_BYTES;
/// Largest answer frame, read by the caller: a value or a CAS's current
/// value at its limit fits many times over, and a scan answer is meant to
/// stop at a few MiB; a larger answer is replaced by an error saying so.
pub const MAX_RESPONSE_FRAME_BYTES: usize = 8 * 1024 * 1024;
/// Largest Raft frame: a sender packs [`RAFT_FRAME_TARGET_BYTES`], and one
/// message alone is an append of at most raft-rs's 1 MiB plus one entry
/// (a request of up to about 2 MiB), or the catalog group's snapshot,
/// whose state rides in its message; data groups' snapshots travel in
/// chunks on streams of their own.
pub const MAX_RAFT_FRAME_BYTES: usize = 16 * 1024 * 1024;
/// What the sender packs into one Raft frame before starting the next:
/// a few appends at raft-rs's 1 MiB per message, so one peer's catch-up
/// never occupies its stream for long, and a frame is quick to resend.
pub const RAFT_FRAME_TARGET_BYTES: usize = 4 * 1024 * 1024;
/// Default size of one snapshot chunk.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// Largest snapshot frame: one chunk of at most four times the default
/// size, with room for its header.
pub const MAX_SNAPSHOT_FRAME_BYTES: usize = 4 * SNAPSHOT_CHUNK_BYTES + 64 * 1024;
/// Longest a frame may stop arriving once its first byte came: a peer
/// that sends part of a frame and then nothing has its stream reset.
pub const FRAME_STALL: Duration = Duration::from_secs(10);

/// What a stream carries, named by its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// One request and its answer (a bidirectional stream).
    Request,
    /// Raft batches from one node to another (a unidirectional stream).
    Raft,
    /// Chunks of a snapshot from one node to another.
    Snapshot,
}

impl StreamKind {
    /// The first byte of a stream of this kind.
    pub fn tag(self) -> u8 {
        match self {
            StreamKind::Request => 1,
            StreamKind::Raft => 2,
            StreamKind::Snapshot => 3,
        }
    }

    /// The kind a stream's first byte names, if any.
    pub fn from_tag(tag: u8) -> Option<StreamKind> {
        [StreamKind::Request, StreamKind::Raft, StreamKind::Snapshot]
            .into_iter()
            .find(|k| k.tag() == tag)
    }

    /// The largest frame a stream of this kind may carry towards a node.
    pub fn max_frame_bytes(self) -> usize {
        match self {
            StreamKind::Request => MAX_REQUEST_FRAME_BYTES,
            StreamKind::Raft => MAX_RAFT_FRAME_BYTES,
            StreamKind::Snapshot => MAX_SNAPSHOT_FRAME_BYTES,
        }
    }

    /// Whether a peer whose certificate has `role` may open such a stream:
    /// anyone may ask (each request checks the role itself), only nodes
    /// may replicate.
    pub fn may_open(self, role: Option<Role>) -> bool {
        match self {
            StreamKind::Request => true,
            StreamKind::Raft | StreamKind::Snapshot => role == Some(Role::Node),
        }
    }
}

/// Everything that travels between nodes on a Raft stream.
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

/// Why a frame was not read.
#[derive(Debug)]
pub enum FrameError {
    /// It declared more bytes than its kind allows.
    Oversize {
        /// The declared length.
        len: usize,
        /// The kind's limit.
        max: usize,
    },
    /// The stream ended partway through it.
    Truncated,
    /// It stopped arriving partway for [`FRAME_STALL`].
    Stalled,
    /// Its body did not decode.
    Malformed(Error),
    /// The stream or its connection failed.
    Gone(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Oversize { len, max } => {
                write!(f, "frame declares {len} bytes, over the limit of {max}")
            }
            FrameError::Truncated => write!(f, "stream ended partway through a frame"),
            FrameError::Stalled => {
                write!(f, "frame stopped arriving for {FRAME_STALL:?}")
            }
            FrameError::Malformed(e) => write!(f, "malformed frame: {e}"),
            FrameError::Gone(e) => write!(f, "stream lost: {e}"),
        }
    }
}

impl From<FrameError> for Error {
    fn from(e: FrameError) -> Error {
        match e {
            FrameError::Malformed(e) => e,
            FrameError::Gone(e) => Error::Unreachable(e),
            other => Error::Corrupt {
                what: "frame",
                detail: other.to_string(),
            },
        }
    }
}

/// Encodes `value` as one frame of at most `max` bytes of body, prefix
/// included in the returned bytes.
pub fn encode_frame<T>(value: &T, max: usize) -> Result<Vec<u8>>
where
    T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    let body = encode(value);
    if body.len() > max {
        return Err(Error::Invalid(format!(
            "frame of {} bytes exceeds its limit of {max}",
            body.len()
        )));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    Ok(buf)
}

/// Writes one frame of any rkyv type, refused (nothing written) when its
/// body exceeds `max`.
pub async fn write_frame<T>(send: &mut SendStream, value: &T, max: usize) -> Result<()>
where
    T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    let buf = encode_frame(value, max)?;
    write_bytes(send, &buf).await
}

/// Writes the byte that opens a stream of `kind`.
pub async fn write_tag(send: &mut SendStream, kind: StreamKind) -> Result<()> {
    write_bytes(send, &[kind.tag()]).await
}

async fn write_bytes(send: &mut SendStream, bytes: &[u8]) -> Result<()> {
    send.write_all(bytes)
        .await
        .map_err(|e| Error::Unreachable(e.to_string()))
}

/// Reads the byte that opens a stream: `Ok(None)` for a stream that ended
/// before naming its kind, `Ok(Some(byte))` otherwise (which may name no
/// kind; the caller decides).
pub async fn read_tag(recv: &mut RecvStream) -> std::result::Result<Option<u8>, FrameError> {
    let mut tag = [0u8; 1];
    match recv.read_exact(&mut tag).await {
        Ok(()) => Ok(Some(tag[0])),
        Err(quinn::ReadExactError::FinishedEarly(0)) => Ok(None),
        Err(e) => Err(FrameError::Gone(e.to_string())),
    }
}

/// Reads one frame's body of at most `max` bytes; `Ok(None)` when the
/// stream ended cleanly between frames. Waiting for a frame to start has
/// no limit (a Raft stream idles between batches); once it has started,
/// each piece must come within [`FRAME_STALL`]. The buffer grows with
/// the bytes that arrive, never past the declared length.
pub async fn read_body(
    recv: &mut RecvStream,
    max: usize,
) -> std::result::Result<Option<Vec<u8>>, FrameError> {
    let mut len = [0u8; 4];
    match recv.read(&mut len[..1]).await {
        Ok(Some(1)) => {}
        Ok(None) => return Ok(None),
        Ok(Some(_)) => return Err(FrameError::Truncated),
        Err(e) => return Err(FrameError::Gone(e.to_string())),
    }
    let rest = async {
        read_exact(recv, &mut len[1..]).await?;
        let len = u32::from_be_bytes(len) as usize;
        if len > max {
            return Err(FrameError::Oversize { len, max });
        }
        let mut body: Vec<u8> = Vec::new();
        while body.len() < len {
            let chunk = stalling(recv.read_chunk(len - body.len(), true))
                .await?
                .map_err(|e| FrameError::Gone(e.to_string()))?
                .ok_or(FrameError::Truncated)?;
            let needed = body.len() + chunk.bytes.len();
            if needed > body.capacity() {
                // Double as bytes arrive, but never past what was declared.
                let target = (2 * body.capacity()).max(needed).min(len);
                body.reserve_exact(target - body.len());
            }
            body.extend_from_slice(&chunk.bytes);
        }
        Ok(body)
    };
    rest.await.map(Some)
}

/// Reads exactly `buf.len()` bytes, each piece within [`FRAME_STALL`].
async fn read_exact(recv: &mut RecvStream, buf: &mut [u8]) -> std::result::Result<(), FrameError> {
    let mut at = 0;
    while at < buf.len() {
        match stalling(recv.read(&mut buf[at..])).await? {
            Ok(Some(n)) => at += n,
            Ok(None) => return Err(FrameError::Truncated),
            Err(e) => return Err(FrameError::Gone(e.to_string())),
        }
    }
    Ok(())
}

/// `read`, unless nothing arrives for [`FRAME_STALL`].
async fn stalling<F: std::future::Future>(read: F) -> std::result::Result<F::Output, FrameError> {
    tokio::time::timeout(FRAME_STALL, read)
        .await
        .map_err(|_| FrameError::Stalled)
}

/// Decodes a frame's body.
pub fn decode_body<T>(body: &[u8]) -> std::result::Result<T, FrameError>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
{
    decode("frame", body).map_err(FrameError::Malformed)
}

/// Reads and decodes one frame of at most `max` bytes; `Ok(None)` when
/// the stream ended cleanly between frames.
pub async fn read_frame<T>(recv: &mut RecvStream, max: usize) -> Result<Option<T>>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
{
    match read_body(recv, max).await? {
        Some(body) => Ok(Some(decode_body(&body)?)),
        None => Ok(None),
    }
}

/// An upper bound of the bytes `msg` takes in a frame: its payloads and a
/// generous allowance for the fixed fields of it and of each entry.
pub fn message_bytes(msg: &raft::eraftpb::Message) -> usize {
    const FIXED: usize = 256;
    const PER_ENTRY: usize = 64;
    let entries: usize = msg
        .entries
        .iter()
        .map(|e| PER_ENTRY + e.data.len() + e.context.len())
        .sum();
    let snapshot = msg.snapshot.as_ref().map_or(0, |s| {
        let cs = s.get_metadata().get_conf_state();
        let ids =
            cs.voters.len() + cs.learners.len() + cs.voters_outgoing.len() + cs.learners_next.len();
        s.data.len() + 8 * ids
    });
    FIXED + entries + snapshot + msg.context.len()
}

/// Splits a batch into runs of messages whose [`message_bytes`] add up
/// to at most `target` each, in order; a message larger than `target`
/// travels alone.
pub fn split_batch<M>(batch: Vec<M>, target: usize, size: impl Fn(&M) -> usize) -> Vec<Vec<M>> {
    let mut runs: Vec<Vec<M>> = Vec::new();
    let mut run_bytes = 0;
    for m in batch {
        let bytes = size(&m);
        match runs.last_mut() {
            Some(run) if run_bytes + bytes <= target => {
                run.push(m);
                run_bytes += bytes;
            }
            _ => {
                runs.push(vec![m]);
                run_bytes = bytes;
            }
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_tag_and_unknown_tags_name_none() {
        for k in [StreamKind::Request, StreamKind::Raft, StreamKind::Snapshot] {
            assert_eq!(StreamKind::from_tag(k.tag()), Some(k));
        }
        assert_eq!(StreamKind::from_tag(0), None);
        assert_eq!(StreamKind::from_tag(0x47), None);
    }

    #[test]
    fn only_nodes_may_open_raft_and_snapshot_streams() {
        for role in [None, Some(Role::Client), Some(Role::Admin)] {
            assert!(StreamKind::Request.may_open(role));
            assert!(!StreamKind::Raft.may_open(role));
            assert!(!StreamKind::Snapshot.may_open(role));
        }
        assert!(StreamKind::Raft.may_open(Some(Role::Node)));
    }

    #[test]
    fn a_batch_splits_into_runs_under_the_target_in_order() {
        // (id, size): a run closes when the next would pass 10.
        let batch = vec![(1, 4), (2, 4), (3, 4), (4, 12), (5, 1), (6, 9), (7, 2)];
        let runs = split_batch(batch, 10, |m| m.1);
        let ids: Vec<Vec<i32>> = runs
            .iter()
            .map(|r| r.iter().map(|m| m.0).collect())
            .collect();
        assert_eq!(ids, vec![vec![1, 2], vec![3], vec![4], vec![5, 6], vec![7]]);
        assert!(split_batch(Vec::<(i32, usize)>::new(), 10, |m| m.1).is_empty());
    }
}
