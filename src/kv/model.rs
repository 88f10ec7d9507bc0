//! An in-memory [`KvStore`], for tests and for sequential models.

use std::collections::BTreeMap;

use super::{KvStore, Session, SessionTable};
use crate::error::Result;

/// A [`KvStore`] kept in ordered maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapStore {
    /// The KV rows.
    pub rows: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Sessions by client.
    pub sessions: BTreeMap<u64, Session>,
    /// The session totals and clock.
    pub table: SessionTable,
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
    fn session(&self, client: u64) -> Result<Option<Session>> {
        Ok(self.sessions.get(&client).cloned())
    }
    fn put_session(&mut self, client: u64, session: &Session) -> Result<()> {
        self.sessions.insert(client, session.clone());
        Ok(())
    }
    fn delete_session(&mut self, client: u64) -> Result<()> {
        self.sessions.remove(&client);
        Ok(())
    }
    fn sessions(&self) -> Result<Vec<(u64, Session)>> {
        Ok(self.sessions.iter().map(|(c, s)| (*c, s.clone())).collect())
    }
    fn session_table(&self) -> Result<SessionTable> {
        Ok(self.table.clone())
    }
    fn put_session_table(&mut self, table: &SessionTable) -> Result<()> {
        self.table = table.clone();
        Ok(())
    }
}
