//! The TFTP server on loopback (an ephemeral port) against real clients — curl (with and without
//! `--tftp-blksize`), atftp (blksize 1468, windowsize 8) and tftp-hpa (octet and netascii) — comparing the
//! sha256 of what they fetched; and against a hand-built client (the crate's codec) for what no client
//! does on request: path traversal, absolute paths and a symlink out of the root refused, a WRQ refused,
//! 50 concurrent downloads, a transfer abandoned mid-way (by ERROR and by silence) freeing its session,
//! "busy" past the session bound, block numbers rolling over with a window, and a window sent again
//! after a timeout or from the first block a client did not acknowledge; and with the crate's own client
//! (`tftp::client`): the transfer hook's events, and bootloader files served from the image cache (a
//! fake [`Bootloaders`]) before the root.
//!
//! Peer policy: a missing client (install them with `scripts/install-test-peers.sh`) fails the test under
//! CI (`CI` or `INGOT_REQUIRE_PEERS` set) and skips it elsewhere, printing why.

use ingot_common::image::BlobId;
use ingot_rack::boot::tftp::client::{fetch, FetchError, FetchOptions};
use ingot_rack::boot::tftp::codec::{self, ErrorCode, Mode, Options, Packet, Request};
use ingot_rack::boot::tftp::server::{
    run, BootloaderFile, Bootloaders, FileOrigin, OpenFuture, TftpConfig, TftpCounters,
    TransferEvent, TransferHook, TransferOutcome,
};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::watch;

/// A running server: its port, counters, and the way to stop it.
struct Running {
    addr: SocketAddr,
    counters: Arc<TftpCounters>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The served root (removed on drop).
    dir: tempfile::TempDir,
}

impl Running {
    async fn start(tweak: impl FnOnce(&mut TftpConfig)) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let mut config = TftpConfig::new(dir.path().join("root"));
        std::fs::create_dir(&config.root).unwrap();
        tweak(&mut config);
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let counters = Arc::new(TftpCounters::default());
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(run(socket, config, counters.clone(), rx));
        Running {
            addr,
            counters,
            stop,
            task,
            dir,
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Writes `len` random bytes to `name` under the root.
    fn random_file(&self, name: &str, len: usize) -> PathBuf {
        use rand::RngCore;
        let mut data = vec![0u8; len];
        rand::thread_rng().fill_bytes(&mut data);
        let p = self.root().join(name);
        std::fs::write(&p, data).unwrap();
        p
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops on shutdown")
            .unwrap()
            .unwrap();
    }

    /// Waits (generously) until no transfer runs.
    async fn idle(&self) {
        for _ in 0..300 {
            if self.counters.active.load(Ordering::Relaxed) == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{} transfers still running",
            self.counters.active.load(Ordering::Relaxed)
        );
    }
}

/// The client binary `name`, or `None` (skip) when missing outside CI.
fn peer(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        let reason = format!(
            "TFTP client {name} is not installed (scripts/install-test-peers.sh installs curl, atftp and tftp-hpa)"
        );
        if std::env::var_os("CI").is_some() || std::env::var_os("INGOT_REQUIRE_PEERS").is_some() {
            panic!("required test peer missing in CI: {reason}");
        }
        eprintln!("SKIPPED: {reason}");
    }
    found
}

fn sha256(p: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(p)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Runs a client to completion (bounded), failing with its output; returns its stdout and stderr.
async fn client(program: &Path, args: &[&str]) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(program)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{} {} timed out", program.display(), args.join(" ")))
    .unwrap();
    assert!(
        out.status.success(),
        "{} {} failed: {}{}",
        program.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_downloads_5_mib() {
    let Some(curl) = peer("curl") else { return };
    let s = Running::start(|_| {}).await;
    let src = s.random_file("big.bin", 5 << 20);
    let url = format!("tftp://{}/big.bin", s.addr);
    for (i, extra) in [vec![], vec!["--tftp-blksize", "1468"]].iter().enumerate() {
        let out = s.out(&format!("curl{i}"));
        let mut args = vec!["-sS", "--fail", "-o", out.to_str().unwrap()];
        args.extend(extra.iter().copied());
        args.push(&url);
        client(&curl, &args).await;
        assert_eq!(sha256(&out), sha256(&src), "curl {extra:?}");
    }
    // A missing file: curl exits with 68 (CURLE_TFTP_NOTFOUND) on the server's ERROR 1, sent from the
    // transfer's port.
    let out = tokio::process::Command::new(&curl)
        .args([
            "-sS",
            "-o",
            "/dev/null",
            &format!("tftp://{}/missing", s.addr),
        ])
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(68), "{err}");
    s.idle().await;
    assert_eq!(s.counters.completed.load(Ordering::Relaxed), 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atftp_blksize_and_windowsize() {
    let Some(atftp) = peer("atftp") else { return };
    let s = Running::start(|_| {}).await;
    let src = s.random_file("big.bin", 5 << 20);
    let out = s.out("atftp");
    let port = s.addr.port().to_string();
    let trace = client(
        &atftp,
        &[
            "--option",
            "blksize 1468",
            "--option",
            "windowsize 8",
            "--trace",
            "-g",
            "-r",
            "big.bin",
            "-l",
            out.to_str().unwrap(),
            "127.0.0.1",
            &port,
        ],
    )
    .await;
    let oack = trace
        .lines()
        .find(|l| l.starts_with("received OACK"))
        .unwrap_or_else(|| panic!("atftp received no OACK:\n{trace}"));
    assert!(
        oack.contains("windowsize: 8") && oack.contains("blksize: 1468"),
        "{oack}"
    );
    assert_eq!(sha256(&out), sha256(&src));
    s.idle().await;
    assert_eq!(s.counters.completed.load(Ordering::Relaxed), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_hpa_octet_and_netascii() {
    let Some(tftp) = peer("tftp") else { return };
    let s = Running::start(|_| {}).await;
    let src = s.random_file("big.bin", 5 << 20);
    let text = "line one\nline two\r\nthree\rfour\n".repeat(1000);
    std::fs::write(s.root().join("t.txt"), &text).unwrap();
    let port = s.addr.port().to_string();
    let out = s.out("hpa.bin");
    let get = format!("get big.bin {}", out.display());
    let mut args = vec!["-m", "binary", "127.0.0.1", &port, "-c"];
    args.extend(get.split(' '));
    client(&tftp, &args).await;
    assert_eq!(sha256(&out), sha256(&src));
    // netascii: the server sends CR LF / CR NUL, the client turns them back into the file's bytes.
    let out = s.out("hpa.txt");
    let get = format!("get t.txt {}", out.display());
    let mut args = vec!["-m", "netascii", "127.0.0.1", &port, "-c"];
    args.extend(get.split(' '));
    client(&tftp, &args).await;
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_curl_downloads() {
    let Some(curl) = peer("curl") else { return };
    let s = Running::start(|_| {}).await;
    let src = s.random_file("f.bin", 256 << 10);
    let want = sha256(&src);
    let url = format!("tftp://{}/f.bin", s.addr);
    let mut all = tokio::task::JoinSet::new();
    for i in 0..50 {
        let out = s.out(&format!("c{i}"));
        let (curl, url) = (curl.clone(), url.clone());
        all.spawn(async move {
            let blk = if i % 2 == 0 { "512" } else { "1468" };
            client(
                &curl,
                &[
                    "-sS",
                    "--fail",
                    "--tftp-blksize",
                    blk,
                    "-o",
                    out.to_str().unwrap(),
                    &url,
                ],
            )
            .await;
            out
        });
    }
    while let Some(out) = all.join_next().await {
        assert_eq!(sha256(&out.unwrap()), want);
    }
    s.idle().await;
    assert_eq!(s.counters.completed.load(Ordering::Relaxed), 50);
    s.stop().await;
}

/// A hand-built client: sends a request from a fresh socket and returns it with the first reply and the
/// address it came from (the transfer's port, or the server's for an immediate refusal).
async fn request(
    server: SocketAddr,
    write: bool,
    filename: &str,
    options: Options,
) -> (UdpSocket, Vec<u8>, SocketAddr) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let r = Request {
        filename: filename.into(),
        mode: Mode::Octet,
        options,
    };
    sock.send_to(&codec::build_request(write, &r), server)
        .await
        .unwrap();
    let mut buf = vec![0u8; 70_000];
    let (n, from) = tokio::time::timeout(Duration::from_secs(10), sock.recv_from(&mut buf))
        .await
        .expect("the server answers")
        .unwrap();
    buf.truncate(n);
    (sock, buf, from)
}

fn error_code(reply: &[u8]) -> (u16, String) {
    match codec::parse(reply).unwrap() {
        Packet::Error { code, message } => (code.number(), message),
        other => panic!("expected an ERROR, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_absolute_symlink_and_writes_refused() {
    let s = Running::start(|_| {}).await;
    s.random_file("ok.bin", 100);
    std::fs::create_dir(s.root().join("sub")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", s.root().join("passwd-link")).unwrap();
    std::os::unix::fs::symlink("/etc", s.root().join("etc-link")).unwrap();
    // A symlink that stays inside the root is served.
    std::os::unix::fs::symlink("ok.bin", s.root().join("inside-link")).unwrap();
    let outside = s.dir.path().join("secret");
    std::fs::File::create(&outside)
        .unwrap()
        .write_all(b"x")
        .unwrap();
    for name in [
        "../etc/passwd",
        "/etc/passwd",
        "passwd-link",
        "etc-link/passwd",
        "sub/../../secret",
        "../secret",
    ] {
        let (_, reply, _) = request(s.addr, false, name, Options::default()).await;
        let (code, msg) = error_code(&reply);
        assert_eq!(code, ErrorCode::AccessViolation.number(), "{name}: {msg}");
    }
    let (_, reply, _) = request(s.addr, false, "missing", Options::default()).await;
    assert_eq!(error_code(&reply).0, ErrorCode::FileNotFound.number());
    let (_, reply, _) = request(s.addr, false, "sub", Options::default()).await;
    assert_eq!(error_code(&reply).0, ErrorCode::FileNotFound.number());
    let (_, reply, _) = request(s.addr, true, "ok.bin", Options::default()).await;
    let (code, msg) = error_code(&reply);
    assert_eq!(code, 2, "{msg}");
    assert!(msg.contains("read-only"), "{msg}");
    let (_, reply, _) = request(s.addr, false, "inside-link", Options::default()).await;
    assert!(matches!(
        codec::parse(&reply).unwrap(),
        Packet::Data { block: 1, .. }
    ));
    // An out-of-range option is refused with code 8.
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(b"\x00\x01ok.bin\x00octet\x00blksize\x004\x00", s.addr)
        .await
        .unwrap();
    let mut buf = [0u8; 600];
    let n = sock.recv(&mut buf).await.unwrap();
    let (code, msg) = error_code(&buf[..n]);
    assert_eq!(code, 8);
    assert!(msg.contains("blksize"), "{msg}");
    assert_eq!(s.counters.access_denied.load(Ordering::Relaxed), 6);
    assert_eq!(s.counters.write_refused.load(Ordering::Relaxed), 1);
    s.stop().await;
}

/// Receives the next DATA on `sock`, returning its block number and payload.
async fn data(sock: &UdpSocket) -> (u16, Vec<u8>) {
    let mut buf = vec![0u8; 70_000];
    let n = tokio::time::timeout(Duration::from_secs(10), sock.recv(&mut buf))
        .await
        .expect("DATA arrives")
        .unwrap();
    match codec::parse(&buf[..n]).unwrap() {
        Packet::Data { block, data } => (block, data.to_vec()),
        other => panic!("expected DATA, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_transfers_free_their_session() {
    let s = Running::start(|c| {
        c.initial_timeout = Duration::from_millis(100);
        c.max_timeout = Duration::from_millis(200);
        c.max_tries = 3;
        c.max_sessions = 1;
    })
    .await;
    s.random_file("f.bin", 100_000);
    // Silence: the client takes two blocks and stops answering.
    let (sock, first, from) = request(s.addr, false, "f.bin", Options::default()).await;
    sock.connect(from).await.unwrap();
    assert!(matches!(
        codec::parse(&first).unwrap(),
        Packet::Data { block: 1, .. }
    ));
    sock.send(&codec::build_ack(1)).await.unwrap();
    assert_eq!(data(&sock).await.0, 2);
    assert_eq!(s.counters.active.load(Ordering::Relaxed), 1);
    // The one session is taken: the next client is told the server is busy.
    let (_, reply, _) = request(s.addr, false, "f.bin", Options::default()).await;
    let (code, msg) = error_code(&reply);
    assert_eq!(code, 0);
    assert!(msg.contains("busy"), "{msg}");
    s.idle().await;
    assert_eq!(s.counters.timed_out.load(Ordering::Relaxed), 1);
    assert!(
        s.counters.retransmits.load(Ordering::Relaxed) >= 1,
        "block 2 was sent again"
    );
    // An ERROR from the client ends the transfer at once.
    let (sock, _, from) = request(s.addr, false, "f.bin", Options::default()).await;
    sock.connect(from).await.unwrap();
    sock.send(&codec::build_error(ErrorCode::NotDefined, "user cancelled"))
        .await
        .unwrap();
    s.idle().await;
    assert_eq!(s.counters.client_aborted.load(Ordering::Relaxed), 1);
    assert_eq!(s.counters.busy.load(Ordering::Relaxed), 1);
    // The session is free again.
    let (_, first, _) = request(s.addr, false, "f.bin", Options::default()).await;
    assert!(matches!(
        codec::parse(&first).unwrap(),
        Packet::Data { block: 1, .. }
    ));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windowed_transfer_rolls_block_numbers_over() {
    let s = Running::start(|_| {}).await;
    // 70,000 blocks of 8 bytes: block numbers pass 65535 and wrap to 0.
    let len = 70_000 * 8 + 3;
    let src = s.random_file("roll.bin", len);
    let options = Options {
        blksize: Some(8),
        tsize: Some(0),
        windowsize: Some(16),
        timeout_s: None,
    };
    let (sock, oack, from) = request(s.addr, false, "roll.bin", options).await;
    sock.connect(from).await.unwrap();
    let Packet::Oack(o) = codec::parse(&oack).unwrap() else {
        panic!("expected an OACK")
    };
    assert_eq!(o.blksize, Some(8));
    assert_eq!(o.tsize, Some(len as u64));
    assert_eq!(o.windowsize, Some(16));
    sock.send(&codec::build_ack(0)).await.unwrap();
    let mut got = Vec::with_capacity(len);
    let mut expect: u16 = 1;
    let mut in_window = 0;
    let mut wrapped = false;
    loop {
        let (block, d) = data(&sock).await;
        assert_eq!(block, expect, "blocks arrive in order on loopback");
        let last = d.len() < 8;
        got.extend_from_slice(&d);
        in_window += 1;
        if in_window == 16 || last {
            sock.send(&codec::build_ack(block)).await.unwrap();
            in_window = 0;
        }
        if block == 0 {
            wrapped = true;
        }
        if last {
            break;
        }
        expect = expect.wrapping_add(1);
    }
    assert!(wrapped, "block numbers rolled over");
    assert_eq!(got, std::fs::read(&src).unwrap());
    s.idle().await;
    assert_eq!(s.counters.completed.load(Ordering::Relaxed), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_blocks_are_sent_again_from_the_first_unacknowledged() {
    let s = Running::start(|c| {
        c.initial_timeout = Duration::from_millis(200);
        c.max_timeout = Duration::from_millis(400);
    })
    .await;
    // 12 full blocks of 8 bytes and a last one of 4.
    let src = s.random_file("w.bin", 100);
    let options = Options {
        blksize: Some(8),
        windowsize: Some(4),
        ..Options::default()
    };
    let (sock, oack, from) = request(s.addr, false, "w.bin", options).await;
    sock.connect(from).await.unwrap();
    assert!(matches!(codec::parse(&oack).unwrap(), Packet::Oack(_)));
    sock.send(&codec::build_ack(0)).await.unwrap();
    let mut window = Vec::new();
    for _ in 0..4 {
        window.push(data(&sock).await.0);
    }
    assert_eq!(window, [1, 2, 3, 4]);
    // Silence: the whole window comes again after the timeout.
    window.clear();
    for _ in 0..4 {
        window.push(data(&sock).await.0);
    }
    assert_eq!(window, [1, 2, 3, 4]);
    // "Blocks 3 and 4 were lost": the client acknowledges 2, the server goes on from 3.
    sock.send(&codec::build_ack(2)).await.unwrap();
    window.clear();
    for _ in 0..4 {
        window.push(data(&sock).await.0);
    }
    assert_eq!(window, [3, 4, 5, 6]);
    let mut got: Vec<u8> = std::fs::read(&src).unwrap()[..48].to_vec();
    sock.send(&codec::build_ack(6)).await.unwrap();
    for expect in 7..=13u16 {
        let (block, d) = data(&sock).await;
        assert_eq!(block, expect);
        got.extend_from_slice(&d);
        if block == 10 || block == 13 {
            sock.send(&codec::build_ack(block)).await.unwrap();
        }
    }
    assert_eq!(got, std::fs::read(&src).unwrap());
    s.idle().await;
    assert_eq!(s.counters.completed.load(Ordering::Relaxed), 1);
    assert!(s.counters.retransmits.load(Ordering::Relaxed) >= 6);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_windows_are_lowered_in_the_oack() {
    let s = Running::start(|_| {}).await;
    s.random_file("f.bin", 1000);
    for (blksize, asked, granted) in [(8, 65535, 4096), (65464, 100, 16), (1468, 8, 8)] {
        let options = Options {
            blksize: Some(blksize),
            windowsize: Some(asked),
            ..Options::default()
        };
        let (sock, oack, from) = request(s.addr, false, "f.bin", options).await;
        let Packet::Oack(o) = codec::parse(&oack).unwrap() else {
            panic!("expected an OACK")
        };
        assert_eq!(o.windowsize, Some(granted), "blksize {blksize}");
        sock.send_to(&codec::build_error(ErrorCode::NotDefined, "done"), from)
            .await
            .unwrap();
    }
    s.idle().await;
    assert_eq!(s.counters.client_aborted.load(Ordering::Relaxed), 3);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_sharing_counters_share_the_session_bound() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.bin"), vec![7u8; 10_000]).unwrap();
    let counters = Arc::new(TftpCounters::default());
    let (stop, rx) = watch::channel(false);
    let mut addrs = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let mut config = TftpConfig::new(dir.path());
        config.max_sessions = 1;
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        addrs.push(socket.local_addr().unwrap());
        tasks.push(tokio::spawn(run(
            socket,
            config,
            counters.clone(),
            rx.clone(),
        )));
    }
    // A transfer on the first server takes the one slot...
    let (sock, first, from) = request(addrs[0], false, "f.bin", Options::default()).await;
    assert!(matches!(
        codec::parse(&first).unwrap(),
        Packet::Data { block: 1, .. }
    ));
    // ...so the second server is busy.
    let (_, reply, _) = request(addrs[1], false, "f.bin", Options::default()).await;
    assert!(error_code(&reply).1.contains("busy"));
    sock.send_to(&codec::build_error(ErrorCode::NotDefined, "done"), from)
        .await
        .unwrap();
    stop.send(true).unwrap();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(counters.active.load(Ordering::Relaxed), 0);
}

/// A free UDP port on loopback (bound and released; the race with another process is tolerated here).
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `ingot-rack run --boot-interface lo --tftp-root DIR` serves DIR over TFTP on lo's address (the rack
/// has no region to talk to; TFTP does not need one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingot_rack_run_serves_its_tftp_root() {
    let Some(curl) = peer("curl") else { return };
    if !rustix::process::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "ingot_rack_run_serves_its_tftp_root needs root (SO_BINDTODEVICE on lo) under CI"
        );
        eprintln!(
            "SKIPPED: ingot_rack_run_serves_its_tftp_root needs root (SO_BINDTODEVICE on lo)"
        );
        return;
    }
    let ca = ingot_common::pki::ClusterCa::generate("t").unwrap();
    let d = tempfile::tempdir().unwrap();
    let dd = crate::failover::rack_dir(&ca, d.path(), "127.0.0.1:1");
    let root = d.path().join("tftp");
    std::fs::create_dir(&root).unwrap();
    let mut data = vec![0u8; 300_000];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut data);
    std::fs::write(root.join("snponly.efi"), &data).unwrap();
    let tftp_port = free_udp_port().to_string();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ingot-rack"))
        .arg("run")
        .arg("--data-dir")
        .arg(dd.root())
        .args(["--boot-interface", "lo"])
        .args(["--dhcp-port", &free_udp_port().to_string()])
        .args(["--proxy-dhcp-port", &free_udp_port().to_string()])
        .arg("--tftp-root")
        .arg(&root)
        .args(["--tftp-port", &tftp_port])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("ingot-rack prints its running line")
        .unwrap()
        .unwrap_or_default();
    assert!(line.contains("running"), "{line}");
    let out = d.path().join("got.efi");
    client(
        &curl,
        &[
            "-sS",
            "--fail",
            "-o",
            out.to_str().unwrap(),
            &format!("tftp://127.0.0.1:{tftp_port}/snponly.efi"),
        ],
    )
    .await;
    assert_eq!(std::fs::read(&out).unwrap(), data);
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_client_timeouts_are_declined() {
    let s = Running::start(|_| {}).await;
    s.random_file("f.bin", 1000);
    for (asked, granted) in [(2, Some(2)), (10, Some(10)), (255, None)] {
        let options = Options {
            timeout_s: Some(asked),
            blksize: Some(1024),
            ..Options::default()
        };
        let (sock, oack, from) = request(s.addr, false, "f.bin", options).await;
        let Packet::Oack(o) = codec::parse(&oack).unwrap() else {
            panic!("expected an OACK")
        };
        assert_eq!(o.timeout_s, granted, "timeout {asked}");
        sock.send_to(&codec::build_error(ErrorCode::NotDefined, "done"), from)
            .await
            .unwrap();
    }
    s.idle().await;
    s.stop().await;
}

/// Collects the transfer hook's events.
fn recorder() -> (TransferHook, Arc<std::sync::Mutex<Vec<TransferEvent>>>) {
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = events.clone();
    let hook = TransferHook::new(move |e| sink.lock().unwrap().push(e));
    (hook, events)
}

/// The transfer hook is told when a transfer starts and finishes (with the bytes acknowledged), when the
/// client aborts it mid-way, and when a request is refused; the crate's client fetches with a window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_hook_reports_start_finish_abort_and_refusal() {
    let (hook, events) = recorder();
    let s = Running::start(|c| c.on_transfer = Some(hook)).await;
    let path = s.random_file("f.bin", 100_000);
    let want = std::fs::read(&path).unwrap();
    let mut got = Vec::new();
    let opts = FetchOptions::new(Options {
        blksize: Some(1468),
        windowsize: Some(16),
        tsize: Some(0),
        ..Options::default()
    });
    let fetched = fetch(s.addr, "f.bin", &opts, |off, d| {
        assert_eq!(off as usize, got.len());
        got.extend_from_slice(d)
    })
    .await
    .unwrap();
    assert_eq!(got, want);
    assert_eq!(fetched.bytes, 100_000);
    assert_eq!(fetched.accepted.windowsize, Some(16));
    assert_eq!(fetched.accepted.tsize, Some(100_000));
    s.idle().await;
    {
        let e = events.lock().unwrap();
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(e[0].outcome, TransferOutcome::Started);
        assert_eq!(e[0].file, "f.bin");
        assert_eq!(e[0].origin, Some(FileOrigin::Root));
        assert_eq!(e[0].size, Some(100_000));
        assert_eq!(e[0].bytes, 0);
        assert_eq!(e[1].outcome, TransferOutcome::Finished);
        assert_eq!(e[1].bytes, 100_000);
        assert_eq!(e[1].client, e[0].client);
        assert!(e[1].client.ip().is_loopback());
    }
    // Refused: no such file.
    let err = fetch(s.addr, "missing.efi", &opts, |_, _| {})
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Refused { code: 1, .. }), "{err}");
    // Aborted: the client takes one block and sends an ERROR.
    let (sock, first, from) = request(s.addr, false, "f.bin", Options::default()).await;
    sock.connect(from).await.unwrap();
    assert!(matches!(
        codec::parse(&first).unwrap(),
        Packet::Data { block: 1, .. }
    ));
    sock.send(&codec::build_ack(1)).await.unwrap();
    assert_eq!(data(&sock).await.0, 2);
    sock.send(&codec::build_error(ErrorCode::NotDefined, "user cancelled"))
        .await
        .unwrap();
    s.idle().await;
    let e = events.lock().unwrap().clone();
    assert_eq!(e.len(), 5, "{e:?}");
    assert!(
        matches!(&e[2].outcome, TransferOutcome::Refused { reason } if reason.contains("not found")),
        "{e:?}"
    );
    assert_eq!((e[2].origin, e[2].size), (None, None));
    assert_eq!(e[3].outcome, TransferOutcome::Started);
    assert!(
        matches!(&e[4].outcome, TransferOutcome::Aborted { reason } if reason.contains("user cancelled")),
        "{e:?}"
    );
    assert_eq!(e[4].bytes, 512, "block 1 was acknowledged, block 2 was not");
    s.stop().await;
}

/// Bootloader files by name, like the image cache: a map from name to a file on disk.
#[derive(Debug)]
struct FakeBootloaders(std::collections::HashMap<String, Result<(PathBuf, BlobId), String>>);

impl Bootloaders for FakeBootloaders {
    fn open<'a>(&'a self, name: &'a str) -> OpenFuture<'a> {
        Box::pin(async move {
            Some(self.0.get(name)?.clone().map(|(path, blob)| {
                let file = std::fs::File::open(path).unwrap();
                let len = file.metadata().unwrap().len();
                BootloaderFile {
                    file,
                    len,
                    blob,
                    hold: None,
                }
            }))
        })
    }
}

/// A bootloader file the cache knows is served from the cache before the root's file of the same name;
/// one the cache knows but cannot serve comes from the root; the rest from the root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootloaders_from_the_cache_come_before_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let cached = dir.path().join("blob");
    std::fs::write(&cached, vec![7u8; 3000]).unwrap();
    let blob = BlobId([9; 32]);
    let fake = FakeBootloaders(
        [
            ("snponly.efi".to_string(), Ok((cached.clone(), blob))),
            ("broken.efi".to_string(), Err("still fetching".to_string())),
        ]
        .into_iter()
        .collect(),
    );
    let (hook, events) = recorder();
    let s = Running::start(|c| {
        c.bootloaders = Some(Arc::new(fake));
        c.on_transfer = Some(hook);
    })
    .await;
    s.random_file("snponly.efi", 1000);
    let broken = s.random_file("broken.efi", 2000);
    let plain = s.random_file("undionly.kpxe", 4000);
    let get = |name: &'static str| async move {
        let mut got = Vec::new();
        fetch(
            s.addr,
            name,
            &FetchOptions::new(Options::default()),
            |_, d| got.extend_from_slice(d),
        )
        .await
        .unwrap();
        got
    };
    assert_eq!(get("snponly.efi").await, vec![7u8; 3000]);
    assert_eq!(get("broken.efi").await, std::fs::read(broken).unwrap());
    assert_eq!(get("undionly.kpxe").await, std::fs::read(plain).unwrap());
    s.idle().await;
    assert_eq!(s.counters.from_cache.load(Ordering::Relaxed), 1);
    let e = events.lock().unwrap().clone();
    let origins: Vec<_> = e
        .iter()
        .filter(|e| e.outcome == TransferOutcome::Finished)
        .map(|e| (e.file.clone(), e.origin))
        .collect();
    assert_eq!(
        origins,
        vec![
            ("snponly.efi".to_string(), Some(FileOrigin::Cache(blob))),
            ("broken.efi".to_string(), Some(FileOrigin::Root)),
            ("undionly.kpxe".to_string(), Some(FileOrigin::Root)),
        ]
    );
    s.stop().await;
}

/// Without --tftp-root, `ingot-rack run --boot-interface lo` serves Debian's iPXE binaries from
/// /usr/lib/ipxe (the `ipxe` package); with --no-tftp it serves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingot_rack_run_serves_usr_lib_ipxe_by_default() {
    let ipxe = Path::new("/usr/lib/ipxe/undionly.kpxe");
    if !ipxe.is_file() {
        let reason =
            "Debian's ipxe package is not installed (scripts/install-test-peers.sh installs it)";
        if std::env::var_os("CI").is_some() || std::env::var_os("INGOT_REQUIRE_PEERS").is_some() {
            panic!("required test peer missing in CI: {reason}");
        }
        eprintln!("SKIPPED: {reason}");
        return;
    }
    if !rustix::process::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "ingot_rack_run_serves_usr_lib_ipxe_by_default needs root (SO_BINDTODEVICE on lo) under CI"
        );
        eprintln!("SKIPPED: ingot_rack_run_serves_usr_lib_ipxe_by_default needs root");
        return;
    }
    let ca = ingot_common::pki::ClusterCa::generate("t").unwrap();
    let d = tempfile::tempdir().unwrap();
    let dd = crate::failover::rack_dir(&ca, d.path(), "127.0.0.1:1");
    for no_tftp in [false, true] {
        let tftp_port = free_udp_port();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ingot-rack"));
        cmd.arg("run")
            .arg("--data-dir")
            .arg(dd.root())
            .args(["--boot-interface", "lo"])
            .args(["--dhcp-port", &free_udp_port().to_string()])
            .args(["--proxy-dhcp-port", &free_udp_port().to_string()])
            .args(["--tftp-port", &tftp_port.to_string()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        if no_tftp {
            cmd.arg("--no-tftp");
        }
        let mut child = cmd.spawn().unwrap();
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("ingot-rack prints its running line")
            .unwrap()
            .unwrap_or_default();
        assert!(line.contains("running"), "{line}");
        let mut opts = FetchOptions::new(Options {
            blksize: Some(1468),
            ..Options::default()
        });
        opts.timeout = Duration::from_millis(300);
        opts.max_tries = 3;
        let mut got = Vec::new();
        let r = fetch(
            SocketAddr::from(([127, 0, 0, 1], tftp_port)),
            "undionly.kpxe",
            &opts,
            |_, d| got.extend_from_slice(d),
        )
        .await;
        if no_tftp {
            assert!(matches!(r, Err(FetchError::Silent { .. })), "{r:?}");
        } else {
            r.unwrap();
            assert_eq!(got, std::fs::read(ipxe).unwrap());
        }
        child.kill().await.unwrap();
    }
}
