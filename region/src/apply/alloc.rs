//! Allocation in the apply step: the compare-and-set claim of machines a proposer chose, and the replay
//! of a request id already served.

use super::ctx::ApplyCtx;
use super::events::EventBuilder;
use super::status::transition;
use crate::command::{op, BootTokens, Reply, Response, CONFLICT_FIELD};
use crate::state::{AllocationRecord, State, ALLOCATION_RECORDS_MAX, ALLOCATION_RECORD_MS};
use ingot_common::constraints::Constraints;
use ingot_common::model::{Allocation, DeploySpec};
use ingot_common::{DomainError, Machine, MachineStatus};

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
pub(super) fn allocate(ctx: &ApplyCtx, state: &mut State, op: &op::Allocate) -> Response {
    let (request_id, consumer) = (op.request_id.as_str(), op.consumer.as_str());
    let owner = ctx.actor.to_string();
    if let Some(r) = replay(state, &owner, request_id) {
        return r.map(|ms| Reply::Allocated(ms, true));
    }
    let count = op.count.max(1) as usize;
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
    for id in &op.candidates {
        if chosen.len() == count {
            break;
        }
        if chosen.contains(id) {
            continue;
        }
        match state.machine(id) {
            Some(m) if available(m, &op.constraints) => chosen.push(id.clone()),
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
    let min_zones = op.min_zones;
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
        // An allocation neither queues nor cancels power work (Ready -> Allocated powers nothing): its
        // plan is dropped.
        let _ = transition(ctx, state, &mut m, MachineStatus::Allocated, &boot, "");
        m.owner = Some(owner.clone());
        m.allocation = Some(Allocation {
            request_id: request_id.to_string(),
            consumer: consumer_for(consumer, count as u32, i),
            allocated_ms: ctx.ts_ms,
        });
        m.deploy = None::<DeploySpec>;
        m.updated_ms = ctx.ts_ms;
        m.revision = ctx.rev;
        let msg = match &m.allocation {
            Some(a) if !a.consumer.is_empty() => format!("to {owner} for {}", a.consumer),
            _ => format!("to {owner}"),
        };
        EventBuilder::new("allocate")
            .machine(&m)
            .moved(from, m.status)
            .message(msg)
            .record(ctx, state);
        state.put_machine(m.clone());
        out.push(m);
    }
    let key = format!("{owner}/{request_id}");
    state.data.allocations.insert(
        key.clone(),
        AllocationRecord {
            system_ids: chosen,
            ts_ms: ctx.ts_ms,
        },
    );
    let d = &mut state.data;
    d.allocation_order.push_back((ctx.ts_ms, key));
    while let Some((ts, k)) = d.allocation_order.front() {
        if d.allocation_order.len() > ALLOCATION_RECORDS_MAX
            || ts.saturating_add(ALLOCATION_RECORD_MS) < ctx.ts_ms
        {
            d.allocations.remove(k);
            d.allocation_order.pop_front();
        } else {
            break;
        }
    }
    Ok(Reply::Allocated(out, false))
}
