//! The rack's image cache: verified copies of the blobs it serves over HTTP and TFTP.
//!
//! (Interface stub written first so the HTTP and TFTP servers can be built beside it: the cache helper
//! replaces the body — fetching from regions, SHA-256 verification, LRU eviction by size, prefetch.)
//!
//! Layout: `<dir>/<sha256>` is a complete, verified blob; nothing else in `<dir>` is ever served.

use ingot_common::image::{BlobId, ImageFile, ImageKind};
use std::path::PathBuf;

/// An image file the region told this rack to hold (the `CacheWanted` session message in domain types),
/// or one a boot intent named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedFile {
    /// The image it belongs to.
    pub image: String,
    /// The image's kind (bootloader files are served over TFTP by name).
    pub kind: ImageKind,
    /// The image's arch.
    pub arch: String,
    /// The file: name, blob, size.
    pub file: ImageFile,
}

/// Why a blob cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The cache was never told about this blob (not wanted, not named by a boot intent).
    #[error("blob {0} is not one this rack was told to serve")]
    Unknown(BlobId),
    /// Fetching or verifying it failed.
    #[error("blob {blob}: {message}")]
    Unavailable {
        /// The blob.
        blob: BlobId,
        /// What failed and what to do.
        message: String,
    },
}

/// A verified blob, open for reading; the cache does not evict it while this lives.
#[derive(Debug)]
pub struct CachedBlob {
    /// The open file (positioned at 0).
    pub file: std::fs::File,
    /// Its length in bytes (the blob's verified size).
    pub len: u64,
}

/// The cache (stub: serves only what is already in `<dir>`, unverified; replaced by the cache helper).
#[derive(Debug)]
pub struct ImageCache {
    /// Where blobs live.
    dir: PathBuf,
}

impl ImageCache {
    /// A cache in `dir`.
    pub fn new(dir: PathBuf) -> ImageCache {
        ImageCache { dir }
    }

    /// Replaces the set of files the region wants this rack to hold (prefetched in the background).
    pub fn set_wanted(&self, _files: Vec<WantedFile>) {}

    /// Adds one file a boot intent named (fetched on first `open` if not cached).
    pub fn want(&self, _file: &WantedFile) {}

    /// The bootloader file called `name` (for TFTP), if the region told this rack about one.
    pub fn bootloader(&self, _name: &str) -> Option<WantedFile> {
        None
    }

    /// A verified local copy of `blob`, fetched from a region first when missing.
    pub async fn open(&self, blob: &BlobId) -> Result<CachedBlob, CacheError> {
        let path = self.dir.join(blob.to_hex());
        let file = std::fs::File::open(&path).map_err(|_| CacheError::Unknown(*blob))?;
        let len = file
            .metadata()
            .map_err(|e| CacheError::Unavailable {
                blob: *blob,
                message: e.to_string(),
            })?
            .len();
        Ok(CachedBlob { file, len })
    }
}
