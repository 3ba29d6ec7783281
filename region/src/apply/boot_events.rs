//! Network boot steps racks saw, as machine events.
//!
//! A rack batches the steps of the boots it serves (a DHCP answer to a PXE client, the script served with
//! its purpose, files started, finished or aborted) into one `RecordBootEvents` a second at most; each
//! step becomes an event `boot.<step>` of the machine that has the MAC, or — for a MAC no machine has
//! (yet) — an event without a machine whose message names the MAC, so `ingot events` shows an unknown
//! machine's boot too. Only a registered, unrevoked rack's steps are recorded, at most
//! [`MAX_BOOT_EVENTS_PER_OP`] per command, details at most [`MAX_BOOT_EVENT_DETAIL`] bytes (cut here
//! again: apply trusts no proposer's bounds). A step changes nothing but the event log.

use super::ctx::ApplyCtx;
use super::events::EventBuilder;
use crate::command::op::{MAX_BOOT_EVENTS_PER_OP, MAX_BOOT_EVENT_DETAIL};
use crate::command::{op, Reply, Response};
use crate::state::State;
use ingot_common::image::BootStep;
use ingot_common::model::EventLevel;
use ingot_common::DomainError;

/// Records a rack's batch of boot steps.
pub(super) fn record(ctx: &ApplyCtx, state: &mut State, op: &op::RecordBootEvents) -> Response {
    match state.data.racks.get(&op.rack) {
        Some(r) if !r.revoked => {}
        Some(_) => {
            return Err(DomainError::denied(format!(
                "rack '{}' is revoked: its boot events are not recorded",
                op.rack
            )))
        }
        None => {
            return Err(DomainError::denied(format!(
                "rack '{}' is not registered: its boot events are not recorded",
                op.rack
            )))
        }
    }
    if op.events.len() > MAX_BOOT_EVENTS_PER_OP {
        return Err(DomainError::invalid(
            "events",
            format!(
                "{} boot events in one batch, at most {MAX_BOOT_EVENTS_PER_OP}",
                op.events.len()
            ),
        ));
    }
    for e in &op.events {
        let mut detail = e.detail.clone();
        ingot_common::validate::truncate_text(&mut detail, MAX_BOOT_EVENT_DETAIL);
        let level = match e.step {
            BootStep::FileAborted => EventLevel::Warning,
            _ => EventLevel::Info,
        };
        let kind = format!("boot.{}", e.step.as_str());
        let machine = state.machine_by_mac(&e.mac).cloned();
        let message = match &machine {
            Some(_) => format!("{detail} (mac {}, rack {})", e.mac, op.rack),
            None => format!("unknown mac {}: {detail} (rack {})", e.mac, op.rack),
        };
        EventBuilder::new(kind)
            .level(level)
            .machine(machine.as_ref())
            .message(message)
            .record(ctx, state);
    }
    Ok(Reply::Done)
}

#[cfg(test)]
mod tests {
    use crate::apply::apply;
    use crate::apply::test_support::{create_m1, init, internal};
    use crate::command::op::{
        self, BootEventRecord, MAX_BOOT_EVENTS_PER_OP, MAX_BOOT_EVENT_DETAIL,
    };
    use crate::command::{Internal, Op};
    use crate::state::State;
    use ingot_common::image::BootStep;
    use ingot_common::model::{EventLevel, Rack};
    use ingot_common::{ErrorCode, Mac, PowerParams};

    fn event(mac: &str, step: BootStep, detail: &str) -> BootEventRecord {
        BootEventRecord {
            mac: mac.parse::<Mac>().expect("mac"),
            step,
            detail: detail.into(),
            at_ms: 5,
        }
    }

    fn record(rack: &str, events: Vec<BootEventRecord>) -> Op {
        Op::RecordBootEvents(op::RecordBootEvents {
            rack: rack.into(),
            events,
        })
    }

    /// A bootstrapped cluster with machine m1 (MAC 52:54:00:00:00:01) and rack r1.
    fn cluster() -> State {
        let mut s = State::default();
        apply(&mut s, &init(), 1).expect("bootstrap");
        let m1 = create_m1(PowerParams {
            driver: "manual".into(),
            params: Default::default(),
        });
        apply(
            &mut s,
            &crate::apply::test_support::by_token(2, "admin-init", "admin", m1),
            2,
        )
        .expect("m1");
        s.data.racks.insert(
            "r1".into(),
            Rack {
                name: "r1".into(),
                zone: "default".into(),
                registered_ms: 1,
                revoked: false,
                session: None,
            },
        );
        s
    }

    #[test]
    fn steps_become_events_of_the_macs_machine_or_of_the_unknown_mac() {
        let mut s = cluster();
        let before = s.data.events.len();
        let long = format!("{}é", "d".repeat(MAX_BOOT_EVENT_DETAIL - 1));
        let op = record(
            "r1",
            vec![
                event("52:54:00:00:00:01", BootStep::Script, "purpose commission"),
                event(
                    "52:54:00:00:00:09",
                    BootStep::Dhcp,
                    "10.20.0.7 on 10.20.0.0/24",
                ),
                event("52:54:00:00:00:01", BootStep::FileAborted, &long),
            ],
        );
        apply(&mut s, &internal(3, Internal::Rack, "rack:r1", op), 3).expect("recorded");
        let new: Vec<_> = s.data.events.iter().skip(before).collect();
        assert_eq!(new.len(), 3);
        assert_eq!(new[0].kind, "boot.script");
        assert_eq!(new[0].system_id, "m1");
        assert_eq!(
            new[0].message,
            "purpose commission (mac 52:54:00:00:00:01, rack r1)"
        );
        assert_eq!(new[1].kind, "boot.dhcp");
        assert_eq!(new[1].system_id, "");
        assert!(
            new[1]
                .message
                .starts_with("unknown mac 52:54:00:00:00:09: 10.20.0.7"),
            "{}",
            new[1].message
        );
        assert_eq!(new[2].level, EventLevel::Warning);
        assert!(
            new[2]
                .message
                .starts_with(&"d".repeat(MAX_BOOT_EVENT_DETAIL - 1))
                && !new[2].message.contains('é'),
            "detail cut at a character boundary"
        );
        assert_eq!((new[0].seq, new[2].seq), (0, 2));
    }

    #[test]
    fn unknown_or_revoked_racks_and_oversized_batches_are_refused() {
        let mut s = cluster();
        let before = s.data.events.len();
        let one = || vec![event("52:54:00:00:00:01", BootStep::Script, "x")];
        let e = apply(
            &mut s,
            &internal(3, Internal::Rack, "rack:r9", record("r9", one())),
            3,
        )
        .expect_err("unknown rack");
        assert_eq!(e.code, ErrorCode::PermissionDenied);
        s.data.racks.get_mut("r1").expect("r1").revoked = true;
        let e = apply(
            &mut s,
            &internal(4, Internal::Rack, "rack:r1", record("r1", one())),
            4,
        )
        .expect_err("revoked");
        assert!(e.message.contains("revoked"), "{e}");
        s.data.racks.get_mut("r1").expect("r1").revoked = false;
        let many =
            vec![event("52:54:00:00:00:01", BootStep::Dhcp, "x"); MAX_BOOT_EVENTS_PER_OP + 1];
        let e = apply(
            &mut s,
            &internal(5, Internal::Rack, "rack:r1", record("r1", many)),
            5,
        )
        .expect_err("too many");
        assert_eq!(e.field.as_deref(), Some("events"));
        assert_eq!(s.data.events.len(), before, "nothing recorded");
        // Only a rack may record boot steps.
        let e = apply(
            &mut s,
            &crate::apply::test_support::by_token(6, "admin-init", "admin", record("r1", one())),
            6,
        )
        .expect_err("not a rack");
        assert_eq!(e.code, ErrorCode::PermissionDenied);
    }
}
