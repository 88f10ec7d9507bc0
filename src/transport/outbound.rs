//! Dialing peers and streaming batches to them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::frame::{write_frame, Frame};
use super::Transport;
use crate::certs::spki_sha256;
use crate::multiraft::runner;
use crate::multiraft::GroupMessage;
use crate::types::NodeId;
use crate::wire::message::WireMessage;

/// First reconnect delay; doubles per failure.
const RECONNECT_MIN: Duration = Duration::from_millis(50);
/// Longest reconnect delay: a peer that comes back is found within this.
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// The handle of one peer's outbound task.
pub(super) struct PeerSender {
    tx: mpsc::UnboundedSender<Vec<GroupMessage>>,
    /// Whether the task holds an open stream to the peer.
    up: Arc<AtomicBool>,
}

/// The driver thread's [`runner::Transport`] over QUIC.
pub struct QuicSender {
    t: Arc<Transport>,
}

impl QuicSender {
    pub(super) fn new(t: Arc<Transport>) -> Self {
        QuicSender { t }
    }
}

impl runner::Transport for QuicSender {
    fn send(&mut self, to: NodeId, msgs: Vec<GroupMessage>) -> bool {
        let mut senders = self.t.senders.lock().unwrap_or_else(|p| p.into_inner());
        let s = senders.entry(to).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let up = Arc::new(AtomicBool::new(false));
            self.t
                .runtime
                .spawn(peer_task(self.t.clone(), to, rx, up.clone()));
            PeerSender { tx, up }
        });
        // While the peer is down, drop the batch: Raft retransmits, and the
        // `false` makes leaders probe the peer instead of streaming to it.
        s.up.load(Ordering::Relaxed) && s.tx.send(msgs).is_ok()
    }
}

async fn connect(t: &Transport, to: NodeId) -> Option<quinn::SendStream> {
    let peer = t.peer(to)?;
    let server_name = peer.addr.ip().to_string();
    let conn = t
        .endpoint
        .connect_with(t.client_config(), peer.addr, &server_name)
        .ok()?
        .await;
    let conn = match conn {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(node_id = t.node().0, peer = to.0, error = %e, "dial failed");
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
    conn.open_uni().await.ok()
}

async fn peer_task(
    t: Arc<Transport>,
    to: NodeId,
    mut rx: mpsc::UnboundedReceiver<Vec<GroupMessage>>,
    up: Arc<AtomicBool>,
) {
    let span = tracing::debug_span!("peer", node_id = t.node().0, peer = to.0);
    let _g = span.enter();
    let mut delay = RECONNECT_MIN;
    loop {
        let Some(mut stream) = connect(&t, to).await else {
            up.store(false, Ordering::Relaxed);
            // Drop what queued while down; Raft resends what matters.
            while rx.try_recv().is_ok() {}
            if rx.is_closed() {
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RECONNECT_MAX);
            continue;
        };
        delay = RECONNECT_MIN;
        up.store(true, Ordering::Relaxed);
        t.reached_peer();
        while let Some(mut batch) = rx.recv().await {
            // Coalesce whatever else is already queued into the same frame.
            while let Ok(more) = rx.try_recv() {
                batch.extend(more);
            }
            let frame = Frame::Raft {
                from: t.node(),
                batch: batch
                    .iter()
                    .map(|m| (m.group, WireMessage::from(&m.msg)))
                    .collect(),
            };
            if let Err(e) = write_frame(&mut stream, &frame).await {
                tracing::debug!(error = %e, "stream to peer broke");
                break;
            }
            t.stats.frames_out.fetch_add(1, Ordering::Relaxed);
            t.reached_peer();
        }
        up.store(false, Ordering::Relaxed);
        if rx.is_closed() {
            return;
        }
    }
}
