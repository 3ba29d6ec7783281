//! Rack controllers in the apply step: enrollment, sessions and BMC ownership (the power command queue is
//! in [`super::queue`]).

use super::cluster::{revoke_certificate, token_standing, TokenStanding};
use super::ctx::ApplyCtx;
use super::events::EventBuilder;
use super::queue;
use crate::command::{op, Reply, Response};
use crate::state::State;
use ingot_common::model::{EventLevel, Rack};
use ingot_common::pki;
use ingot_common::{validate, DomainError};
use std::collections::BTreeSet;

/// Records an enrollment token; expired ones are forgotten.
pub(super) fn create_token(
    ctx: &ApplyCtx,
    state: &mut State,
    op: &op::CreateRackToken,
) -> Response {
    let now = ctx.ts_ms;
    state.data.rack_tokens.retain(|_, exp| *exp > now);
    state
        .data
        .rack_tokens
        .insert(op.token_hash.clone(), op.expires_ms);
    Ok(Reply::Done)
}

/// The error for an enrollment token that is not [`TokenStanding::Valid`].
pub(crate) fn rack_token_error(standing: &TokenStanding) -> DomainError {
    match standing {
        TokenStanding::Expired(_) => DomainError::unauthenticated(
            "enrollment token expired: create a new one with `ingot racks token create`",
        ),
        _ => DomainError::unauthenticated(
            "enrollment token unknown or already used: create a new one with `ingot racks token create`",
        ),
    }
}

/// The common name of rack `name`'s certificate.
pub(crate) fn rack_common_name(name: &str) -> String {
    format!("rack-{name}")
}

/// Consumes a token and records the rack, with the serial of the certificate its registering region
/// signs for it.
pub(super) fn register(ctx: &ApplyCtx, state: &mut State, op: &op::RegisterRack) -> Response {
    let (name, zone) = (&op.name, &op.zone);
    let now = ctx.ts_ms;
    let stored = match token_standing(&state.data.rack_tokens, &op.token_hash, now) {
        TokenStanding::Valid(h) => h,
        standing => {
            if let TokenStanding::Expired(h) = &standing {
                state.data.rack_tokens.remove(h);
            }
            return Err(rack_token_error(&standing));
        }
    };
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
        name: name.clone(),
        zone: zone.clone(),
        registered_ms: now,
        revoked: false,
        session: None,
    };
    state.data.racks.insert(name.clone(), r.clone());
    state
        .data
        .cert_serials
        .insert(rack_common_name(name), pki::serial_for(&op.token_hash));
    EventBuilder::new("rack.register")
        .message(format!("{name} in zone {zone}"))
        .record(ctx, state);
    Ok(Reply::Rack(Box::new(r)))
}

/// Revokes a rack: its session ends, its certificate goes on the revocation list, its BMCs become
/// free for other racks and it loses its roles in subnets (`subnets::forget_rack`).
pub(super) fn revoke(ctx: &ApplyCtx, state: &mut State, op: &op::RevokeRack) -> Response {
    let name = &op.name;
    let Some(mut r) = state.data.racks.get(name).cloned() else {
        return Err(DomainError::not_found(format!(
            "rack '{name}' does not exist"
        )));
    };
    r.revoked = true;
    r.session = None;
    state.data.racks.insert(name.clone(), r.clone());
    revoke_certificate(state, &rack_common_name(name));
    release_bmcs(ctx, state, name);
    super::subnets::forget_rack(ctx, state, name);
    EventBuilder::new("rack.revoke")
        .level(EventLevel::Warning)
        .message(name.clone())
        .record(ctx, state);
    Ok(Reply::Rack(Box::new(r)))
}

/// Unassigns every BMC `rack` (revoked: its lease is gone at once) owns, and takes its pending power
/// commands from it (also those of BMCs that had already moved on): the leader's worker reassigns the
/// BMCs to live racks, and their commands follow.
fn release_bmcs(ctx: &ApplyCtx, state: &mut State, rack: &str) {
    let owned: BTreeSet<String> = state.by_rack.get(rack).cloned().unwrap_or_default();
    let routed: BTreeSet<String> = state
        .pending_power_commands
        .iter()
        .filter_map(|id| state.data.power_commands.get(id))
        .filter(|c| c.rack.as_deref() == Some(rack))
        .map(|c| c.system_id.clone())
        .collect();
    let pending = queue::pending_by_machine(state, |id| owned.contains(id) || routed.contains(id));
    for (id, cmds) in &pending {
        if let Some(m) = state.machine(id).cloned() {
            let to = m.rack.clone().filter(|r| r != rack);
            queue::reroute(ctx, state, &m, cmds, to.as_deref(), 0);
        }
    }
    for id in owned {
        if let Some(mut m) = state.machine(&id).cloned() {
            m.rack = None;
            m.updated_ms = ctx.ts_ms;
            m.revision = ctx.rev;
            state.put_machine(m);
        }
    }
}

/// Records a new session (replacing an older one of the same rack).
pub(super) fn connected(ctx: &ApplyCtx, state: &mut State, op: &op::RackConnected) -> Response {
    let (name, session) = (&op.name, &op.session);
    let Some(mut r) = state.data.racks.get(name).cloned() else {
        return Err(DomainError::not_found(format!(
            "rack '{name}' is not registered"
        )));
    };
    if r.revoked {
        return Err(DomainError::denied(format!("rack '{name}' is revoked")));
    }
    let mut s = session.clone();
    s.connected_ms = ctx.ts_ms;
    s.last_heartbeat_ms = ctx.ts_ms;
    s.ended_ms = None;
    r.session = Some(s);
    state.data.racks.insert(name.clone(), r.clone());
    EventBuilder::new("rack.connect")
        .message(format!(
            "{name} -> region {} ({})",
            session.region_name, session.region_id
        ))
        .record(ctx, state);
    Ok(Reply::Rack(Box::new(r)))
}

/// Records a heartbeat of the current session; stale sessions are ignored.
pub(super) fn heartbeat(ctx: &ApplyCtx, state: &mut State, op: &op::RackHeartbeat) -> Response {
    let (name, session_id) = (&op.name, &op.session_id);
    let Some(r) = state.data.racks.get_mut(name) else {
        return Err(DomainError::not_found(format!(
            "rack '{name}' is not registered"
        )));
    };
    match r.session.as_mut() {
        Some(s) if &s.session_id == session_id && s.ended_ms.is_none() && !r.revoked => {
            s.last_heartbeat_ms = s.last_heartbeat_ms.max(ctx.ts_ms);
            Ok(Reply::Done)
        }
        _ => Err(DomainError::precondition(format!(
            "session {session_id} of rack '{name}' is not its current session"
        ))),
    }
}

/// Ends the current session if it is `session_id`.
pub(super) fn disconnected(
    ctx: &ApplyCtx,
    state: &mut State,
    op: &op::RackDisconnected,
) -> Response {
    let (name, session_id, last_seen_ms) = (&op.name, &op.session_id, op.last_seen_ms);
    let Some(r) = state.data.racks.get_mut(name) else {
        return Ok(Reply::Done);
    };
    if let Some(s) = r
        .session
        .as_mut()
        .filter(|s| &s.session_id == session_id && s.ended_ms.is_none())
    {
        // Kept, marked ended: the rack holds its BMCs for the grace time from when it was last heard
        // (a hung rack's stream ends only when keepalive gives up, seconds after its last message).
        s.ended_ms = Some(ctx.ts_ms);
        let seen = if last_seen_ms == 0 {
            ctx.ts_ms
        } else {
            last_seen_ms.min(ctx.ts_ms)
        };
        s.last_heartbeat_ms = s.last_heartbeat_ms.max(seen);
        EventBuilder::new("rack.disconnect")
            .level(EventLevel::Warning)
            .message(name.clone())
            .record(ctx, state);
    }
    Ok(Reply::Done)
}

/// Moves BMCs between racks, and their pending power commands with them once the old rack's lease ran
/// out (a move to the rack that already owns the BMC only routes commands still on an older rack; see
/// [`queue::reroute`]).
pub(super) fn assign_bmcs(ctx: &ApplyCtx, state: &mut State, op: &op::AssignBmcs) -> Response {
    let moves = &op.moves;
    let ids: BTreeSet<&str> = moves.iter().map(|(id, _)| id.as_str()).collect();
    let pending = queue::pending_by_machine(state, |id| ids.contains(id));
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
        if let Some(cmds) = pending.get(id) {
            queue::reroute(ctx, state, &m, cmds, rack.as_deref(), op.lease_ms);
        }
        if m.rack == *rack {
            continue;
        }
        m.rack = rack.clone();
        m.updated_ms = ctx.ts_ms;
        m.revision = ctx.rev;
        state.put_machine(m);
        moved += 1;
    }
    if moved > 0 {
        let summary: Vec<String> = moves
            .iter()
            .take(8)
            .map(|(id, r)| format!("{id}->{}", r.as_deref().unwrap_or("-")))
            .collect();
        EventBuilder::new("bmc.assign")
            .message(format!("{moved} BMC(s): {}", summary.join(" ")))
            .record(ctx, state);
    }
    Ok(Reply::Done)
}

#[cfg(test)]
mod tests {
    use crate::apply::apply;
    use crate::command::{op, Op, Reply};
    use crate::state::State;
    use ingot_common::model::{PowerCommandState, RackSession};
    use ingot_common::power::PowerAction;
    use ingot_common::{ErrorCode, PowerParams};

    use crate::apply::test_support::cmd;

    fn cluster() -> State {
        let mut s = State::default();
        let boot = crate::apply::test_support::bootstrap();
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
        let tok = |h: &str, exp| {
            Op::CreateRackToken(op::CreateRackToken {
                token_hash: h.into(),
                expires_ms: exp,
            })
        };
        let reg = |h: &str, n: &str| {
            Op::RegisterRack(op::RegisterRack {
                token_hash: h.into(),
                name: n.into(),
                zone: "default".into(),
            })
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
    fn a_revoked_racks_certificate_goes_on_the_revocation_list() {
        let mut s = cluster();
        let tok = Op::CreateRackToken(op::CreateRackToken {
            token_hash: "t1".into(),
            expires_ms: 100,
        });
        apply(&mut s, &cmd(2, tok), 2).expect("token");
        let reg = Op::RegisterRack(op::RegisterRack {
            token_hash: "t1".into(),
            name: "ra".into(),
            zone: "default".into(),
        });
        apply(&mut s, &cmd(3, reg), 3).expect("register");
        let serial = ingot_common::pki::serial_for("t1");
        assert_eq!(s.data.cert_serials.get("rack-ra"), Some(&serial));
        assert!(s.data.revoked_serials.is_empty());
        apply(
            &mut s,
            &cmd(4, Op::RevokeRack(op::RevokeRack { name: "ra".into() })),
            4,
        )
        .expect("revoke");
        assert!(s.data.revoked_serials.contains(&serial));
        assert!(!s.data.cert_serials.contains_key("rack-ra"));
    }

    #[test]
    fn sessions_commands_and_bmc_moves() {
        let mut s = cluster();
        apply(
            &mut s,
            &cmd(
                2,
                Op::CreateRackToken(op::CreateRackToken {
                    token_hash: "t".into(),
                    expires_ms: 1000,
                }),
            ),
            2,
        )
        .expect("token");
        apply(
            &mut s,
            &cmd(
                3,
                Op::RegisterRack(op::RegisterRack {
                    token_hash: "t".into(),
                    name: "ra".into(),
                    zone: "default".into(),
                }),
            ),
            3,
        )
        .expect("register");
        apply(
            &mut s,
            &cmd(
                4,
                crate::apply::test_support::create_m1(PowerParams {
                    driver: "sim".into(),
                    params: [("state_dir".to_string(), "/tmp/bmc".to_string())].into(),
                }),
            ),
            4,
        )
        .expect("machine");
        apply(
            &mut s,
            &cmd(
                5,
                Op::RackConnected(op::RackConnected {
                    name: "ra".into(),
                    session: session("s1"),
                }),
            ),
            5,
        )
        .expect("connect");
        assert!(s.rack_live("ra", 100, 10_000));
        apply(
            &mut s,
            &cmd(
                6,
                Op::AssignBmcs(op::AssignBmcs {
                    moves: vec![("m1".into(), Some("ra".into()))],
                    lease_ms: 0,
                }),
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
                Op::QueuePower(op::QueuePower {
                    system_id: "m1".into(),
                    action: PowerAction::On,
                }),
            ),
            7,
        )
        .expect("queue");
        let Reply::PowerCommand(c) = r else {
            panic!("{r:?}")
        };
        assert!(s.pending_power_commands.contains(&c.id));
        let result = |ok: bool, ps: &str| {
            Op::PowerResult(op::PowerResult {
                next_boot: Default::default(),
                id: c.id,
                rack: "ra".into(),
                success: ok,
                error_kind: String::new(),
                message: String::new(),
                power_state: ps.into(),
            })
        };
        apply(&mut s, &cmd(8, result(true, "on")), 8).expect("result");
        // A re-delivered result does not change the first.
        apply(&mut s, &cmd(9, result(false, "off")), 9).expect("again");
        let c2 = s.data.power_commands.get(&c.id).expect("cmd");
        assert_eq!(c2.state, PowerCommandState::Done);
        assert_eq!(
            s.machine("m1").map(|m| m.power_state.clone()).as_deref(),
            Some("on")
        );
        assert!(s.pending_power_commands.is_empty());
        // A stale session's heartbeat is refused; revocation frees the BMCs.
        assert!(apply(
            &mut s,
            &cmd(
                10,
                Op::RackHeartbeat(op::RackHeartbeat {
                    name: "ra".into(),
                    session_id: "old".into()
                })
            ),
            10
        )
        .is_err());
        apply(
            &mut s,
            &cmd(11, Op::RevokeRack(op::RevokeRack { name: "ra".into() })),
            11,
        )
        .expect("revoke");
        assert!(s.machine("m1").and_then(|m| m.rack.clone()).is_none());
        assert!(apply(
            &mut s,
            &cmd(
                12,
                Op::RackConnected(op::RackConnected {
                    name: "ra".into(),
                    session: session("s2")
                })
            ),
            12
        )
        .is_err());
        // An unknown action is refused where it enters (the API edge parses it into a PowerAction), so
        // it never reaches the log.
        let bad = PowerAction::parse("action", "explode").unwrap_err();
        assert_eq!(bad.field.as_deref(), Some("action"));
    }

    #[test]
    fn a_power_command_is_fenced_to_its_rack_until_its_lease_runs_out() {
        use crate::apply::queue::route;
        const LEASE: u64 = 3000;
        let mut s = cluster();
        let mut rev = 1;
        let mut run = |s: &mut State, ts: u64, op: Op| {
            rev += 1;
            apply(s, &cmd(ts, op), rev)
        };
        for r in ["ra", "rb"] {
            run(
                &mut s,
                2,
                Op::CreateRackToken(op::CreateRackToken {
                    token_hash: format!("t-{r}"),
                    expires_ms: 1_000_000,
                }),
            )
            .expect("token");
            run(
                &mut s,
                3,
                Op::RegisterRack(op::RegisterRack {
                    token_hash: format!("t-{r}"),
                    name: r.into(),
                    zone: "default".into(),
                }),
            )
            .expect("register");
            run(
                &mut s,
                10,
                Op::RackConnected(op::RackConnected {
                    name: r.into(),
                    session: session(&format!("s-{r}")),
                }),
            )
            .expect("connect");
        }
        run(
            &mut s,
            11,
            crate::apply::test_support::create_m1(PowerParams {
                driver: "ipmi".into(),
                params: [("address".to_string(), "10.0.0.1".to_string())].into(),
            }),
        )
        .expect("machine");
        let assign = |rack: &str| {
            Op::AssignBmcs(op::AssignBmcs {
                moves: vec![("m1".into(), Some(rack.into()))],
                lease_ms: LEASE,
            })
        };
        let result = |id: u64, rack: &str| {
            Op::PowerResult(op::PowerResult {
                next_boot: Default::default(),
                id,
                rack: rack.into(),
                success: true,
                error_kind: String::new(),
                message: String::new(),
                power_state: "on".into(),
            })
        };
        let queue_on = Op::QueuePower(op::QueuePower {
            system_id: "m1".into(),
            action: PowerAction::On,
        });
        run(&mut s, 20, assign("ra")).expect("assign");
        let Reply::PowerCommand(c) = run(&mut s, 30, queue_on.clone()).expect("queue") else {
            panic!()
        };
        let id = c.id;
        let route_of = |s: &State| {
            let c = &s.data.power_commands[&id];
            route(c, s.machine("m1")).map(str::to_string)
        };
        assert_eq!(route_of(&s).as_deref(), Some("ra"));

        // The BMC moves to rb while ra still holds its lease: the command stays with ra (rb is not sent
        // it, and cannot report it).
        run(&mut s, 40, assign("rb")).expect("move");
        assert_eq!(
            s.machine("m1").and_then(|m| m.rack.clone()).as_deref(),
            Some("rb")
        );
        assert_eq!(route_of(&s).as_deref(), Some("ra"), "fenced to ra");
        let kinds = |s: &State| {
            let last = s.data.events.back().map(|e| e.revision);
            s.data
                .events
                .iter()
                .filter(|e| Some(e.revision) == last)
                .map(|e| e.kind.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(kinds(&s), ["power.fenced", "bmc.assign"]);
        let e = run(&mut s, 41, result(id, "rb")).unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied, "{e:?}");

        // ra's lease runs out (last heard at 10): the worker's next move routes the command to rb.
        let later = 10 + LEASE + crate::state::HEARTBEAT_RECORD_MS + 1;
        run(&mut s, later, assign("rb")).expect("move again");
        let c = &s.data.power_commands[&id];
        assert_eq!(
            (c.rack.as_deref(), c.rerouted_from.as_deref(), c.state),
            (Some("rb"), Some("ra"), PowerCommandState::Pending)
        );
        assert_eq!(kinds(&s), ["power.reroute"]);
        // ra's late result is refused (recorded as an event, the command is untouched)...
        run(&mut s, later + 1, result(id, "ra")).expect("late result is answered");
        assert_eq!(s.data.power_commands[&id].state, PowerCommandState::Pending);
        let ev = s.data.events.back().expect("event");
        assert_eq!(ev.kind, "power.result.refused");
        assert!(ev.message.contains("rack ra refused"), "{}", ev.message);
        // ... and rb's counts.
        run(&mut s, later + 2, result(id, "rb")).expect("rb's result");
        let c = &s.data.power_commands[&id];
        assert_eq!(
            (c.state, c.rack.as_deref()),
            (PowerCommandState::Done, Some("rb"))
        );
        run(&mut s, later + 3, result(id, "ra")).expect("late result is answered");
        assert_eq!(s.data.power_commands[&id].state, PowerCommandState::Done);

        // Revoking a rack takes its commands from it at once; they follow the BMC's next owner.
        let Reply::PowerCommand(c) = run(&mut s, later + 4, queue_on).expect("queue") else {
            panic!()
        };
        run(
            &mut s,
            later + 5,
            Op::RevokeRack(op::RevokeRack { name: "rb".into() }),
        )
        .expect("revoke");
        let id2 = c.id;
        let c = &s.data.power_commands[&id2];
        assert_eq!(
            (c.rack.as_deref(), c.rerouted_from.as_deref()),
            (None, Some("rb"))
        );
        let e = run(&mut s, later + 6, result(id2, "rb")).unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied, "{e:?}");
        run(&mut s, later + 7, assign("ra")).expect("assign");
        assert_eq!(
            route_of(&s).as_deref(),
            Some("rb"),
            "the finished one keeps its reporter"
        );
        assert_eq!(s.data.power_commands[&id2].rack.as_deref(), Some("ra"));

        // A cycle pending on a rack whose lease ran out may already be on its way to the BMC (a rack
        // stopped mid-request finishes it when it wakes; the nemesis saw two cycles): it is not moved to
        // the next rack but ends as interrupted.
        let Reply::PowerCommand(c) = run(
            &mut s,
            later + 8,
            Op::QueuePower(op::QueuePower {
                system_id: "m1".into(),
                action: PowerAction::Cycle,
            }),
        )
        .expect("queue a cycle") else {
            panic!()
        };
        let dead_later = later + 8 + LEASE + crate::state::HEARTBEAT_RECORD_MS + 1;
        run(
            &mut s,
            dead_later,
            Op::AssignBmcs(op::AssignBmcs {
                moves: vec![("m1".into(), None)],
                lease_ms: LEASE,
            }),
        )
        .expect("ra's lease ran out too");
        let c = &s.data.power_commands[&c.id];
        assert_eq!(
            (c.state, c.error_kind.as_str(), c.rack.as_deref()),
            (PowerCommandState::Failed, "interrupted", Some("ra")),
            "{c:?}"
        );
        assert!(!s.pending_power_commands.contains(&c.id));
    }
}
