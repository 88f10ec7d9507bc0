//! The redb tables of a node, and the records stored in them.
//!
//! One database file holds every group of the node. Rows of all groups share
//! each table, keyed by group id first, so a group's rows are one contiguous
//! range and one write transaction can touch any number of groups. The Raft
//! log is the exception: it is a sequence of records, each the entries one
//! round appended to one group, keyed by a node-wide counter, so appends of
//! all groups go to the same end of one tree.

use raft::eraftpb::{ConfState, HardState};

use crate::error::{Error, Result};
use redb::{Database, TableDefinition, WriteTransaction};

/// Begins a write transaction that records redb's allocator state when it
/// commits (redb's quick repair). Without it, opening the file after a
/// crash walks and verifies every page to rebuild that state: a read of the
/// whole database before the node can do anything (2 s for a 2 GB file on
/// the test machine, growing with the file). With it, the open loads the
/// state the last durable commit wrote (3 ms for that file). The price is a
/// second sync per durable commit (redb then commits in two phases); a
/// checkpoint runs its last sync behind the driver as before (see
/// `syncfile`), and `flotilla bench write` showed no change. Every write
/// transaction of the node goes through here, since any of them may be the
/// last before a crash.
pub(crate) fn begin_write(db: &Database) -> Result<WriteTransaction> {
    let mut txn = db.begin_write()?;
    txn.set_quick_repair(true);
    Ok(txn)
}

/// Raft log records: sequence → header (group, first, last index) and the
/// protobuf-encoded entries (as raft-rs produces them; these bytes never
/// leave the node). A later record for a group replaces the entries an
/// earlier one held from its first index on.
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log_records");

/// Header of a log record: group, first index, last index (u64 LE each).
const LOG_HEADER: usize = 24;

/// Encodes one log record: the entries one round appended to one group.
/// Records are keyed by a node-wide sequence, so a round's records land
/// side by side at the tail of one B-tree whatever the number of groups.
pub(crate) fn encode_log_record(group: u64, entries: &[raft::eraftpb::Entry]) -> Result<Vec<u8>> {
    use protobuf::Message as _;
    let first = entries.first().map_or(0, |e| e.index);
    let last = entries.last().map_or(0, |e| e.index);
    let size: usize = entries
        .iter()
        .map(|e| 4 + e.data.len() + e.context.len() + 32)
        .sum();
    let mut out = Vec::with_capacity(LOG_HEADER + size);
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&first.to_le_bytes());
    out.extend_from_slice(&last.to_le_bytes());
    for e in entries {
        let len = e.compute_size();
        out.extend_from_slice(&len.to_le_bytes());
        let at = out.len();
        e.write_to_vec(&mut out).map_err(|err| Error::Corrupt {
            what: "raft entry encoding",
            detail: err.to_string(),
        })?;
        debug_assert_eq!(out.len() - at, len as usize);
    }
    Ok(out)
}

/// The group and last index of a log record, from its header alone.
pub(crate) fn log_record_header(bytes: &[u8]) -> Result<(u64, u64, u64)> {
    let word = |i: usize| -> Result<u64> {
        bytes
            .get(i * 8..i * 8 + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
            .ok_or_else(|| Error::Corrupt {
                what: "raft log record",
                detail: format!("{} bytes, shorter than its header", bytes.len()),
            })
    };
    Ok((word(0)?, word(1)?, word(2)?))
}

/// Merges the records one group appended since the last checkpoint, given
/// in sequence order, into the one record a replay of them in that order
/// leaves: a later record replaces the entries from its first index on.
/// Works on the bytes (entries are length-prefixed), decoding no entry.
/// `None` when the records leave a gap, which only a damaged log has: the
/// caller then keeps them as they are, for the restore to report.
pub(crate) fn merge_log_records(records: &[&[u8]]) -> Result<Option<Vec<u8>>> {
    let Some((first_rec, rest)) = records.split_first() else {
        return Ok(None);
    };
    let (group, mut first, mut last) = log_record_header(first_rec)?;
    let mut body = first_rec[LOG_HEADER..].to_vec();
    for rec in rest {
        let (g, f, l) = log_record_header(rec)?;
        if g != group || f > last + 1 {
            return Ok(None);
        }
        if f < first {
            body.clear();
            first = f;
        } else {
            body.truncate(entry_offset(&body, f - first)?);
        }
        body.extend_from_slice(&rec[LOG_HEADER..]);
        last = l;
    }
    let mut out = Vec::with_capacity(LOG_HEADER + body.len());
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&first.to_le_bytes());
    out.extend_from_slice(&last.to_le_bytes());
    out.extend_from_slice(&body);
    Ok(Some(out))
}

/// Where the `n`th entry (from 0) starts in a record's body.
fn entry_offset(body: &[u8], n: u64) -> Result<usize> {
    let mut at = 0usize;
    for _ in 0..n {
        let len = body
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| Error::Corrupt {
                what: "raft log record",
                detail: format!("entry length at byte {at} runs past the record"),
            })?;
        at += 4 + len as usize;
    }
    if at > body.len() {
        return Err(Error::Corrupt {
            what: "raft log record",
            detail: format!("entries run {} bytes past the record", at - body.len()),
        });
    }
    Ok(at)
}

/// Decodes a log record into its group and entries, checking that the
/// entries are the consecutive indexes its header names.
pub(crate) fn decode_log_record(bytes: &[u8]) -> Result<(u64, Vec<raft::eraftpb::Entry>)> {
    use protobuf::Message as _;
    let (group, first, last) = log_record_header(bytes)?;
    let corrupt = |detail: String| Error::Corrupt {
        what: "raft log record",
        detail,
    };
    let mut rest = &bytes[LOG_HEADER..];
    let mut entries = Vec::new();
    while !rest.is_empty() {
        let len = rest
            .get(..4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| corrupt("truncated entry length".into()))? as usize;
        let body = rest
            .get(4..4 + len)
            .ok_or_else(|| corrupt(format!("entry of {len} bytes runs past the record")))?;
        let e = raft::eraftpb::Entry::parse_from_bytes(body)
            .map_err(|err| corrupt(format!("entry: {err}")))?;
        let expected = first + entries.len() as u64;
        if e.index != expected {
            return Err(corrupt(format!(
                "group {group}: expected index {expected}, found {}",
                e.index
            )));
        }
        entries.push(e);
        rest = &rest[4 + len..];
    }
    if entries.last().map_or(0, |e| e.index) != last {
        return Err(corrupt(format!(
            "group {group}: header says the record ends at {last}"
        )));
    }
    Ok((group, entries))
}
/// Per group: the [`RaftStateRecord`] (HardState, ConfState, compaction point).
pub(crate) const RAFT_STATE: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_state");
/// Per group: the index of the last entry applied to the state machine.
pub(crate) const APPLIED: TableDefinition<u64, u64> = TableDefinition::new("applied");
/// KV rows: (group, key) → head row; a long value's first bytes are in
/// `values::CHUNKS` (see `values`, the only reader and writer of both).
pub(crate) const KV: TableDefinition<(u64, &[u8]), &[u8]> = TableDefinition::new("kv");
/// Client sessions: (group, client) → rkyv `kv::Session`; the row of
/// client `kv::TABLE_KEY` (0) holds the group's rkyv `kv::SessionTable`.
pub(crate) const SESSIONS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("sessions");
/// Node-wide facts: see the `META_*` keys.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// group -> (apply index, digest) of the group's last consistency check.
pub(crate) const CHECKSUMS: TableDefinition<u64, (u64, u64)> = TableDefinition::new("checksums");

/// META key: this node's id (u64, little endian).
pub(crate) const META_NODE_ID: &str = "node_id";
/// META key: the cluster id (u64, little endian). Its presence alone means
/// "bootstrapped".
pub(crate) const META_CLUSTER_ID: &str = "cluster_id";
/// META key: the rkyv-encoded catalog, as of group 0's apply index.
pub(crate) const META_CATALOG: &str = "catalog";
/// META key: the random id of this data directory (u64, little endian),
/// drawn when the node first opened it. A wiped or replaced disk gets a new
/// one, which is how the catalog tells a new store from a returning node.
pub(crate) const META_STORE_ID: &str = "store_id";
/// META key: the on-disk format of a bootstrapped node (u32, little
/// endian), so a directory written by an incompatible Flotilla is refused
/// with a clear message instead of failing to decode deep inside a start.
pub(crate) const META_FORMAT: &str = "format";
/// The format this build writes and reads. 2: nodes carry a store id and
/// may be dead (catalog layout changed). 3: KV commands carry `fresh` and
/// a log time, sessions are bounded (session and table rows, a session
/// delete op in round records). 4: KV rows are head rows, long values
/// split into page-filling chunks (see `values`).
pub(crate) const FORMAT: u32 = 4;
/// META key: how many times a driver has opened this database (u64, little
/// endian). Proposal ids carry it, so an entry proposed before a restart is
/// never mistaken for one proposed after.
pub(crate) const META_INCARNATION: &str = "incarnation";
/// META key: the sequence number of the last round log record whose writes
/// this database holds, Raft log rows aside (u64, little endian; see `wal`).
/// Written in every round's transaction, so it is durable exactly when
/// those writes are.
pub(crate) const META_WAL_APPLIED: &str = "round_log_applied";
/// META key: the sequence number of the last round log record whose Raft
/// log rows this database holds (u64, little endian). Rounds leave those
/// rows in the round log and only checkpoints write them (see `checkpoint`), so
/// this trails [`META_WAL_APPLIED`] between checkpoints. Absent in a
/// database written before rows were deferred: then it equals that key.
pub(crate) const META_LOG_ROWS_APPLIED: &str = "round_log_rows_applied";

/// What a group's Raft state looks like on disk.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct RaftStateRecord {
    /// HardState.term
    pub term: u64,
    /// HardState.vote
    pub vote: u64,
    /// HardState.commit
    pub commit: u64,
    /// ConfState.voters
    pub voters: Vec<u64>,
    /// ConfState.learners
    pub learners: Vec<u64>,
    /// ConfState.voters_outgoing
    pub voters_outgoing: Vec<u64>,
    /// ConfState.learners_next
    pub learners_next: Vec<u64>,
    /// ConfState.auto_leave
    pub auto_leave: bool,
    /// Index of the last entry compacted away (folded into the state).
    pub snap_index: u64,
    /// Term of that entry.
    pub snap_term: u64,
}

impl RaftStateRecord {
    /// Builds the record from raft-rs types.
    pub fn new(hs: &HardState, cs: &ConfState, snap_index: u64, snap_term: u64) -> Self {
        RaftStateRecord {
            term: hs.term,
            vote: hs.vote,
            commit: hs.commit,
            voters: cs.voters.clone(),
            learners: cs.learners.clone(),
            voters_outgoing: cs.voters_outgoing.clone(),
            learners_next: cs.learners_next.clone(),
            auto_leave: cs.auto_leave,
            snap_index,
            snap_term,
        }
    }

    /// The HardState part.
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.commit,
            ..Default::default()
        }
    }

    /// The ConfState part.
    pub fn conf_state(&self) -> ConfState {
        ConfState {
            voters: self.voters.clone(),
            learners: self.learners.clone(),
            voters_outgoing: self.voters_outgoing.clone(),
            learners_next: self.learners_next.clone(),
            auto_leave: self.auto_leave,
            ..Default::default()
        }
    }
}
