//! `ingot.v1.TagService`.

use super::{actor, linearizable, status};
use crate::app::App;
use ingot_proto::convert::tag_to_proto;
use ingot_proto::v1::tag_service_server::TagService;
use ingot_proto::v1::*;
use tonic::{Request, Response, Status};

/// TagService over [`App`]: what server.rs registers so clients can manage tags.
pub struct TagApi {
    /// The application.
    pub app: App,
}

#[tonic::async_trait]
impl TagService for TagApi {
    async fn create_tag(&self, req: Request<CreateTagRequest>) -> Result<Response<Tag>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let (t, n) = self
            .app
            .create_tag(&who, r.name, r.definition, r.comment)
            .await
            .map_err(status)?;
        Ok(Response::new(tag_to_proto(&t, n)))
    }

    async fn get_tag(&self, req: Request<GetTagRequest>) -> Result<Response<Tag>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let (t, n) = self
            .app
            .get_tag(&who, &r.name, linearizable(r.consistency))
            .await
            .map_err(status)?;
        Ok(Response::new(tag_to_proto(&t, n)))
    }

    async fn list_tags(
        &self,
        req: Request<ListTagsRequest>,
    ) -> Result<Response<ListTagsResponse>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let tags = self
            .app
            .list_tags(&who, linearizable(r.consistency))
            .await
            .map_err(status)?;
        Ok(Response::new(ListTagsResponse {
            tags: tags.iter().map(|(t, n)| tag_to_proto(t, *n)).collect(),
        }))
    }

    async fn update_tag(&self, req: Request<UpdateTagRequest>) -> Result<Response<Tag>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let (t, n) = self
            .app
            .update_tag(&who, r.name, r.definition, r.comment)
            .await
            .map_err(status)?;
        Ok(Response::new(tag_to_proto(&t, n)))
    }

    async fn delete_tag(
        &self,
        req: Request<DeleteTagRequest>,
    ) -> Result<Response<DeleteTagResponse>, Status> {
        let who = actor(&self.app, &req)?;
        self.app
            .delete_tag(&who, req.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(DeleteTagResponse {}))
    }
}
