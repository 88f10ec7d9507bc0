//! The receiving end of a streamed snapshot: staging tables, and the one
//! transaction that switches a group over to what they hold (see
//! `snapshot` for the whole path).
//!
//! Chunks are written in transactions of their own, committed without a
//! sync, into tables no read path looks at. The last step commits with a
//! sync, after syncing the round log as far as redb then reaches: redb
//! must never be durably ahead of the round log (see `checkpoint`). Only
//! then does the snapshot message go to the driver, so a round log record
//! holding `InstallStaged` always finds its staging on disk, and replaying
//! it after a crash installs it. Opening a node drops every staging left
//! after the replay: those transfers were never installed, and the leader
//! sends them again.

use std::sync::atomic::Ordering;

use redb::{Database, Durability, ReadableTable, TableDefinition, WriteTransaction};

use super::redo::Tables;
use super::schema::{begin_write, META, META_WAL_APPLIED};
use super::snapshot::{lock, Incoming, SnapshotChunk, Snapshots};
use super::values::{self, STAGED_CHUNKS};
use super::{bytes_u64, io_error};
use crate::error::{Error, Result};
use crate::types::GroupId;

/// Per group being received or staged: (snapshot index, 1 once every chunk
/// is staged and synced, else 0).
pub(crate) const STAGED: TableDefinition<u64, (u64, u64)> = TableDefinition::new("snapshot_staged");
/// Staged KV rows: (group, key) → head row, its chunks in
/// `values::STAGED_CHUNKS` (see `values`).
pub(crate) const STAGED_KV: TableDefinition<(u64, &[u8]), &[u8]> =
    TableDefinition::new("snapshot_staged_kv");
/// Staged sessions: (group, client) → rkyv `kv::Session`.
pub(crate) const STAGED_SESSIONS: TableDefinition<(u64, u64), &[u8]> =
    TableDefinition::new("snapshot_staged_sessions");

/// Creates the staging tables and empties them: what a node opening finds
/// there was never installed (run after the round log's replay).
pub(super) fn reset(db: &Database) -> Result<()> {
    let txn = unsynced(db)?;
    txn.open_table(STAGED)?.retain(|_, _| false)?;
    txn.open_table(STAGED_KV)?.retain(|_, _| false)?;
    txn.open_table(STAGED_CHUNKS)?.retain(|_, _| false)?;
    txn.open_table(STAGED_SESSIONS)?.retain(|_, _| false)?;
    txn.commit()?;
    Ok(())
}

/// A write transaction that commits without a sync: what it stages is
/// made durable by [`Snapshots::finish_receive`], or not needed after a
/// crash.
fn unsynced(db: &Database) -> Result<WriteTransaction> {
    let mut txn = begin_write(db)?;
    txn.set_durability(Durability::None)
        .map_err(|e| Error::Invalid(format!("staging durability: {e}")))?;
    Ok(txn)
}

/// Removes a group's staging in `txn`.
fn clear(txn: &WriteTransaction, group: u64) -> Result<()> {
    txn.open_table(STAGED)?.remove(group)?;
    values::clear(
        &mut txn.open_table(STAGED_KV)?,
        &mut txn.open_table(STAGED_CHUNKS)?,
        group,
    )?;
    txn.open_table(STAGED_SESSIONS)?
        .retain_in((group, 0)..(group + 1, 0), |_, _| false)?;
    Ok(())
}

/// The `InstallStaged` op: replaces `group`'s rows and sessions with its
/// complete staging for `index`, and drops the staging. The op is only
/// ever staged for a staging the driver claimed, which is on disk until
/// this commits: anything else is a bug, reported as corrupt.
pub(super) fn install(t: &mut Tables<'_>, group: u64, index: u64) -> Result<()> {
    let staged = t.staged.get(group)?.map(|v| v.value());
    if staged != Some((index, 1)) {
        return Err(Error::Corrupt {
            what: "snapshot staging",
            detail: format!("group {group}: installing {index}, staging holds {staged:?}"),
        });
    }
    values::clear(&mut t.kv, &mut t.chunks, group)?;
    t.sessions
        .retain_in((group, 0)..(group + 1, 0), |_, _| false)?;
    values::move_group(
        (&mut t.staged_kv, &mut t.staged_chunks),
        (&mut t.kv, &mut t.chunks),
        group,
    )?;
    for row in t.staged_sessions.range((group, 0)..(group + 1, 0))? {
        let (k, v) = row?;
        t.sessions.insert((group, k.value().1), v.value())?;
    }
    t.staged_sessions
        .retain_in((group, 0)..(group + 1, 0), |_, _| false)?;
    t.staged.remove(group)?;
    Ok(())
}

impl Snapshots {
    /// Starts receiving `group`'s snapshot at `index`, replacing any
    /// unclaimed staging of the group. Refused (retry later) while the
    /// group is being received or its staging is claimed, or when the
    /// node receives as many transfers as it may.
    pub fn begin_receive(&self, group: GroupId, index: u64) -> Result<()> {
        let receives = self.limits().receives;
        {
            let mut incoming = lock(&self.incoming);
            let busy = incoming
                .values()
                .filter(|i| matches!(i, Incoming::Receiving(_)))
                .count();
            let refusal = match incoming.get(&group.0) {
                Some(Incoming::Receiving(_)) => Some("it is being received"),
                Some(Incoming::Claimed(_)) => Some("its last snapshot awaits its install"),
                _ if busy >= receives => Some("the node receives as many as it may"),
                _ => None,
            };
            if let Some(why) = refusal {
                self.stats.receives_refused.fetch_add(1, Ordering::Relaxed);
                return Err(Error::Unreachable(format!(
                    "snapshot of {group} refused: {why}"
                )));
            }
            incoming.insert(group.0, Incoming::Receiving(index));
        }
        let begun = (|| {
            let txn = unsynced(&self.db)?;
            clear(&txn, group.0)?;
            txn.open_table(STAGED)?.insert(group.0, (index, 0))?;
            txn.commit()?;
            Ok(())
        })();
        if begun.is_err() {
            lock(&self.incoming).remove(&group.0);
        }
        begun
    }

    fn expect(&self, group: GroupId, want: Incoming) -> Result<()> {
        match lock(&self.incoming).get(&group.0) {
            Some(i) if *i == want => Ok(()),
            other => Err(Error::Invalid(format!(
                "snapshot of {group}: expected {want:?}, found {other:?}"
            ))),
        }
    }

    fn receiving(&self, group: GroupId) -> Result<u64> {
        match lock(&self.incoming).get(&group.0) {
            Some(Incoming::Receiving(index)) => Ok(*index),
            other => Err(Error::Invalid(format!(
                "snapshot of {group} is not being received ({other:?})"
            ))),
        }
    }

    /// Writes one chunk into `group`'s staging (not durably yet).
    pub fn stage_chunk(&self, group: GroupId, chunk: &SnapshotChunk) -> Result<()> {
        self.receiving(group)?;
        let g = group.0;
        let txn = unsynced(&self.db)?;
        {
            let mut kv = txn.open_table(STAGED_KV)?;
            let mut chunks = txn.open_table(STAGED_CHUNKS)?;
            for (k, v) in &chunk.rows {
                values::put(&mut kv, &mut chunks, g, k, v)?;
            }
            let mut sessions = txn.open_table(STAGED_SESSIONS)?;
            for (c, s) in &chunk.sessions {
                sessions.insert((g, *c), s.as_slice())?;
            }
        }
        txn.commit()?;
        self.stats.chunks_staged.fetch_add(1, Ordering::Relaxed);
        let bytes = chunk.bytes() as u64;
        self.stats.bytes_staged.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Marks `group`'s staging complete and makes it durable; the snapshot
    /// message may go to the driver once this returns.
    pub fn finish_receive(&self, group: GroupId, index: u64) -> Result<()> {
        self.expect(group, Incoming::Receiving(index))?;
        let txn = begin_write(&self.db)?;
        txn.open_table(STAGED)?.insert(group.0, (index, 1))?;
        let reaches = txn
            .open_table(META)?
            .get(META_WAL_APPLIED)?
            .map(|v| bytes_u64("round log position", v.value()))
            .transpose()?
            .unwrap_or(0);
        lock(&self.wal).sync_through(reaches).map_err(io_error)?;
        txn.commit()?;
        lock(&self.incoming).insert(group.0, Incoming::Staged(index));
        Ok(())
    }

    /// Gives up receiving `group` (the sender went away, or a chunk did not
    /// stage) and drops what was staged.
    pub fn abort_receive(&self, group: GroupId) {
        {
            let mut incoming = lock(&self.incoming);
            if !matches!(incoming.get(&group.0), Some(Incoming::Receiving(_))) {
                return;
            }
            incoming.remove(&group.0);
        }
        self.drop_staging(group);
    }

    fn drop_staging(&self, group: GroupId) {
        let dropped = (|| {
            let txn = unsynced(&self.db)?;
            clear(&txn, group.0)?;
            txn.commit()?;
            Ok::<_, Error>(())
        })();
        if let Err(e) = dropped {
            // Left for the next transfer of the group or the next open.
            tracing::warn!(group_id = group.0, error = %e, "snapshot staging not dropped");
        }
    }

    /// Called by the driver before it hands a snapshot message at `index`
    /// to raft-rs: whether its state is durably staged. Once claimed, no
    /// other transfer replaces the staging until [`Self::settle`].
    pub fn claim(&self, group: GroupId, index: u64) -> bool {
        let mut incoming = lock(&self.incoming);
        if incoming.get(&group.0) == Some(&Incoming::Staged(index)) {
            incoming.insert(group.0, Incoming::Claimed(index));
            return true;
        }
        false
    }

    /// Ends a claim: once raft-rs refused the snapshot (`installed` false;
    /// the staging is dropped), or once the round that installed it is
    /// persisted.
    pub fn settle(&self, group: GroupId, installed: bool) {
        let claimed = matches!(
            lock(&self.incoming).get(&group.0),
            Some(Incoming::Claimed(_))
        );
        if installed && claimed {
            self.stats.installs.fetch_add(1, Ordering::Relaxed);
        } else if claimed {
            // Dropped while still claimed, so no new transfer of the group
            // starts staging in between.
            self.drop_staging(group);
        }
        lock(&self.incoming).remove(&group.0);
    }
}
