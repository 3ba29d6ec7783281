//! The region's content-addressed blob store: image files as `<data dir>/blobs/<sha256>`, each a complete
//! copy whose bytes hash to its name.
//!
//! Why it is shaped this way:
//! - **Writes are atomic and verified before they count.** Bytes go to a temporary file in the same
//!   directory (`.tmp-<random>`), hashed as they arrive, one chunk in memory at a time; only when the size
//!   and SHA-256 match (the name, and a sha256 the uploader declared) is the file fsynced and renamed to
//!   its name. A crash leaves at most a temporary file, removed at the next start; a name in the
//!   directory always means a complete file.
//! - **Reads are verified, cheaply.** [`BlobStore::open_verified`] hashes a blob the first time it is
//!   opened and again whenever its (length, mtime, inode) changes — any write through the file system
//!   changes the mtime, a replacement the inode — so serving a verified blob costs one `fstat`. A copy
//!   that is missing or does not hash to its name is removed and reported as lost: it is never served.
//!   (A bit flip under an unchanged mtime is found by the periodic full re-check, see
//!   [`BlobStore::forget_verification`].)
//! - **Blobs are pinned while an upload is recorded.** A blob written by an upload is referenced by no
//!   image until its `PutImage` is applied; [`BlobStore::retain`] (which removes blobs no image
//!   references) skips pinned blobs.
//!
//! The API is synchronous (std files): callers run it on blocking threads (`spawn_blocking`), so a
//! multi-GiB hash never stalls the async runtime.

use ingot_common::image::BlobId;
use ingot_common::image::FileStamp as Stamp;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Largest chunk read or written at once: the memory one transfer holds, and the chunk size on the wire
/// (uploads and `FetchBlob`).
pub const CHUNK: usize = 1 << 20;

/// Prefix of temporary files (not a valid blob name, so never mistaken for one).
const TMP_PREFIX: &str = ".tmp-";

/// What can go wrong in the blob store.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// A file operation failed.
    #[error("blob store: {what} {path}: {source}; check free space and permissions of the data directory's blobs/")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No copy of the blob here.
    #[error("blob {0} is not held by this region")]
    Missing(BlobId),
    /// The copy here did not hash to its name (it was removed).
    #[error("blob {blob}: the copy on disk hashed to {got} (corrupt); it was removed and will be fetched again")]
    Corrupt {
        /// The blob.
        blob: BlobId,
        /// What its bytes hashed to.
        got: BlobId,
    },
    /// More bytes arrived than the declared size.
    #[error("more than the declared {size} bytes")]
    Overrun {
        /// The declared size.
        size: u64,
    },
    /// Fewer bytes arrived than the declared size.
    #[error("{got} bytes, but {size} were declared")]
    Short {
        /// The declared size.
        size: u64,
        /// What arrived.
        got: u64,
    },
    /// The bytes do not hash to what was expected.
    #[error("the bytes hash to {got}, but {expected} was expected")]
    Mismatch {
        /// The expected SHA-256.
        expected: BlobId,
        /// The SHA-256 of the bytes.
        got: BlobId,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BlobError + 'a {
    move |source| BlobError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The blob store of one region (see the module doc).
#[derive(Debug)]
pub struct BlobStore {
    dir: PathBuf,
    /// Blobs verified, with the stamp they had then.
    verified: Mutex<HashMap<BlobId, Stamp>>,
    /// Blobs written by uploads whose image is not recorded yet, with how many uploads pin each.
    pinned: Mutex<HashMap<BlobId, usize>>,
}

/// A verified blob opened for reading, positioned at its start.
#[derive(Debug)]
pub struct VerifiedBlob {
    /// The open file.
    pub file: File,
    /// Its size in bytes.
    pub size: u64,
}

impl BlobStore {
    /// The store in `dir` (created 0700 if absent); temporary files a crash left behind are removed.
    pub fn open(dir: impl Into<PathBuf>) -> Result<BlobStore, BlobError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io("securing", &dir))?;
        }
        for e in std::fs::read_dir(&dir).map_err(io("listing", &dir))? {
            let e = e.map_err(io("listing", &dir))?;
            if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                let p = e.path();
                std::fs::remove_file(&p).map_err(io("removing", &p))?;
            }
        }
        Ok(BlobStore {
            dir,
            verified: Mutex::new(HashMap::new()),
            pinned: Mutex::new(HashMap::new()),
        })
    }

    /// Where blob `b` lives.
    pub fn path(&self, b: &BlobId) -> PathBuf {
        self.dir.join(b.to_hex())
    }

    /// Starts writing a blob of `size` bytes; `expected` is the SHA-256 it must have (declared by an
    /// uploader, or the name of a blob being fetched).
    pub fn writer(
        self: &Arc<Self>,
        size: u64,
        expected: Option<BlobId>,
    ) -> Result<BlobWriter, BlobError> {
        let tmp = self.dir.join(format!(
            "{TMP_PREFIX}{}",
            ingot_common::secret::generate("")
        ));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io("creating", &tmp))?;
        Ok(BlobWriter {
            store: self.clone(),
            tmp,
            file: Some(file),
            hasher: Sha256::new(),
            written: 0,
            size,
            expected,
        })
    }

    /// Opens blob `b` if this region holds a copy that hashes to its name (hashing it only when its
    /// length, mtime or inode changed since it was last verified). A missing copy answers
    /// [`BlobError::Missing`]; a corrupt one is removed and answers [`BlobError::Corrupt`].
    pub fn open_verified(&self, b: &BlobId) -> Result<VerifiedBlob, BlobError> {
        let path = self.path(b);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                crate::locks::lock(&self.verified).remove(b);
                return Err(BlobError::Missing(*b));
            }
            Err(e) => return Err(io("opening", &path)(e)),
        };
        let stamp = Stamp::of(&file.metadata().map_err(io("reading", &path))?);
        if crate::locks::lock(&self.verified).get(b) == Some(&stamp) {
            return Ok(VerifiedBlob {
                file,
                size: stamp.len,
            });
        }
        let got = hash_file(&mut file, &path)?;
        if got != *b {
            crate::locks::lock(&self.verified).remove(b);
            // Only remove the file we hashed: a fresh copy renamed over it meanwhile stays.
            if std::fs::metadata(&path).is_ok_and(|m| Stamp::of(&m) == stamp) {
                std::fs::remove_file(&path).map_err(io("removing", &path))?;
            }
            return Err(BlobError::Corrupt { blob: *b, got });
        }
        file.seek(SeekFrom::Start(0))
            .map_err(io("reading", &path))?;
        crate::locks::lock(&self.verified).insert(*b, stamp);
        Ok(VerifiedBlob {
            file,
            size: stamp.len,
        })
    }

    /// Makes the next [`BlobStore::open_verified`] of `b` hash it again even if its stamp is unchanged:
    /// the periodic full re-check, for corruption no write through the file system made.
    pub fn forget_verification(&self, b: &BlobId) {
        crate::locks::lock(&self.verified).remove(b);
    }

    /// The blobs present (by name; unverified).
    pub fn list(&self) -> Result<BTreeSet<BlobId>, BlobError> {
        let mut out = BTreeSet::new();
        for e in std::fs::read_dir(&self.dir).map_err(io("listing", &self.dir))? {
            let e = e.map_err(io("listing", &self.dir))?;
            if let Ok(b) = BlobId::parse("blob", &e.file_name().to_string_lossy()) {
                out.insert(b);
            }
        }
        Ok(out)
    }

    /// Removes every blob for which `referenced` is false and that no upload or copy pins; returns those
    /// removed. `referenced` is asked after the directory is listed, so a blob stored meanwhile is
    /// either pinned still or referenced by the state `referenced` reads.
    pub fn retain(&self, referenced: impl Fn(&BlobId) -> bool) -> Result<Vec<BlobId>, BlobError> {
        let mut removed = Vec::new();
        for b in self.list()? {
            if crate::locks::lock(&self.pinned).contains_key(&b) || referenced(&b) {
                continue;
            }
            let p = self.path(&b);
            match std::fs::remove_file(&p) {
                Ok(()) => removed.push(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("removing", &p)(e)),
            }
            crate::locks::lock(&self.verified).remove(&b);
        }
        Ok(removed)
    }

    /// Keeps `b` from [`BlobStore::retain`] until the pin is dropped (an upload's blobs, until its image
    /// is recorded or refused).
    pub fn pin(self: &Arc<Self>, b: BlobId) -> Pin {
        *crate::locks::lock(&self.pinned).entry(b).or_insert(0) += 1;
        Pin {
            store: self.clone(),
            blob: b,
        }
    }
}

/// A blob kept from removal while it lives (see [`BlobStore::pin`]).
#[derive(Debug)]
pub struct Pin {
    store: Arc<BlobStore>,
    blob: BlobId,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut p = crate::locks::lock(&self.store.pinned);
        if let Some(n) = p.get_mut(&self.blob) {
            *n -= 1;
            if *n == 0 {
                p.remove(&self.blob);
            }
        }
    }
}

/// SHA-256 of a whole file, read one chunk at a time.
fn hash_file(file: &mut File, path: &Path) -> Result<BlobId, BlobError> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf).map_err(io("reading", path))?;
        if n == 0 {
            break;
        }
        h.update(buf.get(..n).unwrap_or_default());
    }
    Ok(BlobId(h.finalize().into()))
}

/// A blob being written (see [`BlobStore::writer`]); dropped unfinished, its temporary file goes.
#[derive(Debug)]
pub struct BlobWriter {
    store: Arc<BlobStore>,
    tmp: PathBuf,
    file: Option<File>,
    hasher: Sha256,
    written: u64,
    size: u64,
    expected: Option<BlobId>,
}

impl BlobWriter {
    /// Bytes written so far (where a resumed fetch continues).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends `data`; more than the declared size is [`BlobError::Overrun`].
    pub fn write(&mut self, data: &[u8]) -> Result<(), BlobError> {
        let total = self.written.saturating_add(data.len() as u64);
        if total > self.size {
            return Err(BlobError::Overrun { size: self.size });
        }
        let Some(f) = self.file.as_mut() else {
            return Err(io("writing", &self.tmp)(std::io::Error::other(
                "the writer was already finished",
            )));
        };
        f.write_all(data).map_err(io("writing", &self.tmp))?;
        self.hasher.update(data);
        self.written = total;
        Ok(())
    }

    /// Checks size and hash, fsyncs, and renames the file to its name; the blob is verified from then
    /// on, and pinned (see [`BlobStore::pin`]) from before it has its name until the returned pin is
    /// dropped. Any mismatch removes the temporary file.
    pub fn finish(mut self) -> Result<(BlobId, Pin), BlobError> {
        if self.written != self.size {
            return Err(BlobError::Short {
                size: self.size,
                got: self.written,
            });
        }
        let got = BlobId(std::mem::take(&mut self.hasher).finalize().into());
        if let Some(expected) = self.expected {
            if expected != got {
                return Err(BlobError::Mismatch { expected, got });
            }
        }
        let Some(file) = self.file.take() else {
            return Err(io("finishing", &self.tmp)(std::io::Error::other(
                "the writer was already finished",
            )));
        };
        file.sync_all().map_err(io("syncing", &self.tmp))?;
        let pin = self.store.pin(got);
        let dest = self.store.path(&got);
        std::fs::rename(&self.tmp, &dest).map_err(io("renaming", &self.tmp))?;
        if let Ok(d) = File::open(&self.store.dir) {
            d.sync_all().map_err(io("syncing", &self.store.dir))?;
        }
        let stamp = Stamp::of(&file.metadata().map_err(io("reading", &dest))?);
        crate::locks::lock(&self.store.verified).insert(got, stamp);
        Ok((got, pin))
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> BlobId {
        BlobId(Sha256::digest(data).into())
    }

    fn put(s: &Arc<BlobStore>, data: &[u8]) -> BlobId {
        let mut w = s.writer(data.len() as u64, None).unwrap();
        for c in data.chunks(7) {
            w.write(c).unwrap();
        }
        w.finish().unwrap().0
    }

    fn tmp_files(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(TMP_PREFIX)
            })
            .count()
    }

    #[test]
    fn a_blob_is_stored_under_its_hash_and_read_back_verified() {
        let d = tempfile::tempdir().unwrap();
        let s = Arc::new(BlobStore::open(d.path().join("blobs")).unwrap());
        let data = b"hello, blob store".repeat(100);
        let b = put(&s, &data);
        assert_eq!(b, sha(&data));
        let mut v = s.open_verified(&b).unwrap();
        assert_eq!(v.size, data.len() as u64);
        let mut got = Vec::new();
        v.file.read_to_end(&mut got).unwrap();
        assert_eq!(got, data);
        assert_eq!(s.list().unwrap().into_iter().collect::<Vec<_>>(), vec![b]);
        assert_eq!(tmp_files(&d.path().join("blobs")), 0);
    }

    #[test]
    fn wrong_size_or_hash_is_refused_and_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let s = Arc::new(BlobStore::open(d.path()).unwrap());
        let mut w = s.writer(3, None).unwrap();
        assert!(matches!(
            w.write(b"abcd"),
            Err(BlobError::Overrun { size: 3 })
        ));
        drop(w);
        let mut w = s.writer(3, None).unwrap();
        w.write(b"ab").unwrap();
        assert!(matches!(
            w.finish(),
            Err(BlobError::Short { size: 3, got: 2 })
        ));
        let mut w = s.writer(3, Some(sha(b"xyz"))).unwrap();
        w.write(b"abc").unwrap();
        assert!(matches!(w.finish(), Err(BlobError::Mismatch { .. })));
        assert!(s.list().unwrap().is_empty());
        assert_eq!(tmp_files(d.path()), 0);
    }

    #[test]
    fn a_corrupt_or_missing_copy_is_removed_and_never_served() {
        let d = tempfile::tempdir().unwrap();
        let s = Arc::new(BlobStore::open(d.path()).unwrap());
        let b = put(&s, b"0123456789");
        s.open_verified(&b).unwrap();
        // Rewritten in place with other bytes (the mtime or length changes).
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(s.path(&b), b"0123456780").unwrap();
        assert!(matches!(
            s.open_verified(&b),
            Err(BlobError::Corrupt { .. })
        ));
        assert!(!s.path(&b).exists(), "the corrupt copy is removed");
        assert!(matches!(s.open_verified(&b), Err(BlobError::Missing(_))));
        // A copy corrupted under an unchanged stamp is found once verification is forgotten.
        let b = put(&s, b"abcdefgh");
        let m = std::fs::metadata(s.path(&b)).unwrap();
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(s.path(&b))
                .unwrap();
            f.write_all(b"ABCDEFGH").unwrap();
        }
        let mtime = m.modified().unwrap();
        File::options()
            .write(true)
            .open(s.path(&b))
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert!(
            s.open_verified(&b).is_ok(),
            "unchanged stamp: not re-hashed"
        );
        s.forget_verification(&b);
        assert!(matches!(
            s.open_verified(&b),
            Err(BlobError::Corrupt { .. })
        ));
    }

    #[test]
    fn retain_removes_unreferenced_blobs_but_not_pinned_ones() {
        let d = tempfile::tempdir().unwrap();
        let s = Arc::new(BlobStore::open(d.path()).unwrap());
        let a = put(&s, b"a");
        let b = put(&s, b"b");
        let c = put(&s, b"c");
        let pin = s.pin(c);
        let removed = s.retain(|x| *x == a).unwrap();
        assert_eq!(removed, vec![b]);
        drop(pin);
        assert_eq!(s.retain(|_| false).unwrap().len(), 2);
        assert!(s.list().unwrap().is_empty());
    }

    #[test]
    fn leftover_temporary_files_are_removed_at_open() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(".tmp-x"), b"partial").unwrap();
        BlobStore::open(d.path()).unwrap();
        assert_eq!(tmp_files(d.path()), 0);
    }
}
