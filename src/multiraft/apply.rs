//! Applying committed entries: KV commands, catalog changes, conf changes.

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeSingle, ConfChangeV2, Entry, EntryType};

use super::{own_proposal, Applied, Completion, Group, Proposal, Reply};
use crate::catalog::{Catalog, Effect};
use crate::error::{Error, Result};
use crate::kv;
use crate::storage::RoundWriter;
use crate::types::{NodeId, CATALOG_GROUP};
use crate::wire;

/// Where apply results go.
pub(super) struct Applier<'a> {
    pub me: NodeId,
    pub catalog: &'a mut Catalog,
    pub effects: &'a mut Vec<Effect>,
    pub completions: &'a mut Vec<Completion>,
    pub trace: Option<&'a mut Vec<Applied>>,
}

/// An outcome every replica reaches alike (a rejected command), as opposed
/// to a local failure (the disk) that must stop the node.
fn deterministic(e: &Error) -> bool {
    matches!(
        e,
        Error::SessionExpired { .. } | Error::Invalid(_) | Error::Corrupt { .. }
    )
}

/// Parses a conf-change entry of either version into the V2 form raft-rs
/// applies (a V1 change is a V2 change with one step).
fn parse_conf_change(e: &Entry) -> Result<ConfChangeV2> {
    let corrupt = |err: protobuf::ProtobufError| Error::Corrupt {
        what: "conf change",
        detail: err.to_string(),
    };
    if e.get_entry_type() == EntryType::EntryConfChangeV2 {
        return ConfChangeV2::parse_from_bytes(&e.data).map_err(corrupt);
    }
    let v1 = ConfChange::parse_from_bytes(&e.data).map_err(corrupt)?;
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

/// Applies committed entries in order; returns whether the group's Raft
/// state record (conf state) changed.
pub(super) fn apply_entries(
    g: &mut Group,
    w: &mut RoundWriter<'_>,
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
        let outcome: Result<Reply> = match e.get_entry_type() {
            // The empty entry a new leader appends.
            EntryType::EntryNormal if e.data.is_empty() => Ok(Reply::Catalog),
            EntryType::EntryNormal => match wire::decode::<Proposal>("proposal", &e.data) {
                Ok(Proposal::Kv(cmd)) if gid != CATALOG_GROUP => {
                    let r = kv::apply(&mut w.kv(gid), &cmd);
                    command = Some(cmd);
                    r.map(Reply::Kv)
                }
                Ok(Proposal::Catalog(cmd)) if gid == CATALOG_GROUP => {
                    match a.catalog.apply(&cmd, a.me) {
                        Ok(fx) => {
                            w.put_catalog(a.catalog)?;
                            let admitted = fx.iter().find_map(|f| match f {
                                Effect::NodeAdmitted(id) => Some(*id),
                                _ => None,
                            });
                            a.effects.extend(fx);
                            Ok(admitted.map_or(Reply::Catalog, Reply::NodeAdmitted))
                        }
                        Err(e) => Err(e),
                    }
                }
                Ok(Proposal::Checksum) if gid != CATALOG_GROUP => {
                    let digest = w.record_checksum(gid, e.index)?;
                    Ok(Reply::Checksum {
                        index: e.index,
                        digest,
                    })
                }
                Ok(_) => Err(Error::Invalid(format!(
                    "command sent to the wrong kind of group {gid}"
                ))),
                Err(e) => Err(e),
            },
            EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                let cc = parse_conf_change(e)?;
                let cs = g.node.apply_conf_change(&cc)?;
                g.node.mut_store().conf_state = cs;
                conf_changed = true;
                Ok(Reply::ConfChanged)
            }
        };
        let outcome = match outcome {
            Err(e) if !deterministic(&e) => return Err(e),
            o => o,
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
                        Err(e) => Err(e.to_string()),
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
                        result: outcome,
                    });
                }
            }
        }
    }
    if let Some(last) = entries.last() {
        if w.set_applied(gid, last.index)? {
            // Written through (the catalog group): compaction may follow.
            g.node.mut_store().flushed = last.index;
        }
    }
    Ok(conf_changed)
}
