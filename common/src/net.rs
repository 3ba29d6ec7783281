//! Boot networks: subnets the racks serve and the DHCP leases handed out on them — the records the region
//! replicates and the rack serves from. Pure data and parsing: no sockets here (the DHCP codec and server
//! live in `ingot-rack`'s `boot` module).
//!
//! One vocabulary for both ends: the region validates a [`Subnet`] when it is written, the rack receives the
//! same struct over its session; a [`Lease`] is what a rack commits and what `ingot leases list` shows.

use crate::{DomainError, Mac};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network in CIDR notation (`10.20.0.0/24`): a subnet's identity and name.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    /// The network address (host bits zero: `10.20.0.5/24` is refused, not silently truncated).
    pub network: Ipv4Addr,
    /// Prefix length, 8..=30 (smaller networks leave no room for hosts, larger are not boot networks).
    pub prefix: u8,
}

impl Cidr {
    /// The netmask (`/24` → 255.255.255.0), for DHCP option 1.
    pub fn mask(&self) -> Ipv4Addr {
        // A prefix beyond /32 (only from unchecked input: see `check`) gives an empty mask, never a panic.
        Ipv4Addr::from(
            32u32
                .checked_sub(u32::from(self.prefix))
                .and_then(|host_bits| u32::MAX.checked_shl(host_bits))
                .unwrap_or(0),
        )
    }
    /// Whether `ip` lies inside the network (network and broadcast addresses included).
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & u32::from(self.mask()) == u32::from(self.network)
    }
    /// The broadcast address, for DHCP option 28.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !u32::from(self.mask()))
    }
    /// Whether two networks share an address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not in CIDR notation (e.g. 10.20.0.0/24)"))?;
        let network: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| format!("{prefix:?} is not a prefix length"))?;
        if !(8..=30).contains(&prefix) {
            return Err(format!("prefix /{prefix} is outside /8../30"));
        }
        let c = Cidr { network, prefix };
        if u32::from(network) & !u32::from(c.mask()) != 0 {
            return Err(format!(
                "{s} has host bits set: the network is {}/{prefix}",
                Ipv4Addr::from(u32::from(network) & u32::from(c.mask()))
            ));
        }
        Ok(c)
    }
}

/// An inclusive range of IPv4 addresses (`10.20.0.100-10.20.0.199`): a subnet's dynamic pool or a reserved
/// block.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Range {
    /// First address of the range.
    pub start: Ipv4Addr,
    /// Last address of the range (inclusive; `start <= end`).
    pub end: Ipv4Addr,
}

impl Ipv4Range {
    /// Whether `ip` is inside the range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.start <= ip && ip <= self.end
    }
    /// Whether two ranges share an address.
    pub fn overlaps(&self, other: &Ipv4Range) -> bool {
        self.start <= other.end && other.start <= self.end
    }
    /// How many addresses the range holds.
    pub fn len(&self) -> u64 {
        u64::from(u32::from(self.end)) - u64::from(u32::from(self.start)) + 1
    }
    /// Never true (a range holds at least one address); for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl fmt::Display for Ipv4Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

impl FromStr for Ipv4Range {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let start: Ipv4Addr = a
            .trim()
            .parse()
            .map_err(|_| format!("{a:?} is not an IPv4 address (a range is FIRST-LAST)"))?;
        let end: Ipv4Addr = b
            .trim()
            .parse()
            .map_err(|_| format!("{b:?} is not an IPv4 address (a range is FIRST-LAST)"))?;
        if start > end {
            return Err(format!("{s}: the first address is after the last"));
        }
        Ok(Ipv4Range { start, end })
    }
}

/// How a rack serves a subnet. One enum for API, log, rack and CLI; its serde form is the wire spelling.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "lowercase")]
pub enum SubnetMode {
    /// Ingot hands out addresses from the dynamic ranges and boot options (full DHCP server).
    #[default]
    Managed,
    /// Another DHCP server hands out addresses; Ingot answers PXE clients with boot options only (ProxyDHCP,
    /// ports 67 and 4011), never an address.
    Proxy,
    /// Ingot does not answer on this subnet (it is still known, e.g. for its leases' history).
    Off,
}

impl SubnetMode {
    /// The wire and CLI spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            SubnetMode::Managed => "managed",
            SubnetMode::Proxy => "proxy",
            SubnetMode::Off => "off",
        }
    }
}

impl fmt::Display for SubnetMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SubnetMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "managed" => Ok(SubnetMode::Managed),
            "proxy" => Ok(SubnetMode::Proxy),
            "off" => Ok(SubnetMode::Off),
            _ => Err(format!("{s:?} is not a subnet mode: managed, proxy or off")),
        }
    }
}

/// A rack's role on a subnet: one enum for the region (which decides who answers) and the rack (which is
/// told). Its `as_str` is the wire spelling of `SubnetConfig.role`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum SubnetRole {
    /// Serves the subnet while its session is alive (and it announced DHCP).
    Primary,
    /// Serves the subnet while the primary does not.
    Secondary,
}

impl SubnetRole {
    /// The wire spelling (`primary`, `secondary`).
    pub fn as_str(&self) -> &'static str {
        match self {
            SubnetRole::Primary => "primary",
            SubnetRole::Secondary => "secondary",
        }
    }
}

impl FromStr for SubnetRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "primary" => Ok(SubnetRole::Primary),
            "secondary" => Ok(SubnetRole::Secondary),
            _ => Err(format!("{s:?} is not a role: primary or secondary")),
        }
    }
}

/// A boot network: what a rack needs to answer DHCP on it. Identified by its CIDR (unique, never
/// overlapping another subnet's).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Subnet {
    /// The network; also the subnet's name in API and CLI.
    pub cidr: Cidr,
    /// Default router handed to clients (option 3); never inside a dynamic or reserved range.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// DNS servers handed to clients (option 6), in order.
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    /// DNS domain handed to clients (option 15); empty: none.
    #[serde(default)]
    pub domain: String,
    /// Ranges addresses are handed out from (managed mode), inside the CIDR, not overlapping each other or
    /// a reserved range.
    #[serde(default)]
    pub dynamic: Vec<Ipv4Range>,
    /// Ranges never handed out (static hosts, switches), inside the CIDR.
    #[serde(default)]
    pub reserved: Vec<Ipv4Range>,
    /// 802.1Q VLAN id the network runs on (0: untagged); informational for racks binding interfaces.
    #[serde(default)]
    pub vlan: u16,
    /// How racks serve it.
    #[serde(default)]
    pub mode: SubnetMode,
    /// Rack that serves it while its session is alive.
    #[serde(default)]
    pub primary: Option<String>,
    /// Rack that serves it while the primary's session is gone (HA).
    #[serde(default)]
    pub secondary: Option<String>,
    /// Lease time for ordinary clients, seconds.
    pub lease_time_s: u32,
    /// Lease time for PXE clients (firmware and iPXE: they renew or move on in seconds), seconds.
    pub pxe_lease_time_s: u32,
}

/// The service a rack names in its session Hello when it serves DHCP (it was given boot interfaces): the
/// region lets a primary answer on its subnets only then.
pub const DHCP_SERVICE: &str = "dhcp";
/// The service a rack that serves TFTP on its boot interfaces announces in its session's `Hello`.
pub const TFTP_SERVICE: &str = "tftp";

/// Default lease time (1 h), as MAAS and Kea use.
pub const DEFAULT_LEASE_TIME_S: u32 = 3600;
/// Default lease time for PXE clients (30 s): a firmware's address is needed only until the OS's own DHCP
/// client asks again.
pub const DEFAULT_PXE_LEASE_TIME_S: u32 = 30;

/// What a lease records: an address bound to a MAC, or an address taken out of use.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    /// The client holds the address until `expires_ms` (an ACK was sent).
    #[default]
    Bound,
    /// The client gave the address back (DHCPRELEASE); it stays the MAC's sticky choice.
    Released,
    /// A client declined the address (DHCPDECLINE: someone else answers ARP for it); not handed out until
    /// `expires_ms`.
    Declined,
}

impl LeaseState {
    /// The wire and CLI spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            LeaseState::Bound => "bound",
            LeaseState::Released => "released",
            LeaseState::Declined => "declined",
        }
    }
}

impl FromStr for LeaseState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bound" => Ok(LeaseState::Bound),
            "released" => Ok(LeaseState::Released),
            "declined" => Ok(LeaseState::Declined),
            _ => Err(format!(
                "{s:?} is not a lease state: bound, released or declined"
            )),
        }
    }
}

/// One address on one subnet: the replicated record racks commit (in batches) and serve from.
/// Identified by `ip` (subnets never overlap, so an address belongs to one subnet).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The address.
    pub ip: Ipv4Addr,
    /// The subnet it belongs to.
    pub subnet: Cidr,
    /// The client's hardware address (for `Declined`: the client that declined it).
    pub mac: Mac,
    /// Bound, released or declined.
    pub state: LeaseState,
    /// When the client was last given it (ms since the epoch, the rack's clock).
    pub start_ms: u64,
    /// When it runs out (ms since the epoch, the rack's clock).
    pub expires_ms: u64,
    /// The hostname the client sent (option 12), bounded; empty when none.
    #[serde(default)]
    pub hostname: String,
    /// The rack that committed it last.
    #[serde(default)]
    pub rack: String,
}

/// Client architectures of DHCP option 93 (RFC 4578, IANA "Processor Architecture Types") that choose a
/// boot file. One enum for rack, log and events.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ClientArch {
    /// No option 93, or 0: legacy BIOS PXE.
    #[default]
    Bios,
    /// 7 or 9: UEFI x86-64 PXE.
    UefiX64,
    /// 11: UEFI arm64 PXE.
    UefiArm64,
    /// 16: UEFI x86-64 HTTP boot (wants a URL, not a TFTP path).
    UefiX64Http,
    /// 19: UEFI arm64 HTTP boot.
    UefiArm64Http,
    /// Any other value: answered with no boot file.
    Other,
}

impl ClientArch {
    /// The architecture of an option-93 value.
    pub fn from_code(code: u16) -> ClientArch {
        match code {
            0 => ClientArch::Bios,
            7 | 9 => ClientArch::UefiX64,
            11 => ClientArch::UefiArm64,
            16 => ClientArch::UefiX64Http,
            19 => ClientArch::UefiArm64Http,
            _ => ClientArch::Other,
        }
    }
    /// The spelling in events and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            ClientArch::Bios => "bios",
            ClientArch::UefiX64 => "uefi-x64",
            ClientArch::UefiArm64 => "uefi-arm64",
            ClientArch::UefiX64Http => "uefi-x64-http",
            ClientArch::UefiArm64Http => "uefi-arm64-http",
            ClientArch::Other => "other",
        }
    }
    /// The machine architecture it implies (`amd64`, `arm64`), as machines record it.
    pub fn machine_arch(&self) -> &'static str {
        match self {
            ClientArch::UefiArm64 | ClientArch::UefiArm64Http => "arm64",
            _ => "amd64",
        }
    }
}

impl FromStr for ClientArch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [
            ClientArch::Bios,
            ClientArch::UefiX64,
            ClientArch::UefiArm64,
            ClientArch::UefiX64Http,
            ClientArch::UefiArm64Http,
            ClientArch::Other,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
        .ok_or_else(|| format!("{s:?} is not a client architecture"))
    }
}

/// Parses a field that must be an IPv4 address, naming it on failure.
pub fn parse_ipv4(field: &str, s: &str) -> Result<Ipv4Addr, DomainError> {
    s.trim()
        .parse()
        .map_err(|_| DomainError::invalid(field, format!("{s:?} is not an IPv4 address")))
}

/// Most DNS servers a subnet hands out: DHCP option 6 carries at most 63 addresses in one option, and
/// no client uses more than a few; 16 is generous.
pub const MAX_DNS_SERVERS: usize = 16;
/// Most dynamic (and, separately, reserved) ranges of one subnet: every range is checked against every
/// other on each write and every DHCP answer may walk them, so they stay few.
pub const MAX_RANGES: usize = 64;
/// Most subnets a cluster holds: each write checks the new one against all others for overlap, and every
/// rack session's boot configuration carries its racks' subnets.
pub const MAX_SUBNETS: usize = 4096;
/// Longest DNS domain (RFC 1035: 253 characters in text form).
pub const MAX_DOMAIN_LEN: usize = 253;
/// Largest 802.1Q VLAN id (4095 is reserved).
pub const MAX_VLAN: u16 = 4094;
/// Shortest lease of ordinary clients (s): shorter ones make every client renew all the time, and every
/// renewal is a replicated write.
pub const MIN_LEASE_TIME_S: u32 = 60;
/// Longest lease of ordinary clients (s): 30 days; a machine that left keeps its address no longer.
pub const MAX_LEASE_TIME_S: u32 = 30 * 24 * 3600;
/// Shortest PXE lease (s): a firmware needs its address for the few seconds of its download.
pub const MIN_PXE_LEASE_TIME_S: u32 = 10;
/// Longest PXE lease (s): one day.
pub const MAX_PXE_LEASE_TIME_S: u32 = 24 * 3600;
/// Longest text of a CIDR, address or range a request may carry (`255.255.255.255-255.255.255.255` is
/// 31 bytes): longer text is refused before it is parsed or quoted in an error.
pub const MAX_ADDRESS_TEXT: usize = 64;

/// Fails unless `s` is at most [`MAX_ADDRESS_TEXT`] bytes (so an error may quote it).
fn short(field: &str, s: &str) -> Result<(), DomainError> {
    crate::validate::bytes(field, s, MAX_ADDRESS_TEXT)
}

/// Parses a field that must be a CIDR (`10.20.0.0/24`, host bits zero, prefix /8../30), naming it on
/// failure.
pub fn parse_cidr(field: &str, s: &str) -> Result<Cidr, DomainError> {
    short(field, s)?;
    s.trim().parse().map_err(|e| DomainError::invalid(field, e))
}

/// Parses a field that must be an address range (`FIRST-LAST`, or one address), naming it on failure.
pub fn parse_range(field: &str, s: &str) -> Result<Ipv4Range, DomainError> {
    short(field, s)?;
    s.parse().map_err(|e| DomainError::invalid(field, e))
}

impl SubnetMode {
    /// Parses the wire spelling; an empty value is the default ([`SubnetMode::Managed`]).
    pub fn parse(field: &str, s: &str) -> Result<SubnetMode, DomainError> {
        short(field, s)?;
        if s.is_empty() {
            return Ok(SubnetMode::default());
        }
        s.parse().map_err(|e| DomainError::invalid(field, e))
    }
}

impl Cidr {
    /// Fails unless the prefix is /8../30 and the host bits are zero (what parsing guarantees; checked
    /// again for a value that arrived already structured, e.g. from the log).
    pub fn check(&self, field: &str) -> Result<(), DomainError> {
        self.to_string()
            .parse::<Cidr>()
            .map(|_| ())
            .map_err(|e| DomainError::invalid(field, e))
    }
}

/// Whether `s` is a DNS name: dot-separated labels of 1-63 letters, digits or '-' (not starting or
/// ending with '-'), at most [`MAX_DOMAIN_LEN`] bytes, no trailing dot.
fn dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_DOMAIN_LEN
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

impl Subnet {
    /// Checks every rule that needs no other state, naming the field at fault (`dynamic[1]`,
    /// `gateway`, `pxe_lease_time_s`): the API edge runs it to fail fast and the apply step runs it again
    /// as the authority. What needs state — no overlap with another subnet, the racks exist — is
    /// checked by the apply step.
    ///
    /// Rules: the CIDR is a network (host bits zero, /8../30); every dynamic and reserved range lies
    /// inside it and holds neither its network nor its broadcast address, and no two ranges share an
    /// address; the gateway lies inside it, is neither the network nor the broadcast address and is
    /// in no range; at most [`MAX_DNS_SERVERS`] DNS servers (unicast addresses) and [`MAX_RANGES`]
    /// ranges of each kind; the domain is empty or a DNS name; the VLAN is 0..=[`MAX_VLAN`]; rack
    /// names are DNS labels, a secondary needs a primary and differs from it; lease times are within
    /// [`MIN_LEASE_TIME_S`]..=[`MAX_LEASE_TIME_S`] and [`MIN_PXE_LEASE_TIME_S`]..=[`MAX_PXE_LEASE_TIME_S`].
    pub fn validate(&self) -> Result<(), DomainError> {
        let c = self.cidr;
        c.check("cidr")?;
        let (network, broadcast) = (c.network, c.broadcast());
        let mut all: Vec<(String, Ipv4Range)> = Vec::new();
        for (kind, ranges) in [("dynamic", &self.dynamic), ("reserved", &self.reserved)] {
            crate::validate::entries(kind, ranges.len(), MAX_RANGES)?;
            for (i, r) in ranges.iter().enumerate() {
                let field = format!("{kind}[{i}]");
                if r.start > r.end {
                    return Err(DomainError::invalid(
                        field,
                        format!("{r}: the first address is after the last"),
                    ));
                }
                if !c.contains(r.start) || !c.contains(r.end) {
                    return Err(DomainError::invalid(
                        field,
                        format!("{r} is not inside {c}"),
                    ));
                }
                for (what, ip) in [("network", network), ("broadcast", broadcast)] {
                    if r.contains(ip) {
                        return Err(DomainError::invalid(
                            field,
                            format!("{r} holds {ip}, the {what} address of {c}; start after it and end before the broadcast address"),
                        ));
                    }
                }
                if let Some((other, o)) = all.iter().find(|(_, o)| o.overlaps(r)) {
                    return Err(DomainError::invalid(
                        field,
                        format!("{r} overlaps {other} ({o}); ranges may not share an address"),
                    ));
                }
                all.push((field, *r));
            }
        }
        if let Some(g) = self.gateway {
            if !c.contains(g) {
                return Err(DomainError::invalid(
                    "gateway",
                    format!("{g} is not inside {c}"),
                ));
            }
            if g == network || g == broadcast {
                return Err(DomainError::invalid(
                    "gateway",
                    format!("{g} is the network or broadcast address of {c}, not a host"),
                ));
            }
            if let Some((field, r)) = all.iter().find(|(_, r)| r.contains(g)) {
                return Err(DomainError::invalid(
                    "gateway",
                    format!("{g} is inside {field} ({r}): take it out of the range, or pick another gateway"),
                ));
            }
        }
        crate::validate::entries("dns", self.dns.len(), MAX_DNS_SERVERS)?;
        for (i, d) in self.dns.iter().enumerate() {
            if d.is_unspecified() || d.is_broadcast() || d.is_multicast() {
                return Err(DomainError::invalid(
                    format!("dns[{i}]"),
                    format!("{d} is not the address of a DNS server"),
                ));
            }
        }
        if !self.domain.is_empty() && !dns_name(&self.domain) {
            crate::validate::bytes("domain", &self.domain, MAX_DOMAIN_LEN)?;
            return Err(DomainError::invalid(
                "domain",
                format!("'{}' is not a DNS name (labels of letters, digits and '-', separated by dots, e.g. lab.example)", self.domain.escape_debug()),
            ));
        }
        if self.vlan > MAX_VLAN {
            return Err(DomainError::invalid(
                "vlan",
                format!(
                    "{} is not a VLAN id: use 0 (untagged) to {MAX_VLAN}",
                    self.vlan
                ),
            ));
        }
        for (field, rack) in [("primary", &self.primary), ("secondary", &self.secondary)] {
            if let Some(r) = rack {
                crate::validate::dns_label(field, r)?;
            }
        }
        if self.secondary.is_some() && self.primary.is_none() {
            return Err(DomainError::invalid(
                "secondary",
                "a secondary rack needs a primary rack: set the primary (or make this rack the primary)",
            ));
        }
        if self.secondary.is_some() && self.secondary == self.primary {
            return Err(DomainError::invalid(
                "secondary",
                "the secondary rack is the primary rack too: name another rack, or none",
            ));
        }
        let bounded = |field: &str, v: u32, min: u32, max: u32| {
            if (min..=max).contains(&v) {
                Ok(())
            } else {
                Err(DomainError::invalid(
                    field,
                    format!("{v} s is outside {min}..={max} s"),
                ))
            }
        };
        bounded(
            "lease_time_s",
            self.lease_time_s,
            MIN_LEASE_TIME_S,
            MAX_LEASE_TIME_S,
        )?;
        bounded(
            "pxe_lease_time_s",
            self.pxe_lease_time_s,
            MIN_PXE_LEASE_TIME_S,
            MAX_PXE_LEASE_TIME_S,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_and_ranges_parse_and_refuse_what_they_should() {
        let c: Cidr = "10.20.0.0/24".parse().expect("cidr");
        assert_eq!(c.mask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(c.broadcast(), Ipv4Addr::new(10, 20, 0, 255));
        assert!(c.contains(Ipv4Addr::new(10, 20, 0, 7)));
        assert!(!c.contains(Ipv4Addr::new(10, 20, 1, 7)));
        assert!("10.20.0.5/24".parse::<Cidr>().is_err());
        assert!("10.20.0.0/31".parse::<Cidr>().is_err());
        assert!("10.20.0.0".parse::<Cidr>().is_err());
        let r: Ipv4Range = "10.20.0.100-10.20.0.199".parse().expect("range");
        assert_eq!(r.len(), 100);
        assert!("10.20.0.9-10.20.0.2".parse::<Ipv4Range>().is_err());
        assert_eq!("10.20.0.9".parse::<Ipv4Range>().expect("single").len(), 1);
        assert_eq!(ClientArch::from_code(7), ClientArch::UefiX64);
        assert_eq!("uefi-x64".parse::<ClientArch>(), Ok(ClientArch::UefiX64));
    }

    fn lab() -> Subnet {
        Subnet {
            cidr: "10.20.0.0/24".parse().expect("cidr"),
            gateway: Some(Ipv4Addr::new(10, 20, 0, 1)),
            dns: vec![Ipv4Addr::new(10, 20, 0, 1)],
            domain: "lab.example".into(),
            dynamic: vec!["10.20.0.100-10.20.0.199".parse().expect("range")],
            reserved: vec!["10.20.0.2-10.20.0.9".parse().expect("range")],
            vlan: 0,
            mode: SubnetMode::Managed,
            primary: Some("rack-1".into()),
            secondary: Some("rack-2".into()),
            lease_time_s: DEFAULT_LEASE_TIME_S,
            pxe_lease_time_s: DEFAULT_PXE_LEASE_TIME_S,
        }
    }

    /// The field `f` makes `validate` name.
    fn refused(f: impl FnOnce(&mut Subnet)) -> String {
        let mut s = lab();
        f(&mut s);
        let e = s.validate().expect_err("refused");
        assert_eq!(e.code, crate::ErrorCode::InvalidArgument, "{e:?}");
        let field = e.field.clone().expect("field");
        assert!(e.message.starts_with(&field), "{e:?}");
        field
    }

    fn range(s: &str) -> Ipv4Range {
        s.parse().expect("range")
    }

    #[test]
    fn a_subnet_is_validated_field_by_field() {
        lab().validate().expect("the lab subnet is valid");
        let ip = |s: &str| s.parse::<Ipv4Addr>().expect("ip");
        assert_eq!(
            refused(|s| s.cidr = Cidr {
                network: ip("10.20.0.5"),
                prefix: 24
            }),
            "cidr"
        );
        assert_eq!(refused(|s| s.cidr.prefix = 31), "cidr");
        assert_eq!(
            refused(|s| s.dynamic[0] = range("10.20.1.1-10.20.1.9")),
            "dynamic[0]"
        );
        assert_eq!(
            refused(|s| s.dynamic[0] = range("10.20.0.200-10.20.0.255")),
            "dynamic[0]"
        );
        assert_eq!(
            refused(|s| s.reserved[0] = range("10.20.0.0-10.20.0.9")),
            "reserved[0]"
        );
        assert_eq!(
            refused(|s| s.dynamic[0] = Ipv4Range {
                start: ip("10.20.0.9"),
                end: ip("10.20.0.2")
            }),
            "dynamic[0]"
        );
        assert_eq!(
            refused(|s| s.reserved.push(range("10.20.0.150-10.20.0.160"))),
            "reserved[1]"
        );
        assert_eq!(
            refused(|s| s.dynamic.push(range("10.20.0.199-10.20.0.210"))),
            "dynamic[1]"
        );
        assert_eq!(refused(|s| s.gateway = Some(ip("10.20.1.1"))), "gateway");
        assert_eq!(refused(|s| s.gateway = Some(ip("10.20.0.0"))), "gateway");
        assert_eq!(refused(|s| s.gateway = Some(ip("10.20.0.5"))), "gateway");
        assert_eq!(refused(|s| s.gateway = Some(ip("10.20.0.120"))), "gateway");
        assert_eq!(refused(|s| s.dns = vec![ip("10.0.0.1"); 17]), "dns");
        assert_eq!(refused(|s| s.dns.push(ip("0.0.0.0"))), "dns[1]");
        assert_eq!(refused(|s| s.domain = "bad domain".into()), "domain");
        assert_eq!(refused(|s| s.domain = "a".repeat(254)), "domain");
        assert_eq!(refused(|s| s.domain = "x.-y".into()), "domain");
        assert_eq!(
            refused(|s| s.dynamic = vec![range("10.20.0.100"); 65]),
            "dynamic"
        );
        assert_eq!(refused(|s| s.vlan = 4095), "vlan");
        assert_eq!(refused(|s| s.primary = Some("Rack 1".into())), "primary");
        assert_eq!(refused(|s| s.primary = None), "secondary");
        assert_eq!(
            refused(|s| s.secondary = Some("rack-1".into())),
            "secondary"
        );
        assert_eq!(refused(|s| s.lease_time_s = 59), "lease_time_s");
        assert_eq!(refused(|s| s.lease_time_s = 30 * 86400 + 1), "lease_time_s");
        assert_eq!(refused(|s| s.pxe_lease_time_s = 9), "pxe_lease_time_s");
        assert_eq!(refused(|s| s.pxe_lease_time_s = 86401), "pxe_lease_time_s");

        // What is allowed: no gateway, no ranges, a bare primary, a one-address range, the bounds.
        let mut s = lab();
        s.gateway = None;
        s.dynamic.clear();
        s.reserved = vec![range("10.20.0.254")];
        s.secondary = None;
        s.domain = String::new();
        s.vlan = 4094;
        s.lease_time_s = MIN_LEASE_TIME_S;
        s.pxe_lease_time_s = MAX_PXE_LEASE_TIME_S;
        s.validate().expect("valid");
    }

    #[test]
    fn text_fields_parse_naming_the_field_and_never_echo_long_input() {
        assert_eq!(parse_cidr("cidr", "10.20.0.0/24").map(|c| c.prefix), Ok(24));
        let e = parse_cidr("cidr", "10.20.0.1/24").expect_err("host bits");
        assert_eq!(e.field.as_deref(), Some("cidr"));
        assert!(e.message.contains("10.20.0.0/24"), "{}", e.message);
        let long = "1".repeat(10_000);
        let e = parse_range("dynamic[3]", &long).expect_err("long");
        assert_eq!(e.field.as_deref(), Some("dynamic[3]"));
        assert!(e.message.len() < 200, "{}", e.message);
        assert_eq!(SubnetMode::parse("mode", ""), Ok(SubnetMode::Managed));
        assert_eq!(SubnetMode::parse("mode", "proxy"), Ok(SubnetMode::Proxy));
        assert_eq!(
            SubnetMode::parse("mode", "dhcp").map_err(|e| e.field),
            Err(Some("mode".to_string()))
        );
    }
}
