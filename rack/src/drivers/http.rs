//! HTTP plumbing shared by the `redfish` and `webhook` drivers: a cache of `reqwest` clients keyed by TLS
//! settings, and the translation of transport failures into [`DriverError`] classes.
//!
//! Why a cache: a `reqwest::Client` owns a connection pool and a TLS configuration. Building one per command
//! would redo the TLS setup and throw away every kept-alive connection, so a rack polling 1,000 BMCs would
//! open 1,000 new TCP (and TLS) connections per round. One client per distinct (verify, CA, timeout) triple
//! keeps connections alive across commands; in practice a rack has one or two such triples.
//!
//! (Declared from `redfish.rs` with `#[path]` because `drivers/mod.rs` is shared; it can move to a plain
//! `mod http;` there at any time.)

use crate::drivers::DriverError;
use std::error::Error as StdError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The settings a client is built from; two requests with equal settings share one client (and its pool).
#[derive(Clone, PartialEq, Eq)]
struct ClientKey {
    /// Verify the server certificate.
    verify_tls: bool,
    /// PEM CA bundle replacing the built-in roots (empty: built-in roots).
    ca_cert: String,
    /// Connect and whole-request timeout.
    timeout_ms: u64,
}

/// Clients by TLS settings. Cheap to clone (shared behind an `Arc`); a linear scan is the fastest lookup
/// for the handful of distinct settings a rack sees, and needs no allocation per request.
#[derive(Clone, Default)]
pub struct ClientCache {
    clients: Arc<Mutex<Vec<(ClientKey, reqwest::Client)>>>,
}

impl std::fmt::Debug for ClientCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.clients.lock().map(|c| c.len()).unwrap_or(0);
        f.debug_struct("ClientCache").field("clients", &n).finish()
    }
}

/// Upper bound on cached clients: parameters come from operators, so a misconfigured fleet with a different
/// timeout per machine must not grow the cache without limit (the oldest client is dropped).
const MAX_CLIENTS: usize = 64;

impl ClientCache {
    /// The client for these settings, built on first use. A `ca_cert` that is not PEM is a `bmc` error
    /// naming the parameter.
    pub fn get(
        &self,
        verify_tls: bool,
        ca_cert: &str,
        timeout_ms: u64,
    ) -> Result<reqwest::Client, DriverError> {
        {
            let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, c)) = clients.iter().find(|(k, _)| {
                k.verify_tls == verify_tls && k.timeout_ms == timeout_ms && k.ca_cert == ca_cert
            }) {
                return Ok(c.clone());
            }
        }
        let client = build(verify_tls, ca_cert, timeout_ms)?;
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        // Another task may have built the same client meanwhile: keep the first, so pools stay shared.
        if let Some((_, c)) = clients.iter().find(|(k, _)| {
            k.verify_tls == verify_tls && k.timeout_ms == timeout_ms && k.ca_cert == ca_cert
        }) {
            return Ok(c.clone());
        }
        if clients.len() >= MAX_CLIENTS {
            clients.remove(0);
        }
        clients.push((
            ClientKey {
                verify_tls,
                ca_cert: ca_cert.to_string(),
                timeout_ms,
            },
            client.clone(),
        ));
        Ok(client)
    }
}

fn build(verify_tls: bool, ca_cert: &str, timeout_ms: u64) -> Result<reqwest::Client, DriverError> {
    let timeout = Duration::from_millis(timeout_ms);
    let mut b = reqwest::Client::builder()
        .connect_timeout(timeout)
        .timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(50))
        .tcp_nodelay(true)
        .redirect(same_host_redirects())
        .user_agent(concat!("ingot-rack/", env!("CARGO_PKG_VERSION")));
    if !verify_tls {
        b = b.danger_accept_invalid_certs(true);
    }
    if !ca_cert.is_empty() {
        let certs = reqwest::Certificate::from_pem_bundle(ca_cert.as_bytes()).map_err(|e| {
            DriverError::Bmc(format!(
                "power parameter ca_cert is not a usable PEM certificate bundle ({e}); paste the BMC's CA \
                 certificate(s) in PEM form"
            ))
        })?;
        if certs.is_empty() {
            return Err(DriverError::Bmc(
                "power parameter ca_cert holds no certificate; paste the BMC's CA certificate in PEM form"
                    .into(),
            ));
        }
        b = b.tls_built_in_root_certs(false);
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build().map_err(|e| {
        DriverError::Bmc(format!(
            "cannot set up the HTTP client (verify_tls={verify_tls}, ca_cert {}): {e}",
            if ca_cert.is_empty() { "unset" } else { "set" }
        ))
    })
}

/// Follows at most 5 redirects, and only to the same host: the Redfish session header (`X-Auth-Token`) is not
/// one reqwest strips on a cross-host redirect, and credentials must only ever go to the configured address.
/// A redirect elsewhere is returned as the 3xx answer, which the drivers report with its `Location`.
fn same_host_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let same_host = attempt
            .previous()
            .first()
            .is_some_and(|first| first.host_str() == attempt.url().host_str());
        if attempt.previous().len() > 5 {
            attempt.error("more than 5 redirects")
        } else if same_host {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

/// `url` without user info, query or fragment: what may appear in messages (webhook URLs can carry tokens
/// in their query string).
pub fn redact_url(url: &str) -> String {
    let cut = url.find(['?', '#']).unwrap_or(url.len());
    let url = &url[..cut];
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_string(),
    }
}

/// Turns a failed request into a driver error: transport failures (refused, timeout, DNS, TLS) are
/// `unreachable` and say which; anything else (a body that could not be read, a redirect loop) is `bmc`.
/// `what` says what was being done ("GET https://bmc/redfish/v1/"), without secrets.
pub fn transport_error(what: &str, err: &reqwest::Error, timeout_ms: u64) -> DriverError {
    let mut tls: Option<String> = None;
    let mut refused = false;
    let mut dns = false;
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn StdError + 'static)> = err.source();
    let mut depth = 0;
    while let Some(e) = cur {
        depth += 1;
        if depth > 16 {
            break;
        }
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            tls.get_or_insert_with(|| t.to_string());
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                refused = true;
            }
            // io::Error::source skips the wrapped error itself; look at it directly.
            if let Some(t) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                tls.get_or_insert_with(|| t.to_string());
            }
        }
        let s = e.to_string();
        let lower = s.to_ascii_lowercase();
        if lower.contains("dns error") || lower.contains("failed to lookup address") {
            dns = true;
        }
        if lower.contains("connection refused") {
            refused = true;
        }
        if tls.is_none()
            && (lower.contains("certificate")
                || lower.contains("handshake")
                || lower.contains("tls"))
        {
            tls = Some(s.clone());
        }
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    let detail = if parts.is_empty() {
        err.without_url_string()
    } else {
        parts.join(": ")
    };
    if err.is_timeout() {
        return DriverError::Unreachable(format!(
            "{what}: no answer within {timeout_ms} ms (timeout_ms); check the address and that the BMC is up"
        ));
    }
    if let Some(t) = tls {
        return DriverError::Unreachable(format!(
            "{what}: TLS handshake failed: {t}; set ca_cert to the CA that signed the BMC's certificate (or \
             verify_tls=false for a self-signed BMC on a trusted network), and check the address is https"
        ));
    }
    if dns {
        return DriverError::Unreachable(format!(
            "{what}: DNS lookup failed ({detail}); check the host name in the address"
        ));
    }
    if refused {
        return DriverError::Unreachable(format!(
            "{what}: connection refused; check the address and port and that the BMC (or endpoint) is \
             listening"
        ));
    }
    if err.is_connect() || err.is_request() {
        return DriverError::Unreachable(format!(
            "{what}: connection failed ({detail}); check the address and the network path to the BMC"
        ));
    }
    DriverError::Bmc(format!("{what}: {detail}"))
}

/// Helper trait: a reqwest error's message without the URL it carries.
trait WithoutUrl {
    fn without_url_string(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_string(&self) -> String {
        let mut s = self.to_string();
        if let Some(u) = self.url() {
            s = s.replace(&format!(" ({u})"), "").replace(u.as_str(), "");
        }
        s
    }
}

/// The most bytes of a Redfish or webhook answer the rack reads. The largest legitimate answers (a
/// ComputerSystem with its links, a webhook status page) are a few KiB; a misbehaving or hostile endpoint
/// must not make the rack hold an endless body in memory.
pub const BODY_MAX: usize = 1 << 20;

/// Reads the body of `resp` (answering `what`, e.g. "GET https://bmc/redfish/v1/") but at most `max`
/// bytes: a larger body (by its Content-Length, or once more than `max` bytes arrived) is a `bmc` error
/// naming the request, the endpoint and the cap, and the rest is not read.
pub async fn read_body(
    mut resp: reqwest::Response,
    what: &str,
    max: usize,
    timeout_ms: u64,
) -> Result<Vec<u8>, DriverError> {
    let too_big = |size: String| {
        DriverError::Bmc(format!(
            "{what}: the endpoint answered {size}, more than the {max} bytes the rack reads; refused              without reading it. Check that the address points at the BMC's (or webhook's) API and not at              a file or another service"
        ))
    };
    if let Some(len) = resp.content_length() {
        if len > max as u64 {
            return Err(too_big(format!("a body of {len} bytes (Content-Length)")));
        }
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| transport_error(what, &e, timeout_ms))?
    {
        if body.len() + chunk.len() > max {
            return Err(too_big(format!("more than {max} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// At most `max` bytes of `body` as text (cut at a character boundary, lossy for non-UTF-8), for messages
/// that quote what a server answered.
pub fn excerpt(body: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn redacts_and_cuts() {
        assert_eq!(
            redact_url("https://u:p@h:8/a/b?token=x#f"),
            "https://h:8/a/b"
        );
        assert_eq!(redact_url("http://h"), "http://h");
        assert_eq!(excerpt("héllo".as_bytes(), 2), "h…");
        assert_eq!(excerpt(b" ok ", 200), "ok");
    }

    /// A server on 127.0.0.1 that answers every connection with `head` and then `chunk` forever (or until
    /// the reader hangs up; an empty `chunk`: just `head`); returns its base URL.
    pub(crate) async fn endless(head: &'static str, chunk: &'static [u8]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = c.read(&mut buf).await;
                    if c.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    while !chunk.is_empty() && c.write_all(chunk).await.is_ok() {}
                });
            }
        });
        base
    }

    /// An endless chunked body and a huge Content-Length: both refused at the cap, naming the request and
    /// the cap, in well under the timeout (the body is not read to its end).
    #[tokio::test]
    async fn an_oversized_body_is_refused_at_the_cap() {
        let client = ClientCache::default().get(true, "", 10_000).unwrap();
        // Chunked: each chunk is 4 KiB of 'x' ("1000" hex), forever.
        static CHUNK: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let chunk = CHUNK.get_or_init(|| {
            let mut c = b"1000\r\n".to_vec();
            c.extend(std::iter::repeat_n(b'x', 4096));
            c.extend_from_slice(b"\r\n");
            c
        });
        let chunked = endless(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
            chunk,
        )
        .await;
        let sized = endless(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n",
            &[b'y'; 4096],
        )
        .await;
        for base in [chunked, sized] {
            let url = format!("{base}/redfish/v1/");
            let what = format!("GET {url}");
            let t0 = std::time::Instant::now();
            let resp = client.get(&url).send().await.unwrap();
            let e = read_body(resp, &what, BODY_MAX, 10_000).await.unwrap_err();
            let DriverError::Bmc(m) = e else {
                panic!("{e:?}")
            };
            assert!(m.contains(&what) && m.contains("1048576 bytes"), "{m}");
            assert!(t0.elapsed() < std::time::Duration::from_secs(5));
        }
        // A body within the cap is read whole.
        let small = endless(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
            b"",
        )
        .await;
        let resp = client.get(&small).send().await.unwrap();
        assert_eq!(
            read_body(resp, "GET small", BODY_MAX, 10_000)
                .await
                .unwrap(),
            b"{}"
        );
    }

    #[test]
    fn cache_shares_clients_and_checks_pem() {
        let c = ClientCache::default();
        c.get(true, "", 1000).ok();
        c.get(true, "", 1000).ok();
        c.get(false, "", 1000).ok();
        assert_eq!(c.clients.lock().map(|v| v.len()).unwrap_or(0), 2);
        let e = c
            .get(
                true,
                "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n",
                1000,
            )
            .err();
        assert!(matches!(e, Some(DriverError::Bmc(m)) if m.contains("ca_cert")));
    }
}
