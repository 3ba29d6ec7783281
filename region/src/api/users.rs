//! `ingot.v1.UserService`.

use super::{actor, status};
use crate::app::users::{TokenInfo, UserInfo};
use crate::app::App;
use ingot_proto::convert::{role_from_proto, timestamp, user_to_proto};
use ingot_proto::v1::user_service_server::UserService;
use ingot_proto::v1::*;
use tonic::{Request, Response, Status};

/// UserService over [`App`]: what server.rs registers so clients can manage users and API tokens.
pub struct UserApi {
    /// The application.
    pub app: App,
}

/// A user with its counts.
fn user_view(u: &UserInfo) -> User {
    user_to_proto(&u.user, u.machine_count, u.token_count)
}

/// A token as listed (the app's view of a stored token; it has no `ingot-common` type).
fn token_to_proto(t: &TokenInfo) -> Token {
    Token {
        id: t.id.clone(),
        user: t.user.clone(),
        description: t.description.clone(),
        created_at: Some(timestamp(t.created_ms)),
        expires_at: t.expires_ms.map(timestamp),
    }
}

#[tonic::async_trait]
impl UserService for UserApi {
    async fn who_am_i(&self, req: Request<WhoAmIRequest>) -> Result<Response<User>, Status> {
        let who = actor(&self.app, &req)?;
        let u = self.app.who_am_i(&who).await.map_err(status)?;
        Ok(Response::new(user_view(&u)))
    }

    async fn create_user(&self, req: Request<CreateUserRequest>) -> Result<Response<User>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let role = role_from_proto(r.role, false).map_err(status)?;
        let u = self
            .app
            .create_user(&who, r.name, role)
            .await
            .map_err(status)?;
        Ok(Response::new(user_view(&u)))
    }

    async fn list_users(
        &self,
        req: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        let who = actor(&self.app, &req)?;
        let users = self.app.list_users(&who, true).await.map_err(status)?;
        Ok(Response::new(ListUsersResponse {
            users: users.iter().map(user_view).collect(),
        }))
    }

    async fn update_user(&self, req: Request<UpdateUserRequest>) -> Result<Response<User>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let role = role_from_proto(r.role, true).map_err(status)?;
        let u = self
            .app
            .update_user(&who, r.name, role)
            .await
            .map_err(status)?;
        Ok(Response::new(user_view(&u)))
    }

    async fn delete_user(
        &self,
        req: Request<DeleteUserRequest>,
    ) -> Result<Response<DeleteUserResponse>, Status> {
        let who = actor(&self.app, &req)?;
        self.app
            .delete_user(&who, req.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(DeleteUserResponse {}))
    }

    async fn create_token(
        &self,
        req: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let t = self
            .app
            .create_token(&who, r.user, r.description, r.ttl_seconds)
            .await
            .map_err(status)?;
        Ok(Response::new(CreateTokenResponse {
            token: Some(token_to_proto(&t.token)),
            secret: t.secret,
        }))
    }

    async fn list_tokens(
        &self,
        req: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let tokens = self
            .app
            .list_tokens(&who, &r.user, r.all, true)
            .await
            .map_err(status)?;
        Ok(Response::new(ListTokensResponse {
            tokens: tokens.iter().map(token_to_proto).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        req: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenResponse>, Status> {
        let who = actor(&self.app, &req)?;
        self.app
            .revoke_token(&who, req.into_inner().id)
            .await
            .map_err(status)?;
        Ok(Response::new(RevokeTokenResponse {}))
    }
}
