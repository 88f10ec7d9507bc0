//! Opening a node's storage: creating its files durably, and bringing redb
//! up to date with the round log before anything reads.
//!
//! A file [`open_rw`] creates is synced, and its directory once after all
//! of them are made ([`sync_dir`]; [`super::Engine::remove`] syncs it after
//! removing them too), so that a power cut never keeps data whose name it
//! lost, nor brings back a wiped node. [`replay`] then applies the round
//! log's records that redb lacks, or refuses a log that is damaged (see
//! `wal` and `walscan`) or does not continue where redb stopped, with an
//! error that tells the operator how to rejoin.
//!
//! Left out: the data directory itself is created by the node (see
//! `node::server`), which does not sync its parent.

use std::path::Path;

use redb::{Database, ReadableDatabase};

use super::redo::{decode_all, Tables};
use super::round::io_error;
use super::schema::{META, META_LOG_ROWS_APPLIED, META_WAL_APPLIED};
use super::wal::Wal;
use super::walscan::Damage;
use super::{bytes_u64, u64_bytes};
use crate::error::{Error, Result};

/// What a node's operator is told to do when its data cannot be trusted.
const WIPE_ADVICE: &str = "start the node with --wipe-and-join (and --join naming \
     its peers) to discard its data and rejoin the cluster from its peers";

pub(super) fn path_error(path: &Path, e: std::io::Error) -> Error {
    Error::Storage(redb::Error::Io(std::io::Error::new(
        e.kind(),
        format!("{}: {e}", path.display()),
    )))
}

/// Opens the file at `path` for reading and writing, creating it if
/// needed; says whether it did. A file it creates is synced (its inode),
/// but its name is durable only once its directory is (see [`sync_dir`]).
pub(super) fn open_rw(path: &Path) -> Result<(std::fs::File, bool)> {
    let existed = path.try_exists().map_err(|e| path_error(path, e))?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| path_error(path, e))?;
    if !existed {
        file.sync_all().map_err(|e| path_error(path, e))?;
    }
    Ok((file, !existed))
}

/// The directory that holds `path`.
pub(super) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes the entries of the directory `dir` durable, so that the files
/// created or removed in it stay so after a power cut.
pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(test)]
    super::tests_damage::note_dir_sync(dir);
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| path_error(dir, e))
}

/// Brings redb up to date with the round log: applies, in one synced
/// commit, every record after the last one redb holds, and the Raft log ops
/// of the records before it that only a checkpoint would have written (see
/// `round`), then starts the log again. Refuses a log that does not continue
/// where redb stopped.
pub(super) fn replay(db: &Database, mut wal: Wal) -> Result<Wal> {
    let (applied, rows_applied) = {
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        let position = |key| -> Result<Option<u64>> {
            meta.get(key)?
                .map(|v| bytes_u64("round log position", v.value()))
                .transpose()
        };
        let applied = position(META_WAL_APPLIED)?.unwrap_or(0);
        (applied, position(META_LOG_ROWS_APPLIED)?.unwrap_or(applied))
    };
    if rows_applied > applied {
        return Err(Error::Corrupt {
            what: "round log position",
            detail: format!("log rows up to {rows_applied}, other writes only to {applied}"),
        });
    }
    let scan = wal.read(rows_applied + 1).map_err(io_error)?;
    // A record some later one proves was synced, missing: named where its
    // file's run broke off, or else (no run stops just before it, as when a
    // log file is missing or foreign) refused as a gap below.
    let damage = scan.damage(rows_applied + 1);
    let damaged = |d: &Damage| Error::Corrupt {
        what: "round log",
        detail: format!(
            "{d}: records this node had made durable, and may have acknowledged, are lost; \
             {WIPE_ADVICE}"
        ),
    };
    if let Some(d) = damage.as_ref().filter(|d| d.located()) {
        return Err(damaged(d));
    }
    let records = scan.records;
    let redo: Vec<_> = records.range(rows_applied + 1..).collect();
    let mut expect = rows_applied + 1;
    for (seq, _) in &redo {
        if **seq != expect {
            break;
        }
        expect += 1;
    }
    let last = expect - 1;
    // Every record redb lacks anything of must be there, in order; records
    // after a gap past that point cannot be trusted either.
    if last < applied || redo.len() as u64 != last - rows_applied {
        let then = redo
            .iter()
            .map(|(s, _)| **s)
            .find(|s| *s > last)
            .map_or("ends".to_string(), |s| format!("resumes at {s}"));
        return Err(Error::Corrupt {
            what: "round log",
            detail: format!(
                "the database and the log hold records up to {last} but the log {then} \
                 (the database holds Raft log rows up to record {rows_applied} and every \
                 other write up to record {applied}); {WIPE_ADVICE}"
            ),
        });
    }
    if let Some(d) = &damage {
        return Err(damaged(d));
    }
    if !redo.is_empty() {
        let txn = db.begin_write()?;
        {
            let mut t = Tables::open(&txn)?;
            for (seq, body) in &redo {
                for op in decode_all(body)? {
                    if **seq > applied || op.is_log_row() {
                        op.apply(&mut t)?;
                    }
                }
            }
            t.meta
                .insert(META_WAL_APPLIED, u64_bytes(last).as_slice())?;
            t.meta
                .insert(META_LOG_ROWS_APPLIED, u64_bytes(last).as_slice())?;
        }
        txn.commit()?;
        tracing::info!(
            records = redo.len(),
            from = rows_applied + 1,
            to = last,
            "round log replayed"
        );
    }
    wal.restart(last + 1).map_err(io_error)?;
    Ok(wal)
}
