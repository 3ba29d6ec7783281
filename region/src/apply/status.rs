//! Machine status moves: [`transition`], the one place a status is set, and [`outcome`], the end of
//! in-progress work (the `Outcome` operation, also reached when a power step of a lifecycle plan
//! finishes). A move returns its [`PowerPlan`]; whoever moved the machine queues it once the machine is
//! stored.

use super::ctx::ApplyCtx;
use super::events::EventBuilder;
use super::lookup::existing;
use super::queue::{self, PowerPlan};
use crate::command::{op, BootTokens, Reply, Response};
use crate::state::State;
use ingot_common::lifecycle::{self, Next, Outcome};
use ingot_common::model::{BootSession, EraseMode, EventLevel};
use ingot_common::{DomainError, Machine, MachineStatus};

/// Where `Next::Previous` leads for `m`: its recorded previous status, or Ready/New by whether it was
/// ever commissioned.
pub(super) fn previous(m: &Machine) -> MachineStatus {
    m.previous_status
        .filter(|p| !lifecycle::in_progress(*p))
        .unwrap_or(if m.inventory.is_some() {
            MachineStatus::Ready
        } else {
            MachineStatus::New
        })
}

/// Moves `m` to `to`: records where it came from, arms the deadline, starts a boot when the new status
/// needs one, and drops ownership when the machine goes back to the pool. Returns the power work the
/// move calls for, for the caller to queue once it stored `m` ([`queue::follow`]).
pub(super) fn transition(
    ctx: &ApplyCtx,
    state: &State,
    m: &mut Machine,
    to: MachineStatus,
    boot: &BootTokens,
    reason: &str,
) -> PowerPlan {
    let now = ctx.ts_ms;
    let from = m.status;
    // Leaving rescue returns to the status before rescue, so entering ExitingRescueMode keeps it.
    let enters_work = lifecycle::in_progress(to)
        && !lifecycle::in_progress(from)
        && to != MachineStatus::ExitingRescueMode;
    if enters_work || to == MachineStatus::Broken {
        m.previous_status = Some(from);
    }
    m.status = to;
    m.status_message = reason.to_string();
    m.deadline_ms = if lifecycle::in_progress(to) {
        state
            .data
            .settings
            .deadline_s(to)
            .map(|s| now.saturating_add(s.saturating_mul(1000)))
    } else {
        None
    };
    m.boot = lifecycle::boot_purpose(to).map(|purpose| BootSession {
        boot_id: boot.boot_id.clone(),
        // Only a command from an older proposer carries a token; it is stored hashed all the same.
        token_hash: if boot.token.is_empty() {
            String::new()
        } else {
            ingot_common::secret::hash(&boot.token)
        },
        legacy_token: String::new(),
        claim_hash: String::new(),
        purpose: purpose.to_string(),
        started_ms: now,
    });
    if m.boot.is_some() {
        m.progress = None;
    }
    if matches!(
        to,
        MachineStatus::New
            | MachineStatus::Commissioning
            | MachineStatus::FailedCommissioning
            | MachineStatus::Ready
            | MachineStatus::Retired
    ) {
        m.owner = None;
        m.allocation = None;
        m.deploy = None;
        m.erase = EraseMode::None;
        m.locked = false;
    }
    PowerPlan::after_move(from, m)
}

/// Applies the end of in-progress work: from the machine's current boot, from the deadline sweeper, or
/// from a lifecycle power step's result.
pub(super) fn outcome(ctx: &ApplyCtx, state: &mut State, op: &op::Outcome) -> Response {
    let system_id = op.system_id.as_str();
    let status = op.status;
    let m0 = existing(state, system_id, 0)?.clone();
    if let Some(b) = &op.boot_id {
        if m0.boot.as_ref().map(|x| x.boot_id.as_str()) != Some(b.as_str()) {
            return Err(DomainError::unauthenticated(format!(
                "this boot of machine {system_id} is over (a newer boot or a status change superseded it); its report is refused"
            )));
        }
    }
    if m0.status != status {
        return Err(DomainError::precondition(format!(
            "machine {system_id} is {} now, not {}; the outcome is ignored",
            m0.status.as_str(),
            status.as_str()
        )));
    }
    let to = match op.outcome {
        Outcome::Done => match lifecycle::done_status(status) {
            Some(Next::To(MachineStatus::Ready))
                if status == MachineStatus::Releasing && m0.erase != EraseMode::None =>
            {
                MachineStatus::DiskErasing
            }
            Some(Next::To(t)) => t,
            Some(Next::Previous) => previous(&m0),
            Some(Next::Stay) | None => {
                return Err(DomainError::precondition(format!(
                    "machine {system_id} is {}: nothing is in progress",
                    status.as_str()
                )))
            }
        },
        Outcome::Failed | Outcome::TimedOut => {
            lifecycle::failed_status(status).ok_or_else(|| {
                DomainError::precondition(format!(
                    "machine {system_id} is {}: nothing is in progress",
                    status.as_str()
                ))
            })?
        }
    };
    let mut m = m0.clone();
    let (kind, level) = match op.outcome {
        Outcome::Done => ("done", EventLevel::Info),
        Outcome::Failed => ("failed", EventLevel::Error),
        Outcome::TimedOut => ("deadline", EventLevel::Warning),
    };
    let msg = if op.outcome == Outcome::Done {
        String::new()
    } else {
        op.reason.clone()
    };
    let plan = transition(ctx, state, &mut m, to, &op.next_boot, &msg);
    m.updated_ms = ctx.ts_ms;
    m.revision = ctx.rev;
    EventBuilder::new(kind)
        .level(level)
        .machine(&m)
        .moved(m0.status, m.status)
        .message(op.reason.clone())
        .record(ctx, state);
    state.put_machine(m.clone());
    queue::follow(ctx, state, &m, plan);
    Ok(Reply::Machine(Box::new(m)))
}
