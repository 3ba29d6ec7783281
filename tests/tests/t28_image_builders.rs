//! The image builders (issue 13), from Debian packages only: `ingot images build-ramdisk` makes a kernel
//! and a gzip'd newc initramfs whose listing (GNU cpio) has /init, the agent, dropbear and the virtio
//! disk driver with its dependencies in load order, uploads them with `--upload`, and boots them under
//! QEMU to a DHCP lease and the agent's run; `ingot images build-test-image` makes a raw disk
//! image that boots under QEMU with SeaBIOS (syslinux) and with OVMF (systemd-boot), and prints
//! `INGOT-DISK-BOOTED hostname=<name> cidata=<yes|no>` on the serial console — with the hostname read
//! from a cloud-init NoCloud partition (label CIDATA) when one is added after the image's partition,
//! as the agent does when it deploys.
//!
//! Peers (scripts/install-test-peers.sh): apt-get with the Debian lists (`apt-get update` done), dpkg-deb,
//! cpio, syslinux + mtools, qemu-system-x86_64 and OVMF. Downloaded packages are cached in
//! ~/.cache/ingot/debs, so only the first run downloads (~85 MiB).

use ingot_tests::{host_tool, ingot as ingot_in, test_dir, TestCluster};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a QEMU boot may take (TCG: BIOS ≈ 30 s, UEFI ≈ 55 s on an idle 2-core machine).
const BOOT_LIMIT: Duration = Duration::from_secs(150);
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Every tool present (each missing one skips, or fails under CI).
fn tools(names: &[&str]) -> bool {
    names.iter().all(|n| host_tool(n).is_some())
}

/// Runs `ingot ARGS` (no cluster needed), failing with its output.
fn ingot(args: &[&str]) -> String {
    let bin = ingot_launch::resolve_bin_dir(None).unwrap().join("ingot");
    let out = Command::new(&bin).args(args).output().expect("run ingot");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ingot {args:?} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `sh -c SCRIPT` in `dir`, stdout.
fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t28_ramdisk_holds_init_agent_dropbear_and_drivers_in_load_order() {
    if !tools(&["apt-get", "apt-cache", "dpkg-deb", "cpio", "zcat", "ldd"]) {
        return;
    }
    let tc = TestCluster::start("t28-ramdisk", 1, &[]).await.unwrap();
    let out = tc.dir.join("rd");
    // A small dynamically linked program stands in for the agent: its libraries must come along.
    let agent = host_tool("true").unwrap();
    // Built, then uploaded through `images upload`'s code (--upload).
    let shown = ingot_in(
        &tc,
        &[
            "--json",
            "images",
            "build-ramdisk",
            "--out",
            out.to_str().unwrap(),
            "--agent",
            agent.to_str().unwrap(),
            "--upload",
            "ingot-ramdisk",
        ],
    );
    let v: serde_json::Value =
        serde_json::from_str(&shown).unwrap_or_else(|e| panic!("{e}: {shown}"));
    assert_eq!(v["kind"], "ramdisk", "{v}");
    for f in v["files"].as_array().unwrap() {
        let local = std::fs::read(out.join(f["name"].as_str().unwrap())).unwrap();
        let sha: String = Sha256::digest(&local)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(f["sha256"], sha.as_str(), "{v}");
    }
    assert_eq!(
        v["files"].as_array().unwrap().len(),
        2,
        "kernel and initrd: {v}"
    );
    let kernel = std::fs::read(out.join("kernel")).unwrap();
    assert!(kernel.len() > 1 << 20, "a kernel image");
    assert_eq!(
        &kernel[0x202..0x206],
        b"HdrS",
        "a bzImage (Linux boot protocol header)"
    );
    let listing = sh(&out, "zcat initrd | cpio -t --quiet");
    let names: Vec<&str> = listing.lines().collect();
    for want in [
        "init",
        "usr/bin/ingot-agent",
        "usr/sbin/dropbear",
        "bin/busybox",
        "bin/sh",
        "sbin/udhcpc",
        "dev/console",
        "dev/null",
        "etc/passwd",
        "etc/udhcpc.script",
        "root/.ssh",
        "lib64/ld-linux-x86-64.so.2",
    ] {
        assert!(
            names.contains(&want),
            "{want} missing from the initramfs:\n{listing}"
        );
    }
    assert!(
        names.iter().any(|n| n.ends_with("/virtio_blk.ko")),
        "virtio_blk.ko missing:\n{listing}"
    );
    assert!(
        names.iter().any(|n| n.contains("libtomcrypt.so")),
        "dropbear's libraries missing:\n{listing}"
    );
    // The load order: each virtio module after what it needs.
    let order = sh(
        &out,
        "zcat initrd | cpio -i --quiet --to-stdout etc/ingot/modules",
    );
    let pos = |m: &str| {
        order
            .lines()
            .position(|l| l.ends_with(&format!("/{m}.ko")))
            .unwrap_or_else(|| panic!("{m} not in the load order:\n{order}"))
    };
    assert!(pos("virtio_ring") < pos("virtio_blk"), "{order}");
    assert!(pos("virtio_pci_modern_dev") < pos("virtio_pci"), "{order}");
    let init = sh(&out, "zcat initrd | cpio -i --quiet --to-stdout init");
    assert!(init.contains("/usr/bin/ingot-agent") && init.contains("udhcpc -i"));

    // Booted (QEMU, user-mode network restricted to the VM: slirp's own DHCP, nothing leaves QEMU):
    // drivers load, the boot NIC gets its lease, the agent runs ("true" exits 0).
    if host_tool("qemu-system-x86_64").is_none() {
        return;
    }
    let log = tc.dir.join("ramdisk.log");
    let mac = "52:54:00:28:00:01";
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "512",
            "-nographic",
            "-monitor",
            "none",
            "-no-reboot",
        ])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-kernel")
        .arg(out.join("kernel"))
        .arg("-initrd")
        .arg(out.join("initrd"))
        .arg("-append")
        .arg(format!("console=ttyS0,115200 ingot.mac={mac}"))
        .arg("-nic")
        .arg(format!("user,restrict=on,model=virtio-net-pci,mac={mac}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut text = String::new();
    while started.elapsed() < BOOT_LIMIT && !text.contains("ingot-ramdisk: agent finished") {
        std::thread::sleep(Duration::from_millis(500));
        text = String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
        if child.try_wait().unwrap().is_some() {
            break;
        }
    }
    child.kill().ok();
    child.wait().ok();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("ingot-ramdisk:"))
        .collect();
    eprintln!(
        "t28: ramdisk boot after {:.0?}: {lines:?}",
        started.elapsed()
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ingot-ramdisk: eth0 10.0.2.15/24, agent starting")),
        "no DHCP lease on the boot NIC: {lines:?}\n{}",
        &text[text.len().saturating_sub(3000)..]
    );
    assert!(
        lines.contains(&"ingot-ramdisk: agent finished"),
        "{lines:?}"
    );
}

/// Copies the image at `src` to `dst` with an 8 MiB FAT partition labelled CIDATA appended in MBR slot
/// 2, holding a NoCloud meta-data with `hostname` — what the agent does after writing an image.
fn with_cidata(src: &Path, dst: &Path, hostname: &str) {
    let mut img = std::fs::read(src).unwrap();
    let e = &img[446..462];
    let start = u32::from_le_bytes(e[8..12].try_into().unwrap());
    let sectors = u32::from_le_bytes(e[12..16].try_into().unwrap());
    let seed_start = start + sectors;
    let seed_sectors: u32 = (8 << 20) / 512;
    assert_eq!(
        img.len() as u64,
        u64::from(seed_start) * 512,
        "the image ends with its partition"
    );
    let mut vol = std::io::Cursor::new(vec![0u8; 8 << 20]);
    fatfs::format_volume(
        &mut vol,
        fatfs::FormatVolumeOptions::new().volume_label(*b"CIDATA     "),
    )
    .unwrap();
    {
        let fs = fatfs::FileSystem::new(&mut vol, fatfs::FsOptions::new()).unwrap();
        for (name, text) in [
            (
                "meta-data",
                format!("instance-id: t28\nlocal-hostname: {hostname}\n"),
            ),
            ("user-data", "#cloud-config\n".to_string()),
        ] {
            let mut f = fs.root_dir().create_file(name).unwrap();
            f.write_all(text.as_bytes()).unwrap();
        }
        fs.unmount().unwrap();
    }
    img.extend_from_slice(&vol.into_inner());
    let slot = &mut img[462..478];
    assert!(slot.iter().all(|&b| b == 0), "slot 2 is free");
    slot[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
    slot[4] = 0x0c;
    slot[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
    slot[8..12].copy_from_slice(&seed_start.to_le_bytes());
    slot[12..16].copy_from_slice(&seed_sectors.to_le_bytes());
    std::fs::write(dst, img).unwrap();
}

/// Boots `img` (a copy-on-write snapshot) under SeaBIOS or OVMF until the marker shows on the serial
/// console; returns the marker line. QEMU is killed (its own PID) whatever happens.
fn boot(img: &Path, uefi: bool, log: &Path) -> String {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel",
        "tcg",
        "-m",
        "512",
        "-nographic",
        "-monitor",
        "none",
        "-no-reboot",
    ])
    .arg("-serial")
    .arg(format!("file:{}", log.display()))
    .arg("-drive")
    .arg(format!(
        "file={},format=raw,if=virtio,snapshot=on",
        img.display()
    ));
    if uefi {
        let vars = log.with_extension("vars.fd");
        std::fs::copy(OVMF_VARS, &vars).unwrap();
        cmd.args(["-M", "q35", "-drive"])
            .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()));
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut found = None;
    while started.elapsed() < BOOT_LIMIT {
        std::thread::sleep(Duration::from_millis(500));
        let text = std::fs::read(log).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        if let Some(l) = text.lines().find(|l| l.starts_with("INGOT-DISK-BOOTED")) {
            found = Some(l.trim().to_string());
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
    }
    child.kill().ok();
    child.wait().ok();
    let kind = if uefi {
        "UEFI (OVMF)"
    } else {
        "BIOS (SeaBIOS)"
    };
    match found {
        Some(l) => {
            eprintln!(
                "t28: {kind} boot of {} printed {l:?} after {:.0?}",
                img.display(),
                started.elapsed()
            );
            l
        }
        None => {
            let text = std::fs::read(log).unwrap_or_default();
            let tail =
                String::from_utf8_lossy(&text[text.len().saturating_sub(3000)..]).into_owned();
            panic!(
                "{kind}: no INGOT-DISK-BOOTED from {} within {BOOT_LIMIT:?}; serial tail:\n{tail}",
                img.display()
            )
        }
    }
}

#[test]
fn t28_test_image_boots_under_bios_and_uefi() {
    if !tools(&[
        "apt-get",
        "apt-cache",
        "dpkg-deb",
        "syslinux",
        "mcopy",
        "qemu-system-x86_64",
    ]) {
        return;
    }
    if !Path::new(OVMF_CODE).is_file() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{OVMF_CODE} missing: run scripts/install-test-peers.sh"
        );
        eprintln!("SKIPPED: {OVMF_CODE} missing (apt-get install ovmf)");
        return;
    }
    let dir = test_dir("t28-test-image");
    std::fs::create_dir_all(&dir).unwrap();
    let img: PathBuf = dir.join("test.img");
    ingot(&[
        "images",
        "build-test-image",
        "--out",
        img.to_str().unwrap(),
        "--size-mib",
        "64",
    ]);
    // The table: one active FAT32 partition from 1 MiB to the end; slots 2-4 free.
    let mut sector = vec![0u8; 512];
    let mut f = std::fs::File::open(&img).unwrap();
    f.read_exact(&mut sector).unwrap();
    assert_eq!(&sector[510..], &[0x55, 0xaa]);
    assert_eq!(sector[446], 0x80, "active");
    assert_eq!(sector[446 + 4], 0x0c, "FAT32 LBA");
    assert_eq!(
        u32::from_le_bytes(sector[454..458].try_into().unwrap()),
        2048
    );
    assert!(sector[462..510].iter().all(|&b| b == 0), "slots 2-4 free");
    assert_eq!(f.seek(SeekFrom::End(0)).unwrap(), 64 << 20);
    let seeded = dir.join("test-cidata.img");
    with_cidata(&img, &seeded, "t28-host");
    // Both boots at once (one TCG thread each).
    let (bios_img, bios_log) = (img.clone(), dir.join("bios.log"));
    let bios = std::thread::spawn(move || boot(&bios_img, false, &bios_log));
    let uefi = boot(&seeded, true, &dir.join("uefi.log"));
    let bios = bios.join().unwrap();
    assert_eq!(bios, "INGOT-DISK-BOOTED hostname=none cidata=no");
    assert_eq!(uefi, "INGOT-DISK-BOOTED hostname=t28-host cidata=yes");
    std::fs::remove_dir_all(&dir).ok();
}
