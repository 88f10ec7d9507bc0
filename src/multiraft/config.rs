//! Driver configuration and the raft-rs configuration derived from it.

use xxhash_rust::xxh3::xxh3_64;

use crate::kv::Limits;
use crate::types::{GroupId, NodeId};

/// Ticks without a leader's word before a follower campaigns (the lower
/// bound; each replica adds its own fixed offset below this much again).
/// Ten heartbeats: survives a lost heartbeat or two without an election.
pub const ELECTION_TICKS: usize = 10;
/// Ticks between a leader's heartbeats.
pub const HEARTBEAT_TICKS: usize = 2;
/// Applied entries kept in the log behind the apply index, so that a
/// follower that fell a little behind catches up from the log rather than
/// by snapshot.
pub const LOG_KEEP_ENTRIES: u64 = 8192;
/// How far past `log_keep` the log may grow before it is compacted (so that
/// compaction runs in batches, not every round).
pub const COMPACT_SLACK_ENTRIES: u64 = 1024;
/// Largest append message raft-rs builds, in bytes.
pub const MAX_MSG_BYTES: u64 = 1024 * 1024;
/// Append messages in flight per follower before the leader waits.
pub const MAX_INFLIGHT_MSGS: usize = 256;
/// Rounds a group's applied changes may wait in the overlay before a round
/// flushes them to redb. Under load a node runs a few hundred rounds a
/// second, so a crash makes it re-apply about a second of entries from its
/// own log.
pub const FLUSH_ROUNDS: u64 = 256;
/// Groups one round flushes at most, so that flushing is spread over
/// rounds instead of stalling one round for every group at once.
pub const FLUSH_GROUPS_PER_ROUND: usize = 4;
/// Ticks without any flush after which the whole overlay is flushed, so a
/// quiet node writes out its last changes soon after they apply.
pub const FLUSH_TICKS: u64 = 10;
/// Bytes the overlay may hold before it is flushed, whatever the round count.
pub const FLUSH_BYTES: usize = 16 * 1024 * 1024;

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
    /// See [`MAX_MSG_BYTES`].
    pub max_msg_bytes: u64,
    /// See [`MAX_INFLIGHT_MSGS`].
    pub max_inflight_msgs: usize,
    /// Ticks a proposal may wait for its entry to apply before the caller is
    /// told its fate is unknown.
    pub proposal_timeout_ticks: u64,
    /// Ticks a linearizable read may wait for leadership to be confirmed.
    pub read_timeout_ticks: u64,
    /// Key and value size limits.
    pub limits: Limits,
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
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            election_ticks: ELECTION_TICKS,
            heartbeat_ticks: HEARTBEAT_TICKS,
            seed: 0,
            log_keep: LOG_KEEP_ENTRIES,
            compact_slack: COMPACT_SLACK_ENTRIES,
            max_msg_bytes: MAX_MSG_BYTES,
            max_inflight_msgs: MAX_INFLIGHT_MSGS,
            proposal_timeout_ticks: 20 * ELECTION_TICKS as u64,
            read_timeout_ticks: 4 * ELECTION_TICKS as u64,
            limits: Limits::default(),
            trace_applies: false,
            balance_leaders: true,
            replicas: crate::catalog::DEFAULT_REPLICAS,
            flush_rounds: FLUSH_ROUNDS,
            flush_groups_per_round: FLUSH_GROUPS_PER_ROUND,
            flush_ticks: FLUSH_TICKS,
            flush_bytes: FLUSH_BYTES,
        }
    }
}

impl DriverConfig {
    /// The raft-rs configuration of one replica.
    ///
    /// raft-rs draws each election timeout from the thread's RNG, which no
    /// seed controls. To keep runs replayable, each replica instead gets a
    /// fixed timeout in `[election, 2 * election)` (a range of width one
    /// makes raft-rs's draw constant). Fixed timeouts must differ between
    /// the replicas of a group, or equal ones split every vote forever: the
    /// range is cut into one band per voter, a replica takes the band of its
    /// rank among the voters (rotated per group), and the seed picks the spot inside the band.
    pub fn raft_config(
        &self,
        node: NodeId,
        group: GroupId,
        voters: &[u64],
        applied: u64,
    ) -> raft::Config {
        let mut key = [0u8; 24];
        key[..8].copy_from_slice(&self.seed.to_le_bytes());
        key[8..16].copy_from_slice(&node.0.to_le_bytes());
        key[16..].copy_from_slice(&group.0.to_le_bytes());
        let mut sorted = voters.to_vec();
        sorted.sort_unstable();
        // Rotating the rank by the group id spreads first leaderships over
        // the nodes instead of handing every group to the lowest id.
        let position = sorted
            .iter()
            .position(|v| *v == node.0)
            .unwrap_or(sorted.len());
        let rank = (position + group.0 as usize) % sorted.len().max(1);
        let bands = (sorted.len() + 1).min(self.election_ticks).max(1);
        let band = self.election_ticks / bands;
        let within = (xxh3_64(&key) % band as u64) as usize;
        let timeout = self.election_ticks + (rank % bands) * band + within;
        raft::Config {
            id: node.0,
            election_tick: self.election_ticks,
            heartbeat_tick: self.heartbeat_ticks,
            min_election_tick: timeout,
            max_election_tick: timeout + 1,
            applied,
            max_size_per_msg: self.max_msg_bytes,
            max_inflight_msgs: self.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            read_only_option: raft::ReadOnlyOption::Safe,
            ..Default::default()
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
