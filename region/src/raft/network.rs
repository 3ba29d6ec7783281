//! openraft's network over tonic: one lazily connected mutual-TLS channel per peer, reused by Raft traffic
//! and by write forwarding. Raft messages travel as serde-JSON bytes; snapshot chunks as raw bytes.

use super::{RaftStatus, TypeConfig};
use ingot_common::NodeId;
use ingot_proto::raft::v1::raft_service_client::RaftServiceClient;
use ingot_proto::raft::v1::{RaftPayload, SnapshotChunk, StatusRequest};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
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

/// Largest gRPC message between regions (snapshot chunks are 1 MiB; append batches are bounded by
/// `max_payload_entries`).
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

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
        .max_decoding_message_size(MAX_MESSAGE)
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
        match tokio::time::timeout(option.hard_ttl(), f(c)).await {
            Ok(r) => Ok(r?.into_inner().json),
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "no answer from region {} within {:?}",
                self.target,
                option.hard_ttl()
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
