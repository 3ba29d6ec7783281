//! The image cache's real fetcher against two tiny in-process regions serving `BlobService` over mutual
//! TLS (certificates from a test cluster CA): the rack presents its own certificate, a region without the
//! blob is skipped, a stream that breaks is resumed at the other region from the bytes held, and a region
//! sending corrupt bytes is never served from.

use futures::stream::BoxStream;
use ingot_common::image::{BlobId, ImageFile, ImageKind};
use ingot_common::pki::{self, ClusterCa, Identity as PkiIdentity};
use ingot_proto::rack::v1::blob_service_server::{BlobService, BlobServiceServer};
use ingot_proto::rack::v1::{BlobChunk, FetchBlobRequest};
use ingot_rack::boot::cache::{CacheSettings, ImageCache, WantedFile};
use ingot_rack::boot::fetch::RegionFetcher;
use ingot_rack::config::{DataDir, RackConfig, TlsFiles};
use ingot_rack::session::SessionConfig;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

/// How a fake region answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Serves the blob from the offset asked, in 1 MiB chunks.
    Good,
    /// NOT_FOUND.
    Missing,
    /// Sends two chunks, then fails the stream; good from the next call on.
    BreaksOnce,
    /// Serves the blob with its last byte flipped.
    Corrupt,
}

struct FakeRegion {
    data: Vec<u8>,
    mode: Mutex<Mode>,
    /// (client certificate CN, offset) of every call.
    calls: Mutex<Vec<(String, u64)>>,
}

const CHUNK: usize = 1 << 20;

/// The service the server owns, sharing the region with the test.
struct Shared(Arc<FakeRegion>);

impl std::ops::Deref for Shared {
    type Target = FakeRegion;
    fn deref(&self) -> &FakeRegion {
        &self.0
    }
}

#[tonic::async_trait]
impl BlobService for Shared {
    type FetchBlobStream = BoxStream<'static, Result<BlobChunk, Status>>;

    async fn fetch_blob(
        &self,
        req: Request<FetchBlobRequest>,
    ) -> Result<Response<Self::FetchBlobStream>, Status> {
        let cn = req
            .peer_certs()
            .and_then(|c| c.first().and_then(|c| pki::common_name(c.as_ref())))
            .unwrap_or_default();
        let r = req.into_inner();
        self.calls.lock().unwrap().push((cn, r.offset));
        let mode = {
            let mut m = self.mode.lock().unwrap();
            let now = *m;
            if now == Mode::BreaksOnce {
                *m = Mode::Good;
            }
            now
        };
        if mode == Mode::Missing {
            return Err(Status::not_found("no verified copy here"));
        }
        let mut data = self.data.clone();
        if mode == Mode::Corrupt {
            if let Some(b) = data.last_mut() {
                *b ^= 1;
            }
        }
        let size = data.len() as u64;
        let rest = data.get(r.offset as usize..).unwrap_or_default().to_vec();
        let mut items: Vec<Result<BlobChunk, Status>> = rest
            .chunks(CHUNK)
            .enumerate()
            .map(|(i, c)| {
                Ok(BlobChunk {
                    size: if i == 0 { size } else { 0 },
                    data: c.to_vec(),
                })
            })
            .collect();
        if mode == Mode::BreaksOnce {
            items.truncate(2);
            items.push(Err(Status::unavailable("region going down")));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }
}

async fn start_region(ca: &ClusterCa, id: u64, region: Arc<FakeRegion>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (cert, key) = ca.issue(&PkiIdentity::region(id, &[&addr])).unwrap();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .client_ca_root(Certificate::from_pem(&ca.cert_pem));
    tokio::spawn(
        Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(BlobServiceServer::new(Shared(region)))
            .serve_with_incoming(TcpListenerStream::new(l)),
    );
    addr
}

#[tokio::test]
async fn the_cache_fetches_over_mutual_tls_resumes_at_another_region_and_never_serves_corrupt_bytes(
) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = ClusterCa::generate("test-cluster").unwrap();
    // 5 MiB + a bit: several chunks.
    let data: Vec<u8> = (0..5 * CHUNK + 123).map(|i| (i % 251) as u8).collect();
    let blob = BlobId(Sha256::digest(&data).into());
    let region = |mode| {
        Arc::new(FakeRegion {
            data: data.clone(),
            mode: Mutex::new(mode),
            calls: Mutex::new(Vec::new()),
        })
    };
    let (r1, r2) = (region(Mode::Missing), region(Mode::BreaksOnce));
    let e1 = start_region(&ca, 1, r1.clone()).await;
    let e2 = start_region(&ca, 2, r2.clone()).await;

    // A rack data directory as `register` leaves it.
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("rack"));
    let (cert_pem, key_pem) = ca.issue(&PkiIdentity::rack("r1")).unwrap();
    dir.save_tls(&TlsFiles {
        ca_pem: ca.cert_pem.clone(),
        cert_pem,
        key_pem,
    })
    .unwrap();
    dir.save_rack(&RackConfig {
        name: "r1".into(),
        zone: "default".into(),
        api_endpoints: vec![],
        cluster_endpoints: vec![e1.clone(), e2.clone()],
        registered_ms: 1,
    })
    .unwrap();
    let cfg = SessionConfig::load(dir.clone(), Duration::from_millis(500), 1).unwrap();
    let fetcher = RegionFetcher::new(
        dir.clone(),
        cfg.client_tls(),
        cfg.rack.cluster_endpoints.clone(),
    );
    let mut settings = CacheSettings::new(tmp.path().join("cache"), 1 << 30);
    settings.retry_pause = Duration::from_millis(10);
    let cache = ImageCache::new(settings, Arc::new(fetcher)).unwrap();
    let want = WantedFile {
        image: "ramdisk".into(),
        kind: ImageKind::Ramdisk,
        arch: "amd64".into(),
        file: ImageFile {
            name: "initrd".into(),
            blob,
            size: data.len() as u64,
        },
    };
    cache.want(&want);

    // Region 1 has no copy; region 2 breaks after 2 MiB, then serves the rest from 2 MiB (whichever
    // region the download starts at).
    let b = cache.open(&blob).await.unwrap();
    let mut got = Vec::new();
    b.file.try_clone().unwrap().read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "served bytes differ from the blob");
    let c1 = r1.calls.lock().unwrap().clone();
    let c2 = r2.calls.lock().unwrap().clone();
    assert!(c1.iter().all(|(cn, _)| cn == "rack-r1"), "{c1:?}");
    assert!(!c1.is_empty(), "region 1 was never asked");
    assert_eq!(
        c2,
        vec![
            ("rack-r1".to_string(), 0),
            ("rack-r1".to_string(), 2 * CHUNK as u64)
        ],
        "region 2 broke at 2 MiB and was asked for the rest from there"
    );
    assert_eq!(cache.counters().fetched_bytes, data.len() as u64);
    drop(b);

    // Both regions corrupt: nothing is served, nothing is left in the cache directory.
    let other: Vec<u8> = data.iter().rev().copied().collect();
    let other_blob = BlobId(Sha256::digest(&other).into());
    for r in [&r1, &r2] {
        *r.mode.lock().unwrap() = Mode::Corrupt;
    }
    let mut w2 = want.clone();
    w2.file.blob = other_blob;
    cache.want(&w2);
    // The fakes serve `data`, whose hash is not `other_blob`'s: every download fails verification.
    let e = cache.open(&other_blob).await.unwrap_err().to_string();
    assert!(e.contains("corrupt"), "{e}");
    assert!(!tmp.path().join("cache").join(other_blob.to_hex()).exists());
    assert!(cache.counters().verification_failures >= 2);
}

#[tokio::test]
async fn cache_wanted_from_the_region_is_prefetched_through_the_boot_service() {
    use ingot_proto::rack::v1::region_message::Msg as RegionMsg;
    use ingot_proto::rack::v1::{BlobFile, CacheWanted};
    use ingot_rack::boot::dhcp::engine::{Engine, EngineSettings};
    use ingot_rack::boot::journal::{Journal, MAX_ENTRIES};
    use ingot_rack::boot::service::{BootService, ServiceSettings};

    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = ClusterCa::generate("test-cluster").unwrap();
    let data: Vec<u8> = (0..3 * CHUNK / 2).map(|i| (i % 241) as u8).collect();
    let blob = BlobId(Sha256::digest(&data).into());
    let region = Arc::new(FakeRegion {
        data: data.clone(),
        mode: Mutex::new(Mode::Good),
        calls: Mutex::new(Vec::new()),
    });
    let ep = start_region(&ca, 1, region.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("rack"));
    let (cert_pem, key_pem) = ca.issue(&PkiIdentity::rack("r1")).unwrap();
    dir.save_tls(&TlsFiles {
        ca_pem: ca.cert_pem.clone(),
        cert_pem,
        key_pem,
    })
    .unwrap();
    dir.save_rack(&RackConfig {
        name: "r1".into(),
        zone: "default".into(),
        api_endpoints: vec![],
        cluster_endpoints: vec![ep],
        registered_ms: 1,
    })
    .unwrap();
    let cfg = SessionConfig::load(dir.clone(), Duration::from_millis(500), 1).unwrap();
    let fetcher = RegionFetcher::new(
        dir.clone(),
        cfg.client_tls(),
        cfg.rack.cluster_endpoints.clone(),
    );
    let cache = Arc::new(
        ImageCache::new(
            CacheSettings::new(tmp.path().join("cache"), 1 << 30),
            Arc::new(fetcher),
        )
        .unwrap(),
    );
    let journal = Journal::open(&tmp.path().join("leases.journal"), MAX_ENTRIES).unwrap();
    let (_stop, rx) = tokio::sync::watch::channel(false);
    let svc = BootService::start(
        ServiceSettings::default(),
        Box::new(Engine::new(EngineSettings::default())),
        journal,
        rx,
    );
    svc.attach_cache(cache.clone());
    let file = |name: &str, sha256: String| BlobFile {
        image: "ipxe".into(),
        name: name.into(),
        sha256,
        size: data.len() as u64,
        kind: "bootloader".into(),
        arch: "amd64".into(),
    };
    svc.on_region_message(RegionMsg::CacheWanted(CacheWanted {
        files: vec![
            file("undionly.kpxe", blob.to_hex()),
            // Malformed: skipped, the rest taken.
            file("bad", "not-a-sha".into()),
        ],
    }));
    let t0 = std::time::Instant::now();
    while cache.counters().blobs == 0 && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = cache.counters();
    assert_eq!((c.blobs, c.bytes), (1, data.len() as u64), "{c:?}");
    assert_eq!(
        cache.bootloader("undionly.kpxe").map(|w| w.file.blob),
        Some(blob)
    );
    assert!(cache.bootloader("bad").is_none());
    let b = cache.open(&blob).await.unwrap();
    assert_eq!(b.len, data.len() as u64);
    assert_eq!(
        (cache.counters().hits, region.calls.lock().unwrap().len()),
        (1, 1)
    );
}
