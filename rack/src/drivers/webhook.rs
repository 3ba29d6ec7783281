//! The `webhook` power driver (being written).

use super::{DriverError, PowerDriver, PowerOutcome, PowerRequest};

/// The `webhook` driver.
#[derive(Debug, Default, Clone)]
pub struct WebhookDriver;

impl PowerDriver for WebhookDriver {
    async fn run(&self, _req: &PowerRequest) -> Result<PowerOutcome, DriverError> {
        Err(DriverError::Unsupported("driver webhook is not available in this rack yet".into()))
    }
}
