//! Accepting peers and reading their frames.
//!
//! A Raft frame passes three checks before its messages reach the inbox:
//! the peer's certificate has the node role; if the catalog pins a key for
//! the node the frame names as its sender, the certificate holds that key;
//! and every message in it names that same node as its own sender. A
//! message that names another is dropped and counted (the rest of the
//! frame is delivered): without that last check one node's certificate
//! could speak, inside its batches, for any node of the cluster. Raft
//! itself only breaks the rule when a follower forwards a leadership
//! transfer (the message names the transferee); Flotilla asks only leaders
//! to transfer, so such a message never travels.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use quinn::{Connection, RecvStream, SendStream};

use super::frame::{read_frame, read_sized_frame, write_frame, Frame};
use super::Transport;
use crate::api::{RpcError, RpcRequest, RpcResponse};
use crate::certs::{role_of, spki_sha256, Role};
use crate::error::Error;
use crate::types::NodeId;

/// QUIC error code for a peer refused after the handshake.
const REFUSED: u32 = 0x46;
/// QUIC stream error code for a malformed frame.
const BAD_FRAME: u32 = 0x47;

pub(super) async fn accept_loop(t: Arc<Transport>) {
    while let Some(incoming) = t.endpoint.accept().await {
        let remote = incoming.remote_address();
        let t = t.clone();
        tokio::spawn(async move {
            match incoming.await {
                Ok(conn) => serve_connection(t, conn).await,
                Err(e) => {
                    t.stats.refused_handshakes.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(node_id = t.node().0, peer = %remote, error = %e, "connection refused during the TLS handshake");
                }
            }
        });
    }
}

/// What the handshake proved about a peer.
struct PeerCert {
    role: Option<Role>,
    spki: Option<[u8; 32]>,
}

fn peer_cert(conn: &Connection) -> PeerCert {
    let der = conn
        .peer_identity()
        .and_then(|id| {
            id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|certs| certs.first().map(|c| c.to_vec()));
    match der {
        Some(d) => PeerCert {
            role: role_of(&d).ok().flatten(),
            spki: spki_sha256(&d).ok(),
        },
        None => PeerCert {
            role: None,
            spki: None,
        },
    }
}

async fn serve_connection(t: Arc<Transport>, conn: Connection) {
    let cert = Arc::new(peer_cert(&conn));
    loop {
        tokio::select! {
            uni = conn.accept_uni() => {
                let Ok(recv) = uni else { return };
                let (t, conn, cert) = (t.clone(), conn.clone(), cert.clone());
                tokio::spawn(async move { serve_stream(t, conn, &cert, recv).await });
            }
            bi = conn.accept_bi() => {
                let Ok((send, recv)) = bi else { return };
                let (t, cert) = (t.clone(), cert.clone());
                tokio::spawn(async move { serve_request(t, &cert, send, recv).await });
            }
        }
    }
}

async fn serve_request(
    t: Arc<Transport>,
    cert: &PeerCert,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let req = match read_frame::<RpcRequest>(&mut recv).await {
        Ok(Some(r)) => r,
        Ok(None) | Err(Error::Unreachable(_)) => return,
        Err(e) => {
            t.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(node_id = t.node().0, error = %e, "malformed request; stream closed");
            let _ = recv.stop(BAD_FRAME.into());
            return;
        }
    };
    let key_mismatch = req
        .claimed_key()
        .is_some_and(|k| cert.spki.map(|s| s.as_slice() != k).unwrap_or(true));
    let resp = if key_mismatch {
        t.stats.refused_requests.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            node_id = t.node().0,
            "request refused: it claims a key other than the caller's certificate"
        );
        let e = Error::PermissionDenied(
            "the key named in the request is not the key of the caller's certificate".into(),
        );
        RpcResponse::Error(RpcError::from(&e))
    } else if !req.allowed(cert.role) {
        t.stats.refused_requests.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(node_id = t.node().0, role = ?cert.role, request = ?req, "request refused for the caller's role");
        let e = Error::PermissionDenied(format!(
            "a {:?} certificate may not make this request",
            cert.role
        ));
        RpcResponse::Error(RpcError::from(&e))
    } else {
        match t.service() {
            Some(s) => s.handle(req).await,
            None => RpcResponse::Error(RpcError::from(&Error::Unreachable(
                "the node is starting".into(),
            ))),
        }
    };
    if write_frame(&mut send, &resp).await.is_ok() {
        let _ = send.finish();
    }
}

async fn serve_stream(t: Arc<Transport>, conn: Connection, cert: &PeerCert, mut recv: RecvStream) {
    let peer = conn.remote_address();
    loop {
        let (frame, size) = match read_sized_frame::<Frame>(&mut recv).await {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(Error::Unreachable(_)) => return,
            Err(e) => {
                t.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(node_id = t.node().0, peer = %peer, error = %e, "malformed frame; stream closed");
                let _ = recv.stop(BAD_FRAME.into());
                return;
            }
        };
        match frame {
            Frame::SnapshotBegin { from, group, msg } => {
                if !sender_allowed(&t, &conn, cert, from) {
                    return;
                }
                match (*msg).into_raft() {
                    Ok(msg) if msg.from == from.0 => {
                        super::snapshot::receive(t, recv, from, group, msg).await;
                    }
                    _ => {
                        t.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(node_id = t.node().0, peer = %peer, "snapshot whose message is malformed or names another sender; stream closed");
                        let _ = recv.stop(BAD_FRAME.into());
                    }
                }
                return;
            }
            Frame::SnapshotChunk(_) => {
                t.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(node_id = t.node().0, peer = %peer, "snapshot chunk outside a transfer; stream closed");
                let _ = recv.stop(BAD_FRAME.into());
                return;
            }
            Frame::Raft { from, batch } => {
                if !sender_allowed(&t, &conn, cert, from) {
                    return;
                }
                let mut msgs = Vec::with_capacity(batch.len());
                let mut impostors = Vec::new();
                for (group, m) in batch {
                    match m.into_raft() {
                        // The frame's sender is the node the handshake
                        // proved (its pin matched) or, while it has no pin
                        // yet, the node it says it is; either way each
                        // message must come from that node and no other.
                        Ok(msg) if msg.from != from.0 => impostors.push((group, msg.from)),
                        Ok(msg) => {
                            t.stats
                                .raft_entries_in
                                .fetch_add(msg.entries.len() as u64, Ordering::Relaxed);
                            msgs.push((group, msg))
                        }
                        Err(e) => {
                            t.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(node_id = t.node().0, peer = %peer, error = %e, "malformed raft message; stream closed");
                            let _ = recv.stop(BAD_FRAME.into());
                            return;
                        }
                    }
                }
                if let Some((group, claimed)) = impostors.first() {
                    t.stats
                        .refused_senders
                        .fetch_add(impostors.len() as u64, Ordering::Relaxed);
                    tracing::warn!(
                        node_id = t.node().0,
                        peer = %peer,
                        from = from.0,
                        claimed,
                        group_id = group.0,
                        refused = impostors.len(),
                        "raft messages claiming a sender other than the peer's node refused"
                    );
                }
                t.stats.frames_in.fetch_add(1, Ordering::Relaxed);
                t.stats
                    .raft_bytes_in
                    .fetch_add(size as u64, Ordering::Relaxed);
                if let Some(inbox) = t.inbox() {
                    inbox.deliver(from, msgs);
                }
            }
        }
    }
}

/// Whether the peer may send Raft traffic as `from`: its certificate has
/// the node role and, if the catalog pins a key for `from`, holds that key.
/// A refused peer's connection is closed.
fn sender_allowed(t: &Transport, conn: &Connection, cert: &PeerCert, from: NodeId) -> bool {
    let peer = conn.remote_address();
    if cert.role != Some(Role::Node) {
        t.stats.refused_roles.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(node_id = t.node().0, peer = %peer, role = ?cert.role, "Raft traffic from a certificate without the node role refused");
        conn.close(REFUSED.into(), b"only nodes may send raft traffic");
        return false;
    }
    if let Some(pin) = t.pin_of(from) {
        if cert.spki != Some(pin) {
            t.stats.refused_pins.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(node_id = t.node().0, peer = %peer, claimed = from.0, "peer key does not match the pin of the node it claims to be");
            conn.close(REFUSED.into(), b"key does not match pin");
            return false;
        }
    }
    true
}
