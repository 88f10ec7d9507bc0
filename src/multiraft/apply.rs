//! Applying committed entries: KV commands, catalog changes, conf changes.
//!
//! Every entry ends in one of three ways. It applies, and its proposer gets
//! the reply. It is **rejected**: a [`Rejection`] decided from the entry and
//! the replicated state before it, so every replica rejects it alike; the
//! apply index moves past it, the proposer gets the rejection as its error,
//! and the node carries on. Or applying it meets a **local fault** (this
//! node's storage failed, or its own rows do not decode): apply returns the
//! error, the round fails, and the driver stops, because going on would
//! answer a client with what only this replica saw.
//!
//! A membership change Raft refuses (one that would leave no voter, say) or
//! that does not parse is a rejection: the group keeps its configuration.
//! A normal entry that does not decode as a [`Proposal`] is a local fault:
//! every proposal is encoded by [`super::Driver::propose`], so bytes that do
//! not decode were damaged here or written by a version this node cannot
//! read, and skipping them would let this replica drift from the others.

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeSingle, ConfChangeV2, ConfState, Entry, EntryType};

use super::{own_proposal, Applied, Completion, Group, Proposal, Reply};
use crate::catalog::{Catalog, Effect};
use crate::error::{Error, Outcome, Rejection, Result};
use crate::kv;
use crate::storage::WriteBatch;
use crate::types::{GroupId, NodeId, CATALOG_GROUP};
use crate::wire;

/// Where apply results go.
pub(super) struct Applier<'a> {
    pub me: NodeId,
    pub catalog: &'a mut Catalog,
    pub effects: &'a mut Vec<Effect>,
    pub completions: &'a mut Vec<Completion>,
    pub trace: Option<&'a mut Vec<Applied>>,
    /// The session bounds of data groups.
    pub sessions: kv::SessionLimits,
}

/// Parses a conf-change entry of either version into the V2 form raft-rs
/// applies (a V1 change is a V2 change with one step). Returns the parser's
/// complaint when the bytes are not a conf change.
fn parse_conf_change(e: &Entry) -> std::result::Result<ConfChangeV2, String> {
    if e.get_entry_type() == EntryType::EntryConfChangeV2 {
        return ConfChangeV2::parse_from_bytes(&e.data).map_err(|err| err.to_string());
    }
    let v1 = ConfChange::parse_from_bytes(&e.data).map_err(|err| err.to_string())?;
    let step = ConfChangeSingle {
        change_type: v1.get_change_type(),
        node_id: v1.node_id,
        ..Default::default()
    };
    Ok(ConfChangeV2 {
        changes: vec![step].into(),
        context: v1.context,
        ..Default::default()
    })
}

/// Applies a conf-change entry to the group's Raft configuration. raft-rs
/// checks the change against the current configuration (the same on every
/// replica at this index) and changes nothing when it refuses.
fn apply_conf_change(g: &mut Group, e: &Entry) -> Outcome<ConfState> {
    let cc = parse_conf_change(e).map_err(Rejection::ConfChange)?;
    g.node
        .apply_conf_change(&cc)
        .map_err(|err| Rejection::ConfChange(err.to_string()))
}

/// Applies a non-empty normal entry. `command` receives the KV command it
/// carried, for the trace.
fn apply_proposal(
    gid: GroupId,
    e: &Entry,
    w: &mut WriteBatch,
    a: &mut Applier<'_>,
    command: &mut Option<kv::Command>,
) -> Result<Outcome<Reply>> {
    match wire::decode::<Proposal>("proposal", &e.data)? {
        Proposal::Kv(cmd) if gid != CATALOG_GROUP => {
            let r = kv::apply(&mut w.kv(gid), &cmd, e.index, &a.sessions)?;
            *command = Some(cmd);
            Ok(r.map(Reply::Kv))
        }
        Proposal::Catalog(cmd) if gid == CATALOG_GROUP => {
            let fx = match a.catalog.apply(&cmd, a.me) {
                Ok(fx) => fx,
                Err(refused) => return Ok(Err(refused)),
            };
            w.put_catalog(a.catalog);
            let admitted = fx.iter().find_map(|f| match f {
                Effect::NodeAdmitted(id) => Some(*id),
                _ => None,
            });
            a.effects.extend(fx);
            Ok(Ok(admitted.map_or(Reply::Catalog, Reply::NodeAdmitted)))
        }
        Proposal::Checksum if gid != CATALOG_GROUP => {
            let digest = w.record_checksum(gid, e.index)?;
            Ok(Ok(Reply::Checksum {
                index: e.index,
                digest,
            }))
        }
        _ => Ok(Err(Rejection::Invalid(format!(
            "command sent to the wrong kind of group {gid}"
        )))),
    }
}

/// Applies committed entries in order; returns whether the group's Raft
/// state record (conf state) changed. An error is a local fault: the caller
/// must stop (see the module documentation).
pub(super) fn apply_entries(
    g: &mut Group,
    w: &mut WriteBatch,
    entries: &[Entry],
    a: &mut Applier<'_>,
) -> Result<bool> {
    let gid = g.node.store().group;
    let mut conf_changed = false;
    for e in entries {
        let applied = g.node.store().applied;
        assert!(
            e.index == applied + 1,
            "{gid}: applying {} after {applied}",
            e.index
        );
        let mut command = None;
        let outcome: Outcome<Reply> = match e.get_entry_type() {
            // The empty entry a new leader appends.
            EntryType::EntryNormal if e.data.is_empty() => Ok(Reply::Catalog),
            EntryType::EntryNormal => apply_proposal(gid, e, w, a, &mut command)?,
            EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                match apply_conf_change(g, e) {
                    Ok(cs) => {
                        g.node.mut_store().conf_state = cs;
                        conf_changed = true;
                        Ok(Reply::ConfChanged)
                    }
                    Err(refused) => {
                        tracing::warn!(
                            group_id = gid.0,
                            index = e.index,
                            reason = %refused,
                            "membership change refused; the configuration stays"
                        );
                        Err(refused)
                    }
                }
            }
        };
        g.node.mut_store().applied = e.index;
        if let Some(trace) = a.trace.as_deref_mut() {
            if e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty() {
                trace.push(Applied {
                    group: gid,
                    index: e.index,
                    command,
                    outcome: match &outcome {
                        Ok(Reply::Kv(r)) => Ok(r.clone()),
                        Ok(_) => Ok(kv::Response::Written),
                        Err(refused) => Err(refused.to_string()),
                    },
                });
            }
        }
        if let Some(id) = own_proposal(a.me, &e.context) {
            // The same id in another term would be another proposal's entry.
            if g.proposals.get(&id).is_some_and(|p| p.term == e.term) {
                if let Some(p) = g.proposals.remove(&id) {
                    a.completions.push(Completion {
                        token: p.token,
                        result: outcome.map_err(Error::from),
                    });
                }
            }
        }
    }
    if let Some(last) = entries.last() {
        if w.set_applied(gid, last.index) {
            // Written through (the catalog group): compaction may follow.
            g.node.mut_store().flushed = last.index;
        }
    }
    Ok(conf_changed)
}
