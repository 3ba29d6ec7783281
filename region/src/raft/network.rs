//! openraft's network over tonic: one lazily connected mutual-TLS channel per peer, reused by Raft traffic
//! and by write forwarding. Raft messages travel as serde-JSON bytes; snapshot chunks as raw bytes.

use super::{RaftStatus, TypeConfig};
use crate::command::{BATCH_MAX_BYTES, COMMAND_MAX_BYTES};
use ingot_common::NodeId;
use ingot_proto::raft::v1::raft_service_client::RaftServiceClient;
use ingot_proto::raft::v1::{RaftPayload, SnapshotChunk, StatusRequest};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// Largest gRPC request a region sends or accepts on the Raft listener. What travels: AppendEntries (up to
/// `max_payload_entries` entries of at most [`BATCH_MAX_BYTES`] each — more than this is split by
/// answering openraft with `PayloadTooLarge`, see [`entries_hint`]), a forwarded command (at most
/// [`COMMAND_MAX_BYTES`]), snapshot chunks (1 MiB). Twice the largest entry leaves room for the JSON
/// envelope and at least two full entries per message.
pub const MAX_MESSAGE: usize = 8 * 1024 * 1024;

/// Largest gRPC reply on the Raft listener: a forwarded write's answer can hold every machine of an
/// allocation (up to 1,000 machines with their inventories), which only the leader — a member, over
/// mutual TLS — sends. Requests, what any certificate holder can push, stay within [`MAX_MESSAGE`].
pub const MAX_REPLY: usize = 64 * 1024 * 1024;

const _: () = assert!(
    COMMAND_MAX_BYTES + 64 * 1024 <= MAX_MESSAGE && BATCH_MAX_BYTES + 64 * 1024 <= MAX_MESSAGE,
    "a log entry must fit one Raft message"
);

/// Bytes of an AppendEntries request that are not its JSON (protobuf framing, gRPC header).
const FRAMING: usize = 64;

/// When an AppendEntries of `entries` entries encodes to `bytes` of JSON over [`MAX_MESSAGE`], how many
/// entries to send instead (aiming at half the limit, so one split usually suffices). `None` when it fits,
/// or when a single entry cannot be split (the proposer's caps keep every entry well below the limit).
pub fn entries_hint(entries: usize, bytes: usize) -> Option<u64> {
    if bytes + FRAMING <= MAX_MESSAGE || entries <= 1 {
        return None;
    }
    let fit = (entries as u128 * (MAX_MESSAGE / 2) as u128 / bytes as u128) as usize;
    Some(fit.clamp(1, entries - 1) as u64)
}

/// Connections to the other regions, keyed by node id and address.
pub struct Peers {
    tls: ClientTlsConfig,
    conns: Mutex<HashMap<NodeId, (String, Channel)>>,
}

impl Peers {
    /// Peers authenticated with this region's certificate and verified against the cluster CA.
    pub fn new(tls: ClientTlsConfig) -> Peers {
        Peers {
            tls,
            conns: Mutex::new(HashMap::new()),
        }
    }

    /// The TLS settings towards other regions (this region's certificate, verified against the cluster
    /// CA), for connections that must not share Raft's channel (blob copies: a long stream on the Raft
    /// connection would delay heartbeats).
    pub fn tls(&self) -> &ClientTlsConfig {
        &self.tls
    }

    /// A client for `id` at `addr`, reusing the channel while the address is unchanged.
    pub fn client(
        &self,
        id: NodeId,
        addr: &str,
    ) -> Result<RaftServiceClient<Channel>, tonic::transport::Error> {
        let mut conns = crate::locks::lock(&self.conns);
        if let Some((a, ch)) = conns.get(&id) {
            if a == addr {
                return Ok(client(ch.clone()));
            }
        }
        let ch = channel(addr, &self.tls)?;
        conns.insert(id, (addr.to_string(), ch.clone()));
        Ok(client(ch))
    }
}

impl Peers {
    /// Region `id`'s live Raft status, asked over `RaftService.Status`; the reason when it does not answer
    /// within `timeout`.
    pub async fn status(
        &self,
        id: NodeId,
        addr: &str,
        timeout: Duration,
    ) -> Result<RaftStatus, String> {
        let mut c = self.client(id, addr).map_err(|e| e.to_string())?;
        match tokio::time::timeout(timeout, c.status(StatusRequest {})).await {
            Ok(Ok(r)) => Ok(r.into_inner().into()),
            Ok(Err(s)) => Err(s.message().to_string()),
            Err(_) => Err(format!("no answer within {} s", timeout.as_secs_f32())),
        }
    }
}

fn client(ch: Channel) -> RaftServiceClient<Channel> {
    RaftServiceClient::new(ch)
        .max_decoding_message_size(MAX_REPLY)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// A lazily connected mutual-TLS channel to a region's Raft listener.
pub fn channel(addr: &str, tls: &ClientTlsConfig) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls.clone())?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// Creates a [`Network`] per peer for openraft.
pub struct NetworkFactory {
    /// Shared connection pool.
    pub peers: Arc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Network;
    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Network {
        Network {
            target,
            addr: node.addr.clone(),
            peers: self.peers.clone(),
        }
    }
}

/// openraft's view of one peer.
pub struct Network {
    target: NodeId,
    addr: String,
    peers: Arc<Peers>,
}

type RpcErr<E> = RPCError<NodeId, BasicNode, E>;

/// The shortest time a Raft RPC is given. openraft 0.9 gives an AppendEntries half a heartbeat interval
/// (50 ms at our 100 ms), which a follower on a busy 2-core machine misses when the entries are large (a
/// DHCP boot storm commits hundreds of leases per entry): the leader then sends the same entries again
/// while the follower still works on the first copy, commits stall, and the cluster fell into repeated
/// elections (`ingot-bench --dhcp` at 2,000 DORA/s, debug build). 300 ms is half the minimum election
/// timeout: a follower still hears from a live leader well before it would campaign, and a dead
/// follower only delays its own replication stream (each target has its own).
pub const RPC_TIMEOUT_FLOOR: Duration = Duration::from_millis(300);

fn net_err<E: std::error::Error>(e: impl std::fmt::Display) -> RpcErr<E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(e.to_string())))
}

fn status_err<E: std::error::Error>(s: tonic::Status) -> RpcErr<E> {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown => {
            RPCError::Unreachable(Unreachable::new(&s))
        }
        _ => RPCError::Network(NetworkError::new(&s)),
    }
}

impl Network {
    fn decode<T, E>(&self, bytes: &[u8]) -> Result<T, RpcErr<E>>
    where
        T: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let r: Result<T, E> = serde_json::from_slice(bytes).map_err(net_err)?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn call<F, Fut>(&self, option: &RPCOption, f: F) -> Result<Vec<u8>, tonic::Status>
    where
        F: FnOnce(RaftServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        let c = self
            .peers
            .client(self.target, &self.addr)
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let ttl = option.hard_ttl().max(RPC_TIMEOUT_FLOOR);
        match tokio::time::timeout(ttl, f(c)).await {
            Ok(r) => Ok(r?.into_inner().json),
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "no answer from region {} within {ttl:?}",
                self.target,
            ))),
        }
    }
}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr<RaftError<NodeId>>> {
        let json = serde_json::to_vec(&rpc).map_err(net_err)?;
        if let Some(hint) = entries_hint(rpc.entries.len(), json.len()) {
            tracing::debug!(
                entries = rpc.entries.len(),
                bytes = json.len(),
                hint,
                "append entries over the message limit: split"
            );
            return Err(PayloadTooLarge::new_entries_hint(hint).into());
        }
        let bytes = self
            .call(&option, |mut c| async move {
                c.append_entries(RaftPayload { json }).await
            })
            .await
            .map_err(status_err)?;
        self.decode(&bytes)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr<RaftError<NodeId>>> {
        let json = serde_json::to_vec(&rpc).map_err(net_err)?;
        let bytes = self
            .call(&option, |mut c| async move {
                c.vote(RaftPayload { json }).await
            })
            .await
            .map_err(status_err)?;
        self.decode(&bytes)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<RaftError<NodeId, InstallSnapshotError>>>
    {
        let chunk = SnapshotChunk {
            vote_json: serde_json::to_vec(&rpc.vote).map_err(net_err)?,
            meta_json: serde_json::to_vec(&rpc.meta).map_err(net_err)?,
            offset: rpc.offset,
            data: rpc.data,
            done: rpc.done,
        };
        let bytes = self
            .call(
                &option,
                |mut c| async move { c.install_snapshot(chunk).await },
            )
            .await
            .map_err(status_err)?;
        self.decode(&bytes)
    }

    /// Retry an unreachable region every 100 ms (openraft's default is 500 ms): a restarted region must
    /// hear from the leader well within its election timeout, or it campaigns with a stale log.
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(Duration::from_millis(100)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_entries_over_the_limit_are_split() {
        assert_eq!(entries_hint(512, 1024), None);
        assert_eq!(entries_hint(512, MAX_MESSAGE - FRAMING), None);
        // Twice the limit: a quarter of the entries (half the limit) per message.
        assert_eq!(entries_hint(512, 2 * MAX_MESSAGE), Some(128));
        // Never all of them, never none.
        assert_eq!(entries_hint(2, MAX_MESSAGE), Some(1));
        assert_eq!(entries_hint(10, 1000 * MAX_MESSAGE), Some(1));
        // One entry cannot be split: it is sent (and cannot be over the limit, see the proposer's caps).
        assert_eq!(entries_hint(1, 2 * MAX_MESSAGE), None);
    }
}
