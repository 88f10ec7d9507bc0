//! A node's disk kept in memory, outliving the `Engine` using it: the redb
//! database file and the two files of the round log (see `wal`).
//!
//! The simulation harness "crashes" a node by taking the disk's crash image
//! (every write since each file's last sync undone, as after a power cut)
//! and restarting the node on it: what a synced commit or a synced log
//! record wrote survives, and nothing else does, including redb commits
//! made without a sync. Syncing only forgets the undo records, which keeps
//! hundreds of simulated seeds fast.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use redb::StorageBackend;

/// A shareable in-memory disk: a database file and two log files. Clones
/// see the same bytes.
#[derive(Clone, Debug, Default)]
pub struct MemDisk {
    db: MemFile,
    log: [MemFile; 2],
}

/// One file of a [`MemDisk`]. Clones see the same bytes.
#[derive(Clone, Debug, Default)]
pub struct MemFile {
    state: Arc<Mutex<DiskState>>,
}

#[derive(Debug, Default)]
struct DiskState {
    bytes: Vec<u8>,
    /// What each write since the last sync overwrote: (offset, old bytes),
    /// oldest first. Undoing them gives the disk as of the last sync.
    undo: Vec<(usize, Vec<u8>)>,
    /// Length at the last sync.
    synced_len: usize,
}

impl MemDisk {
    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// The database file.
    pub fn db_file(&self) -> MemFile {
        self.db.clone()
    }

    /// The round log's files.
    pub fn log_files(&self) -> [MemFile; 2] {
        self.log.clone()
    }

    /// The round log's files, as the round log opens them, named
    /// `memory wal.0` and `memory wal.1`.
    pub(crate) fn log_backends(&self) -> [super::wal::NamedLogFile; 2] {
        let [a, b] = self.log_files();
        [
            ("memory wal.0".to_string(), Box::new(a)),
            ("memory wal.1".to_string(), Box::new(b)),
        ]
    }

    /// What this disk would hold after a power cut now: every write since
    /// each file's last sync undone. A separate disk; this one is left as
    /// it is (the process about to "die" may still write to it).
    pub fn crash_image(&self) -> MemDisk {
        MemDisk {
            db: self.db.crash_image(),
            log: [self.log[0].crash_image(), self.log[1].crash_image()],
        }
    }

    /// Flips bits in `len` bytes of the database file from `offset`
    /// (clamped to the file).
    pub fn scribble(&self, offset: usize, len: usize) {
        self.db.scribble(offset, len)
    }

    /// Bytes in the database file.
    pub fn size(&self) -> usize {
        self.db.lock().bytes.len()
    }
}

impl MemFile {
    fn lock(&self) -> MutexGuard<'_, DiskState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn crash_image(&self) -> MemFile {
        let st = self.lock();
        let mut bytes = st.bytes.clone();
        for (offset, old) in st.undo.iter().rev() {
            let end = *offset + old.len();
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[*offset..end].copy_from_slice(old);
        }
        bytes.truncate(st.synced_len);
        MemFile {
            state: Arc::new(Mutex::new(DiskState {
                synced_len: bytes.len(),
                bytes,
                undo: Vec::new(),
            })),
        }
    }

    fn scribble(&self, offset: usize, len: usize) {
        let mut st = self.lock();
        let end = (offset + len).min(st.bytes.len());
        for x in &mut st.bytes[offset.min(end)..end] {
            *x ^= 0x5a;
        }
    }
}

impl StorageBackend for MemFile {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.lock().bytes.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let st = self.lock();
        let start = offset as usize;
        let end = start + out.len();
        if end > st.bytes.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past end",
            ));
        }
        out.copy_from_slice(&st.bytes[start..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut st = self.lock();
        let len = len as usize;
        if len < st.bytes.len() {
            let old = st.bytes[len..].to_vec();
            st.undo.push((len, old));
        }
        st.bytes.resize(len, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let mut st = self.lock();
        st.undo.clear();
        st.synced_len = st.bytes.len();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut st = self.lock();
        let start = offset as usize;
        let end = start + data.len();
        if end > st.bytes.len() {
            st.bytes.resize(end, 0);
        }
        // Only bytes that existed at the last sync need restoring; the
        // crash image is cut to the synced length anyway.
        let keep = end.min(st.synced_len);
        if start < keep {
            let old = st.bytes[start..keep].to_vec();
            st.undo.push((start, old));
        }
        st.bytes[start..end].copy_from_slice(data);
        Ok(())
    }
}

impl super::wal::LogFile for MemFile {
    fn size(&self) -> io::Result<u64> {
        StorageBackend::len(self)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        StorageBackend::read(self, offset, out)
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        StorageBackend::write(self, offset, data)
    }

    fn sync_data(&self) -> io::Result<()> {
        StorageBackend::sync_data(self)
    }
}
