//! Tag membership of one machine: every tag definition re-evaluated against a machine whose fields
//! changed (the other direction, one tag against every machine, is in `tags`).

use crate::state::State;
use ingot_common::Machine;

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
