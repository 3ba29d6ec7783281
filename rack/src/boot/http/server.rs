//! The rack's HTTP boot server: per-machine iPXE scripts and the blobs they name.
//!
//! ```text
//!  GET /boot/<mac>.ipxe ─────────┐                       (any MAC notation; iPXE sends colon hex)
//!  GET /boot/by-id/<id>.ipxe ────┴► IntentSource (the region, over the session; ≤ 3 s) ─► script::render
//!                                    └─ files named ─► ImageCache::want       └─ event: script, purpose
//!  GET|HEAD /blobs/<sha256>[/<name>] ─► ImageCache::open ─► 200 / 206 (one range) / 416, streamed
//!  GET|HEAD /boot/<bootloader file> ─► ImageCache::bootloader(name) ─► the same
//!  anything else ─► 404; methods other than GET and HEAD ─► 405
//! ```
//!
//! Why an accept loop and an HTTP/1.1 connection loop of our own (heads parsed by httparse, hyper's types
//! for requests and responses) rather than a framework's `serve`: blob bodies go out with `sendfile(2)`
//! (page cache to socket, no copy through this process — measured: hyper's buffered bodies gave half of
//! nginx's throughput, sendfile is what nginx does), and a boot server faces every
//! machine on a boot network, so the number of connections is bounded ([`HttpSettings::max_connections`],
//! further ones are closed at once and counted), a client that sends no complete request head within
//! [`HttpSettings::header_timeout`] is disconnected (this also ends idle keep-alive connections), request
//! heads are bounded ([`HttpSettings::max_head_bytes`]), a client that stops reading a response is
//! disconnected after [`HttpSettings::write_stall`], and accepted sockets get `TCP_NODELAY`. Routing
//! is three prefixes: no router needed.
//!
//! Memory per download is independent of the file's size, and nearly nil: the kernel moves at most
//! [`HttpSettings::chunk_bytes`] per `sendfile` call from the page cache to the socket; requests are
//! answered in turn on a connection (pipelined ones wait in a buffer bounded by the head limit); a request
//! announcing a body is refused (only GET and HEAD are served).
//!
//! Downloads are attributed to a MAC by the address that fetched its script (a bounded map, entries kept
//! [`CLIENT_TTL`]): `file-started`, `file-finished` and `file-aborted` events then reach that machine. A
//! download from an address that fetched no script is served but not reported.

use super::script::{self, ScriptContext};
use crate::boot::cache::{CacheError, ImageCache};
use crate::boot::events::BootEventSink;
use crate::boot::link::{IntentError, IntentKey, RackIntent, RegionLink, INTENT_TIMEOUT};
use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use ingot_common::image::{BlobId, BootStep};
use ingot_common::Mac;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// How long a script fetch attributes later downloads from the same address to its MAC.
pub const CLIENT_TTL: Duration = Duration::from_secs(600);
/// Most addresses remembered for attribution.
pub const MAX_CLIENTS: usize = 4096;
/// Longest request path served (longer ones are refused with 414).
pub const MAX_PATH: usize = 512;

/// Where a script's answer comes from: the region over the session in the rack ([`RegionLink`]), a fake
/// in tests.
pub trait IntentSource: Send + Sync + 'static {
    /// What `key` should boot now.
    fn boot_intent<'a>(
        &'a self,
        key: &'a IntentKey,
    ) -> BoxFuture<'a, Result<RackIntent, IntentError>>;
}

impl IntentSource for RegionLink {
    fn boot_intent<'a>(
        &'a self,
        key: &'a IntentKey,
    ) -> BoxFuture<'a, Result<RackIntent, IntentError>> {
        Box::pin(RegionLink::boot_intent(self, key, INTENT_TIMEOUT))
    }
}

/// Limits and sizes of the server; [`Default`] holds the production values.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Most connections open at once; more are closed at once (a rack boots at most a few hundred
    /// machines at a time, each with one or two connections).
    pub max_connections: usize,
    /// A connection must send a complete request head within this long (also after each response on a
    /// kept-alive connection, so idle connections end).
    pub header_timeout: Duration,
    /// Largest request head accepted, in bytes.
    pub max_head_bytes: usize,
    /// Most bytes one `sendfile(2)` call moves (the socket's buffer takes what it can; the call returns
    /// early when it is full).
    pub chunk_bytes: usize,
    /// A connection whose client accepts no byte of a pending write for this long is closed: a client
    /// that stops reading mid-download must not hold its connection slot forever.
    pub write_stall: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            max_connections: 1024,
            header_timeout: Duration::from_secs(15),
            max_head_bytes: 16 * 1024,
            chunk_bytes: 4 * 1024 * 1024,
            write_stall: Duration::from_secs(30),
        }
    }
}

/// Counters of the server, monotonic since start except the `active_*` gauges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpCounters {
    /// Requests answered.
    pub requests: u64,
    /// Body bytes sent (blobs; scripts included).
    pub bytes: u64,
    /// Scripts served.
    pub scripts: u64,
    /// Connections accepted.
    pub connections: u64,
    /// Connections closed at once because [`HttpSettings::max_connections`] were open.
    pub refused_connections: u64,
    /// Connections open now.
    pub active_connections: u64,
    /// Blob bodies being sent now.
    pub active_downloads: u64,
    /// Downloads that ended before their last byte.
    pub aborted_downloads: u64,
    /// Requests answered 404.
    pub not_found: u64,
}

/// The live counters behind [`HttpCounters`] (each field is the one of the same name there).
#[derive(Default)]
struct Counters {
    /// See [`HttpCounters::requests`].
    requests: AtomicU64,
    /// See [`HttpCounters::bytes`].
    bytes: AtomicU64,
    /// See [`HttpCounters::scripts`].
    scripts: AtomicU64,
    /// See [`HttpCounters::connections`].
    connections: AtomicU64,
    /// See [`HttpCounters::refused_connections`].
    refused_connections: AtomicU64,
    /// See [`HttpCounters::active_connections`].
    active_connections: AtomicU64,
    /// See [`HttpCounters::active_downloads`].
    active_downloads: AtomicU64,
    /// See [`HttpCounters::aborted_downloads`].
    aborted_downloads: AtomicU64,
    /// See [`HttpCounters::not_found`].
    not_found: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn unbump(c: &AtomicU64) {
    c.fetch_sub(1, Ordering::Relaxed);
}

/// Locks a mutex, ignoring poisoning.
fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The HTTP boot server's shared state: what every connection answers from.
pub struct HttpServer {
    /// Where scripts' answers come from.
    intents: Arc<dyn IntentSource>,
    /// The only source of blobs.
    cache: Arc<ImageCache>,
    /// Where scripts served and downloads are reported.
    events: Arc<BootEventSink>,
    /// The cluster CA's SHA-256, put in every script.
    ca_fingerprint: String,
    /// The agent API's port, put in every ramdisk script (`ingot.agent`).
    agent_port: u16,
    /// Limits.
    settings: HttpSettings,
    /// Live counters.
    counters: Counters,
    /// Address → the MAC whose script it fetched last, and when.
    clients: Mutex<HashMap<IpAddr, (Mac, Instant)>>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("counters", &self.counters())
            .finish_non_exhaustive()
    }
}

/// What [`HttpServer::new`] needs.
pub struct HttpServerParts {
    /// Where boot intents come from.
    pub intents: Arc<dyn IntentSource>,
    /// The rack's image cache (blobs are served only from it).
    pub cache: Arc<ImageCache>,
    /// Where boot events go.
    pub events: Arc<BootEventSink>,
    /// SHA-256 of the cluster CA certificate's DER, lowercase hex ([`ca_fingerprint`]).
    pub ca_fingerprint: String,
    /// The TCP port of the rack's agent API (`--agent-port`), on the same addresses as this server:
    /// scripts tell the agent `ingot.agent=https://<address>:<port>`.
    pub agent_port: u16,
    /// Limits.
    pub settings: HttpSettings,
}

/// The SHA-256 of the first certificate of `ca_pem` (the cluster CA the rack got at enrollment), as
/// lowercase hex: what scripts give the agent to pin; `None` when the PEM holds no certificate.
pub fn ca_fingerprint(ca_pem: &str) -> Option<String> {
    use sha2::Digest;
    let der = ingot_common::pki::first_cert_der(ca_pem)?;
    Some(BlobId(sha2::Sha256::digest(&der).into()).to_hex())
}

impl HttpServer {
    /// A server over `parts`.
    pub fn new(parts: HttpServerParts) -> Arc<HttpServer> {
        Arc::new(HttpServer {
            intents: parts.intents,
            cache: parts.cache,
            events: parts.events,
            ca_fingerprint: parts.ca_fingerprint,
            agent_port: parts.agent_port,
            settings: parts.settings,
            counters: Counters::default(),
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// The counters so far.
    pub fn counters(&self) -> HttpCounters {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        HttpCounters {
            requests: get(&c.requests),
            bytes: get(&c.bytes),
            scripts: get(&c.scripts),
            connections: get(&c.connections),
            refused_connections: get(&c.refused_connections),
            active_connections: get(&c.active_connections),
            active_downloads: get(&c.active_downloads),
            aborted_downloads: get(&c.aborted_downloads),
            not_found: get(&c.not_found),
        }
    }

    /// Notes that `addr` fetched `mac`'s script.
    fn remember(&self, addr: IpAddr, mac: Mac) {
        let now = Instant::now();
        let mut clients = lock(&self.clients);
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(&addr) {
            clients.retain(|_, (_, at)| now.duration_since(*at) < CLIENT_TTL);
            if clients.len() >= MAX_CLIENTS {
                return;
            }
        }
        clients.insert(addr, (mac, now));
    }

    /// The MAC whose script `addr` fetched last, if recently.
    fn client_mac(&self, addr: IpAddr) -> Option<Mac> {
        lock(&self.clients)
            .get(&addr)
            .filter(|(_, at)| at.elapsed() < CLIENT_TTL)
            .map(|(m, _)| *m)
    }
}

/// Why the HTTP boot server (or another TCP server of the boot path, such as the agent API) could not
/// bind.
#[derive(Debug, thiserror::Error)]
pub enum HttpBindError {
    /// The interface list could not be read.
    #[error("listing network interfaces for the {server}: {source}")]
    Interfaces {
        /// Which server was binding.
        server: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The interface has no IPv4 address (or does not exist).
    #[error("boot interface {interface} has no IPv4 address: give it the rack's address on that boot network")]
    NoIpv4 {
        /// The interface.
        interface: String,
    },
    /// The address is taken or not ours.
    #[error(
        "binding the {server} to {addr} ({interface}): {source} (is another server on {flag}?)"
    )]
    Bind {
        /// Which server was binding.
        server: &'static str,
        /// The flag that chose the port.
        flag: &'static str,
        /// The interface.
        interface: String,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A TCP listener on `interface`'s IPv4 address and `port` (the address the DHCP server puts in the
/// script URLs it hands out on that interface).
pub fn bind(interface: &str, port: u16) -> Result<TcpListener, HttpBindError> {
    bind_tcp(interface, port, ("HTTP boot server", "--http-port"))
}

/// A TCP listener on `interface`'s IPv4 address and `port` for the server and flag `who` names (in
/// errors: `("agent API", "--agent-port")`).
pub fn bind_tcp(
    interface: &str,
    port: u16,
    who: (&'static str, &'static str),
) -> Result<TcpListener, HttpBindError> {
    let (server, flag) = who;
    let ip = crate::boot::interface_ipv4(interface).map_err(|e| match e {
        crate::boot::InterfaceError::Interfaces { source } => {
            HttpBindError::Interfaces { server, source }
        }
        crate::boot::InterfaceError::NoIpv4 { interface } => HttpBindError::NoIpv4 { interface },
    })?;
    let addr = SocketAddr::new(ip.into(), port);
    let err = |source| HttpBindError::Bind {
        server,
        flag,
        interface: interface.to_string(),
        addr,
        source,
    };
    let socket = tokio::net::TcpSocket::new_v4().map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(1024).map_err(err)
}

/// Serves `listener` until `shutdown` turns true: each accepted connection on a task of its own, at
/// most [`HttpSettings::max_connections`] at once. Returns only on shutdown (accept errors are logged
/// and retried after a short pause: a full file table must not end the server).
pub async fn run(
    listener: TcpListener,
    server: Arc<HttpServer>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(server.settings.max_connections.max(1)));
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("HTTP boot server: accept failed: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => return Ok(()),
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            bump(&server.counters.refused_connections);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let local = match stream.local_addr() {
            Ok(a) => a,
            Err(_) => continue,
        };
        bump(&server.counters.connections);
        bump(&server.counters.active_connections);
        let server = server.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let urls = Urls {
                base: base_url(local),
                agent: agent_url(local, server.agent_port),
            };
            serve_connection(&server, stream, peer, &urls, &mut stop).await;
            unbump(&server.counters.active_connections);
            drop(permit);
        });
    }
}

/// Resolves once shutdown is asked for (or its sender is gone); holds no `watch::Ref` across an await.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|v| *v).await.is_ok();
}

/// The rack's URLs as a client on one connection reaches them (the address it connected to).
struct Urls {
    /// This server's base URL ([`base_url`]).
    base: String,
    /// The agent API's base URL on the same address ([`agent_url`]).
    agent: String,
}

/// `http://<address>:<port>` of the socket a client reached: the host every URL in its script uses.
fn base_url(local: SocketAddr) -> String {
    match local {
        SocketAddr::V4(a) => format!("http://{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("http://[{}]:{}", a.ip(), a.port()),
    }
}

/// `https://<address>:<agent port>`: the agent API on the address the client reached this server at
/// (both listen on every boot interface's address).
fn agent_url(local: SocketAddr, agent_port: u16) -> String {
    match local {
        SocketAddr::V4(a) => format!("https://{}:{agent_port}", a.ip()),
        SocketAddr::V6(a) => format!("https://[{}]:{agent_port}", a.ip()),
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let body: String = body.into();
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// What a request path names.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// A script for a MAC or a machine.
    Script(IntentKey),
    /// A blob by digest, with the file name the URL gave it (for events; the digest alone picks the bytes).
    Blob(BlobId, Option<String>),
    /// A bootloader file by name (`/boot/snponly.efi`, what UEFI HTTP clients are given).
    Bootloader(String),
    /// Nothing served here.
    NotFound,
}

/// `%xx` escapes decoded (iPXE may escape `:` in a MAC); `None` when an escape is malformed or the
/// result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Parses a request path (no query) into a [`Route`]; anything it does not recognise is `NotFound`.
fn route(path: &str) -> Route {
    let Some(path) = percent_decode(path) else {
        return Route::NotFound;
    };
    if let Some(rest) = path.strip_prefix("/boot/") {
        if let Some(id) = rest
            .strip_prefix("by-id/")
            .and_then(|r| r.strip_suffix(".ipxe"))
        {
            return match script::plain_token(id) {
                Some(id) => Route::Script(IntentKey::SystemId(id.to_string())),
                None => Route::NotFound,
            };
        }
        if let Some(mac) = rest.strip_suffix(".ipxe") {
            return match mac.parse::<Mac>() {
                Ok(m) => Route::Script(IntentKey::Mac(m)),
                Err(_) => Route::NotFound,
            };
        }
        return match ingot_common::image::validate_file_name("path", rest) {
            Ok(()) => Route::Bootloader(rest.to_string()),
            Err(_) => Route::NotFound,
        };
    }
    if let Some(rest) = path.strip_prefix("/blobs/") {
        let (sha, name) = match rest.split_once('/') {
            Some((s, n)) => (s, Some(n)),
            None => (rest, None),
        };
        if name.is_some_and(|n| ingot_common::image::validate_file_name("path", n).is_err()) {
            return Route::NotFound;
        }
        return match BlobId::parse("path", sha) {
            Ok(b) => Route::Blob(b, name.map(str::to_string)),
            Err(_) => Route::NotFound,
        };
    }
    Route::NotFound
}

/// Answers one request.
async fn handle(
    server: &Arc<HttpServer>,
    urls: &Urls,
    peer: SocketAddr,
    req: Request<()>,
) -> Reply {
    bump(&server.counters.requests);
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are served\n",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r.into();
    }
    let path = req.uri().path();
    if path.len() > MAX_PATH {
        return text(StatusCode::URI_TOO_LONG, "path too long\n").into();
    }
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match route(path) {
        Route::Script(key) => serve_script(server, urls, peer, key, head).await.into(),
        Route::Blob(blob, name) => {
            serve_blob(
                server,
                peer,
                BlobRequest {
                    blob,
                    name,
                    range,
                    head,
                },
            )
            .await
        }
        Route::Bootloader(name) => match server.cache.bootloader(&name) {
            Some(w) => {
                let req = BlobRequest {
                    blob: w.file.blob,
                    name: Some(name),
                    range,
                    head,
                };
                serve_blob(server, peer, req).await
            }
            None => not_found(server).into(),
        },
        Route::NotFound => not_found(server).into(),
    }
}

fn not_found(server: &HttpServer) -> Response<Body> {
    bump(&server.counters.not_found);
    text(StatusCode::NOT_FOUND, "not found\n")
}

/// The script for `key`: the region's intent rendered, or a script that retries.
async fn serve_script(
    server: &Arc<HttpServer>,
    urls: &Urls,
    peer: SocketAddr,
    key: IntentKey,
    head: bool,
) -> Response<Body> {
    bump(&server.counters.scripts);
    let base = &urls.base;
    let script_url = match &key {
        IntentKey::Mac(m) => format!("{base}/boot/{m}.ipxe"),
        IntentKey::SystemId(id) => format!("{base}/boot/by-id/{id}.ipxe"),
    };
    let mac = match &key {
        IntentKey::Mac(m) => Some(*m),
        IntentKey::SystemId(_) => None,
    };
    let ctx = ScriptContext {
        base,
        agent: &urls.agent,
        ca_fingerprint: &server.ca_fingerprint,
        mac,
        script_url: &script_url,
    };
    let (body, event) = match server.intents.boot_intent(&key).await {
        Ok(ri) => {
            for f in &ri.files {
                server.cache.want(f);
            }
            let i = &ri.intent;
            let mut detail = format!("purpose {}", i.purpose.as_str());
            if !i.problem.is_empty() {
                detail.push_str(": ");
                detail.push_str(&i.problem);
            }
            (script::render(&ctx, i), detail)
        }
        Err(e) => {
            let reason = format!("{e}; asking again");
            (script::render_retry(&ctx, &reason), format!("retry: {e}"))
        }
    };
    if let Some(mac) = mac {
        server.remember(peer.ip(), mac);
        if !head {
            server.events.push(mac, BootStep::Script, event);
        }
    }
    let len = body.len();
    let mut r = if head {
        Response::new(empty())
    } else {
        server
            .counters
            .bytes
            .fetch_add(len as u64, Ordering::Relaxed);
        Response::new(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        )
    };
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}

/// A blob request.
struct BlobRequest {
    /// The blob asked for.
    blob: BlobId,
    /// The file name the URL gave (`kernel`, a bootloader's name), for events.
    name: Option<String>,
    /// The `Range` header, if any.
    range: Option<String>,
    /// A HEAD request: headers only.
    head: bool,
}

/// What a `Range` header asks of a file of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
enum RangeAsk {
    /// The whole file (no header, several ranges, or a header we do not understand: RFC 9110 lets a
    /// server ignore it).
    Full,
    /// Bytes `start..=end`.
    Part {
        /// First byte.
        start: u64,
        /// Last byte (inclusive, within the file).
        end: u64,
    },
    /// Nothing of the file can satisfy it: 416.
    Unsatisfiable,
}

/// Parses a single `bytes=` range against a length (`a-b`, `a-`, `-n`).
fn parse_range(header: Option<&str>, len: u64) -> RangeAsk {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeAsk::Full;
    };
    if spec.contains(',') {
        return RangeAsk::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAsk::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (a.is_empty(), b.is_empty()) {
        (true, true) => RangeAsk::Full,
        (true, false) => match num(b) {
            None => RangeAsk::Full,
            Some(0) => RangeAsk::Unsatisfiable,
            Some(_) if len == 0 => RangeAsk::Unsatisfiable,
            Some(n) => RangeAsk::Part {
                start: len.saturating_sub(n),
                end: len - 1,
            },
        },
        (false, _) => {
            let Some(start) = num(a) else {
                return RangeAsk::Full;
            };
            let end = if b.is_empty() { Some(u64::MAX) } else { num(b) };
            let Some(end) = end else {
                return RangeAsk::Full;
            };
            if end < start {
                return RangeAsk::Full;
            }
            if start >= len {
                return RangeAsk::Unsatisfiable;
            }
            RangeAsk::Part {
                start,
                end: end.min(len - 1),
            }
        }
    }
}

/// A blob from the cache: 200, 206 or 416, streamed.
async fn serve_blob(server: &Arc<HttpServer>, peer: SocketAddr, req: BlobRequest) -> Reply {
    let cached = match server.cache.open(&req.blob).await {
        Ok(c) => c,
        Err(CacheError::Unknown(_)) => return not_found(server).into(),
        Err(e @ CacheError::Unavailable { .. }) => {
            tracing::warn!(%peer, "HTTP download refused: {e}");
            return text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into();
        }
    };
    let len = cached.len;
    let etag = format!("\"{}\"", req.blob.to_hex());
    let ask = parse_range(req.range.as_deref(), len);
    let (status, start, count) = match ask {
        RangeAsk::Full => (StatusCode::OK, 0, len),
        RangeAsk::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        RangeAsk::Unsatisfiable => {
            let mut r = text(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r.into();
        }
    };
    let mut plan = None;
    let body = if req.head || count == 0 {
        empty()
    } else {
        let label = req
            .name
            .clone()
            .unwrap_or_else(|| format!("blob {}", &req.blob.to_hex()[..12]));
        let download = Download::start(
            server.clone(),
            server.client_mac(peer.ip()),
            label,
            count,
            start,
        );
        plan = Some(FilePlan {
            blob: cached,
            start,
            count,
            download,
        });
        empty()
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    // A blob's bytes never change under its name.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", start + count - 1))
        {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    Reply {
        response: r,
        file: plan,
    }
}

/// One body being sent: counts it, and reports its start, its end and (on drop before the end) its
/// abort as boot events of the MAC that fetched the script from the same address.
struct Download {
    /// For counters and events.
    server: Arc<HttpServer>,
    /// The MAC the download is attributed to (none: not reported).
    mac: Option<Mac>,
    /// What the events call the file (`kernel`, `blob 1a2b...`).
    label: String,
    /// Bytes the body carries.
    total: u64,
    /// Bytes handed to the connection so far.
    sent: u64,
    /// Whether the last byte was handed over (else dropping it is an abort).
    finished: bool,
}

impl Download {
    fn start(
        server: Arc<HttpServer>,
        mac: Option<Mac>,
        label: String,
        total: u64,
        start: u64,
    ) -> Download {
        bump(&server.counters.active_downloads);
        if let Some(mac) = mac {
            let from = if start > 0 {
                format!(" from byte {start}")
            } else {
                String::new()
            };
            server.events.push(
                mac,
                BootStep::FileStarted,
                format!("{label} ({}) over http{from}", size_text(total)),
            );
        }
        Download {
            server,
            mac,
            label,
            total,
            sent: 0,
            finished: false,
        }
    }

    fn sent(&mut self, n: u64) {
        self.sent += n;
        self.server.counters.bytes.fetch_add(n, Ordering::Relaxed);
    }

    fn finish(&mut self) {
        self.finished = true;
        if let Some(mac) = self.mac {
            self.server.events.push(
                mac,
                BootStep::FileFinished,
                format!("{} ({}) over http", self.label, size_text(self.total)),
            );
        }
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        unbump(&self.server.counters.active_downloads);
        if self.finished {
            return;
        }
        bump(&self.server.counters.aborted_downloads);
        if let Some(mac) = self.mac {
            self.server.events.push(
                mac,
                BootStep::FileAborted,
                format!(
                    "{} aborted after {} of {}: client gone",
                    self.label,
                    size_text(self.sent),
                    size_text(self.total)
                ),
            );
        }
    }
}

/// `12.0 MiB`, `512 B`: sizes in events.
fn size_text(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20))
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

/// The file part of a blob response: handed to the kernel (`sendfile(2)`) by the connection instead of
/// being copied through this process.
struct FilePlan {
    /// The verified blob, open and pinned (the cache does not evict it while this lives).
    blob: crate::boot::cache::CachedBlob,
    /// First byte sent.
    start: u64,
    /// Bytes sent.
    count: u64,
    /// Counts and reports this body.
    download: Download,
}

/// An answer: the response (head, and its body when small), and for a blob the file its body comes from.
struct Reply {
    /// Status, headers, and the body unless `file` is set.
    response: Response<Body>,
    /// The blob bytes to send after the head.
    file: Option<FilePlan>,
}

impl From<Response<Body>> for Reply {
    fn from(response: Response<Body>) -> Reply {
        Reply {
            response,
            file: None,
        }
    }
}

/// Why a connection stops reading requests.
enum HeadEnd {
    /// The client closed the connection between requests.
    Closed,
    /// The head grew past [`HttpSettings::max_head_bytes`].
    TooLarge,
    /// The socket failed, or the client closed it mid-head.
    Io,
}

/// Reads until `buf` holds a whole request head; its length.
async fn read_head(
    stream: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<usize, HeadEnd> {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(at + 4);
        }
        if buf.len() >= max {
            return Err(HeadEnd::TooLarge);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) if buf.is_empty() => return Err(HeadEnd::Closed),
            Ok(0) | Err(_) => return Err(HeadEnd::Io),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A request head parsed: the request (no body: only GET and HEAD are served) and whether the client
/// keeps the connection open; `Err` is the status to answer before closing.
fn parse_head(head: &[u8]) -> Result<(Request<()>, bool), StatusCode> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(StatusCode::BAD_REQUEST),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        }
        Err(_) => return Err(StatusCode::BAD_REQUEST),
    }
    let mut builder = Request::builder()
        .method(req.method.unwrap_or("GET"))
        .uri(req.path.unwrap_or("/"));
    let mut keep = req.version == Some(1);
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("connection") {
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            if v.contains("close") {
                keep = false;
            } else if v.contains("keep-alive") {
                keep = true;
            }
        }
        // A request body is not read: a request announcing one is refused (the connection closes).
        let body = (name.eq_ignore_ascii_case("content-length")
            && h.value.iter().any(|b| *b != b'0'))
            || name.eq_ignore_ascii_case("transfer-encoding");
        if body {
            return Err(StatusCode::BAD_REQUEST);
        }
        builder = builder.header(name, h.value);
    }
    builder
        .body(())
        .map(|r| (r, keep))
        .map_err(|_| StatusCode::BAD_REQUEST)
}

/// Writes all of `bytes`, failing once the client accepted nothing for `stall`.
async fn write_all_within(
    stream: &mut tokio::net::TcpStream,
    bytes: &[u8],
    stall: Duration,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut sent = 0;
    while sent < bytes.len() {
        match tokio::time::timeout(stall, stream.write(&bytes[sent..])).await {
            Ok(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(Ok(n)) => sent += n,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(stalled()),
        }
    }
    Ok(())
}

fn stalled() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the client accepted no data for too long",
    )
}

/// Sends `plan`'s bytes with `sendfile(2)` (page cache to socket, no copy through this process), at most
/// `per_call` bytes per call, failing once the client accepted nothing for `stall`.
async fn send_file(
    stream: &tokio::net::TcpStream,
    mut plan: FilePlan,
    per_call: usize,
    stall: Duration,
) -> std::io::Result<()> {
    let mut offset = plan.start;
    let end = plan.start.saturating_add(plan.count);
    while offset < end {
        let want = (end - offset).min(per_call.max(64 * 1024) as u64) as usize;
        let sent = stream.try_io(tokio::io::Interest::WRITABLE, || {
            rustix::fs::sendfile(stream, &plan.blob.file, Some(&mut offset), want)
                .map_err(std::io::Error::from)
        });
        match sent {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the cached blob is shorter than its recorded size",
                ))
            }
            Ok(n) => {
                plan.download.sent(n as u64);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                match tokio::time::timeout(stall, stream.writable()).await {
                    Ok(r) => r?,
                    Err(_) => return Err(stalled()),
                }
            }
            Err(e) => return Err(e),
        }
    }
    // Every byte is with the kernel: the download is complete (the client's receipt is TCP's job).
    plan.download.finish();
    Ok(())
}

/// Writes `reply`: the head, then its body (`head_only`: none), or its file with `sendfile(2)`.
async fn write_response(
    server: &HttpServer,
    stream: &mut tokio::net::TcpStream,
    reply: Reply,
    keep: bool,
    head_only: bool,
) -> std::io::Result<()> {
    let (parts, body) = reply.response.into_parts();
    let plan = reply.file;
    let bytes = if plan.is_some() {
        Bytes::new()
    } else {
        body.collect().await?.to_bytes()
    };
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in &parts.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if !parts.headers.contains_key(header::CONTENT_LENGTH) {
        head.extend_from_slice(format!("content-length: {}\r\n", bytes.len()).as_bytes());
    }
    head.extend_from_slice(if keep {
        b"connection: keep-alive\r\n\r\n"
    } else {
        b"connection: close\r\n\r\n"
    });
    let stall = server.settings.write_stall;
    if !head_only && plan.is_none() {
        head.extend_from_slice(&bytes);
    }
    write_all_within(stream, &head, stall).await?;
    if let Some(plan) = plan {
        if !head_only {
            send_file(stream, plan, server.settings.chunk_bytes, stall).await?;
        }
    }
    Ok(())
}

/// One connection: requests read and answered in turn (HTTP/1.1 keep-alive; pipelined requests wait
/// their turn), each head within [`HttpSettings::header_timeout`] (which also ends idle connections) and
/// at most [`HttpSettings::max_head_bytes`]. Why not hyper: blob bodies go out with `sendfile(2)`, which
/// needs the socket, and hyper writes every body through its own buffers (two copies per byte: half of
/// nginx's throughput on this machine).
async fn serve_connection(
    server: &Arc<HttpServer>,
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
    urls: &Urls,
    stop: &mut watch::Receiver<bool>,
) {
    let max = server.settings.max_head_bytes.max(1024);
    let mut buf = Vec::with_capacity(1024);
    loop {
        let read = tokio::select! {
            r = tokio::time::timeout(server.settings.header_timeout, read_head(&mut stream, &mut buf, max)) => r,
            _ = stopped(stop) => return,
        };
        let len = match read {
            Ok(Ok(n)) => n,
            Ok(Err(HeadEnd::TooLarge)) => {
                let r = text(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "request head too large\n",
                );
                let _ = write_response(server, &mut stream, r.into(), false, false).await;
                return;
            }
            Ok(Err(HeadEnd::Closed | HeadEnd::Io)) | Err(_) => return,
        };
        let parsed = parse_head(&buf[..len]);
        buf.drain(..len);
        let (req, keep) = match parsed {
            Ok(x) => x,
            Err(status) => {
                let r = text(status, "malformed request\n");
                let _ = write_response(server, &mut stream, r.into(), false, false).await;
                return;
            }
        };
        let head_only = req.method() == Method::HEAD;
        let response = handle(server, urls, peer, req).await;
        if let Err(e) = write_response(server, &mut stream, response, keep, head_only).await {
            tracing::debug!(%peer, "HTTP connection ended: {e}");
            return;
        }
        if !keep {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Hostile heads never panic the parser; whatever parses is GET-able without a body.
        #[test]
        fn parse_head_takes_any_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            if let Ok((req, _)) = parse_head(&bytes) {
                proptest::prop_assert!(req.headers().get(header::TRANSFER_ENCODING).is_none());
            }
        }
    }

    #[test]
    fn parse_head_keep_alive_and_refusals() {
        let (r, keep) =
            parse_head(b"GET /boot/52:54:00:00:00:01.ipxe HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(r.uri().path(), "/boot/52:54:00:00:00:01.ipxe");
        assert!(keep);
        let (_, keep) = parse_head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        assert!(!keep);
        let (_, keep) = parse_head(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!keep);
        let (_, keep) = parse_head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
        assert!(keep);
        assert_eq!(
            parse_head(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n").unwrap_err(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap_err(),
            StatusCode::BAD_REQUEST
        );
        assert!(parse_head(b"\x00\x01 garbage\r\n\r\n").is_err());
        let many: String = (0..70).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(
            parse_head(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()).unwrap_err(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    proptest::proptest! {
        #[test]
        fn hostile_paths_and_ranges_never_panic(path in "(/|/boot/|/blobs/|%|%[0-9a-fA-F]{0,2}|.){0,80}",
                                                range in "(bytes=)?[-0-9, ]{0,40}",
                                                len in 0u64..1000) {
            let _ = route(&path);
            match parse_range(Some(&range), len) {
                RangeAsk::Part { start, end } => {
                    proptest::prop_assert!(start <= end && end < len);
                }
                RangeAsk::Full | RangeAsk::Unsatisfiable => {}
            }
        }
    }

    #[test]
    fn ranges_follow_rfc_9110() {
        let p = |h: &str| parse_range(Some(h), 100);
        assert_eq!(parse_range(None, 100), RangeAsk::Full);
        assert_eq!(p("bytes=0-9"), RangeAsk::Part { start: 0, end: 9 });
        assert_eq!(p("bytes=90-"), RangeAsk::Part { start: 90, end: 99 });
        assert_eq!(p("bytes=90-1000"), RangeAsk::Part { start: 90, end: 99 });
        assert_eq!(p("bytes=-10"), RangeAsk::Part { start: 90, end: 99 });
        assert_eq!(p("bytes=-1000"), RangeAsk::Part { start: 0, end: 99 });
        assert_eq!(p("bytes=100-"), RangeAsk::Unsatisfiable);
        assert_eq!(p("bytes=-0"), RangeAsk::Unsatisfiable);
        assert_eq!(
            p("bytes=0-1,5-6"),
            RangeAsk::Full,
            "several ranges: the whole file"
        );
        assert_eq!(p("bytes=9-1"), RangeAsk::Full);
        assert_eq!(p("bytes=x-1"), RangeAsk::Full);
        assert_eq!(p("items=0-1"), RangeAsk::Full);
        assert_eq!(p("bytes=99999999999999999999999-"), RangeAsk::Full);
        assert_eq!(parse_range(Some("bytes=0-"), 0), RangeAsk::Unsatisfiable);
    }

    #[test]
    fn paths_route_to_scripts_blobs_and_bootloaders() {
        let mac: Mac = "52:54:00:00:00:01".parse().expect("mac");
        assert_eq!(
            route("/boot/52:54:00:00:00:01.ipxe"),
            Route::Script(IntentKey::Mac(mac))
        );
        assert_eq!(
            route("/boot/52%3A54%3a00:00:00:01.ipxe"),
            Route::Script(IntentKey::Mac(mac))
        );
        assert_eq!(
            route("/boot/52-54-00-00-00-01.ipxe"),
            Route::Script(IntentKey::Mac(mac))
        );
        assert_eq!(
            route("/boot/by-id/abc123.ipxe"),
            Route::Script(IntentKey::SystemId("abc123".into()))
        );
        assert_eq!(route("/boot/by-id/a%20b.ipxe"), Route::NotFound);
        assert_eq!(route("/boot/nonsense.ipxe"), Route::NotFound);
        assert_eq!(
            route("/boot/snponly.efi"),
            Route::Bootloader("snponly.efi".into())
        );
        assert_eq!(route("/boot/../etc/passwd"), Route::NotFound);
        let sha = "ab".repeat(32);
        let b = BlobId::parse("x", &sha).expect("sha");
        assert_eq!(route(&format!("/blobs/{sha}")), Route::Blob(b, None));
        assert_eq!(
            route(&format!("/blobs/{sha}/kernel")),
            Route::Blob(b, Some("kernel".into()))
        );
        assert_eq!(route(&format!("/blobs/{sha}/../x")), Route::NotFound);
        assert_eq!(route("/blobs/abc"), Route::NotFound);
        assert_eq!(route("/"), Route::NotFound);
        assert_eq!(route("/boot/%zz.ipxe"), Route::NotFound);
    }
}
