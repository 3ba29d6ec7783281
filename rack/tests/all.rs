//! The rack controller's integration tests, one binary for the crate (each file is a module): enrollment
//! and session failover against fake regions, and the power drivers against real or local BMCs. Run one
//! file's tests with `cargo test -p ingot-rack --test all -- webhook`.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion

mod failover;
mod ipmi_peer;
mod redfish_peer;
mod webhook;
