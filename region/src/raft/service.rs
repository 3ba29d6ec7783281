//! The server side of `ingot.raft.v1.RaftService`, on the Raft listener. The listener already requires a
//! client certificate signed by the cluster CA, and [`refuse_revoked`] (run before every request on that
//! listener) refuses certificates on the replicated revocation list. Every handler additionally requires
//! the certificate to name a region (`region-<id>`), so a rack's certificate from the same CA can never
//! speak Raft, and that region to be a current member ([`check_caller`]): a removed region's certificate,
//! still signed by the CA and valid for years, is worth nothing.
//!
//! Revocation is checked per request against the live state, not in the TLS handshake: tonic's
//! `ServerTlsConfig` takes only a CA root (a custom rustls client verifier would mean running our own
//! TLS acceptor and re-implementing tonic's peer-certificate plumbing), and a request check sees a
//! revocation the moment it is applied, also on connections opened before it.

use super::RaftStatus;
use crate::node::{ForwardReply, Forwarded, Region};
use crate::raft::store::SharedState;
use ingot_common::{pki, NodeId};
use ingot_proto::raft::v1::raft_service_server::RaftService;
use ingot_proto::raft::v1::*;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest,
};
use openraft::ServerState;
use std::collections::BTreeSet;
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

/// Which regions a Raft RPC accepts (beyond a CA-signed, unrevoked `region-<id>` certificate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Callers {
    /// Current members, voters or learners, in this region's view of the membership.
    Members,
    /// Members, and regions admitted after everything this region has applied (node ids at or past its
    /// `next_node_id`, which it cannot judge yet): a lagging region must still take entries and votes
    /// from a leader added while it was away, or it could never catch up. A removed region's id is below
    /// `next_node_id` on every region that applied its admission.
    MembersOrNewer,
}

/// Checks that region `caller` may make an RPC that accepts `callers`, given this region's membership
/// (`members`, every node id of the current, possibly joint, configuration) and the `next_node_id` of
/// its applied state. A region with no membership yet (joined, waiting to be added) accepts any region:
/// it has nothing to protect and must hear from the leader to become a member.
pub fn check_caller(
    caller: NodeId,
    callers: Callers,
    members: &BTreeSet<NodeId>,
    next_node_id: NodeId,
) -> Result<(), Status> {
    let allowed = members.is_empty()
        || members.contains(&caller)
        || (callers == Callers::MembersOrNewer && caller >= next_node_id);
    if allowed {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "region-{caller} is not a member of this cluster (removed, or never added): its certificate \
         no longer admits it; a removed region must join again with a new join token and data directory"
    )))
}

/// The interceptor of every service on the cluster listener (Raft and rack sessions): refuses a client
/// certificate whose serial is on the replicated revocation list (removed regions, revoked racks).
pub fn refuse_revoked(
    state: SharedState,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |req: Request<()>| {
        let serial = req
            .peer_certs()
            .and_then(|c| c.first().and_then(|c| pki::serial_hex(c.as_ref())));
        if let Some(serial) = serial {
            check_not_revoked(&serial, &crate::locks::read(&state).data.revoked_serials)?;
        }
        Ok(req)
    }
}

/// Refuses the certificate with serial `serial` if it is on `revoked`.
pub fn check_not_revoked(serial: &str, revoked: &BTreeSet<String>) -> Result<(), Status> {
    if revoked.contains(serial) {
        return Err(Status::permission_denied(format!(
            "certificate {serial} was revoked (its region was removed from the cluster or its rack \
             revoked): join or register again with a new token"
        )));
    }
    Ok(())
}

fn json<T: serde::Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    serde_json::to_vec(v)
        .map(|json| Response::new(RaftPayload { json }))
        .map_err(|e| Status::internal(e.to_string()))
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(b).map_err(|e| {
        Status::invalid_argument(crate::api::clip(format!("undecodable raft message: {e}")))
    })
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.caller(&req, Callers::MembersOrNewer)?;
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
        self.caller(&req, Callers::MembersOrNewer)?;
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
        self.caller(&req, Callers::MembersOrNewer)?;
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
        self.caller(&req, Callers::Members)?;
        let op: Forwarded = decode(&req.into_inner().json)?;
        let reply: ForwardReply = self.region.local_leader_op(&op).await;
        json(&reply)
    }

    async fn read_index(
        &self,
        req: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexReply>, Status> {
        self.caller(&req, Callers::Members)?;
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
        self.caller(&req, Callers::Members)?;
        Ok(Response::new(local_status(&self.region).into()))
    }

    async fn leave(&self, req: Request<LeaveRequest>) -> Result<Response<LeaveReply>, Status> {
        let caller = self.caller(&req, Callers::Members)?;
        self.handle_leave(caller, req.into_inner()).await
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        // Not yet a member: the caller must be a region admitted with a join token, and not removed.
        let caller = caller_region(&req)?;
        let node_id = req.into_inner().node_id;
        if caller != node_id {
            return Err(Status::permission_denied(format!(
                "region-{caller} may not ask for region {node_id} to be added"
            )));
        }
        self.check_admitted(caller).await?;
        match self.region.leader_op(Forwarded::AddVoter { node_id }).await {
            Ok(_) => Ok(Response::new(JoinReply {})),
            Err(e) => Err(crate::api::status(e)),
        }
    }
}

impl RaftServer {
    /// The calling region's node id, once it is known to be one `callers` admits.
    fn caller<T>(&self, req: &Request<T>, callers: Callers) -> Result<NodeId, Status> {
        let caller = caller_region(req)?;
        let members: BTreeSet<NodeId> = self.region.members().into_keys().collect();
        let next_node_id = crate::locks::read(&self.region.state).data.next_node_id;
        check_caller(caller, callers, &members, next_node_id)?;
        Ok(caller)
    }

    /// Refuses `Join` from a region that was never admitted (or was removed since). A region admitted a
    /// moment ago through another region may not be applied here yet: look again after a barrier.
    async fn check_admitted(&self, caller: NodeId) -> Result<(), Status> {
        let admitted = || {
            crate::locks::read(&self.region.state)
                .data
                .regions
                .contains_key(&caller)
        };
        if admitted() {
            return Ok(());
        }
        self.region
            .read_barrier(true)
            .await
            .map_err(crate::api::status)?;
        if admitted() {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "region-{caller} was not admitted with a join token (or was removed since): join again \
             with a new token"
        )))
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn only_members_may_call_and_lagging_regions_accept_newer_ones() {
        let members: BTreeSet<NodeId> = [1, 2, 4].into();
        // next_node_id 5: region 3 was admitted and removed; 5 and up are beyond what we applied.
        for c in [Callers::Members, Callers::MembersOrNewer] {
            assert!(check_caller(1, c, &members, 5).is_ok());
            assert!(check_caller(4, c, &members, 5).is_ok());
            let e = check_caller(3, c, &members, 5).unwrap_err();
            assert_eq!(e.code(), Code::PermissionDenied);
            assert!(e.message().contains("region-3 is not a member"), "{e}");
        }
        assert!(check_caller(5, Callers::MembersOrNewer, &members, 5).is_ok());
        assert!(check_caller(5, Callers::Members, &members, 5).is_err());
        // A region waiting to be added has no membership yet and accepts the leader, whoever it is.
        assert!(check_caller(3, Callers::Members, &BTreeSet::new(), 5).is_ok());
    }

    #[test]
    fn revoked_serials_are_refused() {
        let revoked: BTreeSet<String> = [pki::serial_for("old")].into();
        assert!(check_not_revoked(&pki::serial_for("new"), &revoked).is_ok());
        let e = check_not_revoked(&pki::serial_for("old"), &revoked).unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        assert!(e.message().contains("revoked"), "{e}");
    }
}
