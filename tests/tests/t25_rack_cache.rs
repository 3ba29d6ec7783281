//! The rack's image cache through the whole stack: 3 regions and a rack serving a boot interface (the
//! root end of a veth pair this test creates, `ingot_tests::netns`).
//!
//! `an_image_survives_its_region_and_a_corrupt_cache_copy`: a ramdisk is uploaded with `ingot images
//! upload` to region 1 (acknowledged once a majority holds it), region 1 is SIGKILLed, then a New machine
//! in the rack's zone makes the region tell the rack to hold that ramdisk (`CacheWanted`); the rack
//! fetches it from a surviving region and serves the kernel over HTTP (`/blobs/<sha256>`) with the right
//! bytes. Then the rack's cached copy is overwritten on disk: the next download is the right bytes again
//! (re-verified, deleted, fetched again), never the corrupt ones, and the rack's log says what it found.
//!
//! Needs root (a veth pair); skipped elsewhere unless under CI.

use ingot_launch::RackBoot;
use ingot_tests::netns::{self, End, Lab};
use ingot_tests::{ingot, wait_racks_connected, RackLogsOnPanic, TestCluster};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The rack's address on its boot network (the root end of the veth pair).
const BOOT_ADDR: &str = "10.25.0.1";

/// SHA-256 of `bytes` as 64 hex digits (coreutils' sha256sum: the test does not share the rack's code).
fn sha256(dir: &Path, bytes: &[u8]) -> String {
    let p = dir.join("to-hash");
    std::fs::write(&p, bytes).unwrap();
    let out = Command::new("sha256sum")
        .arg(&p)
        .output()
        .expect("sha256sum");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Bytes `n` long, distinct per `seed`, not compressible into a pattern a broken server could fake.
fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// GETs `url` until it answers 200 (at most `within`); the body.
async fn get_ok(http: &reqwest::Client, url: &str, within: Duration) -> Vec<u8> {
    let t0 = Instant::now();
    let mut last = String::new();
    while t0.elapsed() < within {
        match http.get(url).send().await {
            Ok(r) if r.status().is_success() => match r.bytes().await {
                Ok(b) => return b.to_vec(),
                Err(e) => last = format!("body: {e}"),
            },
            Ok(r) => last = format!("status {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("GET {url} gave no 200 within {within:?}; last: {last}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_survives_its_region_and_a_corrupt_cache_copy() {
    if !netns::ready("t25_rack_cache", &["ip", "sha256sum"]) {
        return;
    }
    let lab = Lab::new();
    let cl = lab.netns("cl").unwrap();
    let link = lab
        .root_veth(
            "c",
            Some(&format!("{BOOT_ADDR}/24")),
            &cl,
            End::new("eth0", None),
        )
        .unwrap();
    let tc = TestCluster::start("t25_rack_cache", 3, &[]).await.unwrap();
    let _logs = RackLogsOnPanic(&tc.cluster);
    let http_port = 20_000 + u16::from_str_radix(&netns::random_hex(4), 16).unwrap_or(0) % 20_000;
    let rack = tc
        .cluster
        .add_boot_rack(
            "r1",
            "z1",
            RackBoot {
                interfaces: vec![link.name.clone()],
                http_port: Some(http_port),
                ..RackBoot::default()
            },
        )
        .await
        .unwrap();
    wait_racks_connected(&tc.clients(), &["r1"], Duration::from_secs(20))
        .await
        .unwrap();

    // A ramdisk uploaded to region 1 only.
    let kernel = bytes(1, 3 * 1024 * 1024 + 17);
    let initrd = bytes(2, 1024 * 1024 + 5);
    let (kp, ip) = (tc.dir.join("kernel"), tc.dir.join("initrd"));
    std::fs::write(&kp, &kernel).unwrap();
    std::fs::write(&ip, &initrd).unwrap();
    let kernel_sha = sha256(&tc.dir, &kernel);
    let region1 = tc.cluster.regions()[0].endpoint();
    ingot(
        &tc,
        &[
            "--endpoint",
            &region1,
            "images",
            "upload",
            "t25-ramdisk",
            "--kind",
            "ramdisk",
            "--arch",
            "amd64",
            "--kernel",
            kp.to_str().unwrap(),
            "--initrd",
            ip.to_str().unwrap(),
        ],
    );
    tc.cluster.kill(1, libc::SIGKILL).unwrap();

    // A New amd64 machine in the rack's zone: the rack is told to hold the amd64 ramdisk.
    let mut m = ingot_tests::machine(25, 1);
    m.zone = "z1".into();
    m.arch = "amd64/generic".into();
    let clients = tc.clients();
    ingot_client::retry_unavailable(
        || {
            let mut c = clients.machines();
            let m = m.clone();
            async move { c.create_machine(m).await }
        },
        Duration::from_secs(20),
    )
    .await
    .unwrap();

    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://{BOOT_ADDR}:{http_port}/blobs/{kernel_sha}");
    let got = get_ok(&http, &url, Duration::from_secs(60)).await;
    assert_eq!(got.len(), kernel.len());
    assert!(got == kernel, "the rack served other bytes than the kernel");

    // The cached copy corrupted on disk (same length): the next download is the right bytes again.
    let cached = rack.dir.join("cache").join(&kernel_sha);
    assert!(cached.is_file(), "{} is not in the cache", cached.display());
    let corrupt = vec![0x5a_u8; kernel.len()];
    std::fs::write(&cached, &corrupt).unwrap();
    let got = get_ok(&http, &url, Duration::from_secs(30)).await;
    assert!(got != corrupt, "the rack served the corrupt copy");
    assert!(got == kernel, "the rack served other bytes than the kernel");
    assert_eq!(sha256(&tc.dir, &got), kernel_sha);
    let log = std::fs::read_to_string(&rack.log).unwrap();
    assert!(
        log.contains("cached blob is corrupt"),
        "the rack's log does not say it found the corrupt copy"
    );
}
