//! `ingot-client`: everything a program needs to talk to an Ingot region cluster, and to run one locally.
//!
//! Layout:
//! - [`config`]: [`ClientConfig`] — where the cluster is (endpoints), how to trust it (the cluster CA) and
//!   who we are (bearer token); read from flags, a profile/env file written by `ingot dev up`, or the
//!   `INGOT_*` environment variables.
//! - [`clients`]: [`Clients`] — one load-balanced TLS [`tonic::transport::Channel`] over every endpoint (a
//!   dead region is skipped) and the generated gRPC clients on top of it, each sending the bearer token.
//! - [`retry`]: [`retry_unavailable`] — retrying a call while the cluster is briefly unavailable (a region
//!   died, an election is running).
//! - [`local`]: [`local::LocalCluster`] — launching a cluster of real `ingot-region` processes on loopback
//!   ports for `ingot dev up`, the integration tests and the benchmark.
//! - [`error`]: [`ClientError`], the library's error type (the process-launching [`local`] module uses
//!   `anyhow`, as its failures are reports for a human, not cases for a caller to match on).
//!
//! A [`Clients`] (and a [`local::LocalCluster`]) must be created inside a Tokio runtime: tonic spawns the
//! channel's balancing worker on it.

pub mod clients;
pub mod config;
pub mod error;
pub mod local;
pub mod retry;

pub use clients::{
    AuthChannel, BearerAuth, Clients, ClusterClient, MachineClient, ZoneClient, MAX_MESSAGE_SIZE,
};
pub use config::ClientConfig;
pub use error::ClientError;
pub use retry::{is_retryable, retry_unavailable, RetryDeadline};
