//! The lookup every machine operation starts with: the machine by id, guarded by the revision the
//! request expected.

use crate::state::State;
use ingot_common::{DomainError, Machine};

/// The machine `id`; with `expected_revision` non-zero, only if it is still at that revision (a
/// conflicting write in between fails the request rather than being overwritten).
pub(super) fn existing<'a>(
    state: &'a State,
    id: &str,
    expected_revision: u64,
) -> Result<&'a Machine, DomainError> {
    let m = state
        .data
        .machines
        .get(id)
        .ok_or_else(|| DomainError::not_found(format!("machine {id} does not exist")))?;
    if expected_revision != 0 && m.revision != expected_revision {
        return Err(DomainError::precondition(format!(
            "machine {id} changed: its revision is {} but the request expected {expected_revision}; read it again and retry",
            m.revision
        )));
    }
    Ok(m)
}
