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
        Ipv4Addr::from(
            u32::MAX
                .checked_shl(32 - u32::from(self.prefix))
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
}
