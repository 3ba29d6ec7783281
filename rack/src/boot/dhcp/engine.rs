//! PLACEHOLDER (helper "engine" writes the real engine; dropped at merge). Same API, no decisions: every
//! packet is dropped.

use ingot_common::net::{Cidr, ClientArch, Lease};
use ingot_common::Mac;
use std::net::{Ipv4Addr, SocketAddrV4};

/// Settings of the engine.
#[derive(Debug, Clone, Default)]
pub struct EngineSettings {
    /// Boot file names per architecture.
    pub boot_files: BootFiles,
    /// Boot HTTP port used in iPXE URLs.
    pub http_port: u16,
    /// Rate limit per MAC.
    pub max_packets_per_mac_per_s: u32,
}

/// Boot file names per client architecture.
#[derive(Debug, Clone, Default)]
pub struct BootFiles {
    /// Legacy BIOS PXE.
    pub bios: String,
    /// UEFI x86-64 PXE.
    pub uefi_x64: String,
    /// UEFI arm64 PXE, where an image exists.
    pub uefi_arm64: Option<String>,
}

/// Which port a packet came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerPort {
    /// Port 67.
    Dhcp,
    /// Port 4011.
    ProxyDhcp,
}

/// Where a packet came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via {
    /// The receiving interface's address.
    pub local_ip: Ipv4Addr,
    /// The receiving port.
    pub port: ServerPort,
    /// The sender.
    pub source: SocketAddrV4,
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The encoded packet.
    pub bytes: Vec<u8>,
    /// Where to.
    pub to: SocketAddrV4,
}

/// An unknown MAC to enlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnlistRequest {
    /// The MAC.
    pub mac: Mac,
    /// Its architecture.
    pub arch: ClientArch,
    /// The subnet it booted on.
    pub subnet: Cidr,
}

/// What to do about one packet.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The reply.
    pub reply: Option<Outgoing>,
    /// The lease to commit before the reply.
    pub commit: Option<Lease>,
    /// The NAK to send if the commit is refused.
    pub on_refused: Option<Outgoing>,
    /// An enlistment.
    pub enlist: Option<EnlistRequest>,
    /// Why the packet was dropped.
    pub dropped: Option<&'static str>,
}

/// The placeholder engine.
#[derive(Debug, Default)]
pub struct Engine;

impl Engine {
    /// A new engine.
    pub fn new(_settings: EngineSettings) -> Engine {
        Engine
    }
    /// New configuration.
    pub fn set_config(&mut self, _config: crate::boot::BootConfig) {}
    /// New leases.
    pub fn set_leases(&mut self, _subnet: Cidr, _full: bool, _leases: Vec<Lease>) {}
    /// Whether a region session is up.
    pub fn set_online(&mut self, _online: bool) {}
    /// Decides about one packet.
    pub fn handle(&mut self, _packet: &[u8], _via: &Via, _now_ms: u64) -> Outcome {
        Outcome {
            reply: None,
            commit: None,
            on_refused: None,
            enlist: None,
            dropped: Some("placeholder"),
        }
    }
    /// A lease was committed.
    pub fn committed(&mut self, _lease: &Lease) {}
    /// A lease was refused.
    pub fn refused(&mut self, _ip: Ipv4Addr, _mac: Mac) {}
    /// Expires offers.
    pub fn expire(&mut self, _now_ms: u64) {}
    /// Leases held.
    pub fn lease_count(&self) -> usize {
        0
    }
}
