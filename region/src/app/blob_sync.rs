//! Blob sync, run by every region (not only the leader): copy each blob an image references that this
//! region does not hold from a region that does (`BlobService.FetchBlob` over the cluster listener, with
//! this region's cluster-CA certificate, resuming at the byte where a broken stream stopped), verify and
//! store it, then record it (`Op::RecordBlobs{held}`); keep checking the copies this region is recorded
//! as holding (a cheap stamp check every few seconds, a full re-hash of each every
//! [`REHASH_EVERY`]) and report a missing or corrupt one lost, so it is fetched again; remove blobs no
//! image references any more.
//!
//! Bounded: at most [`FETCHES_IN_FLIGHT`] copies at a time, a failed blob retried after
//! [`RETRY_AFTER`], checks one blob at a time on a blocking thread.

use super::worker::REGION_ACTOR;
use super::App;
use crate::blobs::{BlobError, BlobStore, BlobWriter, Pin, CHUNK};
use crate::command::{op, Command, Internal, Op, Principal};
use ingot_common::image::BlobId;
use ingot_common::NodeId;
use ingot_proto::rack::v1::blob_service_client::BlobServiceClient;
use ingot_proto::rack::v1::FetchBlobRequest;
use rand::seq::SliceRandom;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::transport::Channel;

/// Most blob copies one region runs at once: copies are disk- and network-heavy, and the regions'
/// Raft traffic must keep its share.
pub const FETCHES_IN_FLIGHT: usize = 2;
/// How often the sync looks for work (it is also woken by nothing else: a new image waits at most this).
const TICK: Duration = Duration::from_millis(500);
/// How often the copies this region holds are checked (stamp check: one `fstat` each).
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// How often each held copy is hashed in full again, for corruption under an unchanged stamp (bit rot;
/// a copy changed by anything that writes it changes its stamp and is hashed at the next 2 s check). Daily:
/// every 10 minutes meant reading every image in full on every region six times an hour (50 GiB of
/// images: ~85 MB/s of disk, without end) to catch something this rare.
pub const REHASH_EVERY: Duration = Duration::from_secs(24 * 3600);
/// How long a blob whose copy failed waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// How often blobs no image references are removed.
const RETAIN_EVERY: Duration = Duration::from_secs(5);
/// Streams tried for one copy (each resumes where the last stopped, rotating over the holders).
const FETCH_ATTEMPTS: usize = 8;
/// Largest `BlobChunk` accepted: a chunk of at most [`CHUNK`] bytes plus its framing.
pub const MAX_FETCH_MESSAGE: usize = CHUNK + 64 * 1024;

/// A blob to copy: its size and the regions (id, cluster address) recorded as holding it.
struct Wanted {
    blob: BlobId,
    size: u64,
    sources: Vec<(NodeId, String)>,
}

/// What to copy now, from the local state: referenced blobs this region is not recorded as holding.
fn wanted(app: &App) -> Vec<Wanted> {
    let me = app.region.id;
    let members = app.region.members();
    let st = crate::locks::read(&app.region.state);
    let mut sizes: HashMap<BlobId, u64> = HashMap::new();
    for f in st.data.images.values().flat_map(|i| i.files.iter()) {
        sizes.insert(f.blob, f.size);
    }
    let mut out = Vec::new();
    for (blob, size) in sizes {
        let holders = st.data.blob_holders.get(&blob);
        if holders.is_some_and(|h| h.contains(&me)) {
            continue;
        }
        let sources = holders
            .into_iter()
            .flatten()
            .filter(|h| **h != me)
            .filter_map(|h| members.get(h).map(|a| (*h, a.clone())))
            .collect();
        out.push(Wanted {
            blob,
            size,
            sources,
        });
    }
    out
}

/// Proposes that this region now holds `held` and lost `lost` (in bounded batches).
async fn record(app: &App, held: Vec<BlobId>, lost: Vec<BlobId>) -> Result<(), String> {
    let half = op::MAX_BLOBS_PER_RECORD / 2;
    let (mut held, mut lost) = (held, lost);
    while !held.is_empty() || !lost.is_empty() {
        let h: Vec<BlobId> = held.drain(..held.len().min(half)).collect();
        let l: Vec<BlobId> = lost.drain(..lost.len().min(half)).collect();
        let op = Op::RecordBlobs(op::RecordBlobs {
            region: app.region.id,
            held: h,
            lost: l,
        });
        let cmd = Command::new(REGION_ACTOR, Principal::Internal(Internal::Region), op);
        app.region.write(cmd).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Runs the sync until `shutdown` turns true.
pub async fn run(app: App, mut shutdown: watch::Receiver<bool>) {
    let checker = tokio::spawn(check_loop(app.clone(), shutdown.clone()));
    let mut tasks: JoinSet<(BlobId, Result<(), String>)> = JoinSet::new();
    let mut in_flight: BTreeSet<BlobId> = BTreeSet::new();
    let mut failed: HashMap<BlobId, Instant> = HashMap::new();
    let mut last_retain = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|v| *v) => break,
            _ = tokio::time::sleep(TICK) => {}
        }
        while let Some(done) = tasks.try_join_next() {
            if let Ok((blob, result)) = done {
                in_flight.remove(&blob);
                if let Err(e) = result {
                    tracing::warn!(
                        "copying blob {blob} to this region failed: {e}; retrying in {} s",
                        RETRY_AFTER.as_secs()
                    );
                    failed.insert(blob, Instant::now());
                }
            }
        }
        failed.retain(|_, at| at.elapsed() < RETRY_AFTER);
        for w in wanted(&app) {
            if in_flight.len() >= FETCHES_IN_FLIGHT {
                break;
            }
            if in_flight.contains(&w.blob) || failed.contains_key(&w.blob) {
                continue;
            }
            in_flight.insert(w.blob);
            let app = app.clone();
            tasks.spawn(async move { (w.blob, copy(&app, w).await) });
        }
        if last_retain.elapsed() >= RETAIN_EVERY {
            last_retain = Instant::now();
            retain(&app).await;
        }
    }
    tasks.abort_all();
    let _ = checker.await;
}

/// Removes blobs no image references, judged on state at least as new as the leader's commit index (a
/// region that restarts behind the log must not remove what newer images reference).
async fn retain(app: &App) {
    if app.region.read_barrier(true).await.is_err() {
        return;
    }
    let store = app.blobs.clone();
    let state = app.region.state.clone();
    let removed = tokio::task::spawn_blocking(move || {
        store.retain(|b| {
            crate::locks::read(&state)
                .data
                .images
                .values()
                .any(|i| i.files.iter().any(|f| f.blob == *b))
        })
    })
    .await;
    match removed {
        Ok(Ok(r)) if !r.is_empty() => {
            tracing::info!("removed {} blob(s) no image references", r.len())
        }
        Ok(Err(e)) => tracing::warn!("{e}"),
        _ => {}
    }
}

/// Copies one blob here and records it (or only records it, when a verified copy is already here).
async fn copy(app: &App, w: Wanted) -> Result<(), String> {
    let store = app.blobs.clone();
    let blob = w.blob;
    let local = tokio::task::spawn_blocking(move || store.open_verified(&blob))
        .await
        .map_err(|e| e.to_string())?;
    if local.is_ok_and(|v| v.size == w.size) {
        return record(app, vec![w.blob], Vec::new()).await;
    }
    if w.sources.is_empty() {
        return Err("no other member region is recorded as holding it".into());
    }
    let mut w = w;
    w.sources.shuffle(&mut rand::thread_rng());
    let tls = app.region.peers.tls().clone();
    let connect = move |addr: &str| {
        crate::raft::network::channel(addr, &tls)
            .map(|ch| BlobServiceClient::new(ch).max_decoding_message_size(MAX_FETCH_MESSAGE))
            .map_err(|e| e.to_string())
    };
    let pin = fetch(&app.blobs, &w, &connect).await?;
    let recorded = record(app, vec![w.blob], Vec::new()).await;
    drop(pin);
    recorded
}

/// Connects to a holder's cluster listener (by address).
type Connect<'a> = dyn Fn(&str) -> Result<BlobServiceClient<Channel>, String> + Send + Sync + 'a;

/// Copies blob `w.blob` of `w.size` bytes from `w.sources` (tried in turn) into `store`: each stream
/// resumes at the byte the last one stopped at; a copy that does not verify starts over. The stored blob
/// stays pinned until the returned pin is dropped (after it is recorded).
async fn fetch(store: &Arc<BlobStore>, w: &Wanted, connect: &Connect<'_>) -> Result<Pin, String> {
    let (blob, size, sources) = (w.blob, w.size, &w.sources);
    let mut writer: Option<BlobWriter> = None;
    let mut last = String::from("no source");
    for attempt in 0..FETCH_ATTEMPTS {
        let Some((id, addr)) = sources.get(attempt % sources.len().max(1)) else {
            break;
        };
        let w0 = match writer.take() {
            Some(w0) => w0,
            None => store.writer(size, Some(blob)).map_err(|e| e.to_string())?,
        };
        let (back, result) = match connect(addr) {
            Ok(mut c) => pull(&mut c, blob, w0).await,
            Err(e) => (Some(w0), Err(e)),
        };
        match (back, result) {
            (Some(done), Ok(())) if done.written() == size => {
                match tokio::task::spawn_blocking(move || done.finish()).await {
                    Ok(Ok((_, pin))) => return Ok(pin),
                    Ok(Err(e)) => last = format!("from region {id} ({addr}): {e}"),
                    Err(e) => last = e.to_string(),
                }
            }
            (back, Ok(())) => {
                let got = back.as_ref().map_or(0, BlobWriter::written);
                last = format!(
                    "from region {id} ({addr}): the stream ended after {got} of {size} bytes"
                );
                writer = back;
            }
            (back, Err(e)) => {
                last = format!("from region {id} ({addr}): {e}");
                writer = back;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Err(last)
}

/// One `FetchBlob` stream into `w`, from `w.written()` on. Returns the writer (none when a write failed:
/// the copy starts over) and whether the stream ended without an error.
async fn pull(
    client: &mut BlobServiceClient<Channel>,
    blob: BlobId,
    w: BlobWriter,
) -> (Option<BlobWriter>, Result<(), String>) {
    let req = FetchBlobRequest {
        sha256: blob.to_hex(),
        offset: w.written(),
    };
    let mut stream = match client.fetch_blob(req).await {
        Ok(r) => r.into_inner(),
        Err(s) => return (Some(w), Err(format!("{:?}: {}", s.code(), s.message()))),
    };
    let mut w = w;
    loop {
        match stream.message().await {
            Ok(Some(chunk)) => {
                if chunk.data.len() > CHUNK {
                    return (Some(w), Err("a chunk larger than 1 MiB".into()));
                }
                w = match super::images::write_blocking(w, chunk.data).await {
                    Ok(w) => w,
                    Err(e @ BlobError::Overrun { .. }) => {
                        return (None, Err(format!("the holder sent {e}")))
                    }
                    Err(e) => return (None, Err(e.to_string())),
                };
            }
            Ok(None) => return (Some(w), Ok(())),
            Err(s) => {
                return (
                    Some(w),
                    Err(format!("stream broke ({:?}: {})", s.code(), s.message())),
                )
            }
        }
    }
}

/// Checks the copies this region is recorded as holding: every [`CHECK_EVERY`] by stamp, every
/// [`REHASH_EVERY`] in full; a missing or corrupt one is reported lost (and the sync copies it again).
async fn check_loop(app: App, mut shutdown: watch::Receiver<bool>) {
    let mut hashed: HashMap<BlobId, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|v| *v) => return,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
        let me = app.region.id;
        let mine: Vec<BlobId> = crate::locks::read(&app.region.state)
            .data
            .blob_holders
            .iter()
            .filter(|(_, h)| h.contains(&me))
            .map(|(b, _)| *b)
            .collect();
        let mine: BTreeSet<BlobId> = mine.into_iter().collect();
        hashed.retain(|b, _| mine.contains(b));
        let full: BTreeSet<BlobId> = mine
            .iter()
            .filter(|b| hashed.get(b).is_none_or(|t| t.elapsed() >= REHASH_EVERY))
            .copied()
            .collect();
        for b in &full {
            hashed.insert(*b, Instant::now());
        }
        // One blocking task per round: a stamp check per blob (an open and an fstat), a full hash for
        // those due.
        let store = app.blobs.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let mut lost = Vec::new();
            for b in mine {
                if full.contains(&b) {
                    store.forget_verification(&b);
                }
                match store.open_verified(&b) {
                    Ok(_) => {}
                    Err(e @ (BlobError::Missing(_) | BlobError::Corrupt { .. })) => {
                        tracing::warn!("{e}; reporting it lost");
                        lost.push(b);
                    }
                    Err(e) => tracing::warn!("checking blob {b}: {e}"),
                }
            }
            lost
        })
        .await;
        let lost = match checked {
            Ok(lost) => lost,
            Err(e) => {
                tracing::warn!("checking blobs: {e}");
                continue;
            }
        };
        if !lost.is_empty() {
            if let Err(e) = record(&app, Vec::new(), lost).await {
                tracing::warn!("reporting lost blobs failed: {e}; retrying at the next check");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ingot_proto::rack::v1::blob_service_server::{BlobService, BlobServiceServer};
    use ingot_proto::rack::v1::BlobChunk;
    use sha2::{Digest, Sha256};
    use std::sync::Mutex;
    use tonic::{Request, Response, Status};

    /// Serves `data` from the requested offset; the first stream breaks after one chunk.
    struct Flaky {
        data: Vec<u8>,
        offsets: Arc<Mutex<Vec<u64>>>,
    }

    type Chunks =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<BlobChunk, Status>> + Send>>;

    #[tonic::async_trait]
    impl BlobService for Flaky {
        type FetchBlobStream = Chunks;

        async fn fetch_blob(
            &self,
            req: Request<FetchBlobRequest>,
        ) -> Result<Response<Chunks>, Status> {
            let offset = req.into_inner().offset;
            let first = {
                let mut o = crate::locks::lock(&self.offsets);
                o.push(offset);
                o.len() == 1
            };
            let rest = self.data.get(offset as usize..).unwrap_or_default();
            let mut items: Vec<Result<BlobChunk, Status>> = rest
                .chunks(CHUNK)
                .map(|c| {
                    Ok(BlobChunk {
                        size: 0,
                        data: c.to_vec(),
                    })
                })
                .collect();
            if first {
                items.truncate(1);
                items.push(Err(Status::unavailable("connection reset (test)")));
            }
            Ok(Response::new(Box::pin(tokio_stream::iter(items))))
        }
    }

    /// A stream that breaks after its first chunk is resumed at that byte, and the copy verifies.
    #[tokio::test]
    async fn a_broken_stream_resumes_at_the_byte_it_stopped() {
        let data: Vec<u8> = (0..(2 * CHUNK + 12_345)).map(|i| (i % 253) as u8).collect();
        let blob = BlobId(Sha256::digest(&data).into());
        let offsets = Arc::new(Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tonic::transport::Server::builder()
            .add_service(BlobServiceServer::new(Flaky {
                data: data.clone(),
                offsets: offsets.clone(),
            }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        let server = tokio::spawn(server);
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(BlobStore::open(dir.path()).unwrap());
        let connect = |addr: &str| {
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .map(|e| BlobServiceClient::new(e.connect_lazy()))
                .map_err(|e| e.to_string())
        };
        let want = |blob| Wanted {
            blob,
            size: data.len() as u64,
            sources: vec![(2, addr.clone())],
        };
        let pin = fetch(&store, &want(blob), &connect).await.unwrap();
        drop(pin);
        assert_eq!(
            *crate::locks::lock(&offsets),
            vec![0, CHUNK as u64],
            "the second stream starts where the first broke"
        );
        let v = store.open_verified(&blob).unwrap();
        assert_eq!(v.size, data.len() as u64);
        // A blob whose bytes do not verify is refused after every attempt, and nothing is stored.
        let wrong = BlobId([7; 32]);
        let e = fetch(&store, &want(wrong), &connect).await.unwrap_err();
        assert!(e.contains("hash"), "{e}");
        assert!(!store.path(&wrong).exists());
        server.abort();
    }
}
