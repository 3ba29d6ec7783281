//! Power operations in the apply step: an operator's power action, a rack's result for a power command,
//! and the rack monitor's observations. The queue itself and the lifecycle power plans are in
//! [`super::queue`].

use super::ctx::ApplyCtx;
use super::events::EventBuilder;
use super::queue::{cancel, check_room, enqueue, reporter, route, Reporter};
use super::status;
use crate::command::{op, Reply, Response};
use crate::state::State;
use ingot_common::lifecycle::Outcome;
use ingot_common::model::{EventLevel, PowerCommandState};
use ingot_common::power::PowerAction;
use ingot_common::{DomainError, Machine};

/// Queues a power action an operator (or the machine's owner) asked for.
pub(super) fn queue(ctx: &ApplyCtx, state: &mut State, op: &op::QueuePower) -> Response {
    let (system_id, action) = (op.system_id.as_str(), op.action);
    let Some(m) = state.machine(system_id).cloned() else {
        return Err(DomainError::not_found(format!(
            "machine {system_id} does not exist"
        )));
    };
    if !state.is_admin(ctx.actor) && m.owner.as_deref() != Some(ctx.actor) {
        return Err(DomainError::denied(format!(
            "machine {system_id} is not yours; only its owner or an admin may drive its power"
        )));
    }
    if m.power.driver.is_empty() {
        return Err(DomainError::precondition(format!(
            "machine {system_id} has no power driver; set one with `ingot machines set-power {system_id} --driver ...`"
        )));
    }
    if m.power.driver == "manual" {
        return manual_report(ctx, state, m, action);
    }
    check_room(state, system_id)?;
    let c = enqueue(ctx, state, &m, action, None, false);
    EventBuilder::new(format!("power.{action}"))
        .machine(&m)
        .message(format!(
            "command {} queued for rack {}",
            c.id,
            m.rack.as_deref().unwrap_or("(none live yet)")
        ))
        .record(ctx, state);
    Ok(Reply::PowerCommand(Box::new(c)))
}

/// Manual power: nobody can switch the machine, so a power action is the operator's report of what they
/// did, recorded at once without a rack (`on` / `cycle` → on, `off` / `soft-off` → off; `query` answers the
/// last reported state; boot-device actions are recorded as done by hand).
fn manual_report(
    ctx: &ApplyCtx,
    state: &mut State,
    mut m: Machine,
    action: PowerAction,
) -> Response {
    let reported = match action {
        PowerAction::On | PowerAction::Cycle => Some("on"),
        PowerAction::Off | PowerAction::SoftOff => Some("off"),
        _ => None,
    };
    let mut c = enqueue(ctx, state, &m, action, None, false);
    state.pending_power_commands.remove(&c.id);
    c.state = PowerCommandState::Done;
    c.done_ms = Some(ctx.ts_ms);
    c.power_state = reported.map(str::to_string).unwrap_or_else(|| {
        if m.power_state.is_empty() {
            "unknown".into()
        } else {
            m.power_state.clone()
        }
    });
    c.message = match reported {
        Some(s) => format!(
            "manual power: recorded power {s} as reported by {}; nothing was switched",
            ctx.actor
        ),
        None => {
            format!("manual power: the operator acts ({action} is recorded, nothing was switched)")
        }
    };
    state.data.power_commands.insert(c.id, c.clone());
    if let Some(s) = reported {
        if m.power_state != s {
            confirm_power(ctx, &mut m, s);
            state.put_machine(m.clone());
        }
    }
    EventBuilder::new(format!("power.{action}"))
        .machine(&m)
        .message(c.message.clone())
        .record(ctx, state);
    Ok(Reply::PowerCommand(Box::new(c)))
}

/// Whether `action` sets the next boot device (a step many BMCs cannot do).
fn sets_boot_device(action: PowerAction) -> bool {
    matches!(
        action,
        PowerAction::BootPxe
            | PowerAction::BootDisk
            | PowerAction::BootPxePersistent
            | PowerAction::BootDiskPersistent
    )
}

/// Records a rack's result: the first result of a command wins; later ones (re-deliveries) are no-ops. A
/// lifecycle step's result moves the machine on: a completing step finishes its status, a failed step
/// fails it.
pub(super) fn result(ctx: &ApplyCtx, state: &mut State, r: &op::PowerResult) -> Response {
    let id = r.id;
    let Some(mut c) = state.data.power_commands.get(&id).cloned() else {
        return Err(DomainError::not_found(format!("no power command {id}")));
    };
    // A rack speaks only for the commands sent to it (`r.rack` is the session's certificate name).
    if reporter(state, &c, &r.rack)? == Reporter::Fenced {
        let m = state.machine(&c.system_id).cloned();
        let now = route(&c, m.as_ref()).unwrap_or("no rack yet").to_string();
        EventBuilder::new("power.result.refused")
            .level(EventLevel::Warning)
            .machine(m.as_ref())
            .message(format!(
                "late result of command {id} from rack {} refused ({}): the command was taken from that rack when its lease ran out and now belongs to {now}",
                r.rack,
                if r.success { "success".to_string() } else { format!("failed: {}", r.error_kind) }
            ))
            .record(ctx, state);
        return Ok(Reply::PowerCommand(Box::new(c)));
    }
    if c.state != PowerCommandState::Pending {
        return Ok(Reply::PowerCommand(Box::new(c)));
    }
    c.state = if r.success {
        PowerCommandState::Done
    } else {
        PowerCommandState::Failed
    };
    c.rack = Some(r.rack.clone());
    c.message = r.message.clone();
    c.error_kind = r.error_kind.clone();
    c.power_state = r.power_state.clone();
    c.done_ms = Some(ctx.ts_ms);
    state.data.power_commands.insert(id, c.clone());
    state.pending_power_commands.remove(&id);
    let m = state.machine(&c.system_id).cloned();
    if let Some(mut m) = m.clone() {
        if r.success && matches!(r.power_state.as_str(), "on" | "off") {
            confirm_power(ctx, &mut m, &r.power_state);
            state.put_machine(m);
        }
    }
    let (level, msg) = if r.success {
        (
            EventLevel::Info,
            format!(
                "command {id} done by rack {}: power {}",
                r.rack, r.power_state
            ),
        )
    } else {
        (
            EventLevel::Error,
            format!(
                "command {id} failed on rack {} ({}): {}",
                r.rack, r.error_kind, r.message
            ),
        )
    };
    EventBuilder::new(format!("power.{}.result", c.action))
        .level(level)
        .machine(m.as_ref())
        .message(msg)
        .record(ctx, state);
    // A lifecycle step still current?
    if let (Some(step), Some(m)) = (c.step, m) {
        if m.status == step {
            // Many BMCs cannot set a boot device and network-boot anyway: that failure only warns.
            let tolerated = sets_boot_device(c.action) && r.error_kind == "unsupported";
            let outcome = |outcome, reason| op::Outcome {
                system_id: m.system_id.clone(),
                status: step,
                boot_id: None,
                outcome,
                reason,
                next_boot: r.next_boot.clone(),
            };
            if !r.success && !tolerated {
                cancel(
                    ctx,
                    state,
                    &m.system_id,
                    |s| s == Some(step),
                    "cancelled: an earlier step of the same power plan failed",
                );
                let reason = format!(
                    "power {} failed ({}): {}",
                    c.action, r.error_kind, r.message
                );
                // The status is current, so the outcome applies; its error can only be a bug report.
                if let Err(e) = status::outcome(ctx, state, &outcome(Outcome::Failed, reason)) {
                    tracing::warn!("failing {} after a power error: {e}", m.system_id);
                }
            } else if r.success && c.completes {
                let reason = format!("power {} done by rack {}", c.action, r.rack);
                if let Err(e) = status::outcome(ctx, state, &outcome(Outcome::Done, reason)) {
                    tracing::warn!("completing {} after a power step: {e}", m.system_id);
                }
            }
        }
    }
    let c = state.data.power_commands.get(&id).cloned().unwrap_or(c);
    Ok(Reply::PowerCommand(Box::new(c)))
}

/// Records on `m` a power state a rack (or the operator) confirmed at the command's time, clearing the
/// BMC error; the caller stores `m`.
fn confirm_power(ctx: &ApplyCtx, m: &mut Machine, power_state: &str) {
    m.power_state = power_state.to_string();
    m.power_error.clear();
    m.power_checked_ms = ctx.ts_ms;
    m.updated_ms = ctx.ts_ms;
    m.revision = ctx.rev;
}

/// Records what a rack's power monitor read. Only the rack that owns a machine's BMC is heard (a rack
/// that lost ownership may still be polling). A changed state or a new error is recorded with an event;
/// the lifecycle status never changes here: a BMC that cannot be read does not fail commissioning.
pub(super) fn observed(ctx: &ApplyCtx, state: &mut State, op: &op::PowerObserved) -> Response {
    let rack = op.rack.as_str();
    for o in &op.items {
        let Some(m0) = state.machine(&o.system_id) else {
            continue;
        };
        if m0.rack.as_deref() != Some(rack) {
            continue;
        }
        let mut m = m0.clone();
        let (kind, level, msg) = if o.error_kind.is_empty() {
            if !matches!(o.power_state.as_str(), "on" | "off" | "unknown") {
                continue;
            }
            let changed = m.power_state != o.power_state;
            let recovered = !m.power_error.is_empty();
            m.power_state = o.power_state.clone();
            m.power_error.clear();
            if !changed && !recovered {
                // Not worth a revision: the checked time is refreshed with the next change.
                continue;
            }
            let msg = if recovered {
                format!("BMC answers again (power {})", o.power_state)
            } else {
                format!(
                    "power {} -> {} (read by rack {rack})",
                    if m0.power_state.is_empty() {
                        "unknown"
                    } else {
                        &m0.power_state
                    },
                    o.power_state
                )
            };
            ("power.changed", EventLevel::Info, msg)
        } else {
            let err = format!("{}: {}", o.error_kind, o.message);
            if m.power_error == err {
                continue;
            }
            m.power_error = err;
            (
                "power.error",
                EventLevel::Warning,
                format!(
                    "rack {rack} cannot read the BMC ({}): {}",
                    o.error_kind, o.message
                ),
            )
        };
        m.power_checked_ms = o.observed_ms.min(ctx.ts_ms);
        m.updated_ms = ctx.ts_ms;
        m.revision = ctx.rev;
        EventBuilder::new(kind)
            .level(level)
            .machine(&m)
            .message(msg)
            .record(ctx, state);
        state.put_machine(m);
    }
    Ok(Reply::Done)
}

#[cfg(test)]
mod tests {
    use crate::apply::apply;
    use crate::command::{op, ActionArgs, BootTokens, Op};
    use crate::state::State;
    use ingot_common::lifecycle::{Action, Outcome};
    use ingot_common::model::{EraseMode, PowerCommandState};
    use ingot_common::MachineStatus::*;
    use ingot_common::{MachineStatus, PowerParams};

    use crate::apply::test_support::cmd;

    /// A cluster with one machine on ipmi power whose BMC rack "ra" owns.
    fn setup() -> (State, u64) {
        let mut s = State::default();
        let ops = vec![
            crate::apply::test_support::bootstrap(),
            Op::CreateRackToken(op::CreateRackToken {
                token_hash: "t".into(),
                expires_ms: 1000,
            }),
            Op::RegisterRack(op::RegisterRack {
                token_hash: "t".into(),
                name: "ra".into(),
                zone: "default".into(),
            }),
            crate::apply::test_support::create_m1(PowerParams {
                driver: "ipmi".into(),
                params: [("address".to_string(), "10.0.0.1".to_string())].into(),
            }),
            Op::AssignBmcs(op::AssignBmcs {
                moves: vec![("m1".into(), Some("ra".into()))],
                lease_ms: 0,
            }),
        ];
        let mut rev = 0;
        for op in ops {
            rev += 1;
            apply(&mut s, &cmd(rev, op), rev).expect("setup");
        }
        (s, rev)
    }

    fn pending(s: &State) -> Vec<(u64, String, Option<MachineStatus>, bool)> {
        s.pending_power_commands
            .iter()
            .map(|id| {
                let c = &s.data.power_commands[id];
                (c.id, c.action.as_str().to_string(), c.step, c.completes)
            })
            .collect()
    }

    fn act(s: &mut State, rev: &mut u64, action: Action, args: ActionArgs) {
        *rev += 1;
        apply(
            s,
            &cmd(
                *rev,
                Op::MachineAction(op::MachineAction {
                    system_id: "m1".into(),
                    action,
                    expected_revision: 0,
                    args,
                }),
            ),
            *rev,
        )
        .expect("action");
    }

    fn result(s: &mut State, rev: &mut u64, id: u64, ok: bool, kind: &str, ps: &str) {
        *rev += 1;
        apply(
            s,
            &cmd(
                *rev,
                Op::PowerResult(op::PowerResult {
                    id,
                    rack: "ra".into(),
                    success: ok,
                    error_kind: kind.into(),
                    message: if ok {
                        String::new()
                    } else {
                        "no answer".into()
                    },
                    power_state: ps.into(),
                    next_boot: BootTokens::generate(),
                }),
            ),
            *rev,
        )
        .expect("result");
    }

    fn status(s: &State) -> MachineStatus {
        s.machine("m1").expect("m1").status
    }

    #[test]
    fn commissioning_boots_and_powers_off_and_release_completes_on_off() {
        let (mut s, mut rev) = setup();
        act(
            &mut s,
            &mut rev,
            Action::Commission,
            ActionArgs {
                boot: BootTokens::generate(),
                ..Default::default()
            },
        );
        let p = pending(&s);
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(
            (p[0].1.as_str(), p[0].2, p[0].3),
            ("boot-pxe", Some(Commissioning), false)
        );
        assert_eq!((p[1].1.as_str(), p[1].3), ("cycle", false));
        // An unsupported boot-device step only warns; the cycle goes on.
        result(&mut s, &mut rev, p[0].0, false, "unsupported", "");
        assert_eq!(status(&s), Commissioning);
        result(&mut s, &mut rev, p[1].0, true, "", "on");
        assert_eq!(
            status(&s),
            Commissioning,
            "the agent, not the power step, ends commissioning"
        );
        // The agent's success: Ready, and the machine is powered off.
        rev += 1;
        let boot_id = s
            .machine("m1")
            .and_then(|m| m.boot.clone())
            .map(|b| b.boot_id);
        apply(
            &mut s,
            &cmd(
                rev,
                Op::Outcome(op::Outcome {
                    system_id: "m1".into(),
                    status: Commissioning,
                    boot_id,
                    outcome: Outcome::Done,
                    reason: String::new(),
                    next_boot: BootTokens::generate(),
                }),
            ),
            rev,
        )
        .expect("done");
        assert_eq!(status(&s), Ready);
        let p = pending(&s);
        assert_eq!(
            (p.len(), p[0].1.as_str(), p[0].2),
            (1, "off", None),
            "{p:?}"
        );
        result(&mut s, &mut rev, p[0].0, true, "", "off");
        assert_eq!(s.machine("m1").expect("m1").power_state, "off");

        // Allocate + deploy, then release with erase: off completes Releasing, the erase boots.
        act(&mut s, &mut rev, Action::MarkBroken, ActionArgs::default());
        act(&mut s, &mut rev, Action::MarkFixed, ActionArgs::default());
        assert_eq!(status(&s), Ready);
        rev += 1;
        let mut m = s.machine("m1").cloned().expect("m1");
        m.status = Deployed;
        m.owner = Some("admin".into());
        m.revision = rev;
        s.put_machine(m);
        act(
            &mut s,
            &mut rev,
            Action::Release,
            ActionArgs {
                erase: EraseMode::Quick,
                ..Default::default()
            },
        );
        assert_eq!(status(&s), Releasing);
        let p = pending(&s);
        assert_eq!(
            (p.len(), p[0].1.as_str(), p[0].3),
            (1, "off", true),
            "{p:?}"
        );
        result(&mut s, &mut rev, p[0].0, true, "", "off");
        assert_eq!(status(&s), DiskErasing);
        let p = pending(&s);
        assert_eq!(
            p.iter().map(|x| x.1.as_str()).collect::<Vec<_>>(),
            ["boot-pxe", "cycle"]
        );
        // A failed power step fails the status with the driver's reason and cancels the rest.
        result(&mut s, &mut rev, p[0].0, false, "auth", "");
        assert_eq!(status(&s), FailedDiskErasing);
        let m = s.machine("m1").expect("m1");
        assert!(
            m.status_message.contains("power boot-pxe failed (auth)"),
            "{}",
            m.status_message
        );
        // The rest of the plan is cancelled; the failed machine is powered off.
        assert_eq!(
            s.data.power_commands[&p[1].0].state,
            PowerCommandState::Failed
        );
        let after = pending(&s);
        assert_eq!(
            after
                .iter()
                .map(|x| (x.1.as_str(), x.2))
                .collect::<Vec<_>>(),
            [("off", None)]
        );
    }

    #[test]
    fn manual_power_records_what_the_operator_reports() {
        let (mut s, mut rev) = setup();
        let mut m = s.machine("m1").cloned().expect("m1");
        m.power = PowerParams {
            driver: "manual".into(),
            params: Default::default(),
        };
        s.put_machine(m);
        for (action, want) in [("on", "on"), ("query", "on"), ("soft-off", "off")] {
            rev += 1;
            let r = apply(
                &mut s,
                &cmd(
                    rev,
                    Op::QueuePower(op::QueuePower {
                        system_id: "m1".into(),
                        action: action.parse().expect("power action"),
                    }),
                ),
                rev,
            )
            .expect("power");
            let crate::command::Reply::PowerCommand(c) = r else {
                panic!("{r:?}")
            };
            assert_eq!(
                (c.state, c.power_state.as_str()),
                (PowerCommandState::Done, want)
            );
            assert_eq!(s.machine("m1").expect("m1").power_state, want);
        }
        assert!(s.pending_power_commands.is_empty(), "no rack is involved");
    }

    #[test]
    fn a_new_status_cancels_the_old_plan_and_observations_never_change_status() {
        let (mut s, mut rev) = setup();
        act(
            &mut s,
            &mut rev,
            Action::Commission,
            ActionArgs {
                boot: BootTokens::generate(),
                ..Default::default()
            },
        );
        let old = pending(&s);
        act(&mut s, &mut rev, Action::Abort, ActionArgs::default());
        let p = pending(&s);
        assert_eq!(p.iter().map(|x| x.1.as_str()).collect::<Vec<_>>(), ["off"]);
        assert_eq!(s.data.power_commands[&old[1].0].error_kind, "cancelled");
        // Observations: only the owning rack is heard; an error is recorded, the status stays.
        let obs = |rack: &str, ps: &str, kind: &str| {
            Op::PowerObserved(op::PowerObserved {
                rack: rack.into(),
                items: vec![crate::command::PowerObservation {
                    system_id: "m1".into(),
                    power_state: ps.into(),
                    error_kind: kind.into(),
                    message: "x".into(),
                    observed_ms: 5,
                }],
            })
        };
        let before = status(&s);
        rev += 1;
        apply(&mut s, &cmd(rev, obs("rb", "on", "")), rev).expect("obs");
        assert_eq!(s.machine("m1").expect("m1").power_state, "");
        rev += 1;
        apply(&mut s, &cmd(rev, obs("ra", "on", "")), rev).expect("obs");
        assert_eq!(s.machine("m1").expect("m1").power_state, "on");
        rev += 1;
        apply(&mut s, &cmd(rev, obs("ra", "", "unreachable")), rev).expect("obs");
        let m = s.machine("m1").expect("m1");
        assert_eq!(
            (m.power_error.as_str(), m.status),
            ("unreachable: x", before)
        );
        rev += 1;
        apply(&mut s, &cmd(rev, obs("ra", "off", "")), rev).expect("obs");
        let m = s.machine("m1").expect("m1");
        assert_eq!(
            (m.power_error.as_str(), m.power_state.as_str()),
            ("", "off")
        );
    }

    /// Registers rack `name` (zone default) under a fresh enrollment token.
    fn register(s: &mut State, rev: &mut u64, name: &str) {
        for op in [
            Op::CreateRackToken(op::CreateRackToken {
                token_hash: format!("t-{name}"),
                expires_ms: 1_000_000,
            }),
            Op::RegisterRack(op::RegisterRack {
                token_hash: format!("t-{name}"),
                name: name.into(),
                zone: "default".into(),
            }),
        ] {
            *rev += 1;
            apply(s, &cmd(*rev, op), *rev).expect("register");
        }
    }

    fn queue(s: &mut State, rev: &mut u64, action: &str) -> crate::command::Response {
        *rev += 1;
        apply(
            s,
            &cmd(
                *rev,
                Op::QueuePower(op::QueuePower {
                    system_id: "m1".into(),
                    action: action.parse().expect("power action"),
                }),
            ),
            *rev,
        )
    }

    fn result_from(
        s: &mut State,
        rev: &mut u64,
        rack: &str,
        id: u64,
        ok: bool,
    ) -> crate::command::Response {
        *rev += 1;
        apply(
            s,
            &cmd(
                *rev,
                Op::PowerResult(op::PowerResult {
                    id,
                    rack: rack.into(),
                    success: ok,
                    error_kind: if ok { String::new() } else { "bmc".into() },
                    message: String::new(),
                    power_state: if ok { "off".into() } else { String::new() },
                    next_boot: BootTokens::generate(),
                }),
            ),
            *rev,
        )
    }

    #[test]
    fn a_rack_reports_only_the_power_commands_sent_to_it() {
        let (mut s, mut rev) = setup();
        register(&mut s, &mut rev, "rb");
        // m1 is Releasing: its `off` completes the release, its failure would fail it.
        let mut m = s.machine("m1").cloned().expect("m1");
        m.status = Deployed;
        m.owner = Some("admin".into());
        s.put_machine(m);
        act(&mut s, &mut rev, Action::Release, ActionArgs::default());
        let p = pending(&s);
        assert_eq!(
            (p.len(), p[0].1.as_str(), p[0].3),
            (1, "off", true),
            "{p:?}"
        );
        // Another enrolled rack (rb never owned m1's BMC) can neither fail nor complete it.
        for ok in [false, true] {
            let e = result_from(&mut s, &mut rev, "rb", p[0].0, ok).unwrap_err();
            assert_eq!(e.code, ingot_common::ErrorCode::PermissionDenied, "{e:?}");
            assert!(e.message.contains("belongs to rack ra"), "{}", e.message);
        }
        assert_eq!(status(&s), Releasing);
        assert_eq!(
            s.data.power_commands[&p[0].0].state,
            PowerCommandState::Pending
        );
        // Nor can a rack that is not registered.
        let e = result_from(&mut s, &mut rev, "nobody", p[0].0, true).unwrap_err();
        assert_eq!(e.code, ingot_common::ErrorCode::PermissionDenied, "{e:?}");
        // The owning rack's result counts; rb's re-sent result of the finished command is still refused.
        result_from(&mut s, &mut rev, "ra", p[0].0, true).expect("owner's result");
        assert_eq!(status(&s), Ready);
        assert!(result_from(&mut s, &mut rev, "rb", p[0].0, false).is_err());
        result_from(&mut s, &mut rev, "ra", p[0].0, false).expect("a re-delivery is a no-op");
        assert_eq!(
            s.data.power_commands[&p[0].0].state,
            PowerCommandState::Done
        );
    }

    #[test]
    fn pending_power_commands_per_machine_are_capped() {
        let (mut s, mut rev) = setup();
        let cap = crate::apply::queue::PENDING_POWER_COMMANDS_PER_MACHINE;
        for _ in 0..cap {
            queue(&mut s, &mut rev, "query").expect("below the cap");
        }
        let e = queue(&mut s, &mut rev, "on").unwrap_err();
        assert_eq!(e.code, ingot_common::ErrorCode::ResourceExhausted, "{e:?}");
        assert!(e.message.contains(&format!("({cap})")), "{}", e.message);
        assert_eq!(s.pending_power_commands.len(), cap);
        // One finished frees a place.
        let first = *s.pending_power_commands.iter().next().expect("pending");
        result_from(&mut s, &mut rev, "ra", first, true).expect("result");
        queue(&mut s, &mut rev, "on").expect("room again");
    }

    #[test]
    fn deleting_a_machine_cancels_its_pending_power_commands() {
        let (mut s, mut rev) = setup();
        queue(&mut s, &mut rev, "on").expect("queue");
        queue(&mut s, &mut rev, "cycle").expect("queue");
        let ids: Vec<u64> = s.pending_power_commands.iter().copied().collect();
        rev += 1;
        apply(
            &mut s,
            &cmd(
                rev,
                Op::DeleteMachine(op::DeleteMachine {
                    system_id: "m1".into(),
                    expected_revision: 0,
                }),
            ),
            rev,
        )
        .expect("delete");
        assert!(s.machine("m1").is_none());
        assert!(
            s.pending_power_commands.is_empty(),
            "no rack may run a deleted machine's commands"
        );
        for id in ids {
            let c = &s.data.power_commands[&id];
            assert_eq!(
                (c.state, c.error_kind.as_str()),
                (PowerCommandState::Failed, "cancelled"),
                "{c:?}"
            );
            assert!(c.message.contains("deleted"), "{}", c.message);
        }
    }
}
