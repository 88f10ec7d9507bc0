//! Round staging: the write batch a driver round hands to the engine.
//!
//! A round stages everything it must write to disk (new log entries, hard
//! states, snapshots, catalog changes, a destroyed replica's rows) as
//! encoded [`Op`]s in a [`WriteBatch`], and touches no file and no redb
//! transaction while it does: the caller persists the batch afterwards with
//! [`super::Engine::persist`]. What the batch carries is plain data, the
//! round's redo record and a few flags. Its handles serve the round while
//! it stages: one numbers Raft log records, one reaches the applied state
//! in memory (the overlay, see `overlay`), one reads redb for applies.
//!
//! Applying a data group's entries writes the overlay, not the batch: the
//! overlay *is* the applied state until a flush, and raft-rs may build a
//! snapshot in the middle of a round (a leader probes a new member from
//! inside `apply_conf_change`), which must see every entry the group
//! applied so far. So the read view of an apply, [`GroupKv`], is the
//! overlay over redb's committed rows; redb's rows change only when the
//! engine persists (a flush, a snapshot, a destroyed group), never during a
//! round, so that view includes everything this round applied.

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use raft::eraftpb::Entry;
use redb::{Database, ReadOnlyTable, ReadableDatabase};

use super::overlay::{GroupOverlay, SharedOverlay};
use super::redo::Op;
use super::schema::{RaftStateRecord, SESSIONS};
use super::snapshot::SnapshotDescriptor;
use super::values::Rows;
use super::GroupStorage;
use crate::catalog::Catalog;
use crate::error::Result;
use crate::kv::{KvStore, Session, SessionTable, TABLE_KEY};
use crate::types::{GroupId, CATALOG_GROUP};
use crate::wire;

/// The tables a round reads: redb as last committed.
struct ReadTables {
    kv: Rows,
    sessions: ReadOnlyTable<(u64, u64), &'static [u8]>,
}

/// The writes of one round, for any number of groups. Make one with
/// [`super::Engine::batch`], stage into it, hand it to
/// [`super::Engine::persist`].
pub struct WriteBatch {
    /// Every op staged so far, encoded in order: the round log record.
    pub(crate) redo: Vec<u8>,
    /// The Raft log ops among them, again: redb gets them at checkpoints.
    pub(crate) log_ops: Vec<u8>,
    /// Whether an op changes redb besides its Raft log table.
    pub(crate) redb: bool,
    /// Whether the batch must be on disk before anything waiting on it
    /// goes on (log entries, a term or vote, a snapshot, a destroyed
    /// replica, messages that wait for persistence).
    pub(crate) sync: bool,
    /// Whether the whole overlay must be flushed with this batch.
    pub(crate) flush_all: bool,
    /// Log entries staged.
    pub(crate) entries: u64,
    /// Ticks of the caller's clock since its previous batch, for the flush
    /// schedule.
    pub(crate) ticks: u64,
    /// Numbers Raft log records, node-wide.
    next_seq: Arc<AtomicU64>,
    /// The applied state of data groups in memory.
    overlay: SharedOverlay,
    db: Arc<Database>,
    /// redb's committed tables, opened by the round's first read.
    reads: OnceCell<ReadTables>,
}

impl WriteBatch {
    pub(crate) fn new(
        db: Arc<Database>,
        overlay: SharedOverlay,
        next_seq: Arc<AtomicU64>,
        (redo, log_ops): (Vec<u8>, Vec<u8>),
    ) -> WriteBatch {
        WriteBatch {
            redo,
            log_ops,
            redb: false,
            sync: false,
            flush_all: false,
            entries: 0,
            ticks: 0,
            next_seq,
            overlay,
            db,
            reads: OnceCell::new(),
        }
    }

    /// Whether nothing was staged.
    pub fn is_empty(&self) -> bool {
        self.redo.is_empty()
    }

    /// Log entries staged so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Whether the batch must be synced when persisted.
    pub fn needs_sync(&self) -> bool {
        self.sync
    }

    /// Records `op` for the round log (and the checkpoint, for a Raft log
    /// op).
    pub(crate) fn stage(&mut self, op: Op<'_>) {
        op.encode(&mut self.redo);
        if op.is_log_row() {
            op.encode(&mut self.log_ops);
        } else {
            self.redb = true;
        }
    }

    /// Gives the encoding buffers back, emptied, and drops the read
    /// transaction.
    pub(crate) fn into_buffers(self) -> (Vec<u8>, Vec<u8>) {
        (self.redo, self.log_ops)
    }

    /// redb's committed tables.
    fn reads(&self) -> Result<&ReadTables> {
        if let Some(r) = self.reads.get() {
            return Ok(r);
        }
        let txn = self.db.begin_read()?;
        let r = ReadTables {
            kv: Rows::open(&txn)?,
            sessions: txn.open_table(SESSIONS)?,
        };
        Ok(self.reads.get_or_init(|| r))
    }

    /// Stages new log entries of one group as one record, which replaces
    /// whatever the group's log held from the first new index on (a
    /// conflicting suffix an older leader wrote). Returns the record's
    /// sequence number; `None` when there was nothing to append.
    pub fn append(&mut self, group: GroupId, new: &[Entry]) -> Result<Option<u64>> {
        if new.is_empty() {
            return Ok(None);
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        self.require_sync();
        let record = super::schema::encode_log_record(group.0, new)?;
        self.stage(Op::LogPut {
            seq,
            record: &record,
        });
        self.entries += new.len() as u64;
        Ok(Some(seq))
    }

    /// Marks the batch as one that must be synced before it counts as
    /// persisted.
    pub fn require_sync(&mut self) {
        self.sync = true;
    }

    /// Asks the engine to flush the whole overlay with this batch (a
    /// membership change must not reach disk ahead of the apply index).
    pub fn flush_all(&mut self) {
        self.flush_all = true;
    }

    /// Adds `ticks` to the time that passed since the previous batch.
    pub fn add_ticks(&mut self, ticks: u64) {
        self.ticks += ticks;
    }

    /// Removes log records (after compaction, or when a snapshot replaced a
    /// group's log).
    pub fn delete_log_records(&mut self, seqs: &[u64]) {
        for seq in seqs {
            self.stage(Op::LogDelete { seq: *seq });
        }
    }

    /// Stages a group's raft state record.
    pub fn put_raft_state(&mut self, group: GroupId, rec: &RaftStateRecord) {
        self.stage(Op::RaftState {
            group: group.0,
            record: &wire::encode(rec),
        });
    }

    /// Records a group's apply index: in the overlay for a data group, in
    /// this batch for the catalog group. Returns whether it went into the
    /// batch (so it is what a restart resumes from once it is persisted).
    pub fn set_applied(&mut self, group: GroupId, index: u64) -> bool {
        if group == CATALOG_GROUP {
            self.stage(Op::Applied {
                group: group.0,
                index,
            });
            true
        } else {
            self.overlay.lock().set_applied(group.0, index);
            false
        }
    }

    /// Stages the whole overlay and empties it. Returns each flushed group
    /// with the apply index now staged for it.
    pub(crate) fn stage_overlay(&mut self) -> Vec<(GroupId, u64)> {
        let groups = self.overlay.lock().take();
        self.stage_groups(groups)
    }

    /// Stages the changes of up to `max` groups whose first unflushed
    /// change is at least `age` rounds old, so flushing is spread over
    /// rounds rather than stalling one. Returns what
    /// [`Self::stage_overlay`] does.
    pub(crate) fn stage_aged(&mut self, age: u64, max: usize) -> Vec<(GroupId, u64)> {
        let groups = self.overlay.lock().take_aged(age, max);
        self.stage_groups(groups)
    }

    fn stage_groups(&mut self, groups: BTreeMap<u64, GroupOverlay>) -> Vec<(GroupId, u64)> {
        let mut flushed = Vec::with_capacity(groups.len());
        for (g, o) in groups {
            for (key, value) in &o.rows {
                self.stage(match value {
                    Some(value) => Op::KvPut {
                        group: g,
                        key,
                        value,
                    },
                    None => Op::KvDelete { group: g, key },
                });
            }
            for (client, session) in &o.sessions {
                self.stage(match session {
                    Some(session) => Op::Session {
                        group: g,
                        client: *client,
                        session,
                    },
                    None => Op::SessionDelete {
                        group: g,
                        client: *client,
                    },
                });
            }
            self.overlay.lock().remember_flushed(g, o.sessions);
            if let Some(index) = o.applied {
                self.stage(Op::Applied { group: g, index });
                flushed.push((GroupId(g), index));
            }
        }
        flushed
    }

    /// Stages the catalog.
    pub fn put_catalog(&mut self, catalog: &Catalog) {
        self.stage(Op::Catalog {
            bytes: &wire::encode(catalog),
        });
    }

    /// Replaces a group's whole applied state with a snapshot's: a data
    /// group's staging (which the driver claimed), or the catalog the
    /// catalog group's descriptor carries.
    pub fn install_snapshot(
        &mut self,
        group: GroupId,
        index: u64,
        desc: &SnapshotDescriptor,
        old_records: &[u64],
    ) {
        let g = group.0;
        self.require_sync();
        self.overlay.lock().discard(g);
        self.delete_log_records(old_records);
        if desc.streamed() {
            self.stage(Op::InstallStaged { group: g, index });
        } else {
            self.stage(Op::ClearGroup { group: g });
        }
        if let Some(bytes) = &desc.catalog {
            self.stage(Op::Catalog { bytes });
        }
        self.stage(Op::Applied { group: g, index });
    }

    /// Destroys this node's replica of the group `store` holds: its rows,
    /// sessions, Raft state, apply index, last check and log records, all
    /// in this batch, which is synced. Nothing of the group stays in the
    /// overlay either.
    pub fn destroy_group(&mut self, store: &GroupStorage) {
        let group = store.group.0;
        self.require_sync();
        self.overlay.lock().discard(group);
        let records: Vec<u64> = store.records.iter().map(|r| r.seq).collect();
        self.delete_log_records(&records);
        self.stage(Op::DropGroup { group });
    }

    /// Records a consistency check of `group` at apply index `index`: the
    /// digest of its state as this round leaves it. Returns the digest.
    pub fn record_checksum(&mut self, group: GroupId, index: u64) -> Result<u64> {
        let digest = {
            let txn = self.db.begin_read()?;
            let o = self.overlay.lock();
            super::view::state_digest(
                &Rows::open(&txn)?,
                &txn.open_table(SESSIONS)?,
                o.groups.get(&group.0),
                group,
            )?
        };
        self.stage(Op::Checksum {
            group: group.0,
            index,
            digest,
        });
        Ok(digest)
    }

    /// A [`KvStore`] over one group's applied state: the overlay over
    /// redb's committed rows.
    pub fn kv(&mut self, group: GroupId) -> GroupKv<'_> {
        GroupKv {
            w: self,
            g: group.0,
        }
    }
}

/// One group's KV and session rows, as applying sees and changes them.
pub struct GroupKv<'w> {
    w: &'w WriteBatch,
    g: u64,
}

impl GroupKv<'_> {
    /// The encoded session row of `client`: the overlay's if it has one
    /// (an eviction included), else redb's.
    fn session_row(&self, client: u64) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.w.overlay.lock().session(self.g, client) {
            return Ok(v.map(<[u8]>::to_vec));
        }
        Ok(self
            .w
            .reads()?
            .sessions
            .get((self.g, client))?
            .map(|v| v.value().to_vec()))
    }
}

impl KvStore for GroupKv<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.w.overlay.lock().row(self.g, key) {
            return Ok(v.map(<[u8]>::to_vec));
        }
        self.w.reads()?.kv.get(self.g, key)
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.w.overlay.lock().put_row(self.g, key, Some(value));
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<bool> {
        let existed = self.get(key)?.is_some();
        if existed {
            self.w.overlay.lock().put_row(self.g, key, None);
        }
        Ok(existed)
    }

    fn session(&self, client: u64) -> Result<Option<Session>> {
        self.session_row(client)?
            .map(|v| wire::decode("client session", &v))
            .transpose()
    }

    fn put_session(&mut self, client: u64, session: &Session) -> Result<()> {
        let bytes = wire::encode(session);
        self.w
            .overlay
            .lock()
            .put_session(self.g, client, Some(bytes));
        Ok(())
    }

    fn delete_session(&mut self, client: u64) -> Result<()> {
        self.w.overlay.lock().put_session(self.g, client, None);
        Ok(())
    }

    fn sessions(&self) -> Result<Vec<(u64, Session)>> {
        let reads = self.w.reads()?;
        let o = self.w.overlay.lock();
        let rows =
            super::view::group_sessions(&reads.sessions, o.groups.get(&self.g), GroupId(self.g))?;
        let mut out = Vec::new();
        for row in rows {
            let (client, bytes) = row?;
            if client != TABLE_KEY {
                out.push((client, wire::decode("client session", &bytes)?));
            }
        }
        Ok(out)
    }

    fn session_table(&self) -> Result<SessionTable> {
        Ok(match self.session_row(TABLE_KEY)? {
            Some(v) => wire::decode("session table", &v)?,
            None => SessionTable::default(),
        })
    }

    fn put_session_table(&mut self, table: &SessionTable) -> Result<()> {
        let bytes = wire::encode(table);
        self.w
            .overlay
            .lock()
            .put_session(self.g, TABLE_KEY, Some(bytes));
        Ok(())
    }
}
