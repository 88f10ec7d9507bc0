//! Accepting peers and reading their streams.
//!
//! A connection is counted against its certificate's key as soon as the
//! handshake is done, and refused past its role's cap. Each stream it
//! opens must name its kind in its first byte within [`FRAME_STALL`]; a
//! kind that its direction does not carry, that the certificate's role may
//! not open, or that this node does not serve, is refused before any body
//! is read. A request stream must deliver its whole request within
//! [`REQUEST_TIMEOUT`]; a Raft stream may idle between frames, but a frame
//! that stops arriving partway is cut off ([`super::frame::read_body`]).
//!
//! A Raft frame passes two more checks before its messages reach the
//! inbox: if the catalog pins a key for the node the frame names as its
//! sender, the certificate holds that key; and every message in it names
//! that same node as its own sender. A message that names another is
//! dropped and counted (the rest of the frame is delivered): without that
//! last check one node's certificate could speak, inside its batches, for
//! any node of the cluster. Raft itself only breaks the rule when a
//! follower forwards a leadership transfer (the message names the
//! transferee); Flotilla asks only leaders to transfer, so such a message
//! never travels.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, ConnectionError, RecvStream, SendStream, TransportErrorCode};

use super::frame::{
    decode_body, encode_frame, read_body, read_tag, Frame, FrameError, StreamKind, FRAME_STALL,
    MAX_RESPONSE_FRAME_BYTES,
};
use super::refusal::Refusal;
use super::Transport;
use crate::api::{RpcError, RpcRequest, RpcResponse};
use crate::certs::{role_of, spki_sha256, Role};
use crate::error::Error;
use crate::types::NodeId;

/// QUIC error code for a peer refused after the handshake.
const REFUSED: u32 = 0x46;
/// QUIC stream error code for a malformed, oversize, truncated or stalled
/// frame.
const BAD_FRAME: u32 = 0x47;
/// QUIC stream error code for a stream whose kind is refused.
const BAD_STREAM: u32 = 0x49;
/// Longest a request stream may take to deliver its request, from the
/// moment it opened: the largest request crosses a LAN in milliseconds.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

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
    let peer = conn.remote_address();
    let Some(_slot) = t.admit(cert.spki.unwrap_or_default(), cert.role) else {
        t.refuse(
            Refusal::ConnectionCap,
            &peer,
            &format_args!(
                "a {:?} certificate already holds as many connections as it may",
                cert.role
            ),
        );
        conn.close(REFUSED.into(), b"too many connections for this certificate");
        return;
    };
    loop {
        let ended = tokio::select! {
            uni = conn.accept_uni() => match uni {
                Ok(recv) => {
                    let (t, cert) = (t.clone(), cert.clone());
                    tokio::spawn(async move { serve_uni(t, peer, &cert, recv).await });
                    continue;
                }
                Err(e) => e,
            },
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    let (t, cert) = (t.clone(), cert.clone());
                    tokio::spawn(async move { serve_bi(t, peer, &cert, send, recv).await });
                    continue;
                }
                Err(e) => e,
            },
        };
        if let ConnectionError::TransportError(e) = &ended {
            if e.code == TransportErrorCode::STREAM_LIMIT_ERROR {
                t.refuse(Refusal::StreamCap, &peer, &e);
            }
        }
        return;
    }
}

/// Reads the kind a new stream names and checks that it travels in this
/// direction (`carries`) and that the peer's role may open it; `None`,
/// with the stream stopped and the refusal counted, otherwise.
async fn open_kind(
    t: &Transport,
    peer: SocketAddr,
    cert: &PeerCert,
    recv: &mut RecvStream,
    carries: &[StreamKind],
) -> Option<StreamKind> {
    let tag = match tokio::time::timeout(FRAME_STALL, read_tag(recv)).await {
        Ok(Ok(Some(tag))) => tag,
        Ok(Ok(None)) | Ok(Err(_)) => return None,
        Err(_) => {
            t.refuse(Refusal::Stalled, &peer, &"a stream named no kind in time");
            let _ = recv.stop(BAD_STREAM.into());
            return None;
        }
    };
    let refusal = match StreamKind::from_tag(tag) {
        None => Some((Refusal::Kind, format!("a stream of unknown kind {tag}"))),
        Some(k) if !k.may_open(cert.role) => Some((
            Refusal::Role,
            format!("a {:?} certificate may not open a {k:?} stream", cert.role),
        )),
        Some(k) if !carries.contains(&k) => Some((
            Refusal::Kind,
            format!("a {k:?} stream in the wrong direction"),
        )),
        Some(_) => None,
    };
    match refusal {
        Some((why, detail)) => {
            t.refuse(why, &peer, &detail);
            let _ = recv.stop(BAD_STREAM.into());
            None
        }
        None => StreamKind::from_tag(tag),
    }
}

/// Counts and logs a frame that was not read (a lost stream is neither)
/// and stops its stream.
fn refuse_frame(t: &Transport, peer: SocketAddr, recv: &mut RecvStream, e: &FrameError) {
    let why = match e {
        FrameError::Gone(_) => return,
        FrameError::Oversize { .. } => Refusal::Oversize,
        FrameError::Truncated => Refusal::Truncated,
        FrameError::Stalled => Refusal::Stalled,
        FrameError::Malformed(_) => Refusal::Malformed,
    };
    t.refuse(why, &peer, e);
    let _ = recv.stop(BAD_FRAME.into());
}

async fn serve_bi(
    t: Arc<Transport>,
    peer: SocketAddr,
    cert: &PeerCert,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let read = async {
        let kind = open_kind(&t, peer, cert, &mut recv, &[StreamKind::Request]).await?;
        match read_body(&mut recv, kind.max_frame_bytes()).await {
            Ok(Some(body)) => match decode_body::<RpcRequest>(&body) {
                Ok(req) => Some(req),
                Err(e) => {
                    refuse_frame(&t, peer, &mut recv, &e);
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                refuse_frame(&t, peer, &mut recv, &e);
                None
            }
        }
    };
    let req = match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
        Ok(Some(req)) => req,
        Ok(None) => {
            let _ = send.reset(BAD_FRAME.into());
            return;
        }
        Err(_) => {
            t.refuse(
                Refusal::Stalled,
                &peer,
                &format_args!("a request did not arrive whole within {REQUEST_TIMEOUT:?}"),
            );
            let _ = recv.stop(BAD_FRAME.into());
            let _ = send.reset(BAD_FRAME.into());
            return;
        }
    };
    serve_request(t, cert, send, req).await
}

async fn serve_request(t: Arc<Transport>, cert: &PeerCert, mut send: SendStream, req: RpcRequest) {
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
            Some(s) => s.handle(req, cert.spki).await,
            None => RpcResponse::Error(RpcError::from(&Error::Unreachable(
                "the node is starting".into(),
            ))),
        }
    };
    let frame = encode_frame(&resp, MAX_RESPONSE_FRAME_BYTES).or_else(|e| {
        tracing::warn!(node_id = t.node().0, error = %e, "answer too large; an error goes instead");
        let e = Error::Invalid(format!(
            "the answer exceeds the response limit of {MAX_RESPONSE_FRAME_BYTES} bytes; ask for less"
        ));
        encode_frame(&RpcResponse::Error(RpcError::from(&e)), MAX_RESPONSE_FRAME_BYTES)
    });
    if let Ok(frame) = frame {
        if send.write_all(&frame).await.is_ok() {
            let _ = send.finish();
        }
    }
}

async fn serve_uni(t: Arc<Transport>, peer: SocketAddr, cert: &PeerCert, mut recv: RecvStream) {
    let kinds = [StreamKind::Raft, StreamKind::Snapshot];
    match open_kind(&t, peer, cert, &mut recv, &kinds).await {
        Some(StreamKind::Raft) => serve_raft(t, peer, cert, recv).await,
        Some(StreamKind::Snapshot) => serve_snapshot(t, peer, cert, recv).await,
        _ => {}
    }
}

/// A snapshot stream: its first frame names the transfer, then
/// `snapshot::receive` stages the chunks that follow.
async fn serve_snapshot(
    t: Arc<Transport>,
    peer: SocketAddr,
    cert: &PeerCert,
    mut recv: RecvStream,
) {
    let max = StreamKind::Snapshot.max_frame_bytes();
    let first = match read_body(&mut recv, max).await {
        Ok(Some(body)) => decode_body::<Frame>(&body),
        Ok(None) => return,
        Err(e) => return refuse_frame(&t, peer, &mut recv, &e),
    };
    let (from, group, msg) = match first {
        Ok(Frame::SnapshotBegin { from, group, msg }) => (from, group, msg),
        Ok(_) => {
            t.refuse(
                Refusal::Kind,
                &peer,
                &"a snapshot stream that does not begin a transfer",
            );
            let _ = recv.stop(BAD_FRAME.into());
            return;
        }
        Err(e) => return refuse_frame(&t, peer, &mut recv, &e),
    };
    if !pin_matches(&t, peer, cert, from) {
        let _ = recv.stop(REFUSED.into());
        return;
    }
    match (*msg).into_raft() {
        Ok(msg) if msg.from == from.0 => {
            super::snapshot::receive(t, recv, from, group, msg).await;
        }
        _ => {
            t.refuse(
                Refusal::Malformed,
                &peer,
                &"a snapshot whose message is malformed or names another sender",
            );
            let _ = recv.stop(BAD_FRAME.into());
        }
    }
}

/// A Raft stream: batches of Raft messages, one frame each, for as long as
/// the peer keeps it open.
async fn serve_raft(t: Arc<Transport>, peer: SocketAddr, cert: &PeerCert, mut recv: RecvStream) {
    loop {
        let body = match read_body(&mut recv, StreamKind::Raft.max_frame_bytes()).await {
            Ok(Some(body)) => body,
            Ok(None) => return,
            Err(e) => return refuse_frame(&t, peer, &mut recv, &e),
        };
        let frame = match decode_body::<Frame>(&body) {
            Ok(f) => f,
            Err(e) => return refuse_frame(&t, peer, &mut recv, &e),
        };
        let size = 4 + body.len();
        drop(body);
        let Frame::Raft { from, batch } = frame else {
            t.refuse(Refusal::Kind, &peer, &"a snapshot frame on a Raft stream");
            let _ = recv.stop(BAD_FRAME.into());
            return;
        };
        if !pin_matches(&t, peer, cert, from) {
            let _ = recv.stop(REFUSED.into());
            return;
        }
        let mut msgs = Vec::with_capacity(batch.len());
        let mut impostors = Vec::new();
        for (group, m) in batch {
            match m.into_raft() {
                // The frame's sender is the node the handshake proved (its
                // pin matched) or, while it has no pin yet, the node it says
                // it is; either way each message must come from that node
                // and no other.
                Ok(msg) if msg.from != from.0 => impostors.push((group, msg.from)),
                Ok(msg) => {
                    t.stats
                        .raft_entries_in
                        .fetch_add(msg.entries.len() as u64, Ordering::Relaxed);
                    msgs.push((group, msg))
                }
                Err(e) => return refuse_frame(&t, peer, &mut recv, &FrameError::Malformed(e)),
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

/// Whether the peer's key is the one the catalog pins for `from`, if it
/// pins one (the stream's kind already proved the node role); counted and
/// logged when not.
fn pin_matches(t: &Transport, peer: SocketAddr, cert: &PeerCert, from: NodeId) -> bool {
    match t.pin_of(from) {
        Some(pin) if cert.spki != Some(pin) => {
            t.stats.refused_pins.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(node_id = t.node().0, peer = %peer, claimed = from.0, "peer key does not match the pin of the node it claims to be");
            false
        }
        _ => true,
    }
}
