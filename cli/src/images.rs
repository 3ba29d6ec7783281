//! `ingot images ...`: boot images. Upload streams each file from disk in 1 MiB chunks (memory bounded
//! by a few chunks whatever the file size) after hashing it locally, so the region checks every byte
//! against the SHA-256 computed here; the answer comes once a majority of regions hold every file.

use crate::ctx::Ctx;
use crate::output::{self, print_json};
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use ingot_common::image::{FILE_DISK, FILE_INITRD, FILE_KERNEL};
use ingot_proto::v1::upload_image_request::Part;
use ingot_proto::v1::{
    DeleteImageRequest, GetImageRequest, Image, ListImagesRequest, UploadChunk, UploadFile,
    UploadHeader, UploadImageRequest,
};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;

/// Bytes per chunk sent (the most the region accepts).
const CHUNK: usize = 1 << 20;
/// Chunks read ahead of the network: with [`CHUNK`], the upload's memory bound.
const QUEUED_CHUNKS: usize = 4;
/// iPXE binaries `import-ipxe` takes from the directory when present (Debian's `ipxe` package ships
/// them in /usr/lib/ipxe): BIOS PXE (`undionly.kpxe`, `ipxe.pxe`), UEFI (`ipxe.efi`, `snponly.efi`),
/// and the USB/ISO-free lkrn.
const IPXE_FILES: [&str; 7] = [
    "undionly.kpxe",
    "undionly.kkpxe",
    "ipxe.pxe",
    "ipxe.efi",
    "snponly.efi",
    "snp.efi",
    "ipxe.lkrn",
];

/// The `images` subcommands.
#[derive(Subcommand, Debug)]
pub enum ImagesCmd {
    /// Upload an image (admin): its files are streamed to a region and copied to every region
    Upload {
        /// Image name, e.g. ingot-ramdisk, debian/bookworm (deploys of --osystem debian
        /// --distro-series bookworm write it), ipxe
        name: String,
        /// ramdisk (kernel + initrd), disk (disk image), bootloader (files served by name); default:
        /// disk with --disk-image, ramdisk with --kernel, else bootloader
        #[arg(long)]
        kind: Option<String>,
        /// CPU architecture of the contents
        #[arg(long, default_value = "amd64")]
        arch: String,
        /// The kernel (file "kernel")
        #[arg(long, value_name = "PATH")]
        kernel: Option<PathBuf>,
        /// The initrd (file "initrd")
        #[arg(long, value_name = "PATH")]
        initrd: Option<PathBuf>,
        /// The disk image to write at deployment (file "disk")
        #[arg(long, value_name = "PATH")]
        disk_image: Option<PathBuf>,
        /// Any other file, as NAME=PATH (repeatable)
        #[arg(long = "file", value_name = "NAME=PATH")]
        files: Vec<String>,
    },
    /// List images with their size, how many regions hold them and who uses them
    List {
        /// Only images of this kind (ramdisk, disk, bootloader)
        #[arg(long)]
        kind: Option<String>,
    },
    /// Show one image: its files (sha256, size) and the regions holding them
    Show {
        /// Image name
        name: String,
    },
    /// Delete an image (admin; refused while a deploying machine uses it)
    Delete {
        /// Image name
        name: String,
    },
    /// Upload the iPXE binaries of a directory as a bootloader image (admin)
    ImportIpxe {
        /// Where the iPXE binaries are (Debian's ipxe package installs them in /usr/lib/ipxe)
        #[arg(long, default_value = "/usr/lib/ipxe")]
        dir: PathBuf,
        /// Image name
        #[arg(long, default_value = "ipxe")]
        name: String,
    },
    /// Build Ingot's deploy ramdisk (kernel + initrd) from Debian packages; --upload NAME uploads it
    BuildRamdisk(crate::build::RamdiskArgs),
    /// Build a small bootable test disk image (BIOS and UEFI) that prints INGOT-DISK-BOOTED on serial
    BuildTestImage(crate::build::TestImageArgs),
    /// Build a Debian disk image with cloud-init (mmdebstrap; minutes, needs the Debian mirror)
    BuildDebian(crate::build::DebianArgs),
}

/// What one upload sends: the header's fields and the local files by their name in the image.
struct UploadSpec {
    name: String,
    kind: String,
    arch: String,
    files: Vec<(String, PathBuf)>,
}

/// A file to upload, hashed.
struct LocalFile {
    name: String,
    path: PathBuf,
    size: u64,
    sha256: String,
}

/// Size and SHA-256 of the file at `path`, read one chunk at a time.
fn hash(path: &Path) -> Result<(u64, String)> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    let hex = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((size, hex))
}

fn bytes(v: u64) -> String {
    if v >= 1 << 30 {
        format!("{:.1} GiB", v as f64 / (1u64 << 30) as f64)
    } else if v >= 1 << 20 {
        format!("{:.1} MiB", v as f64 / (1u64 << 20) as f64)
    } else if v >= 1 << 10 {
        format!("{:.1} KiB", v as f64 / 1024.0)
    } else {
        format!("{v} B")
    }
}

fn image_json(i: &Image) -> serde_json::Value {
    json!({
        "name": i.name,
        "kind": i.kind,
        "arch": i.arch,
        "size": i.size,
        "files": i.files.iter().map(|f| json!({"name": f.name, "sha256": f.sha256, "size": f.size})).collect::<Vec<_>>(),
        "held_by": i.held_by,
        "regions": i.regions,
        "used_by": i.used_by,
        "created_by": i.created_by,
        "created": output::ts_json(&i.created),
    })
}

fn held(i: &Image) -> String {
    format!("{}/{}", i.held_by.len(), i.regions)
}

fn show(ctx: &Ctx, i: &Image) {
    if ctx.json() {
        print_json(&image_json(i));
        return;
    }
    let mut rows = vec![
        ("NAME", i.name.clone()),
        ("KIND", i.kind.clone()),
        ("ARCH", i.arch.clone()),
        ("SIZE", bytes(i.size)),
        (
            "HELD BY",
            format!(
                "{} of {} regions ({})",
                i.held_by.len(),
                i.regions,
                output::dash(
                    &i.held_by
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            ),
        ),
        ("USED BY", output::dash(&i.used_by.join(", "))),
        (
            "CREATED",
            format!("{} by {}", output::ts(&i.created), i.created_by),
        ),
    ];
    for f in &i.files {
        rows.push(("FILE", format!("{} {} {}", f.name, f.sha256, bytes(f.size))));
    }
    outln!("{}", output::render(&output::record(rows)));
}

/// Runs an `images` subcommand.
pub async fn run(ctx: &Ctx, cmd: ImagesCmd) -> Result<()> {
    match cmd {
        ImagesCmd::Upload {
            name,
            kind,
            arch,
            kernel,
            initrd,
            disk_image,
            files,
        } => {
            let kind = kind.unwrap_or_else(|| {
                if disk_image.is_some() {
                    "disk"
                } else if kernel.is_some() || initrd.is_some() {
                    "ramdisk"
                } else {
                    "bootloader"
                }
                .into()
            });
            let mut named: Vec<(String, PathBuf)> = Vec::new();
            for (n, p) in [
                (FILE_KERNEL, kernel),
                (FILE_INITRD, initrd),
                (FILE_DISK, disk_image),
            ] {
                if let Some(p) = p {
                    named.push((n.to_string(), p));
                }
            }
            for f in files {
                let Some((n, p)) = f.split_once('=') else {
                    bail!("--file {f}: expected NAME=PATH, e.g. --file undionly.kpxe=/usr/lib/ipxe/undionly.kpxe");
                };
                named.push((n.to_string(), PathBuf::from(p)));
            }
            if named.is_empty() {
                bail!("no files: pass --kernel and --initrd (ramdisk), --disk-image (disk) or --file NAME=PATH");
            }
            let spec = UploadSpec {
                name,
                kind,
                arch,
                files: named,
            };
            let i = upload(ctx, spec).await?;
            show(ctx, &i);
        }
        ImagesCmd::ImportIpxe { dir, name } => {
            let found: Vec<(String, PathBuf)> = IPXE_FILES
                .iter()
                .map(|f| (f.to_string(), dir.join(f)))
                .filter(|(_, p)| p.is_file())
                .collect();
            if found.is_empty() {
                bail!(
                    "no iPXE binaries ({}) in {}: install them (`apt-get install ipxe` puts them in /usr/lib/ipxe) or pass --dir",
                    IPXE_FILES.join(", "),
                    dir.display()
                );
            }
            let spec = UploadSpec {
                name,
                kind: "bootloader".into(),
                arch: "amd64".into(),
                files: found,
            };
            let i = upload(ctx, spec).await?;
            show(ctx, &i);
        }
        ImagesCmd::BuildRamdisk(args) => {
            let upload_as = args.upload.clone();
            let quiet = ctx.json();
            let built =
                tokio::task::spawn_blocking(move || crate::build::build_ramdisk(&args, quiet))
                    .await??;
            upload_built(ctx, upload_as, built).await?;
        }
        ImagesCmd::BuildTestImage(args) => {
            let upload_as = args.upload.clone();
            let quiet = ctx.json();
            let built =
                tokio::task::spawn_blocking(move || crate::build::build_test_image(&args, quiet))
                    .await??;
            upload_built(ctx, upload_as, built).await?;
        }
        ImagesCmd::BuildDebian(args) => {
            let upload_as = args.upload.clone();
            let quiet = ctx.json();
            let built =
                tokio::task::spawn_blocking(move || crate::build::build_debian(&args, quiet))
                    .await??;
            upload_built(ctx, upload_as, built).await?;
        }
        ImagesCmd::List { kind } => {
            let clients = ctx.clients()?;
            let req = ListImagesRequest {
                kind: kind.unwrap_or_default(),
            };
            let resp = ctx
                .call(|| {
                    let mut c = clients.images();
                    let req = req.clone();
                    async move { c.list_images(req).await }
                })
                .await?;
            if ctx.json() {
                let images: Vec<_> = resp.images.iter().map(image_json).collect();
                print_json(&json!({ "images": images }));
            } else {
                let mut t = output::table(["NAME", "KIND", "ARCH", "SIZE", "HELD BY", "USED BY"]);
                for i in &resp.images {
                    t.add_row(vec![
                        i.name.clone(),
                        i.kind.clone(),
                        i.arch.clone(),
                        bytes(i.size),
                        held(i),
                        output::dash(&i.used_by.join(", ")),
                    ]);
                }
                outln!("{}", output::render(&t));
            }
        }
        ImagesCmd::Show { name } => {
            let clients = ctx.clients()?;
            let i = ctx
                .call(|| {
                    let mut c = clients.images();
                    let req = GetImageRequest { name: name.clone() };
                    async move { c.get_image(req).await }
                })
                .await?;
            show(ctx, &i);
        }
        ImagesCmd::Delete { name } => {
            let clients = ctx.clients()?;
            ctx.call(|| {
                let mut c = clients.images();
                let req = DeleteImageRequest { name: name.clone() };
                async move { c.delete_image(req).await }
            })
            .await?;
            if ctx.json() {
                print_json(&json!({ "deleted": name }));
            } else {
                outln!("deleted image {name}");
            }
        }
    }
    Ok(())
}

/// After a build: prints where the files are, and uploads them as image `name` when one is given.
async fn upload_built(ctx: &Ctx, name: Option<String>, built: crate::build::Built) -> Result<()> {
    match name {
        Some(name) => {
            let spec = UploadSpec {
                name,
                kind: built.kind.into(),
                arch: "amd64".into(),
                files: built.files,
            };
            let i = upload(ctx, spec).await?;
            show(ctx, &i);
        }
        None if ctx.json() => {
            let files: Vec<_> = built
                .files
                .iter()
                .map(|(n, p)| json!({"name": n, "path": p.display().to_string()}))
                .collect();
            print_json(&json!({ "kind": built.kind, "files": files }));
        }
        None => {
            for (n, p) in &built.files {
                outln!("{n}: {}", p.display());
            }
        }
    }
    Ok(())
}

/// Hashes the files, then streams them as one upload (header, then each file's chunks in order) with
/// a progress bar of bytes sent on a terminal.
async fn upload(ctx: &Ctx, spec: UploadSpec) -> Result<Image> {
    let UploadSpec {
        name,
        kind,
        arch,
        files: named,
    } = spec;
    let mut files = Vec::new();
    for (n, path) in named {
        let p = path.clone();
        let (size, sha256) = tokio::task::spawn_blocking(move || hash(&p)).await??;
        files.push(LocalFile {
            name: n,
            path,
            size,
            sha256,
        });
    }
    let total: u64 = files.iter().map(|f| f.size).sum();
    let header = UploadHeader {
        name,
        kind,
        arch,
        files: files
            .iter()
            .map(|f| UploadFile {
                name: f.name.clone(),
                size: f.size,
                sha256: f.sha256.clone(),
            })
            .collect(),
    };
    let bar = if std::io::stderr().is_terminal() && !ctx.json() {
        let bar = ProgressBar::new(total);
        if let Ok(style) = ProgressStyle::with_template(
            "{bar:40.cyan/blue} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg} ({elapsed})",
        ) {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let (tx, rx) = mpsc::channel(QUEUED_CHUNKS);
    let reader_bar = bar.clone();
    let started = std::time::Instant::now();
    // Reads the files on a blocking thread; the channel's bound is the memory bound.
    let reader = tokio::task::spawn_blocking(move || -> Result<()> {
        let send = |m: Part| {
            tx.blocking_send(UploadImageRequest { part: Some(m) })
                .map_err(|_| {
                    anyhow::anyhow!(
                        "the upload stream closed early (the region answered; see its error)"
                    )
                })
        };
        send(Part::Header(header))?;
        for (i, f) in files.iter().enumerate() {
            let mut file = std::fs::File::open(&f.path)
                .with_context(|| format!("opening {}", f.path.display()))?;
            let mut left = f.size;
            while left > 0 {
                let n = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
                let mut data = vec![0u8; n];
                file.read_exact(&mut data).with_context(|| {
                    format!(
                        "reading {} (did it change while uploading?)",
                        f.path.display()
                    )
                })?;
                left -= n as u64;
                send(Part::Chunk(UploadChunk {
                    file: u32::try_from(i).unwrap_or(u32::MAX),
                    data,
                }))?;
                reader_bar.inc(n as u64);
            }
        }
        if reader_bar.is_hidden() {
            let s = started.elapsed().as_secs_f64();
            eprintln!(
                "sent {} in {s:.1} s ({:.1} MiB/s); waiting for a majority of regions",
                bytes(total),
                total as f64 / (1u64 << 20) as f64 / s.max(1e-6)
            );
        } else {
            reader_bar.set_message("sent; waiting for a majority of regions");
        }
        Ok(())
    });
    let clients = ctx.clients()?;
    let answer = clients
        .images()
        .upload_image(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    let read = reader.await?;
    bar.finish_and_clear();
    let image = answer?.into_inner();
    read?;
    Ok(image)
}
