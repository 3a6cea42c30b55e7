//! Whom a client trusts over TLS: the system's certificate authorities plus any the user
//! adds (a private CA, or the certificate `herd-server --tls-self-signed` made), or exactly
//! one certificate, named by its SHA-256 fingerprint (pinning: no authority involved, and a
//! different certificate is refused even if an authority signed it).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::Error;

/// The SHA-256 of a certificate (DER), as `herd-server --tls-self-signed` prints it:
/// `AB:CD:…` (32 pairs). Parsing also takes plain hex and a `sha256:` prefix.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of `certificate` (DER).
    pub fn of(certificate: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(certificate).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{byte:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let text = text
            .strip_prefix("sha256:")
            .or_else(|| text.strip_prefix("SHA256:"))
            .or_else(|| text.strip_prefix("SHA-256 "))
            .unwrap_or(text);
        let digits: Vec<u8> = text.bytes().filter(|b| !matches!(b, b':' | b' ')).collect();
        let refuse = || {
            format!("not a SHA-256 fingerprint: {text:?} (expected 32 hex pairs such as AB:CD:…)")
        };
        if digits.len() != 64 {
            return Err(refuse());
        }
        let mut out = [0u8; 32];
        for (i, pair) in digits.chunks(2).enumerate() {
            let pair = std::str::from_utf8(pair).map_err(|_| refuse())?;
            out[i] = u8::from_str_radix(pair, 16).map_err(|_| refuse())?;
        }
        Ok(Fingerprint(out))
    }
}

/// What a client trusts, as the user gave it: extra CA certificates (PEM), or one pinned
/// certificate. The default trusts the system's authorities only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trust {
    pub ca_cert: Option<Vec<u8>>,
    pub fingerprint: Option<Fingerprint>,
}

impl Trust {
    /// The rustls configuration for this trust; `None` for the default, which the
    /// libraries' own defaults already give.
    pub fn config(&self) -> Result<Option<Arc<rustls::ClientConfig>>, Error> {
        if self.ca_cert.is_none() && self.fingerprint.is_none() {
            return Ok(None);
        }
        client_config(self.ca_cert.as_deref(), self.fingerprint).map(Some)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls configuration that trusts the system's roots plus the certificates in
/// `ca_pem`, or, with `pin`, only the certificate with that fingerprint.
pub fn client_config(
    ca_pem: Option<&[u8]>,
    pin: Option<Fingerprint>,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Certificate(e.to_string()))?;
    let config = match pin {
        Some(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                pin,
                provider: provider(),
            }))
            .with_no_client_auth(),
        None => {
            use rustls::pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore::empty();
            for certificate in rustls_native_certs::load_native_certs().certs {
                // A broken system certificate must not keep the operator's own CA from
                // working.
                let _ = roots.add(certificate);
            }
            if let Some(pem) = ca_pem {
                let mut added = 0;
                for certificate in CertificateDer::pem_slice_iter(pem) {
                    let certificate = certificate.map_err(|e| Error::Certificate(e.to_string()))?;
                    roots
                        .add(certificate)
                        .map_err(|e| Error::Certificate(e.to_string()))?;
                    added += 1;
                }
                if added == 0 {
                    return Err(Error::Certificate("no certificate in the PEM data".into()));
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Arc::new(config))
}

/// Accepts exactly the server certificate with the pinned fingerprint; the handshake's
/// signatures are still checked against it, so only the key's holder can use it.
#[derive(Debug)]
struct Pinned {
    pin: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if Fingerprint::of(end_entity) == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_the_forms_people_paste() {
        let printed = (0..32u8)
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        let parsed: Fingerprint = printed.parse().unwrap();
        assert_eq!(parsed.to_string(), printed);
        let plain: Fingerprint = printed.replace(':', "").to_lowercase().parse().unwrap();
        assert_eq!(plain, parsed);
        let prefixed: Fingerprint = format!("sha256:{printed}").parse().unwrap();
        assert_eq!(prefixed, parsed);
        assert!("AB:CD".parse::<Fingerprint>().is_err());
        assert!(printed.replace("00", "ZZ").parse::<Fingerprint>().is_err());
    }
}
