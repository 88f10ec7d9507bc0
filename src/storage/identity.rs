//! Who a node is: its id, its cluster, its catalog, and the bootstrap that
//! writes them.
//!
//! These rows are written outside rounds, each in a synced redb commit of
//! its own ([`Engine::bootstrap`] writes identity, cluster id, catalog and
//! the initial Raft state of every group placed here in one transaction: a
//! crash leaves either nothing or a node that restarts). Afterwards the
//! catalog changes only through group 0's applies, in round batches.

use std::sync::atomic::Ordering;

use raft::eraftpb::{ConfState, HardState};
use redb::{ReadableDatabase, ReadableTable};

use super::schema::{
    begin_write, RaftStateRecord, FORMAT, META, META_CATALOG, META_CLUSTER_ID, META_FORMAT,
    META_INCARNATION, META_NODE_ID, META_STORE_ID, RAFT_STATE,
};
use super::{bytes_u64, u64_bytes, Engine, GroupStorage, INIT_INDEX, INIT_TERM};
use crate::catalog::{Catalog, GroupInfo};
use crate::error::{Error, Result};
use crate::types::{GroupId, NodeId, CATALOG_GROUP};
use crate::wire;

impl Engine {
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(META)?;
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }

    /// Whether this node belongs to a cluster. This alone decides restart
    /// versus join.
    pub fn is_bootstrapped(&self) -> Result<bool> {
        Ok(self.meta(META_CLUSTER_ID)?.is_some())
    }

    /// The cluster id, when bootstrapped.
    pub fn cluster_id(&self) -> Result<Option<u64>> {
        self.meta(META_CLUSTER_ID)?
            .map(|b| bytes_u64("cluster id", &b))
            .transpose()
    }

    /// This node's id, when bootstrapped.
    pub fn node_id(&self) -> Result<Option<NodeId>> {
        Ok(self
            .meta(META_NODE_ID)?
            .map(|b| bytes_u64("node id", &b))
            .transpose()?
            .map(NodeId))
    }

    /// The persisted catalog, when bootstrapped.
    pub fn catalog(&self) -> Result<Option<Catalog>> {
        self.meta(META_CATALOG)?
            .map(|b| Catalog::decode(&b))
            .transpose()
    }

    /// The random id of this data directory, if one was drawn.
    pub fn store_id(&self) -> Result<Option<u64>> {
        self.meta(META_STORE_ID)?
            .map(|b| bytes_u64("store id", &b))
            .transpose()
    }

    /// The id of this data directory: the stored one, or `fresh` (which
    /// must be random and non-zero), stored now for good.
    pub fn ensure_store_id(&self, fresh: u64) -> Result<u64> {
        if let Some(id) = self.store_id()? {
            return Ok(id);
        }
        let txn = begin_write(&self.db)?;
        txn.open_table(META)?
            .insert(META_STORE_ID, u64_bytes(fresh).as_slice())?;
        txn.commit()?;
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(fresh)
    }

    /// Counts one more start of this node and returns the new count.
    pub fn next_incarnation(&self) -> Result<u64> {
        let txn = begin_write(&self.db)?;
        let n = {
            let mut meta = txn.open_table(META)?;
            let old = match meta.get(META_INCARNATION)? {
                Some(v) => bytes_u64("incarnation", v.value())?,
                None => 0,
            };
            meta.insert(META_INCARNATION, u64_bytes(old + 1).as_slice())?;
            old + 1
        };
        txn.commit()?;
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(n)
    }

    /// Makes this node a member of the catalog's cluster: node id, cluster id,
    /// catalog and the initial Raft state of every group placed here, in one
    /// transaction. Refuses a node that already belongs to a cluster.
    pub fn bootstrap(&self, node: NodeId, catalog: &Catalog) -> Result<()> {
        let mut groups: Vec<_> = catalog
            .groups_of(node)
            .map(|g| (g.id, initial_record(g)))
            .collect();
        // Every node follows the catalog: one that is not among group 0's
        // first members starts an empty replica, as a joiner does, which
        // group 0's leader fills once placement makes it a learner.
        if !groups.iter().any(|(g, _)| *g == CATALOG_GROUP) {
            groups.insert(0, (CATALOG_GROUP, RaftStateRecord::default()));
        }
        self.write_membership(node, catalog, &groups)
    }

    /// Makes this node a joiner of the catalog's cluster: node id, cluster id
    /// and catalog, and an empty group 0, in one transaction. Group 0's leader
    /// then adds the node and sends it the catalog; placement does the rest.
    pub fn bootstrap_joiner(&self, node: NodeId, catalog: &Catalog) -> Result<()> {
        self.write_membership(
            node,
            catalog,
            &[(CATALOG_GROUP, RaftStateRecord::default())],
        )
    }

    /// Writes identity, cluster id, catalog and the given groups' initial
    /// state in one transaction, refusing a node that has a cluster already.
    fn write_membership(
        &self,
        node: NodeId,
        catalog: &Catalog,
        groups: &[(GroupId, RaftStateRecord)],
    ) -> Result<()> {
        if let Some(existing) = self.cluster_id()? {
            return Err(Error::Invalid(format!(
                "this data directory already belongs to cluster {existing:016x}"
            )));
        }
        let txn = begin_write(&self.db)?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(META_NODE_ID, u64_bytes(node.0).as_slice())?;
            meta.insert(META_CLUSTER_ID, u64_bytes(catalog.cluster_id).as_slice())?;
            meta.insert(META_FORMAT, FORMAT.to_le_bytes().as_slice())?;
            meta.insert(META_CATALOG, wire::encode(catalog).as_slice())?;
            let mut raft = txn.open_table(RAFT_STATE)?;
            for (g, rec) in groups {
                raft.insert(g.0, wire::encode(rec).as_slice())?;
            }
        }
        txn.commit()?;
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The storage of a group a catalog change placed on this node, opened
    /// once the batch that staged its [`new_group_record`] is persisted.
    pub fn new_group(&self, info: &GroupInfo, fresh: bool) -> GroupStorage {
        GroupStorage::fresh(
            (
                self.db.clone(),
                self.overlay.clone(),
                self.cache.clone(),
                self.snapshots.clone(),
            ),
            info.id,
            &new_group_record(info, fresh),
        )
    }
}

/// The Raft state record a group a catalog change placed on this node
/// starts from. A `fresh` group starts with the catalog's members as its
/// configuration; a group this node joins starts with none and waits for
/// its leader's snapshot. A round stages it with the catalog change, and
/// opens the group's storage ([`Engine::new_group`]) once it is persisted.
pub fn new_group_record(info: &GroupInfo, fresh: bool) -> RaftStateRecord {
    if fresh {
        initial_record(info)
    } else {
        RaftStateRecord::default()
    }
}

/// The Raft state a group starts from: its voters and learners, empty log.
///
/// The log starts as if compacted up to [`INIT_INDEX`]: the founding
/// configuration lives in the state, not in any entry, so a node added
/// later (whose log is empty) is always behind the leader's first index
/// and receives a snapshot carrying that configuration, rather than entries
/// it could not apply without it.
pub(crate) fn initial_record(info: &GroupInfo) -> RaftStateRecord {
    let cs = ConfState {
        voters: info.voters.iter().map(|n| n.0).collect(),
        learners: info.learners.iter().map(|n| n.0).collect(),
        ..Default::default()
    };
    let hs = HardState {
        term: INIT_TERM,
        commit: INIT_INDEX,
        ..Default::default()
    };
    RaftStateRecord::new(&hs, &cs, INIT_INDEX, INIT_TERM)
}
