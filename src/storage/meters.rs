//! What a node's storage shows its operators while the driver owns the
//! engine.
//!
//! The engine lives on the driver thread; [`Meters`] holds the shared
//! parts an exporter reads from another thread: the counters and
//! histograms ([`Stats`], [`SnapshotStats`]), the entry cache's and the
//! overlay's byte totals, and each group's session totals. Counters are
//! atomics; the overlay's total is read under its lock (one short hold
//! per scrape); a group's session totals come from its session table row,
//! in the overlay or else in a redb read transaction, never from a scan of
//! its sessions. The database is held weakly (through the snapshot
//! transfers, which hold it): these figures must not keep a stopped node's
//! database open, so that it can open again in the same process.

use std::sync::{Arc, Weak};

use redb::ReadableDatabase;

use super::cache::EntryCache;
use super::overlay::SharedOverlay;
use super::schema::SESSIONS;
use super::{Engine, SnapshotStats, Snapshots, Stats};
use crate::error::Result;
use crate::kv::{SessionTable, TABLE_KEY};
use crate::types::GroupId;

/// A handle on a node's storage figures. Cheap to clone.
#[derive(Clone)]
pub struct Meters {
    stats: Arc<Stats>,
    cache: Arc<EntryCache>,
    overlay: SharedOverlay,
    /// The transfers and, through them, the database; gone once the
    /// engine is.
    snapshots: Weak<Snapshots>,
}

impl Engine {
    /// The storage's figures, readable from any thread.
    pub fn meters(&self) -> Meters {
        Meters {
            stats: self.stats.clone(),
            cache: self.cache.clone(),
            overlay: self.overlay.clone(),
            snapshots: Arc::downgrade(&self.snapshots),
        }
    }
}

impl Meters {
    /// The engine's counters and histograms.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Reads the snapshot transfers' counters, while the engine exists.
    pub fn snapshots<T>(&self, read: impl FnOnce(&SnapshotStats) -> T) -> Option<T> {
        self.snapshots.upgrade().map(|s| read(&s.stats))
    }

    /// Bytes of Raft log entries held in memory, over all groups.
    pub fn entry_cache_bytes(&self) -> u64 {
        self.cache.used() as u64
    }

    /// Approximate bytes of applied state not yet flushed to redb.
    pub fn overlay_bytes(&self) -> u64 {
        self.overlay.lock().bytes as u64
    }

    /// Client sessions `group` holds, from its session table (0 for a group
    /// that never had one, or once the engine is gone).
    pub fn sessions(&self, group: GroupId) -> Result<u64> {
        let cached = self
            .overlay
            .lock()
            .session(group.0, TABLE_KEY)
            .map(|row| row.map(<[u8]>::to_vec));
        let row = match cached {
            Some(row) => row,
            None => {
                let Some(snapshots) = self.snapshots.upgrade() else {
                    return Ok(0);
                };
                let txn = snapshots.db.begin_read()?;
                let table = txn.open_table(SESSIONS)?;
                table.get((group.0, TABLE_KEY))?.map(|v| v.value().to_vec())
            }
        };
        Ok(match row {
            Some(bytes) => crate::wire::decode::<SessionTable>("session table", &bytes)?.count,
            None => 0,
        })
    }
}
