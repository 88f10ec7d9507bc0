//! rustls configurations for mutual TLS against the cluster CA.
//!
//! Both directions verify the peer's chain against the one cluster CA;
//! neither accepts a connection without a client certificate. ALPN is
//! `flotilla/1`, so anything else speaking QUIC to the port is turned away
//! during the handshake. Roles and pins are checked after the handshake by
//! the transport, from the peer's certificate ([`crate::certs`]).

use std::path::Path;
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::error::{Error, Result};

/// The ALPN protocol of Flotilla's transport.
pub const ALPN: &[u8] = b"flotilla/1";

/// A certificate chain and key, with the CA that peers must chain to.
pub struct TlsIdentity {
    /// The cluster CA.
    pub ca: CertificateDer<'static>,
    /// This side's certificate.
    pub cert: CertificateDer<'static>,
    /// This side's private key.
    pub key: PrivateKeyDer<'static>,
}

impl TlsIdentity {
    /// The endpoint settings of this node's QUIC endpoint, with the keys it
    /// signs connection ids and stateless resets with derived from its
    /// private key: secret, and the same in every run of the node. A peer
    /// or client still holding a connection to this node's previous
    /// process (killed, then started again at the same address) sends on
    /// it; the new process recognises the connection id as one of its own
    /// and answers with a reset the sender can verify, so the connection
    /// closes at once and the next call dials anew, instead of waiting out
    /// the idle timeout. With keys fresh at every start (quinn's default)
    /// such packets are dropped unanswered.
    pub fn endpoint_config(&self) -> quinn::EndpointConfig {
        use sha2::{Digest, Sha256};
        let derive = |purpose: &[u8]| -> [u8; 32] {
            let mut h = Sha256::new();
            h.update(b"flotilla endpoint key, version 1: ");
            h.update(purpose);
            h.update(self.key.secret_der());
            h.finalize().into()
        };
        let reset = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &derive(b"stateless reset"));
        let mut config = quinn::EndpointConfig::new(Arc::new(reset));
        let cid = derive(b"connection ids");
        let cid_key = u64::from_le_bytes([
            cid[0], cid[1], cid[2], cid[3], cid[4], cid[5], cid[6], cid[7],
        ]);
        config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        config
    }
}

fn cert_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Certificate {
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}

impl TlsIdentity {
    /// Loads PEM files.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<TlsIdentity> {
        Ok(TlsIdentity {
            ca: CertificateDer::from_pem_file(ca).map_err(|e| cert_err(ca, e))?,
            cert: CertificateDer::from_pem_file(cert).map_err(|e| cert_err(cert, e))?,
            key: PrivateKeyDer::from_pem_file(key).map_err(|e| cert_err(key, e))?,
        })
    }

    /// Loads the identity a node presents from a certificates directory:
    /// `ca.crt`, and `node-NAME.crt`/`.key` when the node has a name, else
    /// the shared `node.crt`/`node.key` ([`crate::certs::node_files`]).
    pub fn load_node(dir: &Path, name: Option<&str>) -> Result<TlsIdentity> {
        let (crt, key) = crate::certs::node_files(dir, name)?;
        if !crt.exists() {
            let hint = match name {
                Some(n) => format!(
                    "no such file; `flotilla certs node --dir {} --name {n}` makes it",
                    dir.display()
                ),
                None => "no such file; pass --cert-name NAME to present node-NAME.crt".into(),
            };
            return Err(cert_err(&crt, hint));
        }
        TlsIdentity::load(&dir.join(crate::certs::CA_CERT), &crt, &key)
    }

    fn roots(&self) -> Result<Arc<RootCertStore>> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).map_err(|e| Error::Certificate {
            path: "CA".into(),
            detail: e.to_string(),
        })?;
        Ok(Arc::new(roots))
    }

    fn tls_error(e: rustls::Error) -> Error {
        Error::Certificate {
            path: "TLS configuration".into(),
            detail: e.to_string(),
        }
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// The server side: requires and verifies a client certificate.
    pub fn server_config(&self) -> Result<quinn::ServerConfig> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots()?, Self::provider())
            .build()
            .map_err(|e| Error::Certificate {
                path: "CA".into(),
                detail: e.to_string(),
            })?;
        let mut tls = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(Self::tls_error)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())
            .map_err(Self::tls_error)?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = QuicServerConfig::try_from(tls).map_err(|e| Error::Certificate {
            path: "QUIC".into(),
            detail: e.to_string(),
        })?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        config.transport_config(liveness(IDLE_TIMEOUT / 4, Streams::Served));
        Ok(config)
    }

    /// The client side: verifies the server against the CA and presents
    /// this side's certificate.
    pub fn client_config(&self) -> Result<quinn::ClientConfig> {
        self.pinned_client_config(None)
    }

    /// [`TlsIdentity::client_config`] for connections that carry Raft
    /// traffic to a peer: these ping every [`PEER_PING`] when nothing else
    /// goes out, so that a silent peer shows within a fraction of a second.
    pub fn peer_client_config(&self) -> Result<quinn::ClientConfig> {
        self.client_with(None, liveness(PEER_PING, Streams::None))
    }

    /// [`TlsIdentity::client_config`], and with `pin` the server must also
    /// prove a key whose SPKI SHA-256 is `pin`: the CA's (checked here, once)
    /// or the server certificate's (checked on every handshake).
    pub fn pinned_client_config(&self, pin: Option<[u8; 32]>) -> Result<quinn::ClientConfig> {
        self.client_with(pin, liveness(IDLE_TIMEOUT / 4, Streams::None))
    }

    fn client_with(
        &self,
        pin: Option<[u8; 32]>,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ClientConfig> {
        let roots = self.roots()?;
        let builder = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(Self::tls_error)?;
        let ca_pinned = match pin {
            None => true,
            Some(p) => crate::certs::spki_sha256(&self.ca)? == p,
        };
        let builder = if ca_pinned {
            builder.with_root_certificates(roots)
        } else {
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                roots,
                Self::provider(),
            )
            .build()
            .map_err(|e| Error::Certificate {
                path: "CA".into(),
                detail: e.to_string(),
            })?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedServer {
                    inner,
                    pin: pin.unwrap_or_default(),
                }))
        };
        let mut tls = builder
            .with_client_auth_cert(vec![self.cert.clone()], self.key.clone_key())
            .map_err(Self::tls_error)?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = QuicClientConfig::try_from(tls).map_err(|e| Error::Certificate {
            path: "QUIC".into(),
            detail: e.to_string(),
        })?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(transport);
        Ok(config)
    }
}

/// How long a silent connection lives: a peer that died is noticed within
/// [`IDLE_TIMEOUT`] (its streams fail and the sender redials), and a live
/// but quiet one is kept open by keep-alives. Raft connections notice
/// sooner: the sender replaces one whose peer stops answering its pings.
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How often a connection carrying Raft traffic pings its peer when it has
/// nothing else to send: a few pings fit in the outbound stall timeout.
pub const PEER_PING: std::time::Duration = std::time::Duration::from_millis(150);

/// Packets a peer may receive before it must acknowledge them. Every
/// request, answer and Raft frame already carries acknowledgements of what
/// came the other way; separate ACK packets only cost system calls.
const ACK_EVERY_PACKETS: u32 = 8;
/// How long a peer may hold an acknowledgement back when fewer packets came.
const ACK_DELAY: std::time::Duration = std::time::Duration::from_millis(2);

/// Request streams a peer may have open at once on one connection to a
/// node: a client shares one connection per node among all its callers
/// (the bench's 64 closed-loop clients, each with a hedged second attempt
/// at times). A caller past the cap waits for a stream, it is not
/// refused; a peer that ignores the cap loses its connection.
pub const MAX_REQUEST_STREAMS: u32 = 128;
/// Unidirectional streams a peer may have open at once on one connection
/// to a node: a node sends its Raft traffic on one; the rest leave room
/// for snapshot transfers.
pub const MAX_UNI_STREAMS: u32 = 8;

/// Which streams a connection's peer may open towards this side.
#[derive(Clone, Copy)]
enum Streams {
    /// Accepted connections: requests and Raft, up to their caps.
    Served,
    /// Dialled connections: this side never accepts a stream on them.
    None,
}

/// Transport settings: the idle timeout, keep-alives every `ping`,
/// batched acknowledgements, and the streams the peer may open.
fn liveness(ping: std::time::Duration, streams: Streams) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    let (bidi, uni) = match streams {
        Streams::Served => (MAX_REQUEST_STREAMS, MAX_UNI_STREAMS),
        Streams::None => (0, 0),
    };
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(bidi))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(uni));
    // 5 s always fits quinn's idle-timeout range.
    if let Ok(idle) = quinn::IdleTimeout::try_from(IDLE_TIMEOUT) {
        t.max_idle_timeout(Some(idle));
    }
    t.keep_alive_interval(Some(ping));
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(quinn::VarInt::from_u32(ACK_EVERY_PACKETS))
        .max_ack_delay(Some(ACK_DELAY));
    t.ack_frequency_config(Some(acks));
    Arc::new(t)
}

/// What a pin mismatch says.
pub const PIN_MISMATCH: &str = "the server key matches neither the pinned SPKI SHA-256 nor the CA";

/// TLS alerts that refuse a certificate (RFC 8446 section 6.2), the ones
/// rustls sends for each `CertificateError`; `AccessDenied` is this
/// module's own pin check ([`PinnedServer`]).
const CERTIFICATE_ALERTS: [rustls::AlertDescription; 10] = [
    rustls::AlertDescription::BadCertificate,
    rustls::AlertDescription::UnsupportedCertificate,
    rustls::AlertDescription::CertificateRevoked,
    rustls::AlertDescription::CertificateExpired,
    rustls::AlertDescription::CertificateUnknown,
    rustls::AlertDescription::UnknownCA,
    rustls::AlertDescription::AccessDenied,
    rustls::AlertDescription::DecryptError,
    rustls::AlertDescription::CertificateRequired,
    rustls::AlertDescription::BadCertificateStatusResponse,
];

/// Why a connection failed, when the reason is a refused certificate: the
/// handshake ended with a certificate alert, raised here (this side
/// refused the peer's certificate) or by the peer (it refused ours). `None`
/// for every other failure (timeouts, resets, a peer that went away).
pub fn certificate_refusal(e: &quinn::ConnectionError) -> Option<String> {
    let (code, by_peer, reason) = match e {
        quinn::ConnectionError::TransportError(t) => (u64::from(t.code), false, t.reason.clone()),
        quinn::ConnectionError::ConnectionClosed(c) => (
            u64::from(c.error_code),
            true,
            String::from_utf8_lossy(&c.reason).into_owned(),
        ),
        _ => return None,
    };
    // QUIC carries a TLS alert as the error code 0x100 + alert.
    let alert = code.checked_sub(0x100).and_then(|a| u8::try_from(a).ok())?;
    let alert = rustls::AlertDescription::from(alert);
    if !CERTIFICATE_ALERTS.contains(&alert) {
        return None;
    }
    Some(match (by_peer, alert) {
        (false, rustls::AlertDescription::AccessDenied) => PIN_MISMATCH.to_string(),
        (false, _) => format!("the peer's certificate was refused ({alert:?}): {reason}"),
        (true, _) => format!("the peer refused this certificate ({alert:?})"),
    })
}

/// Verifies the server's chain against the CA, then its key against a pin.
#[derive(Debug)]
struct PinnedServer {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    pin: [u8; 32],
}

impl rustls::client::danger::ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        match crate::certs::spki_sha256(end_entity) {
            Ok(spki) if spki == self.pin => Ok(verified),
            // The one application check of a server certificate; the
            // alert it sends (access denied) is how callers know it.
            _ => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::AlertDescription;

    /// A handshake this side ended with `alert`.
    fn raised(alert: AlertDescription) -> quinn::ConnectionError {
        quinn::ConnectionError::TransportError(
            quinn::TransportErrorCode::crypto(u8::from(alert)).into(),
        )
    }

    #[test]
    fn certificate_alerts_are_told_apart_from_other_failures() {
        assert!(certificate_refusal(&raised(AlertDescription::UnknownCA)).is_some());
        assert!(certificate_refusal(&raised(AlertDescription::CertificateExpired)).is_some());
        assert_eq!(
            certificate_refusal(&raised(AlertDescription::AccessDenied)).as_deref(),
            Some(PIN_MISMATCH)
        );
        assert!(certificate_refusal(&raised(AlertDescription::NoApplicationProtocol)).is_none());
        assert!(certificate_refusal(&quinn::ConnectionError::TimedOut).is_none());
        assert!(certificate_refusal(&quinn::ConnectionError::Reset).is_none());
    }
}
