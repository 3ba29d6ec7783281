//! The in-band agent's API on the rack: HTTPS on every boot interface's address, each call relayed to the
//! region over the rack's session.
//!
//! ```text
//!  ingot-agent (ramdisk) ── TLS: the rack's certificate, chain [rack, cluster CA]; the agent pins the CA
//!    │                     by the SHA-256 on its kernel command line (`ingot.ca`), no client certificate
//!    │  POST /agent/v1/call   body: one prost AgentCall (Content-Length ≤ 256 KiB, application/x-protobuf)
//!    ▼
//!  AgentApi::handle ─ 404 / 405 / 415 / 411 / 413 / 429 (rate) / 400 (malformed, names the failure)
//!    │  RegionLink::agent_call: a fresh id, peer_ip = the TCP peer's address (the agent's values are
//!    ▼  overwritten), RackMessage.agent_call on the current session; ≤ 10 s, ≤ 1024 waiting
//!  region (rack session) ─ decides ─► RegionMessage.agent_answer (same id) ─► BootService ─► the link
//!    │
//!    ▼  200 + one prost AgentAnswer (a refusal too: its code says); 503 + Retry-After: 1 when there is no
//!       session, the rack is busy or the region did not answer (the agent retries: a retried lookup
//!       carries the same claim)
//! ```
//!
//! A lookup (who am I, the boot proof) is also a boot event (`agent-lookup`) of the lookup's first MAC,
//! with its outcome. Neither the claim nor a token is ever logged or put in an event.
//!
//! Why hyper's HTTP/1.1 server here and not the HTTP boot server's own loop
//! ([`super::http::server`]): that loop exists for `sendfile(2)`, which needs the plain socket; here
//! every byte goes through TLS anyway, the bodies are small protobuf messages, and requests have bodies
//! (which that loop refuses) — hyper's framing (Content-Length, keep-alive, pipelining, `Expect:
//! 100-continue`) is what is needed, and it is already in the tree. The bounds are the rack's own:
//! at most [`AgentApiSettings::max_connections`] connections (more are closed at once and counted), the
//! TLS handshake and each request head within [`AgentApiSettings::read_timeout`] of the connection's
//! start or the head's first byte, each body within the same, an idle kept-alive connection closed after
//! [`AgentApiSettings::idle_timeout`] (hyper's own header timer cannot tell idle from slow: a connection
//! watchdog, [`Clock`], does both), bodies at most [`AgentApiSettings::max_body`] bytes, calls at most
//! [`AgentApiSettings::calls_per_second`] a second for the whole rack (429 beyond).

use super::events::BootEventSink;
use super::http::server::{bind_tcp, HttpBindError};
use super::link::{LinkError, RegionLink, AGENT_CALL_TIMEOUT};
use crate::config::TlsFiles;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use ingot_common::image::BootStep;
use ingot_common::Mac;
use ingot_proto::rack::v1 as proto;
use prost::Message;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};

/// The agent API's TCP port unless `--agent-port` says otherwise (next to the HTTP boot server's 5248).
pub const DEFAULT_AGENT_PORT: u16 = 5249;
/// The one path served.
pub const CALL_PATH: &str = "/agent/v1/call";
/// The media type of calls and answers (one prost message each).
pub const PROTOBUF: &str = "application/x-protobuf";
/// Largest call body accepted, in bytes: inventories are a few KiB.
pub const MAX_BODY: usize = 256 * 1024;
/// hyper's read buffer per connection (its minimum is 8 KiB): bounds a request head.
const READ_BUF: usize = 16 * 1024;
/// How long a closing connection reads and drops what its client still sends ([`linger`]).
const LINGER: Duration = Duration::from_secs(2);
/// Most bytes a closing connection reads and drops ([`linger`]): a refused body of a few times the limit.
const LINGER_BYTES: usize = 1024 * 1024;

/// Limits of the agent API; [`Default`] holds the production values.
#[derive(Debug, Clone)]
pub struct AgentApiSettings {
    /// Most connections open at once; more are closed at once (a rack boots at most a few hundred
    /// machines at a time, each agent with one connection).
    pub max_connections: usize,
    /// The TLS handshake and a request head must arrive within this long of the connection's start or
    /// the head's first byte; a body within this long of its head.
    pub read_timeout: Duration,
    /// A kept-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// Largest call body, in bytes (413 beyond).
    pub max_body: usize,
    /// Calls relayed per second for the whole rack, in bursts of as many (429 beyond): a flood from the
    /// boot network must not become a flood of session messages.
    pub calls_per_second: u32,
    /// How long a relayed call waits for the region's answer (503 after).
    pub call_timeout: Duration,
}

impl Default for AgentApiSettings {
    fn default() -> Self {
        AgentApiSettings {
            max_connections: 256,
            read_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(30),
            max_body: MAX_BODY,
            calls_per_second: 200,
            call_timeout: AGENT_CALL_TIMEOUT,
        }
    }
}

/// Counters of the agent API, monotonic since start except `active_connections`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentApiCounters {
    /// Connections accepted.
    pub connections: u64,
    /// Connections closed at once because [`AgentApiSettings::max_connections`] were open.
    pub refused_connections: u64,
    /// Connections open now.
    pub active_connections: u64,
    /// TLS handshakes that failed or did not finish in time.
    pub handshake_failures: u64,
    /// Connections closed by their deadlines (a slow head or an idle keep-alive).
    pub timeouts: u64,
    /// Requests received.
    pub requests: u64,
    /// Calls answered by the region (200).
    pub answered: u64,
    /// Requests refused at the HTTP level (4xx but 429).
    pub refused: u64,
    /// Requests refused by the rate limit (429).
    pub rate_limited: u64,
    /// Calls answered 503: no session, busy, or no answer in time.
    pub unavailable: u64,
}

/// The live counters behind [`AgentApiCounters`] (each field is the one of the same name there).
#[derive(Default)]
struct Counters {
    /// See [`AgentApiCounters::connections`].
    connections: AtomicU64,
    /// See [`AgentApiCounters::refused_connections`].
    refused_connections: AtomicU64,
    /// See [`AgentApiCounters::active_connections`].
    active_connections: AtomicU64,
    /// See [`AgentApiCounters::handshake_failures`].
    handshake_failures: AtomicU64,
    /// See [`AgentApiCounters::timeouts`].
    timeouts: AtomicU64,
    /// See [`AgentApiCounters::requests`].
    requests: AtomicU64,
    /// See [`AgentApiCounters::answered`].
    answered: AtomicU64,
    /// See [`AgentApiCounters::refused`].
    refused: AtomicU64,
    /// See [`AgentApiCounters::rate_limited`].
    rate_limited: AtomicU64,
    /// See [`AgentApiCounters::unavailable`].
    unavailable: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Locks a mutex, ignoring poisoning.
fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A token bucket: `rate` a second, bursts of `rate` (the region's `RateLimit` on rack sessions, on the
/// rack's side of the same session).
#[derive(Debug)]
struct RateLimit {
    /// Tokens added per second, and the most held.
    rate: f64,
    /// Tokens held now.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    refilled: Instant,
}

impl RateLimit {
    /// A full bucket of `rate` a second.
    fn new(rate: u32, now: Instant) -> RateLimit {
        RateLimit {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            refilled: now,
        }
    }

    /// Takes one token if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Why the agent API's TLS identity could not be made from the rack's files.
#[derive(Debug, thiserror::Error)]
pub enum AgentTlsError {
    /// A PEM file holds no certificate, or a malformed one.
    #[error("the {what} PEM holds no readable certificate: register the rack again")]
    Certificate {
        /// Which file: the rack's certificate or the cluster CA.
        what: &'static str,
    },
    /// The private key PEM holds no readable key.
    #[error("the rack's private key PEM cannot be read ({source}): register the rack again")]
    Key {
        /// What the PEM reader said.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the certificate and key (they do not match, or the key type is unsupported).
    #[error("the rack's certificate and key make no TLS server identity ({source}): register the rack again")]
    Rustls {
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
}

/// Every certificate of a PEM string; `what` names it in the error.
fn certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, AgentTlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| AgentTlsError::Certificate { what })?;
    if certs.is_empty() {
        return Err(AgentTlsError::Certificate { what });
    }
    Ok(certs)
}

/// The agent API's TLS server configuration from the rack's own files (the identity of its mutual-TLS
/// session: CN `rack-<name>`, serverAuth and clientAuth, no SANs): the chain presented is the rack's
/// certificate then the cluster CA's, so an agent that pins the CA by its fingerprint finds it in the
/// handshake; no client certificate is asked (agents have none: the boot token is their proof). HTTP/1.1
/// only; rustls on ring.
pub fn server_tls(tls: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, AgentTlsError> {
    let mut chain = certs(&tls.cert_pem, "rack certificate")?;
    for ca in certs(&tls.ca_pem, "cluster CA")? {
        if !chain.contains(&ca) {
            chain.push(ca);
        }
    }
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes())
        .map_err(|source| AgentTlsError::Key { source })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| AgentTlsError::Rustls { source })?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|source| AgentTlsError::Rustls { source })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The agent API's shared state: what every connection answers from.
pub struct AgentApi {
    /// Where calls are relayed (the region session).
    link: Arc<RegionLink>,
    /// Where lookups are reported as boot events.
    events: Arc<BootEventSink>,
    /// The TLS acceptor with the rack's identity.
    tls: tokio_rustls::TlsAcceptor,
    /// Limits.
    settings: AgentApiSettings,
    /// Live counters.
    counters: Counters,
    /// The rack-wide call rate limit.
    rate: Mutex<RateLimit>,
}

impl std::fmt::Debug for AgentApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentApi")
            .field("counters", &self.counters())
            .finish_non_exhaustive()
    }
}

/// What [`AgentApi::new`] needs.
pub struct AgentApiParts {
    /// The boot path's link to the region session.
    pub link: Arc<RegionLink>,
    /// Where boot events go.
    pub events: Arc<BootEventSink>,
    /// The TLS configuration ([`server_tls`]).
    pub tls: Arc<rustls::ServerConfig>,
    /// Limits.
    pub settings: AgentApiSettings,
}

impl AgentApi {
    /// An API over `parts`.
    pub fn new(parts: AgentApiParts) -> Arc<AgentApi> {
        let rate = RateLimit::new(parts.settings.calls_per_second.max(1), Instant::now());
        Arc::new(AgentApi {
            link: parts.link,
            events: parts.events,
            tls: tokio_rustls::TlsAcceptor::from(parts.tls),
            settings: parts.settings,
            counters: Counters::default(),
            rate: Mutex::new(rate),
        })
    }

    /// The counters so far.
    pub fn counters(&self) -> AgentApiCounters {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        AgentApiCounters {
            connections: get(&c.connections),
            refused_connections: get(&c.refused_connections),
            active_connections: get(&c.active_connections),
            handshake_failures: get(&c.handshake_failures),
            timeouts: get(&c.timeouts),
            requests: get(&c.requests),
            answered: get(&c.answered),
            refused: get(&c.refused),
            rate_limited: get(&c.rate_limited),
            unavailable: get(&c.unavailable),
        }
    }
}

/// A TCP listener for the agent API on `interface`'s IPv4 address and `port`.
pub fn bind(interface: &str, port: u16) -> Result<TcpListener, HttpBindError> {
    bind_tcp(interface, port, ("agent API", "--agent-port"))
}

/// Serves `listener` until `shutdown` turns true: each accepted connection on a task of its own, at
/// most [`AgentApiSettings::max_connections`] at once. Returns only on shutdown (accept errors are
/// logged and retried after a short pause).
pub async fn run(
    listener: TcpListener,
    api: Arc<AgentApi>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(api.settings.max_connections.max(1)));
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("agent API: accept failed: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => return Ok(()),
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            bump(&api.counters.refused_connections);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        bump(&api.counters.connections);
        bump(&api.counters.active_connections);
        let api = api.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            serve_connection(&api, stream, peer, stop).await;
            api.counters
                .active_connections
                .fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

/// Resolves once shutdown is asked for (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|v| *v).await.is_ok();
}

/// Where a connection is in its request cycle, for its deadline.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for the next request since then (after a response): the idle deadline.
    Idle(Instant),
    /// Receiving a head (or the TLS handshake) since then: the read deadline.
    Head(Instant),
    /// A request is being answered: its own timeouts bound it (body read, relay).
    Busy,
}

/// A connection's deadline watchdog: the I/O wrapper ([`Watched`]) moves an idle connection to
/// [`Phase::Head`] at its first byte; the request handler marks itself busy and idle again.
struct Clock {
    /// The phase and a change counter (a deadline holds only if nothing changed since it was taken).
    state: Mutex<(Phase, u64)>,
    /// Wakes the watchdog on a change.
    changed: Notify,
}

impl Clock {
    /// A clock for a connection accepted `now`: its handshake and first head are due.
    fn new(now: Instant) -> Clock {
        Clock {
            state: Mutex::new((Phase::Head(now), 0)),
            changed: Notify::new(),
        }
    }

    /// Enters `phase`.
    fn set(&self, phase: Phase) {
        {
            let mut s = lock(&self.state);
            s.0 = phase;
            s.1 += 1;
        }
        self.changed.notify_one();
    }

    /// Bytes were read: an idle connection starts a head.
    fn read(&self) {
        let idle = matches!(lock(&self.state).0, Phase::Idle(_));
        if idle {
            self.set(Phase::Head(Instant::now()));
        }
    }

    /// Resolves when the current phase's deadline passes with no change.
    async fn expired(&self, read: Duration, idle: Duration) {
        loop {
            let (phase, seen) = *lock(&self.state);
            let deadline = match phase {
                Phase::Idle(t) => Some(t + idle),
                Phase::Head(t) => Some(t + read),
                Phase::Busy => None,
            };
            match deadline {
                None => self.changed.notified().await,
                Some(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(d.into()) => {
                            if lock(&self.state).1 == seen {
                                return;
                            }
                        }
                        _ = self.changed.notified() => {}
                    }
                }
            }
        }
    }
}

/// A stream whose reads tell the connection's [`Clock`].
struct Watched<S> {
    /// The TLS stream.
    inner: S,
    /// The connection's clock.
    clock: Arc<Clock>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.clock.read();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// One connection: the TLS handshake, then HTTP/1.1 requests answered in turn until the client closes,
/// a deadline passes ([`Clock`]) or the rack stops.
async fn serve_connection(
    api: &Arc<AgentApi>,
    stream: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let clock = Arc::new(Clock::new(Instant::now()));
    let read_timeout = api.settings.read_timeout;
    let tls = tokio::select! {
        r = tokio::time::timeout(read_timeout, api.tls.accept(stream)) => match r {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "agent API: TLS handshake failed: {e}");
                bump(&api.counters.handshake_failures);
                return;
            }
            Err(_) => {
                bump(&api.counters.handshake_failures);
                return;
            }
        },
        _ = stopped(&mut stop) => return,
    };
    let io = hyper_util::rt::TokioIo::new(Watched {
        inner: tls,
        clock: clock.clone(),
    });
    let (svc_api, svc_clock) = (api.clone(), clock.clone());
    let service = hyper::service::service_fn(move |req| {
        let (api, clock) = (svc_api.clone(), svc_clock.clone());
        async move {
            clock.set(Phase::Busy);
            let response = handle(&api, peer, req).await;
            clock.set(Phase::Idle(Instant::now()));
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        .header_read_timeout(None)
        .max_buf_size(READ_BUF);
    let conn = builder.serve_connection(io, service).without_shutdown();
    tokio::select! {
        r = conn => match r {
            Ok(parts) => linger(parts.io.into_inner().inner).await,
            Err(e) => tracing::debug!(%peer, "agent API connection ended: {e}"),
        },
        _ = clock.expired(read_timeout, api.settings.idle_timeout) => {
            bump(&api.counters.timeouts);
        }
        _ = stopped(&mut stop) => {}
    }
}

/// Ends a connection whose HTTP exchange is over the polite way: TLS close_notify and a TCP FIN, then
/// whatever the client still sends is read and dropped (at most [`LINGER_BYTES`], for at most
/// [`LINGER`]) before the socket closes — so a client still sending a refused body (413) reads the
/// refusal instead of a reset that discards it.
async fn linger(mut tls: tokio_rustls::server::TlsStream<TcpStream>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(LINGER, tls.shutdown()).await;
    let (mut tcp, _) = tls.into_inner();
    let drain = async {
        let mut buf = [0u8; 8192];
        let mut total = 0;
        while total < LINGER_BYTES {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// A response of `status` with one prost message or text.
type Reply = Response<Full<Bytes>>;

/// A text answer for an HTTP-level problem. `close`: the request's body was not read, so the connection
/// ends after the answer (its unread bytes must not be taken for a next request).
fn text(status: StatusCode, body: impl Into<String>, close: bool) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if close {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// A text answer that asks the agent to try again in a second.
fn retry_later(status: StatusCode, body: impl Into<String>, close: bool) -> Reply {
    let mut r = text(status, body, close);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// Why a request is refused before its call is relayed.
fn refused(api: &AgentApi, status: StatusCode, body: impl Into<String>, close: bool) -> Reply {
    bump(&api.counters.refused);
    text(status, body, close)
}

/// Answers one request (see the module docs for the statuses).
async fn handle(api: &AgentApi, peer: SocketAddr, req: Request<Incoming>) -> Reply {
    bump(&api.counters.requests);
    if req.uri().path() != CALL_PATH {
        let msg = format!("not found: the agent API serves POST {CALL_PATH}\n");
        return refused(api, StatusCode::NOT_FOUND, msg, true);
    }
    if req.method() != Method::POST {
        let mut r = refused(
            api,
            StatusCode::METHOD_NOT_ALLOWED,
            format!("only POST is served on {CALL_PATH}\n"),
            true,
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let media = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    if !media.is_some_and(|m| m.eq_ignore_ascii_case(PROTOBUF)) {
        let msg = format!("Content-Type must be {PROTOBUF}: the body is one protobuf AgentCall\n");
        return refused(api, StatusCode::UNSUPPORTED_MEDIA_TYPE, msg, true);
    }
    let Some(len) = req.headers().get(header::CONTENT_LENGTH) else {
        let msg =
            "Content-Length is required (no chunked bodies): send the encoded AgentCall whole\n";
        return refused(api, StatusCode::LENGTH_REQUIRED, msg, true);
    };
    let Some(len) = len.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) else {
        let msg = "Content-Length: not a number of bytes\n";
        return refused(api, StatusCode::BAD_REQUEST, msg, true);
    };
    let max = api.settings.max_body;
    if len > max as u64 {
        let msg = format!("the body is {len} bytes; an AgentCall is at most {max}\n");
        return refused(api, StatusCode::PAYLOAD_TOO_LARGE, msg, true);
    }
    if !lock(&api.rate).take(Instant::now()) {
        bump(&api.counters.rate_limited);
        let msg = "too many agent calls on this rack right now: try again in a second\n";
        return retry_later(StatusCode::TOO_MANY_REQUESTS, msg, true);
    }
    let IpAddr::V4(peer_ip) = peer.ip().to_canonical() else {
        let msg = "the agent API serves IPv4 clients only (the boot network's addresses)\n";
        return refused(api, StatusCode::BAD_REQUEST, msg, true);
    };
    if !api.link.online() {
        bump(&api.counters.unavailable);
        return retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", LinkError::NoSession),
            true,
        );
    }
    let read = Limited::new(req.into_body(), max).collect();
    let body = match tokio::time::timeout(api.settings.read_timeout, read).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => {
            let msg = format!("reading the body failed: {e}\n");
            return refused(api, StatusCode::BAD_REQUEST, msg, true);
        }
        Err(_) => {
            let msg = format!(
                "the body did not arrive within {} s\n",
                api.settings.read_timeout.as_secs()
            );
            return refused(api, StatusCode::REQUEST_TIMEOUT, msg, true);
        }
    };
    let call = match proto::AgentCall::decode(body) {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("the body is no protobuf AgentCall: {e}\n");
            return refused(api, StatusCode::BAD_REQUEST, msg, false);
        }
    };
    if call.call.is_none() {
        let msg =
            "AgentCall.call: empty: set one of lookup, heartbeat, inventory, progress, result\n";
        return refused(api, StatusCode::BAD_REQUEST, msg, false);
    }
    let lookup_mac = match &call.call {
        Some(proto::agent_call::Call::Lookup(l)) => {
            l.macs.iter().take(64).find_map(|m| m.parse::<Mac>().ok())
        }
        _ => None,
    };
    let answer = api
        .link
        .agent_call(call, peer_ip, api.settings.call_timeout)
        .await;
    if let Some(mac) = lookup_mac {
        api.events
            .push(mac, BootStep::AgentLookup, lookup_detail(peer_ip, &answer));
    }
    match answer {
        Ok(a) => {
            bump(&api.counters.answered);
            let mut r = Response::new(Full::new(Bytes::from(a.encode_to_vec())));
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => {
            bump(&api.counters.unavailable);
            retry_later(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"), false)
        }
    }
}

/// The boot event's detail of a relayed lookup: who asked and what came of it (never the claim or the
/// token).
fn lookup_detail(peer: Ipv4Addr, answer: &Result<proto::AgentAnswer, LinkError>) -> String {
    match answer {
        Ok(a) if a.code == 0 => match &a.answer {
            Some(proto::agent_answer::Answer::Work(w)) => format!(
                "agent at {peer}: machine {} boots to {}",
                w.system_id, w.purpose
            ),
            _ => format!("agent at {peer}: answered"),
        },
        Ok(a) => format!("agent at {peer}: refused (code {}): {}", a.code, a.error),
        Err(e) => format!("agent at {peer}: not relayed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limit_refills_over_time() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(2, t0);
        assert!(r.take(t0) && r.take(t0));
        assert!(!r.take(t0));
        assert!(r.take(t0 + Duration::from_millis(600)));
        assert!(!r.take(t0 + Duration::from_millis(600)));
        // Never more than a second's worth after a long pause.
        let later = t0 + Duration::from_secs(60);
        assert!(r.take(later) && r.take(later));
        assert!(!r.take(later));
    }

    #[tokio::test]
    async fn the_clock_tells_slow_heads_from_idle_connections() {
        let read = Duration::from_millis(150);
        let idle = Duration::from_millis(400);
        let near = |got: Duration, want: Duration| {
            assert!(
                got >= want && got < want + Duration::from_millis(100),
                "{got:?} for {want:?}"
            );
        };
        // A connection that sends nothing is cut at the read deadline.
        let c = Clock::new(Instant::now());
        let t = Instant::now();
        c.expired(read, idle).await;
        near(t.elapsed(), read);
        // A busy connection has no deadline; after its answer it may idle for `idle`.
        let c = Arc::new(Clock::new(Instant::now()));
        c.set(Phase::Busy);
        let c2 = c.clone();
        let watch = tokio::spawn(async move { c2.expired(read, idle).await });
        tokio::time::sleep(read * 3).await;
        assert!(!watch.is_finished());
        let t = Instant::now();
        c.set(Phase::Idle(Instant::now()));
        watch.await.expect("join");
        near(t.elapsed(), idle);
        // A byte on an idle connection starts a head: the read deadline from then.
        let c = Arc::new(Clock::new(Instant::now()));
        c.set(Phase::Idle(Instant::now()));
        tokio::time::sleep(read * 2).await;
        c.read();
        let t = Instant::now();
        c.expired(read, idle).await;
        near(t.elapsed(), read);
    }

    #[test]
    fn lookup_details_name_the_outcome_and_no_secret() {
        let peer = Ipv4Addr::new(10, 20, 0, 7);
        let work = proto::AgentAnswer {
            id: 1,
            code: 0,
            error: String::new(),
            answer: Some(proto::agent_answer::Answer::Work(proto::AgentWork {
                system_id: "abc123".into(),
                purpose: "commission".into(),
                boot_token: "secret-token".into(),
                ..Default::default()
            })),
        };
        let d = lookup_detail(peer, &Ok(work));
        assert_eq!(d, "agent at 10.20.0.7: machine abc123 boots to commission");
        let refused = proto::AgentAnswer {
            id: 1,
            code: 9,
            error: "not booting".into(),
            answer: None,
        };
        assert!(lookup_detail(peer, &Ok(refused)).contains("refused (code 9): not booting"));
        assert!(lookup_detail(peer, &Err(LinkError::Timeout)).contains("not relayed"));
    }
}
