//! `ingot.v1.AgentService`: reports from a machine's current boot, authenticated by its boot token.

use super::status;
use crate::app::App;
use ingot_common::{DomainError, Machine};
use ingot_proto::convert::{inventory_from_proto, status_to_proto};
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
