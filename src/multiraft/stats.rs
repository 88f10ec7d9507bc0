//! The driver's counters: what its groups did, for the node's metrics.
//!
//! Bumped on the driver thread where the event happens (a proposal
//! accepted, entries handed to the state machine, a new leader or term in
//! a group's Ready) with one relaxed atomic add each, and read from any
//! thread through the `Arc` [`Driver::stats`](super::Driver::stats) hands
//! out. The round's duration is timed by the caller of the round
//! (`runtime`), since this module reads no clock.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::meter::Histogram;

/// Counters of one driver. See the module doc.
#[derive(Debug, Default)]
pub struct DriverStats {
    /// Proposals this node accepted as a group's leader and handed to Raft.
    pub proposals: AtomicU64,
    /// Log entries committed and applied by this node's replicas.
    pub entries_applied: AtomicU64,
    /// Times a replica here learnt of a new leader (itself included).
    pub leader_changes: AtomicU64,
    /// Terms a replica here entered: each began with an election, which
    /// this replica started or heard of.
    pub elections: AtomicU64,
    /// How long each whole round took: the Ready of every busy group,
    /// persisting its batch, and what follows (timed by `runtime`).
    pub round: Histogram,
}

impl DriverStats {
    /// Reads a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    pub(super) fn bump(c: &AtomicU64, by: u64) {
        c.fetch_add(by, Ordering::Relaxed);
    }
}
