//! `ingot.rack.v1.RackSessionService`: the long-lived stream each rack controller keeps with one region,
//! served on the cluster (mutual-TLS) listener for rack certificates only.
//!
//! This is the transport half: the caller's certificate, Hello and Welcome, the stream and its timers, and
//! proto ↔ domain conversion. What to deliver and what to record is decided by
//! [`crate::app::rack_session`].

use super::status;
use crate::app::boot::{EnlistRequest, LeasesUpdate, RackBootConfig, ENLIST_PER_MESSAGE};
use crate::app::boot_intent::{IntentImage, IntentKey};
use crate::app::rack_session::{PowerCommandResult, RackHello, RackSessionState};
use crate::app::App;
use crate::command::op::{
    BootEventRecord, MAX_BOOT_EVENTS_PER_OP, MAX_BOOT_EVENT_DETAIL, MAX_LEASES_PER_COMMIT,
};
use crate::command::PowerObservation;
use ingot_common::image::{BootStep, ImageFile};
use ingot_common::net::{Cidr, ClientArch, Lease};
use ingot_common::validate::{self, limits};
use ingot_common::{pki, DomainError, Mac};
use ingot_proto::convert::{
    bmc_to_rack, lease_to_rack, power_command_to_rack, subnet_config_to_rack,
};
use ingot_proto::rack::v1 as rack;
use ingot_proto::rack::v1::rack_session_service_server::RackSessionService;
use ingot_proto::rack::v1::{
    rack_message, region_message, Ack, Bmcs, HeartbeatAck, RackMessage, RegionMessage, Regions,
    Welcome,
};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// How long a new stream may take to say Hello.
const HELLO_WAIT: Duration = Duration::from_secs(10);
/// How often pending power commands, the BMC list, the regions and revocation are checked even without a
/// state change.
const POLL: Duration = Duration::from_millis(500);

/// The session service.
pub struct RackSessionServer {
    /// The application (writes go through Raft like any other).
    pub app: App,
}

/// The rack name in the caller's certificate (CN `rack-<name>`).
pub(crate) fn caller_rack<T>(req: &Request<T>) -> Result<String, Status> {
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
        self.app.admit_rack_session(&name).await.map_err(status)?;
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

/// Monitor readings as the log records them, bounded ([`validate::power_report`], the machine key, and
/// the driver's message cut to [`limits::TEXT`]); a reading out of bounds is the rack's bug and refused,
/// naming it (`observations.items[3].system_id`).
fn observations(
    items: Vec<ingot_proto::rack::v1::PowerObservation>,
) -> Result<Vec<PowerObservation>, DomainError> {
    let mut out = Vec::with_capacity(items.len());
    for (n, i) in items.into_iter().enumerate() {
        let field = format!("observations.items[{n}]");
        validate::bytes(&format!("{field}.system_id"), &i.system_id, limits::KEY)?;
        validate::power_report(&field, &i.error_kind, &i.power_state)?;
        let mut message = i.message;
        validate::truncate_text(&mut message, limits::TEXT);
        out.push(PowerObservation {
            system_id: i.system_id,
            power_state: i.power_state,
            error_kind: i.error_kind,
            message,
            observed_ms: i.observed_ms,
        });
    }
    Ok(out)
}

/// A power command's result as the rack sent it, bounded like [`observations`].
fn power_command_result(
    r: ingot_proto::rack::v1::PowerCommandResult,
) -> Result<PowerCommandResult, DomainError> {
    validate::power_report("power_command_result", &r.error_kind, &r.power_state)?;
    let mut message = r.message;
    validate::truncate_text(&mut message, limits::TEXT);
    Ok(PowerCommandResult {
        id: r.id,
        success: r.success,
        error_kind: r.error_kind,
        message,
        power_state: r.power_state,
    })
}

/// Most lease batches of one session being recorded at once: batches are recorded concurrently (the
/// proposer packs them into shared log entries); past this many the session stops reading from the rack
/// until one is answered (back-pressure, not a drop).
const COMMITS_IN_FLIGHT: usize = 256;
/// Agent calls of one session answered at once (each waits for a read or a write of the log); past it a
/// call is answered `Unavailable` at once and the agent retries.
const AGENT_CALLS_IN_FLIGHT: usize = 64;
/// Longest text of a malformed lease's address echoed back in its refusal.
const ECHO_MAX: usize = 64;

/// A lease as the rack sent it, parsed (its `rack` field is ignored: the session stamps it); a malformed
/// one is refused naming the field, with its address echoed (cut to [`ECHO_MAX`] bytes).
fn lease_from_rack(l: rack::Lease) -> Result<Lease, rack::RefusedLease> {
    let mut lease = ingot_proto::convert::lease_from_rack(&l).map_err(|e| {
        let mut ip = l.ip.clone();
        validate::truncate_text(&mut ip, ECHO_MAX);
        rack::RefusedLease {
            ip,
            reason: e.message,
        }
    })?;
    // Cut here already: the rack may relay whatever a client sent in option 12.
    validate::truncate_text(&mut lease.hostname, crate::command::op::MAX_LEASE_HOSTNAME);
    lease.rack = String::new();
    Ok(lease)
}

/// The `BootConfig` message.
fn boot_config_to_rack(c: &RackBootConfig) -> rack::BootConfig {
    rack::BootConfig {
        subnets: c
            .subnets
            .iter()
            .map(|s| subnet_config_to_rack(&s.subnet, s.role, s.active))
            .collect(),
        known: c
            .known
            .iter()
            .map(|(mac, id)| rack::KnownMac {
                mac: mac.to_string(),
                system_id: id.clone(),
            })
            .collect(),
    }
}

/// A `Leases` message.
fn leases_to_rack(u: &LeasesUpdate) -> rack::Leases {
    rack::Leases {
        subnet: u.subnet.to_string(),
        full: u.full,
        leases: u.leases.iter().map(lease_to_rack).collect(),
    }
}

/// The enlistment requests of an `Enlist` message: at most [`ENLIST_PER_MESSAGE`] read; a malformed one
/// (MAC, subnet) is dropped with a debug log (an unknown architecture is `other`).
fn enlist_from_rack(macs: Vec<rack::EnlistMac>) -> Vec<EnlistRequest> {
    macs.into_iter()
        .take(ENLIST_PER_MESSAGE)
        .filter_map(|e| {
            let (Ok(mac), Ok(subnet)) = (e.mac.parse::<Mac>(), e.subnet.parse::<Cidr>()) else {
                tracing::debug!("malformed enlistment request dropped (mac or subnet)");
                return None;
            };
            let arch = e.arch.parse().unwrap_or(ClientArch::Other);
            Some(EnlistRequest { mac, arch, subnet })
        })
        .collect()
}

/// A `BlobFile` of a boot intent: the file and the image it belongs to.
fn blob_file_to_rack(img: &IntentImage, f: &ImageFile) -> rack::BlobFile {
    rack::BlobFile {
        image: img.name.clone(),
        name: f.name.clone(),
        sha256: f.blob.to_hex(),
        size: f.size,
        kind: img.kind.as_str().to_string(),
        arch: img.arch.clone(),
    }
}

/// Answers a `BootIntentRequest`: the key parsed (a MAC in any notation, or a system id of at most
/// [`limits::KEY`] bytes), decided by [`RackSessionState::boot_intent`]; a malformed request or a
/// refusal (rate limit) is an answer with `error` set, naming the field — the rack's script retries.
fn boot_intent_reply(
    session: &mut RackSessionState,
    r: rack::BootIntentRequest,
) -> rack::BootIntentReply {
    let id = r.id;
    let key = if !r.mac.is_empty() {
        r.mac
            .parse::<Mac>()
            .map(IntentKey::Mac)
            .map_err(|_| DomainError::invalid("boot_intent_request.mac", "not a MAC address"))
    } else if !r.system_id.is_empty() {
        validate::bytes("boot_intent_request.system_id", &r.system_id, limits::KEY)
            .map(|()| IntentKey::SystemId(r.system_id))
    } else {
        Err(DomainError::invalid(
            "boot_intent_request.mac",
            "a boot intent request names a mac or a system_id",
        ))
    };
    let answer = key.and_then(|k| session.boot_intent(&k));
    match answer {
        Ok(a) => {
            let ramdisk = |f: &Option<ImageFile>| {
                f.as_ref()
                    .zip(a.ramdisk.as_ref())
                    .map(|(f, img)| blob_file_to_rack(img, f))
            };
            rack::BootIntentReply {
                id,
                system_id: a.intent.system_id.clone().unwrap_or_default(),
                purpose: a.intent.purpose.as_str().to_string(),
                kernel: ramdisk(&a.intent.kernel),
                initrd: ramdisk(&a.intent.initrd),
                disk: a
                    .intent
                    .disk
                    .as_ref()
                    .zip(a.disk_image.as_ref())
                    .map(|(f, img)| blob_file_to_rack(img, f)),
                problem: a.intent.problem.clone(),
                error: String::new(),
            }
        }
        Err(e) => rack::BootIntentReply {
            id,
            error: e.to_string(),
            ..Default::default()
        },
    }
}

/// The boot steps of a `BootEvents` message as the log records them: at most
/// [`MAX_BOOT_EVENTS_PER_OP`] read, details cut to [`MAX_BOOT_EVENT_DETAIL`] bytes; one with a
/// malformed MAC or an unknown step is dropped (a newer rack's step, or a bug).
fn boot_events_from_rack(events: Vec<rack::BootEvent>) -> Vec<BootEventRecord> {
    events
        .into_iter()
        .take(MAX_BOOT_EVENTS_PER_OP)
        .filter_map(|e| {
            let (Ok(mac), Some(step)) = (e.mac.parse::<Mac>(), BootStep::parse(&e.step)) else {
                tracing::debug!("malformed boot event dropped (mac or step)");
                return None;
            };
            let mut detail = e.detail;
            validate::truncate_text(&mut detail, MAX_BOOT_EVENT_DETAIL);
            Some(BootEventRecord {
                mac,
                step,
                detail,
                at_ms: e.at_ms,
            })
        })
        .collect()
}

/// Sends the boot configuration, the leases due and the image files to hold (when changed) on this
/// session; false when the stream is closed.
async fn send_boot(
    session: &mut RackSessionState,
    tx: &mpsc::Sender<Result<RegionMessage, Status>>,
) -> bool {
    if let Some(c) = session.boot_config_changed() {
        let m = region_message::Msg::BootConfig(boot_config_to_rack(&c));
        if tx.send(msg(m)).await.is_err() {
            return false;
        }
    }
    for u in session.leases_due() {
        let m = region_message::Msg::Leases(leases_to_rack(&u));
        if tx.send(msg(m)).await.is_err() {
            return false;
        }
    }
    if let Some(files) = session.cache_wanted_changed() {
        let m = region_message::Msg::CacheWanted(cache_wanted_to_rack(&files));
        if tx.send(msg(m)).await.is_err() {
            return false;
        }
    }
    true
}

/// The `CacheWanted` message.
fn cache_wanted_to_rack(files: &[crate::app::prefetch::PrefetchFile]) -> rack::CacheWanted {
    rack::CacheWanted {
        files: files
            .iter()
            .map(|f| rack::BlobFile {
                image: f.image.clone(),
                name: f.file.name.clone(),
                sha256: f.file.blob.to_hex(),
                size: f.file.size,
                kind: f.kind.as_str().to_string(),
                arch: f.arch.clone(),
            })
            .collect(),
    }
}

/// Sends every pending power command due on this session; an error status ends the session (revoked,
/// superseded, or the stream closed).
async fn send_due_power_commands(
    session: &mut RackSessionState,
    tx: &mpsc::Sender<Result<RegionMessage, Status>>,
) -> Result<(), Option<Status>> {
    let due = session.due_power_commands().map_err(|e| Some(status(e)))?;
    for d in due {
        let m =
            region_message::Msg::PowerCommand(power_command_to_rack(&d.power_command, &d.power));
        tx.send(msg(m)).await.map_err(|_| None)?;
    }
    Ok(())
}

/// One session, from Hello to the end of the stream.
async fn run(
    app: App,
    name: String,
    mut inbound: Streaming<RackMessage>,
    tx: mpsc::Sender<Result<RegionMessage, Status>>,
) {
    let hello = match tokio::time::timeout(HELLO_WAIT, inbound.message()).await {
        Ok(Ok(Some(RackMessage {
            msg: Some(rack_message::Msg::Hello(h)),
        }))) => RackHello {
            version: h.version,
            services: h.services,
            drivers: h.drivers,
        },
        _ => {
            let _ = tx
                .send(Err(Status::invalid_argument(
                    "a rack session starts with Hello",
                )))
                .await;
            return;
        }
    };
    if let Err(e) = validate::rack_hello(&hello.version, &hello.services, &hello.drivers) {
        let _ = tx.send(Err(status(e))).await;
        return;
    }
    let (mut session, w) = app.start_rack_session(name);
    let welcome = Welcome {
        region_id: w.region_id,
        region_name: w.region_name,
        session_id: w.session_id,
        heartbeat_ms: w.heartbeat_ms,
        lease_ms: w.lease_ms,
        regions: Some(Regions {
            endpoints: w.endpoints,
        }),
    };
    if tx
        .send(msg(region_message::Msg::Welcome(welcome)))
        .await
        .is_err()
    {
        return;
    }
    tracing::info!(rack = %session.name(), session = %session.session_id(), "rack session started");
    // Record the session (waits out an election if the leader just died; the stream is served meanwhile).
    {
        let record = session.record_start(hello);
        let tx = tx.clone();
        tokio::spawn(async move {
            let recorded = record.await;
            if recorded.is_ok() {
                // The Hello (seq 0) is recorded: the rack's lease starts.
                let _ = tx
                    .send(msg(region_message::Msg::HeartbeatAck(HeartbeatAck {
                        seq: 0,
                    })))
                    .await;
            }
            if let Err(e) = recorded {
                tracing::warn!("recording the rack session failed: {e}");
                let _ = tx
                    .send(Err(Status::unavailable(format!(
                        "the region could not record the session ({e}); reconnect"
                    ))))
                    .await;
            }
        });
    }
    let mut applied = session.applied();
    let mut poll = tokio::time::interval(POLL);
    let commits = Arc::new(tokio::sync::Semaphore::new(COMMITS_IN_FLIGHT));
    let agent_calls = Arc::new(tokio::sync::Semaphore::new(AGENT_CALLS_IN_FLIGHT));
    loop {
        // Cut, superseded, or something to deliver?
        if let Err(cut) = send_due_power_commands(&mut session, &tx).await {
            if let Some(s) = cut {
                let _ = tx.send(Err(s)).await;
            }
            break;
        }
        tokio::select! {
            m = inbound.message() => match m {
                Ok(Some(RackMessage { msg: Some(m) })) => {
                    session.seen();
                    match m {
                        rack_message::Msg::Heartbeat(h) => if let Some(record) = session.heartbeat() {
                            // Acknowledged once recorded: the rack's lease runs from this heartbeat.
                            let tx = tx.clone();
                            tokio::spawn(async move {
                                match record.await {
                                    Ok(()) => {
                                        let ack = HeartbeatAck { seq: h.seq };
                                        let _ = tx.send(msg(region_message::Msg::HeartbeatAck(ack))).await;
                                    }
                                    Err(e) => tracing::debug!("recording a rack heartbeat: {e}"),
                                }
                            });
                        },
                        rack_message::Msg::PowerCommandResult(r) => {
                            let id = r.id;
                            let r = match power_command_result(r) {
                                Ok(r) => r,
                                Err(e) => {
                                    let _ = tx.send(Err(status(e))).await;
                                    break;
                                }
                            };
                            let record = session.record_power_command_result(r);
                            let tx = tx.clone();
                            tokio::spawn(async move {
                                match record.await {
                                    Ok(()) => {
                                        let _ = tx.send(msg(region_message::Msg::Ack(Ack { ids: vec![id] }))).await;
                                    }
                                    Err(e) => tracing::warn!("recording result of command {id}: {e}"),
                                }
                            });
                        }
                        rack_message::Msg::Observations(o) => match observations(o.items) {
                            Ok(items) => session.observed(items),
                            Err(e) => {
                                let _ = tx.send(Err(status(e))).await;
                                break;
                            }
                        },
                        rack_message::Msg::Hello(_) => {}
                        rack_message::Msg::BootIntentRequest(r) => {
                            let reply = boot_intent_reply(&mut session, r);
                            if tx.send(msg(region_message::Msg::BootIntent(Box::new(reply)))).await.is_err() {
                                break;
                            }
                        }
                        rack_message::Msg::BootEvents(e) => {
                            session.record_boot_events(boot_events_from_rack(e.events));
                        }
                        rack_message::Msg::LeaseCommit(c) => {
                            let batch = c.batch;
                            if c.leases.len() > MAX_LEASES_PER_COMMIT {
                                // Refused whole, unparsed: nothing recorded (the rack's bug; it logs it).
                                let answer = rack::LeasesCommitted {
                                    batch,
                                    refused: Vec::new(),
                                    error: format!(
                                        "lease_commit.leases: {} leases in one batch, at most {MAX_LEASES_PER_COMMIT}: send smaller batches",
                                        c.leases.len()
                                    ),
                                };
                                if tx.send(msg(region_message::Msg::LeasesCommitted(answer))).await.is_err() {
                                    break;
                                }
                                continue;
                            }
                            let Ok(permit) = commits.clone().acquire_owned().await else { break };
                            let mut refused = Vec::new();
                            let mut leases = Vec::with_capacity(c.leases.len());
                            for l in c.leases {
                                match lease_from_rack(l) {
                                    Ok(l) => leases.push(l),
                                    Err(r) => refused.push(r),
                                }
                            }
                            let record = session.commit_leases(batch, leases);
                            let tx = tx.clone();
                            tokio::spawn(async move {
                                let answer = match record.await {
                                    Ok(r) => {
                                        refused.extend(r.into_iter().map(|x| rack::RefusedLease {
                                            ip: x.ip.to_string(),
                                            reason: x.reason,
                                        }));
                                        rack::LeasesCommitted { batch, refused, error: String::new() }
                                    }
                                    Err(e) => {
                                        tracing::debug!("recording lease batch {batch}: {e}");
                                        rack::LeasesCommitted { batch, refused: Vec::new(), error: e.to_string() }
                                    }
                                };
                                drop(permit);
                                let _ = tx.send(msg(region_message::Msg::LeasesCommitted(answer))).await;
                            });
                        }
                        rack_message::Msg::Enlist(e) => session.enlist(enlist_from_rack(e.macs)),
                        rack_message::Msg::AgentCall(call) => {
                            // Each call on a task of its own (lookups and reports wait for the log), at
                            // most AGENT_CALLS_IN_FLIGHT at once; the answer goes back by the call's id.
                            let id = call.id;
                            let work = super::agent::agent_request_from_rack(*call)
                                .and_then(|req| session.agent_call(req));
                            match (work, agent_calls.clone().try_acquire_owned()) {
                                (Ok(work), Ok(permit)) => {
                                    let tx = tx.clone();
                                    tokio::spawn(async move {
                                        let answer = super::agent::agent_answer(id, work.await);
                                        drop(permit);
                                        let _ = tx.send(msg(region_message::Msg::AgentAnswer(Box::new(answer)))).await;
                                    });
                                }
                                (work, _) => {
                                    let e = work.err().unwrap_or_else(|| DomainError::unavailable(
                                        "too many agent calls of this rack in flight: ask again shortly",
                                    ));
                                    let answer = super::agent::agent_answer(id, Err(e));
                                    if tx.send(msg(region_message::Msg::AgentAnswer(Box::new(answer)))).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    }
                }
                Ok(Some(RackMessage { msg: None })) => {}
                Ok(None) | Err(_) => break,
            },
            r = applied.changed() => if r.is_err() { break },
            _ = poll.tick() => {
                if let Some(list) = session.bmcs_changed() {
                    let bmcs = Bmcs {
                        bmcs: list.iter().map(|b| bmc_to_rack(&b.system_id, &b.power)).collect(),
                        poll_interval_ms: 0,
                    };
                    if tx.send(msg(region_message::Msg::Bmcs(bmcs))).await.is_err() {
                        break;
                    }
                }
                if let Some(endpoints) = session.endpoints_changed() {
                    if tx.send(msg(region_message::Msg::Regions(Regions { endpoints }))).await.is_err() {
                        break;
                    }
                }
                if !send_boot(&mut session, &tx).await {
                    break;
                }
            }
            _ = tx.closed() => break,
        }
    }
    session.end();
}

#[cfg(test)]
mod tests {
    use super::*;
    use ingot_proto::rack::v1 as rack;

    #[test]
    fn rack_reports_are_bounded_at_the_edge() {
        let long_text = format!("{}é", "m".repeat(limits::TEXT - 1));
        let r = power_command_result(rack::PowerCommandResult {
            id: 7,
            error_kind: "bmc".into(),
            message: long_text.clone(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            r.message,
            "m".repeat(limits::TEXT - 1),
            "cut at a character boundary"
        );
        let e = power_command_result(rack::PowerCommandResult {
            error_kind: "k".repeat(limits::WORD + 1),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("power_command_result.error_kind"));
        let item = |system_id: String, power_state: &str| rack::PowerObservation {
            system_id,
            power_state: power_state.into(),
            message: long_text.clone(),
            ..Default::default()
        };
        let ok = observations(vec![item("m1".into(), "on")]).unwrap();
        assert_eq!(ok[0].message.len(), limits::TEXT - 1);
        let e = observations(vec![
            item("m1".into(), "on"),
            item("s".repeat(limits::KEY + 1), "on"),
        ])
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("observations.items[1].system_id"));
        let e = observations(vec![item("m1".into(), &"o".repeat(limits::WORD + 1))]).unwrap_err();
        assert_eq!(
            e.field.as_deref(),
            Some("observations.items[0].power_state")
        );
    }

    #[test]
    fn hostile_boot_messages_are_parsed_bounded_and_never_panic() {
        let good = rack::Lease {
            ip: "10.20.0.100".into(),
            subnet: "10.20.0.0/24".into(),
            mac: "52-54-00-00-00-01".into(),
            state: "bound".into(),
            start_ms: 1,
            expires_ms: 2,
            hostname: format!(
                "{}é",
                "h".repeat(crate::command::op::MAX_LEASE_HOSTNAME - 1)
            ),
            rack: "someone else".into(),
        };
        let l = lease_from_rack(good.clone()).expect("good");
        assert_eq!(
            l.hostname.len(),
            crate::command::op::MAX_LEASE_HOSTNAME - 1,
            "cut at a boundary"
        );
        assert_eq!(
            l.rack, "",
            "the session stamps the rack, not the rack's message"
        );
        assert_eq!(lease_to_rack(&l).mac, "52:54:00:00:00:01");
        let bad = |f: &dyn Fn(&mut rack::Lease)| {
            let mut x = good.clone();
            f(&mut x);
            lease_from_rack(x).unwrap_err()
        };
        let r = bad(&|x| x.ip = "9".repeat(100_000));
        assert!(
            r.ip.len() <= ECHO_MAX && r.reason.starts_with("ip:"),
            "{r:?}"
        );
        assert!(bad(&|x| x.subnet = "10.20.0.1/24".into())
            .reason
            .starts_with("subnet:"));
        assert!(bad(&|x| x.mac = "zz".into()).reason.starts_with("mac:"));
        assert!(bad(&|x| x.state = "stolen".into())
            .reason
            .starts_with("state:"));
        let ask = |mac: &str, subnet: &str| rack::EnlistMac {
            mac: mac.into(),
            arch: "uefi-x64".into(),
            subnet: subnet.into(),
        };
        let asks = vec![
            ask("52:54:00:00:00:01", "10.20.0.0/24"),
            ask("nope", "10.20.0.0/24"),
            ask("52:54:00:00:00:02", "10.20.0.0"),
            rack::EnlistMac {
                arch: "vax".into(),
                ..ask("52:54:00:00:00:03", "10.20.0.0/24")
            },
        ];
        let got = enlist_from_rack(asks);
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].arch, got[1].arch),
            (ClientArch::UefiX64, ClientArch::Other)
        );
        let many = vec![ask("52:54:00:00:00:01", "10.20.0.0/24"); ENLIST_PER_MESSAGE * 3];
        assert_eq!(enlist_from_rack(many).len(), ENLIST_PER_MESSAGE);
    }

    #[test]
    fn boot_events_are_parsed_and_bounded_at_the_edge() {
        let ev = |mac: &str, step: &str, detail: String| rack::BootEvent {
            mac: mac.into(),
            step: step.into(),
            detail,
            at_ms: 3,
        };
        let got = boot_events_from_rack(vec![
            ev("52-54-00-00-00-01", "script", "d".repeat(100_000)),
            ev("nope", "dhcp", String::new()),
            ev("52:54:00:00:00:02", "teleport", String::new()),
            ev("52:54:00:00:00:03", "file-finished", "kernel".into()),
        ]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].detail.len(), MAX_BOOT_EVENT_DETAIL);
        assert_eq!(got[0].mac.to_string(), "52:54:00:00:00:01");
        assert_eq!(got[1].step, BootStep::FileFinished);
        let many = vec![ev("52:54:00:00:00:01", "dhcp", String::new()); MAX_BOOT_EVENTS_PER_OP * 4];
        assert_eq!(boot_events_from_rack(many).len(), MAX_BOOT_EVENTS_PER_OP);
    }
}
