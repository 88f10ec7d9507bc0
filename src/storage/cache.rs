//! The entry cache: which Raft log entries a node keeps in memory, and how
//! it reads the others back from redb.
//!
//! A group's log lives on disk in two steps: a round appends its new
//! entries to the round log as a log record, and a checkpoint later writes
//! the records to redb's log table (`checkpoint`). Until that checkpoint a
//! record's entries exist nowhere but in the round log, which nothing reads
//! while the node runs, so they must stay in memory. Once their record is
//! in redb they may leave memory: a group keeps a suffix of its log in
//! memory (`GroupStorage::entries`, from `first_cached` on), and the driver
//! evicts older applied entries whenever the node's entries together pass
//! the cache budget ([`EntryCache`], `--raft-cache`). What raft-rs then asks
//! for below `first_cached`, for a follower that fell behind or an apply
//! after a restart, [`read_entries`] reads from redb.
//!
//! Terms are needed far more often than entries (every append checks the
//! term of the entry before it), so each group keeps the terms of its whole
//! log as runs ([`TermRuns`]): one pair per change of term, a few dozen
//! bytes for a log of any length. `term()` never touches the disk.
//!
//! Only applied entries are evicted, and only when every record that could
//! hold a newer version of them is in redb: a record names its first and
//! last index, and a record after the point redb holds (not checkpointed
//! yet) pins every entry from its first index on. Applied entries are
//! committed, and a committed entry is never written again, so any redb
//! record that holds one holds the same bytes; [`read_entries`] still lets
//! the newest record win, as a replay does.
//!
//! A restart keeps nothing in memory: every record is in redb by then (the
//! opening replays the round log into it), so a group starts with its term
//! runs and an empty cache, and its memory does not grow with its log.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use raft::eraftpb::Entry;
use redb::{Database, ReadableDatabase};

use super::schema::{decode_log_record, log_record_header, LOG};
use crate::error::{Error, Result};
use crate::types::GroupId;

/// Default bytes of Raft log entries a node keeps in memory, over all its
/// groups: enough for a few seconds of writes at the bench's rates, so
/// followers a little behind are served from memory.
pub const RAFT_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Bytes an entry costs in memory beyond its data and context (the entry
/// struct, its vector slot and allocator rounding).
const ENTRY_OVERHEAD: usize = 64;

/// Memory an entry takes in the cache.
pub(crate) fn entry_bytes(e: &Entry) -> usize {
    e.data.len() + e.context.len() + ENTRY_OVERHEAD
}

/// What every group of a node shares about the entry cache.
#[derive(Debug)]
pub struct EntryCache {
    /// The budget, in bytes.
    budget: usize,
    /// Bytes of entries in memory, over all groups.
    used: AtomicUsize,
    /// redb's log table holds every log record below this sequence: set
    /// after each checkpoint's commit, and at opening.
    in_db_below: AtomicU64,
    /// Entries read back from redb (for tests, `status` and benchmarks).
    reads: AtomicU64,
}

impl EntryCache {
    /// A cache of `budget` bytes.
    pub fn new(budget: usize) -> EntryCache {
        EntryCache {
            budget,
            used: AtomicUsize::new(0),
            in_db_below: AtomicU64::new(0),
            reads: AtomicU64::new(0),
        }
    }

    /// The budget, in bytes.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Bytes of entries in memory now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Whether the node's entries are over the budget.
    pub fn over_budget(&self) -> bool {
        self.used() > self.budget
    }

    /// Entries read back from redb so far.
    pub fn disk_reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    pub(crate) fn count_disk_reads(&self, entries: usize) {
        self.reads.fetch_add(entries as u64, Ordering::Relaxed);
    }

    pub(crate) fn add(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn sub(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// redb's log table holds every log record below this sequence.
    pub(crate) fn in_db_below(&self) -> u64 {
        self.in_db_below.load(Ordering::Acquire)
    }

    /// Records that redb holds every log record up to and including `seq`
    /// (its transaction committed).
    pub(crate) fn set_in_db(&self, seq: u64) {
        self.in_db_below.fetch_max(seq + 1, Ordering::AcqRel);
    }

    /// Records that redb holds every log record below `seq`.
    pub(crate) fn set_in_db_below(&self, seq: u64) {
        self.in_db_below.fetch_max(seq, Ordering::AcqRel);
    }
}

impl Default for EntryCache {
    fn default() -> Self {
        EntryCache::new(RAFT_CACHE_BYTES)
    }
}

/// A log record holding some of a group's entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordRef {
    /// First index in the record.
    pub(crate) first: u64,
    /// Last index in the record.
    pub(crate) last: u64,
    /// The record's sequence in the round log (its key in redb).
    pub(crate) seq: u64,
    /// Approximate bytes of its entries, for compaction by size.
    pub(crate) bytes: u64,
}

/// The terms of a log as runs: `(first index, term)`, one per change of
/// term, in index order. Covers every index after the compaction point up
/// to the last index; the term of the compaction point itself is kept
/// beside it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TermRuns(Vec<(u64, u64)>);

impl TermRuns {
    /// The term of `index`, if a run covers it (the caller checks bounds).
    pub(crate) fn term(&self, index: u64) -> Option<u64> {
        let at = self.0.partition_point(|&(first, _)| first <= index);
        at.checked_sub(1).map(|i| self.0[i].1)
    }

    /// Forgets every index from `from` on (a later append replaces them).
    pub(crate) fn truncate(&mut self, from: u64) {
        let keep = self.0.partition_point(|&(first, _)| first < from);
        self.0.truncate(keep);
    }

    /// Records that `index` (the next after the last) has `term`.
    pub(crate) fn push(&mut self, index: u64, term: u64) {
        if self.0.last().map(|&(_, t)| t) != Some(term) {
            self.0.push((index, term));
        }
    }

    /// Forgets every index up to `upto` (compacted).
    pub(crate) fn compact(&mut self, upto: u64) {
        let dead = self.0.partition_point(|&(first, _)| first <= upto);
        // The run that covers `upto + 1` starts there now.
        if dead > 0 {
            let (_, term) = self.0[dead - 1];
            self.0.drain(..dead);
            if self.0.first().map(|&(first, _)| first) != Some(upto + 1) {
                self.0.insert(0, (upto + 1, term));
            }
        }
    }

    /// Forgets everything.
    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }

    /// Runs kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

/// Reads a group's entries `low..high` from redb's log table, through the
/// records `records` lists (oldest first), stopping where raft-rs's
/// `limit_size` would for `max_size` (always at least one entry). Every
/// record that could hold them must be in redb.
///
/// An entry is taken only where its term is the one `terms` names: older
/// records may hold a version a later append replaced, and the log matching
/// property makes the entry of that index and term the committed one. A
/// later version of an entry is always in a later record than the final
/// version of any entry before it, so one pass in record order, taking
/// entries from where the last one ended, finds them all.
pub(crate) fn read_entries(
    db: &Database,
    group: GroupId,
    records: impl Iterator<Item = RecordRef>,
    terms: &TermRuns,
    (low, high): (u64, u64),
    max_size: Option<u64>,
) -> Result<Vec<Entry>> {
    use protobuf::Message as _;
    let txn = db.begin_read()?;
    let table = txn.open_table(LOG)?;
    let mut out: Vec<Entry> = Vec::new();
    let mut size = 0u64;
    let mut next = low;
    let mut limited = false;
    'records: for r in records {
        if r.last < next {
            continue;
        }
        // A checkpoint merges a group's records into the last of them, so
        // the earlier ones' keys may hold nothing now.
        let Some(row) = table.get(r.seq)? else {
            continue;
        };
        let (g, first, last) = log_record_header(row.value())?;
        if g != group.0 || first > next || last < next {
            continue;
        }
        let (_, entries) = decode_log_record(row.value())?;
        for e in entries.into_iter().skip((next - first) as usize) {
            if e.index != next || e.index >= high || terms.term(e.index) != Some(e.term) {
                break;
            }
            size += u64::from(e.compute_size());
            if !out.is_empty() && max_size.is_some_and(|m| size > m) {
                limited = true;
                break 'records;
            }
            out.push(e);
            next += 1;
        }
        if next == high {
            break;
        }
    }
    if out.is_empty() || (next < high && !limited) {
        return Err(Error::Corrupt {
            what: "raft log",
            detail: format!("{group}: entry {next} (of {low}..{high}) is not in the log table"),
        });
    }
    Ok(out)
}
