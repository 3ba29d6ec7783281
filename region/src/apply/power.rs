//! Power in the apply step: the per-rack command queue (queued once, result recorded once), the power
//! plans of lifecycle steps, and the rack monitor's observations.
//!
//! Lifecycle steps drive BMCs through the same queue an operator's `ingot machines power` uses: entering a
//! status that boots the machine queues `boot-pxe` then `cycle`; Releasing queues `off` and completes when
//! it succeeds; leaving rescue queues `boot-disk` then `cycle`; finishing commissioning, testing or an erase
//! (and aborting one) queues `off`. The plan is queued in the same log entry as the status change, so a
//! status and its power work are never half-recorded. A failed step fails the status with the driver's
//! reason (an `unsupported` boot-device step only warns: many BMCs cannot set it and boot from the network
//! anyway); a newer status cancels the pending steps of the older one. Only drivers a rack runs against a
//! real BMC (`ipmi`, `redfish`, `webhook`) get plans; `manual` and the test-only `sim` complete power-only
//! steps at once (see `app::worker`).

use super::{emit, machine};
use crate::command::{BootTokens, Command, PowerObservation, Reply, Response};
use crate::state::{State, COMMANDS_MAX};
use ingot_common::lifecycle::{self, Outcome};
use ingot_common::model::{CommandState, EventLevel, PowerCommand};
use ingot_common::{DomainError, Machine, MachineStatus};

/// Drivers whose power work goes through a rack to a real BMC (and so gets lifecycle power plans and
/// monitoring).
pub fn rack_driven(driver: &str) -> bool {
    matches!(driver, "ipmi" | "redfish" | "webhook")
}

/// Adds a command to the queue; `step` marks a lifecycle step's command.
fn enqueue(
    state: &mut State,
    cmd: &Command,
    m: &Machine,
    action: &str,
    step: Option<MachineStatus>,
    completes: bool,
) -> PowerCommand {
    let id = state.data.next_command_id.max(1);
    state.data.next_command_id = id + 1;
    let c = PowerCommand {
        id,
        system_id: m.system_id.clone(),
        action: action.to_string(),
        actor: cmd.actor.clone(),
        state: CommandState::Pending,
        rack: m.rack.clone(),
        message: String::new(),
        error_kind: String::new(),
        power_state: String::new(),
        created_ms: cmd.ts_ms,
        done_ms: None,
        step,
        completes,
    };
    state.data.commands.insert(id, c.clone());
    state.pending_commands.insert(id);
    // Bounded history: drop the oldest finished commands.
    while state.data.commands.len() > COMMANDS_MAX {
        let Some(oldest) = state
            .data
            .commands
            .values()
            .find(|c| c.state != CommandState::Pending)
            .map(|c| c.id)
        else {
            break;
        };
        state.data.commands.remove(&oldest);
    }
    c
}

/// Queues a power action an operator (or the machine's owner) asked for.
pub(super) fn queue_power(
    state: &mut State,
    cmd: &Command,
    rev: u64,
    system_id: &str,
    action: &str,
) -> Response {
    ingot_common::validate::power_action("action", action)?;
    let Some(m) = state.machine(system_id).cloned() else {
        return Err(DomainError::not_found(format!(
            "machine {system_id} does not exist"
        )));
    };
    if !state.is_admin(&cmd.actor) && m.owner.as_deref() != Some(cmd.actor.as_str()) {
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
        return manual_report(state, cmd, rev, m, action);
    }
    let c = enqueue(state, cmd, &m, action, None, false);
    emit(
        state,
        cmd,
        rev,
        &format!("power.{action}"),
        EventLevel::Info,
        Some(&m),
        None,
        None,
        format!(
            "command {} queued for rack {}",
            c.id,
            m.rack.as_deref().unwrap_or("(none live yet)")
        ),
    );
    Ok(Reply::Command(Box::new(c)))
}

/// Manual power: nobody can switch the machine, so a power action is the operator's report of what they
/// did, recorded at once without a rack (`on` / `cycle` → on, `off` / `soft-off` → off; `query` answers the
/// last reported state; boot-device actions are recorded as done by hand).
fn manual_report(
    state: &mut State,
    cmd: &Command,
    rev: u64,
    mut m: Machine,
    action: &str,
) -> Response {
    let reported = match action {
        "on" | "cycle" => Some("on"),
        "off" | "soft-off" => Some("off"),
        _ => None,
    };
    let mut c = enqueue(state, cmd, &m, action, None, false);
    state.pending_commands.remove(&c.id);
    c.state = CommandState::Done;
    c.done_ms = Some(cmd.ts_ms);
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
            cmd.actor
        ),
        None => {
            format!("manual power: the operator acts ({action} is recorded, nothing was switched)")
        }
    };
    state.data.commands.insert(c.id, c.clone());
    if let Some(s) = reported {
        if m.power_state != s {
            confirm_power(&mut m, cmd, rev, s);
            state.put_machine(m.clone());
        }
    }
    emit(
        state,
        cmd,
        rev,
        &format!("power.{action}"),
        EventLevel::Info,
        Some(&m),
        None,
        None,
        c.message.clone(),
    );
    Ok(Reply::Command(Box::new(c)))
}

/// The power plan of a status change: the actions to queue and whether the last one completes the new
/// status (power-only steps).
fn plan(from: MachineStatus, to: MachineStatus) -> (&'static [&'static str], bool) {
    use MachineStatus::*;
    match to {
        Commissioning | Testing | Deploying | DiskErasing | EnteringRescueMode => {
            (&["boot-pxe", "cycle"], false)
        }
        Releasing => (&["off"], true),
        ExitingRescueMode => (&["boot-disk", "cycle"], true),
        // Work that booted the machine ended without leaving it to an owner: power it off.
        Ready | New | FailedCommissioning | FailedTesting | FailedDiskErasing
            if matches!(from, Commissioning | Testing | DiskErasing) =>
        {
            (&["off"], false)
        }
        _ => (&[], false),
    }
}

/// Called after every status change of `m` (from `from`): cancels the pending lifecycle commands of the
/// old status and queues the new status' power plan, in the same log entry.
pub(super) fn lifecycle(
    state: &mut State,
    cmd: &Command,
    rev: u64,
    from: MachineStatus,
    m: &Machine,
) {
    if !rack_driven(&m.power.driver) || from == m.status {
        return;
    }
    cancel(
        state,
        cmd,
        &m.system_id,
        |step| step.is_some(),
        &format!(
            "cancelled: the machine moved to {} before the command ran",
            m.status.as_str()
        ),
    );
    let (actions, completes) = plan(from, m.status);
    if actions.is_empty() {
        return;
    }
    let step = lifecycle::in_progress(m.status).then_some(m.status);
    let mut ids = Vec::with_capacity(actions.len());
    for (i, a) in actions.iter().enumerate() {
        let last = i + 1 == actions.len();
        ids.push(enqueue(state, cmd, m, a, step, completes && last).id);
    }
    emit(
        state,
        cmd,
        rev,
        "power.plan",
        EventLevel::Info,
        Some(m),
        None,
        None,
        format!(
            "{}: {} queued as command(s) {} for rack {}",
            m.status.as_str(),
            actions.join(" then "),
            ids.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            m.rack.as_deref().unwrap_or("(none live yet)")
        ),
    );
}

/// A rack's result for one command, as the session received it.
pub(super) struct PowerReport<'a> {
    /// The command.
    pub id: u64,
    /// The rack that ran it.
    pub rack: &'a str,
    /// Whether the driver succeeded.
    pub success: bool,
    /// Failure class.
    pub error_kind: &'a str,
    /// The driver's message.
    pub message: &'a str,
    /// Power state after the command.
    pub power_state: &'a str,
}

/// Records a rack's result: the first result of a command wins; later ones (re-deliveries) are no-ops. A
/// lifecycle step's result moves the machine on: a completing step finishes its status, a failed step
/// fails it.
pub(super) fn power_result(
    state: &mut State,
    cmd: &Command,
    rev: u64,
    r: PowerReport<'_>,
    next_boot: &BootTokens,
) -> Response {
    let id = r.id;
    let Some(mut c) = state.data.commands.get(&id).cloned() else {
        return Err(DomainError::not_found(format!("no power command {id}")));
    };
    if c.state != CommandState::Pending {
        return Ok(Reply::Command(Box::new(c)));
    }
    c.state = if r.success {
        CommandState::Done
    } else {
        CommandState::Failed
    };
    c.rack = Some(r.rack.to_string());
    c.message = r.message.to_string();
    c.error_kind = r.error_kind.to_string();
    c.power_state = r.power_state.to_string();
    c.done_ms = Some(cmd.ts_ms);
    state.data.commands.insert(id, c.clone());
    state.pending_commands.remove(&id);
    let m = state.machine(&c.system_id).cloned();
    if let Some(mut m) = m.clone() {
        if r.success && matches!(r.power_state, "on" | "off") {
            confirm_power(&mut m, cmd, rev, r.power_state);
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
    emit(
        state,
        cmd,
        rev,
        &format!("power.{}.result", c.action),
        level,
        m.as_ref(),
        None,
        None,
        msg,
    );
    // A lifecycle step still current?
    if let (Some(step), Some(m)) = (c.step, m) {
        if m.status == step {
            let boot_step = c.action.starts_with("boot-");
            // Many BMCs cannot set a boot device and network-boot anyway: that failure only warns.
            let tolerated = boot_step && r.error_kind == "unsupported";
            if !r.success && !tolerated {
                cancel(
                    state,
                    cmd,
                    &m.system_id,
                    |s| s == Some(step),
                    "cancelled: an earlier step of the same power plan failed",
                );
                let reason = format!(
                    "power {} failed ({}): {}",
                    c.action, r.error_kind, r.message
                );
                // The status is current, so the outcome applies; its error can only be a bug report.
                if let Err(e) = machine::outcome(
                    state,
                    cmd,
                    rev,
                    &m.system_id,
                    step,
                    None,
                    Outcome::Failed,
                    &reason,
                    next_boot,
                ) {
                    tracing::warn!("failing {} after a power error: {e}", m.system_id);
                }
            } else if r.success && c.completes {
                if let Err(e) = machine::outcome(
                    state,
                    cmd,
                    rev,
                    &m.system_id,
                    step,
                    None,
                    Outcome::Done,
                    &format!("power {} done by rack {}", c.action, r.rack),
                    next_boot,
                ) {
                    tracing::warn!("completing {} after a power step: {e}", m.system_id);
                }
            }
        }
    }
    let c = state.data.commands.get(&id).cloned().unwrap_or(c);
    Ok(Reply::Command(Box::new(c)))
}

/// Cancels the pending commands of `system_id` whose lifecycle step satisfies `which` (the old status'
/// plan when the status changed, the rest of a plan whose step failed), recording `why` on each.
fn cancel(
    state: &mut State,
    cmd: &Command,
    system_id: &str,
    which: impl Fn(Option<MachineStatus>) -> bool,
    why: &str,
) {
    let ids: Vec<u64> = state
        .pending_commands
        .iter()
        .copied()
        .filter(|id| {
            state
                .data
                .commands
                .get(id)
                .is_some_and(|c| c.system_id == system_id && which(c.step))
        })
        .collect();
    for id in ids {
        if let Some(c) = state.data.commands.get_mut(&id) {
            c.state = CommandState::Failed;
            c.error_kind = "cancelled".into();
            c.message = why.to_string();
            c.done_ms = Some(cmd.ts_ms);
        }
        state.pending_commands.remove(&id);
    }
}

/// Records on `m` a power state a rack (or the operator) confirmed at `cmd`'s time, clearing the BMC
/// error; the caller stores `m`.
fn confirm_power(m: &mut Machine, cmd: &Command, rev: u64, power_state: &str) {
    m.power_state = power_state.to_string();
    m.power_error.clear();
    m.power_checked_ms = cmd.ts_ms;
    m.updated_ms = cmd.ts_ms;
    m.revision = rev;
}

/// Records what a rack's power monitor read. Only the rack that owns a machine's BMC is heard (a rack
/// that lost ownership may still be polling). A changed state or a new error is recorded with an event;
/// the lifecycle status never changes here: a BMC that cannot be read does not fail commissioning.
pub(super) fn power_observed(
    state: &mut State,
    cmd: &Command,
    rev: u64,
    rack: &str,
    items: &[PowerObservation],
) -> Response {
    for o in items {
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
        m.power_checked_ms = o.observed_ms.min(cmd.ts_ms);
        m.updated_ms = cmd.ts_ms;
        m.revision = rev;
        emit(state, cmd, rev, kind, level, Some(&m), None, None, msg);
        state.put_machine(m);
    }
    Ok(Reply::Done)
}

#[cfg(test)]
mod tests {
    use super::plan;
    use crate::apply::apply;
    use crate::command::{ActionArgs, BootTokens, Command, Op};
    use crate::state::State;
    use ingot_common::lifecycle::{Action, Outcome};
    use ingot_common::model::{CommandState, EraseMode};
    use ingot_common::MachineStatus::*;
    use ingot_common::{MachineStatus, PowerParams, RegionInfo};

    fn cmd(ts: u64, op: Op) -> Command {
        Command {
            request_id: String::new(),
            ts_ms: ts,
            actor: "admin".into(),
            op,
        }
    }

    /// A cluster with one machine on ipmi power whose BMC rack "ra" owns.
    fn setup() -> (State, u64) {
        let mut s = State::default();
        let ops = vec![
            Op::Bootstrap {
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
            },
            Op::CreateRackToken {
                token_hash: "t".into(),
                expires_ms: 1000,
            },
            Op::RegisterRack {
                token_hash: "t".into(),
                name: "ra".into(),
                zone: "default".into(),
            },
            Op::CreateMachine {
                system_id: "m1".into(),
                hostname: "m1".into(),
                arch: "amd64/generic".into(),
                zone: "default".into(),
                macs: vec!["52:54:00:00:00:01".parse().expect("mac")],
                power: PowerParams {
                    driver: "ipmi".into(),
                    params: [("address".to_string(), "10.0.0.1".to_string())].into(),
                },
                description: String::new(),
                pool: None,
            },
            Op::AssignBmcs {
                moves: vec![("m1".into(), Some("ra".into()))],
            },
        ];
        let mut rev = 0;
        for op in ops {
            rev += 1;
            apply(&mut s, &cmd(rev, op), rev).expect("setup");
        }
        (s, rev)
    }

    fn pending(s: &State) -> Vec<(u64, String, Option<MachineStatus>, bool)> {
        s.pending_commands
            .iter()
            .map(|id| {
                let c = &s.data.commands[id];
                (c.id, c.action.clone(), c.step, c.completes)
            })
            .collect()
    }

    fn act(s: &mut State, rev: &mut u64, action: Action, args: ActionArgs) {
        *rev += 1;
        apply(
            s,
            &cmd(
                *rev,
                Op::MachineAction {
                    system_id: "m1".into(),
                    action,
                    expected_revision: 0,
                    args,
                },
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
                Op::PowerResult {
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
                },
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
                Op::Outcome {
                    system_id: "m1".into(),
                    status: Commissioning,
                    boot_id,
                    outcome: Outcome::Done,
                    reason: String::new(),
                    next_boot: BootTokens::generate(),
                },
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
        assert_eq!(s.data.commands[&p[1].0].state, CommandState::Failed);
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
                    Op::QueuePower {
                        system_id: "m1".into(),
                        action: action.into(),
                    },
                ),
                rev,
            )
            .expect("power");
            let crate::command::Reply::Command(c) = r else {
                panic!("{r:?}")
            };
            assert_eq!(
                (c.state, c.power_state.as_str()),
                (CommandState::Done, want)
            );
            assert_eq!(s.machine("m1").expect("m1").power_state, want);
        }
        assert!(s.pending_commands.is_empty(), "no rack is involved");
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
        assert_eq!(s.data.commands[&old[1].0].error_kind, "cancelled");
        // Observations: only the owning rack is heard; an error is recorded, the status stays.
        let obs = |rack: &str, ps: &str, kind: &str| Op::PowerObserved {
            rack: rack.into(),
            items: vec![crate::command::PowerObservation {
                system_id: "m1".into(),
                power_state: ps.into(),
                error_kind: kind.into(),
                message: "x".into(),
                observed_ms: 5,
            }],
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

    #[test]
    fn plans() {
        assert_eq!(
            plan(Ready, Commissioning),
            (&["boot-pxe", "cycle"][..], false)
        );
        assert_eq!(plan(Deployed, Releasing), (&["off"][..], true));
        assert_eq!(plan(Commissioning, Ready), (&["off"][..], false));
        assert_eq!(
            plan(RescueMode, ExitingRescueMode),
            (&["boot-disk", "cycle"][..], true)
        );
        assert_eq!(plan(Ready, Allocated).0.len(), 0);
        assert_eq!(plan(Deploying, Deployed).0.len(), 0);
    }
}
