//! DHCP leases committed by racks, and machines enlisted by PXE boot.
//!
//! A rack hands out addresses from its view of the leases and commits what it handed out in batches
//! ([`commit`]); this step is the authority that makes two racks (a primary and its secondary, or a rack
//! replaying its offline journal) never record one address for two MACs. Each lease is checked alone: the
//! rack serves its subnet, the address is a host address of the subnet outside its reserved ranges, and no
//! other MAC holds it; a refused lease is named in the reply with why, the rest are recorded. Committing
//! the same lease again changes nothing (a re-sent batch, a journal replayed twice), and a lease older
//! than the one recorded for its MAC and address never replaces it: `start_ms` orders a MAC's records
//! (a batch is applied oldest first), so a rack commits a release or a decline with `start_ms` = when it
//! happened; a release of an address whose record is another MAC's changes nothing. No event per lease
//! (a boot storm must not flood the event log): only a machine's first address on a subnet gets one.

use super::ctx::ApplyCtx;
use super::events::EventBuilder;
use super::machines::insert_new;
use crate::command::op::{MAX_ENLIST_PER_OP, MAX_LEASES_PER_COMMIT, MAX_LEASE_HOSTNAME};
use crate::command::{op, RefusedLease, Reply, Response};
use crate::state::{serves, State};
use ingot_common::model::Rack;
use ingot_common::net::{Lease, LeaseState, Subnet, SubnetMode};
use ingot_common::{DomainError, PowerParams};
use std::sync::Arc;

/// The rack `name` if it is registered and not revoked: only such a rack's commits and enlistments count.
fn serving_rack<'a>(state: &'a State, name: &str) -> Result<&'a Rack, DomainError> {
    match state.data.racks.get(name) {
        Some(r) if !r.revoked => Ok(r),
        Some(_) => Err(DomainError::denied(format!(
            "rack '{name}' is revoked: its leases and enlistments are not recorded"
        ))),
        None => Err(DomainError::denied(format!(
            "rack '{name}' is not registered: its leases and enlistments are not recorded"
        ))),
    }
}

/// The subnet `l` names, if `rack` may commit `l` on it and `l`'s address is one it may hand out;
/// otherwise why not.
fn lease_subnet<'a>(state: &'a State, rack: &str, l: &Lease) -> Result<&'a Subnet, String> {
    if l.hostname.len() > MAX_LEASE_HOSTNAME {
        return Err(format!(
            "hostname of {} bytes, at most {MAX_LEASE_HOSTNAME}",
            l.hostname.len()
        ));
    }
    let cidr = l.subnet;
    let Some(s) = state.data.subnets.get(&cidr.to_string()) else {
        return Err(format!("subnet {cidr} does not exist"));
    };
    if !serves(s, rack) {
        return Err(format!(
            "rack {rack} does not serve subnet {cidr} (primary {}, secondary {})",
            s.primary.as_deref().unwrap_or("none"),
            s.secondary.as_deref().unwrap_or("none")
        ));
    }
    if s.mode != SubnetMode::Managed {
        return Err(format!(
            "subnet {cidr} is in {} mode: Ingot hands out no addresses on it",
            s.mode
        ));
    }
    let ip = l.ip;
    if !cidr.contains(ip) {
        return Err(format!("{ip} is not in subnet {cidr}"));
    }
    if ip == cidr.network || ip == cidr.broadcast() {
        return Err(format!(
            "{ip} is the network or broadcast address of {cidr}"
        ));
    }
    if s.gateway == Some(ip) {
        return Err(format!("{ip} is the gateway of {cidr}"));
    }
    if let Some(r) = s.reserved.iter().find(|r| r.contains(ip)) {
        return Err(format!("{ip} is reserved ({r}) on {cidr}"));
    }
    if l.expires_ms < l.start_ms {
        return Err(format!(
            "the lease of {ip} expires ({}) before it starts ({})",
            l.expires_ms, l.start_ms
        ));
    }
    Ok(s)
}

/// What committing one lease does.
enum Verdict {
    /// Refused, with why.
    Refused(String),
    /// Nothing to change: the same lease is recorded, or a newer one of the same MAC and address.
    Unchanged,
    /// Record it (and release the MAC's other bound address on the subnet).
    Record,
}

/// Decides what committing `l` (already stamped with the committing rack) does.
fn verdict(state: &State, rack: &str, l: &Lease) -> Verdict {
    if let Err(why) = lease_subnet(state, rack, l) {
        return Verdict::Refused(why);
    }
    if let Some(old) = state.data.leases.get(&l.ip) {
        if old.mac != l.mac {
            if l.state == LeaseState::Released {
                // The address's record is another MAC's now: this MAC has nothing there to give back.
                return Verdict::Unchanged;
            }
            if old.state != LeaseState::Released && old.expires_ms > l.start_ms {
                return Verdict::Refused(format!(
                    "held by {} ({}) until {} ms since the epoch, {} s after this lease's start",
                    old.mac,
                    old.state.as_str(),
                    old.expires_ms,
                    (old.expires_ms - l.start_ms).div_ceil(1000)
                ));
            }
        } else if old == l || old.start_ms > l.start_ms {
            return Verdict::Unchanged;
        }
    }
    if l.state == LeaseState::Bound {
        let newer = state.leases_of_mac(&l.mac).find(|o| {
            o.ip != l.ip
                && o.subnet == l.subnet
                && o.state == LeaseState::Bound
                && o.start_ms >= l.start_ms
        });
        if let Some(o) = newer {
            // (An equal start is a tie the recorded one wins, so a batch committed twice ends the same.)
            return Verdict::Refused(format!(
                "superseded: {} holds {} on {} since as late ({} ms since the epoch)",
                l.mac, o.ip, l.subnet, o.start_ms
            ));
        }
    }
    Verdict::Record
}

/// Records a rack's batch of leases; answers the refused ones with why.
pub(super) fn commit(ctx: &ApplyCtx, state: &mut State, op: &op::CommitLeases) -> Response {
    if op.leases.len() > MAX_LEASES_PER_COMMIT {
        return Err(DomainError::invalid(
            "leases",
            format!(
                "{} leases in one commit, at most {MAX_LEASES_PER_COMMIT}",
                op.leases.len()
            ),
        ));
    }
    serving_rack(state, &op.rack)?;
    let by: Arc<str> = Arc::from(op.rack.as_str());
    let mut refused = Vec::new();
    // Oldest first (stable): a MAC's records are ordered by `start_ms`, whatever order the batch has.
    let mut leases: Vec<&Lease> = op.leases.iter().collect();
    leases.sort_by_key(|l| l.start_ms);
    for l in leases {
        let l = Lease {
            rack: op.rack.clone(),
            ..l.clone()
        };
        match verdict(state, &op.rack, &l) {
            Verdict::Refused(reason) => refused.push(RefusedLease { ip: l.ip, reason }),
            Verdict::Unchanged => {}
            Verdict::Record => {
                if l.state == LeaseState::Bound {
                    // A MAC keeps one address per subnet: its other bound one is given back.
                    let others: Vec<Lease> = state
                        .leases_of_mac(&l.mac)
                        .filter(|o| {
                            o.ip != l.ip && o.subnet == l.subnet && o.state == LeaseState::Bound
                        })
                        .cloned()
                        .collect();
                    for o in others {
                        // Given back when the new one started: an older copy of the lease it
                        // replaces, arriving late, is then older than this record too.
                        let at = l.start_ms.max(o.start_ms);
                        let released = Lease {
                            state: LeaseState::Released,
                            start_ms: at,
                            expires_ms: at,
                            ..o
                        };
                        state.put_lease(released, ctx.rev, None);
                    }
                    first_address_event(ctx, state, &l);
                }
                state.put_lease(l, ctx.rev, Some(by.clone()));
            }
        }
    }
    Ok(Reply::LeasesCommitted(refused))
}

/// One event when a machine's MAC is bound an address on a subnet for the first time (no record of the
/// MAC on that subnet yet: records are kept as sticky addresses, so renewals and moves add none): the
/// machine's history shows where it booted, and a boot storm adds at most one event per machine and
/// subnet. Call before `l` is stored.
fn first_address_event(ctx: &ApplyCtx, state: &mut State, l: &Lease) {
    if state.leases_of_mac(&l.mac).any(|o| o.subnet == l.subnet) {
        return;
    }
    let Some(m) = state.machine_by_mac(&l.mac).cloned() else {
        return;
    };
    EventBuilder::new("lease")
        .machine(&m)
        .message(format!(
            "{} bound to {} on {} by rack {}",
            l.ip, l.mac, l.subnet, l.rack
        ))
        .record(ctx, state);
}

/// Enlists unknown PXE-booted MACs as New machines in the rack's zone, one event each. A MAC that is
/// already a machine's is skipped (once, however many DISCOVERs), and so is one whose subnet the rack
/// does not serve (or serves in mode off) or whose picked system id or hostname is taken meanwhile (the
/// rack asks again later).
pub(super) fn enlist(ctx: &ApplyCtx, state: &mut State, op: &op::EnlistMachines) -> Response {
    if op.machines.len() > MAX_ENLIST_PER_OP {
        return Err(DomainError::invalid(
            "machines",
            format!(
                "{} MACs in one enlistment, at most {MAX_ENLIST_PER_OP}",
                op.machines.len()
            ),
        ));
    }
    let zone = serving_rack(state, &op.rack)?.zone.clone();
    for e in &op.machines {
        if state.by_mac.contains_key(&e.mac) {
            continue;
        }
        let served = state
            .data
            .subnets
            .get(&e.subnet.to_string())
            .is_some_and(|s| serves(s, &op.rack) && s.mode != SubnetMode::Off);
        if !served {
            continue;
        }
        let create = op::CreateMachine {
            system_id: e.system_id.clone(),
            hostname: format!("node-{}", e.system_id),
            arch: format!("{}/generic", e.arch.machine_arch()),
            zone: zone.clone(),
            macs: vec![e.mac],
            power: PowerParams {
                driver: "manual".into(),
                params: Default::default(),
            },
            description: String::new(),
            pool: None,
        };
        let message = format!(
            "enlisted by PXE boot: {} on {} via rack {} (arch {})",
            e.mac,
            e.subnet,
            op.rack,
            e.arch.as_str()
        );
        // A refusal (id or hostname taken, zone gone) changes nothing; the rack asks again.
        let _ = insert_new(ctx, state, &create, message);
    }
    Ok(Reply::Done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply;
    use crate::apply::test_support::{cmd, init, internal};
    use crate::command::{Command, Internal, Op};
    use ingot_common::net::{Cidr, ClientArch, Ipv4Range};
    use ingot_common::{ErrorCode, Mac, MachineStatus};
    use std::net::Ipv4Addr;

    const NET: &str = "10.20.0.0/24";

    fn mac(n: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0, 0, n])
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 20, 0, last)
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().expect("cidr")
    }

    /// A subnet served by `primary` (and `secondary`), managed, with .2-.9 reserved and gateway .1.
    fn subnet(net: &str, primary: &str, secondary: Option<&str>) -> Subnet {
        Subnet {
            cidr: cidr(net),
            gateway: Some(cidr(net).network.to_bits().wrapping_add(1).into()),
            dns: vec![],
            domain: String::new(),
            dynamic: vec![],
            reserved: vec![Ipv4Range {
                start: (cidr(net).network.to_bits() + 2).into(),
                end: (cidr(net).network.to_bits() + 9).into(),
            }],
            vlan: 0,
            mode: SubnetMode::Managed,
            primary: Some(primary.into()),
            secondary: secondary.map(str::to_string),
            lease_time_s: 3600,
            pxe_lease_time_s: 30,
        }
    }

    fn rack(name: &str, zone: &str) -> Rack {
        Rack {
            name: name.into(),
            zone: zone.into(),
            registered_ms: 1,
            revoked: false,
            session: None,
        }
    }

    /// A bootstrapped cluster (principals required) with racks r1, r2 (zone default) and r3 (zone z3),
    /// and subnet 10.20.0.0/24 served by r1 with r2 as secondary.
    fn cluster() -> State {
        let mut s = State::default();
        apply(&mut s, &init(), 1).expect("bootstrap");
        let z3 = Op::CreateZone(op::CreateZone {
            name: "z3".into(),
            description: String::new(),
        });
        apply(
            &mut s,
            &crate::apply::test_support::by_token(2, "admin-init", "admin", z3),
            2,
        )
        .expect("zone");
        for (r, z) in [("r1", "default"), ("r2", "default"), ("r3", "z3")] {
            s.data.racks.insert(r.into(), rack(r, z));
        }
        s.data
            .subnets
            .insert(NET.into(), subnet(NET, "r1", Some("r2")));
        s
    }

    fn lease(last: u8, m: u8, state: LeaseState, start_ms: u64) -> Lease {
        Lease {
            ip: ip(last),
            subnet: cidr(NET),
            mac: mac(m),
            state,
            start_ms,
            expires_ms: start_ms + 3_600_000,
            hostname: "h".into(),
            rack: "whatever the rack says".into(),
        }
    }

    fn by_rack(rack: &str, ts: u64, op: Op) -> Command {
        internal(ts, Internal::Rack, &format!("rack:{rack}"), op)
    }

    /// Commits `leases` from `rack` at revision `rev`; answers the refused (ip, reason) list.
    fn commit(s: &mut State, rack: &str, rev: u64, leases: Vec<Lease>) -> Vec<RefusedLease> {
        let op = Op::CommitLeases(op::CommitLeases {
            rack: rack.into(),
            batch: rev,
            leases,
        });
        match apply(s, &by_rack(rack, 10, op), rev) {
            Ok(Reply::LeasesCommitted(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_held_address_is_refused_to_another_mac_until_it_expires() {
        let mut s = cluster();
        assert!(commit(
            &mut s,
            "r1",
            10,
            vec![lease(100, 1, LeaseState::Bound, 1_000)]
        )
        .is_empty());
        let l = s.data.leases.get(&ip(100)).expect("recorded");
        assert_eq!(
            (l.mac, l.rack.as_str()),
            (mac(1), "r1"),
            "stamped with the committing rack"
        );
        // The secondary hands the same address to another MAC while the first holds it: refused.
        let r = commit(
            &mut s,
            "r2",
            11,
            vec![lease(100, 2, LeaseState::Bound, 2_000)],
        );
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(
            r[0].reason
                .starts_with("held by 52:54:00:00:00:01 (bound) until"),
            "{r:?}"
        );
        assert_eq!(s.data.leases[&ip(100)].mac, mac(1));
        // After it expired, the address may go to another MAC.
        let late = 1_000 + 3_600_000;
        assert!(commit(
            &mut s,
            "r2",
            12,
            vec![lease(100, 2, LeaseState::Bound, late)]
        )
        .is_empty());
        assert_eq!(s.data.leases[&ip(100)].mac, mac(2));
        assert!(
            s.leases_of_mac(&mac(1)).next().is_none(),
            "the index follows"
        );
        // A released address is free at once.
        commit(
            &mut s,
            "r2",
            13,
            vec![lease(100, 2, LeaseState::Released, late + 1)],
        );
        assert!(commit(
            &mut s,
            "r1",
            14,
            vec![lease(100, 3, LeaseState::Bound, late + 2)]
        )
        .is_empty());
        // No event per lease (none of these MACs is a machine's).
        assert!(s.data.events.iter().all(|e| e.kind != "lease"));
    }

    #[test]
    fn a_machines_first_address_on_a_subnet_is_one_event() {
        let mut s = cluster();
        let m1 = crate::apply::test_support::create_m1(PowerParams::default());
        apply(
            &mut s,
            &crate::apply::test_support::by_token(3, "admin-init", "admin", m1),
            3,
        )
        .expect("m1");
        let leases = |s: &State| s.data.events.iter().filter(|e| e.kind == "lease").count();
        commit(
            &mut s,
            "r1",
            10,
            vec![lease(100, 1, LeaseState::Bound, 1_000)],
        );
        assert_eq!(leases(&s), 1);
        let e = s.data.events.back().expect("event");
        assert_eq!(e.system_id, "m1");
        assert_eq!(
            e.message,
            "10.20.0.100 bound to 52:54:00:00:00:01 on 10.20.0.0/24 by rack r1"
        );
        // Renewals, moves and a storm of DISCOVERs add none.
        for (rev, last, start) in [(11, 100, 2_000), (12, 101, 3_000), (13, 100, 4_000)] {
            commit(
                &mut s,
                "r2",
                rev,
                vec![lease(last, 1, LeaseState::Bound, start)],
            );
        }
        assert_eq!(leases(&s), 1);
    }

    #[test]
    fn a_declined_address_is_held_until_it_expires() {
        let mut s = cluster();
        commit(
            &mut s,
            "r1",
            10,
            vec![lease(100, 1, LeaseState::Declined, 1_000)],
        );
        let r = commit(
            &mut s,
            "r1",
            11,
            vec![lease(100, 2, LeaseState::Bound, 5_000)],
        );
        assert!(r.len() == 1 && r[0].reason.contains("(declined)"), "{r:?}");
        assert!(commit(
            &mut s,
            "r1",
            12,
            vec![lease(100, 2, LeaseState::Bound, 3_601_000)]
        )
        .is_empty());
    }

    #[test]
    fn the_same_lease_committed_twice_changes_nothing_the_second_time() {
        let mut s = cluster();
        let batch = vec![
            lease(100, 1, LeaseState::Bound, 1_000),
            lease(101, 2, LeaseState::Bound, 1_000),
        ];
        assert!(commit(&mut s, "r1", 10, batch.clone()).is_empty());
        // The MAC renews later, then the old batch arrives again (a re-sent batch, a journal replay).
        commit(
            &mut s,
            "r1",
            11,
            vec![lease(100, 1, LeaseState::Bound, 9_000)],
        );
        let leases = s.data.leases.clone();
        let changes = s.boot.changes.len();
        assert!(commit(&mut s, "r1", 12, batch.clone()).is_empty());
        assert!(commit(&mut s, "r1", 13, batch).is_empty());
        assert_eq!(s.data.leases, leases, "nothing changed");
        assert_eq!(s.boot.changes.len(), changes, "no change recorded");
        assert_eq!(
            s.data.leases[&ip(100)].start_ms,
            9_000,
            "the newer lease stays"
        );
    }

    #[test]
    fn a_rack_not_serving_the_subnet_is_refused() {
        let mut s = cluster();
        let other = "10.30.0.0/24";
        s.data
            .subnets
            .insert(other.into(), subnet(other, "r3", None));
        let mut off = lease(100, 1, LeaseState::Bound, 1);
        off.subnet = cidr(other);
        off.ip = Ipv4Addr::new(10, 30, 0, 100);
        let mut unknown = off.clone();
        unknown.subnet = cidr("10.40.0.0/24");
        unknown.ip = Ipv4Addr::new(10, 40, 0, 100);
        let mut outside = lease(100, 1, LeaseState::Bound, 1);
        outside.ip = Ipv4Addr::new(10, 21, 0, 1);
        let mut long = lease(110, 4, LeaseState::Bound, 1);
        long.hostname = "h".repeat(MAX_LEASE_HOSTNAME + 1);
        let mut backwards = lease(111, 5, LeaseState::Bound, 10);
        backwards.expires_ms = 5;
        let r = commit(
            &mut s,
            "r1",
            10,
            vec![
                off,
                unknown,
                outside,
                lease(0, 1, LeaseState::Bound, 1),
                lease(255, 1, LeaseState::Bound, 1),
                lease(1, 1, LeaseState::Bound, 1),
                lease(5, 1, LeaseState::Bound, 1),
                long,
                backwards,
                lease(120, 6, LeaseState::Bound, 1),
            ],
        );
        let reasons: Vec<&str> = r.iter().map(|x| x.reason.as_str()).collect();
        assert_eq!(r.len(), 9, "{reasons:#?}");
        assert!(reasons[0].starts_with("rack r1 does not serve subnet 10.30.0.0/24 (primary r3"));
        assert!(reasons[1].contains("does not exist"));
        assert!(reasons[2].contains("is not in subnet"));
        assert!(
            reasons[3].contains("network or broadcast")
                && reasons[4].contains("network or broadcast")
        );
        assert!(reasons[5].contains("gateway"));
        assert!(reasons[6].contains("reserved"));
        assert!(reasons[7].contains("hostname"));
        assert!(reasons[8].contains("before it starts"));
        assert_eq!(s.data.leases.len(), 1, "only the good one is recorded");
        // The secondary may commit (it serves while the primary is away); another rack may not, nor may a
        // revoked one, nor on a subnet in proxy or off mode.
        assert!(commit(&mut s, "r2", 11, vec![lease(121, 7, LeaseState::Bound, 1)]).is_empty());
        assert_eq!(
            commit(&mut s, "r3", 12, vec![lease(122, 8, LeaseState::Bound, 1)]).len(),
            1
        );
        s.data.subnets.get_mut(NET).expect("net").mode = SubnetMode::Proxy;
        let r = commit(&mut s, "r1", 13, vec![lease(123, 9, LeaseState::Bound, 1)]);
        assert!(r[0].reason.contains("proxy mode"), "{r:?}");
        s.data.racks.get_mut("r1").expect("r1").revoked = true;
        let op = Op::CommitLeases(op::CommitLeases {
            rack: "r1".into(),
            batch: 1,
            leases: vec![],
        });
        let e = apply(&mut s, &by_rack("r1", 10, op), 14).unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied);
        // Only racks commit leases.
        let op = Op::CommitLeases(op::CommitLeases {
            rack: "r2".into(),
            batch: 1,
            leases: vec![],
        });
        let e = apply(
            &mut s,
            &crate::apply::test_support::by_token(10, "admin-init", "admin", op),
            15,
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied);
    }

    #[test]
    fn a_mac_keeps_one_address_per_subnet() {
        let mut s = cluster();
        let other = "10.30.0.0/24";
        s.data
            .subnets
            .insert(other.into(), subnet(other, "r1", None));
        let mut there = lease(100, 1, LeaseState::Bound, 1_000);
        there.subnet = cidr(other);
        there.ip = Ipv4Addr::new(10, 30, 0, 100);
        commit(
            &mut s,
            "r1",
            10,
            vec![lease(100, 1, LeaseState::Bound, 1_000), there],
        );
        // The MAC moves to .101 on the first subnet: .100 is given back, its lease elsewhere stays.
        assert!(commit(
            &mut s,
            "r2",
            11,
            vec![lease(101, 1, LeaseState::Bound, 2_000)]
        )
        .is_empty());
        let states: Vec<(Ipv4Addr, LeaseState)> =
            s.leases_of_mac(&mac(1)).map(|l| (l.ip, l.state)).collect();
        assert_eq!(
            states,
            vec![
                (ip(100), LeaseState::Released),
                (ip(101), LeaseState::Bound),
                (Ipv4Addr::new(10, 30, 0, 100), LeaseState::Bound)
            ]
        );
        // The derived release is sent to every rack (no `by`); the commit itself names its rack.
        let last: Vec<(Ipv4Addr, Option<&str>)> = s
            .boot
            .changes_after(10)
            .expect("kept")
            .map(|c| (c.ip, c.by.as_deref()))
            .collect();
        assert_eq!(last, vec![(ip(100), None), (ip(101), Some("r2"))]);
        // The older lease arriving late does not take the MAC back.
        let r = commit(
            &mut s,
            "r1",
            12,
            vec![lease(100, 1, LeaseState::Bound, 1_000)],
        );
        assert!(
            r.is_empty(),
            "same MAC and address, older: unchanged, not refused: {r:?}"
        );
        let r = commit(
            &mut s,
            "r1",
            13,
            vec![lease(102, 1, LeaseState::Bound, 1_500)],
        );
        assert!(r[0].reason.starts_with("superseded"), "{r:?}");
        assert_eq!(s.data.leases[&ip(101)].state, LeaseState::Bound);
        // Two addresses for one MAC at the same moment: the first wins, also when the batch comes again.
        let twice = vec![
            lease(110, 2, LeaseState::Bound, 5_000),
            lease(111, 2, LeaseState::Bound, 5_000),
        ];
        assert_eq!(commit(&mut s, "r1", 14, twice.clone()).len(), 1);
        let leases = s.data.leases.clone();
        assert_eq!(commit(&mut s, "r1", 15, twice).len(), 1);
        assert_eq!(s.data.leases, leases);
    }

    #[test]
    fn commits_and_enlistments_are_bounded() {
        let mut s = cluster();
        let leases = (0..=MAX_LEASES_PER_COMMIT)
            .map(|i| lease(100, (i % 200) as u8, LeaseState::Bound, 1))
            .collect();
        let op = Op::CommitLeases(op::CommitLeases {
            rack: "r1".into(),
            batch: 1,
            leases,
        });
        let e = apply(&mut s, &by_rack("r1", 10, op), 10).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("leases"));
        let machines = (0..=MAX_ENLIST_PER_OP)
            .map(|i| enlistee(&format!("e{i}"), (i % 200) as u8))
            .collect();
        let op = Op::EnlistMachines(op::EnlistMachines {
            rack: "r1".into(),
            machines,
        });
        let e = apply(&mut s, &by_rack("r1", 10, op), 11).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("machines"));
        assert!(s.data.leases.is_empty() && s.data.machines.is_empty());
    }

    fn enlistee(system_id: &str, m: u8) -> op::EnlistMac {
        op::EnlistMac {
            system_id: system_id.into(),
            mac: mac(m),
            arch: ClientArch::UefiArm64,
            subnet: cidr(NET),
        }
    }

    fn enlist(s: &mut State, rack: &str, rev: u64, machines: Vec<op::EnlistMac>) -> Response {
        let op = Op::EnlistMachines(op::EnlistMachines {
            rack: rack.into(),
            machines,
        });
        apply(s, &by_rack(rack, 10, op), rev)
    }

    #[test]
    fn a_mac_is_enlisted_once_in_the_racks_zone() {
        let mut s = cluster();
        let other = "10.30.0.0/24";
        s.data
            .subnets
            .insert(other.into(), subnet(other, "r3", None));
        enlist(
            &mut s,
            "r1",
            10,
            vec![enlistee("aaaaaa", 1), enlistee("bbbbbb", 1)],
        )
        .expect("enlist");
        let m = s.machine_by_mac(&mac(1)).expect("enlisted").clone();
        assert_eq!(
            (
                m.system_id.as_str(),
                m.hostname.as_str(),
                m.arch.as_str(),
                m.zone.as_str()
            ),
            ("aaaaaa", "node-aaaaaa", "arm64/generic", "default")
        );
        assert_eq!(
            (m.status, m.power.driver.as_str()),
            (MachineStatus::New, "manual")
        );
        let e = s.data.events.back().expect("event");
        assert_eq!(e.kind, "enlist");
        assert_eq!(
            e.message,
            "enlisted by PXE boot: 52:54:00:00:00:01 on 10.20.0.0/24 via rack r1 (arch uefi-arm64)"
        );
        assert_eq!(e.actor, "rack:r1");
        // However many DISCOVERs: asked again (by either rack), nothing more.
        let events = s.data.events.len();
        enlist(&mut s, "r2", 11, vec![enlistee("cccccc", 1)]).expect("again");
        assert_eq!((s.data.machines.len(), s.data.events.len()), (1, events));
        // A rack enlists in its own zone, only on a subnet it serves.
        let mut there = enlistee("dddddd", 2);
        there.subnet = cidr(other);
        enlist(&mut s, "r3", 12, vec![there.clone(), enlistee("eeeeee", 3)]).expect("r3");
        assert_eq!(s.machine("dddddd").map(|m| m.zone.as_str()), Some("z3"));
        assert!(s.machine("eeeeee").is_none(), "r3 does not serve {NET}");
        // A taken system id skips that MAC; the others of the batch are enlisted.
        enlist(
            &mut s,
            "r1",
            13,
            vec![enlistee("aaaaaa", 4), enlistee("ffffff", 5)],
        )
        .expect("taken");
        assert!(s.machine_by_mac(&mac(4)).is_none() && s.machine_by_mac(&mac(5)).is_some());
        // Mode off: no enlistment; a revoked rack: refused.
        s.data.subnets.get_mut(NET).expect("net").mode = SubnetMode::Off;
        enlist(&mut s, "r1", 14, vec![enlistee("gggggg", 6)]).expect("off");
        assert!(s.machine("gggggg").is_none());
        s.data.racks.get_mut("r1").expect("r1").revoked = true;
        let e = enlist(&mut s, "r1", 15, vec![enlistee("hhhhhh", 7)]).unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied);
        // Only racks enlist this way.
        let op = Op::EnlistMachines(op::EnlistMachines {
            rack: "r2".into(),
            machines: vec![enlistee("iiiiii", 8)],
        });
        let e = apply(&mut s, &cmd(20, op), 16).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthenticated, "{e:?}");
    }
}
