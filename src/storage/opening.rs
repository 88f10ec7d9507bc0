//! Opening a node's storage: creating its files durably, and bringing redb
//! up to date with the round log before anything reads.
//!
//! A file [`open_rw`] creates is synced, and its directory once after all
//! of them are made ([`sync_dir`]; [`super::Engine::remove`] syncs it after
//! removing them too), so that a power cut never keeps data whose name it
//! lost, nor brings back a wiped node. [`replay`] then applies the round
//! log's records that redb lacks, or refuses a log that is damaged (see
//! `wal` and `walscan`) or does not continue where redb stopped, with an
//! error that tells the operator how to rejoin.
//!
//! Left out: the data directory itself is created by the node (see
//! `node::server`), which does not sync its parent.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableDatabase, ReadableTable};

use super::cache::EntryCache;
use super::checkpoint::Checkpointer;
use super::group::RestoredLog;
use super::overlay::SharedOverlay;
use super::persist::FlushPolicy;
use super::redo::{decode_all, Tables};
use super::schema::{
    begin_write, decode_log_record, RaftStateRecord, APPLIED, CHECKSUMS, FORMAT, KV, LOG, META,
    META_CLUSTER_ID, META_FORMAT, META_LOG_ROWS_APPLIED, META_WAL_APPLIED, RAFT_STATE, SESSIONS,
};
use super::syncfile::{SyncControl, SyncFile};
use super::wal::{NamedLogFile, Wal, WalConfig};
use super::walscan::Damage;
use super::{
    bytes_u64, io_error, u64_bytes, wal_paths, Engine, FlushState, GroupStorage, MemDisk,
    MemoryConfig, Snapshots, Stats,
};
use crate::error::{Error, Result};
use crate::types::GroupId;
use crate::wire;

/// What a node's operator is told to do when its data cannot be trusted.
const WIPE_ADVICE: &str = "start the node with --wipe-and-join (and --join naming \
     its peers) to discard its data and rejoin the cluster from its peers";

pub(super) fn path_error(path: &Path, e: std::io::Error) -> Error {
    Error::Storage(redb::Error::Io(std::io::Error::new(
        e.kind(),
        format!("{}: {e}", path.display()),
    )))
}

/// Opens the file at `path` for reading and writing, creating it if
/// needed; says whether it did. A file it creates is synced (its inode),
/// but its name is durable only once its directory is (see [`sync_dir`]).
pub(super) fn open_rw(path: &Path) -> Result<(std::fs::File, bool)> {
    let existed = path.try_exists().map_err(|e| path_error(path, e))?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| path_error(path, e))?;
    if !existed {
        file.sync_all().map_err(|e| path_error(path, e))?;
    }
    Ok((file, !existed))
}

/// The directory that holds `path`.
pub(super) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes the entries of the directory `dir` durable, so that the files
/// created or removed in it stay so after a power cut.
pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(test)]
    super::tests_damage::note_dir_sync(dir);
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| path_error(dir, e))
}

/// Brings redb up to date with the round log: applies, in one synced
/// commit, every record after the last one redb holds, and the Raft log ops
/// of the records before it that only a checkpoint would have written (see
/// `checkpoint`), then starts the log again. Refuses a log that does not continue
/// where redb stopped.
pub(super) fn replay(db: &Database, mut wal: Wal) -> Result<Wal> {
    let (applied, rows_applied) = {
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        let position = |key| -> Result<Option<u64>> {
            meta.get(key)?
                .map(|v| bytes_u64("round log position", v.value()))
                .transpose()
        };
        let applied = position(META_WAL_APPLIED)?.unwrap_or(0);
        (applied, position(META_LOG_ROWS_APPLIED)?.unwrap_or(applied))
    };
    if rows_applied > applied {
        return Err(Error::Corrupt {
            what: "round log position",
            detail: format!("log rows up to {rows_applied}, other writes only to {applied}"),
        });
    }
    let scan = wal.read(rows_applied + 1).map_err(io_error)?;
    // A record some later one proves was synced, missing: named where its
    // file's run broke off, or else (no run stops just before it, as when a
    // log file is missing or foreign) refused as a gap below.
    let damage = scan.damage(rows_applied + 1);
    let damaged = |d: &Damage| Error::Corrupt {
        what: "round log",
        detail: format!(
            "{d}: records this node had made durable, and may have acknowledged, are lost; \
             {WIPE_ADVICE}"
        ),
    };
    if let Some(d) = damage.as_ref().filter(|d| d.located()) {
        return Err(damaged(d));
    }
    let records = scan.records;
    let redo: Vec<_> = records.range(rows_applied + 1..).collect();
    let mut expect = rows_applied + 1;
    for (seq, _) in &redo {
        if **seq != expect {
            break;
        }
        expect += 1;
    }
    let last = expect - 1;
    // Every record redb lacks anything of must be there, in order; records
    // after a gap past that point cannot be trusted either.
    if last < applied || redo.len() as u64 != last - rows_applied {
        let then = redo
            .iter()
            .map(|(s, _)| **s)
            .find(|s| *s > last)
            .map_or("ends".to_string(), |s| format!("resumes at {s}"));
        return Err(Error::Corrupt {
            what: "round log",
            detail: format!(
                "the database and the log hold records up to {last} but the log {then} \
                 (the database holds Raft log rows up to record {rows_applied} and every \
                 other write up to record {applied}); {WIPE_ADVICE}"
            ),
        });
    }
    if let Some(d) = &damage {
        return Err(damaged(d));
    }
    if !redo.is_empty() {
        let began = std::time::Instant::now();
        let txn = begin_write(db)?;
        {
            let mut t = Tables::open(&txn)?;
            for (seq, body) in &redo {
                for op in decode_all(body)? {
                    if **seq > applied || op.is_log_row() {
                        op.apply(&mut t)?;
                    }
                }
            }
            t.meta
                .insert(META_WAL_APPLIED, u64_bytes(last).as_slice())?;
            t.meta
                .insert(META_LOG_ROWS_APPLIED, u64_bytes(last).as_slice())?;
        }
        txn.commit()?;
        tracing::info!(
            records = redo.len(),
            from = rows_applied + 1,
            to = last,
            took = ?began.elapsed(),
            "round log replayed"
        );
    }
    wal.restart(last + 1).map_err(io_error)?;
    Ok(wal)
}

/// redb opened with a page cache of `cache` bytes. Should the file need a
/// full repair (a crash after a commit that did not record the allocator
/// state: see `schema::begin_write`), its progress is logged every tenth
/// and counted in `stats`.
fn builder(cache: usize, stats: &Arc<Stats>) -> redb::Builder {
    let mut b = Database::builder();
    b.set_cache_size(cache);
    let stats = stats.clone();
    let logged = AtomicU64::new(0);
    b.set_repair_callback(move |session| {
        let tenth = (session.progress() * 10.0) as u64;
        if stats.full_repairs.load(Ordering::Relaxed) == 0 {
            stats.full_repairs.store(1, Ordering::Relaxed);
            tracing::warn!("the database was not closed cleanly and records no allocator state: checking every page");
        }
        if tenth > logged.fetch_max(tenth, Ordering::Relaxed) {
            tracing::info!(done = format!("{}%", tenth * 10), "checking the database");
        }
    });
    b
}

impl Engine {
    /// Opens (or creates) the database file at `path` and its round log
    /// beside it (see [`wal_paths`]), with the default memory budgets.
    pub fn open(path: &Path) -> Result<Engine> {
        Self::open_with(path, MemoryConfig::default())
    }

    /// Like [`Self::open`], with the memory budgets `mem`.
    pub fn open_with(path: &Path, mem: MemoryConfig) -> Result<Engine> {
        let [a, b] = wal_paths(path);
        let (db_file, new_db) = open_rw(path)?;
        let (a_file, new_a) = open_rw(&a)?;
        let (b_file, new_b) = open_rw(&b)?;
        if new_db || new_a || new_b {
            sync_dir(parent_dir(path))?;
        }
        let log: [NamedLogFile; 2] = [
            (a.display().to_string(), Box::new(a_file)),
            (b.display().to_string(), Box::new(b_file)),
        ];
        let (file, sync) = SyncFile::open(db_file).map_err(io_error)?;
        let stats = Arc::new(Stats::default());
        let began = std::time::Instant::now();
        let db = builder(mem.db_cache, &stats).create_with_backend(file)?;
        tracing::info!(took = ?began.elapsed(), path = %path.display(), "database opened");
        Self::init(db, log, WalConfig::FILE, Some(sync), mem.raft_cache, stats)
    }

    /// Opens a database and round log on an in-memory disk.
    pub fn open_backend(disk: MemDisk) -> Result<Engine> {
        Self::open_backend_with(disk, MemoryConfig::default())
    }

    /// Like [`Self::open_backend`], with the memory budgets `mem`.
    pub fn open_backend_with(disk: MemDisk, mem: MemoryConfig) -> Result<Engine> {
        let stats = Arc::new(Stats::default());
        let db = builder(mem.db_cache, &stats).create_with_backend(disk.db_file())?;
        Self::init(
            db,
            disk.log_backends(),
            WalConfig::MEMORY,
            None,
            mem.raft_cache,
            stats,
        )
    }

    /// Like [`Self::open_backend`], with checkpoints' syncs run behind the
    /// driver as on a real file; the control lets a test hold them.
    #[cfg(test)]
    pub(crate) fn open_backend_behind(disk: MemDisk) -> Result<(Engine, Arc<SyncControl>)> {
        let (file, sync) = SyncFile::new(disk.db_file()).map_err(io_error)?;
        let mem = MemoryConfig::default();
        let stats = Arc::new(Stats::default());
        let db = builder(mem.db_cache, &stats).create_with_backend(file)?;
        Ok((
            Self::init(
                db,
                disk.log_backends(),
                WalConfig::MEMORY,
                Some(sync.clone()),
                mem.raft_cache,
                stats,
            )?,
            sync,
        ))
    }

    /// Deletes the database file at `path` and its round log: a node's whole
    /// state. Once it returns, a power cut cannot bring them back.
    pub fn remove(path: &Path) -> Result<()> {
        let [a, b] = wal_paths(path);
        let mut removed = false;
        for p in [path.to_path_buf(), a, b] {
            match std::fs::remove_file(&p) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::Invalid(format!("{}: {e}", p.display()))),
            }
        }
        if removed {
            sync_dir(parent_dir(path))?;
        }
        Ok(())
    }

    fn init(
        db: Database,
        log: [NamedLogFile; 2],
        cfg: WalConfig,
        sync: Option<Arc<SyncControl>>,
        raft_cache: usize,
        stats: Arc<Stats>,
    ) -> Result<Engine> {
        // Create every table up front so readers never meet a missing one.
        let txn = begin_write(&db)?;
        txn.open_table(LOG)?;
        txn.open_table(RAFT_STATE)?;
        txn.open_table(APPLIED)?;
        txn.open_table(KV)?;
        txn.open_table(SESSIONS)?;
        txn.open_table(META)?;
        txn.open_table(CHECKSUMS)?;
        txn.open_table(super::staging::STAGED)?;
        txn.open_table(super::staging::STAGED_KV)?;
        txn.open_table(super::staging::STAGED_SESSIONS)?;
        super::values::create_tables(&txn)?;
        {
            // A new database holds no log rows yet. One written before rows
            // were deferred has no position for them: it held them all.
            let mut meta = txn.open_table(META)?;
            if meta.get(META_WAL_APPLIED)?.is_none() && meta.get(META_LOG_ROWS_APPLIED)?.is_none() {
                meta.insert(META_LOG_ROWS_APPLIED, u64_bytes(0).as_slice())?;
            }
            if meta.get(META_CLUSTER_ID)?.is_some() {
                let format = meta.get(META_FORMAT)?.map(|v| {
                    let b = v.value();
                    b.try_into().map_or(0, u32::from_le_bytes)
                });
                if format != Some(FORMAT) {
                    return Err(Error::Invalid(format!(
                        "this data directory was written in on-disk format {}, and this build \
                         reads format {FORMAT}; start it with --wipe-and-join to discard its data \
                         and join the cluster as a new node",
                        format.map_or("1".to_string(), |f| f.to_string())
                    )));
                }
            }
        }
        txn.commit()?;
        let wal = replay(&db, Wal::new(log, cfg))?;
        super::staging::reset(&db)?;
        let next = {
            let txn = db.begin_read()?;
            let log = txn.open_table(LOG)?;
            let last = log.last()?.map_or(0, |(k, _)| k.value() + 1);
            last
        };
        let db = Arc::new(db);
        let wal = Arc::new(Mutex::new(wal));
        // The opening put every record of the round log into redb.
        let cache = Arc::new(EntryCache::new(raft_cache));
        cache.set_in_db_below(next);
        let checkpointer = match sync {
            Some(sync) => Some(Arc::new(Checkpointer::start(
                db.clone(),
                wal.clone(),
                sync,
                cache.clone(),
            )?)),
            None => None,
        };
        let snapshots = Arc::new(Snapshots::new(db.clone(), wal.clone()));
        Ok(Engine {
            snapshots,
            db,
            stats,
            next_log_seq: Arc::new(AtomicU64::new(next)),
            overlay: SharedOverlay::default(),
            cache,
            wal,
            log_rows: Arc::default(),
            checkpointer,
            buffers: Arc::default(),
            flush: Mutex::new(FlushState {
                policy: FlushPolicy::default(),
                ticks_since: 0,
            }),
        })
    }

    /// Whether a checkpoint is still being written or synced behind the
    /// driver, so that a round writing to redb now would wait for it.
    pub fn checkpoint_running(&self) -> bool {
        self.checkpointer.as_ref().is_some_and(|cp| cp.busy())
    }

    /// Every group with Raft state on this node, loaded into memory.
    pub fn load_groups(&self) -> Result<Vec<GroupStorage>> {
        let txn = self.db.begin_read()?;
        let mut states = BTreeMap::new();
        for row in txn.open_table(RAFT_STATE)?.iter()? {
            let (g, bytes) = row?;
            let rec: RaftStateRecord = wire::decode("raft state", bytes.value())?;
            states.insert(g.value(), rec);
        }
        let applied_table = txn.open_table(APPLIED)?;
        // One pass over the log records, oldest first, rebuilds every log.
        let mut logs: BTreeMap<u64, RestoredLog> = BTreeMap::new();
        for row in txn.open_table(LOG)?.iter()? {
            let (seq, bytes) = row?;
            let (g, entries) = decode_log_record(bytes.value())?;
            let Some(rec) = states.get(&g) else {
                // A group this node no longer holds; its records are inert.
                continue;
            };
            logs.entry(g)
                .or_default()
                .replay(GroupId(g), rec.snap_index, seq.value(), &entries)?;
        }
        let mut out = Vec::with_capacity(states.len());
        for (g, rec) in &states {
            let applied = applied_table.get(*g)?.map_or(0, |v| v.value());
            let log = logs.remove(g).unwrap_or_default();
            out.push(GroupStorage::restore(
                (
                    self.db.clone(),
                    self.overlay.clone(),
                    self.cache.clone(),
                    self.snapshots.clone(),
                ),
                GroupId(*g),
                rec,
                applied,
                log,
            ));
        }
        Ok(out)
    }
}
