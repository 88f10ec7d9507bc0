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
//! How it works:
//! - Every round still commits its writes to redb, without a sync
//!   (`Durability::None`): readers see them at once, and a crash rolls redb
//!   back to its last synced commit.
//! - The same writes, as one redo record (see `redo`), are appended here;
//!   a round that must be durable syncs this file instead of redb.
//! - Once the log passes [`WalConfig::checkpoint_bytes`], the next round
//!   commits to redb with a sync instead (a *checkpoint*: that round and all
//!   before it are then durable in redb itself) and the log starts again
//!   at offset 0.
//! - redb records, in every round's transaction, the sequence number of
//!   the last record its state includes. Opening a node applies the
//!   records after it again, checkpoints, and only then lets anyone read.
//!
//! Record layout: body length (u32 LE), sequence (u64 LE), xxh3-64 of the
//! sequence and body (u64 LE), body. Reading starts at offset 0 and stops
//! at the first record that is cut short, fails its checksum or does not
//! carry the next sequence number: the torn tail of a write that was never
//! synced (so never acknowledged), zeros of the preallocated file, or a
//! record left from before the last checkpoint (lower sequence numbers).
//!
//! Left out: because the file is reused from its start, a record damaged in
//! the middle of the log cannot be told from its end, and the records after
//! it are not replayed. A sequence gap between redb and the log (a missing
//! or foreign log file) is detected and refused as corrupt.

use std::io;

use xxhash_rust::xxh3::Xxh3;

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

/// Checkpoint every 8 MiB of log: about a second of writes per node at the
/// bench's write rate, a replay of well under a second, and a checkpoint
/// that writes a few megabytes of pages.
pub const WAL_CHECKPOINT_BYTES: u64 = 8 << 20;

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

/// Length, sequence and checksum before each body.
const HEADER: usize = 4 + 8 + 8;
/// Zeros written per call while preallocating.
const ZERO_CHUNK: usize = 1 << 20;

fn checksum(seq: u64, body: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(&seq.to_le_bytes());
    h.update(body);
    h.digest()
}

fn word<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at + N)?.try_into().ok()
}

/// The open round log.
pub(crate) struct Wal {
    file: Box<dyn LogFile>,
    cfg: WalConfig,
    /// Offset of the next record.
    end: u64,
    /// Sequence number of the next record.
    next_seq: u64,
    /// Reused to assemble a record before its one write.
    buf: Vec<u8>,
}

impl Wal {
    /// Opens the log; `restart` must follow before the first append.
    pub(crate) fn new(file: Box<dyn LogFile>, cfg: WalConfig) -> Wal {
        Wal {
            file,
            cfg,
            end: 0,
            next_seq: 1,
            buf: Vec::new(),
        }
    }

    /// Every readable record from the start of the file: `(sequence, body)`,
    /// consecutive sequence numbers, oldest first (see the module doc for
    /// where reading stops).
    pub(crate) fn records(&self) -> io::Result<Vec<(u64, Vec<u8>)>> {
        let len = usize::try_from(self.file.size()?)
            .map_err(|_| io::Error::other("round log larger than memory"))?;
        let mut data = vec![0; len];
        self.file.read(0, &mut data)?;
        let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut at = 0;
        while let (Some(n), Some(seq), Some(sum)) = (
            word::<4>(&data, at),
            word::<8>(&data, at + 4),
            word::<8>(&data, at + 12),
        ) {
            let n = u32::from_le_bytes(n) as usize;
            let seq = u64::from_le_bytes(seq);
            let Some(body) = data.get(at + HEADER..at + HEADER + n) else {
                break;
            };
            if checksum(seq, body) != u64::from_le_bytes(sum) {
                break;
            }
            if out.last().is_some_and(|(prev, _)| seq != prev + 1) {
                break;
            }
            out.push((seq, body.to_vec()));
            at += HEADER + n;
        }
        Ok(out)
    }

    /// Starts the log again at offset 0, numbering from `next_seq`, and
    /// preallocates the file if it is shorter than configured. Only after
    /// redb durably holds everything the log held.
    pub(crate) fn restart(&mut self, next_seq: u64) -> io::Result<()> {
        self.end = 0;
        self.next_seq = next_seq;
        let len = self.file.size()?;
        if len < self.cfg.prealloc_bytes {
            let zeros = vec![0u8; ZERO_CHUNK];
            let mut at = len;
            while at < self.cfg.prealloc_bytes {
                let n = (self.cfg.prealloc_bytes - at).min(ZERO_CHUNK as u64);
                self.file.write(at, &zeros[..n as usize])?;
                at += n;
            }
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// The sequence number the next record gets.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Whether the log has grown past its checkpoint size.
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
        self.buf
            .extend_from_slice(&checksum(seq, body).to_le_bytes());
        self.buf.extend_from_slice(body);
        self.file.write(self.end, &self.buf)?;
        self.end += self.buf.len() as u64;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Makes every appended record durable.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemDisk;

    fn wal(disk: &MemDisk) -> Wal {
        Wal::new(Box::new(disk.log_file()), WalConfig::MEMORY)
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
        let all = wal(&disk).records().unwrap();
        assert_eq!(
            all,
            vec![
                (10, b"one".to_vec()),
                (11, b"two".to_vec()),
                (12, b"three, never synced".to_vec())
            ]
        );
        // A power cut keeps the synced records only.
        let crashed = disk.crash_image();
        assert_eq!(wal(&crashed).records().unwrap().len(), 2);
        // A torn last record (half of it written) ends the log there.
        let file = disk.log_file();
        let len = file.size().unwrap();
        file.write(len - 4, b"\xff\xff\xff\xff").unwrap();
        assert_eq!(wal(&disk).records().unwrap().len(), 2);
    }

    #[test]
    fn after_a_restart_older_records_behind_the_tail_are_not_read() {
        let disk = MemDisk::new();
        let mut w = wal(&disk);
        w.restart(1).unwrap();
        for body in [&b"a long first record"[..], b"second", b"third"] {
            w.append(body).unwrap();
        }
        w.restart(4).unwrap();
        w.append(b"x").unwrap();
        // Record 4 overwrote the start of record 1; what is left of that
        // one, and records 2 and 3 behind it, are not read.
        assert_eq!(wal(&disk).records().unwrap(), vec![(4, b"x".to_vec())]);
    }

    #[test]
    fn the_file_is_preallocated_once_and_zeros_read_as_the_end() {
        let disk = MemDisk::new();
        let cfg = WalConfig {
            checkpoint_bytes: 1 << 10,
            prealloc_bytes: 3 << 20,
        };
        let mut w = Wal::new(Box::new(disk.log_file()), cfg);
        w.restart(1).unwrap();
        assert_eq!(disk.log_file().size().unwrap(), 3 << 20);
        w.append(&[7; 2000]).unwrap();
        assert!(w.checkpoint_due());
        assert_eq!(
            Wal::new(Box::new(disk.log_file()), cfg)
                .records()
                .unwrap()
                .len(),
            1
        );
        w.restart(2).unwrap();
        assert!(!w.checkpoint_due());
        assert_eq!(disk.log_file().size().unwrap(), 3 << 20, "not grown again");
    }
}
