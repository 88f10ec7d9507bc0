//! The client's connections: one per node address, dialled on first use
//! and kept, and a note of the addresses that failed lately.
//!
//! Every request of the library goes through [`Client::call_within`] (or
//! `call_sent`, which also tells whether it went unanswered), so
//! every caller (the client's routing, operator commands, the tests) dials
//! the same way: from an endpoint of the node's address family (an IPv6
//! endpoint is opened only when an IPv6 node is asked, so a host without
//! IPv6 still reaches IPv4 nodes), bound to the unspecified address so the
//! route to each node picks the source address. A refused certificate
//! arrives as [`Error::Certificate`], told apart by its TLS alert
//! ([`crate::transport::tls::certificate_refusal`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::Client;
use crate::api::{RpcRequest, RpcResponse};
use crate::error::{Error, Result};
use crate::transport::rpc;

/// Longest a single attempt may wait for an answer.
pub(super) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an address that failed stays skipped.
const DOWN_FOR: Duration = Duration::from_secs(3);

/// The client's QUIC endpoints, connections and failures.
pub(super) struct Conns {
    /// The endpoint for IPv4 nodes.
    v4: quinn::Endpoint,
    /// The endpoint for IPv6 nodes, opened on first use. A std `Mutex`, as
    /// are the others here: held only to read or swap an entry, never
    /// across an await.
    v6: Mutex<Option<quinn::Endpoint>>,
    /// How to dial: the client's certificate, the CA, the pin.
    tls: quinn::ClientConfig,
    /// One open connection per node address.
    open: Mutex<BTreeMap<SocketAddr, quinn::Connection>>,
    /// Addresses that recently failed to connect or answer, and when.
    down: Mutex<BTreeMap<SocketAddr, Instant>>,
}

impl Conns {
    /// Opens the IPv4 endpoint. Must run inside a tokio runtime.
    pub(super) fn new(tls: quinn::ClientConfig) -> Result<Conns> {
        Ok(Conns {
            v4: client_endpoint(SocketAddr::from(([0, 0, 0, 0], 0)))?,
            v6: Mutex::new(None),
            tls,
            open: Mutex::default(),
            down: Mutex::default(),
        })
    }

    /// The endpoint to reach `addr` from: the one of its address family.
    fn endpoint(&self, addr: SocketAddr) -> Result<quinn::Endpoint> {
        if addr.is_ipv4() {
            return Ok(self.v4.clone());
        }
        let mut v6 = self.v6.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = v6.as_ref() {
            return Ok(e.clone());
        }
        let e = client_endpoint(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)))?;
        *v6 = Some(e.clone());
        Ok(e)
    }

    /// An open connection to `addr`, dialled if there is none.
    async fn to(&self, addr: SocketAddr) -> Result<quinn::Connection> {
        let cached = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
            .filter(|c| c.close_reason().is_none())
            .cloned();
        if let Some(c) = cached {
            return Ok(c);
        }
        let c = rpc::connect(&self.endpoint(addr)?, &self.tls, addr).await?;
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr, c.clone());
        Ok(c)
    }
}

impl Client {
    /// Whether `addr` failed recently.
    pub(super) fn is_down(&self, addr: &SocketAddr) -> bool {
        self.inner
            .conns
            .down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(addr)
            .is_some_and(|t| t.elapsed() < DOWN_FOR)
    }

    /// Notes whether `addr` just failed (and drops its connection if so).
    pub(super) fn mark(&self, addr: SocketAddr, failed: bool) {
        let conns = &self.inner.conns;
        let mut down = conns.down.lock().unwrap_or_else(|p| p.into_inner());
        if failed {
            down.insert(addr, Instant::now());
            drop(down);
            conns
                .open
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&addr);
        } else {
            down.remove(&addr);
        }
    }

    /// One request to one node within the client's timeout.
    pub(super) async fn call_once(
        &self,
        addr: SocketAddr,
        req: &RpcRequest,
    ) -> Result<RpcResponse> {
        let deadline = Instant::now() + self.inner.timeout;
        let r = self.call_within(addr, req, deadline).await;
        self.mark(addr, matches!(r, Err(Error::Unreachable(_))));
        r
    }

    /// One request to one node, on a cached connection (dialled if needed),
    /// given at most [`ATTEMPT_TIMEOUT`] and never past `deadline`. An
    /// error answer is returned as the error it carries.
    pub(super) async fn call_within(
        &self,
        addr: SocketAddr,
        req: &RpcRequest,
        deadline: Instant,
    ) -> Result<RpcResponse> {
        self.call_sent(addr, req, deadline).await.0
    }

    /// [`Client::call_within`], also telling whether the request may have
    /// reached the node unanswered: a connection was made, and no answer
    /// came back on it.
    pub(super) async fn call_sent(
        &self,
        addr: SocketAddr,
        req: &RpcRequest,
        deadline: Instant,
    ) -> (Result<RpcResponse>, bool) {
        let limit = ATTEMPT_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
        self.attempt_sent(addr, req, limit).await
    }

    /// One request to one node, given `limit`.
    pub(super) async fn attempt(
        &self,
        addr: SocketAddr,
        req: &RpcRequest,
        limit: Duration,
    ) -> Result<RpcResponse> {
        self.attempt_sent(addr, req, limit).await.0
    }

    /// [`Client::attempt`], also telling whether the request may have
    /// reached the node unanswered.
    async fn attempt_sent(
        &self,
        addr: SocketAddr,
        req: &RpcRequest,
        limit: Duration,
    ) -> (Result<RpcResponse>, bool) {
        let mut connected = false;
        let attempt = async {
            let conn = self.inner.conns.to(addr).await?;
            connected = true;
            rpc::call_on(&conn, req).await
        };
        let r = tokio::time::timeout(limit, attempt).await;
        let unanswered = connected && !matches!(r, Ok(Ok(_)));
        let r = match r {
            Ok(Ok(RpcResponse::Error(e))) => Err(Error::from(e)),
            Ok(r) => r,
            Err(_) => Err(Error::Unreachable(format!(
                "{addr} did not answer within {limit:?}"
            ))),
        };
        (r, unanswered)
    }
}

/// A client endpoint bound to `local`.
fn client_endpoint(local: SocketAddr) -> Result<quinn::Endpoint> {
    quinn::Endpoint::client(local)
        .map_err(|e| Error::Unreachable(format!("cannot open a client endpoint: {e}")))
}
