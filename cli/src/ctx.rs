//! What every command receives: the global flags ([`Global`]) and the connection built from them
//! ([`Ctx`]), plus [`ExitStatus`] for the few errors that exit with a status other than 1. A leaf module:
//! it imports no command module, so every command module can import it without a cycle.

use anyhow::Result;
use clap::Args;
use ingot_client::{retry_unavailable, ClientConfig, Clients};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

/// Flags every command accepts: where the cluster is, how to authenticate, how to print.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Region API endpoint, https://host:port (repeatable, or comma-separated) [env: INGOT_ENDPOINTS]
    #[arg(
        long = "endpoint",
        value_name = "URL",
        global = true,
        value_delimiter = ','
    )]
    pub endpoints: Vec<String>,
    /// Cluster CA certificate (PEM) [env: INGOT_CA]
    #[arg(long, value_name = "FILE", global = true)]
    pub ca: Option<PathBuf>,
    /// Bearer token; for `ingot agent` commands, the machine's boot token [env: INGOT_TOKEN]
    #[arg(long, value_name = "TOKEN", global = true)]
    pub token: Option<String>,
    /// Env file with INGOT_ENDPOINTS, INGOT_CA and INGOT_TOKEN, as written by `ingot dev up` (DIR/env).
    /// Explicit flags win over it; it wins over the environment.
    #[arg(long, value_name = "FILE", global = true)]
    pub profile: Option<PathBuf>,
    /// Machine-readable JSON output
    #[arg(long, global = true)]
    pub json: bool,
    /// How long to keep retrying while no region answers (e.g. 10s, 1m)
    #[arg(long, value_name = "DURATION", global = true, default_value = "10s", value_parser = crate::parse::parse_duration)]
    pub timeout: Duration,
}

/// What a command needs: the global flags and, lazily, the connection.
pub struct Ctx {
    /// The global flags.
    pub global: Global,
}

impl Ctx {
    /// Connects to the cluster described by the flags, the profile or the environment.
    pub fn clients(&self) -> Result<Clients> {
        self.clients_with_token(self.global.token.clone())
    }

    /// Connects like [`Ctx::clients`], but with `token` in place of `--token` (`None`: the profile's or
    /// the environment's token).
    pub fn clients_with_token(&self, token: Option<String>) -> Result<Clients> {
        let g = &self.global;
        let endpoints = (!g.endpoints.is_empty()).then(|| g.endpoints.clone());
        let config = ClientConfig::resolve(endpoints, g.ca.clone(), token, g.profile.clone())?;
        Ok(config.connect()?)
    }

    /// Runs one RPC, retrying while the cluster is unavailable for at most `--timeout`.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        Ok(retry_unavailable(f, self.global.timeout)
            .await?
            .into_inner())
    }

    /// True when `--json` was given.
    pub fn json(&self) -> bool {
        self.global.json
    }
}

/// Attached as context to an error, makes the program exit with this status instead of 1 (the error is
/// reported as usual).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus(pub u8);

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}
