//! The machine lifecycle through the public API on 3 real regions: commissioning, allocation, deployment
//! and release (with erase) driven by a simulated in-band agent; illegal actions and locks; deadlines;
//! per-boot agent tokens; the event history; tags defined over the inventory; user roles; and `Watch`
//! resuming on another region after the one it was connected to is SIGKILLed.

use ingot_client::Clients;
use ingot_proto::v1::{
    get_machine_request, watch_response, AllocateRequest, CommissionRequest, Constraints,
    CreateMachineRequest, CreateTagRequest, CreateZoneRequest, DeleteTagRequest, DeployRequest,
    EraseMode, Event, EventLevel, GetMachineRequest, GetSettingsRequest, GetTagRequest,
    ListEventsRequest, ListMachinesRequest, Machine, MachineActionRequest, MachineFilter,
    MachineStatus as S, ReleaseRequest, ReportInventoryRequest, ReportProgressRequest, Role,
    TagMachineRequest, UpdateMachineRequest, UpdateSettingsRequest, UpdateTagRequest, WatchRequest,
    WhoAmIRequest,
};
use ingot_tests::{
    agent_result, all_events, boot_token, by_id, commission_to_ready, get, inventory, machine,
    ready_machine, small_inventory, user_clients, wait_status, TestCluster,
};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Code;

/// Asserts that `r` failed with `code` and a message containing every one of `parts`; returns the message.
fn expect_err<T: std::fmt::Debug>(
    r: Result<T, tonic::Status>,
    code: Code,
    parts: &[&str],
) -> String {
    let e = r.expect_err("the call should have failed");
    assert_eq!(e.code(), code, "unexpected status: {e:?}");
    for p in parts {
        assert!(
            e.message().contains(p),
            "error message lacks '{p}': {}",
            e.message()
        );
    }
    e.message().to_string()
}

async fn report_progress(
    c: &Clients,
    id: &str,
    token: &str,
    message: &str,
    percent: u32,
) -> Result<(), tonic::Status> {
    c.agent()
        .report_progress(ReportProgressRequest {
            system_id: id.into(),
            boot_token: token.into(),
            message: message.into(),
            percent,
        })
        .await
        .map(|_| ())
}

async fn allocate(
    c: &Clients,
    request_id: &str,
    consumer: &str,
    constraints: Constraints,
) -> Result<Vec<Machine>, tonic::Status> {
    c.machines()
        .allocate(AllocateRequest {
            request_id: request_id.into(),
            consumer: consumer.into(),
            constraints: Some(constraints),
            count: 1,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().machines)
}

fn only(id: &str) -> Constraints {
    Constraints {
        system_id: id.into(),
        ..Default::default()
    }
}

async fn deploy(c: &Clients, id: &str) -> Result<Machine, tonic::Status> {
    c.machines()
        .deploy(DeployRequest {
            machine: Some(by_id(id)),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

async fn release(c: &Clients, id: &str, erase: EraseMode) -> Result<Machine, tonic::Status> {
    c.machines()
        .release(ReleaseRequest {
            machine: Some(by_id(id)),
            erase: erase as i32,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

fn action(id: &str) -> MachineActionRequest {
    MachineActionRequest {
        machine: Some(by_id(id)),
        ..Default::default()
    }
}

async fn whoami(c: &Clients) -> String {
    c.users()
        .who_am_i(WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner()
        .name
}

/// Events of one machine, oldest first.
async fn history(c: &Clients, id: &str) -> Vec<Event> {
    let mut ev = all_events(
        c,
        ListEventsRequest {
            system_id: id.into(),
            ..Default::default()
        },
        1000,
        10,
    )
    .await
    .unwrap();
    ev.reverse();
    ev
}

fn transitions(ev: &[Event]) -> Vec<(S, S)> {
    ev.iter()
        .filter(|e| e.to_status != 0)
        .map(|e| (e.from_status(), e.to_status()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_lifecycle_with_deploy_progress_release_erase_and_events() {
    let tc = TestCluster::start("t15-lifecycle", 3, &[]).await.unwrap();
    let c = tc.clients();
    let admin = whoami(&c).await;

    // Enlisted by API: New. Deploying from New is illegal and the error says what is allowed.
    let m = c
        .machines()
        .create_machine(machine(15, 1))
        .await
        .unwrap()
        .into_inner();
    let id = m.system_id.clone();
    assert_eq!(m.status(), S::New);
    expect_err(
        deploy(&c, &id).await,
        Code::FailedPrecondition,
        &["status new", "commission"],
    );

    // Commission: a boot session with a token only the admin can read.
    let m = c
        .machines()
        .commission(CommissionRequest {
            machine: Some(by_id(&id)),
            comment: "first commissioning".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.status(), S::Commissioning);
    assert_eq!(m.boot_purpose, "commissioning");
    assert!(m.deadline.is_some(), "an in-progress status has a deadline");
    let t_comm = boot_token(&c, &id, "commissioning").await.unwrap();
    expect_err(
        report_progress(&c, &id, "boot_not-the-token", "x", 1).await,
        Code::Unauthenticated,
        &[],
    );
    report_progress(&c, &id, &t_comm, "lshw", 30).await.unwrap();
    let m = get(&c, &id).await.unwrap();
    assert_eq!(
        (m.progress_message.as_str(), m.progress_percent),
        ("lshw", 30)
    );
    let inv = inventory(24, 98_304, &[(960, false), (4000, true)], 2, 25_000);
    c.agent()
        .report_inventory(ReportInventoryRequest {
            system_id: id.clone(),
            boot_token: t_comm.clone(),
            inventory: Some(inv.clone()),
        })
        .await
        .unwrap();
    let r = agent_result(&c, &id, &t_comm, true, "").await.unwrap();
    assert_eq!(r.status(), S::Ready);
    let m = get(&c, &id).await.unwrap();
    assert_eq!(m.status(), S::Ready);
    assert_eq!(
        (m.cpu_count, m.memory_mib, m.storage_gib),
        (24, 98_304, 4960)
    );
    assert_eq!(m.inventory.as_ref().unwrap().disks.len(), 2);
    assert!(m.boot_purpose.is_empty());
    // The finished boot's token is dead.
    expect_err(
        report_progress(&c, &id, &t_comm, "late", 99).await,
        Code::Unauthenticated,
        &[],
    );
    expect_err(
        agent_result(&c, &id, &t_comm, true, "").await,
        Code::Unauthenticated,
        &[],
    );

    // Allocate: owner, consumer and provider id recorded.
    let got = allocate(
        &c,
        "lc-alloc-1",
        "cm-lifecycle",
        Constraints {
            min_cpu_count: 16,
            storage: "root:900(ssd)".into(),
            system_id: id.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(got.len(), 1);
    let a = &got[0];
    assert_eq!(a.system_id, id);
    assert_eq!(a.status(), S::Allocated);
    assert_eq!(a.owner, admin);
    assert_eq!(a.consumer, "cm-lifecycle");
    assert_eq!(a.provider_id, format!("ingot:///default/{id}"));
    assert_eq!(a.allocation_request_id, "lc-alloc-1");

    // Deploy: a new boot with a new token; progress is recorded; the agent's success makes it Deployed.
    let m = c
        .machines()
        .deploy(DeployRequest {
            machine: Some(by_id(&id)),
            osystem: "ubuntu".into(),
            distro_series: "jammy".into(),
            user_data: "#cloud-config\n".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.status(), S::Deploying);
    let t_dep = boot_token(&c, &id, "deploying").await.unwrap();
    assert_ne!(t_dep, t_comm);
    expect_err(
        report_progress(&c, &id, &t_comm, "old boot", 1).await,
        Code::Unauthenticated,
        &[],
    );
    for (msg, pct) in [("curtin: partitioning", 40), ("curtin: installing", 80)] {
        report_progress(&c, &id, &t_dep, msg, pct).await.unwrap();
        let m = get(&c, &id).await.unwrap();
        assert_eq!(
            (m.progress_message.as_str(), m.progress_percent),
            (msg, pct)
        );
        assert_eq!(m.status(), S::Deploying);
    }
    // Inventory is accepted only while commissioning.
    expect_err(
        c.agent()
            .report_inventory(ReportInventoryRequest {
                system_id: id.clone(),
                boot_token: t_dep.clone(),
                inventory: Some(inv.clone()),
            })
            .await,
        Code::FailedPrecondition,
        &["commissioning"],
    );
    let r = agent_result(&c, &id, &t_dep, true, "").await.unwrap();
    assert_eq!(r.status(), S::Deployed);
    let m = get(&c, &id).await.unwrap();
    assert_eq!(m.status(), S::Deployed);
    let d = m.deploy.clone().unwrap();
    assert_eq!(
        (d.osystem.as_str(), d.distro_series.as_str()),
        ("ubuntu", "jammy")
    );
    assert_eq!(m.owner, admin);

    // Release with a quick erase: Releasing (power step, done by the leader's worker) -> DiskErasing (a boot)
    // -> agent success -> Ready, owner cleared.
    let m = release(&c, &id, EraseMode::Quick).await.unwrap();
    assert_eq!(m.status(), S::Releasing);
    assert_eq!(m.erase(), EraseMode::Quick);
    assert_eq!(
        m.owner, admin,
        "the owner holds the machine until release completes"
    );
    let (_, took) = wait_status(&c, &id, S::DiskErasing, Duration::from_secs(5))
        .await
        .unwrap();
    eprintln!("releasing -> disk-erasing after {took:?}");
    let t_erase = boot_token(&c, &id, "erasing").await.unwrap();
    assert_ne!(t_erase, t_dep);
    expect_err(
        agent_result(&c, &id, &t_dep, true, "").await,
        Code::Unauthenticated,
        &[],
    );
    report_progress(&c, &id, &t_erase, "wiping sda", 50)
        .await
        .unwrap();
    let r = agent_result(&c, &id, &t_erase, true, "").await.unwrap();
    assert_eq!(r.status(), S::Ready);
    let m = get(&c, &id).await.unwrap();
    assert_eq!(m.status(), S::Ready);
    assert!(m.owner.is_empty() && m.consumer.is_empty() && m.provider_id.is_empty());
    assert_eq!(m.erase(), EraseMode::None);
    assert!(m.deploy.is_none());
    // Releasing again is an answer, not an error.
    let m = release(&c, &id, EraseMode::None).await.unwrap();
    assert_eq!(m.status(), S::Ready);
    // The consumer no longer finds it.
    expect_err(
        c.machines()
            .get_machine(GetMachineRequest {
                key: Some(get_machine_request::Key::Consumer("cm-lifecycle".into())),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        &[],
    );

    // Every transition wrote one event, in order.
    let ev = history(&c, &id).await;
    assert_eq!(
        transitions(&ev),
        vec![
            (S::Unspecified, S::New),
            (S::New, S::Commissioning),
            (S::Commissioning, S::Ready),
            (S::Ready, S::Allocated),
            (S::Allocated, S::Deploying),
            (S::Deploying, S::Deployed),
            (S::Deployed, S::Releasing),
            (S::Releasing, S::DiskErasing),
            (S::DiskErasing, S::Ready),
        ],
        "{ev:#?}"
    );
    let kinds: Vec<&str> = ev.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds.first(),
        Some(&"enlist"),
        "the first event enlists the machine"
    );
    assert_eq!(kinds.iter().filter(|k| **k == "agent.progress").count(), 4);
    assert_eq!(kinds.iter().filter(|k| **k == "agent.inventory").count(), 1);
    assert_eq!(kinds.iter().filter(|k| **k == "allocate").count(), 1);
    let alloc_ev = ev.iter().find(|e| e.kind == "allocate").unwrap();
    assert_eq!(alloc_ev.owner, admin);
    assert_eq!(alloc_ev.actor, admin);
    let commission_ev = ev.iter().find(|e| e.kind == "commission").unwrap();
    assert_eq!(commission_ev.message, "first commissioning");
    assert!(ev
        .iter()
        .filter(|e| e.kind.starts_with("agent."))
        .all(|e| e.actor == "agent"));

    // Failed commissioning: the reason is required, and becomes the status message.
    let m2 = c
        .machines()
        .create_machine(machine(15, 2))
        .await
        .unwrap()
        .into_inner();
    c.machines()
        .commission(CommissionRequest {
            machine: Some(by_id(&m2.system_id)),
            ..Default::default()
        })
        .await
        .unwrap();
    let t2 = boot_token(&c, &m2.system_id, "commissioning")
        .await
        .unwrap();
    expect_err(
        agent_result(&c, &m2.system_id, &t2, false, "").await,
        Code::InvalidArgument,
        &["reason"],
    );
    let r = agent_result(&c, &m2.system_id, &t2, false, "sda: SMART self-test failed")
        .await
        .unwrap();
    assert_eq!(r.status(), S::FailedCommissioning);
    let m2 = get(&c, &m2.system_id).await.unwrap();
    assert_eq!(m2.status(), S::FailedCommissioning);
    assert_eq!(m2.status_message, "sda: SMART self-test failed");

    // Event filters and paging.
    let everything = all_events(&c, ListEventsRequest::default(), 1000, 10)
        .await
        .unwrap();
    let cursors: Vec<(u64, u32)> = everything.iter().map(|e| (e.revision, e.seq)).collect();
    assert!(
        cursors.windows(2).all(|w| w[0] > w[1]),
        "events are newest first, each once"
    );
    for page in [1u32, 3, 7] {
        let paged = all_events(&c, ListEventsRequest::default(), page, 1000)
            .await
            .unwrap();
        let pc: Vec<(u64, u32)> = paged.iter().map(|e| (e.revision, e.seq)).collect();
        assert_eq!(pc, cursors, "pages of {page} give the same history");
    }
    let errors = all_events(
        &c,
        ListEventsRequest {
            min_level: EventLevel::Error as i32,
            ..Default::default()
        },
        100,
        10,
    )
    .await
    .unwrap();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].system_id, m2.system_id);
    assert_eq!(errors[0].to_status(), S::FailedCommissioning);
    assert_eq!(errors[0].message, "sda: SMART self-test failed");
    let allocs = all_events(
        &c,
        ListEventsRequest {
            kind: "allocate".into(),
            owner: admin.clone(),
            ..Default::default()
        },
        100,
        10,
    )
    .await
    .unwrap();
    assert_eq!(allocs.len(), 1);
    assert_eq!(allocs[0].system_id, id);
    let m2_paged = all_events(
        &c,
        ListEventsRequest {
            system_id: m2.system_id.clone(),
            zone: "default".into(),
            ..Default::default()
        },
        1,
        100,
    )
    .await
    .unwrap();
    assert!(m2_paged.iter().all(|e| e.system_id == m2.system_id));
    assert_eq!(
        transitions(&m2_paged.iter().rev().cloned().collect::<Vec<_>>()),
        vec![
            (S::Unspecified, S::New),
            (S::New, S::Commissioning),
            (S::Commissioning, S::FailedCommissioning)
        ]
    );
    expect_err(
        c.events()
            .list_events(ListEventsRequest {
                page_size: 1001,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        &["page_size"],
    );
    expect_err(
        c.events()
            .list_events(ListEventsRequest {
                page_token: "not-a-token".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        &["page_token"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn illegal_actions_name_the_status_and_locks_hold() {
    let tc = TestCluster::start("t15-illegal-lock", 3, &[])
        .await
        .unwrap();
    let c = tc.clients();
    let m = ready_machine(&c, 15, 10, small_inventory()).await.unwrap();
    let id = m.system_id.clone();

    let msg = expect_err(
        deploy(&c, &id).await,
        Code::FailedPrecondition,
        &["status ready", "allocate", "commission"],
    );
    assert!(
        !msg.contains("release"),
        "release is not allowed from ready: {msg}"
    );
    expect_err(
        c.machines().abort(action(&id)).await,
        Code::FailedPrecondition,
        &["status ready"],
    );
    expect_err(
        c.machines().lock(action(&id)).await,
        Code::FailedPrecondition,
        &["status ready"],
    );

    allocate(&c, "lock-1", "", only(&id)).await.unwrap();
    expect_err(
        c.machines().lock(action(&id)).await,
        Code::FailedPrecondition,
        &["status allocated", "deploy", "release"],
    );
    expect_err(
        c.machines()
            .commission(CommissionRequest {
                machine: Some(by_id(&id)),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        &["status allocated"],
    );
    deploy(&c, &id).await.unwrap();
    let t = boot_token(&c, &id, "deploying").await.unwrap();
    expect_err(
        c.machines().lock(action(&id)).await,
        Code::FailedPrecondition,
        &["status deploying"],
    );
    agent_result(&c, &id, &t, true, "").await.unwrap();

    // Locked: release and every other change is refused until unlock.
    let m = c.machines().lock(action(&id)).await.unwrap().into_inner();
    assert!(m.locked);
    assert_eq!(m.status(), S::Deployed);
    expect_err(
        release(&c, &id, EraseMode::None).await,
        Code::FailedPrecondition,
        &["locked"],
    );
    expect_err(
        c.machines().mark_broken(action(&id)).await,
        Code::FailedPrecondition,
        &["locked"],
    );
    expect_err(
        c.machines().lock(action(&id)).await,
        Code::FailedPrecondition,
        &["locked"],
    );
    expect_err(
        c.machines()
            .update_machine(UpdateMachineRequest {
                system_id: id.clone(),
                description: Some("changed while locked".into()),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        &["locked"],
    );
    let m = get(&c, &id).await.unwrap();
    assert!(m.locked && m.status() == S::Deployed && m.description.is_empty());

    let m = c.machines().unlock(action(&id)).await.unwrap().into_inner();
    assert!(!m.locked);
    expect_err(
        c.machines().unlock(action(&id)).await,
        Code::FailedPrecondition,
        &["not locked"],
    );
    let m = release(&c, &id, EraseMode::None).await.unwrap();
    assert_eq!(m.status(), S::Releasing);
    let (m, took) = wait_status(&c, &id, S::Ready, Duration::from_secs(5))
        .await
        .unwrap();
    eprintln!("releasing -> ready after {took:?}");
    assert!(m.owner.is_empty() && !m.locked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deadline_moves_a_stuck_machine_to_its_failed_status() {
    let tc = TestCluster::start("t15-deadline", 3, &[]).await.unwrap();
    let c = tc.clients();
    let s = c
        .cluster()
        .update_settings(UpdateSettingsRequest {
            deadline_seconds: [("commissioning".to_string(), 2)].into_iter().collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.deadline_seconds.get("commissioning"), Some(&2));
    assert!(
        s.deadline_seconds.get("deploying").copied().unwrap_or(0) > 2,
        "other deadlines keep their defaults: {s:?}"
    );

    let m = c
        .machines()
        .create_machine(machine(15, 20))
        .await
        .unwrap()
        .into_inner();
    let id = m.system_id;
    let t0 = Instant::now();
    c.machines()
        .commission(CommissionRequest {
            machine: Some(by_id(&id)),
            ..Default::default()
        })
        .await
        .unwrap();
    let token = boot_token(&c, &id, "commissioning").await.unwrap();
    let (m, _) = wait_status(&c, &id, S::FailedCommissioning, Duration::from_secs(10))
        .await
        .unwrap();
    let took = t0.elapsed();
    eprintln!("commissioning (deadline 2 s) -> failed-commissioning after {took:?}");
    assert!(
        took >= Duration::from_millis(1800) && took <= Duration::from_millis(3600),
        "deadline of 2 s fired after {took:?}"
    );
    assert!(
        m.status_message.contains("deadline"),
        "{}",
        m.status_message
    );
    assert!(m.boot_purpose.is_empty());

    let ev = all_events(
        &c,
        ListEventsRequest {
            system_id: id.clone(),
            kind: "deadline".into(),
            ..Default::default()
        },
        100,
        10,
    )
    .await
    .unwrap();
    assert_eq!(ev.len(), 1, "{ev:#?}");
    assert_eq!(ev[0].actor, "region");
    assert_eq!(
        (ev[0].from_status(), ev[0].to_status()),
        (S::Commissioning, S::FailedCommissioning)
    );
    assert_eq!(ev[0].level(), EventLevel::Warning);

    // The timed-out boot can no longer report.
    expect_err(
        c.agent()
            .report_inventory(ReportInventoryRequest {
                system_id: id.clone(),
                boot_token: token.clone(),
                inventory: Some(small_inventory()),
            })
            .await,
        Code::Unauthenticated,
        &[],
    );
    expect_err(
        agent_result(&c, &id, &token, true, "").await,
        Code::Unauthenticated,
        &[],
    );

    // Commissioning again works (a new boot, finished within the deadline), and 0 restores the default.
    let m = commission_to_ready(&c, &id, small_inventory())
        .await
        .unwrap();
    assert_eq!(m.status(), S::Ready);
    let s = c
        .cluster()
        .update_settings(UpdateSettingsRequest {
            deadline_seconds: [("commissioning".to_string(), 0)].into_iter().collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.deadline_seconds.get("commissioning"), Some(&1800));
    let s = c
        .cluster()
        .get_settings(GetSettingsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.deadline_seconds.get("commissioning"), Some(&1800));
    expect_err(
        c.cluster()
            .update_settings(UpdateSettingsRequest {
                deadline_seconds: [("no-such-status".to_string(), 5)].into_iter().collect(),
            })
            .await,
        Code::InvalidArgument,
        &[],
    );
}

async fn tagged(c: &Clients, tag: &str) -> BTreeSet<String> {
    c.machines()
        .list_machines(ListMachinesRequest {
            filter: Some(MachineFilter {
                tags: vec![tag.into()],
                ..Default::default()
            }),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .machines
        .into_iter()
        .map(|m| m.system_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tags_defined_over_the_inventory_follow_inventory_and_definition() {
    let tc = TestCluster::start("t15-tags", 3, &[]).await.unwrap();
    let c = tc.clients();
    let big = ready_machine(
        &c,
        15,
        30,
        inventory(32, 131_072, &[(1000, false)], 2, 10_000),
    )
    .await
    .unwrap()
    .system_id;
    let hdd = ready_machine(&c, 15, 31, inventory(8, 16_384, &[(2000, true)], 1, 1_000))
        .await
        .unwrap()
        .system_id;
    let fresh = c
        .machines()
        .create_machine(machine(15, 32))
        .await
        .unwrap()
        .into_inner()
        .system_id;

    let def = "cpu_count >= 16 && any(disks, size_gib >= 900 && !rotational)";
    let t = c
        .tags()
        .create_tag(CreateTagRequest {
            name: "fast".into(),
            definition: def.into(),
            comment: "big NVMe boxes".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.machine_count, 1);
    assert_eq!(tagged(&c, "fast").await, BTreeSet::from([big.clone()]));
    assert!(get(&c, &big)
        .await
        .unwrap()
        .tags
        .contains(&"fast".to_string()));

    // New inventory re-evaluates the tag for that machine, as soon as it is reported.
    let mid = c
        .machines()
        .commission(CommissionRequest {
            machine: Some(by_id(&hdd)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mid.status(), S::Commissioning);
    let tok = boot_token(&c, &hdd, "commissioning").await.unwrap();
    c.agent()
        .report_inventory(ReportInventoryRequest {
            system_id: hdd.clone(),
            boot_token: tok.clone(),
            inventory: Some(inventory(
                16,
                65_536,
                &[(960, false), (2000, true)],
                2,
                10_000,
            )),
        })
        .await
        .unwrap();
    assert!(get(&c, &hdd)
        .await
        .unwrap()
        .tags
        .contains(&"fast".to_string()));
    agent_result(&c, &hdd, &tok, true, "").await.unwrap();
    commission_to_ready(
        &c,
        &fresh,
        inventory(64, 262_144, &[(1000, false)], 4, 25_000),
    )
    .await
    .unwrap();
    assert_eq!(
        tagged(&c, "fast").await,
        BTreeSet::from([big.clone(), hdd.clone(), fresh.clone()])
    );
    // Losing the matching disk loses the tag.
    commission_to_ready(&c, &hdd, inventory(16, 65_536, &[(2000, true)], 2, 10_000))
        .await
        .unwrap();
    assert_eq!(
        tagged(&c, "fast").await,
        BTreeSet::from([big.clone(), fresh.clone()])
    );

    // A new definition is re-evaluated on every machine.
    let t = c
        .tags()
        .update_tag(UpdateTagRequest {
            name: "fast".into(),
            definition: Some("cpu_count >= 16".into()),
            comment: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.machine_count, 3);
    assert_eq!(
        tagged(&c, "fast").await,
        BTreeSet::from([big.clone(), hdd.clone(), fresh.clone()])
    );
    c.tags()
        .update_tag(UpdateTagRequest {
            name: "fast".into(),
            definition: Some("cpu_count >= 32 && memory_mib >= 200_000".into()),
            comment: None,
        })
        .await
        .unwrap();
    assert_eq!(tagged(&c, "fast").await, BTreeSet::from([fresh.clone()]));
    let t = c
        .tags()
        .get_tag(GetTagRequest {
            name: "fast".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.machine_count, 1);
    assert_eq!(t.definition, "cpu_count >= 32 && memory_mib >= 200_000");

    // Bad definitions: InvalidArgument with a position; nothing changes.
    let msg = expect_err(
        c.tags()
            .create_tag(CreateTagRequest {
                name: "bad".into(),
                definition: "cpu_count >= ".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        &["definition", "at "],
    );
    assert!(
        msg.split("at ")
            .skip(1)
            .any(|rest| rest.starts_with(|ch: char| ch.is_ascii_digit())),
        "no position in: {msg}"
    );
    expect_err(
        c.tags()
            .update_tag(UpdateTagRequest {
                name: "fast".into(),
                definition: Some("any(disks, size_gib >=)".into()),
                comment: None,
            })
            .await,
        Code::InvalidArgument,
        &["definition"],
    );
    assert_eq!(tagged(&c, "fast").await, BTreeSet::from([fresh.clone()]));

    // A defined tag cannot be set by hand; a manual one can.
    expect_err(
        c.machines()
            .tag_machine(TagMachineRequest {
                machine: Some(by_id(&big)),
                tags: vec!["fast".into()],
            })
            .await,
        Code::FailedPrecondition,
        &["definition"],
    );
    c.tags()
        .create_tag(CreateTagRequest {
            name: "rack7".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    c.machines()
        .tag_machine(TagMachineRequest {
            machine: Some(by_id(&big)),
            tags: vec!["rack7".into()],
        })
        .await
        .unwrap();
    assert_eq!(tagged(&c, "rack7").await, BTreeSet::from([big.clone()]));
    // A manual tag survives re-commissioning.
    commission_to_ready(
        &c,
        &big,
        inventory(32, 131_072, &[(1000, false)], 2, 10_000),
    )
    .await
    .unwrap();
    assert_eq!(tagged(&c, "rack7").await, BTreeSet::from([big.clone()]));

    // Deleting a tag removes it everywhere.
    c.tags()
        .delete_tag(DeleteTagRequest {
            name: "fast".into(),
        })
        .await
        .unwrap();
    assert!(!get(&c, &fresh)
        .await
        .unwrap()
        .tags
        .contains(&"fast".to_string()));
}

async fn visible_ids(c: &Clients) -> BTreeSet<String> {
    c.machines()
        .list_machines(ListMachinesRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .machines
        .into_iter()
        .map(|m| m.system_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_see_and_act_on_only_their_own_machines() {
    let tc = TestCluster::start("t15-roles", 3, &[]).await.unwrap();
    let c = tc.clients();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            ready_machine(&c, 15, 40 + i, small_inventory())
                .await
                .unwrap()
                .system_id,
        );
    }
    let alice = user_clients(&c, "alice").await.unwrap();
    let bob = user_clients(&c, "bob").await.unwrap();
    let me = alice
        .users()
        .who_am_i(WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((me.name.as_str(), me.role()), ("alice", Role::User));

    // Users do not enlist, make zones or tags, or commission.
    expect_err(
        alice.machines().create_machine(machine(15, 49)).await,
        Code::PermissionDenied,
        &[],
    );
    expect_err(
        alice
            .zones()
            .create_zone(CreateZoneRequest {
                name: "mine".into(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        &[],
    );
    expect_err(
        alice
            .tags()
            .create_tag(CreateTagRequest {
                name: "mine".into(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        &[],
    );
    expect_err(
        alice
            .machines()
            .commission(CommissionRequest {
                machine: Some(by_id(&ids[0])),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        &[],
    );

    // Alice sees the pool and takes a machine.
    assert_eq!(visible_ids(&alice).await, ids.iter().cloned().collect());
    let got = allocate(&alice, "alice-1", "alice-vm", only(&ids[0]))
        .await
        .unwrap();
    assert_eq!(got[0].owner, "alice");

    // Bob no longer sees it, cannot find it, allocate it, deploy or release it.
    let bob_sees = visible_ids(&bob).await;
    assert_eq!(bob_sees, ids[1..].iter().cloned().collect());
    expect_err(
        bob.machines()
            .get_machine(GetMachineRequest {
                key: Some(get_machine_request::Key::SystemId(ids[0].clone())),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        &[],
    );
    expect_err(
        allocate(&bob, "bob-1", "", only(&ids[0])).await,
        Code::ResourceExhausted,
        &[],
    );
    expect_err(deploy(&bob, &ids[0]).await, Code::PermissionDenied, &[]);
    let bob_events = all_events(&bob, ListEventsRequest::default(), 100, 10)
        .await
        .unwrap();
    assert!(
        bob_events.iter().all(|e| e.system_id != ids[0]),
        "bob sees events of alice's machine: {bob_events:#?}"
    );
    // Admins see everything, and the owner.
    assert_eq!(visible_ids(&c).await, ids.iter().cloned().collect());
    let owned = c
        .machines()
        .list_machines(ListMachinesRequest {
            filter: Some(MachineFilter {
                owner: "alice".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(owned.total_size, 1);
    assert_eq!(owned.machines[0].system_id, ids[0]);

    // An admin can release it.
    release(&c, &ids[0], EraseMode::None).await.unwrap();
    let (m, _) = wait_status(&c, &ids[0], S::Ready, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(m.owner.is_empty());
    assert_eq!(visible_ids(&bob).await, ids.iter().cloned().collect());
}

/// Applies `description` to machine `id` exactly once through `c`, surviving leader loss: the update is
/// guarded by `expected`; after an error the machine is read back to learn whether it was applied.
/// Returns the revision of the change.
async fn cas_update(c: &Clients, id: &str, description: &str, expected: u64) -> u64 {
    let t0 = Instant::now();
    let mut expected = expected;
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "update of {id} not acknowledged within 30 s"
        );
        let req = UpdateMachineRequest {
            system_id: id.into(),
            description: Some(description.into()),
            expected_revision: expected,
            ..Default::default()
        };
        let mut mc = c.machines();
        match tokio::time::timeout(Duration::from_secs(3), mc.update_machine(req)).await {
            Ok(Ok(m)) => return m.into_inner().revision,
            Ok(Err(e)) => eprintln!("update {id}: {e}; reading back"),
            Err(_) => eprintln!("update {id}: timed out; reading back"),
        }
        // Read back (linearizable) until a region answers.
        loop {
            assert!(t0.elapsed() < Duration::from_secs(30), "no read of {id}");
            let read = tokio::time::timeout(Duration::from_secs(3), get(c, id)).await;
            match read {
                Ok(Ok(m)) if m.description == description => return m.revision,
                Ok(Ok(m)) => {
                    assert_eq!(m.revision, expected, "{id} changed behind our back");
                    expected = m.revision;
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    revision: u64,
    system_id: String,
    description: String,
}

/// Reads `stream` into `seen` until it fails or ends, or `stop` says so, or `limit` passes. Returns the
/// last revision seen (PUTs and PROGRESS) and whether the stream broke.
async fn drain(
    stream: &mut tonic::Streaming<ingot_proto::v1::WatchResponse>,
    seen: &mut Vec<Seen>,
    mut last: u64,
    limit: Duration,
    stop: impl Fn(&[Seen]) -> bool,
) -> (u64, bool) {
    let t0 = Instant::now();
    while !stop(seen) {
        let left = limit.saturating_sub(t0.elapsed());
        if left.is_zero() {
            return (last, false);
        }
        match tokio::time::timeout(left, stream.message()).await {
            Err(_) => return (last, false),
            Ok(Err(e)) => {
                eprintln!("watch stream broke: {e}");
                return (last, true);
            }
            Ok(Ok(None)) => return (last, true),
            Ok(Ok(Some(r))) => {
                assert!(
                    r.revision >= last,
                    "revision went back: {} after {last}",
                    r.revision
                );
                last = r.revision;
                match r.kind() {
                    watch_response::Kind::Put => {
                        let m = r.machine.unwrap();
                        assert_eq!(m.revision, r.revision);
                        seen.push(Seen {
                            revision: r.revision,
                            system_id: m.system_id,
                            description: m.description,
                        });
                    }
                    watch_response::Kind::Progress => {}
                    k => panic!("unexpected watch item {k:?}"),
                }
            }
        }
    }
    (last, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_resumes_on_another_region_after_sigkill_without_gaps_or_repeats() {
    let tc = TestCluster::start("t15-watch-resume", 3, &[])
        .await
        .unwrap();
    // Watch the leader: its death also interrupts the writes, which must resume after the election.
    let victim = tc.leader().await;
    let writer_at = (1..=3).find(|i| *i != victim).unwrap();
    let resume_at = (1..=3).find(|i| *i != victim && *i != writer_at).unwrap();
    let w = tc.clients_to(writer_at);
    let mut ids = Vec::new();
    for i in 0..8 {
        let m = w
            .machines()
            .create_machine(machine(15, 50 + i))
            .await
            .unwrap()
            .into_inner();
        ids.push((m.system_id, m.revision));
    }
    let r0 = w
        .machines()
        .list_machines(ListMachinesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .revision;
    assert!(r0 >= ids.iter().map(|x| x.1).max().unwrap());

    let mut stream = tc
        .clients_to(victim)
        .machines()
        .watch(WatchRequest {
            from_revision: r0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    // The writer: 160 CAS updates round-robin over the machines, 10 ms apart, through a surviving region.
    const WRITES: usize = 160;
    let done = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (w, done) = (w.clone(), done.clone());
        let mut ids = ids.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..WRITES {
                let k = n % ids.len();
                let desc = format!("w{n}");
                let rev = cas_update(&w, &ids[k].0, &desc, ids[k].1).await;
                ids[k].1 = rev;
                acked.push(Seen {
                    revision: rev,
                    system_id: ids[k].0.clone(),
                    description: desc,
                });
                done.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acked
        })
    };

    // Phase 1: 40 changes arrive on the victim.
    let mut seen = Vec::new();
    let (last, broke) = drain(&mut stream, &mut seen, r0, Duration::from_secs(20), |s| {
        s.len() >= 40
    })
    .await;
    assert!(!broke && seen.len() >= 40, "phase 1 saw {}", seen.len());

    // SIGKILL the region the watcher is connected to; whatever it still sent counts.
    tc.cluster.kill(victim, libc::SIGKILL).unwrap();
    let at_kill = done.load(Ordering::SeqCst);
    let (mut last, broke) = drain(
        &mut stream,
        &mut seen,
        last,
        Duration::from_secs(10),
        |_| false,
    )
    .await;
    assert!(broke, "the stream of a killed region must end");
    tc.cluster.wait_exit(victim).await.unwrap();
    eprintln!(
        "watcher cut off at revision {last} after {} changes; writer at {at_kill}",
        seen.len()
    );

    // Changes happen during the gap (after the election).
    let t0 = Instant::now();
    while done.load(Ordering::SeqCst) < at_kill + 30 && t0.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        done.load(Ordering::SeqCst) >= at_kill + 30,
        "writes did not resume after the leader was killed"
    );

    // Resume on another region from the last revision seen.
    let resumed = tc.clients_to(resume_at);
    let mut stream = ingot_client::retry_unavailable(
        || {
            let mut mc = resumed.machines();
            async move {
                mc.watch(WatchRequest {
                    from_revision: last,
                    ..Default::default()
                })
                .await
            }
        },
        Duration::from_secs(15),
    )
    .await
    .unwrap()
    .into_inner();
    let acked = tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("writer finished")
        .unwrap();
    let want: BTreeSet<u64> = acked.iter().map(|s| s.revision).collect();
    let (l, broke) = drain(&mut stream, &mut seen, last, Duration::from_secs(15), |s| {
        s.last()
            .is_some_and(|x| x.revision >= *want.iter().next_back().unwrap())
    })
    .await;
    last = l;
    assert!(!broke);
    eprintln!("watch ended at revision {last} with {} changes", seen.len());

    // Every acknowledged change exactly once, in revision order, nothing else.
    assert!(
        seen.windows(2).all(|p| p[0].revision < p[1].revision),
        "changes out of order or repeated"
    );
    assert_eq!(
        seen.len(),
        acked.len(),
        "received {} of {} changes",
        seen.len(),
        acked.len()
    );
    assert_eq!(seen, acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_from_a_revision_no_longer_retained_is_out_of_range() {
    // Snapshots every 20 entries: a restarted region reloads from its snapshot and retains changes only
    // from there, so an early revision is out of its range at once (no 50,000 changes needed).
    let tc = TestCluster::start(
        "t15-watch-range",
        3,
        &["--snapshot-logs=20", "--keep-logs=5"],
    )
    .await
    .unwrap();
    let c = tc.clients();
    let first = c
        .machines()
        .create_machine(machine(15, 60))
        .await
        .unwrap()
        .into_inner();
    for i in 61..120 {
        c.machines().create_machine(machine(15, i)).await.unwrap();
    }
    let leader = tc.leader().await;
    let f = (1..=3).find(|i| *i != leader).unwrap();
    tc.cluster.kill(f, libc::SIGKILL).unwrap();
    tc.cluster.wait_exit(f).await.unwrap();
    tc.cluster.restart(f).await.unwrap();
    let fc = tc.clients_to(f);
    let e = ingot_client::retry_unavailable(
        || {
            let mut mc = fc.machines();
            async move {
                mc.watch(WatchRequest {
                    from_revision: first.revision,
                    ..Default::default()
                })
                .await
            }
        },
        Duration::from_secs(15),
    )
    .await;
    let msg = expect_err(e.map(|_| ()), Code::OutOfRange, &["list"]);
    eprintln!("OUT_OF_RANGE: {msg}");

    // List again, watch from the list's revision: the next change arrives.
    let r = fc
        .machines()
        .list_machines(ListMachinesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.total_size, 60);
    let mut stream = fc
        .machines()
        .watch(WatchRequest {
            from_revision: r.revision,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let m = c
        .machines()
        .create_machine(CreateMachineRequest {
            hostname: "after-relist".into(),
            ..machine(15, 200)
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    drain(
        &mut stream,
        &mut seen,
        r.revision,
        Duration::from_secs(10),
        |s| !s.is_empty(),
    )
    .await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].system_id, m.system_id);
    assert_eq!(seen[0].revision, m.revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_cannot_release_another_users_machine() {
    let tc = TestCluster::start("t15-release-other", 3, &[])
        .await
        .unwrap();
    let c = tc.clients();
    let id = ready_machine(&c, 15, 70, small_inventory())
        .await
        .unwrap()
        .system_id;
    let alice = user_clients(&c, "alice").await.unwrap();
    let bob = user_clients(&c, "bob").await.unwrap();
    allocate(&alice, "alice-1", "", only(&id)).await.unwrap();
    let ids = [id];
    // Releasing someone else's machine is PERMISSION_DENIED (machine.proto: "PERMISSION_DENIED when the
    // caller is neither an admin nor (for owner actions) the machine's owner"); the machine stays put.
    let r = release(&bob, &ids[0], EraseMode::None).await;
    let m = get(&c, &ids[0]).await.unwrap();
    assert_eq!((m.status(), m.owner.as_str()), (S::Allocated, "alice"));
    expect_err(r, Code::PermissionDenied, &[]);
}
