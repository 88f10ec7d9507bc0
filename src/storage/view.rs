//! The merged read view: redb's committed rows with the overlay's laid
//! over them, the overlay winning (see `overlay`).
//!
//! Reads, checksums and snapshots all go through the helpers here, and
//! scans through the same merge (`scan`, which reads away from the
//! driver), so a row reads the same wherever it is asked for: a deleted
//! key in the overlay hides redb's row, and an overlay row replaces it.

use std::collections::BTreeMap;
use std::ops::Bound;

use redb::{ReadableDatabase, ReadableTable};
use xxhash_rust::xxh3::Xxh3;

use super::overlay::{self, GroupOverlay, Merged};
use super::schema::{APPLIED, CHECKSUMS, SESSIONS};
use super::values::Rows;
use super::Engine;
use crate::error::Result;
use crate::kv::{SessionTable, TABLE_KEY};
use crate::types::GroupId;

impl Engine {
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
        let rows = Rows::open(&self.db.begin_read()?)?;
        let o = self.overlay.lock();
        keys.iter()
            .map(|(g, k)| row_value(&rows, &o, *g, k))
            .collect()
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
            &Rows::open(&txn)?,
            &txn.open_table(SESSIONS)?,
            o.groups.get(&group.0),
            group,
        )?;
        Ok((applied, digest))
    }

    /// A group's session totals as applied, and the number of sessions it
    /// holds, counted row by row (the totals' own count must agree).
    pub fn sessions_of(&self, group: GroupId) -> Result<(SessionTable, u64)> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(SESSIONS)?;
        let o = self.overlay.lock();
        let mut table = SessionTable::default();
        let mut count = 0;
        for row in group_sessions(&t, o.groups.get(&group.0), group)? {
            let (client, bytes) = row?;
            if client == TABLE_KEY {
                table = crate::wire::decode("session table", &bytes)?;
            } else {
                count += 1;
            }
        }
        Ok((table, count))
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
    kv: &Rows,
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
    kv: &'a Rows,
    overlay: Option<&'a GroupOverlay>,
    group: GroupId,
) -> Result<impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + 'a> {
    group_rows_in(kv, overlay, group, &[], None)
}

/// The KV rows of a group with `start <= key < end` (no upper bound without
/// `end`), redb and overlay merged, in key order.
pub(crate) fn group_rows_in<'a>(
    kv: &'a Rows,
    overlay: Option<&'a GroupOverlay>,
    group: GroupId,
    start: &'a [u8],
    end: Option<&'a [u8]>,
) -> Result<impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + 'a> {
    let g = group.0;
    // An empty range (redb refuses a range whose end precedes its start).
    let end = end.map(|e| e.max(start));
    let base = kv.range(g, start, end)?.map(move |row| {
        let (k, v) = row?;
        let value = kv.read(g, &k, &v)?;
        Ok((k, value))
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
    kv: &Rows,
    overlay: &overlay::Overlay,
    group: GroupId,
    key: &[u8],
) -> Result<Option<Vec<u8>>> {
    match overlay.row(group.0, key) {
        Some(v) => Ok(v.map(<[u8]>::to_vec)),
        None => kv.get(group.0, key),
    }
}

/// Every client session row of a group, redb and overlay merged, by
/// client (key `kv::TABLE_KEY` first: the group's session totals).
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
        .map(|(c, s)| (*c, s.clone()));
    Ok(Merged::new(base, over))
}
