//! Whether a bootstrapped data directory may restart: what its own
//! catalog, its seeds and its peers say of it (see [`standing`]).

use super::SEED_CHECK_TIMEOUT;
use crate::api::{RpcRequest, RpcResponse};
use crate::catalog::{Catalog, NodeState};
use crate::error::Result;
use crate::storage::Engine;
use crate::transport::rpc;
use crate::transport::{TlsIdentity, Transport};

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
/// speaks first; then the seeds and the peers that catalog names are asked,
/// in that order, until one answers: a seed of another cluster, or a
/// catalog that removed this node while it was down, refuses the restart.
/// Unreachable addresses are skipped, each after a short timeout, so a
/// restart never waits on them for long, and a node none of whose peers
/// answers restarts on its own catalog.
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
    let removed = |c: &Catalog| {
        c.nodes
            .get(&me)
            .is_some_and(|n| n.state == NodeState::Removed)
    };
    if removed(&catalog) {
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
    for (i, target) in seeds.iter().cloned().chain(peers).enumerate() {
        let is_seed = i < seeds.len();
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
        let ask = |req| {
            tokio::time::timeout(
                SEED_CHECK_TIMEOUT,
                rpc::call(t.endpoint(), &config, addr, req),
            )
        };
        let Ok(Ok(RpcResponse::Status(r))) = ask(&RpcRequest::Status).await else {
            continue;
        };
        match r.cluster_id {
            Some(theirs) if theirs != ours => {
                if is_seed {
                    return Ok(Standing::OtherCluster {
                        seed: target,
                        theirs,
                    });
                }
                continue;
            }
            Some(_) => {}
            None => continue,
        }
        let Ok(Ok(RpcResponse::Catalog(bytes))) = ask(&RpcRequest::Catalog).await else {
            continue;
        };
        let Ok(theirs) = Catalog::decode(&bytes) else {
            continue;
        };
        if removed(&theirs) {
            return Ok(Standing::Removed {
                by: format!("node {} at {target} says so", r.node.0),
            });
        }
        return Ok(Standing::Member);
    }
    Ok(Standing::Member)
}
