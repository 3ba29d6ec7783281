//! `ingot-rack register`: enroll this rack with the cluster using an admin's single-use enrollment token.
//!
//! The key pair is made here and the private key never leaves the machine: only a CSR (CN `rack-<name>`) is
//! sent. The region checks the token, records the rack and returns a certificate signed by the cluster CA,
//! the CA bundle, and every region's endpoints. The data directory is written key and certificates first and
//! `rack.json` last, so a directory with `rack.json` is always complete.

use crate::config::{ConfigError, DataDir, RackConfig, TlsFiles};
use ingot_common::pki;
use ingot_proto::v1::rack_service_client::RackServiceClient;
use ingot_proto::v1::RegisterRackRequest;
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// How long one region may take to accept a TCP+TLS connection before the next URL is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the RegisterRack call may take (it waits for a replicated write).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// What `register` needs (the CLI's flags).
#[derive(Debug, Clone)]
pub struct RegisterArgs {
    /// The data directory to create the rack in (must not hold a rack yet).
    pub data_dir: PathBuf,
    /// Region API URLs (`https://host:port`), tried in order until one answers.
    pub regions: Vec<String>,
    /// The enrollment token from `CreateEnrollmentToken` (single use, expires).
    pub token: String,
    /// The rack's name, a DNS label unique in the cluster.
    pub name: String,
    /// The zone the rack serves (must exist).
    pub zone: String,
    /// The cluster CA certificate file, to verify the region before the token is sent to it.
    pub ca_file: PathBuf,
}

/// Why registration failed. The message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// Reading the CA file or writing the data directory failed, or the directory already holds a rack.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The name is not a DNS label.
    #[error("--name '{0}' is not a DNS label (lowercase letters, digits and '-', at most 63, not starting or ending with '-')")]
    BadName(String),
    /// A `--region` value is not an `https://host:port` URL.
    #[error("--region '{url}': {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No `--region` was given.
    #[error("no --region given: pass the API URL of at least one region (https://host:port)")]
    NoRegion,
    /// The token was empty.
    #[error("no enrollment token: pass --token or set INGOT_RACK_TOKEN (an admin creates one with CreateEnrollmentToken)")]
    NoToken,
    /// Making the key pair or CSR failed.
    #[error("creating the rack's key and CSR: {0}")]
    Pki(#[from] pki::PkiError),
    /// A region answered and refused (token reused or expired, name taken, unknown zone, ...).
    #[error("the region refused to register rack '{name}': {message}")]
    Refused {
        /// The rack name asked for.
        name: String,
        /// The region's message.
        message: String,
    },
    /// No region could be reached.
    #[error("no region could be reached to register through ({last}); check the --region URLs, the network and that --ca is this cluster's CA")]
    Unreachable {
        /// The last failure, with its URL.
        last: String,
    },
}

/// Checks a `--region` URL: TLS only, with a port.
fn check_url(url: &str) -> Result<Endpoint, RegisterError> {
    let bad = |reason: &str| RegisterError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    if !url.starts_with("https://") {
        return Err(bad("Ingot regions serve TLS only: use https://host:port"));
    }
    let ep = Endpoint::from_shared(url.to_string()).map_err(|e| bad(&e.to_string()))?;
    if ep.uri().port_u16().is_none() {
        return Err(bad("missing port (expected https://host:port)"));
    }
    Ok(ep)
}

/// Registers the rack and writes its data directory. Returns what was written to `rack.json`.
pub async fn register(args: RegisterArgs) -> Result<RackConfig, RegisterError> {
    let dd = DataDir::new(&args.data_dir);
    dd.ensure_fresh()?;
    if ingot_common::validate::dns_label("--name", &args.name).is_err() {
        return Err(RegisterError::BadName(args.name));
    }
    if args.token.trim().is_empty() {
        return Err(RegisterError::NoToken);
    }
    let urls: Vec<String> = args
        .regions
        .iter()
        .flat_map(|r| r.split(','))
        .map(|s| s.trim().trim_end_matches('/').to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if urls.is_empty() {
        return Err(RegisterError::NoRegion);
    }
    let endpoints = urls
        .iter()
        .map(|u| check_url(u))
        .collect::<Result<Vec<_>, _>>()?;
    let ca_pem = std::fs::read_to_string(&args.ca_file).map_err(|source| ConfigError::Read {
        path: args.ca_file.display().to_string(),
        source,
    })?;

    let (key_pem, csr_pem) = pki::new_csr(&format!("rack-{}", args.name))?;
    let req = RegisterRackRequest {
        token: args.token.trim().to_string(),
        name: args.name.clone(),
        zone: args.zone.clone(),
        csr_pem,
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca_pem))
        .domain_name(pki::REGION_SERVER_NAME);
    let mut last = String::new();
    let mut answer = None;
    for (url, ep) in urls.iter().zip(endpoints) {
        let ep = match ep.tls_config(tls.clone()) {
            Ok(ep) => ep.connect_timeout(CONNECT_TIMEOUT).timeout(CALL_TIMEOUT),
            Err(e) => {
                last = format!("{url}: {e}");
                continue;
            }
        };
        let ch = match ep.connect().await {
            Ok(ch) => ch,
            Err(e) => {
                last = format!("{url}: {}", error_chain(&e));
                tracing::warn!("cannot reach {last}");
                continue;
            }
        };
        match RackServiceClient::new(ch).register_rack(req.clone()).await {
            Ok(r) => {
                answer = Some(r.into_inner());
                break;
            }
            Err(s) if matches!(s.code(), tonic::Code::Unavailable) => {
                last = format!("{url}: {}", s.message());
                tracing::warn!("region {url} is unavailable: {}", s.message());
            }
            Err(s) => {
                return Err(RegisterError::Refused {
                    name: args.name,
                    message: s.message().to_string(),
                })
            }
        }
    }
    let Some(a) = answer else {
        return Err(RegisterError::Unreachable { last });
    };
    dd.save_tls(&TlsFiles {
        ca_pem: a.ca_pem,
        cert_pem: a.cert_pem,
        key_pem,
    })?;
    let rack = RackConfig {
        name: args.name,
        zone: args.zone,
        api_endpoints: a.api_endpoints,
        cluster_endpoints: a.cluster_endpoints,
        registered_ms: ingot_common::now_ms(),
    };
    dd.save_rack(&rack)?;
    Ok(rack)
}

/// An error with its sources, on one line (tonic's transport errors hide the cause in `source()`).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_bad_input_before_the_network() {
        let d = tempfile::tempdir().unwrap();
        let args = RegisterArgs {
            data_dir: d.path().to_path_buf(),
            regions: vec!["http://127.0.0.1:1".into()],
            token: "t".into(),
            name: "r1".into(),
            zone: "default".into(),
            ca_file: d.path().join("missing.crt"),
        };
        let e = register(args.clone()).await.unwrap_err().to_string();
        assert!(e.contains("TLS only"), "{e}");
        let e = register(RegisterArgs {
            name: "Bad_Name".into(),
            ..args.clone()
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("DNS label"), "{e}");
        std::fs::write(d.path().join("rack.json"), "{}").unwrap();
        let e = register(args).await.unwrap_err().to_string();
        assert!(e.contains("already holds a registered rack"), "{e}");
    }
}
