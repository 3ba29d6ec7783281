//! Zones in the apply step: create, update (a rename moves the zone's machines) and delete.

use super::ctx::ApplyCtx;
use super::events::EventBuilder;
use super::tagging::retag;
use crate::command::{op, Reply, Response};
use crate::state::State;
use ingot_common::model::DEFAULT_ZONE;
use ingot_common::{validate, DomainError, Zone};

/// Creates a zone.
pub(super) fn create(ctx: &ApplyCtx, state: &mut State, op: &op::CreateZone) -> Response {
    let (name, description) = (&op.name, &op.description);
    validate::dns_label("name", name)?;
    validate::description("description", description)?;
    if state.data.zones.contains_key(name) {
        return Err(DomainError::exists(
            "name",
            format!("zone '{name}' already exists"),
        ));
    }
    let z = Zone {
        name: name.clone(),
        description: description.clone(),
        created_ms: ctx.ts_ms,
    };
    state.data.zones.insert(name.clone(), z.clone());
    EventBuilder::new("zone.create")
        .message(name.clone())
        .record(ctx, state);
    Ok(Reply::Zone(z))
}

/// Changes a zone's description or renames it, moving its machines (the default zone keeps its name).
pub(super) fn update(ctx: &ApplyCtx, state: &mut State, op: &op::UpdateZone) -> Response {
    let name = &op.name;
    let Some(mut z) = state.data.zones.get(name).cloned() else {
        return Err(DomainError::not_found(format!(
            "zone '{name}' does not exist"
        )));
    };
    if let Some(d) = &op.description {
        validate::description("description", d)?;
        z.description = d.clone();
    }
    if let Some(n) = op.new_name.as_ref().filter(|n| *n != name) {
        validate::dns_label("new_name", n)?;
        if name == DEFAULT_ZONE {
            return Err(DomainError::precondition(
                "the zone 'default' cannot be renamed",
            ));
        }
        if state.data.zones.contains_key(n) {
            return Err(DomainError::exists(
                "new_name",
                format!("zone '{n}' already exists"),
            ));
        }
        let ids: Vec<String> = state
            .by_zone
            .get(name)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for id in ids {
            if let Some(mut m) = state.data.machines.get(&id).cloned() {
                m.zone = n.clone();
                m.updated_ms = ctx.ts_ms;
                m.revision = ctx.rev;
                retag(state, &mut m);
                state.put_machine(m);
            }
        }
        state.by_zone.remove(name);
        state.data.zones.remove(name);
        z.name = n.clone();
    }
    state.data.zones.insert(z.name.clone(), z.clone());
    EventBuilder::new("zone.update")
        .message(z.name.clone())
        .record(ctx, state);
    Ok(Reply::Zone(z))
}

/// Deletes an empty zone other than the default.
pub(super) fn delete(ctx: &ApplyCtx, state: &mut State, op: &op::DeleteZone) -> Response {
    let name = &op.name;
    if !state.data.zones.contains_key(name) {
        return Err(DomainError::not_found(format!(
            "zone '{name}' does not exist"
        )));
    }
    if name == DEFAULT_ZONE {
        return Err(DomainError::precondition(
            "the zone 'default' cannot be deleted",
        ));
    }
    let n = state.zone_count(name);
    if n > 0 {
        return Err(DomainError::precondition(format!(
            "zone '{name}' still holds {n} machine(s); move them to another zone first"
        )));
    }
    state.data.zones.remove(name);
    state.by_zone.remove(name);
    EventBuilder::new("zone.delete")
        .message(name.clone())
        .record(ctx, state);
    Ok(Reply::Done)
}
