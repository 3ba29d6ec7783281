//! `ingot.v1.MachineService`.

use super::{actor, linearizable, status};
use crate::app::machines::{MachineChange, MachineKey, NewMachine};
use crate::app::App;
use crate::state::MachineQuery;
use ingot_common::DomainError;
use ingot_proto::convert::{machine_to_proto, power_from_proto, status_from_proto};
use ingot_proto::v1::machine_service_server::MachineService;
use ingot_proto::v1::{get_machine_request::Key, *};
use tonic::{Request, Response, Status};

/// MachineService over [`App`].
pub struct MachineApi {
    /// The application.
    pub app: App,
}

#[tonic::async_trait]
impl MachineService for MachineApi {
    async fn create_machine(
        &self,
        req: Request<CreateMachineRequest>,
    ) -> Result<Response<Machine>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let m = self
            .app
            .create_machine(
                &who,
                NewMachine {
                    hostname: r.hostname,
                    arch: r.arch,
                    zone: r.zone,
                    macs: r.macs,
                    power: power_from_proto(r.power),
                    description: r.description,
                },
            )
            .await
            .map_err(status)?;
        Ok(Response::new(machine_to_proto(&m, false)))
    }

    async fn get_machine(
        &self,
        req: Request<GetMachineRequest>,
    ) -> Result<Response<Machine>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        if r.include_secrets {
            who.require_admin("see power secrets").map_err(status)?;
        }
        let key = match r.key {
            Some(Key::SystemId(s)) => MachineKey::SystemId(s),
            Some(Key::Mac(s)) => MachineKey::Mac(s),
            Some(Key::Hostname(s)) => MachineKey::Hostname(s),
            None => {
                return Err(status(DomainError::invalid(
                    "key",
                    "set one of system_id, mac or hostname",
                )))
            }
        };
        let m = self
            .app
            .get_machine(key, linearizable(r.consistency))
            .await
            .map_err(status)?;
        Ok(Response::new(machine_to_proto(&m, r.include_secrets)))
    }

    async fn list_machines(
        &self,
        req: Request<ListMachinesRequest>,
    ) -> Result<Response<ListMachinesResponse>, Status> {
        actor(&self.app, &req)?;
        let r = req.into_inner();
        let f = r.filter.unwrap_or_default();
        let nonempty = |s: String| if s.is_empty() { None } else { Some(s) };
        let q = MachineQuery {
            zone: nonempty(f.zone),
            status: match f.status {
                0 => None,
                v => Some(status_from_proto(v).ok_or_else(|| {
                    status(DomainError::invalid(
                        "filter.status",
                        format!("unknown status {v}"),
                    ))
                })?),
            },
            arch: nonempty(f.arch),
            hostname_prefix: nonempty(f.hostname_prefix),
            mac: match nonempty(f.mac) {
                None => None,
                Some(s) => Some(s.parse().map_err(|e: ingot_common::mac::MacParseError| {
                    status(DomainError::invalid("filter.mac", e.to_string()))
                })?),
            },
        };
        let (page, next, total) = self
            .app
            .list_machines(q, r.page_size, &r.page_token, linearizable(r.consistency))
            .await
            .map_err(status)?;
        Ok(Response::new(ListMachinesResponse {
            machines: page.iter().map(|m| machine_to_proto(m, false)).collect(),
            next_page_token: next,
            total_size: total,
        }))
    }

    async fn update_machine(
        &self,
        req: Request<UpdateMachineRequest>,
    ) -> Result<Response<Machine>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        if r.system_id.is_empty() {
            return Err(status(DomainError::invalid("system_id", "required")));
        }
        let change = MachineChange {
            hostname: r.hostname,
            arch: r.arch,
            zone: r.zone,
            description: r.description,
            power: r.power.map(|p| power_from_proto(Some(p))),
            macs: if r.replace_macs { Some(r.macs) } else { None },
            expected_revision: r.expected_revision,
        };
        let m = self
            .app
            .update_machine(&who, r.system_id, change)
            .await
            .map_err(status)?;
        Ok(Response::new(machine_to_proto(&m, false)))
    }

    async fn delete_machine(
        &self,
        req: Request<DeleteMachineRequest>,
    ) -> Result<Response<DeleteMachineResponse>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        self.app
            .delete_machine(&who, r.system_id, r.expected_revision)
            .await
            .map_err(status)?;
        Ok(Response::new(DeleteMachineResponse {}))
    }
}
