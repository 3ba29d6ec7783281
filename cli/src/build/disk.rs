//! `ingot images build-test-image` and `build-debian`: raw disk images that boot under BIOS and UEFI.
//!
//! Layout (see [`super::mbr`]): an MBR with syslinux's `mbr.bin` boot code, partition 1 from 1 MiB =
//! FAT32, active, written by the `fatfs` crate into the image file, holding the kernel, the initrd,
//! syslinux (BIOS: `syslinux --install --offset`, the mtools-based installer on the image file, no
//! mount) and systemd-boot as `\EFI\BOOT\BOOTX64.EFI` (UEFI: OVMF and real firmware load it from any
//! FAT partition) with `loader/entries/ingot.conf`. The Debian image adds partition 2, ext4, made by
//! `mkfs.ext4 -d` from the mmdebstrap tree straight into the image at its offset. Slots after the last
//! partition stay free for the cloud-init seed the agent appends.

use super::debs::{self, Debs};
use super::mbr::{self, Partition};
use super::ramdisk::{self, WorkDir};
use super::{fat, mib, Built, DebianArgs, Steps, TestImageArgs};
use anyhow::{bail, Context, Result};
use sha2::Digest;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The kernel command line both boot loaders pass (console on screen and on the first serial port).
pub(crate) const CONSOLE: &str = "console=tty0 console=ttyS0,115200";
/// The marker the test image's /init prints (the end-to-end tests wait for it).
pub const MARKER: &str = "INGOT-DISK-BOOTED";
/// Modules of the test image's initrd: its disk (virtio, SATA, NVMe) and the FAT of a CIDATA seed.
const TEST_MODULES: &[&str] = &[
    "crc32c_generic",
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "ahci",
    "ata_piix",
    "nvme",
    "sd_mod",
    "fat",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_iso8859_1",
    "nls_utf8",
];
/// The Debian image's boot partition size.
const DEBIAN_BOOT_MIB: u64 = 256;
/// The Debian image's root filesystem label (its kernel command line says root=LABEL=...).
const ROOT_LABEL: &str = "ingot-root";

/// The test image's /init: finds a CIDATA filesystem, reads its hostname and prints one marker line.
pub(crate) fn test_init_script() -> String {
    format!(
        r#"#!/bin/sh
# /init of Ingot's test disk image, written by `ingot images build-test-image`. PID 1: never exits.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
while read -r m; do insmod "/lib/modules/$m" 2>/dev/null; done < /etc/ingot/modules
# Wait up to 10 s for the disk's partitions.
n=0
while [ "$n" -lt 20 ]; do
  grep -qE '(vd|sd|hd|xvd)[a-z]+[0-9]+$|nvme[0-9]+n[0-9]+p[0-9]+$' /proc/partitions && break
  sleep 0.5
  n=$((n + 1))
done
sleep 1
hostname=none
cidata=no
dev=$(findfs LABEL=CIDATA 2>/dev/null || findfs LABEL=cidata 2>/dev/null)
if [ -n "$dev" ]; then
  mkdir -p /mnt
  if mount -t vfat -o ro "$dev" /mnt 2>/dev/null || mount -o ro "$dev" /mnt 2>/dev/null; then
    cidata=yes
    h=$(sed -n 's/.*"\{{0,1\}}local-hostname"\{{0,1\}}[[:space:]]*:[[:space:]]*"\{{0,1\}}\([^",}}[:space:]]*\).*/\1/p' /mnt/meta-data 2>/dev/null | head -n 1)
    [ -n "$h" ] && hostname=$h
  fi
fi
echo "{MARKER} hostname=$hostname cidata=$cidata"
while true; do sleep 3600; done
"#
    )
}

/// syslinux.cfg: boot the kernel at once, serial console on the first port.
fn syslinux_cfg(append: &str) -> String {
    format!(
        "SERIAL 0 115200\nDEFAULT ingot\nPROMPT 0\nTIMEOUT 1\nLABEL ingot\n  LINUX /vmlinuz\n  INITRD /initrd.img\n  APPEND {append}\n"
    )
}

/// systemd-boot's loader.conf and the one entry.
fn loader_files(title: &str, options: &str) -> [(String, Vec<u8>); 2] {
    [
        (
            "loader/loader.conf".into(),
            b"default ingot.conf\ntimeout 0\nconsole-mode keep\n".to_vec(),
        ),
        (
            "loader/entries/ingot.conf".into(),
            format!("title {title}\nlinux /vmlinuz\ninitrd /initrd.img\noptions {options}\n")
                .into_bytes(),
        ),
    ]
}

/// What goes into a bootable image.
struct BootImage<'a> {
    /// The image file to write (made as `<out>.part`, renamed when complete).
    out: &'a Path,
    /// Image size in bytes.
    size: u64,
    /// The ext4 tree of partition 2 (Debian image), or None (test image: one partition).
    root: Option<&'a Path>,
    /// The kernel (vmlinuz) for the boot partition.
    kernel: Vec<u8>,
    /// The initrd for the boot partition.
    initrd: Vec<u8>,
    /// Kernel command line.
    cmdline: String,
    /// Title of the systemd-boot entry.
    title: &'a str,
    /// Unpacked syslinux-common and systemd-boot-efi.
    loaders: &'a Path,
}

/// Downloads and unpacks the boot loaders' packages under `root`.
fn loaders(debs: &Debs, root: &Path, steps: &Steps) -> Result<()> {
    debs.unpack(
        &[("syslinux-common", root), ("systemd-boot-efi", root)],
        steps,
    )
}

/// Writes the image: table, FAT boot partition, syslinux, then the root filesystem if any.
fn write_image(b: &BootImage<'_>, steps: &Steps) -> Result<()> {
    let syslinux = which("syslinux").ok_or_else(|| {
        anyhow::anyhow!("syslinux is not installed: apt-get install syslinux mtools (its installer works on the image file)")
    })?;
    if which("mcopy").is_none() {
        bail!("mtools is not installed (syslinux's installer needs it): apt-get install mtools");
    }
    let mbr_bin = b.loaders.join("usr/lib/syslinux/mbr/mbr.bin");
    let boot_code = std::fs::read(&mbr_bin)
        .with_context(|| format!("reading {} (from syslinux-common)", mbr_bin.display()))?;
    let efi = b
        .loaders
        .join("usr/lib/systemd/boot/efi/systemd-bootx64.efi");
    let efi = std::fs::read(&efi)
        .with_context(|| format!("reading {} (from systemd-boot-efi)", efi.display()))?;
    let boot_size = if b.root.is_some() {
        DEBIAN_BOOT_MIB << 20
    } else {
        0
    };
    let parts = mbr::layout(b.size, boot_size, b.root.is_some())?;
    let tmp = b.out.with_extension("img.part");
    {
        let f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.set_len(b.size)?;
    }
    let boot = parts[0];
    let mut files = vec![
        ("vmlinuz".to_string(), b.kernel.clone()),
        ("initrd.img".to_string(), b.initrd.clone()),
        (
            "syslinux.cfg".to_string(),
            syslinux_cfg(&b.cmdline).into_bytes(),
        ),
        ("EFI/BOOT/BOOTX64.EFI".to_string(), efi),
    ];
    files.extend(loader_files(b.title, &b.cmdline));
    steps.step(format!(
        "FAT32 boot partition ({}) with the kernel, initrd, syslinux and systemd-boot",
        mib(boot.len())
    ));
    fat::write(&tmp, &boot, "INGOT-BOOT", &files)?;
    // The disk signature: from the initrd's digest, so a rebuild keeps it.
    let digest = sha2::Sha256::digest(&b.initrd);
    let disk_id = u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]);
    let table = mbr::encode(&boot_code, disk_id, &parts)?;
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&tmp)?;
        f.write_all(&table)?;
        f.sync_all()?;
    }
    steps.step("syslinux --install (BIOS boot)");
    debs::run(
        Command::new(syslinux)
            .args(["--install", "--offset"])
            .arg(boot.offset().to_string())
            .arg(&tmp)
            .env("MTOOLS_SKIP_CHECK", "1"),
        "syslinux could not install its boot sector on the FAT partition",
    )?;
    let mut sector0 = vec![0u8; 512];
    std::io::Read::read_exact(&mut std::fs::File::open(&tmp)?, &mut sector0)?;
    let kept = mbr::decode(&sector0)?;
    if kept.iter().flatten().copied().collect::<Vec<_>>() != parts {
        bail!("the partition table changed while installing syslinux: {kept:?}");
    }
    if let (Some(tree), Some(root)) = (b.root, parts.get(1)) {
        make_ext4(&tmp, root, tree, steps)?;
    }
    std::fs::rename(&tmp, b.out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), b.out.display()))?;
    Ok(())
}

/// Makes partition `p` an ext4 filesystem holding `tree` (mkfs.ext4 -d at the partition's offset).
fn make_ext4(img: &Path, p: &Partition, tree: &Path, steps: &Steps) -> Result<()> {
    steps.step(format!(
        "ext4 root partition ({}) from {}",
        mib(p.len()),
        tree.display()
    ));
    let mkfs = which("mkfs.ext4")
        .ok_or_else(|| anyhow::anyhow!("mkfs.ext4 is not installed: apt-get install e2fsprogs"))?;
    debs::run(
        Command::new(mkfs)
            .args(["-F", "-q", "-L", ROOT_LABEL, "-d"])
            .arg(tree)
            .arg("-E")
            .arg(format!("offset={}", p.offset()))
            .arg(img)
            .arg(format!("{}k", p.len() / 1024)),
        "mkfs.ext4 -d could not make the root filesystem (e2fsprogs 1.43 or newer is needed)",
    )?;
    // mkfs may extend the file when the offset is used; the image keeps its size.
    let f = std::fs::OpenOptions::new().write(true).open(img)?;
    let end = p.offset() + p.len();
    if f.metadata()?.len() != end {
        f.set_len(end)?;
    }
    Ok(())
}

/// The path of `tool` on PATH or in /usr/sbin, /sbin.
fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Builds the test image.
pub(super) fn build_test(args: &TestImageArgs, steps: &Steps) -> Result<Built> {
    let debs = Debs::new(args.debs.cache.as_deref())?;
    let work = WorkDir::new("test-image")?;
    let (vmlinuz, tree) = ramdisk::kernel(
        &debs,
        args.debs.kernel_package.as_deref(),
        &work.0.join("kernel"),
        steps,
    )?;
    let mut a = super::cpio::Archive::new();
    ramdisk::base(&mut a)?;
    let (n, _) = ramdisk::add_modules(&mut a, &tree, TEST_MODULES)?;
    steps.step(format!(
        "kernel {}: {n} modules for the disk and FAT",
        tree.version
    ));
    let bb = work.0.join("busybox");
    debs.unpack(&[("busybox-static", &bb)], steps)?;
    ramdisk::add_busybox(&mut a, &bb)?;
    a.file("init", test_init_script().into_bytes(), 0o755)?;
    let initrd = ramdisk::gzip(&a)?;
    let lroot = work.0.join("loaders");
    loaders(&debs, &lroot, steps)?;
    let image = BootImage {
        out: &args.out,
        size: args.size_mib << 20,
        root: None,
        kernel: std::fs::read(&vmlinuz)?,
        initrd,
        cmdline: CONSOLE.to_string(),
        title: "Ingot test image",
        loaders: &lroot,
    };
    write_image(&image, steps)?;
    steps.step(format!(
        "wrote {} ({} MiB)",
        args.out.display(),
        args.size_mib
    ));
    steps.finish();
    Ok(Built {
        kind: "disk",
        files: vec![("disk".into(), args.out.clone())],
    })
}

/// Files the Debian image gets on top of mmdebstrap's tree: fstab, cloud-init's datasource list.
fn debian_config(tree: &Path) -> Result<()> {
    let put = |rel: &str, text: &str| -> Result<()> {
        let p = tree.join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
    };
    put(
        "etc/fstab",
        &format!("LABEL={ROOT_LABEL} / ext4 defaults,errors=remount-ro 0 1\n"),
    )?;
    put(
        "etc/cloud/cloud.cfg.d/90_ingot.cfg",
        "# Written by `ingot images build-debian`: the agent writes a NoCloud seed (label CIDATA).\ndatasource_list: [ NoCloud, None ]\nmanage_etc_hosts: true\n# Always present (en_US.UTF-8 would have to be generated first).\nlocale: C.UTF-8\n",
    )?;
    put("etc/hostname", "debian\n")?;
    Ok(())
}

/// The Debian archive this machine's apt uses (the first deb source that is not the security archive),
/// from deb822 `.sources` files or one-line `sources.list` entries.
fn host_mirror() -> Option<String> {
    let mut texts = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut files: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        texts.extend(files.iter().filter_map(|f| {
            let ext = f.extension()?.to_str()?;
            (ext == "sources" || ext == "list").then(|| std::fs::read_to_string(f).ok())?
        }));
    }
    texts.extend(std::fs::read_to_string("/etc/apt/sources.list").ok());
    mirror_in(&texts)
}

/// The first non-security `deb` URI in apt source texts (deb822 or one-line format).
fn mirror_in(texts: &[String]) -> Option<String> {
    let uris = texts.iter().flat_map(|t| {
        t.lines()
            .filter_map(|l| {
                let l = l.trim();
                if let Some(u) = l.strip_prefix("URIs:") {
                    return u.split_whitespace().next().map(str::to_string);
                }
                let mut w = l.split_whitespace().filter(|w| !w.starts_with('['));
                (w.next() == Some("deb")).then(|| w.next().map(str::to_string))?
            })
            .collect::<Vec<_>>()
    });
    uris.into_iter()
        .find(|u| !u.trim_end_matches('/').ends_with("-security"))
}

/// The newest file in `dir` whose name starts with `prefix`.
fn newest(dir: &Path, prefix: &str) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect();
    found.sort();
    found
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no {prefix}* in {}", dir.display()))
}

/// Builds a Debian image with mmdebstrap.
pub(super) fn build_debian(args: &DebianArgs, steps: &Steps) -> Result<Built> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("debian-{}.img", args.suite)));
    let mmdebstrap = match which("mmdebstrap") {
        Some(p) => p,
        None => {
            if is_root() {
                steps.step("apt-get install mmdebstrap (Debian's tool for the root filesystem)");
                debs::run(
                    Command::new("apt-get").args([
                        "install",
                        "-y",
                        "-q",
                        "--no-install-recommends",
                        "mmdebstrap",
                    ]),
                    "apt-get install mmdebstrap failed: run apt-get update",
                )?;
            }
            which("mmdebstrap").ok_or_else(|| {
                anyhow::anyhow!("mmdebstrap is not installed: apt-get install mmdebstrap")
            })?
        }
    };
    let debs = Debs::new(args.cache.as_deref())?;
    let work = WorkDir::new("debian")?;
    let tree = work.0.join("root");
    steps.step(format!(
        "mmdebstrap {} (minutes: downloads and installs the system)",
        args.suite
    ));
    let mut cmd = Command::new(mmdebstrap);
    cmd.args([
        "--variant=important",
        "--include=linux-image-amd64,systemd-sysv,udev,cloud-init,openssh-server,ifupdown,isc-dhcp-client,e2fsprogs,sudo,locales",
    ])
    .arg(&args.suite)
    .arg(&tree);
    match args.mirror.clone().or_else(host_mirror) {
        Some(m) => cmd.arg(m),
        None => bail!("no Debian mirror in this machine's apt sources: pass --mirror URL"),
    };
    debs::run(
        &mut cmd,
        "mmdebstrap failed: it needs root (or user namespaces) and the Debian mirror",
    )?;
    debian_config(&tree)?;
    let kernel = std::fs::read(newest(&tree.join("boot"), "vmlinuz-")?)?;
    let initrd = std::fs::read(newest(&tree.join("boot"), "initrd.img-")?)?;
    let lroot = work.0.join("loaders");
    loaders(&debs, &lroot, steps)?;
    let image = BootImage {
        out: &out,
        size: args.size_mib << 20,
        root: Some(&tree),
        kernel,
        initrd,
        cmdline: format!("root=LABEL={ROOT_LABEL} ro {CONSOLE}"),
        title: "Debian",
        loaders: &lroot,
    };
    write_image(&image, steps)?;
    steps.step(format!("wrote {} ({} MiB)", out.display(), args.size_mib));
    steps.finish();
    Ok(Built {
        kind: "disk",
        files: vec![("disk".into(), out)],
    })
}

/// Whether this process runs as root (reads /proc/self/status: no unsafe code).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Uid:")
                    .map(|v| v.split_whitespace().next() == Some("0"))
            })
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_init_prints_the_marker_with_hostname_from_cidata() {
        let s = test_init_script();
        assert!(s.contains("echo \"INGOT-DISK-BOOTED hostname=$hostname cidata=$cidata\""));
        assert!(s.contains("findfs LABEL=CIDATA"));
        assert!(s.contains("mount -t vfat -o ro"));
        assert!(s.contains("/mnt/meta-data"));
        assert!(s.contains("s/.*\"\\{0,1\\}local-hostname"), "{s}");
        assert!(s.trim_end().ends_with("while true; do sleep 3600; done"));
    }

    #[test]
    fn mirror_comes_from_the_apt_sources() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: x\n\nTypes: deb\nURIs: http://mirror.example/debian\n".to_string();
        assert_eq!(
            mirror_in(&[deb822]).as_deref(),
            Some("http://mirror.example/debian")
        );
        let list = "# c\ndeb [arch=amd64] http://m.example/debian bookworm main\n".to_string();
        assert_eq!(
            mirror_in(&[list]).as_deref(),
            Some("http://m.example/debian")
        );
        assert!(mirror_in(&["deb-src http://x/ y z".to_string()]).is_none());
    }

    #[test]
    fn loader_configs_pass_both_consoles() {
        let cfg = syslinux_cfg(CONSOLE);
        assert!(cfg.contains("APPEND console=tty0 console=ttyS0,115200"));
        assert!(cfg.contains("INITRD /initrd.img"));
        let [conf, entry] = loader_files("t", CONSOLE);
        assert_eq!(conf.0, "loader/loader.conf");
        let e = String::from_utf8(entry.1).unwrap_or_default();
        assert!(e.contains("options console=tty0 console=ttyS0,115200"));
        assert!(e.contains("linux /vmlinuz") && e.contains("initrd /initrd.img"));
    }
}
