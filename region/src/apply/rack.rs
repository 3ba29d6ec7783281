//! Rack controllers in the apply step: enrollment, sessions and BMC ownership (the power command queue is
//! in [`super::power`]).

use super::emit;
use crate::command::{Command, Reply, Response};
use crate::state::State;
use ingot_common::model::{EventLevel, Rack, RackSession};
use ingot_common::{secret, validate, DomainError};

fn log(state: &mut State, cmd: &Command, rev: u64, kind: &str, level: EventLevel, msg: String) {
    emit(state, cmd, rev, kind, level, None, None, None, msg);
}

/// Records an enrollment token.
pub(super) fn create_token(
    state: &mut State,
    cmd: &Command,
    token_hash: &str,
    expires_ms: u64,
) -> Response {
    let now = cmd.ts_ms;
    state.data.rack_tokens.retain(|_, exp| *exp > now);
    state
        .data
        .rack_tokens
        .insert(token_hash.to_string(), expires_ms);
    Ok(Reply::Done)
}

/// Consumes a token and records the rack.
pub(super) fn register(
    state: &mut State,
    cmd: &Command,
    rev: u64,
    token_hash: &str,
    name: &str,
    zone: &str,
) -> Response {
    let now = cmd.ts_ms;
    let Some((stored, exp)) = state
        .data
        .rack_tokens
        .iter()
        .find(|(h, _)| secret::hashes_equal(h, token_hash))
        .map(|(h, e)| (h.clone(), *e))
    else {
        return Err(DomainError::unauthenticated(
            "enrollment token unknown or already used: create a new one with `ingot racks token create`",
        ));
    };
    if exp <= now {
        state.data.rack_tokens.remove(&stored);
        return Err(DomainError::unauthenticated(
            "enrollment token expired: create a new one with `ingot racks token create`",
        ));
    }
    validate::dns_label("name", name)?;
    if !state.data.zones.contains_key(zone) {
        return Err(DomainError::not_found(format!(
            "zone '{zone}' does not exist; create it first (ingot zones create {zone})"
        )));
    }
    if state.data.racks.contains_key(name) {
        return Err(DomainError::exists(
            "name",
            format!("a rack named '{name}' is already registered; pick another name or revoke it"),
        ));
    }
    state.data.rack_tokens.remove(&stored);
    let r = Rack {
        name: name.to_string(),
        zone: zone.to_string(),
        registered_ms: now,
        revoked: false,
        session: None,
    };
    state.data.racks.insert(name.to_string(), r.clone());
    log(
        state,
        cmd,
        rev,
        "rack.register",
        EventLevel::Info,
        format!("{name} in zone {zone}"),
    );
    Ok(Reply::Rack(Box::new(r)))
}

/// Revokes a rack: its session ends and its BMCs become free for other racks.
pub(super) fn revoke(state: &mut State, cmd: &Command, rev: u64, name: &str) -> Response {
    let Some(mut r) = state.data.racks.get(name).cloned() else {
        return Err(DomainError::not_found(format!(
            "rack '{name}' does not exist"
        )));
    };
    r.revoked = true;
    r.session = None;
    state.data.racks.insert(name.to_string(), r.clone());
    release_bmcs(state, cmd, rev, name);
    log(
        state,
        cmd,
        rev,
        "rack.revoke",
        EventLevel::Warning,
        name.to_string(),
    );
    Ok(Reply::Rack(Box::new(r)))
}

/// Unassigns every BMC `rack` owns (the leader's worker reassigns them to live racks).
fn release_bmcs(state: &mut State, cmd: &Command, rev: u64, rack: &str) {
    let ids: Vec<String> = state
        .by_rack
        .get(rack)
        .map(|s| s.iter().cloned().collect())
        .unwrap_or_default();
    for id in ids {
        if let Some(mut m) = state.machine(&id).cloned() {
            m.rack = None;
            m.updated_ms = cmd.ts_ms;
            m.revision = rev;
            state.put_machine(m);
        }
    }
}

/// Records a new session (replacing an older one of the same rack).
pub(super) fn connected(
    state: &mut State,
    cmd: &Command,
    rev: u64,
    name: &str,
    session: &RackSession,
) -> Response {
    let Some(mut r) = state.data.racks.get(name).cloned() else {
        return Err(DomainError::not_found(format!(
            "rack '{name}' is not registered"
        )));
    };
    if r.revoked {
        return Err(DomainError::denied(format!("rack '{name}' is revoked")));
    }
    let mut s = session.clone();
    s.connected_ms = cmd.ts_ms;
    s.last_heartbeat_ms = cmd.ts_ms;
    s.ended_ms = None;
    r.session = Some(s);
    state.data.racks.insert(name.to_string(), r.clone());
    log(
        state,
        cmd,
        rev,
        "rack.connect",
        EventLevel::Info,
        format!(
            "{name} -> region {} ({})",
            session.region_name, session.region_id
        ),
    );
    Ok(Reply::Rack(Box::new(r)))
}

/// Records a heartbeat of the current session; stale sessions are ignored.
pub(super) fn heartbeat(
    state: &mut State,
    cmd: &Command,
    name: &str,
    session_id: &str,
) -> Response {
    let Some(r) = state.data.racks.get_mut(name) else {
        return Err(DomainError::not_found(format!(
            "rack '{name}' is not registered"
        )));
    };
    match r.session.as_mut() {
        Some(s) if s.session_id == session_id && s.ended_ms.is_none() && !r.revoked => {
            s.last_heartbeat_ms = s.last_heartbeat_ms.max(cmd.ts_ms);
            Ok(Reply::Done)
        }
        _ => Err(DomainError::precondition(format!(
            "session {session_id} of rack '{name}' is not its current session"
        ))),
    }
}

/// Ends the current session if it is `session_id`.
pub(super) fn disconnected(
    state: &mut State,
    cmd: &Command,
    rev: u64,
    name: &str,
    session_id: &str,
    last_seen_ms: u64,
) -> Response {
    let Some(r) = state.data.racks.get_mut(name) else {
        return Ok(Reply::Done);
    };
    if let Some(s) = r
        .session
        .as_mut()
        .filter(|s| s.session_id == session_id && s.ended_ms.is_none())
    {
        // Kept, marked ended: the rack holds its BMCs for the grace time from when it was last heard
        // (a hung rack's stream ends only when keepalive gives up, seconds after its last message).
        s.ended_ms = Some(cmd.ts_ms);
        let seen = if last_seen_ms == 0 {
            cmd.ts_ms
        } else {
            last_seen_ms.min(cmd.ts_ms)
        };
        s.last_heartbeat_ms = s.last_heartbeat_ms.max(seen);
        log(
            state,
            cmd,
            rev,
            "rack.disconnect",
            EventLevel::Warning,
            name.to_string(),
        );
    }
    Ok(Reply::Done)
}

/// Moves BMCs between racks.
pub(super) fn assign(
    state: &mut State,
    cmd: &Command,
    rev: u64,
    moves: &[(String, Option<String>)],
) -> Response {
    let mut moved = 0usize;
    for (id, rack) in moves {
        if let Some(r) = rack {
            if state.data.racks.get(r).is_none_or(|x| x.revoked) {
                continue;
            }
        }
        let Some(mut m) = state.machine(id).cloned() else {
            continue;
        };
        if m.rack == *rack {
            continue;
        }
        m.rack = rack.clone();
        m.updated_ms = cmd.ts_ms;
        m.revision = rev;
        state.put_machine(m);
        moved += 1;
    }
    if moved > 0 {
        let summary: Vec<String> = moves
            .iter()
            .take(8)
            .map(|(id, r)| format!("{id}->{}", r.as_deref().unwrap_or("-")))
            .collect();
        log(
            state,
            cmd,
            rev,
            "bmc.assign",
            EventLevel::Info,
            format!("{moved} BMC(s): {}", summary.join(" ")),
        );
    }
    Ok(Reply::Done)
}

#[cfg(test)]
mod tests {
    use crate::apply::apply;
    use crate::command::{Command, Op, Reply};
    use crate::state::State;
    use ingot_common::model::{CommandState, RackSession};
    use ingot_common::{ErrorCode, PowerParams, RegionInfo};

    fn cmd(ts: u64, op: Op) -> Command {
        Command {
            request_id: String::new(),
            ts_ms: ts,
            actor: "admin".into(),
            op,
        }
    }

    fn cluster() -> State {
        let mut s = State::default();
        let boot = Op::Bootstrap {
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
        };
        apply(&mut s, &cmd(1, boot), 1).expect("boot");
        s
    }

    fn session(id: &str) -> RackSession {
        RackSession {
            session_id: id.into(),
            region_id: 1,
            region_name: "r1".into(),
            version: "0".into(),
            services: vec!["power".into()],
            drivers: vec!["sim".into()],
            connected_ms: 0,
            last_heartbeat_ms: 0,
            ended_ms: None,
        }
    }

    #[test]
    fn enrollment_tokens_are_single_use_and_expire() {
        let mut s = cluster();
        let tok = |h: &str, exp| Op::CreateRackToken {
            token_hash: h.into(),
            expires_ms: exp,
        };
        let reg = |h: &str, n: &str| Op::RegisterRack {
            token_hash: h.into(),
            name: n.into(),
            zone: "default".into(),
        };
        apply(&mut s, &cmd(2, tok("t1", 100)), 2).expect("token");
        apply(&mut s, &cmd(3, reg("t1", "rack-a")), 3).expect("register");
        let e = apply(&mut s, &cmd(4, reg("t1", "rack-b")), 4).unwrap_err();
        assert!(e.message.contains("already used"), "{}", e.message);
        apply(&mut s, &cmd(5, tok("t2", 10)), 5).expect("token");
        let e = apply(&mut s, &cmd(11, reg("t2", "rack-b")), 6).unwrap_err();
        assert!(e.message.contains("expired"), "{}", e.message);
        apply(&mut s, &cmd(12, tok("t3", 100)), 7).expect("token");
        let e = apply(&mut s, &cmd(13, reg("t3", "rack-a")), 8).unwrap_err();
        assert_eq!(e.code, ErrorCode::AlreadyExists);
    }

    #[test]
    fn sessions_commands_and_bmc_moves() {
        let mut s = cluster();
        apply(
            &mut s,
            &cmd(
                2,
                Op::CreateRackToken {
                    token_hash: "t".into(),
                    expires_ms: 1000,
                },
            ),
            2,
        )
        .expect("token");
        apply(
            &mut s,
            &cmd(
                3,
                Op::RegisterRack {
                    token_hash: "t".into(),
                    name: "ra".into(),
                    zone: "default".into(),
                },
            ),
            3,
        )
        .expect("register");
        apply(
            &mut s,
            &cmd(
                4,
                Op::CreateMachine {
                    system_id: "m1".into(),
                    hostname: "m1".into(),
                    arch: "amd64/generic".into(),
                    zone: "default".into(),
                    macs: vec!["52:54:00:00:00:01".parse().expect("mac")],
                    power: PowerParams {
                        driver: "sim".into(),
                        params: [("state_dir".to_string(), "/tmp/bmc".to_string())].into(),
                    },
                    description: String::new(),
                    pool: None,
                },
            ),
            4,
        )
        .expect("machine");
        apply(
            &mut s,
            &cmd(
                5,
                Op::RackConnected {
                    name: "ra".into(),
                    session: session("s1"),
                },
            ),
            5,
        )
        .expect("connect");
        assert!(s.rack_live("ra", 100, 10_000));
        apply(
            &mut s,
            &cmd(
                6,
                Op::AssignBmcs {
                    moves: vec![("m1".into(), Some("ra".into()))],
                },
            ),
            6,
        )
        .expect("assign");
        assert_eq!(
            s.machine("m1").and_then(|m| m.rack.clone()).as_deref(),
            Some("ra")
        );
        let r = apply(
            &mut s,
            &cmd(
                7,
                Op::QueuePower {
                    system_id: "m1".into(),
                    action: "on".into(),
                },
            ),
            7,
        )
        .expect("queue");
        let Reply::Command(c) = r else {
            panic!("{r:?}")
        };
        assert!(s.pending_commands.contains(&c.id));
        let result = |ok: bool, ps: &str| Op::PowerResult {
            next_boot: Default::default(),
            id: c.id,
            rack: "ra".into(),
            success: ok,
            error_kind: String::new(),
            message: String::new(),
            power_state: ps.into(),
        };
        apply(&mut s, &cmd(8, result(true, "on")), 8).expect("result");
        // A re-delivered result does not change the first.
        apply(&mut s, &cmd(9, result(false, "off")), 9).expect("again");
        let c2 = s.data.commands.get(&c.id).expect("cmd");
        assert_eq!(c2.state, CommandState::Done);
        assert_eq!(
            s.machine("m1").map(|m| m.power_state.clone()).as_deref(),
            Some("on")
        );
        assert!(s.pending_commands.is_empty());
        // A stale session's heartbeat is refused; revocation frees the BMCs.
        assert!(apply(
            &mut s,
            &cmd(
                10,
                Op::RackHeartbeat {
                    name: "ra".into(),
                    session_id: "old".into()
                }
            ),
            10
        )
        .is_err());
        apply(&mut s, &cmd(11, Op::RevokeRack { name: "ra".into() }), 11).expect("revoke");
        assert!(s.machine("m1").and_then(|m| m.rack.clone()).is_none());
        assert!(apply(
            &mut s,
            &cmd(
                12,
                Op::RackConnected {
                    name: "ra".into(),
                    session: session("s2")
                }
            ),
            12
        )
        .is_err());
        let bad = apply(
            &mut s,
            &cmd(
                13,
                Op::QueuePower {
                    system_id: "m1".into(),
                    action: "explode".into(),
                },
            ),
            13,
        )
        .unwrap_err();
        assert_eq!(bad.field.as_deref(), Some("action"));
    }
}
