//! What a node knows: its catalog (clients route with it) and its report
//! (lifecycle, groups, counters), which a node answers before it runs too.

use super::ask;
use crate::api::{GroupReport, NodeReport, RpcResponse};
use crate::error::Result;
use crate::multiraft::GroupStatus;
use crate::node::resources;
use crate::node::server::NodeServer;
use crate::runtime::runner::DriverHandle;
use crate::transport::TransportStats;
use crate::wire;

/// The catalog as this node last applied it, encoded.
pub async fn catalog(h: &DriverHandle) -> Result<RpcResponse> {
    Ok(RpcResponse::Catalog(wire::encode(&ask(h.catalog()).await?)))
}

/// The node's report; without a driver, its lifecycle and no group.
pub async fn status(node: &NodeServer, driver: Option<&DriverHandle>) -> Result<RpcResponse> {
    let stats = node.transport.stats();
    let mut report = NodeReport {
        node: node.transport.node(),
        addr: node.addr().to_string(),
        lifecycle: node.lifecycle().to_string(),
        cluster_id: None,
        groups: Vec::new(),
        replayed_entries: 0,
        replayed_bytes: 0,
        raft_bytes_in: TransportStats::get(&stats.raft_bytes_in),
        raft_entries_in: TransportStats::get(&stats.raft_entries_in),
        cert_not_after: node.transport.cert_not_after(),
        rss_bytes: resources::rss_bytes().unwrap_or(0),
        disk_bytes: resources::disk_bytes(node.data_dir()),
    };
    if let Some(h) = driver {
        let replayed = node.replayed();
        report.replayed_entries = replayed.entries;
        report.replayed_bytes = replayed.bytes;
        report.groups = ask(h.status()).await?.iter().map(group_report).collect();
        report.cluster_id = Some(ask(h.catalog()).await?.cluster_id);
    }
    Ok(RpcResponse::Status(report))
}

/// One group's state as a report carries it.
fn group_report(s: &GroupStatus) -> GroupReport {
    GroupReport {
        group: s.group,
        voters: s.voters.clone(),
        leader: s.role == raft::StateRole::Leader,
        leader_id: s.leader,
        term: s.term,
        commit: s.commit,
        applied: s.applied,
    }
}
