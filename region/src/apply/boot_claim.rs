//! The boot proof: an in-band agent's first lookup of a boot ([`op::ClaimBoot`]).
//!
//! A machine's current boot is handed to the first agent that claims it, and only when the claim comes
//! through the rack that leased one of the machine's MACs an address, while the machine is in a status
//! that boots the ramdisk. The token's hash replaces any earlier one; the same claim again (a lost answer,
//! a region failover between the rack's call and its answer) gets a fresh token; any other claim is a
//! second claimant — a copied boot, a replayed script — and is refused with a warning event that names
//! the rack and MAC, without touching the boot.

use super::ctx::ApplyCtx;
use super::events::EventBuilder;
use crate::command::{op, Reply, Response};
use crate::state::State;
use ingot_common::lifecycle;
use ingot_common::model::EventLevel;
use ingot_common::{DomainError, MachineStatus};

/// Whether a machine in `s` boots the ramdisk for Ingot (and so may hand its boot to an agent).
pub fn booting(s: MachineStatus) -> bool {
    lifecycle::in_progress(s)
        && !matches!(
            s,
            MachineStatus::Releasing | MachineStatus::ExitingRescueMode
        )
}

/// Applies a [`op::ClaimBoot`] (see the module doc).
pub(super) fn claim(ctx: &ApplyCtx, state: &mut State, op: &op::ClaimBoot) -> Response {
    match state.data.racks.get(&op.rack) {
        Some(r) if !r.revoked => {}
        _ => {
            return Err(DomainError::denied(format!(
                "rack '{}' is not a registered, unrevoked rack: it cannot relay boot claims",
                op.rack
            )))
        }
    }
    let Some(m0) = state.machine(&op.system_id).cloned() else {
        return Err(DomainError::not_found(format!(
            "no machine {}: it was deleted while booting",
            op.system_id
        )));
    };
    if !m0.macs.contains(&op.mac) {
        return Err(DomainError::denied(format!(
            "mac {} is not one of machine {}'s",
            op.mac, op.system_id
        )));
    }
    if !state.leases_of_mac(&op.mac).any(|l| l.rack == op.rack) {
        return Err(DomainError::denied(format!(
            "rack '{}' leased no address to {}: a boot is handed out only through the rack the machine booted from",
            op.rack, op.mac
        )));
    }
    let Some(boot) = m0.boot.as_ref().filter(|b| b.boot_id == op.boot_id) else {
        return Err(DomainError::precondition(format!(
            "machine {} has moved on from that boot: look it up again",
            op.system_id
        )));
    };
    if !booting(m0.status) {
        return Err(DomainError::precondition(format!(
            "machine {} is {}: it is not booting for Ingot",
            op.system_id,
            m0.status.as_str()
        )));
    }
    if !boot.claim_hash.is_empty() && boot.claim_hash != op.claim_hash {
        let why = format!(
            "a second agent claimed boot {} of machine {} through rack {} (mac {}): refused; the first claimant keeps the boot",
            boot.boot_id, op.system_id, op.rack, op.mac
        );
        EventBuilder::new("boot.claim-refused")
            .level(EventLevel::Warning)
            .machine(&m0)
            .message(why.clone())
            .record(ctx, state);
        return Ok(Reply::Refused(why));
    }
    let first = boot.claim_hash.is_empty();
    let mut m = m0.clone();
    if let Some(b) = m.boot.as_mut() {
        b.claim_hash = op.claim_hash.clone();
        b.token_hash = op.token_hash.clone();
    }
    m.revision = ctx.rev;
    state.put_machine(m.clone());
    EventBuilder::new("boot.claimed")
        .machine(&m)
        .message(format!(
            "{} boot {} by the agent on {} through rack {}",
            if first { "claimed" } else { "claimed again" },
            op.boot_id,
            op.mac,
            op.rack
        ))
        .record(ctx, state);
    Ok(Reply::Machine(Box::new(m)))
}
