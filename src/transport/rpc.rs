//! Requests to a node: one bidirectional QUIC stream per call.
//!
//! A caller opens a stream, writes the [`StreamKind::Request`] tag and one
//! [`RpcRequest`] frame (at most [`MAX_REQUEST_FRAME_BYTES`]) and finishes
//! its side; the node checks that the caller's certificate role may make
//! that request, hands it to its [`Service`] with the hash of that
//! certificate's key (which binds the caller's write sessions), and
//! answers with one [`RpcResponse`] frame (at most
//! [`MAX_RESPONSE_FRAME_BYTES`]). The types are [`crate::api`]'s; what a
//! request does is the [`Service`]'s (a node's is
//! [`crate::node::handlers`]): this module only carries them.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use crate::api::{RpcRequest, RpcResponse};
use crate::error::{Error, Result};

use super::frame::{
    encode_frame, read_frame, StreamKind, MAX_REQUEST_FRAME_BYTES, MAX_RESPONSE_FRAME_BYTES,
};
use super::tls::certificate_refusal;

/// What a node does with requests.
pub trait Service: Send + Sync + 'static {
    /// Answers one request; the transport has already checked that the
    /// caller's certificate may make it. `caller` is the SHA-256 of that
    /// certificate's public key (`None` when the handshake gave none).
    fn handle(
        &self,
        req: RpcRequest,
        caller: Option<[u8; 32]>,
    ) -> Pin<Box<dyn Future<Output = RpcResponse> + Send + '_>>;
}

/// Makes one call to the node at `addr` over `endpoint`.
pub async fn call(
    endpoint: &quinn::Endpoint,
    config: &quinn::ClientConfig,
    addr: SocketAddr,
    req: &RpcRequest,
) -> Result<RpcResponse> {
    let conn = connect(endpoint, config, addr).await?;
    let resp = call_on(&conn, req).await;
    conn.close(0u32.into(), b"done");
    resp
}

/// Dials the node at `addr`. A refused certificate (either side's) is an
/// [`Error::Certificate`]; any other failure [`Error::Unreachable`].
pub async fn connect(
    endpoint: &quinn::Endpoint,
    config: &quinn::ClientConfig,
    addr: SocketAddr,
) -> Result<quinn::Connection> {
    let connecting = endpoint
        .connect_with(config.clone(), addr, &addr.ip().to_string())
        .map_err(|e| Error::Unreachable(format!("{addr}: {e}")))?;
    connecting.await.map_err(|e| connection_error(addr, &e))
}

/// Makes one call on an open connection (a stream of its own).
pub async fn call_on(conn: &quinn::Connection, req: &RpcRequest) -> Result<RpcResponse> {
    let addr = conn.remote_address();
    // The tag and the request leave in one write.
    let mut out = vec![StreamKind::Request.tag()];
    out.extend(encode_frame(req, MAX_REQUEST_FRAME_BYTES)?);
    let answer = async {
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| connection_error(addr, &e))?;
        send.write_all(&out)
            .await
            .map_err(|e| Error::Unreachable(e.to_string()))?;
        let _ = send.finish();
        let answer = read_frame::<RpcResponse>(&mut recv, MAX_RESPONSE_FRAME_BYTES).await?;
        answer.ok_or_else(|| {
            Error::Unreachable(format!("{addr} closed the stream without answering"))
        })
    };
    match answer.await {
        // A server that refuses the client's certificate does so after the
        // client's side of the handshake is done: the connection closes
        // under the first call.
        Err(e) => match conn.close_reason() {
            Some(reason) => match connection_error(addr, &reason) {
                refused @ Error::Certificate { .. } => Err(refused),
                _ => Err(e),
            },
            None => Err(e),
        },
        ok => ok,
    }
}

/// What a failed connection means for its caller.
fn connection_error(addr: SocketAddr, e: &quinn::ConnectionError) -> Error {
    match certificate_refusal(e) {
        Some(detail) => Error::Certificate {
            path: addr.to_string(),
            detail,
        },
        None => Error::Unreachable(format!("{addr}: {e}")),
    }
}
