//! Property tests of the apply step: random actions, outcomes and allocations from several users on a
//! small fleet; after every command the invariants hold and the indexes agree with the data.

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

fn fleet(n: usize) -> State {
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
    }
    s
}

#[derive(Debug, Clone)]
enum Step {
    Act(usize, usize, usize),
    Outcome(usize, usize),
    Inventory(usize),
    Alloc(usize, usize, u32),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..3usize, 0..8usize, 0..Action::ALL.len()).prop_map(|(u, m, a)| Step::Act(u, m, a)),
        (0..8usize, 0..3usize).prop_map(|(m, o)| Step::Outcome(m, o)),
        (0..8usize).prop_map(Step::Inventory),
        (0..3usize, 0..4usize, 1..3u32).prop_map(|(u, r, c)| Step::Alloc(u, r, c)),
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
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_commands_keep_invariants(steps in prop::collection::vec(step(), 1..120)) {
        let mut s = fleet(8);
        let users = ["admin", "u1", "u2"];
        let mut rev = 1000u64;
        for st in steps {
            rev += 1;
            let ids: Vec<String> = s.data.machines.keys().cloned().collect();
            if ids.is_empty() { break; }
            let op = match st {
                Step::Act(u, m, a) => {
                    let action = Action::ALL[a];
                    if action == Action::Allocate { continue; }
                    let c = cmd(users[u], rev, Op::MachineAction(op::MachineAction {
                        system_id: ids[m % ids.len()].clone(),
                        action,
                        expected_revision: 0,
                        args: ActionArgs {
                            erase: if m % 2 == 0 { EraseMode::Quick } else { EraseMode::None },
                            zone: "default".into(),
                            pool: "default".into(),
                            boot: BootTokens { boot_id: format!("b{rev}"), token: format!("t{rev}") },
                            ..Default::default()
                        },
                    }));
                    let before = s.machine(&ids[m % ids.len()]).cloned();
                    let r = apply(&mut s, &c, rev);
                    if let (Ok(_), Some(b)) = (&r, before) {
                        // Only admins or the owner may act.
                        prop_assert!(users[u] == "admin" || b.owner.as_deref() == Some(users[u]),
                            "{} did {:?} on a machine of {:?}", users[u], action, b.owner);
                    }
                    check(&s);
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
                        next_boot: BootTokens { boot_id: format!("b{rev}"), token: format!("t{rev}") },
                    })
                }
                Step::Inventory(m) => {
                    let mm = s.machine(&ids[m % ids.len()]).cloned().expect("m");
                    Op::ReportInventory(op::ReportInventory {
                        system_id: mm.system_id.clone(),
                        boot_id: mm.boot.as_ref().map(|b| b.boot_id.clone()).unwrap_or_default(),
                        inventory: Inventory { cpu_count: 4 + m as u32, memory_mib: 8192, ..Default::default() },
                    })
                }
                Step::Alloc(_u, r, count) => {
                    let cands: Vec<String> = s.ready.iter().map(|(_, id)| id.clone()).take(count as usize).collect();
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
            let _ = apply(&mut s, &c, rev);
            check(&s);
        }
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
