//! The DHCP server on real sockets, in network namespaces this test creates (names prefixed `isv`): a
//! server namespace with the boot interface (10.99.0.1/24), a second interface the rack is not told to
//! serve, and one without an address; a client namespace at the other ends of the veth pairs. A
//! hand-built DISCOVER and REQUEST (dhcproto) go through the server, the boot service (with the fake
//! engine of `boot_service`) and a fake region that commits the lease, and come back as OFFER and ACK;
//! startup errors name the interface; the rack answers only on the interface it was given, from the
//! socket (port) the request came in on.

use crate::boot_service::{answer_all, packet, FakeEngine};
use dhcproto::v4::{Message, MessageType};
use dhcproto::Decodable;
use ingot_rack::boot::dhcp::server::{ListenerConfig, PacketHandler, Server, ServerError};
use ingot_rack::boot::journal::{Journal, MAX_ENTRIES};
use ingot_rack::boot::service::{BootService, ServiceSettings};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

/// Runs `args` with `ip`, failing with its stderr.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespaces and links of one test run, deleted on drop (deleting a namespace deletes its links).
struct Nets {
    server: String,
    client: String,
    /// The boot interface (server side) and its client-side peer.
    boot: (String, String),
    /// An interface the rack is not told about (server side) and its peer.
    other: (String, String),
    /// An interface without an IPv4 address (server side).
    bare: String,
}

impl Nets {
    /// Creates them, or `None` when this process cannot (not root): the test is skipped then, unless
    /// CI requires it.
    fn create() -> Option<Nets> {
        let root = rustix::process::geteuid().is_root();
        if !root {
            assert!(
                std::env::var_os("CI").is_none(),
                "boot_server needs root (network namespaces) under CI"
            );
            eprintln!("boot_server: skipped (needs root to create network namespaces)");
            return None;
        }
        // Unique per test of this process (tests run in parallel): pid and a counter.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let p = format!(
            "{}{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let n = Nets {
            server: format!("isv-s-{p}"),
            client: format!("isv-c-{p}"),
            boot: (format!("isvb{p}"), format!("isvB{p}")),
            other: (format!("isvo{p}"), format!("isvO{p}")),
            bare: format!("isvn{p}"),
        };
        ip(&["netns", "add", &n.server]);
        ip(&["netns", "add", &n.client]);
        for (s, c) in [&n.boot, &n.other] {
            ip(&["link", "add", s, "type", "veth", "peer", "name", c]);
            ip(&["link", "set", s, "netns", &n.server]);
            ip(&["link", "set", c, "netns", &n.client]);
            ip(&["-n", &n.server, "link", "set", s, "up"]);
            ip(&["-n", &n.client, "link", "set", c, "up"]);
        }
        ip(&[
            "-n",
            &n.server,
            "addr",
            "add",
            "10.99.0.1/24",
            "dev",
            &n.boot.0,
        ]);
        ip(&[
            "-n",
            &n.server,
            "addr",
            "add",
            "10.98.0.1/24",
            "dev",
            &n.other.0,
        ]);
        let bare_peer = format!("isvN{p}");
        ip(&[
            "-n", &n.server, "link", "add", &n.bare, "type", "veth", "peer", "name", &bare_peer,
        ]);
        ip(&["-n", &n.server, "link", "set", &n.bare, "up"]);
        Some(n)
    }
}

impl Drop for Nets {
    fn drop(&mut self) {
        for ns in [&self.server, &self.client] {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}

/// Runs `f` on a thread that entered network namespace `ns`: sockets it makes live there.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("netns file");
        rustix::thread::move_into_link_name_space(
            file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// A DHCP client socket on `interface`, port 68, allowed to broadcast.
fn client_socket(interface: &str) -> std::net::UdpSocket {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_broadcast(true).unwrap();
    s.bind_device(Some(interface.as_bytes())).unwrap();
    s.set_nonblocking(true).unwrap();
    s.bind(&SockAddr::from(SocketAddrV4::new(
        Ipv4Addr::UNSPECIFIED,
        68,
    )))
    .unwrap();
    s.into()
}

/// The next reply within `wait`: (message, the port it came from).
async fn reply(c: &UdpSocket, wait: Duration) -> Option<(Message, u16)> {
    let mut buf = vec![0u8; 2048];
    let (n, from) = tokio::time::timeout(wait, c.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some((Message::from_bytes(&buf[..n]).unwrap(), from.port()))
}

fn broadcast(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::BROADCAST, port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_and_request_get_offer_and_ack_on_the_boot_interface_only() {
    let Some(nets) = Nets::create() else {
        return;
    };
    // Startup errors name the interface.
    let boot_if = nets.boot.0.clone();
    let bare = nets.bare.clone();
    let errors = in_netns(&nets.server, move || {
        let cfg = |i: &str, port: u16| ListenerConfig {
            interfaces: vec![i.to_string()],
            dhcp_port: port,
            proxy_dhcp_port: port + 1,
        };
        let missing = Server::bind(&cfg("isv-nope", 67)).unwrap_err();
        let no_ip = Server::bind(&cfg(&bare, 67)).unwrap_err();
        let _holder = std::net::UdpSocket::bind("0.0.0.0:6767").unwrap();
        let in_use = Server::bind(&cfg(&boot_if, 6767)).unwrap_err();
        (missing, no_ip, in_use)
    });
    assert!(
        matches!(&errors.0, ServerError::NoInterface { interface } if interface == "isv-nope"),
        "{}",
        errors.0
    );
    assert!(errors.0.to_string().contains("isv-nope"));
    assert!(
        matches!(errors.1, ServerError::NoIpv4 { .. }),
        "{}",
        errors.1
    );
    assert!(errors.1.to_string().contains(&nets.bare), "{}", errors.1);
    assert!(
        matches!(errors.2, ServerError::PortInUse { port: 6767, .. }),
        "{}",
        errors.2
    );
    assert!(errors.2.to_string().contains(&nets.boot.0), "{}", errors.2);

    // The rack serves the boot interface, with the default ports (the namespace is ours).
    let boot_if = nets.boot.0.clone();
    let server = in_netns(&nets.server, move || {
        Server::bind(&ListenerConfig {
            interfaces: vec![boot_if],
            ..ListenerConfig::default()
        })
        .unwrap()
    });
    let bound = server.bound();
    assert_eq!(bound.len(), 2);
    assert!(bound
        .iter()
        .all(|(i, _, a)| *i == nets.boot.0 && *a.ip() == Ipv4Addr::new(10, 99, 0, 1)));

    let d = tempfile::tempdir().unwrap();
    let (engine, log) = FakeEngine::new();
    let (stop, stopped) = watch::channel(false);
    let journal = Journal::open(&d.path().join("leases.journal"), MAX_ENTRIES).unwrap();
    let svc = BootService::start(
        ServiceSettings::default(),
        Box::new(engine),
        journal,
        stopped.clone(),
    );
    let (tx, rx) = mpsc::channel(1024);
    let _session = svc.session_opened(tx);
    let _region = answer_all(svc.clone(), rx, HashSet::new());
    let handler: Arc<dyn PacketHandler> = svc.clone();
    let serving = tokio::spawn(server.run(handler, stopped.clone()));

    let (b, o) = (nets.boot.1.clone(), nets.other.1.clone());
    let (client, stranger) = in_netns(&nets.client, move || (client_socket(&b), client_socket(&o)));
    let client = UdpSocket::from_std(client).unwrap();
    let stranger = UdpSocket::from_std(stranger).unwrap();

    // DISCOVER → OFFER from port 67, naming the interface's address as server.
    client
        .send_to(
            &packet(MessageType::Discover, 5, false, false),
            broadcast(67),
        )
        .await
        .unwrap();
    let (offer, from) = reply(&client, Duration::from_secs(5)).await.expect("OFFER");
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(from, 67);
    assert_eq!(
        offer.opts().get(dhcproto::v4::OptionCode::ServerIdentifier),
        Some(&dhcproto::v4::DhcpOption::ServerIdentifier(Ipv4Addr::new(
            10, 99, 0, 1
        )))
    );
    let offered = offer.yiaddr();
    // REQUEST → ACK, after the fake region committed the lease.
    client
        .send_to(
            &packet(MessageType::Request, 5, false, false),
            broadcast(67),
        )
        .await
        .unwrap();
    let (ack, _) = reply(&client, Duration::from_secs(5)).await.expect("ACK");
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), offered);
    assert_eq!(log.lock().unwrap().committed.len(), 1);
    assert_eq!(log.lock().unwrap().committed[0].ip, offered);
    // A request on the ProxyDHCP port is answered from that port's socket.
    client
        .send_to(
            &packet(MessageType::Discover, 6, false, false),
            broadcast(4011),
        )
        .await
        .unwrap();
    let (_, from) = reply(&client, Duration::from_secs(5))
        .await
        .expect("reply from 4011");
    assert_eq!(from, 4011);
    // Oversized datagrams are dropped unread.
    client.send_to(&[0u8; 2000], broadcast(67)).await.unwrap();
    // The other interface is not served: nothing answers there, nothing is even read.
    let before = svc.counters().packets;
    stranger
        .send_to(
            &packet(MessageType::Discover, 7, false, false),
            broadcast(67),
        )
        .await
        .unwrap();
    assert!(reply(&stranger, Duration::from_millis(700)).await.is_none());
    let c = svc.counters();
    assert_eq!(
        c.packets, before,
        "a packet from an interface not served was read"
    );
    assert_eq!(c.drops.get("too-large"), Some(&1), "{c:?}");
    assert_eq!((c.packets, c.replies, c.commits), (3, 3, 1), "{c:?}");

    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .expect("the server stops on shutdown")
        .unwrap()
        .unwrap();
    drop(nets);
}

/// A hand-built DISCOVER and REQUEST answered by the rack's real engine through the server and the
/// service: OFFER of the first dynamic address, then the ACK of it once the (fake) region committed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_engine_answers_dora_through_the_server_after_the_commit() {
    use dhcproto::v4::{DhcpOption, Flags};
    use dhcproto::Encodable;
    use ingot_proto::rack::v1 as proto;
    use ingot_proto::rack::v1::region_message::Msg as RegionMsg;
    use ingot_rack::boot::dhcp::engine::{Engine, EngineSettings};
    let Some(nets) = Nets::create() else {
        return;
    };
    let boot_if = nets.boot.0.clone();
    let server = in_netns(&nets.server, move || {
        Server::bind(&ListenerConfig {
            interfaces: vec![boot_if],
            ..ListenerConfig::default()
        })
        .unwrap()
    });
    let d = tempfile::tempdir().unwrap();
    let (stop, stopped) = watch::channel(false);
    let journal = Journal::open(&d.path().join("leases.journal"), MAX_ENTRIES).unwrap();
    let svc = BootService::start(
        ServiceSettings::default(),
        Box::new(Engine::new(EngineSettings::default())),
        journal,
        stopped.clone(),
    );
    let (tx, rx) = mpsc::channel(1024);
    let _session = svc.session_opened(tx);
    let batches = answer_all(svc.clone(), rx, HashSet::new());
    svc.on_region_message(RegionMsg::BootConfig(proto::BootConfig {
        subnets: vec![proto::SubnetConfig {
            cidr: "10.99.0.0/24".into(),
            dynamic: vec!["10.99.0.100-10.99.0.199".into()],
            mode: "managed".into(),
            role: "primary".into(),
            active: true,
            lease_time_s: 3600,
            pxe_lease_time_s: 30,
            ..Default::default()
        }],
        known: vec![],
    }));
    svc.on_region_message(RegionMsg::Leases(proto::Leases {
        subnet: "10.99.0.0/24".into(),
        full: true,
        leases: vec![],
    }));
    let handler: Arc<dyn PacketHandler> = svc.clone();
    let serving = tokio::spawn(server.run(handler, stopped.clone()));
    let b = nets.boot.1.clone();
    let client = in_netns(&nets.client, move || client_socket(&b));
    let client = UdpSocket::from_std(client).unwrap();
    let chaddr = [2, 0, 0, 0, 0, 9];
    let request = |xid: u32, kind: MessageType| {
        let mut m = Message::new_with_id(
            xid,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &chaddr,
        );
        m.set_flags(Flags::default().set_broadcast());
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        m
    };
    let discover = request(77, MessageType::Discover);
    client
        .send_to(&discover.to_vec().unwrap(), broadcast(67))
        .await
        .unwrap();
    let (offer, _) = reply(&client, Duration::from_secs(5)).await.expect("OFFER");
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 99, 0, 100));
    let mut req = request(78, MessageType::Request);
    req.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
    req.opts_mut()
        .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 99, 0, 1)));
    client
        .send_to(&req.to_vec().unwrap(), broadcast(67))
        .await
        .unwrap();
    let (ack, _) = reply(&client, Duration::from_secs(5)).await.expect("ACK");
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), offer.yiaddr());
    assert_eq!(
        *batches.lock().unwrap(),
        vec![1],
        "one lease, one batch, before the ACK"
    );
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), serving).await;
    drop(nets);
}
