//! Group 0's state machine: the cluster catalog, and routing.
//!
//! The catalog names the cluster (its id and vshard count), its nodes, its
//! Raft groups with their voters and learners, and which group owns each
//! vshard. Every change is a [`CatalogCommand`] committed through group 0 and
//! applied by [`Catalog::apply`], a pure function that also reports the
//! [`Effect`]s the change has on one node: a replica to open
//! ([`Effect::OpenGroup`]), a replica to leave ([`Effect::LeaveGroup`]), a
//! node admitted. The driver stages the new catalog in the round's write
//! batch before the initial Raft state of a group it opens, in the same
//! batch, so no group storage ever exists on disk without the catalog entry
//! that created it. A replica it leaves is not dropped with the change: the
//! driver destroys it in a later round, once Raft has removed it from the
//! group or a grace period passed (see `multiraft::liveness`), so its rows
//! always outlive the catalog entry that moved it away.
//!
//! Routing is `key → vshard (xxh3_64(key) % vshard_count) → group`; the
//! leader of a group is a hint kept outside the catalog, because leadership
//! changes far more often than placement.

pub mod placement;
mod routing;

pub use routing::vshard_of;

use std::collections::BTreeMap;

use crate::error::{Error, Outcome, Rejection, Result};
use crate::types::{GroupId, NodeId, VShard, CATALOG_GROUP};

/// Default number of vshards, fixed for the cluster's life at `init`
/// (`flotilla init --vshards`). A cluster can never have more data groups
/// than vshards, so the default leaves room to grow to 16,384 groups; the
/// map costs 8 bytes a vshard (128 KiB) in each copy of the catalog, which
/// every node keeps and every client fetches when its routing is stale.
pub const DEFAULT_VSHARDS: u32 = 16_384;
/// The most vshards a cluster may have: a 512 KiB map.
pub const MAX_VSHARDS: u32 = 65_536;
/// Default number of data groups created at init.
pub const DEFAULT_DATA_GROUPS: u64 = 32;
/// Default replication factor.
pub const DEFAULT_REPLICAS: usize = 3;

/// Where a node stands in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum NodeState {
    /// Serving and eligible for replicas.
    Active,
    /// Replicas are being moved away.
    Decommissioning,
    /// Gone for good: its id never comes back, and a data directory that
    /// holds it refuses to start.
    Removed,
    /// Not heard from for the cluster's `--dead-after`, or its address was
    /// taken by a new data directory. It gets no new replicas, and its
    /// replicas move to live nodes when there are enough of them. A dead
    /// node that is heard from again becomes active (and empty: its old
    /// replicas were replaced or are destroyed on return).
    Dead,
}

/// A node as the catalog knows it.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct NodeInfo {
    /// The node's id.
    pub id: NodeId,
    /// Address peers and clients reach it at.
    pub addr: String,
    /// SHA-256 of its certificate's SubjectPublicKeyInfo (empty when unknown).
    pub spki_sha256: Vec<u8>,
    /// The random id of the data directory this node id belongs to, drawn
    /// when the directory was created. A new directory (a wiped or replaced
    /// disk) is a new store and so gets a new node id, never an old one.
    pub store_id: u64,
    /// Its state.
    pub state: NodeState,
}

/// A Raft group as the catalog knows it.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct GroupInfo {
    /// The group's id.
    pub id: GroupId,
    /// Voting members.
    pub voters: Vec<NodeId>,
    /// Non-voting members catching up.
    pub learners: Vec<NodeId>,
}

impl GroupInfo {
    /// Whether `node` holds a replica (voter or learner).
    pub fn has_replica(&self, node: NodeId) -> bool {
        self.voters.contains(&node) || self.learners.contains(&node)
    }
}

/// The cluster catalog.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Catalog {
    /// The cluster's id, chosen at init; never changes.
    pub cluster_id: u64,
    /// Number of vshards; never changes.
    pub vshard_count: u32,
    /// Bumped by every applied change, so caches can tell they are stale.
    pub epoch: u64,
    /// Nodes by id.
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    /// Groups by id, group 0 included.
    pub groups: BTreeMap<GroupId, GroupInfo>,
    /// `vshards[v]` is the group that owns vshard `v`.
    pub vshards: Vec<GroupId>,
    /// Leaders an operator chose (`flotilla leader transfer`), by group.
    /// Each group's leader hands leadership to its chosen node while that
    /// node is a voter; groups without a choice rotate over their voters.
    pub preferred_leaders: BTreeMap<GroupId, NodeId>,
}

/// A change to the catalog, proposed to group 0.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum CatalogCommand {
    /// Adds a node or updates its address and pin.
    UpsertNode(NodeInfo),
    /// Admits a joining node: it gets the id already registered for its
    /// store (so a retried join is admitted once), else the next id never
    /// used. A member at the same address with another store is a node
    /// whose disk was replaced: it is marked [`NodeState::Dead`]. A store
    /// whose id was removed is refused.
    AddNode {
        /// Where peers and clients reach it.
        addr: String,
        /// SHA-256 of its certificate's SubjectPublicKeyInfo.
        spki_sha256: Vec<u8>,
        /// The random id of its data directory.
        store_id: u64,
    },
    /// Changes a node's state.
    SetNodeState {
        /// The node.
        node: NodeId,
        /// Its new state.
        state: NodeState,
    },
    /// Records what group 0's leader observed of a node's liveness: `dead`
    /// turns an active node dead, `!dead` a dead node active. Any other
    /// state is left alone, so an observation that raced with an
    /// operator's decision never overrides it.
    SetLiveness {
        /// The node.
        node: NodeId,
        /// Whether it is dead.
        dead: bool,
    },
    /// Creates a data group with the given members.
    CreateGroup(GroupInfo),
    /// Records a group's membership after a Raft conf change.
    SetGroupMembers(GroupInfo),
    /// Makes `node` (a voter) the leader `group` should have.
    PreferLeader {
        /// The group.
        group: GroupId,
        /// Its leader from now on.
        node: NodeId,
    },
    /// Moves vshards `first..=last` to `group`.
    AssignVShards {
        /// First vshard moved.
        first: u32,
        /// Last vshard moved.
        last: u32,
        /// The new owner.
        group: GroupId,
    },
}

/// What an applied catalog change means for one node's local storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// This node now holds a replica of the group: create its storage.
    OpenGroup {
        /// The group as the catalog has it.
        info: GroupInfo,
        /// A group created by this change: every member starts from the
        /// same configuration. Otherwise this node joins a running group
        /// and starts empty, waiting for its leader's snapshot.
        fresh: bool,
    },
    /// A node was admitted with this id (reported on every replica; only
    /// the proposer uses it, to answer the joiner).
    NodeAdmitted(NodeId),
    /// This node no longer belongs in the group: once Raft agrees (see
    /// `multiraft::membership`), its replica is destroyed.
    LeaveGroup(GroupId),
}

impl Catalog {
    /// A fresh catalog: `nodes` all active, group 0 on every node (up to
    /// `replicas` of them), `data_groups` groups with `replicas` replicas
    /// each placed round-robin, and the vshards spread evenly over them.
    pub fn bootstrap(
        cluster_id: u64,
        vshard_count: u32,
        nodes: &[(NodeId, String)],
        data_groups: u64,
        replicas: usize,
    ) -> Result<Catalog> {
        if nodes.is_empty() || vshard_count == 0 || data_groups == 0 {
            return Err(Error::Invalid(
                "a catalog needs at least one node, one vshard and one data group".into(),
            ));
        }
        if vshard_count > MAX_VSHARDS {
            return Err(Error::Invalid(format!(
                "{vshard_count} vshards is more than the {MAX_VSHARDS} a cluster may have"
            )));
        }
        if data_groups > u64::from(vshard_count) {
            return Err(Error::Invalid(format!(
                "{data_groups} data groups cannot share {vshard_count} vshards"
            )));
        }
        let ids: Vec<NodeId> = nodes.iter().map(|(id, _)| *id).collect();
        let replicas = replicas.clamp(1, ids.len());
        let mut groups = BTreeMap::new();
        groups.insert(
            CATALOG_GROUP,
            GroupInfo {
                id: CATALOG_GROUP,
                voters: ids[..replicas].to_vec(),
                learners: vec![],
            },
        );
        for g in 1..=data_groups {
            let voters = (0..replicas)
                .map(|r| ids[((g as usize - 1) + r) % ids.len()])
                .collect();
            groups.insert(
                GroupId(g),
                GroupInfo {
                    id: GroupId(g),
                    voters,
                    learners: vec![],
                },
            );
        }
        let vshards = (0..u64::from(vshard_count))
            .map(|v| GroupId(1 + v * data_groups / u64::from(vshard_count)))
            .collect();
        let nodes = nodes
            .iter()
            .map(|(id, addr)| {
                let info = NodeInfo {
                    id: *id,
                    addr: addr.clone(),
                    spki_sha256: vec![],
                    store_id: 0,
                    state: NodeState::Active,
                };
                (*id, info)
            })
            .collect();
        Ok(Catalog {
            cluster_id,
            vshard_count,
            epoch: 1,
            nodes,
            groups,
            vshards,
            preferred_leaders: BTreeMap::new(),
        })
    }

    /// The group that owns `key`.
    pub fn group_of(&self, key: &[u8]) -> GroupId {
        let v = vshard_of(key, self.vshard_count);
        self.vshards[v.0 as usize]
    }

    /// The groups `node` holds a replica of.
    pub fn groups_of(&self, node: NodeId) -> impl Iterator<Item = &GroupInfo> {
        self.groups.values().filter(move |g| g.has_replica(node))
    }

    /// Applies a committed change. Pure: the same catalog and command give
    /// the same result everywhere; `local` only selects which effects are
    /// returned. A command that does not fit the catalog is rejected without
    /// changing anything (every replica rejects it alike): each arm checks
    /// everything before it writes. Nothing here can fail otherwise, so the
    /// only error is a [`Rejection`].
    pub fn apply(&mut self, cmd: &CatalogCommand, local: NodeId) -> Outcome<Vec<Effect>> {
        let mut effects = Vec::new();
        match cmd {
            CatalogCommand::UpsertNode(info) => {
                self.nodes.insert(info.id, info.clone());
            }
            CatalogCommand::AddNode {
                addr,
                spki_sha256,
                store_id,
            } => {
                let known = (*store_id != 0)
                    .then(|| self.nodes.values().find(|n| n.store_id == *store_id))
                    .flatten();
                let id = match known {
                    Some(n) if n.state == NodeState::Removed => {
                        return Err(Rejection::Invalid(format!(
                            "node {} was removed from the cluster; its data directory cannot rejoin \
                             (start it with --wipe-and-join to join as a new node)",
                            n.id.0
                        )))
                    }
                    Some(n) => n.id,
                    None => self.next_node_id(),
                };
                // Another store at this address: that member's disk is gone.
                for n in self.nodes.values_mut() {
                    if n.id != id && n.addr == *addr && n.state == NodeState::Active {
                        n.state = NodeState::Dead;
                    }
                }
                let state = self.nodes.get(&id).map_or(NodeState::Active, |n| n.state);
                let info = NodeInfo {
                    id,
                    addr: addr.clone(),
                    spki_sha256: spki_sha256.clone(),
                    store_id: *store_id,
                    state,
                };
                self.nodes.insert(id, info);
                effects.push(Effect::NodeAdmitted(id));
            }
            CatalogCommand::SetNodeState { node, state } => {
                let info = self
                    .nodes
                    .get_mut(node)
                    .ok_or_else(|| Rejection::Invalid(format!("unknown node {node}")))?;
                if info.state == NodeState::Removed && *state != NodeState::Removed {
                    return Err(Rejection::Invalid(format!(
                        "node {} was removed; a removed node never comes back",
                        node.0
                    )));
                }
                info.state = *state;
            }
            CatalogCommand::SetLiveness { node, dead } => {
                let info = self
                    .nodes
                    .get_mut(node)
                    .ok_or_else(|| Rejection::Invalid(format!("unknown node {node}")))?;
                info.state = match (info.state, dead) {
                    (NodeState::Active, true) => NodeState::Dead,
                    (NodeState::Dead, false) => NodeState::Active,
                    (s, _) => s,
                };
            }
            CatalogCommand::CreateGroup(info) => {
                if self.groups.contains_key(&info.id) {
                    return Err(Rejection::Invalid(format!("{} already exists", info.id)));
                }
                self.check_members(info)?;
                self.groups.insert(info.id, info.clone());
                if info.has_replica(local) {
                    effects.push(Effect::OpenGroup {
                        info: info.clone(),
                        fresh: true,
                    });
                }
            }
            CatalogCommand::SetGroupMembers(info) => {
                let old = self
                    .groups
                    .get(&info.id)
                    .ok_or_else(|| Rejection::Invalid(format!("unknown group {}", info.id)))?;
                self.check_members(info)?;
                let joins = info.has_replica(local) && !old.has_replica(local);
                let leaves = old.has_replica(local) && !info.has_replica(local);
                self.groups.insert(info.id, info.clone());
                if joins {
                    effects.push(Effect::OpenGroup {
                        info: info.clone(),
                        fresh: false,
                    });
                }
                if leaves {
                    effects.push(Effect::LeaveGroup(info.id));
                }
            }
            CatalogCommand::PreferLeader { group, node } => {
                let info = self
                    .groups
                    .get(group)
                    .ok_or_else(|| Rejection::Invalid(format!("there is no {group}")))?;
                if !info.voters.contains(node) {
                    return Err(Rejection::Invalid(format!(
                        "{node} is not a voter of {group}; its voters are {:?}",
                        info.voters
                    )));
                }
                self.preferred_leaders.insert(*group, *node);
            }
            CatalogCommand::AssignVShards { first, last, group } => {
                if first > last || *last >= self.vshard_count {
                    return Err(Rejection::Invalid(format!(
                        "bad vshard range {first}..={last}"
                    )));
                }
                if !self.groups.contains_key(group) || *group == CATALOG_GROUP {
                    return Err(Rejection::Invalid(format!("{group} cannot own vshards")));
                }
                for v in *first..=*last {
                    self.vshards[v as usize] = *group;
                }
            }
        }
        self.epoch += 1;
        Ok(effects)
    }

    /// The id the next admitted node gets: above every id ever given, so an
    /// id is never reused (nodes are never deleted from the catalog, only
    /// marked removed).
    fn next_node_id(&self) -> NodeId {
        NodeId(self.nodes.keys().next_back().map_or(1, |n| n.0 + 1))
    }

    /// A group's members must be known nodes, each listed once, with at
    /// least one voter: Raft could never reach any other configuration.
    fn check_members(&self, info: &GroupInfo) -> Outcome<()> {
        if info.voters.is_empty() {
            return Err(Rejection::Invalid(format!("{} needs a voter", info.id)));
        }
        let mut seen = std::collections::BTreeSet::new();
        for n in info.voters.iter().chain(&info.learners) {
            if !self.nodes.contains_key(n) {
                return Err(Rejection::Invalid(format!(
                    "{} names unknown node {n}",
                    info.id
                )));
            }
            if !seen.insert(*n) {
                return Err(Rejection::Invalid(format!(
                    "{} lists {n} more than once",
                    info.id
                )));
            }
        }
        Ok(())
    }

    /// Decodes a catalog (from disk, a peer or a snapshot) and checks that
    /// its routing is whole: a positive vshard count, one owner per vshard,
    /// and every owner a data group the catalog holds. Routing on anything
    /// less could not find a key's group, so it is refused here as corrupt.
    pub fn decode(bytes: &[u8]) -> Result<Catalog> {
        let c: Catalog = crate::wire::decode("catalog", bytes)?;
        let corrupt = |detail: String| Error::Corrupt {
            what: "catalog",
            detail,
        };
        if c.vshard_count == 0 || c.vshards.len() != c.vshard_count as usize {
            return Err(corrupt(format!(
                "{} vshards listed for a count of {}",
                c.vshards.len(),
                c.vshard_count
            )));
        }
        if let Some(g) = c
            .vshards
            .iter()
            .find(|g| **g == CATALOG_GROUP || !c.groups.contains_key(g))
        {
            return Err(corrupt(format!(
                "a vshard is owned by {g}, not a data group"
            )));
        }
        Ok(c)
    }

    /// The vshard of `key` under this catalog.
    pub fn vshard(&self, key: &[u8]) -> VShard {
        vshard_of(key, self.vshard_count)
    }
}

#[cfg(test)]
mod tests;
