//! Deploy: stream the image blob from the rack's plain HTTP cache onto the chosen disk, hashing while
//! writing, and succeed only when size and SHA-256 match what the lookup answer (over TLS) promised; then
//! add the cloud-init NoCloud seed ([`crate::seed`]).
//!
//! The blob travels over plain HTTP (the rack serves it with sendfile); its integrity comes from the
//! sha256 that arrived over the pinned TLS channel, so a tampered or truncated stream fails the deploy,
//! never boots.

use crate::cmdline::Endpoint;
use crate::http::{get_request, Download};
use crate::platform::{BlockDisk, Platform};
use crate::progress::{Ctl, Meter};
use crate::seed::{self, SeedFiles, SEED_ROOM};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Size of one write (large and aligned: the disk sees few big requests).
const CHUNK: usize = 4 << 20;
/// How long a download may go without a byte before it is retried.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the download may keep failing without progress before the deploy fails.
const STALL_BUDGET: Duration = Duration::from_secs(300);

/// What to deploy, from the lookup answer.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The rack's HTTP base.
    pub rack: Endpoint,
    /// The blob's path on it (`/blobs/<sha256>/disk`).
    pub path: String,
    /// The blob's SHA-256 (hex).
    pub sha256: String,
    /// The blob's size.
    pub size: u64,
    /// The requested disk (kernel name or serial); empty: the smallest that fits.
    pub disk: String,
    /// The NoCloud seed's files.
    pub seed: SeedFiles,
}

/// The disk to write: the one named (by kernel name or serial), else the smallest with room for the image
/// and its seed. The error says which disks there are and why none fits.
pub fn choose_disk(disks: &[BlockDisk], want: &str, size: u64) -> Result<BlockDisk, String> {
    let need = size.saturating_add(SEED_ROOM);
    let sizes = || {
        disks
            .iter()
            .map(|d| format!("{} {} MiB", d.name, d.bytes >> 20))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !want.is_empty() {
        let d = disks
            .iter()
            .find(|d| d.name == want || (!d.serial.is_empty() && d.serial == want))
            .ok_or_else(|| {
                format!(
                    "the deploy names disk '{want}', which this machine does not have (disks: {})",
                    sizes()
                )
            })?;
        if d.bytes < need {
            return Err(format!(
                "disk {} has {} MiB; the image and its seed need {} MiB: choose a larger disk",
                d.name,
                d.bytes >> 20,
                need.div_ceil(1 << 20)
            ));
        }
        return Ok(d.clone());
    }
    disks
        .iter()
        .filter(|d| d.bytes >= need)
        .min_by_key(|d| (d.bytes, d.name.clone()))
        .cloned()
        .ok_or_else(|| {
            format!(
                "no disk is large enough for the image ({} MiB plus {} MiB for its seed); disks: {}",
                size.div_ceil(1 << 20),
                SEED_ROOM >> 20,
                if disks.is_empty() { "none".to_string() } else { sizes() }
            )
        })
}

fn connect(rack: &Endpoint, path: &str, from: u64) -> std::io::Result<Download<TcpStream>> {
    let addr = (rack.host.as_str(), rack.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("the rack's address does not resolve"))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(READ_TIMEOUT))?;
    s.set_write_timeout(Some(READ_TIMEOUT))?;
    s.write_all(get_request(&rack.authority(), path, from).as_bytes())?;
    Download::start(s, from)
}

/// Streams the image onto `dev` (positioned nowhere in particular) and returns its SHA-256 (hex). Resumes
/// with `Range` after a broken connection; gives up after five minutes without progress.
pub fn stream<D: Write + Seek>(
    plan: &Plan,
    dev: &mut D,
    ctl: &Ctl,
    what: &str,
) -> Result<String, String> {
    dev.seek(SeekFrom::Start(0))
        .map_err(|e| format!("seeking the disk: {e}"))?;
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    let mut buf = vec![0u8; CHUNK];
    let mut meter = Meter::new(plan.size);
    let mut stalled_since: Option<Instant> = None;
    let mut wait = Duration::from_secs(1);
    while written < plan.size {
        if ctl.cancelled() {
            return Err("stopped: the region ended this boot".into());
        }
        let progress_before = written;
        let result = (|| -> std::io::Result<()> {
            let mut dl = connect(&plan.rack, &plan.path, written)?;
            // A server that ignored the Range starts from 0: skip what is already written.
            let mut skip = written - dl.start.min(written);
            while skip > 0 {
                let k = dl.read(&mut buf[..(skip.min(CHUNK as u64) as usize)])?;
                if k == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                skip -= k as u64;
            }
            loop {
                let mut fill = 0;
                while fill < CHUNK {
                    match dl.read(&mut buf[fill..]) {
                        Ok(0) => break,
                        Ok(k) => fill += k,
                        Err(e) => {
                            // Keep what arrived: write it, then resume after it.
                            if fill > 0 {
                                put(dev, &mut hasher, &buf[..fill], &mut written, plan.size)?;
                            }
                            return Err(e);
                        }
                    }
                }
                if fill == 0 {
                    return Ok(());
                }
                put(dev, &mut hasher, &buf[..fill], &mut written, plan.size)?;
                if meter.due() {
                    let (line, pct) = meter.line(what, written);
                    ctl.step(line, pct);
                }
                if ctl.cancelled() {
                    return Ok(());
                }
            }
        })();
        match result {
            Ok(()) if written < plan.size && !ctl.cancelled() => {
                return Err(format!(
                    "the rack's blob ended at byte {written}, the image has {} bytes: the rack's copy is \
                     short; check the image on the region",
                    plan.size
                ))
            }
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(e.to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => return Err(e.to_string()),
            Err(e) => {
                if written > progress_before {
                    stalled_since = None;
                    wait = Duration::from_secs(1);
                }
                let since = *stalled_since.get_or_insert_with(Instant::now);
                if since.elapsed() > STALL_BUDGET {
                    return Err(format!(
                        "downloading the image from http://{}{} failed for {}s without progress (last: \
                         {e}); check the rack's HTTP port and the network",
                        plan.rack.authority(),
                        plan.path,
                        STALL_BUDGET.as_secs()
                    ));
                }
                crate::say!(
                    "download interrupted at byte {written} ({e}); resuming in {}s",
                    wait.as_secs()
                );
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

fn put<D: Write>(
    dev: &mut D,
    hasher: &mut Sha256,
    data: &[u8],
    written: &mut u64,
    size: u64,
) -> std::io::Result<()> {
    if *written + data.len() as u64 > size {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the rack sent more than the image's {size} bytes: its copy does not match the image"),
        ));
    }
    dev.write_all(data).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("writing the disk at byte {written}: {e}"),
        )
    })?;
    hasher.update(data);
    *written += data.len() as u64;
    Ok(())
}

/// Runs the deploy: choose the disk, write and verify the image, add the seed. Returns the success line.
pub fn run(p: &Platform, plan: &Plan, ctl: &Ctl) -> Result<String, String> {
    let disk = choose_disk(&p.disks(), &plan.disk, plan.size)?;
    ctl.step(
        format!(
            "writing image ({} MiB) to {} ({} MiB)",
            plan.size >> 20,
            disk.name,
            disk.bytes >> 20
        ),
        0,
    );
    let path = p.dev(&disk.name);
    let mut dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    let started = Instant::now();
    let what = format!("writing {}", disk.name);
    let sha = stream(plan, &mut dev, ctl, &what)?;
    if ctl.cancelled() {
        return Err("stopped: the region ended this boot".into());
    }
    dev.sync_all()
        .map_err(|e| format!("flushing {} to the disk: {e}", disk.name))?;
    if !sha.eq_ignore_ascii_case(&plan.sha256) {
        return Err(format!(
            "the image written to {} has sha256 {sha}, expected {}: the rack served a corrupt copy; \
             the disk is not bootable",
            disk.name, plan.sha256
        ));
    }
    let secs = started.elapsed().as_secs_f64().max(0.001);
    ctl.step(
        format!(
            "image written and verified ({} MiB in {:.0}s, {:.1} MiB/s); adding the NoCloud seed",
            plan.size >> 20,
            secs,
            plan.size as f64 / 1048576.0 / secs
        ),
        99,
    );
    let placed = seed::append(&mut dev, disk.bytes, disk.sector, &plan.seed)
        .map_err(|e| format!("adding the cloud-init seed to {}: {e}", disk.name))?;
    dev.sync_all()
        .map_err(|e| format!("flushing {} to the disk: {e}", disk.name))?;
    Ok(format!(
        "deployed to {}: image verified (sha256 {}), seed in partition {}",
        disk.name,
        &plan.sha256[..plan.sha256.len().min(12)],
        placed.number
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::platform::fake::machine;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn disk(name: &str, mib: u64, serial: &str) -> BlockDisk {
        BlockDisk {
            name: name.into(),
            bytes: mib << 20,
            sector: 512,
            rotational: false,
            model: String::new(),
            serial: serial.into(),
            bus: "virtio",
            discard: false,
            partitions: vec![],
        }
    }

    #[test]
    fn the_disk_is_the_named_one_or_the_smallest_that_fits() {
        let disks = [
            disk("vda", 100, "a"),
            disk("vdb", 40, "b"),
            disk("vdc", 30, "c"),
        ];
        assert_eq!(choose_disk(&disks, "", 10 << 20).unwrap().name, "vdc");
        assert_eq!(choose_disk(&disks, "", 25 << 20).unwrap().name, "vda");
        assert_eq!(choose_disk(&disks, "b", 1).unwrap().name, "vdb");
        assert_eq!(choose_disk(&disks, "vda", 1).unwrap().name, "vda");
        let e = choose_disk(&disks, "", 200 << 20).unwrap_err();
        assert!(e.contains("vda 100 MiB") && e.contains("vdc 30 MiB"), "{e}");
        let e = choose_disk(&disks, "sdz", 1).unwrap_err();
        assert!(e.contains("'sdz'"), "{e}");
        assert!(choose_disk(&disks, "vdc", 20 << 20)
            .unwrap_err()
            .contains("larger disk"));
        assert!(choose_disk(&[], "", 1).unwrap_err().contains("none"));
    }

    /// A test image: an MBR with one partition, then pseudo-random bytes; `size` bytes.
    pub(crate) fn image(size: usize) -> Vec<u8> {
        let mut v: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let mut m = vec![0u8; 512];
        m[446 + 4] = 0x0c;
        m[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
        // One partition from 1 MiB to the end of the image.
        let count = (size / 512 - 2048) as u32;
        m[446 + 12..446 + 16].copy_from_slice(&count.to_le_bytes());
        m[510] = 0x55;
        m[511] = 0xaa;
        v[..512].copy_from_slice(&m);
        v
    }

    /// A blob server on loopback serving `body`, honouring Range; the first `break_first` connections
    /// are cut after `cut` bytes of body. Returns its endpoint and the count of requests.
    pub(crate) fn serve(
        body: Vec<u8>,
        break_first: usize,
        cut: usize,
    ) -> (Endpoint, Arc<AtomicUsize>) {
        serve_with(body, break_first, cut, true)
    }

    /// [`serve`], optionally ignoring Range (answering 200 with the whole blob, as some servers do).
    fn serve_with(
        body: Vec<u8>,
        break_first: usize,
        cut: usize,
        honour_range: bool,
    ) -> (Endpoint, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let n = Arc::new(AtomicUsize::new(0));
        let count = n.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let i = count.fetch_add(1, Ordering::SeqCst);
                let mut req = Vec::new();
                let mut b = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    let k = s.read(&mut b).unwrap_or(0);
                    if k == 0 {
                        break;
                    }
                    req.extend_from_slice(&b[..k]);
                }
                let req = String::from_utf8_lossy(&req).to_string();
                if !req.starts_with("GET /blobs/") {
                    let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                    continue;
                }
                let from: usize = if !honour_range {
                    0
                } else {
                    req.split("Range: bytes=")
                        .nth(1)
                        .and_then(|r| r.split('-').next())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0)
                };
                let part = &body[from..];
                let head = if from > 0 {
                    format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {from}-{}/{}\r\nContent-Length: {}\r\n\r\n",
                        body.len() - 1,
                        body.len(),
                        part.len()
                    )
                } else {
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", part.len())
                };
                let _ = s.write_all(head.as_bytes());
                let send = if i < break_first {
                    &part[..cut.min(part.len())]
                } else {
                    part
                };
                let _ = s.write_all(send);
            }
        });
        (
            Endpoint {
                host: "127.0.0.1".into(),
                port,
            },
            n,
        )
    }

    fn plan(rack: Endpoint, img: &[u8], disk: &str) -> Plan {
        Plan {
            rack,
            path: "/blobs/x/disk".into(),
            sha256: hex::encode(Sha256::digest(img)),
            size: img.len() as u64,
            disk: disk.into(),
            seed: seed::files("m-1", "b-1", "h", "", &["ssh-ed25519 K".into()]),
        }
    }

    #[test]
    fn an_image_is_written_verified_and_seeded_across_a_broken_connection() {
        let t = tempfile::tempdir().unwrap();
        machine(t.path());
        let p = Platform::new(t.path());
        let img = image(6 << 20);
        // Two connections break mid-blob: the download resumes with Range each time.
        let (rack, requests) = serve(img.clone(), 2, (5 << 20) / 2);
        let (ctl, mut watch) = crate::progress::channel();
        let line = run(&p, &plan(rack, &img, ""), &ctl).unwrap();
        assert!(line.contains("deployed to sda"), "{line}");
        assert_eq!(requests.load(Ordering::SeqCst), 3);
        let written = std::fs::read(t.path().join("dev/sda")).unwrap();
        assert_eq!(&written[512..img.len()], &img[512..]);
        // The seed partition was added after the image's partition.
        assert_eq!(written[446 + 16 + 4], 0x0c);
        let mut steps = vec![];
        while let Ok(s) = watch.rx.try_recv() {
            steps.push(s.message);
        }
        assert!(steps.iter().any(|s| s.contains("verified")), "{steps:?}");
    }

    #[test]
    fn a_server_that_ignores_range_is_resumed_by_skipping() {
        let t = tempfile::tempdir().unwrap();
        machine(t.path());
        let p = Platform::new(t.path());
        let img = image(6 << 20);
        let (rack, requests) = serve_with(img.clone(), 1, (9 << 20) / 2, false);
        let (ctl, _watch) = crate::progress::channel();
        run(&p, &plan(rack, &img, "vda"), &ctl).unwrap();
        assert_eq!(requests.load(Ordering::SeqCst), 2);
        let written = std::fs::read(t.path().join("dev/vda")).unwrap();
        assert_eq!(&written[512..img.len()], &img[512..]);
    }

    #[test]
    fn a_corrupt_or_missing_blob_is_a_failure() {
        let t = tempfile::tempdir().unwrap();
        machine(t.path());
        let p = Platform::new(t.path());
        let img = image(3 << 20);
        let mut bad = img.clone();
        bad[4096] ^= 1;
        let (rack, _) = serve(bad, 0, 0);
        let (ctl, _watch) = crate::progress::channel();
        let e = run(&p, &plan(rack.clone(), &img, "vda"), &ctl).unwrap_err();
        assert!(e.contains("corrupt"), "{e}");
        // Longer than announced.
        let mut long = plan(rack, &img, "vda");
        long.size -= 1;
        assert!(run(&p, &long, &ctl).unwrap_err().contains("more than"));
        // Not on the rack.
        let (rack, _) = serve(img.clone(), 0, 0);
        let mut missing = plan(rack, &img, "vda");
        missing.path = "/nope".into();
        assert!(run(&p, &missing, &ctl).unwrap_err().contains("404"));
    }
}
