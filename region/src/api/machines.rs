//! `ingot.v1.MachineService`: enlistment, lookups, lifecycle actions, allocation and watch.

use super::{actor, linearizable, status};
use crate::app::alloc::{AllocateRequest as AllocReq, Spread};
use crate::app::encoded::EncodedMachines;
use crate::app::machines::{MachineChange, MachineKey, NewMachine};
use crate::app::views;
use crate::app::watch::WatchItem;
use crate::app::{Actor, App};
use crate::command::ActionArgs;
use crate::state::MachineQuery;
use ingot_common::lifecycle::Action;
use ingot_common::model::DeploySpec;
use ingot_common::power::PowerAction;
use ingot_common::DomainError;
use ingot_proto::convert::{
    constraints_from_proto, erase_from_proto, full_view_from_proto, lease_to_address,
    machine_to_proto, power_command_to_proto, power_from_proto, status_from_proto,
};
use ingot_proto::v1::machine_service_server::MachineService;
use ingot_proto::v1::{get_machine_request::Key, machine_ref, watch_response, *};
use std::pin::Pin;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// MachineService over [`App`].
pub struct MachineApi {
    /// The application.
    pub app: App,
    /// Encoded basic views, reused by lists while a machine does not change (kept warm by
    /// [`EncodedMachines::follow`]).
    pub encoded: std::sync::Arc<EncodedMachines>,
}

/// A machine's basic view encoded as `ingot.v1.Machine`: the encoder of [`EncodedMachines`], given to it
/// when the region starts.
pub fn encode_basic(m: &ingot_common::Machine) -> bytes::Bytes {
    bytes::Bytes::from(prost::Message::encode_to_vec(&machine_to_proto(
        m, false, false,
    )))
}

fn machine_key(r: Option<MachineRef>) -> Result<MachineKey, Status> {
    let key = match r.and_then(|r| r.key) {
        Some(machine_ref::Key::SystemId(s)) => Ok(MachineKey::SystemId(s)),
        Some(machine_ref::Key::Consumer(s)) => Ok(MachineKey::Consumer(s)),
        Some(machine_ref::Key::ProviderId(s)) => Ok(MachineKey::ProviderId(s)),
        Some(machine_ref::Key::Hostname(s)) => Ok(MachineKey::Hostname(s)),
        None => Err(status(DomainError::invalid(
            "machine",
            "set one of system_id, consumer, provider_id or hostname",
        ))),
    }?;
    key.check("machine").map_err(status)?;
    Ok(key)
}

/// Filters from the proto, parsed; `who` limits what non-admins see.
fn query(f: Option<MachineFilter>, who: &Actor) -> Result<MachineQuery, Status> {
    let f = f.unwrap_or_default();
    let nonempty = |s: String| if s.is_empty() { None } else { Some(s) };
    Ok(MachineQuery {
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
        pool: nonempty(f.pool),
        owner: nonempty(f.owner),
        consumer: nonempty(f.consumer),
        tags: f.tags,
        visible_to: if who.is_admin() {
            None
        } else {
            Some(who.name.clone())
        },
    })
}

impl MachineApi {
    async fn simple(
        &self,
        req: Request<MachineActionRequest>,
        action: Action,
    ) -> Result<Response<Machine>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let key = machine_key(r.machine)?;
        let args = ActionArgs {
            comment: r.comment,
            ..Default::default()
        };
        self.run(&who, key, action, r.expected_revision, args).await
    }

    /// An edit action (no expected revision): split the request into the machine and the arguments.
    async fn edit<R>(
        &self,
        req: Request<R>,
        action: Action,
        split: impl FnOnce(R) -> (Option<MachineRef>, ActionArgs),
    ) -> Result<Response<Machine>, Status> {
        let who = actor(&self.app, &req)?;
        let (machine, args) = split(req.into_inner());
        let key = machine_key(machine)?;
        self.run(&who, key, action, 0, args).await
    }

    async fn run(
        &self,
        who: &Actor,
        key: MachineKey,
        action: Action,
        expected_revision: u64,
        args: ActionArgs,
    ) -> Result<Response<Machine>, Status> {
        let m = self
            .app
            .act(who, key, action, expected_revision, args)
            .await
            .map_err(status)?;
        Ok(Response::new(machine_to_proto(
            &views::machine(who, &m),
            false,
            true,
        )))
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

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
                    pool: r.pool,
                },
            )
            .await
            .map_err(status)?;
        Ok(Response::new(machine_to_proto(
            &views::machine(&who, &m),
            false,
            true,
        )))
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
        let full = full_view_from_proto(r.view, true).map_err(status)?;
        let key = match r.key {
            Some(Key::SystemId(s)) => MachineKey::SystemId(s),
            Some(Key::Mac(s)) => MachineKey::Mac(s),
            Some(Key::Hostname(s)) => MachineKey::Hostname(s),
            Some(Key::Consumer(s)) => MachineKey::Consumer(s),
            Some(Key::ProviderId(s)) => MachineKey::ProviderId(s),
            None => {
                return Err(status(DomainError::invalid(
                    "key",
                    "set one of system_id, mac, hostname, consumer or provider_id",
                )))
            }
        };
        key.check("").map_err(status)?;
        let (m, addresses) = self
            .app
            .get_machine_with_addresses(&who, key, linearizable(r.consistency))
            .await
            .map_err(status)?;
        let m = views::machine(&who, &m);
        let mut out = machine_to_proto(&m, r.include_secrets, full);
        out.addresses = addresses.iter().map(lease_to_address).collect();
        Ok(Response::new(out))
    }

    async fn list_machines(
        &self,
        req: Request<ListMachinesRequest>,
    ) -> Result<Response<ListMachinesResponse>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let q = query(r.filter, &who)?;
        let full = full_view_from_proto(r.view, false).map_err(status)?;
        let user = views::viewer(&who);
        // The basic view is served from each machine's cached encoding; the full one is converted.
        let (page, next, total, revision) = self
            .app
            .list_machines(
                &who,
                crate::app::machines::MachinePage {
                    query: q,
                    page_size: r.page_size,
                    page_token: &r.page_token,
                    linearizable: linearizable(r.consistency),
                },
                |_st, m| {
                    // The cache holds the admin's basic view; a user's differs only for the machines
                    // `views::basic_view_redacted` names, which are encoded for this caller alone.
                    if full {
                        Err(Box::new(machine_to_proto(
                            &views::machine(&who, m),
                            false,
                            true,
                        )))
                    } else if user.is_some_and(|u| views::basic_view_redacted(u, m)) {
                        Ok(encode_basic(&views::machine(&who, m)))
                    } else {
                        Ok(self.encoded.get(m))
                    }
                },
            )
            .await
            .map_err(status)?;
        if total > 0 && !full {
            self.encoded.prune(&self.app);
        }
        let mut resp = ListMachinesResponse {
            next_page_token: next,
            total_size: total,
            revision,
            ..Default::default()
        };
        for item in page {
            match item {
                Ok(bytes) => resp.encoded_machines.push(bytes),
                Err(m) => resp.machines.push(*m),
            }
        }
        Ok(Response::new(resp))
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
        Ok(Response::new(machine_to_proto(
            &views::machine(&who, &m),
            false,
            true,
        )))
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

    async fn commission(
        &self,
        req: Request<CommissionRequest>,
    ) -> Result<Response<Machine>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let key = machine_key(r.machine)?;
        let args = ActionArgs {
            comment: r.comment,
            ..Default::default()
        };
        self.run(&who, key, Action::Commission, r.expected_revision, args)
            .await
    }

    async fn test(&self, req: Request<MachineActionRequest>) -> Result<Response<Machine>, Status> {
        self.simple(req, Action::Test).await
    }

    async fn abort(&self, req: Request<MachineActionRequest>) -> Result<Response<Machine>, Status> {
        self.simple(req, Action::Abort).await
    }

    async fn allocate(
        &self,
        req: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let spread = match SpreadPolicy::try_from(r.spread) {
            Ok(SpreadPolicy::Unspecified) => Spread::Any,
            Ok(SpreadPolicy::Even) => Spread::Even,
            Ok(SpreadPolicy::MinZones) => Spread::MinZones(r.min_zones),
            Err(_) => {
                return Err(status(DomainError::invalid(
                    "spread",
                    format!("unknown spread policy {}", r.spread),
                )))
            }
        };
        let (ms, replayed) = self
            .app
            .allocate(
                &who,
                AllocReq {
                    request_id: r.request_id,
                    constraints: constraints_from_proto(r.constraints).map_err(status)?,
                    consumer: r.consumer,
                    count: r.count.max(1),
                    spread,
                    dry_run: r.dry_run,
                },
            )
            .await
            .map_err(status)?;
        Ok(Response::new(AllocateResponse {
            machines: ms
                .iter()
                .map(|m| machine_to_proto(&views::machine(&who, m), false, false))
                .collect(),
            replayed,
        }))
    }

    async fn deploy(&self, req: Request<DeployRequest>) -> Result<Response<Machine>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let key = machine_key(r.machine)?;
        let args = ActionArgs {
            comment: r.comment,
            deploy: Some(DeploySpec {
                osystem: r.osystem,
                distro_series: r.distro_series,
                user_data: r.user_data,
                ssh_keys: r.ssh_keys,
                disk: r.disk,
            }),
            ..Default::default()
        };
        self.run(&who, key, Action::Deploy, r.expected_revision, args)
            .await
    }

    async fn release(&self, req: Request<ReleaseRequest>) -> Result<Response<Machine>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let key = machine_key(r.machine)?;
        let erase = erase_from_proto(r.erase).ok_or_else(|| {
            status(DomainError::invalid(
                "erase",
                format!("unknown erase mode {}", r.erase),
            ))
        })?;
        let args = ActionArgs {
            comment: r.comment,
            erase,
            ..Default::default()
        };
        self.run(&who, key, Action::Release, r.expected_revision, args)
            .await
    }

    async fn mark_broken(
        &self,
        req: Request<MachineActionRequest>,
    ) -> Result<Response<Machine>, Status> {
        self.simple(req, Action::MarkBroken).await
    }

    async fn mark_fixed(
        &self,
        req: Request<MachineActionRequest>,
    ) -> Result<Response<Machine>, Status> {
        self.simple(req, Action::MarkFixed).await
    }

    async fn lock(&self, req: Request<MachineActionRequest>) -> Result<Response<Machine>, Status> {
        self.simple(req, Action::Lock).await
    }

    async fn unlock(
        &self,
        req: Request<MachineActionRequest>,
    ) -> Result<Response<Machine>, Status> {
        self.simple(req, Action::Unlock).await
    }

    async fn enter_rescue(
        &self,
        req: Request<MachineActionRequest>,
    ) -> Result<Response<Machine>, Status> {
        self.simple(req, Action::EnterRescue).await
    }

    async fn exit_rescue(
        &self,
        req: Request<MachineActionRequest>,
    ) -> Result<Response<Machine>, Status> {
        self.simple(req, Action::ExitRescue).await
    }

    async fn retire(
        &self,
        req: Request<MachineActionRequest>,
    ) -> Result<Response<Machine>, Status> {
        self.simple(req, Action::Retire).await
    }

    async fn set_zone(&self, req: Request<SetZoneRequest>) -> Result<Response<Machine>, Status> {
        self.edit(req, Action::SetZone, |r| {
            (
                r.machine,
                ActionArgs {
                    zone: r.zone,
                    ..Default::default()
                },
            )
        })
        .await
    }

    async fn set_pool(&self, req: Request<SetPoolRequest>) -> Result<Response<Machine>, Status> {
        self.edit(req, Action::SetPool, |r| {
            (
                r.machine,
                ActionArgs {
                    pool: r.pool,
                    ..Default::default()
                },
            )
        })
        .await
    }

    async fn tag_machine(
        &self,
        req: Request<TagMachineRequest>,
    ) -> Result<Response<Machine>, Status> {
        self.edit(req, Action::Tag, |r| {
            (
                r.machine,
                ActionArgs {
                    tags: r.tags,
                    ..Default::default()
                },
            )
        })
        .await
    }

    async fn untag_machine(
        &self,
        req: Request<TagMachineRequest>,
    ) -> Result<Response<Machine>, Status> {
        self.edit(req, Action::Untag, |r| {
            (
                r.machine,
                ActionArgs {
                    tags: r.tags,
                    ..Default::default()
                },
            )
        })
        .await
    }

    async fn get_boot_credentials(
        &self,
        req: Request<GetBootCredentialsRequest>,
    ) -> Result<Response<BootCredentials>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let key = machine_key(r.machine)?;
        let (system_id, b, token) = self.app.boot_credentials(&who, key).await.map_err(status)?;
        Ok(Response::new(BootCredentials {
            system_id,
            boot_id: b.boot_id,
            token,
            purpose: b.purpose,
        }))
    }

    async fn power(&self, req: Request<PowerRequest>) -> Result<Response<PowerCommand>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let key = machine_key(r.machine)?;
        let action = PowerAction::parse("action", r.action.trim()).map_err(status)?;
        let c = self
            .app
            .power(&who, key, action, r.wait_seconds)
            .await
            .map_err(status)?;
        Ok(Response::new(power_command_to_proto(&c)))
    }

    async fn get_power_command(
        &self,
        req: Request<GetPowerCommandRequest>,
    ) -> Result<Response<PowerCommand>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let c = self
            .app
            .power_command(&who, r.id, r.wait_seconds)
            .await
            .map_err(status)?;
        Ok(Response::new(power_command_to_proto(&c)))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let q = query(r.filter, &who)?;
        let full = full_view_from_proto(r.view, false).map_err(status)?;
        let rx = self
            .app
            .watch(&who, r.from_revision, q)
            .await
            .map_err(status)?;
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let out = tokio_stream::StreamExt::map(stream, move |item| match item {
            Ok(WatchItem::Put(rev, m)) => Ok(WatchResponse {
                kind: watch_response::Kind::Put as i32,
                revision: rev,
                machine: Some(machine_to_proto(&m, false, full)),
            }),
            Ok(WatchItem::Delete(rev, m)) => Ok(WatchResponse {
                kind: watch_response::Kind::Delete as i32,
                revision: rev,
                machine: Some(machine_to_proto(&m, false, full)),
            }),
            Ok(WatchItem::Progress(rev)) => Ok(WatchResponse {
                kind: watch_response::Kind::Progress as i32,
                revision: rev,
                machine: None,
            }),
            Err(e) => Err(status(e)),
        });
        Ok(Response::new(Box::pin(out)))
    }
}
