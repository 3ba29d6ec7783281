//! The connection to a cluster: one TLS channel balanced over every region endpoint, and the generated
//! gRPC clients on top of it, each adding the bearer token. Kept in one place so that the CLI, the tests
//! and the benchmark all use the same TLS, keepalive and failover settings.

use crate::{ClientConfig, ClientError};
use ingot_proto::v1::agent_service_client::AgentServiceClient;
use ingot_proto::v1::cluster_service_client::ClusterServiceClient;
use ingot_proto::v1::event_service_client::EventServiceClient;
use ingot_proto::v1::image_service_client::ImageServiceClient;
use ingot_proto::v1::machine_service_client::MachineServiceClient;
use ingot_proto::v1::pool_service_client::PoolServiceClient;
use ingot_proto::v1::rack_service_client::RackServiceClient;
use ingot_proto::v1::subnet_service_client::SubnetServiceClient;
use ingot_proto::v1::tag_service_client::TagServiceClient;
use ingot_proto::v1::user_service_client::UserServiceClient;
use ingot_proto::v1::zone_service_client::ZoneServiceClient;
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

/// The TLS server name every region certificate carries, whatever address the region is reached at.
pub const REGION_SERVER_NAME: &str = "ingot-region";
/// Largest response accepted (a full page of machines can be large).
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;
/// How long to wait for a TCP + TLS connection to one region before trying another.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The channel type of every authenticated client: the balanced channel plus the token interceptor.
pub type AuthChannel = InterceptedService<Channel, BearerAuth>;
/// `ingot.v1.MachineService` client that sends the bearer token.
pub type MachineClient = MachineServiceClient<AuthChannel>;
/// `ingot.v1.ZoneService` client that sends the bearer token.
pub type ZoneClient = ZoneServiceClient<AuthChannel>;
/// `ingot.v1.ClusterService` client that sends the bearer token.
pub type ClusterClient = ClusterServiceClient<AuthChannel>;
/// `ingot.v1.RackService` client that sends the bearer token.
pub type RackClient = RackServiceClient<AuthChannel>;
/// `ingot.v1.SubnetService` client that sends the bearer token.
pub type SubnetClient = SubnetServiceClient<AuthChannel>;
/// `ingot.v1.PoolService` client that sends the bearer token.
pub type PoolClient = PoolServiceClient<AuthChannel>;
/// `ingot.v1.TagService` client that sends the bearer token.
pub type TagClient = TagServiceClient<AuthChannel>;
/// `ingot.v1.UserService` client that sends the bearer token.
pub type UserClient = UserServiceClient<AuthChannel>;
/// `ingot.v1.EventService` client that sends the bearer token.
pub type EventClient = EventServiceClient<AuthChannel>;
/// `ingot.v1.ImageService` client that sends the bearer token.
pub type ImageClient = ImageServiceClient<AuthChannel>;
/// `ingot.v1.AgentService` client. Agent calls authenticate with the per-boot token inside each
/// request; the bearer header is sent too but not needed.
pub type AgentClient = AgentServiceClient<AuthChannel>;

/// Interceptor adding `authorization: Bearer <token>` to every call, as every Ingot RPC but `JoinRegion`
/// requires.
#[derive(Clone)]
pub struct BearerAuth {
    header: MetadataValue<Ascii>,
}

impl BearerAuth {
    /// Prepares the header once; fails if the token is not printable ASCII.
    pub fn new(token: &str) -> Result<BearerAuth, ClientError> {
        let mut header = MetadataValue::try_from(format!("Bearer {}", token.trim()))
            .map_err(|_| ClientError::InvalidToken)?;
        // Keep the credential out of HPACK tables and debug output.
        header.set_sensitive(true);
        Ok(BearerAuth { header })
    }
}

impl std::fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerAuth(<redacted>)")
    }
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.header.clone());
        Ok(request)
    }
}

/// Connected gRPC clients for one cluster. Cheap to clone; every client shares the one channel, so calls
/// from many tasks are multiplexed over at most one HTTP/2 connection per region.
#[derive(Clone, Debug)]
pub struct Clients {
    channel: Channel,
    auth: BearerAuth,
    config: ClientConfig,
}

impl ClientConfig {
    /// Creates the balanced channel over all endpoints (connections are made lazily, so this does not fail
    /// when a region is down: calls routed to it fail with `UNAVAILABLE` and are worth retrying, see
    /// [`crate::retry_unavailable`]). Must be called inside a Tokio runtime.
    pub fn connect(&self) -> Result<Clients, ClientError> {
        if self.endpoints.is_empty() {
            return Err(ClientError::Missing {
                what: "endpoint",
                var: crate::config::ENV_ENDPOINTS,
            });
        }
        let auth = BearerAuth::new(&self.token)?;
        let tls = self.tls();
        let endpoints = self
            .endpoints
            .iter()
            .map(|e| endpoint(e, &tls))
            .collect::<Result<Vec<_>, _>>()?;
        let channel = if endpoints.len() == 1 {
            endpoints[0].connect_lazy()
        } else {
            Channel::balance_list(endpoints.into_iter())
        };
        Ok(Clients {
            channel,
            auth,
            config: self.clone(),
        })
    }

    fn tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.ca_pem.as_bytes()))
            .domain_name(REGION_SERVER_NAME)
    }
}

/// One region endpoint with Ingot's transport settings: TLS against the cluster CA, quick connect timeout
/// and HTTP/2 keepalive so that a dead region is noticed within seconds even on an idle connection.
fn endpoint(url: &str, tls: &ClientTlsConfig) -> Result<Endpoint, ClientError> {
    let invalid = |reason: String| ClientError::InvalidEndpoint {
        endpoint: url.to_string(),
        reason,
    };
    let url = crate::config::split_endpoints([url])
        .pop()
        .ok_or_else(|| invalid("empty".into()))?;
    if !url.starts_with("https://") {
        return Err(invalid(
            "Ingot regions serve TLS only: use https://host:port".into(),
        ));
    }
    let ep = Endpoint::from_shared(url.clone()).map_err(|e| invalid(e.to_string()))?;
    if ep.uri().port_u16().is_none() {
        return Err(invalid("missing port (expected https://host:port)".into()));
    }
    Ok(ep
        .tls_config(tls.clone())
        .map_err(|e| invalid(e.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(1))
        // Room for a whole page of machines in flight without waiting for window updates.
        .initial_stream_window_size(Some(8 * 1024 * 1024))
        .initial_connection_window_size(Some(16 * 1024 * 1024))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true))
}

impl Clients {
    /// The machine service (enlist, find, change, remove machines).
    pub fn machines(&self) -> MachineClient {
        MachineServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// The zone service (availability zones).
    pub fn zones(&self) -> ZoneClient {
        ZoneServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// The cluster service (regions, join tokens, membership).
    pub fn cluster(&self) -> ClusterClient {
        ClusterServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// The rack service (enrollment tokens, rack controllers and their connection state).
    pub fn racks(&self) -> RackClient {
        RackServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// The subnet service (boot networks and their DHCP leases).
    pub fn subnets(&self) -> SubnetClient {
        SubnetServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// The pool service (resource pools).
    pub fn pools(&self) -> PoolClient {
        PoolServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// The tag service (manual and defined tags).
    pub fn tags(&self) -> TagClient {
        TagServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// The user service (users, API tokens, whoami).
    pub fn users(&self) -> UserClient {
        UserServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// The event service (history).
    pub fn events(&self) -> EventClient {
        EventServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// The image service (boot images: upload, list, delete).
    pub fn images(&self) -> ImageClient {
        ImageServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// The agent service (what booted machines call).
    pub fn agent(&self) -> AgentClient {
        AgentServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// The same connection with another bearer token (e.g. to act as another user).
    pub fn with_token(&self, token: &str) -> Result<Clients, ClientError> {
        ClientConfig {
            token: token.to_string(),
            ..self.config.clone()
        }
        .connect()
    }

    /// The raw channel (no token), for services this crate does not wrap, e.g. `grpc.health.v1`.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The configuration these clients were made from.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Clients bound to one specific region (`https://host:port` or `host:port`) with the same CA and
    /// token, for tests and tools that must address a given region rather than any of them.
    pub fn channel_to(&self, endpoint: &str) -> Result<Clients, ClientError> {
        ClientConfig {
            endpoints: crate::config::split_endpoints([endpoint]),
            ..self.config.clone()
        }
        .connect()
    }
}
