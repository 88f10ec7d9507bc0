//! How nodes enter a cluster and say where they are: `Init` makes the
//! first node a cluster of its own, `Join` admits a node through group 0's
//! leader, `Announce` records a member's new address.

use std::net::SocketAddr;

use super::ask;
use crate::api::RpcResponse;
use crate::catalog::CatalogCommand;
use crate::error::{Error, Result};
use crate::multiraft::{Proposal, Reply};
use crate::node::server::NodeServer;
use crate::runtime::runner::DriverHandle;
use crate::types::{NodeId, CATALOG_GROUP};
use crate::wire;

/// Bootstraps a new cluster on `node` (once, ever) and starts its driver.
pub async fn init(node: &NodeServer, vshards: Option<u32>) -> Result<RpcResponse> {
    let cluster_id = node.init(vshards)?;
    Ok(RpcResponse::Inited { cluster_id })
}

/// Admits the calling node: group 0 gives it an id, and it gets the
/// catalog to store before opening any group.
pub async fn admit(
    h: &DriverHandle,
    addr: String,
    spki_sha256: Vec<u8>,
    store_id: u64,
) -> Result<RpcResponse> {
    let add = CatalogCommand::AddNode {
        addr,
        spki_sha256,
        store_id,
    };
    match ask(h.propose(CATALOG_GROUP, Proposal::Catalog(add))).await?? {
        Reply::NodeAdmitted(node_id) => Ok(RpcResponse::Joined {
            node_id,
            catalog: wire::encode(&ask(h.catalog()).await?),
        }),
        other => Err(Error::Invalid(format!("unexpected reply {other:?}"))),
    }
}

/// Records a member's new address through group 0, if the key it
/// presents is the one the catalog pins for it.
pub async fn announce(
    h: &DriverHandle,
    node: NodeId,
    addr: String,
    spki_sha256: Vec<u8>,
) -> Result<RpcResponse> {
    let catalog = ask(h.catalog()).await?;
    let Some(info) = catalog.nodes.get(&node) else {
        return Err(Error::Invalid(format!("node {} is not a member", node.0)));
    };
    if info.spki_sha256 != spki_sha256 {
        return Err(Error::PermissionDenied(format!(
            "the key presented is not the key node {} joined with",
            node.0
        )));
    }
    if addr.parse::<SocketAddr>().is_err() {
        return Err(Error::Invalid(format!("{addr} is not a socket address")));
    }
    if info.addr == addr {
        return Ok(RpcResponse::Announced);
    }
    let mut info = info.clone();
    info.addr = addr;
    let upsert = CatalogCommand::UpsertNode(info);
    ask(h.propose(CATALOG_GROUP, Proposal::Catalog(upsert))).await??;
    Ok(RpcResponse::Announced)
}
