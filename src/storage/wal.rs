//! The round log: an append-only file beside the redb database that makes a
//! round durable with one small sequential write and one fdatasync.
//!
//! Why it exists: a synced redb commit writes a copy of every page the
//! round touched (log tail, state rows, table roots, header) at scattered
//! offsets before its fdatasync. On the 2-core test machine that measured
//! 0.47 ms per synced round against 0.13 ms for an append plus fdatasync,
//! and three nodes wrote 160 to 180 MB/s to disk to carry 10 MB/s of
//! values. The README's *Performance* section has the figures.
//!
//! How it works (the whole model is in the essay of `storage`):
//! - Every persisted batch is appended, as one redo record (see `redo`),
//!   to the active one of two files; a batch that must be durable syncs
//!   that file, and redb is never synced for it.
//! - A batch that changes redb besides its Raft log table also commits
//!   those writes to redb, without a sync (`Durability::None`): readers see
//!   them at once, and a crash rolls redb back to its last synced commit.
//!   Raft log rows wait for the checkpoint.
//! - Once the active file passes [`WalConfig::checkpoint_bytes`], the next
//!   batch is appended and synced there, the log rows of the file go to
//!   redb with a synced commit (a *checkpoint*: every record up to that
//!   batch is then durable in redb itself), and appends move to the other
//!   file, from its start. The checkpoint's fsync runs behind the driver
//!   (see `checkpoint` and `syncfile`), so until it is confirmed the file
//!   just left still holds every record since the checkpoint before; the
//!   next checkpoint waits for that confirmation before it reuses the file.
//! - redb records, in every transaction that commits to it, the sequence
//!   number of the last record whose writes it includes (and, at a
//!   checkpoint, the last whose log rows it includes). Opening a node
//!   applies the records after those again, checkpoints, and only then
//!   lets anyone read.
//!
//! Record layout: body length (u32 LE), sequence (u64 LE), synced mark
//! (u64 LE), xxh3-64 of the sequence, mark and body (u64 LE), body. The
//! synced mark is the sequence number up to which the log was on disk
//! when the record was written: the last record a completed fdatasync
//! covered (or, in a file's first records, the one before the file
//! started). Reading a file starts at offset 0 and takes records while
//! each is whole, passes its checksum and carries the next sequence
//! number; that run ends at the torn tail of a write that was never
//! synced (so never acknowledged), at zeros of the preallocated file, or
//! at a record left from before the file was last reused (lower numbers).
//!
//! Damage: because a file is reused from its start without being cleared,
//! the end of a run alone cannot tell a damaged record from the end of the
//! valid data. The synced marks can. Past the end of each run, reading
//! goes on byte by byte looking for intact records, and keeps the highest
//! synced mark of any intact record in either file. A mark of `m` proves
//! that every record up to `m` had been fdatasynced before that record was
//! written, so each of those that redb still needs must be readable; one
//! that is not is damage, and opening refuses the node (`opening`, with
//! `walscan` doing the reading) naming the file, the offset where its
//! file's run broke off and the record's number. Unsynced records carry no
//! such proof for each other: the page cache may write a later unsynced
//! record back and lose an earlier one in a power cut, and that is still a
//! torn tail. Records left from an earlier use of a file, or from the
//! unsynced tail before a crash the node recovered from, carry marks redb
//! already holds, so they never accuse the current records.
//!
//! The cost: eight bytes a record and no extra I/O while writing. The scan
//! runs only when a node opens, and hashes a candidate only once its mark
//! reaches what redb still needs and trails its sequence by no more records
//! than fit in the file, which zeros, garbage and old records almost never
//! do (two full 3 MiB files: 15 to 22 ms in a test build on a quiet
//! machine, up to 110 ms while other builds ran).
//!
//! Left out: damage to the last synced records that no later intact record
//! vouches for (nothing was written after their sync, or what was written
//! was lost unsynced) reads as a torn tail. A sequence gap between redb and
//! the log (a missing or foreign log file) is refused as corrupt.

use std::io;

use xxhash_rust::xxh3::Xxh3;

use super::walscan::LogScan;

/// What the round log is written to: a file, or the simulation's memory.
pub trait LogFile: Send + Sync + 'static {
    /// Current size in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Fills `out` from `offset`; the range must exist.
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()>;
    /// Writes `data` at `offset`, growing the file when needed.
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes every write so far durable.
    fn sync_data(&self) -> io::Result<()>;
}

impl LogFile for std::fs::File {
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, out, offset)
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, data, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        std::fs::File::sync_data(self)
    }
}

/// Sizes of the round log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalConfig {
    /// Log bytes past which the next round checkpoints into redb and the
    /// log starts again. Bounds both the replay after a crash and the
    /// pages a checkpoint writes at once.
    pub checkpoint_bytes: u64,
    /// Zeros written once when the file is shorter, so appends overwrite
    /// blocks the file system already allocated and a sync has no file
    /// size or extent to record.
    pub prealloc_bytes: u64,
}

/// Checkpoint every 2 MiB of log: a fifth to a third of a second of writes
/// per node at the bench's write rate. A checkpoint's page writes still
/// stall its round (5 to 9 ms at 2 MiB, measured; 11 to 27 ms at 8 MiB,
/// where more log pages accumulate), while at 1 MiB checkpoints came faster
/// than their syncs finished. 2 MiB gave the best p99 of the three.
pub const WAL_CHECKPOINT_BYTES: u64 = 2 << 20;

impl WalConfig {
    /// A node's log file.
    pub const FILE: WalConfig = WalConfig {
        checkpoint_bytes: WAL_CHECKPOINT_BYTES,
        // Room for the checkpoint size and the record that crosses it.
        prealloc_bytes: WAL_CHECKPOINT_BYTES + (1 << 20),
    };
    /// The simulation's in-memory log: small, so checkpoints and the reuse
    /// of the file happen often under test; no preallocation.
    pub const MEMORY: WalConfig = WalConfig {
        checkpoint_bytes: 64 << 10,
        prealloc_bytes: 0,
    };
}

/// Length, sequence, synced mark and checksum before each body, in bytes.
pub(super) const HEADER: usize = 4 + 8 + 8 + 8;
/// Zeros written per call while preallocating, in bytes: large enough for
/// few calls, small enough not to matter in memory.
const ZERO_CHUNK: usize = 1 << 20;

/// The checksum a record carries: of its sequence number, synced mark and
/// body.
pub(super) fn checksum(seq: u64, synced: u64, body: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(&seq.to_le_bytes());
    h.update(&synced.to_le_bytes());
    h.update(body);
    h.digest()
}

/// One file of the round log and the name errors give it.
pub(crate) type NamedLogFile = (String, Box<dyn LogFile>);

/// The open round log: two files, one written at a time.
pub(crate) struct Wal {
    files: [NamedLogFile; 2],
    cfg: WalConfig,
    /// The file appends go to.
    active: usize,
    /// Offset of the next record in the active file.
    end: u64,
    /// Sequence number of the next record.
    next_seq: u64,
    /// Sequence number of the last record known to be on disk (synced, or
    /// before the active file started): the synced mark of the next record.
    synced: u64,
    /// Whether the active file has appends not yet synced.
    dirty: bool,
    /// Files already preallocated.
    allocated: [bool; 2],
    /// Reused to assemble a record before its one write.
    buf: Vec<u8>,
}

impl Wal {
    /// Opens the log; `restart` must follow before the first append.
    pub(crate) fn new(files: [NamedLogFile; 2], cfg: WalConfig) -> Wal {
        Wal {
            files,
            cfg,
            active: 0,
            end: 0,
            next_seq: 1,
            synced: 0,
            dirty: false,
            allocated: [false; 2],
            buf: Vec::new(),
        }
    }

    /// Reads both files back: every record of their runs, and the proof
    /// of any damage to records from `floor` on (see the module doc).
    pub(crate) fn read(&self, floor: u64) -> io::Result<LogScan> {
        LogScan::read(&self.files, floor)
    }

    /// Switches appends to the other file, from its offset 0, numbering
    /// from `next_seq`; preallocates that file the first time. Only once
    /// redb durably holds everything that file held, and with the file
    /// being left synced (see [`Self::sync_if_dirty`]): every record before
    /// `next_seq` is then on disk.
    pub(crate) fn restart(&mut self, next_seq: u64) -> io::Result<()> {
        self.active = 1 - self.active;
        self.end = 0;
        self.next_seq = next_seq;
        self.synced = next_seq.saturating_sub(1);
        self.dirty = false;
        if !self.allocated[self.active] {
            preallocate(self.files[self.active].1.as_ref(), self.cfg.prealloc_bytes)?;
            self.allocated[self.active] = true;
        }
        Ok(())
    }

    /// The sequence number the next record gets.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Whether the active file has grown past the checkpoint size.
    pub(crate) fn checkpoint_due(&self) -> bool {
        self.end >= self.cfg.checkpoint_bytes
    }

    /// Appends one record (not synced); returns its sequence number.
    pub(crate) fn append(&mut self, body: &[u8]) -> io::Result<u64> {
        let seq = self.next_seq;
        let n = u32::try_from(body.len())
            .map_err(|_| io::Error::other("round log record over 4 GiB"))?;
        self.buf.clear();
        self.buf.extend_from_slice(&n.to_le_bytes());
        self.buf.extend_from_slice(&seq.to_le_bytes());
        self.buf.extend_from_slice(&self.synced.to_le_bytes());
        self.buf
            .extend_from_slice(&checksum(seq, self.synced, body).to_le_bytes());
        self.buf.extend_from_slice(body);
        self.files[self.active].1.write(self.end, &self.buf)?;
        self.end += self.buf.len() as u64;
        self.next_seq += 1;
        self.dirty = true;
        Ok(seq)
    }

    /// Makes every appended record durable.
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        self.files[self.active].1.sync_data()?;
        self.dirty = false;
        self.synced = self.next_seq - 1;
        Ok(())
    }

    /// Syncs the active file unless every record up to `seq` is on disk
    /// already. For a commit that makes redb durable up to record `seq`:
    /// redb must never be durably ahead of the log (see `checkpoint`).
    pub(crate) fn sync_through(&mut self, seq: u64) -> io::Result<()> {
        if seq > self.synced {
            self.sync()?;
        }
        Ok(())
    }

    /// Syncs the active file if it has unsynced appends, so that no record
    /// of it can be lost while a later one in the other file survives.
    pub(crate) fn sync_if_dirty(&mut self) -> io::Result<()> {
        if self.dirty {
            self.sync()?;
        }
        Ok(())
    }
}

/// Writes zeros up to `bytes` where the file is shorter, and syncs them.
fn preallocate(file: &dyn LogFile, bytes: u64) -> io::Result<()> {
    let len = file.size()?;
    if len >= bytes {
        return Ok(());
    }
    let zeros = vec![0u8; ZERO_CHUNK];
    let mut at = len;
    while at < bytes {
        let n = (bytes - at).min(ZERO_CHUNK as u64);
        file.write(at, &zeros[..n as usize])?;
        at += n;
    }
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemDisk;

    fn wal(disk: &MemDisk) -> Wal {
        Wal::new(disk.log_backends(), WalConfig::MEMORY)
    }

    fn seqs(disk: &MemDisk) -> Vec<u64> {
        wal(disk).read(1).unwrap().records.into_keys().collect()
    }

    #[test]
    fn records_read_back_in_order_up_to_a_torn_tail() {
        let disk = MemDisk::new();
        let mut w = wal(&disk);
        w.restart(10).unwrap();
        assert_eq!(w.append(b"one").unwrap(), 10);
        assert_eq!(w.append(b"two").unwrap(), 11);
        w.sync().unwrap();
        w.append(b"three, never synced").unwrap();
        let all = wal(&disk).read(1).unwrap().records;
        assert_eq!(
            all.into_iter().collect::<Vec<_>>(),
            vec![
                (10, b"one".to_vec()),
                (11, b"two".to_vec()),
                (12, b"three, never synced".to_vec())
            ]
        );
        // A power cut keeps the synced records only.
        assert_eq!(seqs(&disk.crash_image()), vec![10, 11]);
        // A torn last record (its end overwritten) ends the log there.
        for file in disk.log_files() {
            let len = file.size().unwrap();
            if len > 0 {
                file.write(len - 4, b"\xff\xff\xff\xff").unwrap();
            }
        }
        assert_eq!(seqs(&disk), vec![10, 11]);
    }

    #[test]
    fn a_reused_file_hides_its_older_records_and_the_other_file_still_counts() {
        let disk = MemDisk::new();
        let mut w = wal(&disk);
        w.restart(1).unwrap();
        for body in [&b"a long first record"[..], b"second", b"third"] {
            w.append(body).unwrap();
        }
        w.restart(4).unwrap();
        w.append(b"four").unwrap();
        assert_eq!(seqs(&disk), vec![1, 2, 3, 4], "both files are read");
        w.sync_if_dirty().unwrap();
        w.restart(5).unwrap();
        w.append(b"x").unwrap();
        // Record 5 overwrote the start of record 1; what is left of that
        // one, and records 2 and 3 behind it, are not read.
        assert_eq!(seqs(&disk), vec![4, 5]);
    }

    #[test]
    fn files_are_preallocated_once_and_zeros_read_as_the_end() {
        let disk = MemDisk::new();
        let cfg = WalConfig {
            checkpoint_bytes: 1 << 10,
            prealloc_bytes: 3 << 20,
        };
        let mut w = Wal::new(disk.log_backends(), cfg);
        w.restart(1).unwrap();
        w.append(&[7; 2000]).unwrap();
        assert!(w.checkpoint_due());
        w.restart(2).unwrap();
        assert!(!w.checkpoint_due());
        w.restart(2).unwrap();
        for file in disk.log_files() {
            assert_eq!(file.size().unwrap(), 3 << 20, "preallocated, not grown");
        }
        assert_eq!(seqs(&disk), vec![1]);
    }
}
