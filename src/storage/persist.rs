//! Persisting a round's batch: the overlay flushes the engine schedules,
//! one append (and at most one fdatasync) of the round log, at most one
//! redb commit, and the checkpoints the round log falls due for.

use std::sync::atomic::Ordering;

use redb::{Durability, WriteTransaction};

use super::batch::WriteBatch;
use super::checkpoint::write_log_rows;
use super::redo::{decode_all, Tables};
use super::schema::{begin_write, META, META_WAL_APPLIED};
use super::wal::{Wal, HEADER};
use super::{io_error, Engine, RoundBuffers};
use crate::error::{Error, Result};
use crate::types::GroupId;

/// Rounds a group's applied changes may wait in the overlay before the engine
/// flushes them to redb. Under load a node runs a few hundred rounds a
/// second, so a crash makes it re-apply about a second of entries from its
/// own log.
pub const FLUSH_ROUNDS: u64 = 256;
/// Groups one batch flushes at most, so that flushing is spread over
/// rounds instead of stalling one for every group at once.
pub const FLUSH_GROUPS_PER_ROUND: usize = 4;
/// Ticks without any flush after which the whole overlay is flushed, so a
/// quiet node writes out its last changes soon after they apply.
pub const FLUSH_TICKS: u64 = 10;
/// Bytes the overlay may hold before it is flushed, whatever the round count.
pub const FLUSH_BYTES: usize = 16 * 1024 * 1024;
/// When the engine writes the applied-state overlay out to redb.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushPolicy {
    /// A group's changes are flushed once they waited this many rounds.
    pub rounds: u64,
    /// Groups one round flushes at most, by age.
    pub groups_per_round: usize,
    /// Ticks without any flush after which the whole overlay is flushed.
    pub ticks: u64,
    /// Bytes the overlay may hold before all of it is flushed.
    pub bytes: usize,
}

/// What a round flushes of the overlay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FlushDue {
    /// Nothing this round.
    Nothing,
    /// The groups whose changes waited their rounds.
    Aged,
    /// Every group.
    All,
}

impl FlushPolicy {
    /// What a round flushes, with the overlay at `bytes` after `ticks` quiet
    /// ticks; `flush_all` when the batch asks for everything, and
    /// `checkpoint_running` asked only when it matters.
    pub(crate) fn due(
        &self,
        bytes: usize,
        ticks: u64,
        flush_all: bool,
        checkpoint_running: impl FnOnce() -> bool,
    ) -> FlushDue {
        let overfull = bytes >= self.bytes.saturating_mul(2);
        if !flush_all && !overfull && checkpoint_running() {
            return FlushDue::Nothing;
        }
        if flush_all || bytes >= self.bytes || ticks >= self.ticks {
            FlushDue::All
        } else {
            FlushDue::Aged
        }
    }
}

impl Default for FlushPolicy {
    fn default() -> Self {
        FlushPolicy {
            rounds: FLUSH_ROUNDS,
            groups_per_round: FLUSH_GROUPS_PER_ROUND,
            ticks: FLUSH_TICKS,
            bytes: FLUSH_BYTES,
        }
    }
}

/// Proof that a batch is durable, handed to the callback of
/// [`Engine::persist_then`]: what waits on persistence may leave now.
pub struct Durable(());

/// What persisting a batch did.
#[derive(Debug, Default)]
pub struct Persisted {
    /// Whether anything was committed (to the round log, and to redb when
    /// anything there changed).
    pub committed: bool,
    /// Data groups whose overlay went to redb, with the apply index redb
    /// now holds for each: a restart resumes applying there, so their logs
    /// may be compacted up to it.
    pub flushed: Vec<(GroupId, u64)>,
}

/// A buffer grown past this (a batch that installed a snapshot, say) is
/// dropped rather than kept for the next batch.
const KEPT_BUFFER_BYTES: usize = 4 << 20;

/// Hands a persisted batch's buffers, emptied, to the next batch.
fn recycle(pool: &RoundBuffers, (mut redo, mut log_ops): (Vec<u8>, Vec<u8>)) {
    for b in [&mut redo, &mut log_ops] {
        if b.capacity() > KEPT_BUFFER_BYTES {
            *b = Vec::new();
        }
        b.clear();
    }
    *pool.lock().unwrap_or_else(|p| p.into_inner()) = (redo, log_ops);
}

impl Engine {
    /// An empty batch for the next round, with the buffers the last one
    /// grew.
    pub fn batch(&self) -> WriteBatch {
        let buffers = std::mem::take(&mut *self.buffers.lock().unwrap_or_else(|p| p.into_inner()));
        WriteBatch::new(
            self.db.clone(),
            self.overlay.clone(),
            self.next_log_seq.clone(),
            buffers,
        )
    }

    /// Sets when the overlay is flushed.
    pub fn set_flush_policy(&self, policy: FlushPolicy) {
        self.flush.lock().unwrap_or_else(|p| p.into_inner()).policy = policy;
    }

    /// [`Self::persist_then`] with nothing to release early.
    pub fn persist(&self, batch: WriteBatch) -> Result<Persisted> {
        self.persist_then(batch, |_| {})
    }

    /// Persists one round's batch, with whatever the flush schedule adds
    /// to it, and calls `durable_now` as soon as it is durable (its round
    /// log record synced, or at once when it needs no sync), before redb's
    /// commit. An error means the disk failed; the node must stop.
    ///
    /// A batch that must be durable (see [`WriteBatch::require_sync`]) costs
    /// one fdatasync of the round log, whatever the number of groups in it.
    /// One that only applied committed entries is appended without a sync:
    /// a crash loses at most those applies, which the node replays from its
    /// durable Raft log, and the next synced append makes them durable too.
    /// A batch of Raft log ops alone leaves redb alone (they reach it at the
    /// checkpoint); anything else goes into one redb transaction committed
    /// without a sync, which the round log covers. An empty batch is not
    /// logged at all. Once the round log is due for a checkpoint, this
    /// batch is appended and synced, the log moves to its other file, and
    /// the log rows of the file just left go to redb with a synced commit:
    /// on the checkpoint thread for a real file, here otherwise.
    pub fn persist_then(
        &self,
        mut batch: WriteBatch,
        durable_now: impl FnOnce(&Durable),
    ) -> Result<Persisted> {
        self.stats.rounds.fetch_add(1, Ordering::Relaxed);
        // A batch that will checkpoint first waits for the checkpoint before,
        // and must do so before it holds redb's write lock, which that
        // checkpoint may still need.
        if let Some(cp) = &self.checkpointer {
            if self
                .wal
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .checkpoint_due()
            {
                cp.wait()?;
            }
        }
        let flushed = self.schedule_flush(&mut batch);
        self.overlay.lock().next_round();
        let persisted = Persisted {
            committed: !batch.is_empty(),
            flushed,
        };
        if batch.is_empty() {
            recycle(&self.buffers, batch.into_buffers());
            durable_now(&Durable(()));
            return Ok(persisted);
        }
        let (sync, entries) = (batch.sync, batch.entries);
        let txn = if batch.redb {
            let txn = begin_write(&self.db)?;
            {
                let mut t = Tables::open(&txn)?;
                for op in decode_all(&batch.redo)? {
                    if !op.is_log_row() {
                        op.apply(&mut t)?;
                    }
                }
            }
            Some(txn)
        } else {
            None
        };
        let buffers = batch.into_buffers();
        self.commit(txn, &buffers, sync, durable_now)?;
        recycle(&self.buffers, buffers);
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats
            .entries_persisted
            .fetch_add(entries, Ordering::Relaxed);
        Ok(persisted)
    }

    /// Adds to `batch` the overlay flush that is due: everything when the
    /// batch asks for it, the overlay grew past its bytes or waited its
    /// ticks, else the groups that waited their rounds. Flushing writes to
    /// redb, and while a checkpoint runs behind the driver that would wait
    /// for it: so it waits a few rounds instead, unless the batch needs it
    /// or the overlay reached twice its bytes. That bounds the overlay's
    /// memory: it never passes twice the flush threshold by more than one
    /// round's applies, however long checkpoints take.
    fn schedule_flush(&self, batch: &mut WriteBatch) -> Vec<(GroupId, u64)> {
        let mut f = self.flush.lock().unwrap_or_else(|p| p.into_inner());
        let Some(bytes) = self.overlay_bytes() else {
            f.ticks_since = 0;
            return Vec::new();
        };
        f.ticks_since += batch.ticks;
        let flushed = match f.policy.due(bytes, f.ticks_since, batch.flush_all, || {
            self.checkpoint_running()
        }) {
            FlushDue::Nothing => return Vec::new(),
            FlushDue::All => batch.stage_overlay(),
            FlushDue::Aged => batch.stage_aged(f.policy.rounds, f.policy.groups_per_round),
        };
        if !flushed.is_empty() {
            f.ticks_since = 0;
            self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        }
        flushed
    }

    /// Appends the batch's record (`redo`) to the round log, syncs it when
    /// `sync`, and commits `txn`; checkpoints when the log is due.
    fn commit(
        &self,
        txn: Option<WriteTransaction>,
        (redo, log_ops): &(Vec<u8>, Vec<u8>),
        sync: bool,
        durable_now: impl FnOnce(&Durable),
    ) -> Result<()> {
        let mut log_rows = self.log_rows.lock().unwrap_or_else(|p| p.into_inner());
        let mut wal = self.wal.lock().unwrap_or_else(|p| p.into_inner());
        let checkpoint = wal.checkpoint_due();
        let seq = wal.next_seq();
        if let Some(txn) = &txn {
            // redb includes the log up to this batch's record once it commits.
            txn.open_table(META)?
                .insert(META_WAL_APPLIED, seq.to_le_bytes().as_slice())?;
        }
        if txn.is_some() || checkpoint {
            self.stats.redb_commits.fetch_add(1, Ordering::Relaxed);
        }
        if !checkpoint {
            // Log first: once the record is synced the batch is durable, and
            // what waits on that may leave while redb commits.
            self.log_append(&mut wal, redo)?;
            if sync {
                self.log_sync(&mut wal)?;
                self.stats.syncs.fetch_add(1, Ordering::Relaxed);
            }
            durable_now(&Durable(()));
            log_rows.extend_from_slice(log_ops);
            // Without a transaction there was nothing for redb: a later
            // commit's META_WAL_APPLIED covers this record, and replay
            // restores its log ops either way.
            if let Some(txn) = txn {
                commit_unsynced(txn)?;
            }
            return Ok(());
        }
        let start = std::time::Instant::now();
        // The file appends move to next must no longer be needed: the
        // checkpoint before this one must be on disk. `persist_then` waited
        // for it already, before this batch could take redb's write lock.
        if let Some(cp) = &self.checkpointer {
            cp.wait()?;
        }
        // The file being left gets this batch too, synced: until this
        // checkpoint is on disk, redb may still fall back to the one
        // before, and this file must then hold every record since, this
        // one included.
        self.log_append(&mut wal, redo)?;
        self.log_sync(&mut wal)?;
        durable_now(&Durable(()));
        log_rows.extend_from_slice(log_ops);
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
                    None => begin_write(&self.db)?,
                };
                let (_, records) = write_log_rows(&txn, &rows, seq)?;
                txn.commit()?;
                if let Some(seq) = records {
                    self.cache.set_in_db(seq);
                }
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
        Ok(())
    }

    /// Appends a round's record to the round log, counting its bytes.
    fn log_append(&self, wal: &mut Wal, redo: &[u8]) -> Result<()> {
        wal.append(redo).map_err(io_error)?;
        let bytes = (redo.len() + HEADER) as u64;
        self.stats
            .round_log_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        self.stats.round_bytes.observe(bytes);
        Ok(())
    }

    /// Syncs the round log, timing the sync.
    fn log_sync(&self, wal: &mut Wal) -> Result<()> {
        let start = std::time::Instant::now();
        wal.sync().map_err(io_error)?;
        self.stats.fsync.observe_duration(start.elapsed());
        Ok(())
    }
}

/// Commits a batch's transaction without a sync: the round log holds it.
fn commit_unsynced(mut txn: WriteTransaction) -> Result<()> {
    txn.set_durability(Durability::None)
        .map_err(|e| Error::Invalid(format!("round durability: {e}")))?;
    txn.commit()?;
    Ok(())
}
