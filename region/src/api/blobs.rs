//! `ingot.rack.v1.BlobService` on the cluster listener: a blob's bytes for a member region (copying it)
//! or a registered, unrevoked rack (caching it). Only a verified copy is ever served; the stream reads
//! one chunk at a time, so memory per download is a chunk or two whatever the blob's size, and at most
//! [`MAX_STREAMS`] downloads run at once.

use super::status;
use crate::app::App;
use crate::blobs::CHUNK;
use crate::raft::service::{check_caller, Callers};
use ingot_common::image::BlobId;
use ingot_common::{pki, DomainError};
use ingot_proto::rack::v1::blob_service_server::BlobService;
use ingot_proto::rack::v1::{BlobChunk, FetchBlobRequest};
use std::io::SeekFrom;
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// BlobService over [`App`].
pub struct BlobApi {
    app: App,
    /// One permit per download in progress.
    streams: Arc<Semaphore>,
}

/// Chunks queued per download ahead of the network: the memory bound of one stream.
const QUEUED_CHUNKS: usize = 2;
/// Most downloads one region serves at once (each holds up to [`QUEUED_CHUNKS`] MiB and an open file);
/// past it a caller gets RESOURCE_EXHAUSTED and asks another region or retries.
pub const MAX_STREAMS: usize = 128;

impl BlobApi {
    /// The service for `app`.
    pub fn new(app: App) -> BlobApi {
        BlobApi {
            app,
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        }
    }
}

impl BlobApi {
    /// Admits the caller of `req`: a member region's certificate (`region-<id>`) or a registered,
    /// unrevoked rack's (`rack-<name>`, the rack session's own check).
    async fn admit<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let cn = req
            .peer_certs()
            .and_then(|c| c.first().and_then(|c| pki::common_name(c.as_ref())));
        if let Some(id) = cn.as_deref().and_then(|cn| cn.strip_prefix("region-")) {
            let id = id.parse().map_err(|_| {
                Status::permission_denied(format!("'region-{id}' names no region id"))
            })?;
            let members = self.app.region.members().into_keys().collect();
            let next = crate::locks::read(&self.app.region.state).data.next_node_id;
            return check_caller(id, Callers::Members, &members, next);
        }
        let rack = super::rack_session::caller_rack(req)?;
        self.app.admit_rack_session(&rack).await.map_err(status)
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<BlobChunk, Status>> + Send>>;

#[tonic::async_trait]
impl BlobService for BlobApi {
    type FetchBlobStream = ChunkStream;

    async fn fetch_blob(
        &self,
        req: Request<FetchBlobRequest>,
    ) -> Result<Response<Self::FetchBlobStream>, Status> {
        self.admit(&req).await?;
        let r = req.into_inner();
        let blob = BlobId::parse("sha256", &r.sha256).map_err(status)?;
        let v = self.app.open_blob(blob).await.map_err(status)?;
        if r.offset > v.size {
            return Err(status(DomainError::out_of_range(format!(
                "offset {} is past the end of blob {blob} ({} bytes)",
                r.offset, v.size
            ))));
        }
        let Ok(permit) = self.streams.clone().try_acquire_owned() else {
            return Err(status(DomainError::exhausted(format!(
                "this region is serving {MAX_STREAMS} blob downloads already; retry shortly or ask another region"
            ))));
        };
        let (tx, rx) = mpsc::channel(QUEUED_CHUNKS);
        let (size, offset) = (v.size, r.offset);
        let mut file = tokio::fs::File::from_std(v.file);
        // An async task: a slow client holds a queued chunk and a permit, never a thread.
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = file.seek(SeekFrom::Start(offset)).await {
                let _ = tx
                    .send(Err(Status::unavailable(format!(
                        "reading blob {blob}: {e}"
                    ))))
                    .await;
                return;
            }
            let mut first = true;
            let mut left = size - offset;
            while left > 0 || first {
                let n = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
                let mut data = vec![0u8; n];
                if let Err(e) = file.read_exact(&mut data).await {
                    let _ = tx
                        .send(Err(Status::unavailable(format!(
                            "reading blob {blob}: {e}; ask another region"
                        ))))
                        .await;
                    return;
                }
                left -= n as u64;
                let chunk = BlobChunk {
                    size: if first { size } else { 0 },
                    data,
                };
                first = false;
                if tx.send(Ok(chunk)).await.is_err() {
                    return; // the client went away
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
