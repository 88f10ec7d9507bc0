//! Requests beyond reads and writes: asking one node (`init` before a
//! cluster exists, a node's report), routing any request to its group's
//! leader, and the operator's requests (leadership, node states, checks).
//!
//! These are what `flotilla`'s operator commands and the process tests
//! use, so they route and retry exactly as reads and writes do.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::conn::ATTEMPT_TIMEOUT;
use super::{resolve, unexpected, Client};
use crate::api::{NodeReport, RpcRequest, RpcResponse};
use crate::catalog::NodeState;
use crate::error::{Error, Result};
use crate::types::{GroupId, NodeId, CATALOG_GROUP};

/// How long one request to a given node may take before that node counts
/// as unreachable: far above a round trip plus a Raft commit (`init` also
/// bootstraps a store), short enough that a dead node does not stall an
/// operator command, or a test polling every node, for long.
pub const NODE_CALL_TIMEOUT: Duration = Duration::from_secs(3);

impl Client {
    /// One request to the node at `addr`, whatever it leads: one attempt of
    /// at most [`NODE_CALL_TIMEOUT`] (and the client's timeout), no retry.
    /// An error answer is returned as the error it carries.
    pub async fn call_node(&self, addr: SocketAddr, req: &RpcRequest) -> Result<RpcResponse> {
        let limit = NODE_CALL_TIMEOUT.min(self.inner.timeout);
        let r = self.attempt(addr, req, limit).await;
        self.mark(addr, matches!(r, Err(Error::Unreachable(_))));
        r
    }

    /// The report of the node at `addr`.
    pub async fn node_status(&self, addr: SocketAddr) -> Result<NodeReport> {
        match self.call_node(addr, &RpcRequest::Status).await? {
            RpcResponse::Status(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends `req` to the leader of the group it is for
    /// ([`RpcRequest::group`]), following redirects and retrying until the
    /// client's deadline, as reads and writes are. Requests that name no
    /// group are refused: ask a node with [`Client::call_node`].
    pub async fn request(&self, req: &RpcRequest) -> Result<RpcResponse> {
        let group = req.group().ok_or_else(|| {
            Error::Invalid(format!("{req:?} is for no group; ask one node instead"))
        })?;
        self.call_group(group, req).await
    }

    /// Every node's report, as the catalog lists them: `Err` for a node
    /// that did not answer.
    pub async fn status(&self) -> Result<Vec<(NodeId, String, Result<NodeReport>)>> {
        let catalog = self.refresh_catalog().await?;
        let mut asks = tokio::task::JoinSet::new();
        let nodes: Vec<_> = catalog
            .nodes
            .values()
            .filter(|n| n.state != NodeState::Removed)
            .map(|n| (n.id, n.addr.clone()))
            .collect();
        for (i, (id, addr)) in nodes.iter().cloned().enumerate() {
            let me = self.clone();
            asks.spawn(async move {
                let deadline = Instant::now() + ATTEMPT_TIMEOUT.min(me.inner.timeout);
                let report = match resolve(&addr).await {
                    Ok(sock) => match me.call_within(sock, &RpcRequest::Status, deadline).await {
                        // Another node now listens where this one did (a
                        // node whose disk was replaced rejoined under a new
                        // id).
                        Ok(RpcResponse::Status(r)) if r.node != id => Err(Error::Unreachable(
                            format!("{addr} answers as node {}", r.node.0),
                        )),
                        Ok(RpcResponse::Status(r)) => Ok(r),
                        Ok(other) => Err(unexpected(&other)),
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                };
                (i, report)
            });
        }
        let mut reports: BTreeMap<usize, Result<NodeReport>> = BTreeMap::new();
        while let Some(done) = asks.join_next().await {
            let (i, report) =
                done.map_err(|e| Error::Invalid(format!("status task failed: {e}")))?;
            reports.insert(i, report);
        }
        Ok(nodes
            .into_iter()
            .enumerate()
            .map(|(i, (id, addr))| {
                let r = reports
                    .remove(&i)
                    .unwrap_or_else(|| Err(Error::Unreachable(format!("{addr} was not asked"))));
                (id, addr, r)
            })
            .collect())
    }

    /// Makes node `to` (a voter of `group`) the group's leader: the choice
    /// is recorded in the catalog, and the group's leader hands over as soon
    /// as `to` is caught up, and again whenever leadership drifts away.
    pub async fn transfer_leader(&self, group: GroupId, to: NodeId) -> Result<()> {
        self.catalog_change(RpcRequest::TransferLeader { group, to })
            .await
    }

    /// Sets a node's state through group 0 (admin certificate only).
    pub async fn set_node_state(&self, node: NodeId, state: NodeState) -> Result<()> {
        self.catalog_change(RpcRequest::SetNodeState { node, state })
            .await
    }

    /// Sends an operator's change to group 0's leader, which answers
    /// `Done` once the catalog holds it.
    async fn catalog_change(&self, req: RpcRequest) -> Result<()> {
        match self.call_group(CATALOG_GROUP, &req).await? {
            RpcResponse::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Runs a consistency check of `group` through its log; returns the
    /// apply index it ran at and the leader's digest.
    pub async fn checksum(&self, group: GroupId) -> Result<(u64, u64)> {
        match self
            .call_group(group, &RpcRequest::Checksum { group })
            .await?
        {
            RpcResponse::Checksum { index, digest } => Ok((index, digest)),
            other => Err(unexpected(&other)),
        }
    }

    /// The last consistency check of every group on the node at `addr`:
    /// (group, apply index, digest).
    pub async fn checksums_of(&self, addr: &str) -> Result<Vec<(GroupId, u64, u64)>> {
        let addr = resolve(addr).await?;
        match self.call_once(addr, &RpcRequest::Checksums).await? {
            RpcResponse::Checksums(c) => Ok(c),
            other => Err(unexpected(&other)),
        }
    }
}
