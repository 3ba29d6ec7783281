//! How the agent knows it talks to its rack: the kernel command line carries the SHA-256 of the cluster
//! CA certificate (`ingot.ca`), and the rack presents the chain [rack leaf, cluster CA].
//!
//! [`RackVerifier`] accepts a server only when
//! 1. one of the presented intermediates hashes to that fingerprint (that certificate becomes the only
//!    trust anchor: nothing from the ramdisk's or the network's trust stores is consulted);
//! 2. the leaf verifies against it with rustls' own [`WebPkiServerVerifier`] (signature, validity, EKU
//!    serverAuth, ...), whose result is accepted as is except for exactly one error, `NotValidForName`:
//!    rack certificates carry no SANs (a rack's address is whatever its subnet gives it), and webpki checks
//!    the name last, after the chain, so ignoring that one error skips no other check;
//! 3. the leaf's common name starts with `rack-` (a region's certificate, also issued by the cluster CA,
//!    is not a rack).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The common-name prefix of every rack certificate (`ingot_common::pki::Identity::rack`).
pub const RACK_CN_PREFIX: &str = "rack-";

/// The ring crypto provider: the only one in the workspace (two enabled providers make rustls panic).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Verifies the rack's certificate chain against the pinned cluster CA fingerprint (see the module doc).
#[derive(Debug)]
pub struct RackVerifier {
    ca_sha256: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl RackVerifier {
    /// A verifier pinned to the CA certificate whose DER hashes to `ca_sha256`.
    pub fn new(ca_sha256: [u8; 32]) -> RackVerifier {
        RackVerifier {
            ca_sha256,
            provider: provider(),
        }
    }
}

fn refuse(why: &str) -> Error {
    Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        std::io::Error::other(why.to_string()),
    ))))
}

impl ServerCertVerifier for RackVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let ca = intermediates
            .iter()
            .find(|c| Sha256::digest(c.as_ref()).as_slice() == self.ca_sha256)
            .ok_or_else(|| {
                refuse(
                    "the server's chain has no certificate matching ingot.ca: it is not a rack of this \
                     cluster (or the cluster CA changed: boot the machine again)",
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| refuse(&format!("building the chain verifier: {e}")))?;
        match webpki.verify_server_cert(end_entity, &[], server_name, ocsp_response, now) {
            Ok(_)
            | Err(Error::InvalidCertificate(CertificateError::NotValidForName))
            | Err(Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })) => {}
            Err(e) => return Err(e),
        }
        match ingot_common::pki::common_name(end_entity.as_ref()) {
            Some(cn) if cn.starts_with(RACK_CN_PREFIX) => Ok(ServerCertVerified::assertion()),
            _ => Err(refuse(
                "the server's certificate is from the cluster CA but is not a rack's (its common name \
                 does not start with rack-)",
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
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
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
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

/// The TLS client configuration the agent calls its rack with: the pinned verifier, no client certificate
/// (the agent proves itself with the boot proof and then its per-boot token).
pub fn client_config(ca_sha256: [u8; 32]) -> Result<rustls::ClientConfig, Error> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(RackVerifier::new(ca_sha256)))
        .with_no_client_auth())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ingot_common::pki::{first_cert_der, ClusterCa, Identity};

    /// A CA and a certificate chain issued by it for `id`: (ca DER, [leaf DER, ca DER], key PEM).
    pub(crate) fn chain(ca: &ClusterCa, id: &Identity) -> (Vec<u8>, Vec<Vec<u8>>, String) {
        let (cert, key) = ca.issue(id).unwrap();
        let ca_der = first_cert_der(&ca.cert_pem).unwrap();
        let leaf = first_cert_der(&cert).unwrap();
        (ca_der.clone(), vec![leaf, ca_der], key)
    }

    /// A `rack-r1` leaf from `ca` with parameters changed by `edit`.
    fn odd_leaf(ca: &ClusterCa, edit: impl FnOnce(&mut rcgen::CertificateParams)) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "rack-r1");
        p.is_ca = rcgen::IsCa::ExplicitNoCa;
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        edit(&mut p);
        let ca_key = rcgen::KeyPair::from_pem(&ca.key_pem).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        p.signed_by(&key, &issuer).unwrap().der().to_vec()
    }

    fn verify(pin: &[u8], presented: &[Vec<u8>]) -> Result<ServerCertVerified, Error> {
        let v = RackVerifier::new(Sha256::digest(pin).into());
        let leaf = CertificateDer::from(presented[0].clone());
        let rest: Vec<CertificateDer<'_>> = presented[1..]
            .iter()
            .map(|c| CertificateDer::from(c.clone()))
            .collect();
        let name = ServerName::try_from("10.0.0.2").unwrap();
        v.verify_server_cert(&leaf, &rest, &name, &[], UnixTime::now())
    }

    #[test]
    fn a_rack_of_the_pinned_ca_is_accepted() {
        let ca = ClusterCa::generate("c1").unwrap();
        let (ca_der, presented, _) = chain(&ca, &Identity::rack("r1"));
        verify(&ca_der, &presented).unwrap();
    }

    #[test]
    fn a_wrong_fingerprint_a_foreign_ca_and_a_non_rack_are_refused() {
        let ca = ClusterCa::generate("c1").unwrap();
        let other = ClusterCa::generate("c2").unwrap();
        let (ca_der, presented, _) = chain(&ca, &Identity::rack("r1"));
        let (other_der, other_chain, _) = chain(&other, &Identity::rack("r1"));
        // The fingerprint names a CA the server does not present.
        let e = verify(&other_der, &presented).unwrap_err().to_string();
        assert!(e.contains("ingot.ca"), "{e}");
        // No intermediates at all.
        assert!(verify(&ca_der, &presented[..1]).is_err());
        // The pinned CA is presented, but the leaf was issued by another CA.
        let forged = vec![other_chain[0].clone(), ca_der.clone()];
        assert!(matches!(
            verify(&ca_der, &forged),
            Err(Error::InvalidCertificate(CertificateError::BadSignature))
                | Err(Error::InvalidCertificate(CertificateError::UnknownIssuer))
        ));
        // A region's certificate from the right CA is not a rack.
        let (_, region_chain, _) = chain(&ca, &Identity::region(1, &["10.0.0.2:7000"]));
        let e = verify(&ca_der, &region_chain).unwrap_err().to_string();
        assert!(e.contains("rack-"), "{e}");
        // A client-only certificate with another name is not a rack either.
        let admin = Identity {
            common_name: "admin".into(),
            sans: vec![],
        };
        let (_, admin_chain, _) = chain(&ca, &admin);
        assert!(verify(&ca_der, &admin_chain).is_err());
        // webpki's checks other than the name stay in force: an expired rack certificate, and one without
        // serverAuth, are refused even from the pinned CA.
        let expired = odd_leaf(&ca, |p| {
            p.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(10);
            p.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        });
        assert!(matches!(
            verify(&ca_der, &[expired, ca_der.clone()]),
            Err(Error::InvalidCertificate(CertificateError::Expired))
                | Err(Error::InvalidCertificate(
                    CertificateError::ExpiredContext { .. }
                ))
        ));
        let client_only = odd_leaf(&ca, |p| {
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        });
        let e = verify(&ca_der, &[client_only, ca_der.clone()]).unwrap_err();
        assert!(
            !e.to_string().contains("rack-"),
            "refused by webpki, not the CN check: {e}"
        );
        // The CA itself as the leaf is refused by webpki (a CA is not an end entity).
        assert!(verify(&ca_der, &[ca_der.clone(), ca_der.clone()]).is_err());
    }
}
