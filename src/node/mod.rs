//! Node lifecycle: how a process becomes, and stays, a member of a cluster.
//!
//! A node is in one [`Lifecycle`] state at a time, shown by `status` and
//! logged on every change. A node whose data directory holds a cluster id
//! restarts from its own state (`Restarting`); one without joins through its
//! seeds (`Joining`), driven by the pure [`join::JoinPlan`], which decides
//! whom to ask next, follows leader redirects and spaces whole passes with
//! exponential backoff and jitter.
//!
//! [`server::NodeServer`] is the node process itself: storage, driver and
//! transport, and the paths between them. [`handlers`] answers requests,
//! one file per family; [`raft_link`] joins the driver to the transport;
//! [`metrics`] serves `/metrics`, `/health` and `/ready` over HTTP.

pub mod config;
pub mod handlers;
pub mod join;
pub mod metrics;
pub mod ops;
pub mod raft_link;
pub mod resources;
pub mod server;

use std::fmt;

/// Where a node is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// Opening its data directory.
    Starting,
    /// Replaying its own log and state before serving.
    Restarting,
    /// Asking seeds to admit it; `attempt` counts whole passes from 1.
    Joining {
        /// The pass under way.
        attempt: u32,
    },
    /// Serving.
    Ready,
    /// Gave up; the reason says why.
    Failed {
        /// What went wrong, in words an operator can act on.
        reason: String,
    },
}

impl fmt::Display for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lifecycle::Starting => write!(f, "starting"),
            Lifecycle::Restarting => write!(f, "restarting"),
            Lifecycle::Joining { attempt } => write!(f, "joining (attempt {attempt})"),
            Lifecycle::Ready => write!(f, "ready"),
            Lifecycle::Failed { reason } => write!(f, "failed: {reason}"),
        }
    }
}
