//! `ingot-rack`: the rack controller. It sits next to the servers, enrolls once with a region by token, then
//! keeps one mutual-TLS gRPC session to some region, fails over to another region within two seconds when
//! that one dies, and runs the power commands regions send it exactly once.
//!
//! Layout:
//! - `main.rs` — the CLI (`register`, `run`); the only place `anyhow` is used.
//! - [`config`] — the data directory: `rack.json`, `tls/`, atomic writes.
//! - [`register`] — enrollment: key pair + CSR here, `RackService/RegisterRack` on a region's API.
//! - [`session`] — the connect / failover loop over `ingot.rack.v1.RackSessionService/Session`, heartbeats,
//!   and the command runner (bounded concurrency, results recorded before they are sent).
//! - [`done`] — the durable done-store (`done.log`) that turns at-least-once delivery into exactly-once
//!   execution.
//! - [`drivers`] — power drivers behind the [`drivers::PowerDriver`] trait: `ipmi`, `redfish`, `webhook`,
//!   `manual`, `file` (a BMC that is a JSON file, for tests; `sim` is its old name, still accepted).
//! - [`monitor`] — the power monitor: reads every owned BMC with bounded concurrency and backoff, reports
//!   changes (and errors only after repeated failures) to the region.
//! - [`peers`] — third-party BMC implementations (ipmi_sim, sushy-tools) started on loopback for tests and
//!   benchmarks.
//!
//! - [`boot`] — the boot path on the rack's boot networks: DHCP (codec, engine, server), the lease table,
//!   the offline lease journal.
//!
//! The wire protocol is `proto/ingot/rack/v1/rack.proto` (session) and `proto/ingot/v1/rack.proto`
//! (enrollment); the CLI contract is in `rack/README.md`.

pub mod boot;
pub mod config;
pub mod done;
pub mod drivers;
pub mod monitor;
pub mod peers;
pub mod register;
pub mod session;
