//! Network boot steps racks saw, as machine events. (Stub: the HTTP boot helper fills it in.)

use super::ctx::ApplyCtx;
use crate::command::{op, Response};
use crate::state::State;
use ingot_common::DomainError;

/// Records a rack's batch of boot steps.
pub(super) fn record(_ctx: &ApplyCtx, _state: &mut State, _op: &op::RecordBootEvents) -> Response {
    Err(DomainError::unavailable(
        "boot events are not implemented yet",
    ))
}
