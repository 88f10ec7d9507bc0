//! One group's view of the log, as raft-rs's `Storage` trait wants it.
//!
//! raft-rs reads the log through `&self` calls at arbitrary moments inside
//! `step` and `ready`. Serving those from redb would open a read transaction
//! per call, so each group keeps its un-compacted log in memory, rebuilt
//! from redb and the round log at start and kept in step by the driver,
//! which changes it and stages the same change in the round's write batch. Memory per group is bounded by log
//! compaction (see `DriverConfig::log_keep`). A snapshot asked for is not
//! built here: a data group opens a source (a redb read transaction with a
//! copy of its overlay, together its applied state as of `applied`) that
//! the transfer reads in chunks off the driver thread, and the snapshot
//! carries only its descriptor (see `snapshot`).

use std::collections::VecDeque;
use std::sync::Arc;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use redb::{Database, ReadableDatabase};

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
    /// Entries `snap_index + 1 ..= last_index`.
    pub(crate) entries: Vec<Entry>,
    /// Index of the last applied entry.
    pub(crate) applied: u64,
    /// The apply index redb holds for this group (staged in a round or
    /// committed): what a restart resumes applying from. Compaction never
    /// passes it, so the entries a restart re-applies are still in the log.
    pub(crate) flushed: u64,
    /// The log records holding this group's entries, oldest first, as
    /// (last index in the record, record sequence).
    pub(crate) records: VecDeque<(u64, u64)>,
}

/// A group's log as read back from its records at start.
#[derive(Default)]
pub(crate) struct RestoredLog {
    /// Entries after the compaction point, in order.
    pub(crate) entries: Vec<Entry>,
    /// The records they came from, oldest first: (last index, sequence).
    pub(crate) records: VecDeque<(u64, u64)>,
}

impl RestoredLog {
    /// Replays one record of this group over what was read so far.
    pub(crate) fn replay(
        &mut self,
        group: GroupId,
        snap_index: u64,
        seq: u64,
        entries: Vec<Entry>,
    ) -> Result<()> {
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(());
        };
        self.records.push_back((last, seq));
        for e in entries {
            if e.index <= snap_index {
                continue;
            }
            let next = snap_index + 1 + self.entries.len() as u64;
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
            self.entries.truncate((e.index - snap_index - 1) as usize);
            self.entries.push(e);
        }
        Ok(())
    }
}

impl GroupStorage {
    /// A group restored at start: its state record, apply index, and the
    /// log rebuilt from its records.
    pub(crate) fn restore(
        db: Arc<Database>,
        overlay: SharedOverlay,
        snapshots: Arc<Snapshots>,
        group: GroupId,
        rec: &RaftStateRecord,
        applied: u64,
        log: RestoredLog,
    ) -> GroupStorage {
        let mut store = GroupStorage::fresh(db, overlay, snapshots, group, rec);
        store.entries = log.entries;
        store.records = log.records;
        // Everything up to the compaction point is applied, even before the
        // first apply writes a row (a group starts at `INIT_INDEX`).
        store.applied = applied.max(rec.snap_index);
        store.flushed = store.applied;
        store
    }

    /// Index of the last entry in the log.
    pub fn last_index_(&self) -> u64 {
        self.snap_index + self.entries.len() as u64
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
        if let (Some(seq), Some(last)) = (record, new.last()) {
            self.records.push_back((last.index, seq));
        }
        if let Some(first) = new.first() {
            assert!(
                first.index > self.snap_index && first.index <= old_last + 1,
                "{}: append at {} leaves a gap (snap {}, last {old_last})",
                self.group,
                first.index,
                self.snap_index
            );
            self.entries
                .truncate((first.index - self.snap_index - 1) as usize);
            self.entries.extend_from_slice(new);
        }
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
        let n = (upto - self.snap_index) as usize;
        self.snap_term = self.entries[n - 1].term;
        self.entries.drain(..n);
        self.snap_index = upto;
        let mut dead = Vec::new();
        while let Some(&(last, seq)) = self.records.front() {
            if last > upto {
                break;
            }
            dead.push(seq);
            self.records.pop_front();
        }
        dead
    }

    /// Resets the log to a received snapshot's point. Returns every log
    /// record the group had, for the disk side to delete.
    pub(crate) fn install_snapshot(&mut self, index: u64, term: u64, cs: ConfState) -> Vec<u64> {
        self.entries.clear();
        self.snap_index = index;
        self.snap_term = term;
        self.conf_state = cs;
        self.applied = index;
        self.flushed = index;
        self.hard_state.commit = self.hard_state.commit.max(index);
        self.hard_state.term = self.hard_state.term.max(term);
        self.records.drain(..).map(|(_, seq)| seq).collect()
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
        let lo = (low - self.snap_index - 1) as usize;
        let hi = (high - self.snap_index - 1) as usize;
        let mut out = self.entries[lo..hi].to_vec();
        raft::util::limit_size(&mut out, max_size.into());
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
        Ok(self.entries[(idx - self.snap_index - 1) as usize].term)
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
        db: Arc<Database>,
        overlay: SharedOverlay,
        snapshots: Arc<Snapshots>,
        group: GroupId,
        rec: &RaftStateRecord,
    ) -> Self {
        GroupStorage {
            group,
            db,
            overlay,
            snapshots,
            hard_state: rec.hard_state(),
            conf_state: rec.conf_state(),
            snap_index: rec.snap_index,
            snap_term: rec.snap_term,
            entries: Vec::new(),
            applied: rec.snap_index,
            flushed: rec.snap_index,
            records: VecDeque::new(),
        }
    }
}
