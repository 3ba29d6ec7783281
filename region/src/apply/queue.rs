//! The power command queue in the apply step (queued once, result recorded once) and the power plans of
//! lifecycle steps.
//!
//! Lifecycle steps drive BMCs through the same queue an operator's `ingot machines power` uses: entering a
//! status that boots the machine queues `boot-pxe` then `cycle`; Releasing queues `off` and completes when
//! it succeeds; leaving rescue queues `boot-disk` then `cycle`; finishing commissioning, testing or an erase
//! (and aborting one) queues `off`. A status move returns its `PowerPlan` and whoever moved the machine
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
use ingot_common::model::{PowerCommand, PowerCommandState};
use ingot_common::power::PowerAction;
use ingot_common::{Machine, MachineStatus};

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
        assert_eq!(plan(Deploying, Deployed).0.len(), 0);
    }
}
