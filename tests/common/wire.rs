//! Helpers shared by the tests that drive a node's transport directly
//! (`tests/transport.rs`, `tests/frames.rs`, `tests/wrong_certificate.rs`):
//! an inbox that hands Raft batches to a channel, a service that answers
//! every request with `Done`, loading a role's identity, and waiting for a
//! transport counter.
#![allow(dead_code)] // each test file uses its own subset

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use flotilla::api::{RpcRequest, RpcResponse};
use flotilla::certs::{role_files, Role, CA_CERT};
use flotilla::transport::rpc::Service;
use flotilla::transport::{Inbox, RaftMessage, TlsIdentity, TransportStats};
use flotilla::types::NodeId;

/// A batch of Raft messages as a transport delivered it.
pub type Delivered = (NodeId, Vec<RaftMessage>);

/// An inbox that sends every batch it is given to a channel.
pub struct ChanInbox(pub Mutex<mpsc::Sender<Delivered>>);

impl Inbox for ChanInbox {
    fn deliver(&self, from: NodeId, msgs: Vec<RaftMessage>) {
        let _ = self.0.lock().unwrap().send((from, msgs));
    }
}

/// Answers every request with `Done`.
pub struct Done;

impl Service for Done {
    fn handle(
        &self,
        _req: RpcRequest,
        _caller: Option<[u8; 32]>,
    ) -> Pin<Box<dyn Future<Output = RpcResponse> + Send + '_>> {
        Box::pin(async { RpcResponse::Done })
    }
}

/// The identity of `role` in the certificates directory `dir`.
pub fn identity(dir: &Path, role: Role) -> TlsIdentity {
    let (crt, key) = role_files(dir, role);
    TlsIdentity::load(&dir.join(CA_CERT), &crt, &key).unwrap()
}

/// Waits until `counter` reaches `at_least`, failing after `deadline`.
pub async fn wait_for_count(counter: &AtomicU64, at_least: u64, deadline: Duration) {
    let start = Instant::now();
    while TransportStats::get(counter) < at_least {
        assert!(
            start.elapsed() < deadline,
            "counter stayed at {}",
            TransportStats::get(counter)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
