//! The write side of one driver round: at most one redb write transaction,
//! shared by all groups that have work.
//!
//! The driver stages everything a round produces (new log entries, hard
//! states, catalog changes) through a [`RoundWriter`]; [`Round::commit`]
//! makes it durable with one append and one fdatasync of the round log
//! (see `wal`), whatever the number of groups, then commits to redb once
//! what the round staged for it. Every few megabytes of log a checkpoint
//! writes the log rows into redb with a sync (on a real file on the
//! checkpoint thread, see `checkpoint`). Applied KV rows, sessions and
//! apply indexes of data groups go to the overlay (see `overlay`) and
//! reach redb in the rounds that flush it.
//!
//! Raft log rows (new entries, compaction's deletions) reach redb only at
//! checkpoints. Nothing reads them while the node runs (each group serves
//! its log from memory, see `group`), the round log holds them durably
//! already, and written every round they were most of what redb wrote: a
//! fresh copy of the table's right-hand leaves for every round, since redb
//! frees no page between synced commits. So a round records them in the
//! round log only and keeps them in [`LogRows`]; the checkpoint writes
//! their net effect in its one transaction, one row per group (see
//! [`write_log_rows`]). Opening a database applies the rows of the records
//! after [`META_LOG_ROWS_APPLIED`] again (see `replay`).

use std::cell::{OnceCell, RefCell, RefMut};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use raft::eraftpb::Entry;
use redb::{
    Database, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable, WriteTransaction,
};

use super::checkpoint::Checkpointer;
use super::overlay::{GroupOverlay, SharedOverlay};
use super::redo::decode_all;
use super::redo::{Op, Tables};
use super::schema::{
    log_record_header, merge_log_records, RaftStateRecord, SnapshotData, META,
    META_LOG_ROWS_APPLIED, META_WAL_APPLIED,
};
use super::schema::{KV, SESSIONS};
use super::wal::Wal;
use super::GroupStorage;
use super::Stats;
use crate::catalog::Catalog;
use crate::error::{Error, Result};
use crate::kv::{KvStore, Session};
use crate::types::{GroupId, CATALOG_GROUP};
use crate::wire;

/// The encoded Raft log ops of every round since the last checkpoint, in
/// order: what the next checkpoint writes to redb.
pub(crate) type LogRows = Arc<Mutex<Vec<u8>>>;

/// The two buffers a round encodes into (its round log record and its Raft
/// log ops), handed from each round to the next so that their capacity
/// stays. Grown afresh every round, their reallocations and copies were
/// about a tenth of the driver's time with 32 groups; keeping them took
/// 7% off the CPU time per write in the driver benchmark (run without
/// syncs, where CPU is what bounds it).
pub(crate) type RoundBuffers = Arc<Mutex<(Vec<u8>, Vec<u8>)>>;

/// A buffer grown past this (a round that installed a snapshot, say) is
/// dropped rather than kept for the next round.
const KEPT_BUFFER_BYTES: usize = 4 << 20;

/// Hands a finished round's buffers, emptied, to the next round.
fn recycle(pool: &RoundBuffers, mut redo: Vec<u8>, mut log_ops: Vec<u8>) {
    for b in [&mut redo, &mut log_ops] {
        if b.capacity() > KEPT_BUFFER_BYTES {
            *b = Vec::new();
        }
        b.clear();
    }
    *pool.lock().unwrap_or_else(|p| p.into_inner()) = (redo, log_ops);
}

/// An open round. It begins a redb write transaction only once it stages
/// something for redb besides the Raft log, and reads through a read
/// transaction until then, so a round of log entries alone never waits
/// for redb's write lock (which a checkpoint may hold, see `checkpoint`).
pub struct Round {
    db: Arc<Database>,
    txn: OnceCell<WriteTransaction>,
    stats: Arc<Stats>,
    /// The next log record's sequence number (node-wide).
    next_seq: Arc<AtomicU64>,
    /// Whether this round must be on disk before `commit` returns.
    durable: AtomicBool,
    /// Whether anything was staged at all.
    touched: AtomicBool,
    overlay: SharedOverlay,
    /// The encoded ops of this round, for the round log.
    redo: RefCell<Vec<u8>>,
    /// This round's Raft log ops (also in `redo`), left out of `txn`.
    log_ops: RefCell<Vec<u8>>,
    /// Every earlier round's since the last checkpoint.
    log_rows: LogRows,
    wal: Arc<Mutex<Wal>>,
    /// Where checkpoints run behind the driver (real files); without one
    /// a checkpoint runs inside the round.
    checkpointer: Option<Arc<Checkpointer>>,
    /// Where `redo` and `log_ops` go back to once the round is done.
    buffers: RoundBuffers,
}

pub(crate) fn io_error(e: std::io::Error) -> Error {
    Error::Storage(redb::Error::Io(e))
}

impl Round {
    /// A round of `engine`, sharing its database, log and overlay.
    pub(crate) fn new(engine: &super::Engine) -> Self {
        let (redo, log_ops) =
            std::mem::take(&mut *engine.buffers.lock().unwrap_or_else(|p| p.into_inner()));
        Round {
            db: engine.db.clone(),
            txn: OnceCell::new(),
            stats: engine.stats.clone(),
            next_seq: engine.next_log_seq.clone(),
            overlay: engine.overlay.clone(),
            wal: engine.wal.clone(),
            log_rows: engine.log_rows.clone(),
            checkpointer: engine.checkpointer.clone(),
            redo: RefCell::new(redo),
            log_ops: RefCell::new(log_ops),
            buffers: engine.buffers.clone(),
            durable: AtomicBool::new(false),
            touched: AtomicBool::new(false),
        }
    }

    /// The round's write transaction, begun on first use.
    fn txn(&self) -> Result<&WriteTransaction> {
        if self.txn.get().is_none() {
            let txn = self.db.begin_write()?;
            // Only this round's single writer gets here, so the cell is empty.
            let _ = self.txn.set(txn);
        }
        self.txn
            .get()
            .ok_or_else(|| Error::Invalid("the round's write transaction did not open".into()))
    }

    /// Opens the round for staging writes. One writer at a time.
    pub fn writer(&self) -> Result<RoundWriter<'_>> {
        Ok(RoundWriter {
            round: self,
            t: None,
            reads: OnceCell::new(),
            redo: self.redo.borrow_mut(),
            log_ops: self.log_ops.borrow_mut(),
            next_seq: &self.next_seq,
            durable: &self.durable,
            touched: &self.touched,
            overlay: &self.overlay,
            stats: &self.stats,
            entries: 0,
        })
    }

    /// Commits the round: one redb commit for everything staged, made
    /// durable, when the round wrote anything Raft needs durable before it
    /// may answer (log entries, a term or vote, a snapshot, or messages
    /// that wait on persistence), by one fdatasync of the round log. A
    /// round that only applied committed entries is appended to the log
    /// without a sync: a crash loses at most those applies, which the node
    /// replays from its durable Raft log, and the next synced append makes
    /// them durable too. Once the log is due for a checkpoint, the round is
    /// appended and synced, the log moves to its other file, and the log
    /// rows of the file just left are written to redb and committed with
    /// a sync: by the checkpoint thread while the driver goes on, or, on
    /// an engine without one (the simulation's), in the round itself.
    ///
    /// A round that staged only Raft log ops (the common round under load:
    /// new entries, and nothing applied to redb) leaves redb alone: the
    /// round log holds the ops, and redb gets them at the checkpoint like
    /// every other log op. Its transaction is abandoned rather than
    /// committed, which spares a redb commit (and the pages it would copy)
    /// in most rounds.
    ///
    /// A round that staged nothing (heartbeats, read confirmations) is
    /// abandoned too, and not logged. Returns whether it committed (to the
    /// round log, and to redb when it changed anything there).
    pub fn commit(self, entries: u64) -> Result<bool> {
        self.commit_then(entries, || {})
    }

    /// [`Self::commit`], calling `durable_now` as soon as the round is
    /// durable (its log record synced, or at once when it needs no sync),
    /// before redb's commit.
    pub fn commit_then(self, entries: u64, durable_now: impl FnOnce()) -> Result<bool> {
        let txn = self.txn.into_inner();
        let redo = self.redo.into_inner();
        let log_ops = self.log_ops.into_inner();
        if !self.touched.load(Ordering::Relaxed) {
            recycle(&self.buffers, redo, log_ops);
            durable_now();
            if let Some(txn) = txn {
                txn.abort()?;
            }
            return Ok(false);
        }
        let durable = self.durable.load(Ordering::Relaxed);
        let mut log_rows = self.log_rows.lock().unwrap_or_else(|p| p.into_inner());
        let mut wal = self.wal.lock().unwrap_or_else(|p| p.into_inner());
        let checkpoint = wal.checkpoint_due();
        let seq = wal.next_seq();
        if let Some(txn) = &txn {
            // redb includes the log up to this round's record once it commits.
            set_wal_applied(txn, seq)?;
        }
        let to_redb = txn.is_some() || checkpoint;
        if checkpoint {
            let start = std::time::Instant::now();
            // The file appends move to next must no longer be needed: the
            // checkpoint before this one must be on disk. `begin_round`
            // waited for it already, before this round could take redb's
            // write lock, so this returns at once.
            if let Some(cp) = &self.checkpointer {
                cp.wait()?;
            }
            // The file being left gets this round too, synced: until this
            // checkpoint is on disk, redb may still fall back to the one
            // before, and this file must then hold every record since, this
            // one included.
            wal.append(&redo).map_err(io_error)?;
            wal.sync().map_err(io_error)?;
            durable_now();
            log_rows.extend_from_slice(&log_ops);
            // The next interval will likely be as long as this one.
            let next = Vec::with_capacity(log_rows.len());
            let rows = std::mem::replace(&mut *log_rows, next);
            match &self.checkpointer {
                Some(cp) => {
                    if let Some(txn) = txn {
                        commit_unsynced(txn)?;
                    }
                    wal.restart(seq + 1).map_err(io_error)?;
                    cp.submit(rows, seq);
                }
                None => {
                    // `write_log_rows` records that redb holds up to `seq`.
                    let txn = match txn {
                        Some(txn) => txn,
                        None => self.db.begin_write()?,
                    };
                    write_log_rows(&txn, &rows, seq)?;
                    txn.commit()?;
                    wal.restart(seq + 1).map_err(io_error)?;
                }
            }
            self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
            // The log's sync and redb's.
            self.stats.syncs.fetch_add(2, Ordering::Relaxed);
            tracing::debug!(
                seq,
                ms = start.elapsed().as_secs_f64() * 1e3,
                "round log checkpointed"
            );
        } else {
            // Log first: once the record is synced the round is durable, and
            // what waits on that may leave while redb commits.
            wal.append(&redo).map_err(io_error)?;
            if durable {
                wal.sync().map_err(io_error)?;
                self.stats.syncs.fetch_add(1, Ordering::Relaxed);
            }
            durable_now();
            log_rows.extend_from_slice(&log_ops);
            // Without a transaction there was nothing for redb: a later
            // commit's META_WAL_APPLIED covers this record, and replay
            // restores its log ops either way.
            if let Some(txn) = txn {
                commit_unsynced(txn)?;
            }
        }
        drop((log_rows, wal));
        recycle(&self.buffers, redo, log_ops);
        if to_redb {
            self.stats.redb_commits.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats
            .entries_persisted
            .fetch_add(entries, Ordering::Relaxed);
        Ok(true)
    }
}

/// Records in `txn` that redb holds every write of the round log up to
/// record `seq` but its Raft log rows (see [`META_WAL_APPLIED`]).
fn set_wal_applied(txn: &WriteTransaction, seq: u64) -> Result<()> {
    txn.open_table(META)?
        .insert(META_WAL_APPLIED, seq.to_le_bytes().as_slice())?;
    Ok(())
}

/// Commits a round's transaction without a sync: the round log holds it.
fn commit_unsynced(mut txn: WriteTransaction) -> Result<()> {
    txn.set_durability(Durability::None)
        .map_err(|e| Error::Invalid(format!("round durability: {e}")))?;
    txn.commit()?;
    Ok(())
}

/// Writes the deferred Raft log ops `rows` into `txn`, which then holds the
/// log as of round log record `upto`. Returns the record up to which `txn`
/// then holds every write: `upto`, or later when rounds after that record
/// committed to redb already.
///
/// Only their net effect is written: a record deleted before the checkpoint
/// is never written, and each group's remaining records become one row (see
/// [`merge_log_records`]), keyed by the last of them. So a checkpoint adds
/// one row per group that appended, not one per round. The group's log
/// mirror still lists the original records; deleting the earlier ones is a
/// no-op, and the merged row goes with the last one, which compaction only
/// drops once every entry of the row is compacted.
pub(crate) fn write_log_rows(txn: &WriteTransaction, rows: &[u8], upto: u64) -> Result<u64> {
    let mut t = Tables::open(txn)?;
    let mut puts: BTreeMap<u64, &[u8]> = BTreeMap::new();
    for op in decode_all(rows)? {
        match op {
            Op::LogPut { seq, record } => {
                puts.insert(seq, record);
            }
            Op::LogDelete { seq } => {
                if puts.remove(&seq).is_none() {
                    t.log.remove(seq)?;
                }
            }
            // Only log ops are ever deferred.
            other => other.apply(&mut t)?,
        }
    }
    let mut by_group: BTreeMap<u64, Vec<(u64, &[u8])>> = BTreeMap::new();
    for (seq, record) in puts {
        let (group, _, _) = log_record_header(record)?;
        by_group.entry(group).or_default().push((seq, record));
    }
    for records in by_group.values() {
        let merged = match records.as_slice() {
            [_] => None,
            many => merge_log_records(&many.iter().map(|(_, r)| *r).collect::<Vec<_>>())?,
        };
        match (merged, records.last()) {
            (Some(row), Some((last, _))) => {
                t.log.insert(*last, row.as_slice())?;
            }
            _ => {
                for (seq, record) in records {
                    t.log.insert(*seq, *record)?;
                }
            }
        }
    }
    t.meta
        .insert(META_LOG_ROWS_APPLIED, upto.to_le_bytes().as_slice())?;
    // Every other write up to `upto` is in redb already (the rounds before
    // committed theirs, and one without a transaction had none), but the
    // rounds since the last one that committed did not say so.
    let applied = match t.meta.get(META_WAL_APPLIED)? {
        Some(v) => super::bytes_u64("round log position", v.value())?,
        None => 0,
    };
    if applied < upto {
        t.meta
            .insert(META_WAL_APPLIED, upto.to_le_bytes().as_slice())?;
    }
    Ok(applied.max(upto))
}

/// The tables a round reads before it has a write transaction.
struct ReadTables {
    kv: ReadOnlyTable<(u64, &'static [u8]), &'static [u8]>,
    sessions: ReadOnlyTable<(u64, u64), &'static [u8]>,
}

/// Staged writes of one round, for any number of groups.
pub struct RoundWriter<'t> {
    round: &'t Round,
    /// The write transaction's tables, once something was staged for redb.
    t: Option<Tables<'t>>,
    /// A read transaction's, for reads until then.
    reads: OnceCell<ReadTables>,
    /// The round's redo record: every op staged so far, encoded.
    redo: RefMut<'t, Vec<u8>>,
    /// The round's Raft log ops, kept for the checkpoint.
    log_ops: RefMut<'t, Vec<u8>>,
    next_seq: &'t AtomicU64,
    durable: &'t AtomicBool,
    touched: &'t AtomicBool,
    overlay: &'t SharedOverlay,
    stats: &'t Stats,
    /// Log entries staged so far.
    pub(crate) entries: u64,
}

impl<'t> RoundWriter<'t> {
    /// Records `op` for the round log and applies it to the round's
    /// transaction, or, for a Raft log op, keeps it for the checkpoint.
    fn stage(&mut self, op: Op<'_>) -> Result<()> {
        self.touch();
        op.encode(&mut self.redo);
        if op.is_log_row() {
            op.encode(&mut self.log_ops);
            return Ok(());
        }
        op.apply(self.tables()?)
    }

    /// The round's write tables, beginning its write transaction if it has
    /// none yet.
    fn tables(&mut self) -> Result<&mut Tables<'t>> {
        if self.t.is_none() {
            let round: &'t Round = self.round;
            self.t = Some(Tables::open(round.txn()?)?);
        }
        self.t
            .as_mut()
            .ok_or_else(|| Error::Invalid("the round's tables did not open".into()))
    }

    /// The tables to read before the round has a write transaction.
    fn reads(&self) -> Result<&ReadTables> {
        if let Some(r) = self.reads.get() {
            return Ok(r);
        }
        let txn = self.round.db.begin_read()?;
        let r = ReadTables {
            kv: txn.open_table(KV)?,
            sessions: txn.open_table(SESSIONS)?,
        };
        Ok(self.reads.get_or_init(|| r))
    }

    /// A KV row as redb holds it in this round (the overlay aside).
    fn stored_row(&self, group: u64, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let v = match &self.t {
            Some(t) => t.kv.get((group, key))?.map(|v| v.value().to_vec()),
            None => self
                .reads()?
                .kv
                .get((group, key))?
                .map(|v| v.value().to_vec()),
        };
        Ok(v)
    }

    /// A client session as redb holds it in this round (the overlay aside).
    fn stored_session(&self, group: u64, client: u64) -> Result<Option<Session>> {
        let decode = |v: &[u8]| wire::decode("client session", v);
        match &self.t {
            Some(t) => t
                .sessions
                .get((group, client))?
                .map(|v| decode(v.value()))
                .transpose(),
            None => self
                .reads()?
                .sessions
                .get((group, client))?
                .map(|v| decode(v.value()))
                .transpose(),
        }
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
        })?;
        self.entries += new.len() as u64;
        Ok(Some(seq))
    }

    /// Marks the round as one that must be synced to disk before its
    /// commit returns.
    pub fn require_sync(&mut self) {
        self.durable.store(true, Ordering::Relaxed);
    }

    fn touch(&self) {
        self.touched.store(true, Ordering::Relaxed);
    }

    /// Removes log records (after compaction, or when a snapshot replaced a
    /// group's log).
    pub fn delete_log_records(&mut self, seqs: &[u64]) -> Result<()> {
        for seq in seqs {
            self.stage(Op::LogDelete { seq: *seq })?;
        }
        Ok(())
    }

    /// Stages a group's raft state record.
    pub fn put_raft_state(&mut self, group: GroupId, rec: &RaftStateRecord) -> Result<()> {
        self.stage(Op::RaftState {
            group: group.0,
            record: &wire::encode(rec),
        })
    }

    /// Records a group's apply index: in the overlay for a data group, in
    /// this round for the catalog group. Returns whether it went into this
    /// round (so it is what a restart resumes from once the round commits).
    pub fn set_applied(&mut self, group: GroupId, index: u64) -> Result<bool> {
        if group == CATALOG_GROUP {
            self.stage(Op::Applied {
                group: group.0,
                index,
            })?;
            Ok(true)
        } else {
            self.overlay.lock().set_applied(group.0, index);
            Ok(false)
        }
    }

    /// Writes the whole overlay into this round and empties it. Returns
    /// each flushed group with the apply index now staged for it.
    pub fn flush_overlay(&mut self) -> Result<Vec<(GroupId, u64)>> {
        let groups = self.overlay.lock().take();
        self.write_groups(groups)
    }

    /// Writes the changes of up to `max` groups whose first unflushed change
    /// is at least `age` overlay rounds old, so flushing is spread over
    /// rounds rather than stalling one. Returns what [`Self::flush_overlay`] does.
    pub fn flush_aged(&mut self, age: u64, max: usize) -> Result<Vec<(GroupId, u64)>> {
        let groups = self.overlay.lock().take_aged(age, max);
        self.write_groups(groups)
    }

    fn write_groups(&mut self, groups: BTreeMap<u64, GroupOverlay>) -> Result<Vec<(GroupId, u64)>> {
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        self.touch();
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
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
                })?;
            }
            for (client, session) in &o.sessions {
                self.stage(Op::Session {
                    group: g,
                    client: *client,
                    session,
                })?;
            }
            self.overlay.lock().remember_flushed(g, o.sessions);
            if let Some(index) = o.applied {
                self.stage(Op::Applied { group: g, index })?;
                flushed.push((GroupId(g), index));
            }
        }
        Ok(flushed)
    }

    /// Stages the catalog.
    pub fn put_catalog(&mut self, catalog: &Catalog) -> Result<()> {
        self.stage(Op::Catalog {
            bytes: &wire::encode(catalog),
        })
    }

    /// Replaces a group's whole applied state with a snapshot's.
    pub fn install_snapshot(
        &mut self,
        group: GroupId,
        index: u64,
        data: &SnapshotData,
        old_records: &[u64],
    ) -> Result<()> {
        let g = group.0;
        self.require_sync();
        self.overlay.lock().discard(g);
        self.stage(Op::ClearGroup { group: g })?;
        self.delete_log_records(old_records)?;
        for (key, value) in &data.rows {
            self.stage(Op::KvPut {
                group: g,
                key,
                value,
            })?;
        }
        for (client, session) in &data.sessions {
            self.stage(Op::Session {
                group: g,
                client: *client,
                session,
            })?;
        }
        if let Some(bytes) = &data.catalog {
            self.stage(Op::Catalog { bytes })?;
        }
        self.stage(Op::Applied { group: g, index })
    }

    /// Destroys this node's replica of the group `store` holds: its rows,
    /// sessions, Raft state, apply index, last check and log records, all
    /// in this round, which is synced. Nothing of the group stays in the
    /// overlay either.
    pub fn destroy_group(&mut self, store: &GroupStorage) -> Result<()> {
        let group = store.group.0;
        self.require_sync();
        self.overlay.lock().discard(group);
        let records: Vec<u64> = store.records.iter().map(|(_, seq)| *seq).collect();
        self.delete_log_records(&records)?;
        self.stage(Op::DropGroup { group })
    }

    /// Records a consistency check of `group` at apply index `index`: the
    /// digest of its state as this round leaves it. Returns the digest.
    pub fn record_checksum(&mut self, group: GroupId, index: u64) -> Result<u64> {
        let overlay = self.overlay;
        let t = self.tables()?;
        let o = overlay.lock();
        let digest = super::state_digest(&t.kv, &t.sessions, o.groups.get(&group.0), group)?;
        drop(o);
        self.stage(Op::Checksum {
            group: group.0,
            index,
            digest,
        })?;
        Ok(digest)
    }

    /// A [`KvStore`] over one group's rows in this round.
    pub fn kv<'w>(&'w mut self, group: GroupId) -> GroupKv<'w, 't> {
        GroupKv {
            w: self,
            g: group.0,
        }
    }
}

/// One group's KV and session rows inside a round.
pub struct GroupKv<'w, 't> {
    w: &'w mut RoundWriter<'t>,
    g: u64,
}

impl KvStore for GroupKv<'_, '_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.w.overlay.lock().row(self.g, key) {
            return Ok(v.map(<[u8]>::to_vec));
        }
        self.w.stored_row(self.g, key)
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
        if let Some(v) = self.w.overlay.lock().session(self.g, client) {
            return Ok(Some(wire::decode("client session", v)?));
        }
        self.w.stored_session(self.g, client)
    }

    fn put_session(&mut self, client: u64, session: &Session) -> Result<()> {
        let bytes = wire::encode(session);
        self.w.overlay.lock().put_session(self.g, client, bytes);
        Ok(())
    }
}
