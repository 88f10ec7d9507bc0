//! The storage engine of a node: one redb database for every group, and a
//! round log beside it.
//!
//! Layout and records live in `schema`; `group` is the per-group log mirror
//! that implements raft-rs's `Storage`; `round` is the write side of one
//! driver round; `wal` the round log that makes rounds durable, `redo`
//! the records it holds, and `opening` the files' creation and the log's
//! replay when a node opens. The central rule: **one driver round is one redb
//! write transaction**, for all groups together, made durable by one
//! fsync however many groups had work (group commit). [`Stats`] counts
//! rounds, commits and syncs so tests and benchmarks can check that rule.
//!
//! Opening: [`Engine::open`] on a file (the round log's two files are the
//! same path with the extensions `wal.0` and `wal.1`), or
//! [`Engine::open_backend`] on a [`MemDisk`] (the simulation). Opening applies the round log's records that redb lacks
//! before anything can read. [`Engine::bootstrap`]
//! writes a node's identity, the cluster id and the catalog, and the initial
//! Raft state of every group the catalog places on this node, in one
//! transaction: a crash leaves either nothing or a node that restarts.

mod checkpoint;
mod group;
mod memdisk;
mod opening;
mod overlay;
mod redo;
mod round;
mod schema;
mod syncfile;
mod wal;
mod walscan;

pub use group::GroupStorage;
pub use memdisk::{MemDisk, MemFile};
pub use round::{GroupKv, Round, RoundWriter};
pub use schema::{RaftStateRecord, SnapshotData};
pub use wal::{LogFile, WalConfig, WAL_CHECKPOINT_BYTES};

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use raft::eraftpb::{ConfState, HardState};
use redb::{Database, ReadableDatabase, ReadableTable};
use xxhash_rust::xxh3::Xxh3;

use crate::catalog::{Catalog, GroupInfo};
use crate::error::{Error, Result};
use crate::types::{GroupId, NodeId, CATALOG_GROUP};
use crate::wire;
use checkpoint::Checkpointer;
use group::RestoredLog;
use opening::{open_rw, parent_dir, replay, sync_dir};
use overlay::{GroupOverlay, Merged, SharedOverlay};
use round::{io_error, write_log_rows, LogRows, RoundBuffers};
use schema::{
    decode_log_record, APPLIED, CHECKSUMS, FORMAT, KV, LOG, META, META_CATALOG, META_CLUSTER_ID,
    META_FORMAT, META_INCARNATION, META_LOG_ROWS_APPLIED, META_NODE_ID, META_STORE_ID,
    META_WAL_APPLIED, RAFT_STATE, SESSIONS,
};
use syncfile::{SyncControl, SyncFile};
use wal::{NamedLogFile, Wal};

/// Counters of the storage engine, shared with whoever wants to read them.
#[derive(Debug, Default)]
pub struct Stats {
    /// Driver rounds run, with or without work to persist.
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
    /// The round log. A std lock: only the driver's rounds take it, never
    /// across an await.
    wal: Arc<Mutex<Wal>>,
    /// Raft log ops waiting for the next checkpoint (see `round`).
    log_rows: LogRows,
    /// Runs checkpoints behind the driver (real files only).
    checkpointer: Option<Arc<Checkpointer>>,
    /// The encoding buffers rounds pass on to each other.
    buffers: RoundBuffers,
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
    /// Opens (or creates) the database file at `path` and its round log
    /// beside it (see [`wal_paths`]).
    pub fn open(path: &Path) -> Result<Engine> {
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
        let db = Database::builder().create_with_backend(file)?;
        Self::init(db, log, WalConfig::FILE, Some(sync))
    }

    /// Opens a database and round log on an in-memory disk.
    pub fn open_backend(disk: MemDisk) -> Result<Engine> {
        let db = Database::builder().create_with_backend(disk.db_file())?;
        Self::init(db, disk.log_backends(), WalConfig::MEMORY, None)
    }

    /// Like [`Self::open_backend`], with checkpoints' syncs run behind the
    /// driver as on a real file; the control lets a test hold them.
    #[cfg(test)]
    pub(crate) fn open_backend_behind(disk: MemDisk) -> Result<(Engine, Arc<SyncControl>)> {
        let (file, sync) = SyncFile::new(disk.db_file()).map_err(io_error)?;
        let db = Database::builder().create_with_backend(file)?;
        Ok((
            Self::init(
                db,
                disk.log_backends(),
                WalConfig::MEMORY,
                Some(sync.clone()),
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
    ) -> Result<Engine> {
        // Create every table up front so readers never meet a missing one.
        let txn = db.begin_write()?;
        txn.open_table(LOG)?;
        txn.open_table(RAFT_STATE)?;
        txn.open_table(APPLIED)?;
        txn.open_table(KV)?;
        txn.open_table(SESSIONS)?;
        txn.open_table(META)?;
        txn.open_table(CHECKSUMS)?;
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
        let next = {
            let txn = db.begin_read()?;
            let log = txn.open_table(LOG)?;
            let last = log.last()?.map_or(0, |(k, _)| k.value() + 1);
            last
        };
        let db = Arc::new(db);
        let wal = Arc::new(Mutex::new(wal));
        let checkpointer = match sync {
            Some(sync) => Some(Arc::new(Checkpointer::start(
                db.clone(),
                wal.clone(),
                sync,
            )?)),
            None => None,
        };
        Ok(Engine {
            db,
            stats: Arc::default(),
            next_log_seq: Arc::new(AtomicU64::new(next)),
            overlay: SharedOverlay::default(),
            wal,
            log_rows: LogRows::default(),
            checkpointer,
            buffers: RoundBuffers::default(),
        })
    }

    /// Whether a checkpoint is still being written or synced behind the
    /// driver, so that a round writing to redb now would wait for it.
    pub fn checkpoint_running(&self) -> bool {
        self.checkpointer.as_ref().is_some_and(|cp| cp.busy())
    }

    /// The engine's counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Counts one driver round.
    pub fn count_round(&self) {
        self.stats.rounds.fetch_add(1, Ordering::Relaxed);
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(META)?;
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }

    /// Whether this node belongs to a cluster. This alone decides restart
    /// versus join.
    pub fn is_bootstrapped(&self) -> Result<bool> {
        Ok(self.meta(META_CLUSTER_ID)?.is_some())
    }

    /// The cluster id, when bootstrapped.
    pub fn cluster_id(&self) -> Result<Option<u64>> {
        self.meta(META_CLUSTER_ID)?
            .map(|b| bytes_u64("cluster id", &b))
            .transpose()
    }

    /// This node's id, when bootstrapped.
    pub fn node_id(&self) -> Result<Option<NodeId>> {
        Ok(self
            .meta(META_NODE_ID)?
            .map(|b| bytes_u64("node id", &b))
            .transpose()?
            .map(NodeId))
    }

    /// The persisted catalog, when bootstrapped.
    pub fn catalog(&self) -> Result<Option<Catalog>> {
        self.meta(META_CATALOG)?
            .map(|b| Catalog::decode(&b))
            .transpose()
    }

    /// The random id of this data directory, if one was drawn.
    pub fn store_id(&self) -> Result<Option<u64>> {
        self.meta(META_STORE_ID)?
            .map(|b| bytes_u64("store id", &b))
            .transpose()
    }

    /// The id of this data directory: the stored one, or `fresh` (which
    /// must be random and non-zero), stored now for good.
    pub fn ensure_store_id(&self, fresh: u64) -> Result<u64> {
        if let Some(id) = self.store_id()? {
            return Ok(id);
        }
        let txn = self.db.begin_write()?;
        txn.open_table(META)?
            .insert(META_STORE_ID, u64_bytes(fresh).as_slice())?;
        txn.commit()?;
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(fresh)
    }

    /// Counts one more start of this node and returns the new count.
    pub fn next_incarnation(&self) -> Result<u64> {
        let txn = self.db.begin_write()?;
        let n = {
            let mut meta = txn.open_table(META)?;
            let old = match meta.get(META_INCARNATION)? {
                Some(v) => bytes_u64("incarnation", v.value())?,
                None => 0,
            };
            meta.insert(META_INCARNATION, u64_bytes(old + 1).as_slice())?;
            old + 1
        };
        txn.commit()?;
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(n)
    }

    /// Makes this node a member of the catalog's cluster: node id, cluster id,
    /// catalog and the initial Raft state of every group placed here, in one
    /// transaction. Refuses a node that already belongs to a cluster.
    pub fn bootstrap(&self, node: NodeId, catalog: &Catalog) -> Result<()> {
        let mut groups: Vec<_> = catalog
            .groups_of(node)
            .map(|g| (g.id, initial_record(g)))
            .collect();
        // Every node follows the catalog: one that is not among group 0's
        // first members starts an empty replica, as a joiner does, which
        // group 0's leader fills once placement makes it a learner.
        if !groups.iter().any(|(g, _)| *g == CATALOG_GROUP) {
            groups.insert(0, (CATALOG_GROUP, RaftStateRecord::default()));
        }
        self.write_membership(node, catalog, &groups)
    }

    /// Makes this node a joiner of the catalog's cluster: node id, cluster id
    /// and catalog, and an empty group 0, in one transaction. Group 0's leader
    /// then adds the node and sends it the catalog; placement does the rest.
    pub fn bootstrap_joiner(&self, node: NodeId, catalog: &Catalog) -> Result<()> {
        self.write_membership(
            node,
            catalog,
            &[(CATALOG_GROUP, RaftStateRecord::default())],
        )
    }

    /// Writes identity, cluster id, catalog and the given groups' initial
    /// state in one transaction, refusing a node that has a cluster already.
    fn write_membership(
        &self,
        node: NodeId,
        catalog: &Catalog,
        groups: &[(GroupId, RaftStateRecord)],
    ) -> Result<()> {
        if let Some(existing) = self.cluster_id()? {
            return Err(Error::Invalid(format!(
                "this data directory already belongs to cluster {existing:016x}"
            )));
        }
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(META_NODE_ID, u64_bytes(node.0).as_slice())?;
            meta.insert(META_CLUSTER_ID, u64_bytes(catalog.cluster_id).as_slice())?;
            meta.insert(META_FORMAT, FORMAT.to_le_bytes().as_slice())?;
            meta.insert(META_CATALOG, wire::encode(catalog).as_slice())?;
            let mut raft = txn.open_table(RAFT_STATE)?;
            for (g, rec) in groups {
                raft.insert(g.0, wire::encode(rec).as_slice())?;
            }
        }
        txn.commit()?;
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
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
                .replay(GroupId(g), rec.snap_index, seq.value(), entries)?;
        }
        let mut out = Vec::with_capacity(states.len());
        for (g, rec) in &states {
            let applied = applied_table.get(*g)?.map_or(0, |v| v.value());
            let log = logs.remove(g).unwrap_or_default();
            out.push(GroupStorage::restore(
                self.db.clone(),
                self.overlay.clone(),
                GroupId(*g),
                rec,
                applied,
                log,
            ));
        }
        Ok(out)
    }

    /// An empty storage for a group a catalog change placed on this node;
    /// its state record must be staged in the same round. A `fresh` group
    /// starts with the catalog's members as its configuration; a group this
    /// node joins starts with none and waits for its leader's snapshot.
    pub fn new_group(&self, info: &GroupInfo, fresh: bool) -> GroupStorage {
        let rec = if fresh {
            initial_record(info)
        } else {
            RaftStateRecord::default()
        };
        GroupStorage::fresh(self.db.clone(), self.overlay.clone(), info.id, &rec)
    }

    /// Commits redb with a sync and starts the round log again, so the
    /// database file alone holds everything (before a clean stop).
    pub fn checkpoint(&self) -> Result<()> {
        if let Some(cp) = &self.checkpointer {
            cp.wait()?;
        }
        // redb's write lock before the log's, as rounds and the checkpoint
        // thread take them.
        let txn = self.db.begin_write()?;
        let mut log_rows = self.log_rows.lock().unwrap_or_else(|p| p.into_inner());
        let mut wal = self.wal.lock().unwrap_or_else(|p| p.into_inner());
        let upto = wal.next_seq() - 1;
        wal.sync_if_dirty().map_err(io_error)?;
        write_log_rows(&txn, &log_rows, upto)?;
        txn.open_table(META)?
            .insert(META_WAL_APPLIED, u64_bytes(upto).as_slice())?;
        txn.commit()?;
        log_rows.clear();
        wal.restart(upto + 1).map_err(io_error)?;
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Starts a round.
    pub fn begin_round(&self) -> Result<Round> {
        // A round that will checkpoint first waits for the checkpoint before
        // (see `Round::commit`), and must do so before it can hold redb's
        // write lock, which that checkpoint may still need.
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
        self.overlay.lock().next_round();
        Ok(Round::new(self))
    }

    /// Approximate bytes of applied state waiting in the overlay, or `None`
    /// when it is empty.
    pub fn overlay_bytes(&self) -> Option<usize> {
        let o = self.overlay.lock();
        (!o.is_empty()).then_some(o.bytes)
    }

    /// Reads a key of a group's applied state.
    pub fn get(&self, group: GroupId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.get_many(&[(group, key)])?.pop().flatten())
    }

    /// Reads many keys of many groups in one read transaction.
    pub fn get_many(&self, keys: &[(GroupId, &[u8])]) -> Result<Vec<Option<Vec<u8>>>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(KV)?;
        let o = self.overlay.lock();
        keys.iter().map(|(g, k)| row_value(&t, &o, *g, k)).collect()
    }

    /// A digest of a group's applied state (apply index, KV rows, sessions),
    /// read in one transaction. Replicas at the same apply index must agree.
    pub fn group_digest(&self, group: GroupId) -> Result<(u64, u64)> {
        let txn = self.db.begin_read()?;
        let o = self.overlay.lock();
        let applied = match o.applied(group.0) {
            Some(a) => a,
            None => txn
                .open_table(APPLIED)?
                .get(group.0)?
                .map(|v| v.value())
                .unwrap_or(0),
        };
        let digest = state_digest(
            &txn.open_table(KV)?,
            &txn.open_table(SESSIONS)?,
            o.groups.get(&group.0),
            group,
        )?;
        Ok((applied, digest))
    }

    /// Up to `limit` rows of `group` with `start <= key < end` (no upper
    /// bound without `end`), in key order.
    pub fn scan(
        &self,
        group: GroupId,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(KV)?;
        let o = self.overlay.lock();
        let rows = group_rows_in(&t, o.groups.get(&group.0), group, start, end)?
            .take(limit)
            .collect();
        rows
    }

    /// The result of every group's last consistency check on this node:
    /// group -> (apply index, digest).
    pub fn checksums(&self) -> Result<BTreeMap<GroupId, (u64, u64)>> {
        let txn = self.db.begin_read()?;
        let mut out = BTreeMap::new();
        for row in txn.open_table(CHECKSUMS)?.iter()? {
            let (g, v) = row?;
            out.insert(GroupId(g.value()), v.value());
        }
        Ok(out)
    }
}

/// A digest of one group's KV rows and client sessions, in key order: the
/// state every replica at the same apply index must hold alike.
pub(crate) fn state_digest(
    kv: &impl ReadableTable<(u64, &'static [u8]), &'static [u8]>,
    sessions: &impl ReadableTable<(u64, u64), &'static [u8]>,
    overlay: Option<&GroupOverlay>,
    group: GroupId,
) -> Result<u64> {
    let mut h = Xxh3::new();
    for row in group_rows(kv, overlay, group)? {
        let (key, value) = row?;
        h.update(&(key.len() as u64).to_le_bytes());
        h.update(&key);
        h.update(&(value.len() as u64).to_le_bytes());
        h.update(&value);
    }
    for row in group_sessions(sessions, overlay, group)? {
        let (client, session) = row?;
        h.update(&client.to_le_bytes());
        h.update(&session);
    }
    Ok(h.digest())
}

/// Every KV row of a group, redb and overlay merged, in key order.
pub(crate) fn group_rows<'a>(
    kv: &'a impl ReadableTable<(u64, &'static [u8]), &'static [u8]>,
    overlay: Option<&'a GroupOverlay>,
    group: GroupId,
) -> Result<impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + 'a> {
    group_rows_in(kv, overlay, group, &[], None)
}

/// The KV rows of a group with `start <= key < end` (no upper bound without
/// `end`), redb and overlay merged, in key order.
pub(crate) fn group_rows_in<'a>(
    kv: &'a impl ReadableTable<(u64, &'static [u8]), &'static [u8]>,
    overlay: Option<&'a GroupOverlay>,
    group: GroupId,
    start: &'a [u8],
    end: Option<&'a [u8]>,
) -> Result<impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + 'a> {
    let g = group.0;
    // An empty range (redb refuses a range whose end precedes its start).
    let end = end.map(|e| e.max(start));
    let base = match end {
        Some(end) => kv.range((g, start)..(g, end))?,
        None => kv.range((g, start)..(g + 1, &[][..]))?,
    }
    .map(|row| {
        let (k, v) = row?;
        Ok((k.value().1.to_vec(), v.value().to_vec()))
    });
    let bounds = (
        Bound::Included(start),
        end.map_or(Bound::Unbounded, Bound::Excluded),
    );
    let over = overlay
        .into_iter()
        .flat_map(move |o| o.rows.range::<[u8], _>(bounds))
        .map(|(k, v)| (k.clone(), v.clone()));
    Ok(Merged::new(base, over))
}

/// A group's current value for `key`: the overlay's if it has one (a
/// deletion included), else redb's.
pub(crate) fn row_value(
    kv: &impl ReadableTable<(u64, &'static [u8]), &'static [u8]>,
    overlay: &overlay::Overlay,
    group: GroupId,
    key: &[u8],
) -> Result<Option<Vec<u8>>> {
    match overlay.row(group.0, key) {
        Some(v) => Ok(v.map(<[u8]>::to_vec)),
        None => Ok(kv.get((group.0, key))?.map(|v| v.value().to_vec())),
    }
}

/// Every client session of a group, redb and overlay merged, by client.
pub(crate) fn group_sessions<'a>(
    sessions: &'a impl ReadableTable<(u64, u64), &'static [u8]>,
    overlay: Option<&'a GroupOverlay>,
    group: GroupId,
) -> Result<impl Iterator<Item = Result<(u64, Vec<u8>)>> + 'a> {
    let g = group.0;
    let base = sessions.range((g, 0)..(g + 1, 0))?.map(|row| {
        let (k, v) = row?;
        Ok((k.value().1, v.value().to_vec()))
    });
    let over = overlay
        .into_iter()
        .flat_map(|o| o.sessions.iter())
        .map(|(c, s)| (*c, Some(s.clone())));
    Ok(Merged::new(base, over))
}

/// The Raft state a group starts from: its voters and learners, empty log.
///
/// The log starts as if compacted up to [`INIT_INDEX`]: the founding
/// configuration lives in the state, not in any entry, so a node added
/// later (whose log is empty) is always behind the leader's first index
/// and receives a snapshot carrying that configuration, rather than entries
/// it could not apply without it.
fn initial_record(info: &GroupInfo) -> RaftStateRecord {
    let cs = ConfState {
        voters: info.voters.iter().map(|n| n.0).collect(),
        learners: info.learners.iter().map(|n| n.0).collect(),
        ..Default::default()
    };
    let hs = HardState {
        term: INIT_TERM,
        commit: INIT_INDEX,
        ..Default::default()
    };
    RaftStateRecord::new(&hs, &cs, INIT_INDEX, INIT_TERM)
}

/// Index a founding member's log starts after (see [`initial_record`]).
pub const INIT_INDEX: u64 = 5;
/// Term of that starting point.
pub const INIT_TERM: u64 = 5;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_damage;
