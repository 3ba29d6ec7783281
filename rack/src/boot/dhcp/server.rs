//! The DHCP sockets: for each boot interface the rack was told to serve, one UDP socket on the DHCP port
//! (67) and one on the ProxyDHCP port (4011), each bound to `0.0.0.0` *and* to the interface
//! (`SO_BINDTODEVICE`), so a rack answers only on the networks it was given — never on its management
//! network — and a broadcast reply leaves through the interface the request came in on.
//!
//! The server knows no DHCP: it reads datagrams (dropping any longer than [`MAX_PACKET`]), tells a
//! [`PacketHandler`] where each came from ([`Via`]: the interface's IPv4 address, the port, the sender),
//! and gives it the socket to answer on as a [`ReplySink`]. The handler (the boot service, or a fake in
//! tests) decides and may answer later — an ACK waits for its lease to be committed — so the receive
//! loop never waits for a region. Sends never block: a full socket buffer drops the reply (the client
//! retries), it does not stall the loop.
//!
//! [`Server::bind`] is synchronous and reports every startup problem naming the interface (missing, no
//! IPv4 address, port in use, not permitted), so `ingot-rack run` fails at once with a clear message
//! instead of serving half its networks; [`Server::run`] serves until shutdown.

use super::codec::MAX_PACKET;
use super::engine::{Outgoing, ServerPort, Via};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio::sync::watch;

/// What to listen on (from `ingot-rack run --boot-interface IF --dhcp-port --proxy-dhcp-port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// The boot interfaces, by name (`eth1`, `br-boot`); the rack binds on these only.
    pub interfaces: Vec<String>,
    /// The DHCP server port: 67 in production, another in tests that cannot use it.
    pub dhcp_port: u16,
    /// The ProxyDHCP port PXE clients ask for boot options on: 4011 in production.
    pub proxy_dhcp_port: u16,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            interfaces: Vec::new(),
            dhcp_port: 67,
            proxy_dhcp_port: 4011,
        }
    }
}

/// Why the DHCP server could not start. Each names the interface and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The interface does not exist on this host.
    #[error("boot interface {interface} does not exist on this host (see `ip link`): fix --boot-interface")]
    NoInterface {
        /// The interface asked for.
        interface: String,
    },
    /// The interface has no IPv4 address: the rack could not name itself as server (option 54) on it.
    #[error("boot interface {interface} has no IPv4 address: give it the rack's address on the boot network (ip addr add ADDR/PREFIX dev {interface})")]
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
    /// Another program (a DHCP server such as dnsmasq or dhcpd, or a second rack) holds the port.
    #[error("UDP port {port} on boot interface {interface} is in use by another program (another DHCP server, or a second ingot-rack?): stop it, or choose another port")]
    PortInUse {
        /// The interface.
        interface: String,
        /// The port.
        port: u16,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Binding to a device (`SO_BINDTODEVICE`) and to ports below 1024 needs privileges.
    #[error("{what} on boot interface {interface} (port {port}) is not permitted: run ingot-rack as root, or grant it CAP_NET_BIND_SERVICE and CAP_NET_RAW")]
    NotPermitted {
        /// The interface.
        interface: String,
        /// The port.
        port: u16,
        /// The step that failed.
        what: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Any other socket failure.
    #[error("{what} for UDP port {port} on boot interface {interface} failed: {source}")]
    Socket {
        /// The interface.
        interface: String,
        /// The port.
        port: u16,
        /// The step that failed.
        what: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The socket a packet came in on, to answer through. The service keeps it with a held reply and sends
/// once the lease is committed.
pub trait ReplySink: Send + Sync {
    /// Sends `out` without blocking; `Err(why)` if the datagram could not be queued (the client retries).
    fn send(&self, out: &Outgoing) -> Result<(), String>;
}

/// What decides about packets: the boot service in the rack, a fake in tests.
pub trait PacketHandler: Send + Sync + 'static {
    /// Handles one datagram (at most [`MAX_PACKET`] bytes) that arrived `via`; answers through `reply`,
    /// now or later. Must not block: it runs on the receive loop.
    fn handle(&self, packet: &[u8], via: &Via, reply: &Arc<dyn ReplySink>);
    /// A datagram the server dropped before the handler saw it, by reason (for counters).
    fn dropped(&self, why: &'static str);
}

/// One bound socket: an interface and a port.
#[derive(Debug)]
struct Listener {
    /// The interface it is bound to.
    interface: String,
    /// The interface's IPv4 address: `Via::local_ip`.
    local_ip: Ipv4Addr,
    /// DHCP or ProxyDHCP.
    port: ServerPort,
    /// The socket, non-blocking, not yet registered with tokio (binding needs no runtime).
    socket: std::net::UdpSocket,
}

/// The bound sockets, ready to serve.
#[derive(Debug)]
pub struct Server {
    /// Two per interface.
    listeners: Vec<Listener>,
}

/// The interface's first IPv4 address. Called after a socket was bound to the interface, so a missing
/// interface was reported already (`ENODEV`); here none means no IPv4 address (if-addrs lists only
/// interfaces with an address).
fn ipv4_of(interface: &str) -> Result<Ipv4Addr, ServerError> {
    crate::boot::interface_ipv4(interface).map_err(|e| match e {
        crate::boot::InterfaceError::Interfaces { source } => ServerError::Interfaces { source },
        crate::boot::InterfaceError::NoIpv4 { interface } => ServerError::NoIpv4 { interface },
    })
}

/// Maps a socket error at step `what` to the startup error that says what to do.
fn socket_error(
    interface: &str,
    port: u16,
    what: &'static str,
    source: std::io::Error,
) -> ServerError {
    let interface = interface.to_string();
    if source.kind() == std::io::ErrorKind::AddrInUse {
        return ServerError::PortInUse {
            interface,
            port,
            source,
        };
    }
    if source.kind() == std::io::ErrorKind::PermissionDenied {
        return ServerError::NotPermitted {
            interface,
            port,
            what,
            source,
        };
    }
    if rustix::io::Errno::from_io_error(&source) == Some(rustix::io::Errno::NODEV) {
        return ServerError::NoInterface { interface };
    }
    ServerError::Socket {
        interface,
        port,
        what,
        source,
    }
}

/// A UDP socket on `0.0.0.0:port`, bound to `interface`, allowed to broadcast.
fn bind_one(interface: &str, port: u16) -> Result<std::net::UdpSocket, ServerError> {
    let err = |what| move |e| socket_error(interface, port, what, e);
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(err("creating the socket"))?;
    // Two racks' tests, or the DHCP and ProxyDHCP roles on several interfaces, share a port number: each
    // socket is tied to its own device.
    s.set_reuse_address(true)
        .map_err(err("setting SO_REUSEADDR"))?;
    s.set_broadcast(true).map_err(err("setting SO_BROADCAST"))?;
    s.bind_device(Some(interface.as_bytes()))
        .map_err(err("binding to the interface (SO_BINDTODEVICE)"))?;
    s.set_nonblocking(true)
        .map_err(err("making the socket non-blocking"))?;
    s.bind(&SockAddr::from(SocketAddrV4::new(
        Ipv4Addr::UNSPECIFIED,
        port,
    )))
    .map_err(err("binding the port"))?;
    Ok(s.into())
}

/// Answers through one socket.
struct SocketSink {
    /// The socket the request came in on.
    socket: Arc<UdpSocket>,
}

impl ReplySink for SocketSink {
    fn send(&self, out: &Outgoing) -> Result<(), String> {
        self.socket
            .try_send_to(&out.bytes, SocketAddr::V4(out.to))
            .map(|_| ())
            .map_err(|e| format!("sending {} bytes to {}: {e}", out.bytes.len(), out.to))
    }
}

impl Server {
    /// Binds both ports on every interface of `cfg` (each named once). Needs no runtime, so a test can
    /// bind inside a network namespace from a thread that entered it.
    pub fn bind(cfg: &ListenerConfig) -> Result<Server, ServerError> {
        let mut listeners = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for interface in &cfg.interfaces {
            if !seen.insert(interface.as_str()) {
                continue;
            }
            // Binding first reports a missing interface (ENODEV) or missing privileges as such.
            let dhcp = bind_one(interface, cfg.dhcp_port)?;
            let proxy = bind_one(interface, cfg.proxy_dhcp_port)?;
            let local_ip = ipv4_of(interface)?;
            for (port, socket) in [(ServerPort::Dhcp, dhcp), (ServerPort::ProxyDhcp, proxy)] {
                listeners.push(Listener {
                    interface: interface.clone(),
                    local_ip,
                    port,
                    socket,
                });
            }
        }
        Ok(Server { listeners })
    }

    /// What is bound: interface, role, the interface's address and the bound port.
    pub fn bound(&self) -> Vec<(String, ServerPort, SocketAddrV4)> {
        self.listeners
            .iter()
            .map(|l| {
                let port = l.socket.local_addr().map(|a| a.port()).unwrap_or(0);
                (
                    l.interface.clone(),
                    l.port,
                    SocketAddrV4::new(l.local_ip, port),
                )
            })
            .collect()
    }

    /// Serves every socket until `shutdown` turns true: one receive loop per socket, each handing packets
    /// to `handler`. Fails only if a socket cannot be registered with the runtime.
    pub async fn run(
        self,
        handler: Arc<dyn PacketHandler>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), ServerError> {
        let mut tasks = tokio::task::JoinSet::new();
        for l in self.listeners {
            let number = l.socket.local_addr().map(|a| a.port()).unwrap_or(0);
            let socket = UdpSocket::from_std(l.socket).map_err(|source| ServerError::Socket {
                interface: l.interface.clone(),
                port: number,
                what: "registering the socket with the runtime",
                source,
            })?;
            tracing::info!(
                interface = %l.interface,
                address = %l.local_ip,
                port = number,
                role = ?l.port,
                "DHCP listening"
            );
            tasks.spawn(receive_loop(
                Arc::new(socket),
                l.local_ip,
                l.port,
                handler.clone(),
                shutdown.clone(),
            ));
        }
        while tasks.join_next().await.is_some() {}
        Ok(())
    }
}

/// Reads datagrams from `socket` until shutdown and hands each to `handler`.
async fn receive_loop(
    socket: Arc<UdpSocket>,
    local_ip: Ipv4Addr,
    port: ServerPort,
    handler: Arc<dyn PacketHandler>,
    mut shutdown: watch::Receiver<bool>,
) {
    let sink: Arc<dyn ReplySink> = Arc::new(SocketSink {
        socket: socket.clone(),
    });
    // One byte more than the largest packet read: a datagram that fills it was longer (and truncated).
    let mut buf = vec![0u8; MAX_PACKET + 1];
    let mut errors_in_row = 0u32;
    loop {
        let got = tokio::select! {
            r = socket.recv_from(&mut buf) => r,
            _ = shutdown.wait_for(|v| *v) => return,
        };
        if got.is_ok() {
            errors_in_row = 0;
        }
        match got {
            Ok((n, _)) if n > MAX_PACKET => handler.dropped("too-large"),
            Ok((n, SocketAddr::V4(source))) => {
                let via = Via {
                    local_ip,
                    port,
                    source,
                };
                handler.handle(&buf[..n], &via, &sink);
            }
            Ok((_, SocketAddr::V6(_))) => handler.dropped("not-ipv4"),
            Err(e) => {
                // ICMP errors of earlier sends surface here (ECONNREFUSED): not fatal for a server.
                tracing::debug!("DHCP receive: {e}");
                handler.dropped("receive-error");
                // A persistent error (the interface went away) must not spin the loop; single ones
                // (an ICMP error per unanswered unicast reply) must not slow it.
                errors_in_row = errors_in_row.saturating_add(1);
                if errors_in_row >= 100 {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                } else {
                    tokio::task::yield_now().await;
                }
            }
        }
    }
}
