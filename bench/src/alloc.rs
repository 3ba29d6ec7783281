//! `ingot-bench --alloc`: the allocation-scale figures. On a fresh local cluster it enlists and commissions a
//! fleet through the API (create, commission, boot credentials, inventory, result), then measures:
//! (a) allocation throughput and latency with many concurrent clients, verified afterwards to contain no
//!     double allocation;
//! (b) listing the whole fleet in one page;
//! (c) a list filtered by status and zone;
//! (d) watch fan-out: many watchers, paced writes, delivery latency from each write's send time to each
//!     watcher's receipt.
//!
//! Every loop is bounded by a count and a deadline.

use crate::{ms, pct};
use anyhow::{bail, Context, Result};
use ingot_client::Clients;
use ingot_launch::LocalCluster;
use ingot_proto::v1::{
    machine_ref, watch_response, AllocateRequest, CommissionRequest, Constraints,
    CreateMachineRequest, CreateTagRequest, CreateTokenRequest, CreateUserRequest,
    CreateZoneRequest, Disk, GetBootCredentialsRequest, Inventory, ListMachinesRequest,
    MachineFilter, MachineRef, MachineStatus, MachineView, Nic, ReadConsistency,
    ReportInventoryRequest, ReportResultRequest, Role, TagMachineRequest, WatchRequest,
};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Settings of the allocation benchmark (from the command line).
#[derive(Clone, Debug)]
pub struct AllocOpts {
    /// Machines to enlist and commission.
    pub machines: u64,
    /// Zones the machines are spread over (round robin).
    pub zones: usize,
    /// Concurrent requests while enlisting and commissioning.
    pub setup_concurrency: usize,
    /// Allocations to make (one machine each).
    pub allocations: u64,
    /// Concurrent allocating clients.
    pub clients: usize,
    /// Separate HTTP/2 connections the clients share.
    pub conns: usize,
    /// Runs of the full list.
    pub list_runs: usize,
    /// Runs of the filtered list.
    pub filtered_runs: usize,
    /// Concurrent watchers.
    pub watchers: usize,
    /// Writes observed by the watchers.
    pub watch_writes: usize,
    /// Pace of those writes (per second).
    pub watch_rate: u64,
    /// Bound on each phase.
    pub max_seconds: u64,
}

/// Latency percentiles of one measured operation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Lat {
    /// Samples.
    pub n: usize,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest.
    pub max: Duration,
}

impl Lat {
    fn of(mut v: Vec<Duration>) -> Lat {
        v.sort();
        Lat {
            n: v.len(),
            p50: pct(&v, 0.50),
            p99: pct(&v, 0.99),
            max: v.last().copied().unwrap_or_default(),
        }
    }
}

fn zone_name(z: usize) -> String {
    format!("bz{}", z + 1)
}

fn bench_mac(n: u64) -> String {
    let b = n.to_be_bytes();
    format!(
        "0e:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[3], b[4], b[5], b[6], b[7]
    )
}

/// Two hardware tiers per zone, so allocation has a cheapest group to drain first.
fn bench_inventory(n: u64) -> Inventory {
    let big = (n / 4) % 2 == 1;
    Inventory {
        cpu_count: if big { 64 } else { 16 },
        cpu_model: "Bench CPU".into(),
        memory_mib: if big { 262_144 } else { 65_536 },
        disks: vec![Disk {
            name: "nvme0n1".into(),
            size_gib: if big { 3840 } else { 960 },
            rotational: false,
            ..Default::default()
        }],
        nics: vec![Nic {
            name: "eno1".into(),
            mac: bench_mac(n),
            speed_mbps: 25_000,
            link: true,
        }],
        ..Default::default()
    }
}

/// Enlists and commissions machine `n` to Ready: 2 admin writes, 1 read and 2 agent writes.
async fn make_ready(c: &Clients, n: u64, zones: usize) -> Result<String> {
    let m = c
        .machines()
        .create_machine(CreateMachineRequest {
            macs: vec![bench_mac(n)],
            zone: zone_name((n % zones as u64) as usize),
            power: Some(ingot_proto::v1::PowerParameters {
                driver: "manual".into(),
                params: Default::default(),
            }),
            ..Default::default()
        })
        .await
        .context("create")?
        .into_inner();
    let id = m.system_id;
    let r = || MachineRef {
        key: Some(machine_ref::Key::SystemId(id.clone())),
    };
    c.machines()
        .commission(CommissionRequest {
            machine: Some(r()),
            ..Default::default()
        })
        .await
        .context("commission")?;
    let token = c
        .machines()
        .get_boot_credentials(GetBootCredentialsRequest { machine: Some(r()) })
        .await
        .context("boot credentials")?
        .into_inner()
        .token;
    c.agent()
        .report_inventory(ReportInventoryRequest {
            system_id: id.clone(),
            boot_token: token.clone(),
            inventory: Some(bench_inventory(n)),
        })
        .await
        .context("inventory")?;
    let res = c
        .agent()
        .report_result(ReportResultRequest {
            system_id: id.clone(),
            boot_token: token,
            success: true,
            reason: String::new(),
        })
        .await
        .context("result")?
        .into_inner();
    if res.status != MachineStatus::Ready as i32 {
        bail!("machine {id} is {:?} after commissioning", res.status());
    }
    Ok(id)
}

/// Runs `total` jobs `f(clients, n)` on `workers` tasks over `conns`, bounded by `limit`. Returns the
/// per-job latencies of successes, the results, the error count and the wall time.
async fn run_jobs<T, F, Fut>(
    conns: &[Clients],
    workers: usize,
    total: u64,
    limit: Duration,
    f: F,
) -> (Vec<Duration>, Vec<T>, u64, Duration, Option<String>)
where
    T: Send + 'static,
    F: Fn(Clients, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<T>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let deadline = Instant::now() + limit;
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers.max(1) {
        let c = conns[w % conns.len()].clone();
        let (next, errors, first_error, f) =
            (next.clone(), errors.clone(), first_error.clone(), f.clone());
        tasks.spawn(async move {
            let mut lat = Vec::new();
            let mut out = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total || Instant::now() > deadline {
                    break;
                }
                let s = Instant::now();
                match f(c.clone(), n).await {
                    Ok(v) => {
                        lat.push(s.elapsed());
                        out.push(v);
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        let mut fe = first_error.lock().unwrap_or_else(|p| p.into_inner());
                        if fe.is_none() {
                            *fe = Some(format!("{e:#}"));
                        }
                    }
                }
            }
            (lat, out)
        });
    }
    let mut lat = Vec::new();
    let mut out = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok((l, o)) = r {
            lat.extend(l);
            out.extend(o);
        }
    }
    let fe = first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    (lat, out, errors.load(Ordering::Relaxed), t0.elapsed(), fe)
}

/// Every machine matching `filter`, paged by `page_size`, read as `c`.
async fn list_ids(c: &Clients, filter: MachineFilter) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut token = String::new();
    for _ in 0..1000 {
        let r = c
            .machines()
            .list_machines(ListMachinesRequest {
                filter: Some(filter.clone()),
                page_size: 10_000,
                page_token: token.clone(),
                view: MachineView::Basic as i32,
                ..Default::default()
            })
            .await?
            .into_inner();
        out.extend(r.machines.into_iter().map(|m| (m.system_id, m.owner)));
        if r.next_page_token.is_empty() {
            return Ok(out);
        }
        token = r.next_page_token;
    }
    bail!("more than 1000 pages")
}

/// Results of the allocation benchmark.
#[derive(Debug, Default)]
pub struct AllocFigures {
    /// Fleet setup wall time.
    pub setup: Duration,
    /// Machines made Ready.
    pub ready: u64,
    /// Allocations that succeeded.
    pub allocated: u64,
    /// Allocation errors.
    pub alloc_errors: u64,
    /// Allocations per second.
    pub alloc_per_s: f64,
    /// Allocation latency.
    pub alloc_lat: Lat,
    /// System ids returned twice, plus mismatches between the returned set and the owner's machines.
    pub double_allocations: u64,
    /// Full list latency (and machines per page).
    pub list_all: Lat,
    /// Machines in the full list.
    pub list_all_len: usize,
    /// Filtered list latency.
    pub filtered: Lat,
    /// Machines in one filtered page, and matching in all.
    pub filtered_len: (usize, u64),
    /// Watch delivery latency over all deliveries.
    pub watch: Lat,
    /// Deliveries expected (watchers x writes) and missing.
    pub watch_expected: u64,
    /// Deliveries that never arrived.
    pub watch_missing: u64,
}

/// Runs the allocation benchmark against `cluster`.
pub async fn run(cluster: &LocalCluster, o: &AllocOpts) -> Result<AllocFigures> {
    let mut fig = AllocFigures::default();
    let limit = Duration::from_secs(o.max_seconds);
    let admin_conns: Vec<Clients> = (0..o.conns.max(1))
        .map(|_| cluster.connect())
        .collect::<Result<_>>()?;
    let admin = admin_conns[0].clone();
    for z in 0..o.zones {
        admin
            .zones()
            .create_zone(CreateZoneRequest {
                name: zone_name(z),
                description: "bench".into(),
            })
            .await?;
    }

    // Setup: the fleet, through the API.
    eprintln!(
        "== setup: {} machines in {} zones (create, commission, boot credentials, inventory, result; {} at a time)",
        o.machines, o.zones, o.setup_concurrency
    );
    let zones = o.zones;
    let (_, ids, errors, took, first) = run_jobs(
        &admin_conns,
        o.setup_concurrency,
        o.machines,
        limit.max(Duration::from_secs(600)),
        move |c, n| async move { make_ready(&c, n, zones).await },
    )
    .await;
    fig.setup = took;
    fig.ready = ids.len() as u64;
    eprintln!(
        "   {} Ready in {:.1} s ({:.0} machines/s, {} errors{})",
        ids.len(),
        took.as_secs_f64(),
        ids.len() as f64 / took.as_secs_f64(),
        errors,
        first.map(|e| format!("; first: {e}")).unwrap_or_default()
    );
    if fig.ready == 0 {
        bail!("no machine became Ready");
    }

    // A user to allocate as, so the owner index can be checked afterwards.
    admin
        .users()
        .create_user(CreateUserRequest {
            name: "bench".into(),
            role: Role::User as i32,
        })
        .await?;
    let secret = admin
        .users()
        .create_token(CreateTokenRequest {
            user: "bench".into(),
            description: "ingot-bench".into(),
            ttl_seconds: 0,
        })
        .await?
        .into_inner()
        .secret;
    // Every region must know the token (tokens are checked against local state): a linearizable read on
    // each region applies everything up to now.
    for r in cluster.regions() {
        let c = cluster.connect_to(r.index)?;
        c.machines()
            .list_machines(ListMachinesRequest {
                page_size: 1,
                ..Default::default()
            })
            .await?;
    }
    let user_conns: Vec<Clients> = admin_conns
        .iter()
        .map(|c| c.with_token(&secret))
        .collect::<Result<_, _>>()?;

    // (a) Allocation throughput.
    let n_alloc = o.allocations.min(fig.ready);
    eprintln!(
        "== (a) allocate: {n_alloc} single-machine allocations with a zone constraint, {} clients over {} connections",
        o.clients, o.conns
    );
    let (lat, got, errors, took, first) = run_jobs(
        &user_conns,
        o.clients,
        n_alloc,
        limit,
        move |c, n| async move {
            let r = c
                .machines()
                .allocate(AllocateRequest {
                    request_id: format!("bench-{n}"),
                    constraints: Some(Constraints {
                        zones: vec![zone_name((n % zones as u64) as usize)],
                        ..Default::default()
                    }),
                    count: 1,
                    ..Default::default()
                })
                .await?
                .into_inner();
            if r.machines.len() != 1 || r.replayed {
                bail!(
                    "unexpected answer: {} machines, replayed {}",
                    r.machines.len(),
                    r.replayed
                );
            }
            Ok(r.machines
                .into_iter()
                .next()
                .map(|m| (m.system_id, m.zone, n)))
        },
    )
    .await;
    fig.allocated = got.len() as u64;
    fig.alloc_errors = errors;
    fig.alloc_per_s = got.len() as f64 / took.as_secs_f64();
    fig.alloc_lat = Lat::of(lat);
    if let Some(e) = first {
        eprintln!("   first allocation error: {e}");
    }
    let mut unique = HashSet::new();
    let mut doubles = 0u64;
    for (id, zone, n) in got.iter().flatten() {
        if !unique.insert(id.clone()) {
            doubles += 1;
        }
        if *zone != zone_name((*n % zones as u64) as usize) {
            eprintln!("   allocation {n} got {id} in the wrong zone {zone}");
            doubles += 1;
        }
    }
    let owned = list_ids(
        &admin,
        MachineFilter {
            owner: "bench".into(),
            ..Default::default()
        },
    )
    .await?;
    let owned_set: HashSet<String> = owned.iter().map(|(id, _)| id.clone()).collect();
    if owned.len() != unique.len() || owned_set != unique {
        eprintln!(
            "   owner index: {} machines owned by bench, {} distinct ids returned",
            owned.len(),
            unique.len()
        );
        doubles += owned_set.symmetric_difference(&unique).count() as u64;
    }
    fig.double_allocations = doubles;
    eprintln!(
        "   {} allocated in {:.2} s: {:.0}/s, p50 {:.1} ms p99 {:.1} ms; {} errors; {} double allocations",
        fig.allocated,
        took.as_secs_f64(),
        fig.alloc_per_s,
        ms(fig.alloc_lat.p50),
        ms(fig.alloc_lat.p99),
        errors,
        doubles
    );

    // (b) The whole fleet in one page.
    eprintln!(
        "== (b) list all: page_size 10000, BASIC, linearizable, {} runs",
        o.list_runs
    );
    let deadline = Instant::now() + limit;
    let mut lat = Vec::new();
    for _ in 0..o.list_runs {
        if Instant::now() > deadline {
            break;
        }
        let s = Instant::now();
        let r = admin
            .machines()
            .list_machines(ListMachinesRequest {
                page_size: 10_000,
                view: MachineView::Basic as i32,
                consistency: ReadConsistency::Linearizable as i32,
                ..Default::default()
            })
            .await?
            .into_inner();
        lat.push(s.elapsed());
        fig.list_all_len = r.machines.len();
    }
    fig.list_all = Lat::of(lat);

    // (c) Filtered by status and zone.
    eprintln!(
        "== (c) filtered list: status=allocated zone={} (default page size), linearizable, {} runs",
        zone_name(0),
        o.filtered_runs
    );
    let mut lat = Vec::new();
    for _ in 0..o.filtered_runs {
        if Instant::now() > deadline {
            break;
        }
        let s = Instant::now();
        let r = admin
            .machines()
            .list_machines(ListMachinesRequest {
                filter: Some(MachineFilter {
                    status: MachineStatus::Allocated as i32,
                    zone: zone_name(0),
                    ..Default::default()
                }),
                view: MachineView::Basic as i32,
                ..Default::default()
            })
            .await?
            .into_inner();
        lat.push(s.elapsed());
        fig.filtered_len = (r.machines.len(), r.total_size);
    }
    fig.filtered = Lat::of(lat);

    // (d) Watch fan-out.
    let (lat, expected, missing) = watch_fanout(cluster, &admin, o).await?;
    fig.watch = lat;
    fig.watch_expected = expected;
    fig.watch_missing = missing;
    Ok(fig)
}

/// 100 watchers (10 connections spread over the regions), then paced tag writes on distinct machines;
/// returns the delivery latency over every (watcher, write), the deliveries expected and those missing.
async fn watch_fanout(
    cluster: &LocalCluster,
    admin: &Clients,
    o: &AllocOpts,
) -> Result<(Lat, u64, u64)> {
    eprintln!(
        "== (d) watch fan-out: {} watchers, {} tag writes at {}/s on distinct machines",
        o.watchers, o.watch_writes, o.watch_rate
    );
    admin
        .tags()
        .create_tag(CreateTagRequest {
            name: "bench-watch".into(),
            ..Default::default()
        })
        .await?;
    let listed = admin
        .machines()
        .list_machines(ListMachinesRequest {
            filter: Some(MachineFilter {
                status: MachineStatus::Ready as i32,
                ..Default::default()
            }),
            page_size: o.watch_writes as u32,
            view: MachineView::Basic as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    let targets: Vec<String> = listed.machines.into_iter().map(|m| m.system_id).collect();
    if targets.len() < o.watch_writes {
        bail!(
            "only {} Ready machines for {} watch writes",
            targets.len(),
            o.watch_writes
        );
    }
    let from = listed.revision;
    let regions = cluster.regions().len();
    let conns: Vec<Clients> = (0..10.min(o.watchers.max(1)))
        .map(|i| cluster.connect_to(i % regions + 1))
        .collect::<Result<_>>()?;
    let writes = o.watch_writes;
    let mut streams = Vec::with_capacity(o.watchers);
    for w in 0..o.watchers {
        let s = conns[w % conns.len()]
            .machines()
            .watch(WatchRequest {
                from_revision: from,
                ..Default::default()
            })
            .await
            .with_context(|| format!("starting watcher {w}"))?
            .into_inner();
        streams.push(s);
    }
    // Pace: a write every 1/rate s; the writes' duration goes well past the bound if they stall.
    let limit = Duration::from_secs(o.max_seconds);
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let mut watchers = tokio::task::JoinSet::new();
    for mut s in streams {
        watchers.spawn(async move {
            let mut got: Vec<(String, Instant)> = Vec::with_capacity(writes);
            let deadline = Instant::now() + limit;
            while got.len() < writes {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, s.message()).await {
                    Ok(Ok(Some(r))) if r.kind() == watch_response::Kind::Put => {
                        if let Some(m) = r.machine {
                            if m.tags.iter().any(|t| t == "bench-watch") {
                                got.push((m.system_id, Instant::now()));
                            }
                        }
                    }
                    Ok(Ok(Some(_))) => {}
                    _ => break,
                }
            }
            got
        });
    }
    let every = Duration::from_secs_f64(1.0 / o.watch_rate.max(1) as f64);
    let mut tick = tokio::time::interval(every);
    let mut calls = tokio::task::JoinSet::new();
    let write_errors = Arc::new(AtomicU64::new(0));
    for id in targets.into_iter().take(writes) {
        tick.tick().await;
        let c = admin.clone();
        let (sent, write_errors) = (sent.clone(), write_errors.clone());
        calls.spawn(async move {
            sent.lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.clone(), Instant::now());
            let r = c
                .machines()
                .tag_machine(TagMachineRequest {
                    machine: Some(MachineRef {
                        key: Some(machine_ref::Key::SystemId(id)),
                    }),
                    tags: vec!["bench-watch".into()],
                })
                .await;
            if r.is_err() {
                write_errors.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while calls.join_next().await.is_some() {}
    let errors = write_errors.load(Ordering::Relaxed);
    let mut lat = Vec::with_capacity(o.watchers * writes);
    let mut delivered = 0u64;
    while let Some(r) = watchers.join_next().await {
        let got = r.unwrap_or_default();
        let sent = sent.lock().unwrap_or_else(|p| p.into_inner());
        for (id, at) in got {
            if let Some(s) = sent.get(&id) {
                lat.push(at.saturating_duration_since(*s));
                delivered += 1;
            }
        }
    }
    let expected = (o.watchers * (writes - errors as usize)) as u64;
    if errors > 0 {
        eprintln!("   {errors} tag writes failed");
    }
    Ok((Lat::of(lat), expected, expected.saturating_sub(delivered)))
}

/// Prints the figures with the targets.
pub fn report(o: &AllocOpts, f: &AllocFigures, profile: &str, regions: usize) {
    let ok = |b: bool| if b { "PASS" } else { "FAIL" };
    println!();
    println!(
        "ingot-bench --alloc: {regions} regions on loopback, TLS, fsync on ({profile}); {} Ready machines in {} zones",
        f.ready, o.zones
    );
    println!(
        "  setup (create+commission+inventory+result through the API): {:.1} s ({:.0} machines/s)",
        f.setup.as_secs_f64(),
        f.ready as f64 / f.setup.as_secs_f64().max(1e-9)
    );
    println!(
        "  {:<44} {:>22} {:>26} {:>6}",
        "measure", "result", "target", ""
    );
    let alloc_ok = f.alloc_per_s >= 2000.0 && f.double_allocations == 0 && f.alloc_errors == 0;
    println!(
        "  {:<44} {:>22} {:>26} {:>6}",
        format!("(a) allocate, {} clients", o.clients),
        format!("{:.0}/s", f.alloc_per_s),
        ">= 2,000/s",
        ok(f.alloc_per_s >= 2000.0)
    );
    println!(
        "  {:<44} {:>22} {:>26} {:>6}",
        "    double allocations / errors",
        format!("{} / {}", f.double_allocations, f.alloc_errors),
        "0",
        ok(f.double_allocations == 0)
    );
    println!(
        "  {:<44} {:>22} {:>26}",
        "    latency p50 / p99 / max",
        format!(
            "{:.1} / {:.1} / {:.1} ms",
            ms(f.alloc_lat.p50),
            ms(f.alloc_lat.p99),
            ms(f.alloc_lat.max)
        ),
        ""
    );
    println!(
        "  {:<44} {:>22} {:>26} {:>6}",
        format!("(b) list all {} (BASIC, linearizable)", f.list_all_len),
        format!(
            "p50 {:.1} p99 {:.1} ms",
            ms(f.list_all.p50),
            ms(f.list_all.p99)
        ),
        "p99 < 50 ms",
        ok(f.list_all.p99 < Duration::from_millis(50))
    );
    println!(
        "  {:<44} {:>22} {:>26} {:>6}",
        format!(
            "(c) filtered status+zone ({} of {})",
            f.filtered_len.0, f.filtered_len.1
        ),
        format!(
            "p50 {:.2} p99 {:.2} ms",
            ms(f.filtered.p50),
            ms(f.filtered.p99)
        ),
        "p99 < 5 ms",
        ok(f.filtered.p99 < Duration::from_millis(5))
    );
    println!(
        "  {:<44} {:>22} {:>26} {:>6}",
        format!(
            "(d) watch delivery, {} watchers x {} writes",
            o.watchers, o.watch_writes
        ),
        format!("p50 {:.1} p99 {:.1} ms", ms(f.watch.p50), ms(f.watch.p99)),
        "p99 < 100 ms",
        ok(f.watch.p99 < Duration::from_millis(100) && f.watch_missing == 0)
    );
    println!(
        "  {:<44} {:>22}",
        "    deliveries (missing), max latency",
        format!(
            "{} ({}), {:.1} ms",
            f.watch.n,
            f.watch_missing,
            ms(f.watch.max)
        )
    );
    println!("INGOT_SETUP_S={:.1}", f.setup.as_secs_f64());
    println!("INGOT_ALLOC_PER_S={:.0}", f.alloc_per_s);
    println!("INGOT_ALLOC_P99_MS={:.1}", ms(f.alloc_lat.p99));
    println!("INGOT_DOUBLE_ALLOCATIONS={}", f.double_allocations);
    println!("INGOT_LIST_ALL_P99_MS={:.1}", ms(f.list_all.p99));
    println!("INGOT_LIST_FILTERED_P99_MS={:.2}", ms(f.filtered.p99));
    println!("INGOT_WATCH_P99_MS={:.1}", ms(f.watch.p99));
    println!("INGOT_ALLOC_TARGETS={}", ok(alloc_ok));
}
