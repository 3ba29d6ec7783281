//! TFTP (issue 12): the first file a PXE client fetches after DHCP (iPXE's binary) comes over TFTP.
//!
//! - [`codec`] — packets ↔ typed values (RFC 1350, options of RFC 2347–2349 and 7440); pure, fuzzed.
//! - [`server`] — the read-only server: one task and socket per transfer, files only under a root,
//!   windowed sends, retransmission with backoff, a bound on sessions, counters.
//!
//! It asks no region anything: what it serves is a directory (the iPXE binaries), so there is no lookup
//! trait between it and state.

pub mod codec;
pub mod server;
