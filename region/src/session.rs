//! `ingot.rack.v1.RackSessionService`: the long-lived stream each rack controller keeps with one region,
//! served on the cluster (mutual-TLS) listener for rack certificates only.
//!
//! A session: the rack says Hello; the region answers Welcome (its id, a fresh session id, every region's
//! cluster endpoint) and records the session through Raft. From then on the region sends the rack every
//! pending power command of a machine whose BMC it owns (again after each reconnect: delivery is at least
//! once; the rack runs each id once), records results through Raft and acknowledges them, and records a
//! heartbeat every [`HEARTBEAT_RECORD`] so the leader knows which racks are alive. A revoked rack's session
//! is cut at once; a session superseded by a newer one of the same rack ends.

use crate::app::App;
use crate::command::{BootTokens, Command, Op, PowerObservation};
use ingot_common::model::RackSession;
use ingot_common::{pki, secret, DomainError};
use ingot_proto::rack::v1::rack_session_service_server::RackSessionService;
use ingot_proto::rack::v1::{
    rack_message, region_message, Ack, Bmc, Bmcs, PowerCommand as WirePowerCommand, RackMessage,
    RegionMessage, Regions, Welcome,
};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// How often a session's heartbeat is recorded in the replicated log (the rack beats more often).
pub const HEARTBEAT_RECORD: Duration = Duration::from_millis(crate::state::HEARTBEAT_RECORD_MS);
/// How often the rack should beat.
pub const HEARTBEAT_MS: u32 = 500;
/// How long a new stream may take to say Hello.
const HELLO_WAIT: Duration = Duration::from_secs(10);
/// A command still pending this long after it was sent is sent again on the same session (its result may
/// have been lost, e.g. a region failing to record it during an election); the rack answers a repeat from
/// its done-log, or ignores it while it still runs.
const RESEND_AFTER: Duration = Duration::from_secs(10);
/// How often pending commands and revocation are checked even without a state change.
const POLL: Duration = Duration::from_millis(500);

/// The session service.
pub struct RackSessionServer {
    /// The application (writes go through Raft like any other).
    pub app: App,
}

/// The rack name in the caller's certificate (CN `rack-<name>`).
fn caller_rack<T>(req: &Request<T>) -> Result<String, Status> {
    let certs = req.peer_certs().ok_or_else(|| {
        Status::unauthenticated("rack sessions require a rack certificate from the cluster CA")
    })?;
    let cn = certs
        .first()
        .and_then(|c| pki::common_name(c.as_ref()))
        .ok_or_else(|| Status::unauthenticated("client certificate has no common name"))?;
    cn.strip_prefix("rack-")
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .ok_or_else(|| {
            Status::permission_denied(format!(
                "'{cn}' is not a rack: only rack certificates may open rack sessions"
            ))
        })
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<RegionMessage, Status>> + Send>>;

#[tonic::async_trait]
impl RackSessionService for RackSessionServer {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        req: Request<Streaming<RackMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let name = caller_rack(&req)?;
        let known = self
            .app
            .read(false, |st| st.data.racks.get(&name).map(|r| r.revoked))
            .await
            .map_err(crate::api::status)?;
        match known {
            None => {
                return Err(Status::permission_denied(format!(
                    "rack '{name}' is not registered (or was removed); register it again with `ingot-rack register`"
                )))
            }
            Some(true) => {
                return Err(Status::permission_denied(format!(
                    "rack '{name}' is revoked; an admin must register it again under a new token"
                )))
            }
            Some(false) => {}
        }
        let inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(run(self.app.clone(), name, inbound, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

fn msg(m: region_message::Msg) -> Result<RegionMessage, Status> {
    Ok(RegionMessage { msg: Some(m) })
}

/// One session, from Hello to the end of the stream.
async fn run(
    app: App,
    name: String,
    mut inbound: Streaming<RackMessage>,
    tx: mpsc::Sender<Result<RegionMessage, Status>>,
) {
    let actor = format!("rack:{name}");
    let hello = match tokio::time::timeout(HELLO_WAIT, inbound.message()).await {
        Ok(Ok(Some(RackMessage {
            msg: Some(rack_message::Msg::Hello(h)),
        }))) => h,
        _ => {
            let _ = tx
                .send(Err(Status::invalid_argument(
                    "a rack session starts with Hello",
                )))
                .await;
            return;
        }
    };
    let session_id = secret::generate("");
    let endpoints = app.cluster_endpoints();
    let welcome = Welcome {
        region_id: app.region.id,
        region_name: app.region.name.clone(),
        session_id: session_id.clone(),
        heartbeat_ms: HEARTBEAT_MS,
        regions: Some(Regions {
            endpoints: endpoints.clone(),
        }),
    };
    if tx
        .send(msg(region_message::Msg::Welcome(welcome)))
        .await
        .is_err()
    {
        return;
    }
    tracing::info!(rack = %name, session = %session_id, "rack session started");
    // Record the session (waits out an election if the leader just died; the stream is served meanwhile).
    let recorded = Arc::new(AtomicBool::new(false));
    {
        let app = app.clone();
        let recorded = recorded.clone();
        let op = Op::RackConnected {
            name: name.clone(),
            session: RackSession {
                session_id: session_id.clone(),
                region_id: app.region.id,
                region_name: app.region.name.clone(),
                version: hello.version.clone(),
                services: hello.services.clone(),
                drivers: hello.drivers.clone(),
                connected_ms: 0,
                last_heartbeat_ms: 0,
                ended_ms: None,
            },
        };
        let cmd = Command::new(actor.as_str(), op);
        let tx = tx.clone();
        tokio::spawn(async move {
            match app.region.write(cmd).await {
                Ok(_) => recorded.store(true, Ordering::SeqCst),
                Err(e) => {
                    tracing::warn!("recording the rack session failed: {e}");
                    let _ = tx
                        .send(Err(Status::unavailable(format!(
                            "the region could not record the session ({e}); reconnect"
                        ))))
                        .await;
                }
            }
        });
    }
    let mut applied = app.region.applied.subscribe();
    let mut sent: HashMap<u64, Instant> = HashMap::new();
    let mut last_record = Instant::now();
    let mut last_seen_ms = ingot_common::now_ms();
    let mut last_endpoints = endpoints;
    // Fingerprint of the BMC list last sent (0: none yet, so the first poll tick sends it).
    let mut last_bmcs = 0u64;
    let mut poll = tokio::time::interval(POLL);
    loop {
        // Cut, superseded, or something to deliver?
        match deliver(
            &app,
            &name,
            &session_id,
            recorded.load(Ordering::SeqCst),
            &mut sent,
        ) {
            Err(reason) => {
                let _ = tx.send(Err(Status::permission_denied(reason))).await;
                break;
            }
            Ok(cmds) => {
                let mut closed = false;
                for c in cmds {
                    if tx
                        .send(msg(region_message::Msg::PowerCommand(c)))
                        .await
                        .is_err()
                    {
                        closed = true;
                        break;
                    }
                }
                if closed {
                    break;
                }
            }
        }
        tokio::select! {
            m = inbound.message() => match m {
                Ok(Some(RackMessage { msg: Some(m) })) => { last_seen_ms = ingot_common::now_ms(); match m {
                    rack_message::Msg::Heartbeat(_) => {
                        if recorded.load(Ordering::SeqCst) && last_record.elapsed() >= HEARTBEAT_RECORD {
                            last_record = Instant::now();
                            let op = Op::RackHeartbeat { name: name.clone(), session_id: session_id.clone() };
                            let cmd = Command::new(actor.as_str(), op);
                            let app = app.clone();
                            tokio::spawn(async move {
                                if let Err(e) = app.region.write(cmd).await {
                                    tracing::debug!("recording a rack heartbeat: {e}");
                                }
                            });
                        }
                    }
                    rack_message::Msg::PowerCommandResult(r) => {
                        let op = Op::PowerResult {
                            id: r.id,
                            rack: name.clone(),
                            success: r.success,
                            error_kind: r.error_kind,
                            message: r.message,
                            power_state: r.power_state,
                            next_boot: BootTokens::generate(),
                        };
                        let cmd = Command::new(actor.as_str(), op);
                        let app = app.clone();
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            match app.region.write(cmd).await {
                                Ok(_) => {
                                    let _ = tx.send(msg(region_message::Msg::Ack(Ack { ids: vec![r.id] }))).await;
                                }
                                Err(DomainError { code: ingot_common::ErrorCode::NotFound, .. }) => {
                                    let _ = tx.send(msg(region_message::Msg::Ack(Ack { ids: vec![r.id] }))).await;
                                }
                                Err(e) => tracing::warn!("recording result of command {}: {e}", r.id),
                            }
                        });
                    }
                    rack_message::Msg::Observations(o) => {
                        let items: Vec<PowerObservation> = o
                            .items
                            .into_iter()
                            .take(MAX_OBSERVATIONS)
                            .map(|i| PowerObservation {
                                system_id: i.system_id,
                                power_state: i.power_state,
                                error_kind: i.error_kind,
                                message: i.message.chars().take(1000).collect(),
                                observed_ms: i.observed_ms,
                            })
                            .collect();
                        if recorded.load(Ordering::SeqCst) && !items.is_empty() {
                            let op = Op::PowerObserved { rack: name.clone(), items };
                            let cmd = Command::new(actor.as_str(), op);
                            let app = app.clone();
                            tokio::spawn(async move {
                                if let Err(e) = app.region.write(cmd).await {
                                    tracing::debug!("recording power observations: {e}");
                                }
                            });
                        }
                    }
                    rack_message::Msg::Hello(_) => {}
                }},
                Ok(Some(RackMessage { msg: None })) => {}
                Ok(None) | Err(_) => break,
            },
            r = applied.changed() => if r.is_err() { break },
            _ = poll.tick() => {
                let (fingerprint, list) = bmcs(&app, &name, last_bmcs);
                last_bmcs = fingerprint;
                if let Some(list) = list {
                    if tx.send(msg(region_message::Msg::Bmcs(list))).await.is_err() {
                        break;
                    }
                }
                let now = app.cluster_endpoints();
                if now != last_endpoints {
                    last_endpoints = now.clone();
                    if tx.send(msg(region_message::Msg::Regions(Regions { endpoints: now }))).await.is_err() {
                        break;
                    }
                }
            }
            _ = tx.closed() => break,
        }
    }
    tracing::info!(rack = %name, session = %session_id, "rack session ended");
    let op = Op::RackDisconnected {
        name: name.clone(),
        session_id,
        last_seen_ms,
    };
    let cmd = Command::new(actor.as_str(), op);
    tokio::spawn(async move {
        let _ = app.region.write(cmd).await;
    });
}

/// The pending commands this session has not sent yet for machines whose BMC the rack owns; an error
/// when the rack was revoked or another session of it took over.
fn deliver(
    app: &App,
    name: &str,
    session_id: &str,
    recorded: bool,
    sent: &mut HashMap<u64, Instant>,
) -> Result<Vec<WirePowerCommand>, String> {
    let st = app.region.state.read().unwrap_or_else(|p| p.into_inner());
    let Some(r) = st.data.racks.get(name) else {
        return Err(format!("rack '{name}' is no longer registered"));
    };
    if r.revoked {
        return Err(format!("rack '{name}' was revoked"));
    }
    if recorded {
        match &r.session {
            Some(s) if s.session_id != session_id => {
                return Err(format!(
                    "a newer session of rack '{name}' (on region {}) took over",
                    s.region_name
                ))
            }
            _ => {}
        }
    }
    sent.retain(|id, _| st.pending_commands.contains(id));
    let mut out = Vec::new();
    // Commands of one machine run one at a time, in order (a power plan's `boot-pxe` before its `cycle`):
    // a machine with an older pending command gets nothing newer until that one's result is recorded.
    let mut busy: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for id in &st.pending_commands {
        let Some(c) = st.data.commands.get(id) else {
            continue;
        };
        if !busy.insert(c.system_id.as_str()) {
            continue;
        }
        if sent.get(id).is_some_and(|at| at.elapsed() < RESEND_AFTER) {
            continue;
        }
        let Some(m) = st.machine(&c.system_id) else {
            continue;
        };
        if m.rack.as_deref() != Some(name) {
            continue;
        }
        sent.insert(*id, Instant::now());
        out.push(WirePowerCommand {
            id: *id,
            system_id: c.system_id.clone(),
            action: c.action.clone(),
            driver: m.power.driver.clone(),
            params: m.power.params.clone().into_iter().collect(),
        });
    }
    Ok(out)
}

/// Most observations recorded from one message (a rack sends at most one per BMC it owns).
const MAX_OBSERVATIONS: usize = 20_000;

/// The BMCs rack `name` owns and should monitor (drivers that reach a real BMC), as a fingerprint, and as the
/// list only when the fingerprint differs from `last` (the session sends it only when it changed, and this
/// runs every poll tick: no list is built for nothing).
fn bmcs(app: &App, name: &str, last: u64) -> (u64, Option<Bmcs>) {
    use std::hash::{Hash, Hasher};
    let st = app.region.state.read().unwrap_or_else(|p| p.into_inner());
    let owned = || {
        st.by_rack
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|id| st.machine(id))
            .filter(|m| crate::apply::power::rack_driven(&m.power.driver))
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for m in owned() {
        m.system_id.hash(&mut h);
        m.power.hash(&mut h);
    }
    // Never 0, so an empty list is sent once too.
    let fp = h.finish() | 1;
    if fp == last {
        return (fp, None);
    }
    let bmcs = owned()
        .map(|m| Bmc {
            system_id: m.system_id.clone(),
            driver: m.power.driver.clone(),
            params: m.power.params.clone().into_iter().collect(),
        })
        .collect();
    (
        fp,
        Some(Bmcs {
            bmcs,
            poll_interval_ms: 0,
        }),
    )
}
