//! Simulated clients: requests that follow leader hints and retry until
//! answered, one at a time or many at once.

use rand::Rng;

use super::Sim;
use crate::error::{Action, Error, Result};
use crate::kv::{Command, Op, Response};
use crate::multiraft::{Proposal, Reply, Token};
use crate::types::{GroupId, NodeId};

impl Sim {
    /// Where a client would send a request for `group`: the leader hint of
    /// `hint` if given, else the live leader, else any live node.
    pub(super) fn target(&mut self, group: GroupId, hint: Option<NodeId>) -> Option<NodeId> {
        if let Some(h) = hint.filter(|h| self.is_up(*h)) {
            return Some(h);
        }
        if let Some(l) = self.leader(group) {
            return Some(l);
        }
        let up: Vec<NodeId> = self
            .node_ids()
            .into_iter()
            .filter(|n| self.is_up(*n))
            .collect();
        if up.is_empty() {
            return None;
        }
        Some(up[self.rng.random_range(0..up.len())])
    }

    /// Runs one request to completion as a client would: send to the leader,
    /// follow hints, retry retryable errors, give up after `max_steps`.
    pub(super) fn request(
        &mut self,
        group: GroupId,
        max_steps: u64,
        mut send: impl FnMut(&mut Sim, NodeId) -> Token,
    ) -> Result<Reply> {
        let deadline = self.now + max_steps;
        let mut hint = None;
        let mut last_err = Error::ProposalLost {
            group,
            reason: "no attempt made".into(),
        };
        while self.now < deadline {
            let Some(node) = self.target(group, hint.take()) else {
                self.step()?;
                continue;
            };
            let token = send(self, node);
            let answered =
                self.run_until(deadline - self.now, |s| s.completions.contains_key(&token))?;
            if !answered {
                break;
            }
            match self.completions.remove(&token).expect("answered") {
                Ok(r) => return Ok(r),
                Err(e) => {
                    if let Error::NotLeader { leader, .. } = &e {
                        hint = *leader;
                    }
                    if e.action() == Action::Fail {
                        return Err(e);
                    }
                    last_err = e;
                    // Back off a little before retrying.
                    for _ in 0..self.cfg.steps_per_tick {
                        self.step()?;
                    }
                }
            }
        }
        Err(last_err)
    }

    /// Applies `op` as client `client` with sequence `seq` (retried with the
    /// same pair until answered).
    pub fn write(&mut self, client: u64, seq: u64, op: Op, max_steps: u64) -> Result<Response> {
        let group = self.catalog.group_of(op.key());
        let p = Proposal::Kv(Command {
            client,
            seq,
            ack_below: seq,
            fresh: true,
            proposed_ms: 0,
            op,
        });
        match self.request(group, max_steps, |s, node| s.submit(node, group, &p))? {
            Reply::Kv(r) => Ok(r),
            other => Err(Error::Invalid(format!("unexpected reply {other:?}"))),
        }
    }

    /// A linearizable read of `key`.
    pub fn read(&mut self, key: &[u8], max_steps: u64) -> Result<Option<Vec<u8>>> {
        let group = self.catalog.group_of(key);
        match self.request(group, max_steps, |s, node| s.submit_read(node, group, key))? {
            Reply::Kv(Response::Value(v)) => Ok(v),
            other => Err(Error::Invalid(format!("unexpected reply {other:?}"))),
        }
    }

    /// Applies many commands concurrently: each is sent to its group's
    /// leader and retried (same client and sequence) until answered or until
    /// `max_steps` have passed. Returns the responses in order.
    pub fn write_many(&mut self, cmds: &[Command], max_steps: u64) -> Result<Vec<Response>> {
        let deadline = self.now + max_steps;
        let mut results: Vec<Option<Response>> = vec![None; cmds.len()];
        let mut flight: Vec<Option<Token>> = vec![None; cmds.len()];
        let mut hints: Vec<Option<NodeId>> = vec![None; cmds.len()];
        while self.now < deadline && results.iter().any(Option::is_none) {
            for (i, cmd) in cmds.iter().enumerate() {
                if results[i].is_some() || flight[i].is_some() {
                    continue;
                }
                let group = self.catalog.group_of(cmd.op.key());
                if let Some(node) = self.target(group, hints[i].take()) {
                    flight[i] = Some(self.submit(node, group, &Proposal::Kv(cmd.clone())));
                }
            }
            self.step()?;
            for i in 0..cmds.len() {
                let Some(token) = flight[i] else { continue };
                let Some(answer) = self.completions.remove(&token) else {
                    continue;
                };
                flight[i] = None;
                match answer {
                    Ok(Reply::Kv(r)) => results[i] = Some(r),
                    Ok(other) => return Err(Error::Invalid(format!("unexpected reply {other:?}"))),
                    Err(e) if e.action() == Action::Fail => return Err(e),
                    Err(e) => {
                        if let Error::NotLeader { leader, .. } = e {
                            hints[i] = leader;
                        }
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.ok_or(Error::ProposalLost {
                    group: GroupId(0),
                    reason: "not answered in time".into(),
                })
            })
            .collect()
    }
}
