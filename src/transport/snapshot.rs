//! Snapshot transfers over QUIC: a group's state streamed in chunks on a
//! connection and stream of its own, so it never waits behind, nor holds
//! up, the Raft batches of the peer's long-lived stream.
//!
//! The sender (a task per transfer, started by [`Transport::send_snapshot`])
//! dials the peer, writes a [`Frame::SnapshotBegin`] holding the snapshot
//! message (whose data is only a descriptor, see `storage::snapshot`), then
//! the group's state as [`Frame::SnapshotChunk`]s read from the source on a
//! blocking thread, one chunk in memory at a time. QUIC's stream flow
//! control holds the sender back while the receiver stages; a pacer shared
//! by the node's transfers holds it to `--snapshot-rate` bytes a second.
//! Once the peer has received every byte the transfer counts as sent.
//!
//! The receiver checks the sender as it checks Raft frames (node role, key
//! pin, the message's own sender), stages each chunk on a blocking thread,
//! makes the staging durable after the last one, and only then hands the
//! snapshot message to the driver. A refusal (too many transfers, the group
//! busy) or a failure stops the stream, and the sender's driver hears
//! `Failure` and tries again later with a new snapshot; so does a sender
//! whose peer does not answer for [`SNAPSHOT_STALL`].
//!
//! Left out: resuming a cut transfer where it stopped (a new one starts
//! from the first row), and a receiver-side acknowledgement after the
//! staging is durable: a sender hears `Finish` once its bytes arrived, and
//! if the receiver then fails to stage them, Raft's next probe finds the
//! follower still behind and asks for another snapshot.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use quinn::RecvStream;
use tokio::time::Instant;

use super::frame::{read_frame, write_frame, Frame, StreamKind, MAX_SNAPSHOT_FRAME_BYTES};
use super::Transport;
use crate::error::{Error, Result};
use crate::storage::{ChunkCursor, SnapshotDescriptor, Snapshots};
use crate::types::{GroupId, NodeId};
use crate::wire::message::WireMessage;

/// Snapshot bytes a second a node sends by default, over all its
/// transfers: a new replica of a few GiB is rebuilt in about a minute,
/// while client traffic keeps most of a gigabit link.
pub const SNAPSHOT_RATE: u64 = 64 << 20;
/// Longest a transfer waits for the peer to take a chunk (or, at the end,
/// to acknowledge the last one) before it gives up.
pub const SNAPSHOT_STALL: Duration = Duration::from_secs(30);
/// QUIC stream error code for a snapshot the receiver refused or failed to
/// stage.
const SNAPSHOT_REFUSED: u32 = 0x48;

/// Holds the node's outgoing snapshot bytes to a rate, across transfers.
pub struct Pacer {
    /// Bytes a second; 0 for no limit.
    rate: u64,
    /// When the bytes reserved so far will have been paid for. A std lock:
    /// held only to update it, never across an await.
    paid_until: Mutex<Instant>,
}

impl Pacer {
    /// A pacer for `rate` bytes a second (0: unlimited).
    pub fn new(rate: u64) -> Pacer {
        Pacer {
            rate,
            paid_until: Mutex::new(Instant::now()),
        }
    }

    /// Waits until `bytes` more fit the rate. Called after each chunk is
    /// written, so a transfer of N bytes lasts at least N / rate.
    pub async fn pay(&self, bytes: usize) {
        if self.rate == 0 {
            return;
        }
        let until = {
            let mut paid = self.paid_until.lock().unwrap_or_else(|p| p.into_inner());
            let cost = Duration::from_secs_f64(bytes as f64 / self.rate as f64);
            *paid = (*paid).max(Instant::now()) + cost;
            *paid
        };
        tokio::time::sleep_until(until).await;
    }
}

/// What a node's transport needs to carry snapshots.
pub(super) struct SnapshotLink {
    /// The node's sources and stagings. Weak: the engine owns them, and a
    /// stopped node's database must close though its transport lingers.
    pub(super) store: Weak<Snapshots>,
    /// The node's outgoing rate.
    pub(super) pacer: Pacer,
}

impl Transport {
    /// Lets this transport carry snapshots: read from and staged into
    /// `store`, sent at most `rate` bytes a second (0: unlimited).
    pub fn serve_snapshots(&self, store: Arc<Snapshots>, rate: u64) {
        *self.snapshots.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(SnapshotLink {
            store: Arc::downgrade(&store),
            pacer: Pacer::new(rate),
        }));
    }

    fn snapshot_link(&self) -> Option<Arc<SnapshotLink>> {
        self.snapshots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Streams the state of the snapshot in `msg` (of `group`) to `to`,
    /// then the message, on a task of its own; never waits. A snapshot
    /// whose state is in its message (the catalog group's) goes with the
    /// peer's Raft batches. `done` hears
    /// whether the transfer went through.
    pub fn send_snapshot(
        self: &Arc<Self>,
        to: NodeId,
        group: GroupId,
        msg: raft::eraftpb::Message,
        done: impl FnOnce(bool) + Send + 'static,
    ) {
        // The catalog group's state travels inside its descriptor.
        let streamed =
            SnapshotDescriptor::decode(&msg.get_snapshot().data).is_ok_and(|d| d.streamed());
        if !streamed {
            return done(self.send_raft(to, vec![(group, msg)]));
        }
        let t = self.clone();
        self.runtime.spawn(async move {
            let Some(link) = t.snapshot_link() else {
                return done(false);
            };
            let data = msg.get_snapshot().data.clone();
            let sent = transfer(&t, &link, to, group, &msg).await;
            if let Some(store) = link.store.upgrade() {
                store.abandon(&data);
            }
            if let Err(e) = &sent {
                tracing::info!(node_id = t.node().0, peer = to.0, group_id = group.0, error = %e, "snapshot transfer failed");
            }
            done(sent.is_ok());
        });
    }
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> Result<T> {
    tokio::time::timeout(SNAPSHOT_STALL, f)
        .await
        .map_err(|_| Error::Unreachable(format!("snapshot peer stalled: {what}")))
}

async fn transfer(
    t: &Arc<Transport>,
    link: &Arc<SnapshotLink>,
    to: NodeId,
    group: GroupId,
    msg: &raft::eraftpb::Message,
) -> Result<()> {
    let desc = SnapshotDescriptor::decode(&msg.get_snapshot().data)?;
    let (conn, mut send) = super::outbound::connect(t, to, StreamKind::Snapshot)
        .await
        .ok_or_else(|| Error::Unreachable(format!("cannot reach {to} for a snapshot")))?;
    let begin = Frame::SnapshotBegin {
        from: t.node(),
        group,
        msg: Box::new(WireMessage::from(msg)),
    };
    within(
        "begin",
        write_frame(&mut send, &begin, MAX_SNAPSHOT_FRAME_BYTES),
    )
    .await??;
    let mut cursor = Some(ChunkCursor::start());
    while let Some(from) = cursor.take() {
        let store = link
            .store
            .upgrade()
            .ok_or_else(|| Error::Unreachable("the node is stopping".into()))?;
        let source = desc.source;
        let chunk = tokio::task::spawn_blocking(move || store.read_chunk(source, &from))
            .await
            .map_err(|e| Error::Invalid(format!("snapshot reader: {e}")))??;
        let bytes = chunk.bytes();
        cursor = chunk.next.clone();
        within(
            "chunk",
            write_frame(
                &mut send,
                &Frame::SnapshotChunk(chunk),
                MAX_SNAPSHOT_FRAME_BYTES,
            ),
        )
        .await??;
        t.stats.frames_out.fetch_add(1, Ordering::Relaxed);
        link.pacer.pay(bytes).await;
    }
    send.finish()
        .map_err(|e| Error::Unreachable(e.to_string()))?;
    let stopped = within("end", send.stopped()).await?;
    conn.close(0u32.into(), b"snapshot sent");
    match stopped {
        Ok(None) => Ok(()),
        Ok(Some(code)) => Err(Error::Unreachable(format!(
            "the peer refused the snapshot (code {code})"
        ))),
        Err(e) => Err(Error::Unreachable(e.to_string())),
    }
}

/// Receives one transfer whose [`Frame::SnapshotBegin`] (checked by the
/// caller) named `group` and `msg`: stages its chunks, and hands `msg` to
/// the inbox once the staging is durable.
pub(super) async fn receive(
    t: Arc<Transport>,
    mut recv: RecvStream,
    from: NodeId,
    group: GroupId,
    msg: raft::eraftpb::Message,
) {
    let Some(link) = t.snapshot_link() else {
        let _ = recv.stop(SNAPSHOT_REFUSED.into());
        return;
    };
    let Some(store) = link.store.upgrade() else {
        let _ = recv.stop(SNAPSHOT_REFUSED.into());
        return;
    };
    let index = msg.get_snapshot().get_metadata().index;
    let staged = stage(&store, &mut recv, group, index).await;
    match staged {
        Ok(()) => {
            if let Some(inbox) = t.inbox() {
                inbox.deliver(from, vec![(group, msg)]);
            }
        }
        Err(e) => {
            tracing::info!(node_id = t.node().0, peer = from.0, group_id = group.0, error = %e, "snapshot not received");
            if matches!(e, Error::Corrupt { .. }) {
                t.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
            }
            let _ = recv.stop(SNAPSHOT_REFUSED.into());
        }
    }
}

/// Runs `f` on a blocking thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Invalid(format!("snapshot stager: {e}")))?
}

async fn stage(
    store: &Arc<Snapshots>,
    recv: &mut RecvStream,
    group: GroupId,
    index: u64,
) -> Result<()> {
    let s = store.clone();
    blocking(move || s.begin_receive(group, index)).await?;
    let staged = async {
        loop {
            let chunk = match within("chunk", read_frame::<Frame>(recv, MAX_SNAPSHOT_FRAME_BYTES))
                .await??
            {
                Some(Frame::SnapshotChunk(chunk)) => chunk,
                other => {
                    return Err(Error::Corrupt {
                        what: "snapshot stream",
                        detail: format!(
                            "expected a chunk, found {:?}",
                            other.map(|_| "another frame")
                        ),
                    })
                }
            };
            let last = chunk.next.is_none();
            let s = store.clone();
            blocking(move || s.stage_chunk(group, &chunk)).await?;
            if last {
                // Read to the stream's end: a stream dropped before it
                // would tell the sender its transfer was refused.
                if within("end", read_frame::<Frame>(recv, MAX_SNAPSHOT_FRAME_BYTES))
                    .await??
                    .is_some()
                {
                    return Err(Error::Corrupt {
                        what: "snapshot stream",
                        detail: "a frame after the last chunk".into(),
                    });
                }
                let s = store.clone();
                return blocking(move || s.finish_receive(group, index)).await;
            }
        }
    }
    .await;
    if staged.is_err() {
        let s = store.clone();
        let _ = blocking(move || {
            s.abort_receive(group);
            Ok(())
        })
        .await;
    }
    staged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pacer_holds_a_transfer_to_its_rate_from_below() {
        // 1 MiB at 4 MiB/s in 64 KiB chunks lasts at least a quarter second.
        let pacer = Pacer::new(4 << 20);
        let start = std::time::Instant::now();
        for _ in 0..16 {
            pacer.pay(64 << 10).await;
        }
        assert!(
            start.elapsed() >= Duration::from_millis(250),
            "{:?}",
            start.elapsed()
        );
        // Without a rate, nothing waits.
        let free = Pacer::new(0);
        let start = std::time::Instant::now();
        free.pay(1 << 30).await;
        assert!(start.elapsed() < Duration::from_millis(250));
    }
}
