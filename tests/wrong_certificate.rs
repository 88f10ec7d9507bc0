//! A refused certificate is told apart from an unreachable node by the TLS
//! alert that ended the handshake, not by reading error text: a server of
//! another cluster (this side refuses its certificate), a client
//! certificate of another cluster (the server refuses it), and a server key
//! that does not match the pin all arrive as `Error::Certificate`, and a
//! port where nobody listens as `Error::Unreachable`.

#[path = "common/wire.rs"]
mod wire;

use wire::*;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flotilla::api::{RpcRequest, RpcResponse};
use flotilla::certs::{self, role_files, Role, CA_CERT};
use flotilla::client::{Client, ClientConfig};
use flotilla::node::raft_link::NoInbox;
use flotilla::transport::{TlsIdentity, Transport};
use flotilla::types::NodeId;
use flotilla::Error;

/// A node's transport, with the node certificate of `dir`, on loopback.
fn node(dir: &Path) -> Arc<Transport> {
    let identity = TlsIdentity::load_node(dir, None).unwrap();
    let t = Transport::bind(NodeId(1), "127.0.0.1:0".parse().unwrap(), &identity).unwrap();
    t.serve(Arc::new(NoInbox), Arc::new(Done));
    t
}

/// A client with the client certificate of `certs`, trusting the CA of
/// `ca`, asking `addr`.
fn client(certs: &Path, ca: &Path, pin: Option<[u8; 32]>) -> Client {
    let (cert, key) = role_files(certs, Role::Client);
    Client::new(ClientConfig {
        endpoints: vec![],
        ca: ca.join(CA_CERT),
        cert,
        key,
        pin,
        timeout: Duration::from_secs(5),
    })
    .unwrap()
}

/// A directory with a certificate set of a cluster of its own.
fn cluster() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    certs::create(dir.path(), &["127.0.0.1".into()], false).unwrap();
    dir
}

async fn ask(client: &Client, addr: SocketAddr) -> flotilla::Result<RpcResponse> {
    client.call_node(addr, &RpcRequest::Status).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_certificate_is_recognised_as_such() {
    let ours = cluster();
    let theirs = cluster();
    let t = node(ours.path());
    let addr = t.local_addr().unwrap();

    // The right certificates pass.
    let good = client(ours.path(), ours.path(), None);
    assert_eq!(ask(&good, addr).await.unwrap(), RpcResponse::Done);

    // This side refuses the server: its certificate is of another CA.
    let foreign_server = client(theirs.path(), theirs.path(), None);
    let refused = ask(&foreign_server, addr).await;
    assert!(
        matches!(refused, Err(Error::Certificate { .. })),
        "{refused:?}"
    );

    // The server refuses this side: it trusts the server's CA but presents
    // a certificate of another.
    let foreign_client = client(theirs.path(), ours.path(), None);
    let refused = ask(&foreign_client, addr).await;
    assert!(
        matches!(refused, Err(Error::Certificate { ref detail, .. }) if detail.contains("refused this certificate")),
        "{refused:?}"
    );

    // A pin that neither the CA nor the server's key matches.
    let pinned = client(ours.path(), ours.path(), Some([7; 32]));
    let refused = ask(&pinned, addr).await;
    assert!(
        matches!(refused, Err(Error::Certificate { ref detail, .. }) if detail.contains("pinned")),
        "{refused:?}"
    );

    // Nobody listening is no certificate problem.
    t.close();
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let nobody = silent.local_addr().unwrap();
    drop(silent);
    let unreachable = ask(&good, nobody).await;
    assert!(
        matches!(unreachable, Err(Error::Unreachable(_))),
        "{unreachable:?}"
    );
}
