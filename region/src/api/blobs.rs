//! `ingot.rack.v1.BlobService` on the cluster listener: a blob's bytes for a member region (copying it)
//! or a registered, unrevoked rack (caching it). Only a verified copy is ever served; the stream reads
//! one chunk at a time, so memory per download is a chunk or two whatever the blob's size.

use super::status;
use crate::app::App;
use crate::blobs::CHUNK;
use crate::raft::service::{check_caller, Callers};
use ingot_common::image::BlobId;
use ingot_common::{pki, DomainError};
use ingot_proto::rack::v1::blob_service_server::BlobService;
use ingot_proto::rack::v1::{BlobChunk, FetchBlobRequest};
use std::io::{Read, Seek, SeekFrom};
use std::pin::Pin;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// BlobService over [`App`].
pub struct BlobApi {
    /// The application.
    pub app: App,
}

/// Chunks queued per download ahead of the network: the memory bound of one stream.
const QUEUED_CHUNKS: usize = 2;

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
        let (tx, rx) = mpsc::channel(QUEUED_CHUNKS);
        let (mut file, size, offset) = (v.file, v.size, r.offset);
        tokio::task::spawn_blocking(move || {
            let mut first = true;
            let mut left = size - offset;
            if let Err(e) = file.seek(SeekFrom::Start(offset)) {
                let _ = tx.blocking_send(Err(Status::unavailable(format!(
                    "reading blob {blob}: {e}"
                ))));
                return;
            }
            while left > 0 || first {
                let n = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
                let mut data = vec![0u8; n];
                if let Err(e) = file.read_exact(&mut data) {
                    let _ = tx.blocking_send(Err(Status::unavailable(format!(
                        "reading blob {blob}: {e}; ask another region"
                    ))));
                    return;
                }
                left -= n as u64;
                let chunk = BlobChunk {
                    size: if first { size } else { 0 },
                    data,
                };
                first = false;
                if tx.blocking_send(Ok(chunk)).is_err() {
                    return; // the client went away
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
