//! `ingot.v1.RackService`: rack enrollment and status.

use super::cluster::FailedAttempts;
use super::{actor, linearizable, status};
use crate::app::racks::RackView;
use crate::app::App;
use ingot_proto::convert::{rack_to_proto, timestamp};
use ingot_proto::v1::rack_service_server::RackService;
use ingot_proto::v1::*;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// RackService over [`App`].
pub struct RackApi {
    /// The application.
    pub app: App,
    /// Failed `RegisterRack` attempts per peer (shared with `JoinRegion`).
    pub attempts: Arc<FailedAttempts>,
}

fn view(v: &RackView) -> Rack {
    rack_to_proto(&v.rack, v.connected, v.bmc_count, v.pending)
}

#[tonic::async_trait]
impl RackService for RackApi {
    async fn create_enrollment_token(
        &self,
        req: Request<CreateEnrollmentTokenRequest>,
    ) -> Result<Response<CreateEnrollmentTokenResponse>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let (token, expires_ms) = self
            .app
            .create_rack_token(&who, r.ttl_seconds)
            .await
            .map_err(status)?;
        Ok(Response::new(CreateEnrollmentTokenResponse {
            token,
            expires_at: Some(timestamp(expires_ms)),
        }))
    }

    async fn register_rack(
        &self,
        req: Request<RegisterRackRequest>,
    ) -> Result<Response<RegisterRackResponse>, Status> {
        // Authenticated by the enrollment token in the request, not by a bearer token.
        let r = req.get_ref();
        let call = async {
            self.app
                .register_rack(&r.token, &r.name, &r.zone, &r.csr_pem)
                .await
                .map_err(status)
        };
        let a = self.attempts.guard(&req, call).await?;
        Ok(Response::new(RegisterRackResponse {
            cert_pem: a.cert_pem,
            ca_pem: a.ca_pem,
            api_endpoints: a.api_endpoints,
            cluster_endpoints: a.cluster_endpoints,
        }))
    }

    async fn list_racks(
        &self,
        req: Request<ListRacksRequest>,
    ) -> Result<Response<ListRacksResponse>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let racks = self
            .app
            .list_racks(&who, linearizable(r.consistency))
            .await
            .map_err(status)?;
        Ok(Response::new(ListRacksResponse {
            racks: racks.iter().map(view).collect(),
        }))
    }

    async fn get_rack(&self, req: Request<GetRackRequest>) -> Result<Response<Rack>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let v = self.app.get_rack(&who, &r.name).await.map_err(status)?;
        Ok(Response::new(view(&v)))
    }

    async fn revoke_rack(&self, req: Request<RevokeRackRequest>) -> Result<Response<Rack>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        self.app.revoke_rack(&who, &r.name).await.map_err(status)?;
        let v = self.app.get_rack(&who, &r.name).await.map_err(status)?;
        Ok(Response::new(view(&v)))
    }
}
