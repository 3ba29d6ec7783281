//! `ingot.v1.PoolService`.

use super::{actor, linearizable, status};
use crate::app::App;
use ingot_proto::convert::pool_to_proto;
use ingot_proto::v1::pool_service_server::PoolService;
use ingot_proto::v1::*;
use tonic::{Request, Response, Status};

/// PoolService over [`App`]: what server.rs registers so clients can manage resource pools.
pub struct PoolApi {
    /// The application.
    pub app: App,
}

#[tonic::async_trait]
impl PoolService for PoolApi {
    async fn create_pool(&self, req: Request<CreatePoolRequest>) -> Result<Response<Pool>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let (p, n) = self
            .app
            .create_pool(&who, r.name, r.description)
            .await
            .map_err(status)?;
        Ok(Response::new(pool_to_proto(&p, &n)))
    }

    async fn get_pool(&self, req: Request<GetPoolRequest>) -> Result<Response<Pool>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let (p, n) = self
            .app
            .get_pool(&who, &r.name, linearizable(r.consistency))
            .await
            .map_err(status)?;
        Ok(Response::new(pool_to_proto(&p, &n)))
    }

    async fn list_pools(
        &self,
        req: Request<ListPoolsRequest>,
    ) -> Result<Response<ListPoolsResponse>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let pools = self
            .app
            .list_pools(&who, linearizable(r.consistency))
            .await
            .map_err(status)?;
        Ok(Response::new(ListPoolsResponse {
            pools: pools.iter().map(|(p, n)| pool_to_proto(p, n)).collect(),
        }))
    }

    async fn update_pool(&self, req: Request<UpdatePoolRequest>) -> Result<Response<Pool>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let (p, n) = self
            .app
            .update_pool(&who, r.name, r.description)
            .await
            .map_err(status)?;
        Ok(Response::new(pool_to_proto(&p, &n)))
    }

    async fn delete_pool(
        &self,
        req: Request<DeletePoolRequest>,
    ) -> Result<Response<DeletePoolResponse>, Status> {
        let who = actor(&self.app, &req)?;
        self.app
            .delete_pool(&who, req.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(DeletePoolResponse {}))
    }
}
