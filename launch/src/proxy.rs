//! Cuttable links: a TCP proxy in front of one listener of a region (its client API or its cluster
//! listener), so a test can sever or blackhole connections without root, iptables or network namespaces.
//! A [`LocalCluster`](crate::LocalCluster) started with [`proxied`](crate::LocalClusterOptions::proxied)
//! puts one in front of each region's two listeners and makes the regions advertise the proxies'
//! addresses: Raft traffic and forwarded writes between regions, rack sessions and clients all cross
//! them. The proxy copies bytes and nothing else (TLS passes through untouched).
//!
//! Why a proxy rather than network namespaces: it runs unprivileged on any CI machine and on loopback
//! only, and it can cut one listener of one region (for instance only the Raft listener of the leader)
//! while the rest of the host keeps talking. What it cannot do is cut the connections a region opens
//! itself to a peer that is not proxied (its BMCs, say); cutting a region's listeners isolates it from
//! everything that calls it, which for Raft is every peer that would vote for or follow it.

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long the proxy waits for its backend to accept a connection before dropping the client's.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bytes copied per read in each direction.
const BUF_BYTES: usize = 64 * 1024;

/// Whether a link forwards bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Bytes flow both ways.
    Open,
    /// Connections stay up (and new ones are accepted) but no byte is forwarded, like a network that
    /// drops every packet: callers see only their own timeouts. Held bytes are delivered on heal, as
    /// TCP retransmission would, unless a side gave up and closed meanwhile.
    Blackholed,
}

/// What a link has done, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections reset by [`LinkProxy::sever`].
    pub severed: u64,
}

struct Shared {
    /// Where connections go; `None` until the region's real listener is known (connections are reset).
    backend: Mutex<Option<SocketAddr>>,
    /// Open or blackholed.
    state: watch::Sender<LinkState>,
    /// Bumped by [`LinkProxy::sever`] (and on drop): every connection accepted under an older value ends.
    generation: watch::Sender<u64>,
    accepted: AtomicU64,
    severed: AtomicU64,
}

/// The runtime every link runs on: its own threads, so a busy or blocked test or benchmark runtime never
/// delays the cluster's traffic (a stalled proxy would be an unplanned partition).
fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RT: std::sync::OnceLock<std::io::Result<tokio::runtime::Runtime>> =
        std::sync::OnceLock::new();
    let rt = RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ingot-link-proxy")
            .enable_all()
            .build()
    });
    rt.as_ref()
        .map_err(|e| anyhow::anyhow!("cannot start the link proxies' runtime (threads): {e}"))
}

/// A TCP proxy on `127.0.0.1:0` in front of one listener. Dropping it stops accepting and resets every
/// connection it carries. It runs on its own runtime (threads named `ingot-link-proxy`).
pub struct LinkProxy {
    name: String,
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for LinkProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkProxy")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .field("backend", &self.backend())
            .field("state", &self.state())
            .finish()
    }
}

impl LinkProxy {
    /// Listens on a free loopback port; `name` (e.g. `region-2/raft`) is for messages. Connections are
    /// reset until [`LinkProxy::set_backend`] names where they go.
    pub fn bind(name: &str) -> Result<LinkProxy> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .with_context(|| format!("cannot listen on 127.0.0.1:0 for the {name} proxy"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            backend: Mutex::new(None),
            state: watch::channel(LinkState::Open).0,
            generation: watch::channel(0).0,
            accepted: AtomicU64::new(0),
            severed: AtomicU64::new(0),
        });
        let s = Arc::clone(&shared);
        let rt = runtime()?;
        let accept = rt.spawn(async move {
            // Registered with the proxies' runtime, where it is polled.
            let Ok(listener) = TcpListener::from_std(listener) else {
                return;
            };
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    // Out of descriptors, typically: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                s.accepted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(Arc::clone(&s), conn));
            }
        });
        Ok(LinkProxy {
            name: name.to_string(),
            addr,
            shared,
            accept,
        })
    }

    /// The proxy's own address (what the region advertises).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The name given at [`LinkProxy::bind`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets where new connections go (the region's real listener; it changes only if the region is
    /// restarted on another port).
    pub fn set_backend(&self, backend: SocketAddr) {
        *self
            .shared
            .backend
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(backend);
    }

    /// The backend, if set.
    pub fn backend(&self) -> Option<SocketAddr> {
        *self
            .shared
            .backend
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Resets every connection the link carries now (both sides see a connection reset); new
    /// connections are accepted as before.
    pub fn sever(&self) {
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// Stops forwarding bytes until [`LinkProxy::heal`] (see [`LinkState::Blackholed`]).
    pub fn blackhole(&self) {
        self.shared.state.send_replace(LinkState::Blackholed);
    }

    /// Forwards bytes again.
    pub fn heal(&self) {
        self.shared.state.send_replace(LinkState::Open);
    }

    /// Open or blackholed.
    pub fn state(&self) -> LinkState {
        *self.shared.state.borrow()
    }

    /// Connections accepted and severed so far.
    pub fn stats(&self) -> LinkStats {
        LinkStats {
            accepted: self.shared.accepted.load(Ordering::Relaxed),
            severed: self.shared.severed.load(Ordering::Relaxed),
        }
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.state.send_replace(LinkState::Open);
        self.shared.generation.send_modify(|g| *g += 1);
    }
}

/// Carries one connection until either side closes it or the link is severed.
async fn serve(shared: Arc<Shared>, mut inbound: TcpStream) {
    let mut generation = shared.generation.subscribe();
    let start = *generation.borrow_and_update();
    let backend = *shared.backend.lock().unwrap_or_else(|e| e.into_inner());
    let Some(backend) = backend else {
        reset(&inbound);
        return;
    };
    let mut outbound =
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backend)).await {
            Ok(Ok(s)) => s,
            _ => {
                reset(&inbound);
                return;
            }
        };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let severed = {
        let (ri, wi) = inbound.split();
        let (ro, wo) = outbound.split();
        let up = pump(ri, wo, shared.state.subscribe());
        let down = pump(ro, wi, shared.state.subscribe());
        tokio::select! {
            _ = up => false,
            _ = down => false,
            _ = generation.wait_for(|g| *g != start) => true,
        }
    };
    if severed {
        shared.severed.fetch_add(1, Ordering::Relaxed);
        reset(&inbound);
        reset(&outbound);
    }
}

/// Makes the coming close of `s` a reset (RST) rather than an orderly FIN.
fn reset(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

/// Copies `r` to `w` while the link is open; returns at end of stream or on an error.
async fn pump(
    mut r: impl AsyncRead + Unpin,
    mut w: impl AsyncWrite + Unpin,
    mut state: watch::Receiver<LinkState>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; BUF_BYTES];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return w.shutdown().await;
        }
        if state.wait_for(|s| *s == LinkState::Open).await.is_err() {
            return Ok(());
        }
        w.write_all(&buf[..n]).await?;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        a
    }

    async fn roundtrip(c: &mut TcpStream, msg: &[u8], within: Duration) -> Option<Vec<u8>> {
        c.write_all(msg).await.ok()?;
        let mut buf = vec![0u8; msg.len()];
        match tokio::time::timeout(within, c.read_exact(&mut buf)).await {
            Ok(Ok(_)) => Some(buf),
            _ => None,
        }
    }

    #[tokio::test]
    async fn forwards_blackholes_heals_and_severs() {
        let p = LinkProxy::bind("test").unwrap();
        // No backend yet: the connection is reset.
        let mut c = TcpStream::connect(p.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut c, b"x", Duration::from_secs(2)).await, None);

        p.set_backend(echo_server().await);
        let mut c = TcpStream::connect(p.addr()).await.unwrap();
        let second = Duration::from_secs(2);
        assert_eq!(roundtrip(&mut c, b"hello", second).await.unwrap(), b"hello");

        p.blackhole();
        let short = Duration::from_millis(200);
        assert_eq!(roundtrip(&mut c, b"lost?", short).await, None);
        p.heal();
        // The held bytes arrive after the heal.
        let mut buf = [0u8; 5];
        tokio::time::timeout(second, c.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"lost?");

        p.sever();
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(second, c.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        assert_eq!(p.stats().severed, 1);
        // New connections work after a sever.
        let mut c = TcpStream::connect(p.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut c, b"again", second).await.unwrap(), b"again");
    }
}
