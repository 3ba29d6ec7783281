//! The nemesis run's clients and what they were told: the setup of the world they act in ([`World`]),
//! the admin writer and the tenants ([`spawn`]), and the [`Record`] of every acknowledged operation that
//! the checks compare with the cluster's state at the end. A write counts as acknowledged only when its
//! RPC returned OK; a failed or timed-out one may or may not have happened, and the checks allow both.

use super::{NemesisOptions, OpKind, RunLog, RACKS};
use crate::LocalCluster;
use anyhow::{anyhow, bail, Context, Result};
use ingot_client::{retry_unavailable, Clients};
use ingot_proto::v1::{
    get_machine_request, machine_ref, AllocateRequest, CommissionRequest, Constraints,
    CreateMachineRequest, CreateTagRequest, CreateTokenRequest, CreateUserRequest, DeployRequest,
    GetMachineRequest, Machine, MachineActionRequest, MachineRef, MachineStatus, PowerRequest,
    ReleaseRequest, Role, TagMachineRequest, UpdateMachineRequest, WhoAmIRequest,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Longest a single client call may take before it counts as not acknowledged.
pub(crate) const CALL: Duration = Duration::from_secs(10);
/// Steps per client task at most (each step also waits at least a few ms).
const MAX_STEPS: u64 = 1_000_000;
/// A tenant aborts a deployment that has not finished after this long.
const DEPLOY_PATIENCE: Duration = Duration::from_secs(25);
/// A tenant gives a machine up (and allocates another) after holding it this long.
const HOLD_MAX: Duration = Duration::from_secs(120);
/// Power commands a tenant sends to each deployed machine before releasing it, at most.
const POWERS_PER_DEPLOY: u32 = 3;
/// The manual tags the writer sets.
const TAGS: [&str; 4] = ["nem-a", "nem-b", "nem-c", "nem-d"];
/// The power actions tenants send, `cycle` (the one that is not idempotent) twice as often.
const POWER_ACTIONS: [&str; 5] = ["cycle", "cycle", "on", "off", "query"];

/// One tenant: a user with role USER and clients acting as it.
#[derive(Clone)]
pub(crate) struct Tenant {
    /// User name (the owner of what it allocates).
    pub(crate) name: String,
    /// Clients with the tenant's token, over every region's API proxy.
    pub(crate) clients: Clients,
}

/// A simulated machine as enlisted.
#[derive(Clone, Debug)]
pub(crate) struct SimRef {
    /// Its host name (the simulator's key).
    pub(crate) hostname: String,
    /// Ingot's system id.
    pub(crate) system_id: String,
}

/// What the clients act in, set up before the chaos.
pub(crate) struct World {
    /// Admin clients over every region's API proxy.
    pub(crate) admin: Clients,
    /// The tenants.
    pub(crate) tenants: Vec<Tenant>,
    /// The simulated machines, all Ready after setup.
    pub(crate) sims: Vec<SimRef>,
    /// The simulator's control API.
    pub(crate) control_url: String,
}

/// Runs `f` until it returns OK or `within` passes (retrying UNAVAILABLE and timeouts only).
async fn setup_call<T, F, Fut>(what: &str, within: Duration, f: F) -> Result<T>
where
    F: Fn() -> Fut,
    Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
{
    retry_unavailable(f, within)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| anyhow!("{what}: {} ({:?})", s.message(), s.code()))
}

/// A machine reference by system id.
pub(crate) fn by_id(system_id: &str) -> Option<MachineRef> {
    Some(MachineRef {
        key: Some(machine_ref::Key::SystemId(system_id.to_string())),
    })
}

/// GetMachine by system id (FULL view, linearizable), bounded by [`CALL`].
pub(crate) async fn get_machine(c: &Clients, system_id: &str) -> Result<Machine> {
    let req = GetMachineRequest {
        key: Some(get_machine_request::Key::SystemId(system_id.to_string())),
        ..Default::default()
    };
    match tokio::time::timeout(CALL, c.machines().get_machine(req)).await {
        Ok(Ok(m)) => Ok(m.into_inner()),
        Ok(Err(s)) => bail!("get machine {system_id}: {} ({:?})", s.message(), s.code()),
        Err(_) => bail!("get machine {system_id}: no answer within {CALL:?}"),
    }
}

impl World {
    /// Adds the racks, starts and enlists the simulated machines, commissions them to Ready, creates the
    /// tags and the tenants.
    pub(crate) async fn prepare(
        cluster: &LocalCluster,
        opts: &NemesisOptions,
        log: &RunLog,
    ) -> Result<World> {
        let admin = cluster.connect()?;
        for (name, zone) in RACKS {
            cluster.add_rack(name, zone).await?;
        }
        log.line("racks ra (za) and rb (zb) connected");
        let zones: Vec<String> = RACKS.iter().map(|(_, z)| z.to_string()).collect();
        let sim = cluster
            .start_sims(
                opts.machines,
                &zones,
                &[
                    "--boot-delay-ms=100".to_string(),
                    "--no-ipmi".to_string(),
                    format!("--seed={}", opts.seed % 1_000_000),
                ],
            )
            .await?;
        cluster.enlist_sims(&admin, &sim).await?;
        let mut sims = Vec::new();
        for m in &sim.machines {
            let req = GetMachineRequest {
                key: Some(get_machine_request::Key::Hostname(m.hostname.clone())),
                ..Default::default()
            };
            let got = setup_call("reading an enlisted machine", CALL, || {
                let mut c = admin.machines();
                let req = req.clone();
                async move { c.get_machine(req).await }
            })
            .await?;
            sims.push(SimRef {
                hostname: m.hostname.clone(),
                system_id: got.system_id,
            });
        }
        for s in &sims {
            let req = CommissionRequest {
                machine: by_id(&s.system_id),
                ..Default::default()
            };
            setup_call(&format!("commissioning {}", s.hostname), CALL, || {
                let mut c = admin.machines();
                let req = req.clone();
                async move { c.commission(req).await }
            })
            .await?;
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        for s in &sims {
            loop {
                let m = get_machine(&admin, &s.system_id).await;
                if let Ok(m) = &m {
                    if m.status == MachineStatus::Ready as i32 {
                        break;
                    }
                }
                if Instant::now() > deadline {
                    bail!(
                        "simulated machine {} not Ready 90 s after commissioning: {:?}",
                        s.hostname,
                        m.map(|m| (m.status(), m.status_message))
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        log.line("simulated machines commissioned to Ready");
        for t in TAGS {
            let req = CreateTagRequest {
                name: t.to_string(),
                definition: String::new(),
                comment: "nemesis".into(),
            };
            setup_call(&format!("creating tag {t}"), CALL, || {
                let mut c = admin.tags();
                let req = req.clone();
                async move { c.create_tag(req).await }
            })
            .await?;
        }
        let mut tenants = Vec::new();
        for k in 1..=opts.tenants {
            tenants.push(tenant(&admin, &format!("tenant-{k}")).await?);
        }
        Ok(World {
            admin,
            tenants,
            sims,
            control_url: sim.control_url,
        })
    }
}

/// Creates user `name` (role USER) with a token; returns once every region accepts the token.
async fn tenant(admin: &Clients, name: &str) -> Result<Tenant> {
    let req = CreateUserRequest {
        name: name.to_string(),
        role: Role::User as i32,
    };
    setup_call(&format!("creating user {name}"), CALL, || {
        let mut c = admin.users();
        let req = req.clone();
        async move { c.create_user(req).await }
    })
    .await?;
    let req = CreateTokenRequest {
        user: name.to_string(),
        description: "nemesis tenant".into(),
        ttl_seconds: 0,
    };
    let secret = setup_call(&format!("creating a token for {name}"), CALL, || {
        let mut c = admin.users();
        let req = req.clone();
        async move { c.create_token(req).await }
    })
    .await?
    .secret;
    let clients = admin.with_token(&secret)?;
    for ep in &clients.config().endpoints {
        let one = clients.channel_to(ep)?;
        let t0 = Instant::now();
        loop {
            match one.users().who_am_i(WhoAmIRequest {}).await {
                Ok(_) => break,
                Err(e) if t0.elapsed() > Duration::from_secs(10) => {
                    bail!("{ep} still refuses the token of {name} after 10 s: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
    Ok(Tenant {
        name: name.to_string(),
        clients,
    })
}

/// A machine the writer created (acknowledged).
#[derive(Clone, Debug)]
pub(crate) struct Created {
    /// Its system id, from the answer.
    pub(crate) system_id: String,
    /// The host name asked for.
    pub(crate) hostname: String,
    /// The MAC asked for.
    pub(crate) mac: String,
}

/// Description versions of one created machine: the writer sets `v<N>`, N increasing.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Versions {
    /// The highest version acknowledged (0: none).
    pub(crate) acked: u64,
    /// The highest version sent (acknowledged or not).
    pub(crate) sent: u64,
}

/// An acknowledged allocation.
#[derive(Clone, Debug)]
pub(crate) struct Allocation {
    /// Index of the tenant in [`World::tenants`].
    pub(crate) tenant: usize,
    /// The request id (idempotency key).
    pub(crate) request_id: String,
    /// The machine it got.
    pub(crate) system_id: String,
}

/// An acknowledged lifecycle action of a tenant (deploy, abort, release): each must have left an event.
#[derive(Clone, Debug)]
pub(crate) struct ActionAck {
    /// Which.
    pub(crate) kind: OpKind,
    /// Who (the event's actor).
    pub(crate) tenant: String,
    /// On what.
    pub(crate) system_id: String,
}

/// An acknowledged power command.
#[derive(Clone, Debug)]
pub(crate) struct PowerAck {
    /// The command id the region returned.
    pub(crate) id: u64,
    /// The machine.
    pub(crate) system_id: String,
    /// The action asked for.
    pub(crate) action: String,
}

/// What the clients were told, filled in while they run.
#[derive(Default)]
pub(crate) struct Record {
    inner: Mutex<RecordData>,
}

/// The data of a [`Record`].
#[derive(Default)]
pub(crate) struct RecordData {
    acked: BTreeMap<OpKind, u64>,
    unacked: BTreeMap<OpKind, u64>,
    /// Machines created.
    pub(crate) created: Vec<Created>,
    /// Description versions by system id.
    pub(crate) descriptions: BTreeMap<String, Versions>,
    /// (system id, tag) pairs set.
    pub(crate) tags: Vec<(String, String)>,
    /// Allocations.
    pub(crate) allocations: Vec<Allocation>,
    /// Deploys, aborts and releases.
    pub(crate) actions: Vec<ActionAck>,
    /// Power commands.
    pub(crate) powers: Vec<PowerAck>,
    /// Failed calls by operation: count and latest error.
    errors: BTreeMap<String, (u64, String)>,
}

impl Record {
    /// The data, locked.
    pub(crate) fn data(&self) -> MutexGuard<'_, RecordData> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, kind: OpKind, acked: bool) {
        let mut d = self.data();
        let map = if acked { &mut d.acked } else { &mut d.unacked };
        *map.entry(kind).or_default() += 1;
    }

    /// Remembers the latest error of `what` (an operation kind, or `get` for the tenants' reads).
    pub(crate) fn note_error(&self, what: &str, error: String) {
        let mut d = self.data();
        let e = d.errors.entry(what.to_string()).or_default();
        e.0 += 1;
        e.1 = error;
    }

    /// Failed calls by operation: how many, and the latest error.
    pub(crate) fn errors(&self) -> BTreeMap<String, (u64, String)> {
        self.data().errors.clone()
    }

    /// Acknowledged operations by kind.
    pub(crate) fn acked(&self) -> BTreeMap<OpKind, u64> {
        self.data().acked.clone()
    }

    /// Operations not acknowledged, by kind.
    pub(crate) fn unacked(&self) -> BTreeMap<OpKind, u64> {
        self.data().unacked.clone()
    }
}

/// Runs `call` bounded by [`CALL`], counting it as acknowledged or not under `kind`.
async fn counted<T>(
    record: &Record,
    kind: OpKind,
    call: impl Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
) -> Option<T> {
    let r = match tokio::time::timeout(CALL, call).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
        Err(_) => Err(format!("no answer within {CALL:?}")),
    };
    record.count(kind, r.is_ok());
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            record.note_error(kind.as_str(), e);
            None
        }
    }
}

/// Starts the writer and one task per tenant; they run until `stop` is set.
pub(crate) fn spawn(
    world: &World,
    seed: u64,
    record: &Arc<Record>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let (admin, rec, st) = (world.admin.clone(), record.clone(), stop.clone());
    tasks.push(tokio::spawn(
        async move { writer(admin, seed, rec, st).await },
    ));
    for (k, t) in world.tenants.iter().enumerate() {
        let (t, rec, st) = (t.clone(), record.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            tenant_loop(t, k, seed, rec, st).await
        }));
    }
    tasks
}

/// The admin writer: creates plain machines (never commissioned), sets their descriptions to
/// increasing versions and tags them.
async fn writer(admin: Clients, seed: u64, record: Arc<Record>, stop: Arc<AtomicBool>) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5752_4954_4552);
    for k in 0..MAX_STEPS {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let ids: Vec<String> = record
            .data()
            .created
            .iter()
            .map(|c| c.system_id.clone())
            .collect();
        let pick = rng.gen_range(0..4u32);
        let target = (!ids.is_empty()).then(|| ids[rng.gen_range(0..ids.len())].clone());
        match (pick, target) {
            (0 | 1, _) | (_, None) => {
                let b = (k as u32).to_be_bytes();
                let mac = format!("0a:4e:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3]);
                let hostname = format!("nem-{k}");
                let req = CreateMachineRequest {
                    hostname: hostname.clone(),
                    macs: vec![mac.clone()],
                    ..Default::default()
                };
                if let Some(m) = counted(
                    &record,
                    OpKind::Create,
                    admin.machines().create_machine(req),
                )
                .await
                {
                    record.data().created.push(Created {
                        system_id: m.system_id,
                        hostname,
                        mac,
                    });
                }
            }
            (2, Some(id)) => {
                let version = {
                    let mut d = record.data();
                    let v = d.descriptions.entry(id.clone()).or_default();
                    v.sent += 1;
                    v.sent
                };
                let req = UpdateMachineRequest {
                    system_id: id.clone(),
                    description: Some(format!("v{version}")),
                    ..Default::default()
                };
                if counted(
                    &record,
                    OpKind::Describe,
                    admin.machines().update_machine(req),
                )
                .await
                .is_some()
                {
                    let mut d = record.data();
                    let v = d.descriptions.entry(id).or_default();
                    v.acked = v.acked.max(version);
                }
            }
            (_, Some(id)) => {
                let tag = TAGS[rng.gen_range(0..TAGS.len())].to_string();
                let req = TagMachineRequest {
                    machine: by_id(&id),
                    tags: vec![tag.clone()],
                };
                if counted(&record, OpKind::Tag, admin.machines().tag_machine(req))
                    .await
                    .is_some()
                {
                    record.data().tags.push((id, tag));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A machine a tenant holds.
struct Held {
    system_id: String,
    since: Instant,
    deploy_sent: Option<Instant>,
    release_sent: bool,
    powers_left: u32,
}

/// A tenant: allocates a Ready simulated machine, deploys it, sends it a few power commands, releases
/// it, and again; it reads the machine's status before each step, so a step whose answer was lost is
/// not repeated blindly.
async fn tenant_loop(t: Tenant, k: usize, seed: u64, record: Arc<Record>, stop: Arc<AtomicBool>) {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(0x7465_6e00 + k as u64));
    let m = t.clients.machines();
    let mut n = 0u64;
    let mut held: Option<Held> = None;
    for _ in 0..MAX_STEPS {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let Some(h) = held.as_mut() else {
            n += 1;
            let request_id = format!("{}-{n}", t.name);
            // Retried under the same request id (idempotent) while the answer is lost.
            let mut got = None;
            for _ in 0..3 {
                let req = AllocateRequest {
                    request_id: request_id.clone(),
                    constraints: Some(Constraints::default()),
                    count: 1,
                    ..Default::default()
                };
                let r = tokio::time::timeout(CALL, m.clone().allocate(req)).await;
                match r {
                    Ok(Ok(a)) => {
                        got = a.into_inner().machines.into_iter().next();
                        record.count(OpKind::Allocate, true);
                        break;
                    }
                    Ok(Err(s))
                        if matches!(
                            s.code(),
                            tonic::Code::ResourceExhausted
                                | tonic::Code::NotFound
                                | tonic::Code::FailedPrecondition
                        ) =>
                    {
                        record.count(OpKind::Allocate, false);
                        record.note_error("allocate", format!("{:?}: {}", s.code(), s.message()));
                        break;
                    }
                    other => {
                        record.count(OpKind::Allocate, false);
                        let e = match other {
                            Ok(Err(s)) => format!("{:?}: {}", s.code(), s.message()),
                            _ => format!("no answer within {CALL:?}"),
                        };
                        record.note_error("allocate", e);
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            }
            match got {
                Some(machine) => {
                    record.data().allocations.push(Allocation {
                        tenant: k,
                        request_id,
                        system_id: machine.system_id.clone(),
                    });
                    held = Some(Held {
                        system_id: machine.system_id,
                        since: Instant::now(),
                        deploy_sent: None,
                        release_sent: false,
                        powers_left: rng.gen_range(0..=POWERS_PER_DEPLOY),
                    });
                }
                None => tokio::time::sleep(Duration::from_millis(300)).await,
            }
            continue;
        };
        let id = h.system_id.clone();
        let cur = match get_machine(&t.clients, &id).await {
            Ok(m) => m,
            // A user sees only its own machines (and Ready ones): gone from view means released.
            Err(e) if format!("{e:#}").contains("(NotFound)") => {
                held = None;
                continue;
            }
            Err(e) => {
                record.note_error("get", format!("{e:#}"));
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
        };
        if cur.owner == t.name && h.since.elapsed() > HOLD_MAX {
            record.note_error(
                "hold",
                format!(
                    "gave {id} up after {HOLD_MAX:?} in status {:?} ({})",
                    cur.status(),
                    cur.status_message
                ),
            );
        }
        if cur.owner != t.name || h.since.elapsed() > HOLD_MAX {
            // Released (and maybe allocated by someone else since): done with it.
            held = None;
            continue;
        }
        let status = cur.status();
        let release = || ReleaseRequest {
            machine: by_id(&id),
            ..Default::default()
        };
        let ack = |kind: OpKind| ActionAck {
            kind,
            tenant: t.name.clone(),
            system_id: id.clone(),
        };
        match status {
            MachineStatus::Allocated if h.deploy_sent.is_none() => {
                h.deploy_sent = Some(Instant::now());
                let req = DeployRequest {
                    machine: by_id(&id),
                    ..Default::default()
                };
                if counted(&record, OpKind::Deploy, m.clone().deploy(req))
                    .await
                    .is_some()
                {
                    record.data().actions.push(ack(OpKind::Deploy));
                }
            }
            MachineStatus::Deploying
                if h.deploy_sent.is_some_and(|t| t.elapsed() > DEPLOY_PATIENCE) =>
            {
                let req = MachineActionRequest {
                    machine: by_id(&id),
                    ..Default::default()
                };
                if counted(&record, OpKind::Abort, m.clone().abort(req))
                    .await
                    .is_some()
                {
                    record.data().actions.push(ack(OpKind::Abort));
                }
            }
            MachineStatus::Deployed if h.powers_left > 0 => {
                h.powers_left -= 1;
                let action = POWER_ACTIONS[rng.gen_range(0..POWER_ACTIONS.len())];
                let req = PowerRequest {
                    machine: by_id(&id),
                    action: action.to_string(),
                    wait_seconds: 3,
                };
                if let Some(c) = counted(&record, OpKind::Power, m.clone().power(req)).await {
                    record.data().powers.push(PowerAck {
                        id: c.id,
                        system_id: id.clone(),
                        action: action.to_string(),
                    });
                }
            }
            MachineStatus::Allocated
            | MachineStatus::Deployed
            | MachineStatus::FailedDeployment
            | MachineStatus::FailedReleasing
                if !h.release_sent || status == MachineStatus::FailedReleasing =>
            {
                h.release_sent = true;
                if counted(&record, OpKind::Release, m.clone().release(release()))
                    .await
                    .is_some()
                {
                    record.data().actions.push(ack(OpKind::Release));
                }
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// Reads `f`'s answer, retrying (every 300 ms, up to 30 s) while it fails: the checks read a cluster
/// that was just healed.
pub(crate) async fn read_retry<T, F, Fut>(what: &str, f: F) -> Result<T>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => return Err(e).context(what.to_string()),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}
