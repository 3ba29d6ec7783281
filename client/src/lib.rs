//! `ingot-client`: everything a program needs to talk to an Ingot region cluster.
//!
//! Layout:
//! - [`config`]: [`ClientConfig`] — where the cluster is (endpoints), how to trust it (the cluster CA) and
//!   who we are (bearer token); read from flags, a profile/env file written by `ingot dev up`, or the
//!   `INGOT_*` environment variables.
//! - [`clients`]: [`Clients`] — one load-balanced TLS [`tonic::transport::Channel`] over every endpoint (a
//!   dead region is skipped) and the generated gRPC clients on top of it, each sending the bearer token.
//! - [`retry`]: [`retry_unavailable`] — retrying a call while the cluster is briefly unavailable (a region
//!   died, an election is running).
//! - [`error`]: [`ClientError`], the library's error type.
//!
//! Starting a cluster of local processes (`ingot dev up`, the integration tests, the benchmark) is the
//! job of the `ingot-launch` crate, so that a program that only talks to Ingot does not link a process
//! launcher.
//!
//! A [`Clients`] must be created inside a Tokio runtime: tonic spawns the channel's balancing worker on it.

pub mod clients;
pub mod config;
pub mod error;
pub mod retry;

pub use clients::{
    AuthChannel, BearerAuth, Clients, ClusterClient, ImageClient, MachineClient, RackClient,
    SubnetClient, ZoneClient, MAX_MESSAGE_SIZE,
};
pub use config::ClientConfig;
pub use error::ClientError;
pub use retry::{is_retryable, retry_unavailable, RetryDeadline};
