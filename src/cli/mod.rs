//! The commands of the `flotilla` binary that talk to a running cluster
//! through the [`crate::client`] library: data (`get`, `put`, `del`, `cas`,
//! `scan`) and operations (`status`, `groups`, `nodes`, `leader transfer`,
//! `node decommission`, `node remove`, `check`).
//!
//! Every command prints aligned text, or with `--json` one JSON document
//! whose shape the README documents. The exit code tells scripts what
//! happened: see [`exit`].

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;

mod ops;
use serde_json::{json, Value};

use crate::catalog::NodeState;
use crate::client::{Client, ClientConfig, KeyRange};
use crate::error::Error;
use crate::types::{GroupId, NodeId};

/// Exit codes.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// The key was not found, or a CAS expectation was not met.
    pub const NOT_FOUND: i32 = 1;
    /// The command line or the request was invalid.
    pub const USAGE: i32 = 2;
    /// The cluster was unreachable or did not answer in time.
    pub const UNAVAILABLE: i32 = 3;
    /// Refused: certificate or permission.
    pub const REFUSED: i32 = 4;
    /// `check` found replicas that differ.
    pub const INCONSISTENT: i32 = 5;
}

/// Options every client command shares.
#[derive(Clone, Debug)]
pub struct Globals {
    /// Nodes to contact first.
    pub endpoints: Vec<String>,
    /// Directory with `ca.crt` and an admin or client certificate.
    pub certs_dir: PathBuf,
    /// Deadline of each call, retries included.
    pub timeout: Duration,
    /// Print JSON instead of tables.
    pub json: bool,
    /// Whether standard output is a terminal: `get` ends a value with a
    /// newline only then, so that piped output is the value's exact bytes.
    pub terminal: bool,
}

/// Commands that talk to a cluster through the client library.
#[derive(Clone, Debug, Subcommand)]
pub enum ClientCommand {
    /// Prints the value of KEY, byte for byte (a newline is added only on
    /// a terminal); exit 1 when absent.
    Get {
        /// The key.
        key: String,
    },
    /// Sets KEY to VALUE, or to the bytes of standard input when VALUE is
    /// `-`, or to those of `--file`, for values that do not fit on a
    /// command line.
    Put {
        /// The key.
        key: String,
        /// The value (`-`: read it from standard input).
        #[arg(required_unless_present = "file")]
        value: Option<String>,
        /// Read the value from this file instead (`-` for standard input);
        /// at most the 1 MiB value limit is read.
        #[arg(long, conflicts_with = "value")]
        file: Option<PathBuf>,
    },
    /// Removes KEY (exit 1 when it was absent).
    Del {
        /// The key.
        key: String,
    },
    /// Sets KEY to NEW only if it holds OLD (or is absent); exit 1 when it
    /// does not, printing what it holds.
    Cas {
        /// The key.
        key: String,
        /// The value the key must hold.
        #[arg(
            long,
            conflicts_with = "expect_absent",
            required_unless_present = "expect_absent"
        )]
        expect: Option<String>,
        /// The key must be absent.
        #[arg(long)]
        expect_absent: bool,
        /// The new value (`-`: read it from standard input).
        #[arg(required_unless_present = "file")]
        new: Option<String>,
        /// Read the new value from this file instead (`-` for standard
        /// input); at most the 1 MiB value limit is read.
        #[arg(long, conflicts_with = "new")]
        file: Option<PathBuf>,
    },
    /// Lists keys in key order, one "KEY<TAB>VALUE" line of raw bytes
    /// each, printed as the pages of every group arrive.
    Scan {
        /// Keys starting with P.
        #[arg(long, conflicts_with_all = ["from", "to"], required_unless_present = "from")]
        prefix: Option<String>,
        /// First key (inclusive).
        #[arg(long)]
        from: Option<String>,
        /// Last key (exclusive).
        #[arg(long, requires = "from")]
        to: Option<String>,
        /// Most keys listed.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Every node (lifecycle, liveness, groups, leaderships, apply lag) and
    /// a summary of the groups.
    Status,
    /// Every group: voters, learners, leader, term, commit and apply index.
    Groups,
    /// Every node the catalog knows, with its state.
    Nodes,
    /// Leadership.
    Leader {
        /// What to do.
        #[command(subcommand)]
        command: LeaderCommand,
    },
    /// Membership of nodes (admin certificate).
    Node {
        /// What to do.
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Checks that every replica of every group holds the same state, at
    /// one index through each group's log (exit 5 when any differ).
    Check,
}

/// `flotilla leader ...`
#[derive(Clone, Debug, Subcommand)]
pub enum LeaderCommand {
    /// Hands the leadership of a group to another voter.
    Transfer {
        /// The group.
        #[arg(long)]
        group: u64,
        /// The node to lead it.
        #[arg(long)]
        to: u64,
    },
}

/// `flotilla node ...`
#[derive(Clone, Debug, Subcommand)]
pub enum NodeCommand {
    /// Moves every replica off node N (keeping 3 per group), then marks it
    /// removed; stopping it afterwards loses nothing.
    Decommission {
        /// The node.
        node: u64,
        /// How long to wait for its replicas to move.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
    /// Marks node N removed at once (for a node that is gone); its replicas
    /// are rebuilt elsewhere.
    Remove {
        /// The node.
        node: u64,
    },
}

/// The exit code for a failure.
pub fn exit_code(e: &Error) -> i32 {
    match e {
        Error::PermissionDenied(_) | Error::Certificate { .. } => exit::REFUSED,
        Error::Invalid(_)
        | Error::KeyTooLarge { .. }
        | Error::ValueTooLarge { .. }
        | Error::BatchSpansVShards { .. } => exit::USAGE,
        _ => exit::UNAVAILABLE,
    }
}

/// Runs `cmd`, writing its output to `out` and errors to `err`; returns the
/// exit code.
pub async fn run(g: &Globals, cmd: ClientCommand, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    if g.endpoints.is_empty() {
        let _ = writeln!(
            err,
            "error: no endpoints: pass --endpoints A,B,C or set FLOTILLA_ENDPOINTS"
        );
        return exit::USAGE;
    }
    let mut config = ClientConfig::from_certs_dir(g.endpoints.clone(), &g.certs_dir);
    config.timeout = g.timeout;
    let result = async {
        let client = Client::connect(config).await?;
        execute(g, &client, cmd, out).await
    }
    .await;
    match result {
        Ok((code, message)) => {
            if let Some(m) = message {
                let _ = writeln!(err, "{m}");
            }
            code
        }
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            exit_code(&e)
        }
    }
}

fn text(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => json!({ "hex": hex(bytes) }),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn print_json(out: &mut dyn Write, v: &Value) {
    let _ = writeln!(out, "{v}");
}

/// Writes rows as left-aligned columns two spaces apart, without borders,
/// so the output stays easy to read and to cut with `awk`.
fn table(out: &mut dyn Write, header: &[&str], rows: &[Vec<String>]) {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(header.iter().copied())
        .add_rows(rows.iter().cloned());
    for column in t.column_iter_mut() {
        column.set_padding((0, 2));
    }
    for line in t.lines() {
        let line = line.trim_end();
        if !line.is_empty() {
            let _ = writeln!(out, "{line}");
        }
    }
}

fn ids(nodes: &[NodeId]) -> String {
    if nodes.is_empty() {
        return "-".into();
    }
    nodes
        .iter()
        .map(|n| n.0.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The value of `put --file`: the file's bytes, or standard input's for
/// `-`. Reads one byte past the value limit at most, so an oversize input
/// is refused with the limit's message without being held whole.
fn read_value(path: &std::path::Path) -> crate::error::Result<Vec<u8>> {
    use std::io::Read;
    let max = crate::kv::Limits::default().max_value;
    let cap = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    let mut value = Vec::new();
    let stdin = path.as_os_str() == "-";
    let name = if stdin {
        "standard input".to_string()
    } else {
        path.display().to_string()
    };
    let read = if stdin {
        std::io::stdin().lock().take(cap).read_to_end(&mut value)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(cap).read_to_end(&mut value))
    };
    read.map_err(|e| Error::Invalid(format!("cannot read {name}: {e}")))?;
    if value.len() > max {
        return Err(Error::Invalid(format!(
            "{name} holds more than the {max}-byte value limit"
        )));
    }
    Ok(value)
}

/// A value given on the command line, where `-` means standard input, or
/// in a file.
fn value_of(
    arg: Option<String>,
    file: Option<PathBuf>,
    missing: &str,
) -> crate::error::Result<Vec<u8>> {
    match (arg, file) {
        (Some(v), _) if v == "-" => read_value(std::path::Path::new("-")),
        (Some(v), _) => Ok(v.into_bytes()),
        (None, Some(path)) => read_value(&path),
        (None, None) => Err(Error::Invalid(missing.into())),
    }
}

/// `scan`: rows printed as each page arrives, so neither the node nor this
/// process holds more than a page per group. Text is `KEY<TAB>VALUE` lines
/// of raw bytes; JSON is one document, written row by row.
async fn scan(
    g: &Globals,
    c: &Client,
    range: KeyRange,
    limit: usize,
    out: &mut dyn Write,
) -> Outcome {
    let mut pages = c.scan_pages(range, limit).await?;
    let mut count = 0usize;
    if g.json {
        let _ = write!(out, "{{\"rows\":[");
    }
    while let Some(rows) = pages.next_page().await? {
        for (k, v) in &rows {
            if g.json {
                let comma = if count == 0 { "" } else { "," };
                let _ = write!(out, "{comma}{}", json!({"key": text(k), "value": text(v)}));
            } else {
                let _ = out.write_all(k);
                let _ = out.write_all(b"\t");
                let _ = out.write_all(v);
                let _ = out.write_all(b"\n");
            }
            count += 1;
        }
        let _ = out.flush();
    }
    if g.json {
        let _ = writeln!(out, "],\"count\":{count}}}");
    }
    Ok((exit::OK, None))
}

fn state_name(s: NodeState) -> &'static str {
    match s {
        NodeState::Active => "active",
        NodeState::Decommissioning => "decommissioning",
        NodeState::Removed => "removed",
        NodeState::Dead => "dead",
    }
}

type Outcome = crate::error::Result<(i32, Option<String>)>;

async fn execute(g: &Globals, c: &Client, cmd: ClientCommand, out: &mut dyn Write) -> Outcome {
    match cmd {
        ClientCommand::Get { key } => {
            let v = c.get(key.as_bytes()).await?;
            if g.json {
                print_json(
                    out,
                    &json!({"key": key, "found": v.is_some(), "value": v.as_deref().map(text)}),
                );
            } else if let Some(v) = &v {
                let _ = out.write_all(v);
                if g.terminal {
                    let _ = writeln!(out);
                }
            }
            Ok(match v {
                Some(_) => (exit::OK, None),
                None => (exit::NOT_FOUND, Some(format!("key not found: {key}"))),
            })
        }
        ClientCommand::Put { key, value, file } => {
            let value = value_of(value, file, "put needs a VALUE or --file")?;
            c.put(key.as_bytes(), &value).await?;
            if g.json {
                print_json(out, &json!({"key": key, "written": true}));
            }
            Ok((exit::OK, None))
        }
        ClientCommand::Del { key } => {
            let existed = c.delete(key.as_bytes()).await?;
            if g.json {
                print_json(out, &json!({"key": key, "existed": existed}));
            }
            Ok(if existed {
                (exit::OK, None)
            } else {
                (exit::NOT_FOUND, Some(format!("key not found: {key}")))
            })
        }
        ClientCommand::Cas {
            key,
            expect,
            expect_absent: _,
            new,
            file,
        } => {
            let new = value_of(new, file, "cas needs a NEW value or --file")?;
            let o = c
                .cas(
                    key.as_bytes(),
                    expect.as_deref().map(str::as_bytes),
                    Some(&new),
                )
                .await?;
            if g.json {
                print_json(
                    out,
                    &json!({"key": key, "swapped": o.swapped, "current": o.current.as_deref().map(text)}),
                );
            }
            Ok(if o.swapped {
                (exit::OK, None)
            } else {
                let held = o.current.as_deref().map_or("(absent)".to_string(), |v| {
                    String::from_utf8_lossy(v).into_owned()
                });
                (
                    exit::NOT_FOUND,
                    Some(format!("expectation not met: {key} holds {held}")),
                )
            })
        }
        ClientCommand::Scan {
            prefix,
            from,
            to,
            limit,
        } => {
            let range = match (prefix, from) {
                (Some(p), _) => KeyRange::Prefix(p.into_bytes()),
                (None, Some(f)) => KeyRange::Range {
                    start: f.into_bytes(),
                    end: to.map(String::into_bytes),
                },
                (None, None) => return Err(Error::Invalid("give --prefix or --from".into())),
            };
            scan(g, c, range, limit, out).await
        }
        ClientCommand::Status => ops::status(g, c, out).await,
        ClientCommand::Groups => ops::groups(g, c, out).await,
        ClientCommand::Nodes => ops::nodes(g, c, out).await,
        ClientCommand::Leader {
            command: LeaderCommand::Transfer { group, to },
        } => {
            c.transfer_leader(GroupId(group), NodeId(to)).await?;
            // The transfer completes within an election; wait to report it.
            let deadline = tokio::time::Instant::now() + g.timeout;
            loop {
                let reports = ops::reports(c).await?;
                let leader = ops::leaders(&reports).get(&GroupId(group)).map(|(n, _)| *n);
                if leader == Some(NodeId(to)) {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::Unreachable(format!(
                        "group {group} is led by {leader:?}, not node {to}, after {:?}",
                        g.timeout
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if g.json {
                print_json(out, &json!({"group": group, "leader": to}));
            } else {
                let _ = writeln!(out, "group {group} is led by node {to}");
            }
            Ok((exit::OK, None))
        }
        ClientCommand::Node {
            command: NodeCommand::Decommission { node, wait },
        } => ops::decommission(g, c, NodeId(node), wait, out).await,
        ClientCommand::Node {
            command: NodeCommand::Remove { node },
        } => {
            c.set_node_state(NodeId(node), NodeState::Removed).await?;
            if g.json {
                print_json(out, &json!({"node": node, "state": "removed"}));
            } else {
                let _ = writeln!(out, "node {node} removed");
            }
            Ok((exit::OK, None))
        }
        ClientCommand::Check => ops::check(g, c, out).await,
    }
}
