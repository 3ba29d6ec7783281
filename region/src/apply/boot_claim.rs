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

#[cfg(test)]
mod tests {
    use crate::apply::apply;
    use crate::apply::test_support::{by_token, create_m1, init, internal};
    use crate::command::{op, ActionArgs, BootTokens, Internal, Op, Reply};
    use crate::state::State;
    use ingot_common::lifecycle::Action;
    use ingot_common::model::Rack;
    use ingot_common::net::{Lease, LeaseState};
    use ingot_common::{secret, ErrorCode, Mac, PowerParams};

    const MAC: &str = "52:54:00:00:00:01";

    /// m1 commissioning (manual power), racks r1 and r2, and a lease of m1's MAC from `lease_rack`.
    fn cluster(lease_rack: &str) -> (State, u64, String) {
        let mut s = State::default();
        apply(&mut s, &init(), 1).expect("bootstrap");
        let m1 = create_m1(PowerParams {
            driver: "manual".into(),
            params: Default::default(),
        });
        apply(&mut s, &by_token(2, "admin-init", "admin", m1), 2).expect("m1");
        let commission = Op::MachineAction(op::MachineAction {
            system_id: "m1".into(),
            action: Action::Commission,
            expected_revision: 0,
            args: ActionArgs {
                boot: BootTokens::generate(),
                ..Default::default()
            },
        });
        apply(&mut s, &by_token(3, "admin-init", "admin", commission), 3).expect("commission");
        for r in ["r1", "r2"] {
            s.data.racks.insert(
                r.into(),
                Rack {
                    name: r.into(),
                    zone: "default".into(),
                    registered_ms: 1,
                    revoked: false,
                    session: None,
                },
            );
        }
        let lease = Lease {
            ip: "10.20.0.7".parse().expect("ip"),
            subnet: "10.20.0.0/24".parse().expect("cidr"),
            mac: MAC.parse().expect("mac"),
            state: LeaseState::Bound,
            start_ms: 1,
            expires_ms: u64::MAX,
            hostname: String::new(),
            rack: lease_rack.into(),
        };
        s.put_lease(lease, 3, None);
        let boot_id = s
            .machine("m1")
            .and_then(|m| m.boot.clone())
            .expect("booting")
            .boot_id;
        (s, 3, boot_id)
    }

    fn claim(boot_id: &str, rack: &str, claim: &str, token: &str) -> Op {
        Op::ClaimBoot(op::ClaimBoot {
            system_id: "m1".into(),
            boot_id: boot_id.into(),
            rack: rack.into(),
            mac: MAC.parse::<Mac>().expect("mac"),
            claim_hash: secret::hash(claim),
            token_hash: secret::hash(token),
        })
    }

    fn run(s: &mut State, rev: u64, op: Op) -> crate::command::Response {
        apply(s, &internal(rev, Internal::Rack, "rack:r1", op), rev)
    }

    #[test]
    fn the_first_claim_takes_the_boot_the_same_claim_renews_it_a_second_is_refused_with_an_event() {
        let (mut s, rev, boot_id) = cluster("r1");
        let r = run(
            &mut s,
            rev + 1,
            claim(&boot_id, "r1", "claim-aaaaaaaaaaaa", "t1"),
        );
        assert!(matches!(r, Ok(Reply::Machine(_))), "{r:?}");
        let b = s.machine("m1").and_then(|m| m.boot.clone()).expect("boot");
        assert_eq!(b.token_hash, secret::hash("t1"));
        assert_eq!(b.claim_hash, secret::hash("claim-aaaaaaaaaaaa"));

        // The same agent again (its answer was lost): a fresh token replaces the first.
        let r = run(
            &mut s,
            rev + 2,
            claim(&boot_id, "r1", "claim-aaaaaaaaaaaa", "t2"),
        );
        assert!(matches!(r, Ok(Reply::Machine(_))), "{r:?}");
        let b = s.machine("m1").and_then(|m| m.boot.clone()).expect("boot");
        assert_eq!(b.token_hash, secret::hash("t2"));

        // Another claimant: refused, recorded, the boot untouched.
        let events = s.data.events.len();
        let r = run(
            &mut s,
            rev + 3,
            claim(&boot_id, "r1", "claim-bbbbbbbbbbbb", "t3"),
        );
        match r {
            Ok(Reply::Refused(why)) => assert!(why.contains("second agent"), "{why}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        let b = s.machine("m1").and_then(|m| m.boot.clone()).expect("boot");
        assert_eq!(b.token_hash, secret::hash("t2"));
        let e = s
            .data
            .events
            .iter()
            .skip(events)
            .find(|e| e.kind == "boot.claim-refused");
        assert!(e.is_some_and(|e| e.system_id == "m1"), "no refusal event");
    }

    #[test]
    fn only_the_rack_that_leased_the_mac_and_only_a_current_booting_boot() {
        let (mut s, rev, boot_id) = cluster("r2");
        let e = run(
            &mut s,
            rev + 1,
            claim(&boot_id, "r1", "claim-aaaaaaaaaaaa", "t1"),
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied, "{e}");
        assert!(e.message.contains("leased no address"), "{e}");

        let (mut s, rev, _) = cluster("r1");
        let e = run(
            &mut s,
            rev + 1,
            claim("old-boot", "r1", "claim-aaaaaaaaaaaa", "t1"),
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::FailedPrecondition, "{e}");

        let e = run(
            &mut s,
            rev + 2,
            claim("x", "nope", "claim-aaaaaaaaaaaa", "t1"),
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied, "{e}");
    }

    #[test]
    fn only_racks_may_propose_a_claim() {
        let (mut s, rev, boot_id) = cluster("r1");
        let e = apply(
            &mut s,
            &by_token(
                rev + 1,
                "admin-init",
                "admin",
                claim(&boot_id, "r1", "claim-aaaaaaaaaaaa", "t"),
            ),
            rev + 1,
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied, "{e}");
    }

    #[test]
    fn a_lookup_finds_the_machine_by_any_mac_and_names_the_boot_it_claims() {
        use crate::app::agent::lookup_work;
        use ingot_common::image::BootPurpose;
        let (s, _, boot_id) = cluster("r1");
        let other: Mac = "52:54:00:00:00:99".parse().expect("mac");
        let mac: Mac = MAC.parse().expect("mac");
        let (op, work) = lookup_work(&s, "r1", &[other, mac], "claim-aaaaaaaaaaaa").expect("work");
        assert_eq!(op.boot_id, boot_id);
        assert_eq!(op.mac, mac);
        assert_eq!(op.claim_hash, secret::hash("claim-aaaaaaaaaaaa"));
        assert_eq!(work.purpose, BootPurpose::Commission);
        assert_eq!(work.system_id, "m1");
        assert!(work.deploy.is_none());

        let e = lookup_work(&s, "r2", &[mac], "claim-aaaaaaaaaaaa").unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied, "{e}");
        let e = lookup_work(&s, "r1", &[other], "claim-aaaaaaaaaaaa").unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound, "{e}");
    }
}
