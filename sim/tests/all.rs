//! The simulator's integration tests, one binary for the crate (each file is a module; `common` holds the
//! helpers they share): the Redfish and IPMI BMCs, the simulated agent, and the `ingot-sim` binary. Run
//! one file's tests with `cargo test -p ingot-sim --test all -- redfish`.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion

mod common;

mod agent;
mod agent_grpc;
mod cli;
mod ipmi;
mod redfish;
