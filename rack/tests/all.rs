//! The rack controller's integration tests, one binary for the crate (each file is a module): enrollment
//! and session failover against fake regions, and the power drivers against real or local BMCs. Run one
//! file's tests with `cargo test -p ingot-rack --test all -- webhook`. The boot path: `boot_service` (commit
//! batching, held replies, re-sends, the offline journal; no sockets) and `boot_server` (the DHCP sockets in
//! network namespaces the test creates, as root); `tftp` (the TFTP server on loopback against curl, atftp, tftp-hpa
//! and a hand-built client); `cache_fetch` (the image cache's fetcher against in-process regions serving
//! BlobService over mutual TLS); `http_boot` (the HTTP boot server on loopback against curl: scripts, Range,
//! keep-alive, 50 concurrent downloads, connection bounds); `agent_api` (the agent API over TLS on loopback:
//! calls relayed through a boot service whose session is a channel, refusals, bounds, curl).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion

mod agent_api;
mod boot_server;
mod boot_service;
mod cache_fetch;
mod failover;
mod http_boot;
mod ipmi_peer;
mod redfish_peer;
mod tftp;
mod webhook;
