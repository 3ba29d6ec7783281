//! The library's error type, so that callers (the `ingot-sim` binary, tests, the benchmark) can tell a
//! configuration mistake from a port that could not be bound or a control API that did not answer.

use std::path::PathBuf;

/// Why the simulator could not start, or why a call to a running simulator's control API failed. Every
/// message says what failed and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A [`crate::FleetConfig`] (or [`crate::AgentConfig`]) field holds a value the simulator cannot use.
    #[error("invalid simulator setting {field}: {message}")]
    Config {
        /// The setting, e.g. `count` or `hostname_prefix`.
        field: &'static str,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// A listener (a BMC or the control API) could not be bound.
    #[error(
        "cannot listen on {addr} for {what}: {source} (free the port, pass another one, or 0 for any \
         free port; many BMCs may need a higher open-files limit: ulimit -n)"
    )]
    Bind {
        /// Which listener: `BMC of sim-07`, `the control API`.
        what: String,
        /// The address asked for.
        addr: String,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// A file the configuration names (the cluster CA, a token file, `control.url`) could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// What the file is for.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A state file (`machines.json`, `control.url`) could not be written.
    #[error("cannot write {path}: {source} (check the directory exists and is writable)")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The agent's gRPC clients could not be set up (bad endpoint URL, token not printable ASCII).
    #[error("cannot set up the agent's connection to the regions: {0}")]
    Client(#[from] ingot_client::ClientError),
    /// The control API of a running simulator could not be reached or refused the request.
    #[error("control API {url}: {message}")]
    Control {
        /// The URL requested.
        url: String,
        /// What went wrong (connection refused, the API's error message, a malformed answer).
        message: String,
    },
}

impl SimError {
    /// Shorthand for [`SimError::Config`].
    pub(crate) fn config(field: &'static str, message: impl Into<String>) -> SimError {
        SimError::Config {
            field,
            message: message.into(),
        }
    }
}
