//! Driver configuration and the raft-rs configuration derived from it.

use raft::StateRole;
use xxhash_rust::xxh3::xxh3_64;

use crate::kv::{Limits, SessionLimits};
use crate::storage::{
    FlushPolicy, FLUSH_BYTES, FLUSH_GROUPS_PER_ROUND, FLUSH_ROUNDS, FLUSH_TICKS, SCAN_PAGE_BYTES,
};
use crate::types::{GroupId, NodeId};

/// Ticks without a leader's word before a follower campaigns (the lower
/// bound; each replica adds its own offset, below this much again, drawn
/// anew at each term).
/// Ten heartbeats: survives a lost heartbeat or two without an election.
pub const ELECTION_TICKS: usize = 10;
/// Ticks between a leader's heartbeats.
pub const HEARTBEAT_TICKS: usize = 2;
/// Applied entries kept in the log behind the apply index, so that a
/// follower that fell a little behind catches up from the log rather than
/// by snapshot.
pub const LOG_KEEP_ENTRIES: u64 = 8192;
/// Bytes of applied log kept behind the apply index at most, whatever
/// `log_keep` says: with large values, 8,192 entries would be gigabytes of
/// log per group on disk. A follower further behind gets a snapshot.
pub const LOG_KEEP_BYTES: u64 = 16 * 1024 * 1024;
/// How far past `log_keep_bytes` a log may grow before it is compacted.
pub const COMPACT_SLACK_BYTES: u64 = 4 * 1024 * 1024;
/// How far past `log_keep` the log may grow before it is compacted (so that
/// compaction runs in batches, not every round).
pub const COMPACT_SLACK_ENTRIES: u64 = 1024;
/// Largest append message raft-rs builds, in bytes.
pub const MAX_MSG_BYTES: u64 = 1024 * 1024;
/// Append messages in flight per follower before the leader waits.
pub const MAX_INFLIGHT_MSGS: usize = 256;
/// Ticks of silence after which group 0's leader declares a node dead: five
/// minutes at the default 100 ms tick, long enough to ride out a restart
/// or a reboot without moving every replica the node holds.
pub const DEAD_AFTER_TICKS: u64 = 3_000;
/// Ticks a replica the catalog moved away waits for its removal to reach it
/// through Raft before it destroys itself: three of the longest election
/// timeouts, so a leader that still counts it has sent it heartbeats many
/// times over.
pub const LEAVE_GRACE_TICKS: u64 = 6 * ELECTION_TICKS as u64;

/// How a [`super::Driver`] runs.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// See [`ELECTION_TICKS`].
    pub election_ticks: usize,
    /// See [`HEARTBEAT_TICKS`].
    pub heartbeat_ticks: usize,
    /// Seed for every random choice the driver makes (election timeouts), so
    /// a simulated run replays exactly.
    pub seed: u64,
    /// See [`LOG_KEEP_ENTRIES`].
    pub log_keep: u64,
    /// See [`COMPACT_SLACK_ENTRIES`].
    pub compact_slack: u64,
    /// See [`LOG_KEEP_BYTES`].
    pub log_keep_bytes: u64,
    /// See [`COMPACT_SLACK_BYTES`].
    pub compact_slack_bytes: u64,
    /// See [`MAX_MSG_BYTES`].
    pub max_msg_bytes: u64,
    /// See [`MAX_INFLIGHT_MSGS`].
    pub max_inflight_msgs: usize,
    /// Ticks a proposal may wait for its entry to apply before the caller is
    /// told its fate is unknown.
    pub proposal_timeout_ticks: u64,
    /// Ticks a linearizable read may wait for leadership to be confirmed.
    pub read_timeout_ticks: u64,
    /// Bytes of keys and values one scan page holds at most; see
    /// [`SCAN_PAGE_BYTES`].
    pub scan_page_bytes: usize,
    /// Key and value size limits.
    pub limits: Limits,
    /// How much each data group keeps of client sessions. Replicated
    /// semantics: every node of a cluster must use the same value (nodes
    /// take the default; tests set it alike on all).
    pub sessions: SessionLimits,
    /// Report every applied entry in the round output (for checkers).
    pub trace_applies: bool,
    /// Hand each group's leadership to its preferred leader when that voter
    /// is caught up, so leaders spread over the nodes.
    pub balance_leaders: bool,
    /// Voters per group that placement aims for.
    pub replicas: usize,
    /// See [`FLUSH_ROUNDS`].
    pub flush_rounds: u64,
    /// See [`FLUSH_GROUPS_PER_ROUND`].
    pub flush_groups_per_round: usize,
    /// See [`FLUSH_TICKS`].
    pub flush_ticks: u64,
    /// See [`FLUSH_BYTES`].
    pub flush_bytes: usize,
    /// See [`DEAD_AFTER_TICKS`].
    pub dead_after_ticks: u64,
    /// See [`LEAVE_GRACE_TICKS`].
    pub leave_grace_ticks: u64,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            election_ticks: ELECTION_TICKS,
            heartbeat_ticks: HEARTBEAT_TICKS,
            seed: 0,
            log_keep: LOG_KEEP_ENTRIES,
            compact_slack: COMPACT_SLACK_ENTRIES,
            log_keep_bytes: LOG_KEEP_BYTES,
            compact_slack_bytes: COMPACT_SLACK_BYTES,
            max_msg_bytes: MAX_MSG_BYTES,
            max_inflight_msgs: MAX_INFLIGHT_MSGS,
            proposal_timeout_ticks: 20 * ELECTION_TICKS as u64,
            read_timeout_ticks: 4 * ELECTION_TICKS as u64,
            scan_page_bytes: SCAN_PAGE_BYTES,
            limits: Limits::default(),
            sessions: SessionLimits::default(),
            trace_applies: false,
            balance_leaders: true,
            replicas: crate::catalog::DEFAULT_REPLICAS,
            flush_rounds: FLUSH_ROUNDS,
            flush_groups_per_round: FLUSH_GROUPS_PER_ROUND,
            flush_ticks: FLUSH_TICKS,
            flush_bytes: FLUSH_BYTES,
            dead_after_ticks: DEAD_AFTER_TICKS,
            leave_grace_ticks: LEAVE_GRACE_TICKS,
        }
    }
}

impl DriverConfig {
    /// When the engine flushes the applied-state overlay.
    pub fn flush_policy(&self) -> FlushPolicy {
        FlushPolicy {
            rounds: self.flush_rounds,
            groups_per_round: self.flush_groups_per_round,
            ticks: self.flush_ticks,
            bytes: self.flush_bytes,
        }
    }

    /// The raft-rs configuration of one replica.
    ///
    /// raft-rs draws a fresh election timeout from the thread's RNG whenever
    /// a replica changes term or role, and no seed controls that draw. The
    /// driver therefore overrides it with [`DriverConfig::election_timeout`]
    /// before every tick, so only seeded timeouts are ever counted.
    pub fn raft_config(&self, node: NodeId, group: GroupId, applied: u64) -> raft::Config {
        raft::Config {
            id: node.0,
            election_tick: self.election_ticks,
            heartbeat_tick: self.heartbeat_ticks,
            min_election_tick: self.election_ticks,
            max_election_tick: 2 * self.election_ticks,
            applied,
            max_size_per_msg: self.max_msg_bytes,
            max_inflight_msgs: self.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            read_only_option: raft::ReadOnlyOption::Safe,
            // A data group's leader does not send an empty append to every
            // follower each time its commit index moves: followers learn it
            // from the next append or heartbeat. Their applying lags by up to
            // a heartbeat when writes stop; reads go through the leader, so
            // no client sees the lag. raft-rs still broadcasts while a
            // membership change is pending. Group 0 keeps broadcasting: any
            // node answers catalog requests from its own applied copy, which
            // should not lag.
            skip_bcast_commit: group != crate::types::CATALOG_GROUP,
            ..Default::default()
        }
    }

    /// The election timeout, in ticks, of `node`'s replica of `group` while
    /// it is in `term` and `role`: a value in `[election, 2 * election)`.
    ///
    /// The range is cut into one band per voter and each voter takes the band
    /// of its rank (rotated by group id, so first leaderships spread over the
    /// nodes), so voters of a group never count down to the same tick. The
    /// spot inside the band, and the whole timeout of a replica that is not a
    /// voter (or of a group with more voters than ticks), is hashed from the
    /// seed, the replica, the term and the role. Replicas whose elections
    /// collided (ticks of different processes are not in step, so distinct
    /// ticks can still fall close together) thus draw apart in the next term
    /// instead of splitting every vote forever.
    pub fn election_timeout(
        &self,
        node: NodeId,
        group: GroupId,
        voters: &[u64],
        term: u64,
        role: StateRole,
    ) -> usize {
        let election = self.election_ticks.max(1);
        let mut key = [0u8; 33];
        key[..8].copy_from_slice(&self.seed.to_le_bytes());
        key[8..16].copy_from_slice(&node.0.to_le_bytes());
        key[16..24].copy_from_slice(&group.0.to_le_bytes());
        key[24..32].copy_from_slice(&term.to_le_bytes());
        key[32] = role as u8;
        let spot = xxh3_64(&key);
        let mut sorted = voters.to_vec();
        sorted.sort_unstable();
        match sorted.iter().position(|v| *v == node.0) {
            Some(position) if sorted.len() <= election => {
                let rank = (position + group.0 as usize) % sorted.len();
                let band = election / sorted.len();
                election + rank * band + (spot % band as u64) as usize
            }
            _ => election + (spot % election as u64) as usize,
        }
    }
}

/// The voter that should lead `group`: voters in id order, taken round-robin
/// by group id, which spreads leadership evenly when every group has the
/// same voters and nearly so otherwise.
pub fn preferred_leader(group: GroupId, voters: &[u64]) -> Option<u64> {
    let mut sorted = voters.to_vec();
    sorted.sort_unstable();
    (!sorted.is_empty()).then(|| sorted[group.0 as usize % sorted.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLES: [StateRole; 4] = [
        StateRole::Follower,
        StateRole::PreCandidate,
        StateRole::Candidate,
        StateRole::Leader,
    ];

    fn cfg(seed: u64) -> DriverConfig {
        DriverConfig {
            seed,
            ..DriverConfig::default()
        }
    }

    #[test]
    fn every_election_timeout_lies_in_the_range_raft_accepts() {
        let cfg = cfg(7);
        let many: Vec<u64> = (1..=25).collect();
        let voter_sets: [&[u64]; 5] = [&[], &[1], &[1, 2, 3], &[2, 3, 4, 5, 6], &many];
        for voters in voter_sets {
            for node in 1..=7 {
                for group in 0..40 {
                    for term in 0..20 {
                        for role in ROLES {
                            let t = cfg.election_timeout(
                                NodeId(node),
                                GroupId(group),
                                voters,
                                term,
                                role,
                            );
                            assert!(
                                (ELECTION_TICKS..2 * ELECTION_TICKS).contains(&t),
                                "timeout {t} for node {node} group {group} voters {voters:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_voters_of_a_group_never_time_out_on_the_same_tick() {
        let cfg = cfg(11);
        for voters in [vec![1, 2, 3], vec![4, 9, 2, 7, 5]] {
            for group in 0..64 {
                for term in 0..50 {
                    let mut timeouts: Vec<usize> = voters
                        .iter()
                        .map(|v| {
                            let role = StateRole::Follower;
                            cfg.election_timeout(NodeId(*v), GroupId(group), &voters, term, role)
                        })
                        .collect();
                    timeouts.sort_unstable();
                    timeouts.dedup();
                    assert_eq!(timeouts.len(), voters.len(), "group {group} term {term}");
                }
            }
        }
    }

    /// Two replicas that opened before they knew the group's voters tie now
    /// and then; a tie must not repeat term after term, or the pair splits
    /// every vote forever once the third voter is gone.
    #[test]
    fn replicas_that_tie_in_one_term_draw_apart_in_later_terms() {
        let cfg = cfg(3);
        let mut ties = 0;
        let mut draws = 0;
        for group in 0..200 {
            let mut run = 0;
            for term in 0..100 {
                let timeout = |node| {
                    let role = StateRole::Candidate;
                    cfg.election_timeout(NodeId(node), GroupId(group), &[], term, role)
                };
                draws += 1;
                if timeout(3) == timeout(4) {
                    ties += 1;
                    run += 1;
                    assert!(run < 6, "group {group} tied for {run} terms up to {term}");
                } else {
                    run = 0;
                }
            }
        }
        // About one draw in ELECTION_TICKS ties; far more would mean the
        // term does not reach the hash.
        assert!(ties * ELECTION_TICKS < 2 * draws, "{ties} ties in {draws}");
    }
}
