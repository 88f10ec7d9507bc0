//! Certificates: a cluster CA and leaf certificates that carry a role.
//!
//! Every connection in a Flotilla cluster is mutual TLS against one cluster
//! CA. A leaf certificate also says what its holder may do, as a URI in its
//! subjectAltName: `urn:flotilla:role:node` (may speak Raft and serve),
//! `urn:flotilla:role:admin` (may change membership and placement) or
//! `urn:flotilla:role:client` (may read and write keys). [`create`] writes a
//! development set with rcgen; [`issue_node`] signs one more node
//! certificate with the CA of an existing set; [`role_of`], [`spki_sha256`]
//! and [`not_after`] read what the transport checks on every connection.
//!
//! Each node should hold a key of its own (`node-NAME.crt`/`.key`): the
//! catalog pins every node's key, and a pin means something only when no
//! other node holds the same key. A shared `node.crt` still works, for sets
//! made before per-node keys existed, but then any node can pass for any
//! other. Certificates expire: the CA after [`DEFAULT_CA_DAYS`], the rest
//! after [`DEFAULT_DAYS`], unless told otherwise; [`expiry`] decides when an
//! operator should be warned.
//!
//! Left out for now: revocation, and changing a node's key (renewing with
//! [`issue_node`] keeps the key, so the catalog's pin stays valid).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

pub mod expiry;

/// The cluster CA certificate.
pub const CA_CERT: &str = "ca.crt";
/// The cluster CA key: keep it off the nodes in production.
pub const CA_KEY: &str = "ca.key";

/// Default lifetime of a cluster CA, in days: ten years, since replacing a
/// CA means reissuing every certificate in the cluster at once.
pub const DEFAULT_CA_DAYS: u32 = 3650;
/// Default lifetime of node, admin and client certificates, in days: a
/// year, so that a stolen key stops working without anyone acting, while
/// renewal stays a yearly chore.
pub const DEFAULT_DAYS: u32 = 365;
/// How far back a new certificate's validity starts, in seconds: an hour,
/// so that a machine whose clock runs a little behind the one that made it
/// accepts it at once.
const BACKDATE_SECS: i64 = 3600;
/// Seconds in a day.
const DAY_SECS: i64 = 86_400;
/// Longest node name: it becomes part of a file name.
const MAX_NAME_LEN: usize = 64;

/// How long new certificates are valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// Days the CA is valid from now.
    pub ca_days: u32,
    /// Days node, admin and client certificates are valid from now.
    pub days: u32,
}

impl Default for Validity {
    fn default() -> Self {
        Validity {
            ca_days: DEFAULT_CA_DAYS,
            days: DEFAULT_DAYS,
        }
    }
}

/// What a certificate's holder may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// A cluster node: serves, and speaks Raft with other nodes.
    Node,
    /// An operator: everything a client may do, plus membership and placement.
    Admin,
    /// An application: reads and writes keys.
    Client,
}

impl Role {
    /// The subjectAltName URI that carries the role.
    pub fn uri(self) -> &'static str {
        match self {
            Role::Node => "urn:flotilla:role:node",
            Role::Admin => "urn:flotilla:role:admin",
            Role::Client => "urn:flotilla:role:client",
        }
    }

    /// The file stem of the role's certificate and key (`node.crt`, ...).
    pub fn file_stem(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Admin => "admin",
            Role::Client => "client",
        }
    }

    fn from_uri(uri: &str) -> Option<Role> {
        [Role::Node, Role::Admin, Role::Client]
            .into_iter()
            .find(|r| r.uri() == uri)
    }
}

/// The certificate and key files of one role in a certificates directory.
pub fn role_files(dir: &Path, role: Role) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{}.crt", role.file_stem())),
        dir.join(format!("{}.key", role.file_stem())),
    )
}

/// Refuses a node name that could not be a plain file name: only ASCII
/// letters, digits, `-` and `_`, at most [`MAX_NAME_LEN`] of them.
pub fn check_node_name(name: &str) -> Result<()> {
    let plain = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if name.is_empty() || name.len() > MAX_NAME_LEN || !plain {
        return Err(Error::Invalid(format!(
            "node name {name:?} must be 1 to {MAX_NAME_LEN} letters, digits, '-' or '_'"
        )));
    }
    Ok(())
}

/// The certificate and key a node presents: `node-NAME.crt`/`.key` for a
/// named node, the shared `node.crt`/`node.key` otherwise.
pub fn node_files(dir: &Path, name: Option<&str>) -> Result<(PathBuf, PathBuf)> {
    match name {
        None => Ok(role_files(dir, Role::Node)),
        Some(n) => {
            check_node_name(n)?;
            Ok((
                dir.join(format!("node-{n}.crt")),
                dir.join(format!("node-{n}.key")),
            ))
        }
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Sets `p` valid from a little before now for `days` days.
fn set_validity(p: &mut CertificateParams, days: u32) -> Result<()> {
    let now = unix_now();
    let at = |secs: i64| {
        x509_parser::time::ASN1Time::from_timestamp(secs)
            .map(|t| t.to_datetime())
            .map_err(|e| Error::Invalid(format!("no certificate can be valid that long: {e}")))
    };
    if days == 0 {
        return Err(Error::Invalid(
            "a certificate must be valid for at least one day".into(),
        ));
    }
    p.not_before = at(now - BACKDATE_SECS)?;
    p.not_after = at(now + i64::from(days) * DAY_SECS)?;
    Ok(())
}

fn cert_error(path: &Path, detail: impl std::fmt::Display) -> Error {
    Error::Certificate {
        path: path.display().to_string(),
        detail: detail.to_string(),
    }
}

fn rcgen_error(e: rcgen::Error) -> Error {
    Error::Certificate {
        path: String::new(),
        detail: e.to_string(),
    }
}

/// Writes `contents` to `path`; with `secret`, readable by the owner only.
fn write_file(path: &Path, contents: &str, secret: bool) -> Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| cert_error(path, e))?;
    #[cfg(unix)]
    if secret {
        // An existing file keeps its old mode through open(); force it.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| cert_error(path, e))?;
    }
    f.write_all(contents.as_bytes())
        .map_err(|e| cert_error(path, e))
}

/// The parameters of a leaf certificate; a node's common name carries its
/// name when it has one.
fn leaf_params(
    role: Role,
    name: Option<&str>,
    hosts: &[String],
    days: u32,
) -> Result<CertificateParams> {
    let sans: Vec<String> = if role == Role::Node {
        hosts.to_vec()
    } else {
        Vec::new()
    };
    let mut p = CertificateParams::new(sans).map_err(rcgen_error)?;
    let uri = role.uri().try_into().map_err(rcgen_error)?;
    p.subject_alt_names.push(SanType::URI(uri));
    let mut dn = DistinguishedName::new();
    let cn = match name {
        Some(n) => format!("flotilla {} {n}", role.file_stem()),
        None => format!("flotilla {}", role.file_stem()),
    };
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    set_validity(&mut p, days)?;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = match role {
        Role::Node => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Role::Admin | Role::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    Ok(p)
}

/// Creates a cluster CA and a node, an admin and a client certificate in
/// `dir`, valid for the default lifetimes, with one node certificate
/// (`node.crt`) for every node: see [`create_set`].
pub fn create(dir: &Path, hosts: &[String], force: bool) -> Result<Vec<PathBuf>> {
    create_set(dir, hosts, None, Validity::default(), force)
}

/// Creates a cluster CA, an admin and a client certificate in `dir`, and
/// node certificates valid for `hosts` (IP addresses or DNS names): with
/// `nodes` = `Some(n)`, one key each for nodes named `1` to `n`
/// (`node-1.crt`, ...), else one shared `node.crt`. Refuses to replace an
/// existing CA unless `force` is set: a new CA locks every existing node
/// and client out.
pub fn create_set(
    dir: &Path,
    hosts: &[String],
    nodes: Option<usize>,
    validity: Validity,
    force: bool,
) -> Result<Vec<PathBuf>> {
    if hosts.is_empty() {
        return Err(Error::Invalid(
            "a node certificate needs at least one host".into(),
        ));
    }
    if nodes == Some(0) {
        return Err(Error::Invalid("--nodes must be at least 1".into()));
    }
    let ca_path = dir.join(CA_CERT);
    if ca_path.exists() && !force {
        return Err(cert_error(
            &ca_path,
            "a CA already exists here; pass --force to replace it (every certificate it signed stops working)",
        ));
    }
    fs::create_dir_all(dir).map_err(|e| cert_error(dir, e))?;

    let ca_key = KeyPair::generate().map_err(rcgen_error)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "flotilla cluster CA");
    ca_params.distinguished_name = dn;
    set_validity(&mut ca_params, validity.ca_days)?;
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(rcgen_error)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let mut written = Vec::new();
    write_file(&ca_path, &ca_cert.pem(), false)?;
    written.push(ca_path);
    let ca_key_path = dir.join(CA_KEY);
    write_file(&ca_key_path, &ca_key.serialize_pem(), true)?;
    written.push(ca_key_path);
    let names: Vec<Option<String>> = match nodes {
        Some(n) => (1..=n).map(|i| Some(i.to_string())).collect(),
        None => vec![None],
    };
    for name in &names {
        let (crt, key) = node_files(dir, name.as_deref())?;
        let pair = KeyPair::generate().map_err(rcgen_error)?;
        sign_leaf(
            Role::Node,
            name.as_deref(),
            hosts,
            validity.days,
            &pair,
            &issuer,
            &crt,
        )?;
        write_file(&key, &pair.serialize_pem(), true)?;
        written.extend([crt, key]);
    }
    for role in [Role::Admin, Role::Client] {
        let (crt, key) = role_files(dir, role);
        let pair = KeyPair::generate().map_err(rcgen_error)?;
        sign_leaf(role, None, hosts, validity.days, &pair, &issuer, &crt)?;
        write_file(&key, &pair.serialize_pem(), true)?;
        written.extend([crt, key]);
    }
    Ok(written)
}

/// Signs a leaf certificate for `key` and writes it to `crt`.
fn sign_leaf(
    role: Role,
    name: Option<&str>,
    hosts: &[String],
    days: u32,
    key: &KeyPair,
    issuer: &Issuer<'_, &KeyPair>,
    crt: &Path,
) -> Result<()> {
    let cert = leaf_params(role, name, hosts, days)?
        .signed_by(key, issuer)
        .map_err(rcgen_error)?;
    write_file(crt, &cert.pem(), false)
}

/// Signs a certificate for node `name` with the CA in `dir`, valid for
/// `hosts` and `days`, and writes `node-NAME.crt`. An existing
/// `node-NAME.key` is kept, so a renewed certificate holds the key the
/// catalog pins; without one a new key is made. Returns the files written.
pub fn issue_node(dir: &Path, name: &str, hosts: &[String], days: u32) -> Result<Vec<PathBuf>> {
    if hosts.is_empty() {
        return Err(Error::Invalid(
            "a node certificate needs at least one host".into(),
        ));
    }
    let (crt, key_path) = node_files(dir, Some(name))?;
    let read = |p: &Path| fs::read_to_string(p).map_err(|e| cert_error(p, e));
    let ca_path = dir.join(CA_CERT);
    let ca_key_path = dir.join(CA_KEY);
    let ca_key =
        KeyPair::from_pem(&read(&ca_key_path)?).map_err(|e| cert_error(&ca_key_path, e))?;
    let issuer =
        Issuer::from_ca_cert_pem(&read(&ca_path)?, &ca_key).map_err(|e| cert_error(&ca_path, e))?;
    let mut written = Vec::new();
    let key = if key_path.exists() {
        KeyPair::from_pem(&read(&key_path)?).map_err(|e| cert_error(&key_path, e))?
    } else {
        let pair = KeyPair::generate().map_err(rcgen_error)?;
        write_file(&key_path, &pair.serialize_pem(), true)?;
        written.push(key_path);
        pair
    };
    sign_leaf(Role::Node, Some(name), hosts, days, &key, &issuer, &crt)?;
    written.insert(0, crt);
    Ok(written)
}

/// The role a DER certificate carries, if any.
pub fn role_of(cert_der: &[u8]) -> Result<Option<Role>> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|e| Error::Certificate {
            path: "peer certificate".into(),
            detail: e.to_string(),
        })?;
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Ok(None);
    };
    Ok(san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(uri) => Role::from_uri(uri),
        _ => None,
    }))
}

/// When a DER certificate stops being valid, in seconds since the Unix
/// epoch.
pub fn not_after(cert_der: &[u8]) -> Result<i64> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|e| Error::Certificate {
            path: "certificate".into(),
            detail: e.to_string(),
        })?;
    Ok(cert.validity().not_after.timestamp())
}

/// SHA-256 of a DER certificate's SubjectPublicKeyInfo: what peers pin.
pub fn spki_sha256(cert_der: &[u8]) -> Result<[u8; 32]> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|e| Error::Certificate {
            path: "certificate".into(),
            detail: e.to_string(),
        })?;
    Ok(Sha256::digest(cert.tbs_certificate.subject_pki.raw).into())
}

#[cfg(test)]
mod tests;
