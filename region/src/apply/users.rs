//! Users and their API tokens in the apply step.

use super::ctx::ApplyCtx;
use super::events::EventBuilder;
use crate::command::{op, Reply, Response};
use crate::state::{ApiToken, State, TOKENS_PER_USER_MAX};
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
    for h in state.token_hashes_of(name) {
        if let Some(t) = state.data.tokens.get_mut(&h) {
            t.role = role.as_str().to_string();
        }
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
    for h in state.token_hashes_of(name) {
        state.remove_token(&h);
    }
    EventBuilder::new("user.delete")
        .message(name.clone())
        .record(ctx, state);
    Ok(Reply::Done)
}

/// Records a token for an existing user. Who may create it (the user, or an admin for anyone) is
/// `authz`'s rule; in a log that requires principals, a user holds at most [`TOKENS_PER_USER_MAX`]
/// tokens and ids are unique (checks older entries never had, so they are not applied to them).
pub(super) fn create_token(ctx: &ApplyCtx, state: &mut State, op: &op::CreateToken) -> Response {
    let (id, user, description) = (&op.id, &op.user, &op.description);
    let Some(u) = state.data.users.get(user).cloned() else {
        return Err(DomainError::not_found(format!(
            "user '{user}' does not exist; create it first (ingot users create {user})"
        )));
    };
    validate::description("description", description)?;
    let now = ctx.ts_ms;
    if state.data.principals_required {
        if state.token_ids.contains_key(id) {
            return Err(DomainError::exists(
                "id",
                format!("a token with id '{id}' exists already; retry to get a fresh id"),
            ));
        }
        let held = state
            .tokens_of_user(user)
            .filter(|t| t.expires_ms.is_none_or(|e| e > now))
            .count();
        if held >= TOKENS_PER_USER_MAX {
            return Err(DomainError::exhausted(format!(
                "user '{user}' holds {held} tokens, the most allowed ({TOKENS_PER_USER_MAX}); revoke unused ones first (ingot tokens list, ingot tokens revoke ID)"
            )));
        }
    }
    state.put_token(
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
    let expired: Vec<String> = state
        .data
        .tokens
        .iter()
        .filter(|(_, t)| t.expires_ms.is_some_and(|e| e <= now))
        .map(|(h, _)| h.clone())
        .collect();
    for h in expired {
        state.remove_token(&h);
    }
    EventBuilder::new("token.create")
        .message(format!("{id} for {user}"))
        .record(ctx, state);
    Ok(Reply::Done)
}

/// Revokes a token by id. Only admins and the token's user may.
pub(super) fn revoke_token(ctx: &ApplyCtx, state: &mut State, op: &op::RevokeToken) -> Response {
    let id = &op.id;
    let Some((hash, owner)) = state
        .token_by_id(id)
        .map(|(h, t)| (h.clone(), t.name.clone()))
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
    state.remove_token(&hash);
    EventBuilder::new("token.revoke")
        .message(format!("{id} of {owner}"))
        .record(ctx, state);
    Ok(Reply::Done)
}

#[cfg(test)]
mod tests {
    use crate::apply::apply;
    use crate::apply::test_support::{by_token, init};
    use crate::command::{op, Op};
    use crate::state::{State, TOKENS_PER_USER_MAX};
    use ingot_common::model::Role;
    use ingot_common::ErrorCode;

    fn token(id: &str, user: &str, expires_ms: Option<u64>) -> Op {
        Op::CreateToken(op::CreateToken {
            id: id.into(),
            token_hash: format!("hash-{id}"),
            user: user.into(),
            description: String::new(),
            expires_ms,
        })
    }

    /// A cluster with users alice and bob (role user); alice holds token `alice-t`.
    fn cluster() -> State {
        let mut s = State::default();
        apply(&mut s, &init(), 1).expect("bootstrap");
        for (i, name) in ["alice", "bob"].into_iter().enumerate() {
            let u = Op::CreateUser(op::CreateUser {
                name: name.into(),
                role: Role::User,
            });
            apply(&mut s, &by_token(2, "admin-init", "admin", u), 2 + i as u64).expect("user");
        }
        let t = by_token(3, "admin-init", "admin", token("alice-t", "alice", None));
        apply(&mut s, &t, 4).expect("token");
        s
    }

    #[test]
    fn a_user_creates_tokens_for_themself_only() {
        let mut s = cluster();
        let own = by_token(5, "alice-t", "alice", token("alice-2", "alice", None));
        apply(&mut s, &own, 5).expect("own token");
        let other = by_token(
            6,
            "alice-t",
            "alice",
            token("bob-1", "alice-is-not-bob", None),
        );
        let e = apply(&mut s, &other, 6).unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied, "{e:?}");
        let other = by_token(6, "alice-t", "alice", token("bob-1", "bob", None));
        let e = apply(&mut s, &other, 6).unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied, "{e:?}");
        assert!(s.token_by_id("bob-1").is_none());
        let by_admin = by_token(7, "admin-init", "admin", token("bob-1", "bob", None));
        apply(&mut s, &by_admin, 7).expect("an admin makes anyone's token");
        assert_eq!(s.token_count("bob"), 1);
    }

    #[test]
    fn tokens_per_user_are_capped_and_ids_unique() {
        let mut s = cluster();
        for i in 1..TOKENS_PER_USER_MAX {
            let c = by_token(
                10,
                "alice-t",
                "alice",
                token(&format!("a{i}"), "alice", None),
            );
            apply(&mut s, &c, 10 + i as u64).expect("under the cap");
        }
        assert_eq!(s.token_count("alice"), TOKENS_PER_USER_MAX);
        let c = by_token(10, "alice-t", "alice", token("one-more", "alice", None));
        let e = apply(&mut s, &c, 1_000).unwrap_err();
        assert_eq!(e.code, ErrorCode::ResourceExhausted, "{e:?}");
        // Not even an admin exceeds it for her; another user is not affected.
        let c = by_token(10, "admin-init", "admin", token("one-more", "alice", None));
        assert!(apply(&mut s, &c, 1_001).is_err());
        let c = by_token(10, "admin-init", "admin", token("a1", "bob", None));
        let e = apply(&mut s, &c, 1_002).unwrap_err();
        assert_eq!(e.code, ErrorCode::AlreadyExists, "a duplicate id: {e:?}");
        let c = by_token(10, "admin-init", "admin", token("b1", "bob", None));
        apply(&mut s, &c, 1_003).expect("bob has room");
        // Revoking one makes room again.
        let r = Op::RevokeToken(op::RevokeToken { id: "a1".into() });
        apply(&mut s, &by_token(11, "alice-t", "alice", r), 1_004).expect("revoke");
        let c = by_token(12, "alice-t", "alice", token("one-more", "alice", None));
        apply(&mut s, &c, 1_005).expect("room again");
    }

    /// The token indexes kept in apply equal the ones rebuilt from a snapshot, through creation,
    /// expiry, revocation and a user's deletion.
    #[test]
    fn token_indexes_match_a_rebuild_from_the_snapshot() {
        let mut s = cluster();
        let same = |s: &State| {
            let r = State::from_data(s.data.clone());
            assert_eq!(r.token_ids, s.token_ids);
            assert_eq!(r.tokens_by_user, s.tokens_by_user);
            assert_eq!(s.token_ids.len(), s.data.tokens.len());
        };
        let c = by_token(5, "alice-t", "alice", token("short", "alice", Some(50)));
        apply(&mut s, &c, 5).expect("short-lived");
        same(&s);
        // Expired tokens are forgotten when the next token is made.
        let c = by_token(60, "admin-init", "admin", token("b1", "bob", None));
        apply(&mut s, &c, 6).expect("bob's");
        assert!(s.token_by_id("short").is_none());
        same(&s);
        let r = Op::RevokeToken(op::RevokeToken { id: "b1".into() });
        apply(&mut s, &by_token(61, "admin-init", "admin", r), 7).expect("revoke");
        same(&s);
        let d = Op::DeleteUser(op::DeleteUser {
            name: "alice".into(),
        });
        apply(&mut s, &by_token(62, "admin-init", "admin", d), 8).expect("delete alice");
        assert_eq!(s.token_count("alice"), 0);
        same(&s);
        let (hash, t) = s.token_by_id("admin-init").expect("admin token");
        assert_eq!((hash.as_str(), t.name.as_str()), ("h", "admin"));
    }
}
