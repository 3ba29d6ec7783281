//! The TFTP server: a read-only file server for boot files — the bootloader files the region told this
//! rack about (from the image cache, by name) and, after them, the files under one root directory.
//!
//! [`run`] reads requests on the bound (well-known) socket and starts one tokio task per transfer on its
//! own ephemeral UDP socket, connected to the client (RFC 1350's transfer identifiers: the kernel drops
//! datagrams from any other address). Shaped for a boot storm and for hostile input:
//!
//! - **Read-only.** A WRQ is answered with ERROR 2 (access violation).
//! - **Nothing outside the root.** A filename that is absolute, has a `..` component or a NUL is refused
//!   before touching the disk; the rest is joined to the root, canonicalized (resolving symlinks) and
//!   must still lie under the canonical root, so a symlink leaving the root is refused too. A name the
//!   image cache knows as a bootloader file ([`ImageCache::bootloader`]) is served from its verified blob
//!   instead (the name is only a key there, never a path).
//! - **Bounded.** At most [`TftpConfig::max_sessions`] transfers at once across every server sharing one
//!   [`TftpCounters`] (more get ERROR 0 "busy"); each
//!   holds one window of blocks in memory, itself capped at [`MAX_WINDOW_BYTES`] and [`MAX_WINDOW_BLOCKS`]
//!   (a larger windowsize is
//!   lowered in the OACK, which RFC 7440 allows) plus a [`READ_BUFFER`] of file data, so memory does not
//!   depend on file size. Retransmission
//!   backs off exponentially and gives up after [`TftpConfig::max_tries`] silent timeouts.
//! - **Windowed (RFC 7440)** and **rolling over**: block numbers wrap from 65535 to 0, so files larger
//!   than 65535 blocks transfer.
//!
//! - **Observable.** [`TftpConfig::on_transfer`] is told when a transfer starts, finishes, is aborted or
//!   is refused ([`TransferEvent`]): what the rack reports as boot events.
//!
//! Netascii is converted on the fly (LF → CR LF, CR → CR NUL); its size is then unknown in advance, so
//! tsize is answered only in octet mode.

use super::codec::{self, ErrorCode, Mode, Options, Packet, Request};
use crate::boot::cache::{CachedBlob, ImageCache};
use ingot_common::image::BlobId;
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, BufReader};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Most bytes of file data one transfer holds (its window of unacknowledged blocks): 1 MiB keeps 256
/// sessions under 256 MiB whatever the clients ask, and still fills 16 blocks of 65464 bytes.
pub const MAX_WINDOW_BYTES: usize = 1 << 20;
/// Most blocks in one window, whatever their size: each block is its own buffer and its own datagram in
/// a burst, so small blocks must not multiply (65535 windows of 8-byte blocks would be 65535 allocations).
pub const MAX_WINDOW_BLOCKS: usize = 4096;
/// Longest retransmission timeout a client may choose, in seconds: RFC 2349 lets it ask up to 255 s, but a
/// silent client then holds a session slot for `max_tries` × 255 s; a larger ask is declined (left out of
/// the OACK) and the server's own timing applies.
pub const MAX_CLIENT_TIMEOUT_S: u8 = 10;
/// Bytes of a file read at once (and buffered) by a transfer: far fewer trips to the blocking pool than
/// one read per block (a 1,468-byte block would cost one each), at 64 KiB per session.
pub const READ_BUFFER: usize = 64 << 10;
/// Largest datagram read on any socket: a DATA of the largest block size, so nothing legal is cut.
const MAX_DATAGRAM: usize = codec::MAX_BLKSIZE as usize + 4;

/// What the server serves and how hard it tries.
#[derive(Debug, Clone)]
pub struct TftpConfig {
    /// The directory served; nothing outside it is ever read.
    pub root: PathBuf,
    /// Bootloader files served by name before the root is looked at: the rack's image cache (the files
    /// the region told this rack about, from their verified blobs). `None`: the root only.
    pub bootloaders: Option<Arc<dyn Bootloaders>>,
    /// Told about every transfer (started, finished, aborted, refused); `None`: nobody listens.
    pub on_transfer: Option<TransferHook>,
    /// Transfers running at once; more are refused with "busy" (a PXE client retries).
    pub max_sessions: usize,
    /// First retransmission timeout when the client asks for none (it doubles on every retry).
    pub initial_timeout: Duration,
    /// Longest retransmission timeout after doubling.
    pub max_timeout: Duration,
    /// Timeouts in a row after which a silent client's transfer is ended.
    pub max_tries: u32,
}

impl TftpConfig {
    /// The production settings for `root`: 256 sessions, 1 s first timeout doubling up to 8 s, 5 tries
    /// (a client silent for about 23 s loses its transfer).
    pub fn new(root: impl Into<PathBuf>) -> TftpConfig {
        TftpConfig {
            root: root.into(),
            bootloaders: None,
            on_transfer: None,
            max_sessions: 256,
            initial_timeout: Duration::from_secs(1),
            max_timeout: Duration::from_secs(8),
            max_tries: 5,
        }
    }
}

/// A bootloader file found by name, open for a transfer.
#[derive(Debug)]
pub struct BootloaderFile {
    /// The open file, positioned at 0.
    pub file: std::fs::File,
    /// Its length in bytes.
    pub len: u64,
    /// The blob it holds (reported in [`TransferEvent::origin`]).
    pub blob: BlobId,
    /// The cache's handle on the blob, kept for the whole transfer so it is not evicted meanwhile.
    pub hold: Option<CachedBlob>,
}

/// The future [`Bootloaders::open`] returns.
pub type OpenFuture<'a> =
    Pin<Box<dyn Future<Output = Option<Result<BootloaderFile, String>>> + Send + 'a>>;

/// Where the server looks a filename up before its root: bootloader files by name. The rack's
/// [`ImageCache`] is one; tests use their own.
pub trait Bootloaders: Send + Sync + std::fmt::Debug + 'static {
    /// The file called `name`: `None` when this source has none by that name (the root is tried),
    /// `Some(Err(why))` when it has one but cannot serve it now (logged; the root is tried).
    fn open<'a>(&'a self, name: &'a str) -> OpenFuture<'a>;
}

impl Bootloaders for ImageCache {
    fn open<'a>(&'a self, name: &'a str) -> OpenFuture<'a> {
        Box::pin(async move {
            let wanted = self.bootloader(name)?;
            let blob = wanted.file.blob;
            let opened = match ImageCache::open(self, &blob).await {
                Ok(held) => held
                    .file
                    .try_clone()
                    .map(|file| BootloaderFile {
                        file,
                        len: held.len,
                        blob,
                        hold: Some(held),
                    })
                    .map_err(|e| format!("duplicating the cached blob's file failed: {e}")),
                Err(e) => Err(e.to_string()),
            };
            Some(opened)
        })
    }
}

/// What happened to a transfer, as told to [`TftpConfig::on_transfer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferOutcome {
    /// The file was found and opened; its first block (or the OACK) goes out next.
    Started,
    /// The client acknowledged the last block.
    Finished,
    /// The transfer ended before its last block was acknowledged.
    Aborted {
        /// Why: the client's ERROR, its silence, an I/O error or the rack stopping.
        reason: String,
    },
    /// The request was refused before any data was sent (no such file, outside the root).
    Refused {
        /// The error sent to the client.
        reason: String,
    },
}

/// Where a served file comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOrigin {
    /// A bootloader blob of the image cache.
    Cache(BlobId),
    /// A file under [`TftpConfig::root`].
    Root,
}

/// One step of one transfer, for boot events and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferEvent {
    /// What happened.
    pub outcome: TransferOutcome,
    /// The client's address and port.
    pub client: SocketAddr,
    /// The filename the client asked for, as sent.
    pub file: String,
    /// Where the file was served from; `None` when refused.
    pub origin: Option<FileOrigin>,
    /// The file's size in bytes; `None` when refused.
    pub size: Option<u64>,
    /// Bytes of the file the client acknowledged so far (netascii: after conversion).
    pub bytes: u64,
}

/// The callback of [`TftpConfig::on_transfer`]. It runs on the transfer's task: it must not block (send
/// the event to a channel, count it).
#[derive(Clone)]
pub struct TransferHook(Arc<dyn Fn(TransferEvent) + Send + Sync>);

impl TransferHook {
    /// A hook calling `f` with every event.
    pub fn new(f: impl Fn(TransferEvent) + Send + Sync + 'static) -> TransferHook {
        TransferHook(Arc::new(f))
    }

    fn call(&self, event: TransferEvent) {
        (self.0)(event)
    }
}

impl std::fmt::Debug for TransferHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TransferHook")
    }
}

/// Counters for the rack's metrics, updated by the server; read them with `load`.
#[derive(Debug, Default)]
pub struct TftpCounters {
    /// Datagrams received on the request socket.
    pub requests: AtomicU64,
    /// Transfers running now. Also the session bound: servers sharing one `TftpCounters` (one per boot
    /// interface in `ingot-rack run`) share `max_sessions`.
    pub active: AtomicU64,
    /// Transfers that ended with the last block acknowledged.
    pub completed: AtomicU64,
    /// Transfers served from the image cache (bootloader blobs) rather than the root.
    pub from_cache: AtomicU64,
    /// File bytes sent (retransmissions included).
    pub bytes_sent: AtomicU64,
    /// DATA packets sent again after a timeout or a client's ACK of an earlier block.
    pub retransmits: AtomicU64,
    /// Requests that did not parse (or were not requests on the request socket).
    pub malformed: AtomicU64,
    /// Refused: file missing or not a regular file.
    pub not_found: AtomicU64,
    /// Refused: outside the root (absolute, `..`, NUL, symlink out) or unreadable.
    pub access_denied: AtomicU64,
    /// Refused: write requests.
    pub write_refused: AtomicU64,
    /// Refused: the session bound was reached.
    pub busy: AtomicU64,
    /// Ended: the client sent an ERROR (it gave up or refused our OACK).
    pub client_aborted: AtomicU64,
    /// Ended: the client went silent for `max_tries` timeouts.
    pub timed_out: AtomicU64,
    /// Ended: reading the file or a socket failed.
    pub io_errors: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// One of the `max_sessions` transfer slots, counted in `active`; given back on drop (also if a session
/// task ended abnormally).
struct Slot(Arc<TftpCounters>);

impl Slot {
    fn take(counters: &Arc<TftpCounters>, max: usize) -> Option<Slot> {
        let max = max as u64;
        counters
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| {
                (a < max).then_some(a + 1)
            })
            .ok()
            .map(|_| Slot(counters.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a filename was refused, with the TFTP error it is answered with.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// Absolute path, `..`, NUL byte, or a symlink leading out of the root.
    #[error("access violation: {0}")]
    Outside(&'static str),
    /// No such file (or not a regular file).
    #[error("file not found")]
    NotFound,
    /// The file exists but cannot be opened or read (permissions).
    #[error("the file cannot be read: {0}")]
    Unreadable(#[source] std::io::Error),
    /// The root itself cannot be resolved.
    #[error("TFTP root {root} cannot be resolved (does it exist?): {source}")]
    Root {
        /// The configured root.
        root: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Resolves `filename` under `root`, refusing anything that could leave it; returns the canonical path
/// of a regular file.
pub fn resolve(root: &Path, filename: &str) -> Result<PathBuf, PathError> {
    if filename.contains('\0') {
        return Err(PathError::Outside("NUL byte in the filename"));
    }
    let rel = Path::new(filename);
    let mut clean = PathBuf::new();
    for c in rel.components() {
        match c {
            Component::Normal(p) => clean.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err(PathError::Outside("'..' in the filename")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(PathError::Outside("absolute filename"))
            }
        }
    }
    let root = root.canonicalize().map_err(|source| PathError::Root {
        root: root.to_path_buf(),
        source,
    })?;
    let full = root
        .join(clean)
        .canonicalize()
        .map_err(|_| PathError::NotFound)?;
    if !full.starts_with(&root) {
        return Err(PathError::Outside("the path leads out of the TFTP root"));
    }
    if !full.is_file() {
        return Err(PathError::NotFound);
    }
    Ok(full)
}

/// Why the TFTP socket of a boot interface could not be bound; each names the interface and says what
/// to do.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// No IPv4 address on the interface (or no such interface): TFTP is served on the rack's address.
    #[error("boot interface {interface} has no IPv4 address or does not exist (see `ip addr`): TFTP is served on the rack's address there; fix --boot-interface")]
    NoIpv4 {
        /// The interface asked for.
        interface: String,
    },
    /// The interfaces could not be listed.
    #[error("listing the host's network interfaces failed: {source}")]
    Interfaces {
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The port is taken or privileged.
    #[error("binding TFTP on boot interface {interface} ({addr}) failed: {source}; port 69 needs root or CAP_NET_BIND_SERVICE, and no other TFTP server (tftpd-hpa, dnsmasq) may hold it")]
    Bind {
        /// The interface.
        interface: String,
        /// The address and port tried.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Binds UDP `port` on `interface`'s first IPv4 address (PXE clients send requests to the rack's address
/// on their network; the transfer sockets then bind the same address). Non-blocking, ready for
/// `UdpSocket::from_std`; needs no runtime.
pub fn bind(interface: &str, port: u16) -> Result<std::net::UdpSocket, BindError> {
    let ip = crate::boot::interface_ipv4(interface).map_err(|e| match e {
        crate::boot::InterfaceError::Interfaces { source } => BindError::Interfaces { source },
        crate::boot::InterfaceError::NoIpv4 { interface } => BindError::NoIpv4 { interface },
    })?;
    let addr = SocketAddr::new(ip.into(), port);
    let err = |source| BindError::Bind {
        interface: interface.to_string(),
        addr,
        source,
    };
    let socket = std::net::UdpSocket::bind(addr).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    Ok(socket)
}

/// Serves requests arriving on `socket` until `shutdown` turns true, then stops every transfer and
/// returns once their tasks ended. Fails only if the socket cannot be read or its address not known.
pub async fn run(
    socket: UdpSocket,
    config: TftpConfig,
    counters: Arc<TftpCounters>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let local_ip = socket.local_addr()?.ip();
    let config = Arc::new(config);
    let mut sessions = JoinSet::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let got = tokio::select! {
            r = socket.recv_from(&mut buf) => r,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
            _ = shutdown.wait_for(|v| *v) => break,
        };
        let (n, peer) = match got {
            Ok(x) => x,
            Err(e) => {
                // An ICMP error from an earlier send surfaces here; not fatal for a server.
                tracing::debug!("TFTP receive: {e}");
                tokio::task::yield_now().await;
                continue;
            }
        };
        bump(&counters.requests);
        let reply = |code, msg: &str| {
            let _ = socket.try_send_to(&codec::build_error(code, msg), peer);
        };
        let request = match codec::parse(&buf[..n]) {
            Ok(Packet::Rrq(r)) => r,
            Ok(Packet::Wrq(r)) => {
                bump(&counters.write_refused);
                tracing::info!(%peer, file = %r.filename, "TFTP write refused");
                reply(
                    ErrorCode::AccessViolation,
                    "this TFTP server is read-only: writes are refused",
                );
                continue;
            }
            Ok(_) => {
                // A DATA/ACK/ERROR for a transfer that ended, or a stray packet: RFC 1350 says ignore.
                bump(&counters.malformed);
                continue;
            }
            Err(codec::DecodeError::Opcode(_) | codec::DecodeError::Truncated { .. }) => {
                // Not a TFTP request at all: no answer, so a spoofed source gets nothing reflected to it.
                bump(&counters.malformed);
                continue;
            }
            Err(e) => {
                bump(&counters.malformed);
                let code = match e {
                    codec::DecodeError::Invalid {
                        field: "blksize" | "timeout" | "windowsize" | "tsize",
                        ..
                    } => ErrorCode::OptionRefused,
                    _ => ErrorCode::IllegalOperation,
                };
                reply(code, &format!("bad request: {e}"));
                continue;
            }
        };
        let Some(slot) = Slot::take(&counters, config.max_sessions) else {
            bump(&counters.busy);
            reply(
                ErrorCode::NotDefined,
                "busy: too many transfers running, retry later",
            );
            continue;
        };
        // The filename is resolved in the session's task (it touches the disk): this loop never waits
        // for a file system, and a refusal comes from the transfer's own port like any reply.
        let session = Session {
            peer,
            local_ip,
            request,
            config: config.clone(),
            counters: counters.clone(),
        };
        let stop = shutdown.clone();
        sessions.spawn(async move {
            session.run(stop).await;
            drop(slot);
        });
    }
    // Every session watches `shutdown` too and ends at once: wait for them, so none outlives `run`.
    while sessions.join_next().await.is_some() {}
    Ok(())
}

/// One transfer: a client, a file, the negotiated options.
struct Session {
    /// The client's address and port (its TID).
    peer: SocketAddr,
    /// The address the request came to; the transfer socket binds it with port 0.
    local_ip: std::net::IpAddr,
    /// The request, with the client's options.
    request: Request,
    /// Timeouts, bounds.
    config: Arc<TftpConfig>,
    /// Where to count.
    counters: Arc<TftpCounters>,
}

/// How a transfer ended (for counters and logs).
enum End {
    /// The filename was refused (counted where it was refused).
    Refused(PathError),
    Done,
    Aborted(String),
    Silent,
    Io(std::io::Error),
    Shutdown,
}

/// What a transfer got to before it ended, for its last [`TransferEvent`].
#[derive(Default)]
struct Progress {
    /// Where the file came from and its size, once open.
    opened: Option<(FileOrigin, u64)>,
    /// File bytes the client acknowledged.
    bytes: u64,
}

/// A file open for a transfer.
struct Opened {
    /// The open file, at offset 0.
    file: tokio::fs::File,
    /// Its length: tsize in the OACK, size in the transfer's events.
    size: u64,
    /// Cache or root, for the events.
    origin: FileOrigin,
    /// The cache's handle on a cached blob: it is not evicted while the transfer runs.
    _hold: Option<CachedBlob>,
}

/// Reads blocks from the file, converting netascii on the way.
struct Source {
    /// The file, read [`READ_BUFFER`] bytes at a time.
    file: BufReader<tokio::fs::File>,
    /// Octet, or netascii to convert.
    mode: Mode,
    /// Netascii bytes produced but not yet put into a block.
    pending: VecDeque<u8>,
    /// The file ended.
    eof: bool,
    /// The read buffer of netascii conversion, reused.
    raw: Vec<u8>,
}

impl Source {
    /// The DATA packet of block `number`: its header and the next `size` bytes of the file (fewer only
    /// at the end of the file).
    async fn packet(&mut self, number: u16, size: usize) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(size + 4);
        codec::build_data(&mut out, number, &[]);
        let want = size + 4;
        match self.mode {
            Mode::Octet => {
                while out.len() < want && !self.eof {
                    let start = out.len();
                    out.resize(want, 0);
                    let n = self.file.read(&mut out[start..]).await?;
                    out.truncate(start + n);
                    if n == 0 {
                        self.eof = true;
                    }
                }
            }
            Mode::Netascii => {
                while self.pending.len() < size && !self.eof {
                    self.raw.resize(size.max(512), 0);
                    let n = self.file.read(&mut self.raw).await?;
                    if n == 0 {
                        self.eof = true;
                    }
                    for &b in &self.raw[..n] {
                        match b {
                            b'\n' => self.pending.extend([b'\r', b'\n']),
                            b'\r' => self.pending.extend([b'\r', 0]),
                            b => self.pending.push_back(b),
                        }
                    }
                }
                let take = size.min(self.pending.len());
                out.extend(self.pending.drain(..take));
            }
        }
        Ok(out)
    }
}

/// The options answered in the OACK for `request` of a file of `size` bytes: blksize as asked (the codec
/// checked its range), tsize only in octet mode, a client timeout up to [`MAX_CLIENT_TIMEOUT_S`], and a
/// window lowered to what [`MAX_WINDOW_BYTES`] and [`MAX_WINDOW_BLOCKS`] allow. Pure (fuzzed).
pub fn negotiate(request: &Request, size: u64) -> Options {
    let asked = &request.options;
    let blksize = asked.blksize;
    let block = usize::from(blksize.unwrap_or(codec::DEFAULT_BLKSIZE)).max(1);
    let blocks = (MAX_WINDOW_BYTES / block).clamp(1, MAX_WINDOW_BLOCKS);
    let window_cap = u16::try_from(blocks).unwrap_or(u16::MAX);
    Options {
        blksize,
        // Asked for with 0 in an RRQ; known only in octet mode.
        tsize: asked
            .tsize
            .filter(|_| request.mode == Mode::Octet)
            .map(|_| size),
        timeout_s: asked.timeout_s.filter(|t| *t <= MAX_CLIENT_TIMEOUT_S),
        windowsize: asked.windowsize.map(|w| w.min(window_cap)),
    }
}

impl Session {
    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut progress = Progress::default();
        let end = tokio::select! {
            e = self.transfer(&mut progress) => e,
            _ = shutdown.wait_for(|v| *v) => End::Shutdown,
        };
        let c = &self.counters;
        match &end {
            End::Done => bump(&c.completed),
            End::Aborted(_) => bump(&c.client_aborted),
            End::Silent => bump(&c.timed_out),
            End::Io(_) => bump(&c.io_errors),
            End::Refused(_) | End::Shutdown => {}
        }
        let file = &self.request.filename;
        let outcome = match &end {
            End::Done => TransferOutcome::Finished,
            End::Refused(e) => TransferOutcome::Refused {
                reason: e.to_string(),
            },
            End::Aborted(why) => TransferOutcome::Aborted {
                reason: format!("the client gave up: {why}"),
            },
            End::Silent => TransferOutcome::Aborted {
                reason: "the client went silent".into(),
            },
            End::Io(e) => TransferOutcome::Aborted {
                reason: format!("I/O error on the rack: {e}"),
            },
            End::Shutdown => TransferOutcome::Aborted {
                reason: "the rack is stopping".into(),
            },
        };
        match end {
            End::Done => tracing::debug!(peer = %self.peer, %file, "TFTP transfer done"),
            End::Aborted(why) => {
                tracing::info!(peer = %self.peer, %file, "TFTP transfer aborted by the client: {why}")
            }
            End::Silent => {
                tracing::info!(peer = %self.peer, %file, "TFTP transfer ended: client silent")
            }
            End::Io(e) => tracing::warn!(peer = %self.peer, %file, "TFTP transfer failed: {e}"),
            End::Refused(e) => tracing::info!(peer = %self.peer, %file, "TFTP refused: {e}"),
            End::Shutdown => {}
        }
        // A transfer stopped before its file was open (shutdown, a socket error) was never started:
        // nothing to report unless it was refused.
        if progress.opened.is_some() || matches!(outcome, TransferOutcome::Refused { .. }) {
            self.tell(outcome, &progress);
        }
    }

    /// Calls the transfer hook, if any.
    fn tell(&self, outcome: TransferOutcome, progress: &Progress) {
        if let Some(hook) = &self.config.on_transfer {
            hook.call(TransferEvent {
                outcome,
                client: self.peer,
                file: self.request.filename.clone(),
                origin: progress.opened.map(|(o, _)| o),
                size: progress.opened.map(|(_, s)| s),
                bytes: progress.bytes,
            });
        }
    }

    /// Opens the file asked for: a bootloader blob of the image cache by name first, then a file under
    /// the root. A cached blob that cannot be opened (still fetching, failed verification) is skipped
    /// with a warning, so the root's copy (Debian's iPXE) still boots the machine.
    async fn open(&self) -> Result<Opened, PathError> {
        let name = &self.request.filename;
        if let Some(source) = &self.config.bootloaders {
            match source.open(name).await {
                Some(Ok(b)) => {
                    bump(&self.counters.from_cache);
                    return Ok(Opened {
                        file: tokio::fs::File::from_std(b.file),
                        size: b.len,
                        origin: FileOrigin::Cache(b.blob),
                        _hold: b.hold,
                    });
                }
                Some(Err(why)) => tracing::warn!(
                    %name,
                    "TFTP: the image cache cannot serve this bootloader file ({why}); trying the TFTP root"
                ),
                None => {}
            }
        }
        let (root, owned) = (self.config.root.clone(), name.clone());
        let path = match tokio::task::spawn_blocking(move || resolve(&root, &owned)).await {
            Ok(r) => r?,
            Err(e) => {
                return Err(PathError::Unreadable(std::io::Error::other(e)));
            }
        };
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(PathError::Unreadable)?;
        let size = file.metadata().await.map_err(PathError::Unreadable)?.len();
        Ok(Opened {
            file,
            size,
            origin: FileOrigin::Root,
            _hold: None,
        })
    }

    async fn transfer(&self, progress: &mut Progress) -> End {
        let bind = SocketAddr::new(self.local_ip, 0);
        let socket = match UdpSocket::bind(bind).await {
            Ok(s) => s,
            Err(e) => return End::Io(e),
        };
        if let Err(e) = socket.connect(self.peer).await {
            return End::Io(e);
        }
        let opened = match self.open().await {
            Ok(o) => o,
            Err(e) => {
                let c = &self.counters;
                let code = match e {
                    PathError::NotFound => {
                        bump(&c.not_found);
                        ErrorCode::FileNotFound
                    }
                    PathError::Outside(_) => {
                        bump(&c.access_denied);
                        ErrorCode::AccessViolation
                    }
                    PathError::Unreadable(_) => {
                        bump(&c.access_denied);
                        ErrorCode::AccessViolation
                    }
                    PathError::Root { .. } => {
                        bump(&c.io_errors);
                        ErrorCode::NotDefined
                    }
                };
                let message = match &e {
                    PathError::Unreadable(_) => "the file cannot be read".to_string(),
                    other => other.to_string(),
                };
                let _ = socket.send(&codec::build_error(code, &message)).await;
                return End::Refused(e);
            }
        };
        let size = opened.size;
        progress.opened = Some((opened.origin, size));
        self.tell(TransferOutcome::Started, progress);
        let options = negotiate(&self.request, size);
        let block_size = usize::from(options.blksize.unwrap_or(codec::DEFAULT_BLKSIZE));
        let window = usize::from(options.windowsize.unwrap_or(1));
        let base_timeout = options
            .timeout_s
            .map(|s| Duration::from_secs(u64::from(s)))
            .unwrap_or(self.config.initial_timeout);
        let mut link = Link {
            socket,
            buf: vec![0u8; MAX_DATAGRAM],
            base_timeout,
            max_timeout: self.config.max_timeout.max(base_timeout),
            max_tries: self.config.max_tries.max(1),
            counters: self.counters.clone(),
        };

        if options.any() {
            let oack = codec::build_oack(&options);
            // Block 0 acknowledges the OACK.
            match link
                .exchange(&[oack], false, |b| (b == 0).then_some(0))
                .await
            {
                Ok(_) => {}
                Err(end) => return end,
            }
        }

        let mut source = Source {
            file: BufReader::with_capacity(READ_BUFFER, opened.file),
            mode: self.request.mode,
            pending: VecDeque::new(),
            eof: false,
            raw: Vec::new(),
        };
        // `window_packets[i]` is the DATA packet of block `next_unacked + i` (a u64 that never wraps; the
        // wire number is its low 16 bits), built once and sent as often as needed.
        let mut next_unacked: u64 = 1;
        let mut window_packets: VecDeque<Vec<u8>> = VecDeque::new();
        let mut last_read = false;
        let mut sent_once: u64 = 0;
        loop {
            // One block beyond the window is built ahead: it goes out the moment its ACK arrives (in
            // lockstep, window 1, the next DATA is then a send, not a read and a send).
            while window_packets.len() < window + 1 && !last_read {
                let number = next_unacked + window_packets.len() as u64;
                match source.packet(number as u16, block_size).await {
                    Ok(p) => {
                        last_read = p.len() - 4 < block_size;
                        window_packets.push_back(p);
                    }
                    Err(e) => {
                        let _ = link
                            .socket
                            .send(&codec::build_error(
                                ErrorCode::NotDefined,
                                "reading the file failed",
                            ))
                            .await;
                        return End::Io(e);
                    }
                }
            }
            if window_packets.is_empty() {
                return End::Done;
            }
            let first = next_unacked;
            let count = window_packets.len().min(window) as u64;
            for number in first..first + count {
                if number <= sent_once {
                    bump(&self.counters.retransmits);
                }
            }
            sent_once = sent_once.max(first + count - 1);
            // An ACK of any block in the window (or of the one before it: nothing new arrived) counts.
            let acked = link
                .exchange(
                    &window_packets.make_contiguous()[..count as usize],
                    true,
                    |b| {
                        (0..=count)
                            .map(|i| first - 1 + i)
                            .find(|k| *k as u16 == b)
                            .filter(|k| *k >= first)
                    },
                )
                .await;
            match acked {
                Ok(k) => {
                    let done = (k + 1 - first) as usize;
                    for p in window_packets.drain(..done.min(window_packets.len())) {
                        progress.bytes += p.len().saturating_sub(4) as u64;
                    }
                    next_unacked = k + 1;
                }
                Err(end) => return end,
            }
        }
    }
}

/// The transfer socket with its retransmission policy.
struct Link {
    socket: UdpSocket,
    buf: Vec<u8>,
    base_timeout: Duration,
    max_timeout: Duration,
    max_tries: u32,
    counters: Arc<TftpCounters>,
}

impl Link {
    /// Sends `packets` (DATA when `data`, for the counters), then waits for an ACK that `accept` maps to a block it counts (returned);
    /// resends all of them on each timeout, doubling it, up to `max_tries`. An ACK that is not accepted
    /// (a duplicate) is ignored and not answered, which avoids the Sorcerer's Apprentice bug.
    async fn exchange(
        &mut self,
        packets: &[Vec<u8>],
        data: bool,
        accept: impl Fn(u16) -> Option<u64>,
    ) -> Result<u64, End> {
        let mut timeout = self.base_timeout;
        for attempt in 0..self.max_tries {
            for p in packets {
                if data {
                    let payload = p.len().saturating_sub(4) as u64;
                    self.counters
                        .bytes_sent
                        .fetch_add(payload, Ordering::Relaxed);
                    if attempt > 0 {
                        bump(&self.counters.retransmits);
                    }
                }
                if let Err(e) = self.socket.send(p).await {
                    // ECONNREFUSED: the client's port is closed (it gave up).
                    if e.kind() == std::io::ErrorKind::ConnectionRefused {
                        return Err(End::Aborted("client port closed".into()));
                    }
                    return Err(End::Io(e));
                }
            }
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let got = tokio::time::timeout_at(deadline, self.socket.recv(&mut self.buf)).await;
                let n = match got {
                    Err(_) => break,
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        return Err(End::Aborted("client port closed".into()))
                    }
                    Ok(Err(e)) => return Err(End::Io(e)),
                };
                match codec::parse(&self.buf[..n]) {
                    Ok(Packet::Ack { block }) => {
                        if let Some(k) = accept(block) {
                            return Ok(k);
                        }
                    }
                    Ok(Packet::Error { code, message }) => {
                        return Err(End::Aborted(format!("ERROR {}: {message}", code.number())))
                    }
                    _ => {}
                }
            }
            timeout = (timeout * 2).min(self.max_timeout);
        }
        Err(End::Silent)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion
    use super::*;

    #[test]
    fn binds_the_interface_address_and_names_a_missing_one() {
        let s = bind("lo", 0).unwrap();
        assert_eq!(s.local_addr().unwrap().ip(), std::net::Ipv4Addr::LOCALHOST);
        let e = bind("itf-none0", 0).unwrap_err().to_string();
        assert!(e.contains("itf-none0"), "{e}");
    }

    #[test]
    fn resolve_refuses_what_leaves_the_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"x").unwrap();
        assert!(resolve(dir.path(), "a").is_ok());
        assert!(resolve(dir.path(), "./a").is_ok());
        for bad in ["../a", "/etc/passwd", "x/../../a", "a\0"] {
            assert!(
                matches!(resolve(dir.path(), bad), Err(PathError::Outside(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(resolve(dir.path(), "b"), Err(PathError::NotFound)));
    }
}
