//! Manual power: for machines without a usable BMC. The rack cannot act, so it reports success with an
//! unknown power state and the operator powers the machine by hand.

use super::{PowerDriver, PowerOutcome, PowerRequest, PowerState};
use crate::drivers::DriverError;

/// The `manual` driver: always succeeds, never knows the power state.
#[derive(Debug, Default, Clone, Copy)]
pub struct ManualDriver;

/// The message every manual command returns, so operators know nothing happened by itself.
pub const MANUAL_MESSAGE: &str = "manual power: the operator acts";

impl PowerDriver for ManualDriver {
    async fn run(&self, _req: &PowerRequest) -> Result<PowerOutcome, DriverError> {
        Ok(PowerOutcome {
            state: PowerState::Unknown,
            message: MANUAL_MESSAGE.to_string(),
        })
    }
}
