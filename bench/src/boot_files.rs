//! `ingot-bench --boot-files`: what a boot storm downloads after DHCP, served by `ingot-rack` and by the
//! usual servers, on the same machine in the same run.
//!
//! - **TFTP**: one random file (`--size-mib`, 40 by default) fetched by 1 and 8 concurrent clients with
//!   blksize 1468 and 8192, each without and with windowsize 16, from `ingot-rack run --boot-interface
//!   lo --tftp-root DIR --tftp-port P` (a rack enrolled in a one-region cluster, like any rack) and from
//!   tftpd-hpa (`in.tftpd -L -s DIR -a 127.0.0.1:P2`, started and stopped by PID). Both are driven by the
//!   same client — the rack crate's `tftp::client`, in this process — so the comparison is of the
//!   servers. tftpd-hpa 5.2 has no windowsize (RFC 7440): it leaves the option out of its OACK and sends
//!   one block per ACK; such rows are marked.
//! - **HTTP**: the same file by 1 and 50 concurrent clients (one reqwest client, keep-alive, bodies
//!   streamed and checked, `--boot-http-rounds` downloads per client) from nginx (a temporary config on
//!   127.0.0.1, `daemon off`, started and stopped by PID) and from the rack's HTTP server at
//!   `/blobs/<sha256>` (the file uploaded as a bootloader image, which the rack prefetches into its cache).
//!   A rack that does not answer there is skipped with the reason printed. The rack's RSS
//!   (`/proc/PID/status` VmRSS) is sampled every 50 ms during its 50-client run.
//!
//! Every transfer is checked byte for byte against the file; every phase is bounded in count (a fixed
//! number of downloads) and in time (`--boot-max-seconds` per case, then the case is reported as cut).
//! Figures are printed, never asserted; a release build is what counts (`cargo run --release -p
//! ingot-bench -- --boot-files`).

use anyhow::{bail, Context, Result};
use ingot_launch::{LocalCluster, LocalClusterOptions, RackBoot};
use ingot_rack::boot::tftp::client::{fetch, FetchOptions};
use ingot_rack::boot::tftp::codec::Options;
use sha2::Digest;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// Settings of the run.
#[derive(Clone, Debug)]
pub struct BootFilesOpts {
    /// Size of the file served, MiB.
    pub size_mib: u64,
    /// Concurrent TFTP clients, per case.
    pub tftp_clients: Vec<usize>,
    /// Concurrent HTTP clients, per case.
    pub http_clients: Vec<usize>,
    /// Downloads each HTTP client makes per case.
    pub http_rounds: u64,
    /// Longest a case may run before it is cut, seconds.
    pub max_seconds: u64,
    /// Working directory (the cluster, the served files, the peers' configs and logs).
    pub dir: PathBuf,
}

/// One TFTP case: how the file was asked for.
#[derive(Clone, Copy, Debug)]
struct TftpCase {
    /// blksize asked for.
    blksize: u16,
    /// windowsize asked for (`None`: not asked, one block per ACK).
    windowsize: Option<u16>,
    /// Clients fetching at once, each the whole file once.
    clients: usize,
}

/// The outcome of one case against one server.
#[derive(Clone, Debug, Default)]
pub struct Rate {
    /// Downloads completed and verified.
    pub done: u64,
    /// Downloads that failed (error, wrong bytes, cut by the time bound).
    pub failed: u64,
    /// Bytes of completed downloads.
    pub bytes: u64,
    /// Wall time of the case.
    pub secs: f64,
    /// The server did not take the windowsize asked for (tftpd-hpa 5.2).
    pub no_window: bool,
    /// TFTP: times a client waited a whole timeout (1 s) for the server (a lost packet, a stall).
    pub timeouts: u64,
    /// First failure, for the report.
    pub error: Option<String>,
}

impl Rate {
    /// Verified MiB per second over the case.
    pub fn mib_s(&self) -> f64 {
        self.bytes as f64 / (1u64 << 20) as f64 / self.secs.max(1e-9)
    }
}

/// One row of the TFTP table.
#[derive(Clone, Debug)]
pub struct TftpRow {
    /// Block size asked.
    pub blksize: u16,
    /// Window asked.
    pub windowsize: Option<u16>,
    /// Concurrent clients.
    pub clients: usize,
    /// Against ingot-rack.
    pub rack: Rate,
    /// Against tftpd-hpa (`None`: not installed).
    pub hpa: Option<Rate>,
}

/// One row of the HTTP table.
#[derive(Clone, Debug)]
pub struct HttpRow {
    /// Concurrent clients.
    pub clients: usize,
    /// Against the rack (`Err`: skipped, with why).
    pub rack: Result<Rate, String>,
    /// Against nginx (`Err`: skipped, with why).
    pub nginx: Result<Rate, String>,
}

/// Everything the run measured.
#[derive(Clone, Debug, Default)]
pub struct BootFilesFigures {
    /// TFTP rows.
    pub tftp: Vec<TftpRow>,
    /// HTTP rows.
    pub http: Vec<HttpRow>,
    /// The rack's RSS before the HTTP runs, KiB.
    pub rss_idle_kib: u64,
    /// The rack's largest RSS sampled during its largest-client HTTP run, KiB.
    pub rss_peak_kib: u64,
    /// How many clients that run had.
    pub rss_clients: usize,
}

/// A process the bench started. [`Peer::stop`] sends SIGTERM to its PID (nginx's master then stops its
/// workers; a SIGKILL would orphan them), waits up to 5 s, then SIGKILLs it; dropping it unstopped (an
/// error path) sends SIGTERM.
struct Peer {
    /// For the log line.
    name: &'static str,
    /// The process (its PID is what is signalled).
    child: Child,
}

impl Peer {
    fn term(&self) {
        if let Some(pid) = self
            .child
            .id()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            eprintln!("   stopping {} (pid {pid})", self.name);
        }
        self.term();
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.term();
        }
    }
}

/// A free port on loopback (bound and released; a race with another process is tolerated here).
fn free_port(udp: bool) -> Result<u16> {
    Ok(if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    })
}

/// A program on PATH or in /usr/sbin.
fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Opens a log file for a peer's stdout and stderr.
fn log(path: &Path) -> Result<(std::process::Stdio, std::process::Stdio)> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    Ok((f.try_clone()?.into(), f.into()))
}

/// Runs `cases` against the TFTP server at `addr`: each case's clients fetch the file once each, at
/// once; the bytes are checked against `want`.
async fn tftp_case(addr: SocketAddr, case: TftpCase, want: Arc<Vec<u8>>, max: Duration) -> Rate {
    let options = Options {
        blksize: Some(case.blksize),
        windowsize: case.windowsize,
        tsize: Some(0),
        ..Options::default()
    };
    let mut fo = FetchOptions::new(options);
    fo.max_bytes = want.len() as u64 + 1;
    let fo = Arc::new(fo);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..case.clients {
        let (fo, want) = (fo.clone(), want.clone());
        tasks.spawn(async move {
            let mut same = true;
            let r = fetch(addr, "boot.bin", &fo, |off, data| {
                let off = off as usize;
                same &= want.get(off..off + data.len()) == Some(data);
            })
            .await;
            match r {
                Ok(f) if !same || f.bytes != want.len() as u64 => Err(format!(
                    "wrong bytes: {} received, content {}",
                    f.bytes,
                    if same { "matching" } else { "differing" }
                )),
                Ok(f) => Ok(f),
                Err(e) => Err(e.to_string()),
            }
        });
    }
    let mut rate = Rate::default();
    let deadline = tokio::time::Instant::now() + max;
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(Ok(Ok(f)))) => {
                rate.done += 1;
                rate.bytes += f.bytes;
                rate.timeouts += f.timeouts;
                if case.windowsize.is_some() && f.accepted.windowsize.is_none() {
                    rate.no_window = true;
                }
            }
            Ok(Some(Ok(Err(e)))) => {
                rate.failed += 1;
                rate.error.get_or_insert(e);
            }
            Ok(Some(Err(e))) => {
                rate.failed += 1;
                rate.error.get_or_insert(e.to_string());
            }
            Ok(None) => break,
            Err(_) => {
                rate.failed += tasks.len() as u64;
                rate.error
                    .get_or_insert(format!("cut after {} s", max.as_secs()));
                tasks.abort_all();
                break;
            }
        }
    }
    rate.secs = started.elapsed().as_secs_f64();
    rate
}

/// `clients` HTTP clients sharing one connection pool each download `url` `rounds` times, streaming and
/// checking every body. While it runs, `rss_of` (a PID) is sampled; the largest VmRSS is returned too.
async fn http_case(
    url: &str,
    clients: usize,
    rounds: u64,
    want: Arc<Vec<u8>>,
    max: Duration,
    rss_of: Option<u32>,
) -> (Rate, u64) {
    let http = match reqwest::Client::builder()
        .pool_max_idle_per_host(clients.max(1))
        .tcp_nodelay(true)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            return (
                Rate {
                    failed: 1,
                    error: Some(format!("building the HTTP client: {e}")),
                    ..Rate::default()
                },
                0,
            )
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = rss_of.map(|pid| {
        let (stop, peak) = (stop.clone(), peak.clone());
        tokio::spawn(async move {
            // Bounded: at most `max` worth of 50 ms samples, and it ends with the case.
            let samples = max.as_millis() / 50 + 1;
            for _ in 0..samples {
                peak.fetch_max(crate::netns::rss_kib(pid), Ordering::Relaxed);
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    });
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (http, want, url) = (http.clone(), want.clone(), url.to_string());
        tasks.spawn(async move {
            let mut got: Vec<Result<u64, String>> = Vec::new();
            for _ in 0..rounds {
                got.push(download(&http, &url, &want).await);
            }
            got
        });
    }
    let mut rate = Rate::default();
    let deadline = tokio::time::Instant::now() + max;
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(Ok(results))) => {
                for r in results {
                    match r {
                        Ok(n) => {
                            rate.done += 1;
                            rate.bytes += n;
                        }
                        Err(e) => {
                            rate.failed += 1;
                            rate.error.get_or_insert(e);
                        }
                    }
                }
            }
            Ok(Some(Err(e))) => {
                rate.failed += 1;
                rate.error.get_or_insert(e.to_string());
            }
            Ok(None) => break,
            Err(_) => {
                rate.failed += tasks.len() as u64 * rounds;
                rate.error
                    .get_or_insert(format!("cut after {} s", max.as_secs()));
                tasks.abort_all();
                break;
            }
        }
    }
    rate.secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    if let Some(s) = sampler {
        let _ = s.await;
    }
    (rate, peak.load(Ordering::Relaxed))
}

/// One streamed, checked download.
async fn download(http: &reqwest::Client, url: &str, want: &[u8]) -> Result<u64, String> {
    let mut resp = http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("GET {url}: {}", resp.status()));
    }
    let mut off = 0usize;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("GET {url} body: {e}"))?
    {
        if want.get(off..off + chunk.len()) != Some(&chunk[..]) {
            return Err(format!(
                "GET {url}: the body differs from the file at {off}"
            ));
        }
        off += chunk.len();
    }
    if off != want.len() {
        return Err(format!(
            "GET {url}: {off} bytes, the file has {}",
            want.len()
        ));
    }
    Ok(off as u64)
}

/// Starts tftpd-hpa on 127.0.0.1:`port` serving `root`, and waits (≤ 5 s) until it answers.
async fn start_tftpd(root: &Path, port: u16, logs: &Path) -> Result<Peer> {
    let bin = tool("in.tftpd").context("in.tftpd not found")?;
    let (out, err) = log(&logs.join("tftpd-hpa.log"))?;
    let child = Command::new(bin)
        // -L: foreground; -s: chroot to the root; -u root: read the files as the bench wrote them;
        // -B: accept the largest blksize (its default caps nothing below 65464, said here for clarity).
        .args(["-L", "-s", "-u", "root", "-B", "65464", "-a"])
        .arg(format!("127.0.0.1:{port}"))
        .arg(root)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .context("starting in.tftpd")?;
    let peer = Peer {
        name: "tftpd-hpa",
        child,
    };
    wait_tftp(([127, 0, 0, 1], port).into(), "tftpd-hpa").await?;
    Ok(peer)
}

/// Waits (≤ 5 s) until a TFTP server at `addr` answers a request for a missing file.
async fn wait_tftp(addr: SocketAddr, name: &str) -> Result<()> {
    let mut fo = FetchOptions::new(Options::default());
    fo.timeout = Duration::from_millis(200);
    fo.max_tries = 1;
    for _ in 0..25 {
        match fetch(addr, "no-such-file", &fo, |_, _| {}).await {
            Err(ingot_rack::boot::tftp::client::FetchError::Refused { .. }) => return Ok(()),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    bail!("{name} does not answer TFTP on {addr} within 5 s")
}

/// Starts nginx on 127.0.0.1:`port` serving `www` (so `/blobs/<sha256>` is `www/blobs/<sha256>`) and
/// waits (≤ 5 s) until it accepts connections.
async fn start_nginx(www: &Path, port: u16, dir: &Path) -> Result<Peer> {
    let bin = tool("nginx").context("nginx not found")?;
    let conf = dir.join("nginx.conf");
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "user root;\nworker_processes auto;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  tcp_nodelay on;\n  keepalive_requests 100000;\n  \
             client_body_temp_path {d}/t-body;\n  proxy_temp_path {d}/t-proxy;\n  fastcgi_temp_path {d}/t-fcgi;\n  \
             uwsgi_temp_path {d}/t-uwsgi;\n  scgi_temp_path {d}/t-scgi;\n  default_type application/octet-stream;\n  \
             server {{ listen 127.0.0.1:{port}; root {www}; }}\n}}\n",
            www = www.display()
        ),
    )?;
    let (out, err) = log(&dir.join("nginx.log"))?;
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(dir.join("nginx-error.log"))
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .context("starting nginx")?;
    let mut peer = Peer {
        name: "nginx",
        child,
    };
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(peer);
        }
        if let Ok(Some(st)) = peer.child.try_wait() {
            bail!(
                "nginx exited ({st}); see {}",
                dir.join("nginx-error.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    peer.stop().await;
    bail!("nginx does not accept connections on 127.0.0.1:{port} within 5 s")
}

/// Writes `len` random bytes (the same for both servers) to `path`.
fn random_file(path: &Path, len: usize) -> Result<Vec<u8>> {
    let mut data = vec![0u8; len];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut data);
    std::fs::write(path, &data).with_context(|| format!("writing {}", path.display()))?;
    Ok(data)
}

/// Runs the whole benchmark.
pub async fn run(o: &BootFilesOpts) -> Result<BootFilesFigures> {
    let len = usize::try_from(o.size_mib << 20).context("--size-mib too large")?;
    let max = Duration::from_secs(o.max_seconds.max(1));
    std::fs::create_dir_all(&o.dir)?;
    let tftp_root = o.dir.join("tftp");
    let www = o.dir.join("www");
    let peers_dir = o.dir.join("peers");
    for d in [&tftp_root, &www.join("blobs"), &peers_dir] {
        std::fs::create_dir_all(d)?;
    }
    eprintln!("== writing a {} MiB random file", o.size_mib);
    let want = Arc::new(random_file(&tftp_root.join("boot.bin"), len)?);
    let sha = hex::encode(sha2::Sha256::digest(&want[..]));
    std::fs::copy(tftp_root.join("boot.bin"), www.join("blobs").join(&sha))?;

    eprintln!("== starting a one-region cluster and a rack serving lo");
    let cluster = LocalCluster::start(LocalClusterOptions::new(o.dir.join("cluster"), 1)).await?;
    let (tftp_port, http_port) = (free_port(true)?, free_port(false)?);
    let rack = cluster
        .add_boot_rack(
            "bf",
            "zbench-boot",
            RackBoot {
                interfaces: vec!["lo".into()],
                dhcp_port: Some(free_port(true)?),
                proxy_dhcp_port: Some(free_port(true)?),
                http_port: Some(http_port),
                tftp_root: Some(tftp_root.clone()),
                tftp_port: Some(tftp_port),
                agent_port: Some(free_port(false)?),
            },
        )
        .await?;
    let rack_tftp: SocketAddr = ([127, 0, 0, 1], tftp_port).into();
    wait_tftp(rack_tftp, "ingot-rack").await?;
    // The rack serves only blobs a region told it about: the file is uploaded as a bootloader image, which
    // every rack holds (prefetched into its verified cache) and serves at /blobs/<sha256>.
    eprintln!("== uploading it as bootloader image 'bench-boot-files' (the rack prefetches it)");
    let bin = ingot_launch::resolve_bin_dir(None)?.join("ingot");
    let out = std::process::Command::new(bin)
        .arg("--profile")
        .arg(cluster.env_path())
        .args([
            "images",
            "upload",
            "bench-boot-files",
            "--kind",
            "bootloader",
            "--file",
        ])
        .arg(format!("boot.bin={}", tftp_root.join("boot.bin").display()))
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "ingot images upload failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut f = BootFilesFigures::default();
    let hpa_addr: SocketAddr = ([127, 0, 0, 1], free_port(true)?).into();
    let hpa = match start_tftpd(&tftp_root, hpa_addr.port(), &peers_dir).await {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("== SKIPPING tftpd-hpa: {e:#} (scripts/install-test-peers.sh installs it)");
            None
        }
    };
    f.tftp = tftp_rows(o, &want, rack_tftp, hpa.as_ref().map(|_| hpa_addr), max).await;
    if let Some(p) = hpa {
        p.stop().await;
    }

    // HTTP: nginx first, then the rack.
    let nginx_port = free_port(false)?;
    let nginx = start_nginx(&www, nginx_port, &peers_dir).await;
    let nginx_url = format!("http://127.0.0.1:{nginx_port}/blobs/{sha}");
    let rack_url = format!("http://127.0.0.1:{http_port}/blobs/{sha}");
    // Until the prefetch is done (the first open would fetch it anyway): at most 60 s.
    let t0 = std::time::Instant::now();
    let rack_answers = loop {
        match download(&reqwest::Client::new(), &rack_url, &want).await {
            Ok(_) => break Ok(()),
            Err(e) if t0.elapsed() > Duration::from_secs(60) => {
                break Err(format!("the rack does not serve {rack_url}: {e}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    if let Err(why) = &rack_answers {
        eprintln!("== SKIPPING the rack's HTTP rows: {why}");
    }
    let pid = cluster.rack("bf").map(|r| r.pid).unwrap_or(rack.pid);
    f.rss_idle_kib = crate::netns::rss_kib(pid);
    let top = o.http_clients.iter().copied().max().unwrap_or(0);
    for &clients in &o.http_clients {
        eprintln!("== HTTP, {clients} clients × {} downloads", o.http_rounds);
        let nginx_rate = match &nginx {
            Ok(_) => Ok(
                http_case(&nginx_url, clients, o.http_rounds, want.clone(), max, None)
                    .await
                    .0,
            ),
            Err(e) => Err(format!("{e:#}")),
        };
        let rack_rate = match &rack_answers {
            Ok(()) => {
                let sample = (clients == top).then_some(pid);
                let (r, peak) =
                    http_case(&rack_url, clients, o.http_rounds, want.clone(), max, sample).await;
                if clients == top {
                    f.rss_peak_kib = peak;
                    f.rss_clients = clients;
                }
                Ok(r)
            }
            Err(why) => Err(why.clone()),
        };
        f.http.push(HttpRow {
            clients,
            rack: rack_rate,
            nginx: nginx_rate,
        });
    }
    if let Ok(p) = nginx {
        p.stop().await;
    }
    drop(cluster);
    Ok(f)
}

/// Every TFTP case, each against the rack and then against tftpd-hpa (when running).
async fn tftp_rows(
    o: &BootFilesOpts,
    want: &Arc<Vec<u8>>,
    rack: SocketAddr,
    hpa: Option<SocketAddr>,
    max: Duration,
) -> Vec<TftpRow> {
    let mut rows = Vec::new();
    for blksize in [1468u16, 8192] {
        for windowsize in [None, Some(16u16)] {
            for &clients in &o.tftp_clients {
                let case = TftpCase {
                    blksize,
                    windowsize,
                    clients,
                };
                eprintln!(
                    "== TFTP blksize {blksize}{}, {clients} clients",
                    windowsize
                        .map(|w| format!(", windowsize {w}"))
                        .unwrap_or_default()
                );
                let rack_rate = tftp_case(rack, case, want.clone(), max).await;
                let hpa_rate = match hpa {
                    Some(addr) => Some(tftp_case(addr, case, want.clone(), max).await),
                    None => None,
                };
                rows.push(TftpRow {
                    blksize,
                    windowsize,
                    clients,
                    rack: rack_rate,
                    hpa: hpa_rate,
                });
            }
        }
    }
    rows
}

/// `a / b` as a ratio string, or "-" when either is missing or zero.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a > 0.0 && b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

/// A rate cell: MiB/s, with the failures if any.
fn cell(r: &Rate) -> String {
    let mut s = format!("{:.1}", r.mib_s());
    if r.no_window {
        s.push('*');
    }
    if r.timeouts > 0 {
        s.push_str(&format!(" ({} t/o)", r.timeouts));
    }
    if r.failed > 0 {
        s.push_str(&format!(" ({} failed)", r.failed));
    }
    s
}

/// Prints the tables.
pub fn report(o: &BootFilesOpts, f: &BootFilesFigures, profile: &str) {
    println!();
    println!(
        "ingot-bench --boot-files: a {} MiB random file on loopback, same machine, same run ({profile})",
        o.size_mib
    );
    println!("TFTP (one client implementation for both: ingot_rack::boot::tftp::client; every byte checked)");
    println!(
        "  {:<30} {:>7}  {:>16}  {:>16}  {:>7}",
        "case", "clients", "ingot-rack MiB/s", "tftpd-hpa MiB/s", "ratio"
    );
    let mut notes = Vec::new();
    for r in &f.tftp {
        let case = format!(
            "blksize {}{}",
            r.blksize,
            r.windowsize
                .map(|w| format!(", windowsize {w}"))
                .unwrap_or_default()
        );
        let hpa = r.hpa.as_ref().map(cell).unwrap_or_else(|| "-".into());
        println!(
            "  {:<30} {:>7}  {:>16}  {:>16}  {:>7}",
            case,
            r.clients,
            cell(&r.rack),
            hpa,
            ratio(Some(r.rack.mib_s()), r.hpa.as_ref().map(|h| h.mib_s()))
        );
        for (who, rate) in [("ingot-rack", Some(&r.rack)), ("tftpd-hpa", r.hpa.as_ref())] {
            if let Some(e) = rate.and_then(|r| r.error.as_ref()) {
                notes.push(format!("{who}, {case}, {} clients: {e}", r.clients));
            }
        }
    }
    if f.tftp
        .iter()
        .any(|r| r.hpa.as_ref().is_some_and(|h| h.no_window))
    {
        println!("  * the server left windowsize out of its OACK (tftpd-hpa 5.2 has no RFC 7440): one block per ACK");
    }
    if f.tftp
        .iter()
        .any(|r| r.rack.timeouts > 0 || r.hpa.as_ref().is_some_and(|h| h.timeouts > 0))
    {
        println!("  t/o: 1 s timeouts the clients waited out (a lost datagram or a stalled server; each costs 1 s)");
    }
    println!("HTTP (one reqwest client, keep-alive, bodies streamed and checked; {} downloads per client)", o.http_rounds);
    println!(
        "  {:<30} {:>7}  {:>16}  {:>16}  {:>7}",
        "case", "clients", "ingot-rack MiB/s", "nginx MiB/s", "ratio"
    );
    for r in &f.http {
        let show = |x: &Result<Rate, String>| match x {
            Ok(r) => cell(r),
            Err(_) => "skipped".into(),
        };
        println!(
            "  {:<30} {:>7}  {:>16}  {:>16}  {:>7}",
            "GET /blobs/<sha256>",
            r.clients,
            show(&r.rack),
            show(&r.nginx),
            ratio(
                r.rack.as_ref().ok().map(|x| x.mib_s()),
                r.nginx.as_ref().ok().map(|x| x.mib_s())
            )
        );
        for (who, x) in [("ingot-rack", &r.rack), ("nginx", &r.nginx)] {
            match x {
                Ok(rate) => {
                    if let Some(e) = &rate.error {
                        notes.push(format!("{who}, HTTP, {} clients: {e}", r.clients));
                    }
                }
                Err(why) => {
                    notes.push(format!("{who}, HTTP, {} clients skipped: {why}", r.clients))
                }
            }
        }
    }
    if f.rss_clients > 0 {
        println!(
            "  ingot-rack RSS: {:.1} MiB idle, at most {:.1} MiB during the {}-client run",
            f.rss_idle_kib as f64 / 1024.0,
            f.rss_peak_kib as f64 / 1024.0,
            f.rss_clients
        );
    } else {
        println!(
            "  ingot-rack RSS: {:.1} MiB idle (no HTTP run against the rack)",
            f.rss_idle_kib as f64 / 1024.0
        );
    }
    notes.sort();
    notes.dedup();
    for n in notes {
        println!("  note: {n}");
    }
}
