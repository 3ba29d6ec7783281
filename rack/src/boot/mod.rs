//! The boot path a rack serves on its boot networks (issue 11: DHCP; TFTP, HTTP and images follow).
//!
//! One module per protocol, each split into a pure codec (parse/build, no I/O, fuzzed) and a server
//! (sockets, timers) that asks a small lookup for answers — smee's layout. What the rack serves from is
//! only what a region told it over the session ([`BootConfig`], leases) and what it recorded itself (its
//! lease journal).
//!
//! - [`dhcp`] — DHCPv4: `codec` (packets ↔ typed requests/replies, on dhcproto), `engine` (the decision:
//!   which address, which options, which boot file, what to commit, what to enlist — pure, no I/O),
//!   `server` (UDP sockets bound to the boot interfaces, ports 67 and 4011, rate limits).
//! - [`leases`] — the rack's lease table: the region's leases of the subnets it serves, its own offers and
//!   not-yet-committed leases; picks addresses (sticky per MAC), expires offers.
//! - [`service`] — the glue: feeds region messages into the engine, batches lease commits to the region,
//!   holds ACKs until their batch is committed, journals renewals while cut off from every region and
//!   replays them when a session is back.
//! - [`journal`] — the fsynced, append-only journal of leases acknowledged while offline.
//! - [`tftp`] — TFTP (issue 12): a read-only server for the boot files under one root (`codec`, `server`).
//! - [`http`] — HTTP boot (issue 12): iPXE scripts from the region's boot intents, blobs from the cache.
//! - [`link`] — the boot path's requests on the region session (boot intents and agent calls, correlated
//!   by id) and [`events`] — boot steps batched to the region as machine events.
//! - [`agent_api`] — the in-band agent's HTTPS API (issue 13): calls relayed to the region over the link.

pub mod agent_api;
pub mod cache;
pub mod dhcp;
pub mod events;
pub mod fetch;
pub mod http;
pub mod journal;
pub mod leases;
pub mod link;
mod rng;
pub mod service;
pub mod tftp;

use ingot_common::net::Subnet;
pub use ingot_common::net::SubnetRole;
use ingot_common::Mac;
use std::collections::HashMap;

/// A subnet as this rack serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedSubnet {
    /// The subnet's settings, as the region validated them.
    pub subnet: Subnet,
    /// This rack's role on it.
    pub role: SubnetRole,
    /// Whether this rack answers on it now (the region decides, from recorded heartbeats).
    pub active: bool,
}

/// What the region told this rack to serve (the `BootConfig` session message in domain types); replaced
/// whole on every new message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootConfig {
    /// Every subnet this rack is primary or secondary of.
    pub subnets: Vec<ServedSubnet>,
    /// Every MAC the cluster knows, with its machine's system id.
    pub known: HashMap<Mac, String>,
}

/// Why a boot interface's IPv4 address could not be found (each server maps it to its own startup error).
#[derive(Debug, thiserror::Error)]
pub enum InterfaceError {
    /// The interfaces could not be listed.
    #[error("listing the host's network interfaces failed: {source}")]
    Interfaces {
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// No IPv4 address on the interface (if-addrs lists only interfaces with an address, so this is
    /// also what a missing interface looks like).
    #[error("boot interface {interface} has no IPv4 address")]
    NoIpv4 {
        /// The interface asked for.
        interface: String,
    },
}

/// The first IPv4 address of `interface`: the rack's address on that boot network, which DHCP names as
/// its server and TFTP and HTTP bind. One lookup for the three servers.
pub fn interface_ipv4(interface: &str) -> Result<std::net::Ipv4Addr, InterfaceError> {
    let all = if_addrs::get_if_addrs().map_err(|source| InterfaceError::Interfaces { source })?;
    all.iter()
        .filter(|i| i.name == interface)
        .find_map(|i| match &i.addr {
            if_addrs::IfAddr::V4(v4) => Some(v4.ip),
            _ => None,
        })
        .ok_or_else(|| InterfaceError::NoIpv4 {
            interface: interface.to_string(),
        })
}
