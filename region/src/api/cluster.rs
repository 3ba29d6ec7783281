//! `ingot.v1.ClusterService`.

use super::{actor, status};
use crate::app::cluster::RegionView;
use crate::app::App;
use ingot_proto::convert::{region_role_to_proto, settings_to_proto, timestamp};
use ingot_proto::v1::cluster_service_server::ClusterService;
use ingot_proto::v1::*;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// ClusterService over [`App`].
pub struct ClusterApi {
    /// The application.
    pub app: App,
}

/// A region as ListRegions shows it: membership, and the live status when it answered (the app's view;
/// it has no `ingot-common` type).
fn region_view(v: RegionView) -> Region {
    let s = v.status.clone().unwrap_or_default();
    Region {
        node_id: v.node_id,
        name: v.name,
        raft_addr: v.raft_addr,
        api_addr: v.api_addr,
        // No status: an empty role, which is UNKNOWN.
        role: region_role_to_proto(&s.role) as i32,
        voter: v.voter,
        term: s.term,
        last_applied_index: s.last_applied_index,
        last_log_index: s.last_log_index,
        healthy: v.status.is_some(),
        error: v.error,
        snapshot_index: s.snapshot_index,
        leader_id: s.leader_id,
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    async fn list_regions(
        &self,
        req: Request<ListRegionsRequest>,
    ) -> Result<Response<ListRegionsResponse>, Status> {
        actor(&self.app, &req)?;
        let (cluster_id, leader_id, views) = self.app.list_regions().await.map_err(status)?;
        let regions = views.into_iter().map(region_view).collect();
        Ok(Response::new(ListRegionsResponse {
            cluster_id,
            leader_id,
            regions,
        }))
    }

    async fn create_join_token(
        &self,
        req: Request<CreateJoinTokenRequest>,
    ) -> Result<Response<CreateJoinTokenResponse>, Status> {
        let who = actor(&self.app, &req)?;
        let ttl = match req.into_inner().ttl_seconds {
            0 => 3600,
            n => n,
        };
        let (token, expires_ms) = self
            .app
            .create_join_token(&who, Duration::from_secs(ttl as u64))
            .await
            .map_err(status)?;
        Ok(Response::new(CreateJoinTokenResponse {
            token,
            expires_at: Some(timestamp(expires_ms)),
        }))
    }

    async fn join_region(
        &self,
        req: Request<JoinRegionRequest>,
    ) -> Result<Response<JoinRegionResponse>, Status> {
        // Authenticated by the join token in the body, not by a bearer token.
        let r = req.into_inner();
        let a = self
            .app
            .join_region(&r.token, &r.name, &r.csr_pem, &r.raft_addr, &r.api_addr)
            .await
            .map_err(status)?;
        Ok(Response::new(JoinRegionResponse {
            node_id: a.node_id,
            cluster_id: a.cluster_id,
            cert_pem: a.cert_pem,
            ca_pem: a.ca_pem,
            raft_addrs: a.raft_addrs,
        }))
    }

    async fn remove_region(
        &self,
        req: Request<RemoveRegionRequest>,
    ) -> Result<Response<RemoveRegionResponse>, Status> {
        let who = actor(&self.app, &req)?;
        self.app
            .remove_region(&who, req.into_inner().node_id)
            .await
            .map_err(status)?;
        Ok(Response::new(RemoveRegionResponse {}))
    }

    async fn get_settings(
        &self,
        req: Request<GetSettingsRequest>,
    ) -> Result<Response<Settings>, Status> {
        let who = actor(&self.app, &req)?;
        let d = self.app.get_settings(&who).await.map_err(status)?;
        Ok(Response::new(settings_to_proto(&d)))
    }

    async fn update_settings(
        &self,
        req: Request<UpdateSettingsRequest>,
    ) -> Result<Response<Settings>, Status> {
        let who = actor(&self.app, &req)?;
        let input = req.into_inner().deadline_seconds.into_iter().collect();
        let d = self
            .app
            .update_settings(&who, input)
            .await
            .map_err(status)?;
        Ok(Response::new(settings_to_proto(&d)))
    }
}
