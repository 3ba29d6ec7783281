//! TFTP (issue 12): the first file a PXE client fetches after DHCP (iPXE's binary) comes over TFTP.
//!
//! - [`codec`] — packets ↔ typed values (RFC 1350, options of RFC 2347–2349 and 7440); pure, fuzzed.
//! - [`server`] — the read-only server: one task and socket per transfer, bootloader files from the image
//!   cache by name (behind the small [`server::Bootloaders`] trait) and then files under a root, windowed
//!   sends, retransmission with backoff, a bound on sessions, counters, a hook told about every transfer.
//! - [`client`] — a small read client on the same codec, for the tests and `ingot-bench --boot-files`.
//! - [`fuzz`] — random and mutated datagrams through the codec and the server's negotiation
//!   (`ingot-bench --tftp-fuzz`).
//!
//! It asks no region anything: what it serves is a directory (the iPXE binaries) and the cache's files.

pub mod client;
pub mod codec;
pub mod fuzz;
pub mod server;
