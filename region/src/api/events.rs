//! `ingot.v1.EventService`.

use super::{actor, linearizable, status};
use crate::app::events::EventQuery;
use crate::app::App;
use ingot_common::DomainError;
use ingot_proto::convert::{event_to_proto, level_from_proto, timestamp_ms};
use ingot_proto::v1::event_service_server::EventService;
use ingot_proto::v1::*;
use tonic::{Request, Response, Status};

/// EventService over [`App`]: what server.rs registers so clients can read the event history.
pub struct EventApi {
    /// The application.
    pub app: App,
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

#[tonic::async_trait]
impl EventService for EventApi {
    async fn list_events(
        &self,
        req: Request<ListEventsRequest>,
    ) -> Result<Response<ListEventsResponse>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let min_level = level_from_proto(r.min_level).map_err(|v| {
            status(DomainError::invalid(
                "min_level",
                format!("unknown level {v}"),
            ))
        })?;
        let q = EventQuery {
            system_id: non_empty(r.system_id),
            zone: non_empty(r.zone),
            owner: non_empty(r.owner),
            min_level,
            since_ms: r.since.as_ref().map(timestamp_ms),
            until_ms: r.until.as_ref().map(timestamp_ms),
            kind: non_empty(r.kind),
            visible_to: None,
        };
        let (events, next_page_token) = self
            .app
            .list_events(
                &who,
                q,
                r.page_size,
                &r.page_token,
                linearizable(r.consistency),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(ListEventsResponse {
            events: events.iter().map(event_to_proto).collect(),
            next_page_token,
        }))
    }
}
