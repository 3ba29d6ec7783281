//! Property tests of the apply step: random actions, outcomes and allocations from several users on a
//! small fleet; after every command the invariants hold and the indexes agree with the data. The fleet, the
//! step generator and [`play`] are shared with other modules' property tests (the encoded-list cache's).

use super::apply;
use crate::command::{op, ActionArgs, BootTokens, Command, Op};
use crate::state::State;
use ingot_common::constraints::Constraints;
use ingot_common::lifecycle::{self, Action, Outcome};
use ingot_common::model::{EraseMode, Inventory, Role};
use ingot_common::MachineStatus;
use proptest::prelude::*;

fn cmd(actor: &str, ts: u64, op: Op) -> Command {
    Command {
        request_id: String::new(),
        ts_ms: ts,
        actor: actor.into(),
        op,
        principal: None,
    }
}

/// A bootstrapped state with users u1, u2 and `n` New machines.
pub(crate) fn fleet(n: usize) -> State {
    let mut s = State::default();
    let boot = cmd("admin", 1, crate::apply::test_support::bootstrap());
    apply(&mut s, &boot, 1).expect("bootstrap");
    for u in ["u1", "u2"] {
        apply(
            &mut s,
            &cmd(
                "admin",
                1,
                Op::CreateUser(op::CreateUser {
                    name: u.into(),
                    role: Role::User,
                }),
            ),
            2,
        )
        .expect("user");
    }
    // The rack that drives the rack-driven machines, registered so its results are accepted; it and a
    // second rack serve a small boot network (so random lease commits collide).
    for r in [RACK, RACK2] {
        s.data.racks.insert(
            r.into(),
            ingot_common::model::Rack {
                name: r.into(),
                zone: "default".into(),
                registered_ms: 1,
                revoked: false,
                session: None,
            },
        );
    }
    s.data.subnets.insert(
        NET.into(),
        ingot_common::net::Subnet {
            cidr: NET.parse().expect("cidr"),
            gateway: Some([10, 20, 0, 1].into()),
            dns: vec![],
            domain: String::new(),
            dynamic: vec!["10.20.0.4-10.20.0.14".parse().expect("range")],
            reserved: vec!["10.20.0.2-10.20.0.3".parse().expect("range")],
            vlan: 0,
            mode: Default::default(),
            primary: Some(RACK.into()),
            secondary: Some(RACK2.into()),
            lease_time_s: 3,
            pxe_lease_time_s: 3,
        },
    );
    for i in 0..n {
        let op = Op::CreateMachine(op::CreateMachine {
            system_id: format!("m{i:04}"),
            hostname: format!("h{i}"),
            arch: "amd64/generic".into(),
            zone: "default".into(),
            macs: vec![format!("52:54:00:00:00:{i:02x}").parse().expect("mac")],
            power: Default::default(),
            description: String::new(),
            pool: None,
        });
        apply(&mut s, &cmd("admin", 1, op), 3 + i as u64).expect("create");
        // Every other machine is rack-driven: its lifecycle queues power commands whose results (the
        // `Power` step) can change it twice in one command (confirm the power state, complete the status).
        if i % 2 == 1 {
            let mut m = s.machine(&format!("m{i:04}")).cloned().expect("created");
            m.power.driver = "webhook".into();
            m.rack = Some(RACK.into());
            m.revision = 500 + i as u64; // a later change than the creation, as in a region
            s.put_machine(m);
        }
    }
    s
}

/// One random command of the property tests.
#[derive(Debug, Clone)]
pub(crate) enum Step {
    Act(usize, usize, usize),
    /// User u takes the k-th action the lifecycle allows machine m now (so runs get past New).
    Walk(usize, usize, usize),
    Outcome(usize, usize),
    Inventory(usize),
    Alloc(usize, usize, u32),
    /// The rack's result for the k-th pending power command: (k, success, power state on/off).
    Power(usize, bool, bool),
    /// Rack r (rk1, rk2, or an unknown one) commits leases: (MAC m, address .a of [`NET`], state s,
    /// start t seconds) each.
    Leases(usize, Vec<(u8, u8, usize, u64)>),
}

/// The rack that drives the fleet's rack-driven machines.
const RACK: &str = "rk1";
/// The secondary rack of the fleet's boot network.
const RACK2: &str = "rk2";
/// The fleet's boot network (16 addresses: collisions are frequent).
const NET: &str = "10.20.0.0/28";

/// Generates [`Step`]s.
pub(crate) fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => (0..3usize, 0..8usize, 0..Action::ALL.len()).prop_map(|(u, m, a)| Step::Act(u, m, a)),
        3 => (0..3usize, 0..8usize, 0..4usize).prop_map(|(u, m, k)| Step::Walk(u, m, k)),
        2 => (0..8usize, 0..5usize).prop_map(|(m, o)| Step::Outcome(m, o.saturating_sub(2))),
        1 => (0..8usize).prop_map(Step::Inventory),
        1 => (0..3usize, 0..4usize, 1..3u32).prop_map(|(u, r, c)| Step::Alloc(u, r, c)),
        2 => (0..4usize, proptest::bool::weighted(0.8), any::<bool>())
            .prop_map(|(k, ok, on)| Step::Power(k, ok, on)),
        2 => (0..3usize, prop::collection::vec((0..5u8, 0..17u8, 0..3usize, 0..8u64), 1..5))
            .prop_map(|(r, ls)| Step::Leases(r, ls)),
    ]
}

fn check(s: &State) {
    let mut owners: std::collections::HashMap<String, usize> = Default::default();
    for m in s.data.machines.values() {
        if lifecycle::owned(m.status) {
            assert!(
                m.owner.is_some(),
                "{} {:?} without owner",
                m.system_id,
                m.status
            );
        }
        if m.status == MachineStatus::Ready {
            assert!(m.owner.is_none(), "{} Ready with owner", m.system_id);
        }
        assert_eq!(lifecycle::in_progress(m.status), m.deadline_ms.is_some());
        assert!(!m.locked || m.status == MachineStatus::Deployed);
        if let Some(o) = &m.owner {
            *owners.entry(o.clone()).or_default() += 1;
        }
        let in_ready = s
            .ready
            .contains(&(ingot_common::constraints::cost(m), m.system_id.clone()));
        assert_eq!(in_ready, m.status == MachineStatus::Ready);
    }
    for (o, n) in owners {
        assert_eq!(
            s.by_owner.get(&o).map(|x| x.len()),
            Some(n),
            "by_owner of {o}"
        );
    }
    assert_eq!(
        s.ready.len(),
        s.by_status
            .get(&MachineStatus::Ready)
            .map(|x| x.len())
            .unwrap_or(0)
    );
    check_leases(s);
}

/// Leases: each recorded by a rack serving its subnet, on a host address outside the reserved ranges;
/// at most one bound address per MAC and subnet; the MAC index agrees with the data.
fn check_leases(s: &State) {
    use ingot_common::net::LeaseState;
    let mut bound: std::collections::HashSet<(ingot_common::Mac, String)> = Default::default();
    for l in s.data.leases.values() {
        let n = s.data.subnets.get(&l.subnet.to_string()).expect("subnet");
        assert!(crate::state::serves(n, &l.rack), "{l:?}");
        assert!(n.cidr.contains(l.ip) && l.ip != n.cidr.network && l.ip != n.cidr.broadcast());
        assert!(!n.reserved.iter().any(|r| r.contains(l.ip)) && n.gateway != Some(l.ip));
        if l.state == LeaseState::Bound {
            assert!(
                bound.insert((l.mac, l.subnet.to_string())),
                "two bound for {l:?}"
            );
        }
    }
    assert_eq!(
        crate::state::BootIndex::from_data(&s.data).by_mac,
        s.boot.by_mac
    );
}

/// Applies `steps` to `s` (revisions from 1001 on), calling `each` after every applied command.
pub(crate) fn play(
    s: &mut State,
    steps: &[Step],
    each: &mut dyn FnMut(&State) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    let users = ["admin", "u1", "u2"];
    let mut rev = 1000u64;
    for st in steps.iter().cloned() {
        rev += 1;
        let ids: Vec<String> = s.data.machines.keys().cloned().collect();
        if ids.is_empty() {
            break;
        }
        let st = match st {
            Step::Walk(u, m, k) => {
                let status = s.machine(&ids[m % ids.len()]).map(|x| x.status);
                let allowed: Vec<Action> = status
                    .map(lifecycle::allowed)
                    .unwrap_or_default()
                    .into_iter()
                    // Walks go forward: dead ends and no-ops are left to the random `Act` steps.
                    .filter(|a| {
                        !matches!(
                            a,
                            Action::Allocate
                                | Action::Retire
                                | Action::MarkBroken
                                | Action::Delete
                                | Action::Abort
                                | Action::SetZone
                                | Action::SetPool
                                | Action::Tag
                                | Action::Untag
                                | Action::Update
                        )
                    })
                    .collect();
                if allowed.is_empty() {
                    continue;
                }
                let a = allowed[k % allowed.len()];
                let a = Action::ALL.iter().position(|x| *x == a).expect("in ALL");
                Step::Act(u, m, a)
            }
            other => other,
        };
        let op = match st {
            Step::Walk(..) => unreachable!("turned into Act above"),
            Step::Act(u, m, a) => {
                let action = Action::ALL[a];
                if action == Action::Allocate {
                    continue;
                }
                let c = cmd(
                    users[u],
                    rev,
                    Op::MachineAction(op::MachineAction {
                        system_id: ids[m % ids.len()].clone(),
                        action,
                        expected_revision: 0,
                        args: ActionArgs {
                            erase: if m % 2 == 0 {
                                EraseMode::Quick
                            } else {
                                EraseMode::None
                            },
                            zone: "default".into(),
                            pool: "default".into(),
                            boot: BootTokens {
                                boot_id: format!("b{rev}"),
                                token: format!("t{rev}"),
                            },
                            ..Default::default()
                        },
                    }),
                );
                let before = s.machine(&ids[m % ids.len()]).cloned();
                let r = apply(s, &c, rev);
                if let (Ok(_), Some(b)) = (&r, before) {
                    // Only admins or the owner may act.
                    prop_assert!(
                        users[u] == "admin" || b.owner.as_deref() == Some(users[u]),
                        "{} did {:?} on a machine of {:?}",
                        users[u],
                        action,
                        b.owner
                    );
                }
                each(s)?;
                continue;
            }
            Step::Outcome(m, o) => {
                let mm = s.machine(&ids[m % ids.len()]).cloned().expect("m");
                Op::Outcome(op::Outcome {
                    system_id: mm.system_id.clone(),
                    status: mm.status,
                    boot_id: mm.boot.as_ref().map(|b| b.boot_id.clone()),
                    outcome: [Outcome::Done, Outcome::Failed, Outcome::TimedOut][o],
                    reason: "r".into(),
                    next_boot: BootTokens {
                        boot_id: format!("b{rev}"),
                        token: format!("t{rev}"),
                    },
                })
            }
            Step::Inventory(m) => {
                let mm = s.machine(&ids[m % ids.len()]).cloned().expect("m");
                Op::ReportInventory(op::ReportInventory {
                    system_id: mm.system_id.clone(),
                    boot_id: mm
                        .boot
                        .as_ref()
                        .map(|b| b.boot_id.clone())
                        .unwrap_or_default(),
                    inventory: Inventory {
                        cpu_count: 4 + m as u32,
                        memory_mib: 8192,
                        ..Default::default()
                    },
                })
            }
            Step::Power(k, success, on) => {
                let Some(&id) = s.pending_power_commands.iter().nth(k) else {
                    continue;
                };
                Op::PowerResult(op::PowerResult {
                    id,
                    rack: RACK.into(),
                    success,
                    error_kind: if success { String::new() } else { "bmc".into() },
                    message: "m".into(),
                    power_state: if on { "on" } else { "off" }.into(),
                    next_boot: BootTokens {
                        boot_id: format!("b{rev}"),
                        token: format!("t{rev}"),
                    },
                })
            }
            Step::Leases(r, ls) => {
                use ingot_common::net::LeaseState;
                let rack = [RACK, RACK2, "rk9"][r];
                let leases = ls
                    .into_iter()
                    .map(|(m, a, st, t)| ingot_common::net::Lease {
                        ip: [10, 20, 0, a].into(),
                        subnet: NET.parse().expect("cidr"),
                        mac: ingot_common::Mac([0x52, 0x54, 0, 0, 1, m]),
                        state: [
                            LeaseState::Bound,
                            LeaseState::Released,
                            LeaseState::Declined,
                        ][st],
                        start_ms: t * 1000,
                        expires_ms: t * 1000 + 3000,
                        hostname: String::new(),
                        rack: rack.into(),
                    })
                    .collect();
                let c = Command {
                    principal: Some(crate::command::Principal::Internal(
                        crate::command::Internal::Rack,
                    )),
                    ..cmd(
                        &format!("rack:{rack}"),
                        rev,
                        Op::CommitLeases(op::CommitLeases {
                            rack: rack.into(),
                            batch: rev,
                            leases,
                        }),
                    )
                };
                let before = s.data.leases.clone();
                let first = apply(s, &c, rev);
                let after = s.data.leases.clone();
                // A batch recorded whole and committed again changes nothing. (With refusals it may: a
                // lease refused the first time is recorded when the batch itself freed its address, as
                // a new commit would be. A lease the batch itself took over may be refused the second
                // time: it is already recorded otherwise.)
                let again = apply(s, &c, rev);
                if matches!(&first, Ok(crate::command::Reply::LeasesCommitted(r)) if r.is_empty()) {
                    prop_assert_eq!(&after, &s.data.leases);
                }
                let _ = again;
                if rack == "rk9" {
                    prop_assert!(first.is_err() && again.is_err());
                    prop_assert_eq!(&before, &after);
                }
                each(s)?;
                continue;
            }
            Step::Alloc(_u, r, count) => {
                let cands: Vec<String> = s
                    .ready
                    .iter()
                    .map(|(_, id)| id.clone())
                    .take(count as usize)
                    .collect();
                Op::Allocate(op::Allocate {
                    request_id: format!("req{r}"),
                    consumer: String::new(),
                    constraints: Constraints::default(),
                    min_zones: 0,
                    candidates: cands,
                    count,
                })
            }
        };
        let c = cmd(users[rev as usize % 3], rev, op);
        let _ = apply(s, &c, rev);
        each(s)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_commands_keep_invariants(steps in prop::collection::vec(step(), 1..120)) {
        let mut s = fleet(8);
        play(&mut s, &steps, &mut |s| { check(s); Ok(()) })?;
        // The indexed list path agrees with a plain scan, page by page.
        for status in [None, Some(MachineStatus::Ready), Some(MachineStatus::Allocated), Some(MachineStatus::New)] {
            let q = crate::state::MachineQuery { zone: Some("default".into()), status, ..Default::default() };
            let want: Vec<&String> = s.data.machines.values().filter(|m| q.matches(m)).map(|m| &m.system_id).collect();
            let mut got: Vec<&String> = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let (page, more, total) = s.list_machines(&q, after.as_deref(), 3);
                prop_assert_eq!(total as usize, want.len());
                got.extend(page.iter().map(|m| &m.system_id));
                after = page.last().map(|m| m.system_id.clone());
                if !more { break; }
            }
            prop_assert_eq!(&got, &want);
        }
        // Indexes rebuilt from the data equal the incrementally maintained ones.
        let rebuilt = State::from_data(s.data.clone());
        prop_assert_eq!(&rebuilt.ready, &s.ready);
        prop_assert_eq!(&rebuilt.by_owner, &s.by_owner);
        prop_assert_eq!(&rebuilt.by_consumer, &s.by_consumer);
        prop_assert_eq!(&rebuilt.by_deadline, &s.by_deadline);
        prop_assert_eq!(&rebuilt.by_allocation, &s.by_allocation);
        prop_assert_eq!(&rebuilt.by_zone_status, &s.by_zone_status);
    }
}
