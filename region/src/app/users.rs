//! Users and their API tokens. Admins manage everyone; any caller can see who they are and list, create
//! and revoke their own tokens. Token secrets are returned once, at creation, and stored only as hashes.

use super::required;
use super::{Actor, App};
use crate::command::{op, Op, Reply};
use crate::state::{token_id_of, ApiToken, State, TOKENS_PER_USER_MAX};
use ingot_common::model::{Role, User};
use ingot_common::{secret, validate, DomainError};

/// A user with the numbers UserService shows next to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// The user record.
    pub user: User,
    /// Machines the user holds.
    pub machine_count: u64,
    /// API tokens acting as the user.
    pub token_count: u32,
}

/// An API token as listed: everything but the secret, which the cluster never stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// Short public id, what `RevokeToken` takes.
    pub id: String,
    /// The user the token acts as.
    pub user: String,
    /// What the token is for.
    pub description: String,
    /// Creation time (ms since epoch).
    pub created_ms: u64,
    /// Expiry (ms since epoch); `None`: never.
    pub expires_ms: Option<u64>,
}

/// What `CreateToken` answers: the token and its bearer secret, which is shown this once only.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// The stored token.
    pub token: TokenInfo,
    /// The bearer secret.
    pub secret: String,
}

/// Length of a token's public id.
const TOKEN_ID_LEN: usize = 8;

fn user(r: Reply) -> Result<User, DomainError> {
    match r {
        Reply::User(u) => Ok(u),
        other => Err(super::unexpected(other)),
    }
}

fn user_info(st: &State, u: &User) -> UserInfo {
    UserInfo {
        user: u.clone(),
        machine_count: st
            .by_owner
            .get(&u.name)
            .map(|s| s.len() as u64)
            .unwrap_or(0),
        token_count: st.token_count(&u.name).try_into().unwrap_or(u32::MAX),
    }
}

fn token_info(hash: &str, t: &ApiToken) -> TokenInfo {
    TokenInfo {
        id: token_id_of(hash, t),
        user: t.name.clone(),
        description: t.description.clone(),
        created_ms: t.created_ms,
        expires_ms: t.expires_ms,
    }
}

/// Tokens of `user` (everyone's when `None`), ordered by user, then creation, then id.
fn tokens_of(st: &State, user: Option<&str>) -> Vec<TokenInfo> {
    let mut out: Vec<TokenInfo> = match user {
        Some(u) => st
            .tokens_by_user
            .get(u)
            .into_iter()
            .flatten()
            .filter_map(|h| st.data.tokens.get_key_value(h))
            .map(|(h, t)| token_info(h, t))
            .collect(),
        None => st
            .data
            .tokens
            .iter()
            .map(|(h, t)| token_info(h, t))
            .collect(),
    };
    out.sort_by(|a, b| (&a.user, a.created_ms, &a.id).cmp(&(&b.user, b.created_ms, &b.id)));
    out
}

/// Whose tokens a `ListTokens` call may see: `Some(user)` for one user (the caller by default), `None`
/// for everyone. Only admins look beyond their own.
fn token_scope(actor: &Actor, user: &str, all: bool) -> Result<Option<String>, DomainError> {
    if all {
        if !user.is_empty() {
            return Err(DomainError::invalid(
                "user",
                "leave it empty with all = true (all lists every user's tokens)",
            ));
        }
        actor.require_admin("list every user's tokens")?;
        return Ok(None);
    }
    if user.is_empty() || user == actor.name {
        return Ok(Some(actor.name.clone()));
    }
    actor.require_admin("list other users' tokens")?;
    Ok(Some(user.to_string()))
}

/// Expiry of a token created at `now_ms` living `ttl_seconds` (0: never).
fn expiry(now_ms: u64, ttl_seconds: u64) -> Option<u64> {
    (ttl_seconds > 0).then(|| now_ms.saturating_add(ttl_seconds.saturating_mul(1000)))
}

/// A fresh short public id: the first letters and digits of a random token (no `-` or `_`, so an id
/// never reads as a command-line flag), distinct from every stored id.
fn token_id(st: &State) -> String {
    let mut id = String::new();
    for _ in 0..16 {
        id = secret::generate("")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(TOKEN_ID_LEN)
            .collect();
        if !st.token_ids.contains_key(&id) {
            break;
        }
    }
    id
}

impl App {
    /// The caller: name and role from its token, with what it holds. Tokens made before users existed
    /// have no user record; they are shown with the token's role and the creation of their first token.
    pub async fn who_am_i(&self, actor: &Actor) -> Result<UserInfo, DomainError> {
        self.read(actor, false, |st| {
            let created_ms = match st.data.users.get(&actor.name) {
                Some(u) => u.created_ms,
                None => st
                    .tokens_of_user(&actor.name)
                    .map(|t| t.created_ms)
                    .min()
                    .unwrap_or(0),
            };
            let u = User {
                name: actor.name.clone(),
                role: Role::parse(&actor.role).unwrap_or(Role::User),
                created_ms,
            };
            user_info(st, &u)
        })
        .await
    }

    /// Creates a user (admin). The user can do nothing until a token is made for them.
    pub async fn create_user(
        &self,
        actor: &Actor,
        name: String,
        role: Role,
    ) -> Result<UserInfo, DomainError> {
        actor.require_admin("create users")?;
        validate::name("name", &name)?;
        let u = user(
            self.region
                .write(self.command(actor, Op::CreateUser(op::CreateUser { name, role })))
                .await?,
        )?;
        Ok(self.read_after_write(|st| user_info(st, &u)).await)
    }

    /// Every user, by name (admin).
    pub async fn list_users(
        &self,
        actor: &Actor,
        linearizable: bool,
    ) -> Result<Vec<UserInfo>, DomainError> {
        actor.require_admin("list users")?;
        self.read(actor, linearizable, |st| {
            st.data.users.values().map(|u| user_info(st, u)).collect()
        })
        .await
    }

    /// Changes a user's role (admin); their tokens follow. The last admin cannot be demoted.
    pub async fn update_user(
        &self,
        actor: &Actor,
        name: String,
        role: Role,
    ) -> Result<UserInfo, DomainError> {
        actor.require_admin("change users")?;
        required("name", &name)?;
        let u = user(
            self.region
                .write(self.command(actor, Op::UpdateUser(op::UpdateUser { name, role })))
                .await?,
        )?;
        Ok(self.read_after_write(|st| user_info(st, &u)).await)
    }

    /// Deletes a user and revokes their tokens (admin); refused while they hold machines or are the
    /// last admin.
    pub async fn delete_user(&self, actor: &Actor, name: String) -> Result<(), DomainError> {
        actor.require_admin("delete users")?;
        required("name", &name)?;
        self.region
            .write(self.command(actor, Op::DeleteUser(op::DeleteUser { name })))
            .await?;
        Ok(())
    }

    /// Creates an API token for `user` (the caller when empty; only admins create tokens for others),
    /// living `ttl_seconds` (0: never expires). Only the secret's hash is replicated; the secret itself
    /// is in the answer and nowhere else.
    pub async fn create_token(
        &self,
        actor: &Actor,
        user: String,
        description: String,
        ttl_seconds: u64,
    ) -> Result<NewToken, DomainError> {
        let user = if user.is_empty() {
            actor.name.clone()
        } else {
            validate::name("user", &user)?;
            user
        };
        if user != actor.name {
            actor.require_admin("create tokens for other users")?;
        }
        validate::description("description", &description)?;
        let secret = secret::generate("ingot_");
        let id = {
            let st = crate::locks::read(&self.region.state);
            // Fail fast on the cap; the apply step has the final word.
            let held = st.token_count(&user);
            if held >= TOKENS_PER_USER_MAX {
                return Err(DomainError::exhausted(format!(
                    "user '{user}' holds {held} tokens, the most allowed ({TOKENS_PER_USER_MAX}); revoke unused ones first (ingot tokens list, ingot tokens revoke ID)"
                )));
            }
            token_id(&st)
        };
        // Creation time and expiry come from one clock reading, the one the command carries.
        let now = ingot_common::now_ms();
        let expires_ms = expiry(now, ttl_seconds);
        let mut cmd = self.command(
            actor,
            Op::CreateToken(op::CreateToken {
                id: id.clone(),
                token_hash: secret::hash(&secret),
                user: user.clone(),
                description: description.clone(),
                expires_ms,
            }),
        );
        cmd.ts_ms = now;
        self.region.write(cmd).await?;
        Ok(NewToken {
            token: TokenInfo {
                id,
                user,
                description,
                created_ms: now,
                expires_ms,
            },
            secret,
        })
    }

    /// Lists tokens: the caller's own by default; admins may name a `user`, or ask for `all`.
    pub async fn list_tokens(
        &self,
        actor: &Actor,
        user: &str,
        all: bool,
        linearizable: bool,
    ) -> Result<Vec<TokenInfo>, DomainError> {
        if !user.is_empty() {
            validate::name("user", user)?;
        }
        let scope = token_scope(actor, user, all)?;
        self.read(actor, linearizable, |st| tokens_of(st, scope.as_deref()))
            .await
    }

    /// Revokes a token by id: the caller's own, or anyone's for admins. The apply step enforces
    /// ownership; this refuses early when local state already shows the token is someone else's.
    pub async fn revoke_token(&self, actor: &Actor, id: String) -> Result<(), DomainError> {
        required("id", &id)?;
        let owner = {
            let st = crate::locks::read(&self.region.state);
            st.token_by_id(&id).map(|(_, t)| t.name.clone())
        };
        if owner.is_some_and(|o| o != actor.name) {
            actor.require_admin("revoke other users' tokens")?;
        }
        self.region
            .write(self.command(actor, Op::RevokeToken(op::RevokeToken { id })))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::zones::tests::machine;
    use ingot_common::{ErrorCode, MachineStatus};

    fn actor(name: &str, role: &str) -> Actor {
        Actor {
            name: name.into(),
            role: role.into(),
            principal: crate::command::Principal::Token {
                id: format!("{name}-t"),
                user: name.into(),
            },
        }
    }

    fn token(st: &mut State, hash: &str, id: &str, user: &str, created_ms: u64) {
        st.put_token(
            hash.into(),
            ApiToken {
                name: user.into(),
                role: "user".into(),
                created_ms,
                id: id.into(),
                description: String::new(),
                expires_ms: None,
            },
        );
    }

    #[test]
    fn scope_defaults_to_the_caller_and_only_admins_widen_it() {
        let alice = actor("alice", "user");
        let root = actor("root", "admin");
        assert_eq!(
            token_scope(&alice, "", false).unwrap(),
            Some("alice".to_string())
        );
        assert_eq!(
            token_scope(&alice, "alice", false).unwrap(),
            Some("alice".to_string())
        );
        assert_eq!(
            token_scope(&alice, "bob", false).unwrap_err().code,
            ErrorCode::PermissionDenied
        );
        assert_eq!(
            token_scope(&alice, "", true).unwrap_err().code,
            ErrorCode::PermissionDenied
        );
        assert_eq!(
            token_scope(&root, "bob", false).unwrap(),
            Some("bob".to_string())
        );
        assert_eq!(token_scope(&root, "", true).unwrap(), None);
        let e = token_scope(&root, "bob", true).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("user"));
    }

    #[test]
    fn tokens_are_listed_per_user_in_creation_order() {
        let mut st = State::default();
        token(&mut st, "h1", "bbbb", "alice", 20);
        token(&mut st, "h2", "aaaa", "alice", 10);
        token(&mut st, "h3", "cccc", "bob", 5);
        let ids = |v: Vec<TokenInfo>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
        assert_eq!(ids(tokens_of(&st, Some("alice"))), ["aaaa", "bbbb"]);
        assert_eq!(ids(tokens_of(&st, None)), ["aaaa", "bbbb", "cccc"]);
        assert!(tokens_of(&st, Some("carol")).is_empty());
    }

    #[test]
    fn user_info_counts_machines_and_tokens() {
        let mut st = State::default();
        let mut m = machine("a", "z", MachineStatus::Allocated);
        m.owner = Some("alice".into());
        st.put_machine(m);
        token(&mut st, "h1", "aaaa", "alice", 1);
        token(&mut st, "h2", "bbbb", "bob", 1);
        let u = User {
            name: "alice".into(),
            role: Role::User,
            created_ms: 0,
        };
        let i = user_info(&st, &u);
        assert_eq!((i.machine_count, i.token_count), (1, 1));
    }

    #[test]
    fn expiry_and_ids() {
        assert_eq!(expiry(1_000, 0), None);
        assert_eq!(expiry(1_000, 60), Some(61_000));
        assert_eq!(expiry(1, u64::MAX), Some(u64::MAX));
        let st = State::default();
        let id = token_id(&st);
        assert_eq!(id.len(), TOKEN_ID_LEN);
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
