//! A redb backend kept in memory that outlives the `Database` using it.
//!
//! The simulation harness "crashes" a node by dropping its driver and
//! database, then reopens the same bytes: everything a committed transaction
//! wrote survives, nothing else does. Syncing is free, which keeps hundreds
//! of simulated seeds fast.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use redb::StorageBackend;

/// A shareable in-memory disk. Clones see the same bytes.
#[derive(Clone, Debug, Default)]
pub struct MemDisk {
    /// A std mutex: redb calls the backend from synchronous code only, and
    /// no lock is held across an await.
    bytes: Arc<Mutex<Vec<u8>>>,
}

impl MemDisk {
    /// A new, empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        // A panic while holding the lock leaves plain bytes behind; keep going.
        self.bytes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Overwrites `len` bytes at `offset` with garbage, for corruption tests.
    pub fn scribble(&self, offset: usize, len: usize) {
        let mut b = self.lock();
        let end = (offset + len).min(b.len());
        for x in &mut b[offset.min(end)..end] {
            *x ^= 0x5a;
        }
    }

    /// Current size in bytes.
    pub fn size(&self) -> usize {
        self.lock().len()
    }
}

impl StorageBackend for MemDisk {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.lock().len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let b = self.lock();
        let start = offset as usize;
        let end = start + out.len();
        if end > b.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past end",
            ));
        }
        out.copy_from_slice(&b[start..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.lock().resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut b = self.lock();
        let start = offset as usize;
        let end = start + data.len();
        if end > b.len() {
            b.resize(end, 0);
        }
        b[start..end].copy_from_slice(data);
        Ok(())
    }
}
