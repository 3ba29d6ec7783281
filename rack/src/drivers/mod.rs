//! Power drivers: how the rack acts on a machine's BMC.
//!
//! A region sends `PowerCommand{driver, action, params}`; [`Drivers::execute`] parses the action into an
//! [`ingot_common::power::PowerAction`] (an unknown one is `unsupported`), picks the driver by name, runs it
//! and turns the outcome into the `PowerCommandResult` the region records. Drivers: [`ipmi`] (IPMI 2.0 RMCP+,
//! native or through ipmitool), [`redfish`] (HTTPS, basic or session auth), [`webhook`] (operator-defined
//! HTTP requests), [`manual`] (the operator acts) and [`file`](mod@file) (a BMC that is a JSON file, for
//! tests; also run under its old name `sim`). The `ipmi`, `redfish` and `webhook` drivers read their
//! parameters with [`ingot_common::power::DriverParams`] ([`PowerRequest::typed`]), the parser the region
//! used when the operator set them.

pub mod file;
pub mod http;
pub mod ipmi;
pub mod manual;
pub mod redfish;
pub mod webhook;

use ingot_common::power::{PowerAction, FILE_DRIVER_ALIAS};
use ingot_proto::rack::v1::{PowerCommand, PowerCommandResult};
use std::collections::HashMap;
use std::future::Future;

/// Power state after a command, as reported to the region (`power_state` of `PowerCommandResult`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerState {
    /// The machine is powered on.
    On,
    /// The machine is powered off.
    Off,
    /// The driver cannot tell (manual power).
    Unknown,
}

impl PowerState {
    /// The wire spelling: `on`, `off`, `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            PowerState::On => "on",
            PowerState::Off => "off",
            PowerState::Unknown => "unknown",
        }
    }
}

/// What a driver is asked to do: one command, decoded.
#[derive(Debug, Clone)]
pub struct PowerRequest {
    /// The command's id: drivers that keep a log (the `file` driver) record it, which is how tests count
    /// exactly-once execution.
    pub command_id: u64,
    /// The machine the command is for.
    pub system_id: String,
    /// What to do.
    pub action: PowerAction,
    /// The driver's parameters from the machine's power settings (may hold secrets: never log them).
    pub params: HashMap<String, String>,
}

/// A successful driver run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerOutcome {
    /// Power state after the action.
    pub state: PowerState,
    /// What happened, for the operator (goes into `PowerCommandResult.message`).
    pub message: String,
}

/// Why a driver failed, by class: the region reacts to the class (retry, mark the BMC broken, tell the
/// admin), the message is for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    /// The BMC did not answer (network, wrong address, BMC down).
    #[error("{0}")]
    Unreachable(String),
    /// The BMC refused the credentials.
    #[error("{0}")]
    Auth(String),
    /// The rack cannot run this driver or action.
    #[error("{0}")]
    Unsupported(String),
    /// The BMC answered with an error, or the driver's parameters are wrong.
    #[error("{0}")]
    Bmc(String),
}

impl DriverError {
    /// The wire class (`error_kind` of `PowerCommandResult`): unreachable, auth, unsupported, bmc.
    pub fn kind(&self) -> &'static str {
        match self {
            DriverError::Unreachable(_) => "unreachable",
            DriverError::Auth(_) => "auth",
            DriverError::Unsupported(_) => "unsupported",
            DriverError::Bmc(_) => "bmc",
        }
    }
}

/// One way of acting on a BMC. Implementations must be safe to run concurrently for different machines
/// (the session runs up to `capacity` commands at once).
pub trait PowerDriver: Send + Sync {
    /// Runs `req.action` on `req.system_id`'s BMC.
    fn run(
        &self,
        req: &PowerRequest,
    ) -> impl Future<Output = Result<PowerOutcome, DriverError>> + Send;
}

impl PowerRequest {
    /// The request's parameters parsed for `driver`; a parameter error is a `bmc` error naming the key.
    pub fn typed(&self, driver: &str) -> Result<ingot_common::power::DriverParams, DriverError> {
        let params: std::collections::BTreeMap<String, String> = self
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        ingot_common::power::DriverParams::parse("power", driver, &params)
            .map_err(|e| DriverError::Bmc(format!("bad {driver} power parameters: {}", e.message)))
    }
}

/// The drivers this rack has, by name: what the session announces in `Hello.drivers` and dispatches to.
/// Cloning is cheap and shares connection pools and sessions.
#[derive(Debug, Default, Clone)]
pub struct Drivers {
    /// IPMI 2.0 over LAN.
    ipmi: ipmi::IpmiDriver,
    /// Redfish over HTTP(S).
    redfish: redfish::RedfishDriver,
    /// Operator-defined HTTP requests.
    webhook: webhook::WebhookDriver,
    /// A BMC that is a JSON file (tests).
    file: file::FileDriver,
    /// Manual power: the operator acts.
    manual: manual::ManualDriver,
}

impl Drivers {
    /// Names of the drivers this rack can run (sent in `Hello`). [`Drivers::run`] also runs the `file`
    /// driver under its old name [`FILE_DRIVER_ALIAS`] (`sim`), so machines stored with it keep working.
    pub const NAMES: [&'static str; 5] = ["ipmi", "redfish", "webhook", "manual", "file"];

    /// Runs `driver` for `req`.
    pub async fn run(&self, driver: &str, req: &PowerRequest) -> Result<PowerOutcome, DriverError> {
        match driver {
            "ipmi" => self.ipmi.run(req).await,
            "redfish" => self.redfish.run(req).await,
            "webhook" => self.webhook.run(req).await,
            "file" | FILE_DRIVER_ALIAS => self.file.run(req).await,
            "manual" => self.manual.run(req).await,
            other => Err(DriverError::Unsupported(format!(
                "driver {other} is not available in this rack; it runs {}",
                Drivers::NAMES.join(", ")
            ))),
        }
    }

    /// Runs a region's command and builds its result (never fails: failures are results too).
    pub async fn execute(&self, cmd: &PowerCommand) -> PowerCommandResult {
        // The one place a command's action string becomes a [`PowerAction`]; an action this rack does not
        // know (a newer region's) is `unsupported`, as an unknown driver is.
        let outcome = match PowerAction::parse("action", &cmd.action) {
            Ok(action) => {
                let req = PowerRequest {
                    command_id: cmd.id,
                    system_id: cmd.system_id.clone(),
                    action,
                    params: cmd.params.clone(),
                };
                self.run(&cmd.driver, &req).await
            }
            Err(e) => Err(DriverError::Unsupported(format!(
                "power action not supported: {}",
                e.message
            ))),
        };
        match outcome {
            Ok(o) => PowerCommandResult {
                id: cmd.id,
                success: true,
                error_kind: String::new(),
                message: o.message,
                power_state: o.state.as_str().to_string(),
            },
            Err(e) => PowerCommandResult {
                id: cmd.id,
                success: false,
                error_kind: e.kind().to_string(),
                message: e.to_string(),
                power_state: PowerState::Unknown.as_str().to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(driver: &str, action: &str) -> PowerCommand {
        PowerCommand {
            id: 9,
            system_id: "m1".into(),
            action: action.into(),
            driver: driver.into(),
            params: HashMap::new(),
        }
    }

    #[tokio::test]
    async fn dispatch_and_error_kinds() {
        let d = Drivers::default();
        let r = d.execute(&cmd("manual", "on")).await;
        assert!(r.success);
        assert_eq!(r.power_state, "unknown");
        assert_eq!(r.message, "manual power: the operator acts");

        let r = d.execute(&cmd("floppy", "on")).await;
        assert!(!r.success);
        assert_eq!(r.error_kind, "unsupported");
        assert!(
            r.message.starts_with("driver floppy is not available"),
            "{}",
            r.message
        );

        let r = d.execute(&cmd("manual", "explode")).await;
        assert_eq!(r.error_kind, "unsupported");

        let r = d.execute(&cmd("file", "on")).await;
        assert_eq!(r.error_kind, "bmc", "{}", r.message);
        assert!(r.message.contains("state_dir"), "{}", r.message);
        // `sim`, the `file` driver's old name, runs the same driver.
        let r = d.execute(&cmd("sim", "on")).await;
        assert_eq!(r.error_kind, "bmc", "{}", r.message);
        assert!(r.message.contains("state_dir"), "{}", r.message);
        assert_eq!(PowerAction::SoftOff.as_str(), "soft-off");
    }
}
