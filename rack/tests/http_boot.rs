//! The HTTP boot server in-process on loopback (an ephemeral port) against curl: a MAC's script from a
//! (fake) region intent, the retry script when no intent can be had, blobs from the cache directory with
//! Range (206, 416, several ranges → 200), HEAD, keep-alive reuse, 404/405, 50 concurrent downloads whose
//! sha256 matches while the process' RSS stays far below what buffering would need, an aborted download
//! reported as such, and the bound on connections. The script and download steps are checked in the boot
//! event sink (attributed to the MAC whose script the address fetched).
//!
//! Peer policy: curl missing fails the test under CI (`CI` or `INGOT_REQUIRE_PEERS` set) and skips it
//! elsewhere, printing why.

use futures::future::BoxFuture;
use ingot_common::image::{BlobId, BootIntent, BootPurpose, ImageFile, ImageKind};
use ingot_rack::boot::cache::{ImageCache, WantedFile};
use ingot_rack::boot::events::BootEventSink;
use ingot_rack::boot::http::server::{
    run, HttpServer, HttpServerParts, HttpSettings, IntentSource,
};
use ingot_rack::boot::link::{IntentError, IntentKey, RackIntent};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const MAC1: &str = "52:54:00:00:00:01";
const MAC_DOWN: &str = "52:54:00:00:00:99";

/// Answers commission for every MAC but [`MAC_DOWN`] (no session).
struct FakeRegion {
    kernel: ImageFile,
    initrd: ImageFile,
}

impl IntentSource for FakeRegion {
    fn boot_intent<'a>(
        &'a self,
        key: &'a IntentKey,
    ) -> BoxFuture<'a, Result<RackIntent, IntentError>> {
        Box::pin(async move {
            if *key == IntentKey::Mac(MAC_DOWN.parse().unwrap()) {
                return Err(IntentError::NoSession);
            }
            let wanted = |f: &ImageFile| WantedFile {
                image: "ingot-ramdisk".into(),
                kind: ImageKind::Ramdisk,
                arch: "amd64".into(),
                file: f.clone(),
            };
            Ok(RackIntent {
                intent: BootIntent {
                    system_id: Some("abc123".into()),
                    purpose: BootPurpose::Commission,
                    kernel: Some(self.kernel.clone()),
                    initrd: Some(self.initrd.clone()),
                    disk: None,
                    problem: String::new(),
                },
                files: vec![wanted(&self.kernel), wanted(&self.initrd)],
            })
        })
    }
}

fn curl_present() -> bool {
    if Command::new("curl").arg("--version").output().is_ok() {
        return true;
    }
    let msg = "curl is not installed: install it with scripts/install-test-peers.sh";
    if std::env::var_os("CI").is_some() || std::env::var_os("INGOT_REQUIRE_PEERS").is_some() {
        panic!("{msg}");
    }
    eprintln!("skipping: {msg}");
    false
}

/// A blob of `len` random bytes written into the cache directory as `<dir>/<sha256>`.
fn put_blob(dir: &std::path::Path, name: &str, len: usize) -> (ImageFile, Vec<u8>) {
    use rand::RngCore;
    use sha2::Digest;
    let mut data = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut data);
    let blob = BlobId(sha2::Sha256::digest(&data).into());
    std::fs::write(dir.join(blob.to_hex()), &data).unwrap();
    (
        ImageFile {
            name: name.into(),
            blob,
            size: len as u64,
        },
        data,
    )
}

struct Running {
    addr: SocketAddr,
    server: Arc<HttpServer>,
    events: Arc<BootEventSink>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    kernel: ImageFile,
    kernel_bytes: Vec<u8>,
    big: ImageFile,
    _dir: tempfile::TempDir,
}

/// A fetcher with no region: the blobs placed in the cache directory are all there is.
struct NoRegion;

impl ingot_rack::boot::fetch::BlobFetcher for NoRegion {
    fn sources(&self) -> usize {
        1
    }
    fn fetch(
        &self,
        _blob: ingot_common::image::BlobId,
        _offset: u64,
        _attempt: usize,
    ) -> futures::future::BoxFuture<
        'static,
        Result<ingot_rack::boot::fetch::Fetched, ingot_rack::boot::fetch::FetchError>,
    > {
        Box::pin(async {
            Err(ingot_rack::boot::fetch::FetchError::NotFound {
                endpoint: "none".into(),
            })
        })
    }
}

async fn start(settings: HttpSettings) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let (kernel, kernel_bytes) = put_blob(dir.path(), "kernel", 100_000);
    let (initrd, _) = put_blob(dir.path(), "initrd", 10);
    let (big, _) = put_blob(dir.path(), "disk", 16 << 20);
    let events = BootEventSink::new();
    // The cache serves what it was told about: every blob here is one a region named.
    let cache = Arc::new(
        ImageCache::new(
            ingot_rack::boot::cache::CacheSettings::new(dir.path().to_path_buf(), 1 << 30),
            Arc::new(NoRegion),
        )
        .unwrap(),
    );
    for f in [&kernel, &initrd, &big] {
        cache.want(&WantedFile {
            image: "ingot-ramdisk".into(),
            kind: ImageKind::Ramdisk,
            arch: "amd64".into(),
            file: f.clone(),
        });
    }
    let server = HttpServer::new(HttpServerParts {
        intents: Arc::new(FakeRegion {
            kernel: kernel.clone(),
            initrd: initrd.clone(),
        }),
        cache,
        events: events.clone(),
        ca_fingerprint: "ab".repeat(32),
        agent_port: 5249,
        settings,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(run(listener, server.clone(), rx));
    Running {
        addr,
        server,
        events,
        stop,
        task,
        kernel,
        kernel_bytes,
        big,
        _dir: dir,
    }
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn blob_url(&self, f: &ImageFile) -> String {
        self.url(&format!("/blobs/{}/{}", f.blob.to_hex(), f.name))
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops on shutdown")
            .unwrap()
            .unwrap();
    }

    /// The steps queued for `mac` so far (drained by sending nowhere: the sink is read through a link
    /// with a session of our own).
    fn steps(&self) -> Vec<(String, String, String)> {
        let link = ingot_rack::boot::link::RegionLink::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        link.opened(1, tx);
        while self.events.flush_once(&link) > 0 {}
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            if let Some(ingot_proto::rack::v1::rack_message::Msg::BootEvents(b)) = m.msg {
                out.extend(b.events.into_iter().map(|e| (e.mac, e.step, e.detail)));
            }
        }
        out
    }
}

/// Runs curl with `args`; returns (status code, body, stderr).
async fn curl(args: &[&str]) -> (u16, Vec<u8>, String) {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "60", "-w", "\n%{http_code}"])
        .args(args);
    let out = cmd.output().await.unwrap();
    let mut body = out.stdout;
    let pos = body.iter().rposition(|b| *b == b'\n').unwrap();
    let code: u16 = String::from_utf8_lossy(&body[pos + 1..])
        .trim()
        .parse()
        .unwrap();
    body.truncate(pos);
    (
        code,
        body,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scripts_and_blobs_over_http() {
    if !curl_present() {
        return;
    }
    let r = start(HttpSettings::default()).await;

    // No intent to be had: a script that waits and asks again.
    let base = format!("http://{}", r.addr);
    let (code, body, _) = curl(&[&r.url(&format!("/boot/{MAC_DOWN}.ipxe"))]).await;
    let retry = String::from_utf8(body).unwrap();
    assert_eq!(code, 200);
    assert!(retry.contains("no region session"), "{retry}");
    assert!(
        retry.contains(&format!(
            "chain --replace --autofree {base}/boot/{MAC_DOWN}.ipxe"
        )),
        "{retry}"
    );

    // A MAC's script: the region's intent rendered with this rack's URL.
    let (code, body, _) = curl(&[&r.url(&format!("/boot/{MAC1}.ipxe"))]).await;
    let script = String::from_utf8(body).unwrap();
    assert_eq!(code, 200, "{script}");
    assert!(script.starts_with("#!ipxe\n"), "{script}");
    let kernel_line = format!(
        "kernel {base}/blobs/{}/kernel initrd=initrd ingot.purpose=commission ingot.rack={base} ingot.agent=https://127.0.0.1:5249 ingot.ca={} ingot.mac={MAC1} ingot.system_id=abc123 ",
        r.kernel.blob.to_hex(),
        "ab".repeat(32)
    );
    assert!(script.contains(&kernel_line), "{script}");
    // Dashes, and a percent-escaped colon, name the same MAC.
    let (code, body, _) = curl(&[&r.url("/boot/52-54-00-00-00-01.ipxe")]).await;
    assert_eq!(
        (code, String::from_utf8(body).unwrap()),
        (200, script.clone())
    );
    // The kernel, whole, then ranges.
    let url = r.blob_url(&r.kernel);
    let (code, body, _) = curl(&[&url]).await;
    assert_eq!((code, body.len()), (200, r.kernel_bytes.len()));
    assert!(body == r.kernel_bytes);
    let (code, body, _) = curl(&["-r", "10-19", &url]).await;
    assert_eq!((code, &body[..]), (206, &r.kernel_bytes[10..20]));
    let (code, body, _) = curl(&["-r", "-5", &url]).await;
    assert_eq!(
        (code, &body[..]),
        (206, &r.kernel_bytes[r.kernel_bytes.len() - 5..])
    );
    let (code, _, _) = curl(&["-r", "100000-", &url]).await;
    assert_eq!(code, 416, "a range past the end");
    let (code, body, _) = curl(&["-r", "0-1,5-6", &url]).await;
    assert_eq!(
        (code, body.len()),
        (200, r.kernel_bytes.len()),
        "several ranges: the whole file"
    );
    // Headers, and HEAD.
    let (code, head, _) = curl(&["-I", &url]).await;
    let head = String::from_utf8(head).unwrap().to_lowercase();
    assert_eq!(code, 200);
    assert!(head.contains("content-length: 100000"), "{head}");
    assert!(head.contains("accept-ranges: bytes"), "{head}");
    let (_, head, _) = curl(&["-D", "-", "-o", "/dev/null", "-r", "10-19", &url]).await;
    let head = String::from_utf8(head).unwrap().to_lowercase();
    assert!(head.contains("content-range: bytes 10-19/100000"), "{head}");
    assert!(head.contains("content-length: 10"), "{head}");
    let (_, head, _) = curl(&["-D", "-", "-o", "/dev/null", "-r", "200000-", &url]).await;
    let head = String::from_utf8(head).unwrap().to_lowercase();
    assert!(head.contains("content-range: bytes */100000"), "{head}");

    // Nothing else is served.
    for path in [
        "/".to_string(),
        "/etc/passwd".to_string(),
        "/boot/../../etc/passwd".to_string(),
        format!("/blobs/{}", "0".repeat(64)),
        "/blobs/xyz".to_string(),
        "/boot/not-a-mac.ipxe".to_string(),
        "/boot/undionly.kpxe".to_string(),
    ] {
        let (code, _, _) = curl(&["--path-as-is", &r.url(&path)]).await;
        assert_eq!(code, 404, "{path}");
    }
    let (code, _, _) = curl(&["-X", "POST", &url]).await;
    assert_eq!(code, 405);

    // Keep-alive: two requests, one connection.
    let before = r.server.counters().connections;
    let (code, body, err) = curl(&["-v", "-o", "/dev/null", &url, "-o", "/dev/null", &url]).await;
    assert_eq!(code, 200, "{err}");
    assert!(body.is_empty() || body.len() < 10);
    assert!(err.contains("e-using existing connection"), "{err}");
    assert_eq!(r.server.counters().connections, before + 1);

    // The script and the downloads were reported for MAC1 (this address fetched its script).
    let steps = r.steps();
    assert!(
        steps
            .iter()
            .any(|(m, s, d)| m == MAC1 && s == "script" && d == "purpose commission"),
        "{steps:?}"
    );
    assert!(
        steps.iter().any(|(m, s, d)| m == MAC1
            && s == "file-finished"
            && d == "kernel (97.7 KiB) over http"),
        "{steps:?}"
    );
    assert!(
        steps
            .iter()
            .any(|(m, s, d)| m == MAC1 && s == "file-started" && d.contains("from byte 10")),
        "{steps:?}"
    );

    // 50 concurrent downloads of 16 MiB: every copy intact; memory independent of the file size.
    let rss0 = rss_kib();
    let big_url = r.blob_url(&r.big);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let cmd = format!("curl -sS --fail --max-time 120 {big_url} | sha256sum");
        tasks.push(tokio::spawn(async move {
            tokio::process::Command::new("sh")
                .args(["-c", &cmd])
                .output()
                .await
                .unwrap()
        }));
    }
    let mut peak = rss0;
    let watch_rss = async {
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            peak = peak.max(rss_kib());
        }
    };
    let all = futures::future::join_all(tasks);
    let outs = tokio::select! {
        o = all => o,
        _ = watch_rss => unreachable!(),
    };
    for o in outs {
        let o = o.unwrap();
        let sum = String::from_utf8_lossy(&o.stdout);
        assert!(
            sum.starts_with(&r.big.blob.to_hex()),
            "sha256 {sum} stderr {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let grown_mib = peak.saturating_sub(rss0) / 1024;
    eprintln!(
        "50 × 16 MiB downloads: RSS {} MiB before, peak +{grown_mib} MiB",
        rss0 / 1024
    );
    assert!(
        grown_mib < 200,
        "RSS grew {grown_mib} MiB for 800 MiB served: bodies are buffered"
    );
    let c = r.server.counters();
    assert_eq!(c.active_downloads, 0);
    assert!(c.bytes >= 50 * (16 << 20), "{c:?}");

    // A client that goes away mid-body: an aborted download.
    let aborted = c.aborted_downloads;
    {
        let mut s = tokio::net::TcpStream::connect(r.addr).await.unwrap();
        let req = format!(
            "GET /blobs/{}/disk HTTP/1.1\r\nHost: x\r\n\r\n",
            r.big.blob.to_hex()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 65536];
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while r.server.counters().aborted_downloads == aborted {
        assert!(tokio::time::Instant::now() < deadline, "abort not noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let steps = r.steps();
    assert!(
        steps
            .iter()
            .any(|(m, s, d)| m == MAC1 && s == "file-aborted" && d.contains("client gone")),
        "{steps:?}"
    );
    r.stop().await;
}

#[tokio::test]
async fn connections_past_the_bound_are_closed_and_idle_or_stalled_ones_time_out() {
    let r = start(HttpSettings {
        max_connections: 2,
        header_timeout: Duration::from_millis(500),
        write_stall: Duration::from_millis(500),
        ..HttpSettings::default()
    })
    .await;
    let a = tokio::net::TcpStream::connect(r.addr).await.unwrap();
    let b = tokio::net::TcpStream::connect(r.addr).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while r.server.counters().active_connections < 2 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut c = tokio::net::TcpStream::connect(r.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .expect("the third connection is closed at once")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!(r.server.counters().refused_connections, 1);
    // Silent connections are dropped after the header timeout, freeing their slots.
    drop((a, b));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while r.server.counters().active_connections > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections not freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A client that asks for a large blob and stops reading is cut off after the write stall.
    {
        let mut s = tokio::net::TcpStream::connect(r.addr).await.unwrap();
        let req = format!(
            "GET /blobs/{}/disk HTTP/1.1\r\nHost: x\r\n\r\n",
            r.big.blob.to_hex()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while r.server.counters().aborted_downloads == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "a stalled download is not cut off"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut idle = tokio::net::TcpStream::connect(r.addr).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .expect("an idle connection times out")
        .unwrap_or(0);
    assert_eq!(n, 0);
    r.stop().await;
}
