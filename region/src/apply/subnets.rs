//! Boot networks: create, change and delete subnets (issue 11; being written).

use super::ctx::ApplyCtx;
use crate::command::{op, Response};
use crate::state::State;
use ingot_common::DomainError;

/// Creates a subnet.
pub(super) fn create(_ctx: &ApplyCtx, _state: &mut State, _op: &op::CreateSubnet) -> Response {
    Err(DomainError::unavailable("subnets are not implemented yet"))
}

/// Changes a subnet.
pub(super) fn update(_ctx: &ApplyCtx, _state: &mut State, _op: &op::UpdateSubnet) -> Response {
    Err(DomainError::unavailable("subnets are not implemented yet"))
}

/// Deletes a subnet.
pub(super) fn delete(_ctx: &ApplyCtx, _state: &mut State, _op: &op::DeleteSubnet) -> Response {
    Err(DomainError::unavailable("subnets are not implemented yet"))
}
