//! The server side of `ingot.raft.v1.RaftService`, on the Raft listener. The listener already requires a
//! client certificate signed by the cluster CA; every handler additionally requires that certificate to
//! name a region (`region-<id>`), so a rack's certificate from the same CA can never speak Raft.

use super::RaftStatus;
use crate::node::{ForwardReply, Forwarded, Region};
use ingot_common::pki;
use ingot_proto::raft::v1::raft_service_server::RaftService;
use ingot_proto::raft::v1::*;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest,
};
use openraft::ServerState;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// RaftService bound to this region.
pub struct RaftServer {
    /// The local region.
    pub region: Arc<Region>,
}

/// The node id in the caller's certificate, if the caller is a region.
fn caller_region<T>(req: &Request<T>) -> Result<u64, Status> {
    let certs = req.peer_certs().ok_or_else(|| {
        Status::unauthenticated(
            "the Raft listener requires a region certificate from the cluster CA",
        )
    })?;
    let cn = certs
        .first()
        .and_then(|c| pki::common_name(c.as_ref()))
        .ok_or_else(|| Status::unauthenticated("client certificate has no common name"))?;
    cn.strip_prefix("region-")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            Status::permission_denied(format!(
                "'{cn}' is not a region: only regions may use the Raft listener"
            ))
        })
}

fn json<T: serde::Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    serde_json::to_vec(v)
        .map(|json| Response::new(RaftPayload { json }))
        .map_err(|e| Status::internal(e.to_string()))
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(b)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        caller_region(&req)?;
        let rpc: AppendEntriesRequest<crate::raft::TypeConfig> = decode(&req.into_inner().json)?;
        let commit = rpc.leader_commit.map(|l| l.index).unwrap_or(0);
        let res = self.region.raft.append_entries(rpc).await;
        // Accepted from the current leader (anything but a higher vote here): the leader is alive.
        if matches!(&res, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
            self.region.leader_contact.heard_leader(commit);
        }
        json(&res)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        caller_region(&req)?;
        let rpc: VoteRequest<u64> = decode(&req.into_inner().json)?;
        let res = self.region.raft.vote(rpc).await;
        if matches!(&res, Ok(r) if r.vote_granted) {
            self.region.leader_contact.granted_vote();
        }
        json(&res)
    }

    async fn install_snapshot(
        &self,
        req: Request<SnapshotChunk>,
    ) -> Result<Response<RaftPayload>, Status> {
        caller_region(&req)?;
        let c = req.into_inner();
        let rpc = InstallSnapshotRequest {
            vote: decode(&c.vote_json)?,
            meta: decode(&c.meta_json)?,
            offset: c.offset,
            data: c.data,
            done: c.done,
        };
        let res = self.region.raft.install_snapshot(rpc).await;
        if res.is_ok() {
            // A leader is streaming its snapshot: alive, and this region is catching up.
            self.region.leader_contact.heard_leader(0);
        }
        json(&res)
    }

    async fn forward(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        caller_region(&req)?;
        let op: Forwarded = decode(&req.into_inner().json)?;
        let reply: ForwardReply = self.region.local_leader_op(&op).await;
        json(&reply)
    }

    async fn read_index(
        &self,
        req: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexReply>, Status> {
        caller_region(&req)?;
        match self.region.raft.ensure_linearizable().await {
            Ok(log_id) => Ok(Response::new(ReadIndexReply {
                index: log_id.map(|l| l.index).unwrap_or(0),
                leader_id: self.region.id,
            })),
            Err(e) => Err(Status::unavailable(format!(
                "not able to serve a read index: {e}"
            ))),
        }
    }

    async fn status(&self, req: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        caller_region(&req)?;
        Ok(Response::new(local_status(&self.region).into()))
    }

    async fn leave(&self, req: Request<LeaveRequest>) -> Result<Response<LeaveReply>, Status> {
        let caller = caller_region(&req)?;
        self.handle_leave(caller, req.into_inner()).await
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let caller = caller_region(&req)?;
        let node_id = req.into_inner().node_id;
        if caller != node_id {
            return Err(Status::permission_denied(format!(
                "region-{caller} may not ask for region {node_id} to be added"
            )));
        }
        match self.region.leader_op(Forwarded::AddVoter { node_id }).await {
            Ok(_) => Ok(Response::new(JoinReply {})),
            Err(e) => Err(crate::api::status(e)),
        }
    }
}

impl RaftServer {
    /// Handles `Leave`: only the current leader may retire this region.
    async fn handle_leave(
        &self,
        caller: u64,
        req: LeaveRequest,
    ) -> Result<Response<LeaveReply>, Status> {
        let leader = self.region.raft.metrics().borrow().current_leader;
        if req.node_id != self.region.id || leader != Some(caller) {
            return Err(Status::permission_denied(
                "only the leader may tell this region it was removed",
            ));
        }
        tracing::warn!(reason = %req.reason, "this region was removed from the cluster; stopping");
        let _ = self.region.removed.send(Some(req.reason));
        Ok(Response::new(LeaveReply {}))
    }
}

/// This region's Raft status, from openraft's metrics.
pub fn local_status(region: &Region) -> RaftStatus {
    let m = region.raft.metrics().borrow().clone();
    let role = match m.state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    };
    let voter = m
        .membership_config
        .membership()
        .voter_ids()
        .any(|v| v == region.id);
    RaftStatus {
        node_id: region.id,
        role: role.to_string(),
        term: m.current_term,
        last_applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
        last_log_index: m.last_log_index.unwrap_or(0),
        leader_id: m.current_leader.unwrap_or(0),
        snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
        voter,
    }
}
