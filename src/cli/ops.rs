//! The operations commands: `status`, `groups`, `nodes`, `node
//! decommission` and `check`. Each gathers what it needs from every node
//! the catalog lists (a node that does not answer is shown as such, never
//! skipped silently) and prints a table or one JSON document.
//!
//! `status` also warns of certificates that expire within
//! [`crate::certs::expiry::WARN_DAYS`] or have expired: each node's (from
//! its report) and the CLI's own.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::Duration;

use serde_json::{json, Value};

use super::{exit, ids, print_json, state_name, table, Globals, Outcome};
use crate::api::NodeReport;
use crate::catalog::{Catalog, NodeState};
use crate::client::Client;
use crate::error::Error;
use crate::types::{GroupId, NodeId, CATALOG_GROUP};

/// A table cell for a JSON field: strings bare, absent values as "-".
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

fn yes_no(v: &Value) -> String {
    if *v == json!(true) { "yes" } else { "no" }.to_string()
}

/// Reports of every node the catalog lists.
pub(super) async fn reports(
    c: &Client,
) -> crate::error::Result<Vec<(NodeId, String, Option<NodeReport>)>> {
    Ok(c.status()
        .await?
        .into_iter()
        .map(|(n, a, r)| (n, a, r.ok()))
        .collect())
}

/// The voters of each led group's Raft configuration, as its leader
/// reports them.
pub(super) fn raft_voters(
    reports: &[(NodeId, String, Option<NodeReport>)],
) -> BTreeMap<GroupId, Vec<NodeId>> {
    reports
        .iter()
        .filter_map(|(_, _, r)| r.as_ref())
        .flat_map(|r| r.groups.iter().filter(|s| s.leader))
        .map(|s| (s.group, s.voters.clone()))
        .collect()
}

/// Leader and its commit index, by group, from the reports.
pub(super) fn leaders(
    reports: &[(NodeId, String, Option<NodeReport>)],
) -> BTreeMap<GroupId, (NodeId, u64)> {
    reports
        .iter()
        .filter_map(|(_, _, r)| r.as_ref())
        .flat_map(|r| {
            r.groups
                .iter()
                .filter(|s| s.leader)
                .map(move |s| (s.group, (r.node, s.commit)))
        })
        .collect()
}

/// A byte count as MiB with one decimal, `-` when unknown.
fn mib(v: &Value) -> String {
    v.as_u64().map_or("-".into(), |b| {
        format!("{:.1}MiB", b as f64 / (1024.0 * 1024.0))
    })
}

pub(super) async fn status(g: &Globals, c: &Client, out: &mut dyn Write) -> Outcome {
    let catalog = c.refresh_catalog().await?;
    let reports = reports(c).await?;
    let leaders = leaders(&reports);
    let mut nodes = Vec::new();
    // Certificates in play, with their expiry: the CLI's own, then each
    // node's.
    let mut holders = Vec::new();
    if let Some(t) = own_cert_not_after(g) {
        holders.push(("this CLI's certificate".to_string(), t));
    }
    for (id, addr, r) in &reports {
        let (lifecycle, groups, leads, lag) = match r {
            Some(r) => {
                let lag = r
                    .groups
                    .iter()
                    .map(|s| {
                        leaders
                            .get(&s.group)
                            .map_or(0, |(_, commit)| commit.saturating_sub(s.applied))
                    })
                    .max()
                    .unwrap_or(0);
                (
                    r.lifecycle.clone(),
                    r.groups.len(),
                    r.groups.iter().filter(|s| s.leader).count(),
                    Some(lag),
                )
            }
            None => ("unreachable".to_string(), 0, 0, None),
        };
        let state = standing(catalog.nodes.get(id).map(|n| n.state), r.is_some());
        let cert = r.as_ref().map(|r| r.cert_not_after);
        let rss = r.as_ref().map(|r| r.rss_bytes).filter(|b| *b > 0);
        let disk = r.as_ref().map(|r| r.disk_bytes);
        nodes.push(json!({
            "id": id.0, "addr": addr, "state": state, "lifecycle": lifecycle, "live": r.is_some(),
            "groups": groups, "leads": leads, "apply_lag": lag,
            "rss_bytes": rss, "disk_bytes": disk,
            "cert_not_after": cert.map(crate::certs::expiry::date),
        }));
        if let Some(t) = cert {
            holders.push((format!("node {}'s certificate", id.0), t));
        }
    }
    let warnings = cert_warnings(&holders, crate::certs::unix_now());
    let total = catalog.groups.len();
    let with_leader = leaders.len();
    // Voters as the leaders' Raft configurations have them: the catalog's
    // placement runs ahead of them while replicas are still catching up.
    let full = raft_voters(&reports)
        .values()
        .filter(|v| v.len() >= 3)
        .count();
    let summary = json!({"total": total, "with_leader": with_leader, "with_3_voters": full});
    let doc = json!({
        "cluster_id": format!("{:016x}", catalog.cluster_id),
        "epoch": catalog.epoch,
        "nodes": nodes,
        "groups": summary,
        "warnings": warnings,
    });
    if g.json {
        print_json(out, &doc);
    } else {
        let _ = writeln!(out, "cluster {:016x}", catalog.cluster_id);
        let rows: Vec<Vec<String>> = nodes
            .iter()
            .map(|n| {
                vec![
                    cell(&n["id"]),
                    cell(&n["addr"]),
                    cell(&n["state"]),
                    cell(&n["lifecycle"]),
                    yes_no(&n["live"]),
                    cell(&n["groups"]),
                    cell(&n["leads"]),
                    cell(&n["apply_lag"]),
                    mib(&n["rss_bytes"]),
                    mib(&n["disk_bytes"]),
                    cell(&n["cert_not_after"]),
                ]
            })
            .collect();
        table(
            out,
            &[
                "NODE",
                "ADDRESS",
                "STATE",
                "LIFECYCLE",
                "LIVE",
                "GROUPS",
                "LEADS",
                "APPLY LAG",
                "RSS",
                "DISK",
                "CERT UNTIL",
            ],
            &rows,
        );
        let _ = writeln!(
            out,
            "groups: {total} total, {with_leader} with a leader, {full} with 3 voters"
        );
        for (word, what) in [
            (
                "suspect",
                "not answering; declared dead if silent for the cluster's --dead-after",
            ),
            (
                "dead",
                "its replicas move to live nodes while enough of them exist",
            ),
        ] {
            let which: Vec<String> = nodes
                .iter()
                .filter(|n| n["state"] == word)
                .map(|n| cell(&n["id"]))
                .collect();
            if !which.is_empty() {
                let _ = writeln!(out, "{word} nodes: {} ({what})", which.join(", "));
            }
        }
        for w in &warnings {
            let _ = writeln!(out, "warning: {w}");
        }
    }
    let healthy = with_leader == total && reports.iter().all(|(_, _, r)| r.is_some());
    Ok(if healthy {
        (exit::OK, None)
    } else {
        (exit::UNAVAILABLE, Some("the cluster is degraded".into()))
    })
}

/// When the certificate this CLI presents expires, if it can be read.
fn own_cert_not_after(g: &Globals) -> Option<i64> {
    use rustls::pki_types::pem::PemObject;
    let path = crate::client::ClientConfig::from_certs_dir(vec![], &g.certs_dir).cert;
    let der = rustls::pki_types::CertificateDer::from_pem_file(path).ok()?;
    crate::certs::not_after(&der).ok()
}

/// One warning for each certificate (named, with its expiry) that has
/// expired or expires within the warning period at `now`.
fn cert_warnings(certs: &[(String, i64)], now: i64) -> Vec<String> {
    certs
        .iter()
        .filter_map(|(what, not_after)| {
            crate::certs::expiry::warning(*not_after, now).map(|w| {
                format!(
                    "{what} {w} ({}); renew it with `flotilla certs`",
                    crate::certs::expiry::date(*not_after)
                )
            })
        })
        .collect()
}

pub(super) async fn groups(g: &Globals, c: &Client, out: &mut dyn Write) -> Outcome {
    let catalog = c.refresh_catalog().await?;
    let reports = reports(c).await?;
    let mut by_group: BTreeMap<GroupId, &crate::api::GroupReport> = BTreeMap::new();
    for r in reports.iter().filter_map(|(_, _, r)| r.as_ref()) {
        for s in &r.groups {
            // The leader's view wins; otherwise any replica's.
            if s.leader || !by_group.contains_key(&s.group) {
                by_group.insert(s.group, s);
            }
        }
    }
    let mut docs = Vec::new();
    for info in catalog.groups.values() {
        let s = by_group.get(&info.id);
        docs.push(json!({
            "id": info.id.0,
            "voters": info.voters.iter().map(|n| n.0).collect::<Vec<_>>(),
            "raft_voters": s.filter(|s| s.leader).map(|s| s.voters.iter().map(|n| n.0).collect::<Vec<_>>()),
            "learners": info.learners.iter().map(|n| n.0).collect::<Vec<_>>(),
            "leader": s.and_then(|s| s.leader_id).map(|n| n.0),
            "term": s.map(|s| s.term),
            "commit": s.map(|s| s.commit),
            "applied": s.map(|s| s.applied),
        }));
    }
    if g.json {
        print_json(out, &json!({ "groups": docs }));
    } else {
        let rows: Vec<Vec<String>> = catalog
            .groups
            .values()
            .zip(&docs)
            .map(|(info, d)| {
                let raft = by_group
                    .get(&info.id)
                    .filter(|s| s.leader)
                    .map_or("-".to_string(), |s| ids(&s.voters));
                vec![
                    info.id.0.to_string(),
                    ids(&info.voters),
                    ids(&info.learners),
                    raft,
                    cell(&d["leader"]),
                    cell(&d["term"]),
                    cell(&d["commit"]),
                    cell(&d["applied"]),
                ]
            })
            .collect();
        table(
            out,
            &[
                "GROUP",
                "VOTERS",
                "LEARNERS",
                "RAFT VOTERS",
                "LEADER",
                "TERM",
                "COMMIT",
                "APPLIED",
            ],
            &rows,
        );
    }
    Ok((exit::OK, None))
}

/// A node's state as `status` shows it: the catalog's, with an active node
/// that does not answer shown as `suspect`.
fn standing(state: Option<NodeState>, answers: bool) -> &'static str {
    match state {
        Some(NodeState::Active) if !answers => "suspect",
        Some(s) => state_name(s),
        None => "unknown",
    }
}

pub(super) async fn nodes(g: &Globals, c: &Client, out: &mut dyn Write) -> Outcome {
    let catalog = c.refresh_catalog().await?;
    let reports = reports(c).await?;
    let live: BTreeMap<NodeId, bool> = reports.iter().map(|(n, _, r)| (*n, r.is_some())).collect();
    let docs: Vec<Value> = catalog
        .nodes
        .values()
        .map(|n| {
            json!({
                "id": n.id.0, "addr": n.addr, "state": state_name(n.state),
                "live": live.get(&n.id).copied().unwrap_or(false),
                "replicas": catalog.groups.values().filter(|g| g.has_replica(n.id)).count(),
            })
        })
        .collect();
    if g.json {
        print_json(out, &json!({ "nodes": docs }));
    } else {
        let rows: Vec<Vec<String>> = docs
            .iter()
            .map(|d| {
                vec![
                    cell(&d["id"]),
                    cell(&d["addr"]),
                    cell(&d["state"]),
                    yes_no(&d["live"]),
                    cell(&d["replicas"]),
                ]
            })
            .collect();
        table(
            out,
            &["NODE", "ADDRESS", "STATE", "LIVE", "REPLICAS"],
            &rows,
        );
    }
    Ok((exit::OK, None))
}

pub(super) async fn decommission(
    g: &Globals,
    c: &Client,
    node: NodeId,
    wait: Duration,
    out: &mut dyn Write,
) -> Outcome {
    c.set_node_state(node, NodeState::Decommissioning).await?;
    if !g.json {
        let _ = writeln!(out, "node {} decommissioning: moving its replicas", node.0);
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let catalog: Catalog = c.refresh_catalog().await?;
        let left = catalog
            .groups
            .values()
            .filter(|i| i.has_replica(node))
            .count();
        if left == 0 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Unreachable(format!(
                "node {} still holds {left} replicas after {wait:?}; it stays decommissioning",
                node.0
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    c.set_node_state(node, NodeState::Removed).await?;
    if g.json {
        print_json(out, &json!({"node": node.0, "state": "removed"}));
    } else {
        let _ = writeln!(
            out,
            "node {} holds no replica and is removed; it can be stopped",
            node.0
        );
    }
    Ok((exit::OK, None))
}

pub(super) async fn check(g: &Globals, c: &Client, out: &mut dyn Write) -> Outcome {
    // One deadline for the whole command: every group's check entry is
    // proposed at once, and each node is asked for all its digests in one
    // request per poll.
    let deadline = tokio::time::Instant::now() + g.timeout;
    let catalog = c.refresh_catalog().await?;
    let groups: Vec<_> = catalog
        .groups
        .values()
        .filter(|i| i.id != CATALOG_GROUP)
        .cloned()
        .collect();
    let mut proposals = tokio::task::JoinSet::new();
    for info in &groups {
        let (c, id) = (c.clone(), info.id);
        proposals.spawn(async move { (id, c.checksum(id).await) });
    }
    let mut index_of: BTreeMap<GroupId, u64> = BTreeMap::new();
    let proposed = tokio::time::timeout_at(deadline, async {
        while let Some(done) = proposals.join_next().await {
            let (id, answer) =
                done.map_err(|e| Error::Invalid(format!("check task failed: {e}")))?;
            index_of.insert(id, answer?.0);
        }
        Ok::<(), Error>(())
    })
    .await;
    match proposed {
        Ok(r) => r?,
        Err(_) => {
            return Err(Error::Unreachable(format!(
                "{} of {} groups did not take a check entry within --timeout",
                groups.len() - index_of.len(),
                groups.len()
            )))
        }
    }
    // Every voter records its digest when it applies the check entry; poll
    // (within the deadline) until each has.
    let mut digests: BTreeMap<(GroupId, NodeId), Option<u64>> = groups
        .iter()
        .flat_map(|i| i.voters.iter().map(move |v| ((i.id, *v), None)))
        .collect();
    loop {
        let waiting: BTreeSet<NodeId> = digests
            .iter()
            .filter(|(_, d)| d.is_none())
            .map(|((_, n), _)| *n)
            .collect();
        let mut asks = tokio::task::JoinSet::new();
        for n in waiting {
            let Some(info) = catalog.nodes.get(&n) else {
                continue;
            };
            let (c, addr) = (c.clone(), info.addr.clone());
            asks.spawn(async move { (n, c.checksums_of(&addr).await) });
        }
        // A node that does not answer is not waited on past the deadline
        // (the asks still running are dropped, and so cancelled).
        let _ = tokio::time::timeout_at(deadline, async {
            while let Some(done) = asks.join_next().await {
                let Ok((n, Ok(all))) = done else { continue };
                for (grp, index, digest) in all {
                    if index_of.get(&grp) == Some(&index) {
                        if let Some(slot) = digests.get_mut(&(grp, n)) {
                            *slot = Some(digest);
                        }
                    }
                }
            }
        })
        .await;
        if digests.values().all(Option::is_some) || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut docs = Vec::new();
    let mut differ = false;
    let mut unknown = false;
    for info in &groups {
        let index = index_of.get(&info.id).copied().unwrap_or(0);
        let digests: BTreeMap<NodeId, Option<u64>> = info
            .voters
            .iter()
            .map(|v| (*v, digests.get(&(info.id, *v)).copied().flatten()))
            .collect();
        let known: Vec<u64> = digests.values().flatten().copied().collect();
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for d in &known {
            *counts.entry(*d).or_default() += 1;
        }
        let majority = counts.iter().max_by_key(|(_, n)| **n).map(|(d, _)| *d);
        let differing: Vec<u64> = digests
            .iter()
            .filter(|(_, d)| d.is_some() && **d != majority)
            .map(|(n, _)| n.0)
            .collect();
        let missing: Vec<u64> = digests
            .iter()
            .filter(|(_, d)| d.is_none())
            .map(|(n, _)| n.0)
            .collect();
        let consistent = differing.is_empty() && counts.len() <= 1;
        differ |= !consistent;
        unknown |= !missing.is_empty();
        docs.push(json!({
            "group": info.id.0, "index": index, "consistent": consistent,
            "differing": differing, "unanswered": missing,
        }));
    }
    if g.json {
        print_json(out, &json!({"consistent": !differ, "groups": docs}));
    } else {
        let rows: Vec<Vec<String>> = docs
            .iter()
            .map(|d| {
                let verdict = if d["consistent"] == json!(true) {
                    "consistent".to_string()
                } else {
                    format!("DIFFERS on node(s) {}", d["differing"])
                };
                let missing = d["unanswered"].as_array().map_or(0, Vec::len);
                vec![
                    d["group"].to_string(),
                    d["index"].to_string(),
                    if missing > 0 {
                        format!("{verdict} ({missing} replica(s) did not answer)")
                    } else {
                        verdict
                    },
                ]
            })
            .collect();
        table(out, &["GROUP", "INDEX", "RESULT"], &rows);
    }
    Ok(if differ {
        (exit::INCONSISTENT, Some("replicas differ".into()))
    } else if unknown {
        (
            exit::UNAVAILABLE,
            Some("some replicas did not answer; no difference found among the rest".into()),
        )
    } else {
        (exit::OK, None)
    })
}

#[cfg(test)]
mod tests {
    use super::cert_warnings;

    #[test]
    fn status_warns_of_each_certificate_near_or_past_its_end() {
        const DAY: i64 = 86_400;
        let now = 1_800_000_000;
        let certs = vec![
            ("this CLI's certificate".to_string(), now + 365 * DAY),
            ("node 1's certificate".to_string(), now + 12 * DAY + 60),
            ("node 2's certificate".to_string(), now - 2 * DAY),
            ("node 3's certificate".to_string(), now + 31 * DAY),
        ];
        let warnings = cert_warnings(&certs, now);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].starts_with("node 1's certificate expires in 12 day(s)"),
            "{}",
            warnings[0]
        );
        assert!(
            warnings[1].starts_with("node 2's certificate expired 2 day(s) ago"),
            "{}",
            warnings[1]
        );
    }
}
