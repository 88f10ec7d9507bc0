//! Dialing peers and streaming batches to them.
//!
//! Each peer has one task that owns one connection and one stream. A
//! connection that is gone is replaced at once: the task notices its close
//! (a write that fails, the peer or QUIC closing it) and redials without
//! waiting, and a watchdog closes a connection whose peer has been silent
//! for [`STALL_TIMEOUT`] although this side keeps pinging it every
//! [`super::tls::PEER_PING`]. Without the watchdog a link cut for less
//! than QUIC's idle timeout left the connection open but backed off: QUIC
//! spaces its retransmissions further apart the longer nothing is
//! acknowledged, so after a cut of a few seconds the first message through
//! could come seconds after the link healed, and groups that needed that
//! link to elect a leader waited for it.
//!
//! Dials that fail are retried after a delay that doubles from
//! [`RECONNECT_MIN`], up to [`RECONNECT_RECENT_MAX`] for a peer this task
//! reached within [`RECENTLY`] (it is probably about to come back) and up
//! to [`RECONNECT_MAX`] otherwise (it may be gone for good). A dial that
//! gets no answer within [`DIAL_TIMEOUT`] is abandoned and started over,
//! rather than left to QUIC's handshake retransmissions, which wait about a
//! second before the first resend.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::Instrument;

use super::frame::{
    message_bytes, split_batch, write_frame, write_tag, Frame, StreamKind, MAX_RAFT_FRAME_BYTES,
    RAFT_FRAME_TARGET_BYTES,
};
use super::{RaftMessage, Transport};
use crate::certs::spki_sha256;
use crate::types::NodeId;
use crate::wire::message::WireMessage;

/// First delay after a failed dial; doubles per failure.
const RECONNECT_MIN: Duration = Duration::from_millis(50);
/// Longest delay between dials to a peer reached within [`RECENTLY`]: one
/// that comes back is found within this, well inside an election timeout.
const RECONNECT_RECENT_MAX: Duration = Duration::from_millis(250);
/// Longest delay between dials to a peer not reached for a while: it may
/// be gone for good, and dialling it costs a handshake attempt each time.
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// How long a peer counts as recently reached after its connection ended.
const RECENTLY: Duration = Duration::from_secs(60);
/// How long one dial may take: a handshake on a LAN takes milliseconds; one
/// whose first packets were lost is faster started over than resent.
const DIAL_TIMEOUT: Duration = Duration::from_millis(500);
/// Silence from a peer after which its connection is replaced: several
/// pings ([`super::tls::PEER_PING`]) went unanswered. Short enough that a
/// healed link carries traffic again well within an election timeout.
pub(super) const STALL_TIMEOUT: Duration = Duration::from_millis(600);
/// How often the watchdog looks at a connection.
const STALL_CHECK: Duration = Duration::from_millis(100);
/// QUIC error code for a connection closed because the peer went silent.
const STALLED: u32 = 0x48;

/// Bytes of Raft messages queued for one peer at most, written or not:
/// past it a batch is refused and raft-rs hears the peer was unreachable
/// (its leaders probe again later). raft-rs bounds appends in flight by
/// count only (256 of up to 1 MiB per group), so without this a slow peer
/// could hold gigabytes of a node's memory in its queue.
pub const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;

/// The bytes queued for a peer, against [`MAX_QUEUED_BYTES`].
#[derive(Debug, Default)]
pub(super) struct QueueBudget(AtomicUsize);

impl QueueBudget {
    /// Takes `bytes` from the budget; `false` if that passes the cap (an
    /// empty queue takes any batch, so a large one still goes alone).
    pub(super) fn take(&self, bytes: usize, cap: usize) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used == 0 || used + bytes <= cap).then_some(used + bytes)
            })
            .is_ok()
    }

    /// Gives `bytes` back once they were written or dropped.
    pub(super) fn give(&self, bytes: usize) {
        self.0.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Bytes queued now.
    #[cfg(test)]
    fn used(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// A batch on its way to a peer, with its bytes as its budget counted them.
type Queued = (usize, Vec<RaftMessage>);

/// The handle of one peer's outbound task.
pub(super) struct PeerSender {
    tx: mpsc::UnboundedSender<Queued>,
    /// Whether the task holds an open stream to the peer.
    up: Arc<AtomicBool>,
    /// What is queued for the peer and not yet written.
    queued: Arc<QueueBudget>,
}

impl PeerSender {
    /// Starts the outbound task of the peer `to`.
    pub(super) fn start(t: Arc<Transport>, to: NodeId) -> PeerSender {
        let (tx, rx) = mpsc::unbounded_channel();
        let up = Arc::new(AtomicBool::new(false));
        let queued = Arc::new(QueueBudget::default());
        t.runtime
            .spawn(peer_task(t.clone(), to, rx, up.clone(), queued.clone()));
        PeerSender { tx, up, queued }
    }

    /// Queues a batch; `false` (and the batch dropped) while the peer is
    /// down or its queue holds [`MAX_QUEUED_BYTES`]: Raft retransmits, and
    /// leaders probe the peer meanwhile.
    pub(super) fn send(&self, msgs: Vec<RaftMessage>) -> bool {
        if !self.up.load(Ordering::Relaxed) {
            return false;
        }
        let bytes = msgs.iter().map(|(_, m)| message_bytes(m)).sum();
        if !self.queued.take(bytes, MAX_QUEUED_BYTES) {
            return false;
        }
        if self.tx.send((bytes, msgs)).is_err() {
            self.queued.give(bytes);
            return false;
        }
        true
    }
}

/// Dials `to` and opens the stream its batches travel on; `None` when the
/// peer is unknown, does not answer within [`DIAL_TIMEOUT`], or presents a
/// key other than its pin.
pub(super) async fn connect(
    t: &Transport,
    to: NodeId,
    kind: StreamKind,
) -> Option<(quinn::Connection, quinn::SendStream)> {
    let peer = t.peer(to)?;
    let server_name = peer.addr.ip().to_string();
    let connecting = t
        .endpoint
        .connect_with(t.peer_config(), peer.addr, &server_name)
        .ok()?;
    let conn = match tokio::time::timeout(DIAL_TIMEOUT, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "dial failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(timeout = ?DIAL_TIMEOUT, "dial unanswered; starting over");
            return None;
        }
    };
    if let Some(pin) = peer.pin {
        let der = conn
            .peer_identity()
            .and_then(|id| {
                id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .and_then(|c| c.first().map(|c| c.to_vec()));
        if der.and_then(|d| spki_sha256(&d).ok()) != Some(pin) {
            t.stats.refused_pins.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                node_id = t.node().0,
                peer = to.0,
                "peer key does not match its pin; not sending to it"
            );
            conn.close(0u32.into(), b"key does not match pin");
            return None;
        }
    }
    let mut stream = conn.open_uni().await.ok()?;
    write_tag(&mut stream, kind).await.ok()?;
    Some((conn, stream))
}

/// Closes `conn` once nothing has come from the peer for
/// [`STALL_TIMEOUT`]; ends when the connection does.
async fn watch(conn: quinn::Connection) {
    let mut heard = conn.stats().udp_rx.datagrams;
    let mut heard_at = Instant::now();
    let mut ticks = tokio::time::interval(STALL_CHECK);
    loop {
        tokio::select! {
            _ = conn.closed() => return,
            _ = ticks.tick() => {}
        }
        let now = conn.stats().udp_rx.datagrams;
        if now != heard {
            heard = now;
            heard_at = Instant::now();
        } else if heard_at.elapsed() >= STALL_TIMEOUT {
            tracing::info!(silent = ?heard_at.elapsed(), "peer silent; replacing the connection");
            conn.close(STALLED.into(), b"peer silent");
            return;
        }
    }
}

/// How one connection ended.
enum Ended {
    /// The connection is gone; dial again at once.
    Gone,
    /// The transport dropped this peer's sender; the task is over.
    Closed,
}

/// Streams batches from `rx` to the peer until the connection is gone.
async fn stream_batches(
    t: &Transport,
    conn: &quinn::Connection,
    mut stream: quinn::SendStream,
    rx: &mut mpsc::UnboundedReceiver<Queued>,
    queued: &QueueBudget,
) -> Ended {
    loop {
        let batch = tokio::select! {
            b = rx.recv() => b,
            e = conn.closed() => {
                tracing::debug!(error = %e, "connection to peer closed");
                return Ended::Gone;
            }
        };
        let Some((mut bytes, mut batch)) = batch else {
            return Ended::Closed;
        };
        // Coalesce whatever else is already queued, then cut it into
        // frames of at most the target size each.
        while let Ok((more_bytes, more)) = rx.try_recv() {
            bytes += more_bytes;
            batch.extend(more);
        }
        // The batch's bytes stay counted until its frames are written.
        let _written = GiveBack(queued, bytes);
        for run in split_batch(batch, RAFT_FRAME_TARGET_BYTES, |(_, m)| message_bytes(m)) {
            let frame = Frame::Raft {
                from: t.node(),
                batch: run
                    .iter()
                    .map(|(group, msg)| (*group, WireMessage::from(msg)))
                    .collect(),
            };
            match write_frame(&mut stream, &frame, MAX_RAFT_FRAME_BYTES).await {
                Ok(()) => {}
                // Transport::send_raft let through only messages that fit;
                // a frame that does not fit is left out, not sent whole.
                Err(e @ crate::error::Error::Invalid(_)) => {
                    t.stats.oversize_outbound.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "raft frame over its limit; not sent");
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "stream to peer broke");
                    return Ended::Gone;
                }
            }
            t.stats.frames_out.fetch_add(1, Ordering::Relaxed);
            t.reached_peer();
        }
    }
}

/// Gives a batch's bytes back to its budget when dropped: written, or
/// abandoned with the connection.
struct GiveBack<'a>(&'a QueueBudget, usize);

impl Drop for GiveBack<'_> {
    fn drop(&mut self) {
        self.0.give(self.1);
    }
}

async fn peer_task(
    t: Arc<Transport>,
    to: NodeId,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    up: Arc<AtomicBool>,
    queued: Arc<QueueBudget>,
) {
    let span = tracing::debug_span!("peer", node_id = t.node().0, peer = to.0);
    let _g = span.enter();
    let mut delay = RECONNECT_MIN;
    // When a connection to this peer last ended; none before the first.
    let mut last_up: Option<Instant> = None;
    loop {
        let Some((conn, stream)) = connect(&t, to, StreamKind::Raft).await else {
            // Drop what queued while down; Raft resends what matters.
            while let Ok((bytes, _)) = rx.try_recv() {
                queued.give(bytes);
            }
            if rx.is_closed() {
                return;
            }
            tokio::time::sleep(delay).await;
            let ceiling = match last_up {
                Some(at) if at.elapsed() < RECENTLY => RECONNECT_RECENT_MAX,
                _ => RECONNECT_MAX,
            };
            delay = (delay * 2).min(ceiling);
            continue;
        };
        delay = RECONNECT_MIN;
        up.store(true, Ordering::Relaxed);
        t.reached_peer();
        t.runtime
            .spawn(watch(conn.clone()).instrument(span.clone()));
        let ended = stream_batches(&t, &conn, stream, &mut rx, &queued).await;
        up.store(false, Ordering::Relaxed);
        conn.close(0u32.into(), b"replaced");
        last_up = Some(Instant::now());
        if matches!(ended, Ended::Closed) || rx.is_closed() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::QueueBudget;

    #[test]
    fn a_peers_queue_refuses_batches_past_its_bytes_but_always_takes_one() {
        let q = QueueBudget::default();
        assert!(q.take(600, 1000), "an empty queue takes a batch");
        assert!(q.take(400, 1000));
        assert!(!q.take(1, 1000), "full");
        q.give(600);
        assert!(q.take(500, 1000));
        assert_eq!(q.used(), 900);
        q.give(900);
        assert!(q.take(5000, 1000), "a batch over the cap goes alone");
        assert!(!q.take(1, 1000));
    }
}
