//! A node process under a 4 GiB address-space limit, as a container would
//! impose, attacked by a client certificate: connections that open every
//! request stream they may, each declaring a large frame, sending eight
//! bytes and holding. The node stays up, answers another client's writes
//! and reads during the attack and after it, and its log counts the
//! refusals: frames over the request limit at once, held ones once they
//! stall.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use common::*;
use flotilla::certs::{role_files, Role, CA_CERT};
use flotilla::transport::frame::{StreamKind, FRAME_STALL, MAX_REQUEST_FRAME_BYTES};
use flotilla::transport::tls::MAX_REQUEST_STREAMS;
use flotilla::transport::TlsIdentity;

/// The address-space limit the node runs under, in KiB (`ulimit -v`).
const ADDRESS_SPACE_KIB: u64 = 4 * 1024 * 1024;
/// Connections the attacker opens; each holds every stream it may.
const ATTACK_CONNECTIONS: usize = 4;

/// Opens every request stream `conn` allows, each declaring `declared`
/// bytes and sending eight; returns the streams, held open.
async fn hold_streams(
    conn: &quinn::Connection,
    declared: usize,
) -> Vec<(quinn::SendStream, quinn::RecvStream)> {
    let mut held = Vec::new();
    for _ in 0..MAX_REQUEST_STREAMS {
        let Ok((mut send, recv)) = conn.open_bi().await else {
            break;
        };
        let mut bytes = vec![StreamKind::Request.tag()];
        bytes.extend_from_slice(&(declared as u32).to_be_bytes());
        bytes.extend_from_slice(&[7; 8]);
        if send.write_all(&bytes).await.is_err() {
            break;
        }
        held.push((send, recv));
    }
    held
}

/// The node's reserved address space, from `/proc`, in KiB.
fn vm_size_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Whether the node's log has a refusal of `reason` (the log may be
/// coloured, so the field's name and value are looked for apart).
fn logged(dir: &Path, reason: &str) -> bool {
    std::fs::read_to_string(dir.join("n0.log"))
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains("refused") && l.contains(&format!("\"{reason}\"")))
}

/// The node's address-space limit, in bytes, as the kernel holds it.
fn address_space_limit(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

async fn put_and_get(client: &flotilla::client::Client, key: &str) {
    client.put(key.as_bytes(), b"still serving").await.unwrap();
    assert_eq!(
        client.get(key.as_bytes()).await.unwrap().as_deref(),
        Some(&b"still serving"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_under_an_address_space_limit_survives_held_streams() {
    let dir = test_dir();
    let addr = free_addr();
    let limit = format!("ulimit -v {ADDRESS_SPACE_KIB} && exec \"$@\"");
    let launcher = ["sh", "-c", &limit, "sh"].map(String::from);
    let node = spawn_via(&launcher, dir.path(), 0, addr, Some(&addr.to_string()), &[]);
    let pid = node.id();
    let mut nodes = Nodes([(0, node)].into(), dir.path().to_path_buf());
    init(dir.path(), addr).await;
    assert_eq!(address_space_limit(pid), Some(ADDRESS_SPACE_KIB * 1024));
    let client = client_through(dir.path(), &[addr]);
    put_and_get(&client, "before").await;

    // The attacker: connections of the client certificate, raw.
    let certs = dir.path().join("certs");
    let (crt, key) = role_files(&certs, Role::Client);
    let config = TlsIdentity::load(&certs.join(CA_CERT), &crt, &key)
        .unwrap()
        .client_config()
        .unwrap();
    let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let mut conns = Vec::new();
    let mut held = Vec::new();
    for i in 0..ATTACK_CONNECTIONS {
        let conn = endpoint
            .connect_with(config.clone(), addr, "127.0.0.1")
            .unwrap()
            .await
            .unwrap();
        // Half declare 64 MiB (refused from the length alone), half the
        // largest legal request (held until they stall).
        let declared = if i % 2 == 0 {
            64 << 20
        } else {
            MAX_REQUEST_FRAME_BYTES
        };
        held.extend(hold_streams(&conn, declared).await);
        conns.push(conn);
    }
    eprintln!(
        "under attack: {} streams held, node VmSize {} KiB",
        held.len(),
        vm_size_kib(pid)
    );
    put_and_get(&client, "during").await;

    // The oversize ones are refused at once, the held ones after the stall.
    let start = Instant::now();
    while !(logged(dir.path(), "oversize") && logged(dir.path(), "stalled")) {
        assert!(
            start.elapsed() < FRAME_STALL + DEADLINE,
            "the refusals were not logged"
        );
        tokio::time::sleep(POLL).await;
    }
    assert!(
        nodes.0.get_mut(&0).unwrap().try_wait().unwrap().is_none(),
        "the node exited"
    );
    eprintln!("after the stall: node VmSize {} KiB", vm_size_kib(pid));
    put_and_get(&client, "after").await;
    drop(held);
    for c in conns {
        c.close(0u32.into(), b"done");
    }
    drop(nodes);
    keep(dir);
}
