//! Ingot's wire contract, generated from `proto/` at build time (protox + tonic-prost-build).
//!
//! Packages are split by audience:
//! - [`v1`] (`ingot.v1`): the public client API — machines and their lifecycle, allocation, power,
//!   zones, pools, tags, users and tokens, events, racks, subnets and their DHCP leases, the agent's
//!   reports, cluster membership and settings.
//! - [`raft::v1`] (`ingot.raft.v1`): region <-> region; only on the mutual-TLS Raft listener. Its payloads
//!   are serde-JSON bytes (and one status message) that the region's `raft` module reads and writes.
//! - [`rack::v1`] (`ingot.rack.v1`): rack controller <-> region — the session's hello, heartbeats, power
//!   commands and their results, BMC lists and power observations; on the same mutual-TLS listener, for
//!   rack certificates only.
//!
//! [`convert`] holds every conversion between the `v1` and `rack::v1` types and `ingot-common`'s domain
//! types, so transport types never leak into the region's application logic. [`wire`] is a hand-written
//! `ListMachinesResponse` that carries machines already encoded.
#![allow(missing_docs)] // generated code; the .proto files carry the documentation

/// The public client API (`ingot.v1`).
pub mod v1 {
    tonic::include_proto!("ingot.v1");
    pub use crate::wire::ListMachinesResponse;
}

/// Rack controller <-> region protocols.
pub mod rack {
    /// `ingot.rack.v1`: the rack session (hello, heartbeats, commands, results).
    #[allow(clippy::large_enum_variant)] // generated: AgentAnswer's oneof holds the AgentWork message
    pub mod v1 {
        tonic::include_proto!("ingot.rack.v1");
    }
}

/// Region <-> region protocols.
pub mod raft {
    /// `ingot.raft.v1`: Raft transport, write forwarding, read index, join.
    pub mod v1 {
        tonic::include_proto!("ingot.raft.v1");
    }
}

pub mod convert;
pub mod wire;

/// Encoded `FileDescriptorSet` of the public `ingot.v1` package, for gRPC server reflection.
pub const V1_FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("ingot_v1_descriptor");
