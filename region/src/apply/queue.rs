//! The power command queue in the apply step (queued once, result recorded once) and the power plans of
//! lifecycle steps.
//!
//! Lifecycle steps drive BMCs through the same queue an operator's `ingot machines power` uses: entering a
//! status that boots the machine queues `boot-pxe` then `cycle`; Releasing queues `off` and completes when
//! it succeeds; leaving rescue queues `boot-disk` then `cycle`; a finished deployment queues `boot-disk`
//! then `cycle` (the in-band agent syncs every write before it reports, and a cold start lets UEFI
//! firmware find the new disk's boot loader, which a warm reboot does not); finishing commissioning, testing or an erase (and aborting one) queues `off`. A status move returns its `PowerPlan` and whoever moved the machine
//! queues it with `follow` in the same log entry, so a status and its power work are never
//! half-recorded. A failed step fails the status with the driver's reason (an `unsupported` boot-device
//! step only warns: many BMCs cannot set it and boot from the network anyway); a newer status cancels the
//! pending steps of the older one. Only drivers a rack runs against a real BMC (`ipmi`, `redfish`,
//! `webhook`) get plans; `manual` and the test-only `file` driver (old name `sim`) complete power-only steps at once (see
//! `app::worker`).

use super::ctx::ApplyCtx;
use super::events::EventBuilder;
use crate::state::{State, POWER_COMMANDS_MAX};
use ingot_common::lifecycle;
use ingot_common::model::{EventLevel, PowerCommand, PowerCommandState};
use ingot_common::power::PowerAction;
use ingot_common::{DomainError, Machine, MachineStatus};
use std::collections::BTreeMap;

/// Most pending power commands a machine may have for another one to be queued: a machine whose rack is
/// gone cannot pile up commands without bound (they all run once a rack takes the BMC). A lifecycle
/// step's plan replaces its own pending steps and is never refused, so a machine has at most this many
/// plus one plan (two commands) pending.
pub const PENDING_POWER_COMMANDS_PER_MACHINE: usize = 16;

/// The rack a pending power command belongs to: the one it is routed to, or, for a command routed to
/// no rack yet, the owner of its machine's BMC (`m`). Only this rack is sent the command.
pub fn route<'a>(c: &'a PowerCommand, m: Option<&'a Machine>) -> Option<&'a str> {
    c.rack
        .as_deref()
        .or_else(|| m.and_then(|m| m.rack.as_deref()))
}

/// How a rack's result for a power command is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reporter {
    /// The rack the command belongs to (see [`route`]): its first result counts, later ones are no-ops.
    Owner,
    /// The rack the command was taken from when its lease ran out: its late result is refused and
    /// recorded as an event.
    Fenced,
}

/// Whether rack `rack` may report a result for `c`: the check before a result is proposed (in the rack's
/// session) and again in apply. PermissionDenied for a rack that is not registered, revoked, or was never
/// sent the command: a rack speaks only for the commands routed to it.
pub fn reporter(state: &State, c: &PowerCommand, rack: &str) -> Result<Reporter, DomainError> {
    let id = c.id;
    if state.data.racks.get(rack).is_none_or(|r| r.revoked) {
        return Err(DomainError::denied(format!(
            "rack '{rack}' is revoked or not registered: its result for power command {id} is refused"
        )));
    }
    let owner = if c.state == PowerCommandState::Pending {
        route(c, state.machine(&c.system_id)) == Some(rack)
    } else {
        // Finished: a re-delivered result of the rack that reported it (or was sent it) is a no-op.
        c.rack.as_deref() == Some(rack)
    };
    if owner {
        return Ok(Reporter::Owner);
    }
    if c.rerouted_from.as_deref() == Some(rack) {
        return Ok(Reporter::Fenced);
    }
    Err(DomainError::denied(format!(
        "rack '{rack}' may not report power command {id} of machine {}: it belongs to rack {} (a rack reports only the commands sent to it)",
        c.system_id,
        route(c, state.machine(&c.system_id)).unwrap_or("(none yet)")
    )))
}

/// The pending power commands of the machines `which` selects, by machine, oldest first (one pass over
/// the queue, however many machines).
pub(super) fn pending_by_machine(
    state: &State,
    which: impl Fn(&str) -> bool,
) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for id in &state.pending_power_commands {
        if let Some(c) = state.data.power_commands.get(id) {
            if which(&c.system_id) {
                out.entry(c.system_id.clone()).or_default().push(*id);
            }
        }
    }
    out
}

/// Routes the pending power commands `ids` of `m` (as it is before its BMC moves) to `to`, the BMC's
/// new owner. A command on another rack is taken from it only when that rack is not live at the
/// command's time by `lease_ms` (see [`State::rack_live`]); it is then fenced from it (its late result
/// is refused). A command whose rack is still live stays with it: the new rack gets it only after the
/// old rack's result or once its lease ran out (the leader's worker proposes the move again then).
pub(super) fn reroute(
    ctx: &ApplyCtx,
    state: &mut State,
    m: &Machine,
    ids: &[u64],
    to: Option<&str>,
    lease_ms: u64,
) {
    let mut taken: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut kept: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for id in ids {
        let Some(c) = state.data.power_commands.get(id) else {
            continue;
        };
        if c.state != PowerCommandState::Pending {
            continue;
        }
        let from = route(c, Some(m)).map(str::to_string);
        // A cycle or soft-off whose rack lost its lease may already be on its way to the BMC (a rack
        // stopped mid-request finishes it when it wakes): it is never moved and run again elsewhere,
        // it ends as interrupted, for the operator to check and re-issue.
        if let Some(f) = from.as_deref().filter(|f| {
            Some(*f) != to && !c.action.idempotent() && !state.rack_live(f, ctx.ts_ms, lease_ms)
        }) {
            let f = f.to_string();
            interrupt(ctx, state, m, *id, &f);
            continue;
        }
        let (rack, fenced_from) = match from {
            None => (to.map(str::to_string), None),
            Some(f) if Some(f.as_str()) == to => (Some(f), None),
            Some(f) if state.rack_live(&f, ctx.ts_ms, lease_ms) => {
                kept.entry(f.clone()).or_default().push(*id);
                (Some(f), None)
            }
            Some(f) => {
                taken.entry(f.clone()).or_default().push(*id);
                (to.map(str::to_string), Some(f))
            }
        };
        if let Some(c) = state.data.power_commands.get_mut(id) {
            c.rack = rack;
            if fenced_from.is_some() {
                c.rerouted_from = fenced_from;
            }
        }
    }
    let ids = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
    let to = to.unwrap_or("no rack yet");
    for (from, v) in &taken {
        EventBuilder::new("power.reroute")
            .level(EventLevel::Warning)
            .machine(m)
            .message(format!(
                "command(s) {} taken from rack {from}, whose lease ran out before their result, and routed to {to}; a late result from {from} is refused",
                ids(v)
            ))
            .record(ctx, state);
    }
    for (from, v) in &kept {
        EventBuilder::new("power.fenced")
            .machine(m)
            .message(format!(
                "command(s) {} stay with rack {from} until its result comes or its lease runs out; the BMC's new rack {to} is not sent them before",
                ids(v)
            ))
            .record(ctx, state);
    }
}

/// Ends pending command `id` (a non-idempotent action routed to rack `from`, whose lease ran out) as
/// failed with `interrupted`: it may or may not have reached the BMC, so it is neither moved nor repeated.
fn interrupt(ctx: &ApplyCtx, state: &mut State, m: &Machine, id: u64, from: &str) {
    let Some(c) = state.data.power_commands.get_mut(&id) else {
        return;
    };
    c.state = PowerCommandState::Failed;
    c.error_kind = "interrupted".into();
    c.message = format!(
        "rack {from} lost its lease with this {} pending; it may have reached the BMC before the rack stopped, and a {} is never repeated blindly: check the machine's power and issue it again",
        c.action, c.action
    );
    c.done_ms = Some(ctx.ts_ms);
    let action = c.action;
    state.pending_power_commands.remove(&id);
    EventBuilder::new(format!("power.{action}.result"))
        .level(EventLevel::Error)
        .machine(m)
        .message(format!(
            "command {id} interrupted: rack {from} lost its lease with it pending; not moved to another rack (a {action} is not repeated blindly)"
        ))
        .record(ctx, state);
}

/// Drivers whose power work goes through a rack to a real BMC (and so gets lifecycle power plans and
/// monitoring).
pub fn rack_driven(driver: &str) -> bool {
    matches!(driver, "ipmi" | "redfish" | "webhook")
}

/// The power work a status move calls for: returned by the move (`status::transition`), queued by
/// `follow` once the moved machine is stored.
#[must_use = "queue it with queue::follow once the machine is stored"]
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PowerPlan {
    /// Nothing: the status did not change, or no rack drives the machine's power.
    Nothing,
    /// Cancel the pending steps of the old status, then queue `actions` (possibly none) as the new
    /// status' steps; with `completes`, success of the last one completes the new status.
    Replace {
        /// The actions, in order.
        actions: &'static [PowerAction],
        /// Whether the last action's success completes the status (power-only steps).
        completes: bool,
    },
}

impl PowerPlan {
    /// The plan of `m`, which has just moved from `from` to its current status.
    pub(super) fn after_move(from: MachineStatus, m: &Machine) -> PowerPlan {
        if !rack_driven(&m.power.driver) || from == m.status {
            return PowerPlan::Nothing;
        }
        let (actions, completes) = plan(from, m.status);
        PowerPlan::Replace { actions, completes }
    }
}

/// The power plan of a status change: the actions to queue and whether the last one completes the new
/// status (power-only steps).
fn plan(from: MachineStatus, to: MachineStatus) -> (&'static [PowerAction], bool) {
    use MachineStatus::*;
    use PowerAction::{BootDisk, BootPxe, Cycle, Off};
    match to {
        Commissioning | Testing | Deploying | DiskErasing | EnteringRescueMode => {
            (&[BootPxe, Cycle], false)
        }
        Releasing => (&[Off], true),
        ExitingRescueMode => (&[BootDisk, Cycle], true),
        Deployed if from == Deploying => (&[BootDisk, Cycle], false),
        // Work that booted the machine ended without leaving it to an owner: power it off.
        Ready | New | FailedCommissioning | FailedTesting | FailedDiskErasing
            if matches!(from, Commissioning | Testing | DiskErasing) =>
        {
            (&[Off], false)
        }
        _ => (&[], false),
    }
}

/// Queues `plan` for `m` (stored, in its new status): cancels the pending lifecycle commands of the old
/// status and queues the new status' steps, in the same log entry.
pub(super) fn follow(ctx: &ApplyCtx, state: &mut State, m: &Machine, plan: PowerPlan) {
    let PowerPlan::Replace { actions, completes } = plan else {
        return;
    };
    cancel(
        ctx,
        state,
        &m.system_id,
        |step| step.is_some(),
        &format!(
            "cancelled: the machine moved to {} before the command ran",
            m.status.as_str()
        ),
    );
    if actions.is_empty() {
        return;
    }
    let step = lifecycle::in_progress(m.status).then_some(m.status);
    let mut ids = Vec::with_capacity(actions.len());
    for (i, a) in actions.iter().enumerate() {
        let last = i + 1 == actions.len();
        ids.push(enqueue(ctx, state, m, *a, step, completes && last).id);
    }
    EventBuilder::new("power.plan")
        .machine(m)
        .message(format!(
            "{}: {} queued as command(s) {} for rack {}",
            m.status.as_str(),
            actions
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(" then "),
            ids.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            m.rack.as_deref().unwrap_or("(none live yet)")
        ))
        .record(ctx, state);
}

/// Fails with ResourceExhausted when `system_id` already has [`PENDING_POWER_COMMANDS_PER_MACHINE`]
/// pending power commands: the check before an operator's power action is queued.
pub(super) fn check_room(state: &State, system_id: &str) -> Result<(), DomainError> {
    let n = state
        .pending_power_commands
        .iter()
        .filter_map(|id| state.data.power_commands.get(id))
        .filter(|c| c.system_id == system_id)
        .count();
    if n >= PENDING_POWER_COMMANDS_PER_MACHINE {
        return Err(DomainError::exhausted(format!(
            "machine {system_id} already has {n} pending power commands, the most one machine may have ({PENDING_POWER_COMMANDS_PER_MACHINE}); wait until its rack has run them (is a rack connected? `ingot racks list`)"
        )));
    }
    Ok(())
}

/// Adds a power command to the queue; `step` marks a lifecycle step's command.
pub(super) fn enqueue(
    ctx: &ApplyCtx,
    state: &mut State,
    m: &Machine,
    action: PowerAction,
    step: Option<MachineStatus>,
    completes: bool,
) -> PowerCommand {
    let id = state.data.next_power_command_id.max(1);
    state.data.next_power_command_id = id + 1;
    let c = PowerCommand {
        id,
        system_id: m.system_id.clone(),
        action,
        actor: ctx.actor.to_string(),
        state: PowerCommandState::Pending,
        rack: m.rack.clone(),
        message: String::new(),
        error_kind: String::new(),
        power_state: String::new(),
        created_ms: ctx.ts_ms,
        done_ms: None,
        step,
        completes,
        rerouted_from: None,
    };
    state.data.power_commands.insert(id, c.clone());
    state.pending_power_commands.insert(id);
    // Bounded history: drop the oldest finished commands.
    while state.data.power_commands.len() > POWER_COMMANDS_MAX {
        let Some(oldest) = state
            .data
            .power_commands
            .values()
            .find(|c| c.state != PowerCommandState::Pending)
            .map(|c| c.id)
        else {
            break;
        };
        state.data.power_commands.remove(&oldest);
    }
    c
}

/// Cancels the pending power commands of `system_id` whose lifecycle step satisfies `which` (the old
/// status' plan when the status changed, the rest of a plan whose step failed), recording `why` on each.
pub(super) fn cancel(
    ctx: &ApplyCtx,
    state: &mut State,
    system_id: &str,
    which: impl Fn(Option<MachineStatus>) -> bool,
    why: &str,
) {
    let ids: Vec<u64> = state
        .pending_power_commands
        .iter()
        .copied()
        .filter(|id| {
            state
                .data
                .power_commands
                .get(id)
                .is_some_and(|c| c.system_id == system_id && which(c.step))
        })
        .collect();
    for id in ids {
        if let Some(c) = state.data.power_commands.get_mut(&id) {
            c.state = PowerCommandState::Failed;
            c.error_kind = "cancelled".into();
            c.message = why.to_string();
            c.done_ms = Some(ctx.ts_ms);
        }
        state.pending_power_commands.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::plan;
    use ingot_common::power::PowerAction::{BootDisk, BootPxe, Cycle, Off};
    use ingot_common::MachineStatus::*;

    #[test]
    fn plans() {
        assert_eq!(plan(Ready, Commissioning), (&[BootPxe, Cycle][..], false));
        assert_eq!(plan(Deployed, Releasing), (&[Off][..], true));
        assert_eq!(plan(Commissioning, Ready), (&[Off][..], false));
        assert_eq!(
            plan(RescueMode, ExitingRescueMode),
            (&[BootDisk, Cycle][..], true)
        );
        assert_eq!(plan(Ready, Allocated).0.len(), 0);
        assert_eq!(plan(Deploying, Deployed), (&[BootDisk, Cycle][..], false));
        assert_eq!(plan(Allocated, Deployed).0.len(), 0);
    }
}
