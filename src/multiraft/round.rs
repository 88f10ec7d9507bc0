//! One driver round: the Ready of every busy group, staged into one batch.
//!
//! [`Driver::ready`] hands every busy group's Ready to its handler and
//! returns a [`Ready`]: the round's [`WriteBatch`], what may leave at once,
//! and, held back, the messages that must wait until the batch is durable.
//! The caller persists the batch and calls [`Driver::on_persisted`], which
//! tells each group its ready persisted, opens and leaves the groups the
//! catalog's effects name, and serves the reads whose index applied (a
//! scan with the read of its page, which the caller reads off the driver
//! thread).

use std::collections::BTreeMap;

use raft::eraftpb::{Message, Snapshot};
use raft::StateRole;

use super::apply::{apply_entries, Applier};
use super::{
    Completion, Driver, DriverStats, Group, GroupMessage, PendingRead, Reply, RoundOutput,
};
use crate::catalog::{Effect, GroupInfo};
use crate::error::{Error, Result};
use crate::kv::Response;
use crate::storage::{new_group_record, Durable, Persisted, SnapshotDescriptor, WriteBatch};
use crate::types::{GroupId, NodeId};

fn push_messages(
    out: &mut BTreeMap<NodeId, Vec<GroupMessage>>,
    group: GroupId,
    msgs: Vec<Message>,
) {
    for msg in msgs {
        out.entry(NodeId(msg.to))
            .or_default()
            .push(GroupMessage { group, msg });
    }
}

/// What one round gives back, in the order the caller must act on it:
///
/// 1. send [`Ready::out`]'s messages and answers: they may leave before
///    the batch is persisted (a leader's appends, so followers write in
///    parallel with it; answers to proposals whose entries applied, which
///    are committed on a quorum already and which a replay re-applies);
/// 2. persist [`Ready::take_batch`] (`Engine::persist_then`);
/// 3. once it is durable, [`Ready::release`] the messages that had to wait
///    for it (a follower's acknowledgements, votes) and send them;
/// 4. call [`Driver::on_persisted`] with this value and what persisting
///    did.
pub struct Ready {
    /// What may leave now: messages batched per node, and answers.
    pub out: RoundOutput,
    /// The round's writes; taken by the caller.
    batch: Option<WriteBatch>,
    /// Per busy group: its ready's number and the messages that wait for
    /// the batch to be durable.
    waiting: Vec<(GroupId, u64, Vec<Message>)>,
    /// What the applied catalog changes ask of this node.
    effects: Vec<Effect>,
    /// Groups that install a snapshot's staging with this batch.
    installs: Vec<GroupId>,
}

impl Ready {
    /// The round's batch, for the caller to persist. Empty once taken.
    pub fn take_batch(&mut self) -> Option<WriteBatch> {
        self.batch.take()
    }

    /// Moves the messages that waited for the batch into [`Self::out`]:
    /// only the engine, once the batch is durable, hands out a [`Durable`].
    pub fn release(&mut self, _: &Durable) {
        for (gid, _, msgs) in &mut self.waiting {
            push_messages(&mut self.out.outbound, *gid, std::mem::take(msgs));
        }
    }

    /// Messages still held until the batch is durable.
    pub fn waiting_messages(&self) -> usize {
        self.waiting.iter().map(|(_, _, m)| m.len()).sum()
    }
}

impl Driver {
    /// Runs the protocol side of one round: reads become ReadIndex requests,
    /// every busy group's Ready is handled, and everything to write lands in
    /// one batch. Makes no write of its own; see [`Ready`] for what the
    /// caller does next. An error means this node's own data did not decode
    /// or its storage failed to read; the node must stop.
    pub fn ready(&mut self) -> Result<Ready> {
        let mut out = RoundOutput {
            completions: std::mem::take(&mut self.requests.early),
            ..Default::default()
        };
        self.issue_reads(&mut out);

        let busy: Vec<GroupId> = self
            .groups
            .iter()
            .filter(|(_, g)| g.node.has_ready())
            .map(|(id, _)| *id)
            .collect();
        let destroyed = self.take_destroyed(&mut out.completions);
        let mut batch = self.engine.batch();
        batch.add_ticks(std::mem::take(&mut self.ticks_since_round));
        let mut waiting = Vec::with_capacity(busy.len());
        let mut effects = Vec::new();
        let mut installs = Vec::new();
        for gid in busy {
            if !self.groups.contains_key(&gid) {
                continue;
            }
            let (number, msgs, installed) =
                self.handle_ready(gid, &mut batch, &mut out, &mut effects)?;
            if installed {
                installs.push(gid);
            }
            waiting.push((gid, number, msgs));
        }
        self.compact(&mut batch);
        // Destroyed first: a group placed here again in this very round
        // starts anew after the old replica's rows are gone.
        for g in &destroyed {
            batch.destroy_group(g.node.store());
        }
        for e in &effects {
            if let Effect::OpenGroup { info, fresh } = e {
                if !self.groups.contains_key(&info.id) {
                    batch.put_raft_state(info.id, &new_group_record(info, *fresh));
                }
            }
        }
        Ok(Ready {
            out,
            batch: Some(batch),
            waiting,
            effects,
            installs,
        })
    }

    /// Finishes a round whose batch `persisted` describes: each busy group
    /// learns its ready persisted, messages still held join the outbox,
    /// groups the catalog placed here open and those it moved away start
    /// leaving, and reads whose index applied are served.
    pub fn on_persisted(&mut self, ready: Ready, persisted: Persisted) -> Result<RoundOutput> {
        let Ready {
            mut out,
            waiting,
            effects,
            installs,
            ..
        } = ready;
        out.committed = persisted.committed;
        let snapshots = self.engine.snapshots();
        for gid in installs {
            snapshots.settle(gid, true);
        }
        for (gid, index) in persisted.flushed {
            if let Some(g) = self.groups.get_mut(&gid) {
                g.node.mut_store().flushed = index;
            }
        }
        for (gid, number, msgs) in waiting {
            push_messages(&mut out.outbound, gid, msgs);
            let Some(g) = self.groups.get_mut(&gid) else {
                continue;
            };
            g.node.on_persist_ready(number);
            let applied = g.node.store().applied;
            g.node.advance_apply_to(applied);
            out.more |= g.node.has_ready();
        }
        for e in effects {
            match e {
                Effect::OpenGroup { info, fresh } => self.open_new_group(&info, fresh)?,
                Effect::LeaveGroup(gid) => self.leave(gid),
                Effect::NodeAdmitted(_) => {}
            }
        }
        self.drop_stale_requests(&mut out);
        self.serve_reads(&mut out)?;
        out.more |= self.reads_released();
        Ok(out)
    }

    /// Whether a group holds reads that the next round will hand to raft-rs:
    /// its leader has committed an entry of its term since they were held.
    fn reads_released(&self) -> bool {
        self.groups.values().any(|g| {
            !g.reads.is_empty()
                && g.node.raft.state == StateRole::Leader
                && g.node.raft.commit_to_current_term()
        })
    }

    /// Handles one group's Ready up to `advance_append_async`. Returns the
    /// ready's number, the messages that must wait for the commit, and
    /// whether it installs a snapshot.
    fn handle_ready(
        &mut self,
        gid: GroupId,
        w: &mut WriteBatch,
        out: &mut RoundOutput,
        effects: &mut Vec<Effect>,
    ) -> Result<(u64, Vec<Message>, bool)> {
        let me = self.id;
        let trace = self.cfg.trace_applies;
        let g = self.groups.get_mut(&gid).expect("busy group exists");
        let mut rd = g.node.ready();
        if let Some(ss) = rd.ss() {
            if ss.leader_id != 0 && ss.leader_id != g.leader_seen {
                DriverStats::bump(&self.stats.leader_changes, 1);
            }
            g.leader_seen = ss.leader_id;
        }
        push_messages(&mut out.outbound, gid, rd.take_messages());

        let mut state_dirty = false;
        let installs = !rd.snapshot().is_empty();
        if installs {
            let old_catalog_groups = self.catalog.groups_of(me).map(|i| i.id).collect::<Vec<_>>();
            install_snapshot(g, w, rd.snapshot(), &mut self.catalog)?;
            for info in self.catalog.groups_of(me) {
                if !old_catalog_groups.contains(&info.id) && !self.groups_contains(info.id) {
                    effects.push(Effect::OpenGroup {
                        info: info.clone(),
                        fresh: false,
                    });
                }
            }
            for gid in old_catalog_groups {
                let still = self
                    .catalog
                    .groups
                    .get(&gid)
                    .is_some_and(|i| i.has_replica(me));
                if !still {
                    effects.push(Effect::LeaveGroup(gid));
                }
            }
            state_dirty = true;
        }
        let g = self.groups.get_mut(&gid).expect("busy group exists");

        let committed = rd.take_committed_entries();
        let mut conf_changed = false;
        if !committed.is_empty() {
            DriverStats::bump(&self.stats.entries_applied, committed.len() as u64);
            let mut applier = Applier {
                me,
                catalog: &mut self.catalog,
                effects,
                completions: &mut out.completions,
                trace: trace.then_some(&mut out.applied),
                sessions: self.cfg.sessions,
            };
            conf_changed = apply_entries(g, w, &committed, &mut applier)?;
            state_dirty |= conf_changed;
        }

        let entries = rd.take_entries();
        if !entries.is_empty() {
            let record = w.append(gid, &entries)?;
            g.node.mut_store().append(&entries, record);
        }
        if let Some(hs) = rd.hs() {
            let old = &g.node.store().hard_state;
            // Every term begins with an election, here or elsewhere.
            if hs.term > old.term {
                DriverStats::bump(&self.stats.elections, 1);
            }
            // A new term or vote must be on disk before anyone hears of it.
            // A new commit index alone is not written: it may be lost and
            // learnt again from the leader, and a restart starts from at
            // least the flushed apply index anyway (see `Group::new`). The
            // record catches up with it whenever it is written for another
            // reason, and at every compaction.
            if hs.term != old.term || hs.vote != old.vote {
                w.require_sync();
                state_dirty = true;
            }
            g.node.mut_store().hard_state = hs.clone();
        }
        if state_dirty {
            w.put_raft_state(gid, &g.node.store().record());
        }
        for rs in rd.take_read_states() {
            if let Some(batch) = read_batch_id(&rs.request_ctx) {
                if let Some((group, reads)) = self.requests.read_batches.remove(&batch) {
                    self.requests.reads_ready.push((group, rs.index, reads));
                }
            }
        }
        let persisted = rd.take_persisted_messages();
        if !persisted.is_empty() {
            w.require_sync();
        }
        let number = rd.number();
        g.node.advance_append_async(rd);
        // The configuration on disk must never be ahead of the apply index
        // on disk, or a restart would apply the same change twice.
        if conf_changed {
            w.flush_all();
        }
        Ok((number, persisted, installs))
    }

    fn groups_contains(&self, id: GroupId) -> bool {
        self.groups.contains_key(&id)
    }

    /// Compacts the logs of groups whose flushed apply index moved far
    /// enough past their compaction point, in entries or in bytes (never
    /// past it: a restart resumes applying there). The new state record
    /// also catches up the commit index the record holds. Then, if the
    /// node's entries in memory are over the cache budget, moves applied
    /// ones out of memory.
    fn compact(&mut self, w: &mut WriteBatch) {
        let limit = self.cfg.log_keep + self.cfg.compact_slack;
        let (keep_bytes, slack_bytes) = (self.cfg.log_keep_bytes, self.cfg.compact_slack_bytes);
        for (gid, g) in &mut self.groups {
            let s = g.node.store();
            let by_count = (s.flushed.saturating_sub(s.snap_index) > limit)
                .then(|| s.flushed - self.cfg.log_keep);
            let by_bytes = s.compaction_by_bytes(keep_bytes, slack_bytes);
            let Some(upto) = by_count.max(by_bytes).map(|u| u.min(s.flushed)) else {
                continue;
            };
            if upto <= s.snap_index {
                continue;
            }
            let dead = g.node.mut_store().compact(upto);
            w.delete_log_records(&dead);
            w.put_raft_state(*gid, &g.node.store().record());
        }
        self.evict();
    }

    /// Moves applied entries out of memory, group after group from where
    /// the last eviction stopped, until the node's entries are a quarter
    /// under the cache budget (so that eviction runs now and then, not at
    /// every round).
    fn evict(&mut self) {
        let cache = self.engine.entry_cache();
        if !cache.over_budget() {
            return;
        }
        let target = cache.budget() / 4 * 3;
        let from = self.evict_from;
        let order: Vec<GroupId> = (self.groups.range(from..).chain(self.groups.range(..from)))
            .map(|(id, _)| *id)
            .collect();
        for gid in order {
            if cache.used() <= target {
                self.evict_from = gid;
                return;
            }
            if let Some(g) = self.groups.get_mut(&gid) {
                g.node.mut_store().evict();
            }
        }
    }

    fn open_new_group(&mut self, info: &GroupInfo, fresh: bool) -> Result<()> {
        if self.groups.contains_key(&info.id) {
            return Ok(());
        }
        let store = self.engine.new_group(info, fresh);
        let g = Group::new(self.id, &self.cfg, store, &self.logger)?;
        tracing::info!(
            node_id = self.id.0,
            group_id = info.id.0,
            fresh,
            "group opened"
        );
        self.groups.insert(info.id, g);
        Ok(())
    }

    /// Turns each group's queued reads into one ReadIndex request. A leader
    /// that has not yet committed an entry of its term keeps them queued:
    /// raft-rs would drop the request without a word, and the reads would
    /// wait out their timeout. Its first entry commits within a round trip,
    /// and the round that commits it asks for the next at once (see
    /// [`Driver::reads_released`]).
    fn issue_reads(&mut self, out: &mut RoundOutput) {
        for (gid, g) in &mut self.groups {
            if g.reads.is_empty() {
                continue;
            }
            if g.node.raft.state != StateRole::Leader {
                let reads = std::mem::take(&mut g.reads);
                fail_reads(out, *gid, reads, leader_hint(g));
                continue;
            }
            if !g.node.raft.commit_to_current_term() {
                continue;
            }
            let reads = std::mem::take(&mut g.reads);
            let batch = self.requests.next_read_batch;
            self.requests.next_read_batch += 1;
            g.node.read_index(batch.to_le_bytes().to_vec());
            self.requests.read_batches.insert(batch, (*gid, reads));
        }
    }

    /// Fails proposals and reads whose leader lost its term.
    fn drop_stale_requests(&mut self, out: &mut RoundOutput) {
        for (gid, g) in &mut self.groups {
            let (role, term) = (g.node.raft.state, g.node.raft.term);
            g.fail_proposals(*gid, "leadership changed", &mut out.completions, |p| {
                role == StateRole::Leader && p.term == term
            });
        }
        let groups = &self.groups;
        let lost = |gid: &GroupId| {
            groups
                .get(gid)
                .is_none_or(|g| g.node.raft.state != StateRole::Leader)
        };
        let mut keep = BTreeMap::new();
        for (id, (gid, reads)) in std::mem::take(&mut self.requests.read_batches) {
            if lost(&gid) {
                fail_reads(out, gid, reads, groups.get(&gid).and_then(leader_hint));
            } else {
                keep.insert(id, (gid, reads));
            }
        }
        self.requests.read_batches = keep;
    }

    /// Answers confirmed reads whose read index has been applied.
    fn serve_reads(&mut self, out: &mut RoundOutput) -> Result<()> {
        if self.requests.reads_ready.is_empty() {
            return Ok(());
        }
        let groups = &self.groups;
        let (due, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.requests.reads_ready)
            .into_iter()
            .partition(|(gid, index, _)| {
                groups
                    .get(gid)
                    .is_none_or(|g| g.node.store().applied >= *index)
            });
        self.requests.reads_ready = wait;
        let mut keys = Vec::new();
        let mut tokens = Vec::new();
        for (gid, _, reads) in &due {
            for r in reads {
                match &r.scan {
                    None => {
                        keys.push((*gid, r.key.as_slice()));
                        tokens.push(r.token);
                    }
                    Some((end, limit)) => {
                        // The rows are read by the caller, off this thread.
                        let read = self.engine.scan_read(
                            *gid,
                            &r.key,
                            end.as_deref(),
                            *limit,
                            self.cfg.scan_page_bytes,
                        )?;
                        out.completions.push(Completion {
                            token: r.token,
                            result: Ok(Reply::Scan(read)),
                        });
                    }
                }
            }
        }
        let values = self.engine.get_many(&keys)?;
        for (token, value) in tokens.into_iter().zip(values) {
            out.completions.push(Completion {
                token,
                result: Ok(Reply::Kv(Response::Value(value))),
            });
        }
        Ok(())
    }
}

fn leader_hint(g: &Group) -> Option<NodeId> {
    let l = g.node.raft.leader_id;
    (l != 0).then_some(NodeId(l))
}

fn fail_reads(
    out: &mut RoundOutput,
    group: GroupId,
    reads: Vec<PendingRead>,
    leader: Option<NodeId>,
) {
    for r in reads {
        out.completions.push(Completion {
            token: r.token,
            result: Err(Error::NotLeader { group, leader }),
        });
    }
}

fn read_batch_id(ctx: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(ctx.try_into().ok()?))
}

/// Replaces a group's state with a snapshot received from its leader (a
/// data group's state was staged before raft-rs saw the message).
fn install_snapshot(
    g: &mut Group,
    w: &mut WriteBatch,
    snap: &Snapshot,
    catalog: &mut crate::catalog::Catalog,
) -> Result<()> {
    let meta = snap.get_metadata();
    let desc = SnapshotDescriptor::decode(&snap.data)?;
    let store = g.node.mut_store();
    let gid = store.group;
    if let Some(bytes) = &desc.catalog {
        *catalog = crate::catalog::Catalog::decode(bytes)?;
    }
    let old_records = store.install_snapshot(meta.index, meta.term, meta.get_conf_state().clone());
    w.install_snapshot(gid, meta.index, &desc, &old_records);
    tracing::info!(group_id = gid.0, index = meta.index, "snapshot installed");
    Ok(())
}
