//! Streamed snapshots: a group's applied state leaves as a sequence of
//! bounded chunks read from one consistent view, and arrives into a staging
//! area that is switched in by one transaction.
//!
//! **Sending.** raft-rs asks a group's storage for a snapshot on the driver
//! thread (`GroupStorage::snapshot`). No data is built there: under the
//! overlay's lock (no flush is between its redb commit and the overlay's
//! change while the driver runs raft-rs), the group opens a *source* here,
//! which holds a redb read transaction and a copy of the group's unflushed
//! overlay rows (the overlay is bounded in bytes). Together they are the
//! group's state as of its applied index, however long the transfer takes.
//! The Raft snapshot's data is then a small [`SnapshotDescriptor`] naming
//! the source. Whoever carries the message (the QUIC transport, the
//! simulation, the in-process cluster) reads the source chunk by chunk
//! ([`Snapshots::read_chunk`], rows in key order then sessions by client,
//! each chunk at most [`SnapshotLimits::chunk_bytes`] unless a single row is
//! larger), off the driver thread, and closes it when done. Sources are
//! bounded per node ([`SnapshotLimits::sends`]; when all are taken raft-rs
//! hears "temporarily unavailable" and asks again at its next probe), one
//! per (group, peer), and expire after [`SnapshotLimits::source_ttl`]
//! without a read, so a stuck transfer does not pin redb's pages forever.
//!
//! **Receiving** (`staging`): chunks go into staging tables of the same
//! database, keyed by group, that nothing but an install reads; the live
//! rows are untouched. Once the last chunk is staged, the staging is made
//! durable (a synced commit, after syncing the round log as far as redb
//! reaches, as a checkpoint does), and only then is the snapshot message
//! handed to the driver. The driver *claims* the staging before raft-rs
//! sees the message ([`Snapshots::claim`]); a claimed staging is never
//! replaced by another transfer. When raft-rs hands the snapshot back in a
//! Ready, the round stages one `InstallStaged` op: its redb transaction
//! clears the group's rows and sessions, copies the staged ones in and
//! drops the staging, so the switch is one transaction, and replaying the
//! round log after a crash installs it exactly once (the op and the
//! staging's removal commit together). If raft-rs refuses the snapshot
//! (stale), the staging is dropped.
//!
//! **Failures.** A transfer cut off (a crash, a dropped connection, a
//! source that expired) leaves the group as it was: opening a node drops
//! whatever staging its round log did not install, and a new transfer of a
//! group replaces its unclaimed staging. The leader hears of the failure
//! and sends a new snapshot from a new source; transfers restart from the
//! first row (no resume). Incoming transfers are bounded per node too
//! ([`SnapshotLimits::receives`]).
//!
//! The catalog group's state is the catalog alone, which is small: it
//! travels inside the descriptor and needs no source or staging.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redb::{Database, ReadOnlyTable, ReadableDatabase};

use super::overlay::{GroupOverlay, Merged, SharedOverlay};
use super::schema::SESSIONS;
use super::values::Rows;
use super::wal::Wal;
use crate::error::{Error, Result};
use crate::types::GroupId;

/// Bytes of rows one chunk carries at most (a single larger row travels
/// alone): large enough that per-chunk costs (a frame, a redb commit on the
/// receiver) are small beside it, small enough that a transfer holds little
/// memory at either end.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Snapshot sources a node keeps open at once: each pins a redb read
/// transaction and copies its group's overlay.
pub const SNAPSHOT_SENDS: usize = 4;
/// Transfers a node receives at once: each holds a chunk in memory and
/// writes its staging.
pub const SNAPSHOT_RECEIVES: usize = 4;
/// How long a source lives without a chunk read before it is dropped.
pub const SNAPSHOT_SOURCE_TTL: Duration = Duration::from_secs(60);
/// The descriptor format this build writes and reads.
const DESCRIPTOR_FORMAT: u32 = 1;
/// Bytes a row or session costs in a chunk beyond its key and value.
const ITEM_OVERHEAD: usize = 16;

/// The bounds of a node's snapshot transfers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotLimits {
    /// Bytes of rows per chunk.
    pub chunk_bytes: usize,
    /// Sources open at once.
    pub sends: usize,
    /// Transfers received at once.
    pub receives: usize,
    /// Life of a source without a read.
    pub source_ttl: Duration,
}

impl Default for SnapshotLimits {
    fn default() -> Self {
        SnapshotLimits {
            chunk_bytes: SNAPSHOT_CHUNK_BYTES,
            sends: SNAPSHOT_SENDS,
            receives: SNAPSHOT_RECEIVES,
            source_ttl: SNAPSHOT_SOURCE_TTL,
        }
    }
}

/// What a Raft snapshot's data holds: where its state can be read.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SnapshotDescriptor {
    /// [`DESCRIPTOR_FORMAT`].
    pub format: u32,
    /// The group.
    pub group: u64,
    /// The sender's source to read chunks from; 0 for the catalog group.
    pub source: u64,
    /// For the catalog group: the rkyv-encoded catalog.
    pub catalog: Option<Vec<u8>>,
}

impl SnapshotDescriptor {
    /// Decodes a snapshot's data; an error for another format.
    pub fn decode(data: &[u8]) -> Result<SnapshotDescriptor> {
        let d: SnapshotDescriptor = crate::wire::decode("snapshot descriptor", data)?;
        if d.format != DESCRIPTOR_FORMAT {
            return Err(Error::Corrupt {
                what: "snapshot descriptor",
                detail: format!("format {}, this build reads {DESCRIPTOR_FORMAT}", d.format),
            });
        }
        Ok(d)
    }

    /// The descriptor of the catalog group's snapshot.
    pub(crate) fn catalog(catalog: Option<Vec<u8>>) -> SnapshotDescriptor {
        SnapshotDescriptor {
            format: DESCRIPTOR_FORMAT,
            group: crate::types::CATALOG_GROUP.0,
            source: 0,
            catalog,
        }
    }

    /// The descriptor of a data group's snapshot, read from `source`.
    pub(crate) fn source(group: GroupId, source: u64) -> SnapshotDescriptor {
        SnapshotDescriptor {
            format: DESCRIPTOR_FORMAT,
            group: group.0,
            source,
            catalog: None,
        }
    }

    /// Whether the state travels in chunks (it does for data groups).
    pub fn streamed(&self) -> bool {
        self.source != 0
    }
}

/// Where the next chunk of a source starts.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum ChunkCursor {
    /// At the first row whose key is at least this.
    Rows(Vec<u8>),
    /// At the first session whose client is at least this.
    Sessions(u64),
}

impl ChunkCursor {
    /// The start of a source.
    pub fn start() -> ChunkCursor {
        ChunkCursor::Rows(Vec::new())
    }
}

/// One piece of a group's state, in order.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct SnapshotChunk {
    /// KV rows, in key order.
    pub rows: Vec<(Vec<u8>, Vec<u8>)>,
    /// Sessions: (client, rkyv `kv::Session`), by client.
    pub sessions: Vec<(u64, Vec<u8>)>,
    /// Where the next chunk starts; `None` for the last.
    pub next: Option<ChunkCursor>,
}

impl SnapshotChunk {
    /// Approximate bytes of the chunk's rows and sessions.
    pub fn bytes(&self) -> usize {
        let rows: usize = self
            .rows
            .iter()
            .map(|(k, v)| k.len() + v.len() + ITEM_OVERHEAD)
            .sum();
        let sessions: usize = self
            .sessions
            .iter()
            .map(|(_, s)| s.len() + ITEM_OVERHEAD)
            .sum();
        rows + sessions
    }
}

/// One group's state as of a snapshot's index, held for a transfer.
struct Source {
    group: GroupId,
    /// The peer it is for.
    to: u64,
    kv: Rows,
    sessions: ReadOnlyTable<(u64, u64), &'static [u8]>,
    /// The group's unflushed rows and sessions when the source opened.
    overlay: GroupOverlay,
    /// When it is dropped unless read again.
    expires: Instant,
}

/// Open sources by id. Each has a lock of its own, so that reading a chunk
/// holds neither the table nor another source.
type SourceTable = BTreeMap<u64, Arc<Mutex<Source>>>;

/// Counters of a node's transfers.
#[derive(Debug, Default)]
pub struct SnapshotStats {
    /// Sources opened.
    pub sources: AtomicU64,
    /// Snapshots refused to raft-rs because every source was taken.
    pub sources_busy: AtomicU64,
    /// Chunks read from sources.
    pub chunks_sent: AtomicU64,
    /// Chunks staged.
    pub chunks_staged: AtomicU64,
    /// Bytes of the chunks read from sources ([`SnapshotChunk::bytes`]).
    pub bytes_sent: AtomicU64,
    /// Bytes of the chunks staged.
    pub bytes_staged: AtomicU64,
    /// Incoming transfers refused (the limit, or the group's staging is
    /// claimed or being received).
    pub receives_refused: AtomicU64,
    /// Stagings installed.
    pub installs: AtomicU64,
}

/// How far an incoming transfer of a group got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// Chunks are arriving for a snapshot at this index.
    Receiving(u64),
    /// Everything is durably staged; the message is on its way to the driver.
    Staged(u64),
    /// The driver handed it to raft-rs; a round will install it.
    Claimed(u64),
}

/// A node's snapshot transfers, both ways: shared by its groups' storage,
/// its driver, and whoever carries the transfers.
pub struct Snapshots {
    pub(super) db: Arc<Database>,
    /// The round log, synced before staging is made durable.
    pub(super) wal: Arc<Mutex<Wal>>,
    /// A std lock: held to copy a value or update a map, never across I/O.
    limits: Mutex<SnapshotLimits>,
    /// Open sources by id, and the next id.
    sources: Mutex<(u64, SourceTable)>,
    /// Incoming transfers by group.
    pub(super) incoming: Mutex<BTreeMap<u64, Incoming>>,
    /// Counters.
    pub stats: SnapshotStats,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Snapshots {
    pub(super) fn new(db: Arc<Database>, wal: Arc<Mutex<Wal>>) -> Snapshots {
        Snapshots {
            db,
            wal,
            limits: Mutex::new(SnapshotLimits::default()),
            sources: Mutex::new((1, BTreeMap::new())),
            incoming: Mutex::default(),
            stats: SnapshotStats::default(),
        }
    }

    /// The current bounds.
    pub fn limits(&self) -> SnapshotLimits {
        *lock(&self.limits)
    }

    /// Sets the bounds (at start, or in tests to make chunks small).
    pub fn set_limits(&self, limits: SnapshotLimits) {
        assert!(
            limits.chunk_bytes > 0,
            "snapshot chunks must hold something"
        );
        *lock(&self.limits) = limits;
    }

    /// Opens a source for `group`'s state as `overlay` and redb hold it now,
    /// for the peer `to`, replacing that peer's older source of the group.
    /// `None` when every source is taken. Call it where no flush can be
    /// between its redb commit and the overlay's change (the driver thread).
    pub(crate) fn open_source(
        &self,
        overlay: &SharedOverlay,
        group: GroupId,
        to: u64,
    ) -> Result<Option<u64>> {
        let limits = self.limits();
        let mut sources = lock(&self.sources);
        let now = Instant::now();
        sources.1.retain(|_, s| {
            let s = lock(s);
            s.expires > now && !(s.group == group && s.to == to)
        });
        if sources.1.len() >= limits.sends {
            self.stats.sources_busy.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        let source = {
            let o = overlay.lock();
            let txn = self.db.begin_read()?;
            let mut copy = GroupOverlay::default();
            if let Some(g) = o.groups.get(&group.0) {
                copy.rows = g.rows.clone();
                copy.sessions = g.sessions.clone();
            }
            Source {
                group,
                to,
                kv: Rows::open(&txn)?,
                sessions: txn.open_table(SESSIONS)?,
                overlay: copy,
                expires: now + limits.source_ttl,
            }
        };
        let id = sources.0;
        sources.0 += 1;
        sources.1.insert(id, Arc::new(Mutex::new(source)));
        self.stats.sources.fetch_add(1, Ordering::Relaxed);
        Ok(Some(id))
    }

    /// Sources open now.
    pub fn open_sources(&self) -> usize {
        lock(&self.sources).1.len()
    }

    /// Drops the source a snapshot's `data` names, if any: the snapshot will
    /// not be carried.
    pub fn abandon(&self, data: &[u8]) {
        if let Ok(d) = SnapshotDescriptor::decode(data) {
            self.close_source(d.source);
        }
    }

    /// Drops a source (its transfer ended, well or not).
    pub fn close_source(&self, id: u64) {
        lock(&self.sources).1.remove(&id);
    }

    /// Reads the chunk of source `id` that starts at `from`. An error when
    /// the source is gone (expired, replaced or closed): the transfer must
    /// start again from a new snapshot. Reads redb: call it off the driver
    /// thread.
    pub fn read_chunk(&self, id: u64, from: &ChunkCursor) -> Result<SnapshotChunk> {
        let limits = self.limits();
        let source = lock(&self.sources)
            .1
            .get(&id)
            .cloned()
            .ok_or_else(|| Error::Invalid(format!("snapshot source {id} is gone")))?;
        let mut s = lock(&source);
        s.expires = Instant::now() + limits.source_ttl;
        let chunk = read_chunk(&s, from, limits.chunk_bytes)?;
        self.stats.chunks_sent.fetch_add(1, Ordering::Relaxed);
        let bytes = chunk.bytes() as u64;
        self.stats.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
        Ok(chunk)
    }
}

/// Reads up to `budget` bytes of rows and sessions of `s` from `from`.
fn read_chunk(s: &Source, from: &ChunkCursor, budget: usize) -> Result<SnapshotChunk> {
    let g = s.group.0;
    let mut chunk = SnapshotChunk::default();
    let mut used = 0usize;
    // Whether one more item of `size` bytes fits (one always does).
    let mut fits = |size: usize, empty: bool| {
        if !empty && used + size > budget {
            return false;
        }
        used += size;
        true
    };
    let first_client = match from {
        ChunkCursor::Rows(start) => {
            let rows = super::view::group_rows_in(&s.kv, Some(&s.overlay), s.group, start, None)?;
            for row in rows {
                let (key, value) = row?;
                if !fits(
                    key.len() + value.len() + ITEM_OVERHEAD,
                    chunk.rows.is_empty(),
                ) {
                    chunk.next = Some(ChunkCursor::Rows(key));
                    return Ok(chunk);
                }
                chunk.rows.push((key, value));
            }
            0
        }
        ChunkCursor::Sessions(client) => *client,
    };
    let base = s.sessions.range((g, first_client)..(g + 1, 0))?.map(|row| {
        let (k, v) = row?;
        Ok((k.value().1, v.value().to_vec()))
    });
    let over = s
        .overlay
        .sessions
        .range(first_client..)
        .map(|(c, v)| (*c, v.clone()));
    for row in Merged::new(base, over) {
        let (client, session) = row?;
        let empty = chunk.rows.is_empty() && chunk.sessions.is_empty();
        if !fits(session.len() + ITEM_OVERHEAD, empty) {
            chunk.next = Some(ChunkCursor::Sessions(client));
            return Ok(chunk);
        }
        chunk.sessions.push((client, session));
    }
    Ok(chunk)
}

/// Carries the snapshot `data` describes of `group` from `from`'s source
/// into `to`'s staging, chunk by chunk, and closes the source: the whole
/// transfer, synchronously (the simulation and the in-process cluster
/// carry snapshots this way; the QUIC transport runs the same steps over a
/// stream). On success `to` may be handed the snapshot message.
pub fn copy_snapshot(
    from: &Snapshots,
    to: &Snapshots,
    group: GroupId,
    index: u64,
    data: &[u8],
) -> Result<()> {
    let desc = SnapshotDescriptor::decode(data)?;
    if !desc.streamed() {
        return Ok(());
    }
    if let Err(e) = to.begin_receive(group, index) {
        from.close_source(desc.source);
        return Err(e);
    }
    let copied = (|| {
        let mut cursor = ChunkCursor::start();
        loop {
            let chunk = from.read_chunk(desc.source, &cursor)?;
            to.stage_chunk(group, &chunk)?;
            match chunk.next {
                Some(next) => cursor = next,
                None => break,
            }
        }
        to.finish_receive(group, index)
    })();
    from.close_source(desc.source);
    if copied.is_err() {
        to.abort_receive(group);
    }
    copied
}
