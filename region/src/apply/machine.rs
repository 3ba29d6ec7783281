//! Machine lifecycle in the apply step: actions (checked against `ingot_common::lifecycle::TABLE`),
//! outcomes of in-progress work, agent reports, and allocation's compare-and-set claim.

use super::{emit, existing};
use crate::command::{ActionArgs, BootTokens, Command, Reply, Response, CONFLICT_FIELD};
use crate::state::{AllocationRecord, State, ALLOCATION_RECORDS_MAX, ALLOCATION_RECORD_MS};
use ingot_common::constraints::Constraints;
use ingot_common::lifecycle::{self, check_action, Action, Next, Outcome};
use ingot_common::model::{
    Allocation, BootSession, DeploySpec, EraseMode, EventLevel, Inventory, DEFAULT_POOL,
};
use ingot_common::{DomainError, Machine, MachineStatus};

/// Where `Next::Previous` leads for `m`: its recorded previous status, or Ready/New by whether it was
/// ever commissioned.
fn previous(m: &Machine) -> MachineStatus {
    m.previous_status
        .filter(|p| !lifecycle::in_progress(*p))
        .unwrap_or(if m.inventory.is_some() {
            MachineStatus::Ready
        } else {
            MachineStatus::New
        })
}

/// Moves `m` to `to`: records where it came from, arms the deadline, starts a boot when the new status
/// needs one, and drops ownership when the machine goes back to the pool. The one place a status is set.
pub(super) fn transition(
    state: &State,
    m: &mut Machine,
    to: MachineStatus,
    now: u64,
    boot: &BootTokens,
    reason: &str,
) {
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
        token: boot.token.clone(),
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
}

/// Re-evaluates every tag definition against `m` (incremental: one machine, every tag).
pub(super) fn retag(state: &State, m: &mut Machine) {
    for (name, expr) in &state.tag_exprs {
        if expr.matches(m) {
            m.tags.insert(name.clone());
        } else {
            m.tags.remove(name);
        }
    }
}

/// Checks that `actor` may take `action` on `m`: admins always; owners for owner actions.
fn authorize(state: &State, actor: &str, m: &Machine, action: Action) -> Result<(), DomainError> {
    if state.is_admin(actor) {
        return Ok(());
    }
    if action.admin_only() {
        return Err(DomainError::denied(format!(
            "only admins may {} machines",
            action.as_str()
        )));
    }
    match &m.owner {
        Some(o) if o == actor => Ok(()),
        Some(o) => Err(DomainError::denied(format!(
            "machine {} is held by {o}; only its owner or an admin may {} it",
            m.system_id,
            action.as_str()
        ))),
        None => Err(DomainError::denied(format!(
            "machine {} is not allocated to you; allocate it first",
            m.system_id
        ))),
    }
}

/// Applies a lifecycle action.
pub(super) fn action(
    state: &mut State,
    cmd: &Command,
    rev: u64,
    system_id: &str,
    action: Action,
    expected_revision: u64,
    args: &ActionArgs,
) -> Response {
    let now = cmd.ts_ms;
    let m0 = existing(state, system_id, expected_revision)?.clone();
    authorize(state, &cmd.actor, &m0, action)?;
    if action == Action::Allocate {
        return Err(DomainError::invalid(
            "action",
            "allocate through MachineService.Allocate",
        ));
    }
    let next = check_action(m0.status, m0.locked, action).map_err(DomainError::precondition)?;
    if action == Action::Release && m0.owner.is_none() {
        // A broken machine that nobody holds goes back with mark-fixed, not release.
        return Err(DomainError::precondition(format!(
            "machine {system_id} is not allocated to anyone: nothing to release (use mark-fixed for a broken machine)"
        )));
    }
    if action == Action::Delete {
        state.remove_machine(system_id);
        emit(
            state,
            cmd,
            rev,
            "delete",
            EventLevel::Info,
            Some(&m0),
            None,
            None,
            args.comment.clone(),
        );
        return Ok(Reply::Done);
    }
    let mut m = m0.clone();
    let mut message = args.comment.clone();
    match action {
        Action::SetZone => {
            if !state.data.zones.contains_key(&args.zone) {
                return Err(DomainError::not_found(format!(
                    "zone '{}' does not exist",
                    args.zone
                )));
            }
            if m.owner.is_some() && m.zone != args.zone {
                return Err(DomainError::precondition(format!(
                    "machine {system_id} is allocated (its provider id names its zone); release it before moving it"
                )));
            }
            message = format!("zone {} -> {}", m.zone, args.zone);
            m.zone = args.zone.clone();
            retag(state, &mut m);
        }
        Action::SetPool => {
            if !state.data.pools.contains_key(&args.pool) && args.pool != DEFAULT_POOL {
                return Err(DomainError::not_found(format!(
                    "pool '{}' does not exist",
                    args.pool
                )));
            }
            message = format!("pool {} -> {}", m.pool, args.pool);
            m.pool = args.pool.clone();
            retag(state, &mut m);
        }
        Action::Tag | Action::Untag => {
            for (i, t) in args.tags.iter().enumerate() {
                let Some(tag) = state.data.tags.get(t) else {
                    return Err(DomainError::not_found(format!(
                        "tags[{i}]: tag '{t}' does not exist; create it first (ingot tags create {t})"
                    )));
                };
                if !tag.definition.is_empty() {
                    return Err(DomainError::precondition(format!(
                        "tags[{i}]: tag '{t}' has a definition and follows the inventory; it cannot be set by hand"
                    )));
                }
                if action == Action::Tag {
                    m.tags.insert(t.clone());
                } else {
                    m.tags.remove(t);
                }
            }
            message = args.tags.join(",");
        }
        Action::Lock => m.locked = true,
        Action::Unlock => m.locked = false,
        Action::Deploy => {
            let mut d = args.deploy.clone().unwrap_or_default();
            if d.osystem.is_empty() {
                d.osystem = "ubuntu".into();
            }
            if d.distro_series.is_empty() {
                d.distro_series = "noble".into();
            }
            message = format!("{}/{}", d.osystem, d.distro_series);
            m.deploy = Some(d);
        }
        Action::Release => m.erase = args.erase,
        _ => {}
    }
    let to = match next {
        Next::To(t) => t,
        Next::Previous => previous(&m0),
        Next::Stay => m0.status,
    };
    if to != m0.status {
        let reason = match action {
            Action::MarkBroken if args.comment.is_empty() => {
                format!("marked broken by {}", cmd.actor)
            }
            Action::MarkBroken | Action::Abort => args.comment.clone(),
            _ => String::new(),
        };
        transition(state, &mut m, to, now, &args.boot, &reason);
    }
    m.updated_ms = now;
    m.revision = rev;
    let (from, to_ev) = if m.status != m0.status {
        (Some(m0.status), Some(m.status))
    } else {
        (None, None)
    };
    let level = if action == Action::MarkBroken {
        EventLevel::Warning
    } else {
        EventLevel::Info
    };
    emit(
        state,
        cmd,
        rev,
        action.as_str(),
        level,
        Some(&m),
        from,
        to_ev,
        message,
    );
    state.put_machine(m.clone());
    super::power::lifecycle(state, cmd, rev, m0.status, &m);
    Ok(Reply::Machine(Box::new(m)))
}

/// Applies the end of in-progress work.
#[allow(clippy::too_many_arguments)]
pub(super) fn outcome(
    state: &mut State,
    cmd: &Command,
    rev: u64,
    system_id: &str,
    status: MachineStatus,
    boot_id: Option<&str>,
    outcome: Outcome,
    reason: &str,
    next_boot: &BootTokens,
) -> Response {
    let now = cmd.ts_ms;
    let m0 = existing(state, system_id, 0)?.clone();
    if let Some(b) = boot_id {
        if m0.boot.as_ref().map(|x| x.boot_id.as_str()) != Some(b) {
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
    let to = match outcome {
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
    let (kind, level) = match outcome {
        Outcome::Done => ("done", EventLevel::Info),
        Outcome::Failed => ("failed", EventLevel::Error),
        Outcome::TimedOut => ("deadline", EventLevel::Warning),
    };
    let msg = if outcome == Outcome::Done {
        String::new()
    } else {
        reason.to_string()
    };
    transition(state, &mut m, to, now, next_boot, &msg);
    m.updated_ms = now;
    m.revision = rev;
    emit(
        state,
        cmd,
        rev,
        kind,
        level,
        Some(&m),
        Some(m0.status),
        Some(m.status),
        reason.to_string(),
    );
    state.put_machine(m.clone());
    super::power::lifecycle(state, cmd, rev, m0.status, &m);
    Ok(Reply::Machine(Box::new(m)))
}

fn current_boot<'a>(
    state: &'a State,
    system_id: &str,
    boot_id: &str,
) -> Result<&'a Machine, DomainError> {
    let m = existing(state, system_id, 0)?;
    if m.boot.as_ref().map(|b| b.boot_id.as_str()) != Some(boot_id) {
        return Err(DomainError::unauthenticated(format!(
            "this boot of machine {system_id} is over; its report is refused"
        )));
    }
    Ok(m)
}

/// Stores the inventory of the current commissioning boot and re-evaluates tags for the machine.
pub(super) fn report_inventory(
    state: &mut State,
    cmd: &Command,
    rev: u64,
    system_id: &str,
    boot_id: &str,
    inventory: &Inventory,
) -> Response {
    let m0 = current_boot(state, system_id, boot_id)?.clone();
    if m0.status != MachineStatus::Commissioning {
        return Err(DomainError::precondition(format!(
            "machine {system_id} is {}: inventory is accepted only while commissioning",
            m0.status.as_str()
        )));
    }
    let mut m = m0;
    m.inventory = Some(inventory.clone());
    retag(state, &mut m);
    m.updated_ms = cmd.ts_ms;
    m.revision = rev;
    let msg = format!(
        "{} CPUs, {} MiB, {} disks ({} GiB), {} NICs",
        inventory.cpu_count,
        inventory.memory_mib,
        inventory.disks.len(),
        m.storage_gib(),
        inventory.nics.len()
    );
    emit(
        state,
        cmd,
        rev,
        "agent.inventory",
        EventLevel::Info,
        Some(&m),
        None,
        None,
        msg,
    );
    state.put_machine(m.clone());
    Ok(Reply::Machine(Box::new(m)))
}

/// Records a progress step of the current boot.
pub(super) fn report_progress(
    state: &mut State,
    cmd: &Command,
    rev: u64,
    system_id: &str,
    boot_id: &str,
    message: &str,
    percent: u32,
) -> Response {
    let mut m = current_boot(state, system_id, boot_id)?.clone();
    m.progress = Some(ingot_common::model::Progress {
        message: message.to_string(),
        percent: percent.min(100),
        ts_ms: cmd.ts_ms,
    });
    m.updated_ms = cmd.ts_ms;
    m.revision = rev;
    emit(
        state,
        cmd,
        rev,
        "agent.progress",
        EventLevel::Info,
        Some(&m),
        None,
        None,
        format!("{}% {message}", percent.min(100)),
    );
    state.put_machine(m.clone());
    Ok(Reply::Machine(Box::new(m)))
}

/// The consumer string of the `i`-th machine of an allocation of `count`.
pub fn consumer_for(consumer: &str, count: u32, i: usize) -> String {
    if consumer.is_empty() || count <= 1 {
        consumer.to_string()
    } else {
        format!("{consumer}-{i}")
    }
}

/// The machines a served allocation got, if `owner` already used `request_id`: from the machines still
/// held under that request id, or from the record (records expire; allocations do not). When the
/// machines have been released since, the answer is an error rather than their current state — which
/// may belong to someone else now.
pub fn replay(
    state: &State,
    owner: &str,
    request_id: &str,
) -> Option<Result<Vec<Machine>, DomainError>> {
    let key = format!("{owner}/{request_id}");
    let held: Vec<Machine> = state
        .by_allocation
        .get(&key)
        .map(|ids| {
            ids.iter()
                .filter_map(|id| state.machine(id).cloned())
                .collect()
        })
        .unwrap_or_default();
    match state.data.allocations.get(&key) {
        Some(rec) => {
            if held.len() == rec.system_ids.len() {
                // In the order they were first returned.
                let mut out = held;
                out.sort_by_key(|m| rec.system_ids.iter().position(|id| *id == m.system_id));
                Some(Ok(out))
            } else {
                Some(Err(DomainError::precondition(format!(
                    "request id '{request_id}' was served before (machines {}) and {} of them have been released since; use a new request id to allocate again",
                    rec.system_ids.join(", "),
                    rec.system_ids.len() - held.len()
                ))))
            }
        }
        None if !held.is_empty() => Some(Ok(held)),
        None => None,
    }
}

/// True if `m` can be allocated now under `c`.
pub fn available(m: &Machine, c: &Constraints) -> bool {
    m.status == MachineStatus::Ready && !m.locked && m.owner.is_none() && c.matches(m)
}

/// The compare-and-set claim of an allocation.
#[allow(clippy::too_many_arguments)]
pub(super) fn allocate(
    state: &mut State,
    cmd: &Command,
    rev: u64,
    request_id: &str,
    consumer: &str,
    constraints: &Constraints,
    min_zones: u32,
    candidates: &[String],
    count: u32,
) -> Response {
    let owner = cmd.actor.clone();
    if let Some(r) = replay(state, &owner, request_id) {
        return r.map(|ms| Reply::Allocated(ms, true));
    }
    let count = count.max(1) as usize;
    for i in 0..count {
        let c = consumer_for(consumer, count as u32, i);
        if let Some(id) = state.by_consumer.get(&c).filter(|_| !c.is_empty()) {
            return Err(DomainError::exists(
                "consumer",
                format!("consumer '{c}' already holds machine {id}; release it first, or find it with `ingot machines show --consumer {c}`"),
            ));
        }
    }
    let mut chosen: Vec<String> = Vec::with_capacity(count);
    for id in candidates {
        if chosen.len() == count {
            break;
        }
        if chosen.contains(id) {
            continue;
        }
        match state.machine(id) {
            Some(m) if available(m, constraints) => chosen.push(id.clone()),
            _ if count > 1 => {
                return Err(
                    DomainError::precondition(format!("machine {id} was taken meanwhile"))
                        .with_field(CONFLICT_FIELD),
                )
            }
            _ => {}
        }
    }
    if chosen.len() < count {
        return Err(
            DomainError::precondition("the chosen machines were taken meanwhile")
                .with_field(CONFLICT_FIELD),
        );
    }
    if min_zones > 0 {
        let zones: std::collections::BTreeSet<&str> = chosen
            .iter()
            .filter_map(|id| state.machine(id))
            .map(|m| m.zone.as_str())
            .collect();
        if zones.len() < min_zones as usize {
            return Err(DomainError::precondition(format!(
                "the machines span {} zone(s), fewer than the {min_zones} asked",
                zones.len()
            ))
            .with_field(CONFLICT_FIELD));
        }
    }
    let mut out = Vec::with_capacity(count);
    let boot = BootTokens::default();
    for (i, id) in chosen.iter().enumerate() {
        let Some(mut m) = state.machine(id).cloned() else {
            continue;
        };
        let from = m.status;
        transition(
            state,
            &mut m,
            MachineStatus::Allocated,
            cmd.ts_ms,
            &boot,
            "",
        );
        m.owner = Some(owner.clone());
        m.allocation = Some(Allocation {
            request_id: request_id.to_string(),
            consumer: consumer_for(consumer, count as u32, i),
            allocated_ms: cmd.ts_ms,
        });
        m.deploy = None::<DeploySpec>;
        m.updated_ms = cmd.ts_ms;
        m.revision = rev;
        let msg = match &m.allocation {
            Some(a) if !a.consumer.is_empty() => format!("to {owner} for {}", a.consumer),
            _ => format!("to {owner}"),
        };
        emit(
            state,
            cmd,
            rev,
            "allocate",
            EventLevel::Info,
            Some(&m),
            Some(from),
            Some(m.status),
            msg,
        );
        state.put_machine(m.clone());
        out.push(m);
    }
    let key = format!("{owner}/{request_id}");
    state.data.allocations.insert(
        key.clone(),
        AllocationRecord {
            system_ids: chosen,
            ts_ms: cmd.ts_ms,
        },
    );
    let d = &mut state.data;
    d.allocation_order.push_back((cmd.ts_ms, key));
    while let Some((ts, k)) = d.allocation_order.front() {
        if d.allocation_order.len() > ALLOCATION_RECORDS_MAX
            || ts.saturating_add(ALLOCATION_RECORD_MS) < cmd.ts_ms
        {
            d.allocations.remove(k);
            d.allocation_order.pop_front();
        } else {
            break;
        }
    }
    Ok(Reply::Allocated(out, false))
}
