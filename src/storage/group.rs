//! One group's view of the log, as raft-rs's `Storage` trait wants it.
//!
//! raft-rs reads the log through `&self` calls at arbitrary moments inside
//! `step` and `ready`. Serving those from redb would open a read transaction
//! per call, so each group keeps its un-compacted log in memory, mirrored
//! from redb at start and kept in step by the driver, which writes every
//! change to both in the same round. Memory per group is bounded by log
//! compaction (see `DriverConfig::log_keep`). Snapshots are built on demand
//! from a redb read transaction, which sees a consistent applied state.

use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use redb::{Database, ReadableDatabase};

use super::schema::{
    RaftStateRecord, SnapshotData, APPLIED, KV, LOG, META, META_CATALOG, RAFT_STATE, SESSIONS,
};
use crate::error::{Error, Result};
use crate::types::{GroupId, CATALOG_GROUP};
use crate::wire;

/// The in-memory mirror of one group's persisted Raft state.
pub struct GroupStorage {
    /// The group.
    pub(crate) group: GroupId,
    /// The database, for building snapshots.
    db: Arc<Database>,
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
}

impl GroupStorage {
    /// Loads a group from the database: its state record, log and apply index.
    pub(crate) fn load(db: Arc<Database>, group: GroupId) -> Result<GroupStorage> {
        let txn = db.begin_read()?;
        let raft = txn.open_table(RAFT_STATE)?;
        let rec_bytes = raft.get(group.0)?.ok_or(Error::UnknownGroup(group))?;
        let rec: RaftStateRecord = wire::decode("raft state", rec_bytes.value())?;
        // Everything up to the compaction point is applied, even before the
        // first apply writes a row (a group starts at `INIT_INDEX`).
        let applied = txn
            .open_table(APPLIED)?
            .get(group.0)?
            .map_or(0, |v| v.value())
            .max(rec.snap_index);
        let log = txn.open_table(LOG)?;
        let mut entries = Vec::new();
        for row in log.range((group.0, rec.snap_index + 1)..=(group.0, u64::MAX))? {
            let (k, v) = row?;
            let e = Entry::parse_from_bytes(v.value()).map_err(|e| Error::Corrupt {
                what: "raft log entry",
                detail: e.to_string(),
            })?;
            let expected = rec.snap_index + 1 + entries.len() as u64;
            if e.index != expected || k.value().1 != expected {
                return Err(Error::Corrupt {
                    what: "raft log",
                    detail: format!("{group}: expected index {expected}, found {}", e.index),
                });
            }
            entries.push(e);
        }
        let mut store = GroupStorage::fresh(db, group, &rec);
        store.entries = entries;
        store.applied = applied;
        Ok(store)
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

    /// Appends entries, discarding any conflicting suffix. Returns the index
    /// of the last entry that was stored before, for the disk side to trim.
    pub(crate) fn append(&mut self, new: &[Entry]) -> u64 {
        let old_last = self.last_index_();
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
        old_last
    }

    /// Drops entries up to and including `upto` (which must be applied).
    pub(crate) fn compact(&mut self, upto: u64) {
        assert!(
            upto <= self.applied && upto <= self.last_index_(),
            "compacting unapplied entries"
        );
        if upto <= self.snap_index {
            return;
        }
        let n = (upto - self.snap_index) as usize;
        self.snap_term = self.entries[n - 1].term;
        self.entries.drain(..n);
        self.snap_index = upto;
    }

    /// Resets the log to a received snapshot's point.
    pub(crate) fn install_snapshot(&mut self, index: u64, term: u64, cs: ConfState) {
        self.entries.clear();
        self.snap_index = index;
        self.snap_term = term;
        self.conf_state = cs;
        self.applied = index;
        self.hard_state.commit = self.hard_state.commit.max(index);
        self.hard_state.term = self.hard_state.term.max(term);
    }

    fn build_snapshot(&self) -> Result<Snapshot> {
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
        let mut data = SnapshotData::default();
        for row in txn.open_table(KV)?.range((g, &[][..])..(g + 1, &[][..]))? {
            let (k, v) = row?;
            data.rows.push((k.value().1.to_vec(), v.value().to_vec()));
        }
        for row in txn.open_table(SESSIONS)?.range((g, 0)..(g + 1, 0))? {
            let (k, v) = row?;
            data.sessions.push((k.value().1, v.value().to_vec()));
        }
        if self.group == CATALOG_GROUP {
            data.catalog = txn
                .open_table(META)?
                .get(META_CATALOG)?
                .map(|v| v.value().to_vec());
        }
        let term = if applied == rec.snap_index {
            rec.snap_term
        } else {
            raft::Storage::term(self, applied)?
        };
        let mut snap = Snapshot {
            data: wire::encode(&data).into(),
            ..Default::default()
        };
        let meta = snap.mut_metadata();
        meta.index = applied;
        meta.term = term;
        meta.set_conf_state(rec.conf_state());
        Ok(snap)
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

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        self.build_snapshot().map_err(storage_error)
    }
}

impl GroupStorage {
    /// A group with no log yet.
    pub(crate) fn fresh(db: Arc<Database>, group: GroupId, rec: &RaftStateRecord) -> Self {
        GroupStorage {
            group,
            db,
            hard_state: rec.hard_state(),
            conf_state: rec.conf_state(),
            snap_index: rec.snap_index,
            snap_term: rec.snap_term,
            entries: Vec::new(),
            applied: rec.snap_index,
        }
    }
}
