//! DHCPv4 for the boot networks: [`codec`] (pure packet parsing and building), [`engine`] (pure decisions
//! over the lease table and the rack's boot configuration), [`server`] (sockets).

pub mod codec;
pub mod engine;
pub mod server;
