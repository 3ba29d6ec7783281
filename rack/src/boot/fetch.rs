//! Fetching blobs from regions for the image cache ([`super::cache`]).
//!
//! [`BlobFetcher`] is the seam: the cache asks it for one attempt at a blob's bytes from an offset and
//! does everything else itself (hashing, size checks, resuming after a broken stream, trying the next
//! region, time bounds), so all of that is tested with a fake fetcher. [`RegionFetcher`] is the real one:
//! `ingot.rack.v1.BlobService/FetchBlob` on a region's cluster listener, over mutual TLS with the rack's
//! own certificate (the identity its session uses), attempt `n` going to region `n mod regions`.

use crate::config::DataDir;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use ingot_common::image::BlobId;
use ingot_proto::rack::v1::blob_service_client::BlobServiceClient;
use ingot_proto::rack::v1::FetchBlobRequest;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// Why one fetch attempt failed; the cache logs it and tries again (from the same offset, at the next
/// region).
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// The rack knows no region (rack.json lists none).
    #[error("no region endpoint is known (rack.json lists none): register the rack again")]
    NoEndpoints,
    /// The region could not be reached or refused the call.
    #[error("region {endpoint}: {reason}")]
    Region {
        /// The region's cluster endpoint.
        endpoint: String,
        /// What failed.
        reason: String,
    },
    /// The region holds no verified copy of the blob (NOT_FOUND): another region may.
    #[error("region {endpoint} holds no verified copy of the blob")]
    NotFound {
        /// The region's cluster endpoint.
        endpoint: String,
    },
}

/// One piece of a blob as a region sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedChunk {
    /// The blob's total size as the sender announces it (in the first chunk; 0: not said).
    pub size: u64,
    /// The bytes, following the previous chunk's.
    pub data: Vec<u8>,
}

/// An open download: where it comes from (for logs) and its chunks. The stream may end early (a broken
/// download); the cache then resumes from what it has.
pub struct Fetched {
    /// The region answering (its cluster endpoint), for logs.
    pub source: String,
    /// The chunks from the requested offset on.
    pub chunks: BoxStream<'static, Result<FetchedChunk, FetchError>>,
}

/// Where the cache gets blobs from. One call is one attempt at one source; the cache bounds its time and
/// decides what to do next.
pub trait BlobFetcher: Send + Sync + 'static {
    /// How many sources attempts rotate over (the regions known now; at least 1).
    fn sources(&self) -> usize;
    /// Opens `blob` from byte `offset` at source number `attempt` modulo [`BlobFetcher::sources`].
    fn fetch(
        &self,
        blob: BlobId,
        offset: u64,
        attempt: usize,
    ) -> BoxFuture<'static, Result<Fetched, FetchError>>;
}

/// Locks a mutex, ignoring poisoning (the guarded maps stay consistent).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The real fetcher: `BlobService/FetchBlob` on the regions' cluster listeners with the rack's
/// mutual-TLS identity. The region list is re-read from rack.json at each attempt (the session keeps it
/// current from `Welcome`/`Regions`), falling back to the last list read.
pub struct RegionFetcher {
    /// The rack's data directory (rack.json).
    dir: DataDir,
    /// The session's mutual TLS towards regions.
    tls: ClientTlsConfig,
    /// The region list last read.
    endpoints: Mutex<Vec<String>>,
    /// One channel per region, kept between fetches (tonic reconnects a broken one).
    channels: Mutex<HashMap<String, Channel>>,
    /// How long connecting to one region may take.
    connect_timeout: Duration,
}

impl std::fmt::Debug for RegionFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionFetcher")
            .field("endpoints", &*lock(&self.endpoints))
            .finish_non_exhaustive()
    }
}

impl RegionFetcher {
    /// A fetcher for the rack in `dir`, with the session's TLS settings and its current region list.
    pub fn new(dir: DataDir, tls: ClientTlsConfig, endpoints: Vec<String>) -> RegionFetcher {
        RegionFetcher {
            dir,
            tls,
            endpoints: Mutex::new(endpoints),
            channels: Mutex::new(HashMap::new()),
            connect_timeout: Duration::from_secs(2),
        }
    }

    /// The regions now: rack.json's, else the last list read.
    fn endpoints(&self) -> Vec<String> {
        let mut last = lock(&self.endpoints);
        if let Ok(rack) = self.dir.load_rack() {
            if !rack.cluster_endpoints.is_empty() {
                *last = rack.cluster_endpoints;
            }
        }
        last.clone()
    }

    /// The channel to `ep` (made lazily: connecting happens on the first call, within the timeout).
    fn channel(&self, ep: &str) -> Result<Channel, FetchError> {
        if let Some(c) = lock(&self.channels).get(ep) {
            return Ok(c.clone());
        }
        let region = |reason: String| FetchError::Region {
            endpoint: ep.to_string(),
            reason,
        };
        let channel = Endpoint::from_shared(format!("https://{ep}"))
            .map_err(|e| region(format!("not a host:port address: {e}")))?
            .tls_config(self.tls.clone())
            .map_err(|e| {
                region(format!(
                    "TLS settings: {}",
                    crate::register::error_chain(&e)
                ))
            })?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(10))
            .connect_lazy();
        lock(&self.channels).insert(ep.to_string(), channel.clone());
        Ok(channel)
    }
}

impl BlobFetcher for RegionFetcher {
    fn sources(&self) -> usize {
        self.endpoints().len().max(1)
    }

    fn fetch(
        &self,
        blob: BlobId,
        offset: u64,
        attempt: usize,
    ) -> BoxFuture<'static, Result<Fetched, FetchError>> {
        let eps = self.endpoints();
        let picked = match eps.get(attempt % eps.len().max(1)) {
            Some(ep) => self.channel(ep).map(|c| (ep.clone(), c)),
            None => Err(FetchError::NoEndpoints),
        };
        Box::pin(async move {
            let (ep, channel) = picked?;
            let mut client = BlobServiceClient::new(channel);
            let reply = client
                .fetch_blob(FetchBlobRequest {
                    sha256: blob.to_hex(),
                    offset,
                })
                .await
                .map_err(|s| match s.code() {
                    tonic::Code::NotFound => FetchError::NotFound {
                        endpoint: ep.clone(),
                    },
                    code => FetchError::Region {
                        endpoint: ep.clone(),
                        reason: format!("{code:?}: {}", s.message()),
                    },
                })?;
            let source = ep.clone();
            let chunks = reply.into_inner().map(move |r| {
                r.map(|c| FetchedChunk {
                    size: c.size,
                    data: c.data,
                })
                .map_err(|s| FetchError::Region {
                    endpoint: ep.clone(),
                    reason: format!("stream broke: {:?}: {}", s.code(), s.message()),
                })
            });
            Ok(Fetched {
                source,
                chunks: Box::pin(chunks),
            })
        })
    }
}
