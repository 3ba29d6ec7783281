//! Boot images and which regions hold their blobs. (Stub: the images helper fills it in.)

use super::ctx::ApplyCtx;
use crate::command::{op, Response};
use crate::state::State;
use ingot_common::DomainError;

/// Records an uploaded image and its uploading region as holder of every blob.
pub(super) fn put(_ctx: &ApplyCtx, _state: &mut State, _op: &op::PutImage) -> Response {
    Err(DomainError::unavailable("images are not implemented yet"))
}

/// Deletes an image unless a Deploying machine uses it.
pub(super) fn delete(_ctx: &ApplyCtx, _state: &mut State, _op: &op::DeleteImage) -> Response {
    Err(DomainError::unavailable("images are not implemented yet"))
}

/// Records blobs a region now holds or lost.
pub(super) fn record_blobs(_ctx: &ApplyCtx, _state: &mut State, _op: &op::RecordBlobs) -> Response {
    Err(DomainError::unavailable("images are not implemented yet"))
}
