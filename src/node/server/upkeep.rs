//! Keeping peer addresses right: the node's side of moves and isolation.
//!
//! Three loops run beside the driver once a node runs. Every
//! `PEER_REFRESH` the transport's peer table is rebuilt from the catalog,
//! except for addresses learnt from seeds that the catalog has not caught
//! up with yet. A node that restarted on a new address records it through
//! group 0's leader (`Announce`), retrying until the catalog shows it. A
//! node that has reached no peer for `isolation_timeout` asks its seeds,
//! one pass per period, which node each is and where it listens, and dials
//! members that moved at their new addresses.
//!
//! Left out: learning addresses from inbound connections (a peer's source
//! address says nothing reliable about where it listens).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{NodeServer, ANNOUNCE_RETRY, PEER_REFRESH, SEED_CHECK_TIMEOUT};
use crate::api::{RpcError, RpcRequest, RpcResponse};
use crate::catalog::Catalog;
use crate::error::Error;
use crate::runtime::runner::DriverHandle;
use crate::transport::rpc::{self, Service};

impl NodeServer {
    /// Starts the three loops; each ends when the driver stops.
    pub(super) fn start_upkeep(self: &Arc<Self>, handle: DriverHandle) {
        let me = self.clone();
        let refresh = handle.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PEER_REFRESH).await;
                match refresh.catalog().await {
                    Ok(c) => me.refresh_peers(&c),
                    Err(_) => return,
                }
            }
        });
        tokio::spawn(self.clone().announce_loop(handle.clone()));
        tokio::spawn(self.clone().isolation_loop(handle));
    }

    pub(super) fn refresh_peers(&self, catalog: &Catalog) {
        let me = self.transport.node();
        let mut st = self.lock();
        for n in catalog.nodes.values().filter(|n| n.id != me) {
            let learned = match st.learned.get(&n.id) {
                Some((stale, addr)) if *stale == n.addr => Some(*addr),
                Some(_) => {
                    // The catalog caught up with (or moved past) what the
                    // seeds said: it is the authority again.
                    st.learned.remove(&n.id);
                    None
                }
                None => None,
            };
            let Some(addr) = learned.or_else(|| n.addr.parse::<SocketAddr>().ok()) else {
                continue;
            };
            let pin = <[u8; 32]>::try_from(n.spki_sha256.as_slice()).ok();
            self.transport.set_peer(n.id, addr, pin);
        }
    }

    /// Makes the catalog record this node's advertised address when it
    /// differs (the node restarted elsewhere with its data), retrying until
    /// the change is applied or the driver stops.
    async fn announce_loop(self: Arc<Self>, h: DriverHandle) {
        let me = self.transport.node();
        let addr = self.advertise.to_string();
        loop {
            let Ok(catalog) = h.catalog().await else {
                return;
            };
            let Some(info) = catalog.nodes.get(&me) else {
                return;
            };
            if info.addr == addr {
                return;
            }
            let req = RpcRequest::Announce {
                node: me,
                addr: addr.clone(),
                spki_sha256: self.spki.to_vec(),
            };
            // Ask this node first (it may lead group 0), then whoever it
            // names as leader, then the seeds; at most three redirects.
            let mut target: Option<String> = None;
            let mut candidates: Vec<String> = self.cfg.join.clone();
            for _ in 0..3 {
                let answer = match &target {
                    None => self.handle(req.clone(), Some(self.spki)).await,
                    Some(t) => self.call_node(t, &req).await,
                };
                match answer {
                    RpcResponse::Announced => {
                        tracing::info!(node_id = me.0, addr = %addr, "recorded this node's new address");
                        break;
                    }
                    RpcResponse::Error(RpcError::NotLeader { leader_addr, .. }) => {
                        target = leader_addr.or_else(|| candidates.pop());
                    }
                    _ => target = candidates.pop(),
                }
                if target.is_none() {
                    break;
                }
            }
            tokio::time::sleep(ANNOUNCE_RETRY).await;
        }
    }

    /// One request to another node with this node's certificate.
    async fn call_node(&self, addr: &str, req: &RpcRequest) -> RpcResponse {
        let Some(addr) = tokio::net::lookup_host(addr)
            .await
            .ok()
            .and_then(|mut a| a.next())
        else {
            return error(Error::Unreachable(format!("cannot resolve {addr}")));
        };
        let config = match self.client_config() {
            Ok(c) => c,
            Err(e) => return error(e),
        };
        match tokio::time::timeout(
            SEED_CHECK_TIMEOUT,
            rpc::call(self.transport.endpoint(), &config, addr, req),
        )
        .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => error(e),
            Err(_) => error(Error::Unreachable(format!("{addr} did not answer"))),
        }
    }

    /// While no peer has been reached for the isolation timeout, asks the
    /// seeds (one pass at a time, one pass per period) which nodes they are
    /// and where they listen, and dials members that moved at their new
    /// addresses.
    async fn isolation_loop(self: Arc<Self>, h: DriverHandle) {
        let period = self.cfg.isolation_timeout;
        let check = (period / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut last_pass: Option<tokio::time::Instant> = None;
        loop {
            tokio::time::sleep(check).await;
            let Ok(catalog) = h.catalog().await else {
                return;
            };
            let me = self.transport.node();
            let has_peers = catalog.nodes.keys().any(|n| *n != me);
            let isolated = self.transport.since_reached() >= period;
            let due = last_pass.is_none_or(|t| t.elapsed() >= period);
            if !(has_peers && isolated && due) || self.cfg.join.is_empty() {
                continue;
            }
            last_pass = Some(tokio::time::Instant::now());
            tracing::warn!(node_id = me.0, after = ?self.transport.since_reached(), "no peer reached; asking the seeds where the peers are");
            for seed in &self.cfg.join {
                if *seed == self.advertise.to_string() {
                    continue;
                }
                let RpcResponse::Status(r) = self.call_node(seed, &RpcRequest::Status).await else {
                    continue;
                };
                if r.cluster_id != Some(catalog.cluster_id) || r.node == me {
                    continue;
                }
                let (Some(info), Ok(addr)) =
                    (catalog.nodes.get(&r.node), r.addr.parse::<SocketAddr>())
                else {
                    continue;
                };
                if info.addr == r.addr {
                    continue;
                }
                tracing::info!(node_id = me.0, peer = r.node.0, was = %info.addr, now = %addr, "learned a peer's new address from a seed");
                self.lock()
                    .learned
                    .insert(r.node, (info.addr.clone(), addr));
                let pin = <[u8; 32]>::try_from(info.spki_sha256.as_slice()).ok();
                self.transport.set_peer(r.node, addr, pin);
            }
        }
    }
}

/// The answer a failed call stands for.
fn error(e: Error) -> RpcResponse {
    RpcResponse::Error(RpcError::from(&e))
}
