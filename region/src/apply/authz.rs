//! Authorization in the apply step: who may run each operation ([`rule`], the table), checked against the
//! replicated state before any handler runs. A command is refused here whatever the region that proposed
//! it believed: a token revoked or expired, an admin demoted while the command was on its way, a lagging
//! region that authenticated against old state, or a region that names an actor it never authenticated.
//!
//! Every command carries its [`Principal`]: the API token that authenticated it (by public id, with the
//! user it resolved to) or the internal proposer that made it. A token is resolved again here — it must
//! still exist, be unexpired at the command's time, belong to the user the command names, and that user's
//! *current* role decides. Handlers keep their own finer checks (owner or admin for a machine, a token's
//! owner for revocation), made against the same state.
//!
//! Old log entries: commands written before principals existed carry none. They apply exactly as they
//! always did (handlers only) until the log holds a command proposed by an upgraded leader — its worker's
//! first command (kind `Region`, see `app::worker`), or a new cluster's bootstrap (`Init`). Such a command
//! sets `principals_required`, replicated like all state; from then on a command without a principal is
//! refused. Keying the switch to a log position rather than to "has a principal" keeps a rolling upgrade
//! (followers first, the leader last) consistent: while an old leader still proposes commands without
//! principals, every replica — old or new — applies them the same way, and only a new leader switches.

use crate::command::{Command, Internal, Op, Principal};
use crate::state::State;
use ingot_common::model::Role;
use ingot_common::DomainError;

/// Who may run an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule<'a> {
    /// Admins' tokens.
    Admins,
    /// Any user's token; the handler checks what that user may touch (own machines, own tokens).
    Users,
    /// The token of this user itself, or an admin's.
    UserOrAdmin(&'a str),
    /// Only these internal proposers; no API token.
    Internal(&'static [Internal]),
}

/// The table: who may run `op`, and what the operation is called in a refusal.
fn rule(op: &Op) -> (Rule<'_>, &'static str) {
    use Internal as I;
    match op {
        Op::Bootstrap(_) => (Rule::Internal(&[I::Init]), "bootstrap the cluster"),
        Op::CreateMachine(_) => (Rule::Admins, "enlist machines"),
        Op::UpdateMachine(_) => (Rule::Admins, "change machines"),
        Op::DeleteMachine(_) => (Rule::Admins, "delete machines"),
        Op::CreateZone(_) => (Rule::Admins, "create zones"),
        Op::UpdateZone(_) => (Rule::Admins, "change zones"),
        Op::DeleteZone(_) => (Rule::Admins, "delete zones"),
        Op::CreateJoinToken(_) => (Rule::Admins, "create join tokens"),
        Op::AdmitRegion(_) => (Rule::Internal(&[I::JoiningRegion]), "admit regions"),
        Op::ForgetRegion(_) => (Rule::Admins, "remove regions"),
        Op::MachineAction(_) => (Rule::Users, "act on machines"),
        Op::Allocate(_) => (Rule::Users, "allocate machines"),
        Op::Outcome(_) => (Rule::Internal(&[I::Region, I::Agent]), "report outcomes"),
        Op::ReportInventory(_) => (Rule::Internal(&[I::Agent]), "report inventory"),
        Op::ReportProgress(_) => (Rule::Internal(&[I::Agent]), "report progress"),
        Op::CreatePool(_) => (Rule::Admins, "create pools"),
        Op::UpdatePool(_) => (Rule::Admins, "change pools"),
        Op::DeletePool(_) => (Rule::Admins, "delete pools"),
        Op::CreateTag(_) => (Rule::Admins, "create tags"),
        Op::UpdateTag(_) => (Rule::Admins, "change tags"),
        Op::DeleteTag(_) => (Rule::Admins, "delete tags"),
        Op::CreateUser(_) => (Rule::Admins, "create users"),
        Op::UpdateUser(_) => (Rule::Admins, "change users"),
        Op::DeleteUser(_) => (Rule::Admins, "delete users"),
        Op::CreateToken(o) => (Rule::UserOrAdmin(&o.user), "create tokens for other users"),
        Op::RevokeToken(_) => (Rule::Users, "revoke tokens"),
        Op::UpdateSettings(_) => (Rule::Admins, "change settings"),
        Op::CreateRackToken(_) => (Rule::Admins, "create rack enrollment tokens"),
        Op::RegisterRack(_) => (Rule::Internal(&[I::EnrollingRack]), "register racks"),
        Op::RevokeRack(_) => (Rule::Admins, "revoke racks"),
        Op::RackConnected(_) => (Rule::Internal(&[I::Rack]), "record rack sessions"),
        Op::RackHeartbeat(_) => (Rule::Internal(&[I::Rack]), "record rack heartbeats"),
        Op::RackDisconnected(_) => (Rule::Internal(&[I::Rack]), "end rack sessions"),
        Op::QueuePower(_) => (Rule::Users, "drive power"),
        Op::PowerResult(_) => (Rule::Internal(&[I::Rack]), "report power results"),
        Op::PowerObserved(_) => (Rule::Internal(&[I::Rack]), "report power observations"),
        Op::AssignBmcs(_) => (Rule::Internal(&[I::Region]), "assign BMCs to racks"),
        Op::IssueBootToken(_) => (Rule::Admins, "issue boot credentials"),
        Op::CreateSubnet(_) => (Rule::Admins, "create subnets"),
        Op::UpdateSubnet(_) => (Rule::Admins, "change subnets"),
        Op::DeleteSubnet(_) => (Rule::Admins, "delete subnets"),
        Op::CommitLeases(_) => (Rule::Internal(&[I::Rack]), "record DHCP leases"),
        Op::EnlistMachines(_) => (Rule::Internal(&[I::Rack]), "enlist PXE-booted machines"),
        Op::PutImage(_) => (Rule::Admins, "upload images"),
        Op::DeleteImage(_) => (Rule::Admins, "delete images"),
        Op::RecordBlobs(_) => (
            Rule::Internal(&[I::Region]),
            "record which regions hold image blobs",
        ),
        Op::RecordBootEvents(_) => (Rule::Internal(&[I::Rack]), "record network boot steps"),
        Op::ClaimBoot(_) => (Rule::Internal(&[I::Rack]), "hand boots to in-band agents"),
    }
}

/// Refuses `cmd` unless its principal may run its operation on `state` now (see the module doc); on
/// success, a command of an upgraded leader or of `init` switches the log to requiring principals.
pub(super) fn authorize(state: &mut State, cmd: &Command) -> Result<(), DomainError> {
    check(state, cmd)?;
    if matches!(
        cmd.principal,
        Some(Principal::Internal(Internal::Init | Internal::Region))
    ) {
        state.data.principals_required = true;
    }
    Ok(())
}

/// The check of [`authorize`] without its effect: also what a leader asks before an action that
/// happens outside the log (removing a region from the Raft membership).
pub fn check(state: &State, cmd: &Command) -> Result<(), DomainError> {
    let Some(principal) = &cmd.principal else {
        if state.data.principals_required {
            return Err(DomainError::unauthenticated(format!(
                "the command from '{}' names no principal: it was proposed by a region older than the cluster's log; upgrade that region",
                cmd.actor
            )));
        }
        return Ok(());
    };
    let (rule, what) = rule(&cmd.op);
    match (principal, rule) {
        (Principal::Internal(who), Rule::Internal(allowed)) if allowed.contains(who) => {}
        (Principal::Internal(who), _) => {
            return Err(DomainError::denied(format!(
                "{who:?} (an internal proposer) may not {what}"
            )))
        }
        (Principal::Token { id, .. }, Rule::Internal(_)) => {
            return Err(DomainError::denied(format!(
                "an API token ({id}) may not {what}: only the cluster does that"
            )))
        }
        (Principal::Token { id, user }, rule) => {
            let role = token_role(state, cmd, id, user)?;
            let allowed = match rule {
                Rule::Admins => role == Role::Admin,
                Rule::UserOrAdmin(u) => u == user || role == Role::Admin,
                Rule::Users => true,
                Rule::Internal(_) => false,
            };
            if !allowed {
                return Err(DomainError::denied(format!(
                    "only admins may {what}; user '{user}' is a {}",
                    role.as_str()
                )));
            }
        }
    }
    Ok(())
}

/// Resolves token `id` as of the command's time: it must exist, be unexpired, act for `user`, who must
/// be the command's actor. Answers the user's current role.
fn token_role(state: &State, cmd: &Command, id: &str, user: &str) -> Result<Role, DomainError> {
    let Some((_, t)) = state.token_by_id(id) else {
        return Err(DomainError::unauthenticated(format!(
            "token {id} was revoked (or never existed): authenticate with a current token"
        )));
    };
    let (owner, role) = state.token_caller(t, cmd.ts_ms)?;
    if owner != user || cmd.actor != user {
        return Err(DomainError::unauthenticated(format!(
            "the command names actor '{}' and user '{user}', but token {id} acts for '{owner}'",
            cmd.actor
        )));
    }
    Ok(role)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply;
    use crate::apply::test_support::{bootstrap, by_token, cmd, init, internal};
    use crate::command::{op, tests::OLD_FORMAT};
    use ingot_common::ErrorCode;

    /// A cluster bootstrapped by `init` (so principals are required), with user `alice` (role
    /// `alice_role`) holding token `alice-t`, made by the admin token `admin-init`.
    fn cluster(alice_role: Role) -> State {
        let mut s = State::default();
        apply(&mut s, &init(), 1).expect("bootstrap");
        assert!(s.data.principals_required);
        let admin = |ts, op| by_token(ts, "admin-init", "admin", op);
        let user = op::CreateUser {
            name: "alice".into(),
            role: alice_role,
        };
        apply(&mut s, &admin(2, Op::CreateUser(user)), 2).expect("user");
        let token = op::CreateToken {
            id: "alice-t".into(),
            token_hash: "ha".into(),
            user: "alice".into(),
            description: String::new(),
            expires_ms: Some(1_000),
        };
        apply(&mut s, &admin(3, Op::CreateToken(token)), 3).expect("token");
        s
    }

    fn zone(name: &str) -> Op {
        Op::CreateZone(op::CreateZone {
            name: name.into(),
            description: String::new(),
        })
    }

    fn code(r: Result<(), DomainError>) -> Option<ErrorCode> {
        r.err().map(|e| e.code)
    }

    /// Every operation (one of each, from the captured old-format commands) against every kind of
    /// caller: users run only what the handlers then check per machine or token, internal proposers
    /// only their own operations, and nobody without a principal once the log requires one.
    #[test]
    fn every_operation_is_refused_to_callers_the_table_does_not_name() {
        let s = cluster(Role::User);
        let user_ops = ["MachineAction", "Allocate", "QueuePower", "RevokeToken"];
        let internal_ops: &[(&str, &[Internal])] = &[
            ("Bootstrap", &[Internal::Init]),
            ("AdmitRegion", &[Internal::JoiningRegion]),
            ("RegisterRack", &[Internal::EnrollingRack]),
            ("Outcome", &[Internal::Region, Internal::Agent]),
            ("ReportInventory", &[Internal::Agent]),
            ("ReportProgress", &[Internal::Agent]),
            ("RackConnected", &[Internal::Rack]),
            ("RackHeartbeat", &[Internal::Rack]),
            ("RackDisconnected", &[Internal::Rack]),
            ("PowerResult", &[Internal::Rack]),
            ("PowerObserved", &[Internal::Rack]),
            ("AssignBmcs", &[Internal::Region]),
        ];
        let kinds = [
            Internal::Init,
            Internal::Region,
            Internal::Rack,
            Internal::Agent,
            Internal::JoiningRegion,
            Internal::EnrollingRack,
        ];
        for json in OLD_FORMAT {
            let old: Command = serde_json::from_str(json).expect("command");
            let name = serde_json::to_value(&old.op).expect("op");
            let name = name
                .as_object()
                .and_then(|o| o.keys().next().cloned())
                .expect("tag");
            let only = internal_ops.iter().find(|(n, _)| *n == name);
            let user = by_token(10, "alice-t", "alice", old.op.clone());
            let admin = by_token(10, "admin-init", "admin", old.op.clone());
            let none = cmd(10, old.op.clone());
            assert_eq!(
                code(check(&s, &none)),
                Some(ErrorCode::Unauthenticated),
                "{name} without a principal"
            );
            match only {
                Some((_, allowed)) => {
                    for c in [&user, &admin] {
                        assert_eq!(
                            code(check(&s, c)),
                            Some(ErrorCode::PermissionDenied),
                            "{name}"
                        );
                    }
                    for k in kinds {
                        let c = internal(10, k, "x", old.op.clone());
                        let want = (!allowed.contains(&k)).then_some(ErrorCode::PermissionDenied);
                        assert_eq!(code(check(&s, &c)), want, "{name} by {k:?}");
                    }
                }
                None => {
                    assert_eq!(code(check(&s, &admin)), None, "{name} by an admin");
                    let want =
                        (!user_ops.contains(&name.as_str())).then_some(ErrorCode::PermissionDenied);
                    assert_eq!(code(check(&s, &user)), want, "{name} by a user");
                    for k in kinds {
                        let c = internal(10, k, "x", old.op.clone());
                        assert_eq!(
                            code(check(&s, &c)),
                            Some(ErrorCode::PermissionDenied),
                            "{name} by {k:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_demoted_admin_is_refused_at_once() {
        let mut s = cluster(Role::Admin);
        apply(&mut s, &by_token(4, "alice-t", "alice", zone("z1")), 4).expect("admin alice");
        let demote = Op::UpdateUser(op::UpdateUser {
            name: "alice".into(),
            role: Role::User,
        });
        apply(&mut s, &by_token(5, "admin-init", "admin", demote), 5).expect("demote");
        // Proposed while alice was still an admin (the region that built it had not seen the
        // demotion): the apply step decides by the current role.
        let e = apply(&mut s, &by_token(6, "alice-t", "alice", zone("z2")), 6).unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied, "{e:?}");
        assert!(e.message.contains("only admins may create zones"), "{e:?}");
        assert!(!s.data.zones.contains_key("z2"));
    }

    #[test]
    fn revoked_and_expired_tokens_and_forged_principals_are_unauthenticated() {
        let mut s = cluster(Role::Admin);
        // Expiry is judged at the command's time (the token lives until 1000).
        let e = apply(&mut s, &by_token(1_000, "alice-t", "alice", zone("z1")), 4).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthenticated, "{e:?}");
        apply(&mut s, &by_token(999, "alice-t", "alice", zone("z1")), 5).expect("in time");
        // A token that acts for someone else, an actor that is not the token's user, an unknown id.
        for c in [
            by_token(6, "alice-t", "admin", zone("z2")),
            Command {
                actor: "admin".into(),
                ..by_token(6, "alice-t", "alice", zone("z2"))
            },
            by_token(6, "nosuchid", "admin", zone("z2")),
        ] {
            let e = apply(&mut s, &c, 6).unwrap_err();
            assert_eq!(e.code, ErrorCode::Unauthenticated, "{c:?}: {e:?}");
        }
        let revoke = Op::RevokeToken(op::RevokeToken {
            id: "alice-t".into(),
        });
        apply(&mut s, &by_token(7, "alice-t", "alice", revoke), 7).expect("revoke own");
        let e = apply(&mut s, &by_token(8, "alice-t", "alice", zone("z3")), 8).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthenticated, "{e:?}");
        assert!(e.message.contains("revoked"), "{e:?}");
        assert!(!s.data.zones.contains_key("z2") && !s.data.zones.contains_key("z3"));
    }

    /// Entries written before principals existed apply as they did — handlers only, whoever the actor
    /// — until an upgraded leader's first command; after it, a command without one is refused. The
    /// switch is replicated state: a snapshot keeps it.
    #[test]
    fn old_entries_apply_as_before_until_an_upgraded_leader_writes() {
        let mut s = State::default();
        apply(&mut s, &cmd(1, bootstrap()), 1).expect("old bootstrap");
        let old = |ts, op| Command {
            actor: "anyone".into(),
            ..cmd(ts, op)
        };
        apply(&mut s, &old(2, zone("z1")), 2).expect("an old entry applies unchecked");
        // A command with a principal is checked even before the switch, but does not switch.
        let e = apply(&mut s, &by_token(3, "nosuch", "anyone", zone("z2")), 3).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthenticated);
        apply(&mut s, &by_token(3, "admin-init", "admin", zone("z2")), 3).expect("admin");
        assert!(!s.data.principals_required);
        apply(&mut s, &old(4, zone("z3")), 4).expect("still the old way");
        let empty = Op::AssignBmcs(op::AssignBmcs {
            moves: Vec::new(),
            lease_ms: 0,
        });
        apply(&mut s, &internal(5, Internal::Region, "region", empty), 5).expect("switch");
        assert!(s.data.principals_required);
        let e = apply(&mut s, &old(6, zone("z4")), 6).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthenticated, "{e:?}");
        let reloaded: crate::state::Data =
            serde_json::from_str(&serde_json::to_string(&s.data).expect("snapshot")).expect("load");
        assert!(reloaded.principals_required);
    }
}
