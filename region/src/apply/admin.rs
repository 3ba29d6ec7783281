//! Administrative records in the apply step: pools, tags (with incremental re-evaluation), users, API
//! tokens and settings. Each change writes an event.

use super::emit;
use crate::command::{Command, Reply, Response};
use crate::state::{ApiToken, State};
use ingot_common::lifecycle;
use ingot_common::model::{EventLevel, Pool, Role, Tag, User, DEFAULT_POOL};
use ingot_common::tagexpr::TagExpr;
use ingot_common::{validate, DomainError, MachineStatus};

fn log(state: &mut State, cmd: &Command, rev: u64, kind: &str, message: String) {
    emit(
        state,
        cmd,
        rev,
        kind,
        EventLevel::Info,
        None,
        None,
        None,
        message,
    );
}

/// Creates a pool.
pub(super) fn create_pool(
    state: &mut State,
    cmd: &Command,
    rev: u64,
    name: &str,
    description: &str,
) -> Response {
    validate::dns_label("name", name)?;
    validate::description("description", description)?;
    if state.data.pools.contains_key(name) {
        return Err(DomainError::exists(
            "name",
            format!("pool '{name}' already exists"),
        ));
    }
    let p = Pool {
        name: name.to_string(),
        description: description.to_string(),
        created_ms: cmd.ts_ms,
    };
    state.data.pools.insert(name.to_string(), p.clone());
    log(state, cmd, rev, "pool.create", name.to_string());
    Ok(Reply::Pool(p))
}

/// Changes a pool's description.
pub(super) fn update_pool(
    state: &mut State,
    cmd: &Command,
    rev: u64,
    name: &str,
    description: Option<&String>,
) -> Response {
    let Some(mut p) = state.data.pools.get(name).cloned() else {
        return Err(DomainError::not_found(format!(
            "pool '{name}' does not exist"
        )));
    };
    if let Some(d) = description {
        validate::description("description", d)?;
        p.description = d.clone();
    }
    state.data.pools.insert(name.to_string(), p.clone());
    log(state, cmd, rev, "pool.update", name.to_string());
    Ok(Reply::Pool(p))
}

/// Deletes an empty pool other than the default.
pub(super) fn delete_pool(state: &mut State, cmd: &Command, rev: u64, name: &str) -> Response {
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
    log(state, cmd, rev, "pool.delete", name.to_string());
    Ok(Reply::Done)
}

/// Evaluates tag `name` (compiled as `expr`, or manual when `None`) against every machine, changing only
/// the machines whose membership changes: one tag, every machine, one pass.
fn reevaluate(state: &mut State, cmd: &Command, rev: u64, name: &str, expr: Option<&TagExpr>) {
    let Some(expr) = expr else { return };
    let changed: Vec<String> = state
        .data
        .machines
        .values()
        .filter(|m| expr.matches(m) != m.tags.contains(name))
        .map(|m| m.system_id.clone())
        .collect();
    for id in changed {
        if let Some(mut m) = state.machine(&id).cloned() {
            if m.tags.contains(name) {
                m.tags.remove(name);
            } else {
                m.tags.insert(name.to_string());
            }
            m.updated_ms = cmd.ts_ms;
            m.revision = rev;
            state.put_machine(m);
        }
    }
}

/// Creates a tag; with a definition, applies it to every matching machine.
pub(super) fn create_tag(
    state: &mut State,
    cmd: &Command,
    rev: u64,
    name: &str,
    definition: &str,
    comment: &str,
) -> Response {
    validate::name("name", name)?;
    validate::description("comment", comment)?;
    if state.data.tags.contains_key(name) {
        return Err(DomainError::exists(
            "name",
            format!("tag '{name}' already exists"),
        ));
    }
    let expr = if definition.is_empty() {
        None
    } else {
        Some(ingot_common::tagexpr::check("definition", definition)?)
    };
    let t = Tag {
        name: name.to_string(),
        definition: definition.to_string(),
        comment: comment.to_string(),
        created_ms: cmd.ts_ms,
    };
    state.data.tags.insert(name.to_string(), t.clone());
    if let Some(e) = &expr {
        state.tag_exprs.insert(name.to_string(), e.clone());
    }
    reevaluate(state, cmd, rev, name, expr.as_ref());
    log(
        state,
        cmd,
        rev,
        "tag.create",
        format!("{name}: {definition}"),
    );
    Ok(Reply::Tag(t))
}

/// Changes a tag; a new definition is re-evaluated against every machine in this same command.
pub(super) fn update_tag(
    state: &mut State,
    cmd: &Command,
    rev: u64,
    name: &str,
    definition: Option<&String>,
    comment: Option<&String>,
) -> Response {
    let Some(mut t) = state.data.tags.get(name).cloned() else {
        return Err(DomainError::not_found(format!(
            "tag '{name}' does not exist"
        )));
    };
    if let Some(c) = comment {
        validate::description("comment", c)?;
        t.comment = c.clone();
    }
    if let Some(d) = definition.filter(|d| **d != t.definition) {
        let expr = if d.is_empty() {
            None
        } else {
            Some(ingot_common::tagexpr::check("definition", d)?)
        };
        t.definition = d.clone();
        match &expr {
            Some(e) => {
                state.tag_exprs.insert(name.to_string(), e.clone());
            }
            None => {
                state.tag_exprs.remove(name);
            }
        }
        reevaluate(state, cmd, rev, name, expr.as_ref());
    }
    state.data.tags.insert(name.to_string(), t.clone());
    log(
        state,
        cmd,
        rev,
        "tag.update",
        format!("{name}: {}", t.definition),
    );
    Ok(Reply::Tag(t))
}

/// Deletes a tag and removes it from every machine.
pub(super) fn delete_tag(state: &mut State, cmd: &Command, rev: u64, name: &str) -> Response {
    if state.data.tags.remove(name).is_none() {
        return Err(DomainError::not_found(format!(
            "tag '{name}' does not exist"
        )));
    }
    state.tag_exprs.remove(name);
    let ids: Vec<String> = state
        .by_tag
        .get(name)
        .map(|s| s.iter().cloned().collect())
        .unwrap_or_default();
    for id in ids {
        if let Some(mut m) = state.machine(&id).cloned() {
            m.tags.remove(name);
            m.updated_ms = cmd.ts_ms;
            m.revision = rev;
            state.put_machine(m);
        }
    }
    state.by_tag.remove(name);
    log(state, cmd, rev, "tag.delete", name.to_string());
    Ok(Reply::Done)
}

fn admins(state: &State) -> usize {
    state
        .data
        .users
        .values()
        .filter(|u| u.role == Role::Admin)
        .count()
}

/// Creates a user.
pub(super) fn create_user(
    state: &mut State,
    cmd: &Command,
    rev: u64,
    name: &str,
    role: Role,
) -> Response {
    validate::name("name", name)?;
    if state.data.users.contains_key(name) {
        return Err(DomainError::exists(
            "name",
            format!("user '{name}' already exists"),
        ));
    }
    let u = User {
        name: name.to_string(),
        role,
        created_ms: cmd.ts_ms,
    };
    state.data.users.insert(name.to_string(), u.clone());
    log(
        state,
        cmd,
        rev,
        "user.create",
        format!("{name} ({})", role.as_str()),
    );
    Ok(Reply::User(u))
}

/// Changes a user's role; the last admin cannot be demoted.
pub(super) fn update_user(
    state: &mut State,
    cmd: &Command,
    rev: u64,
    name: &str,
    role: Role,
) -> Response {
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
    state.data.users.insert(name.to_string(), u.clone());
    for t in state.data.tokens.values_mut().filter(|t| t.name == name) {
        t.role = role.as_str().to_string();
    }
    log(
        state,
        cmd,
        rev,
        "user.update",
        format!("{name} ({})", role.as_str()),
    );
    Ok(Reply::User(u))
}

/// Deletes a user and revokes their tokens; refused while they hold machines or are the last admin.
pub(super) fn delete_user(state: &mut State, cmd: &Command, rev: u64, name: &str) -> Response {
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
    state.data.tokens.retain(|_, t| t.name != name);
    log(state, cmd, rev, "user.delete", name.to_string());
    Ok(Reply::Done)
}

/// Records a token for an existing user.
#[allow(clippy::too_many_arguments)]
pub(super) fn create_token(
    state: &mut State,
    cmd: &Command,
    rev: u64,
    id: &str,
    token_hash: &str,
    user: &str,
    description: &str,
    expires_ms: Option<u64>,
) -> Response {
    let Some(u) = state.data.users.get(user).cloned() else {
        return Err(DomainError::not_found(format!(
            "user '{user}' does not exist; create it first (ingot users create {user})"
        )));
    };
    validate::description("description", description)?;
    state.data.tokens.insert(
        token_hash.to_string(),
        ApiToken {
            name: user.to_string(),
            role: u.role.as_str().to_string(),
            created_ms: cmd.ts_ms,
            id: id.to_string(),
            description: description.to_string(),
            expires_ms,
        },
    );
    // Forget expired tokens while here, so the map cannot grow without bound.
    let now = cmd.ts_ms;
    state
        .data
        .tokens
        .retain(|_, t| t.expires_ms.is_none_or(|e| e > now));
    log(state, cmd, rev, "token.create", format!("{id} for {user}"));
    Ok(Reply::Done)
}

/// Revokes a token by id. Only admins and the token's user may (checked by the caller).
pub(super) fn revoke_token(state: &mut State, cmd: &Command, rev: u64, id: &str) -> Response {
    let Some(owner) = state
        .data
        .tokens
        .values()
        .find(|t| t.id == id)
        .map(|t| t.name.clone())
    else {
        return Err(DomainError::not_found(format!(
            "no token with id '{id}' (ingot tokens list shows ids)"
        )));
    };
    if owner != cmd.actor && !state.is_admin(&cmd.actor) {
        return Err(DomainError::denied(
            "only admins may revoke other users' tokens",
        ));
    }
    state.data.tokens.retain(|_, t| t.id != id);
    log(state, cmd, rev, "token.revoke", format!("{id} of {owner}"));
    Ok(Reply::Done)
}

/// Changes deadlines; 0 restores the default.
pub(super) fn update_settings(
    state: &mut State,
    cmd: &Command,
    rev: u64,
    deadlines: &[(MachineStatus, u64)],
) -> Response {
    for (s, secs) in deadlines {
        if !lifecycle::in_progress(*s) {
            return Err(DomainError::invalid(
                format!("deadline_seconds[{}]", s.as_str()),
                "only in-progress statuses have deadlines",
            ));
        }
        if *secs > 7 * 24 * 3600 {
            return Err(DomainError::invalid(
                format!("deadline_seconds[{}]", s.as_str()),
                "at most 7 days (604800 s)",
            ));
        }
    }
    for (s, secs) in deadlines {
        if *secs == 0 {
            state.data.settings.deadlines.remove(s);
        } else {
            state.data.settings.deadlines.insert(*s, *secs);
        }
    }
    let msg = deadlines
        .iter()
        .map(|(s, v)| format!("{}={v}s", s.as_str()))
        .collect::<Vec<_>>()
        .join(" ");
    log(state, cmd, rev, "settings.update", msg);
    Ok(Reply::Done)
}
