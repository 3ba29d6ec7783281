//! `ingot.v1.AgentService`: reports from a machine's current boot, authenticated by its boot token.

use super::status;
use crate::app::agent::{AgentReply, AgentRequest};
use crate::app::App;
use ingot_common::agent::{self, AgentNext};
use ingot_common::image::FILE_DISK;
use ingot_common::{validate, DomainError, Mac, Machine};
use ingot_proto::convert::{erase_to_proto, inventory_from_proto, status_to_proto};
use ingot_proto::v1::agent_service_server::AgentService;
use ingot_proto::v1::*;
use tonic::{Request, Response, Status};

/// AgentService over [`App`].
pub struct AgentApi {
    /// The application.
    pub app: App,
}

fn answer(m: Machine) -> Response<ReportResponse> {
    Response::new(ReportResponse {
        status: status_to_proto(m.status) as i32,
        revision: m.revision,
    })
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn report_inventory(
        &self,
        req: Request<ReportInventoryRequest>,
    ) -> Result<Response<ReportResponse>, Status> {
        let r = req.into_inner();
        let inv = r
            .inventory
            .ok_or_else(|| status(DomainError::invalid("inventory", "required")))?;
        let m = self
            .app
            .report_inventory(&r.system_id, &r.boot_token, inventory_from_proto(inv))
            .await
            .map_err(status)?;
        Ok(answer(m))
    }

    async fn report_progress(
        &self,
        req: Request<ReportProgressRequest>,
    ) -> Result<Response<ReportResponse>, Status> {
        let r = req.into_inner();
        let m = self
            .app
            .report_progress(&r.system_id, &r.boot_token, r.message, r.percent)
            .await
            .map_err(status)?;
        Ok(answer(m))
    }

    async fn report_result(
        &self,
        req: Request<ReportResultRequest>,
    ) -> Result<Response<ReportResponse>, Status> {
        let r = req.into_inner();
        let m = self
            .app
            .report_result(&r.system_id, &r.boot_token, r.success, r.reason)
            .await
            .map_err(status)?;
        Ok(answer(m))
    }
}

/// The domain form of an agent's call a rack relayed, every field bounded and named on failure.
pub(super) fn agent_request_from_rack(
    call: ingot_proto::rack::v1::AgentCall,
) -> Result<AgentRequest, DomainError> {
    use ingot_proto::rack::v1::agent_call::Call;
    let Some(c) = call.call else {
        return Err(DomainError::invalid(
            "agent_call.call",
            "empty call: send a lookup, heartbeat or report",
        ));
    };
    Ok(match c {
        Call::Lookup(l) => {
            validate::entries("lookup.macs", l.macs.len(), agent::MAX_LOOKUP_MACS)?;
            let macs = l
                .macs
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    m.parse::<Mac>().map_err(|_| {
                        DomainError::invalid(format!("lookup.macs[{i}]"), "not a MAC address")
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            validate::bytes("lookup.claim", &l.claim, *agent::CLAIM_LEN.end())?;
            AgentRequest::Lookup {
                macs,
                claim: l.claim,
            }
        }
        Call::Heartbeat(h) => AgentRequest::Heartbeat {
            system_id: h.system_id,
            token: h.boot_token,
        },
        Call::Inventory(r) => AgentRequest::Inventory {
            system_id: r.system_id,
            token: r.boot_token,
            inventory: inventory_from_proto(
                r.inventory
                    .ok_or_else(|| DomainError::invalid("inventory.inventory", "required"))?,
            ),
        },
        Call::Progress(r) => AgentRequest::Progress {
            system_id: r.system_id,
            token: r.boot_token,
            message: r.message,
            percent: r.percent,
        },
        Call::Result(r) => AgentRequest::Result {
            system_id: r.system_id,
            token: r.boot_token,
            success: r.success,
            reason: r.reason,
        },
    })
}

/// The session answer of call `id`.
pub(super) fn agent_answer(
    id: u64,
    reply: Result<AgentReply, DomainError>,
) -> ingot_proto::rack::v1::AgentAnswer {
    use ingot_proto::rack::v1 as rack;
    use rack::agent_answer::Answer;
    let mut a = rack::AgentAnswer {
        id,
        code: 0,
        error: String::new(),
        answer: None,
    };
    match reply {
        Ok(AgentReply::Work(w)) => {
            a.answer = Some(Answer::Work(rack::AgentWork {
                system_id: w.system_id,
                boot_id: w.boot_id,
                boot_token: w.token,
                purpose: w.purpose.as_str().to_string(),
                hostname: w.hostname,
                heartbeat_s: w.heartbeat_s,
                deploy: w.deploy.map(|d| rack::DeployWork {
                    image: d.image,
                    sha256: d.blob.to_hex(),
                    size: d.size,
                    path: format!("/blobs/{}/{}", d.blob.to_hex(), FILE_DISK),
                    disk: d.disk,
                    user_data: d.user_data,
                }),
                erase: erase_to_proto(w.erase) as i32,
                ssh_keys: w.ssh_keys,
            }))
        }
        Ok(AgentReply::Verdict(v)) => {
            a.answer = Some(Answer::Status(rack::AgentStatus {
                status: status_to_proto(v.status) as i32,
                next: match v.next {
                    AgentNext::Continue => rack::AgentNext::Continue,
                    AgentNext::Wait => rack::AgentNext::Wait,
                    AgentNext::Reboot => rack::AgentNext::Reboot,
                    AgentNext::PowerOff => rack::AgentNext::PowerOff,
                    AgentNext::Stop => rack::AgentNext::Stop,
                } as i32,
                message: v.message,
            }))
        }
        Err(e) => {
            let s = status(e);
            a.code = s.code() as u32;
            a.error = s.message().to_string();
        }
    }
    a
}
