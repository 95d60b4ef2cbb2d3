//! TLS for clients of the coordinator: a rustls verifier that accepts exactly
//! the certificate whose public key matches a pin, with no CA and no trust on
//! first use. The handshake signature is still verified with the crypto
//! provider's algorithms, so the server must hold the pinned private key.

use std::fmt;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::auth::{ct_eq32, spki_pin};

/// What the verifier saw, so the caller can tell a pin mismatch apart from
/// other handshake failures.
#[derive(Clone, Default)]
pub struct PinOutcome(Arc<Mutex<Option<[u8; 32]>>>);

impl PinOutcome {
    /// The pin of a certificate that was refused for not matching, if any.
    pub fn mismatched_pin(&self) -> Option<[u8; 32]> {
        self.0.lock().ok().and_then(|g| *g)
    }
}

/// Accepts only a server whose certificate's SubjectPublicKeyInfo hashes to
/// `pin`.
pub struct PinnedServerVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
    outcome: PinOutcome,
}

impl fmt::Debug for PinnedServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedServerVerifier")
            .finish_non_exhaustive()
    }
}

impl PinnedServerVerifier {
    pub fn new(pin: [u8; 32], provider: Arc<CryptoProvider>) -> (Self, PinOutcome) {
        let outcome = PinOutcome::default();
        (
            Self {
                pin,
                provider,
                outcome: outcome.clone(),
            },
            outcome,
        )
    }
}

/// The SHA-256 pin of a certificate's SubjectPublicKeyInfo.
pub fn cert_pin(cert: &CertificateDer<'_>) -> Result<[u8; 32], rustls::Error> {
    let ee = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| rustls::Error::General(format!("unparsable certificate: {e}")))?;
    Ok(spki_pin(ee.subject_public_key_info().as_ref()))
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = cert_pin(end_entity)?;
        if ct_eq32(&got, &self.pin) {
            Ok(ServerCertVerified::assertion())
        } else {
            if let Ok(mut g) = self.outcome.0.lock() {
                *g = Some(got);
            }
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS 1.3 client config (ring provider, offering every weft ALPN this
/// code speaks, [`crate::host_alpns`]) that trusts only the pinned
/// coordinator.
pub fn pinned_client_config(
    pin: [u8; 32],
) -> Result<(rustls::ClientConfig, PinOutcome), rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (verifier, outcome) = PinnedServerVerifier::new(pin, provider.clone());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    cfg.alpn_protocols = crate::host_alpns(crate::PROTOCOL_VERSION);
    Ok((cfg, outcome))
}
