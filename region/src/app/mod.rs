//! The logic behind each service, free of transport types: authenticate, build commands, run them through
//! [`Region::write`], and read state behind [`Region::read_barrier`]. One module per service.

pub mod agent;
pub mod alloc;
pub mod blob_sync;
pub mod boot;
pub mod boot_intent;
pub mod cluster;
pub mod encoded;
pub mod events;
pub mod images;
pub mod machines;
pub mod pools;
pub mod prefetch;
pub mod rack_session;
pub mod racks;
pub mod subnets;
pub mod tags;
pub mod users;
pub mod views;
pub mod watch;
pub mod worker;
pub mod zones;

use crate::command::{Command, Op, Principal, Reply};
use crate::node::Region;
use crate::state::{token_id_of, State};
use ingot_common::{secret, DomainError};
use std::sync::Arc;

/// The application: what every API handler calls.
#[derive(Clone)]
pub struct App {
    /// The local region.
    pub region: Arc<Region>,
    /// How long a rack may go without a recorded heartbeat before it counts as dead (ms).
    pub rack_grace_ms: u64,
    /// This region's copies of image files (`<data dir>/blobs`).
    pub blobs: Arc<crate::blobs::BlobStore>,
}

/// The error for a write whose reply is not the kind its operation gives: a bug in this region (apply and
/// app disagree), never the caller's fault.
pub(crate) fn unexpected(reply: Reply) -> DomainError {
    DomainError::internal(format!(
        "unexpected reply {reply:?} from the state machine: a bug in this region, please report it"
    ))
}

/// Fails with InvalidArgument naming `field` when `value` (a name that selects the object) is empty or
/// longer than [`ingot_common::validate::limits::KEY`] bytes: it is carried into the log by updates and
/// deletes, and no stored name is longer.
pub(crate) fn required(field: &str, value: &str) -> Result<(), DomainError> {
    ingot_common::validate::key(field, value)
}

/// Who is calling, resolved from a bearer token.
#[derive(Clone, Debug)]
pub struct Actor {
    /// The token's user (`admin` for the token made at init).
    pub name: String,
    /// `admin` or `user`.
    pub role: String,
    /// How the caller was authenticated (the token's id, or an internal proposer): carried in every
    /// command this actor makes, so the apply step checks it again against the replicated state.
    pub principal: Principal,
}

impl Actor {
    /// True for admins.
    pub fn is_admin(&self) -> bool {
        self.role == "admin"
    }

    /// Fails unless the caller is an admin.
    pub fn require_admin(&self, what: &str) -> Result<(), DomainError> {
        if self.role == "admin" {
            Ok(())
        } else {
            Err(DomainError::denied(format!("only admins may {what}")))
        }
    }
}

impl Actor {
    /// Fails unless this actor's token still acts for the same user with the same role in `st`, at
    /// `now_ms`: the re-check of a linearizable read on state at least as new as its read index.
    pub(crate) fn still_holds(&self, st: &State, now_ms: u64) -> Result<(), DomainError> {
        let Principal::Token { id, .. } = &self.principal else {
            return Ok(());
        };
        let Some((_, t)) = st.token_by_id(id) else {
            return Err(DomainError::unauthenticated(format!(
                "token {id} was revoked: authenticate with a current token"
            )));
        };
        let (user, role) = st.token_caller(t, now_ms)?;
        if user != self.name {
            return Err(DomainError::unauthenticated(format!(
                "token {id} now acts for '{user}', not '{}'",
                self.name
            )));
        }
        if role.as_str() != self.role {
            return Err(DomainError::denied(format!(
                "the role of '{user}' changed from {} to {} while this request ran; retry it",
                self.role,
                role.as_str()
            )));
        }
        Ok(())
    }
}

impl App {
    /// Resolves an `authorization: Bearer <token>` header value to an actor, against this region's
    /// state: one map lookup by the token's SHA-256 (timing can at most reveal something about a hash
    /// near the guess, never a secret). This state may lag the leader; what that means is settled
    /// later — a write is authorized again in apply by the current state, a linearizable read checks
    /// the token again after its barrier ([`App::read`]); only a stale read trusts this answer alone.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Actor, DomainError> {
        let Some(h) = authorization else {
            return Err(DomainError::unauthenticated(
                "missing credentials: send the header 'authorization: Bearer <token>' (the admin token is in the first region's data directory, admin.token)",
            ));
        };
        let token = h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
            .unwrap_or("")
            .trim();
        if token.is_empty() {
            return Err(DomainError::unauthenticated(
                "malformed authorization header: expected 'Bearer <token>'",
            ));
        }
        let hash = secret::hash(token);
        let st = crate::locks::read(&self.region.state);
        let Some((hash, t)) = st.data.tokens.get_key_value(&hash) else {
            return Err(DomainError::unauthenticated("invalid or revoked token"));
        };
        let (name, role) = st.token_caller(t, ingot_common::now_ms())?;
        Ok(Actor {
            principal: Principal::Token {
                id: token_id_of(hash, t),
                user: name.clone(),
            },
            name,
            role: role.as_str().to_string(),
        })
    }

    /// Wraps `op` in a command from `actor` (with its principal), a fresh request id and the current
    /// time.
    pub fn command(&self, actor: &Actor, op: Op) -> Command {
        Command::new(actor.name.clone(), actor.principal.clone(), op)
    }

    /// Runs `f` on the state once it includes the caller's last write. A write proposed through a
    /// follower is applied there a heartbeat after the leader answered, so a reply built from local
    /// state alone could miss it; this waits for a linearizable barrier first. The barrier is best
    /// effort: the write already succeeded, so if no leader answers now, `f` sees the local state.
    pub(crate) async fn read_after_write<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        if let Err(e) = self.region.read_barrier(true).await {
            tracing::debug!("read barrier after a write failed, answering from local state: {e}");
        }
        let st = crate::locks::read(&self.region.state);
        f(&st)
    }

    /// Runs `f` for `actor` on the state after a read barrier of the requested consistency.
    ///
    /// A linearizable read checks the caller's token again on the state it reads, which is at least as
    /// new as the read index: a token revoked, expired or demoted before the read began is refused,
    /// even when this region authenticated the caller against older state. A stale read promises
    /// less: it is authenticated and answered from this region's state as it is, which may lag the
    /// leader (by the replication delay; without bound while this region is cut off), so a revoked
    /// token or a demoted admin can still read through a lagging region until it catches up — never
    /// write, since every write is authorized again in apply.
    pub async fn read<T>(
        &self,
        actor: &Actor,
        linearizable: bool,
        f: impl FnOnce(&State) -> T,
    ) -> Result<T, DomainError> {
        self.region.read_barrier(linearizable).await?;
        let st = crate::locks::read(&self.region.state);
        if linearizable {
            actor.still_holds(&st, ingot_common::now_ms())?;
        }
        Ok(f(&st))
    }

    /// Runs `f` on the state after a read barrier, for callers that hold no API token (an agent's boot
    /// token and a rack's certificate are checked by the caller, inside or before `f`).
    pub async fn read_internal<T>(
        &self,
        linearizable: bool,
        f: impl FnOnce(&State) -> T,
    ) -> Result<T, DomainError> {
        self.region.read_barrier(linearizable).await?;
        let st = crate::locks::read(&self.region.state);
        Ok(f(&st))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply;
    use crate::apply::test_support::{by_token, init};
    use crate::command::op;
    use ingot_common::model::Role;
    use ingot_common::ErrorCode;

    /// The re-check of a linearizable read: the actor a lagging region authenticated (an admin, with
    /// token `bob-t`) no longer holds on newer state once demoted, revoked or expired.
    #[test]
    fn a_read_rechecks_the_token_on_the_state_it_reads() {
        let mut s = State::default();
        apply(&mut s, &init(), 1).expect("bootstrap");
        let admin = |ts, op| by_token(ts, "admin-init", "admin", op);
        let user = Op::CreateUser(op::CreateUser {
            name: "bob".into(),
            role: Role::Admin,
        });
        apply(&mut s, &admin(2, user), 2).expect("user");
        let token = Op::CreateToken(op::CreateToken {
            id: "bob-t".into(),
            token_hash: "hb".into(),
            user: "bob".into(),
            description: String::new(),
            expires_ms: Some(1_000),
        });
        apply(&mut s, &admin(3, token), 3).expect("token");
        let bob = Actor {
            name: "bob".into(),
            role: "admin".into(),
            principal: Principal::Token {
                id: "bob-t".into(),
                user: "bob".into(),
            },
        };
        bob.still_holds(&s, 10).expect("unchanged");
        let e = bob.still_holds(&s, 1_000).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthenticated, "expired: {e:?}");
        let demote = Op::UpdateUser(op::UpdateUser {
            name: "bob".into(),
            role: Role::User,
        });
        apply(&mut s, &admin(4, demote), 4).expect("demote");
        let e = bob.still_holds(&s, 10).unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied, "demoted: {e:?}");
        let revoke = Op::RevokeToken(op::RevokeToken { id: "bob-t".into() });
        apply(&mut s, &admin(5, revoke), 5).expect("revoke");
        let e = bob.still_holds(&s, 10).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthenticated, "revoked: {e:?}");
    }
}
