//! The storage engine of a node: where each byte lives, and when it moves.
//!
//! A node keeps everything in one redb database for all its groups, plus a
//! round log of two files beside it (the database's name with `wal.0` and
//! `wal.1`). The driver never writes either: each round hands the engine a
//! [`WriteBatch`] of encoded ops, and [`Engine::persist`] writes it. Bytes
//! live in four places:
//!
//! - **The round log** (`wal`, its records in `redo`): every persisted
//!   batch is appended to it as one record, whatever the number of groups,
//!   and a batch that must be durable (new entries, a term or vote, a
//!   snapshot) costs one fdatasync of it: group commit. This is what makes
//!   a round durable; redb is never synced for a round.
//! - **redb, committed without a sync**: a batch that changes anything but
//!   the Raft log (catalog group applies, states, snapshots, flushes)
//!   commits those ops to redb in one transaction with `Durability::None`,
//!   right after its log append; a crash rolls redb back to its last synced
//!   commit, and opening replays the log records after it (`opening`).
//! - **The log rows awaiting a checkpoint**: Raft log entries reach redb's
//!   log table only at a checkpoint. Each group serves its recent log from
//!   memory (`group`, raft-rs's `Storage`), so the rows wait in memory and
//!   in the round log; once a checkpoint put them in redb, applied entries
//!   may leave memory when the node's entries pass the entry cache's
//!   budget, and are read back from redb's log table (`cache`). Every few
//!   megabytes of round log the engine checkpoints
//!   (`checkpoint`): the log rows go to redb with a synced commit, on a
//!   thread of their own for a real file, and the log moves to its other
//!   file. Round log → redb.
//! - **The overlay** (`overlay`): data groups apply entries into memory,
//!   not into the batch, and the engine flushes groups' changes into a
//!   batch's redb transaction on its own schedule ([`FlushPolicy`]: by age,
//!   size and time, and all at once when a batch asks, as a membership
//!   change does). Overlay → redb. A crash loses the overlay; the node
//!   re-applies its durable log from the flushed apply index, and log
//!   compaction never passes that index (`GroupStorage::flushed`).
//!
//! Reads see redb and the overlay merged, the overlay winning (`view`);
//! nothing reads the round log or the awaiting log rows but a reopening.
//! The catalog group never uses the overlay: its applies go into the batch,
//! so catalog changes are on disk with their round.
//!
//! Files: `opening` creates the files and replays the log when a node
//! opens; `identity` holds the node's id, cluster id, catalog and
//! bootstrap; `group` and `cache` each group's log and which of it stays in
//! memory; `view` the merged reads; `scan` the paged scans read off the
//! driver thread; `batch` the round's staging;
//! `persist` the write path and the flush schedule; `checkpoint` the
//! checkpoint thread; `schema` the tables and records; `snapshot` and
//! `staging` streamed snapshots (sources read in chunks, staging tables
//! switched in by one transaction). [`Stats`] counts
//! batches, commits and syncs so tests and benchmarks can check group
//! commit, and times fsyncs; `meters` hands these figures, with the
//! memory the cache and overlay hold, to the node's metrics.

mod batch;
mod cache;
mod checkpoint;
mod group;
mod identity;
mod memdisk;
mod meters;
mod opening;
mod overlay;
mod persist;
mod redo;
mod scan;
mod schema;
mod snapshot;
mod staging;
mod syncfile;
mod values;
mod view;
mod wal;
mod walscan;

pub use batch::{GroupKv, WriteBatch};
pub use cache::{EntryCache, RAFT_CACHE_BYTES};
pub use group::GroupStorage;
pub use identity::new_group_record;
pub use memdisk::{MemDisk, MemFile};
pub use meters::Meters;
pub use persist::{
    Durable, FlushPolicy, Persisted, FLUSH_BYTES, FLUSH_GROUPS_PER_ROUND, FLUSH_ROUNDS, FLUSH_TICKS,
};
pub use scan::{ScanPage, ScanRead, SCAN_PAGE_BYTES};
pub use schema::RaftStateRecord;
pub use snapshot::{
    copy_snapshot, ChunkCursor, SnapshotChunk, SnapshotDescriptor, SnapshotLimits, SnapshotStats,
    Snapshots, SNAPSHOT_CHUNK_BYTES, SNAPSHOT_RECEIVES, SNAPSHOT_SENDS, SNAPSHOT_SOURCE_TTL,
};
pub use wal::{LogFile, WalConfig, WAL_CHECKPOINT_BYTES};

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redb::Database;

use crate::error::{Error, Result};
use crate::meter::{Buckets, Histogram};
use checkpoint::Checkpointer;
use overlay::SharedOverlay;
use wal::Wal;

/// Counters of the storage engine, shared with whoever wants to read them.
#[derive(Debug)]
pub struct Stats {
    /// Batches persisted, with or without anything in them.
    pub rounds: AtomicU64,
    /// Rounds committed: appended to the round log (and synced when they
    /// must be durable), one per round that staged anything.
    pub commits: AtomicU64,
    /// Rounds among `commits` that also committed a redb transaction (those
    /// that changed anything but the Raft log, and checkpoints).
    pub redb_commits: AtomicU64,
    /// Fsyncs: synced round log appends and synced redb commits (one each
    /// on a real disk).
    pub syncs: AtomicU64,
    /// Rounds committed to redb with a sync because the round log was due
    /// to start again (counted in `syncs` too).
    pub checkpoints: AtomicU64,
    /// Raft log entries written.
    pub entries_persisted: AtomicU64,
    /// Rounds that wrote the applied-state overlay out to redb.
    pub flushes: AtomicU64,
    /// Opens that had to check every page of the database to rebuild its
    /// allocator state (0 or 1: counted once per open).
    pub full_repairs: AtomicU64,
    /// Bytes appended to the round log (records and their headers).
    pub round_log_bytes: AtomicU64,
    /// Bytes of each round's record in the round log.
    pub round_bytes: Histogram,
    /// How long each sync of the round log took.
    pub fsync: Histogram,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            rounds: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            redb_commits: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            entries_persisted: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            full_repairs: AtomicU64::new(0),
            round_log_bytes: AtomicU64::new(0),
            round_bytes: Histogram::new(Buckets::Size),
            fsync: Histogram::new(Buckets::Duration),
        }
    }
}

impl Stats {
    /// Rounds so far.
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }
    /// Commits so far.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
    /// Rounds that committed a redb transaction so far.
    pub fn redb_commits(&self) -> u64 {
        self.redb_commits.load(Ordering::Relaxed)
    }
    /// Synced commits (fsyncs) so far.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }
    /// Entries persisted so far.
    pub fn entries(&self) -> u64 {
        self.entries_persisted.load(Ordering::Relaxed)
    }
    /// Overlay flushes so far.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }
    /// Checkpoints so far.
    pub fn checkpoints(&self) -> u64 {
        self.checkpoints.load(Ordering::Relaxed)
    }
}

/// A node's database.
///
/// Dropping it finishes a checkpoint still running behind the driver.
pub struct Engine {
    db: Arc<Database>,
    stats: Arc<Stats>,
    /// Sequence of the next Raft log record.
    next_log_seq: Arc<AtomicU64>,
    /// Applied state of data groups not yet in redb.
    overlay: SharedOverlay,
    /// The budget of Raft log entries in memory, shared by every group.
    cache: Arc<EntryCache>,
    /// The round log. A std lock: only the driver's rounds take it, never
    /// across an await.
    wal: Arc<Mutex<Wal>>,
    /// Raft log ops waiting for the next checkpoint.
    log_rows: LogRows,
    /// Runs checkpoints behind the driver (real files only).
    checkpointer: Option<Arc<Checkpointer>>,
    /// The encoding buffers batches pass on to each other.
    buffers: RoundBuffers,
    /// The overlay's flush schedule and the time it has waited.
    flush: Mutex<FlushState>,
    /// Snapshot sources and stagings (see `snapshot`).
    snapshots: Arc<Snapshots>,
}

/// The flush schedule of an engine.
#[derive(Debug)]
struct FlushState {
    policy: FlushPolicy,
    /// Ticks the overlay has held anything since its last flush.
    ticks_since: u64,
}

/// The encoded Raft log ops of every batch since the last checkpoint, in
/// order: what the next checkpoint writes to redb.
type LogRows = Arc<Mutex<Vec<u8>>>;

/// The two buffers a batch encodes into (its round log record and its Raft
/// log ops), handed from each batch to the next so that their capacity
/// stays. Grown afresh every round, their reallocations and copies were
/// about a tenth of the driver's time with 32 groups; keeping them took
/// 7% off the CPU time per write in the driver benchmark (run without
/// syncs, where CPU is what bounds it).
type RoundBuffers = Arc<Mutex<(Vec<u8>, Vec<u8>)>>;

fn io_error(e: std::io::Error) -> Error {
    Error::Storage(redb::Error::Io(e))
}

fn u64_bytes(v: u64) -> [u8; 8] {
    v.to_le_bytes()
}

fn bytes_u64(what: &'static str, b: &[u8]) -> Result<u64> {
    let arr: [u8; 8] = b.try_into().map_err(|_| Error::Corrupt {
        what,
        detail: format!("expected 8 bytes, found {}", b.len()),
    })?;
    Ok(u64::from_le_bytes(arr))
}

/// The two files of the round log that belongs to the database file at
/// `db`: the same name with the extensions `wal.0` and `wal.1`.
pub fn wal_paths(db: &Path) -> [std::path::PathBuf; 2] {
    [db.with_extension("wal.0"), db.with_extension("wal.1")]
}

impl Engine {
    /// The engine's counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// The node's snapshot transfers, for whoever carries them.
    pub fn snapshots(&self) -> Arc<Snapshots> {
        self.snapshots.clone()
    }

    /// The node's entry cache: its budget and what it holds.
    pub fn entry_cache(&self) -> Arc<EntryCache> {
        self.cache.clone()
    }
}

/// Default memory redb may keep for pages it read or wrote: the interior
/// pages of a node's tables and its hot rows. redb's own default (1 GiB)
/// was most of a loaded node's resident memory, for pages a write-heavy
/// node rarely reads again.
pub const DB_CACHE_BYTES: usize = 128 * 1024 * 1024;

/// What a node's engine may keep in memory (the README gives the whole
/// formula for a node).
#[derive(Clone, Copy, Debug)]
pub struct MemoryConfig {
    /// redb's page cache, in bytes (`--db-cache`).
    pub db_cache: usize,
    /// Raft log entries kept in memory over all groups, in bytes
    /// (`--raft-cache`).
    pub raft_cache: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            db_cache: DB_CACHE_BYTES,
            raft_cache: RAFT_CACHE_BYTES,
        }
    }
}

/// Index a founding member's log starts after (see `identity::initial_record`).
pub const INIT_INDEX: u64 = 5;
/// Term of that starting point.
pub const INIT_TERM: u64 = 5;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_cache;
#[cfg(test)]
mod tests_checkpoint;
#[cfg(test)]
mod tests_damage;
#[cfg(test)]
mod tests_scan;
#[cfg(test)]
mod tests_snapshot;
