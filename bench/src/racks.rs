//! `ingot-bench --racks`: rack-controller figures on a fresh local cluster (3 regions by default) with two
//! real `ingot-rack` processes (`ra` in zone `za`, `rb` in zone `zb`) and simulated BMCs:
//! (a) session re-establishment: SIGKILL the region serving `ra`, time from the kill until `ListRacks`
//!     (through a surviving region, polled every 20 ms) shows `ra` connected to another region, i.e. a new
//!     session was recorded; the killed region is restarted and the cluster is healthy before the next round;
//! (b) BMC ownership move: SIGKILL the rack that owns the BMCs, time until every BMC is owned by the other
//!     rack (the regions run with `--rack-grace-ms`); the rack is restarted between rounds;
//! (c) many racks: registers `sessions` more racks through the API and holds one session per rack from this
//!     process (the rack protocol: Hello, then a heartbeat every 500 ms, each on its own mutual-TLS
//!     connection), then compares the regions' CPU (utime + stime from `/proc/PID/stat`) and resident memory
//!     (`VmRSS`) with and without those sessions.
//!
//! Every loop is bounded by a count and a deadline; only processes the [`LocalCluster`] started are killed.

use crate::{ms, pct};
use anyhow::{bail, Context, Result};
use ingot_client::{AuthChannel, BearerAuth, Clients};
use ingot_launch::LocalCluster;
use ingot_proto::rack::v1::rack_session_service_client::RackSessionServiceClient;
use ingot_proto::rack::v1::{rack_message, region_message, Heartbeat, Hello, RackMessage};
use ingot_proto::v1::rack_service_client::RackServiceClient;
use ingot_proto::v1::{
    CreateEnrollmentTokenRequest, CreateMachineRequest, CreateZoneRequest, ListMachinesRequest,
    ListRacksRequest, PowerParameters, Rack, ReadConsistency, RegisterRackRequest,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// The two real racks: (name, zone, machines of that zone).
const RACKS: [(&str, &str, u32); 2] = [("ra", "za", 4), ("rb", "zb", 2)];
/// Poll period of every measurement.
const POLL: Duration = Duration::from_millis(20);
/// Bound on one measured wait (a round that takes longer is counted as a timeout).
const ROUND_LIMIT: Duration = Duration::from_secs(30);
/// Zone of the in-process racks.
const BENCH_ZONE: &str = "zbench";

/// Settings of the rack benchmark (from the command line).
#[derive(Clone, Debug)]
pub struct RackOpts {
    /// The regions' `--rack-grace-ms`.
    pub grace_ms: u64,
    /// SIGKILLs of the region serving rack `ra` (phase a).
    pub region_kills: usize,
    /// SIGKILLs of the rack owning the BMCs (phase b).
    pub rack_kills: usize,
    /// In-process rack sessions (phase c; 0 skips it).
    pub sessions: usize,
    /// Length of each CPU measurement window, seconds.
    pub cpu_seconds: u64,
}

/// Resource use of the regions over one window.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    /// Per region: (name, CPU % of one core, VmRSS KiB at the end of the window).
    pub regions: Vec<(String, f64, u64)>,
}

impl Usage {
    /// CPU % of one core, summed over the regions.
    pub fn cpu(&self) -> f64 {
        self.regions.iter().map(|r| r.1).sum()
    }
    /// VmRSS KiB, summed over the regions.
    pub fn rss(&self) -> u64 {
        self.regions.iter().map(|r| r.2).sum()
    }
}

/// Everything the rack benchmark measured.
#[derive(Clone, Debug, Default)]
pub struct RackFigures {
    /// (a) kill → new session on another region, one per successful round, sorted.
    pub session: Vec<Duration>,
    /// (a) the same rounds split by whether the killed region was the leader (an election first).
    pub session_leader: Vec<Duration>,
    /// (a) rounds where the killed region was a follower.
    pub session_follower: Vec<Duration>,
    /// (a) rounds whose session did not move within the round limit.
    pub session_timeouts: usize,
    /// (a) BMCs whose owner changed across a region kill (racks stayed alive: should be 0).
    pub spurious_moves: usize,
    /// (b) kill → all BMCs on the other rack, one per successful round, sorted.
    pub moves: Vec<Duration>,
    /// (b) rounds whose BMCs did not all move within the round limit.
    pub move_timeouts: usize,
    /// (b) BMCs in the fleet (all of them move each round).
    pub bmcs: usize,
    /// (c) in-process sessions that got a Welcome.
    pub sessions_opened: usize,
    /// (c) racks `ListRacks` showed connected while loaded (in-process ones only).
    pub sessions_connected: usize,
    /// (c) sessions that broke while they should have been held.
    pub sessions_broken: usize,
    /// (c) time from the first connect to all sessions shown connected.
    pub connect_all: Duration,
    /// (c) racks registered, and how long that took.
    pub registered: usize,
    /// (c) registration time.
    pub register_time: Duration,
    /// (c) regions' use without the in-process sessions (two real racks connected).
    pub idle: Usage,
    /// (c) regions' use with them.
    pub loaded: Usage,
}

fn rack_api(c: &Clients) -> Result<RackServiceClient<AuthChannel>> {
    Ok(RackServiceClient::with_interceptor(
        c.channel(),
        BearerAuth::new(&c.config().token)?,
    ))
}

fn consistency(stale: bool) -> i32 {
    if stale {
        ReadConsistency::Stale as i32
    } else {
        ReadConsistency::Linearizable as i32
    }
}

/// Every rack, within 1 s. A stale read is answered from the serving region's state without a leader (but
/// a region restarted a moment ago may still be catching up); a linearizable one reflects every write.
async fn racks(c: &Clients, stale: bool) -> Result<Vec<Rack>> {
    let call = async {
        rack_api(c)?
            .list_racks(ListRacksRequest {
                consistency: consistency(stale),
            })
            .await
            .context("list racks")
    };
    Ok(tokio::time::timeout(Duration::from_secs(1), call)
        .await
        .context("list racks: no answer within 1 s")??
        .into_inner()
        .racks)
}

async fn rack(c: &Clients, name: &str, stale: bool) -> Result<Rack> {
    racks(c, stale)
        .await?
        .into_iter()
        .find(|r| r.name == name)
        .with_context(|| format!("no rack {name}"))
}

/// BMC owner of every machine (within 2 s).
async fn owners(c: &Clients, stale: bool) -> Result<BTreeMap<String, String>> {
    let mut m = c.machines();
    let call = m.list_machines(ListMachinesRequest {
        page_size: 5000,
        consistency: consistency(stale),
        ..Default::default()
    });
    let r = tokio::time::timeout(Duration::from_secs(2), call)
        .await
        .context("list machines: no answer within 2 s")??
        .into_inner();
    // Every machine of the bench has a simulated BMC (the list's basic view omits power parameters).
    Ok(r.machines
        .into_iter()
        .map(|m| (m.system_id, m.rack))
        .collect())
}

/// Runs `f` until it succeeds, at most 50 times within 10 s: the balanced channel notices a restarted
/// region's dead connection only when a call over it fails.
async fn retry<T, F, Fut>(what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let t0 = Instant::now();
    let mut last = None;
    for _ in 0..50 {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => last = Some(e),
        }
        if t0.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt")))
        .with_context(|| format!("{what}: still failing after retries for 10 s"))
}

fn index_of(cluster: &LocalCluster, node_id: u64) -> Option<usize> {
    cluster
        .regions()
        .iter()
        .find(|r| r.node_id == node_id)
        .map(|r| r.index)
}

/// Waits (at most 60 s) until there is a leader, every region answers a linearizable read (so a restarted
/// one has caught up), and `names` are all connected.
async fn healthy(cluster: &LocalCluster, names: &[&str]) -> Result<()> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(60) {
        if cluster.leader().await.is_some() {
            let mut all = true;
            for r in cluster.regions() {
                let ok = match cluster.connect_to(r.index) {
                    Ok(c) => racks(&c, false).await.is_ok_and(|rs| {
                        names
                            .iter()
                            .all(|n| rs.iter().any(|x| x.name == *n && x.connected))
                    }),
                    Err(_) => false,
                };
                all &= ok;
            }
            if all {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("cluster not healthy (leader, all regions answering, racks {names:?} connected) within 60 s")
}

/// Waits (at most `limit`) until `f` holds for the BMC owners seen through `c`; the time it took.
async fn wait_owners(
    c: &Clients,
    limit: Duration,
    f: impl Fn(&BTreeMap<String, String>) -> bool,
) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if let Ok(o) = owners(c, true).await {
            if f(&o) {
                return Some(t0.elapsed());
            }
        }
        tokio::time::sleep(POLL).await;
    }
    None
}

/// Runs the three phases on `cluster` (started with `--rack-grace-ms=<grace_ms>`).
pub async fn run(cluster: &LocalCluster, o: &RackOpts) -> Result<RackFigures> {
    let mut f = RackFigures::default();
    let c = cluster.connect()?;
    let bmc = cluster.dir().join("bmc");
    std::fs::create_dir_all(&bmc).with_context(|| format!("creating {}", bmc.display()))?;
    eprintln!("== racks: starting ra (za) and rb (zb)");
    for (name, zone, _) in RACKS {
        cluster
            .add_rack(name, zone)
            .await
            .with_context(|| format!("adding rack {name}"))?;
    }
    let names: Vec<&str> = RACKS.iter().map(|r| r.0).collect();
    healthy(cluster, &names).await?;
    let mut n = 0u64;
    for (_, zone, count) in RACKS {
        for _ in 0..count {
            n += 1;
            let b = n.to_be_bytes();
            c.machines()
                .create_machine(CreateMachineRequest {
                    zone: zone.into(),
                    macs: vec![format!("0e:00:00:{:02x}:{:02x}:{:02x}", b[5], b[6], b[7])],
                    power: Some(PowerParameters {
                        driver: "sim".into(),
                        params: [("state_dir".to_string(), bmc.display().to_string())]
                            .into_iter()
                            .collect(),
                    }),
                    ..Default::default()
                })
                .await
                .context("creating a machine")?;
        }
    }
    f.bmcs = n as usize;
    wait_owners(&c, ROUND_LIMIT, |o| {
        o.len() == f.bmcs && o.values().all(|r| !r.is_empty())
    })
    .await
    .context("the machines' BMCs were not assigned to racks within 30 s")?;

    // (a) session re-establishment after the serving region dies.
    for round in 0..o.region_kills {
        let ra = retry("reading rack ra", || rack(&c, "ra", false)).await?;
        let victim = index_of(cluster, ra.region_id)
            .with_context(|| format!("rack ra is served by unknown region {}", ra.region_id))?;
        let survivor = cluster
            .regions()
            .iter()
            .map(|r| r.index)
            .find(|i| *i != victim)
            .context("no second region")?;
        let sc = cluster.connect_to(survivor)?;
        let before = retry("reading BMC owners", || owners(&sc, false)).await?;
        let was_leader = cluster.leader().await == Some(victim);
        cluster.kill(victim, libc::SIGKILL)?;
        let killed = Instant::now();
        let mut took = None;
        while killed.elapsed() < ROUND_LIMIT {
            if let Ok(r) = rack(&sc, "ra", true).await {
                if r.connected && r.region_id != 0 && r.region_id != ra.region_id {
                    took = Some(killed.elapsed());
                    break;
                }
            }
            tokio::time::sleep(POLL).await;
        }
        match took {
            Some(d) => {
                eprintln!(
                    "   region kill {}: {} ({}) -> new session in {:.0} ms",
                    round + 1,
                    ra.region_name,
                    if was_leader { "leader" } else { "follower" },
                    ms(d)
                );
                f.session.push(d);
                if was_leader {
                    f.session_leader.push(d);
                } else {
                    f.session_follower.push(d);
                }
            }
            None => {
                eprintln!("   region kill {}: no new session within 30 s", round + 1);
                f.session_timeouts += 1;
            }
        }
        cluster.wait_exit(victim).await?;
        cluster
            .restart(victim)
            .await
            .context("restarting the killed region")?;
        healthy(cluster, &names).await?;
        let after = retry("reading BMC owners", || owners(&c, false)).await?;
        f.spurious_moves += before
            .iter()
            .filter(|(id, r)| after.get(*id) != Some(*r))
            .count();
    }
    f.session.sort();
    f.session_leader.sort();
    f.session_follower.sort();

    // (b) BMC ownership move after the owning rack dies.
    for round in 0..o.rack_kills {
        let rs = retry("listing racks", || racks(&c, false)).await?;
        let (owner, other) = {
            let a = rs.iter().find(|r| r.name == "ra").context("no rack ra")?;
            let b = rs.iter().find(|r| r.name == "rb").context("no rack rb")?;
            if a.bmc_count >= b.bmc_count {
                ("ra", "rb")
            } else {
                ("rb", "ra")
            }
        };
        cluster.kill_rack(owner, libc::SIGKILL)?;
        let killed = Instant::now();
        let limit = Duration::from_millis(o.grace_ms) + ROUND_LIMIT;
        let bmcs = f.bmcs;
        let moved = wait_owners(&c, limit, |o| {
            o.len() == bmcs && o.values().all(|r| r == other)
        })
        .await
        .map(|_| killed.elapsed());
        match moved {
            Some(d) => {
                eprintln!(
                    "   rack kill {}: {owner}'s BMCs on {other} after {:.0} ms",
                    round + 1,
                    ms(d)
                );
                f.moves.push(d);
            }
            None => {
                eprintln!(
                    "   rack kill {}: BMCs not moved within {limit:?}",
                    round + 1
                );
                f.move_timeouts += 1;
            }
        }
        cluster
            .restart_rack(owner)
            .await
            .with_context(|| format!("restarting rack {owner}"))?;
        healthy(cluster, &names).await?;
    }
    f.moves.sort();

    if o.sessions > 0 {
        // Fresh connections: the old channel may still hold dead ones to regions restarted in (a).
        let fresh = cluster.connect()?;
        many_sessions(cluster, &fresh, o, &mut f).await?;
    }
    Ok(f)
}

/// Clock ticks per second for `/proc/PID/stat` (USER_HZ; 100 on Linux unless `getconf` says otherwise).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3 (state).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the state.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The regions' CPU use over `secs` seconds and their RSS at the end.
async fn measure(cluster: &LocalCluster, secs: u64) -> Usage {
    let hz = clock_ticks();
    let regions = cluster.regions();
    let start: Vec<Option<u64>> = regions.iter().map(|r| cpu_ticks(r.pid)).collect();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs.max(1))).await;
    let wall = t0.elapsed().as_secs_f64();
    Usage {
        regions: regions
            .iter()
            .zip(start)
            .map(|(r, s)| {
                let used = match (s, cpu_ticks(r.pid)) {
                    (Some(a), Some(b)) => b.saturating_sub(a) as f64 / hz,
                    _ => 0.0,
                };
                (
                    r.name.clone(),
                    used / wall * 100.0,
                    rss_kib(r.pid).unwrap_or(0),
                )
            })
            .collect(),
    }
}

/// One in-process rack's enrollment: name and TLS identity.
struct Enrolled {
    name: String,
    cert: String,
    key: String,
}

/// Registers rack `name` in [`BENCH_ZONE`] the way `ingot-rack register` does: enrollment token (admin),
/// a local key and CSR, `RegisterRack` authenticated by the token alone.
async fn enroll(c: &Clients, name: String) -> Result<Enrolled> {
    let token = rack_api(c)?
        .create_enrollment_token(CreateEnrollmentTokenRequest { ttl_seconds: 600 })
        .await
        .context("create enrollment token")?
        .into_inner()
        .token;
    let (key, csr) = ingot_common::pki::new_csr(&format!("rack-{name}"))?;
    let cert = RackServiceClient::new(c.channel())
        .register_rack(RegisterRackRequest {
            token,
            name: name.clone(),
            zone: BENCH_ZONE.into(),
            csr_pem: csr,
        })
        .await
        .with_context(|| format!("register rack {name}"))?
        .into_inner()
        .cert_pem;
    Ok(Enrolled { name, cert, key })
}

/// Counters the in-process sessions share.
#[derive(Default)]
struct SessionStats {
    opened: AtomicUsize,
    broken: AtomicUsize,
    commands: AtomicU64,
}

/// Holds one rack session to `addr` until `stop` flips: Hello, Welcome, then heartbeats at the period the
/// region asks for. Commands are counted, not run (the bench racks' zone has no machines).
async fn hold_session(
    addr: String,
    tls: ClientTlsConfig,
    mut stop: tokio::sync::watch::Receiver<bool>,
    stats: Arc<SessionStats>,
) -> Result<()> {
    let chan = Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(RackMessage {
        msg: Some(rack_message::Msg::Hello(Hello {
            version: "ingot-bench".into(),
            services: vec!["power".into()],
            capacity: 1,
            drivers: vec!["sim".into()],
        })),
    })
    .await
    .context("queueing Hello")?;
    let mut inbound = RackSessionServiceClient::new(chan)
        .session(ReceiverStream::new(rx))
        .await
        .context("opening the session")?
        .into_inner();
    let welcome = match tokio::time::timeout(Duration::from_secs(10), inbound.message()).await {
        Ok(Ok(Some(m))) => match m.msg {
            Some(region_message::Msg::Welcome(w)) => w,
            other => bail!("first message is not Welcome: {other:?}"),
        },
        Ok(Ok(None)) => bail!("stream ended before Welcome"),
        Ok(Err(e)) => bail!("refused: {e}"),
        Err(_) => bail!("no Welcome within 10 s"),
    };
    stats.opened.fetch_add(1, Ordering::Relaxed);
    let period = Duration::from_millis(u64::from(welcome.heartbeat_ms.clamp(10, 500)));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    // The watch guard must not live across an await of this (spawned, Send) task.
    let stopped = async move {
        let _ = stop.wait_for(|v| *v).await;
    };
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => return Ok(()),
            _ = tick.tick() => {
                seq += 1;
                let hb = RackMessage { msg: Some(rack_message::Msg::Heartbeat(Heartbeat { seq })) };
                if tx.send(hb).await.is_err() {
                    stats.broken.fetch_add(1, Ordering::Relaxed);
                    bail!("outgoing stream closed");
                }
            }
            m = inbound.message() => match m {
                Ok(Some(m)) => {
                    if let Some(region_message::Msg::PowerCommand(_)) = m.msg {
                        stats.commands.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(None) | Err(_) => {
                    stats.broken.fetch_add(1, Ordering::Relaxed);
                    bail!("session ended by the region: {m:?}");
                }
            },
        }
    }
}

/// Phase (c): registers `o.sessions` racks, measures the regions idle, holds one session per rack from
/// this process, measures again.
async fn many_sessions(
    cluster: &LocalCluster,
    c: &Clients,
    o: &RackOpts,
    f: &mut RackFigures,
) -> Result<()> {
    let n = o.sessions;
    match c
        .zones()
        .create_zone(CreateZoneRequest {
            name: BENCH_ZONE.into(),
            description: "ingot-bench in-process racks".into(),
        })
        .await
    {
        Ok(_) => {}
        Err(e) if e.code() == tonic::Code::AlreadyExists => {}
        Err(e) => return Err(e).context("creating the bench zone"),
    }
    eprintln!("== racks: registering {n} racks");
    let t0 = Instant::now();
    let mut enrolled = Vec::with_capacity(n);
    let mut next = 0usize;
    while next < n {
        if t0.elapsed() > Duration::from_secs(300) {
            bail!("registering {n} racks took more than 300 s");
        }
        let mut set = tokio::task::JoinSet::new();
        for i in next..(next + 8).min(n) {
            let c = c.clone();
            set.spawn(async move { enroll(&c, format!("bench-{i:04}")).await });
        }
        next = (next + 8).min(n);
        while let Some(r) = set.join_next().await {
            enrolled.push(r??);
        }
    }
    f.registered = enrolled.len();
    f.register_time = t0.elapsed();

    eprintln!("== racks: regions idle for {} s", o.cpu_seconds);
    f.idle = measure(cluster, o.cpu_seconds).await;

    eprintln!("== racks: opening {n} sessions from this process");
    let ca = std::fs::read_to_string(cluster.ca_path())
        .with_context(|| format!("reading {}", cluster.ca_path().display()))?;
    let addrs: Vec<String> = cluster
        .regions()
        .iter()
        .map(|r| r.raft_addr.clone())
        .collect();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stats = Arc::new(SessionStats::default());
    let mut tasks = tokio::task::JoinSet::new();
    let t0 = Instant::now();
    for (i, e) in enrolled.iter().enumerate() {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&ca))
            .identity(Identity::from_pem(&e.cert, &e.key))
            .domain_name(ingot_common::pki::REGION_SERVER_NAME);
        let addr = addrs[i % addrs.len()].clone();
        let (stop, stats, name) = (stop_rx.clone(), stats.clone(), e.name.clone());
        tasks.spawn(async move {
            hold_session(addr, tls, stop, stats)
                .await
                .with_context(|| format!("rack {name}"))
        });
    }
    let bench_connected = |rs: &[Rack]| {
        rs.iter()
            .filter(|r| r.zone == BENCH_ZONE && r.connected)
            .count()
    };
    let mut all = None;
    while t0.elapsed() < Duration::from_secs(60) {
        if let Ok(rs) = racks(c, true).await {
            if bench_connected(&rs) >= n {
                all = Some(t0.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f.connect_all = all.unwrap_or_else(|| t0.elapsed());
    if all.is_none() {
        eprintln!(
            "   not all {n} sessions connected within 60 s ({} opened)",
            stats.opened.load(Ordering::Relaxed)
        );
    }
    eprintln!(
        "== racks: regions with the sessions for {} s",
        o.cpu_seconds
    );
    f.loaded = measure(cluster, o.cpu_seconds).await;
    f.sessions_connected = racks(c, false)
        .await
        .map(|rs| bench_connected(&rs))
        .unwrap_or(0);
    f.sessions_opened = stats.opened.load(Ordering::Relaxed);
    f.sessions_broken = stats.broken.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut errors = Vec::new();
    while let Ok(Some(r)) = tokio::time::timeout_at(deadline.into(), tasks.join_next()).await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(format!("{e:#}")),
            Err(e) => errors.push(e.to_string()),
        }
    }
    tasks.abort_all();
    if !errors.is_empty() {
        eprintln!(
            "   {} session(s) failed, first: {}",
            errors.len(),
            errors[0]
        );
    }
    let cmds = stats.commands.load(Ordering::Relaxed);
    if cmds > 0 {
        eprintln!("   in-process racks were sent {cmds} command(s) (not run)");
    }
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISSED"
    }
}

/// Prints the figures with their targets.
pub fn report(o: &RackOpts, f: &RackFigures, profile: &str, regions: usize) {
    let grace = Duration::from_millis(o.grace_ms);
    let move_target = grace + Duration::from_secs(2);
    println!();
    println!(
        "ingot-bench --racks: {regions} regions, 2 ingot-rack processes, {} simulated BMCs, --rack-grace-ms={} ({profile})",
        f.bmcs, o.grace_ms
    );
    println!(
        "  {:<46} {:>4} {:>9} {:>9} {:>9}  {:<14} verdict",
        "measurement", "n", "p50 ms", "p99 ms", "max ms", "target"
    );
    let line = |what: &str, v: &[Duration], timeouts: usize, target: Duration| {
        let p99 = pct(v, 0.99);
        let ok = !v.is_empty() && timeouts == 0 && p99 < target;
        println!(
            "  {:<46} {:>4} {:>9.0} {:>9.0} {:>9.0}  {:<14} {}{}",
            what,
            v.len(),
            ms(pct(v, 0.5)),
            ms(p99),
            ms(v.last().copied().unwrap_or_default()),
            format!("p99 < {:.0} ms", ms(target)),
            verdict(ok),
            if timeouts > 0 {
                format!(" ({timeouts} round(s) timed out)")
            } else {
                String::new()
            }
        );
    };
    if o.region_kills > 0 {
        line(
            "(a) region SIGKILL -> session on another region",
            &f.session,
            f.session_timeouts,
            Duration::from_secs(2),
        );
        let split = |v: &[Duration]| {
            format!(
                "{} kill(s), p50 {:.0} ms, max {:.0} ms",
                v.len(),
                ms(pct(v, 0.5)),
                ms(v.last().copied().unwrap_or_default())
            )
        };
        println!(
            "      killed region was the leader: {}; a follower: {}",
            split(&f.session_leader),
            split(&f.session_follower)
        );
        println!(
            "      BMC owner changes across region kills (racks alive, expected 0): {}",
            f.spurious_moves
        );
    }
    if o.rack_kills > 0 {
        line(
            "(b) rack SIGKILL -> all BMCs on the other rack",
            &f.moves,
            f.move_timeouts,
            move_target,
        );
    }
    if o.sessions > 0 {
        let n = f.sessions_connected.max(1) as f64;
        let cpu = f.loaded.cpu() - f.idle.cpu();
        let rss = f.loaded.rss() as f64 - f.idle.rss() as f64;
        println!(
            "  (c) {} racks registered in {:.1} s; {} sessions opened, {} shown connected ({} broke), all connected after {:.1} s",
            f.registered,
            f.register_time.as_secs_f64(),
            f.sessions_opened,
            f.sessions_connected,
            f.sessions_broken,
            f.connect_all.as_secs_f64()
        );
        println!(
            "      regions' CPU (sum, % of one core over {} s): {:.1}% idle -> {:.1}% with the sessions: {:+.3}% per connected rack",
            o.cpu_seconds,
            f.idle.cpu(),
            f.loaded.cpu(),
            cpu / n
        );
        println!(
            "      regions' RSS (sum): {} KiB -> {} KiB: {:+.0} KiB per connected rack",
            f.idle.rss(),
            f.loaded.rss(),
            rss / n
        );
        for ((name, c0, r0), (_, c1, r1)) in f.idle.regions.iter().zip(&f.loaded.regions) {
            println!("      {name}: CPU {c0:.1}% -> {c1:.1}%, RSS {r0} -> {r1} KiB");
        }
    }
    println!("INGOT_RACK_SESSION_P50_MS={:.0}", ms(pct(&f.session, 0.5)));
    println!("INGOT_RACK_SESSION_P99_MS={:.0}", ms(pct(&f.session, 0.99)));
    println!("INGOT_RACK_BMC_MOVE_P99_MS={:.0}", ms(pct(&f.moves, 0.99)));
    if o.sessions > 0 {
        let n = f.sessions_connected.max(1) as f64;
        println!(
            "INGOT_RACK_CPU_PCT_PER_RACK={:.3}",
            (f.loaded.cpu() - f.idle.cpu()) / n
        );
        println!(
            "INGOT_RACK_KIB_PER_RACK={:.0}",
            (f.loaded.rss() as f64 - f.idle.rss() as f64) / n
        );
    }
}
