//! The one wiring function: [`start`] opens the store, builds the Raft node and serves both listeners —
//! the Raft listener (mutual TLS, cluster-CA client certificates only) and the client API listener (TLS,
//! bearer tokens, health, reflection).

use crate::api::rack_session::RackSessionServer;
use crate::api::{
    agent::AgentApi, blobs::BlobApi, cluster::ClusterApi, events::EventApi, images::ImageApi,
    machines::MachineApi, pools::PoolApi, racks::RackApi, subnets::SubnetApi, tags::TagApi,
    users::UserApi, zones::ZoneApi,
};
use crate::app::App;
use crate::datadir::{DataDir, RegionIdentity};
use crate::node::Region;
use crate::raft::network::{NetworkFactory, Peers, MAX_MESSAGE, MAX_REPLY};
use crate::raft::service::{refuse_revoked, RaftServer};
use crate::raft::store::{open_db, LogStore, OpenError, StateMachineStore};
use crate::raft::{Raft, RaftTuning};
use ingot_proto::rack::v1::blob_service_server::BlobServiceServer;
use ingot_proto::rack::v1::rack_session_service_server::RackSessionServiceServer;
use ingot_proto::raft::v1::raft_service_server::RaftServiceServer;
use ingot_proto::v1::agent_service_server::AgentServiceServer;
use ingot_proto::v1::cluster_service_server::ClusterServiceServer;
use ingot_proto::v1::event_service_server::EventServiceServer;
use ingot_proto::v1::image_service_server::ImageServiceServer;
use ingot_proto::v1::machine_service_server::MachineServiceServer;
use ingot_proto::v1::pool_service_server::PoolServiceServer;
use ingot_proto::v1::rack_service_server::RackServiceServer;
use ingot_proto::v1::subnet_service_server::SubnetServiceServer;
use ingot_proto::v1::tag_service_server::TagServiceServer;
use ingot_proto::v1::user_service_server::UserServiceServer;
use ingot_proto::v1::zone_service_server::ZoneServiceServer;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, Server, ServerTlsConfig};

/// Largest request the API listener (and a rack session's messages) decodes. The largest legitimate
/// ones, with every field at its cap (`ingot_common::validate::limits`): an agent's inventory (~0.5 MB),
/// a machine with 64 power parameters of 4 KiB (~0.3 MB), a deployment's 64 KiB user data, a rack's
/// power observations. Bulk data (OS images, later) is streamed in chunks, never sent as one message. A
/// larger request is refused by gRPC before it is read, with OUT_OF_RANGE.
pub const API_MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// Why a region could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] OpenError),
    /// sled failed while opening a tree.
    #[error("opening the Raft log failed: {0}")]
    Sled(#[from] sled::Error),
    /// The Raft configuration is invalid.
    #[error("invalid Raft settings: {0}")]
    Config(#[from] openraft::ConfigError),
    /// openraft refused to start.
    #[error("Raft failed to start: {0}")]
    Raft(String),
    /// TLS material is unusable.
    #[error("TLS setup failed: {0}; check the files in the data directory's tls/ folder")]
    Tls(#[from] tonic::transport::Error),
    /// A data directory file could not be read.
    #[error(transparent)]
    DataDir(#[from] crate::datadir::DataDirError),
    /// The gRPC reflection descriptors are broken (a build problem).
    #[error("gRPC reflection setup failed: {0}")]
    Reflection(String),
    /// The blob store (image files) could not be opened.
    #[error(transparent)]
    Blobs(#[from] crate::blobs::BlobError),
}

/// The TLS material of a region.
pub struct TlsFiles {
    /// Cluster CA certificate (PEM).
    pub ca_pem: String,
    /// This region's certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM).
    pub key_pem: String,
}

impl TlsFiles {
    /// Reads tls/ from the data directory.
    pub fn load(dd: &DataDir) -> Result<TlsFiles, crate::datadir::DataDirError> {
        Ok(TlsFiles {
            ca_pem: dd.read(&dd.ca_path())?,
            cert_pem: dd.read(&dd.cert_path())?,
            key_pem: dd.read(&dd.key_path())?,
        })
    }

    /// Client TLS towards other regions: verify them against the CA, present our certificate.
    pub fn peer_client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(ingot_common::pki::REGION_SERVER_NAME)
    }
}

/// A started region: its node and a way to stop it.
pub struct Running {
    /// The Raft node and state.
    pub region: Arc<Region>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops serving, shuts Raft down and flushes the store.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        let _ = self.region.raft.shutdown().await;
    }
}

/// Opens the store in `dd`, creates the Raft node `identity.node_id`, and serves the Raft listener and
/// the API listener on the given (already bound) sockets.
pub async fn start(
    dd: &DataDir,
    identity: &RegionIdentity,
    tls: &TlsFiles,
    api: TcpListener,
    raft_listener: TcpListener,
    tuning: &RaftTuning,
) -> Result<Running, StartError> {
    let db = open_db(&dd.db_path(), &identity.cluster_id)?;
    let log = LogStore::new(&db)?;
    let sm = StateMachineStore::open(&db)?;
    let state = sm.state.clone();
    let applied = sm.applied.clone();
    let peers = Arc::new(Peers::new(tls.peer_client()));
    let config = Arc::new(tuning.config(&identity.cluster_id)?);
    let raft = Raft::new(
        identity.node_id,
        config,
        NetworkFactory {
            peers: peers.clone(),
        },
        log,
        sm,
    )
    .await
    .map_err(|e| StartError::Raft(e.to_string()))?;
    let leader_contact = Arc::new(crate::raft::election::LeaderContact::new());
    tokio::spawn(crate::raft::election::run(
        raft.clone(),
        leader_contact.clone(),
        crate::raft::election::Timing::new(tuning.heartbeat_ms, tuning.election_timeout_ms),
    ));
    let (proposals, proposal_rx) = tokio::sync::mpsc::channel(8 * crate::command::MAX_BATCH);
    tokio::spawn(crate::node::run_proposer(raft.clone(), proposal_rx));
    let region = Arc::new(Region {
        id: identity.node_id,
        name: identity.name.clone(),
        cluster_id: identity.cluster_id.clone(),
        raft,
        state,
        peers,
        proposals,
        applied,
        removed: watch::channel(None).0,
        leader_contact,
    });
    let (shutdown, rx) = watch::channel(false);
    let stop = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let server_identity = Identity::from_pem(&tls.cert_pem, &tls.key_pem);

    let app = App {
        region: region.clone(),
        rack_grace_ms: tuning.rack_grace_ms,
        blobs: Arc::new(crate::blobs::BlobStore::open(dd.root.join("blobs"))?),
    };

    // Cluster listener: mutual TLS; only certificates from the cluster CA get past the handshake. Regions
    // use RaftService (CN region-<id> of a current member required), racks RackSessionService (CN
    // rack-<name> of a registered, unrevoked rack required).
    let raft_tls = ServerTlsConfig::new()
        .identity(server_identity.clone())
        .client_ca_root(Certificate::from_pem(&tls.ca_pem));
    // Both services refuse certificates on the replicated revocation list, per request (see
    // raft::service for why not in the handshake).
    let raft_svc = RaftServiceServer::new(RaftServer {
        region: region.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE)
    .max_encoding_message_size(MAX_REPLY);
    let revocation = refuse_revoked(region.state.clone());
    let raft_server = Server::builder()
        .tls_config(raft_tls)?
        .http2_keepalive_interval(Some(Duration::from_secs(1)))
        .http2_keepalive_timeout(Some(Duration::from_secs(2)))
        .add_service(InterceptedService::new(raft_svc, revocation.clone()))
        .add_service(InterceptedService::new(
            RackSessionServiceServer::new(RackSessionServer { app: app.clone() })
                .max_decoding_message_size(API_MAX_MESSAGE),
            revocation.clone(),
        ))
        .add_service(InterceptedService::new(
            BlobServiceServer::new(BlobApi::new(app.clone())),
            revocation,
        ));
    let raft_rx = rx.clone();
    let t1 = tokio::spawn(async move {
        if let Err(e) = raft_server
            .serve_with_incoming_shutdown(incoming(raft_listener), stop(raft_rx))
            .await
        {
            tracing::error!("raft listener stopped: {e}");
        }
    });

    // API listener: TLS with the region certificate; callers authenticate with bearer tokens.
    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_serving::<MachineServiceServer<MachineApi>>()
        .await;
    health.set_serving::<ZoneServiceServer<ZoneApi>>().await;
    health
        .set_serving::<ClusterServiceServer<ClusterApi>>()
        .await;
    health.set_serving::<PoolServiceServer<PoolApi>>().await;
    health.set_serving::<TagServiceServer<TagApi>>().await;
    health.set_serving::<UserServiceServer<UserApi>>().await;
    health.set_serving::<EventServiceServer<EventApi>>().await;
    health.set_serving::<AgentServiceServer<AgentApi>>().await;
    health.set_serving::<RackServiceServer<RackApi>>().await;
    health.set_serving::<SubnetServiceServer<SubnetApi>>().await;
    health.set_serving::<ImageServiceServer<ImageApi>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ingot_proto::V1_FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StartError::Reflection(e.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ingot_proto::V1_FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| StartError::Reflection(e.to_string()))?;
    let attempts = Arc::new(crate::api::cluster::FailedAttempts::default());
    let encoded = Arc::new(crate::app::encoded::EncodedMachines::new(
        crate::api::machines::encode_basic,
    ));
    let api_server = Server::builder()
        .tls_config(ServerTlsConfig::new().identity(server_identity))?
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .add_service(health_svc)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            MachineServiceServer::new(MachineApi {
                app: app.clone(),
                encoded: encoded.clone(),
            })
            .max_decoding_message_size(API_MAX_MESSAGE),
        )
        .add_service(
            ZoneServiceServer::new(ZoneApi { app: app.clone() })
                .max_decoding_message_size(API_MAX_MESSAGE),
        )
        .add_service(
            PoolServiceServer::new(PoolApi { app: app.clone() })
                .max_decoding_message_size(API_MAX_MESSAGE),
        )
        .add_service(
            TagServiceServer::new(TagApi { app: app.clone() })
                .max_decoding_message_size(API_MAX_MESSAGE),
        )
        .add_service(
            UserServiceServer::new(UserApi { app: app.clone() })
                .max_decoding_message_size(API_MAX_MESSAGE),
        )
        .add_service(
            EventServiceServer::new(EventApi { app: app.clone() })
                .max_decoding_message_size(API_MAX_MESSAGE),
        )
        .add_service(
            RackServiceServer::new(RackApi {
                app: app.clone(),
                attempts: attempts.clone(),
            })
            .max_decoding_message_size(API_MAX_MESSAGE),
        )
        .add_service(
            AgentServiceServer::new(AgentApi { app: app.clone() })
                .max_decoding_message_size(API_MAX_MESSAGE),
        )
        .add_service(
            SubnetServiceServer::new(SubnetApi { app: app.clone() })
                .max_decoding_message_size(API_MAX_MESSAGE),
        )
        .add_service(
            ImageServiceServer::new(ImageApi { app: app.clone() })
                .max_decoding_message_size(API_MAX_MESSAGE),
        )
        .add_service(
            ClusterServiceServer::new(ClusterApi {
                app: app.clone(),
                attempts,
            })
            .max_decoding_message_size(API_MAX_MESSAGE),
        );
    let worker = tokio::spawn(crate::app::worker::run(app.clone(), shutdown.subscribe()));
    // Every region (not only the leader) copies the image blobs it lacks and checks those it holds.
    let blob_sync = tokio::spawn(crate::app::blob_sync::run(
        app.clone(),
        shutdown.subscribe(),
    ));
    tokio::spawn(encoded.follow(app));
    let t2 = tokio::spawn(async move {
        if let Err(e) = api_server
            .serve_with_incoming_shutdown(incoming(api), stop(rx))
            .await
        {
            tracing::error!("api listener stopped: {e}");
        }
    });
    Ok(Running {
        region,
        shutdown,
        tasks: vec![t1, t2, worker, blob_sync],
    })
}

/// Accepted connections of a pre-bound listener, with TCP_NODELAY. (`Server::tcp_nodelay` applies only to
/// listeners tonic binds itself; without it every small response waits for Nagle + delayed ACK, ~40 ms.)
fn incoming(l: TcpListener) -> TcpIncoming {
    TcpIncoming::from(l).with_nodelay(Some(true))
}
