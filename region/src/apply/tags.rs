//! Tags in the apply step: create, update and delete, each re-evaluated against every machine in the
//! same command (one tag, every machine; the other direction is `tagging::retag`).

use super::ctx::ApplyCtx;
use super::events::EventBuilder;
use crate::command::{op, Reply, Response};
use crate::state::State;
use ingot_common::model::Tag;
use ingot_common::tagexpr::TagExpr;
use ingot_common::{validate, DomainError};

/// Evaluates tag `name` (compiled as `expr`, or manual when `None`) against every machine, changing only
/// the machines whose membership changes: one tag, every machine, one pass.
fn reevaluate(ctx: &ApplyCtx, state: &mut State, name: &str, expr: Option<&TagExpr>) {
    let Some(expr) = expr else { return };
    let changed: Vec<String> = state
        .data
        .machines
        .values()
        .filter(|m| expr.matches(m) != m.tags.contains(name))
        .map(|m| m.system_id.clone())
        .collect();
    for id in changed {
        if let Some(mut m) = state.machine(&id).cloned() {
            if m.tags.contains(name) {
                m.tags.remove(name);
            } else {
                m.tags.insert(name.to_string());
            }
            m.updated_ms = ctx.ts_ms;
            m.revision = ctx.rev;
            state.put_machine(m);
        }
    }
}

/// Creates a tag; with a definition, applies it to every matching machine.
pub(super) fn create(ctx: &ApplyCtx, state: &mut State, op: &op::CreateTag) -> Response {
    let (name, definition, comment) = (&op.name, &op.definition, &op.comment);
    validate::name("name", name)?;
    validate::description("comment", comment)?;
    if state.data.tags.contains_key(name) {
        return Err(DomainError::exists(
            "name",
            format!("tag '{name}' already exists"),
        ));
    }
    let expr = if definition.is_empty() {
        None
    } else {
        Some(ingot_common::tagexpr::check("definition", definition)?)
    };
    let t = Tag {
        name: name.clone(),
        definition: definition.clone(),
        comment: comment.clone(),
        created_ms: ctx.ts_ms,
    };
    state.data.tags.insert(name.clone(), t.clone());
    if let Some(e) = &expr {
        state.tag_exprs.insert(name.clone(), e.clone());
    }
    reevaluate(ctx, state, name, expr.as_ref());
    EventBuilder::new("tag.create")
        .message(format!("{name}: {definition}"))
        .record(ctx, state);
    Ok(Reply::Tag(t))
}

/// Changes a tag; a new definition is re-evaluated against every machine in this same command.
pub(super) fn update(ctx: &ApplyCtx, state: &mut State, op: &op::UpdateTag) -> Response {
    let name = &op.name;
    let Some(mut t) = state.data.tags.get(name).cloned() else {
        return Err(DomainError::not_found(format!(
            "tag '{name}' does not exist"
        )));
    };
    if let Some(c) = &op.comment {
        validate::description("comment", c)?;
        t.comment = c.clone();
    }
    if let Some(d) = op.definition.as_ref().filter(|d| **d != t.definition) {
        let expr = if d.is_empty() {
            None
        } else {
            Some(ingot_common::tagexpr::check("definition", d)?)
        };
        t.definition = d.clone();
        match &expr {
            Some(e) => {
                state.tag_exprs.insert(name.clone(), e.clone());
            }
            None => {
                state.tag_exprs.remove(name);
            }
        }
        reevaluate(ctx, state, name, expr.as_ref());
    }
    state.data.tags.insert(name.clone(), t.clone());
    EventBuilder::new("tag.update")
        .message(format!("{name}: {}", t.definition))
        .record(ctx, state);
    Ok(Reply::Tag(t))
}

/// Deletes a tag and removes it from every machine.
pub(super) fn delete(ctx: &ApplyCtx, state: &mut State, op: &op::DeleteTag) -> Response {
    let name = &op.name;
    if state.data.tags.remove(name).is_none() {
        return Err(DomainError::not_found(format!(
            "tag '{name}' does not exist"
        )));
    }
    state.tag_exprs.remove(name);
    let ids: Vec<String> = state
        .by_tag
        .get(name)
        .map(|s| s.iter().cloned().collect())
        .unwrap_or_default();
    for id in ids {
        if let Some(mut m) = state.machine(&id).cloned() {
            m.tags.remove(name);
            m.updated_ms = ctx.ts_ms;
            m.revision = ctx.rev;
            state.put_machine(m);
        }
    }
    state.by_tag.remove(name);
    EventBuilder::new("tag.delete")
        .message(name.clone())
        .record(ctx, state);
    Ok(Reply::Done)
}
