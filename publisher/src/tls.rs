//! TLS for a server whose certificates the user trusts explicitly: a registry's
//! (`--registry-ca`, `certs.d/HOST[:PORT]/*.crt`) or an S3 endpoint's (`SSL_CERT_FILE`).
//!
//! Docker's recipe for a registry with a self-signed certificate (`openssl req -x509 …`)
//! makes a certificate marked CA:TRUE that is also the server's certificate, as does MinIO's
//! `certgen -ca`. Go (Docker, skopeo, the AWS and MinIO clients) and curl accept it once it is
//! trusted; webpki refuses a CA as an end entity (`CaUsedAsEndEntity`). So the verifier here
//! verifies as reqwest does (the system's roots plus the trusted files, through
//! rustls-platform-verifier) and, only when that refuses a server certificate for being a CA,
//! accepts it if it is byte for byte one of the trusted certificates and names the host.
//! Handshake signatures are verified as always.
//!
//! ```
//! // Nothing trusted beyond the system's roots: a configuration all the same.
//! let config = publisher::tls::client_config(Vec::new(), None, false).unwrap();
//! assert_eq!(config.alpn_protocols[1], b"http/1.1");
//! ```

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;

/// The client's certificate chain and its private key (mutual TLS).
pub type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// A rustls configuration like the one reqwest builds (same crypto provider, protocol
/// versions and ALPN), with [`PinningVerifier`] over `trusted` and `identity` as the client
/// certificate. `tls12_only` caps the protocol at TLS 1.2.
pub fn client_config(
    trusted: Vec<CertificateDer<'static>>,
    identity: Option<Identity>,
    tls12_only: bool,
) -> Result<rustls::ClientConfig, rustls::Error> {
    // reqwest's choice: a process-wide default if one was installed, else aws-lc-rs.
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let versions: &[&rustls::SupportedProtocolVersion] = match tls12_only {
        true => &[&rustls::version::TLS12],
        false => rustls::ALL_VERSIONS,
    };
    let verifier = PinningVerifier {
        inner: rustls_platform_verifier::Verifier::new_with_extra_roots(
            trusted.clone(),
            provider.clone(),
        )?,
        pinned: trusted,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    // What reqwest offers with its `http2` feature, which oci-client turns on.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Verifies as reqwest does, but takes a CA certificate as the server's own when it is one
/// of the explicitly trusted certificates (`pinned`) and is valid for the server name.
#[derive(Debug)]
struct PinningVerifier {
    inner: rustls_platform_verifier::Verifier,
    pinned: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let refusal = match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(verified) => return Ok(verified),
            Err(e) => e,
        };
        // webpki checks the end entity's validity period before its basic constraints, so
        // this refusal also says the certificate is within its dates.
        if !ca_used_as_end_entity(&refusal) || !self.pinned.iter().any(|p| p == end_entity) {
            return Err(refusal);
        }
        rustls::client::verify_server_name(&ParsedCertificate::try_from(end_entity)?, server_name)?;
        if !allows_server_auth(end_entity) {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::InvalidPurpose,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Whether `cert` may identify a TLS server: it has no extended key usage, or one that lists
/// serverAuth (or any usage), as Go and curl require. webpki checks this only after the
/// basic constraints that made it refuse the certificate, so it is checked here.
fn allows_server_auth(cert: &CertificateDer<'_>) -> bool {
    use openssl::x509::{X509ExtendedKeyUsage, X509};
    let Ok(x509) = X509::from_der(cert) else {
        return false;
    };
    match x509.extended_key_usage() {
        None => true,
        Some(usage) => {
            usage.intersects(X509ExtendedKeyUsage::SSL_SERVER | X509ExtendedKeyUsage::ANYEKU)
        }
    }
}

fn ca_used_as_end_entity(e: &rustls::Error) -> bool {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => matches!(
            other.0.downcast_ref::<webpki::Error>(),
            Some(webpki::Error::CaUsedAsEndEntity)
        ),
        _ => false,
    }
}

/// The certificates of a PEM file (a CA bundle, a self-signed certificate).
pub fn certificates_in(path: &std::path::Path) -> std::io::Result<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    if certs.is_empty() {
        return Err(std::io::Error::other("no PEM certificate in it"));
    }
    Ok(certs)
}
