//! Allocation on 3 real regions: a concurrent property test (16 tasks over 3 regions and 4 users
//! allocating and releasing at random, then the event history proves no machine ever had two owners and
//! every allocation met its constraints), and the request semantics: idempotent request ids across regions,
//! consumer and provider-id lookups, zone spread, all-or-nothing groups and dry runs.

use ingot_client::Clients;
use ingot_proto::v1::{
    get_machine_request, machine_ref, AllocateRequest, AllocateResponse, Constraints,
    CreateMachineRequest, CreateTagRequest, CreateZoneRequest, EraseMode, Event, GetMachineRequest,
    Inventory, ListEventsRequest, ListMachinesRequest, Machine, MachineFilter, MachineRef,
    MachineStatus as S, ReleaseRequest, SpreadPolicy, TagMachineRequest,
};
use ingot_tests::{
    all_events, by_id, inventory, machine, ready_machine_from, user_clients, TestCluster,
};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};
use tonic::Code;

const ZONES: [&str; 3] = ["z1", "z2", "z3"];

/// What the test knows about each machine it enlisted: zone, inventory, manual tags.
#[derive(Clone, Debug)]
struct Known {
    zone: String,
    inv: Inventory,
    tags: BTreeSet<String>,
}

/// The varied fleet: machine `i` in zone `i % 3`, with CPUs, memory, disks, NICs and a manual `gpu` tag
/// varying with `i` so that every constraint of [`constraint_set`] matches some machines but not all.
fn spec(i: u32) -> (String, Inventory, bool) {
    let zone = ZONES[(i % 3) as usize].to_string();
    let cpus = [4, 8, 16, 32][((i / 3) % 4) as usize];
    let mem = [8_192, 32_768, 65_536][((i / 2) % 3) as usize];
    let disks: &[(u64, bool)] = if i.is_multiple_of(2) {
        &[(1000, false)]
    } else {
        &[(2000, true), (240, false)]
    };
    let nics = 1 + (i % 3) as usize % 2;
    let speed = if i.is_multiple_of(4) { 10_000 } else { 1_000 };
    (
        zone,
        inventory(cpus, mem, disks, nics, speed),
        i.is_multiple_of(5),
    )
}

/// Creates the zones, the `gpu` tag and `n` Ready machines (8 at a time), seed `seed`.
async fn fleet(c: &Clients, seed: u16, n: u32) -> BTreeMap<String, Known> {
    for z in ZONES {
        c.zones()
            .create_zone(CreateZoneRequest {
                name: z.into(),
                description: String::new(),
            })
            .await
            .unwrap();
    }
    c.tags()
        .create_tag(CreateTagRequest {
            name: "gpu".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    let ids: Vec<u32> = (0..n).collect();
    for chunk in ids.chunks(8) {
        let mut set = tokio::task::JoinSet::new();
        for &i in chunk {
            let c = c.clone();
            set.spawn(async move {
                let (zone, inv, gpu) = spec(i);
                let req = CreateMachineRequest {
                    zone: zone.clone(),
                    ..machine(seed, i)
                };
                let m = ready_machine_from(&c, req, inv.clone()).await.unwrap();
                let mut tags = BTreeSet::new();
                if gpu {
                    c.machines()
                        .tag_machine(TagMachineRequest {
                            machine: Some(by_id(&m.system_id)),
                            tags: vec!["gpu".into()],
                        })
                        .await
                        .unwrap();
                    tags.insert("gpu".to_string());
                }
                (m.system_id, Known { zone, inv, tags })
            });
        }
        while let Some(r) = set.join_next().await {
            let (id, k) = r.unwrap();
            out.insert(id, k);
        }
    }
    out
}

/// The small set of constraints the random allocations choose from.
fn constraint_set() -> Vec<Constraints> {
    let z = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        Constraints::default(),
        Constraints {
            min_cpu_count: 16,
            ..Default::default()
        },
        Constraints {
            min_memory_mib: 32_768,
            ..Default::default()
        },
        Constraints {
            zones: z(&["z2"]),
            ..Default::default()
        },
        Constraints {
            not_in_zones: z(&["z1"]),
            ..Default::default()
        },
        Constraints {
            tags: z(&["gpu"]),
            ..Default::default()
        },
        Constraints {
            storage: "root:500(ssd)".into(),
            ..Default::default()
        },
        Constraints {
            min_cpu_count: 8,
            zones: z(&["z1", "z3"]),
            ..Default::default()
        },
        Constraints {
            min_nic_speed_mbps: 10_000,
            ..Default::default()
        },
        Constraints {
            not_tags: z(&["gpu"]),
            min_nic_count: 2,
            arch: "amd64".into(),
            ..Default::default()
        },
    ]
}

/// Checks a returned machine against the constraints, from the machine's fields and what the test knows
/// of its inventory. Returns why it does not satisfy them.
fn violates(c: &Constraints, m: &Machine, k: &Known) -> Option<String> {
    let inv = &k.inv;
    if m.zone != k.zone {
        return Some(format!("zone {} but enlisted in {}", m.zone, k.zone));
    }
    if !k.tags.is_subset(&m.tags.iter().cloned().collect()) {
        return Some(format!("tags {:?} lack some of {:?}", m.tags, k.tags));
    }
    if m.cpu_count != inv.cpu_count || m.memory_mib != inv.memory_mib {
        return Some("hardware summary differs from the inventory".into());
    }
    if !c.zones.is_empty() && !c.zones.contains(&m.zone) {
        return Some(format!("zone {} not in {:?}", m.zone, c.zones));
    }
    if c.not_in_zones.contains(&m.zone) {
        return Some(format!("zone {} excluded", m.zone));
    }
    if let Some(t) = c.tags.iter().find(|t| !m.tags.contains(t)) {
        return Some(format!("lacks tag {t}"));
    }
    if let Some(t) = c.not_tags.iter().find(|t| m.tags.contains(t)) {
        return Some(format!("has excluded tag {t}"));
    }
    if m.cpu_count < c.min_cpu_count {
        return Some(format!("{} CPUs < {}", m.cpu_count, c.min_cpu_count));
    }
    if m.memory_mib < c.min_memory_mib {
        return Some(format!("{} MiB < {}", m.memory_mib, c.min_memory_mib));
    }
    if (inv.nics.len() as u32) < c.min_nic_count {
        return Some(format!("{} NICs < {}", inv.nics.len(), c.min_nic_count));
    }
    if c.min_nic_speed_mbps > 0
        && !inv
            .nics
            .iter()
            .any(|n| n.speed_mbps >= c.min_nic_speed_mbps)
    {
        return Some("no NIC fast enough".into());
    }
    if c.storage == "root:500(ssd)" && !inv.disks.iter().any(|d| d.size_gib >= 500 && !d.rotational)
    {
        return Some("no 500 GiB SSD".into());
    }
    if !c.arch.is_empty() && !m.arch.starts_with(&c.arch) {
        return Some(format!("arch {}", m.arch));
    }
    None
}

fn spread_name(s: SpreadPolicy, k: u32) -> String {
    match s {
        SpreadPolicy::MinZones => format!("min_zones({k})"),
        other => format!("{other:?}"),
    }
}

/// One served allocation, as the client saw it.
#[derive(Debug, Clone)]
struct Served {
    request_id: String,
    user: String,
    ids: Vec<String>,
}

#[derive(Debug, Default)]
struct TaskReport {
    served: Vec<Served>,
    /// Allocations still held at the end.
    held: Vec<Served>,
    exhausted: u64,
    zone_shortfall: u64,
    collisions: u64,
    replays: u64,
    releases: u64,
    ops: u64,
}

/// Allocates with a bounded retry of `UNAVAILABLE` (the server's advice: retry with the same request id).
async fn allocate_retrying(
    c: &Clients,
    req: AllocateRequest,
) -> (Result<AllocateResponse, tonic::Status>, u64) {
    let mut unavailable = 0;
    for _ in 0..4 {
        match c.machines().allocate(req.clone()).await {
            Err(e) if e.code() == Code::Unavailable => {
                unavailable += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            r => return (r.map(|r| r.into_inner()), unavailable),
        }
    }
    (
        Err(tonic::Status::unavailable("still colliding after 4 tries")),
        unavailable,
    )
}

/// One random client of the concurrency test: who it is, where it talks, and how long it runs.
struct Worker {
    /// Task number (in messages and request ids).
    t: usize,
    /// The user it acts as.
    user: String,
    /// Its region.
    c: Clients,
    /// Another region, for reads that must see its writes.
    other: Clients,
    /// The fleet's machines.
    known: BTreeMap<String, Known>,
    /// Its random seed.
    seed: u64,
    /// When it stops.
    until: Instant,
    /// Most operations it runs.
    max_ops: u64,
}

async fn random_worker(w: Worker) -> TaskReport {
    let Worker {
        t,
        user,
        c,
        other,
        known,
        seed,
        until,
        max_ops,
    } = w;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let set = constraint_set();
    let mut rep = TaskReport::default();
    let mut held: Vec<Served> = Vec::new();
    while rep.ops < max_ops && Instant::now() < until {
        rep.ops += 1;
        let n = rep.ops;
        if !held.is_empty() && (held.len() >= 2 || rng.gen_bool(0.5)) {
            let a = held.swap_remove(rng.gen_range(0..held.len()));
            for id in &a.ids {
                let m = c
                    .machines()
                    .release(ReleaseRequest {
                        machine: Some(by_id(id)),
                        erase: EraseMode::None as i32,
                        ..Default::default()
                    })
                    .await
                    .unwrap_or_else(|e| panic!("task {t}: release {id}: {e}"))
                    .into_inner();
                assert_eq!(m.status(), S::Releasing, "task {t}: released {id}");
                assert_eq!(m.owner, user);
                rep.releases += 1;
            }
            continue;
        }
        let ci = rng.gen_range(0..set.len());
        let count = rng.gen_range(1..=3u32);
        let (spread, min_zones) = match rng.gen_range(0..3) {
            0 => (SpreadPolicy::Unspecified, 0),
            1 => (SpreadPolicy::Even, 0),
            _ => (SpreadPolicy::MinZones, rng.gen_range(1..=count)),
        };
        let request_id = format!("t{t}-{n}");
        let consumer = if rng.gen_bool(0.5) {
            format!("c-t{t}-{n}")
        } else {
            String::new()
        };
        let req = AllocateRequest {
            request_id: request_id.clone(),
            constraints: Some(set[ci].clone()),
            consumer: consumer.clone(),
            count,
            spread: spread as i32,
            min_zones,
            dry_run: false,
        };
        let (r, unavailable) = allocate_retrying(&c, req.clone()).await;
        rep.collisions += unavailable;
        let what = format!(
            "task {t} {request_id}: constraints #{ci}, count {count}, {}",
            spread_name(spread, min_zones)
        );
        match r {
            Ok(resp) => {
                assert!(!resp.replayed, "{what}: first call replayed");
                assert_eq!(resp.machines.len(), count as usize, "{what}");
                let mut zones = BTreeSet::new();
                for (i, m) in resp.machines.iter().enumerate() {
                    assert_eq!(m.status(), S::Allocated, "{what}");
                    assert_eq!(m.owner, user, "{what}");
                    assert_eq!(m.allocation_request_id, request_id, "{what}");
                    assert_eq!(
                        m.provider_id,
                        format!("ingot:///{}/{}", m.zone, m.system_id)
                    );
                    let want_consumer = if consumer.is_empty() || count == 1 {
                        consumer.clone()
                    } else {
                        format!("{consumer}-{i}")
                    };
                    assert_eq!(m.consumer, want_consumer, "{what}");
                    let k = known.get(&m.system_id).expect("a known machine");
                    if let Some(why) = violates(&set[ci], m, k) {
                        panic!("{what}: {} violates the constraints: {why}", m.system_id);
                    }
                    zones.insert(m.zone.clone());
                }
                let ids: Vec<String> = resp.machines.iter().map(|m| m.system_id.clone()).collect();
                assert_eq!(
                    ids.iter().collect::<BTreeSet<_>>().len(),
                    ids.len(),
                    "{what}: one machine twice in one allocation"
                );
                if spread == SpreadPolicy::MinZones {
                    assert!(zones.len() >= min_zones as usize, "{what}: zones {zones:?}");
                }
                let served = Served {
                    request_id: request_id.clone(),
                    user: user.clone(),
                    ids: ids.clone(),
                };
                // Now and then, the same request again through another region: the same machines.
                if rng.gen_bool(0.2) {
                    let (again, _) = allocate_retrying(&other, req).await;
                    let again = again.unwrap_or_else(|e| panic!("{what}: replay: {e}"));
                    assert!(again.replayed, "{what}: replay not marked");
                    let again_ids: Vec<String> =
                        again.machines.iter().map(|m| m.system_id.clone()).collect();
                    assert_eq!(again_ids, ids, "{what}: replay returned other machines");
                    rep.replays += 1;
                }
                rep.served.push(served.clone());
                held.push(served);
            }
            Err(e) if e.code() == Code::ResourceExhausted => {
                assert!(e.message().contains("asked"), "{what}: {e}");
                rep.exhausted += 1;
                // Give releases in flight a moment to return machines to the pool.
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            Err(e) if e.code() == Code::FailedPrecondition && e.message().contains("zone(s)") => {
                rep.zone_shortfall += 1;
            }
            Err(e) if e.code() == Code::Unavailable => {}
            Err(e) => panic!("{what}: {e}"),
        }
    }
    rep.held = held;
    rep
}

async fn list_all(c: &Clients, filter: MachineFilter) -> Vec<Machine> {
    c.machines()
        .list_machines(ListMachinesRequest {
            filter: Some(filter),
            page_size: 5000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .machines
}

/// Waits (at most 10 s) until no machine is on its way back to the pool.
async fn settle(c: &Clients) {
    let t0 = Instant::now();
    loop {
        let busy = list_all(
            c,
            MachineFilter {
                status: S::Releasing as i32,
                ..Default::default()
            },
        )
        .await;
        if busy.is_empty() {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{} machines still releasing after 10 s",
            busy.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_random_allocations_never_give_a_machine_two_owners() {
    let t_start = Instant::now();
    let tc = TestCluster::start("t16-property", 3, &[]).await.unwrap();
    let admin = tc.clients();
    let known = fleet(&admin, 16, 60).await;
    assert_eq!(known.len(), 60);
    eprintln!("60 Ready machines in {:?}", t_start.elapsed());

    let users = ["ann", "ben", "cat", "dan"];
    let mut as_user = HashMap::new();
    for u in users {
        as_user.insert(u, user_clients(&admin, u).await.unwrap());
    }
    let seed: u64 = std::env::var("INGOT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {seed} (INGOT_TEST_SEED={seed} repeats this run)");
    let until = Instant::now() + Duration::from_secs(15);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..16usize {
        let user = users[t % users.len()];
        let base = &as_user[user];
        let here = base
            .channel_to(&tc.cluster.region(t % 3 + 1).endpoint())
            .unwrap();
        let there = base
            .channel_to(&tc.cluster.region((t + 1) % 3 + 1).endpoint())
            .unwrap();
        tasks.spawn(random_worker(Worker {
            t,
            user: user.to_string(),
            c: here,
            other: there,
            known: known.clone(),
            seed: seed.wrapping_add(t as u64),
            until,
            max_ops: 400,
        }));
    }
    let mut reports = Vec::new();
    while let Some(r) = tasks.join_next().await {
        reports.push(r.unwrap());
    }
    settle(&admin).await;

    let ops: u64 = reports.iter().map(|r| r.ops).sum();
    let served: Vec<&Served> = reports.iter().flat_map(|r| &r.served).collect();
    let allocated_machines: usize = served.iter().map(|s| s.ids.len()).sum();
    let releases: u64 = reports.iter().map(|r| r.releases).sum();
    let exhausted: u64 = reports.iter().map(|r| r.exhausted).sum();
    let shortfall: u64 = reports.iter().map(|r| r.zone_shortfall).sum();
    let collisions: u64 = reports.iter().map(|r| r.collisions).sum();
    let replays: u64 = reports.iter().map(|r| r.replays).sum();
    eprintln!(
        "{ops} ops: {} allocations ({allocated_machines} machines), {releases} releases, {exhausted} exhausted, \
         {shortfall} zone shortfalls, {collisions} UNAVAILABLE retries, {replays} replays checked",
        served.len()
    );
    assert!(served.len() >= 50, "too few allocations to mean anything");
    assert!(releases > 0);

    // Final state: every machine Ready or Allocated; the Allocated ones are exactly those still held.
    let all = list_all(&admin, MachineFilter::default()).await;
    assert_eq!(all.len(), 60);
    let mut held: BTreeMap<String, (String, String)> = BTreeMap::new();
    for r in &reports {
        for h in &r.held {
            for id in &h.ids {
                assert!(
                    held.insert(id.clone(), (h.user.clone(), h.request_id.clone()))
                        .is_none(),
                    "{id} held by two tasks"
                );
            }
        }
    }
    for m in &all {
        match m.status() {
            S::Allocated => {
                assert_eq!(
                    held.get(&m.system_id).map(|h| &h.0),
                    Some(&m.owner),
                    "{} allocated to {} but not held by that user",
                    m.system_id,
                    m.owner
                );
                assert_eq!(held[&m.system_id].1, m.allocation_request_id);
            }
            S::Ready => {
                assert!(
                    !held.contains_key(&m.system_id),
                    "{} held but Ready",
                    m.system_id
                );
                assert!(m.owner.is_empty());
            }
            other => panic!("{} left in {other:?}", m.system_id),
        }
    }
    assert_eq!(
        all.iter().filter(|m| m.status() == S::Allocated).count(),
        held.len()
    );
    assert_eq!(releases as usize + held.len(), allocated_machines);

    // The history: per machine, allocate and return-to-Ready alternate; owners match the clients' view.
    let mut ev: Vec<Event> = all_events(&admin, ListEventsRequest::default(), 1000, 200)
        .await
        .unwrap();
    ev.reverse();
    let mut owner_now: HashMap<String, Option<String>> = HashMap::new();
    let mut allocs_by: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut alloc_events = 0usize;
    let mut back_to_ready = 0usize;
    for e in ev.iter().filter(|e| known.contains_key(&e.system_id)) {
        let cur = owner_now.entry(e.system_id.clone()).or_default();
        if e.kind == "allocate" {
            assert!(
                cur.is_none(),
                "{} allocated to {} at revision {} while still held by {:?}",
                e.system_id,
                e.owner,
                e.revision,
                cur
            );
            assert_eq!((e.from_status(), e.to_status()), (S::Ready, S::Allocated));
            *cur = Some(e.owner.clone());
            *allocs_by
                .entry((e.system_id.clone(), e.owner.clone()))
                .or_default() += 1;
            alloc_events += 1;
        } else if e.kind == "release" {
            assert_eq!(
                cur.as_deref(),
                Some(e.owner.as_str()),
                "release by a non-holder"
            );
        } else if e.to_status() == S::Ready && e.from_status() == S::Releasing {
            assert!(cur.is_some(), "{} returned without an owner", e.system_id);
            *cur = None;
            back_to_ready += 1;
        }
    }
    let mut client_allocs: BTreeMap<(String, String), usize> = BTreeMap::new();
    for s in &served {
        for id in &s.ids {
            *client_allocs
                .entry((id.clone(), s.user.clone()))
                .or_default() += 1;
        }
    }
    assert_eq!(
        alloc_events, allocated_machines,
        "allocate events vs served machines"
    );
    assert_eq!(
        allocs_by, client_allocs,
        "who got what, per the history and per the clients"
    );
    assert_eq!(back_to_ready as u64, releases);
    for (id, o) in &owner_now {
        assert_eq!(
            o.as_ref(),
            held.get(id).map(|h| &h.0),
            "{id}: history ends with owner {o:?}"
        );
    }
    eprintln!("property test wall time {:?}", t_start.elapsed());
}

async fn alloc(c: &Clients, req: AllocateRequest) -> Result<AllocateResponse, tonic::Status> {
    c.machines().allocate(req).await.map(|r| r.into_inner())
}

fn req(request_id: &str, count: u32) -> AllocateRequest {
    AllocateRequest {
        request_id: request_id.into(),
        count,
        constraints: Some(Constraints::default()),
        ..Default::default()
    }
}

async fn count_status(c: &Clients, s: S) -> usize {
    list_all(
        c,
        MachineFilter {
            status: s as i32,
            ..Default::default()
        },
    )
    .await
    .len()
}

async fn alloc_event_count(c: &Clients) -> usize {
    all_events(
        c,
        ListEventsRequest {
            kind: "allocate".into(),
            ..Default::default()
        },
        1000,
        100,
    )
    .await
    .unwrap()
    .len()
}

/// Releases every allocated machine (as admin) and waits until all are Ready.
async fn release_all(c: &Clients) {
    for m in list_all(
        c,
        MachineFilter {
            status: S::Allocated as i32,
            ..Default::default()
        },
    )
    .await
    {
        c.machines()
            .release(ReleaseRequest {
                machine: Some(by_id(&m.system_id)),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    settle(c).await;
}

fn per_zone(ms: &[Machine]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for m in ms {
        *out.entry(m.zone.clone()).or_default() += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allocation_requests_are_idempotent_spread_and_all_or_nothing() {
    let tc = TestCluster::start("t16-semantics", 3, &[]).await.unwrap();
    let admin = tc.clients();
    let known = fleet(&admin, 17, 18).await;
    let carol = user_clients(&admin, "carol").await.unwrap();
    let region = |i: usize| carol.channel_to(&tc.cluster.region(i).endpoint()).unwrap();

    // The same request id sent to two regions at once: one claim, the other call replays it.
    let (r1, r2, r3) = (region(1), region(2), region(3));
    for k in 0..5 {
        let rid = format!("dup-{k}");
        let (a, b) = tokio::join!(alloc(&r1, req(&rid, 1)), alloc(&r2, req(&rid, 1)));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.machines[0].system_id, b.machines[0].system_id, "{rid}");
        assert_eq!(
            [a.replayed, b.replayed].iter().filter(|r| **r).count(),
            1,
            "{rid}: exactly one of the two calls is the replay"
        );
        let c3 = alloc(&r3, req(&rid, 1)).await.unwrap();
        assert!(c3.replayed);
        assert_eq!(c3.machines[0].system_id, a.machines[0].system_id);
    }
    assert_eq!(count_status(&admin, S::Allocated).await, 5);
    assert_eq!(alloc_event_count(&admin).await, 5);
    release_all(&admin).await;

    // Consumer and provider id: recorded, looked up, unique while held.
    let got = alloc(
        &carol,
        AllocateRequest {
            consumer: "capi-m1".into(),
            ..req("cons-1", 1)
        },
    )
    .await
    .unwrap();
    let m = &got.machines[0];
    let pid = format!("ingot:///{}/{}", m.zone, m.system_id);
    assert_eq!(m.provider_id, pid);
    for key in [
        get_machine_request::Key::Consumer("capi-m1".into()),
        get_machine_request::Key::ProviderId(pid.clone()),
    ] {
        let found = carol
            .machines()
            .get_machine(GetMachineRequest {
                key: Some(key.clone()),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{key:?}: {e}"))
            .into_inner();
        assert_eq!(found.system_id, m.system_id, "{key:?}");
    }
    let e = alloc(
        &carol,
        AllocateRequest {
            consumer: "capi-m1".into(),
            ..req("cons-2", 1)
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert!(e.message().contains("capi-m1"), "{e:?}");
    let grp = alloc(
        &carol,
        AllocateRequest {
            consumer: "grp".into(),
            ..req("cons-3", 2)
        },
    )
    .await
    .unwrap();
    let consumers: BTreeSet<&str> = grp.machines.iter().map(|m| m.consumer.as_str()).collect();
    assert_eq!(consumers, BTreeSet::from(["grp-0", "grp-1"]));
    // Release by consumer reference, then the consumer finds nothing.
    carol
        .machines()
        .release(ReleaseRequest {
            machine: Some(MachineRef {
                key: Some(machine_ref::Key::Consumer("capi-m1".into())),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    settle(&admin).await;
    let e = carol
        .machines()
        .get_machine(GetMachineRequest {
            key: Some(get_machine_request::Key::Consumer("capi-m1".into())),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = carol
        .machines()
        .get_machine(GetMachineRequest {
            key: Some(get_machine_request::Key::ProviderId(pid.clone())),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    release_all(&admin).await;

    // EVEN over 3 zones, 6 machines: 2 per zone. MIN_ZONES 3: three zones.
    let even = alloc(
        &carol,
        AllocateRequest {
            spread: SpreadPolicy::Even as i32,
            ..req("even-6", 6)
        },
    )
    .await
    .unwrap();
    assert_eq!(
        per_zone(&even.machines),
        ZONES.iter().map(|z| (z.to_string(), 2)).collect()
    );
    let mz = alloc(
        &carol,
        AllocateRequest {
            spread: SpreadPolicy::MinZones as i32,
            min_zones: 3,
            ..req("minz-3", 3)
        },
    )
    .await
    .unwrap();
    assert_eq!(
        per_zone(&mz.machines).len(),
        3,
        "{:?}",
        per_zone(&mz.machines)
    );
    let mz4 = alloc(
        &carol,
        AllocateRequest {
            spread: SpreadPolicy::MinZones as i32,
            min_zones: 2,
            ..req("minz-2-of-4", 4)
        },
    )
    .await
    .unwrap();
    assert!(per_zone(&mz4.machines).len() >= 2);
    for m in even
        .machines
        .iter()
        .chain(&mz.machines)
        .chain(&mz4.machines)
    {
        assert!(violates(&Constraints::default(), m, &known[&m.system_id]).is_none());
    }
    let before = count_status(&admin, S::Allocated).await;
    assert_eq!(before, 13);
    // Three zones asked where the constraints allow two: refused, nothing claimed.
    let e = alloc(
        &carol,
        AllocateRequest {
            spread: SpreadPolicy::MinZones as i32,
            min_zones: 3,
            constraints: Some(Constraints {
                zones: vec!["z1".into(), "z2".into()],
                ..Default::default()
            }),
            ..req("minz-impossible", 3)
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e.code(), Code::FailedPrecondition | Code::ResourceExhausted),
        "{e:?}"
    );
    assert_eq!(count_status(&admin, S::Allocated).await, before);

    // All or nothing: one more than is Ready fails and claims none.
    let ready = count_status(&admin, S::Ready).await;
    assert_eq!(ready, 5);
    let events_before = alloc_event_count(&admin).await;
    let e = alloc(&carol, req("too-many", ready as u32 + 1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message()
            .contains(&format!("{} machine(s) asked", ready + 1)),
        "{e:?}"
    );
    assert_eq!(count_status(&admin, S::Ready).await, ready);
    assert_eq!(alloc_event_count(&admin).await, events_before);
    // A constraint nothing meets: the diagnosis says why.
    let e = alloc(
        &carol,
        AllocateRequest {
            constraints: Some(Constraints {
                min_memory_mib: 1 << 30,
                ..Default::default()
            }),
            ..req("too-big", 1)
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("most common miss"), "{e:?}");
    // The failed request id can be used again once capacity exists: nothing was recorded for it.
    let ok = alloc(&carol, req("too-many", ready as u32)).await.unwrap();
    assert!(!ok.replayed);
    assert_eq!(ok.machines.len(), ready);
    release_all(&admin).await;

    // Dry run: finds, claims nothing, records nothing.
    let events_before = alloc_event_count(&admin).await;
    let dry = alloc(
        &carol,
        AllocateRequest {
            dry_run: true,
            spread: SpreadPolicy::Even as i32,
            constraints: Some(Constraints {
                min_cpu_count: 16,
                ..Default::default()
            }),
            ..req("dry-1", 3)
        },
    )
    .await
    .unwrap();
    assert_eq!(dry.machines.len(), 3);
    assert!(!dry.replayed);
    for m in &dry.machines {
        assert_eq!(m.status(), S::Ready);
        assert!(m.owner.is_empty());
        assert!(m.cpu_count >= 16);
    }
    assert_eq!(count_status(&admin, S::Allocated).await, 0);
    assert_eq!(alloc_event_count(&admin).await, events_before);
    let real = alloc(&carol, req("dry-1", 1)).await.unwrap();
    assert!(!real.replayed, "a dry run must not record its request id");

    // Invalid requests.
    for (r, field) in [
        (req("", 1), "request_id"),
        (req("bad-count", 1001), "count"),
        (
            AllocateRequest {
                spread: SpreadPolicy::MinZones as i32,
                min_zones: 0,
                ..req("bad-minz", 2)
            },
            "min_zones",
        ),
        (
            AllocateRequest {
                constraints: Some(Constraints {
                    storage: "root:lots".into(),
                    ..Default::default()
                }),
                ..req("bad-storage", 1)
            },
            "storage",
        ),
    ] {
        let e = alloc(&carol, r).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
        assert!(e.message().contains(field), "{field}: {e:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replayed_request_id_never_returns_another_users_machine() {
    let tc = TestCluster::start("t16-replay-owner", 3, &[])
        .await
        .unwrap();
    let admin = tc.clients();
    fleet(&admin, 18, 3).await;
    let carol = user_clients(&admin, "carol").await.unwrap();
    // A request id replayed after its machines went back to the pool and on to another user must not
    // hand that user's machine to the caller (or show it: users do not see other users' machines).
    let first = alloc(&carol, req("replay-after-release", 1)).await.unwrap();
    let taken = first.machines[0].system_id.clone();
    release_all(&admin).await;
    let dave = user_clients(&admin, "dave").await.unwrap();
    let d = alloc(
        &dave,
        AllocateRequest {
            constraints: Some(Constraints {
                system_id: taken.clone(),
                ..Default::default()
            }),
            ..req("dave-1", 1)
        },
    )
    .await
    .unwrap();
    assert_eq!(d.machines[0].owner, "dave");
    let again = alloc(&carol, req("replay-after-release", 1)).await;
    if let Ok(r) = &again {
        for m in &r.machines {
            assert_ne!(
                m.owner, "dave",
                "replaying carol's old request id returned dave's machine {} (replayed={}): {m:?}",
                m.system_id, r.replayed
            );
        }
    }
}
