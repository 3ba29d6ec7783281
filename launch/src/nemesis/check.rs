//! The checks of a nemesis run, from the record: what the clients were told ([`Record`]), the cluster's
//! state and event history read linearizably at the end, the power commands the regions recorded, the
//! actions each simulated BMC accepted, the racks' done-logs and every process's log.
//!
//! - Acknowledged writes: every created machine exists with its host name and MAC; its description is a
//!   version at least the last acknowledged one and at most the last one sent; every acknowledged tag is
//!   set; every acknowledged allocation replays (same request id → the same machine, or the answer that
//!   it was released since, naming it) and left an `allocate` event; every acknowledged deploy, abort and
//!   release left its event; every acknowledged power command exists with its machine and action.
//! - Two owners: in each simulated machine's event history (in revision order) the owner never changes
//!   from one user to another without passing through "no owner".
//! - At most once per command id: each BMC action the simulator recorded (a reset, a boot override
//!   change) is matched to a distinct power command of that machine whose action produces it and which
//!   existed then (created before it; finished after it, or still pending, or cancelled less than
//!   [`CANCELLED_GRACE`] before). An action left over is a command run twice. Also, no command id is in
//!   two racks' done-logs as a success.
//! - No "panicked" in any region, rack or simulator log.

use super::workload::{get_machine, read_retry, Record, World, CALL};
use super::{RunLog, Violation, ViolationKind};
use crate::LocalCluster;
use anyhow::{anyhow, bail, Result};
use ingot_client::Clients;
use ingot_proto::v1::{
    AllocateRequest, Constraints, CreateMachineRequest, Event, GetPowerCommandRequest,
    ListEventsRequest, PowerCommand, ReadConsistency,
};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How long after a command was cancelled a rack that had it already may still run it.
const CANCELLED_GRACE: Duration = Duration::from_secs(20);
/// Clock slack between the simulator's and the regions' timestamps (same host: only rounding).
const SLACK_MS: u64 = 50;
/// Power command ids probed past the last one found before the listing stops.
const ID_GAP: u64 = 20;
/// Most power command ids read.
const MAX_COMMANDS: u64 = 200_000;
/// How far (ms) from an unexplained BMC action a command's window may be to be named in the report.
const NEAR_MS: u64 = 5_000;
/// Most violations of one check reported in full (the rest are counted in one line).
const MAX_DETAILS: usize = 50;

/// What the checks found.
pub(crate) struct Found {
    pub(crate) violations: Vec<Violation>,
    pub(crate) power_commands: u64,
    pub(crate) bmc_actions: u64,
}

/// Writes machines (fresh clients, each attempt bounded) until one is acknowledged; returns the time
/// from `healed` to that acknowledgement, or `None` after 20 s.
pub(crate) async fn first_write(
    cluster: &LocalCluster,
    seed: u64,
    healed: Instant,
) -> Option<Duration> {
    let c = cluster.connect().ok()?;
    for k in 0..1_000u32 {
        if healed.elapsed() > Duration::from_secs(20) {
            return None;
        }
        let b = k.to_be_bytes();
        let req = CreateMachineRequest {
            hostname: format!("probe-{}-{k}", seed % 100_000),
            macs: vec![format!(
                "0a:50:{:02x}:{:02x}:{:02x}:{:02x}",
                b[0], b[1], b[2], b[3]
            )],
            ..Default::default()
        };
        let mut m = c.machines();
        match tokio::time::timeout(Duration::from_secs(3), m.create_machine(req)).await {
            Ok(Ok(_)) => return Some(healed.elapsed()),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    None
}

/// Runs every check.
pub(crate) async fn all(
    cluster: &LocalCluster,
    world: &World,
    record: &Record,
    log: &RunLog,
) -> Found {
    let mut found = Found {
        violations: Vec::new(),
        power_commands: 0,
        bmc_actions: 0,
    };
    let c = &world.admin;
    let push = |found: &mut Found, kind, detail: String| {
        found.violations.push(Violation { kind, detail });
    };
    // The BMCs' records before the commands: every action read here was caused by a command that the
    // later listing contains.
    let actions = match read_retry("reading the simulator's BMC records", || {
        sim_actions(&world.control_url)
    })
    .await
    {
        Ok(a) => a,
        Err(e) => {
            push(&mut found, ViolationKind::Unrecovered, format!("{e:#}"));
            BTreeMap::new()
        }
    };
    // A record that cannot be read is reported once, as unrecovered, and the checks that need it are
    // skipped rather than reporting every write as lost.
    let events = match sim_events(c, world).await {
        Ok(e) => Some(e),
        Err(e) => {
            push(&mut found, ViolationKind::Unrecovered, format!("{e:#}"));
            None
        }
    };
    if let Some(events) = &events {
        log.line(&format!(
            "read {} events of {} simulated machines",
            events.values().map(Vec::len).sum::<usize>(),
            events.len()
        ));
    }
    let commands = match power_commands(c).await {
        Ok(v) => Some(v),
        Err(e) => {
            push(&mut found, ViolationKind::Unrecovered, format!("{e:#}"));
            None
        }
    };
    found.power_commands = commands.as_ref().map_or(0, |c| c.len() as u64);
    found.bmc_actions = actions.values().map(|v| v.len() as u64).sum();

    let mut v = Vec::new();
    if let (Some(events), Some(commands)) = (&events, &commands) {
        lost_writes(c, world, record, events, commands, &mut v).await;
        two_owners(events, &mut v);
        at_most_once(world, &actions, commands, &mut v);
    }
    repeated_on_racks(cluster, &mut v);
    panics(cluster, &mut v);
    found.violations.extend(v);
    found
}

/// Keeps at most [`MAX_DETAILS`] violations of each kind in full.
fn cap(v: &mut Vec<Violation>, kind: ViolationKind, details: Vec<String>) {
    let n = details.len();
    for d in details.into_iter().take(MAX_DETAILS) {
        v.push(Violation { kind, detail: d });
    }
    if n > MAX_DETAILS {
        v.push(Violation {
            kind,
            detail: format!("... and {} more like these", n - MAX_DETAILS),
        });
    }
}

async fn lost_writes(
    c: &Clients,
    world: &World,
    record: &Record,
    events: &BTreeMap<String, Vec<Event>>,
    commands: &[PowerCommand],
    v: &mut Vec<Violation>,
) {
    let (created, descriptions, tags, allocations, actions, powers) = {
        let d = record.data();
        (
            d.created.clone(),
            d.descriptions.clone(),
            d.tags.clone(),
            d.allocations.clone(),
            d.actions.clone(),
            d.powers.clone(),
        )
    };
    let mut lost = Vec::new();
    let mut unreadable = Vec::new();
    let mut tags_of: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (id, t) in &tags {
        tags_of.entry(id).or_default().insert(t);
    }
    for m in &created {
        let got = read_retry("reading a created machine", || get_machine(c, &m.system_id)).await;
        let got = match got {
            Ok(g) => g,
            Err(e) if format!("{e:#}").contains("(NotFound)") => {
                lost.push(format!(
                    "machine {} ({}) acknowledged as created: {e:#}",
                    m.hostname, m.system_id
                ));
                continue;
            }
            Err(e) => {
                unreadable.push(format!(
                    "machine {} ({}) could not be read to check it: {e:#}",
                    m.hostname, m.system_id
                ));
                continue;
            }
        };
        if got.hostname != m.hostname || !got.macs.iter().any(|x| x.eq_ignore_ascii_case(&m.mac)) {
            lost.push(format!(
                "machine {} created as {} with MAC {} now reads {} with MACs {:?}",
                m.system_id, m.hostname, m.mac, got.hostname, got.macs
            ));
        }
        let ver = descriptions.get(&m.system_id).copied().unwrap_or_default();
        let now: u64 = got
            .description
            .strip_prefix('v')
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if now < ver.acked || now > ver.sent {
            lost.push(format!(
                "machine {} description is {:?}: acknowledged up to v{}, sent up to v{}",
                m.system_id, got.description, ver.acked, ver.sent
            ));
        }
        for t in tags_of.get(m.system_id.as_str()).into_iter().flatten() {
            if !got.tags.iter().any(|x| x == t) {
                lost.push(format!(
                    "machine {} lacks tag {t}, acknowledged as set (tags now {:?})",
                    m.system_id, got.tags
                ));
            }
        }
    }
    for a in &allocations {
        let t = &world.tenants[a.tenant];
        let has_event = events.get(&a.system_id).is_some_and(|es| {
            es.iter()
                .any(|e| e.kind == "allocate" && e.owner == t.name && e.system_id == a.system_id)
        });
        if !has_event {
            lost.push(format!(
                "allocation {} of {} to {}: acknowledged, but no allocate event for it",
                a.request_id, a.system_id, t.name
            ));
        }
        let replay = read_retry("replaying an allocation", || async {
            let req = AllocateRequest {
                request_id: a.request_id.clone(),
                constraints: Some(Constraints::default()),
                count: 1,
                ..Default::default()
            };
            match tokio::time::timeout(CALL, t.clients.machines().allocate(req)).await {
                Ok(Ok(r)) => Ok(Ok(r.into_inner())),
                Ok(Err(s)) if s.code() == tonic::Code::FailedPrecondition => Ok(Err(s)),
                Ok(Err(s)) if s.code() == tonic::Code::ResourceExhausted => Ok(Err(s)),
                Ok(Err(s)) => bail!("{} ({:?})", s.message(), s.code()),
                Err(_) => bail!("no answer within {CALL:?}"),
            }
        })
        .await;
        match replay {
            Ok(Ok(r))
                if r.replayed && r.machines.iter().any(|m| m.system_id == a.system_id) => {}
            Ok(Err(s))
                if s.code() == tonic::Code::FailedPrecondition
                    && s.message().contains(&a.system_id) => {}
            other => lost.push(format!(
                "allocation {} of {} to {}: acknowledged, but replaying the request id answers {:?}",
                a.request_id,
                a.system_id,
                t.name,
                other.map(|r| r.map(|r| (r.replayed, r.machines.into_iter().map(|m| m.system_id).collect::<Vec<_>>())))
            )),
        }
    }
    // Deploy, abort, release: at least as many events as acknowledgements, per (kind, machine, actor).
    let mut acked: BTreeMap<(&str, &str, &str), usize> = BTreeMap::new();
    for a in &actions {
        *acked
            .entry((a.kind.as_str(), &a.system_id, &a.tenant))
            .or_default() += 1;
    }
    for ((kind, id, who), n) in acked {
        let seen = events.get(id).map_or(0, |es| {
            es.iter()
                .filter(|e| e.kind == kind && e.actor == who)
                .count()
        });
        if seen < n {
            lost.push(format!(
                "{kind} of {id} by {who}: {n} acknowledged, {seen} in the event history"
            ));
        }
    }
    let by_id: BTreeMap<u64, &PowerCommand> = commands.iter().map(|c| (c.id, c)).collect();
    for p in &powers {
        match by_id.get(&p.id) {
            Some(c) if c.system_id == p.system_id && c.action == p.action => {}
            other => lost.push(format!(
                "power command {} ({} on {}) acknowledged; the record has {:?}",
                p.id,
                p.action,
                p.system_id,
                other.map(|c| (&c.system_id, &c.action, &c.state))
            )),
        }
    }
    cap(v, ViolationKind::LostWrite, lost);
    cap(v, ViolationKind::Unrecovered, unreadable);
}

/// Every event of each simulated machine, oldest first.
async fn sim_events(c: &Clients, world: &World) -> Result<BTreeMap<String, Vec<Event>>> {
    let mut out = BTreeMap::new();
    for s in &world.sims {
        let mut all = Vec::new();
        let mut token = String::new();
        for _ in 0..1_000 {
            let req = ListEventsRequest {
                system_id: s.system_id.clone(),
                page_size: 1_000,
                page_token: token.clone(),
                consistency: ReadConsistency::Linearizable as i32,
                ..Default::default()
            };
            let page = read_retry("listing events", || async {
                match tokio::time::timeout(CALL, c.events().list_events(req.clone())).await {
                    Ok(Ok(r)) => Ok(r.into_inner()),
                    Ok(Err(s)) => bail!("{} ({:?})", s.message(), s.code()),
                    Err(_) => bail!("no answer within {CALL:?}"),
                }
            })
            .await?;
            all.extend(page.events);
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        all.sort_by_key(|e| (e.revision, e.seq));
        out.insert(s.system_id.clone(), all);
    }
    Ok(out)
}

fn two_owners(events: &BTreeMap<String, Vec<Event>>, v: &mut Vec<Violation>) {
    let mut found = Vec::new();
    for (id, es) in events {
        let mut owner = "";
        let mut since = 0;
        for e in es {
            if !owner.is_empty() && !e.owner.is_empty() && e.owner != owner {
                found.push(format!(
                    "machine {id}: owned by {owner} since revision {since}, then by {} at revision {} \
                     ({}: {}) without a release in between",
                    e.owner, e.revision, e.kind, e.message
                ));
            }
            if e.owner != owner {
                since = e.revision;
            }
            owner = &e.owner;
        }
    }
    cap(v, ViolationKind::TwoOwners, found);
}

/// Every power command in the record, by probing ids from 1 until [`ID_GAP`] in a row are missing.
async fn power_commands(c: &Clients) -> Result<Vec<PowerCommand>> {
    let mut out = Vec::new();
    let mut missing = 0;
    for id in 1..=MAX_COMMANDS {
        let got = read_retry("reading a power command", || async {
            let req = GetPowerCommandRequest {
                id,
                wait_seconds: 0,
            };
            match tokio::time::timeout(CALL, c.machines().get_power_command(req)).await {
                Ok(Ok(r)) => Ok(Some(r.into_inner())),
                Ok(Err(s)) if s.code() == tonic::Code::NotFound => Ok(None),
                Ok(Err(s)) => bail!("power command {id}: {} ({:?})", s.message(), s.code()),
                Err(_) => bail!("power command {id}: no answer within {CALL:?}"),
            }
        })
        .await?;
        match got {
            Some(cmd) => {
                missing = 0;
                out.push(cmd);
            }
            None => {
                missing += 1;
                if missing >= ID_GAP {
                    break;
                }
            }
        }
    }
    Ok(out)
}

/// One BMC action as the simulator's control API reports it.
#[derive(Deserialize, Clone, Debug)]
struct SimAction {
    at_ms: u64,
    kind: String,
    #[serde(default)]
    reset_type: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    enabled: String,
}

#[derive(Deserialize)]
struct SimCounters {
    #[serde(default)]
    actions: Vec<SimAction>,
    #[serde(default)]
    actions_dropped: u64,
}

#[derive(Deserialize)]
struct SimView {
    hostname: String,
    counters: SimCounters,
}

/// Each simulated machine's accepted actions, by host name.
async fn sim_actions(control_url: &str) -> Result<BTreeMap<String, Vec<SimAction>>> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(CALL)
        .build()
        .map_err(|e| anyhow!("HTTP client: {e}"))?;
    let url = format!("{}/machines", control_url.trim_end_matches('/'));
    let views: Vec<SimView> = http
        .get(&url)
        .send()
        .await
        .map_err(|e| anyhow!("GET {url}: {e}"))?
        .error_for_status()
        .map_err(|e| anyhow!("GET {url}: {e}"))?
        .json()
        .await
        .map_err(|e| anyhow!("GET {url}: {e}"))?;
    let mut out = BTreeMap::new();
    for v in views {
        if v.counters.actions_dropped > 0 {
            bail!(
                "simulated machine {} dropped {} actions from its record: run shorter or with more machines",
                v.hostname,
                v.counters.actions_dropped
            );
        }
        out.insert(v.hostname, v.counters.actions);
    }
    Ok(out)
}

/// Whether power command action `action` (wire spelling) makes the Redfish driver do `a`.
fn explains(action: &str, a: &SimAction) -> bool {
    let reset = |types: &[&str]| a.kind == "reset" && types.contains(&a.reset_type.as_str());
    let boot = |target: &str, enabled: &str| {
        a.kind == "boot_override" && a.target == target && a.enabled == enabled
    };
    match action {
        "on" => reset(&["On", "ForceOn"]),
        "off" => reset(&["ForceOff"]),
        "soft-off" => reset(&["GracefulShutdown"]),
        // On a machine that is off, a cycle powers it on.
        "cycle" => reset(&["PowerCycle", "ForceRestart", "On", "ForceOn"]),
        "boot-pxe" => boot("Pxe", "Once"),
        "boot-disk" => boot("Hdd", "Once"),
        "boot-pxe-persistent" => boot("Pxe", "Continuous"),
        "boot-disk-persistent" => boot("Hdd", "Continuous"),
        _ => false,
    }
}

/// A protobuf timestamp's seconds and nanoseconds as ms since the Unix epoch (0 before it).
fn ms_of(seconds: i64, nanos: i32) -> u64 {
    u64::try_from(seconds).unwrap_or(0) * 1_000 + u64::try_from(nanos).unwrap_or(0) / 1_000_000
}

/// `created_at` and `done_at` of a power command in ms.
fn times(c: &PowerCommand) -> (Option<u64>, Option<u64>) {
    (
        c.created_at.as_ref().map(|t| ms_of(t.seconds, t.nanos)),
        c.done_at.as_ref().map(|t| ms_of(t.seconds, t.nanos)),
    )
}

fn at_most_once(
    world: &World,
    actions: &BTreeMap<String, Vec<SimAction>>,
    commands: &[PowerCommand],
    v: &mut Vec<Violation>,
) {
    let mut found = Vec::new();
    for s in &world.sims {
        let Some(acts) = actions.get(&s.hostname) else {
            continue;
        };
        // Windows of this machine's commands: [created - slack, end].
        let cmds: Vec<(&PowerCommand, u64, u64)> = commands
            .iter()
            .filter(|c| c.system_id == s.system_id)
            .map(|c| {
                let (created, done) = times(c);
                let start = created.unwrap_or(0).saturating_sub(SLACK_MS);
                let end = match (c.state.as_str(), done) {
                    ("pending", _) | (_, None) => u64::MAX,
                    (_, Some(d)) if c.error_kind == "cancelled" => {
                        d + CANCELLED_GRACE.as_millis() as u64
                    }
                    (_, Some(d)) => d + SLACK_MS,
                };
                (c, start, end)
            })
            .collect();
        let mut used = vec![false; cmds.len()];
        let mut acts = acts.clone();
        acts.sort_by_key(|a| a.at_ms);
        for a in &acts {
            let best = cmds
                .iter()
                .enumerate()
                .filter(|(k, (c, start, end))| {
                    !used[*k] && *start <= a.at_ms && a.at_ms <= *end && explains(&c.action, a)
                })
                .min_by_key(|(_, (c, _, end))| (*end, c.id));
            match best {
                Some((k, _)) => used[k] = true,
                None => {
                    // The commands that could have caused it, had they not been used already: those
                    // whose window comes within NEAR_MS of it.
                    let near: Vec<String> = cmds
                        .iter()
                        .filter(|(c, start, end)| {
                            explains(&c.action, a)
                                && start.saturating_sub(NEAR_MS) <= a.at_ms
                                && a.at_ms <= end.saturating_add(NEAR_MS)
                        })
                        .map(|(c, ..)| {
                            format!(
                                "#{} {} {} rack={} created={:?} done={:?} {}",
                                c.id,
                                c.action,
                                c.state,
                                c.rack,
                                times(c).0,
                                times(c).1,
                                c.message
                            )
                        })
                        .collect();
                    found.push(format!(
                        "BMC of {} ({}) accepted {} {}{} at {} ms, which no power command of the record \
                         explains once (a command run twice?); commands near it that could, each \
                         already matched to another action: [{}]",
                        s.hostname,
                        s.system_id,
                        a.kind,
                        a.reset_type,
                        a.target,
                        a.at_ms,
                        near.join("; ")
                    ));
                }
            }
        }
    }
    cap(v, ViolationKind::PowerRepeated, found);
}

/// Command ids recorded as run successfully in two racks' done-logs.
fn repeated_on_racks(cluster: &LocalCluster, v: &mut Vec<Violation>) {
    let mut ran: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for r in cluster.racks() {
        let text = std::fs::read_to_string(r.dir.join("done.log")).unwrap_or_default();
        for line in text.lines() {
            let Ok(rec) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let success = rec.get("success").and_then(|s| s.as_bool()) == Some(true);
            if let (true, Some(id)) = (success, rec.get("id").and_then(|i| i.as_u64())) {
                let racks = ran.entry(id).or_default();
                if !racks.contains(&r.name) {
                    racks.push(r.name.clone());
                }
            }
        }
    }
    let found = ran
        .into_iter()
        .filter(|(_, racks)| racks.len() > 1)
        .map(|(id, racks)| format!("power command {id} ran successfully on racks {racks:?}"))
        .collect();
    cap(v, ViolationKind::PowerRepeated, found);
}

fn panics(cluster: &LocalCluster, v: &mut Vec<Violation>) {
    let mut logs: Vec<std::path::PathBuf> =
        cluster.regions().into_iter().map(|r| r.log_path).collect();
    logs.extend(cluster.racks().into_iter().map(|r| r.log));
    logs.push(cluster.sim_dir().join("sim.log"));
    let mut found = Vec::new();
    for p in logs {
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        for line in text.lines().filter(|l| l.contains("panicked")) {
            found.push(format!("{}: {}", p.display(), line.trim()));
        }
    }
    cap(v, ViolationKind::Panic, found);
}
