//! `ingot.v1.ImageService`: upload (client streaming), get, list, delete.

use super::{actor, status};
use crate::app::images::{ImageView, UploadChunk, UploadFile, UploadHeader};
use crate::app::App;
use ingot_common::image::{BlobId, ImageKind};
use ingot_common::DomainError;
use ingot_proto::convert::timestamp;
use ingot_proto::v1::image_service_server::ImageService;
use ingot_proto::v1::upload_image_request::Part;
use ingot_proto::v1::*;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

/// ImageService over [`App`].
pub struct ImageApi {
    /// The application.
    pub app: App,
}

/// The domain header of an upload's first message; each error names its field.
fn header(h: ingot_proto::v1::UploadHeader) -> Result<UploadHeader, DomainError> {
    ingot_common::image::validate_image_name("name", &h.name)?;
    let kind = ImageKind::parse("kind", &h.kind)?;
    ingot_common::validate::entries("files", h.files.len(), ingot_common::image::MAX_IMAGE_FILES)?;
    let mut files = Vec::with_capacity(h.files.len());
    for (i, f) in h.files.into_iter().enumerate() {
        let sha256 = if f.sha256.is_empty() {
            None
        } else {
            Some(BlobId::parse(&format!("files[{i}].sha256"), &f.sha256)?)
        };
        files.push(UploadFile {
            name: f.name,
            size: f.size,
            sha256,
        });
    }
    Ok(UploadHeader {
        name: h.name,
        kind,
        arch: h.arch,
        files,
    })
}

/// The request's deadline from its `grpc-timeout` header (`<digits><unit>`, unit one of H M S m u n).
fn deadline(md: &MetadataMap) -> Option<Instant> {
    let v = md.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    // Answer a little before the caller gives up, so it gets the UNAVAILABLE that explains.
    Instant::now().checked_add(d.saturating_sub(d / 20))
}

/// An image view as the API shows it.
pub fn image_to_proto(v: &ImageView) -> Image {
    let i = &v.image;
    Image {
        name: i.name.clone(),
        kind: i.kind.as_str().to_string(),
        arch: i.arch.clone(),
        files: i
            .files
            .iter()
            .map(|f| ImageFile {
                name: f.name.clone(),
                sha256: f.blob.to_hex(),
                size: f.size,
            })
            .collect(),
        created_by: i.created_by.clone(),
        created: Some(timestamp(i.created_ms)),
        size: i.size(),
        held_by: v.held_by.clone(),
        regions: v.regions,
        used_by: v.used_by.clone(),
    }
}

#[tonic::async_trait]
impl ImageService for ImageApi {
    async fn upload_image(
        &self,
        req: Request<Streaming<UploadImageRequest>>,
    ) -> Result<Response<Image>, Status> {
        let who = actor(&self.app, &req)?;
        let until = deadline(req.metadata());
        let mut inbound = req.into_inner();
        let first = inbound.message().await?;
        let Some(UploadImageRequest {
            part: Some(Part::Header(h)),
        }) = first
        else {
            return Err(status(DomainError::invalid(
                "header",
                "the first message of an upload must be its header",
            )));
        };
        let h = header(h).map_err(status)?;
        let chunks = inbound.map(|m| match m {
            Ok(UploadImageRequest {
                part: Some(Part::Chunk(c)),
            }) => Ok(UploadChunk {
                file: c.file,
                data: c.data,
            }),
            Ok(_) => Err(DomainError::invalid(
                "chunk",
                "only the first message of an upload is a header; the rest must be chunks",
            )),
            Err(s) => Err(DomainError::unavailable(format!(
                "the upload stream broke ({}); nothing was recorded, upload again",
                s.message()
            ))),
        });
        let v = self
            .app
            .upload_image(&who, h, chunks, until)
            .await
            .map_err(status)?;
        Ok(Response::new(image_to_proto(&v)))
    }

    async fn get_image(&self, req: Request<GetImageRequest>) -> Result<Response<Image>, Status> {
        let who = actor(&self.app, &req)?;
        let v = self
            .app
            .get_image(&who, &req.into_inner().name, true)
            .await
            .map_err(status)?;
        Ok(Response::new(image_to_proto(&v)))
    }

    async fn list_images(
        &self,
        req: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let who = actor(&self.app, &req)?;
        let r = req.into_inner();
        let kind = if r.kind.is_empty() {
            None
        } else {
            Some(ImageKind::parse("kind", &r.kind).map_err(status)?)
        };
        let images = self
            .app
            .list_images(&who, kind, true)
            .await
            .map_err(status)?;
        Ok(Response::new(ListImagesResponse {
            images: images.iter().map(image_to_proto).collect(),
        }))
    }

    async fn delete_image(
        &self,
        req: Request<DeleteImageRequest>,
    ) -> Result<Response<DeleteImageResponse>, Status> {
        let who = actor(&self.app, &req)?;
        self.app
            .delete_image(&who, req.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(DeleteImageResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_and_bad_ones_are_ignored() {
        let mut md = MetadataMap::new();
        md.insert("grpc-timeout", "10S".parse().unwrap());
        let d = deadline(&md).unwrap() - Instant::now();
        assert!(
            d > Duration::from_secs(9) && d <= Duration::from_secs(10),
            "{d:?}"
        );
        for bad in ["", "S", "10x", "-1S"] {
            md.insert("grpc-timeout", bad.parse().unwrap());
            assert!(deadline(&md).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_bad_header_names_its_field() {
        let h = |name: &str, kind: &str, sha: &str| ingot_proto::v1::UploadHeader {
            name: name.into(),
            kind: kind.into(),
            arch: String::new(),
            files: vec![ingot_proto::v1::UploadFile {
                name: "kernel".into(),
                size: 1,
                sha256: sha.into(),
            }],
        };
        let field = |r: Result<UploadHeader, DomainError>| r.unwrap_err().field.unwrap();
        assert_eq!(field(header(h("A b", "ramdisk", ""))), "name");
        assert_eq!(field(header(h("a", "iso", ""))), "kind");
        assert_eq!(field(header(h("a", "ramdisk", "xy"))), "files[0].sha256");
        assert!(header(h("a", "ramdisk", &"ab".repeat(32))).is_ok());
    }
}
