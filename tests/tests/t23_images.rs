//! Images on 3 real regions: `ingot images upload` (a few MiB of random kernel and initrd) to one region;
//! `list`/`show`; every region comes to hold the blobs (held_by 3 of 3); the uploading region is
//! SIGKILLed and the image is still listed and fetchable (`BlobService.FetchBlob` over the cluster
//! listener with another region's certificate, bytes checked against the sha256); a blob corrupted on
//! disk in a region is never served (FetchBlob there answers NOT_FOUND or the correct bytes), is reported
//! lost (event `image.blob-lost`) and copied again; a mismatched sha256 in an upload is refused naming
//! `files[0].sha256`; a non-admin upload is refused; deleting an image a Deploying machine uses is
//! refused naming the machine; `import-ipxe` uploads the iPXE binaries of a directory (and names the
//! directory and the package when there are none); a deleted image's blobs leave every region's disk.

use ingot_client::Clients;
use ingot_proto::rack::v1::blob_service_client::BlobServiceClient;
use ingot_proto::rack::v1::FetchBlobRequest;
use ingot_proto::v1::upload_image_request::Part;
use ingot_proto::v1::{
    AllocateRequest, Constraints, DeleteImageRequest, DeployRequest, GetImageRequest, Image,
    ListEventsRequest, ListImagesRequest, UploadChunk, UploadFile, UploadHeader,
    UploadImageRequest,
};
use ingot_tests::{
    all_events, by_id, cluster_tls, ready_machine, small_inventory, user_clients, TestCluster,
};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use tonic::transport::Endpoint;
use tonic::Code;

fn sha(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `ingot --profile ENV ARGS...` against region `endpoint` only.
fn ingot(env: &Path, endpoint: &str, args: &[&str]) -> Output {
    let bin = ingot_launch::resolve_bin_dir(None).unwrap().join("ingot");
    let mut all = vec![
        "--profile".to_string(),
        env.display().to_string(),
        "--endpoint".to_string(),
        endpoint.to_string(),
    ];
    all.extend(args.iter().map(|s| s.to_string()));
    Command::new(bin).args(all).output().expect("run ingot")
}

fn ok(o: Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "ingot failed: {out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

async fn image(c: &Clients, name: &str) -> Result<Image, tonic::Status> {
    c.images()
        .get_image(GetImageRequest { name: name.into() })
        .await
        .map(|r| r.into_inner())
}

/// Waits until `pred` holds for image `name`, read through `c`.
async fn wait_image(c: &Clients, name: &str, what: &str, pred: impl Fn(&Image) -> bool) -> Image {
    let t0 = Instant::now();
    loop {
        let last = image(c, name).await;
        if let Ok(i) = &last {
            if pred(i) {
                return i.clone();
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "image {name}: {what} not reached within 60 s: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A member region's identity (`tls/` of its data directory): what another region presents when it
/// copies a blob.
fn region_tls(dir: &Path) -> tonic::transport::ClientTlsConfig {
    let read = |f: &str| std::fs::read_to_string(dir.join("tls").join(f)).unwrap();
    cluster_tls(
        &read("ca.crt"),
        Some((&read("region.crt"), &read("region.key"))),
    )
}

/// Every byte of blob `sha256` from the cluster listener at `raft_addr`, as the holder of `tls`.
async fn fetch(
    tls: &tonic::transport::ClientTlsConfig,
    raft_addr: &str,
    sha256: &str,
) -> Result<Vec<u8>, tonic::Status> {
    let ch = Endpoint::from_shared(format!("https://{raft_addr}"))
        .unwrap()
        .tls_config(tls.clone())
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut c = BlobServiceClient::new(ch).max_decoding_message_size(2 << 20);
    let mut s = c
        .fetch_blob(FetchBlobRequest {
            sha256: sha256.into(),
            offset: 0,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = s.message().await? {
        assert!(chunk.data.len() <= 1 << 20, "chunks are at most 1 MiB");
        out.extend_from_slice(&chunk.data);
    }
    Ok(out)
}

/// An upload through the API: header, then `data` as file 0 in chunks of 256 KiB.
async fn upload_api(
    c: &Clients,
    header: UploadHeader,
    data: Vec<u8>,
) -> Result<Image, tonic::Status> {
    let mut msgs = vec![UploadImageRequest {
        part: Some(Part::Header(header)),
    }];
    for chunk in data.chunks(256 << 10) {
        msgs.push(UploadImageRequest {
            part: Some(Part::Chunk(UploadChunk {
                file: 0,
                data: chunk.to_vec(),
            })),
        });
    }
    c.images()
        .upload_image(tokio_stream::iter(msgs))
        .await
        .map(|r| r.into_inner())
}

fn disk_header(name: &str, size: u64, sha256: String) -> UploadHeader {
    UploadHeader {
        name: name.into(),
        kind: "disk".into(),
        arch: String::new(),
        files: vec![UploadFile {
            name: "disk".into(),
            size,
            sha256,
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn images_are_copied_to_every_region_survive_a_kill_and_corruption_is_never_served() {
    let tc = TestCluster::start("images", 3, &[]).await.unwrap();
    let c = tc.clients();
    let env = tc.cluster.env_path();
    let regions: Vec<_> = (1..=3).map(|i| tc.cluster.region(i)).collect();
    let ids: Vec<u64> = regions.iter().map(|r| r.node_id).collect();

    // Random kernel and initrd, uploaded with the CLI to region 1 only.
    let mut rng = rand::thread_rng();
    let mut kernel = vec![0u8; (3 << 20) + 5];
    let mut initrd = vec![0u8; 2 << 20];
    rng.fill_bytes(&mut kernel);
    rng.fill_bytes(&mut initrd);
    let files: PathBuf = tc.dir.join("upload");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("vmlinuz"), &kernel).unwrap();
    std::fs::write(files.join("initrd.img"), &initrd).unwrap();
    let t0 = Instant::now();
    let out = ok(ingot(
        &env,
        &regions[0].endpoint(),
        &[
            "--json",
            "images",
            "upload",
            "ingot-ramdisk",
            "--kernel",
            files.join("vmlinuz").to_str().unwrap(),
            "--initrd",
            files.join("initrd.img").to_str().unwrap(),
        ],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["kind"], "ramdisk", "{v}");
    assert!(
        v["held_by"].as_array().unwrap().len() >= 2,
        "answered once a majority holds it: {v}"
    );
    println!(
        "upload of 5 MiB acknowledged by a majority in {:?}",
        t0.elapsed()
    );
    let (ks, is) = (sha(&kernel), sha(&initrd));

    // list and show.
    let out = ok(ingot(&env, &regions[1].endpoint(), &["images", "list"]));
    assert!(
        out.contains("ingot-ramdisk") && out.contains("ramdisk"),
        "{out}"
    );
    let out = ok(ingot(
        &env,
        &regions[2].endpoint(),
        &["images", "show", "ingot-ramdisk"],
    ));
    assert!(out.contains(&ks) && out.contains(&is), "{out}");
    let out = ok(ingot(
        &env,
        &regions[2].endpoint(),
        &["--json", "images", "list", "--kind", "disk"],
    ));
    assert!(!out.contains("ingot-ramdisk"), "{out}");

    // Every region comes to hold it.
    let i = wait_image(&c, "ingot-ramdisk", "held by 3", |i| i.held_by.len() == 3).await;
    assert_eq!(i.regions, 3);
    println!(
        "held by all 3 regions {:?} after the upload began",
        t0.elapsed()
    );
    for r in &regions {
        for (s, data) in [(&ks, &kernel), (&is, &initrd)] {
            let on_disk = std::fs::read(r.data_dir.join("blobs").join(s)).unwrap();
            assert!(on_disk == *data, "region {} holds a wrong copy", r.node_id);
        }
    }

    // The uploading region dies; the image stays listed and is served by the others.
    tc.cluster.kill(1, libc::SIGKILL).unwrap();
    tc.cluster.wait_exit(1).await.unwrap();
    let c2 = tc.clients_to(2);
    let listed = c2
        .images()
        .list_images(ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.images.iter().any(|i| i.name == "ingot-ramdisk"));
    let as_region3 = region_tls(&regions[2].data_dir);
    let got = fetch(&as_region3, &regions[1].raft_addr, &ks)
        .await
        .unwrap();
    assert_eq!(sha(&got), ks, "region 2 serves the kernel intact");

    // Corrupt region 3's copy of the kernel in place: it is never served corrupt.
    let as_region2 = region_tls(&regions[1].data_dir);
    let path = regions[2].data_dir.join("blobs").join(&ks);
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start(1000)).unwrap();
        f.write_all(b"corrupted!").unwrap();
    }
    match fetch(&as_region2, &regions[2].raft_addr, &ks).await {
        Ok(bytes) => assert_eq!(sha(&bytes), ks, "a corrupt copy was served"),
        Err(s) => assert_eq!(s.code(), Code::NotFound, "{s:?}"),
    }
    // Reported lost, copied again from region 2, served intact.
    let t1 = Instant::now();
    loop {
        let events = all_events(
            &c2,
            ListEventsRequest {
                kind: "image.blob-lost".into(),
                ..Default::default()
            },
            100,
            10,
        )
        .await
        .unwrap();
        if events
            .iter()
            .any(|e| e.message.contains(&format!("region {}", ids[2])))
        {
            break;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(30),
            "no image.blob-lost event: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_image(&c2, "ingot-ramdisk", "held by region 3 again", |i| {
        i.held_by.contains(&ids[2])
    })
    .await;
    let got = fetch(&as_region2, &regions[2].raft_addr, &ks)
        .await
        .unwrap();
    assert_eq!(sha(&got), ks, "region 3 serves its fresh copy");
    println!("corrupt copy detected and replaced in {:?}", t1.elapsed());

    // A blob nobody holds: NOT_FOUND; a malformed name: INVALID_ARGUMENT naming sha256.
    let e = fetch(&as_region2, &regions[2].raft_addr, &"0".repeat(64))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = fetch(&as_region2, &regions[2].raft_addr, "xyz")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("sha256"), "{e:?}");

    // A sha256 that does not match the bytes: refused naming the field, nothing recorded.
    let data = b"not the disk you declared".to_vec();
    let e = upload_api(
        &c2,
        disk_header("debian/bookworm", data.len() as u64, sha(b"other bytes")),
        data.clone(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("files[0].sha256"), "{e:?}");
    assert_eq!(
        image(&c2, "debian/bookworm").await.unwrap_err().code(),
        Code::NotFound
    );
    // More bytes than declared: refused naming chunk.data.
    let e = upload_api(
        &c2,
        disk_header("debian/bookworm", 3, String::new()),
        data.clone(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("chunk.data"), "{e:?}");

    // A non-admin may read but not upload.
    let user = user_clients(&c2, "img-user").await.unwrap();
    image(&user, "ingot-ramdisk").await.unwrap();
    let e = upload_api(
        &user,
        disk_header("debian/bookworm", data.len() as u64, sha(&data)),
        data.clone(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // The disk image a Deploying machine writes cannot be deleted.
    let disk = upload_api(
        &c2,
        disk_header("debian/bookworm", data.len() as u64, sha(&data)),
        data.clone(),
    )
    .await
    .unwrap();
    assert!(disk.held_by.len() >= 2, "{disk:?}");
    let m = ready_machine(&c2, 23, 1, small_inventory()).await.unwrap();
    c2.machines()
        .allocate(AllocateRequest {
            request_id: "img-alloc".into(),
            consumer: "img".into(),
            constraints: Some(Constraints {
                system_id: m.system_id.clone(),
                ..Default::default()
            }),
            count: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    c2.machines()
        .deploy(DeployRequest {
            machine: Some(by_id(&m.system_id)),
            osystem: "debian".into(),
            distro_series: "bookworm".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let i = image(&c2, "debian/bookworm").await.unwrap();
    assert_eq!(i.used_by, vec![m.system_id.clone()]);
    let e = c2
        .images()
        .delete_image(DeleteImageRequest {
            name: "debian/bookworm".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains(&m.system_id), "{e:?}");

    // import-ipxe: a directory without iPXE binaries is an error naming it and the package; with
    // them, a bootloader image of the files present.
    let empty = tc.dir.join("no-ipxe");
    std::fs::create_dir_all(&empty).unwrap();
    let o = ingot(
        &env,
        &regions[1].endpoint(),
        &["images", "import-ipxe", "--dir", empty.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains(empty.to_str().unwrap()) && err.contains("apt-get install ipxe"),
        "{err}"
    );
    let ipxe = tc.dir.join("ipxe");
    std::fs::create_dir_all(&ipxe).unwrap();
    std::fs::write(ipxe.join("undionly.kpxe"), b"fake BIOS iPXE").unwrap();
    std::fs::write(ipxe.join("snponly.efi"), b"fake UEFI iPXE").unwrap();
    let out = ok(ingot(
        &env,
        &regions[1].endpoint(),
        &[
            "--json",
            "images",
            "import-ipxe",
            "--dir",
            ipxe.to_str().unwrap(),
        ],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["name"], "ipxe", "{v}");
    assert_eq!(v["kind"], "bootloader", "{v}");
    let names: Vec<&str> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["undionly.kpxe", "snponly.efi"], "{v}");

    // An image nobody uses is deleted, and its blobs leave every live region's disk.
    let out = ok(ingot(
        &env,
        &regions[1].endpoint(),
        &["images", "delete", "ingot-ramdisk"],
    ));
    assert!(out.contains("deleted"), "{out}");
    let t2 = Instant::now();
    for r in &regions[1..] {
        let p = r.data_dir.join("blobs").join(&is);
        while p.exists() {
            assert!(
                t2.elapsed() < Duration::from_secs(30),
                "{} not removed",
                p.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
