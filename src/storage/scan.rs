//! Paged scans read away from the driver: a [`ScanRead`] is taken on the
//! driver thread and read on any other.
//!
//! A page is the merged view of `view` (redb's rows, the overlay's laid
//! over them) for one group's range, bounded twice: by a row count and by
//! a byte budget of keys plus values. A row that alone exceeds the budget
//! still makes a page of its own, so a caller always gets somewhere. Each
//! page says where the next one starts (its *resume key*: the first key it
//! left out, or none when the range is exhausted), so pages never lose or
//! repeat a row.
//!
//! Reading a page's rows from redb is the cost worth moving off the driver
//! thread (megabytes of values, perhaps from disk), but the state it reads
//! must be one the group was in, not a mix. The driver mutates that state
//! in steps that are only whole between rounds: an apply changes rows one
//! at a time, and a flush takes a group's rows out of the overlay before
//! the round's redb commit puts them in. So [`Engine::scan_read`] is
//! called by the driver between rounds and does the cheap part there: it
//! begins a redb read transaction (a snapshot of the committed tables) and
//! copies the overlay's rows of the range, under the overlay's lock. The
//! copy stops after as many rows or bytes as one page can use, so the time
//! it takes is bounded by the page budget, not by the overlay; the page
//! then ends, at the latest, at the first overlay row left out. Everything
//! else happens in [`ScanRead::page`], on whatever thread the caller picks,
//! while the driver goes on: later rounds change neither the transaction's
//! snapshot nor the copy.
//!
//! Left out: a scan that is one snapshot across pages. Each page is a read
//! of its own (linearizable when the driver took it after a ReadIndex
//! confirm), so rows written between two pages show up in the later page
//! if they fall in its range.

use std::fmt;
use std::ops::Bound;
use std::sync::Arc;

use redb::ReadableDatabase;

use super::overlay::Merged;
use super::values::{Rows, Stored};
use super::Engine;
use crate::error::Result;
use crate::types::GroupId;

/// Bytes of keys plus values a scan page holds at most (unless its one row
/// is larger): a few round trips' worth of data per request, far below the
/// frame limit, and what a node holds per page being served.
pub const SCAN_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// Rows of one group's range, in key order, and where the next page
/// starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanPage {
    /// The rows.
    pub rows: Vec<(Vec<u8>, Vec<u8>)>,
    /// The first key left out: ask for the next page from here. None: the
    /// range is exhausted.
    pub resume: Option<Vec<u8>>,
}

/// A consistent read of one page of a group's range, taken between driver
/// rounds (see the module essay). Cheap to clone; [`ScanRead::page`] reads
/// it, on any thread.
#[derive(Clone)]
pub struct ScanRead(Arc<Taken>);

/// What [`Engine::scan_read`] took.
struct Taken {
    /// redb's KV table as of the read transaction begun under the overlay
    /// lock; it keeps that transaction's snapshot alive.
    kv: Rows,
    group: GroupId,
    start: Vec<u8>,
    /// Where redb's rows are read up to (exclusive): the range's end, or
    /// `unread`, whichever comes first; none: the end of the group.
    stop: Option<Vec<u8>>,
    /// The overlay's first row in the range that was not copied: the page
    /// ends there at the latest. None: every overlay row in it was copied.
    unread: Option<Vec<u8>>,
    /// The overlay's rows of `start..stop`, in key order; `None`: deleted.
    overlay: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    limit: usize,
    budget: usize,
}

impl Engine {
    /// Takes a read of one page of `group` from `start` to `end` (exclusive;
    /// none: the end of the group) holding at most `limit` rows (0 is taken
    /// as 1) and `budget` bytes of keys and values. The driver calls this
    /// between rounds; see the module essay.
    pub fn scan_read(
        &self,
        group: GroupId,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        budget: usize,
    ) -> Result<ScanRead> {
        let limit = limit.max(1);
        // An empty range when the end precedes the start.
        let end = end.map(|e| e.max(start));
        let bounds = (
            Bound::Included(start),
            end.map_or(Bound::Unbounded, Bound::Excluded),
        );
        // The transaction begins under the lock, so the copy and the
        // snapshot are of the same moment whoever else holds the lock.
        let o = self.overlay.lock();
        let kv = Rows::open(&self.db.begin_read()?)?;
        let mut overlay = Vec::new();
        let mut unread = None;
        let (mut rows, mut bytes) = (0, 0);
        let slice = o.groups.get(&group.0).into_iter();
        for (k, v) in slice.flat_map(|g| g.rows.range::<[u8], _>(bounds)) {
            // Past this many rows or bytes the page is full before the
            // copied rows run out.
            if rows >= limit || bytes >= budget {
                unread = Some(k.clone());
                break;
            }
            rows += usize::from(v.is_some());
            bytes += k.len() + v.as_ref().map_or(0, Vec::len);
            overlay.push((k.clone(), v.clone()));
        }
        drop(o);
        let stop = unread.clone().or_else(|| end.map(<[u8]>::to_vec));
        Ok(ScanRead(Arc::new(Taken {
            kv,
            group,
            start: start.to_vec(),
            stop,
            unread,
            overlay,
            limit,
            budget,
        })))
    }

    /// Up to `limit` rows of `group` with `start <= key < end` (no upper
    /// bound without `end`), in key order, without a byte bound.
    pub fn scan(
        &self,
        group: GroupId,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(self
            .scan_read(group, start, end, limit, usize::MAX)?
            .page()?
            .rows)
    }
}

/// A row's value: still in redb's page, or copied from the overlay. A
/// row is measured before its value is copied, so the row that ends a page
/// costs no copy.
enum Value<'a> {
    Stored(Stored<'a>),
    Copied(Vec<u8>),
}

impl Value<'_> {
    fn len(&self) -> Result<usize> {
        match self {
            Value::Stored(s) => s.len(),
            Value::Copied(v) => Ok(v.len()),
        }
    }

    fn into_vec(self, rows: &Rows, group: u64, key: &[u8]) -> Result<Vec<u8>> {
        match self {
            Value::Stored(s) => rows.read(group, key, &s),
            Value::Copied(v) => Ok(v),
        }
    }
}

impl ScanRead {
    /// Reads the page: rows in key order until the limit, the budget (a
    /// first row larger than it comes alone) or the end of what was taken,
    /// and the key the next page starts from.
    pub fn page(&self) -> Result<ScanPage> {
        let t = &*self.0;
        let g = t.group.0;
        let start = t.start.as_slice();
        let base =
            t.kv.range(g, start, t.stop.as_deref())?
                .map(|row| row.map(|(k, v)| (k, Value::Stored(v))));
        let over = t
            .overlay
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().map(Value::Copied)));
        let mut page = ScanPage::default();
        let mut bytes = 0;
        for row in Merged::new(base, over) {
            let (key, value) = row?;
            let size = key.len() + value.len()?;
            let full =
                page.rows.len() >= t.limit || (!page.rows.is_empty() && bytes + size > t.budget);
            if full {
                page.resume = Some(key);
                return Ok(page);
            }
            bytes += size;
            let value = value.into_vec(&t.kv, g, &key)?;
            page.rows.push((key, value));
        }
        page.resume = t.unread.clone();
        Ok(page)
    }

    /// The group read.
    pub fn group(&self) -> GroupId {
        self.0.group
    }
}

impl fmt::Debug for ScanRead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScanRead")
            .field("group", &self.0.group)
            .field("start", &self.0.start)
            .field("stop", &self.0.stop)
            .field("overlay_rows", &self.0.overlay.len())
            .finish_non_exhaustive()
    }
}

/// Two reads are equal when they are the same read (clones of one).
impl PartialEq for ScanRead {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ScanRead {}
