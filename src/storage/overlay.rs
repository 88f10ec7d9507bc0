//! Applied state that has not been written to redb yet.
//!
//! Applying an entry changes a KV row, the writer's client session and the
//! group's apply index. Written to redb in the round that applied them,
//! every key costs a copied B-tree leaf per round, and with keys spread over
//! the key space that copying was the largest cost of a round. So data
//! groups apply into this in-memory overlay instead, and the engine, on the
//! schedule `persist` keeps, writes groups' changes out with a round's
//! batch (a *flush*), when many changes to the same leaves cost one copy.
//!
//! Nothing acknowledged depends on the overlay: an entry is acknowledged
//! once it is committed, which means it is in the durable log of a quorum.
//! After a crash, redb holds the applied state and apply index of the last
//! flush, and the node re-applies the entries after it from its own log;
//! compaction never removes an entry past the flushed apply index (see
//! `GroupStorage::flushed`). Reads, scans, snapshots and checksums see redb
//! and the overlay merged, the overlay winning.
//!
//! The catalog group never uses the overlay: catalog changes must be on
//! disk before their effects.

use std::collections::BTreeMap;
use std::iter::Peekable;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::Result;

/// Bytes a row costs beyond its key and value (map node, lengths).
const ROW_OVERHEAD: usize = 64;

/// Memory the copies of flushed sessions may take (see
/// [`Overlay::remember_flushed`]); past it they are all dropped.
pub(crate) const CLEAN_SESSION_BYTES: usize = 32 * 1024 * 1024;

/// One group's unflushed applied state.
#[derive(Debug, Default)]
pub(crate) struct GroupOverlay {
    /// Key → new value, or `None` for a deleted key.
    pub(crate) rows: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Client → encoded session, or `None` for an evicted one.
    pub(crate) sessions: BTreeMap<u64, Option<Vec<u8>>>,
    /// The apply index these changes bring the group to.
    pub(crate) applied: Option<u64>,
    /// The overlay round in which the group's first unflushed change was made.
    pub(crate) since: u64,
    /// Approximate memory held by this group's changes.
    pub(crate) bytes: usize,
}

/// Every data group's unflushed applied state on a node.
#[derive(Debug, Default)]
pub(crate) struct Overlay {
    pub(crate) groups: BTreeMap<u64, GroupOverlay>,
    /// Approximate memory held, for the flush threshold.
    pub(crate) bytes: usize,
    /// Rounds counted so far (see [`Overlay::next_round`]); ages groups.
    pub(crate) round: u64,
    /// Sessions as their group's last flush wrote them to redb, by (group,
    /// client): redb holds the same bytes, so the client's next command
    /// need not read them back from there. Not part of the unflushed
    /// state (`groups`, `bytes`): dropping them loses nothing.
    clean_sessions: BTreeMap<(u64, u64), Vec<u8>>,
    /// Approximate memory held by `clean_sessions`.
    clean_bytes: usize,
}

impl Overlay {
    pub(crate) fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The overlay's value for a key: `Some(Some(v))` a value, `Some(None)`
    /// deleted, `None` not in the overlay (redb knows).
    pub(crate) fn row(&self, group: u64, key: &[u8]) -> Option<Option<&[u8]>> {
        self.groups.get(&group)?.rows.get(key).map(|v| v.as_deref())
    }

    /// A session changed since the last flush (`Some(None)`: evicted), or
    /// else as the last flush wrote it; `None`: ask redb.
    pub(crate) fn session(&self, group: u64, client: u64) -> Option<Option<&[u8]>> {
        match self
            .groups
            .get(&group)
            .and_then(|o| o.sessions.get(&client))
        {
            Some(changed) => Some(changed.as_deref()),
            None => self
                .clean_sessions
                .get(&(group, client))
                .map(|s| Some(s.as_slice())),
        }
    }

    /// Keeps the sessions a flush of `group` just staged for redb, so that
    /// the next command of each client finds its session here rather than
    /// reading and decoding it from redb (with 1,024 clients writing to 32
    /// groups, session lookups took a tenth of the driver's time). An
    /// evicted session's copy goes. Bounded: past [`CLEAN_SESSION_BYTES`]
    /// every kept copy is dropped.
    pub(crate) fn remember_flushed(
        &mut self,
        group: u64,
        sessions: BTreeMap<u64, Option<Vec<u8>>>,
    ) {
        for (client, session) in sessions {
            let Some(session) = session else {
                if let Some(old) = self.clean_sessions.remove(&(group, client)) {
                    self.clean_bytes -= ROW_OVERHEAD + old.len();
                }
                continue;
            };
            let bytes = ROW_OVERHEAD + session.len();
            if self.clean_bytes + bytes > CLEAN_SESSION_BYTES {
                self.clean_sessions.clear();
                self.clean_bytes = 0;
            }
            self.clean_bytes += bytes;
            if let Some(old) = self.clean_sessions.insert((group, client), session) {
                self.clean_bytes -= ROW_OVERHEAD + old.len();
            }
        }
    }

    pub(crate) fn applied(&self, group: u64) -> Option<u64> {
        self.groups.get(&group)?.applied
    }

    /// Counts a round; groups age by rounds.
    pub(crate) fn next_round(&mut self) {
        self.round += 1;
    }

    /// A group's changes, started in this round if it had none.
    fn group_mut(&mut self, group: u64, bytes: usize) -> &mut GroupOverlay {
        let round = self.round;
        self.bytes += bytes;
        let o = self.groups.entry(group).or_insert_with(|| GroupOverlay {
            since: round,
            ..GroupOverlay::default()
        });
        o.bytes += bytes;
        o
    }

    pub(crate) fn put_row(&mut self, group: u64, key: &[u8], value: Option<&[u8]>) {
        let bytes = ROW_OVERHEAD + key.len() + value.map_or(0, <[u8]>::len);
        let rows = &mut self.group_mut(group, bytes).rows;
        match (rows.get_mut(key), value) {
            // Reuse the key and the value's buffer of a row changed again.
            (Some(Some(old)), Some(v)) => {
                old.clear();
                old.extend_from_slice(v);
            }
            (Some(old), v) => *old = v.map(<[u8]>::to_vec),
            (None, v) => {
                rows.insert(key.to_vec(), v.map(<[u8]>::to_vec));
            }
        }
    }

    /// Sets a group's session of `client` (`None`: evicts it).
    pub(crate) fn put_session(&mut self, group: u64, client: u64, session: Option<Vec<u8>>) {
        let bytes = ROW_OVERHEAD + session.as_ref().map_or(0, Vec::len);
        self.group_mut(group, bytes)
            .sessions
            .insert(client, session);
    }

    pub(crate) fn set_applied(&mut self, group: u64, index: u64) {
        self.group_mut(group, 0).applied = Some(index);
    }

    /// Forgets a group's changes and its kept sessions (a snapshot replaced
    /// its whole state).
    pub(crate) fn discard(&mut self, group: u64) {
        if let Some(o) = self.groups.remove(&group) {
            self.bytes -= o.bytes;
        }
        let gone: Vec<(u64, u64)> = self
            .clean_sessions
            .range((group, 0)..=(group, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            if let Some(old) = self.clean_sessions.remove(&k) {
                self.clean_bytes -= ROW_OVERHEAD + old.len();
            }
        }
    }

    /// Takes everything, leaving the overlay empty.
    pub(crate) fn take(&mut self) -> BTreeMap<u64, GroupOverlay> {
        self.bytes = 0;
        std::mem::take(&mut self.groups)
    }

    /// Takes the changes of up to `max` groups whose first unflushed change
    /// is at least `age` rounds old, oldest first.
    pub(crate) fn take_aged(&mut self, age: u64, max: usize) -> BTreeMap<u64, GroupOverlay> {
        let mut aged: Vec<(u64, u64)> = self
            .groups
            .iter()
            .filter(|(_, o)| self.round.saturating_sub(o.since) >= age)
            .map(|(g, o)| (o.since, *g))
            .collect();
        aged.sort_unstable();
        let mut out = BTreeMap::new();
        for (_, g) in aged.into_iter().take(max) {
            if let Some(o) = self.groups.remove(&g) {
                self.bytes -= o.bytes;
                out.insert(g, o);
            }
        }
        out
    }
}

/// The overlay as the engine, its rounds and its groups share it. Only the
/// driver thread uses it; the lock is never held across a call into raft-rs.
#[derive(Clone, Debug, Default)]
pub(crate) struct SharedOverlay(Arc<Mutex<Overlay>>);

impl SharedOverlay {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Overlay> {
        // A panic while holding it stops the driver thread; what it left is
        // still the best state there is.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Rows of redb (`base`, in key order) with the overlay's changes for the
/// same range (`over`, in key order) laid on top: the overlay's value wins,
/// and its deletions hide redb's rows.
pub(crate) struct Merged<K, V, B, O>
where
    B: Iterator<Item = Result<(K, V)>>,
    O: Iterator<Item = (K, Option<V>)>,
{
    base: Peekable<B>,
    over: Peekable<O>,
}

impl<K, V, B, O> Merged<K, V, B, O>
where
    K: Ord,
    B: Iterator<Item = Result<(K, V)>>,
    O: Iterator<Item = (K, Option<V>)>,
{
    pub(crate) fn new(base: B, over: O) -> Self {
        Merged {
            base: base.peekable(),
            over: over.peekable(),
        }
    }
}

impl<K, V, B, O> Iterator for Merged<K, V, B, O>
where
    K: Ord,
    B: Iterator<Item = Result<(K, V)>>,
    O: Iterator<Item = (K, Option<V>)>,
{
    type Item = Result<(K, V)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let take_over = match (self.base.peek(), self.over.peek()) {
                (None, None) => return None,
                (Some(Err(_)), _) => return self.base.next(),
                (None, Some(_)) => true,
                (Some(_), None) => false,
                (Some(Ok((bk, _))), Some((ok, _))) => {
                    if ok == bk {
                        // The overlay replaces this row.
                        self.base.next();
                        true
                    } else {
                        ok < bk
                    }
                }
            };
            if !take_over {
                return self.base.next();
            }
            match self.over.next() {
                Some((k, Some(v))) => return Some(Ok((k, v))),
                // A deletion: the row is gone; look further.
                Some((_, None)) => continue,
                None => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(base: &[(u8, u8)], over: &[(u8, Option<u8>)]) -> Vec<(u8, u8)> {
        Merged::new(base.iter().map(|r| Ok(*r)), over.iter().copied())
            .collect::<Result<Vec<_>>>()
            .unwrap()
    }

    #[test]
    fn flushed_sessions_are_kept_until_a_snapshot_or_the_bound() {
        let mut o = Overlay::default();
        o.put_session(1, 7, Some(vec![1]));
        o.put_session(2, 7, Some(vec![2]));
        let mut taken = o.take();
        assert!(o.is_empty());
        assert_eq!(o.session(1, 7), None, "not kept until the flush says so");
        for (g, go) in std::mem::take(&mut taken) {
            o.remember_flushed(g, go.sessions);
        }
        assert!(o.is_empty(), "kept copies are not unflushed state");
        assert_eq!(o.bytes, 0);
        assert_eq!(o.session(1, 7), Some(Some(&[1u8][..])));
        assert_eq!(o.session(2, 7), Some(Some(&[2u8][..])));
        // A newer, unflushed session wins over the kept copy.
        o.put_session(1, 7, Some(vec![9]));
        assert_eq!(o.session(1, 7), Some(Some(&[9u8][..])));
        // A snapshot replaces group 1's state: nothing of it is kept.
        o.discard(1);
        assert_eq!(o.session(1, 7), None);
        assert_eq!(o.session(2, 7), Some(Some(&[2u8][..])));
        // Past the bound every kept copy goes, then filling starts again.
        let big = CLEAN_SESSION_BYTES / 2;
        o.remember_flushed(
            3,
            BTreeMap::from([(1, Some(vec![0; big])), (2, Some(vec![0; big]))]),
        );
        assert_eq!(o.session(2, 7), None, "dropped at the bound");
        assert_eq!(o.session(3, 1), None, "dropped at the bound");
        assert_eq!(o.session(3, 2).flatten().map(<[u8]>::len), Some(big));
        assert!(o.clean_bytes <= CLEAN_SESSION_BYTES);
    }

    #[test]
    fn an_evicted_session_hides_redb_and_its_kept_copy_goes() {
        let mut o = Overlay::default();
        o.put_session(1, 7, Some(vec![1; 10]));
        for (g, go) in o.take() {
            o.remember_flushed(g, go.sessions);
        }
        let kept = o.clean_bytes;
        assert_eq!(kept, ROW_OVERHEAD + 10);
        o.put_session(1, 7, None);
        assert_eq!(o.session(1, 7), Some(None), "evicted, whatever redb holds");
        for (g, go) in o.take() {
            o.remember_flushed(g, go.sessions);
        }
        assert_eq!(o.session(1, 7), None, "redb now knows");
        assert_eq!(o.clean_bytes, 0, "the kept copy's bytes are given back");
    }

    #[test]
    fn overlay_rows_replace_add_and_delete() {
        let base = [(1, 10), (3, 30), (5, 50), (7, 70)];
        let over = [
            (0, Some(1)),
            (3, None),
            (5, Some(55)),
            (6, Some(66)),
            (9, None),
        ];
        assert_eq!(
            merged(&base, &over),
            vec![(0, 1), (1, 10), (5, 55), (6, 66), (7, 70)]
        );
        assert_eq!(merged(&base, &[]), base.to_vec());
        assert_eq!(merged(&[], &[(2, Some(2)), (4, None)]), vec![(2, 2)]);
    }

    #[test]
    fn a_base_error_is_passed_on() {
        let base = vec![
            Ok((1u8, 1u8)),
            Err(crate::error::Error::Invalid("disk".into())),
        ];
        let out: Vec<_> = Merged::new(base.into_iter(), std::iter::empty()).collect();
        assert!(out[0].is_ok());
        assert!(out[1].is_err());
    }

    #[test]
    fn bytes_grow_with_rows_and_reset_on_take() {
        let mut o = Overlay::default();
        o.put_row(1, b"k", Some(&[0u8; 100]));
        o.put_session(1, 7, Some(vec![0; 10]));
        o.set_applied(1, 9);
        assert!(o.bytes >= 111);
        assert_eq!(o.row(1, b"k").map(|v| v.map(<[u8]>::len)), Some(Some(100)));
        assert_eq!(o.row(2, b"k"), None);
        assert_eq!(o.applied(1), Some(9));
        let taken = o.take();
        assert_eq!(taken.len(), 1);
        assert!(o.is_empty());
        assert_eq!(o.bytes, 0);
    }

    #[test]
    fn aged_groups_are_taken_oldest_first_and_at_most_max() {
        let mut o = Overlay::default();
        for g in [3, 1, 2] {
            o.put_row(g, b"k", Some(b"v"));
            o.next_round();
        }
        o.put_row(4, b"k", Some(b"v"));
        // Ages now: group 3 is 3 rounds old, 1 is 2, 2 is 1, 4 is 0.
        let taken = o.take_aged(1, 2);
        assert_eq!(taken.keys().copied().collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(
            o.take_aged(1, 9).keys().copied().collect::<Vec<_>>(),
            vec![2]
        );
        assert!(o.take_aged(1, 9).is_empty(), "group 4 is too young");
        let left = o.bytes;
        assert!(left > 0);
        o.discard(4);
        assert_eq!(o.bytes, 0);
        assert!(o.is_empty());
    }

    #[test]
    fn a_row_changed_again_keeps_only_its_last_value() {
        let mut o = Overlay::default();
        o.put_row(1, b"k", Some(b"one"));
        o.put_row(1, b"k", Some(b"three"));
        assert_eq!(o.row(1, b"k"), Some(Some(&b"three"[..])));
        o.put_row(1, b"k", None);
        assert_eq!(o.row(1, b"k"), Some(None));
        o.put_row(1, b"k", Some(b"4"));
        assert_eq!(o.row(1, b"k"), Some(Some(&b"4"[..])));
        assert_eq!(o.groups[&1].rows.len(), 1);
    }
}
