//! Pools in the apply step: create, update and delete.

use super::ctx::ApplyCtx;
use super::events::EventBuilder;
use crate::command::{op, Reply, Response};
use crate::state::State;
use ingot_common::model::{Pool, DEFAULT_POOL};
use ingot_common::{validate, DomainError};

/// Creates a pool.
pub(super) fn create(ctx: &ApplyCtx, state: &mut State, op: &op::CreatePool) -> Response {
    let (name, description) = (&op.name, &op.description);
    validate::dns_label("name", name)?;
    validate::description("description", description)?;
    if state.data.pools.contains_key(name) {
        return Err(DomainError::exists(
            "name",
            format!("pool '{name}' already exists"),
        ));
    }
    let p = Pool {
        name: name.clone(),
        description: description.clone(),
        created_ms: ctx.ts_ms,
    };
    state.data.pools.insert(name.clone(), p.clone());
    EventBuilder::new("pool.create")
        .message(name.clone())
        .record(ctx, state);
    Ok(Reply::Pool(p))
}

/// Changes a pool's description.
pub(super) fn update(ctx: &ApplyCtx, state: &mut State, op: &op::UpdatePool) -> Response {
    let name = &op.name;
    let Some(mut p) = state.data.pools.get(name).cloned() else {
        return Err(DomainError::not_found(format!(
            "pool '{name}' does not exist"
        )));
    };
    if let Some(d) = &op.description {
        validate::description("description", d)?;
        p.description = d.clone();
    }
    state.data.pools.insert(name.clone(), p.clone());
    EventBuilder::new("pool.update")
        .message(name.clone())
        .record(ctx, state);
    Ok(Reply::Pool(p))
}

/// Deletes an empty pool other than the default.
pub(super) fn delete(ctx: &ApplyCtx, state: &mut State, op: &op::DeletePool) -> Response {
    let name = &op.name;
    if !state.data.pools.contains_key(name) {
        return Err(DomainError::not_found(format!(
            "pool '{name}' does not exist"
        )));
    }
    if name == DEFAULT_POOL {
        return Err(DomainError::precondition(
            "the pool 'default' cannot be deleted",
        ));
    }
    let n = state.by_pool.get(name).map(|s| s.len()).unwrap_or(0);
    if n > 0 {
        return Err(DomainError::precondition(format!(
            "pool '{name}' still holds {n} machine(s); move them with `ingot machines set-pool` first"
        )));
    }
    state.data.pools.remove(name);
    state.by_pool.remove(name);
    EventBuilder::new("pool.delete")
        .message(name.clone())
        .record(ctx, state);
    Ok(Reply::Done)
}
