//! The `redfish` power driver (being written).

use super::{DriverError, PowerDriver, PowerOutcome, PowerRequest};

/// The `redfish` driver.
#[derive(Debug, Default, Clone)]
pub struct RedfishDriver;

impl PowerDriver for RedfishDriver {
    async fn run(&self, _req: &PowerRequest) -> Result<PowerOutcome, DriverError> {
        Err(DriverError::Unsupported("driver redfish is not available in this rack yet".into()))
    }
}
