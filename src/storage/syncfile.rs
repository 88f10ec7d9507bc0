//! The database file under redb, with a checkpoint's fsync run behind its
//! commit.
//!
//! A checkpoint (see `wal` and `checkpoint`) commits redb with a sync. Its
//! writes are a memory copy into the page cache; its fdatasync then waits
//! for the disk to take several megabytes, 20 to 40 ms on the test
//! machine, and redb's write lock (which rounds that flush need) would be
//! held for all of it. [`SyncFile`] lets the caller mark the
//! syncs of one commit as ones to run *behind*: `sync_data` starts each on
//! a helper thread and returns at once, and every later write or resize of
//! the file waits until it has finished. So the disk never holds more than
//! the last synced commit plus the writes of the one being synced, which is
//! exactly what a crash during an ordinary fsync leaves, and redb's
//! recovery handles it. A commit in two phases (every commit of the node:
//! see `schema::begin_write`) syncs twice: its second write waits for the
//! first sync, so the commit holds the lock for one sync, and the last one
//! runs behind. The round log keeps every record since the previous
//! checkpoint until [`SyncControl::wait`] confirms this one (see `wal`).
//!
//! A sync that fails in the background fails every later write and sync:
//! the node stops rather than go on over a file whose state it no longer
//! knows.

use std::fmt;
use std::io;
use std::ops::Bound;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// What the driver asks of the file's syncs.
#[derive(Default)]
pub(crate) struct SyncControl {
    state: Mutex<SyncState>,
    /// Signalled whenever `pending` or `stop` changes.
    changed: Condvar,
}

#[derive(Default)]
struct SyncState {
    /// Whether `sync_data` runs behind, until the caller clears it.
    defer: bool,
    /// Tests only: background syncs wait while this is set.
    #[cfg(test)]
    held: bool,
    /// A sync is running on the helper thread.
    pending: bool,
    /// The helper thread should end.
    stop: bool,
    /// The error a background sync met, kept for every later call.
    failed: Option<(io::ErrorKind, String)>,
}

impl SyncControl {
    fn lock(&self) -> MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes every `sync_data` of the file run behind until
    /// [`Self::clear_defer`]: set around one commit.
    pub(crate) fn defer_syncs(&self) {
        self.lock().defer = true;
    }

    /// Makes syncs run in place again once the commit `defer_syncs` was
    /// meant for returned, so no later sync runs behind by mistake.
    pub(crate) fn clear_defer(&self) {
        self.lock().defer = false;
    }

    /// Whether a sync is waiting or running behind.
    pub(crate) fn pending(&self) -> bool {
        self.lock().pending
    }

    /// Waits until no sync runs behind; fails if one failed.
    pub(crate) fn wait(&self) -> io::Result<()> {
        drop(self.idle()?);
        Ok(())
    }

    /// The state once no sync runs behind.
    fn idle(&self) -> io::Result<MutexGuard<'_, SyncState>> {
        let mut st = self.lock();
        while st.pending {
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        match &st.failed {
            Some((kind, msg)) => Err(io::Error::new(
                *kind,
                format!("an earlier background sync failed: {msg}"),
            )),
            None => Ok(st),
        }
    }
}

/// A redb backend whose syncs can run behind (see the module
/// documentation): a file ([`FileBackend`]), or in tests the in-memory disk.
pub(crate) struct SyncFile<B: StorageBackend = FileBackend> {
    inner: Arc<B>,
    ctl: Arc<SyncControl>,
}

impl<B: StorageBackend> fmt::Debug for SyncFile<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncFile").finish_non_exhaustive()
    }
}

impl SyncFile {
    /// Wraps `file`; a helper thread syncs it when asked to.
    pub(crate) fn open(file: std::fs::File) -> io::Result<(SyncFile, Arc<SyncControl>)> {
        let inner = FileBackend::new(file).map_err(|e| io::Error::other(e.to_string()))?;
        Self::new(inner)
    }
}

impl<B: StorageBackend> SyncFile<B> {
    /// Wraps `inner`; a helper thread syncs it when asked to.
    pub(crate) fn new(inner: B) -> io::Result<(SyncFile<B>, Arc<SyncControl>)> {
        let ctl = Arc::new(SyncControl::default());
        let inner = Arc::new(inner);
        let (syncer, worker) = (inner.clone(), ctl.clone());
        std::thread::Builder::new()
            .name("flotilla-sync".into())
            .spawn(move || sync_behind(syncer.as_ref(), &worker))?;
        Ok((
            SyncFile {
                inner,
                ctl: ctl.clone(),
            },
            ctl,
        ))
    }
}

#[cfg(test)]
impl SyncControl {
    /// Holds (or releases) background syncs, to take a crash image while
    /// one is still to run.
    pub(crate) fn hold(&self, held: bool) {
        self.lock().held = held;
        self.changed.notify_all();
    }
}

/// Whether the helper may start the pending sync.
fn may_sync(st: &SyncState) -> bool {
    #[cfg(test)]
    if st.held {
        return false;
    }
    st.pending
}

/// The helper thread: one sync per request, until told to stop.
fn sync_behind(file: &impl StorageBackend, ctl: &SyncControl) {
    let mut st = ctl.lock();
    loop {
        while !may_sync(&st) && !st.stop {
            st = ctl.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        if st.stop && !st.pending {
            return;
        }
        drop(st);
        let result = file.sync_data();
        st = ctl.lock();
        if let Err(e) = result {
            tracing::error!(error = %e, "background sync of the database failed");
            st.failed = Some((e.kind(), e.to_string()));
        }
        st.pending = false;
        ctl.changed.notify_all();
    }
}

impl<B: StorageBackend> Drop for SyncFile<B> {
    fn drop(&mut self) {
        let mut st = self.ctl.lock();
        st.stop = true;
        self.ctl.changed.notify_all();
        // The helper finishes a sync in flight before it ends.
        while st.pending {
            st = self.ctl.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl<B: StorageBackend> StorageBackend for SyncFile<B> {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let _idle = self.ctl.idle()?;
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let mut st = self.ctl.idle()?;
        if st.defer {
            st.pending = true;
            self.ctl.changed.notify_all();
            return Ok(());
        }
        drop(st);
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let _idle = self.ctl.idle()?;
        self.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.ctl.wait()?;
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deferred_sync_returns_at_once_and_later_writes_wait_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("db"))
            .unwrap();
        let (f, ctl) = SyncFile::open(file).unwrap();
        f.write(0, &[1; 4096]).unwrap();
        ctl.defer_syncs();
        f.sync_data().unwrap();
        // The next write is ordered after the sync: once it returns, no
        // sync is pending any more.
        f.write(4096, &[2; 4096]).unwrap();
        assert!(!ctl.lock().pending);
        // Until cleared, the next sync runs behind too.
        f.sync_data().unwrap();
        ctl.wait().unwrap();
        ctl.clear_defer();
        // An ordinary sync runs in place.
        f.sync_data().unwrap();
        assert!(!ctl.lock().pending);
        let mut back = [0u8; 8192];
        f.read(0, &mut back).unwrap();
        assert!(back[..4096].iter().all(|b| *b == 1) && back[4096..].iter().all(|b| *b == 2));
    }
}
