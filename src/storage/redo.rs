//! Redo records: the writes of one round, as the round log keeps them.
//!
//! Every change a round makes to redb is one [`Op`]. The round encodes each
//! op into its write batch (`batch`); persisting the batch appends those
//! bytes as the round's redo record and applies the ops that are not Raft
//! log rows to redb's write transaction through [`Op::apply`]. Opening a
//! node after a crash decodes the records redb lacks and applies them
//! again through the same [`Op::apply`], so the live path and the replay
//! cannot drift apart.
//!
//! Encoding: a tag byte, then each field in order, integers as u64 little
//! endian and byte strings as a u32 little-endian length and the bytes. The
//! round log checksums whole records, so a decode error here means a record
//! that passed its checksum yet does not parse: a bug or a foreign file,
//! reported as corrupt and never skipped.

use redb::{Table, WriteTransaction};

use super::schema::{APPLIED, CHECKSUMS, KV, LOG, META, META_CATALOG, RAFT_STATE, SESSIONS};
use super::staging::{STAGED, STAGED_KV, STAGED_SESSIONS};
use super::values::{self, ChunkTable, KvTable, CHUNKS, STAGED_CHUNKS};
use crate::error::{Error, Result};

/// Every table a batch writes, open in one write transaction.
pub(crate) struct Tables<'t> {
    pub(crate) log: Table<'t, u64, &'static [u8]>,
    pub(crate) raft: Table<'t, u64, &'static [u8]>,
    pub(crate) applied: Table<'t, u64, u64>,
    pub(crate) kv: KvTable<'t>,
    pub(crate) chunks: ChunkTable<'t>,
    pub(crate) sessions: Table<'t, (u64, u64), &'static [u8]>,
    pub(crate) meta: Table<'t, &'static str, &'static [u8]>,
    pub(crate) checksums: Table<'t, u64, (u64, u64)>,
    pub(crate) staged: Table<'t, u64, (u64, u64)>,
    pub(crate) staged_kv: KvTable<'t>,
    pub(crate) staged_chunks: ChunkTable<'t>,
    pub(crate) staged_sessions: Table<'t, (u64, u64), &'static [u8]>,
}

impl<'t> Tables<'t> {
    /// Opens every table in `txn`.
    pub(crate) fn open(txn: &'t WriteTransaction) -> Result<Self> {
        Ok(Tables {
            log: txn.open_table(LOG)?,
            raft: txn.open_table(RAFT_STATE)?,
            applied: txn.open_table(APPLIED)?,
            kv: txn.open_table(KV)?,
            chunks: txn.open_table(CHUNKS)?,
            sessions: txn.open_table(SESSIONS)?,
            meta: txn.open_table(META)?,
            checksums: txn.open_table(CHECKSUMS)?,
            staged: txn.open_table(STAGED)?,
            staged_kv: txn.open_table(STAGED_KV)?,
            staged_chunks: txn.open_table(STAGED_CHUNKS)?,
            staged_sessions: txn.open_table(STAGED_SESSIONS)?,
        })
    }
}

/// One change to redb, borrowing its bytes from the caller or the record.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Op<'a> {
    /// Insert Raft log record `seq`.
    LogPut { seq: u64, record: &'a [u8] },
    /// Remove Raft log record `seq`.
    LogDelete { seq: u64 },
    /// Set a group's Raft state record.
    RaftState { group: u64, record: &'a [u8] },
    /// Set a group's apply index.
    Applied { group: u64, index: u64 },
    /// Set a KV row.
    KvPut {
        group: u64,
        key: &'a [u8],
        value: &'a [u8],
    },
    /// Remove a KV row.
    KvDelete { group: u64, key: &'a [u8] },
    /// Set a client session.
    Session {
        group: u64,
        client: u64,
        session: &'a [u8],
    },
    /// Remove a client session (evicted).
    SessionDelete { group: u64, client: u64 },
    /// Set the catalog.
    Catalog { bytes: &'a [u8] },
    /// Remove every KV row and session of a group (a snapshot replaces them).
    ClearGroup { group: u64 },
    /// Record a consistency check.
    Checksum { group: u64, index: u64, digest: u64 },
    /// Remove everything a group left on this node but its Raft log rows
    /// (which the caller deletes by sequence): its state record, apply
    /// index, last check, KV rows and sessions. The replica is destroyed.
    DropGroup { group: u64 },
    /// Replace a group's KV rows and sessions with its complete snapshot
    /// staging for `index`, and drop the staging (see `staging`).
    InstallStaged { group: u64, index: u64 },
}

const LOG_PUT: u8 = 1;
const LOG_DELETE: u8 = 2;
const RAFT_STATE_OP: u8 = 3;
const APPLIED_OP: u8 = 4;
const KV_PUT: u8 = 5;
const KV_DELETE: u8 = 6;
const SESSION: u8 = 7;
const CATALOG: u8 = 8;
const CLEAR_GROUP: u8 = 9;
const CHECKSUM: u8 = 10;
const DROP_GROUP: u8 = 11;
const SESSION_DELETE: u8 = 12;
const INSTALL_STAGED: u8 = 13;

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Values are at most 1 MiB and records at most the 64 MiB frame limit,
    // far inside a u32.
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

impl<'a> Op<'a> {
    /// Appends this op's encoding to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Op::LogPut { seq, record } => {
                out.push(LOG_PUT);
                put_u64(out, seq);
                put_bytes(out, record);
            }
            Op::LogDelete { seq } => {
                out.push(LOG_DELETE);
                put_u64(out, seq);
            }
            Op::RaftState { group, record } => {
                out.push(RAFT_STATE_OP);
                put_u64(out, group);
                put_bytes(out, record);
            }
            Op::Applied { group, index } => {
                out.push(APPLIED_OP);
                put_u64(out, group);
                put_u64(out, index);
            }
            Op::KvPut { group, key, value } => {
                out.push(KV_PUT);
                put_u64(out, group);
                put_bytes(out, key);
                put_bytes(out, value);
            }
            Op::KvDelete { group, key } => {
                out.push(KV_DELETE);
                put_u64(out, group);
                put_bytes(out, key);
            }
            Op::Session {
                group,
                client,
                session,
            } => {
                out.push(SESSION);
                put_u64(out, group);
                put_u64(out, client);
                put_bytes(out, session);
            }
            Op::SessionDelete { group, client } => {
                out.push(SESSION_DELETE);
                put_u64(out, group);
                put_u64(out, client);
            }
            Op::Catalog { bytes } => {
                out.push(CATALOG);
                put_bytes(out, bytes);
            }
            Op::ClearGroup { group } => {
                out.push(CLEAR_GROUP);
                put_u64(out, group);
            }
            Op::DropGroup { group } => {
                out.push(DROP_GROUP);
                put_u64(out, group);
            }
            Op::InstallStaged { group, index } => {
                out.push(INSTALL_STAGED);
                put_u64(out, group);
                put_u64(out, index);
            }
            Op::Checksum {
                group,
                index,
                digest,
            } => {
                out.push(CHECKSUM);
                put_u64(out, group);
                put_u64(out, index);
                put_u64(out, digest);
            }
        }
    }

    /// Whether this op writes the Raft log table, which nothing reads while
    /// the node runs (the log is served from memory): rounds defer such ops
    /// to the next checkpoint.
    pub(crate) fn is_log_row(&self) -> bool {
        matches!(self, Op::LogPut { .. } | Op::LogDelete { .. })
    }

    /// Applies this op to the open tables.
    pub(crate) fn apply(&self, t: &mut Tables<'_>) -> Result<()> {
        match *self {
            Op::LogPut { seq, record } => {
                t.log.insert(seq, record)?;
            }
            Op::LogDelete { seq } => {
                t.log.remove(seq)?;
            }
            Op::RaftState { group, record } => {
                t.raft.insert(group, record)?;
            }
            Op::Applied { group, index } => {
                t.applied.insert(group, index)?;
            }
            Op::KvPut { group, key, value } => {
                values::put(&mut t.kv, &mut t.chunks, group, key, value)?;
            }
            Op::KvDelete { group, key } => {
                values::delete(&mut t.kv, &mut t.chunks, group, key)?;
            }
            Op::Session {
                group,
                client,
                session,
            } => {
                t.sessions.insert((group, client), session)?;
            }
            Op::SessionDelete { group, client } => {
                t.sessions.remove((group, client))?;
            }
            Op::Catalog { bytes } => {
                t.meta.insert(META_CATALOG, bytes)?;
            }
            Op::ClearGroup { group } => {
                values::clear(&mut t.kv, &mut t.chunks, group)?;
                t.sessions
                    .retain_in((group, 0)..(group + 1, 0), |_, _| false)?;
            }
            Op::DropGroup { group } => {
                Op::ClearGroup { group }.apply(t)?;
                t.raft.remove(group)?;
                t.applied.remove(group)?;
                t.checksums.remove(group)?;
            }
            Op::InstallStaged { group, index } => {
                super::staging::install(t, group, index)?;
            }
            Op::Checksum {
                group,
                index,
                digest,
            } => {
                t.checksums.insert(group, (index, digest))?;
            }
        }
        Ok(())
    }
}

/// The ops of one encoded record, in order.
pub(crate) fn decode_all(mut body: &[u8]) -> Result<Vec<Op<'_>>> {
    let mut ops = Vec::new();
    while !body.is_empty() {
        ops.push(decode_one(&mut body)?);
    }
    Ok(ops)
}

fn corrupt(detail: String) -> Error {
    Error::Corrupt {
        what: "round log record",
        detail,
    }
}

fn take<'a>(body: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
    if body.len() < n {
        return Err(corrupt(format!(
            "{n} bytes wanted, {} left in the record",
            body.len()
        )));
    }
    let (head, rest) = body.split_at(n);
    *body = rest;
    Ok(head)
}

fn take_u64(body: &mut &[u8]) -> Result<u64> {
    let b = take(body, 8)?;
    Ok(u64::from_le_bytes(
        b.try_into().map_err(|_| corrupt("short integer".into()))?,
    ))
}

fn take_bytes<'a>(body: &mut &'a [u8]) -> Result<&'a [u8]> {
    let len = take(body, 4)?;
    let len = u32::from_le_bytes(len.try_into().map_err(|_| corrupt("short length".into()))?);
    take(body, len as usize)
}

fn decode_one<'a>(body: &mut &'a [u8]) -> Result<Op<'a>> {
    let tag = take(body, 1)?[0];
    Ok(match tag {
        LOG_PUT => Op::LogPut {
            seq: take_u64(body)?,
            record: take_bytes(body)?,
        },
        LOG_DELETE => Op::LogDelete {
            seq: take_u64(body)?,
        },
        RAFT_STATE_OP => Op::RaftState {
            group: take_u64(body)?,
            record: take_bytes(body)?,
        },
        APPLIED_OP => Op::Applied {
            group: take_u64(body)?,
            index: take_u64(body)?,
        },
        KV_PUT => Op::KvPut {
            group: take_u64(body)?,
            key: take_bytes(body)?,
            value: take_bytes(body)?,
        },
        KV_DELETE => Op::KvDelete {
            group: take_u64(body)?,
            key: take_bytes(body)?,
        },
        SESSION => Op::Session {
            group: take_u64(body)?,
            client: take_u64(body)?,
            session: take_bytes(body)?,
        },
        SESSION_DELETE => Op::SessionDelete {
            group: take_u64(body)?,
            client: take_u64(body)?,
        },
        CATALOG => Op::Catalog {
            bytes: take_bytes(body)?,
        },
        CLEAR_GROUP => Op::ClearGroup {
            group: take_u64(body)?,
        },
        DROP_GROUP => Op::DropGroup {
            group: take_u64(body)?,
        },
        INSTALL_STAGED => Op::InstallStaged {
            group: take_u64(body)?,
            index: take_u64(body)?,
        },
        CHECKSUM => Op::Checksum {
            group: take_u64(body)?,
            index: take_u64(body)?,
            digest: take_u64(body)?,
        },
        other => return Err(corrupt(format!("unknown op tag {other}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_round_trips_and_truncation_is_corrupt() {
        let ops = [
            Op::LogPut {
                seq: 7,
                record: b"entries",
            },
            Op::LogDelete { seq: 3 },
            Op::RaftState {
                group: 2,
                record: b"state",
            },
            Op::Applied { group: 2, index: 9 },
            Op::KvPut {
                group: 4,
                key: b"k",
                value: b"",
            },
            Op::KvDelete {
                group: 4,
                key: b"gone",
            },
            Op::Session {
                group: 4,
                client: 11,
                session: b"s",
            },
            Op::SessionDelete {
                group: 4,
                client: 12,
            },
            Op::Catalog { bytes: b"cat" },
            Op::ClearGroup { group: 5 },
            Op::DropGroup { group: 7 },
            Op::InstallStaged {
                group: 8,
                index: 12,
            },
            Op::Checksum {
                group: 6,
                index: 1,
                digest: u64::MAX,
            },
        ];
        let mut body = Vec::new();
        for op in &ops {
            op.encode(&mut body);
        }
        assert_eq!(decode_all(&body).unwrap(), ops);
        for cut in [1, 5, body.len() - 1] {
            let err = decode_all(&body[..cut]).unwrap_err();
            assert!(matches!(err, Error::Corrupt { .. }), "cut {cut}: {err}");
        }
        let err = decode_all(&[200]).unwrap_err();
        assert!(err.to_string().contains("unknown op tag 200"), "{err}");
    }
}
