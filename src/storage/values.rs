//! How a KV value is laid out in redb: every read and write of KV rows,
//! live or staged, goes through here.
//!
//! redb stores each B-tree leaf in a page of 4 KiB times a power of two,
//! and an entry larger than a page gets a leaf of its own. A leaf costs 4
//! bytes of header and each entry 8 bytes of lengths besides its key and
//! value, so a 64 KiB value under its key needs just over 64 KiB and is
//! given 128 KiB: on a real file, 64 KiB, 16 KiB and 1 MiB values took
//! 2.0 bytes of pages per logical byte (100 KiB values 1.28).
//!
//! So a value is split so that its pieces fill their pages. The row in
//! [`KV`] (the *head*) starts with a tag byte:
//! - `INLINE`, then the value: a value shorter than one 4 KiB chunk would
//!   be, which shares leaves with its neighbours;
//! - `CHUNKED`, the value's length (u64 LE), the number of chunks (u32 LE),
//!   then the value's last bytes (the *tail*, shorter than a 4 KiB chunk).
//!   The value's first bytes are in [`CHUNKS`] rows `(group, key, n)`,
//!   n = 0, 1, …, each sized to fill a page of 64 KiB down to 4 KiB alone
//!   ([`chunk_lens`]: as many of the largest as fit, then smaller ones).
//!
//! The Raft log, the round log and snapshot transfers carry logical values;
//! only this module knows the layout, and digests are computed over what it
//! reads back. Snapshot staging uses the same layout in its own tables, so
//! an install moves rows without re-encoding them. Overwriting or deleting
//! a value removes its old chunks in the same transaction.

use redb::{
    AccessGuard, ReadOnlyTable, ReadTransaction, ReadableTable, Table, TableDefinition,
    WriteTransaction,
};

use super::schema::KV;
use crate::error::{Error, Result};

/// Chunks of chunked values: (group, key, n) → bytes.
pub(crate) const CHUNKS: TableDefinition<(u64, &[u8], u32), &[u8]> =
    TableDefinition::new("kv_chunks");
/// Chunks of staged values, as [`CHUNKS`].
pub(crate) const STAGED_CHUNKS: TableDefinition<(u64, &[u8], u32), &[u8]> =
    TableDefinition::new("snapshot_staged_kv_chunks");

/// A head row's tags.
const INLINE: u8 = 0;
const CHUNKED: u8 = 1;
/// Bytes of a chunked head before its tail.
const CHUNKED_HEADER: usize = 1 + 8 + 4;
/// redb's page size, and the largest page a chunk fills.
const PAGE: usize = 4096;
const MAX_CHUNK_PAGE: usize = 16 * PAGE;
/// Bytes a leaf holding one chunk spends beside the chunk and the user
/// key: leaf header (4), key and value lengths (8), the group (8), the
/// key's length (a varint, at most 3 bytes for keys under 2 MiB) and the
/// chunk number (4), plus 13 bytes of slack (a byte too many would double
/// the page). The slack also keeps a head row, whose header is longer than
/// a chunk key's extra bytes, inside 4 KiB when its tail is shorter than a
/// 4 KiB chunk.
const CHUNK_OVERHEAD: usize = 4 + 8 + 8 + 3 + 4 + 13;

/// Owned KV tables of one kind (live or staged), as a write transaction
/// opens them.
pub(crate) type KvTable<'t> = Table<'t, (u64, &'static [u8]), &'static [u8]>;
/// Owned chunk tables, as a write transaction opens them.
pub(crate) type ChunkTable<'t> = Table<'t, (u64, &'static [u8], u32), &'static [u8]>;

/// The bytes of a chunk that fills a page of `page` bytes alone under a
/// key of `key_len` bytes, or `None` when that page would be less than
/// half filled (very long keys).
fn chunk_fill(page: usize, key_len: usize) -> Option<usize> {
    let fill = page.checked_sub(CHUNK_OVERHEAD + key_len)?;
    (fill >= page / 2).then_some(fill)
}

/// The lengths of the chunks a value of `len` bytes under a key of
/// `key_len` bytes is stored in, in order; the rest is the head's tail.
pub(crate) fn chunk_lens(key_len: usize, mut len: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut page = MAX_CHUNK_PAGE;
    while page >= PAGE {
        if let Some(fill) = chunk_fill(page, key_len) {
            while len >= fill {
                out.push(fill);
                len -= fill;
            }
        }
        page /= 2;
    }
    out
}

/// A decoded head row.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Head<'a> {
    Inline(&'a [u8]),
    Chunked {
        len: u64,
        chunks: u32,
        tail: &'a [u8],
    },
}

fn corrupt(detail: String) -> Error {
    Error::Corrupt {
        what: "KV row",
        detail,
    }
}

impl<'a> Head<'a> {
    pub(crate) fn decode(bytes: &'a [u8]) -> Result<Head<'a>> {
        match bytes.split_first() {
            Some((&INLINE, value)) => Ok(Head::Inline(value)),
            Some((&CHUNKED, rest)) if rest.len() >= CHUNKED_HEADER - 1 => {
                let (len, rest) = rest.split_at(8);
                let (chunks, tail) = rest.split_at(4);
                let len = u64::from_le_bytes(len.try_into().map_err(|_| corrupt("length".into()))?);
                let chunks =
                    u32::from_le_bytes(chunks.try_into().map_err(|_| corrupt("count".into()))?);
                Ok(Head::Chunked { len, chunks, tail })
            }
            _ => Err(corrupt(format!("head row of {} bytes", bytes.len()))),
        }
    }

    /// The value's length.
    pub(crate) fn len(&self) -> usize {
        match self {
            Head::Inline(v) => v.len(),
            Head::Chunked { len, .. } => *len as usize,
        }
    }

    /// Chunks the value has.
    fn chunks(&self) -> u32 {
        match self {
            Head::Inline(_) => 0,
            Head::Chunked { chunks, .. } => *chunks,
        }
    }
}

/// Reads a value whose head is `head`, its chunks from `chunks`.
fn assemble(
    chunks: &impl ReadableTable<(u64, &'static [u8], u32), &'static [u8]>,
    group: u64,
    key: &[u8],
    head: &[u8],
) -> Result<Vec<u8>> {
    let (len, count, tail) = match Head::decode(head)? {
        Head::Inline(v) => return Ok(v.to_vec()),
        Head::Chunked { len, chunks, tail } => (len as usize, chunks, tail),
    };
    let mut out = Vec::with_capacity(len);
    let mut found = 0;
    for row in chunks.range((group, key, 0)..=(group, key, u32::MAX))? {
        let (_, chunk) = row?;
        out.extend_from_slice(chunk.value());
        found += 1;
    }
    out.extend_from_slice(tail);
    if found != count || out.len() != len {
        return Err(corrupt(format!(
            "group {group}: a value of {len} bytes in {count} chunks reads as {} bytes in {found}",
            out.len()
        )));
    }
    Ok(out)
}

/// The committed KV rows and chunks of one read transaction.
pub(crate) struct Rows {
    kv: ReadOnlyTable<(u64, &'static [u8]), &'static [u8]>,
    chunks: ReadOnlyTable<(u64, &'static [u8], u32), &'static [u8]>,
}

/// A value as a range read meets it: its head, still in redb's page. Its
/// length is known before its bytes are copied.
pub(crate) struct Stored<'a>(AccessGuard<'a, &'static [u8]>);

impl Stored<'_> {
    /// The value's length.
    pub(crate) fn len(&self) -> Result<usize> {
        Ok(Head::decode(self.0.value())?.len())
    }
}

impl Rows {
    /// Opens the live tables of `txn`.
    pub(crate) fn open(txn: &ReadTransaction) -> Result<Rows> {
        Ok(Rows {
            kv: txn.open_table(KV)?,
            chunks: txn.open_table(CHUNKS)?,
        })
    }

    /// The value of `key` in `group`.
    pub(crate) fn get(&self, group: u64, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.kv
            .get((group, key))?
            .map(|head| assemble(&self.chunks, group, key, head.value()))
            .transpose()
    }

    /// The rows of `group` with `start <= key < end` (to the group's end
    /// without `end`), in key order, values unread.
    pub(crate) fn range<'a>(
        &'a self,
        group: u64,
        start: &'a [u8],
        end: Option<&'a [u8]>,
    ) -> Result<impl Iterator<Item = Result<(Vec<u8>, Stored<'a>)>> + 'a> {
        let rows = match end {
            Some(end) => self.kv.range((group, start)..(group, end))?,
            None => self.kv.range((group, start)..(group + 1, &[][..]))?,
        };
        Ok(rows.map(|row| {
            let (k, v) = row?;
            Ok((k.value().1.to_vec(), Stored(v)))
        }))
    }

    /// The value a range read met under `key` of `group`.
    pub(crate) fn read(&self, group: u64, key: &[u8], value: &Stored<'_>) -> Result<Vec<u8>> {
        assemble(&self.chunks, group, key, value.0.value())
    }
}

/// Sets `key` of `group` to `value`, replacing any value and its chunks.
pub(crate) fn put(
    kv: &mut KvTable<'_>,
    chunks: &mut ChunkTable<'_>,
    group: u64,
    key: &[u8],
    value: &[u8],
) -> Result<()> {
    let lens = chunk_lens(key.len(), value.len());
    let head = if lens.is_empty() {
        let mut head = Vec::with_capacity(1 + value.len());
        head.push(INLINE);
        head.extend_from_slice(value);
        head
    } else {
        let mut at = 0;
        for (n, len) in lens.iter().enumerate() {
            // At most 256 chunks: values are at most 1 MiB, checked before
            // they reach storage; a u32 holds far more.
            chunks.insert((group, key, n as u32), &value[at..at + len])?;
            at += len;
        }
        let mut head = Vec::with_capacity(CHUNKED_HEADER + value.len() - at);
        head.push(CHUNKED);
        head.extend_from_slice(&(value.len() as u64).to_le_bytes());
        head.extend_from_slice(&(lens.len() as u32).to_le_bytes());
        head.extend_from_slice(&value[at..]);
        head
    };
    let had = match kv.insert((group, key), head.as_slice())? {
        Some(old) => Head::decode(old.value())?.chunks(),
        None => 0,
    };
    // Chunks the new value also has were just overwritten.
    for n in lens.len() as u32..had {
        chunks.remove((group, key, n))?;
    }
    Ok(())
}

/// Removes `key` of `group` and its chunks.
pub(crate) fn delete(
    kv: &mut KvTable<'_>,
    chunks: &mut ChunkTable<'_>,
    group: u64,
    key: &[u8],
) -> Result<()> {
    let had = match kv.remove((group, key))? {
        Some(old) => Head::decode(old.value())?.chunks(),
        None => 0,
    };
    for n in 0..had {
        chunks.remove((group, key, n))?;
    }
    Ok(())
}

/// Removes every row and chunk of `group`.
pub(crate) fn clear(kv: &mut KvTable<'_>, chunks: &mut ChunkTable<'_>, group: u64) -> Result<()> {
    kv.retain_in((group, &[][..])..(group + 1, &[][..]), |_, _| false)?;
    chunks.retain_in((group, &[][..], 0)..(group + 1, &[][..], 0), |_, _| false)?;
    Ok(())
}

/// Moves `group`'s rows and chunks from one pair of tables (a staging) to
/// another, which holds none of the group's, as stored.
pub(crate) fn move_group(
    from: (&mut KvTable<'_>, &mut ChunkTable<'_>),
    to: (&mut KvTable<'_>, &mut ChunkTable<'_>),
    group: u64,
) -> Result<()> {
    for row in from.0.range((group, &[][..])..(group + 1, &[][..]))? {
        let (k, v) = row?;
        to.0.insert((group, k.value().1), v.value())?;
    }
    for row in from.1.range((group, &[][..], 0)..(group + 1, &[][..], 0))? {
        let (k, v) = row?;
        let (_, key, n) = k.value();
        to.1.insert((group, key, n), v.value())?;
    }
    clear(from.0, from.1, group)
}

/// Creates the tables this module adds, in `txn`.
pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<()> {
    txn.open_table(CHUNKS)?;
    txn.open_table(STAGED_CHUNKS)?;
    Ok(())
}

#[cfg(test)]
#[path = "tests_values.rs"]
mod tests;
