//! The one place replicated state changes: `apply(state, command, rev)`.
//!
//! Deterministic by construction: it reads nothing but its arguments (time comes in `Command::ts_ms`, ids in
//! the ops), so every region that applies the same log reaches the same state. Every validation that
//! depends on state (uniqueness, existence, revisions) happens here — the API edge only checks syntax — so
//! two concurrent writers can never both succeed on a conflict.
//!
//! One handler per operation, taking the operation's own struct ([`crate::command::op`]) and an
//! `ApplyCtx` (actor, time, revision). Modules form layers, each using only the ones below it:
//! - this module: dispatch, and [`apply_once`]'s deduplication of retried requests;
//! - handlers, one module per family of operations: `cluster` (bootstrap, regions, settings),
//!   `machines`, `alloc`, `zones`, `pools`, `tags`, `users` (and tokens), `racks`, `power`;
//! - shared steps: `status` (the one place a machine's status is set, and outcomes), which returns the
//!   power plan of a move for `queue` (the power command queue) to queue;
//! - leaves: `ctx`, `events` (the `EventBuilder`), `lookup`, `tagging`.

pub mod alloc;
mod cluster;
mod ctx;
mod events;
mod lookup;
mod machines;
mod pools;
mod power;
pub mod queue;
mod racks;
mod status;
mod tagging;
mod tags;
mod users;
mod zones;

use crate::command::{Command, Op, Response};
use crate::state::State;
use ctx::ApplyCtx;

/// How long (ms) the answer to a command is remembered for retries of the same request id. Retries happen
/// within `node::LEADER_WAIT` (8 s), so a minute is ample.
pub const DEDUP_WINDOW_MS: u64 = 60 * 1000;
/// At most this many remembered answers (they are part of every snapshot, so keep them bounded).
pub const DEDUP_MAX: usize = 20_000;

/// Applies a log entry's command exactly once per request id: a repeated request id returns the answer
/// recorded the first time, without applying again.
pub fn apply_once(state: &mut State, cmd: &Command, rev: u64) -> Response {
    if let Some(r) = state.data.recent.get(&cmd.request_id) {
        return r.clone();
    }
    let r = apply(state, cmd, rev);
    state.data.revision = rev;
    if !cmd.request_id.is_empty() {
        let d = &mut state.data;
        d.recent.insert(cmd.request_id.clone(), r.clone());
        d.recent_order
            .push_back((cmd.ts_ms, cmd.request_id.clone()));
        while let Some((ts, id)) = d.recent_order.front() {
            if d.recent_order.len() > DEDUP_MAX || ts.saturating_add(DEDUP_WINDOW_MS) < cmd.ts_ms {
                d.recent.remove(id);
                d.recent_order.pop_front();
            } else {
                break;
            }
        }
    }
    r
}

/// Applies `cmd` to `state`; `rev` is this change's revision (see [`crate::command::revision`]). A
/// returned error leaves `state` unchanged.
pub fn apply(state: &mut State, cmd: &Command, rev: u64) -> Response {
    let ctx = &ApplyCtx::new(cmd, rev);
    match &cmd.op {
        Op::Bootstrap(op) => cluster::bootstrap(ctx, state, op),
        Op::CreateMachine(op) => machines::create(ctx, state, op),
        Op::UpdateMachine(op) => machines::update(ctx, state, op),
        Op::DeleteMachine(op) => machines::delete(ctx, state, op),
        Op::CreateZone(op) => zones::create(ctx, state, op),
        Op::UpdateZone(op) => zones::update(ctx, state, op),
        Op::DeleteZone(op) => zones::delete(ctx, state, op),
        Op::CreateJoinToken(op) => cluster::create_join_token(ctx, state, op),
        Op::AdmitRegion(op) => cluster::admit_region(ctx, state, op),
        Op::ForgetRegion(op) => cluster::forget_region(ctx, state, op),
        Op::MachineAction(op) => machines::action(ctx, state, op),
        Op::Allocate(op) => alloc::allocate(ctx, state, op),
        Op::Outcome(op) => status::outcome(ctx, state, op),
        Op::ReportInventory(op) => machines::report_inventory(ctx, state, op),
        Op::ReportProgress(op) => machines::report_progress(ctx, state, op),
        Op::CreatePool(op) => pools::create(ctx, state, op),
        Op::UpdatePool(op) => pools::update(ctx, state, op),
        Op::DeletePool(op) => pools::delete(ctx, state, op),
        Op::CreateTag(op) => tags::create(ctx, state, op),
        Op::UpdateTag(op) => tags::update(ctx, state, op),
        Op::DeleteTag(op) => tags::delete(ctx, state, op),
        Op::CreateUser(op) => users::create(ctx, state, op),
        Op::UpdateUser(op) => users::update(ctx, state, op),
        Op::DeleteUser(op) => users::delete(ctx, state, op),
        Op::CreateToken(op) => users::create_token(ctx, state, op),
        Op::RevokeToken(op) => users::revoke_token(ctx, state, op),
        Op::UpdateSettings(op) => cluster::update_settings(ctx, state, op),
        Op::CreateRackToken(op) => racks::create_token(ctx, state, op),
        Op::RegisterRack(op) => racks::register(ctx, state, op),
        Op::RevokeRack(op) => racks::revoke(ctx, state, op),
        Op::RackConnected(op) => racks::connected(ctx, state, op),
        Op::RackHeartbeat(op) => racks::heartbeat(ctx, state, op),
        Op::RackDisconnected(op) => racks::disconnected(ctx, state, op),
        Op::QueuePower(op) => power::queue(ctx, state, op),
        Op::PowerResult(op) => power::result(ctx, state, op),
        Op::PowerObserved(op) => power::observed(ctx, state, op),
        Op::AssignBmcs(op) => racks::assign_bmcs(ctx, state, op),
        Op::IssueBootToken(op) => machines::issue_boot_token(ctx, state, op),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{op, Reply};
    use ingot_common::pki::ClusterCa;
    use ingot_common::{PowerParams, RegionInfo};

    fn boot() -> State {
        let mut s = State::default();
        let ca = ClusterCa {
            cert_pem: String::new(),
            key_pem: String::new(),
        };
        let r = RegionInfo {
            node_id: 1,
            name: "r1".into(),
            raft_addr: "a".into(),
            api_addr: "b".into(),
            joined_ms: 0,
        };
        let cmd = Command {
            request_id: String::new(),
            ts_ms: 1,
            actor: "t".into(),
            op: Op::Bootstrap(op::Bootstrap {
                cluster_id: "c".into(),
                ca,
                admin_token_hash: "h".into(),
                first_region: r,
            }),
        };
        apply(&mut s, &cmd, 1).unwrap();
        assert!(apply(&mut s, &cmd, 2).is_err());
        s
    }

    fn create(s: &mut State, id: &str, host: &str, mac: &str, idx: u64) -> Response {
        let op = Op::CreateMachine(op::CreateMachine {
            system_id: id.into(),
            hostname: host.into(),
            arch: "amd64/generic".into(),
            zone: "default".into(),
            macs: vec![mac.parse().unwrap()],
            power: PowerParams::default(),
            description: String::new(),
            pool: None,
        });
        apply(
            s,
            &Command {
                request_id: String::new(),
                ts_ms: idx,
                actor: "t".into(),
                op,
            },
            idx,
        )
    }

    #[test]
    fn uniqueness_is_enforced_at_apply() {
        let mut s = boot();
        create(&mut s, "aaaaaa", "n1", "52:54:00:00:00:01", 2).unwrap();
        let e = create(&mut s, "bbbbbb", "n2", "52:54:00:00:00:01", 3).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("macs[0]"));
        let e = create(&mut s, "bbbbbb", "n1", "52:54:00:00:00:02", 4).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("hostname"));
        assert_eq!(s.data.machines.len(), 1);
        assert_eq!(s.zone_count("default"), 1);
    }

    #[test]
    fn revision_guards_updates_and_rename_moves_machines() {
        let mut s = boot();
        create(&mut s, "aaaaaa", "n1", "52:54:00:00:00:01", 2).unwrap();
        let upd = |rev| {
            Op::UpdateMachine(op::UpdateMachine {
                system_id: "aaaaaa".into(),
                hostname: Some("n9".into()),
                arch: None,
                zone: None,
                description: None,
                power: None,
                macs: None,
                expected_revision: rev,
            })
        };
        assert!(apply(
            &mut s,
            &Command {
                request_id: String::new(),
                ts_ms: 3,
                actor: "t".into(),
                op: upd(99)
            },
            3
        )
        .is_err());
        apply(
            &mut s,
            &Command {
                request_id: String::new(),
                ts_ms: 3,
                actor: "t".into(),
                op: upd(2),
            },
            3,
        )
        .unwrap();
        assert!(s.machine_by_hostname("n9").is_some() && s.machine_by_hostname("n1").is_none());
        let op = Op::CreateZone(op::CreateZone {
            name: "z1".into(),
            description: String::new(),
        });
        apply(
            &mut s,
            &Command {
                request_id: String::new(),
                ts_ms: 4,
                actor: "t".into(),
                op,
            },
            4,
        )
        .unwrap();
        let op = Op::UpdateZone(op::UpdateZone {
            name: "default".into(),
            description: None,
            new_name: Some("z2".into()),
        });
        assert!(apply(
            &mut s,
            &Command {
                request_id: String::new(),
                ts_ms: 5,
                actor: "t".into(),
                op
            },
            5
        )
        .is_err());
        let op = Op::DeleteZone(op::DeleteZone {
            name: "default".into(),
        });
        assert!(apply(
            &mut s,
            &Command {
                request_id: String::new(),
                ts_ms: 5,
                actor: "t".into(),
                op
            },
            5
        )
        .is_err());
    }

    #[test]
    fn join_tokens_are_single_use_and_expire() {
        let mut s = boot();
        let op = Op::CreateJoinToken(op::CreateJoinToken {
            token_hash: "t1".into(),
            expires_ms: 100,
        });
        apply(
            &mut s,
            &Command {
                request_id: String::new(),
                ts_ms: 2,
                actor: "t".into(),
                op,
            },
            2,
        )
        .unwrap();
        let admit = |name: &str| {
            Op::AdmitRegion(op::AdmitRegion {
                token_hash: "t1".into(),
                name: name.into(),
                raft_addr: "x".into(),
                api_addr: "y".into(),
            })
        };
        let r = apply(
            &mut s,
            &Command {
                request_id: String::new(),
                ts_ms: 3,
                actor: "t".into(),
                op: admit("r2"),
            },
            3,
        )
        .unwrap();
        assert!(matches!(r, Reply::Region(RegionInfo { node_id: 2, .. })));
        assert!(apply(
            &mut s,
            &Command {
                request_id: String::new(),
                ts_ms: 4,
                actor: "t".into(),
                op: admit("r3")
            },
            4
        )
        .is_err());
        let op = Op::CreateJoinToken(op::CreateJoinToken {
            token_hash: "t2".into(),
            expires_ms: 10,
        });
        apply(
            &mut s,
            &Command {
                request_id: String::new(),
                ts_ms: 5,
                actor: "t".into(),
                op,
            },
            5,
        )
        .unwrap();
        let op = Op::AdmitRegion(op::AdmitRegion {
            token_hash: "t2".into(),
            name: "r4".into(),
            raft_addr: "x".into(),
            api_addr: "y".into(),
        });
        let e = apply(
            &mut s,
            &Command {
                request_id: String::new(),
                ts_ms: 11,
                actor: "t".into(),
                op,
            },
            6,
        )
        .unwrap_err();
        assert!(e.message.contains("expired"));
    }
}

#[cfg(test)]
mod dedup_tests {
    use super::*;
    use crate::command::op;

    #[test]
    fn a_retried_request_is_applied_once() {
        let mut s = State::default();
        let cmd = |id: &str, name: &str| Command {
            request_id: id.into(),
            ts_ms: 1,
            actor: "t".into(),
            op: Op::CreateZone(op::CreateZone {
                name: name.into(),
                description: String::new(),
            }),
        };
        assert!(apply_once(&mut s, &cmd("r1", "z1"), 1).is_ok());
        // Same request again: same (successful) answer, not AlreadyExists.
        assert!(apply_once(&mut s, &cmd("r1", "z1"), 2).is_ok());
        assert!(apply_once(&mut s, &cmd("r2", "z1"), 3).is_err());
    }
}

#[cfg(test)]
mod invariant_tests;

/// What the apply tests share: an admin command and the first entry of a one-region cluster.
#[cfg(test)]
pub(crate) mod test_support {
    use crate::command::{op, Command, Op};
    use ingot_common::RegionInfo;

    /// A command from `admin` at time `ts`.
    pub(crate) fn cmd(ts: u64, op: Op) -> Command {
        Command {
            request_id: String::new(),
            ts_ms: ts,
            actor: "admin".into(),
            op,
        }
    }

    /// The bootstrap of cluster `c` with region `r1` (node 1).
    pub(crate) fn bootstrap() -> Op {
        Op::Bootstrap(op::Bootstrap {
            cluster_id: "c".into(),
            ca: ingot_common::pki::ClusterCa {
                cert_pem: String::new(),
                key_pem: String::new(),
            },
            admin_token_hash: "h".into(),
            first_region: RegionInfo {
                node_id: 1,
                name: "r1".into(),
                raft_addr: "a".into(),
                api_addr: "b".into(),
                joined_ms: 0,
            },
        })
    }
}
