//! An in-memory [`KvStore`], for tests and for sequential models.

use std::collections::BTreeMap;

use super::{KvStore, Response};
use crate::error::Result;

/// A [`KvStore`] kept in ordered maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapStore {
    /// The KV rows.
    pub rows: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Recorded responses by (client, seq).
    pub sessions: BTreeMap<(u64, u64), Response>,
    /// Session floors by client.
    pub floors: BTreeMap<u64, u64>,
}

impl KvStore for MapStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.rows.get(key).cloned())
    }
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.rows.insert(key.to_vec(), value.to_vec());
        Ok(())
    }
    fn delete(&mut self, key: &[u8]) -> Result<bool> {
        Ok(self.rows.remove(key).is_some())
    }
    fn session_get(&self, client: u64, seq: u64) -> Result<Option<Response>> {
        Ok(self.sessions.get(&(client, seq)).cloned())
    }
    fn session_put(&mut self, client: u64, seq: u64, response: &Response) -> Result<()> {
        self.sessions.insert((client, seq), response.clone());
        Ok(())
    }
    fn session_floor(&self, client: u64) -> Result<u64> {
        Ok(self.floors.get(&client).copied().unwrap_or(0))
    }
    fn session_trim(&mut self, client: u64, floor: u64) -> Result<()> {
        self.sessions.retain(|&(c, s), _| c != client || s >= floor);
        self.floors.insert(client, floor);
        Ok(())
    }
}
