//! DHCP leases committed by racks, and machines enlisted by PXE boot (issue 11; being written).

use super::ctx::ApplyCtx;
use crate::command::{op, Response};
use crate::state::State;
use ingot_common::DomainError;

/// Records a rack's batch of leases.
pub(super) fn commit(_ctx: &ApplyCtx, _state: &mut State, _op: &op::CommitLeases) -> Response {
    Err(DomainError::unavailable("leases are not implemented yet"))
}

/// Enlists unknown PXE-booted MACs.
pub(super) fn enlist(_ctx: &ApplyCtx, _state: &mut State, _op: &op::EnlistMachines) -> Response {
    Err(DomainError::unavailable(
        "enlistment by PXE boot is not implemented yet",
    ))
}
