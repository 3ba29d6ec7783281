//! The logic behind each service, free of transport types: authenticate, build commands, run them through
//! [`Region::write`], and read state behind [`Region::read_barrier`]. One module per service.

pub mod agent;
pub mod alloc;
pub mod cluster;
pub mod encoded;
pub mod events;
pub mod machines;
pub mod pools;
pub mod rack_session;
pub mod racks;
pub mod tags;
pub mod users;
pub mod views;
pub mod watch;
pub mod worker;
pub mod zones;

use crate::command::{Command, Op, Reply};
use crate::node::Region;
use crate::state::State;
use ingot_common::{secret, DomainError};
use std::sync::Arc;

/// The application: what every API handler calls.
#[derive(Clone)]
pub struct App {
    /// The local region.
    pub region: Arc<Region>,
    /// How long a rack may go without a recorded heartbeat before it counts as dead (ms).
    pub rack_grace_ms: u64,
}

/// The error for a write whose reply is not the kind its operation gives: a bug in this region (apply and
/// app disagree), never the caller's fault.
pub(crate) fn unexpected(reply: Reply) -> DomainError {
    DomainError::internal(format!(
        "unexpected reply {reply:?} from the state machine: a bug in this region, please report it"
    ))
}

/// Fails with InvalidArgument naming `field` when `value` is empty (a name that selects the object).
pub(crate) fn required(field: &str, value: &str) -> Result<(), DomainError> {
    if value.is_empty() {
        Err(DomainError::invalid(field, "required"))
    } else {
        Ok(())
    }
}

/// Who is calling, resolved from a bearer token.
#[derive(Clone, Debug)]
pub struct Actor {
    /// Token name (`admin` for the token made at init).
    pub name: String,
    /// `admin` or `user`.
    pub role: String,
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

impl App {
    /// Resolves an `authorization: Bearer <token>` header value to an actor. Token lookups read local
    /// state: tokens change rarely, and a stale read only delays a brand-new token by milliseconds.
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
        match st
            .data
            .tokens
            .iter()
            .find(|(h, _)| secret::hashes_equal(h, &hash))
        {
            Some((_, t)) if t.expires_ms.is_some_and(|e| e <= ingot_common::now_ms()) => {
                Err(DomainError::unauthenticated(format!(
                    "token {} expired; create a new one with `ingot tokens create`",
                    t.id
                )))
            }
            Some((_, t)) => Ok(Actor {
                name: t.name.clone(),
                role: st
                    .data
                    .users
                    .get(&t.name)
                    .map(|u| u.role.as_str().to_string())
                    .unwrap_or_else(|| t.role.clone()),
            }),
            None => Err(DomainError::unauthenticated("invalid or revoked token")),
        }
    }

    /// Wraps `op` in a command with a fresh request id and the current time.
    pub fn command(&self, actor: &Actor, op: Op) -> Command {
        Command::new(actor.name.clone(), op)
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

    /// Runs `f` on the state after a read barrier of the requested consistency.
    pub async fn read<T>(
        &self,
        linearizable: bool,
        f: impl FnOnce(&crate::state::State) -> T,
    ) -> Result<T, DomainError> {
        self.region.read_barrier(linearizable).await?;
        let st = crate::locks::read(&self.region.state);
        Ok(f(&st))
    }
}
