//! Whether a bootstrapped data directory may restart: what its own
//! catalog, its seeds and its peers say of it (see [`standing`]).

use super::SEED_CHECK_TIMEOUT;
use crate::api::{RpcRequest, RpcResponse};
use crate::catalog::{Catalog, NodeState};
use crate::error::Result;
use crate::storage::Engine;
use crate::transport::rpc;
use crate::transport::{TlsIdentity, Transport};
use crate::types::NodeId;

/// What the cluster says of a bootstrapped data directory.
pub(super) enum Standing {
    /// Nothing against it: restart.
    Member,
    /// A seed belongs to another cluster.
    OtherCluster { seed: String, theirs: u64 },
    /// The catalog (this node's own, or a peer's) removed this node.
    Removed { by: String },
}

/// Decides whether a bootstrapped node may restart. Its own catalog
/// speaks first; then the seeds and the peers that catalog names, in that
/// order, until one answers: a seed of another cluster, or a catalog that
/// removed this node while it was down, refuses the restart. All of them
/// are asked at once, and their answers are taken in that order, so an
/// unreachable address costs the restart one short timeout however many
/// there are (a whole cluster restarted at once used to wait on each dead
/// peer in turn), and a node none of whose peers answers restarts on its
/// own catalog.
pub(super) async fn standing(
    t: &Transport,
    identity: &TlsIdentity,
    seeds: &[String],
    engine: &Engine,
) -> Result<Standing> {
    let (Some(ours), Some(me), Some(catalog)) =
        (engine.cluster_id()?, engine.node_id()?, engine.catalog()?)
    else {
        return Ok(Standing::Member);
    };
    if removed(&catalog, me) {
        return Ok(Standing::Removed {
            by: "its own catalog says so".into(),
        });
    }
    let Ok(config) = identity.client_config() else {
        return Ok(Standing::Member);
    };
    let local = t.local_addr().ok();
    let peers = catalog
        .nodes
        .values()
        .filter(|n| n.id != me && n.state != NodeState::Removed)
        .map(|n| n.addr.clone());
    let mut asked = std::collections::BTreeSet::new();
    let mut asks = Vec::new();
    for (i, target) in seeds.iter().cloned().chain(peers).enumerate() {
        let Some(addr) = tokio::net::lookup_host(target.as_str())
            .await
            .ok()
            .and_then(|mut a| a.next())
        else {
            continue;
        };
        if Some(addr) == local || !asked.insert(addr) {
            continue;
        }
        let (endpoint, config) = (t.endpoint().clone(), config.clone());
        let is_seed = i < seeds.len();
        asks.push(tokio::spawn(async move {
            ask(&endpoint, &config, addr, &target, is_seed, ours, me).await
        }));
    }
    let mut verdict = Standing::Member;
    for task in &mut asks {
        if let Ok(Some(v)) = task.await {
            verdict = v;
            break;
        }
    }
    for task in &asks {
        task.abort();
    }
    Ok(verdict)
}

fn removed(c: &Catalog, me: NodeId) -> bool {
    c.nodes
        .get(&me)
        .is_some_and(|n| n.state == NodeState::Removed)
}

/// Asks `target`, at `addr`, what it knows of this node (of cluster
/// `ours`, id `me`): `None` when it decides nothing (unreachable, in no
/// cluster, or in another cluster and not a seed).
async fn ask(
    endpoint: &quinn::Endpoint,
    config: &quinn::ClientConfig,
    addr: std::net::SocketAddr,
    target: &str,
    is_seed: bool,
    ours: u64,
    me: NodeId,
) -> Option<Standing> {
    let call =
        |req| tokio::time::timeout(SEED_CHECK_TIMEOUT, rpc::call(endpoint, config, addr, req));
    let Ok(Ok(RpcResponse::Status(r))) = call(&RpcRequest::Status).await else {
        return None;
    };
    match r.cluster_id {
        Some(theirs) if theirs != ours => {
            if is_seed {
                return Some(Standing::OtherCluster {
                    seed: target.to_string(),
                    theirs,
                });
            }
            return None;
        }
        Some(_) => {}
        None => return None,
    }
    let Ok(Ok(RpcResponse::Catalog(bytes))) = call(&RpcRequest::Catalog).await else {
        return None;
    };
    let Ok(theirs) = Catalog::decode(&bytes) else {
        return None;
    };
    if removed(&theirs, me) {
        return Some(Standing::Removed {
            by: format!("node {} at {target} says so", r.node.0),
        });
    }
    Some(Standing::Member)
}
