//! The DHCPv4 decision, pure: a datagram, the interface it came in on and the time in; the answer, where
//! to send it, what the region must record first and whom to enlist out. No sockets, no clock, no
//! tasks — the server (`dhcp::server`) and the service (`boot::service`) do the I/O around it.
//!
//! What it implements (RFC 2131 + PXE):
//! - the subnet is the one holding giaddr (relayed) or the rack's address on the receiving interface;
//!   only subnets the region marked active on this rack answer, and never one in mode `off`;
//! - managed mode: DISCOVER → OFFER (held in memory, never committed); REQUEST in SELECTING (our server
//!   id), INIT-REBOOT (requested address, no server id), RENEWING/REBINDING (ciaddr) → ACK with a
//!   commit, or NAK (wrong network, address not the client's); a REQUEST naming another server forgets
//!   our offer; DECLINE and RELEASE → a commit and no reply; INFORM → ACK with options, no lease;
//! - PXE and iPXE clients get their boot file by architecture (option 93) or the iPXE script URL (user
//!   class), option 175/176 and the subnet's PXE lease time;
//! - proxy mode: PXE clients' DISCOVERs on port 67 get an address-less OFFER with the boot file, their
//!   REQUESTs on 4011 an ACK with it; nothing is committed, nothing NAKed;
//! - cut off from every region ([`Engine::set_online`] false): only renewals of leases the table holds
//!   for the MAC and known machines' sticky addresses; no new addresses, no enlistment;
//! - unknown PXE clients are enlisted once per MAC (again after [`ENLIST_REPEAT_MS`]), at most
//!   [`MAX_ENLIST_PER_S`] a second; a MAC over its packet budget is ignored for the rest of the second.

use super::codec::{
    self, ClientMessage, ClientPacket, ParseError, PxeVendorClass, Reply, ReplyKind, Request,
};
use crate::boot::leases::{Availability, LeaseTable};
use crate::boot::rng::FuzzRng;
use crate::boot::{BootConfig, ServedSubnet};
use ingot_common::net::{Cidr, ClientArch, Lease, LeaseState, Subnet, SubnetMode};
use ingot_common::Mac;
use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

/// The DHCP server port (answers to relays go there).
pub const SERVER_PORT: u16 = 67;
/// The DHCP client port.
pub const CLIENT_PORT: u16 = 68;
/// The PXE boot server port (proxy mode's second exchange).
pub const PROXY_PORT: u16 = 4011;
/// MACs the flood limiter tracks at once; beyond, the oldest of the second is evicted (bounded memory
/// under a spoofed-MAC storm).
pub const MAX_FLOOD_MACS: usize = 65_536;
/// How long an unknown MAC is not enlisted again.
pub const ENLIST_REPEAT_MS: u64 = 60_000;
/// Enlistment requests per second over all MACs (a storm of new machines must not flood the region).
pub const MAX_ENLIST_PER_S: u32 = 100;
/// MACs remembered as enlisted at once (bounded under a spoofed-MAC storm; the oldest go first).
pub const MAX_ENLIST_MACS: usize = 65_536;

/// The boot files served over TFTP per firmware; names relative to the rack's TFTP root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFiles {
    /// Legacy BIOS PXE (option 93 = 0 or absent): iPXE's UNDI loader.
    pub bios: String,
    /// UEFI x86-64 PXE (7, 9): iPXE over the firmware's SNP driver.
    pub uefi_x64: String,
    /// UEFI arm64 PXE (11), where such an image exists; None: no boot file for them.
    pub uefi_arm64: Option<String>,
}

impl Default for BootFiles {
    fn default() -> Self {
        BootFiles {
            bios: "undionly.kpxe".into(),
            uefi_x64: "snponly.efi".into(),
            uefi_arm64: None,
        }
    }
}

/// How the engine answers; fixed for a rack's run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSettings {
    /// Boot files by firmware.
    pub boot_files: BootFiles,
    /// The rack's boot HTTP port (iPXE scripts, HTTP-boot loaders).
    pub http_port: u16,
    /// Packets a MAC may send per second before it is ignored for the rest of that second; 0 disables
    /// the limit.
    pub max_packets_per_mac_per_s: u32,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            boot_files: BootFiles::default(),
            http_port: 5248,
            max_packets_per_mac_per_s: 20,
        }
    }
}

/// The port a datagram arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerPort {
    /// 67: DHCP.
    Dhcp,
    /// 4011: the PXE boot server (proxy mode's REQUEST).
    ProxyDhcp,
}

impl ServerPort {
    /// The UDP port number.
    pub fn number(&self) -> u16 {
        match self {
            ServerPort::Dhcp => SERVER_PORT,
            ServerPort::ProxyDhcp => PROXY_PORT,
        }
    }
}

/// How a datagram reached the rack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via {
    /// The rack's address on the receiving interface: server id, siaddr, the boot URLs' host, and the
    /// subnet when the packet was not relayed.
    pub local_ip: Ipv4Addr,
    /// The port it arrived on.
    pub port: ServerPort,
    /// Its source address.
    pub source: SocketAddrV4,
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The encoded reply.
    pub bytes: Vec<u8>,
    /// Where: the relay (giaddr:67), the client's address (ciaddr:68, renewals and INFORM), the source
    /// (port 4011), else broadcast (255.255.255.255:68).
    pub to: SocketAddrV4,
}

/// An unknown machine PXE-booting: the region should create it (New) in the rack's zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnlistRequest {
    /// Its MAC.
    pub mac: Mac,
    /// Its firmware architecture (option 93).
    pub arch: ClientArch,
    /// The subnet it booted on.
    pub subnet: Cidr,
}

/// What to do about one datagram.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The answer. With `commit` set, send it only once the region recorded the lease.
    pub reply: Option<Outgoing>,
    /// A lease the region must record first (ACK), or record at all (RELEASE, DECLINE: no reply).
    /// `rack` is left empty for the caller to fill in.
    pub commit: Option<Lease>,
    /// The NAK to send instead of `reply` when the region refuses `commit`.
    pub on_refused: Option<Outgoing>,
    /// An unknown PXE client to enlist.
    pub enlist: Option<EnlistRequest>,
    /// Why the datagram got no answer (for counters and debug logs).
    pub dropped: Option<&'static str>,
    /// The parse error, when the datagram was malformed.
    pub error: Option<ParseError>,
    /// A PXE or iPXE client answered with its boot options (an ACK, or a boot server's answer): a
    /// boot step worth an event.
    pub pxe: Option<PxeAnswer>,
}

/// A PXE client's answered step, for boot events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PxeAnswer {
    /// The client.
    pub mac: Mac,
    /// Whether it is iPXE (user class `iPXE`: it asks for its script next) rather than PXE firmware.
    pub ipxe: bool,
    /// The port it was answered on (4011: the PXE boot server).
    pub port: ServerPort,
}

impl Outcome {
    fn drop(why: &'static str) -> Outcome {
        Outcome {
            dropped: Some(why),
            ..Outcome::default()
        }
    }
}

/// One datagram being answered on a managed subnet: what every step of the decision reads.
struct Exchange<'a> {
    /// The parsed request.
    req: &'a Request,
    /// The subnet it is answered on.
    subnet: &'a Subnet,
    /// How it arrived.
    via: &'a Via,
    /// The time of arrival (ms since the epoch).
    now_ms: u64,
}

/// Per-second packet counts per MAC.
#[derive(Debug, Default)]
struct Flood {
    /// The second (ms / 1000) the counts are for; a new second starts them over.
    second: u64,
    /// Packets per MAC this second.
    counts: HashMap<Mac, u32>,
    /// MACs in the order first seen this second: the eviction order at [`MAX_FLOOD_MACS`].
    order: VecDeque<Mac>,
}

/// MACs enlisted lately, and this second's enlistment count.
#[derive(Debug, Default)]
struct Enlisted {
    /// When each MAC was last enlisted (ms).
    last_ms: HashMap<Mac, u64>,
    /// (when, MAC) in enlistment order: expiry and eviction order.
    order: VecDeque<(u64, Mac)>,
    /// The second `this_second` counts.
    second: u64,
    /// Enlistments in that second (at most [`MAX_ENLIST_PER_S`]).
    this_second: u32,
}

impl Enlisted {
    fn forget_before(&mut self, cutoff_ms: u64) {
        while let Some(&(t, mac)) = self.order.front() {
            if t >= cutoff_ms && self.order.len() <= 2 * MAX_ENLIST_MACS {
                break;
            }
            self.order.pop_front();
            if self.last_ms.get(&mac) == Some(&t) {
                self.last_ms.remove(&mac);
            }
        }
    }
}

/// The DHCP engine of one rack (see the module doc).
#[derive(Debug)]
pub struct Engine {
    /// Boot files, HTTP port, flood limit.
    settings: EngineSettings,
    /// The subnets the region told this rack to serve (shared with each decision without a copy).
    subnets: Vec<Arc<ServedSubnet>>,
    /// MACs the cluster knows (not enlisted; sticky even offline).
    known: HashMap<Mac, String>,
    /// Leases and offers.
    table: LeaseTable,
    /// Whether a region is reachable.
    online: bool,
    /// Per-MAC packet budget.
    flood: Flood,
    /// Enlistment memory and rate.
    enlisted: Enlisted,
}

fn is_set(ip: Ipv4Addr) -> bool {
    !ip.is_unspecified()
}

impl Engine {
    /// An engine serving nothing until [`Engine::set_config`]; online until told otherwise.
    pub fn new(settings: EngineSettings) -> Engine {
        Engine {
            settings,
            subnets: Vec::new(),
            known: HashMap::new(),
            table: LeaseTable::new(),
            online: true,
            flood: Flood::default(),
            enlisted: Enlisted::default(),
        }
    }

    /// Takes what the region says to serve (replacing the previous configuration, live).
    pub fn set_config(&mut self, cfg: BootConfig) {
        let subnets: Vec<Subnet> = cfg.subnets.iter().map(|s| s.subnet.clone()).collect();
        self.table.configure(&subnets);
        self.subnets = cfg.subnets.into_iter().map(Arc::new).collect();
        self.known = cfg.known;
    }

    /// Takes the region's leases of a subnet (all of them when `full`, else changes).
    pub fn set_leases(&mut self, subnet: Cidr, full: bool, leases: Vec<Lease>) {
        self.table.set_leases(subnet, full, leases);
    }

    /// Whether a region is reachable; false: only renewals and known machines (module doc).
    pub fn set_online(&mut self, online: bool) {
        self.online = online;
    }

    /// The region recorded this lease.
    pub fn committed(&mut self, lease: &Lease) {
        self.table.committed(lease);
    }

    /// The region refused this rack's lease of `ip` for `mac`: forget it locally.
    pub fn refused(&mut self, ip: Ipv4Addr, mac: Mac) {
        self.table.refused(ip, mac);
    }

    /// Drops offers past their hold and enlistment memories past [`ENLIST_REPEAT_MS`]; call about
    /// once a second.
    pub fn expire(&mut self, now_ms: u64) {
        self.table.expire(now_ms);
        self.enlisted
            .forget_before(now_ms.saturating_sub(ENLIST_REPEAT_MS));
        if now_ms / 1000 != self.flood.second {
            self.flood = Flood {
                second: now_ms / 1000,
                ..Flood::default()
            };
        }
    }

    /// Addresses with a lease or an offer.
    pub fn lease_count(&self) -> usize {
        self.table.len()
    }

    /// The lease table (read-only: stats and tests).
    pub fn table(&self) -> &LeaseTable {
        &self.table
    }

    /// Decides about one datagram. Never panics.
    pub fn handle(&mut self, packet: &[u8], via: &Via, now_ms: u64) -> Outcome {
        let req = match codec::parse(packet) {
            Ok(r) => r,
            Err(e) => {
                return Outcome {
                    error: Some(e),
                    ..Outcome::drop("malformed packet")
                }
            }
        };
        if !self.within_budget(req.mac, now_ms) {
            return Outcome::drop("flood: this MAC sent too many packets this second");
        }
        let at = if is_set(req.giaddr) {
            req.giaddr
        } else {
            via.local_ip
        };
        let Some(served) = self
            .subnets
            .iter()
            .find(|s| s.subnet.cidr.contains(at))
            .cloned()
        else {
            return Outcome::drop("no subnet served for this interface or relay");
        };
        if !served.active {
            return Outcome::drop("subnet not active on this rack");
        }
        let subnet = &served.subnet;
        if subnet.mode == SubnetMode::Off {
            return Outcome::drop("subnet mode is off");
        }
        let enlist = if req.is_pxe() {
            self.enlist(&req, subnet.cidr, now_ms)
        } else {
            None
        };
        let mut out = match (via.port, subnet.mode) {
            (ServerPort::ProxyDhcp, _) => self.boot_server(&req, via),
            (ServerPort::Dhcp, SubnetMode::Proxy) => self.proxy_offer(&req, via),
            (ServerPort::Dhcp, _) => self.managed(&Exchange {
                req: &req,
                subnet,
                via,
                now_ms,
            }),
        };
        out.enlist = enlist;
        if req.is_pxe()
            && out.reply.is_some()
            && matches!(req.kind, ClientMessage::Request | ClientMessage::Inform)
        {
            out.pxe = Some(PxeAnswer {
                mac: req.mac,
                ipxe: req.user_class_ipxe,
                port: via.port,
            });
        }
        out
    }

    /// Counts the packet against its MAC's budget for this second.
    fn within_budget(&mut self, mac: Mac, now_ms: u64) -> bool {
        let limit = self.settings.max_packets_per_mac_per_s;
        if limit == 0 {
            return true;
        }
        let second = now_ms / 1000;
        if second != self.flood.second {
            self.flood.second = second;
            self.flood.counts.clear();
            self.flood.order.clear();
        }
        if let Some(c) = self.flood.counts.get_mut(&mac) {
            *c = c.saturating_add(1);
            return *c <= limit;
        }
        while self.flood.counts.len() >= MAX_FLOOD_MACS {
            match self.flood.order.pop_front() {
                Some(old) => {
                    self.flood.counts.remove(&old);
                }
                None => break,
            }
        }
        self.flood.counts.insert(mac, 1);
        self.flood.order.push_back(mac);
        true
    }

    /// An enlistment request for an unknown PXE client, once per MAC per [`ENLIST_REPEAT_MS`] and at
    /// most [`MAX_ENLIST_PER_S`] a second; never while cut off from the regions.
    fn enlist(&mut self, req: &Request, subnet: Cidr, now_ms: u64) -> Option<EnlistRequest> {
        if !self.online || self.known.contains_key(&req.mac) {
            return None;
        }
        let e = &mut self.enlisted;
        if e.last_ms
            .get(&req.mac)
            .is_some_and(|&t| now_ms < t.saturating_add(ENLIST_REPEAT_MS))
        {
            return None;
        }
        let second = now_ms / 1000;
        if second != e.second {
            e.second = second;
            e.this_second = 0;
        }
        if e.this_second >= MAX_ENLIST_PER_S {
            return None;
        }
        e.this_second += 1;
        while e.last_ms.len() >= MAX_ENLIST_MACS {
            match e.order.pop_front() {
                Some((t, mac)) => {
                    if e.last_ms.get(&mac) == Some(&t) {
                        e.last_ms.remove(&mac);
                    }
                }
                None => break,
            }
        }
        e.last_ms.insert(req.mac, now_ms);
        e.order.push_back((now_ms, req.mac));
        Some(EnlistRequest {
            mac: req.mac,
            arch: ClientArch::from_code(req.client_arch.unwrap_or(0)),
            subnet,
        })
    }

    /// A reply to `req` with the fields every answer shares.
    fn reply(kind: ReplyKind, req: &Request, via: &Via) -> Reply {
        let mut r = Reply::new(kind, req.xid, req.mac);
        r.broadcast = req.broadcast;
        r.giaddr = req.giaddr;
        r.server_id = via.local_ip;
        r.relay_agent_info = req.relay_agent_info.clone();
        r.client_id = req.client_id.clone();
        r
    }

    /// The subnet's network options.
    fn network_options(r: &mut Reply, subnet: &Subnet) {
        r.subnet_mask = Some(subnet.cidr.mask());
        r.routers = subnet.gateway.into_iter().collect();
        r.dns = subnet.dns.clone();
        r.domain = (!subnet.domain.is_empty()).then(|| subnet.domain.clone());
        r.broadcast_addr = Some(subnet.cidr.broadcast());
    }

    /// Boot options for PXE and iPXE clients: the boot file by user class and architecture, option 60
    /// and option 175/176.
    fn boot_options(&self, r: &mut Reply, req: &Request, local_ip: Ipv4Addr) {
        if !req.is_pxe() {
            return;
        }
        r.ipxe_no_proxydhcp = true;
        let arch = ClientArch::from_code(req.client_arch.unwrap_or(0));
        let http_client = matches!(arch, ClientArch::UefiX64Http | ClientArch::UefiArm64Http)
            || req
                .vendor_class
                .as_deref()
                .is_some_and(|v| v.starts_with("HTTPClient"));
        r.vendor_class = Some(if http_client {
            PxeVendorClass::HttpClient
        } else {
            PxeVendorClass::PxeClient
        });
        let url = |name: &str| format!("http://{local_ip}:{}/boot/{name}", self.settings.http_port);
        if req.user_class_ipxe {
            r.boot_file = Some(url(&format!("{}.ipxe", req.mac)));
            return;
        }
        let files = &self.settings.boot_files;
        let tftp = match arch {
            ClientArch::Bios => Some(files.bios.clone()),
            ClientArch::UefiX64 => Some(files.uefi_x64.clone()),
            ClientArch::UefiArm64 => files.uefi_arm64.clone(),
            ClientArch::UefiX64Http => {
                r.boot_file = Some(url("ipxe-x64.efi"));
                None
            }
            ClientArch::UefiArm64Http => {
                r.boot_file = Some(url("ipxe-arm64.efi"));
                None
            }
            ClientArch::Other => None,
        };
        if let Some(file) = tftp {
            r.boot_file = Some(file);
            r.siaddr = local_ip;
            r.tftp_server = Some(local_ip.to_string());
        }
    }

    /// Where a reply goes (RFC 2131 4.1; port 4011 answers go back to their source).
    fn destination(kind: ReplyKind, req: &Request, via: &Via) -> SocketAddrV4 {
        if via.port == ServerPort::ProxyDhcp {
            via.source
        } else if is_set(req.giaddr) {
            SocketAddrV4::new(req.giaddr, SERVER_PORT)
        } else if kind != ReplyKind::Nak && is_set(req.ciaddr) {
            SocketAddrV4::new(req.ciaddr, CLIENT_PORT)
        } else {
            SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
        }
    }

    fn send(r: &Reply, req: &Request, via: &Via) -> Outgoing {
        Outgoing {
            bytes: codec::build(r),
            to: Self::destination(r.kind, req, via),
        }
    }

    fn nak(req: &Request, via: &Via, why: &str) -> Outgoing {
        let mut r = Self::reply(ReplyKind::Nak, req, via);
        // A NAK through a relay is broadcast on the client's segment (RFC 2131 4.3.2).
        r.broadcast = req.broadcast || is_set(req.giaddr);
        r.message = Some(why.to_string());
        Self::send(&r, req, via)
    }

    fn lease_time_s(req: &Request, subnet: &Subnet) -> u32 {
        if req.is_pxe() {
            subnet.pxe_lease_time_s
        } else {
            subnet.lease_time_s
        }
    }

    /// An OFFER or ACK of `ip` with the subnet's and the boot options.
    fn lease_reply(&self, kind: ReplyKind, x: &Exchange<'_>, ip: Ipv4Addr) -> Reply {
        let (req, subnet, via) = (x.req, x.subnet, x.via);
        let mut r = Self::reply(kind, req, via);
        r.yiaddr = ip;
        r.ciaddr = req.ciaddr;
        r.lease_time_s = Some(Self::lease_time_s(req, subnet));
        Self::network_options(&mut r, subnet);
        self.boot_options(&mut r, req, via.local_ip);
        r
    }

    fn managed(&mut self, x: &Exchange<'_>) -> Outcome {
        let (req, subnet, via, now_ms) = (x.req, x.subnet, x.via, x.now_ms);
        let cidr = subnet.cidr;
        match req.kind {
            ClientMessage::Discover => {
                if !self.online
                    && !self.known.contains_key(&req.mac)
                    && !self.table.holds_active(cidr, req.mac, now_ms)
                {
                    return Outcome::drop(
                        "offline: only known machines and current leases are answered",
                    );
                }
                let ip = if self.online {
                    self.table.allocate(cidr, req.mac, req.requested_ip, now_ms)
                } else {
                    self.table.sticky(cidr, req.mac, now_ms)
                };
                let Some(ip) = ip else {
                    return Outcome::drop(if self.online {
                        "no free address in the subnet's dynamic ranges"
                    } else {
                        "offline: no address of this MAC to offer"
                    });
                };
                self.table.hold_offer(cidr, ip, req.mac, now_ms);
                let r = self.lease_reply(ReplyKind::Offer, x, ip);
                Outcome {
                    reply: Some(Self::send(&r, req, via)),
                    ..Outcome::default()
                }
            }
            ClientMessage::Request => {
                let ip = if let Some(sid) = req.server_id {
                    if sid != via.local_ip {
                        self.table.forget_offer(cidr, req.mac);
                        return Outcome::drop("the client chose another server");
                    }
                    match req
                        .requested_ip
                        .or(is_set(req.ciaddr).then_some(req.ciaddr))
                    {
                        Some(ip) => ip,
                        None => return Outcome::drop("REQUEST to this server names no address"),
                    }
                } else if is_set(req.ciaddr) {
                    req.ciaddr
                } else if let Some(ip) = req.requested_ip {
                    ip
                } else {
                    return Outcome::drop("REQUEST without server id, ciaddr or requested address");
                };
                self.confirm(x, ip)
            }
            ClientMessage::Decline | ClientMessage::Release => {
                if req.server_id.is_some_and(|s| s != via.local_ip) {
                    return Outcome::drop("addressed to another server");
                }
                let (ip, state, expires_ms) = if req.kind == ClientMessage::Decline {
                    let Some(ip) = req.requested_ip else {
                        return Outcome::drop("DECLINE without the declined address (option 50)");
                    };
                    let t = u64::from(subnet.lease_time_s).saturating_mul(1000);
                    (ip, LeaseState::Declined, now_ms.saturating_add(t))
                } else {
                    (req.ciaddr, LeaseState::Released, now_ms)
                };
                if !cidr.contains(ip)
                    || self.table.availability(cidr, ip, req.mac, now_ms) != Availability::Mine
                {
                    return Outcome::drop(
                        "the MAC does not hold the address it declines or releases",
                    );
                }
                let lease = Lease {
                    ip,
                    subnet: cidr,
                    mac: req.mac,
                    state,
                    start_ms: now_ms,
                    expires_ms,
                    hostname: req.hostname.clone().unwrap_or_default(),
                    rack: String::new(),
                };
                self.table.record_pending(&lease);
                Outcome {
                    commit: Some(lease),
                    ..Outcome::default()
                }
            }
            ClientMessage::Inform => {
                if !is_set(req.ciaddr) {
                    return Outcome::drop("INFORM without ciaddr");
                }
                let mut r = Self::reply(ReplyKind::Ack, req, via);
                r.ciaddr = req.ciaddr;
                Self::network_options(&mut r, subnet);
                self.boot_options(&mut r, req, via.local_ip);
                Outcome {
                    reply: Some(Self::send(&r, req, via)),
                    ..Outcome::default()
                }
            }
        }
    }

    /// A REQUEST for `ip`: ACK (with its commit) if the address is the client's or free to give, NAK
    /// if it is not the client's to have, silence while offline for an address this rack cannot vouch
    /// for.
    fn confirm(&mut self, x: &Exchange<'_>, ip: Ipv4Addr) -> Outcome {
        let (req, subnet, via, now_ms) = (x.req, x.subnet, x.via, x.now_ms);
        let cidr = subnet.cidr;
        if !cidr.contains(ip) {
            return Outcome {
                reply: Some(Self::nak(req, via, "address not on this network")),
                dropped: None,
                ..Outcome::default()
            };
        }
        match self.table.availability(cidr, ip, req.mac, now_ms) {
            Availability::Mine => {}
            Availability::Free if self.online => {}
            Availability::Free => {
                return Outcome::drop("offline: no lease of this MAC for that address");
            }
            Availability::HeldByOther => {
                return Outcome {
                    reply: Some(Self::nak(req, via, "address in use by another client")),
                    ..Outcome::default()
                };
            }
            Availability::Unassignable => {
                return Outcome {
                    reply: Some(Self::nak(
                        req,
                        via,
                        "address not handed out on this network",
                    )),
                    ..Outcome::default()
                };
            }
        }
        let t = Self::lease_time_s(req, subnet);
        let lease = Lease {
            ip,
            subnet: cidr,
            mac: req.mac,
            state: LeaseState::Bound,
            start_ms: now_ms,
            expires_ms: now_ms.saturating_add(u64::from(t).saturating_mul(1000)),
            hostname: req.hostname.clone().unwrap_or_default(),
            rack: String::new(),
        };
        // An offer of another address to this MAC is moot now.
        self.table.forget_offer(cidr, req.mac);
        self.table.record_pending(&lease);
        let r = self.lease_reply(ReplyKind::Ack, x, ip);
        Outcome {
            reply: Some(Self::send(&r, req, via)),
            commit: Some(lease),
            on_refused: Some(Self::nak(req, via, "the cluster refused the lease")),
            ..Outcome::default()
        }
    }

    /// Proxy mode, port 67: an address-less OFFER with the boot file to PXE clients' DISCOVERs.
    fn proxy_offer(&self, req: &Request, via: &Via) -> Outcome {
        if req.kind != ClientMessage::Discover {
            return Outcome::drop("proxy mode: only DISCOVERs are answered on port 67");
        }
        if !req.is_pxe() {
            return Outcome::drop("proxy mode: not a PXE client");
        }
        let mut r = Self::reply(ReplyKind::Offer, req, via);
        self.boot_options(&mut r, req, via.local_ip);
        r.pxe_discovery_control = true;
        Outcome {
            reply: Some(Self::send(&r, req, via)),
            ..Outcome::default()
        }
    }

    /// Port 4011 (the PXE boot server): an ACK with the boot file to a PXE client's REQUEST or INFORM,
    /// sent back to its source. No address, no commit.
    fn boot_server(&self, req: &Request, via: &Via) -> Outcome {
        if !matches!(req.kind, ClientMessage::Request | ClientMessage::Inform) {
            return Outcome::drop("port 4011: only REQUEST and INFORM are answered");
        }
        if !req.is_pxe() {
            return Outcome::drop("port 4011: not a PXE client");
        }
        let mut r = Self::reply(ReplyKind::Ack, req, via);
        r.ciaddr = req.ciaddr;
        self.boot_options(&mut r, req, via.local_ip);
        r.pxe_discovery_control = true;
        Outcome {
            reply: Some(Self::send(&r, req, via)),
            ..Outcome::default()
        }
    }
}

/// What a fuzz run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FuzzStats {
    /// Datagrams fed.
    pub cases: u64,
    /// Datagrams that parsed.
    pub parsed: u64,
    /// Datagrams the parser refused.
    pub refused: u64,
    /// Replies sent (including NAKs prepared for refused commits).
    pub replied: u64,
    /// Leases to commit.
    pub commits: u64,
    /// Enlistment requests.
    pub enlisted: u64,
    /// Replies that did not decode with dhcproto or lacked the request's xid or MAC: must be 0.
    pub bad_replies: u64,
}

/// The configuration the fuzzer (and the engine's tests) serve: a managed /24 on 10.20.0.0 (rack at
/// .2, gateway .1, dynamic .100-.199, reserved .2-.9), a proxy /24 on 10.30.0.0 (rack at .2) and a
/// relayed managed /16 on 10.40.0.0.
pub fn sample_config() -> BootConfig {
    let subnet = |cidr: &str, mode: SubnetMode, dynamic: &str, gateway: &str| Subnet {
        cidr: cidr.parse().unwrap_or(Cidr {
            network: Ipv4Addr::UNSPECIFIED,
            prefix: 24,
        }),
        gateway: gateway.parse().ok(),
        dns: vec![Ipv4Addr::new(10, 20, 0, 1)],
        domain: "lab.example".into(),
        dynamic: dynamic.parse().into_iter().collect(),
        reserved: "10.20.0.2-10.20.0.9".parse().into_iter().collect(),
        vlan: 0,
        mode,
        primary: Some("rack-1".into()),
        secondary: None,
        lease_time_s: 3600,
        pxe_lease_time_s: 30,
    };
    let served = |s: Subnet| ServedSubnet {
        subnet: s,
        role: crate::boot::SubnetRole::Primary,
        active: true,
    };
    BootConfig {
        subnets: vec![
            served(subnet(
                "10.20.0.0/24",
                SubnetMode::Managed,
                "10.20.0.100-10.20.0.199",
                "10.20.0.1",
            )),
            served(subnet(
                "10.30.0.0/24",
                SubnetMode::Proxy,
                "10.30.0.100-10.30.0.199",
                "10.30.0.1",
            )),
            served(subnet(
                "10.40.0.0/16",
                SubnetMode::Managed,
                "10.40.1.0-10.40.1.255",
                "10.40.0.1",
            )),
        ],
        known: (0..8u8)
            .map(|i| (Mac([0x52, 0x54, 0, 0, 0, i]), format!("m{i}")))
            .collect(),
    }
}

/// A random, mostly valid client packet; half of the REQUESTs, DECLINEs and RELEASEs are about an
/// address the engine recently offered to that MAC (`recent`), so the ACK paths are exercised too.
fn fuzz_packet(rng: &mut FuzzRng, recent: &[(Mac, Ipv4Addr)]) -> Vec<u8> {
    let kinds = [
        ClientMessage::Discover,
        ClientMessage::Request,
        ClientMessage::Decline,
        ClientMessage::Release,
        ClientMessage::Inform,
    ];
    let kind = kinds[rng.below(5) as usize];
    // 300 MACs for 100 + 256 addresses: exhaustion, reuse and NAKs all happen.
    let m = rng.below(300) as u16;
    let [a, b] = m.to_be_bytes();
    let mac = Mac([0x52, 0x54, 0, 0, a, b]);
    let mut p = ClientPacket::new(kind, rng.next() as u32, mac);
    p.broadcast = rng.below(2) == 0;
    let addr = |rng: &mut FuzzRng| match rng.below(4) {
        0 => Ipv4Addr::new(10, 20, 0, rng.byte()),
        1 => Ipv4Addr::new(10, 40, 1, rng.byte()),
        2 => Ipv4Addr::new(10, 30, 0, rng.byte()),
        _ => Ipv4Addr::from(rng.next() as u32),
    };
    if rng.below(3) == 0 {
        p.ciaddr = addr(rng);
    }
    if rng.below(4) == 0 {
        p.giaddr = Ipv4Addr::new(10, 40, 0, 1);
        p = p.with(82, vec![1, 4, b'p', b'o', b'r', b't', 2, 2, 0, 7]);
    }
    if rng.below(2) == 0 {
        p = p.with(50, addr(rng).octets().to_vec());
    }
    if rng.below(3) == 0 {
        let sid = match rng.below(3) {
            0 => Ipv4Addr::new(10, 20, 0, 2),
            1 => Ipv4Addr::new(10, 30, 0, 2),
            _ => addr(rng),
        };
        p = p.with(54, sid.octets().to_vec());
    }
    if rng.below(2) == 0 {
        let arch = [0u16, 7, 9, 11, 16, 19, 6][rng.below(7) as usize];
        p = p.with(93, arch.to_be_bytes().to_vec());
        p = p.with(60, b"PXEClient:Arch:00007:UNDI:003016".to_vec());
    }
    if rng.below(4) == 0 {
        p = p.with(77, b"iPXE".to_vec());
    }
    if rng.below(3) == 0 {
        p = p.with(12, format!("host-{m}").into_bytes());
    }
    if rng.below(3) == 0 {
        p = p.with(61, vec![1, 0x52, 0x54, 0, 0, a, b]);
    }
    p = p.with(55, vec![1, 3, 6, 15, 28, 66, 67]);
    if kind != ClientMessage::Discover && !recent.is_empty() && rng.below(2) == 0 {
        let (m, a) = recent[rng.below(recent.len() as u64) as usize];
        p.mac = m;
        p.options.retain(|(c, _)| !matches!(c, 50 | 54));
        p.ciaddr = Ipv4Addr::UNSPECIFIED;
        match rng.below(3) {
            0 => {
                p = p.with(50, a.octets().to_vec()).with(54, vec![10, 20, 0, 2]);
            }
            1 => p = p.with(50, a.octets().to_vec()),
            _ => p.ciaddr = a,
        }
    }
    p.encode()
}

/// Mutates a packet in place: byte flips, overwrites, truncation, extension, bogus options.
fn mutate(rng: &mut FuzzRng, p: &mut Vec<u8>) {
    for _ in 0..=rng.below(8) {
        let len = p.len() as u64;
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len) as usize;
                p[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len) as usize;
                p[i] = rng.byte();
            }
            2 => p.truncate(rng.below(len + 1) as usize),
            3 => {
                for _ in 0..rng.below(64) {
                    p.push(rng.byte());
                }
            }
            4 => {
                // An option with a random code and length, before the end.
                let at = (240 + rng.below(16) as usize).min(p.len());
                let code = rng.byte();
                let olen = rng.byte();
                let mut opt = vec![code, olen];
                for _ in 0..rng.below(u64::from(olen) + 2) {
                    opt.push(rng.byte());
                }
                p.splice(at..at, opt);
            }
            5 if len > 240 => {
                // Break an option's length byte.
                let i = 240 + rng.below(len - 240) as usize;
                p[i] = rng.byte();
            }
            _ => {
                // Header fields that gate parsing: op, htype, hlen.
                if let Some(b) = p.get_mut(rng.below(3) as usize) {
                    *b = [0u8, 1, 2, 6, 16, 17, 255][rng.below(7) as usize];
                }
            }
        }
    }
}

/// Feeds `cases` random and mutated datagrams through parse → [`Engine::handle`] → build, decoding
/// every reply back with dhcproto and checking its xid and MAC; commits are confirmed or refused at
/// random, the engine goes offline and back now and then. Deterministic for a seed.
pub fn fuzz(cases: u64, seed: u64) -> FuzzStats {
    let mut rng = FuzzRng(seed);
    let mut engine = Engine::new(EngineSettings::default());
    engine.set_config(sample_config());
    let vias = [
        Ipv4Addr::new(10, 20, 0, 2),
        Ipv4Addr::new(10, 30, 0, 2),
        Ipv4Addr::new(10, 99, 0, 2),
    ];
    let mut stats = FuzzStats::default();
    let mut now_ms = 1_700_000_000_000u64;
    let mut recent: Vec<(Mac, Ipv4Addr)> = Vec::new();
    for case in 0..cases {
        stats.cases += 1;
        now_ms += rng.below(20);
        let packet = match rng.below(10) {
            0 => (0..rng.below(1600)).map(|_| rng.byte()).collect(),
            1 => {
                let mut p = fuzz_packet(&mut rng, &recent);
                p.truncate(240);
                for _ in 0..rng.below(300) {
                    p.push(rng.byte());
                }
                p
            }
            2..=4 => fuzz_packet(&mut rng, &recent),
            _ => {
                let mut p = fuzz_packet(&mut rng, &recent);
                mutate(&mut rng, &mut p);
                p
            }
        };
        let parsed = codec::parse(&packet);
        match &parsed {
            Ok(_) => stats.parsed += 1,
            Err(_) => stats.refused += 1,
        }
        let via = Via {
            local_ip: vias[rng.below(3) as usize],
            port: if rng.below(5) == 0 {
                ServerPort::ProxyDhcp
            } else {
                ServerPort::Dhcp
            },
            source: SocketAddrV4::new(Ipv4Addr::new(10, 30, 0, 50), CLIENT_PORT),
        };
        let out = engine.handle(&packet, &via, now_ms);
        for o in out.reply.iter().chain(out.on_refused.iter()) {
            stats.replied += 1;
            let good = match (&parsed, codec::decode_reply(&o.bytes)) {
                (Ok(req), Some(m)) => m.xid() == req.xid && m.chaddr() == req.mac.0,
                _ => false,
            };
            if !good {
                stats.bad_replies += 1;
            }
        }
        if let (Ok(req), Some(o)) = (&parsed, &out.reply) {
            let offered = codec::decode_reply(&o.bytes).map(|m| m.yiaddr());
            if let Some(a) = offered.filter(|a| !a.is_unspecified()) {
                if recent.len() >= 64 {
                    recent.swap_remove(rng.below(64) as usize);
                }
                recent.push((req.mac, a));
            }
        }
        if out.enlist.is_some() {
            stats.enlisted += 1;
        }
        if let Some(lease) = &out.commit {
            stats.commits += 1;
            if rng.below(10) == 0 {
                engine.refused(lease.ip, lease.mac);
            } else {
                engine.committed(lease);
            }
        }
        if case % 1000 == 999 {
            engine.expire(now_ms);
        }
        if rng.below(20_000) == 0 {
            engine.set_online(rng.below(2) == 0);
        }
    }
    stats
}

#[cfg(test)]
mod tests;
