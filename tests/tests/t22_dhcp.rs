//! The rack's DHCP server against DHCP clients, relays, servers and firmware written by others, in network
//! namespaces the test creates (`ingot_tests::netns`): the rack process stays in the root namespace (it
//! reaches the regions on 127.0.0.1) and serves the root end of a veth pair (`--boot-interface`); the
//! clients live in namespaces at the other end, directly, behind a relay, or on a bridge in a "lan"
//! namespace shared with a foreign DHCP server or a second rack.
//!
//! - `peers_alone_against_dnsmasq`: the harness and the client peers against dnsmasq alone (a baseline:
//!   when it fails, the harness or a peer is broken, not the rack).
//! - `clients_dora_renew_release_dhcping_relay`: busybox udhcpc and ISC dhclient (DORA, renew, release;
//!   the address in the dynamic range, in `ingot leases list` and `ingot machines show`, sticky for a
//!   known machine), dhcping (REQUEST and INFORM), ISC dhcrelay in front of the rack (subnet chosen by
//!   giaddr, answer to the relay, option 82 echoed).
//! - `proxy_mode_next_to_dnsmasq`: dnsmasq hands out addresses, the rack only boot options (ports 67 and
//!   4011) to PXE clients, nothing to others; the PXE client is enlisted.
//! - `ha_secondary_takes_over_without_duplicates`: SIGKILL the primary rack; the secondary answers within
//!   the rack grace time + 2 s; no address is handed out twice.
//! - `qemu_bios_and_uefi_get_their_boot_file_and_enlist`: QEMU (TCG) with SeaBIOS + iPXE ROM and with
//!   OVMF's own PXE, DHCP from ingot-rack only (captured with tcpdump): the boot file by architecture and
//!   user class, and both VMs New machines.
//! - `malformed_flood_and_discover_storm`: garbage and 1,000 DISCOVERs/s from one MAC; others still get
//!   addresses and the rack's session stays up.
//!
//! Each needs root and its peers (scripts/install-test-peers.sh); under CI a missing one fails the test,
//! elsewhere the test is skipped with the reason printed.

use ingot_launch::RackBoot;
use ingot_tests::netns::{self, End, Lab, Netns, NsProcess};
use ingot_tests::{ingot, norm_mac, wait_new_machine};
use ingot_tests::{wait_racks_connected, RackLogsOnPanic, TestCluster};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The regions' rack grace time in these tests (the HA test's bound is this + 2 s).
const GRACE_MS: u64 = 2000;

/// DHCP on the wire, written here from RFC 2131/2132 (not the rack's codec: the tests must not share the
/// code under test).
mod wire {
    use std::net::Ipv4Addr;

    pub const DISCOVER: u8 = 1;
    pub const OFFER: u8 = 2;
    pub const REQUEST: u8 = 3;
    pub const ACK: u8 = 5;
    pub const NAK: u8 = 6;
    pub const COOKIE: [u8; 4] = [99, 130, 83, 99];

    /// One BOOTP/DHCP message.
    #[derive(Clone, Debug)]
    pub struct Packet {
        pub op: u8,
        pub hops: u8,
        pub xid: u32,
        pub secs: u16,
        pub flags: u16,
        pub ciaddr: Ipv4Addr,
        pub yiaddr: Ipv4Addr,
        pub siaddr: Ipv4Addr,
        pub giaddr: Ipv4Addr,
        pub chaddr: [u8; 6],
        pub sname: String,
        pub file: String,
        pub options: Vec<(u8, Vec<u8>)>,
    }

    fn cstr(b: &[u8]) -> String {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    }

    fn ip(b: &[u8]) -> Ipv4Addr {
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    impl Packet {
        /// A client message of DHCP type `kind` from `mac`, broadcast flag set.
        pub fn client(kind: u8, mac: [u8; 6], xid: u32) -> Packet {
            Packet {
                op: 1,
                hops: 0,
                xid,
                secs: 0,
                flags: 0x8000,
                ciaddr: Ipv4Addr::UNSPECIFIED,
                yiaddr: Ipv4Addr::UNSPECIFIED,
                siaddr: Ipv4Addr::UNSPECIFIED,
                giaddr: Ipv4Addr::UNSPECIFIED,
                chaddr: mac,
                sname: String::new(),
                file: String::new(),
                options: vec![
                    (53, vec![kind]),
                    (55, vec![1, 3, 6, 15, 51, 54, 58, 59, 66, 67]),
                ],
            }
        }

        pub fn with(mut self, code: u8, value: &[u8]) -> Packet {
            self.options.retain(|(c, _)| *c != code);
            self.options.push((code, value.to_vec()));
            self
        }

        pub fn opt(&self, code: u8) -> Option<&[u8]> {
            self.options
                .iter()
                .find(|(c, _)| *c == code)
                .map(|(_, v)| v.as_slice())
        }

        pub fn kind(&self) -> Option<u8> {
            self.opt(53).and_then(|v| v.first().copied())
        }

        pub fn server_id(&self) -> Option<Ipv4Addr> {
            self.opt(54).filter(|v| v.len() == 4).map(ip)
        }

        /// Option 67 if present, else the `file` field.
        pub fn boot_file(&self) -> String {
            self.opt(67).map(cstr).unwrap_or_else(|| self.file.clone())
        }

        pub fn encode(&self) -> Vec<u8> {
            let mut b = vec![self.op, 1, 6, self.hops];
            b.extend(self.xid.to_be_bytes());
            b.extend(self.secs.to_be_bytes());
            b.extend(self.flags.to_be_bytes());
            for a in [self.ciaddr, self.yiaddr, self.siaddr, self.giaddr] {
                b.extend(a.octets());
            }
            let mut ch = [0u8; 16];
            ch[..6].copy_from_slice(&self.chaddr);
            b.extend(ch);
            let mut sname = [0u8; 64];
            let n = self.sname.len().min(63);
            sname[..n].copy_from_slice(&self.sname.as_bytes()[..n]);
            b.extend(sname);
            let mut file = [0u8; 128];
            let n = self.file.len().min(127);
            file[..n].copy_from_slice(&self.file.as_bytes()[..n]);
            b.extend(file);
            b.extend(COOKIE);
            for (c, v) in &self.options {
                b.push(*c);
                b.push(v.len() as u8);
                b.extend(v);
            }
            b.push(255);
            while b.len() < 300 {
                b.push(0);
            }
            b
        }

        pub fn decode(b: &[u8]) -> Option<Packet> {
            if b.len() < 240 || b[236..240] != COOKIE {
                return None;
            }
            let mut chaddr = [0u8; 6];
            chaddr.copy_from_slice(&b[28..34]);
            let mut options = Vec::new();
            let mut i = 240;
            while i < b.len() {
                let c = b[i];
                if c == 255 {
                    break;
                }
                if c == 0 {
                    i += 1;
                    continue;
                }
                let len = *b.get(i + 1)? as usize;
                let v = b.get(i + 2..i + 2 + len)?;
                options.push((c, v.to_vec()));
                i += 2 + len;
            }
            Some(Packet {
                op: b[0],
                hops: b[3],
                xid: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                secs: u16::from_be_bytes([b[8], b[9]]),
                flags: u16::from_be_bytes([b[10], b[11]]),
                ciaddr: ip(&b[12..16]),
                yiaddr: ip(&b[16..20]),
                siaddr: ip(&b[20..24]),
                giaddr: ip(&b[24..28]),
                chaddr,
                sname: cstr(&b[44..108]),
                file: cstr(&b[108..236]),
                options,
            })
        }
    }

    /// The UDP/IPv4 DHCP packets of a classic pcap file (Ethernet link type, as tcpdump -w writes on a
    /// veth or bridge): (source, destination, packet), in capture order. A cut-off last record is ignored.
    pub fn pcap_dhcp(file: &[u8]) -> Vec<(Ipv4Addr, Ipv4Addr, Packet)> {
        let mut out = Vec::new();
        if file.len() < 24 {
            return out;
        }
        let le = file[0..4] == [0xd4, 0xc3, 0xb2, 0xa1] || file[0..4] == [0x4d, 0x3c, 0xb2, 0xa1];
        let u32at = |b: &[u8], i: usize| {
            let a = [b[i], b[i + 1], b[i + 2], b[i + 3]];
            if le {
                u32::from_le_bytes(a)
            } else {
                u32::from_be_bytes(a)
            }
        };
        let mut i = 24;
        while i + 16 <= file.len() {
            let incl = u32at(file, i + 8) as usize;
            let Some(frame) = file.get(i + 16..i + 16 + incl) else {
                break;
            };
            i += 16 + incl;
            if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] {
                continue;
            }
            let iph = &frame[14..];
            let ihl = usize::from(iph[0] & 0x0f) * 4;
            if iph[9] != 17 || iph.len() < ihl + 8 {
                continue;
            }
            let (src, dst) = (ip(&iph[12..16]), ip(&iph[16..20]));
            if let Some(p) = Packet::decode(&iph[ihl + 8..]) {
                out.push((src, dst, p));
            }
        }
        out
    }
}

use wire::Packet;

// ---------------------------------------------------------------------------------------------------------
// A tiny DHCP client on a device-bound UDP socket (port 68) inside a namespace.
// ---------------------------------------------------------------------------------------------------------

/// An address a client got: its offer and acknowledgement.
#[derive(Clone, Debug)]
struct Lease {
    ip: Ipv4Addr,
    server: Ipv4Addr,
    ack: Packet,
}

struct Client {
    sock: UdpSocket,
}

fn xid() -> u32 {
    u32::from_str_radix(&netns::random_hex(8), 16).unwrap_or(1)
}

impl Client {
    fn on(ns: &Netns, dev: &str) -> Client {
        Client {
            sock: ns.udp_on(dev, 68, Duration::from_millis(50)).unwrap(),
        }
    }

    fn send(&self, p: &Packet) {
        self.send_to(p, SocketAddr::from((Ipv4Addr::BROADCAST, 67)));
    }

    fn send_to(&self, p: &Packet, to: SocketAddr) {
        self.sock.send_to(&p.encode(), to).unwrap();
    }

    /// Every reply for `xid` within `within`, with its source address.
    fn collect(&self, xid: u32, within: Duration) -> Vec<(SocketAddr, Packet)> {
        let mut out = Vec::new();
        let t0 = Instant::now();
        let mut buf = [0u8; 1500];
        while t0.elapsed() < within {
            if let Ok((n, from)) = self.sock.recv_from(&mut buf) {
                if let Some(p) = Packet::decode(&buf[..n]) {
                    if p.op == 2 && p.xid == xid {
                        out.push((from, p));
                    }
                }
            }
        }
        out
    }

    /// The first reply for `xid` accepted by `pred`, within `within`.
    fn first(
        &self,
        xid: u32,
        within: Duration,
        pred: impl Fn(&SocketAddr, &Packet) -> bool,
    ) -> Option<(SocketAddr, Packet)> {
        let t0 = Instant::now();
        let mut buf = [0u8; 1500];
        while t0.elapsed() < within {
            if let Ok((n, from)) = self.sock.recv_from(&mut buf) {
                if let Some(p) = Packet::decode(&buf[..n]) {
                    if p.op == 2 && p.xid == xid && pred(&from, &p) {
                        return Some((from, p));
                    }
                }
            }
        }
        None
    }

    /// DISCOVER → OFFER (from `server` if given) → REQUEST → ACK for `mac`, with `extra` options on both
    /// requests; retransmits every second; `Err` on NAK or timeout.
    fn dora(
        &self,
        mac: [u8; 6],
        server: Option<Ipv4Addr>,
        extra: &[(u8, Vec<u8>)],
        within: Duration,
    ) -> Result<Lease, String> {
        let t0 = Instant::now();
        let x = xid();
        let mut discover = Packet::client(wire::DISCOVER, mac, x);
        for (c, v) in extra {
            discover = discover.with(*c, v);
        }
        let offer = loop {
            if t0.elapsed() >= within {
                return Err(format!(
                    "no OFFER for {} within {within:?}",
                    netns::mac_str(&mac)
                ));
            }
            self.send(&discover);
            let got = self.first(x, Duration::from_secs(1), |_, p| {
                p.kind() == Some(wire::OFFER)
                    && !p.yiaddr.is_unspecified()
                    && server.is_none_or(|s| p.server_id() == Some(s))
            });
            if let Some((_, p)) = got {
                break p;
            }
        };
        let sid = offer.server_id().ok_or("OFFER without server id")?;
        let mut request = Packet::client(wire::REQUEST, mac, x)
            .with(50, &offer.yiaddr.octets())
            .with(54, &sid.octets());
        for (c, v) in extra {
            request = request.with(*c, v);
        }
        loop {
            if t0.elapsed() >= within {
                return Err(format!(
                    "no ACK for {} ({}) within {within:?}",
                    netns::mac_str(&mac),
                    offer.yiaddr
                ));
            }
            self.send(&request);
            let got = self.first(x, Duration::from_secs(1), |_, p| {
                matches!(p.kind(), Some(wire::ACK) | Some(wire::NAK)) && p.server_id() == Some(sid)
            });
            match got {
                Some((_, p)) if p.kind() == Some(wire::NAK) => {
                    return Err(format!("NAK for {}: {p:?}", offer.yiaddr))
                }
                Some((_, ack)) => {
                    return Ok(Lease {
                        ip: ack.yiaddr,
                        server: sid,
                        ack,
                    })
                }
                None => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The cluster side: one region, racks serving root veth ends, and the `ingot` CLI.
// ---------------------------------------------------------------------------------------------------------

/// The boot flags of a rack serving `ifaces` (its HTTP port picked at random so that racks of parallel
/// tests do not name the same one).
fn boot(ifaces: &[&str]) -> RackBoot {
    RackBoot {
        interfaces: ifaces.iter().map(|i| i.to_string()).collect(),
        http_port: Some(
            20_000 + u16::from_str_radix(&netns::random_hex(4), 16).unwrap_or(0) % 20_000,
        ),
        ..RackBoot::default()
    }
}

async fn cluster(name: &str, regions: usize) -> TestCluster {
    let grace = format!("--rack-grace-ms={GRACE_MS}");
    TestCluster::start(name, regions, &[&grace]).await.unwrap()
}

/// Every JSON object in `v` (recursively) that has field `key` equal to `value`.
fn objects_with<'a>(
    v: &'a serde_json::Value,
    key: &str,
    value: &str,
    out: &mut Vec<&'a serde_json::Value>,
) {
    match v {
        serde_json::Value::Object(m) => {
            if m.get(key).and_then(|x| x.as_str()) == Some(value) {
                out.push(v);
            }
            m.values().for_each(|x| objects_with(x, key, value, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| objects_with(x, key, value, out)),
        _ => {}
    }
}

/// A lease as the CLI lists it: (MAC without separators, state), `None` when not listed.
type LeaseView = Option<(String, String)>;

/// The lease of `ip` as `ingot leases list --subnet CIDR --json` shows it: (mac, state), if listed.
fn lease_of(tc: &TestCluster, cidr: &str, ip: Ipv4Addr) -> LeaseView {
    let text = ingot(tc, &["--json", "leases", "list", "--subnet", cidr]);
    let v: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("ingot leases list --json is not JSON ({e}): {text}"));
    let mut found = Vec::new();
    objects_with(&v, "ip", &ip.to_string(), &mut found);
    found.first().map(|o| {
        (
            norm_mac(o.get("mac").and_then(|m| m.as_str()).unwrap_or("")),
            o.get("state")
                .and_then(|m| m.as_str())
                .unwrap_or("")
                .to_lowercase(),
        )
    })
}

/// Polls (every 200 ms, at most 5 s) until the lease of `ip` satisfies `pred`; the last value seen.
fn wait_lease(
    tc: &TestCluster,
    cidr: &str,
    ip: Ipv4Addr,
    pred: impl Fn(&LeaseView) -> bool,
) -> Result<LeaseView, LeaseView> {
    let limit = Duration::from_secs(5);
    let t0 = Instant::now();
    loop {
        let l = lease_of(tc, cidr, ip);
        if pred(&l) {
            return Ok(l);
        }
        if t0.elapsed() >= limit {
            return Err(l);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn in_range(ip: Ipv4Addr, a: &str, b: &str) -> bool {
    let (a, b): (Ipv4Addr, Ipv4Addr) = (a.parse().unwrap(), b.parse().unwrap());
    (u32::from(a)..=u32::from(b)).contains(&u32::from(ip))
}

fn parse_mac(s: &str) -> [u8; 6] {
    let h = norm_mac(s);
    let mut m = [0u8; 6];
    for (i, x) in m.iter_mut().enumerate() {
        *x = u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap();
    }
    m
}

/// A work directory for peer files (scripts, logs, captures) under the test's cluster directory.
fn work(tc: &TestCluster, name: &str) -> PathBuf {
    let d = tc.dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes an executable `sh` script.
fn script(path: &Path, body: &str) -> PathBuf {
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    Command::new("chmod").arg("755").arg(path).status().unwrap();
    path.to_path_buf()
}

/// A busybox udhcpc script that logs `<event> <ip> <serverid> <lease>` lines to `log` and configures
/// the address (prefix `/prefix`) on bound/renew, removes it on deconfig.
fn udhcpc_script(dir: &Path, log: &Path, prefix: u8) -> PathBuf {
    script(
        &dir.join("udhcpc.sh"),
        &format!(
            r#"echo "$1 $ip $serverid $lease $router $dns" >> {log}
case "$1" in
  bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/{prefix}" dev "$interface" ;;
  deconfig) ip addr flush dev "$interface" ;;
esac
exit 0
"#,
            log = log.display()
        ),
    )
}

/// Busybox udhcpc in `ns` on eth0, once (`-q -n`: obtain a lease or give up after `tries` DISCOVERs a
/// second apart), with `script` (see [`udhcpc_script`]); its output, failing the test if it ran longer
/// than `limit`.
fn udhcpc_once(ns: &Netns, script: &Path, tries: u32, limit: Duration) -> std::process::Output {
    let tries = tries.to_string();
    let script = script.to_str().unwrap();
    let args = [
        "-i", "eth0", "-f", "-q", "-n", "-t", &tries, "-T", "1", "-s", script,
    ];
    ns.exec_timeout("udhcpc", &args, limit).unwrap()
}

/// An ISC dhclient script that logs `<reason> <new_ip_address> <server>` lines to `log` and configures
/// the address on BOUND/RENEW/REBOOT/REBIND.
fn dhclient_script(dir: &Path, log: &Path, prefix: u8) -> PathBuf {
    script(
        &dir.join("dhclient.sh"),
        &format!(
            r#"echo "$reason $new_ip_address $new_dhcp_server_identifier $new_dhcp_lease_time" >> {log}
case "$reason" in
  BOUND|RENEW|REBIND|REBOOT) ip addr flush dev "$interface"; ip addr add "$new_ip_address/{prefix}" dev "$interface" ;;
  RELEASE|EXPIRE|FAIL|STOP) ip addr flush dev "$interface" ;;
esac
exit 0
"#,
            log = log.display()
        ),
    )
}

/// Polls `log` (every 50 ms, at most `limit`) for a line whose first word is one of `events`; returns
/// its words. Lines before line `skip` are ignored.
fn wait_event(log: &Path, skip: usize, events: &[&str], limit: Duration) -> Option<Vec<String>> {
    netns::poll(limit, || {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .skip(skip)
            .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .find(|w| w.first().is_some_and(|e| events.contains(&e.as_str())))
    })
}

fn lines(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .count()
}

/// A tcpdump of DHCP traffic on `dev` inside `ns`, written (pcap, packet-buffered) to `file`.
fn capture(ns: &Netns, dev: &str, file: &Path) -> NsProcess {
    let out = std::fs::File::create(file).unwrap();
    let err = std::fs::File::create(file.with_extension("err")).unwrap();
    let child = ns
        .command(netns::tool("tcpdump").unwrap())
        .args([
            "-i",
            dev,
            "-n",
            "-U",
            "--immediate-mode",
            "-s",
            "0",
            "-w",
            "-",
            "udp port 67 or udp port 68 or udp port 4011",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap();
    let p = NsProcess::adopt(
        child,
        format!("tcpdump on {dev} in {}", ns.name),
        file.with_extension("err"),
    );
    // tcpdump prints "listening on" once its capture is open.
    netns::poll(Duration::from_secs(5), || {
        std::fs::read_to_string(file.with_extension("err"))
            .unwrap_or_default()
            .contains("listening on")
            .then_some(())
    })
    .expect("tcpdump did not start");
    p
}

fn captured(file: &Path) -> Vec<(Ipv4Addr, Ipv4Addr, Packet)> {
    wire::pcap_dhcp(&std::fs::read(file).unwrap_or_default())
}

// ---------------------------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------------------------

/// The harness and the client peers against dnsmasq alone: udhcpc, dhclient, dhcping and the Rust client
/// get addresses. No cluster.
#[test]
fn peers_alone_against_dnsmasq() {
    if !netns::ready(
        "peers_alone_against_dnsmasq",
        &["dnsmasq", "udhcpc", "dhclient", "dhcping"],
    ) {
        return;
    }
    let dir = ingot_tests::test_dir("dhcp-peers-alone");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let lab = Lab::new();
    let srv = lab.netns("srv").unwrap();
    let cl = lab.netns("cl").unwrap();
    srv.veth_to(
        End::new("s0", Some("10.29.0.1/24")),
        &cl,
        End::new("eth0", None),
    )
    .unwrap();
    std::fs::write(
        dir.join("dnsmasq.conf"),
        format!(
            "port=0\ninterface=s0\nbind-interfaces\nuser=root\ndhcp-range=10.29.0.100,10.29.0.150,255.255.255.0,1h\n\
             dhcp-authoritative\nno-ping\ndhcp-leasefile={d}/leases\nlog-facility={d}/dnsmasq.log\npid-file={d}/dnsmasq.pid\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let conf = format!("--conf-file={}", dir.join("dnsmasq.conf").display());
    let mut dnsmasq = srv
        .spawn(
            "dnsmasq",
            &["--keep-in-foreground", &conf],
            &dir.join("dnsmasq.out"),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(dnsmasq.running(), "dnsmasq exited: {}", dnsmasq.log_text());

    let ulog = dir.join("udhcpc.events");
    let us = udhcpc_script(&dir, &ulog, 24);
    let out = udhcpc_once(&cl, &us, 5, Duration::from_secs(15));
    let ev = wait_event(&ulog, 0, &["bound"], Duration::from_secs(1))
        .unwrap_or_else(|| panic!("udhcpc not bound: {out:?}"));
    let ip: Ipv4Addr = ev[1].parse().unwrap();
    assert!(in_range(ip, "10.29.0.100", "10.29.0.150"), "{ev:?}");

    let out = cl
        .exec_timeout(
            "dhcping",
            &[
                "-c",
                &ip.to_string(),
                "-s",
                "10.29.0.1",
                "-h",
                "02:00:00:00:00:aa",
                "-t",
                "3",
            ],
            Duration::from_secs(10),
        )
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Got answer from"),
        "dhcping: {out:?}"
    );

    let dlog = dir.join("dhclient.events");
    let ds = dhclient_script(&dir, &dlog, 24);
    let lf = dir.join("dhclient.leases");
    let pf = dir.join("dhclient.pid");
    cl.ip(&["addr", "flush", "dev", "eth0"]).unwrap();
    cl.set_mac("eth0", "02:29:00:00:00:01").unwrap();
    // In the foreground (-d): a daemonized dhclient would be orphaned when the namespace's drop kills it.
    let mut dh = cl
        .spawn(
            "dhclient",
            &[
                "-4",
                "-1",
                "-d",
                "-v",
                "-sf",
                ds.to_str().unwrap(),
                "-lf",
                lf.to_str().unwrap(),
                "-pf",
                pf.to_str().unwrap(),
                "eth0",
            ],
            &dir.join("dhclient.out"),
        )
        .unwrap();
    let ev = wait_event(&dlog, 0, &["BOUND"], Duration::from_secs(20))
        .unwrap_or_else(|| panic!("dhclient not bound: {}", dh.log_text()));
    assert!(
        in_range(ev[1].parse().unwrap(), "10.29.0.100", "10.29.0.150"),
        "{ev:?}"
    );
    dh.stop(Duration::from_secs(1));

    let c = Client::on(&cl, "eth0");
    let l = c
        .dora(netns::random_mac(), None, &[], Duration::from_secs(10))
        .unwrap();
    assert_eq!(l.server, "10.29.0.1".parse::<Ipv4Addr>().unwrap());
    dnsmasq.stop(Duration::from_secs(2));
    let _ = std::fs::remove_dir_all(&dir);
}

/// udhcpc and dhclient DORA, renew and release; dhcping; a relay in front of the rack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_dora_renew_release_dhcping_relay() {
    if !netns::ready(
        "clients_dora_renew_release_dhcping_relay",
        &["udhcpc", "dhclient", "dhcping", "dhcrelay", "tcpdump"],
    ) {
        return;
    }
    let tc = cluster("dhcp-clients", 1).await;
    let _logs = RackLogsOnPanic(&tc.cluster);
    let dir = work(&tc, "peers");
    let lab = Lab::new();
    // Direct link: root ingot-XXXX-r1 (10.20.0.1) <-> ns cl eth0.
    let cl = lab.netns("cl").unwrap();
    let l1 = lab
        .root_veth("r1", Some("10.20.0.1/24"), &cl, End::new("eth0", None))
        .unwrap();
    // Relayed link: root ingot-XXXX-r2 (10.21.0.1) <-> ns rl up0 (10.21.0.2); rl down0 (10.22.0.1) <->
    // ns c2 eth0.
    let rl = lab.netns("rl").unwrap();
    let l2 = lab
        .root_veth(
            "r2",
            Some("10.21.0.1/24"),
            &rl,
            End::new("up0", Some("10.21.0.2/24")),
        )
        .unwrap();
    let c2 = lab.netns("c2").unwrap();
    rl.veth_to(
        End::new("down0", Some("10.22.0.1/24")),
        &c2,
        End::new("eth0", None),
    )
    .unwrap();
    // The rack answers a relay at its giaddr: route the relayed subnet to the relay (the route goes with
    // the interface).
    netns::ip(&[
        "route",
        "add",
        "10.22.0.0/24",
        "via",
        "10.21.0.2",
        "dev",
        &l2.name,
    ])
    .unwrap();

    tc.cluster
        .add_boot_rack("r1", "z1", boot(&[&l1.name, &l2.name]))
        .await
        .unwrap();
    ingot(
        &tc,
        &[
            "subnets",
            "create",
            "10.20.0.0/24",
            "--gateway",
            "10.20.0.1",
            "--dns",
            "10.20.0.1",
            "--dynamic",
            "10.20.0.100-10.20.0.199",
            "--reserved",
            "10.20.0.2-10.20.0.9",
            "--mode",
            "managed",
            "--primary",
            "r1",
            "--lease-time",
            "1h",
            "--pxe-lease-time",
            "30s",
        ],
    );
    ingot(
        &tc,
        &[
            "subnets",
            "create",
            "10.22.0.0/24",
            "--gateway",
            "10.22.0.1",
            "--dynamic",
            "10.22.0.100-10.22.0.199",
            "--mode",
            "managed",
            "--primary",
            "r1",
            "--lease-time",
            "1h",
        ],
    );

    // A known machine: its MAC on the client's interface.
    let known = "02:20:00:00:00:01";
    let m = tc
        .clients()
        .machines()
        .create_machine(ingot_proto::v1::CreateMachineRequest {
            macs: vec![known.to_string()],
            hostname: "dhcp-known".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    cl.set_mac("eth0", known).unwrap();

    // 1. busybox udhcpc: DORA (it stays in the foreground, bound), renew (SIGUSR1), release (SIGUSR2).
    let ulog = dir.join("udhcpc.events");
    let us = udhcpc_script(&dir, &ulog, 24);
    let mut udhcpc = cl
        .spawn(
            "udhcpc",
            &[
                "-i",
                "eth0",
                "-f",
                "-t",
                "10",
                "-T",
                "1",
                "-A",
                "1",
                "-s",
                us.to_str().unwrap(),
            ],
            &dir.join("udhcpc.out"),
        )
        .unwrap();
    let ev =
        tokio::task::block_in_place(|| wait_event(&ulog, 0, &["bound"], Duration::from_secs(20)))
            .unwrap_or_else(|| panic!("udhcpc got no lease from the rack: {}", udhcpc.log_text()));
    let ip: Ipv4Addr = ev[1].parse().unwrap();
    assert!(
        in_range(ip, "10.20.0.100", "10.20.0.199"),
        "udhcpc got {ip}, outside the dynamic range: {ev:?}"
    );
    assert_eq!(ev[2], "10.20.0.1", "server id: {ev:?}");
    assert_eq!(ev[3], "3600", "lease time: {ev:?}");
    assert!(
        ev[4..].contains(&"10.20.0.1".to_string()),
        "router/dns: {ev:?}"
    );
    let lease = tokio::task::block_in_place(|| {
        wait_lease(&tc, "10.20.0.0/24", ip, |l| {
            l.as_ref()
                .is_some_and(|(mac, st)| *mac == norm_mac(known) && st == "bound")
        })
    });
    assert!(
        lease.is_ok(),
        "lease of {ip} in `ingot leases list`: {lease:?}"
    );
    let show = ingot(&tc, &["machines", "show", &m.system_id]);
    assert!(
        show.contains(&ip.to_string()),
        "`ingot machines show` lacks {ip}:\n{show}"
    );

    // 2. dhcping (REQUEST, then INFORM) for the bound address, while udhcpc holds it.
    let ips = ip.to_string();
    for extra in [&[][..], &["-i"][..]] {
        let mut args = vec!["-c", &ips, "-s", "10.20.0.1", "-h", known, "-t", "3"];
        args.extend_from_slice(extra);
        let out = cl
            .exec_timeout("dhcping", &args, Duration::from_secs(10))
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Got answer from: 10.20.0.1"),
            "dhcping {extra:?}: {out:?}"
        );
    }

    let n = lines(&ulog);
    udhcpc.signal(rustix::process::Signal::USR1).unwrap();
    let ev =
        tokio::task::block_in_place(|| wait_event(&ulog, n, &["renew"], Duration::from_secs(10)))
            .unwrap_or_else(|| panic!("udhcpc did not renew: {}", udhcpc.log_text()));
    assert_eq!(ev[1], ip.to_string(), "renewed another address: {ev:?}");
    let n = lines(&ulog);
    udhcpc.signal(rustix::process::Signal::USR2).unwrap();
    tokio::task::block_in_place(|| wait_event(&ulog, n, &["deconfig"], Duration::from_secs(10)))
        .unwrap_or_else(|| panic!("udhcpc did not release: {}", udhcpc.log_text()));
    let released = tokio::task::block_in_place(|| {
        wait_lease(&tc, "10.20.0.0/24", ip, |l| {
            l.as_ref().is_none_or(|(_, st)| st != "bound")
        })
    });
    assert!(
        released.is_ok(),
        "lease of {ip} still bound after RELEASE: {released:?}"
    );
    udhcpc.stop(Duration::from_secs(2));

    // Sticky: the known machine gets the same address again.
    let ulog2 = dir.join("udhcpc2.events");
    let us2 = udhcpc_script(&dir, &ulog2, 24);
    udhcpc_once(&cl, &us2, 10, Duration::from_secs(20));
    let ev = wait_event(&ulog2, 0, &["bound"], Duration::from_secs(1)).expect("udhcpc bound again");
    assert_eq!(
        ev[1],
        ip.to_string(),
        "the known machine's address is not sticky"
    );

    // 3. ISC dhclient: DORA, then a restart with its lease file (INIT-REBOOT REQUEST of the same
    // address), then RELEASE (-r).
    cl.ip(&["addr", "flush", "dev", "eth0"]).unwrap();
    let dmac = "02:20:00:00:00:02";
    cl.set_mac("eth0", dmac).unwrap();
    let dlog = dir.join("dhclient.events");
    let ds = dhclient_script(&dir, &dlog, 24);
    let lf = dir.join("dhclient.leases");
    let pf = dir.join("dhclient.pid");
    let dargs = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "-4",
            "-v",
            "-sf",
            ds.to_str().unwrap(),
            "-lf",
            lf.to_str().unwrap(),
            "-pf",
            pf.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v.push("eth0".into());
        v
    };
    let a = dargs(&["-1", "-d"]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let mut dh = cl.spawn("dhclient", &a, &dir.join("dhclient.out")).unwrap();
    let ev =
        tokio::task::block_in_place(|| wait_event(&dlog, 0, &["BOUND"], Duration::from_secs(20)))
            .unwrap_or_else(|| panic!("dhclient got no lease: {}", dh.log_text()));
    let dip: Ipv4Addr = ev[1].parse().unwrap();
    assert!(in_range(dip, "10.20.0.100", "10.20.0.199"), "{ev:?}");
    assert_ne!(dip, ip, "two clients got the same address");
    dh.signal(rustix::process::Signal::KILL).unwrap();
    dh.wait_exit(Duration::from_secs(2));
    let n = lines(&dlog);
    let mut dh = cl.spawn("dhclient", &a, &dir.join("dhclient.out")).unwrap();
    let ev = tokio::task::block_in_place(|| {
        wait_event(&dlog, n, &["REBOOT", "BOUND"], Duration::from_secs(20))
    })
    .unwrap_or_else(|| panic!("dhclient did not get its lease again: {}", dh.log_text()));
    assert_eq!(
        ev[1],
        dip.to_string(),
        "dhclient's renewal gave another address: {ev:?}"
    );
    dh.signal(rustix::process::Signal::KILL).unwrap();
    dh.wait_exit(Duration::from_secs(2));
    let r = dargs(&["-r"]);
    let r: Vec<&str> = r.iter().map(String::as_str).collect();
    cl.exec_timeout("dhclient", &r, Duration::from_secs(20))
        .unwrap();
    let released = tokio::task::block_in_place(|| {
        wait_lease(&tc, "10.20.0.0/24", dip, |l| {
            l.as_ref().is_none_or(|(_, st)| st != "bound")
        })
    });
    assert!(
        released.is_ok(),
        "dhclient's lease {dip} still bound after RELEASE: {released:?}"
    );

    // 4. A relay: dhcrelay (option 82 on) between ns c2 and the rack; the rack picks 10.22.0.0/24 by
    // giaddr, answers the relay, and echoes option 82 (seen on the relay's upstream side).
    let pcap = dir.join("relay.pcap");
    let mut cap = capture(&rl, "up0", &pcap);
    let _relay = rl
        .spawn(
            "dhcrelay",
            &["-d", "-4", "-a", "-iu", "up0", "-id", "down0", "10.21.0.1"],
            &dir.join("dhcrelay.out"),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let rlog = dir.join("relayed.events");
    let rs = udhcpc_script(&dir, &rlog, 24);
    let out = udhcpc_once(&c2, &rs, 10, Duration::from_secs(25));
    let ev = wait_event(&rlog, 0, &["bound"], Duration::from_secs(1))
        .unwrap_or_else(|| panic!("no lease through the relay: {out:?}\n{}", _relay.log_text()));
    let rip: Ipv4Addr = ev[1].parse().unwrap();
    assert!(
        in_range(rip, "10.22.0.100", "10.22.0.199"),
        "relayed client got {rip}: {ev:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    cap.stop(Duration::from_secs(2));
    let from_rack: Vec<_> = captured(&pcap)
        .into_iter()
        .filter(|(src, _, p)| *src == "10.21.0.1".parse::<Ipv4Addr>().unwrap() && p.op == 2)
        .collect();
    assert!(
        !from_rack.is_empty(),
        "no reply from the rack on the relay's upstream link"
    );
    for (_, dst, p) in &from_rack {
        assert_eq!(
            *dst,
            "10.22.0.1".parse::<Ipv4Addr>().unwrap(),
            "reply not sent to the relay (giaddr)"
        );
        assert_eq!(p.giaddr, "10.22.0.1".parse::<Ipv4Addr>().unwrap());
        let o82 = p
            .opt(82)
            .unwrap_or_else(|| panic!("option 82 not echoed: {p:?}"));
        // dhcrelay's circuit id (sub-option 1) names its downstream interface.
        assert!(
            String::from_utf8_lossy(o82).contains("down0"),
            "option 82 is not dhcrelay's: {o82:?}"
        );
    }
    assert!(
        lease_of(&tc, "10.22.0.0/24", rip).is_some(),
        "relayed lease {rip} not listed"
    );
    drop((l1, l2));
}

/// Proxy mode: dnsmasq hands out the addresses; the rack answers PXE clients with boot options only
/// (port 67 and 4011) and other clients not at all; the PXE client is enlisted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_mode_next_to_dnsmasq() {
    if !netns::ready("proxy_mode_next_to_dnsmasq", &["dnsmasq"]) {
        return;
    }
    let tc = cluster("dhcp-proxy", 1).await;
    let _logs = RackLogsOnPanic(&tc.cluster);
    let dir = work(&tc, "peers");
    let lab = Lab::new();
    // ns lan: bridge br0 (10.23.0.2, dnsmasq) with ports rk0 (<-> root ingot-XXXX-px, 10.23.0.1, the
    // rack) and c0 (<-> ns pc eth0, the client).
    let lan = lab.netns("lan").unwrap();
    lan.bridge("br0").unwrap();
    lan.ip(&["addr", "add", "10.23.0.2/24", "dev", "br0"])
        .unwrap();
    let link = lab
        .root_veth("px", Some("10.23.0.1/24"), &lan, End::new("rk0", None))
        .unwrap();
    lan.attach("rk0", "br0").unwrap();
    let pc = lab.netns("pc").unwrap();
    lan.veth_to(End::new("c0", None), &pc, End::new("eth0", None))
        .unwrap();
    lan.attach("c0", "br0").unwrap();
    std::fs::write(
        dir.join("dnsmasq.conf"),
        format!(
            "port=0\ninterface=br0\nbind-interfaces\nuser=root\ndhcp-range=10.23.0.100,10.23.0.150,255.255.255.0,1h\n\
             dhcp-authoritative\nno-ping\nlog-dhcp\ndhcp-leasefile={d}/leases\nlog-facility={d}/dnsmasq.log\npid-file={d}/dnsmasq.pid\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let conf = format!("--conf-file={}", dir.join("dnsmasq.conf").display());
    let mut dnsmasq = lan
        .spawn(
            "dnsmasq",
            &["--keep-in-foreground", &conf],
            &dir.join("dnsmasq.out"),
        )
        .unwrap();

    tc.cluster
        .add_boot_rack("r1", "z1", boot(&[&link.name]))
        .await
        .unwrap();
    ingot(
        &tc,
        &[
            "subnets",
            "create",
            "10.23.0.0/24",
            "--gateway",
            "10.23.0.2",
            "--mode",
            "proxy",
            "--primary",
            "r1",
        ],
    );
    assert!(dnsmasq.running(), "dnsmasq exited: {}", dnsmasq.log_text());
    let rack: Ipv4Addr = "10.23.0.1".parse().unwrap();
    let foreign: Ipv4Addr = "10.23.0.2".parse().unwrap();

    let c = Client::on(&pc, "eth0");
    let pxe_mac = netns::random_mac();
    let mut guid = vec![0u8];
    guid.extend(netns::random_hex(32).bytes().take(16));
    let pxe_opts: Vec<(u8, Vec<u8>)> = vec![
        (60, b"PXEClient:Arch:00000:UNDI:002001".to_vec()),
        (93, vec![0, 0]),
        (94, vec![1, 2, 1]),
        (97, guid),
    ];
    // The rack's proxy offer may take a moment after the subnet was created (it reaches the rack over
    // its session): retry the DISCOVER for up to 10 s.
    let (offers, from_rack) = tokio::task::block_in_place(|| {
        let t0 = Instant::now();
        loop {
            let x = xid();
            let mut d = Packet::client(wire::DISCOVER, pxe_mac, x);
            for (k, v) in &pxe_opts {
                d = d.with(*k, v);
            }
            c.send(&d);
            let offers = c.collect(x, Duration::from_millis(1500));
            let from_rack: Vec<Packet> = offers
                .iter()
                .filter(|(f, p)| f.ip() == rack || p.server_id() == Some(rack))
                .map(|(_, p)| p.clone())
                .collect();
            if !from_rack.is_empty() || t0.elapsed() > Duration::from_secs(10) {
                return (offers, from_rack);
            }
        }
    });
    let from_dnsmasq: Vec<&Packet> = offers
        .iter()
        .filter(|(_, p)| p.server_id() == Some(foreign))
        .map(|(_, p)| p)
        .collect();
    assert!(
        from_dnsmasq
            .iter()
            .any(|p| in_range(p.yiaddr, "10.23.0.100", "10.23.0.150")),
        "dnsmasq offered no address: {offers:?}"
    );
    assert_eq!(
        from_rack.len(),
        1,
        "expected one proxy offer from the rack: {offers:?}"
    );
    let po = &from_rack[0];
    assert_eq!(po.kind(), Some(wire::OFFER));
    assert!(
        po.yiaddr.is_unspecified(),
        "a proxy offer must carry no address: {po:?}"
    );
    assert_eq!(
        po.opt(60),
        Some(&b"PXEClient"[..]),
        "proxy offer without option 60 PXEClient: {po:?}"
    );
    assert_eq!(
        po.boot_file(),
        "undionly.kpxe",
        "BIOS PXE boot file: {po:?}"
    );

    // The address from dnsmasq, then the boot file from the rack's port 4011 (PXE boot server request).
    let lease = tokio::task::block_in_place(|| {
        c.dora(pxe_mac, Some(foreign), &pxe_opts, Duration::from_secs(10))
    })
    .unwrap();
    assert!(in_range(lease.ip, "10.23.0.100", "10.23.0.150"));
    pc.ip(&["addr", "add", &format!("{}/24", lease.ip), "dev", "eth0"])
        .unwrap();
    let x = xid();
    let mut req = Packet::client(wire::REQUEST, pxe_mac, x);
    req.ciaddr = lease.ip;
    req.flags = 0;
    for (k, v) in &pxe_opts {
        req = req.with(*k, v);
    }
    let ack = tokio::task::block_in_place(|| {
        let mut got = None;
        for _ in 0..3 {
            c.send_to(&req, SocketAddr::V4(SocketAddrV4::new(rack, 4011)));
            got = c.first(x, Duration::from_secs(1), |_, p| {
                p.kind() == Some(wire::ACK)
            });
            if got.is_some() {
                break;
            }
        }
        got
    })
    .unwrap_or_else(|| panic!("no ACK from the rack's port 4011"));
    assert_eq!(ack.1.boot_file(), "undionly.kpxe", "4011 ACK: {:?}", ack.1);
    assert!(
        ack.1.yiaddr.is_unspecified() || ack.1.yiaddr == lease.ip,
        "4011 ACK assigns an address: {:?}",
        ack.1
    );

    // A client that is not PXE gets its address from dnsmasq and nothing from the rack.
    let plain = netns::random_mac();
    let offers = tokio::task::block_in_place(|| {
        let x = xid();
        c.send(&Packet::client(wire::DISCOVER, plain, x));
        c.collect(x, Duration::from_secs(3))
    });
    assert!(
        offers.iter().any(|(_, p)| p.server_id() == Some(foreign)),
        "dnsmasq did not answer the plain client: {offers:?}"
    );
    assert!(
        offers
            .iter()
            .all(|(f, p)| f.ip() != rack && p.server_id() != Some(rack)),
        "the rack answered a non-PXE client in proxy mode: {offers:?}"
    );

    // The PXE client's unknown MAC was enlisted.
    wait_new_machine(&tc, &netns::mac_str(&pxe_mac), Duration::from_secs(10)).await;
    dnsmasq.stop(Duration::from_secs(2));
}

/// HA: primary and secondary racks on one subnet (each with its veth into a lan bridge); SIGKILL the
/// primary; the secondary answers within the rack grace time + 2 s; no address is handed out twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_secondary_takes_over_without_duplicates() {
    if !netns::ready("ha_secondary_takes_over_without_duplicates", &["udhcpc"]) {
        return;
    }
    let tc = cluster("dhcp-ha", 1).await;
    let _logs = RackLogsOnPanic(&tc.cluster);
    let dir = work(&tc, "peers");
    let lab = Lab::new();
    let lan = lab.netns("lan").unwrap();
    lan.bridge("br0").unwrap();
    let la = lab
        .root_veth("ha", Some("10.24.0.1/24"), &lan, End::new("ra0", None))
        .unwrap();
    let lb = lab
        .root_veth("hb", Some("10.24.0.2/24"), &lan, End::new("rb0", None))
        .unwrap();
    lan.attach("ra0", "br0").unwrap();
    lan.attach("rb0", "br0").unwrap();
    let hc = lab.netns("hc").unwrap();
    lan.veth_to(End::new("c0", None), &hc, End::new("eth0", None))
        .unwrap();
    lan.attach("c0", "br0").unwrap();
    tc.cluster
        .add_boot_rack("ra", "z1", boot(&[&la.name]))
        .await
        .unwrap();
    tc.cluster
        .add_boot_rack("rb", "z1", boot(&[&lb.name]))
        .await
        .unwrap();
    ingot(
        &tc,
        &[
            "subnets",
            "create",
            "10.24.0.0/24",
            "--gateway",
            "10.24.0.1",
            "--dynamic",
            "10.24.0.100-10.24.0.199",
            "--mode",
            "managed",
            "--primary",
            "ra",
            "--secondary",
            "rb",
            "--lease-time",
            "1h",
        ],
    );
    let a: Ipv4Addr = "10.24.0.1".parse().unwrap();
    let b: Ipv4Addr = "10.24.0.2".parse().unwrap();
    let c = Client::on(&hc, "eth0");
    let mut got: BTreeMap<[u8; 6], Ipv4Addr> = BTreeMap::new();

    // Before: the primary answers, the secondary is silent.
    let before: Vec<[u8; 6]> = (0..8).map(|_| netns::random_mac()).collect();
    tokio::task::block_in_place(|| {
        for m in &before {
            let l = c.dora(*m, None, &[], Duration::from_secs(15)).unwrap();
            assert_eq!(
                l.server, a,
                "answered by {} while the primary is up",
                l.server
            );
            got.insert(*m, l.ip);
        }
        let x = xid();
        c.send(&Packet::client(wire::DISCOVER, netns::random_mac(), x));
        let offers = c.collect(x, Duration::from_millis(1500));
        assert!(
            offers.iter().all(|(_, p)| p.server_id() == Some(a)),
            "the secondary answers while the primary is up: {offers:?}"
        );
    });
    // udhcpc too, through the primary.
    let ulog = dir.join("udhcpc.events");
    let us = udhcpc_script(&dir, &ulog, 24);
    let umac = "02:24:00:00:00:01";
    hc.set_mac("eth0", umac).unwrap();
    udhcpc_once(&hc, &us, 10, Duration::from_secs(20));
    let ev = wait_event(&ulog, 0, &["bound"], Duration::from_secs(1))
        .expect("udhcpc bound via the primary");
    got.insert(parse_mac(umac), ev[1].parse().unwrap());
    hc.ip(&["addr", "flush", "dev", "eth0"]).unwrap();

    // SIGKILL the primary; probe with fresh DISCOVERs every 250 ms until the secondary offers.
    tc.cluster.kill_rack("ra", libc::SIGKILL).unwrap();
    let t0 = Instant::now();
    let limit = Duration::from_millis(GRACE_MS) + Duration::from_secs(2);
    let took = tokio::task::block_in_place(|| loop {
        let x = xid();
        c.send(&Packet::client(wire::DISCOVER, netns::random_mac(), x));
        if c.first(x, Duration::from_millis(250), |_, p| {
            p.server_id() == Some(b)
        })
        .is_some()
        {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < limit + Duration::from_secs(10),
            "the secondary did not answer within {:?} of the primary's SIGKILL",
            limit + Duration::from_secs(10)
        );
    });
    eprintln!(
        "secondary answered {} ms after the primary's SIGKILL (grace {GRACE_MS} ms)",
        took.as_millis()
    );
    assert!(
        took <= limit,
        "the secondary answered after {took:?}, more than grace + 2 s ({limit:?})"
    );

    // After: the secondary hands out new addresses and gives the earlier clients theirs again.
    tokio::task::block_in_place(|| {
        for _ in 0..8 {
            let m = netns::random_mac();
            let l = c.dora(m, None, &[], Duration::from_secs(15)).unwrap();
            assert_eq!(
                l.server, b,
                "answered by {} after the primary died",
                l.server
            );
            assert_eq!(
                l.ack.opt(51),
                Some(&3600u32.to_be_bytes()[..]),
                "lease time: {:?}",
                l.ack
            );
            got.insert(m, l.ip);
        }
        for m in &before {
            let l = c.dora(*m, None, &[], Duration::from_secs(15)).unwrap();
            assert_eq!(
                l.ip,
                got[m],
                "{} changed address across the takeover",
                netns::mac_str(m)
            );
        }
    });
    let mut seen: BTreeMap<Ipv4Addr, [u8; 6]> = BTreeMap::new();
    for (m, ip) in &got {
        assert!(
            in_range(*ip, "10.24.0.100", "10.24.0.199"),
            "{ip} outside the range"
        );
        if let Some(other) = seen.insert(*ip, *m) {
            panic!(
                "{ip} handed out twice: {} and {}",
                netns::mac_str(&other),
                netns::mac_str(m)
            );
        }
    }
    assert_eq!(seen.len(), got.len());
    drop((la, lb));
}

/// QEMU (TCG) PXE clients, DHCP from ingot-rack only: SeaBIOS with the iPXE ROM (user class iPXE → the
/// HTTP URL of its script), OVMF's own UEFI PXE (arch 7 → snponly.efi), plus synthetic clients for BIOS
/// PXE without iPXE (→ undionly.kpxe); both VMs become New machines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_bios_and_uefi_get_their_boot_file_and_enlist() {
    if !netns::ready(
        "qemu_bios_and_uefi_get_their_boot_file_and_enlist",
        &["qemu-system-x86_64", "tcpdump"],
    ) {
        return;
    }
    let ovmf_code = Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd");
    let ovmf_vars = Path::new("/usr/share/OVMF/OVMF_VARS_4M.fd");
    if !ovmf_code.exists() {
        assert!(
            !netns::peers_required(),
            "OVMF missing (apt-get install ovmf)"
        );
        eprintln!("SKIPPED: OVMF missing");
        return;
    }
    let tc = cluster("dhcp-qemu", 1).await;
    let _logs = RackLogsOnPanic(&tc.cluster);
    let dir = work(&tc, "peers");
    let lab = Lab::new();
    let vm = lab.netns("vm").unwrap();
    vm.bridge("br0").unwrap();
    let link = lab
        .root_veth("vm", Some("10.25.0.1/24"), &vm, End::new("up0", None))
        .unwrap();
    vm.attach("up0", "br0").unwrap();
    for tap in ["tap0", "tap1"] {
        vm.ip(&["tuntap", "add", "dev", tap, "mode", "tap"])
            .unwrap();
        vm.attach(tap, "br0").unwrap();
    }
    tc.cluster
        .add_boot_rack("r1", "z1", boot(&[&link.name]))
        .await
        .unwrap();
    ingot(
        &tc,
        &[
            "subnets",
            "create",
            "10.25.0.0/24",
            "--gateway",
            "10.25.0.1",
            "--dynamic",
            "10.25.0.100-10.25.0.199",
            "--mode",
            "managed",
            "--primary",
            "r1",
            "--pxe-lease-time",
            "30s",
        ],
    );
    let pcap = dir.join("vm.pcap");
    let mut cap = capture(&vm, "br0", &pcap);

    let bios_mac = format!("52:54:00:{}", &netns::mac_str(&netns::random_mac())[9..]);
    let uefi_mac = format!("52:54:00:{}", &netns::mac_str(&netns::random_mac())[9..]);
    let vars = dir.join("vars.fd");
    std::fs::copy(ovmf_vars, &vars).unwrap();
    let common = |tap: &str, serial: &Path| -> Vec<String> {
        [
            "-accel",
            "tcg",
            "-m",
            "256",
            "-smp",
            "1",
            "-no-reboot",
            "-nographic",
            "-monitor",
            "none",
            "-serial",
            &format!("file:{}", serial.display()),
            "-boot",
            "n",
            "-netdev",
            &format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let mut bios_args = common("tap0", &dir.join("bios.serial"));
    bios_args.extend([
        "-M".into(),
        "pc".into(),
        "-device".into(),
        format!("virtio-net-pci,netdev=n0,mac={bios_mac}"),
    ]);
    let mut uefi_args = common("tap1", &dir.join("uefi.serial"));
    uefi_args.extend([
        "-M".into(),
        "q35".into(),
        "-drive".into(),
        format!(
            "if=pflash,format=raw,readonly=on,file={}",
            ovmf_code.display()
        ),
        "-drive".into(),
        format!("if=pflash,format=raw,file={}", vars.display()),
        // No iPXE option ROM: OVMF's own PXE client, like real UEFI hardware.
        "-device".into(),
        format!("virtio-net-pci,netdev=n0,mac={uefi_mac},romfile="),
    ]);
    let ba: Vec<&str> = bios_args.iter().map(String::as_str).collect();
    let ua: Vec<&str> = uefi_args.iter().map(String::as_str).collect();
    let mut bios = vm
        .spawn("qemu-system-x86_64", &ba, &dir.join("bios.qemu.log"))
        .unwrap();
    let mut uefi = vm
        .spawn("qemu-system-x86_64", &ua, &dir.join("uefi.qemu.log"))
        .unwrap();

    // The rack's OFFER (from 10.25.0.1) to each VM, from the capture.
    let rack: Ipv4Addr = "10.25.0.1".parse().unwrap();
    let offer_to = |mac: &str| {
        let m = parse_mac(mac);
        let pkts = captured(&pcap);
        let discover = pkts
            .iter()
            .find(|(_, _, p)| p.chaddr == m && p.op == 1 && p.kind() == Some(wire::DISCOVER))
            .map(|(_, _, p)| p.clone());
        let offer = pkts
            .iter()
            .find(|(s, _, p)| *s == rack && p.chaddr == m && p.kind() == Some(wire::OFFER))
            .map(|(_, _, p)| p.clone());
        discover.zip(offer)
    };
    let t0 = Instant::now();
    let (mut b, mut u) = (None, None);
    while (b.is_none() || u.is_none()) && t0.elapsed() < Duration::from_secs(150) {
        b = b.or_else(|| offer_to(&bios_mac));
        u = u.or_else(|| offer_to(&uefi_mac));
        if b.is_some() && bios.running() {
            bios.stop(Duration::from_millis(200));
        }
        if u.is_some() && uefi.running() {
            uefi.stop(Duration::from_millis(200));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("VM offers after {} ms", t0.elapsed().as_millis());
    let (bd, bo) = b.unwrap_or_else(|| {
        panic!(
            "no OFFER from the rack to the BIOS VM; qemu: {}",
            bios.log_text()
        )
    });
    let (ud, uo) = u.unwrap_or_else(|| {
        panic!(
            "no OFFER from the rack to the UEFI VM; qemu: {}",
            uefi.log_text()
        )
    });
    bios.stop(Duration::from_millis(200));
    uefi.stop(Duration::from_millis(200));

    // BIOS + iPXE ROM: arch 0 and user class iPXE → the HTTP URL of its iPXE script (its ROM already is
    // iPXE); 175/176 so iPXE does not wait for ProxyDHCP.
    assert_eq!(bd.opt(93), Some(&[0u8, 0][..]), "BIOS VM arch: {bd:?}");
    let ipxe = |p: &Packet| {
        p.opt(77)
            .is_some_and(|v| String::from_utf8_lossy(v).contains("iPXE"))
    };
    if ipxe(&bd) {
        assert!(
            bo.boot_file().starts_with("http://"),
            "iPXE (BIOS) boot file: {:?}",
            bo.boot_file()
        );
    } else {
        assert_eq!(bo.boot_file(), "undionly.kpxe", "BIOS boot file: {bo:?}");
    }
    assert!(in_range(bo.yiaddr, "10.25.0.100", "10.25.0.199"), "{bo:?}");
    // OVMF's PXE: arch 7 (EFI x64), not iPXE → snponly.efi.
    assert_eq!(ud.opt(93), Some(&[0u8, 7][..]), "UEFI VM arch: {ud:?}");
    assert!(!ipxe(&ud));
    assert_eq!(uo.boot_file(), "snponly.efi", "UEFI boot file: {uo:?}");
    assert!(in_range(uo.yiaddr, "10.25.0.100", "10.25.0.199"), "{uo:?}");

    // A BIOS PXE ROM that is not iPXE (arch 0, no user class) → undionly.kpxe, with next-server.
    let c = Client::on(&vm, "br0");
    let pxe = netns::random_mac();
    let x = xid();
    let d = Packet::client(wire::DISCOVER, pxe, x)
        .with(60, b"PXEClient:Arch:00000:UNDI:002001")
        .with(93, &[0, 0]);
    let o = tokio::task::block_in_place(|| {
        c.send(&d);
        c.first(x, Duration::from_secs(3), |_, p| {
            p.kind() == Some(wire::OFFER)
        })
    })
    .expect("no OFFER to a plain BIOS PXE client");
    assert_eq!(o.1.boot_file(), "undionly.kpxe", "{:?}", o.1);
    assert_eq!(o.1.siaddr, rack, "next-server: {:?}", o.1);

    cap.stop(Duration::from_secs(1));
    for mac in [&bios_mac, &uefi_mac] {
        wait_new_machine(&tc, mac, Duration::from_secs(10)).await;
    }
    drop(link);
}

/// Garbage and a storm of DISCOVERs from one MAC: the rack keeps answering others and its session stays
/// up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_flood_and_discover_storm() {
    if !netns::ready("malformed_flood_and_discover_storm", &[]) {
        return;
    }
    let tc = cluster("dhcp-flood", 1).await;
    let _logs = RackLogsOnPanic(&tc.cluster);
    let lab = Lab::new();
    let fl = lab.netns("fl").unwrap();
    let link = lab
        .root_veth("fl", Some("10.26.0.1/16"), &fl, End::new("eth0", None))
        .unwrap();
    tc.cluster
        .add_boot_rack("r1", "z1", boot(&[&link.name]))
        .await
        .unwrap();
    ingot(
        &tc,
        &[
            "subnets",
            "create",
            "10.26.0.0/16",
            "--gateway",
            "10.26.0.1",
            "--dynamic",
            "10.26.1.0-10.26.255.250",
            "--mode",
            "managed",
            "--primary",
            "r1",
        ],
    );
    let c = Client::on(&fl, "eth0");
    tokio::task::block_in_place(|| c.dora(netns::random_mac(), None, &[], Duration::from_secs(15)))
        .expect("a DORA before the flood");

    let flood = fl.udp_on("eth0", 0, Duration::from_millis(10)).unwrap();
    let storm_mac = netns::random_mac();
    let secs = 4u64;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let flooder = std::thread::spawn(move || {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(22);
        let to = SocketAddr::from((Ipv4Addr::BROADCAST, 67));
        let valid = Packet::client(wire::DISCOVER, storm_mac, 7).encode();
        let (mut discovers, mut garbage) = (0u64, 0u64);
        let t0 = Instant::now();
        // Per millisecond tick: one DISCOVER from the storm MAC (1,000/s) and two malformed packets.
        let mut tick = 0u64;
        while t0.elapsed() < Duration::from_secs(secs)
            && !stop2.load(std::sync::atomic::Ordering::Relaxed)
        {
            tick += 1;
            let mut d = valid.clone();
            d[4..8].copy_from_slice(&(tick as u32).to_be_bytes());
            let _ = flood.send_to(&d, to);
            discovers += 1;
            for _ in 0..2 {
                let mut p = valid.clone();
                match rng.gen_range(0..8) {
                    0 => p.truncate(rng.gen_range(0..240)),
                    1 => p = (0..rng.gen_range(0..1400)).map(|_| rng.gen()).collect(),
                    2 => {
                        // An option whose length runs past the end.
                        p.truncate(243);
                        p.extend([12, 250, b'x']);
                    }
                    3 => {
                        // Message type of length 0, then garbage options.
                        p.truncate(240);
                        p.extend([53, 0, 61, 255, 1]);
                    }
                    4 => {
                        // hlen 255, hops 255, op 2 (a reply sent to the server).
                        p[0] = 2;
                        p[2] = 255;
                        p[3] = 255;
                    }
                    5 => {
                        // Option overload (52) pointing into a garbage file/sname.
                        p.truncate(240);
                        p.extend([53, 1, 1, 52, 1, 3, 255]);
                        for b in &mut p[44..236] {
                            *b = rng.gen();
                        }
                    }
                    6 => {
                        // Thousands of pad/1-byte options up to a jumbo-ish size, no end option.
                        p.truncate(240);
                        while p.len() < 1400 {
                            p.extend([rng.gen_range(1..254u8), 1, rng.gen()]);
                        }
                    }
                    _ => {
                        // A REQUEST for an address outside every subnet, with a bogus server id.
                        p[242] = 3;
                        p.truncate(243);
                        p.extend([50, 4, 1, 2, 3, 4, 54, 4, 9, 9, 9, 9, 255]);
                    }
                }
                let _ = flood.send_to(&p, to);
                garbage += 1;
            }
            let next = Duration::from_millis(tick);
            if let Some(w) = next.checked_sub(t0.elapsed()) {
                std::thread::sleep(w);
            }
        }
        (discovers, garbage, t0.elapsed())
    });
    // Meanwhile other clients get addresses, each within 5 s, and the replies to the storm MAC are counted.
    let others = tokio::task::block_in_place(|| {
        let mut ok = Vec::new();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(secs) {
            let t = Instant::now();
            let l = c.dora(netns::random_mac(), None, &[], Duration::from_secs(5));
            ok.push((l.map(|l| l.ip), t.elapsed()));
            // A client every 100 ms or so: others keep coming, the pool is not what runs out.
            std::thread::sleep(Duration::from_millis(100).saturating_sub(t.elapsed()));
        }
        ok
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (discovers, garbage, took) = flooder.join().unwrap();
    eprintln!(
        "flood: {discovers} DISCOVERs from one MAC and {garbage} malformed packets in {} ms; meanwhile {} \
         other clients' DORAs, the slowest {:?}",
        took.as_millis(),
        others.len(),
        others.iter().map(|o| o.1).max().unwrap_or_default()
    );
    assert!(
        discovers as f64 / took.as_secs_f64() > 500.0,
        "the storm was too slow to mean anything"
    );
    assert!(!others.is_empty());
    for (r, t) in &others {
        assert!(
            r.is_ok(),
            "a client got no address during the flood: {r:?} after {t:?}"
        );
    }
    assert!(
        tc.cluster.is_rack_running("r1"),
        "the rack died under the flood"
    );
    wait_racks_connected(&tc.clients(), &["r1"], Duration::from_secs(5))
        .await
        .unwrap();
    // Replies to the storm MAC are rate-limited: count what the rack still sends it now.
    let limited = tokio::task::block_in_place(|| {
        let mut answered = 0;
        for i in 0..200u32 {
            let x = 0x5000 + i;
            c.send(&Packet::client(wire::DISCOVER, storm_mac, x));
            std::thread::sleep(Duration::from_millis(1));
        }
        let t0 = Instant::now();
        let mut buf = [0u8; 1500];
        while t0.elapsed() < Duration::from_secs(1) {
            if let Ok((n, _)) = c.sock.recv_from(&mut buf) {
                if Packet::decode(&buf[..n]).is_some_and(|p| p.chaddr == storm_mac && p.op == 2) {
                    answered += 1;
                }
            }
        }
        answered
    });
    eprintln!(
        "after the storm, 200 more DISCOVERs from the storm MAC in 0.2 s got {limited} answers"
    );
    assert!(
        limited < 100,
        "a flood from one MAC is not rate-limited ({limited} answers to 200 DISCOVERs)"
    );
    // Limited, not banned: after a quiet second and a half the storm MAC itself gets an address.
    std::thread::sleep(Duration::from_millis(1500));
    let again =
        tokio::task::block_in_place(|| c.dora(storm_mac, None, &[], Duration::from_secs(5)));
    assert!(
        again.is_ok(),
        "the storm MAC is still refused once quiet: {again:?}"
    );
    let after = tokio::task::block_in_place(|| {
        c.dora(netns::random_mac(), None, &[], Duration::from_secs(5))
    });
    assert!(after.is_ok(), "no address after the flood: {after:?}");
    let log = std::fs::read_to_string(&tc.cluster.rack("r1").unwrap().log).unwrap_or_default();
    assert!(
        !log.contains("panicked"),
        "the rack panicked under the flood"
    );
    drop(link);
}
