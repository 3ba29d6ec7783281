//! `ingot.rack.v1.RackSessionService`: the long-lived stream each rack controller keeps with one region,
//! served on the cluster (mutual-TLS) listener for rack certificates only.
//!
//! This is the transport half: the caller's certificate, Hello and Welcome, the stream and its timers, and
//! proto ↔ domain conversion. What to deliver and what to record is decided by
//! [`crate::app::rack_session`].

use super::status;
use crate::app::rack_session::{PowerCommandResult, RackHello, RackSessionState};
use crate::app::App;
use crate::command::PowerObservation;
use ingot_common::validate::{self, limits};
use ingot_common::{pki, DomainError};
use ingot_proto::convert::{bmc_to_rack, power_command_to_rack};
use ingot_proto::rack::v1::rack_session_service_server::RackSessionService;
use ingot_proto::rack::v1::{
    rack_message, region_message, Ack, Bmcs, HeartbeatAck, RackMessage, RegionMessage, Regions,
    Welcome,
};
use std::pin::Pin;
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
                        // The boot path's messages (recorded by `app::leases`, wired in by issue 11's work).
                        rack_message::Msg::LeaseCommit(_) | rack_message::Msg::Enlist(_) => {}
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
}
