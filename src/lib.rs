//! # Flotilla
//!
//! A sharded, replicated key-value store. Keys hash onto a fixed set of
//! virtual shards (vshards); vshards map onto many Raft groups; every group
//! of a node shares one redb database and, between nodes, one connection per
//! peer.
//!
//! ## The path of a write
//!
//! 1. The client hashes the key to its vshard (`xxh3_64(key) % vshards`) and
//!    looks up the owning group in the routing table taken from the catalog
//!    ([`catalog`]), then sends the command to that group's leader. A node
//!    that does not lead the group answers with a typed
//!    [`Error::NotLeader`] naming the leader it knows.
//! 2. The leader's [`multiraft::Driver`], the single owner of every Raft
//!    group on the node, proposes the command. In its next round it
//!    collects the Ready of every busy group and stages all their new
//!    entries and hard states in **one** write batch, which the caller
//!    persists ([`storage`]): one append and one fsync of the node's round
//!    log per round, for all groups. Leaders' appends leave before that
//!    fsync; followers' acknowledgements and votes only after it.
//! 3. Messages for each peer leave batched together. Once a quorum has the
//!    entry, it commits; the [`kv`] state machine applies it on every
//!    replica into the in-memory overlay, deduplicating retries by client
//!    session, and the leader answers. The storage engine writes applied
//!    rows to redb later, many rounds' worth at once, and writes the log
//!    entries into redb at checkpoints, every few megabytes of round log.
//!
//! Reads are linearizable: the driver batches the reads of each group into
//! one ReadIndex round trip and serves them once the group has applied up
//! to the confirmed index.
//!
//! ## Modules
//!
//! - [`types`]: id newtypes; [`error`]: one error enum, classified by what
//!   the caller must do.
//! - [`storage`]: the round log, redb and the overlay: where each byte
//!   lives and when it moves; the raft-rs `Storage` of each group; the
//!   round's write batch.
//! - [`multiraft`]: the driver, a state machine driven in rounds that
//!   writes no file and opens no socket.
//! - [`runtime`]: the driver's I/O shell: a round persisted through the
//!   engine, and the thread that runs the driver against a transport.
//! - [`kv`]: the deterministic KV state machine.
//! - [`catalog`]: group 0's state machine and routing.
//! - [`wire`]: rkyv encodings with validation.
//! - [`certs`]: the cluster CA and role-bearing certificates.
//! - [`api`]: the requests, answers and typed errors of client and node.
//! - [`transport`]: QUIC with mutual TLS between nodes, frames, refusals.
//! - [`node`]: lifecycle, the join loop, the request handlers, and the
//!   metrics and health endpoint.
//! - [`client`]: the client library, the one way anything talks to nodes.
//! - `cli`, `bench`: the `flotilla` command's own code, compiled only with
//!   the default feature `tooling`; an application embedding the client
//!   turns default features off.
//! - [`history`]: client histories of fault tests and their
//!   linearizability check.
//! - [`sim`]: a deterministic in-process cluster for tests and the demo.
//! - [`local`]: drivers on real threads wired in memory, for benchmarks.
//! - [`meter`]: lock-free histograms the hot paths feed, which the node's
//!   `/metrics` exports (`node::metrics`).
//!
//! Protocol code (multiraft, kv, catalog) reads no clock and no OS
//! randomness: time arrives as ticks and randomness as a seed, which is what
//! lets [`sim`] replay any run from its seed.

pub mod api;
#[cfg(feature = "tooling")]
pub mod bench;
pub mod catalog;
pub mod certs;
#[cfg(feature = "tooling")]
pub mod cli;
pub mod client;
pub mod demo;
pub mod error;
pub mod history;
pub mod kv;
pub mod local;
pub mod meter;
pub mod multiraft;
pub mod node;
pub mod runtime;
pub mod sim;
pub mod storage;
pub mod transport;
pub mod types;
pub mod wire;

pub use error::{Action, Error, Result};
