//! Reaching the right node fast, also when some nodes are down.
//!
//! A request for a group goes to the leader the client believes in. When it
//! believes in none, or that leader has not answered within [`HEDGE_AFTER`],
//! the request goes to every other member of the group at once, and the
//! first good answer wins; a member that is not the leader answers at once
//! with a redirect, which is followed as soon as it arrives. A write sent to
//! several nodes is still applied once: only a leader proposes it, and the
//! client's session deduplicates a `(client, seq)` that two leaders of
//! successive terms both proposed. A write goes out marked as its first
//! attempt until a pass may have proposed it (a node it reached gave no
//! answer, or answered that its fate is unknown); from then on it is sent
//! as a retry, which a group that no longer holds the client's session
//! refuses instead of applying again (see `kv::session`).
//!
//! An address that failed to connect or to answer is remembered as down for
//! a few seconds (see `conn`) and is not asked again meanwhile, unless no other member is
//! left to ask. So with one node of three dead, a fresh client (a CLI run)
//! never waits a whole attempt on it: its first request reaches the live
//! members in parallel, and later requests skip it.
//!
//! Left out: hedging on a known leader costs a second round of requests
//! when that leader is slow but alive (a long fsync); [`HEDGE_AFTER`] is
//! set well above a normal round trip so that this stays rare.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{resolve, Client};
use crate::api::{RpcRequest, RpcResponse};
use crate::error::{Action, Error, Result};
use crate::kv::Command;
use crate::types::{GroupId, NodeId};

/// How long a believed leader may take before the other members are asked
/// too: far above a write's normal round trip (about a millisecond), far
/// below the attempt timeout.
const HEDGE_AFTER: Duration = Duration::from_millis(250);
/// First wait between retries; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(300);

/// `req` as sent again, when it is a write: no longer its first attempt.
fn not_fresh(req: &RpcRequest) -> Option<RpcRequest> {
    match req {
        RpcRequest::Propose { group, command } => Some(RpcRequest::Propose {
            group: *group,
            command: Command {
                fresh: false,
                ..command.clone()
            },
        }),
        _ => None,
    }
}

/// One answer of a fan-out, with who gave it and whether the request may
/// have reached it unanswered.
type Answer = (NodeId, SocketAddr, Result<RpcResponse>, bool);

impl Client {
    /// The members of `group` to ask, believed leader first, as resolved
    /// addresses. Members recently down come last.
    async fn members(&self, group: GroupId) -> Vec<(NodeId, SocketAddr)> {
        let (leader, nodes) = {
            let r = self.lock_routing();
            let Some(catalog) = r.catalog.as_ref() else {
                return Vec::new();
            };
            let ids: Vec<NodeId> = match catalog.groups.get(&group) {
                Some(g) if !g.voters.is_empty() => g.voters.clone(),
                _ => catalog.nodes.keys().copied().collect(),
            };
            let leader = r.leaders.get(&group).copied();
            let mut ids: Vec<NodeId> = leader.into_iter().chain(ids).collect();
            let mut seen = BTreeSet::new();
            ids.retain(|n| seen.insert(*n));
            let nodes: Vec<(NodeId, String)> = ids
                .into_iter()
                .filter_map(|n| catalog.nodes.get(&n).map(|i| (n, i.addr.clone())))
                .collect();
            (leader, nodes)
        };
        let mut out = Vec::new();
        for (n, addr) in nodes {
            if let Ok(sock) = resolve(&addr).await {
                out.push((n, sock));
            }
        }
        // Down members last, the believed leader first among the rest.
        out.sort_by_key(|(n, a)| (self.is_down(a), Some(*n) != leader));
        out
    }

    /// Sends `req` to the leader of `group`, following redirects, asking
    /// the other members when the leader is unknown or slow, and retrying
    /// retryable failures with backoff until the deadline.
    pub(super) async fn call_group(&self, group: GroupId, req: &RpcRequest) -> Result<RpcResponse> {
        let deadline = Instant::now() + self.inner.timeout;
        let mut backoff = MIN_BACKOFF;
        let mut refreshed = false;
        // A write sent again after a pass that may have applied it is no
        // longer fresh: it must not open a session (see `kv::session`).
        let mut again: Option<RpcRequest> = None;
        loop {
            let known = self.lock_routing().catalog.is_some();
            let err = if known {
                let sent = again.as_ref().unwrap_or(req);
                let mut maybe_applied = false;
                match self
                    .fan_out(group, sent, deadline, &mut maybe_applied)
                    .await
                {
                    Ok(r) => return Ok(r),
                    Err(e) => {
                        if maybe_applied {
                            again = again.or_else(|| not_fresh(req));
                        }
                        e
                    }
                }
            } else {
                // A client made with `Client::new` has no routing yet.
                match self.refresh_catalog().await {
                    Ok(_) => continue,
                    Err(e) => e,
                }
            };
            if err.action() == Action::Fail || Instant::now() >= deadline {
                return Err(err);
            }
            // A redirect without a leader, or a node that holds no replica
            // of the group or not this key: the route may be stale.
            if matches!(
                err,
                Error::NotLeader { leader: None, .. }
                    | Error::WrongGroup { .. }
                    | Error::UnknownGroup(_)
            ) {
                self.lock_routing().leaders.remove(&group);
                let stale = self
                    .lock_routing()
                    .fetched
                    .is_none_or(|t| t.elapsed() > Duration::from_millis(500));
                if stale || !refreshed {
                    refreshed = true;
                    let _ = self.refresh_catalog().await;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(backoff.min(left)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One pass over the members of `group` (see the module documentation).
    /// Returns the first good answer, or the most telling error; sets
    /// `maybe_applied` when an attempt may have been proposed (it reached a
    /// node and got no answer, or the answer said its fate is unknown).
    async fn fan_out(
        &self,
        group: GroupId,
        req: &RpcRequest,
        deadline: Instant,
        maybe_applied: &mut bool,
    ) -> Result<RpcResponse> {
        let members = self.members(group).await;
        let Some(&(first, first_addr)) = members.first() else {
            return Err(Error::Unreachable(format!("no node known for {group}")));
        };
        let believed = self.lock_routing().leaders.get(&group).copied() == Some(first);
        let mut calls: JoinSet<Answer> = JoinSet::new();
        let mut asked: BTreeMap<SocketAddr, NodeId> = BTreeMap::new();
        let ask = |calls: &mut JoinSet<Answer>,
                   asked: &mut BTreeMap<SocketAddr, NodeId>,
                   node: NodeId,
                   addr: SocketAddr| {
            if asked.insert(addr, node).is_none() {
                let me = self.clone();
                let req = req.clone();
                calls.spawn(async move {
                    let (answer, unanswered) = me.call_sent(addr, &req, deadline).await;
                    (node, addr, answer, unanswered)
                });
            }
        };
        ask(&mut calls, &mut asked, first, first_addr);
        let rest: Vec<(NodeId, SocketAddr)> = members[1..]
            .iter()
            .copied()
            .filter(|(_, a)| !self.is_down(a))
            .collect();
        let mut hedged = !believed;
        if hedged {
            for (n, a) in &rest {
                ask(&mut calls, &mut asked, *n, *a);
            }
        }
        let mut last = Error::Unreachable(format!("no member of {group} answered"));
        let hedge_at = Instant::now() + HEDGE_AFTER;
        loop {
            let next = if hedged {
                calls.join_next().await
            } else {
                tokio::select! {
                    done = calls.join_next() => done,
                    _ = tokio::time::sleep_until(hedge_at) => {
                        hedged = true;
                        for (n, a) in &rest {
                            ask(&mut calls, &mut asked, *n, *a);
                        }
                        continue;
                    }
                }
            };
            let Some(done) = next else {
                if !hedged {
                    // The believed leader failed fast: ask the rest now.
                    hedged = true;
                    for (n, a) in &rest {
                        ask(&mut calls, &mut asked, *n, *a);
                    }
                    if !calls.is_empty() {
                        continue;
                    }
                }
                return Err(last);
            };
            let Ok((node, addr, answer, unanswered)) = done else {
                continue;
            };
            *maybe_applied |= unanswered || matches!(answer, Err(Error::ProposalLost { .. }));
            match answer {
                Ok(r) => {
                    self.mark(addr, false);
                    self.lock_routing().leaders.insert(group, node);
                    return Ok(r);
                }
                Err(Error::NotLeader {
                    leader: Some(l), ..
                }) => {
                    self.mark(addr, false);
                    self.lock_routing().leaders.insert(group, l);
                    if let Some((_, a)) =
                        self.members(group).await.into_iter().find(|(n, _)| *n == l)
                    {
                        ask(&mut calls, &mut asked, l, a);
                    }
                    last = Error::NotLeader {
                        group,
                        leader: Some(l),
                    };
                }
                Err(e) if e.action() == Action::Fail => return Err(e),
                Err(e) => {
                    if matches!(e, Error::Unreachable(_)) {
                        self.mark(addr, true);
                    } else {
                        self.mark(addr, false);
                    }
                    // An answer from a live node says more than silence.
                    if !matches!(last, Error::NotLeader { .. })
                        || !matches!(e, Error::Unreachable(_))
                    {
                        last = e;
                    }
                }
            }
        }
    }
}
