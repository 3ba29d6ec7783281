//! Boot networks in the apply step: create, change and delete subnets, and what revoking a rack does to
//! the subnets it serves.
//!
//! Every write re-runs `Subnet::validate` (the field rules) and then the checks that need state: a new
//! subnet shares no address with another one (the error names the other subnet), and the racks it names
//! are registered and not revoked. The CIDR is a subnet's identity: an update changes everything else.
//! Deleting a subnet deletes its leases.
//!
//! Racks are never renamed or deleted, only revoked, and revoking never fails (it is what an admin does
//! to a compromised rack): a revoked rack loses its roles instead. A revoked primary's secondary becomes
//! the primary (a subnet keeps a primary as long as it names any rack: a secondary alone is not
//! allowed); a revoked secondary is dropped. Each changed subnet gets a warning event.

use super::ctx::ApplyCtx;
use super::events::EventBuilder;
use crate::command::{op, Reply, Response};
use crate::state::State;
use ingot_common::model::EventLevel;
use ingot_common::net::{Cidr, Subnet, MAX_SUBNETS};
use ingot_common::DomainError;

/// Creates a subnet.
pub(super) fn create(ctx: &ApplyCtx, state: &mut State, op: &op::CreateSubnet) -> Response {
    let s = &op.subnet;
    s.validate()?;
    let key = s.cidr.to_string();
    if state.data.subnets.contains_key(&key) {
        return Err(DomainError::exists(
            "cidr",
            format!(
                "cidr: subnet {key} already exists; change it with `ingot subnets update {key}`"
            ),
        ));
    }
    if state.data.subnets.len() >= MAX_SUBNETS {
        return Err(DomainError::exhausted(format!(
            "the cluster holds {MAX_SUBNETS} subnets, the most it keeps; delete unused ones first"
        )));
    }
    if let Some(other) = state
        .data
        .subnets
        .values()
        .find(|o| o.cidr.overlaps(&s.cidr))
    {
        return Err(DomainError::exists(
            "cidr",
            format!(
                "cidr: {key} overlaps subnet {}; subnets may not share an address (delete or shrink that one, or pick another network)",
                other.cidr
            ),
        ));
    }
    check_racks(state, s)?;
    state.data.subnets.insert(key, s.clone());
    EventBuilder::new("subnet.create")
        .message(describe(s))
        .record(ctx, state);
    Ok(Reply::Subnet(Box::new(s.clone())))
}

/// Replaces a subnet's settings (all but its CIDR).
pub(super) fn update(ctx: &ApplyCtx, state: &mut State, op: &op::UpdateSubnet) -> Response {
    let s = &op.subnet;
    let key = s.cidr.to_string();
    if !state.data.subnets.contains_key(&key) {
        return Err(not_found(&s.cidr));
    }
    s.validate()?;
    check_racks(state, s)?;
    state.data.subnets.insert(key, s.clone());
    EventBuilder::new("subnet.update")
        .message(describe(s))
        .record(ctx, state);
    Ok(Reply::Subnet(Box::new(s.clone())))
}

/// Deletes a subnet and every lease on it.
pub(super) fn delete(ctx: &ApplyCtx, state: &mut State, op: &op::DeleteSubnet) -> Response {
    let key = op.cidr.to_string();
    if state.data.subnets.remove(&key).is_none() {
        return Err(not_found(&op.cidr));
    }
    let leases = state.remove_leases_in(&op.cidr, ctx.rev);
    EventBuilder::new("subnet.delete")
        .message(format!("{key} ({leases} lease(s) deleted)"))
        .record(ctx, state);
    Ok(Reply::Done)
}

/// Takes revoked rack `rack` out of every subnet that names it: a primary's secondary becomes the
/// primary, a secondary is dropped (see the module doc). Called by the rack's revocation.
pub(super) fn forget_rack(ctx: &ApplyCtx, state: &mut State, rack: &str) {
    let named: Vec<String> = state
        .data
        .subnets
        .iter()
        .filter(|(_, s)| s.primary.as_deref() == Some(rack) || s.secondary.as_deref() == Some(rack))
        .map(|(k, _)| k.clone())
        .collect();
    for key in named {
        let Some(s) = state.data.subnets.get_mut(&key) else {
            continue;
        };
        if s.primary.as_deref() == Some(rack) {
            s.primary = s.secondary.take();
        }
        if s.secondary.as_deref() == Some(rack) {
            s.secondary = None;
        }
        let message = format!(
            "{key}: rack {rack} was revoked and serves it no more; primary now {}, secondary {}",
            s.primary.as_deref().unwrap_or("none"),
            s.secondary.as_deref().unwrap_or("none")
        );
        EventBuilder::new("subnet.update")
            .level(EventLevel::Warning)
            .message(message)
            .record(ctx, state);
    }
}

/// The error for a subnet that does not exist.
fn not_found(cidr: &Cidr) -> DomainError {
    DomainError::not_found(format!(
        "subnet {cidr} does not exist (`ingot subnets list` shows them)"
    ))
}

/// Fails unless the racks `s` names are registered and not revoked, naming the field.
fn check_racks(state: &State, s: &Subnet) -> Result<(), DomainError> {
    for (field, rack) in [("primary", &s.primary), ("secondary", &s.secondary)] {
        let Some(name) = rack else { continue };
        match state.data.racks.get(name) {
            None => {
                return Err(DomainError::not_found(format!(
                    "{field}: rack '{name}' is not registered (`ingot racks list` shows the racks; register it first with `ingot racks token create`)"
                ))
                .with_field(field))
            }
            Some(r) if r.revoked => {
                return Err(DomainError::precondition(format!(
                    "{field}: rack '{name}' is revoked and serves nothing; name another rack"
                ))
                .with_field(field))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// A subnet in an event's words.
fn describe(s: &Subnet) -> String {
    format!(
        "{} ({}, primary {}, secondary {})",
        s.cidr,
        s.mode,
        s.primary.as_deref().unwrap_or("none"),
        s.secondary.as_deref().unwrap_or("none")
    )
}

#[cfg(test)]
mod tests {
    use crate::apply::apply;
    use crate::apply::test_support::{bootstrap, by_token, cmd, init};
    use crate::command::{op, Op, Reply, Response};
    use crate::state::State;
    use ingot_common::model::Role;
    use ingot_common::net::{
        Lease, LeaseState, Subnet, SubnetMode, DEFAULT_LEASE_TIME_S, DEFAULT_PXE_LEASE_TIME_S,
        MAX_SUBNETS,
    };
    use ingot_common::{DomainError, ErrorCode};
    use std::net::Ipv4Addr;

    /// A state with racks `ra` and `rb` registered, and the revision of its last command.
    fn racks() -> (State, u64) {
        let mut s = State::default();
        let mut ops = vec![bootstrap()];
        for (i, name) in ["ra", "rb", "rc"].iter().enumerate() {
            ops.push(Op::CreateRackToken(op::CreateRackToken {
                token_hash: format!("t{i}"),
                expires_ms: 1_000_000,
            }));
            ops.push(Op::RegisterRack(op::RegisterRack {
                token_hash: format!("t{i}"),
                name: name.to_string(),
                zone: "default".into(),
            }));
        }
        let mut rev = 0;
        for op in ops {
            rev += 1;
            apply(&mut s, &cmd(rev, op), rev).expect("setup");
        }
        (s, rev)
    }

    /// Applies `op` as the admin at the next revision.
    fn run(s: &mut State, rev: &mut u64, op: Op) -> Response {
        *rev += 1;
        apply(s, &cmd(*rev, op), *rev)
    }

    fn subnet(cidr: &str) -> Subnet {
        Subnet {
            cidr: cidr.parse().expect("cidr"),
            gateway: None,
            dns: vec![],
            domain: String::new(),
            dynamic: vec![],
            reserved: vec![],
            vlan: 0,
            mode: SubnetMode::Managed,
            primary: Some("ra".into()),
            secondary: Some("rb".into()),
            lease_time_s: DEFAULT_LEASE_TIME_S,
            pxe_lease_time_s: DEFAULT_PXE_LEASE_TIME_S,
        }
    }

    fn create(s: Subnet) -> Op {
        Op::CreateSubnet(op::CreateSubnet { subnet: s })
    }

    fn update(s: Subnet) -> Op {
        Op::UpdateSubnet(op::UpdateSubnet { subnet: s })
    }

    fn delete(cidr: &str) -> Op {
        Op::DeleteSubnet(op::DeleteSubnet {
            cidr: cidr.parse().expect("cidr"),
        })
    }

    fn err(r: Response) -> DomainError {
        r.expect_err("refused")
    }

    fn kinds(s: &State) -> Vec<String> {
        s.data.events.iter().map(|e| e.kind.clone()).collect()
    }

    fn lease(ip: &str, cidr: &str) -> Lease {
        Lease {
            ip: ip.parse().expect("ip"),
            subnet: cidr.parse().expect("cidr"),
            mac: "52:54:00:00:00:01".parse().expect("mac"),
            state: LeaseState::Bound,
            start_ms: 1,
            expires_ms: 2,
            hostname: String::new(),
            rack: "ra".into(),
        }
    }

    #[test]
    fn create_update_delete_with_events() {
        let (mut s, mut rev) = racks();
        let mut lab = subnet("10.20.0.0/24");
        lab.gateway = Some(Ipv4Addr::new(10, 20, 0, 1));
        lab.dynamic = vec!["10.20.0.100-10.20.0.199".parse().expect("range")];
        let r = run(&mut s, &mut rev, create(lab.clone())).expect("create");
        assert!(matches!(r, Reply::Subnet(ref got) if **got == lab), "{r:?}");
        assert_eq!(s.data.subnets["10.20.0.0/24"], lab);

        lab.mode = SubnetMode::Proxy;
        lab.secondary = Some("rc".into());
        run(&mut s, &mut rev, update(lab.clone())).expect("update");
        assert_eq!(s.data.subnets["10.20.0.0/24"], lab);

        run(&mut s, &mut rev, delete("10.20.0.0/24")).expect("delete");
        assert!(s.data.subnets.is_empty());
        let k = kinds(&s);
        assert!(
            k.ends_with(&[
                "subnet.create".into(),
                "subnet.update".into(),
                "subnet.delete".into()
            ]),
            "{k:?}"
        );
        let last = s.data.events.back().expect("event");
        assert_eq!(last.actor, "admin");
        assert!(last.message.contains("10.20.0.0/24"), "{}", last.message);
    }

    #[test]
    fn duplicates_and_overlaps_are_refused_naming_the_other_subnet() {
        let (mut s, mut rev) = racks();
        run(&mut s, &mut rev, create(subnet("10.20.0.0/24"))).expect("create");
        let e = err(run(&mut s, &mut rev, create(subnet("10.20.0.0/24"))));
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::AlreadyExists, Some("cidr"))
        );
        for wider_or_inside in ["10.20.0.0/16", "10.20.0.128/25", "10.0.0.0/8"] {
            let e = err(run(&mut s, &mut rev, create(subnet(wider_or_inside))));
            assert_eq!(e.field.as_deref(), Some("cidr"), "{e:?}");
            assert!(
                e.message.contains("overlaps subnet 10.20.0.0/24"),
                "{}",
                e.message
            );
        }
        run(&mut s, &mut rev, create(subnet("10.20.1.0/24"))).expect("a neighbour");
        assert_eq!(s.data.subnets.len(), 2);
    }

    #[test]
    fn racks_must_be_registered_and_not_revoked() {
        let (mut s, mut rev) = racks();
        let mut x = subnet("10.20.0.0/24");
        x.primary = Some("nope".into());
        let e = err(run(&mut s, &mut rev, create(x.clone())));
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::NotFound, Some("primary"))
        );
        assert!(
            e.message.starts_with("primary: rack 'nope'"),
            "{}",
            e.message
        );
        x.primary = Some("ra".into());
        x.secondary = Some("nope".into());
        let e = err(run(&mut s, &mut rev, create(x.clone())));
        assert_eq!(e.field.as_deref(), Some("secondary"));

        run(
            &mut s,
            &mut rev,
            Op::RevokeRack(op::RevokeRack { name: "rc".into() }),
        )
        .expect("revoke");
        x.secondary = Some("rc".into());
        let e = err(run(&mut s, &mut rev, create(x.clone())));
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::FailedPrecondition, Some("secondary"))
        );
        // The same rules hold for an update.
        run(&mut s, &mut rev, create(subnet("10.20.0.0/24"))).expect("create");
        let e = err(run(&mut s, &mut rev, update(x)));
        assert_eq!(e.field.as_deref(), Some("secondary"));
        assert!(s
            .data
            .subnets
            .values()
            .all(|n| n.secondary.as_deref() == Some("rb")));
    }

    #[test]
    fn missing_subnets_cannot_be_updated_or_deleted() {
        let (mut s, mut rev) = racks();
        let e = err(run(&mut s, &mut rev, update(subnet("10.20.0.0/24"))));
        assert_eq!(e.code, ErrorCode::NotFound);
        assert!(e.message.contains("10.20.0.0/24"), "{}", e.message);
        let e = err(run(&mut s, &mut rev, delete("10.20.0.0/24")));
        assert_eq!(e.code, ErrorCode::NotFound);
        assert!(s.data.subnets.is_empty());
    }

    #[test]
    fn apply_validates_again_whatever_the_edge_checked() {
        let (mut s, mut rev) = racks();
        let mut bad = subnet("10.20.0.0/24");
        bad.gateway = Some(Ipv4Addr::new(10, 9, 0, 1));
        let e = err(run(&mut s, &mut rev, create(bad.clone())));
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::InvalidArgument, Some("gateway"))
        );
        run(&mut s, &mut rev, create(subnet("10.20.0.0/24"))).expect("create");
        let e = err(run(&mut s, &mut rev, update(bad)));
        assert_eq!(e.field.as_deref(), Some("gateway"));
        let mut host_bits = subnet("10.30.0.0/24");
        host_bits.cidr.network = Ipv4Addr::new(10, 30, 0, 7);
        let e = err(run(&mut s, &mut rev, create(host_bits)));
        assert_eq!(e.field.as_deref(), Some("cidr"));
        let mut huge_prefix = subnet("10.30.0.0/24");
        huge_prefix.cidr.prefix = 200;
        let e = err(run(&mut s, &mut rev, create(huge_prefix)));
        assert_eq!(e.field.as_deref(), Some("cidr"));
    }

    #[test]
    fn deleting_a_subnet_deletes_its_leases_only() {
        let (mut s, mut rev) = racks();
        run(&mut s, &mut rev, create(subnet("10.20.0.0/24"))).expect("a");
        run(&mut s, &mut rev, create(subnet("10.20.1.0/24"))).expect("b");
        for (ip, cidr) in [
            ("10.20.0.100", "10.20.0.0/24"),
            ("10.20.0.254", "10.20.0.0/24"),
            ("10.20.1.100", "10.20.1.0/24"),
        ] {
            let l = lease(ip, cidr);
            s.put_lease(l, 1, None);
        }
        run(&mut s, &mut rev, delete("10.20.0.0/24")).expect("delete");
        let left: Vec<String> = s.data.leases.keys().map(|ip| ip.to_string()).collect();
        assert_eq!(left, ["10.20.1.100"]);
        let last = s.data.events.back().expect("event");
        assert!(last.message.contains("2 lease(s)"), "{}", last.message);
    }

    #[test]
    fn revoking_a_rack_takes_it_out_of_its_subnets() {
        let (mut s, mut rev) = racks();
        run(&mut s, &mut rev, create(subnet("10.20.0.0/24"))).expect("a: ra, rb");
        let mut b = subnet("10.20.1.0/24");
        b.primary = Some("rb".into());
        b.secondary = Some("ra".into());
        run(&mut s, &mut rev, create(b)).expect("b: rb, ra");
        let mut c = subnet("10.20.2.0/24");
        c.primary = Some("rc".into());
        c.secondary = None;
        run(&mut s, &mut rev, create(c)).expect("c: rc");

        run(
            &mut s,
            &mut rev,
            Op::RevokeRack(op::RevokeRack { name: "ra".into() }),
        )
        .expect("revoke");
        let roles = |s: &State, k: &str| {
            let n = &s.data.subnets[k];
            (n.primary.clone(), n.secondary.clone())
        };
        assert_eq!(
            roles(&s, "10.20.0.0/24"),
            (Some("rb".into()), None),
            "secondary promoted"
        );
        assert_eq!(
            roles(&s, "10.20.1.0/24"),
            (Some("rb".into()), None),
            "secondary dropped"
        );
        assert_eq!(
            roles(&s, "10.20.2.0/24"),
            (Some("rc".into()), None),
            "untouched"
        );
        let warnings = s
            .data
            .events
            .iter()
            .filter(|e| e.kind == "subnet.update" && e.message.contains("rack ra was revoked"))
            .count();
        assert_eq!(warnings, 2);

        run(
            &mut s,
            &mut rev,
            Op::RevokeRack(op::RevokeRack { name: "rb".into() }),
        )
        .expect("revoke");
        assert_eq!(roles(&s, "10.20.0.0/24"), (None, None), "no rack left");
        // Every subnet stays valid: the stored ones pass their own rules.
        assert!(s.data.subnets.values().all(|n| n.validate().is_ok()));
    }

    #[test]
    fn only_admins_write_subnets() {
        let mut s = State::default();
        apply(&mut s, &init(), 1).expect("bootstrap");
        let admin = |ts, op| by_token(ts, "admin-init", "admin", op);
        let user = op::CreateUser {
            name: "alice".into(),
            role: Role::User,
        };
        apply(&mut s, &admin(2, Op::CreateUser(user)), 2).expect("user");
        let token = op::CreateToken {
            id: "alice-t".into(),
            token_hash: "ha".into(),
            user: "alice".into(),
            description: String::new(),
            expires_ms: None,
        };
        apply(&mut s, &admin(3, Op::CreateToken(token)), 3).expect("token");
        let mut x = subnet("10.20.0.0/24");
        x.primary = None;
        x.secondary = None;
        let alice = |ts, op| by_token(ts, "alice-t", "alice", op);
        for (i, op) in [create(x.clone()), update(x.clone()), delete("10.20.0.0/24")]
            .into_iter()
            .enumerate()
        {
            let ts = 10 + i as u64;
            let e = apply(&mut s, &alice(ts, op), ts).expect_err("a user may not");
            assert_eq!(e.code, ErrorCode::PermissionDenied, "{e:?}");
        }
        assert!(s.data.subnets.is_empty());
        apply(&mut s, &admin(20, create(x)), 20).expect("an admin may");
    }

    #[test]
    fn the_number_of_subnets_is_capped() {
        let (mut s, mut rev) = racks();
        for i in 0..MAX_SUBNETS {
            let mut x = subnet(&format!("10.{}.{}.0/24", i / 256, i % 256));
            x.primary = None;
            x.secondary = None;
            let k = x.cidr.to_string();
            s.data.subnets.insert(k, x);
        }
        let e = err(run(&mut s, &mut rev, create(subnet("11.0.0.0/24"))));
        assert_eq!(e.code, ErrorCode::ResourceExhausted, "{e:?}");
    }

    /// One random step of the property test.
    #[derive(Clone, Debug)]
    enum Step {
        Create(Subnet),
        Update(Subnet),
        Delete(String),
        Revoke(&'static str),
        Lease(String),
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        // Networks of 10.0.0.0/16 at three sizes, so that creates overlap often.
        let cidr =
            (prop_oneof![Just(22u8), Just(24u8), Just(26u8)], 0u32..16).prop_map(|(p, i)| {
                let size = 1u32 << (32 - u32::from(p));
                let net =
                    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + (i * size) % (1 << 16));
                format!("{net}/{p}")
            });
        let rack = prop_oneof![
            Just(None),
            Just(Some("ra")),
            Just(Some("rb")),
            Just(Some("rc")),
            Just(Some("rz"))
        ];
        let net = (cidr.clone(), rack.clone(), rack, any::<bool>()).prop_map(|(c, p, sec, gw)| {
            let mut s = subnet(&c);
            s.primary = p.map(String::from);
            s.secondary = sec.map(String::from);
            if gw {
                s.gateway = Some(Ipv4Addr::from(u32::from(s.cidr.network) + 1));
            }
            s
        });
        prop_oneof![
            4 => net.clone().prop_map(Step::Create),
            2 => net.prop_map(Step::Update),
            1 => cidr.clone().prop_map(Step::Delete),
            1 => prop_oneof![Just("ra"), Just("rb"), Just("rc")].prop_map(Step::Revoke),
            2 => (cidr, 0u32..64).prop_map(|(c, i)| {
                let c: ingot_common::net::Cidr = c.parse().expect("cidr");
                Step::Lease(Ipv4Addr::from(u32::from(c.network) + i).to_string())
            }),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Random creates, updates, deletes, rack revocations and leases (inserted the way a rack's commit
        /// would, only inside a subnet): afterwards no two subnets share an address, every stored subnet
        /// passes its own rules and names only registered, unrevoked racks, and every lease lies in a
        /// subnet. A refused command changes nothing.
        #[test]
        fn random_subnet_commands_keep_invariants(steps in proptest::collection::vec(step(), 1..60)) {
            let (mut s, mut rev) = racks();
            for st in steps {
                let before = (s.data.subnets.clone(), s.data.leases.len());
                let r = match st {
                    Step::Create(n) => run(&mut s, &mut rev, create(n)),
                    Step::Update(n) => run(&mut s, &mut rev, update(n)),
                    Step::Delete(c) => run(&mut s, &mut rev, delete(&c)),
                    Step::Revoke(r) => run(&mut s, &mut rev, Op::RevokeRack(op::RevokeRack { name: r.into() })),
                    Step::Lease(ip) => {
                        let ip: Ipv4Addr = ip.parse().expect("ip");
                        if let Some(n) = s.data.subnets.values().find(|n| n.cidr.contains(ip)) {
                            let l = lease(&ip.to_string(), &n.cidr.to_string());
                            s.put_lease(l, 1, None);
                        }
                        continue;
                    }
                };
                if r.is_err() {
                    proptest::prop_assert_eq!(&before.0, &s.data.subnets, "{:?}", r);
                    proptest::prop_assert_eq!(before.1, s.data.leases.len());
                }
                let all: Vec<&Subnet> = s.data.subnets.values().collect();
                for (i, a) in all.iter().enumerate() {
                    proptest::prop_assert!(a.validate().is_ok(), "{:?}", a);
                    proptest::prop_assert_eq!(&s.data.subnets[&a.cidr.to_string()], *a);
                    for b in &all[i + 1..] {
                        proptest::prop_assert!(!a.cidr.overlaps(&b.cidr), "{} and {}", a.cidr, b.cidr);
                    }
                    for r in [&a.primary, &a.secondary].into_iter().flatten() {
                        proptest::prop_assert!(s.data.racks.get(r).is_some_and(|r| !r.revoked), "{} names {}", a.cidr, r);
                    }
                }
                for l in s.data.leases.values() {
                    proptest::prop_assert!(all.iter().any(|n| n.cidr.contains(l.ip) && n.cidr == l.subnet), "{:?}", l);
                }
            }
        }
    }
}
