//! Tests of certificate creation, issuing and reading.

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

fn parsed(path: &Path) -> (String, String, i64) {
    let der = der(path);
    let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
    (
        c.subject().to_string(),
        c.issuer().to_string(),
        c.validity().not_after.timestamp(),
    )
}

/// Asserts that `path` stops being valid `days` after now (give or
/// take the minutes a slow test run takes).
fn assert_valid_for(path: &Path, days: i64) {
    let expected = unix_now() + days * DAY_SECS;
    let got = not_after(&der(path)).unwrap();
    assert!(
        (got - expected).abs() < 600,
        "{} valid until {got}, expected about {expected} ({days} days)",
        path.display()
    );
}

#[test]
fn nodes_three_gives_each_node_a_key_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = vec!["127.0.0.1".to_string()];
    let files = create_set(dir.path(), &hosts, Some(3), Validity::default(), false).unwrap();
    assert_eq!(files.len(), 2 + 3 * 2 + 2 * 2);
    assert!(!dir.path().join("node.crt").exists(), "no shared node key");
    let mut pins = std::collections::BTreeSet::new();
    for name in ["1", "2", "3"] {
        let (crt, key) = node_files(dir.path(), Some(name)).unwrap();
        assert!(key.exists());
        assert_eq!(role_of(&der(&crt)).unwrap(), Some(Role::Node));
        assert_eq!(parsed(&crt).0, format!("CN=flotilla node {name}"));
        pins.insert(spki_sha256(&der(&crt)).unwrap());
    }
    assert_eq!(pins.len(), 3, "three nodes, three keys");
}

#[test]
fn validity_defaults_to_ten_years_for_the_ca_and_one_for_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    create(dir.path(), &["127.0.0.1".to_string()], false).unwrap();
    assert_valid_for(&dir.path().join(CA_CERT), 3650);
    for role in [Role::Node, Role::Admin, Role::Client] {
        assert_valid_for(&role_files(dir.path(), role).0, 365);
    }
}

#[test]
fn validity_follows_the_flags() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = vec!["127.0.0.1".to_string()];
    let short = Validity {
        ca_days: 40,
        days: 7,
    };
    create_set(dir.path(), &hosts, Some(1), short, false).unwrap();
    assert_valid_for(&dir.path().join(CA_CERT), 40);
    assert_valid_for(&node_files(dir.path(), Some("1")).unwrap().0, 7);
    assert_valid_for(&role_files(dir.path(), Role::Client).0, 7);
    issue_node(dir.path(), "9", &hosts, 3).unwrap();
    assert_valid_for(&node_files(dir.path(), Some("9")).unwrap().0, 3);

    let zero = Validity {
        ca_days: 0,
        days: 1,
    };
    let err = create_set(dir.path(), &hosts, None, zero, true).unwrap_err();
    assert!(err.to_string().contains("at least one day"), "{err}");
}

#[test]
fn a_node_certificate_is_issued_by_the_existing_ca_and_renewal_keeps_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = vec!["127.0.0.1".to_string()];
    create(dir.path(), &hosts, false).unwrap();
    let ca_subject = parsed(&dir.path().join(CA_CERT)).0;

    let written = issue_node(dir.path(), "east-1", &hosts, 30).unwrap();
    let (crt, key) = node_files(dir.path(), Some("east-1")).unwrap();
    assert_eq!(written, vec![crt.clone(), key.clone()]);
    let (subject, issuer, _) = parsed(&crt);
    assert_eq!(subject, "CN=flotilla node east-1");
    assert_eq!(issuer, ca_subject);
    assert_eq!(role_of(&der(&crt)).unwrap(), Some(Role::Node));
    let pin = spki_sha256(&der(&crt)).unwrap();
    assert_ne!(
        pin,
        spki_sha256(&der(&role_files(dir.path(), Role::Node).0)).unwrap()
    );

    let first = der(&crt);
    assert_eq!(
        issue_node(dir.path(), "east-1", &hosts, 60).unwrap(),
        vec![crt.clone()]
    );
    assert_ne!(der(&crt), first, "a new certificate");
    assert_eq!(spki_sha256(&der(&crt)).unwrap(), pin, "the same key");
    assert_valid_for(&crt, 60);
}

#[test]
fn node_names_must_be_plain_file_names() {
    for bad in ["", "../ca", "a/b", "x y", &"n".repeat(65)] {
        assert!(check_node_name(bad).is_err(), "{bad:?}");
    }
    for good in ["1", "east-1", "node_7"] {
        assert!(check_node_name(good).is_ok(), "{good:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let err = issue_node(dir.path(), "../x", &["127.0.0.1".into()], 1).unwrap_err();
    assert!(err.to_string().contains("node name"), "{err}");
    let err = issue_node(dir.path(), "1", &["127.0.0.1".into()], 1).unwrap_err();
    assert!(err.to_string().contains("ca.key"), "no CA yet: {err}");
}

#[test]
fn garbage_is_not_a_certificate() {
    assert!(role_of(b"not a certificate").is_err());
    assert!(spki_sha256(&[0x30, 0x03, 0x01]).is_err());
}
