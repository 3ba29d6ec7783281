//! The error type of the connection API, so that callers (the CLI, tests) can tell a configuration mistake
//! from a bad endpoint without parsing messages.

use std::path::PathBuf;

/// Why a [`crate::ClientConfig`] could not be built or a [`crate::Clients`] could not be created.
/// Failures of the calls themselves are [`tonic::Status`] values, not this type.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A file named by the configuration (profile, CA certificate) could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A line of an env/profile file is not `KEY=VALUE`.
    #[error("{path}:{line}: {message}")]
    EnvFile {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// A setting is given nowhere (flags, profile, environment).
    #[error(
        "no {what} configured: pass --endpoint, --ca and --token (or {var}), \
         or `source DIR/env` / `--profile DIR/env` with the file written by `ingot dev up`"
    )]
    Missing {
        /// Human name of the setting ("endpoint", "CA certificate", "token").
        what: &'static str,
        /// The environment variable that would have provided it.
        var: &'static str,
    },
    /// An endpoint is not a usable `https://host:port` URL.
    #[error("invalid endpoint '{endpoint}': {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The token cannot be carried in an HTTP/2 header.
    #[error("the token cannot be sent as an HTTP header: it must be printable ASCII")]
    InvalidToken,
}
