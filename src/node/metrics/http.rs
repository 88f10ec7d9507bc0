//! The HTTP side of a node's metrics: `/metrics`, `/health`, `/ready`.
//!
//! Served with `hyper` (HTTP/1.1 only) on a listener of its own, apart
//! from the QUIC endpoint. What a scraper may cost the node is bounded:
//! at most [`MAX_CONNECTIONS`] connections at once (one more is closed
//! unanswered), request heads of at most [`MAX_REQUEST_BYTES`] that must
//! arrive within [`HEAD_TIMEOUT`], and a connection lives at most
//! [`CONNECTION_LIFETIME`]. Only `GET` (and `HEAD`) are answered. There
//! is no TLS and no authentication: the figures hold no keys or values,
//! but an operator binds the listener to a private or loopback address.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::scrape;
use crate::error::{Error, Result};
use crate::node::server::NodeServer;
use crate::node::Lifecycle;

/// Connections served at once; Prometheus keeps one per target.
const MAX_CONNECTIONS: usize = 16;
/// Largest request head read (hyper's floor is 8 KiB).
const MAX_REQUEST_BYTES: usize = 16 << 10;
/// Time a client has to send a request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest life of one connection, however busy; scrapers reconnect.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Pause after a failed accept (out of file descriptors, say), so the
/// loop does not spin on it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long `/ready` waits for the driver to answer.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(2);

/// A running metrics listener; dropping it stops it.
pub struct MetricsServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// The address it listens on (the port chosen, for `:0`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `node`'s metrics and health checks on `listen` until the
/// returned server is dropped. Must run inside a tokio runtime.
pub async fn serve(node: Arc<NodeServer>, listen: SocketAddr) -> Result<MetricsServer> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| Error::Invalid(format!("cannot listen for metrics on {listen}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Invalid(format!("metrics listener: {e}")))?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener could not accept");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::debug!("metrics connection refused: too many at once");
                continue;
            };
            tokio::spawn(connection(node.clone(), stream, slot));
        }
    });
    Ok(MetricsServer { addr, task })
}

async fn connection(
    node: Arc<NodeServer>,
    stream: tokio::net::TcpStream,
    _slot: tokio::sync::OwnedSemaphorePermit,
) {
    let service = hyper::service::service_fn(move |req| {
        let node = node.clone();
        async move { Ok::<_, Infallible>(respond(&node, &req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_REQUEST_BYTES)
        .serve_connection(TokioIo::new(stream), service);
    if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
        tracing::debug!(error = %e, "metrics connection ended");
    }
}

/// The answer to one request.
async fn respond(node: &NodeServer, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = text(StatusCode::OK, scrape::render(node).await);
            r.headers_mut().insert(
                CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                ),
            );
            r
        }
        "/health" => match health(node) {
            Ok(()) => text(StatusCode::OK, "ok\n".into()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        "/ready" => match ready(node).await {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /health or /ready\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The process answers, and its driver has not died: a node still
/// joining is healthy, one that failed (its driver stopped on a local
/// fault, or joining gave up) is not.
fn health(node: &NodeServer) -> std::result::Result<(), String> {
    match node.lifecycle() {
        Lifecycle::Failed { reason } => Err(format!("failed: {reason}")),
        _ => Ok(()),
    }
}

/// The node serves: it has joined, holds a catalog that names it, and
/// every group it hosts had a leader within the grace.
async fn ready(node: &NodeServer) -> std::result::Result<(), String> {
    let lifecycle = node.lifecycle();
    if lifecycle != Lifecycle::Ready {
        return Err(lifecycle.to_string());
    }
    let h = node.driver().ok_or("no driver")?;
    let late = |_| "the driver did not answer in time".to_string();
    let gone = |_| "the driver stopped".to_string();
    let catalog = tokio::time::timeout(DRIVER_TIMEOUT, h.catalog())
        .await
        .map_err(late)?
        .map_err(gone)?;
    if catalog.cluster_id == 0 || !catalog.nodes.contains_key(&node.transport.node()) {
        return Err("no catalog naming this node yet".into());
    }
    let groups = tokio::time::timeout(DRIVER_TIMEOUT, h.status())
        .await
        .map_err(late)?
        .map_err(gone)?;
    let led: Vec<_> = groups
        .iter()
        .map(|g| (g.group, g.leader.is_some()))
        .collect();
    let leaderless = node.metrics.leaderless(&led, Instant::now());
    match leaderless.as_slice() {
        [] => Ok(()),
        some => Err(format!(
            "{} of {} groups had no leader for {:?} (first: {})",
            some.len(),
            led.len(),
            super::READY_LEADER_GRACE,
            some[0]
        )),
    }
}
