//! `ingot-bench --image-upload [--size-mib N]`: the image upload path on the cluster the bench started
//! (3 regions by default). One disk image of N MiB of random bytes (generated chunk by chunk, never held
//! whole) is streamed to one region in 1 MiB chunks; printed: the upload's MiB/s (until the last byte
//! was sent), the time until the upload was acknowledged (a majority of regions hold the blob, copied
//! and verified), the time until every region holds it, and each region's peak RSS (memory must not
//! grow with the file).

use anyhow::{Context, Result};
use ingot_launch::LocalCluster;
use ingot_proto::v1::upload_image_request::Part;
use ingot_proto::v1::{GetImageRequest, UploadChunk, UploadFile, UploadHeader, UploadImageRequest};
use rand::{RngCore, SeedableRng};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What to upload.
pub struct UploadOpts {
    /// Size of the file, MiB.
    pub size_mib: u64,
}

/// What was measured.
pub struct UploadFigures {
    size_mib: u64,
    sent: Duration,
    majority: Duration,
    all: Option<Duration>,
    regions: usize,
    /// Peak RSS (VmHWM, KiB) of each region process after the run.
    peak_rss_kib: Vec<u64>,
}

/// Peak resident set (VmHWM) of process `pid` in KiB; 0 when unreadable.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

const CHUNK: usize = 1 << 20;

/// Runs the upload against region 1 of `cluster`.
pub async fn run(cluster: &LocalCluster, o: &UploadOpts) -> Result<UploadFigures> {
    let clients = cluster.connect_to(1)?;
    let name = "bench/upload".to_string();
    let header = UploadHeader {
        name: name.clone(),
        kind: "disk".into(),
        arch: String::new(),
        files: vec![UploadFile {
            name: "disk".into(),
            size: o.size_mib << 20,
            sha256: String::new(),
        }],
    };
    let (tx, rx) = mpsc::channel(4);
    let chunks = o.size_mib;
    let t0 = Instant::now();
    let sender = tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        let first = UploadImageRequest {
            part: Some(Part::Header(header)),
        };
        if tx.send(first).await.is_err() {
            return None;
        }
        for _ in 0..chunks {
            let mut data = vec![0u8; CHUNK];
            rng.fill_bytes(&mut data);
            let m = UploadImageRequest {
                part: Some(Part::Chunk(UploadChunk { file: 0, data })),
            };
            if tx.send(m).await.is_err() {
                return None;
            }
        }
        Some(t0.elapsed())
    });
    eprintln!("== uploading {} MiB to region 1", o.size_mib);
    let image = clients
        .images()
        .upload_image(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .context("upload")?
        .into_inner();
    let majority = t0.elapsed();
    let sent = sender.await?.context("the upload stream closed early")?;
    let regions = image.regions as usize;
    let mut all = None;
    while t0.elapsed() < Duration::from_secs(600) {
        let i = clients
            .images()
            .get_image(GetImageRequest { name: name.clone() })
            .await?
            .into_inner();
        if i.held_by.len() >= regions {
            all = Some(t0.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let peak_rss_kib = cluster
        .regions()
        .iter()
        .map(|r| peak_rss_kib(r.pid))
        .collect();
    Ok(UploadFigures {
        size_mib: o.size_mib,
        sent,
        majority,
        all,
        regions,
        peak_rss_kib,
    })
}

/// Prints the figures.
pub fn report(f: &UploadFigures, profile: &str) {
    println!("image upload ({profile}, {} regions)", f.regions);
    println!(
        "  {} MiB sent in {:.2} s: {:.1} MiB/s",
        f.size_mib,
        f.sent.as_secs_f64(),
        f.size_mib as f64 / f.sent.as_secs_f64().max(1e-9)
    );
    println!(
        "  acknowledged (a majority holds it, verified) after {:.2} s",
        f.majority.as_secs_f64()
    );
    match f.all {
        Some(d) => println!(
            "  held by all {} regions after {:.2} s",
            f.regions,
            d.as_secs_f64()
        ),
        None => println!("  not held by all {} regions within 600 s", f.regions),
    }
    let rss: Vec<String> = f
        .peak_rss_kib
        .iter()
        .map(|k| format!("{:.1} MiB", *k as f64 / 1024.0))
        .collect();
    println!("  regions' peak RSS: {}", rss.join(", "));
}
