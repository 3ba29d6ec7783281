//! Ingot's domain vocabulary, free of I/O: no tokio, no network, no storage.
//!
//! Everything here is shared by the region (which stores and applies it), the CLI and tests:
//! - [`mac`]: MAC addresses, parsed from every notation operators paste and printed one way.
//! - [`model`]: machines, zones, regions — the replicated records.
//! - [`image`]: boot images, content-addressed blobs, and what a MAC should boot ([`image::BootIntent`]).
//! - [`net`]: boot networks — subnets, leases, PXE client architectures — shared by region and rack.
//! - [`lifecycle`]: the machine transition table — the only source of truth for legal actions.
//! - [`validate`]: the field rules every write must pass, each failure naming its field.
//! - [`error`]: [`error::DomainError`], the error a command's apply returns, mapped to a gRPC status.
//! - [`power`]: typed, validated power-driver parameters (IPMI, Redfish, webhook, manual, file), one parser for region and rack.
//! - [`pki`]: the cluster CA: create it, sign CSRs, read identities back from certificates.
//! - [`secret`]: bearer and join tokens: generated at random, stored only as hashes.
//! - [`tagexpr`]: tag definitions — expressions over a machine's inventory, compiled once, evaluated fast.
//! - [`constraints`]: what an allocation asks for (arch, CPU, memory, storage, tags, zones, pools) and
//!   which machines fit, with the first unmet constraint in words for dry runs.

pub mod agent;
pub mod constraints;
pub mod error;
pub mod image;
pub mod lifecycle;
pub mod mac;
pub mod model;
pub mod net;
pub mod pki;
pub mod power;
pub mod secret;
pub mod tagexpr;
pub mod validate;

pub use error::{DomainError, ErrorCode};
pub use lifecycle::Action;
pub use mac::Mac;
pub use model::{Machine, MachineStatus, NodeId, PowerParams, RegionInfo, Zone};

/// Milliseconds since the Unix epoch: the one time unit of replicated records (chosen by the proposing
/// region and carried inside commands, so that applying a command never reads the clock).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
