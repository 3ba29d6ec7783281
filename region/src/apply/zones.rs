//! Zones in the apply step: create, update (a rename moves the zone's machines and racks) and delete
//! (refused while machines or unrevoked racks are in the zone).

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

/// Changes a zone's description or renames it, moving its machines and racks (the default zone keeps its
/// name).
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
        // Racks name their zone too (it decides which BMCs they take first).
        for r in state.data.racks.values_mut() {
            if r.zone == *name {
                r.zone = n.clone();
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

/// Deletes a zone other than the default that holds no machine and is no unrevoked rack's zone.
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
    // A working rack's zone decides which BMCs it takes first: moving it elsewhere silently would move
    // power work, so the delete is refused. A revoked rack does no work and has no other way to drop
    // the name: it goes to the default zone.
    let live: Vec<&str> = state
        .data
        .racks
        .values()
        .filter(|r| r.zone == *name && !r.revoked)
        .map(|r| r.name.as_str())
        .collect();
    if !live.is_empty() {
        return Err(DomainError::precondition(format!(
            "zone '{name}' is the zone of rack(s) {}; revoke them (`ingot racks revoke NAME`) and register them again in another zone first",
            live.join(", ")
        )));
    }
    let mut moved = Vec::new();
    for r in state.data.racks.values_mut() {
        if r.zone == *name {
            r.zone = DEFAULT_ZONE.to_string();
            moved.push(r.name.clone());
        }
    }
    state.data.zones.remove(name);
    state.by_zone.remove(name);
    let message = if moved.is_empty() {
        name.clone()
    } else {
        format!(
            "{name} (revoked rack(s) {} now name zone {DEFAULT_ZONE})",
            moved.join(", ")
        )
    };
    EventBuilder::new("zone.delete")
        .message(message)
        .record(ctx, state);
    Ok(Reply::Done)
}

#[cfg(test)]
mod tests {
    use crate::apply::apply;
    use crate::apply::test_support::{bootstrap, cmd};
    use crate::command::{op, Op};
    use crate::state::State;
    use ingot_common::model::DEFAULT_ZONE;
    use ingot_common::ErrorCode;

    fn rack_zone(s: &State, name: &str) -> String {
        s.data.racks[name].zone.clone()
    }

    #[test]
    fn renaming_or_deleting_a_zone_updates_the_racks_that_name_it() {
        let mut s = State::default();
        let ops = [
            bootstrap(),
            Op::CreateZone(op::CreateZone {
                name: "z1".into(),
                description: String::new(),
            }),
            Op::CreateRackToken(op::CreateRackToken {
                token_hash: "t".into(),
                expires_ms: 1000,
            }),
            Op::RegisterRack(op::RegisterRack {
                token_hash: "t".into(),
                name: "ra".into(),
                zone: "z1".into(),
            }),
        ];
        let mut rev = 0;
        for op in ops {
            rev += 1;
            apply(&mut s, &cmd(rev, op), rev).expect("setup");
        }
        let mut run = |s: &mut State, op: Op| {
            rev += 1;
            apply(s, &cmd(rev, op), rev)
        };
        run(
            &mut s,
            Op::UpdateZone(op::UpdateZone {
                name: "z1".into(),
                description: None,
                new_name: Some("z2".into()),
            }),
        )
        .expect("rename");
        assert_eq!(rack_zone(&s, "ra"), "z2", "the rack follows the rename");

        // A working rack's zone cannot be deleted under it.
        let delete = || Op::DeleteZone(op::DeleteZone { name: "z2".into() });
        let e = run(&mut s, delete()).unwrap_err();
        assert_eq!(e.code, ErrorCode::FailedPrecondition, "{e:?}");
        assert!(e.message.contains("rack(s) ra"), "{}", e.message);
        assert!(s.data.zones.contains_key("z2"));

        // Once the rack is revoked the zone goes, and the revoked rack names the default zone.
        run(&mut s, Op::RevokeRack(op::RevokeRack { name: "ra".into() })).expect("revoke");
        run(&mut s, delete()).expect("delete");
        assert!(!s.data.zones.contains_key("z2"));
        assert_eq!(rack_zone(&s, "ra"), DEFAULT_ZONE);
        assert!(s
            .data
            .racks
            .values()
            .all(|r| s.data.zones.contains_key(&r.zone)));
    }
}
