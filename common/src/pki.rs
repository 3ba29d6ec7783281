//! The cluster's certificate authority.
//!
//! `ingot-region init` creates one CA per cluster. Its key is part of the replicated state, so whichever
//! region leads can sign certificates for joining regions (and, later, racks). A joining party sends only a
//! CSR; its private key never crosses the network. Every certificate the CA issues carries the identity
//! in its common name (`region-3`, `rack-r1`) and the fixed SAN [`REGION_SERVER_NAME`], which clients verify
//! instead of an IP address that may change.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

/// DNS name present in every region certificate; clients and peers verify the server against it.
pub const REGION_SERVER_NAME: &str = "ingot-region";

/// Why a PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen could not build, parse or sign.
    #[error("{what}: {source}")]
    Rcgen {
        /// The step that failed.
        what: &'static str,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
    /// A SAN entry is not a DNS name or IP address.
    #[error("'{0}' cannot be put in a certificate: use a DNS name or an IP address")]
    BadSan(String),
    /// A serial number given to [`ClusterCa::sign_csr_with_serial`] is not what [`serial_for`] makes.
    #[error("'{0}' is not a certificate serial: use pki::serial_for to make one")]
    BadSerial(String),
}

fn rc(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Rcgen { what, source }
}

/// The CA certificate and key, PEM-encoded. The key lives in the replicated state (memory, the bootstrap
/// log entry and snapshots in each region's `db/`, mode 0700) and, only until the bootstrap command is
/// applied, in the first region's `bootstrap.json` (0600); certificates and join replies carry only
/// `cert_pem`.
#[derive(Serialize, Deserialize, Clone)]
pub struct ClusterCa {
    /// CA certificate, PEM.
    pub cert_pem: String,
    /// CA private key, PKCS#8 PEM. Never logged (no Debug impl prints it).
    pub key_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Who a certificate is for.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Common name: `region-<id>`, `rack-<name>`, `admin`.
    pub common_name: String,
    /// DNS names and IP addresses the holder serves on; empty for client-only certificates.
    pub sans: Vec<String>,
}

impl Identity {
    /// A region's identity: CN `region-<id>`, SAN `ingot-region`, `localhost`, and the hosts it serves on.
    pub fn region(node_id: u64, addrs: &[&str]) -> Identity {
        let mut sans = vec![REGION_SERVER_NAME.to_string(), "localhost".to_string()];
        for a in addrs {
            let host = host_of(a);
            if !host.is_empty() && !sans.iter().any(|s| s == host) {
                sans.push(host.to_string());
            }
        }
        Identity {
            common_name: format!("region-{node_id}"),
            sans,
        }
    }
}

impl Identity {
    /// A rack controller's identity: CN `rack-<name>`, client-only (no SANs).
    pub fn rack(name: &str) -> Identity {
        Identity {
            common_name: format!("rack-{name}"),
            sans: vec![],
        }
    }
}

/// The host part of `host:port` or `[v6]:port`.
pub fn host_of(addr: &str) -> &str {
    let a = addr.trim();
    if let Some(rest) = a.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match a.rsplit_once(':') {
        Some((h, _)) => h,
        None => a,
    }
}

fn validity(days: i64) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (now - Duration::hours(1), now + Duration::days(days))
}

fn random_serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f; // positive
    SerialNumber::from_slice(&b)
}

/// The serial number of the certificate issued on the strength of the single-use token whose hash is
/// `token_hash`, as lowercase hex (how the revocation list names certificates).
///
/// Derived, not random, so the apply step (which must be deterministic and never sees the certificate,
/// signed afterwards by the admitting region) can record which serial belongs to which region or rack, and
/// put it on the revocation list when that region is removed or that rack revoked. A token is used once,
/// so each serial is issued once; it is a SHA-256 of a secret's hash, so it is still unpredictable to
/// anyone who does not hold the token.
pub fn serial_for(token_hash: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(format!("ingot certificate serial\0{token_hash}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    // Positive (DER INTEGER) and without a leading zero byte, so the DER bytes are exactly these 16.
    b[0] = (b[0] & 0x7f) | 0x40;
    hex::encode(b)
}

/// The serial number of a DER certificate as lowercase hex without leading zero bytes: the form
/// [`serial_for`] makes and the revocation list holds.
pub fn serial_hex(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let raw = cert.tbs_certificate.raw_serial();
    let first = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    Some(hex::encode(&raw[first..]))
}

fn leaf_params(id: &Identity, serial: SerialNumber) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, id.common_name.clone());
    dn.push(DnType::OrganizationName, "Ingot");
    p.distinguished_name = dn;
    for s in &id.sans {
        let san = match s.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                s.clone()
                    .try_into()
                    .map_err(|_| PkiError::BadSan(s.clone()))?,
            ),
        };
        p.subject_alt_names.push(san);
    }
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let (nb, na) = validity(5 * 365);
    p.not_before = nb;
    p.not_after = na;
    p.serial_number = Some(serial);
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

impl ClusterCa {
    /// Creates a new CA for the cluster `cluster_id` (ECDSA P-256, valid 20 years).
    pub fn generate(cluster_id: &str) -> Result<ClusterCa, PkiError> {
        let key = KeyPair::generate().map_err(rc("generating the CA key"))?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("Ingot cluster CA {cluster_id}"));
        dn.push(DnType::OrganizationName, "Ingot");
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let (nb, na) = validity(20 * 365);
        p.not_before = nb;
        p.not_after = na;
        p.serial_number = Some(random_serial());
        let cert = p
            .self_signed(&key)
            .map_err(rc("self-signing the CA certificate"))?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let key = KeyPair::from_pem(&self.key_pem).map_err(rc("reading the CA key"))?;
        Issuer::from_ca_cert_pem(&self.cert_pem, key).map_err(rc("reading the CA certificate"))
    }

    /// Signs a CSR for `id`. Only the CSR's public key is used (after its self-signature is verified); the
    /// names in the certificate are the ones the cluster chose, never the ones the requester asked for.
    pub fn sign_csr(&self, csr_pem: &str, id: &Identity) -> Result<String, PkiError> {
        self.sign_csr_serial(csr_pem, id, random_serial())
    }

    /// [`Self::sign_csr`] with the serial number `serial` (lowercase hex, as [`serial_for`] makes it), so
    /// the replicated state knows the certificate's serial and can revoke it.
    pub fn sign_csr_with_serial(
        &self,
        csr_pem: &str,
        id: &Identity,
        serial: &str,
    ) -> Result<String, PkiError> {
        let bytes = hex::decode(serial)
            .ok()
            .filter(|b| !b.is_empty() && b.len() <= 20 && b[0] != 0 && b[0] < 0x80)
            .ok_or_else(|| PkiError::BadSerial(serial.to_string()))?;
        self.sign_csr_serial(csr_pem, id, SerialNumber::from_slice(&bytes))
    }

    fn sign_csr_serial(
        &self,
        csr_pem: &str,
        id: &Identity,
        serial: SerialNumber,
    ) -> Result<String, PkiError> {
        let csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(rc("parsing the CSR"))?;
        let cert = leaf_params(id, serial)?
            .signed_by(&csr.public_key, &self.issuer()?)
            .map_err(rc("signing the CSR"))?;
        Ok(cert.pem())
    }

    /// Issues a key and certificate for `id` in one step (for the first region, created by `init`).
    pub fn issue(&self, id: &Identity) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate().map_err(rc("generating a key"))?;
        let cert = leaf_params(id, random_serial())?
            .signed_by(&key, &self.issuer()?)
            .map_err(rc("signing a certificate"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Checks that `csr_pem` is a well-formed CSR with a valid self-signature, before anything is spent on it.
pub fn check_csr(csr_pem: &str) -> Result<(), PkiError> {
    CertificateSigningRequestParams::from_pem(csr_pem)
        .map(|_| ())
        .map_err(rc("parsing the CSR"))
}

/// The common name a CSR asks for, so the cluster can refuse a CSR made for another identity.
pub fn csr_common_name(csr_pem: &str) -> Result<String, PkiError> {
    let req = CertificateSigningRequestParams::from_pem(csr_pem).map_err(rc("parsing the CSR"))?;
    Ok(req
        .params
        .distinguished_name
        .get(&DnType::CommonName)
        .map(dn_value_string)
        .unwrap_or_default())
}

fn dn_value_string(v: &rcgen::DnValue) -> String {
    match v {
        rcgen::DnValue::Utf8String(s) => s.clone(),
        rcgen::DnValue::PrintableString(s) => s.as_str().to_string(),
        rcgen::DnValue::Ia5String(s) => s.as_str().to_string(),
        rcgen::DnValue::TeletexString(s) => s.as_str().to_string(),
        rcgen::DnValue::BmpString(_) | rcgen::DnValue::UniversalString(_) => String::new(),
        _ => String::new(),
    }
}

/// A new private key and a CSR for it: what a joining party creates locally. Returns `(key_pem, csr_pem)`.
pub fn new_csr(common_name: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(rc("generating a key"))?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    let csr = p.serialize_request(&key).map_err(rc("building the CSR"))?;
    let pem = csr.pem().map_err(rc("encoding the CSR"))?;
    Ok((key.serialize_pem(), pem))
}

/// The common name of a DER certificate (how the Raft and rack listeners learn who called).
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(cn)
}

/// The DER bytes of the first certificate in a PEM string.
pub fn first_cert_der(pem: &str) -> Option<Vec<u8>> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    Some(p.contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_is_signed_with_cluster_chosen_identity() {
        let ca = ClusterCa::generate("c1").unwrap();
        let (_key, csr) = new_csr("whatever-the-requester-asks").unwrap();
        let cert = ca
            .sign_csr(
                &csr,
                &Identity::region(7, &["127.0.0.1:7000", "[::1]:7001", "r7.example:1"]),
            )
            .unwrap();
        let der = first_cert_der(&cert).unwrap();
        assert_eq!(common_name(&der).as_deref(), Some("region-7"));
        let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
        let sans = format!("{:?}", c.subject_alternative_name().unwrap().unwrap().value);
        assert!(
            sans.contains("ingot-region")
                && sans.contains("r7.example")
                && sans.contains("[127, 0, 0, 1]"),
            "{sans}"
        );
        assert!(ca.sign_csr("not a csr", &Identity::region(1, &[])).is_err());
    }

    #[test]
    fn a_certificate_carries_the_serial_the_cluster_chose() {
        let ca = ClusterCa::generate("c1").unwrap();
        let (_key, csr) = new_csr("rack-r1").unwrap();
        let serial = serial_for("some-token-hash");
        assert_eq!(serial.len(), 32);
        assert_eq!(serial, serial_for("some-token-hash"), "deterministic");
        assert_ne!(serial, serial_for("another-token-hash"));
        let cert = ca
            .sign_csr_with_serial(&csr, &Identity::rack("r1"), &serial)
            .unwrap();
        let der = first_cert_der(&cert).unwrap();
        assert_eq!(serial_hex(&der).as_deref(), Some(serial.as_str()));
        // A random serial is read back too, and differs.
        let other = first_cert_der(&ca.sign_csr(&csr, &Identity::rack("r1")).unwrap()).unwrap();
        assert_ne!(serial_hex(&other).unwrap(), serial);
        for bad in ["", "zz", "00ff", "ff00"] {
            assert!(matches!(
                ca.sign_csr_with_serial(&csr, &Identity::rack("r1"), bad),
                Err(PkiError::BadSerial(_))
            ));
        }
    }

    #[test]
    fn hosts() {
        assert_eq!(host_of("127.0.0.1:80"), "127.0.0.1");
        assert_eq!(host_of("[::1]:80"), "::1");
        assert_eq!(host_of("name"), "name");
    }
}
