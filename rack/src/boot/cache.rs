//! The rack's image cache: verified copies of the blobs it serves over HTTP and TFTP.
//!
//! Layout: `<dir>/<sha256>` is a complete, verified blob; nothing else in `<dir>` is ever served.
//! Downloads are written to `<dir>/tmp/<sha256>.<n>`, hashed (SHA-256) while written, checked against the
//! size the region announced for the file, fsynced, and renamed into place only when the hash matches;
//! anything else is deleted (and logged: expected vs got). `tmp/` is emptied at start.
//!
//! ```text
//!  region ─CacheWanted─► set_wanted ──► prefetch task: ensure each wanted blob (bootloaders first)
//!  HTTP / TFTP ─open(blob)─► verified and unchanged on disk (len, mtime, inode)? ── yes ─► CachedBlob (hit)
//!                                 │ no
//!                                 ▼
//!                           one job per blob (single flight; every opener waits for it):
//!                             a file there, not verified (first use since start, or changed on disk):
//!                               hash it ── good ─► verified   bad ─► deleted, counted, fetched again
//!                             missing: reserve space (LRU eviction), ≤ 2 downloads at once,
//!                               attempts over the regions in turn, resumed from the bytes held
//! ```
//!
//! Eviction (when a download needs room under `--cache-max-bytes`): least recently used first among blobs
//! that are neither open nor wanted by the region, then (for a download someone waits for, not for a
//! prefetch) wanted blobs that are not open. Open blobs are never evicted; a blob larger than the whole
//! cache is refused with an error naming the flag.
//!
//! Failure cases, and what happens:
//! - A stream breaks, stalls ([`CacheSettings::stall`] without a byte) or a region has no copy: the next
//!   attempt asks the next region for the rest (`offset` = bytes held), up to [`CacheSettings::attempts`].
//! - A region sends more bytes than the file has, or announces another size: that download is discarded
//!   and started again from the next region.
//! - The bytes do not hash to the blob's name: deleted, counted as a verification failure, started again
//!   from the next region; after every attempt failed, the open fails and nothing is served.
//! - A cached file changed on disk since it was verified: hashed again before it is served; a bad one is
//!   deleted and fetched again. (A change that keeps length, mtime and inode is not noticed until the
//!   next start.)
//! - The rack restarts: blobs found in `<dir>` are verified on first use, or at once when wanted.

use super::fetch::BlobFetcher;
use ingot_common::image::FileStamp as Stamp;
use ingot_common::image::{BlobId, ImageFile, ImageKind};
use ingot_common::DomainError;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};
use tokio_stream::StreamExt;

/// Default bound of the cache (`--cache-max-bytes`): 20 GiB holds a few ramdisks and disk images.
pub const DEFAULT_MAX_BYTES: u64 = 20 << 30;
/// Most downloads at once: a boot storm must not split the link to the regions into dozens of slow
/// downloads (each opener of one blob waits for the same download anyway).
pub const MAX_DOWNLOADS: usize = 2;
/// Most files of one `CacheWanted` taken (more is the region's bug; the rest are ignored).
pub const MAX_WANTED: usize = 4096;
/// Most files remembered from boot intents ([`ImageCache::want`]); the oldest are forgotten.
pub const MAX_NAMED: usize = 1024;
/// The sub-directory downloads are written to before they are verified.
pub const TMP_DIR: &str = "tmp";

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

impl WantedFile {
    /// The file a `BlobFile` of the session names (in `CacheWanted` or a boot intent), every field
    /// checked: the region is trusted, but a malformed entry must never become a path or a fetch. The
    /// error names the field.
    pub fn from_rack(f: &ingot_proto::rack::v1::BlobFile) -> Result<WantedFile, DomainError> {
        ingot_common::image::validate_image_name("image", &f.image)?;
        ingot_common::image::validate_file_name("name", &f.name)?;
        ingot_common::validate::arch("arch", &f.arch)?;
        let kind = ImageKind::parse("kind", &f.kind)?;
        let blob = BlobId::parse("sha256", &f.sha256)?;
        if f.size > ingot_common::image::MAX_FILE_SIZE {
            return Err(DomainError::invalid(
                "size",
                format!(
                    "{} bytes, at most {}",
                    f.size,
                    ingot_common::image::MAX_FILE_SIZE
                ),
            ));
        }
        Ok(WantedFile {
            image: f.image.clone(),
            kind,
            arch: f.arch.clone(),
            file: ImageFile {
                name: f.name.clone(),
                blob,
                size: f.size,
            },
        })
    }

    /// The files of a `CacheWanted` message (at most [`MAX_WANTED`] read); a malformed one is logged and
    /// skipped.
    pub fn from_cache_wanted(m: &ingot_proto::rack::v1::CacheWanted) -> Vec<WantedFile> {
        m.files
            .iter()
            .take(MAX_WANTED)
            .filter_map(|f| match WantedFile::from_rack(f) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!("CacheWanted entry {:?}/{:?} ignored: {e}", f.image, f.name);
                    None
                }
            })
            .collect()
    }
}

/// Why a blob cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The cache was never told about this blob (not wanted, not named by a boot intent).
    #[error("blob {0} is not one this rack was told to serve: only files of uploaded images the region names (bootloaders, and the images of machines booting in this rack's zone) are served; check `ingot images show`")]
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

/// Why the cache could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("image cache {path}: {source} (check that the directory is writable by this user, or pass another --cache-dir)")]
pub struct CacheSetupError {
    /// The file or directory.
    pub path: String,
    /// The I/O error.
    #[source]
    pub source: std::io::Error,
}

/// A verified blob, open for reading; the cache does not evict it while this lives.
#[derive(Debug)]
pub struct CachedBlob {
    /// The open file (positioned at 0).
    pub file: std::fs::File,
    /// Its length in bytes (the blob's verified size).
    pub len: u64,
    /// Keeps the blob from eviction until dropped.
    _pin: Pin,
}

/// Where the cache lives and how it behaves; [`CacheSettings::new`] holds the production values.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// The directory (`--cache-dir`, default `<data dir>/cache`).
    pub dir: PathBuf,
    /// Most bytes of blobs held (`--cache-max-bytes`).
    pub max_bytes: u64,
    /// An attempt ends when no byte arrived for this long (a stalled region is left for the next).
    pub stall: Duration,
    /// Most attempts for one blob (at least two per region known).
    pub attempts: usize,
    /// Pause after a round over every region failed.
    pub retry_pause: Duration,
    /// How long after a failed prefetch it is tried again.
    pub prefetch_retry: Duration,
}

impl CacheSettings {
    /// The production settings for a cache in `dir` bounded by `max_bytes`.
    pub fn new(dir: PathBuf, max_bytes: u64) -> CacheSettings {
        CacheSettings {
            dir,
            max_bytes,
            stall: Duration::from_secs(15),
            attempts: 6,
            retry_pause: Duration::from_secs(1),
            prefetch_retry: Duration::from_secs(30),
        }
    }
}

/// Counters of the cache, monotonic since start (plus what it holds now).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheCounters {
    /// Opens served without waiting for a download.
    pub hits: u64,
    /// Opens that waited for a download (or a verification).
    pub misses: u64,
    /// Bytes received from regions (discarded ones included).
    pub fetched_bytes: u64,
    /// Blobs deleted to make room.
    pub evictions: u64,
    /// Downloads or cached files whose bytes did not hash to their name (deleted, never served).
    pub verification_failures: u64,
    /// Blobs held now.
    pub blobs: u64,
    /// Bytes held now (with space reserved for downloads under way).
    pub bytes: u64,
}

/// The live counters behind [`CacheCounters`].
#[derive(Default)]
struct Counters {
    /// [`CacheCounters::hits`].
    hits: AtomicU64,
    /// [`CacheCounters::misses`].
    misses: AtomicU64,
    /// [`CacheCounters::fetched_bytes`].
    fetched_bytes: AtomicU64,
    /// [`CacheCounters::evictions`].
    evictions: AtomicU64,
    /// [`CacheCounters::verification_failures`].
    verification_failures: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// A blob file in `<dir>`.
#[derive(Debug)]
struct Entry {
    /// Its length (what it counts against the bound).
    size: u64,
    /// The LRU clock when last opened or stored.
    used_at: u64,
    /// Open [`CachedBlob`]s.
    open: usize,
    /// How it looked when its hash was last checked; `None`: not checked since start, or changed.
    verified: Option<Stamp>,
    /// Distinguishes this file from a later one of the same blob (a pin of a deleted file must not
    /// unpin its replacement).
    generation: u64,
}

/// How far a job may go to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    /// Someone waits (an open): wanted blobs may go too.
    Demand,
    /// A prefetch: only blobs the region does not want.
    Prefetch,
}

/// Why a job failed, shared with every waiter.
#[derive(Debug, Clone)]
enum Failure {
    /// Nobody told the cache about the blob: nothing to fetch it by.
    Unknown,
    /// Fetching or verifying failed: what and what to do.
    Unavailable(String),
    /// A prefetch found no room without evicting wanted blobs: an open that joined it tries again
    /// itself (it may evict them).
    NoRoomForPrefetch(String),
}

impl Failure {
    fn into_error(self, blob: BlobId) -> CacheError {
        match self {
            Failure::Unknown => CacheError::Unknown(blob),
            Failure::Unavailable(message) | Failure::NoRoomForPrefetch(message) => {
                CacheError::Unavailable { blob, message }
            }
        }
    }
}

type Flight = watch::Receiver<Option<Result<(), Failure>>>;

/// The mutable part, behind one lock held only for map updates (never across I/O or awaits).
#[derive(Default)]
struct Inner {
    /// The blob files in the cache directory.
    blobs: HashMap<BlobId, Entry>,
    /// Bytes of `blobs` plus space reserved for downloads under way.
    used: u64,
    /// The region's set (`CacheWanted`).
    wanted: HashMap<BlobId, WantedFile>,
    /// Bootloader files of the wanted set by file name (TFTP asks by name).
    bootloaders: BTreeMap<String, WantedFile>,
    /// Files boot intents named, with when (for [`MAX_NAMED`]).
    named: HashMap<BlobId, (WantedFile, u64)>,
    /// Jobs under way.
    flights: HashMap<BlobId, Flight>,
    /// The LRU clock.
    tick: u64,
    /// Numbers of temporary and evicted files and of entry generations.
    seq: u64,
}

impl Inner {
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
    /// What the cache knows of `blob`'s file: wanted, else named.
    fn known(&self, blob: &BlobId) -> Option<WantedFile> {
        self.wanted
            .get(blob)
            .or_else(|| self.named.get(blob).map(|(w, _)| w))
            .cloned()
    }
    /// Forgets `blob`'s entry (its file is gone or about to be).
    fn remove(&mut self, blob: &BlobId) {
        if let Some(e) = self.blobs.remove(blob) {
            self.used = self.used.saturating_sub(e.size);
        }
    }
}

/// Locks a mutex, ignoring poisoning (the maps stay consistent: every update is one statement).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the handle and the background tasks share.
struct Core {
    /// Where and how.
    settings: CacheSettings,
    /// Where blobs come from.
    fetcher: Arc<dyn BlobFetcher>,
    /// The maps.
    inner: Mutex<Inner>,
    /// [`MAX_DOWNLOADS`] permits.
    downloads: Semaphore,
    /// The counters.
    counters: Counters,
}

/// Keeps an open blob from eviction.
struct Pin {
    /// The cache.
    core: Arc<Core>,
    /// The pinned blob.
    blob: BlobId,
    /// Its entry's generation (a newer file of the same blob is not unpinned by this one's end).
    generation: u64,
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pin({})", self.blob)
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut st = lock(&self.core.inner);
        if let Some(e) = st.blobs.get_mut(&self.blob) {
            if e.generation == self.generation {
                e.open = e.open.saturating_sub(1);
            }
        }
    }
}

/// Removes a job from the flights when it ends, however it ends (a panic included).
struct FlightGuard {
    /// The cache.
    core: Arc<Core>,
    /// The blob whose job this is.
    blob: BlobId,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        lock(&self.core.inner).flights.remove(&self.blob);
    }
}

/// The cache (see the module docs). Share it in an `Arc`; dropping it stops the prefetch task.
pub struct ImageCache {
    core: Arc<Core>,
    /// Bumped by [`ImageCache::set_wanted`]; the prefetch task follows it.
    wanted_version: watch::Sender<u64>,
}

impl std::fmt::Debug for ImageCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageCache")
            .field("dir", &self.core.settings.dir)
            .field("counters", &self.counters())
            .finish_non_exhaustive()
    }
}

impl ImageCache {
    /// Opens the cache in `settings.dir` (created if missing, made 0700): empties `tmp/`, takes every file
    /// named by a SHA-256 as a blob to verify on first use, and starts the prefetch task (needs a tokio
    /// runtime). Blobs come from `fetcher`.
    pub fn new(
        settings: CacheSettings,
        fetcher: Arc<dyn BlobFetcher>,
    ) -> Result<ImageCache, CacheSetupError> {
        let setup = |path: &Path| {
            let path = path.display().to_string();
            move |source| CacheSetupError { path, source }
        };
        let dir = settings.dir.clone();
        let tmp = dir.join(TMP_DIR);
        {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&tmp)
                .map_err(setup(&tmp))?;
            // Made earlier with a looser umask: the cache is the rack's business only.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(setup(&dir))?;
        }
        for e in std::fs::read_dir(&tmp).map_err(setup(&tmp))?.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        let mut inner = Inner::default();
        for e in std::fs::read_dir(&dir).map_err(setup(&dir))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(blob) = BlobId::parse("file", &name) else {
                if name != TMP_DIR {
                    tracing::debug!(file = %e.path().display(), "not a blob name: ignored (never served)");
                }
                continue;
            };
            if name != blob.to_hex() {
                continue; // upper-case hex: not what the cache writes, never looked up
            }
            let Ok(meta) = e.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let generation = inner.next_seq();
            inner.used += meta.len();
            inner.blobs.insert(
                blob,
                Entry {
                    size: meta.len(),
                    used_at: 0,
                    open: 0,
                    verified: None,
                    generation,
                },
            );
        }
        tracing::info!(
            dir = %dir.display(),
            blobs = inner.blobs.len(),
            bytes = inner.used,
            max_bytes = settings.max_bytes,
            "image cache opened (blobs are verified before first use)"
        );
        let core = Arc::new(Core {
            settings,
            fetcher,
            inner: Mutex::new(inner),
            downloads: Semaphore::new(MAX_DOWNLOADS),
            counters: Counters::default(),
        });
        let (wanted_version, rx) = watch::channel(0u64);
        tokio::spawn(prefetch(core.clone(), rx));
        Ok(ImageCache {
            core,
            wanted_version,
        })
    }

    /// Replaces the set of files the region wants this rack to hold (prefetched in the background,
    /// bootloaders first; at most [`MAX_WANTED`] taken).
    pub fn set_wanted(&self, files: Vec<WantedFile>) {
        let mut wanted = HashMap::new();
        let mut bootloaders = BTreeMap::new();
        let mut bytes = 0u64;
        for f in files.into_iter().take(MAX_WANTED) {
            if f.kind == ImageKind::Bootloader {
                bootloaders
                    .entry(f.file.name.clone())
                    .or_insert_with(|| f.clone());
            }
            if !wanted.contains_key(&f.file.blob) {
                bytes = bytes.saturating_add(f.file.size);
            }
            wanted.entry(f.file.blob).or_insert(f);
        }
        {
            let mut st = lock(&self.core.inner);
            if st.wanted == wanted && st.bootloaders == bootloaders {
                return;
            }
            let held = wanted.keys().filter(|b| st.blobs.contains_key(b)).count();
            tracing::info!(
                files = wanted.len(),
                bytes,
                held,
                "the region wants this rack to hold these image files: prefetching the rest"
            );
            st.wanted = wanted;
            st.bootloaders = bootloaders;
        }
        self.wanted_version.send_modify(|v| *v += 1);
    }

    /// Adds one file a boot intent named (fetched on first `open` if not cached).
    pub fn want(&self, file: &WantedFile) {
        let mut st = lock(&self.core.inner);
        let t = st.next_tick();
        st.named.insert(file.file.blob, (file.clone(), t));
        if st.named.len() > MAX_NAMED {
            if let Some(oldest) = st
                .named
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(b, _)| *b)
            {
                st.named.remove(&oldest);
            }
        }
    }

    /// The bootloader file called `name` (for TFTP), if the region told this rack about one.
    pub fn bootloader(&self, name: &str) -> Option<WantedFile> {
        lock(&self.core.inner).bootloaders.get(name).cloned()
    }

    /// A verified local copy of `blob`, fetched from a region first when missing (every concurrent
    /// opener waits for the same download), verified again first when the file changed on disk.
    pub async fn open(&self, blob: &BlobId) -> Result<CachedBlob, CacheError> {
        let mut waited = false;
        // A file that changes between its verification and our open is verified again, and an open that
        // joined a prefetch which found no room tries again itself; a few rounds settle it unless
        // something keeps rewriting the file.
        for _ in 0..4 {
            if let Some(b) = self.core.try_open(blob) {
                let c = &self.core.counters;
                bump(if waited { &c.misses } else { &c.hits }, 1);
                return Ok(b);
            }
            waited = true;
            match self.core.clone().ensure(*blob, Room::Demand).await {
                Ok(()) | Err(Failure::NoRoomForPrefetch(_)) => {}
                Err(f) => return Err(f.into_error(*blob)),
            }
        }
        Err(CacheError::Unavailable {
            blob: *blob,
            message: "the cached file keeps changing on disk while it is opened: check what writes to the cache directory".to_string(),
        })
    }

    /// The counters so far.
    pub fn counters(&self) -> CacheCounters {
        let c = &self.core.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let st = lock(&self.core.inner);
        CacheCounters {
            hits: get(&c.hits),
            misses: get(&c.misses),
            fetched_bytes: get(&c.fetched_bytes),
            evictions: get(&c.evictions),
            verification_failures: get(&c.verification_failures),
            blobs: st.blobs.len() as u64,
            bytes: st.used,
        }
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.core.settings.dir
    }
}

/// How one fetch attempt ended.
enum AttemptEnd {
    /// Every byte arrived.
    Complete,
    /// It broke off; the bytes so far are kept and the next attempt resumes after them.
    Broken(String),
    /// What arrived cannot be part of the blob: start again from 0.
    Discard(String),
}

impl Core {
    fn path(&self, blob: &BlobId) -> PathBuf {
        self.settings.dir.join(blob.to_hex())
    }

    /// The blob, open and pinned, when it is verified and unchanged since; `None` when a job must run
    /// first (missing, never verified, or changed on disk — then its verification is forgotten).
    fn try_open(self: &Arc<Self>, blob: &BlobId) -> Option<CachedBlob> {
        let stamp = lock(&self.inner).blobs.get(blob)?.verified?;
        let file = match std::fs::File::open(self.path(blob)) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(%blob, "cached blob cannot be opened ({e}): fetching it again");
                let mut st = lock(&self.inner);
                if st
                    .blobs
                    .get(blob)
                    .is_some_and(|e| e.verified == Some(stamp))
                {
                    st.remove(blob);
                }
                return None;
            }
        };
        let now = file.metadata().map(|m| Stamp::of(&m)).ok();
        let mut st = lock(&self.inner);
        let t = st.next_tick();
        let e = st.blobs.get_mut(blob)?;
        if e.verified != Some(stamp) {
            return None;
        }
        if now != Some(stamp) {
            tracing::warn!(%blob, "cached blob changed on disk since it was verified (length, mtime or inode): verifying it again before it is served");
            e.verified = None;
            return None;
        }
        e.open += 1;
        e.used_at = t;
        let generation = e.generation;
        Some(CachedBlob {
            file,
            len: stamp.len,
            _pin: Pin {
                core: self.clone(),
                blob: *blob,
                generation,
            },
        })
    }

    /// Runs (or joins) the one job for `blob`: verify the file there, or fetch it.
    async fn ensure(self: Arc<Self>, blob: BlobId, room: Room) -> Result<(), Failure> {
        let mut rx = {
            let mut st = lock(&self.inner);
            match st.flights.get(&blob) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    st.flights.insert(blob, rx.clone());
                    let core = self.clone();
                    tokio::spawn(async move {
                        let guard = FlightGuard {
                            core: core.clone(),
                            blob,
                        };
                        let r = core.job(blob, room).await;
                        drop(guard);
                        let _ = tx.send(Some(r));
                    });
                    rx
                }
            }
        };
        let answer = match rx.wait_for(|v| v.is_some()).await {
            Ok(v) => v.clone().unwrap_or(Ok(())),
            Err(_) => Err(Failure::Unavailable(
                "the download task ended without an answer (see the rack's log)".to_string(),
            )),
        };
        answer
    }

    /// The job: make `<dir>/<blob>` a verified copy.
    async fn job(self: &Arc<Self>, blob: BlobId, room: Room) -> Result<(), Failure> {
        let present = lock(&self.inner).blobs.get(&blob).map(|e| e.verified);
        match present {
            Some(Some(_)) => return Ok(()),
            Some(None) => match self.verify(blob).await {
                Ok(()) => return Ok(()),
                Err(why) => tracing::warn!(%blob, "{why}"),
            },
            None => {}
        }
        let want = lock(&self.inner).known(&blob).ok_or(Failure::Unknown)?;
        let size = want.file.size;
        if size > self.settings.max_bytes {
            return Err(Failure::Unavailable(format!(
                "{}/{} is {size} bytes, more than the whole cache holds (--cache-max-bytes {}): raise --cache-max-bytes",
                want.image, want.file.name, self.settings.max_bytes
            )));
        }
        self.reserve(&blob, size, room)?;
        let result = match self.downloads.acquire().await {
            Ok(_permit) => self.download(&want).await,
            Err(_) => Err("the cache is shutting down".to_string()),
        };
        let mut st = lock(&self.inner);
        match result {
            Ok(stamp) => {
                // The reservation becomes the entry.
                let generation = st.next_seq();
                let used_at = st.next_tick();
                if let Some(old) = st.blobs.insert(
                    blob,
                    Entry {
                        size,
                        used_at,
                        open: 0,
                        verified: Some(stamp),
                        generation,
                    },
                ) {
                    st.used = st.used.saturating_sub(old.size);
                }
                Ok(())
            }
            Err(why) => {
                st.used = st.used.saturating_sub(size);
                Err(Failure::Unavailable(why))
            }
        }
    }

    /// Hashes the file of `blob` (off the async threads); a good one is marked verified, a bad or
    /// unreadable one deleted. `Err` says what was wrong.
    async fn verify(self: &Arc<Self>, blob: BlobId) -> Result<(), String> {
        let path = self.path(&blob);
        let expected = lock(&self.inner).known(&blob).map(|w| w.file.size);
        let p = path.clone();
        let checked = tokio::task::spawn_blocking(move || -> std::io::Result<(Stamp, [u8; 32])> {
            let mut f = std::fs::File::open(&p)?;
            let before = Stamp::of(&f.metadata()?);
            let mut h = Sha256::new();
            std::io::copy(&mut f, &mut h)?;
            let after = Stamp::of(&f.metadata()?);
            if before != after {
                return Err(std::io::Error::other("it changed while being hashed"));
            }
            Ok((after, h.finalize().into()))
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        let bad = match checked {
            Ok((stamp, got)) if got == blob.0 && expected.is_none_or(|n| n == stamp.len) => {
                let mut st = lock(&self.inner);
                let st = &mut *st;
                if let Some(e) = st.blobs.get_mut(&blob) {
                    st.used = st.used.saturating_sub(e.size) + stamp.len;
                    e.size = stamp.len;
                    e.verified = Some(stamp);
                }
                return Ok(());
            }
            Ok((stamp, got)) => {
                bump(&self.counters.verification_failures, 1);
                format!(
                    "cached blob is corrupt: expected sha256 {blob}{}, got {} ({} bytes): deleted, never served; fetching it again",
                    expected.map(|n| format!(" ({n} bytes)")).unwrap_or_default(),
                    hex(&got),
                    stamp.len
                )
            }
            Err(e) => format!("cached blob cannot be verified ({e}): deleted; fetching it again"),
        };
        lock(&self.inner).remove(&blob);
        let _ = std::fs::remove_file(&path);
        Err(bad)
    }

    /// Reserves `size` bytes for a download of `blob`, evicting least recently used blobs that are not
    /// open (not wanted ones first; wanted ones only for [`Room::Demand`]). Nothing is evicted when that
    /// would not make enough room.
    fn reserve(&self, blob: &BlobId, size: u64, room: Room) -> Result<(), Failure> {
        let max = self.settings.max_bytes;
        let mut evicted = Vec::new();
        {
            let mut st = lock(&self.inner);
            let need = (st.used + size).saturating_sub(max);
            if need > 0 {
                let mut candidates: Vec<(bool, u64, BlobId, u64)> = st
                    .blobs
                    .iter()
                    .filter(|(b, e)| e.open == 0 && *b != blob && !st.flights.contains_key(b))
                    .map(|(b, e)| (st.wanted.contains_key(b), e.used_at, *b, e.size))
                    .filter(|(wanted, ..)| !*wanted || room == Room::Demand)
                    .collect();
                candidates.sort();
                let mut freed = 0u64;
                let mut take = 0;
                for c in &candidates {
                    if freed >= need {
                        break;
                    }
                    freed += c.3;
                    take += 1;
                }
                if freed < need {
                    let full = if room == Room::Prefetch {
                        Failure::NoRoomForPrefetch
                    } else {
                        Failure::Unavailable
                    };
                    return Err(full(format!(
                        "the cache is full: {size} more bytes do not fit in --cache-max-bytes {max} ({} held, {} of them open or {}); try again when downloads finish, or raise --cache-max-bytes",
                        st.used,
                        st.used.saturating_sub(freed),
                        if room == Room::Prefetch { "wanted by the region" } else { "being fetched" }
                    )));
                }
                for (_, _, b, _) in candidates.into_iter().take(take) {
                    st.remove(&b);
                    let n = st.next_seq();
                    evicted.push((b, n));
                }
            }
            st.used += size;
        }
        // Renamed away first (instant, so a new download of the same blob can never be deleted by
        // mistake), then deleted.
        for (b, n) in evicted {
            bump(&self.counters.evictions, 1);
            tracing::info!(blob = %b, "evicted from the image cache to make room");
            let gone = self
                .settings
                .dir
                .join(TMP_DIR)
                .join(format!("evicted-{}.{n}", b.to_hex()));
            if std::fs::rename(self.path(&b), &gone).is_ok() {
                let _ = std::fs::remove_file(&gone);
            }
        }
        Ok(())
    }

    /// Downloads `want` into `tmp/`, resuming and rotating over the regions, and renames it into place
    /// once its size and SHA-256 are right. Returns how the stored file looks.
    async fn download(&self, want: &WantedFile) -> Result<Stamp, String> {
        let blob = want.file.blob;
        let what = format!("{}/{}", want.image, want.file.name);
        let n = lock(&self.inner).next_seq();
        let tmp = self
            .settings
            .dir
            .join(TMP_DIR)
            .join(format!("{}.{n}", blob.to_hex()));
        // Each download starts at another region: load spreads, and a dead first region does not cost
        // every download its connect timeout.
        let result = self.download_to(want, &what, &tmp, n as usize).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    async fn download_to(
        &self,
        want: &WantedFile,
        what: &str,
        tmp: &Path,
        first_source: usize,
    ) -> Result<Stamp, String> {
        let blob = want.file.blob;
        let expected = want.file.size;
        let io = |e: std::io::Error| format!("writing {}: {e} (check free space)", tmp.display());
        let mut out = tokio::fs::File::create(tmp).await.map_err(io)?;
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        let sources = self.fetcher.sources().max(1);
        let attempts = self.settings.attempts.max(2 * sources);
        let mut last = String::from("no attempt was made");
        for attempt in 0..attempts {
            if attempt > 0 && attempt % sources == 0 {
                tokio::time::sleep(self.settings.retry_pause).await;
            }
            let end = self
                .attempt(
                    blob,
                    expected,
                    first_source.wrapping_add(attempt),
                    &mut out,
                    &mut hasher,
                    &mut written,
                )
                .await
                .map_err(io)?;
            let end = match end {
                AttemptEnd::Complete => {
                    let got: [u8; 32] = std::mem::take(&mut hasher).finalize().into();
                    if got == blob.0 {
                        out.flush().await.map_err(io)?;
                        out.sync_all().await.map_err(io)?;
                        drop(out);
                        let path = self.path(&blob);
                        tokio::fs::rename(tmp, &path).await.map_err(io)?;
                        if let Ok(d) = std::fs::File::open(&self.settings.dir) {
                            let _ = d.sync_all();
                        }
                        let meta = tokio::fs::metadata(&path).await.map_err(io)?;
                        tracing::info!(%blob, file = %what, bytes = expected, "fetched and verified into the image cache");
                        return Ok(Stamp::of(&meta));
                    }
                    bump(&self.counters.verification_failures, 1);
                    AttemptEnd::Discard(format!(
                        "download is corrupt: expected sha256 {blob}, got {} ({written} bytes): deleted, never served",
                        hex(&got)
                    ))
                }
                other => other,
            };
            match end {
                AttemptEnd::Broken(why) => {
                    tracing::info!(%blob, file = %what, "download broke off at {written} of {expected} bytes: {why}; resuming from the next region");
                    last = why;
                }
                AttemptEnd::Discard(why) => {
                    tracing::warn!(%blob, file = %what, "{why}; starting again from the next region");
                    out.set_len(0).await.map_err(io)?;
                    out.seek(std::io::SeekFrom::Start(0)).await.map_err(io)?;
                    hasher = Sha256::new();
                    written = 0;
                    last = why;
                }
                AttemptEnd::Complete => {}
            }
        }
        Err(format!(
            "{what} could not be fetched after {attempts} attempts over {sources} regions ({written} of {expected} bytes held, deleted); last: {last}"
        ))
    }

    /// One attempt at the rest of `blob` from source `attempt`, appended to `out`.
    async fn attempt(
        &self,
        blob: BlobId,
        expected: u64,
        attempt: usize,
        out: &mut tokio::fs::File,
        hasher: &mut Sha256,
        written: &mut u64,
    ) -> std::io::Result<AttemptEnd> {
        let stall = self.settings.stall;
        let fetched =
            match tokio::time::timeout(stall, self.fetcher.fetch(blob, *written, attempt)).await {
                Err(_) => {
                    return Ok(AttemptEnd::Broken(format!(
                        "no answer within {} ms",
                        stall.as_millis()
                    )))
                }
                Ok(Err(e)) => return Ok(AttemptEnd::Broken(e.to_string())),
                Ok(Ok(f)) => f,
            };
        let source = fetched.source;
        let mut chunks = fetched.chunks;
        loop {
            let next = match tokio::time::timeout(stall, chunks.next()).await {
                Err(_) => {
                    return Ok(AttemptEnd::Broken(format!(
                        "no data from {source} for {} ms",
                        stall.as_millis()
                    )))
                }
                Ok(n) => n,
            };
            let chunk = match next {
                None if *written == expected => return Ok(AttemptEnd::Complete),
                None => {
                    return Ok(AttemptEnd::Broken(format!(
                        "{source} ended the stream early (short download: {written} of {expected} bytes)"
                    )))
                }
                Some(Err(e)) => return Ok(AttemptEnd::Broken(e.to_string())),
                Some(Ok(c)) => c,
            };
            if chunk.size != 0 && chunk.size != expected {
                return Ok(AttemptEnd::Discard(format!(
                    "{source} says the blob has {} bytes, the image says {expected}: mismatched size",
                    chunk.size
                )));
            }
            let len = chunk.data.len() as u64;
            bump(&self.counters.fetched_bytes, len);
            if *written + len > expected {
                return Ok(AttemptEnd::Discard(format!(
                    "{source} sent more than the file's {expected} bytes (over-long download)"
                )));
            }
            out.write_all(&chunk.data).await?;
            hasher.update(&chunk.data);
            *written += len;
        }
    }
}

/// Lowercase hex of a digest, for logs.
fn hex(b: &[u8; 32]) -> String {
    BlobId(*b).to_hex()
}

/// The prefetch task: whenever the wanted set changes (and again after [`CacheSettings::prefetch_retry`]
/// while something failed), makes every wanted blob a verified copy, bootloaders and small files first.
async fn prefetch(core: Arc<Core>, mut version: watch::Receiver<u64>) {
    loop {
        version.borrow_and_update();
        let mut files: Vec<WantedFile> = lock(&core.inner).wanted.values().cloned().collect();
        files.sort_by_key(|f| (f.kind != ImageKind::Bootloader, f.file.size, f.file.blob));
        let mut failed = 0usize;
        for f in files {
            if version.has_changed().unwrap_or(true) {
                break;
            }
            let blob = f.file.blob;
            let fresh = {
                let st = lock(&core.inner);
                st.blobs.get(&blob).and_then(|e| e.verified)
            };
            if let Some(stamp) = fresh {
                let same = std::fs::metadata(core.path(&blob))
                    .map(|m| Stamp::of(&m) == stamp)
                    .unwrap_or(false);
                if same {
                    continue;
                }
                if let Some(e) = lock(&core.inner).blobs.get_mut(&blob) {
                    if e.verified == Some(stamp) {
                        e.verified = None;
                    }
                }
            }
            if let Err(f) = core.clone().ensure(blob, Room::Prefetch).await {
                failed += 1;
                tracing::warn!("prefetch: {}", f.into_error(blob));
            }
        }
        let retry = core.settings.prefetch_retry;
        tokio::select! {
            r = version.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(retry), if failed > 0 => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::fetch::{FetchError, Fetched, FetchedChunk};
    use futures::future::BoxFuture;
    use std::collections::VecDeque;
    use std::io::Read;
    use std::sync::atomic::AtomicUsize;

    /// What the fake region does to one attempt.
    #[derive(Debug, Clone, Copy)]
    enum Fault {
        /// One byte flipped.
        Corrupt,
        /// The stream ends after this many bytes.
        BreakAfter(usize),
        /// Ten bytes too many.
        Extra,
        /// NOT_FOUND.
        NotFound,
        /// The first chunk announces one byte more.
        WrongSize,
    }

    /// A region in memory: serves its blobs in 1,000-byte chunks, after `delay`, with scripted faults
    /// (one per attempt, in order; then none).
    #[derive(Default)]
    struct Fake {
        blobs: Mutex<HashMap<BlobId, Vec<u8>>>,
        faults: Mutex<VecDeque<Fault>>,
        calls: AtomicUsize,
        offsets: Mutex<Vec<u64>>,
        delay: Duration,
    }

    impl Fake {
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    impl BlobFetcher for Fake {
        fn sources(&self) -> usize {
            2
        }
        fn fetch(
            &self,
            blob: BlobId,
            offset: u64,
            attempt: usize,
        ) -> BoxFuture<'static, Result<Fetched, FetchError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            lock(&self.offsets).push(offset);
            let fault = lock(&self.faults).pop_front();
            let data = lock(&self.blobs).get(&blob).cloned();
            let delay = self.delay;
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                let endpoint = format!("fake-region-{}", attempt % 2);
                let Some(all) = data else {
                    return Err(FetchError::NotFound { endpoint });
                };
                let mut size = all.len() as u64;
                let mut data = all.get(offset as usize..).unwrap_or_default().to_vec();
                match fault {
                    Some(Fault::Corrupt) => {
                        if let Some(b) = data.last_mut() {
                            *b ^= 0xff;
                        }
                    }
                    Some(Fault::BreakAfter(n)) => data.truncate(n),
                    Some(Fault::Extra) => data.extend([7u8; 10]),
                    Some(Fault::NotFound) => return Err(FetchError::NotFound { endpoint }),
                    Some(Fault::WrongSize) => size += 1,
                    None => {}
                }
                let chunks: Vec<Result<FetchedChunk, FetchError>> = data
                    .chunks(1000)
                    .enumerate()
                    .map(|(i, c)| {
                        Ok(FetchedChunk {
                            size: if i == 0 { size } else { 0 },
                            data: c.to_vec(),
                        })
                    })
                    .collect();
                Ok(Fetched {
                    source: endpoint,
                    chunks: Box::pin(tokio_stream::iter(chunks)),
                })
            })
        }
    }

    /// Bytes `n` long, distinct per `seed`.
    fn bytes(seed: u8, n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn sha(b: &[u8]) -> BlobId {
        BlobId(Sha256::digest(b).into())
    }

    fn wanted(name: &str, data: &[u8]) -> WantedFile {
        WantedFile {
            image: "ramdisk".into(),
            kind: ImageKind::Ramdisk,
            arch: "amd64".into(),
            file: ImageFile {
                name: name.into(),
                blob: sha(data),
                size: data.len() as u64,
            },
        }
    }

    fn settings(dir: &Path, max_bytes: u64) -> CacheSettings {
        CacheSettings {
            dir: dir.to_path_buf(),
            max_bytes,
            stall: Duration::from_secs(2),
            attempts: 4,
            retry_pause: Duration::from_millis(10),
            prefetch_retry: Duration::from_millis(200),
        }
    }

    fn cache(dir: &Path, max_bytes: u64, fake: &Arc<Fake>) -> ImageCache {
        ImageCache::new(settings(dir, max_bytes), fake.clone()).unwrap()
    }

    fn read(b: CachedBlob) -> Vec<u8> {
        let mut out = Vec::new();
        let mut f = b.file;
        f.read_to_end(&mut out).unwrap();
        out
    }

    /// Adds `data` to the fake and tells the cache about it (a boot intent named it).
    fn known(c: &ImageCache, fake: &Fake, name: &str, data: &[u8]) -> WantedFile {
        lock(&fake.blobs).insert(sha(data), data.to_vec());
        let w = wanted(name, data);
        c.want(&w);
        w
    }

    fn tmp_files(dir: &Path) -> usize {
        std::fs::read_dir(dir.join(TMP_DIR)).unwrap().count()
    }

    #[tokio::test]
    async fn a_corrupt_download_is_never_served() {
        let d = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        let c = cache(d.path(), 1 << 20, &fake);
        let data = bytes(1, 5_500);
        let w = known(&c, &fake, "kernel", &data);
        // Every region sends corrupt bytes: nothing is served, nothing stays on disk.
        lock(&fake.faults).extend([Fault::Corrupt; 4]);
        let e = c.open(&w.file.blob).await.unwrap_err().to_string();
        assert!(e.contains("corrupt") && e.contains("4 attempts"), "{e}");
        assert!(!d.path().join(w.file.blob.to_hex()).exists());
        assert_eq!(tmp_files(d.path()), 0);
        assert_eq!(c.counters().verification_failures, 4);
        assert_eq!(c.counters().bytes, 0);
        // One corrupt copy, then a good one: the good one is served.
        lock(&fake.faults).push_back(Fault::Corrupt);
        let b = c.open(&w.file.blob).await.unwrap();
        assert_eq!(b.len, data.len() as u64);
        assert_eq!(read(b), data);
        assert_eq!(c.counters().verification_failures, 5);
        assert_eq!(fake.calls(), 6);
    }

    #[tokio::test]
    async fn a_short_download_is_resumed_from_the_bytes_held() {
        let d = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        let c = cache(d.path(), 1 << 20, &fake);
        let data = bytes(2, 10_000);
        let w = known(&c, &fake, "initrd", &data);
        lock(&fake.faults).extend([
            Fault::BreakAfter(3_000),
            Fault::NotFound,
            Fault::BreakAfter(4_000),
        ]);
        let b = c.open(&w.file.blob).await.unwrap();
        assert_eq!(read(b), data);
        assert_eq!(*lock(&fake.offsets), vec![0, 3_000, 3_000, 7_000]);
        assert_eq!(c.counters().fetched_bytes, 10_000, "nothing fetched twice");
        assert_eq!(c.counters().misses, 1);
        // Now a hit, without a fetch.
        assert_eq!(read(c.open(&w.file.blob).await.unwrap()), data);
        assert_eq!(c.counters().hits, 1);
        assert_eq!(fake.calls(), 4);
    }

    #[tokio::test]
    async fn mismatched_sizes_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        let c = cache(d.path(), 1 << 20, &fake);
        let data = bytes(3, 4_000);
        lock(&fake.blobs).insert(sha(&data), data.clone());
        // The image says another size than the regions announce: refused every time.
        let mut w = wanted("kernel", &data);
        for size in [3_990, 4_010] {
            w.file.size = size;
            c.want(&w);
            let e = c.open(&w.file.blob).await.unwrap_err().to_string();
            assert!(e.contains("mismatched size"), "{e}");
        }
        // Regions that send too much, or stop early (and never send the rest): never served.
        w.file.size = 4_000;
        c.want(&w);
        lock(&fake.faults).extend([Fault::Extra; 4]);
        let e = c.open(&w.file.blob).await.unwrap_err().to_string();
        assert!(e.contains("over-long"), "{e}");
        lock(&fake.faults).extend([Fault::BreakAfter(0); 4]);
        let e = c.open(&w.file.blob).await.unwrap_err().to_string();
        assert!(e.contains("short download"), "{e}");
        assert!(!d.path().join(w.file.blob.to_hex()).exists());
        assert_eq!(tmp_files(d.path()), 0);
        assert_eq!(c.counters().bytes, 0);
        // One region announcing another size, one sending too much: the third is good.
        lock(&fake.faults).extend([Fault::WrongSize, Fault::Extra]);
        assert_eq!(read(c.open(&w.file.blob).await.unwrap()), data);
        // Larger than the whole cache: refused at once, naming the flag.
        let big = bytes(4, 3_000);
        let small =
            ImageCache::new(settings(&d.path().join("small"), 2_000), fake.clone()).unwrap();
        let wb = known(&small, &fake, "disk", &big);
        let calls = fake.calls();
        let e = small.open(&wb.file.blob).await.unwrap_err().to_string();
        assert!(e.contains("--cache-max-bytes 2000"), "{e}");
        assert_eq!(fake.calls(), calls);
        // A blob nobody named is unknown.
        assert!(matches!(
            c.open(&sha(b"nobody")).await,
            Err(CacheError::Unknown(_))
        ));
    }

    #[tokio::test]
    async fn twenty_concurrent_opens_share_one_download() {
        let d = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake {
            delay: Duration::from_millis(200),
            ..Fake::default()
        });
        let c = Arc::new(cache(d.path(), 1 << 20, &fake));
        let data = bytes(5, 50_000);
        let w = known(&c, &fake, "initrd", &data);
        let opens: Vec<_> = (0..20)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move { read(c.open(&w.file.blob).await.unwrap()) })
            })
            .collect();
        for o in opens {
            assert_eq!(o.await.unwrap(), data);
        }
        assert_eq!(fake.calls(), 1);
        assert_eq!(c.counters().misses, 20);
    }

    #[tokio::test]
    async fn eviction_spares_open_and_wanted_blobs() {
        let d = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        let c = cache(d.path(), 3_000, &fake);
        let [a, b, cc, dd, e, f] = [10u8, 11, 12, 13, 14, 15].map(|s| bytes(s, 1_000));
        // a: wanted by the region (prefetched), the oldest.
        lock(&fake.blobs).insert(sha(&a), a.clone());
        c.set_wanted(vec![wanted("a", &a)]);
        drop(c.open(&sha(&a)).await.unwrap());
        // b: held open throughout; c: neither.
        let wb = known(&c, &fake, "b", &b);
        let held = c.open(&wb.file.blob).await.unwrap();
        let wc = known(&c, &fake, "c", &cc);
        drop(c.open(&wc.file.blob).await.unwrap());
        assert_eq!(c.counters().bytes, 3_000);
        // d needs room: c goes (a is older, but wanted; b is open).
        let wd = known(&c, &fake, "d", &dd);
        drop(c.open(&wd.file.blob).await.unwrap());
        let on_disk = |x: &[u8]| d.path().join(sha(x).to_hex()).exists();
        assert!(on_disk(&a) && on_disk(&b) && !on_disk(&cc) && on_disk(&dd));
        // e: d goes (not wanted) before a.
        let we = known(&c, &fake, "e", &e);
        let held_e = c.open(&we.file.blob).await.unwrap();
        assert!(on_disk(&a) && !on_disk(&dd));
        // f: only a is neither open nor being fetched: a wanted blob goes for an open that waits.
        let wf = known(&c, &fake, "f", &f);
        drop(c.open(&wf.file.blob).await.unwrap());
        assert!(!on_disk(&a) && on_disk(&b) && on_disk(&e) && on_disk(&f));
        assert_eq!(c.counters().evictions, 3);
        // Everything left is open or just used: no room without evicting f, the only closed one.
        assert_eq!(read(held), b);
        assert_eq!(read(held_e), e);
        assert_eq!(c.counters().bytes, 3_000);
    }

    #[tokio::test]
    async fn a_prefetch_never_evicts_wanted_blobs() {
        let d = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        let c = cache(d.path(), 2_000, &fake);
        let [a, b, x] = [20u8, 21, 22].map(|s| bytes(s, 1_000));
        for v in [&a, &b, &x] {
            lock(&fake.blobs).insert(sha(v), v.clone());
        }
        c.set_wanted(vec![wanted("a", &a), wanted("b", &b), wanted("x", &x)]);
        // Two of three fit; the prefetch of the third does not push out the others.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let n = c.counters();
        assert_eq!((n.blobs, n.bytes, n.evictions), (2, 2_000, 0), "{n:?}");
        // An open of the third may evict a wanted blob that is not open.
        let missing = [&a, &b, &x]
            .into_iter()
            .find(|v| !d.path().join(sha(v).to_hex()).exists())
            .unwrap();
        assert_eq!(&read(c.open(&sha(missing)).await.unwrap()), missing);
        assert_eq!(c.counters().evictions, 1);
    }

    #[tokio::test]
    async fn a_blob_corrupted_on_disk_is_verified_again_deleted_and_fetched_again() {
        let d = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        let c = cache(d.path(), 1 << 20, &fake);
        let data = bytes(6, 8_000);
        let w = known(&c, &fake, "kernel", &data);
        assert_eq!(read(c.open(&w.file.blob).await.unwrap()), data);
        // Overwritten in place, same length.
        let path = d.path().join(w.file.blob.to_hex());
        std::fs::write(&path, vec![0u8; 8_000]).unwrap();
        let b = c.open(&w.file.blob).await.unwrap();
        assert_eq!(read(b), data, "the corrupt bytes are never served");
        assert_eq!(c.counters().verification_failures, 1);
        assert_eq!(fake.calls(), 2);
        // A restart finds the good copy and verifies it on first use, without a fetch.
        drop(c);
        let c = cache(d.path(), 1 << 20, &fake);
        c.want(&w);
        assert_eq!(read(c.open(&w.file.blob).await.unwrap()), data);
        assert_eq!(fake.calls(), 2);
        // Corrupted while the rack was down: found at first use, deleted, fetched again.
        drop(c);
        std::fs::write(&path, vec![1u8; 8_000]).unwrap();
        std::fs::write(d.path().join(TMP_DIR).join("leftover.1"), b"partial").unwrap();
        let c = cache(d.path(), 1 << 20, &fake);
        assert_eq!(tmp_files(d.path()), 0, "tmp/ is emptied at start");
        c.want(&w);
        assert_eq!(read(c.open(&w.file.blob).await.unwrap()), data);
        assert_eq!(c.counters().verification_failures, 1);
        assert_eq!(fake.calls(), 3);
    }

    #[tokio::test]
    async fn wanted_bootloaders_are_prefetched_and_found_by_name() {
        let d = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        let c = cache(d.path(), 1 << 20, &fake);
        let ipxe = bytes(7, 2_000);
        lock(&fake.blobs).insert(sha(&ipxe), ipxe.clone());
        let mut w = wanted("undionly.kpxe", &ipxe);
        w.kind = ImageKind::Bootloader;
        w.image = "ipxe".into();
        c.set_wanted(vec![w.clone()]);
        assert_eq!(c.bootloader("undionly.kpxe"), Some(w.clone()));
        assert_eq!(c.bootloader("snponly.efi"), None);
        for _ in 0..50 {
            if c.counters().blobs == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(fake.calls(), 1);
        assert_eq!(read(c.open(&w.file.blob).await.unwrap()), ipxe);
        assert_eq!(c.counters().hits, 1);
        // A malformed CacheWanted entry is skipped, naming the field.
        let m = ingot_proto::rack::v1::CacheWanted {
            files: vec![ingot_proto::rack::v1::BlobFile {
                image: "ipxe".into(),
                name: "../etc/passwd".into(),
                sha256: w.file.blob.to_hex(),
                size: 2_000,
                kind: "bootloader".into(),
                arch: "amd64".into(),
            }],
        };
        assert!(WantedFile::from_cache_wanted(&m).is_empty());
        let e = WantedFile::from_rack(&m.files[0]).unwrap_err().to_string();
        assert!(e.contains("name"), "{e}");
    }
}
