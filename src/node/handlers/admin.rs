//! An operator's requests: leadership preferences, node states and
//! consistency checks. Changes go through group 0's log like any catalog
//! change, so they are refused here only for reasons the caller can fix.

use super::{applied, ask};
use crate::api::RpcResponse;
use crate::catalog::{CatalogCommand, NodeState, DEFAULT_REPLICAS};
use crate::error::{Error, Result};
use crate::multiraft::Proposal;
use crate::runtime::runner::DriverHandle;
use crate::types::{GroupId, NodeId, CATALOG_GROUP};

/// Records in the catalog that `to` should lead `group`; the group's
/// leader then hands over, and keeps it so.
pub async fn transfer_leader(h: &DriverHandle, group: GroupId, to: NodeId) -> Result<RpcResponse> {
    let prefer = CatalogCommand::PreferLeader { group, node: to };
    applied(ask(h.propose(CATALOG_GROUP, Proposal::Catalog(prefer))).await??)
}

/// Changes a node's state through group 0. Taking a node out of service is
/// refused when fewer active nodes than replicas would be left, so every
/// group keeps its replicas.
pub async fn set_node_state(
    h: &DriverHandle,
    node: NodeId,
    state: NodeState,
) -> Result<RpcResponse> {
    let catalog = ask(h.catalog()).await?;
    let Some(info) = catalog.nodes.get(&node) else {
        return Err(Error::Invalid(format!("there is no node {}", node.0)));
    };
    if info.state == state {
        return Ok(RpcResponse::Done);
    }
    if state == NodeState::Dead {
        return Err(Error::Invalid(
            "a node is declared dead by its silence, not by an operator; \
             decommission or remove it instead"
                .into(),
        ));
    }
    if info.state == NodeState::Removed {
        return Err(Error::Invalid(format!(
            "node {} was removed; it cannot come back",
            node.0
        )));
    }
    let others = catalog
        .nodes
        .values()
        .filter(|n| n.id != node && n.state == NodeState::Active)
        .count();
    if state != NodeState::Active && others < DEFAULT_REPLICAS {
        return Err(Error::Invalid(format!(
            "taking node {} out would leave {others} active nodes, fewer than the {DEFAULT_REPLICAS} replicas every group keeps",
            node.0
        )));
    }
    let change = CatalogCommand::SetNodeState { node, state };
    ask(h.propose(CATALOG_GROUP, Proposal::Catalog(change))).await??;
    Ok(RpcResponse::Done)
}

/// Runs a consistency check of `group` through its log.
pub async fn checksum(h: &DriverHandle, group: GroupId) -> Result<RpcResponse> {
    applied(ask(h.propose(group, Proposal::Checksum)).await??)
}

/// Every group's last consistency check on this node.
pub async fn checksums(h: &DriverHandle) -> Result<RpcResponse> {
    let checks = ask(h.checksums()).await??;
    Ok(RpcResponse::Checksums(
        checks.into_iter().map(|(g, (i, d))| (g, i, d)).collect(),
    ))
}
