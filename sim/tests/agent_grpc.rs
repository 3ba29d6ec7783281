//! The agent against a real gRPC server over TLS, through the production `GrpcRegion` (ingot-client with
//! the cluster CA and an admin token): a fake region implementing `MachineService.GetBootCredentials` and
//! `AgentService`, the rest unimplemented.

use crate::common::*;
use ingot_common::pki::{ClusterCa, Identity};
use ingot_proto::v1 as pb;
use ingot_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use ingot_proto::v1::machine_service_server::{MachineService, MachineServiceServer};
use ingot_sim::{AgentConfig, Fleet, FleetConfig};
use serde_json::json;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::codegen::tokio_stream::Stream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

const ADMIN: &str = "admin-token-123";

#[derive(Default, Clone)]
struct Region {
    log: Arc<Mutex<Vec<String>>>,
}

impl Region {
    fn push(&self, s: String) {
        self.log.lock().unwrap().push(s);
    }
    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl MachineService for Region {
    type WatchStream = WatchStream;

    async fn get_boot_credentials(
        &self,
        req: Request<pb::GetBootCredentialsRequest>,
    ) -> Result<Response<pb::BootCredentials>, Status> {
        let auth = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if auth != format!("Bearer {ADMIN}") {
            return Err(Status::unauthenticated("admin token required"));
        }
        let host = match req.into_inner().machine.and_then(|m| m.key) {
            Some(pb::machine_ref::Key::Hostname(h)) => h,
            other => {
                return Err(Status::invalid_argument(format!(
                    "expected a hostname, got {other:?}"
                )))
            }
        };
        self.push(format!("creds {host}"));
        if host != "sim-01" {
            return Err(Status::failed_precondition("not booting for Ingot"));
        }
        Ok(Response::new(pb::BootCredentials {
            system_id: "abc123".into(),
            boot_id: "boot-1".into(),
            token: "boot-token".into(),
            purpose: "commissioning".into(),
        }))
    }

    async fn create_machine(
        &self,
        _: Request<pb::CreateMachineRequest>,
    ) -> Result<Response<pb::Machine>, Status> {
        Err(Status::unimplemented("create_machine"))
    }

    async fn get_machine(
        &self,
        _: Request<pb::GetMachineRequest>,
    ) -> Result<Response<pb::Machine>, Status> {
        Err(Status::unimplemented("get_machine"))
    }

    async fn list_machines(
        &self,
        _: Request<pb::ListMachinesRequest>,
    ) -> Result<Response<pb::ListMachinesResponse>, Status> {
        Err(Status::unimplemented("list_machines"))
    }

    async fn update_machine(
        &self,
        _: Request<pb::UpdateMachineRequest>,
    ) -> Result<Response<pb::Machine>, Status> {
        Err(Status::unimplemented("update_machine"))
    }

    async fn delete_machine(
        &self,
        _: Request<pb::DeleteMachineRequest>,
    ) -> Result<Response<pb::DeleteMachineResponse>, Status> {
        Err(Status::unimplemented("delete_machine"))
    }

    async fn commission(
        &self,
        _: Request<pb::CommissionRequest>,
    ) -> Result<Response<pb::Machine>, Status> {
        Err(Status::unimplemented("commission"))
    }

    async fn test(
        &self,
        _: Request<pb::MachineActionRequest>,
    ) -> Result<Response<pb::Machine>, Status> {
        Err(Status::unimplemented("test"))
    }

    async fn abort(
        &self,
        _: Request<pb::MachineActionRequest>,
    ) -> Result<Response<pb::Machine>, Status> {
        Err(Status::unimplemented("abort"))
    }

    async fn allocate(
        &self,
        _: Request<pb::AllocateRequest>,
    ) -> Result<Response<pb::AllocateResponse>, Status> {
        Err(Status::unimplemented("allocate"))
    }

    async fn deploy(&self, _: Request<pb::DeployRequest>) -> Result<Response<pb::Machine>, Status> {
        Err(Status::unimplemented("deploy"))
    }

    async fn release(
        &self,
        _: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::Machine>, Status> {
        Err(Status::unimplemented("release"))
    }

    async fn mark_broken(
        &self,
        _: Request<pb::MachineActionRequest>,
    ) -> Result<Response<pb::Machine>, Status> {
        Err(Status::unimplemented("mark_broken"))
    }

    async fn mark_fixed(
        &self,
        _: Request<pb::MachineActionRequest>,
    ) -> Result<Response<pb::Machine>, Status> {
        Err(Status::unimplemented("mark_fixed"))
    }

    async fn lock(
        &self,
        _: Request<pb::MachineActionRequest>,
    ) -> Result<Response<pb::Machine>, Status> {
        Err(Status::unimplemented("lock"))
    }

    async fn unlock(
        &self,
        _: Request<pb::MachineActionRequest>,
    ) -> Result<Response<pb::Machine>, Status> {
        Err(Status::unimplemented("unlock"))
    }

    async fn enter_rescue(
        &self,
        _: Request<pb::MachineActionRequest>,
    ) -> Result<Response<pb::Machine>, Status> {
        Err(Status::unimplemented("enter_rescue"))
    }

    async fn exit_rescue(
        &self,
        _: Request<pb::MachineActionRequest>,
    ) -> Result<Response<pb::Machine>, Status> {
        Err(Status::unimplemented("exit_rescue"))
    }

    async fn retire(
        &self,
        _: Request<pb::MachineActionRequest>,
    ) -> Result<Response<pb::Machine>, Status> {
        Err(Status::unimplemented("retire"))
    }

    async fn set_zone(
        &self,
        _: Request<pb::SetZoneRequest>,
    ) -> Result<Response<pb::Machine>, Status> {
        Err(Status::unimplemented("set_zone"))
    }

    async fn set_pool(
        &self,
        _: Request<pb::SetPoolRequest>,
    ) -> Result<Response<pb::Machine>, Status> {
        Err(Status::unimplemented("set_pool"))
    }

    async fn tag_machine(
        &self,
        _: Request<pb::TagMachineRequest>,
    ) -> Result<Response<pb::Machine>, Status> {
        Err(Status::unimplemented("tag_machine"))
    }

    async fn untag_machine(
        &self,
        _: Request<pb::TagMachineRequest>,
    ) -> Result<Response<pb::Machine>, Status> {
        Err(Status::unimplemented("untag_machine"))
    }

    async fn watch(
        &self,
        _: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("watch"))
    }

    async fn power(
        &self,
        _: Request<pb::PowerRequest>,
    ) -> Result<Response<pb::PowerCommand>, Status> {
        Err(Status::unimplemented("power"))
    }

    async fn get_power_command(
        &self,
        _: Request<pb::GetPowerCommandRequest>,
    ) -> Result<Response<pb::PowerCommand>, Status> {
        Err(Status::unimplemented("get_power_command"))
    }
}

#[tonic::async_trait]
impl AgentService for Region {
    async fn report_inventory(
        &self,
        req: Request<pb::ReportInventoryRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        let r = req.into_inner();
        if r.boot_token != "boot-token" {
            return Err(Status::unauthenticated("wrong boot token"));
        }
        let inv = r.inventory.unwrap_or_default();
        self.push(format!(
            "inventory {} cpus={} nics={}",
            r.system_id,
            inv.cpu_count,
            inv.nics.len()
        ));
        Ok(Response::new(pb::ReportResponse::default()))
    }

    async fn report_progress(
        &self,
        req: Request<pb::ReportProgressRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        let r = req.into_inner();
        self.push(format!("progress {} {}", r.system_id, r.percent));
        Ok(Response::new(pb::ReportResponse::default()))
    }

    async fn report_result(
        &self,
        req: Request<pb::ReportResultRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        let r = req.into_inner();
        if r.boot_token != "boot-token" {
            return Err(Status::unauthenticated("wrong boot token"));
        }
        self.push(format!("result {} {}", r.system_id, r.success));
        Ok(Response::new(pb::ReportResponse::default()))
    }
}

/// Serves the fake region over TLS with a certificate from a fresh cluster CA; returns the endpoint and
/// the CA's PEM file.
async fn serve(region: Region, dir: &std::path::Path) -> (String, std::path::PathBuf) {
    let ca = ClusterCa::generate("sim-test").unwrap();
    let (cert, key) = ca.issue(&Identity::region(1, &["127.0.0.1:0"])).unwrap();
    let ca_path = dir.join("ca.crt");
    std::fs::write(&ca_path, &ca.cert_pem).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::builder()
        .tls_config(
            ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(cert, key)),
        )
        .unwrap()
        .add_service(MachineServiceServer::new(region.clone()))
        .add_service(AgentServiceServer::new(region));
    tokio::spawn(server.serve_with_incoming(TcpIncoming::from(listener)));
    (format!("https://127.0.0.1:{}", addr.port()), ca_path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commissioning_reports_over_grpc_with_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let region = Region::default();
    let (endpoint, ca) = serve(region.clone(), dir.path()).await;
    let f = Fleet::start(FleetConfig {
        count: 2,
        password: Some(PASSWORD.into()),
        agent: Some(AgentConfig {
            boot_delay_ms: 20,
            ..AgentConfig::new(vec![endpoint], &ca, ADMIN)
        }),
        ..FleetConfig::default()
    })
    .await
    .unwrap();
    assert!(f.agent_enabled());
    let c = http();
    for m in f.machines() {
        let body = json!({"Boot": {"BootSourceOverrideTarget": "Pxe"}});
        assert_eq!(patch(&c, m, &system_url(m), body).await.0, 204);
        assert_eq!(
            post(&c, m, &reset_url(m), json!({"ResetType": "On"}))
                .await
                .0,
            204
        );
    }
    let sims: Vec<_> = f
        .machines()
        .iter()
        .map(|m| f.machine(&m.hostname).unwrap().clone())
        .collect();
    assert!(
        eventually(Duration::from_secs(10), || {
            sims[0].view().counters.agent.completed == 1
                && sims[1].view().counters.agent.no_session == 1
        })
        .await,
        "{:?} / {:?}",
        sims[0].view().counters.agent,
        sims[1].view().counters.agent
    );
    let m = &f.machines()[0];
    let mut log = region.log();
    log.sort();
    assert_eq!(
        log,
        [
            "creds sim-01".to_string(),
            "creds sim-02".to_string(),
            format!(
                "inventory abc123 cpus={} nics={}",
                m.inventory.cpu_count,
                m.inventory.nics.len()
            ),
            "result abc123 true".to_string(),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_ca_or_endpoint_is_reported() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let e = Fleet::start(FleetConfig {
        count: 1,
        agent: Some(AgentConfig::new(
            vec!["https://127.0.0.1:1".into()],
            "/nonexistent/ca.crt",
            ADMIN,
        )),
        ..FleetConfig::default()
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("CA") && e.contains("/nonexistent/ca.crt"), "{e}");
    let e = Fleet::start(FleetConfig {
        count: 1,
        agent: Some(AgentConfig::new(vec![], "/x", ADMIN)),
        ..FleetConfig::default()
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("agent.endpoints"), "{e}");
}
