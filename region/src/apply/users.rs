//! Users and their API tokens in the apply step.

use super::ctx::ApplyCtx;
use super::events::EventBuilder;
use crate::command::{op, Reply, Response};
use crate::state::{ApiToken, State};
use ingot_common::model::{Role, User};
use ingot_common::{validate, DomainError};

/// How many users are admins (the last one cannot be demoted or deleted).
fn admins(state: &State) -> usize {
    state
        .data
        .users
        .values()
        .filter(|u| u.role == Role::Admin)
        .count()
}

/// Creates a user.
pub(super) fn create(ctx: &ApplyCtx, state: &mut State, op: &op::CreateUser) -> Response {
    let (name, role) = (&op.name, op.role);
    validate::name("name", name)?;
    if state.data.users.contains_key(name) {
        return Err(DomainError::exists(
            "name",
            format!("user '{name}' already exists"),
        ));
    }
    let u = User {
        name: name.clone(),
        role,
        created_ms: ctx.ts_ms,
    };
    state.data.users.insert(name.clone(), u.clone());
    EventBuilder::new("user.create")
        .message(format!("{name} ({})", role.as_str()))
        .record(ctx, state);
    Ok(Reply::User(u))
}

/// Changes a user's role; the last admin cannot be demoted.
pub(super) fn update(ctx: &ApplyCtx, state: &mut State, op: &op::UpdateUser) -> Response {
    let (name, role) = (&op.name, op.role);
    let Some(mut u) = state.data.users.get(name).cloned() else {
        return Err(DomainError::not_found(format!(
            "user '{name}' does not exist"
        )));
    };
    if u.role == Role::Admin && role != Role::Admin && admins(state) <= 1 {
        return Err(DomainError::precondition(format!(
            "'{name}' is the last admin; make another user admin first"
        )));
    }
    u.role = role;
    state.data.users.insert(name.clone(), u.clone());
    for t in state.data.tokens.values_mut().filter(|t| &t.name == name) {
        t.role = role.as_str().to_string();
    }
    EventBuilder::new("user.update")
        .message(format!("{name} ({})", role.as_str()))
        .record(ctx, state);
    Ok(Reply::User(u))
}

/// Deletes a user and revokes their tokens; refused while they hold machines or are the last admin.
pub(super) fn delete(ctx: &ApplyCtx, state: &mut State, op: &op::DeleteUser) -> Response {
    let name = &op.name;
    let Some(u) = state.data.users.get(name).cloned() else {
        return Err(DomainError::not_found(format!(
            "user '{name}' does not exist"
        )));
    };
    if u.role == Role::Admin && admins(state) <= 1 {
        return Err(DomainError::precondition(format!(
            "'{name}' is the last admin and cannot be deleted"
        )));
    }
    let held = state.by_owner.get(name).map(|s| s.len()).unwrap_or(0);
    if held > 0 {
        return Err(DomainError::precondition(format!(
            "user '{name}' holds {held} machine(s); release them first (ingot machines list --owner {name})"
        )));
    }
    state.data.users.remove(name);
    state.data.tokens.retain(|_, t| &t.name != name);
    EventBuilder::new("user.delete")
        .message(name.clone())
        .record(ctx, state);
    Ok(Reply::Done)
}

/// Records a token for an existing user.
pub(super) fn create_token(ctx: &ApplyCtx, state: &mut State, op: &op::CreateToken) -> Response {
    let (id, user, description) = (&op.id, &op.user, &op.description);
    let Some(u) = state.data.users.get(user).cloned() else {
        return Err(DomainError::not_found(format!(
            "user '{user}' does not exist; create it first (ingot users create {user})"
        )));
    };
    validate::description("description", description)?;
    state.data.tokens.insert(
        op.token_hash.clone(),
        ApiToken {
            name: user.clone(),
            role: u.role.as_str().to_string(),
            created_ms: ctx.ts_ms,
            id: id.clone(),
            description: description.clone(),
            expires_ms: op.expires_ms,
        },
    );
    // Forget expired tokens while here, so the map cannot grow without bound.
    let now = ctx.ts_ms;
    state
        .data
        .tokens
        .retain(|_, t| t.expires_ms.is_none_or(|e| e > now));
    EventBuilder::new("token.create")
        .message(format!("{id} for {user}"))
        .record(ctx, state);
    Ok(Reply::Done)
}

/// Revokes a token by id. Only admins and the token's user may.
pub(super) fn revoke_token(ctx: &ApplyCtx, state: &mut State, op: &op::RevokeToken) -> Response {
    let id = &op.id;
    let Some(owner) = state
        .data
        .tokens
        .values()
        .find(|t| &t.id == id)
        .map(|t| t.name.clone())
    else {
        return Err(DomainError::not_found(format!(
            "no token with id '{id}' (ingot tokens list shows ids)"
        )));
    };
    if owner != ctx.actor && !state.is_admin(ctx.actor) {
        return Err(DomainError::denied(
            "only admins may revoke other users' tokens",
        ));
    }
    state.data.tokens.retain(|_, t| &t.id != id);
    EventBuilder::new("token.revoke")
        .message(format!("{id} of {owner}"))
        .record(ctx, state);
    Ok(Reply::Done)
}
