//! Certificates: a cluster CA and leaf certificates that carry a role.
//!
//! Every connection in a Flotilla cluster is mutual TLS against one cluster
//! CA. A leaf certificate also says what its holder may do, as a URI in its
//! subjectAltName: `urn:flotilla:role:node` (may speak Raft and serve),
//! `urn:flotilla:role:admin` (may change membership and placement) or
//! `urn:flotilla:role:client` (may read and write keys). [`create`] writes a
//! development set with rcgen; [`role_of`] and [`spki_sha256`] read what the
//! transport checks on every connection.
//!
//! Left out for now: issuing one more node certificate from an existing CA
//! (today `create` makes a whole set), and revocation.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The cluster CA certificate.
pub const CA_CERT: &str = "ca.crt";
/// The cluster CA key: keep it off the nodes in production.
pub const CA_KEY: &str = "ca.key";

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

fn leaf_params(role: Role, hosts: &[String]) -> Result<CertificateParams> {
    let sans: Vec<String> = if role == Role::Node {
        hosts.to_vec()
    } else {
        Vec::new()
    };
    let mut p = CertificateParams::new(sans).map_err(rcgen_error)?;
    let uri = role.uri().try_into().map_err(rcgen_error)?;
    p.subject_alt_names.push(SanType::URI(uri));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("flotilla {}", role.file_stem()));
    p.distinguished_name = dn;
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
/// `dir`. The node certificate is valid for `hosts` (IP addresses or DNS
/// names). Refuses to replace an existing CA unless `force` is set: a new
/// CA locks every existing node and client out.
pub fn create(dir: &Path, hosts: &[String], force: bool) -> Result<Vec<PathBuf>> {
    if hosts.is_empty() {
        return Err(Error::Invalid(
            "a node certificate needs at least one host".into(),
        ));
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
    for role in [Role::Node, Role::Admin, Role::Client] {
        let key = KeyPair::generate().map_err(rcgen_error)?;
        let cert = leaf_params(role, hosts)?
            .signed_by(&key, &issuer)
            .map_err(rcgen_error)?;
        let (crt, k) = role_files(dir, role);
        write_file(&crt, &cert.pem(), false)?;
        write_file(&k, &key.serialize_pem(), true)?;
        written.push(crt);
        written.push(k);
    }
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
mod tests {
    use super::*;

    fn der(path: &Path) -> Vec<u8> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_file(path)
            .unwrap()
            .to_vec()
    }

    #[test]
    fn create_writes_a_ca_and_three_roles_with_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let files = create(dir.path(), &hosts, false).unwrap();
        assert_eq!(files.len(), 8);
        for role in [Role::Node, Role::Admin, Role::Client] {
            let (crt, key) = role_files(dir.path(), role);
            assert_eq!(role_of(&der(&crt)).unwrap(), Some(role));
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", key.display());
            }
        }
        assert_eq!(role_of(&der(&dir.path().join(CA_CERT))).unwrap(), None);
    }

    #[test]
    fn an_existing_ca_is_replaced_only_with_force() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = vec!["127.0.0.1".to_string()];
        create(dir.path(), &hosts, false).unwrap();
        let pin = spki_sha256(&der(&dir.path().join(CA_CERT))).unwrap();
        let err = create(dir.path(), &hosts, false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(
            spki_sha256(&der(&dir.path().join(CA_CERT))).unwrap(),
            pin,
            "CA untouched"
        );
        create(dir.path(), &hosts, true).unwrap();
        assert_ne!(
            spki_sha256(&der(&dir.path().join(CA_CERT))).unwrap(),
            pin,
            "a new CA"
        );
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(role_of(b"not a certificate").is_err());
        assert!(spki_sha256(&[0x30, 0x03, 0x01]).is_err());
    }
}
