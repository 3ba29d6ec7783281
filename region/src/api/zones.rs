//! `ingot.v1.ZoneService`.

use super::{actor, linearizable, status};
use crate::app::App;
use ingot_proto::convert::zone_to_proto;
use ingot_proto::v1::zone_service_server::ZoneService;
use ingot_proto::v1::*;
use tonic::{Request, Response, Status};

/// ZoneService over [`App`].
pub struct ZoneApi {
    /// The application.
    pub app: App,
}

#[tonic::async_trait]
impl ZoneService for ZoneApi {
    async fn create_zone(&self, req: Request<CreateZoneRequest>) -> Result<Response<Zone>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let (z, n) = self
            .app
            .create_zone(&who, r.name, r.description)
            .await
            .map_err(status)?;
        Ok(Response::new(zone_to_proto(&z, &n)))
    }

    async fn get_zone(&self, req: Request<GetZoneRequest>) -> Result<Response<Zone>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let (z, n) = self
            .app
            .get_zone(&who, &r.name, linearizable(r.consistency))
            .await
            .map_err(status)?;
        Ok(Response::new(zone_to_proto(&z, &n)))
    }

    async fn list_zones(
        &self,
        req: Request<ListZonesRequest>,
    ) -> Result<Response<ListZonesResponse>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let zones = self
            .app
            .list_zones(&who, linearizable(r.consistency))
            .await
            .map_err(status)?;
        Ok(Response::new(ListZonesResponse {
            zones: zones.iter().map(|(z, n)| zone_to_proto(z, n)).collect(),
        }))
    }

    async fn update_zone(&self, req: Request<UpdateZoneRequest>) -> Result<Response<Zone>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let (z, n) = self
            .app
            .update_zone(&who, r.name, r.description, r.new_name)
            .await
            .map_err(status)?;
        Ok(Response::new(zone_to_proto(&z, &n)))
    }

    async fn delete_zone(
        &self,
        req: Request<DeleteZoneRequest>,
    ) -> Result<Response<DeleteZoneResponse>, Status> {
        let who = actor(&self.app, &req)?;
        self.app
            .delete_zone(&who, req.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(DeleteZoneResponse {}))
    }
}
