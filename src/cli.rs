//! The commands of the `flotilla` binary that talk to a running cluster
//! through the [`crate::client`] library: data (`get`, `put`, `del`, `cas`,
//! `scan`) and operations (`status`, `groups`, `nodes`, `leader transfer`,
//! `node decommission`, `node remove`, `check`).
//!
//! Every command prints aligned text, or with `--json` one JSON document
//! whose shape the README documents. The exit code tells scripts what
//! happened: see [`exit`].

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use serde_json::{json, Value};

use crate::catalog::{Catalog, NodeState};
use crate::client::{Client, ClientConfig, KeyRange};
use crate::error::Error;
use crate::transport::rpc::NodeReport;
use crate::types::{GroupId, NodeId, CATALOG_GROUP};

/// Exit codes.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// The key was not found, or a CAS expectation was not met.
    pub const NOT_FOUND: i32 = 1;
    /// The command line or the request was invalid.
    pub const USAGE: i32 = 2;
    /// The cluster was unreachable or did not answer in time.
    pub const UNAVAILABLE: i32 = 3;
    /// Refused: certificate or permission.
    pub const REFUSED: i32 = 4;
    /// `check` found replicas that differ.
    pub const INCONSISTENT: i32 = 5;
}

/// Options every client command shares.
#[derive(Clone, Debug)]
pub struct Globals {
    /// Nodes to contact first.
    pub endpoints: Vec<String>,
    /// Directory with `ca.crt` and an admin or client certificate.
    pub certs_dir: PathBuf,
    /// Deadline of each call, retries included.
    pub timeout: Duration,
    /// Print JSON instead of tables.
    pub json: bool,
}

/// Commands that talk to a cluster through the client library.
#[derive(Clone, Debug, Subcommand)]
pub enum ClientCommand {
    /// Prints the value of KEY (exit 1 when absent).
    Get {
        /// The key.
        key: String,
    },
    /// Sets KEY to VALUE.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Removes KEY (exit 1 when it was absent).
    Del {
        /// The key.
        key: String,
    },
    /// Sets KEY to NEW only if it holds OLD (or is absent); exit 1 when it
    /// does not, printing what it holds.
    Cas {
        /// The key.
        key: String,
        /// The value the key must hold.
        #[arg(
            long,
            conflicts_with = "expect_absent",
            required_unless_present = "expect_absent"
        )]
        expect: Option<String>,
        /// The key must be absent.
        #[arg(long)]
        expect_absent: bool,
        /// The new value.
        new: String,
    },
    /// Lists keys in key order, one "KEY<TAB>VALUE" line each.
    Scan {
        /// Keys starting with P.
        #[arg(long, conflicts_with_all = ["from", "to"], required_unless_present = "from")]
        prefix: Option<String>,
        /// First key (inclusive).
        #[arg(long)]
        from: Option<String>,
        /// Last key (exclusive).
        #[arg(long, requires = "from")]
        to: Option<String>,
        /// Most keys listed.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Every node (lifecycle, liveness, groups, leaderships, apply lag) and
    /// a summary of the groups.
    Status,
    /// Every group: voters, learners, leader, term, commit and apply index.
    Groups,
    /// Every node the catalog knows, with its state.
    Nodes,
    /// Leadership.
    Leader {
        /// What to do.
        #[command(subcommand)]
        command: LeaderCommand,
    },
    /// Membership of nodes (admin certificate).
    Node {
        /// What to do.
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Checks that every replica of every group holds the same state, at
    /// one index through each group's log (exit 5 when any differ).
    Check,
}

/// `flotilla leader ...`
#[derive(Clone, Debug, Subcommand)]
pub enum LeaderCommand {
    /// Hands the leadership of a group to another voter.
    Transfer {
        /// The group.
        #[arg(long)]
        group: u64,
        /// The node to lead it.
        #[arg(long)]
        to: u64,
    },
}

/// `flotilla node ...`
#[derive(Clone, Debug, Subcommand)]
pub enum NodeCommand {
    /// Moves every replica off node N (keeping 3 per group), then marks it
    /// removed; stopping it afterwards loses nothing.
    Decommission {
        /// The node.
        node: u64,
        /// How long to wait for its replicas to move.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
    /// Marks node N removed at once (for a node that is gone); its replicas
    /// are rebuilt elsewhere.
    Remove {
        /// The node.
        node: u64,
    },
}

/// The exit code for a failure.
pub fn exit_code(e: &Error) -> i32 {
    match e {
        Error::PermissionDenied(_) | Error::Certificate { .. } => exit::REFUSED,
        Error::Invalid(_)
        | Error::KeyTooLarge { .. }
        | Error::ValueTooLarge { .. }
        | Error::BatchSpansVShards { .. } => exit::USAGE,
        _ => exit::UNAVAILABLE,
    }
}

/// Runs `cmd`, writing its output to `out` and errors to `err`; returns the
/// exit code.
pub async fn run(g: &Globals, cmd: ClientCommand, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    if g.endpoints.is_empty() {
        let _ = writeln!(
            err,
            "error: no endpoints: pass --endpoints A,B,C or set FLOTILLA_ENDPOINTS"
        );
        return exit::USAGE;
    }
    let mut config = ClientConfig::from_certs_dir(g.endpoints.clone(), &g.certs_dir);
    config.timeout = g.timeout;
    let result = async {
        let client = Client::connect(config).await?;
        execute(g, &client, cmd, out).await
    }
    .await;
    match result {
        Ok((code, message)) => {
            if let Some(m) = message {
                let _ = writeln!(err, "{m}");
            }
            code
        }
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            exit_code(&e)
        }
    }
}

fn text(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => json!({ "hex": hex(bytes) }),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn print_json(out: &mut dyn Write, v: &Value) {
    let _ = writeln!(out, "{v}");
}

/// Writes rows as columns padded to their widest cell.
fn table(out: &mut dyn Write, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.len());
            }
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let _ = writeln!(
        out,
        "{}",
        line(header.iter().map(|h| h.to_string()).collect())
    );
    for r in rows {
        let _ = writeln!(out, "{}", line(r.clone()));
    }
}

fn ids(nodes: &[NodeId]) -> String {
    if nodes.is_empty() {
        return "-".into();
    }
    nodes
        .iter()
        .map(|n| n.0.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn state_name(s: NodeState) -> &'static str {
    match s {
        NodeState::Active => "active",
        NodeState::Decommissioning => "decommissioning",
        NodeState::Removed => "removed",
    }
}

type Outcome = crate::error::Result<(i32, Option<String>)>;

async fn execute(g: &Globals, c: &Client, cmd: ClientCommand, out: &mut dyn Write) -> Outcome {
    match cmd {
        ClientCommand::Get { key } => {
            let v = c.get(key.as_bytes()).await?;
            if g.json {
                print_json(
                    out,
                    &json!({"key": key, "found": v.is_some(), "value": v.as_deref().map(text)}),
                );
            } else if let Some(v) = &v {
                let _ = out.write_all(v);
                let _ = writeln!(out);
            }
            Ok(match v {
                Some(_) => (exit::OK, None),
                None => (exit::NOT_FOUND, Some(format!("key not found: {key}"))),
            })
        }
        ClientCommand::Put { key, value } => {
            c.put(key.as_bytes(), value.as_bytes()).await?;
            if g.json {
                print_json(out, &json!({"key": key, "written": true}));
            }
            Ok((exit::OK, None))
        }
        ClientCommand::Del { key } => {
            let existed = c.delete(key.as_bytes()).await?;
            if g.json {
                print_json(out, &json!({"key": key, "existed": existed}));
            }
            Ok(if existed {
                (exit::OK, None)
            } else {
                (exit::NOT_FOUND, Some(format!("key not found: {key}")))
            })
        }
        ClientCommand::Cas {
            key,
            expect,
            expect_absent: _,
            new,
        } => {
            let o = c
                .cas(
                    key.as_bytes(),
                    expect.as_deref().map(str::as_bytes),
                    Some(new.as_bytes()),
                )
                .await?;
            if g.json {
                print_json(
                    out,
                    &json!({"key": key, "swapped": o.swapped, "current": o.current.as_deref().map(text)}),
                );
            }
            Ok(if o.swapped {
                (exit::OK, None)
            } else {
                let held = o.current.as_deref().map_or("(absent)".to_string(), |v| {
                    String::from_utf8_lossy(v).into_owned()
                });
                (
                    exit::NOT_FOUND,
                    Some(format!("expectation not met: {key} holds {held}")),
                )
            })
        }
        ClientCommand::Scan {
            prefix,
            from,
            to,
            limit,
        } => {
            let range = match (prefix, from) {
                (Some(p), _) => KeyRange::Prefix(p.into_bytes()),
                (None, Some(f)) => KeyRange::Range {
                    start: f.into_bytes(),
                    end: to.map(String::into_bytes),
                },
                (None, None) => return Err(Error::Invalid("give --prefix or --from".into())),
            };
            let rows = c.scan(range, limit).await?;
            if g.json {
                let rows: Vec<Value> = rows
                    .iter()
                    .map(|(k, v)| json!({"key": text(k), "value": text(v)}))
                    .collect();
                print_json(out, &json!({"count": rows.len(), "rows": rows}));
            } else {
                for (k, v) in &rows {
                    let _ = out.write_all(k);
                    let _ = out.write_all(b"\t");
                    let _ = out.write_all(v);
                    let _ = writeln!(out);
                }
            }
            Ok((exit::OK, None))
        }
        ClientCommand::Status => status(g, c, out).await,
        ClientCommand::Groups => groups(g, c, out).await,
        ClientCommand::Nodes => nodes(g, c, out).await,
        ClientCommand::Leader {
            command: LeaderCommand::Transfer { group, to },
        } => {
            c.transfer_leader(GroupId(group), NodeId(to)).await?;
            // The transfer completes within an election; wait to report it.
            let deadline = tokio::time::Instant::now() + g.timeout;
            loop {
                let reports = reports(c).await?;
                let leader = leaders(&reports).get(&GroupId(group)).map(|(n, _)| *n);
                if leader == Some(NodeId(to)) {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::Unreachable(format!(
                        "group {group} is led by {leader:?}, not node {to}, after {:?}",
                        g.timeout
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if g.json {
                print_json(out, &json!({"group": group, "leader": to}));
            } else {
                let _ = writeln!(out, "group {group} is led by node {to}");
            }
            Ok((exit::OK, None))
        }
        ClientCommand::Node {
            command: NodeCommand::Decommission { node, wait },
        } => decommission(g, c, NodeId(node), wait, out).await,
        ClientCommand::Node {
            command: NodeCommand::Remove { node },
        } => {
            c.set_node_state(NodeId(node), NodeState::Removed).await?;
            if g.json {
                print_json(out, &json!({"node": node, "state": "removed"}));
            } else {
                let _ = writeln!(out, "node {node} removed");
            }
            Ok((exit::OK, None))
        }
        ClientCommand::Check => check(g, c, out).await,
    }
}

/// Reports of every node the catalog lists.
async fn reports(c: &Client) -> crate::error::Result<Vec<(NodeId, String, Option<NodeReport>)>> {
    Ok(c.status()
        .await?
        .into_iter()
        .map(|(n, a, r)| (n, a, r.ok()))
        .collect())
}

/// Leader and its commit index, by group, from the reports.
fn leaders(reports: &[(NodeId, String, Option<NodeReport>)]) -> BTreeMap<GroupId, (NodeId, u64)> {
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

async fn status(g: &Globals, c: &Client, out: &mut dyn Write) -> Outcome {
    let catalog = c.refresh_catalog().await?;
    let reports = reports(c).await?;
    let leaders = leaders(&reports);
    let mut nodes = Vec::new();
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
        nodes.push(json!({
            "id": id.0, "addr": addr, "lifecycle": lifecycle, "live": r.is_some(),
            "groups": groups, "leads": leads, "apply_lag": lag,
        }));
    }
    let total = catalog.groups.len();
    let with_leader = leaders.len();
    let full = catalog
        .groups
        .values()
        .filter(|i| i.voters.len() >= 3)
        .count();
    let summary = json!({"total": total, "with_leader": with_leader, "with_3_voters": full});
    let doc = json!({
        "cluster_id": format!("{:016x}", catalog.cluster_id),
        "epoch": catalog.epoch,
        "nodes": nodes,
        "groups": summary,
    });
    if g.json {
        print_json(out, &doc);
    } else {
        let _ = writeln!(out, "cluster {:016x}", catalog.cluster_id);
        let rows: Vec<Vec<String>> = nodes
            .iter()
            .map(|n| {
                vec![
                    n["id"].to_string(),
                    n["addr"].as_str().unwrap_or("").to_string(),
                    n["lifecycle"].as_str().unwrap_or("").to_string(),
                    if n["live"] == json!(true) {
                        "yes"
                    } else {
                        "no"
                    }
                    .to_string(),
                    n["groups"].to_string(),
                    n["leads"].to_string(),
                    n["apply_lag"]
                        .as_u64()
                        .map_or("-".into(), |l| l.to_string()),
                ]
            })
            .collect();
        table(
            out,
            &[
                "NODE",
                "ADDRESS",
                "LIFECYCLE",
                "LIVE",
                "GROUPS",
                "LEADS",
                "APPLY LAG",
            ],
            &rows,
        );
        let _ = writeln!(
            out,
            "groups: {total} total, {with_leader} with a leader, {full} with 3 voters"
        );
    }
    let healthy = with_leader == total && reports.iter().all(|(_, _, r)| r.is_some());
    Ok(if healthy {
        (exit::OK, None)
    } else {
        (exit::UNAVAILABLE, Some("the cluster is degraded".into()))
    })
}

async fn groups(g: &Globals, c: &Client, out: &mut dyn Write) -> Outcome {
    let catalog = c.refresh_catalog().await?;
    let reports = reports(c).await?;
    let mut by_group: BTreeMap<GroupId, &crate::transport::rpc::WireGroupStatus> = BTreeMap::new();
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
        let cell = |v: &Value| match v {
            Value::Null => "-".to_string(),
            v => v.to_string(),
        };
        let rows: Vec<Vec<String>> = catalog
            .groups
            .values()
            .zip(&docs)
            .map(|(info, d)| {
                vec![
                    info.id.0.to_string(),
                    ids(&info.voters),
                    ids(&info.learners),
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
                "GROUP", "VOTERS", "LEARNERS", "LEADER", "TERM", "COMMIT", "APPLIED",
            ],
            &rows,
        );
    }
    Ok((exit::OK, None))
}

async fn nodes(g: &Globals, c: &Client, out: &mut dyn Write) -> Outcome {
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
                    d["id"].to_string(),
                    d["addr"].as_str().unwrap_or("").to_string(),
                    d["state"].as_str().unwrap_or("").to_string(),
                    if d["live"] == json!(true) {
                        "yes"
                    } else {
                        "no"
                    }
                    .to_string(),
                    d["replicas"].to_string(),
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

async fn decommission(
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

async fn check(g: &Globals, c: &Client, out: &mut dyn Write) -> Outcome {
    let catalog = c.refresh_catalog().await?;
    let mut docs = Vec::new();
    let mut differ = false;
    let mut unknown = false;
    for info in catalog.groups.values().filter(|i| i.id != CATALOG_GROUP) {
        let (index, _) = c.checksum(info.id).await?;
        // Every voter records its digest when it applies the check entry;
        // wait (within the timeout) until each has.
        let deadline = tokio::time::Instant::now() + g.timeout;
        let mut digests: BTreeMap<NodeId, Option<u64>> = BTreeMap::new();
        loop {
            for v in &info.voters {
                if matches!(digests.get(v), Some(Some(_))) {
                    continue;
                }
                let Some(n) = catalog.nodes.get(v) else {
                    continue;
                };
                let found = c.checksums_of(&n.addr).await.ok().and_then(|all| {
                    all.into_iter()
                        .find(|(grp, i, _)| *grp == info.id && *i == index)
                        .map(|(_, _, d)| d)
                });
                digests.insert(*v, found);
            }
            if digests.values().all(Option::is_some) || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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
