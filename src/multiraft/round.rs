//! One driver round: the Ready of every busy group, one commit.

use std::collections::BTreeMap;

use raft::eraftpb::{Message, Snapshot};
use raft::StateRole;

use super::apply::{apply_entries, Applier};
use super::{Completion, Driver, Group, GroupMessage, PendingRead, Reply, RoundOutput};
use crate::catalog::{Effect, GroupInfo};
use crate::error::{Error, Result};
use crate::kv::Response;
use crate::storage::{RoundWriter, SnapshotData};
use crate::types::{GroupId, NodeId};
use crate::wire;

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

impl Driver {
    /// Runs one round. See the module documentation for the order of work.
    /// An error means the disk failed; the node must stop.
    pub fn round(&mut self) -> Result<RoundOutput> {
        self.round_with(|_| {})
    }

    /// Runs one round, handing `send` what may leave before the round's
    /// commit, twice. First, before anything is made durable:
    /// messages raft-rs allows to be sent before local persistence (a
    /// leader's appends, so followers write in parallel with it) and
    /// answers to proposals whose entries applied (they are committed on a
    /// quorum already; replaying the log re-applies them after a crash).
    /// Then, once the round log holds the round durably: the messages that
    /// wait on persistence (a follower's acknowledgements, votes), so they
    /// do not also wait for redb's commit. `send` takes what it sends out of
    /// the output; the rest is returned.
    pub fn round_with(&mut self, mut send: impl FnMut(&mut RoundOutput)) -> Result<RoundOutput> {
        self.engine.count_round();
        let mut out = RoundOutput {
            completions: std::mem::take(&mut self.early),
            ..Default::default()
        };
        self.issue_reads(&mut out);

        let busy: Vec<GroupId> = self
            .groups
            .iter()
            .filter(|(_, g)| g.node.has_ready())
            .map(|(id, _)| *id)
            .collect();
        let flush_all = self.flush_due();
        let destroyed = self.take_destroyed(&mut out.completions);
        let busy: Vec<GroupId> = busy
            .into_iter()
            .filter(|g| self.groups.contains_key(g))
            .collect();
        if busy.is_empty() && !flush_all && destroyed.is_empty() {
            self.serve_reads(&mut out)?;
            return Ok(out);
        }

        let round = self.engine.begin_round()?;
        let mut persisted = Vec::with_capacity(busy.len());
        let mut effects = Vec::new();
        let staged = {
            let mut w = round.writer()?;
            for gid in &busy {
                let (number, msgs) = self.handle_ready(*gid, &mut w, &mut out, &mut effects)?;
                persisted.push((*gid, number, msgs));
            }
            // After the last call into raft-rs of this round: a snapshot
            // built between the flush and the commit would miss the rows.
            // Flushing and compacting write to redb, and while a checkpoint
            // runs behind the driver that would wait for it; both can wait
            // a few rounds instead, unless a membership change needs the
            // flush now.
            if self.flush_requested || !self.engine.checkpoint_running() {
                self.flush(&mut w, flush_all || self.flush_requested)?;
                self.compact(&mut w)?;
            }
            // Destroyed first: a group placed here again in this very round
            // starts anew after the old replica's rows are gone.
            for g in &destroyed {
                w.destroy_group(g.node.store())?;
            }
            for e in &effects {
                if let Effect::OpenGroup { info, fresh } = e {
                    self.stage_new_group(&mut w, info, *fresh)?;
                }
            }
            w.entries
        };
        send(&mut out);
        for (gid, _, msgs) in &mut persisted {
            push_messages(&mut out.outbound, *gid, std::mem::take(msgs));
        }
        out.committed = round.commit_then(staged, || send(&mut out))?;

        for (gid, number, _) in persisted {
            let g = self.groups.get_mut(&gid).expect("busy group exists");
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
    /// ready's number and the messages that must wait for the commit.
    fn handle_ready(
        &mut self,
        gid: GroupId,
        w: &mut RoundWriter<'_>,
        out: &mut RoundOutput,
        effects: &mut Vec<Effect>,
    ) -> Result<(u64, Vec<Message>)> {
        let me = self.id;
        let trace = self.cfg.trace_applies;
        let g = self.groups.get_mut(&gid).expect("busy group exists");
        let mut rd = g.node.ready();
        push_messages(&mut out.outbound, gid, rd.take_messages());

        let mut state_dirty = false;
        if !rd.snapshot().is_empty() {
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
            let mut applier = Applier {
                me,
                catalog: &mut self.catalog,
                effects,
                completions: &mut out.completions,
                trace: trace.then_some(&mut out.applied),
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
            // A new term or vote must be on disk before anyone hears of it.
            // A new commit index alone is not written: it may be lost and
            // learnt again from the leader, and a restart starts from at
            // least the flushed apply index anyway (see `Group::new`). The
            // record catches up with it whenever it is written for another
            // reason, and at every flush.
            if hs.term != old.term || hs.vote != old.vote {
                w.require_sync();
                state_dirty = true;
            }
            g.node.mut_store().hard_state = hs.clone();
        }
        if state_dirty {
            w.put_raft_state(gid, &g.node.store().record())?;
        }
        for rs in rd.take_read_states() {
            if let Some(batch) = read_batch_id(&rs.request_ctx) {
                if let Some((group, reads)) = self.read_batches.remove(&batch) {
                    self.reads_ready.push((group, rs.index, reads));
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
        self.flush_requested |= conf_changed;
        Ok((number, persisted))
    }

    /// Whether this round must flush the whole overlay (see `DriverConfig`);
    /// otherwise it flushes only the groups that waited long enough.
    fn flush_due(&self) -> bool {
        let Some(bytes) = self.engine.overlay_bytes() else {
            return false;
        };
        self.flush_requested
            || bytes >= self.cfg.flush_bytes
            || self.ticks_since_flush >= self.cfg.flush_ticks
    }

    /// Writes the whole overlay (`all`), or the groups whose changes waited
    /// `flush_rounds`, into this round; the flushed groups' apply indexes on
    /// disk move up, which lets compaction follow.
    fn flush(&mut self, w: &mut RoundWriter<'_>, all: bool) -> Result<()> {
        let flushed = if all {
            self.flush_requested = false;
            w.flush_overlay()?
        } else {
            w.flush_aged(self.cfg.flush_rounds, self.cfg.flush_groups_per_round)?
        };
        if !flushed.is_empty() {
            self.ticks_since_flush = 0;
        }
        for (gid, index) in flushed {
            if let Some(g) = self.groups.get_mut(&gid) {
                g.node.mut_store().flushed = index;
                w.put_raft_state(gid, &g.node.store().record())?;
            }
        }
        Ok(())
    }

    /// Flushes the overlay and checkpoints the round log now (before a
    /// clean stop, so a restart has nothing to re-apply or replay).
    pub fn flush_now(&mut self) -> Result<()> {
        if self.engine.overlay_bytes().is_some() {
            self.flush_requested = true;
            // What else the round produces dies with the stopping node; its
            // callers time out or retry elsewhere.
            self.round()?;
        }
        self.engine.checkpoint()
    }

    fn groups_contains(&self, id: GroupId) -> bool {
        self.groups.contains_key(&id)
    }

    /// Compacts the logs of groups that applied far enough past their
    /// compaction point.
    fn compact(&mut self, w: &mut RoundWriter<'_>) -> Result<()> {
        let limit = self.cfg.log_keep + self.cfg.compact_slack;
        for (gid, g) in &mut self.groups {
            let s = g.node.store();
            // Never past what a restart resumes applying from.
            if s.flushed.saturating_sub(s.snap_index) <= limit {
                continue;
            }
            let upto = s.flushed - self.cfg.log_keep;
            let dead = g.node.mut_store().compact(upto);
            w.delete_log_records(&dead)?;
            w.put_raft_state(*gid, &g.node.store().record())?;
        }
        Ok(())
    }

    /// Writes the initial state of a group a catalog change placed here, in
    /// the same transaction as the catalog (which the applier staged first).
    fn stage_new_group(
        &mut self,
        w: &mut RoundWriter<'_>,
        info: &GroupInfo,
        fresh: bool,
    ) -> Result<()> {
        if self.groups.contains_key(&info.id) {
            return Ok(());
        }
        w.put_raft_state(info.id, &self.engine.new_group(info, fresh).record())
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
            let batch = self.next_read_batch;
            self.next_read_batch += 1;
            g.node.read_index(batch.to_le_bytes().to_vec());
            self.read_batches.insert(batch, (*gid, reads));
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
        for (id, (gid, reads)) in std::mem::take(&mut self.read_batches) {
            if lost(&gid) {
                fail_reads(out, gid, reads, groups.get(&gid).and_then(leader_hint));
            } else {
                keep.insert(id, (gid, reads));
            }
        }
        self.read_batches = keep;
    }

    /// Answers confirmed reads whose read index has been applied.
    fn serve_reads(&mut self, out: &mut RoundOutput) -> Result<()> {
        if self.reads_ready.is_empty() {
            return Ok(());
        }
        let groups = &self.groups;
        let (due, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads_ready)
            .into_iter()
            .partition(|(gid, index, _)| {
                groups
                    .get(gid)
                    .is_none_or(|g| g.node.store().applied >= *index)
            });
        self.reads_ready = wait;
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
                        let rows = self.engine.scan(*gid, &r.key, end.as_deref(), *limit)?;
                        out.completions.push(Completion {
                            token: r.token,
                            result: Ok(Reply::Kv(Response::Rows(rows))),
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

/// Replaces a group's state with a snapshot received from its leader.
fn install_snapshot(
    g: &mut Group,
    w: &mut RoundWriter<'_>,
    snap: &Snapshot,
    catalog: &mut crate::catalog::Catalog,
) -> Result<()> {
    let meta = snap.get_metadata();
    let data: SnapshotData = wire::decode("snapshot", &snap.data)?;
    let store = g.node.mut_store();
    let gid = store.group;
    if let Some(bytes) = &data.catalog {
        *catalog = crate::catalog::Catalog::decode(bytes)?;
    }
    let old_records = store.install_snapshot(meta.index, meta.term, meta.get_conf_state().clone());
    w.install_snapshot(gid, meta.index, &data, &old_records)?;
    tracing::info!(
        group_id = gid.0,
        index = meta.index,
        rows = data.rows.len(),
        "snapshot installed"
    );
    Ok(())
}
