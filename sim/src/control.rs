//! The simulator's control API: a JSON HTTP service on loopback through which tests, the benchmark and
//! `ingot-sim fault` / `ingot-sim list` inspect the machines and turn fault knobs — the hand of the
//! operator in the data centre, outside Redfish.
//!
//! - `GET /machines` — every machine: [`MachineView`] (identity, power, boot override, faults, counters —
//!   among them every reset and boot override change the BMC accepted, with its time, which the nemesis
//!   run compares with the regions' power commands).
//! - `GET /machines/{hostname}` — one machine.
//! - `PUT /machines/{hostname}/faults` with a [`Faults`] object (missing fields are off) — replaces the
//!   machine's faults; `{}` clears them.
//! - `POST /machines/{hostname}/power` with `{"power": "on"}` or `{"power": "off"}` — the power button.
//!
//! Errors are `{"error": "..."}` with 400 or 404. [`ControlClient`] is the client side.

use crate::machine::{Faults, MachineView, SimMachine};
use crate::SimError;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The machines of a fleet, indexed by hostname: what the control API serves.
#[derive(Debug)]
pub struct Registry {
    machines: Vec<Arc<SimMachine>>,
    by_hostname: HashMap<String, usize>,
}

impl Registry {
    /// Indexes `machines` by hostname.
    pub fn new(machines: Vec<Arc<SimMachine>>) -> Registry {
        let by_hostname = machines
            .iter()
            .enumerate()
            .map(|(i, m)| (m.info().hostname.clone(), i))
            .collect();
        Registry {
            machines,
            by_hostname,
        }
    }

    /// The machine with this hostname.
    pub fn get(&self, hostname: &str) -> Option<&Arc<SimMachine>> {
        self.by_hostname.get(hostname).map(|&i| &self.machines[i])
    }

    /// Every machine, in hostname order.
    pub fn all(&self) -> &[Arc<SimMachine>] {
        &self.machines
    }
}

/// Body of `POST /machines/{hostname}/power`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PowerPress {
    /// `on` or `off`.
    pub power: String,
}

/// The control API's router over `registry`.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/machines", get(list))
        .route("/machines/{hostname}", get(show))
        .route("/machines/{hostname}/faults", put(set_faults))
        .route("/machines/{hostname}/power", post(power))
        .with_state(registry)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

fn unknown(hostname: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no simulated machine named '{hostname}' (GET /machines lists them)"),
    )
}

async fn list(State(r): State<Arc<Registry>>) -> Json<Vec<MachineView>> {
    Json(r.all().iter().map(|m| m.view()).collect())
}

async fn show(State(r): State<Arc<Registry>>, Path(hostname): Path<String>) -> Response {
    match r.get(&hostname) {
        Some(m) => Json(m.view()).into_response(),
        None => unknown(&hostname),
    }
}

async fn set_faults(
    State(r): State<Arc<Registry>>,
    Path(hostname): Path<String>,
    body: Bytes,
) -> Response {
    let Some(m) = r.get(&hostname) else {
        return unknown(&hostname);
    };
    let faults: Faults = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "faults: {e} (expected {{\"unresponsive\": bool, \"slow_ms\": N, \"wrong_password\": bool, \
                     \"flapping\": bool, \"fail_power\": bool}}; missing fields are off)"
                ),
            )
        }
    };
    tracing::info!(machine = %hostname, faults = %faults.describe(), "faults set");
    m.set_faults(faults);
    Json(m.view()).into_response()
}

async fn power(
    State(r): State<Arc<Registry>>,
    Path(hostname): Path<String>,
    body: Bytes,
) -> Response {
    let Some(m) = r.get(&hostname) else {
        return unknown(&hostname);
    };
    let on = match serde_json::from_slice::<PowerPress>(&body) {
        Ok(p) if p.power.eq_ignore_ascii_case("on") => true,
        Ok(p) if p.power.eq_ignore_ascii_case("off") => false,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "expected {\"power\": \"on\"} or {\"power\": \"off\"}",
            )
        }
    };
    m.press_power(on);
    Json(m.view()).into_response()
}

/// Name of the file in the simulator's directory that holds the control API's URL.
pub const CONTROL_URL_FILE: &str = "control.url";
/// Name of the file in the simulator's directory that holds the machines (`[SimMachineInfo]`).
pub const MACHINES_FILE: &str = "machines.json";

/// A client of a running simulator's control API (what `ingot-sim fault` and `ingot-sim list` use, and
/// whole-stack tests can too).
#[derive(Clone, Debug)]
pub struct ControlClient {
    base: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct ApiError {
    error: String,
}

impl ControlClient {
    /// A client of the control API at `base` (`http://127.0.0.1:PORT`).
    pub fn new(base: &str) -> Result<ControlClient, SimError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .map_err(|e| SimError::Control {
                url: base.to_string(),
                message: format!("cannot create an HTTP client: {e}"),
            })?;
        Ok(ControlClient {
            base: base.trim().trim_end_matches('/').to_string(),
            http,
        })
    }

    /// A client of the simulator running with `--dir dir` (reads `dir/control.url`).
    pub fn from_dir(dir: &std::path::Path) -> Result<ControlClient, SimError> {
        let path = dir.join(CONTROL_URL_FILE);
        let url = std::fs::read_to_string(&path).map_err(|source| SimError::Read {
            what: "the control URL (is `ingot-sim run --dir` running there?)",
            path,
            source,
        })?;
        ControlClient::new(&url)
    }

    /// The control API's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<T, SimError> {
        let err = |message: String| SimError::Control {
            url: url.to_string(),
            message,
        };
        let resp = req
            .send()
            .await
            .map_err(|e| err(format!("{e} (is ingot-sim running?)")))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| err(format!("reading the answer: {e}")))?;
        if !status.is_success() {
            let msg = serde_json::from_slice::<ApiError>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(err(format!("{status}: {msg}")));
        }
        serde_json::from_slice(&bytes).map_err(|e| err(format!("malformed answer: {e}")))
    }

    /// Every machine with its live state.
    pub async fn list(&self) -> Result<Vec<MachineView>, SimError> {
        let url = format!("{}/machines", self.base);
        self.send(self.http.get(&url), &url).await
    }

    /// One machine.
    pub async fn get(&self, hostname: &str) -> Result<MachineView, SimError> {
        let url = format!("{}/machines/{hostname}", self.base);
        self.send(self.http.get(&url), &url).await
    }

    /// Replaces a machine's faults (`Faults::default()` clears them).
    pub async fn set_faults(
        &self,
        hostname: &str,
        faults: &Faults,
    ) -> Result<MachineView, SimError> {
        let url = format!("{}/machines/{hostname}/faults", self.base);
        self.send(self.http.put(&url).json(faults), &url).await
    }

    /// Presses the power button: on boots the machine, off cuts power.
    pub async fn power(&self, hostname: &str, on: bool) -> Result<MachineView, SimError> {
        let url = format!("{}/machines/{hostname}/power", self.base);
        let body = PowerPress {
            power: if on { "on" } else { "off" }.to_string(),
        };
        self.send(self.http.post(&url).json(&body), &url).await
    }
}
