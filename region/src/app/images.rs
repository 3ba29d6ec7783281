//! Boot images: upload (each file streamed into the blob store, hashed as it arrives; the image recorded
//! once every file matched; the answer once a majority of voters hold every blob), get, list, delete, and
//! opening a verified blob for `BlobService.FetchBlob`.
//!
//! Memory is bounded by one chunk per upload whatever the file size: chunks are written to a temporary
//! file as they arrive (on a blocking thread) and gRPC flow control holds the sender back meanwhile.

use super::{required, Actor, App};
use crate::blobs::{BlobError, BlobWriter, VerifiedBlob, CHUNK};
use crate::command::{op, Op};
use crate::state::State;
use ingot_common::image::{BlobId, Image, ImageFile, ImageKind};
use ingot_common::{DomainError, NodeId};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tokio_stream::{Stream, StreamExt};

/// How long an upload waits for a majority of voters to hold every blob before answering UNAVAILABLE
/// (the image stays recorded and copying continues). 5 minutes copies a few GiB between regions.
pub const MAJORITY_WAIT: Duration = Duration::from_secs(300);

/// Longest wait for an upload's next chunk: a stalled client must not hold a temporary file and a
/// request slot for ever.
pub const CHUNK_WAIT: Duration = Duration::from_secs(60);

/// An upload's first message: what the image is and which files follow, in order.
#[derive(Clone, Debug)]
pub struct UploadHeader {
    /// The image's name.
    pub name: String,
    /// Its kind.
    pub kind: ImageKind,
    /// Its arch (empty: amd64).
    pub arch: String,
    /// The files whose chunks follow, in this order.
    pub files: Vec<UploadFile>,
}

/// One file an upload announces.
#[derive(Clone, Debug)]
pub struct UploadFile {
    /// Its name inside the image.
    pub name: String,
    /// Its exact size in bytes.
    pub size: u64,
    /// The SHA-256 the uploader computed, checked against the bytes when given.
    pub sha256: Option<BlobId>,
}

/// A piece of a file of an upload.
#[derive(Clone, Debug)]
pub struct UploadChunk {
    /// Index into [`UploadHeader::files`].
    pub file: u32,
    /// The bytes (at most [`CHUNK`]).
    pub data: Vec<u8>,
}

/// An image as the API shows it: with where its bytes are and who needs it.
#[derive(Clone, Debug)]
pub struct ImageView {
    /// The image.
    pub image: Image,
    /// Member regions holding a verified copy of every blob of it.
    pub held_by: Vec<NodeId>,
    /// How many regions the cluster has.
    pub regions: u32,
    /// Machines in Deploying that use it.
    pub used_by: Vec<String>,
}

/// The view of `image` on `st`.
fn view(st: &State, image: &Image) -> ImageView {
    let held_by = st
        .data
        .regions
        .keys()
        .filter(|r| {
            image.files.iter().all(|f| {
                st.data
                    .blob_holders
                    .get(&f.blob)
                    .is_some_and(|h| h.contains(r))
            })
        })
        .copied()
        .collect();
    ImageView {
        image: image.clone(),
        held_by,
        regions: u32::try_from(st.data.regions.len()).unwrap_or(u32::MAX),
        used_by: crate::apply::images::used_by(st, &image.name),
    }
}

fn not_found(name: &str) -> DomainError {
    DomainError::not_found(format!(
        "image '{name}' does not exist (`ingot images list` shows them)"
    ))
}

/// The error of a blob store failure while a file of an upload is written.
fn upload_error(i: usize, e: BlobError) -> DomainError {
    match e {
        BlobError::Mismatch { expected, got } => DomainError::invalid(
            format!("files[{i}].sha256"),
            format!(
                "the bytes sent hash to {got}, not the declared {expected}; nothing was recorded"
            ),
        ),
        BlobError::Short { size, got } => DomainError::invalid(
            format!("files[{i}].size"),
            format!("{got} bytes arrived, but {size} were declared; nothing was recorded"),
        ),
        BlobError::Overrun { size } => DomainError::invalid(
            "chunk.data",
            format!("file {i} got more than its declared {size} bytes; nothing was recorded"),
        ),
        other => {
            DomainError::unavailable(format!("this region could not store the upload: {other}"))
        }
    }
}

/// Appends `data` to `w` on a blocking thread and hands the writer back.
pub(crate) async fn write_blocking(
    mut w: BlobWriter,
    data: Vec<u8>,
) -> Result<BlobWriter, BlobError> {
    tokio::task::spawn_blocking(move || w.write(&data).map(|()| w))
        .await
        .map_err(|e| BlobError::Io {
            what: "writing (task failed)",
            path: std::path::PathBuf::new(),
            source: std::io::Error::other(e.to_string()),
        })?
}

impl App {
    /// Stores an upload's files, records the image (holder: this region) and waits until a majority of
    /// voters hold every blob, or `deadline` (at most [`MAJORITY_WAIT`] from now).
    pub async fn upload_image<S>(
        &self,
        actor: &Actor,
        header: UploadHeader,
        mut chunks: S,
        deadline: Option<Instant>,
    ) -> Result<ImageView, DomainError>
    where
        S: Stream<Item = Result<UploadChunk, DomainError>> + Unpin,
    {
        actor.require_admin("upload images")?;
        let mut image = Image {
            name: header.name,
            kind: header.kind,
            arch: if header.arch.is_empty() {
                "amd64".into()
            } else {
                header.arch
            },
            files: header
                .files
                .iter()
                .map(|f| ImageFile {
                    name: f.name.clone(),
                    blob: f.sha256.unwrap_or(BlobId([0; 32])),
                    size: f.size,
                })
                .collect(),
            created_by: actor.name.clone(),
            created_ms: ingot_common::now_ms(),
        };
        image.validate()?;
        let taken = crate::locks::read(&self.region.state)
            .data
            .images
            .contains_key(&image.name);
        if taken {
            return Err(DomainError::exists(
                "name",
                format!(
                    "image '{}' already exists; delete it first or choose another name",
                    image.name
                ),
            ));
        }
        let mut pins = Vec::new();
        for (i, f) in header.files.iter().enumerate() {
            let mut w = self
                .blobs
                .writer(f.size, f.sha256)
                .map_err(|e| upload_error(i, e))?;
            while w.written() < f.size {
                let next = tokio::time::timeout(CHUNK_WAIT, chunks.next()).await;
                let Ok(next) = next else {
                    return Err(DomainError::unavailable(format!(
                        "no chunk of file {i} ('{}') arrived for {} s; nothing was recorded, upload again",
                        f.name,
                        CHUNK_WAIT.as_secs()
                    )));
                };
                let Some(chunk) = next else {
                    return Err(upload_error(
                        i,
                        BlobError::Short {
                            size: f.size,
                            got: w.written(),
                        },
                    ));
                };
                let chunk = chunk?;
                if chunk.file as usize != i {
                    return Err(DomainError::invalid(
                        "chunk.file",
                        format!(
                            "a chunk of file {} arrived while file {i} ('{}') still misses {} of its {} bytes; send each file's chunks contiguously, in header order",
                            chunk.file,
                            f.name,
                            f.size - w.written(),
                            f.size
                        ),
                    ));
                }
                if chunk.data.is_empty() {
                    return Err(DomainError::invalid(
                        "chunk.data",
                        "an empty chunk; every chunk carries at least one byte",
                    ));
                }
                if chunk.data.len() > CHUNK {
                    return Err(DomainError::invalid(
                        "chunk.data",
                        format!("{} bytes in one chunk, at most {CHUNK}", chunk.data.len()),
                    ));
                }
                w = write_blocking(w, chunk.data)
                    .await
                    .map_err(|e| upload_error(i, e))?;
            }
            let (blob, pin) = tokio::task::spawn_blocking(move || w.finish())
                .await
                .map_err(|e| DomainError::internal(format!("storing file {i} failed: {e}")))?
                .map_err(|e| upload_error(i, e))?;
            pins.push(pin);
            if let Some(f) = image.files.get_mut(i) {
                f.blob = blob;
            }
        }
        if let Some(extra) = chunks.next().await {
            let file = extra.map(|c| c.file)?;
            return Err(DomainError::invalid(
                "chunk.file",
                format!(
                    "a chunk of file {file} arrived after all {} files were complete",
                    header.files.len()
                ),
            ));
        }
        let name = image.name.clone();
        let blobs: BTreeSet<BlobId> = image.files.iter().map(|f| f.blob).collect();
        let op = Op::PutImage(op::PutImage {
            image,
            holder: self.region.id,
        });
        self.region.write(self.command(actor, op)).await?;
        // The pins are dropped only when this returns, after the local state holds the image: from
        // then on the blobs are referenced and the blob sync keeps them.
        let result = self.wait_for_majority(&name, &blobs, deadline).await;
        drop(pins);
        result
    }

    /// Waits until the local state holds image `name` and a majority of voters hold every one of
    /// `blobs`; then its view. UNAVAILABLE at the deadline (the image is recorded; copying continues).
    async fn wait_for_majority(
        &self,
        name: &str,
        blobs: &BTreeSet<BlobId>,
        deadline: Option<Instant>,
    ) -> Result<ImageView, DomainError> {
        let latest = Instant::now() + MAJORITY_WAIT;
        let deadline = deadline.map_or(latest, |d| d.min(latest));
        let mut applied = self.region.applied.subscribe();
        loop {
            let voters: BTreeSet<NodeId> = self
                .region
                .raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .collect();
            let (answer, held) = {
                let st = crate::locks::read(&self.region.state);
                let held = blobs
                    .iter()
                    .map(|b| {
                        st.data
                            .blob_holders
                            .get(b)
                            .map_or(0, |h| h.intersection(&voters).count())
                    })
                    .min()
                    .unwrap_or(0);
                let answer = st.data.images.get(name).map(|i| view(&st, i));
                (answer, held)
            };
            if let Some(v) = answer {
                if held > voters.len() / 2 {
                    return Ok(v);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(DomainError::unavailable(format!(
                    "image '{name}' is recorded, but only {held} of {} voting regions hold all its files so far; the regions keep copying them: `ingot images show {name}` shows progress",
                    voters.len()
                )));
            }
            // Woken by every applied command; polled at least each second for membership changes.
            let _ = tokio::time::timeout(left.min(Duration::from_secs(1)), applied.changed()).await;
        }
    }

    /// Image `name` with its holders and users.
    pub async fn get_image(
        &self,
        actor: &Actor,
        name: &str,
        linearizable: bool,
    ) -> Result<ImageView, DomainError> {
        required("name", name)?;
        self.read(actor, linearizable, |st| {
            st.data
                .images
                .get(name)
                .map(|i| view(st, i))
                .ok_or_else(|| not_found(name))
        })
        .await?
    }

    /// Every image (of `kind`, when given), by name.
    pub async fn list_images(
        &self,
        actor: &Actor,
        kind: Option<ImageKind>,
        linearizable: bool,
    ) -> Result<Vec<ImageView>, DomainError> {
        self.read(actor, linearizable, |st| {
            st.data
                .images
                .values()
                .filter(|i| kind.is_none_or(|k| i.kind == k))
                .map(|i| view(st, i))
                .collect()
        })
        .await
    }

    /// Deletes image `name` (refused while a Deploying machine uses it); every region then removes
    /// the blobs no other image references.
    pub async fn delete_image(&self, actor: &Actor, name: String) -> Result<(), DomainError> {
        actor.require_admin("delete images")?;
        required("name", &name)?;
        self.region
            .write(self.command(actor, Op::DeleteImage(op::DeleteImage { name })))
            .await?;
        Ok(())
    }

    /// Opens blob `b` if this region holds a verified copy (hashing it on a blocking thread when it
    /// changed since it was last verified); NOT_FOUND otherwise, also when the copy was corrupt (it is
    /// removed, and the blob sync reports it lost and fetches it again).
    pub async fn open_blob(&self, b: BlobId) -> Result<VerifiedBlob, DomainError> {
        let store = self.blobs.clone();
        match tokio::task::spawn_blocking(move || store.open_verified(&b)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(BlobError::Missing(_))) => Err(DomainError::not_found(format!(
                "this region holds no copy of blob {b}; ask another region"
            ))),
            Ok(Err(e @ BlobError::Corrupt { .. })) => {
                tracing::warn!("{e}");
                Err(DomainError::not_found(format!(
                    "this region's copy of blob {b} was corrupt (removed; it is being fetched again); ask another region"
                )))
            }
            Ok(Err(e)) => Err(DomainError::unavailable(e.to_string())),
            Err(e) => Err(DomainError::internal(format!("opening blob {b}: {e}"))),
        }
    }
}
