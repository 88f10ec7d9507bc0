//! One group's view of the log, as raft-rs's `Storage` trait wants it.
//!
//! raft-rs reads the log through `&self` calls at arbitrary moments inside
//! `step` and `ready`. Serving those from redb would open a read transaction
//! per call, so each group keeps the recent part of its log in memory, kept
//! in step by the driver, which changes it and stages the same change in
//! the round's write batch; older entries are read back from redb, and the
//! node's entries in memory are bounded in bytes (`cache`). A snapshot
//! asked for is not built here: a data group opens a source (a redb read
//! transaction with a copy of its overlay, together its applied state as
//! of `applied`) that the transfer reads in chunks off the driver thread,
//! and the snapshot carries only its descriptor (see `snapshot`).

use std::collections::VecDeque;
use std::sync::Arc;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use redb::{Database, ReadableDatabase};

use super::cache::{entry_bytes, read_entries, EntryCache, RecordRef, TermRuns};
use super::overlay::SharedOverlay;
use super::schema::{RaftStateRecord, APPLIED, META, META_CATALOG, RAFT_STATE};
use super::snapshot::{SnapshotDescriptor, Snapshots};
use crate::error::{Error, Result};
use crate::types::{GroupId, CATALOG_GROUP};
use crate::wire;

/// The in-memory mirror of one group's persisted Raft state.
pub struct GroupStorage {
    /// The group.
    pub(crate) group: GroupId,
    /// The database, for building snapshots.
    db: Arc<Database>,
    /// The node's unflushed applied state, for building snapshots.
    overlay: SharedOverlay,
    /// The node's entry cache budget and what redb's log table holds.
    cache: Arc<EntryCache>,
    /// The node's snapshot sources.
    snapshots: Arc<Snapshots>,
    /// Last persisted (or staged this round) HardState.
    pub(crate) hard_state: HardState,
    /// Current ConfState (as of the applied index).
    pub(crate) conf_state: ConfState,
    /// Index of the last compacted entry.
    pub(crate) snap_index: u64,
    /// Term of the last compacted entry.
    pub(crate) snap_term: u64,
    /// Entries `first_cached ..= last_index`: the part of the log in memory.
    pub(crate) entries: Vec<Entry>,
    /// Index of the first entry in memory; those from `snap_index + 1` up
    /// to it are read from redb's log table.
    pub(crate) first_cached: u64,
    /// Memory `entries` takes, as counted in the node's [`EntryCache`].
    cached_bytes: usize,
    /// The term of every index from `snap_index + 1` to the last.
    terms: TermRuns,
    /// Index of the last applied entry.
    pub(crate) applied: u64,
    /// The apply index redb holds for this group (staged in a round or
    /// committed): what a restart resumes applying from. Compaction never
    /// passes it, so the entries a restart re-applies are still in the log.
    pub(crate) flushed: u64,
    /// The log records holding this group's entries, oldest first.
    pub(crate) records: VecDeque<RecordRef>,
    /// The sum of `records`' bytes, kept as they change: compaction looks
    /// at it for every group at every round.
    log_bytes: u64,
}

/// A group's log as read back from its records at start: its records and
/// terms, not its entries (they stay in redb until raft-rs asks for them).
#[derive(Default)]
pub(crate) struct RestoredLog {
    /// Index of the last entry replayed, if any is past the compaction point.
    last: Option<u64>,
    /// The term of every index up to `last`.
    terms: TermRuns,
    /// The records replayed, oldest first.
    records: VecDeque<RecordRef>,
}

impl RestoredLog {
    /// Replays one record of this group over what was read so far.
    pub(crate) fn replay(
        &mut self,
        group: GroupId,
        snap_index: u64,
        seq: u64,
        entries: &[Entry],
    ) -> Result<()> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(());
        };
        self.records.push_back(RecordRef {
            first: first.index,
            last: last.index,
            seq,
            bytes: entries.iter().map(|e| entry_bytes(e) as u64).sum(),
        });
        for e in entries.iter().filter(|e| e.index > snap_index) {
            let next = self.last.unwrap_or(snap_index) + 1;
            if e.index > next {
                return Err(Error::Corrupt {
                    what: "raft log",
                    detail: format!(
                        "{group}: record {seq} starts at {} after {}",
                        e.index,
                        next - 1
                    ),
                });
            }
            // A later record replaces the suffix it overlaps.
            self.terms.truncate(e.index);
            self.terms.push(e.index, e.term);
            self.last = Some(e.index);
        }
        Ok(())
    }
}

impl GroupStorage {
    /// A group restored at start: its state record, apply index, and the
    /// log rebuilt from its records.
    pub(crate) fn restore(
        (db, overlay, cache, snapshots): (
            Arc<Database>,
            SharedOverlay,
            Arc<EntryCache>,
            Arc<Snapshots>,
        ),
        group: GroupId,
        rec: &RaftStateRecord,
        applied: u64,
        log: RestoredLog,
    ) -> GroupStorage {
        let mut store = GroupStorage::fresh((db, overlay, cache, snapshots), group, rec);
        if let Some(last) = log.last {
            store.first_cached = last + 1;
            store.terms = log.terms;
        }
        store.log_bytes = log.records.iter().map(|r| r.bytes).sum();
        store.records = log.records;
        // Everything up to the compaction point is applied, even before the
        // first apply writes a row (a group starts at `INIT_INDEX`).
        store.applied = applied.max(rec.snap_index);
        store.flushed = store.applied;
        store
    }

    /// Index of the last entry in the log.
    pub fn last_index_(&self) -> u64 {
        self.first_cached + self.entries.len() as u64 - 1
    }

    /// Bytes of this group's entries in memory.
    pub fn cached_bytes(&self) -> usize {
        self.cached_bytes
    }

    /// Approximate bytes of the log's entries on disk (its records').
    pub fn log_bytes(&self) -> u64 {
        self.log_bytes
    }

    /// The highest index the log may be compacted to so that the records
    /// after it hold at most `keep` bytes, if it holds more than `keep +
    /// slack` (approximate: records a later one overlapped count in full).
    pub(crate) fn compaction_by_bytes(&self, keep: u64, slack: u64) -> Option<u64> {
        let total = self.log_bytes();
        if total <= keep + slack {
            return None;
        }
        let mut left = total;
        let mut upto = None;
        for r in &self.records {
            if left <= keep {
                break;
            }
            left -= r.bytes;
            upto = Some(r.last);
        }
        upto
    }

    /// The record to persist for the current state.
    pub(crate) fn record(&self) -> RaftStateRecord {
        RaftStateRecord::new(
            &self.hard_state,
            &self.conf_state,
            self.snap_index,
            self.snap_term,
        )
    }

    /// Appends entries, discarding any conflicting suffix; `record` is the
    /// log record the disk side stored them in.
    pub(crate) fn append(&mut self, new: &[Entry], record: Option<u64>) {
        let old_last = self.last_index_();
        let (Some(first), Some(last)) = (new.first(), new.last()) else {
            return;
        };
        if let Some(seq) = record {
            let bytes = new.iter().map(|e| entry_bytes(e) as u64).sum();
            self.records.push_back(RecordRef {
                first: first.index,
                last: last.index,
                seq,
                bytes,
            });
            self.log_bytes += bytes;
        }
        assert!(
            first.index > self.snap_index && first.index <= old_last + 1,
            "{}: append at {} leaves a gap (snap {}, last {old_last})",
            self.group,
            first.index,
            self.snap_index
        );
        if first.index < self.first_cached {
            // Replaces entries that left memory: none are applied, so the
            // cache was never allowed to evict them; keep the rule loud.
            assert!(
                first.index > self.applied,
                "{}: append at {} replaces applied entries",
                self.group,
                first.index
            );
            self.drop_cached(self.entries.len());
            self.first_cached = first.index;
        } else {
            let keep = (first.index - self.first_cached) as usize;
            let dropped: usize = self.entries[keep..].iter().map(entry_bytes).sum();
            self.entries.truncate(keep);
            self.uncount(dropped);
        }
        self.terms.truncate(first.index);
        let mut added = 0;
        for e in new {
            self.terms.push(e.index, e.term);
            added += entry_bytes(e);
        }
        self.entries.extend_from_slice(new);
        self.cached_bytes += added;
        self.cache.add(added);
    }

    /// Drops the first `n` entries in memory from it.
    fn drop_cached(&mut self, n: usize) {
        let bytes: usize = self.entries.drain(..n).map(|e| entry_bytes(&e)).sum();
        self.first_cached += n as u64;
        self.uncount(bytes);
    }

    fn uncount(&mut self, bytes: usize) {
        self.cached_bytes -= bytes;
        self.cache.sub(bytes);
    }

    /// Moves the applied entries whose records redb holds out of memory
    /// (they are read back from there when asked for). Returns the bytes
    /// freed.
    pub(crate) fn evict(&mut self) -> usize {
        let in_db_below = self.cache.in_db_below();
        // A record redb does not hold yet pins its entries, and any later
        // version of an earlier one, in memory.
        let pinned = self
            .records
            .iter()
            .filter(|r| r.seq >= in_db_below)
            .map(|r| r.first)
            .min()
            .unwrap_or(u64::MAX);
        let upto = self.applied.min(pinned.saturating_sub(1));
        if upto < self.first_cached {
            return 0;
        }
        let before = self.cached_bytes;
        let n = ((upto - self.first_cached + 1) as usize).min(self.entries.len());
        self.drop_cached(n);
        before - self.cached_bytes
    }

    /// Drops entries up to and including `upto` (which must be applied).
    /// Returns the log records that no longer hold any live entry, oldest
    /// first, for the disk side to delete. A record is dropped only with
    /// every record before it, so what remains always replays to this log.
    pub(crate) fn compact(&mut self, upto: u64) -> Vec<u64> {
        assert!(
            upto <= self.applied && upto <= self.last_index_(),
            "compacting unapplied entries"
        );
        if upto <= self.snap_index {
            return Vec::new();
        }
        self.snap_term = self
            .terms
            .term(upto)
            .expect("the terms cover every index of the log");
        if upto >= self.first_cached {
            self.drop_cached((upto - self.first_cached + 1) as usize);
        }
        self.first_cached = self.first_cached.max(upto + 1);
        self.terms.compact(upto);
        self.snap_index = upto;
        let mut dead = Vec::new();
        while let Some(r) = self.records.front() {
            if r.last > upto {
                break;
            }
            dead.push(r.seq);
            self.log_bytes -= r.bytes;
            self.records.pop_front();
        }
        dead
    }

    /// Resets the log to a received snapshot's point. Returns every log
    /// record the group had, for the disk side to delete.
    pub(crate) fn install_snapshot(&mut self, index: u64, term: u64, cs: ConfState) -> Vec<u64> {
        self.drop_cached(self.entries.len());
        self.first_cached = index + 1;
        self.terms.clear();
        self.snap_index = index;
        self.snap_term = term;
        self.conf_state = cs;
        self.applied = index;
        self.flushed = index;
        self.hard_state.commit = self.hard_state.commit.max(index);
        self.hard_state.term = self.hard_state.term.max(term);
        self.log_bytes = 0;
        self.records.drain(..).map(|r| r.seq).collect()
    }

    /// A snapshot of the group as of its applied index, for the peer `to`:
    /// the catalog group's carries the catalog; a data group's names a
    /// source opened for it. `None` when every source is taken.
    fn build_snapshot(&self, to: u64) -> Result<Option<Snapshot>> {
        let (applied, conf_state, rec, desc) = if self.group == CATALOG_GROUP {
            // The catalog group writes straight to redb, so its committed
            // rows are its state as of its committed apply index.
            let g = self.group.0;
            let txn = self.db.begin_read()?;
            let raft = txn.open_table(RAFT_STATE)?;
            let rec_bytes = raft.get(g)?.ok_or(Error::UnknownGroup(self.group))?;
            let rec: RaftStateRecord = wire::decode("raft state", rec_bytes.value())?;
            let applied = txn
                .open_table(APPLIED)?
                .get(g)?
                .map_or(0, |v| v.value())
                .max(rec.snap_index);
            let catalog = txn
                .open_table(META)?
                .get(META_CATALOG)?
                .map(|v| v.value().to_vec());
            let desc = SnapshotDescriptor::catalog(catalog);
            (applied, rec.conf_state(), rec, desc)
        } else {
            // A data group: committed rows with the overlay over them are its
            // state as of the in-memory apply index (the engine flushes the
            // overlay while it persists a batch, between the driver's calls
            // into raft-rs, and commits the flush before it returns, so no
            // source opens between a flush and its commit).
            let Some(source) = self.snapshots.open_source(&self.overlay, self.group, to)? else {
                return Ok(None);
            };
            let desc = SnapshotDescriptor::source(self.group, source);
            (self.applied, self.conf_state.clone(), self.record(), desc)
        };
        let term = if applied == rec.snap_index {
            rec.snap_term
        } else {
            raft::Storage::term(self, applied)?
        };
        let mut snap = Snapshot {
            data: wire::encode(&desc).into(),
            ..Default::default()
        };
        let meta = snap.mut_metadata();
        meta.index = applied;
        meta.term = term;
        meta.set_conf_state(conf_state);
        Ok(Some(snap))
    }
}

impl Drop for GroupStorage {
    fn drop(&mut self) {
        self.cache.sub(self.cached_bytes);
    }
}

fn storage_error(e: Error) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

impl raft::Storage for GroupStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.snap_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index_() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into();
        let mut out = Vec::new();
        if low < self.first_cached {
            let upto = high.min(self.first_cached);
            out = read_entries(
                &self.db,
                self.group,
                self.records.iter().copied(),
                &self.terms,
                (low, upto),
                max_size,
            )
            .map_err(storage_error)?;
            self.cache.count_disk_reads(out.len());
            if out.len() < (upto - low) as usize || upto == high {
                return Ok(out);
            }
        }
        let lo = (low.max(self.first_cached) - self.first_cached) as usize;
        let hi = (high - self.first_cached) as usize;
        out.extend_from_slice(&self.entries[lo..hi]);
        raft::util::limit_size(&mut out, max_size);
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snap_index {
            return Ok(self.snap_term);
        }
        if idx < self.snap_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_index_() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        self.terms
            .term(idx)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snap_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index_())
    }

    fn snapshot(&self, _request_index: u64, to: u64) -> raft::Result<Snapshot> {
        match self.build_snapshot(to) {
            Ok(Some(snap)) => Ok(snap),
            Ok(None) => Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            )),
            Err(e) => Err(storage_error(e)),
        }
    }
}

impl GroupStorage {
    /// A group with no log yet.
    pub(crate) fn fresh(
        (db, overlay, cache, snapshots): (
            Arc<Database>,
            SharedOverlay,
            Arc<EntryCache>,
            Arc<Snapshots>,
        ),
        group: GroupId,
        rec: &RaftStateRecord,
    ) -> Self {
        GroupStorage {
            group,
            db,
            overlay,
            cache,
            snapshots,
            hard_state: rec.hard_state(),
            conf_state: rec.conf_state(),
            snap_index: rec.snap_index,
            snap_term: rec.snap_term,
            entries: Vec::new(),
            first_cached: rec.snap_index + 1,
            cached_bytes: 0,
            terms: TermRuns::default(),
            applied: rec.snap_index,
            flushed: rec.snap_index,
            records: VecDeque::new(),
            log_bytes: 0,
        }
    }
}
