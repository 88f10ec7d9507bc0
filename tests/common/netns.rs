//! A private network for one fault test: a network namespace per node,
//! each joined to one bridge by a veth pair, the bridge carrying an address
//! in the root namespace where the test's clients run.
//!
//! Partitions are routes: an `unreachable` route to a peer's /32 inside a
//! namespace stops what that namespace sends to the peer (one way; both
//! sides for a full cut). The kernel refuses the send with
//! `EHOSTUNREACH`, which QUIC counts as a lost datagram. (A `blackhole`
//! route refuses with `EINVAL`, which quinn takes for a network card
//! without segmentation offload and turns offload off for the socket's
//! life: the fault would change the node beyond the fault.) Blocking the
//! clients uses the same kind of route in the root namespace, for the
//! node's address only.
//!
//! Names carry a suffix unique to the run (process id and clock), so runs
//! on one machine do not collide; dropping a [`Net`] removes the routes it
//! added in the root namespace, its namespaces (which takes the veth pairs
//! with them) and its bridge, whether the test passed or not. Delay is not
//! here: this needs netem, which not every kernel has.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command as Process;
use std::sync::Mutex;

/// The port every node listens on, in its own namespace.
pub const NODE_PORT: u16 = 7000;

/// One end of a cut: a node (by index) or the clients in the root namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    /// The node with this index.
    Node(usize),
    /// The test process and its clients.
    Clients,
}

/// The namespaces, bridge and routes of one run.
pub struct Net {
    /// The bridge in the root namespace.
    bridge: String,
    /// The namespace of each node, by index.
    spaces: Vec<String>,
    /// Each node's address, by index.
    addrs: Vec<Ipv4Addr>,
    /// The bridge's address: where the clients' packets come from.
    gateway: Ipv4Addr,
    /// Cuts in place, (from, to). A std `Mutex`: the route commands run
    /// under it, and no await happens there.
    cuts: Mutex<Vec<(Side, Side)>>,
}

/// Runs `ip` with `args`; the error names the command and its complaint.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Process::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// Whether this process runs as root (namespaces need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0")
    })
}

impl Net {
    /// Creates a namespace per node on a fresh bridge, in a 10.x.y.0/24
    /// that no interface of the machine uses.
    pub fn create(nodes: usize) -> Result<Net, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let tag = format!("{:05x}", (std::process::id() ^ nanos) & 0xf_ffff);
        let taken = Process::new("ip")
            .args(["-4", "-o", "addr", "show"])
            .output()
            .map_err(|e| format!("cannot run ip: {e}"))?;
        let taken = String::from_utf8_lossy(&taken.stdout).into_owned();
        // Up to 64 subnets tried, starting from one drawn from the tag.
        let seed = u32::from_str_radix(&tag, 16).unwrap_or(0);
        let subnet = (0..64u32)
            .map(|i| {
                let n = (seed + i * 97) % (100 * 256);
                (100 + (n / 256) as u8, (n % 256) as u8)
            })
            .find(|(a, b)| !taken.contains(&format!(" 10.{a}.{b}.")))
            .ok_or("no free 10.x.y.0/24 subnet")?;
        let net = Net {
            bridge: format!("flnb{tag}"),
            spaces: (0..nodes)
                .map(|i| format!("flotilla-nemesis-{tag}-n{i}"))
                .collect(),
            addrs: (0..nodes)
                .map(|i| Ipv4Addr::new(10, subnet.0, subnet.1, 11 + i as u8))
                .collect(),
            gateway: Ipv4Addr::new(10, subnet.0, subnet.1, 1),
            cuts: Mutex::new(Vec::new()),
        };
        // From here on, dropping `net` removes whatever was made.
        ip(&["link", "add", &net.bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.gateway),
            "dev",
            &net.bridge,
        ])?;
        ip(&["link", "set", &net.bridge, "up"])?;
        for (i, ns) in net.spaces.iter().enumerate() {
            let (host, inner) = (format!("flnh{tag}{i}"), format!("flni{tag}{i}"));
            ip(&["netns", "add", ns])?;
            ip(&["link", "add", &host, "type", "veth", "peer", "name", &inner])?;
            ip(&["link", "set", &host, "master", &net.bridge, "up"])?;
            ip(&["link", "set", &inner, "netns", ns])?;
            let addr = format!("{}/24", net.addrs[i]);
            ip(&["-n", ns, "addr", "add", &addr, "dev", &inner])?;
            ip(&["-n", ns, "link", "set", &inner, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// The address node `i` listens on.
    pub fn addr(&self, i: usize) -> std::net::SocketAddr {
        (IpAddr::V4(self.addrs[i]), NODE_PORT).into()
    }

    /// What starts a program inside node `i`'s namespace.
    pub fn launcher(&self, i: usize) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.spaces[i].clone(),
        ]
    }

    /// The address packets to `side` go to, and the namespace (`None`:
    /// the root one) packets from `side` leave.
    fn ends(&self, side: Side) -> (Ipv4Addr, Option<&str>) {
        match side {
            Side::Node(i) => (self.addrs[i], Some(self.spaces[i].as_str())),
            Side::Clients => (self.gateway, None),
        }
    }

    /// Changes the route that stops what `from` sends to `to`.
    fn route(&self, verb: &str, from: Side, to: Side) -> Result<(), String> {
        let (dest, _) = self.ends(to);
        let dest = format!("{dest}/32");
        match self.ends(from).1 {
            Some(ns) => ip(&["-n", ns, "route", verb, "unreachable", &dest]),
            None => ip(&["route", verb, "unreachable", &dest]),
        }
    }

    /// Stops everything `from` sends to `to` (one way).
    pub fn cut(&self, from: Side, to: Side) -> Result<(), String> {
        let mut cuts = self.cuts.lock().unwrap_or_else(|p| p.into_inner());
        if !cuts.contains(&(from, to)) {
            self.route("add", from, to)?;
            cuts.push((from, to));
        }
        Ok(())
    }

    /// Cuts `a` and `b` apart both ways.
    pub fn cut_both(&self, a: Side, b: Side) -> Result<(), String> {
        self.cut(a, b)?;
        self.cut(b, a)
    }

    /// Removes every cut.
    pub fn heal(&self) -> Result<(), String> {
        let mut cuts = self.cuts.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((from, to)) = cuts.pop() {
            self.route("del", from, to)?;
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Failures are reported, not raised: a panic in drop while the test
        // is failing would abort the process before the rest is removed.
        if let Err(e) = self.heal() {
            eprintln!("nemesis network cleanup: {e}");
        }
        for ns in &self.spaces {
            if let Err(e) = ip(&["netns", "del", ns]) {
                if !e.contains("No such file") {
                    eprintln!("nemesis network cleanup: {e}");
                }
            }
        }
        if let Err(e) = ip(&["link", "del", &self.bridge]) {
            if !e.contains("Cannot find device") {
                eprintln!("nemesis network cleanup: {e}");
            }
        }
    }
}
