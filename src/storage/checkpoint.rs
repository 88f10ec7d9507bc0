//! Checkpoints committed to redb behind the driver.
//!
//! A checkpoint writes the Raft log rows of a whole round log file into
//! redb (see [`write_log_rows`]) and commits with a sync. On the test
//! machine that took 5 to 15 ms of the driver thread every 2 MiB of log,
//! and every group of the node waited for it: most of a 64-client write
//! run's p99. Nothing the driver does next needs those rows in redb (each
//! group serves its log from memory, and the round log holds the rows
//! until the checkpoint is durable), so the [`Checkpointer`] thread writes
//! and commits them while the driver goes on. Rounds take redb's write lock
//! only when they change something there besides the log (see `persist`), so
//! most of them never wait for it; the few that do wait until the
//! checkpoint's commit returns.
//!
//! One checkpoint at a time: the driver waits for the one before (its
//! commit and its sync) before it moves the round log to the file that one
//! made free, so the disk always holds every record since the last durable
//! checkpoint. A failed checkpoint fails that wait, and the node stops.
//!
//! A checkpoint's transaction also carries whatever rounds committed to
//! redb without a sync since the job was handed over (a group-0 apply, an
//! overlay flush), and its synced commit makes their writes and their
//! round log position durable too. Their records may not be synced yet
//! (such rounds need no sync of their own), and redb durably ahead of the
//! log would refuse the node after a power cut: so the thread syncs the
//! log up to that position first, with redb's write lock held so that no
//! round can move it meanwhile. Lock order, as in rounds: redb's write
//! lock, then the round log's.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use redb::{Database, ReadableTable, WriteTransaction};

use super::cache::EntryCache;
use super::io_error;
use super::redo::{decode_all, Op, Tables};
use super::schema::{
    begin_write, log_record_header, merge_log_records, META, META_LOG_ROWS_APPLIED,
    META_WAL_APPLIED,
};
use super::syncfile::SyncControl;
use super::wal::Wal;
use super::{u64_bytes, Engine};
use crate::error::{Error, Result};

/// The checkpoint thread of an engine on a real file.
pub(crate) struct Checkpointer {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled whenever `state` changes.
    changed: Condvar,
    sync: Arc<SyncControl>,
    /// The engine's round log, synced before a checkpoint commits.
    wal: Arc<Mutex<Wal>>,
    /// Told which log records redb holds once a checkpoint commits.
    cache: Arc<EntryCache>,
}

#[derive(Default)]
struct State {
    /// The log ops to write and the round log record they reach.
    job: Option<(Vec<u8>, u64)>,
    /// The thread is writing or committing a job.
    busy: bool,
    /// Why a checkpoint failed; kept for every later wait.
    failed: Option<String>,
    stop: bool,
    /// Tests only: the thread leaves jobs waiting while this is set.
    #[cfg(test)]
    held: bool,
    /// Tests only: callers inside `wait`.
    #[cfg(test)]
    waiting: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Checkpointer {
    /// Starts the thread that checkpoints `db`, whose file's syncs `sync`
    /// controls and whose round log is `wal`.
    pub(crate) fn start(
        db: Arc<Database>,
        wal: Arc<Mutex<Wal>>,
        sync: Arc<SyncControl>,
        cache: Arc<EntryCache>,
    ) -> Result<Checkpointer> {
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            changed: Condvar::new(),
            sync,
            wal,
            cache,
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("flotilla-checkpoint".into())
            .spawn(move || run(&db, &worker))
            .map_err(io_error)?;
        Ok(Checkpointer {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Waits until no checkpoint is running and the last one is on disk;
    /// fails if any checkpoint failed.
    pub(crate) fn wait(&self) -> Result<()> {
        let mut st = self.shared.lock();
        #[cfg(test)]
        {
            st.waiting += 1;
        }
        while st.job.is_some() || st.busy {
            st = self
                .shared
                .changed
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
        #[cfg(test)]
        {
            st.waiting -= 1;
        }
        if let Some(why) = &st.failed {
            return Err(Error::Invalid(format!("a checkpoint failed: {why}")));
        }
        drop(st);
        self.shared.sync.wait().map_err(io_error)
    }

    /// Whether a checkpoint is being written, committed or synced: a redb
    /// write now would wait for it.
    pub(crate) fn busy(&self) -> bool {
        let st = self.shared.lock();
        st.job.is_some() || st.busy || self.shared.sync.pending()
    }

    /// Hands the thread the log ops `rows`, which bring redb's log rows up
    /// to round log record `upto`. Call [`Self::wait`] first.
    pub(crate) fn submit(&self, rows: Vec<u8>, upto: u64) {
        let mut st = self.shared.lock();
        st.job = Some((rows, upto));
        self.shared.changed.notify_all();
    }

    /// Finishes the checkpoint under way and ends the thread.
    pub(crate) fn stop(&self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            if t.join().is_err() {
                tracing::error!("the checkpoint thread panicked");
            }
        }
    }
}

#[cfg(test)]
impl Checkpointer {
    /// Holds (or releases) the jobs handed to the thread.
    pub(crate) fn hold(&self, held: bool) {
        self.shared.lock().held = held;
        self.shared.changed.notify_all();
    }

    /// How many callers wait for a checkpoint now.
    pub(crate) fn waiting(&self) -> usize {
        self.shared.lock().waiting
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(db: &Database, shared: &Shared) {
    loop {
        let (rows, upto) = {
            let mut st = shared.lock();
            loop {
                #[cfg(test)]
                if st.held && !st.stop {
                    st = shared.changed.wait(st).unwrap_or_else(|p| p.into_inner());
                    continue;
                }
                if let Some(job) = st.job.take() {
                    st.busy = true;
                    break job;
                }
                if st.stop {
                    return;
                }
                st = shared.changed.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        };
        let start = std::time::Instant::now();
        let result = checkpoint(db, shared, &rows, upto);
        let mut st = shared.lock();
        st.busy = false;
        match result {
            Ok(()) => tracing::debug!(
                upto,
                ms = start.elapsed().as_secs_f64() * 1e3,
                "checkpoint committed"
            ),
            Err(e) => {
                tracing::error!(error = %e, upto, "checkpoint failed");
                st.failed = Some(e.to_string());
            }
        }
        shared.changed.notify_all();
    }
}

/// Writes `rows` into redb, syncs the round log as far as the commit
/// reaches (see the module doc), and commits with a sync that runs behind.
fn checkpoint(db: &Database, shared: &Shared, rows: &[u8], upto: u64) -> Result<()> {
    let txn = begin_write(db)?;
    let (reaches, records) = write_log_rows(&txn, rows, upto)?;
    shared
        .wal
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .sync_through(reaches)
        .map_err(io_error)?;
    let sync = &shared.sync;
    sync.defer_syncs();
    let committed = txn.commit();
    sync.clear_defer();
    committed?;
    if let Some(seq) = records {
        shared.cache.set_in_db(seq);
    }
    Ok(())
}

/// Writes the deferred Raft log ops `rows` into `txn`, which then holds the
/// log as of round log record `upto`. Returns the record up to which `txn`
/// then holds every write (`upto`, or later when rounds after that record
/// committed to redb already), and the last Raft log record it wrote
/// (for the entry cache, once `txn` commits).
///
/// Only their net effect is written: a record deleted before the checkpoint
/// is never written, and each group's remaining records become one row (see
/// [`merge_log_records`]), keyed by the last of them. So a checkpoint adds
/// one row per group that appended, not one per round. The group's log
/// mirror still lists the original records; deleting the earlier ones is a
/// no-op, and the merged row goes with the last one, which compaction only
/// drops once every entry of the row is compacted.
pub(crate) fn write_log_rows(
    txn: &WriteTransaction,
    rows: &[u8],
    upto: u64,
) -> Result<(u64, Option<u64>)> {
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
    let last_record = puts.keys().next_back().copied();
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
    Ok((applied.max(upto), last_record))
}

impl Engine {
    /// Commits redb with a sync and starts the round log again, so the
    /// database file alone holds everything (before a clean stop).
    pub fn checkpoint(&self) -> Result<()> {
        if let Some(cp) = &self.checkpointer {
            cp.wait()?;
        }
        // redb's write lock before the log's, as rounds and the checkpoint
        // thread take them.
        let txn = begin_write(&self.db)?;
        let mut log_rows = self.log_rows.lock().unwrap_or_else(|p| p.into_inner());
        let mut wal = self.wal.lock().unwrap_or_else(|p| p.into_inner());
        let upto = wal.next_seq() - 1;
        wal.sync_if_dirty().map_err(io_error)?;
        let (_, records) = write_log_rows(&txn, &log_rows, upto)?;
        txn.open_table(META)?
            .insert(META_WAL_APPLIED, u64_bytes(upto).as_slice())?;
        txn.commit()?;
        if let Some(seq) = records {
            self.cache.set_in_db(seq);
        }
        log_rows.clear();
        wal.restart(upto + 1).map_err(io_error)?;
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl Engine {
    /// Flushes the whole overlay and checkpoints the round log, so that the
    /// database file alone holds everything and a restart has nothing to
    /// re-apply or replay (before a clean stop).
    pub fn flush_and_checkpoint(&self) -> Result<()> {
        if self.overlay_bytes().is_some() {
            let mut batch = self.batch();
            batch.flush_all();
            self.persist(batch)?;
        }
        self.checkpoint()
    }
}
