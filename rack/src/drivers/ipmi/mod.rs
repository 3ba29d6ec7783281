//! The `ipmi` power driver (being written).

use super::{DriverError, PowerDriver, PowerOutcome, PowerRequest};

/// The `ipmi` driver.
#[derive(Debug, Default, Clone)]
pub struct IpmiDriver;

impl PowerDriver for IpmiDriver {
    async fn run(&self, _req: &PowerRequest) -> Result<PowerOutcome, DriverError> {
        Err(DriverError::Unsupported("driver ipmi is not available in this rack yet".into()))
    }
}
