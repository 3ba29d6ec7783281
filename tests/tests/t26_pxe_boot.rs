//! A real firmware PXE-boots off `ingot-rack` alone (issue 12): QEMU (TCG) with OVMF's own UEFI PXE client (no
//! iPXE option ROM, like real hardware) on a bridge in a namespace the test made; the rack is the only server
//! on the segment. The path: DHCP (arch 7 → `snponly.efi`) → TFTP of `snponly.efi` from the `ipxe` bootloader
//! image (`ingot images import-ipxe`, cached on the rack; the rack's TFTP root is an empty directory) → iPXE
//! DHCPs again (user class iPXE → `http://RACK:PORT/boot/<mac>.ipxe`) → its script (unknown MAC: enlist) → a
//! Debian kernel and a busybox initramfs uploaded with `ingot images upload`, fetched over HTTP from the
//! rack's verified cache → the initramfs prints a marker with its kernel command line on the serial console
//! and powers off. Then: the MAC is a New machine, and its boot steps (DHCP, script, files) are its events.
//!
//! Peers: qemu-system-x86_64, OVMF, iPXE's `snponly.efi` (Debian `ipxe`), cpio, and the kernel + static
//! busybox that scripts/install-test-peers.sh unpacks into `$INGOT_PEERS_HOME/pxe`.

use ingot_launch::RackBoot;
use ingot_tests::netns::{self, End, Lab};
use ingot_tests::{ingot, wait_new_machine};
use ingot_tests::{RackLogsOnPanic, TestCluster};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Where install-test-peers.sh put the kernel and the static busybox.
fn pxe_payload() -> Option<(PathBuf, PathBuf)> {
    let dir = std::env::var_os("INGOT_PEER_PXE")
        .map(PathBuf::from)
        .or_else(|| {
            let home = std::env::var_os("INGOT_PEERS_HOME")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/ingot-peers"))
                })?;
            Some(home.join("pxe"))
        })?;
    let (k, b) = (dir.join("vmlinuz"), dir.join("busybox"));
    (k.is_file() && b.is_file()).then_some((k, b))
}

/// A gzip'd newc initramfs whose /init prints `INGOT-PXE-MARKER` and the kernel command line, then powers off.
fn initramfs(dir: &Path, busybox: &Path) -> PathBuf {
    let root = dir.join("initramfs");
    for d in ["bin", "proc", "dev"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    std::fs::write(
        root.join("init"),
        "#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc\n\
         echo \"INGOT-PXE-MARKER: cmdline: $(/bin/busybox cat /proc/cmdline)\"\n\
         /bin/busybox poweroff -f\n",
    )
    .unwrap();
    let out = dir.join("initrd.gz");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "chmod 755 init bin/busybox && find . | cpio -o -H newc 2>/dev/null | gzip -1 > {}",
            out.display()
        ))
        .current_dir(&root)
        .status()
        .unwrap();
    assert!(status.success(), "building the initramfs failed");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uefi_firmware_pxe_boots_an_uploaded_ramdisk_off_the_rack_alone() {
    let test = "uefi_firmware_pxe_boots_an_uploaded_ramdisk_off_the_rack_alone";
    if !netns::ready(test, &["qemu-system-x86_64", "cpio", "gzip"]) {
        return;
    }
    let ovmf_code = Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd");
    let ovmf_vars = Path::new("/usr/share/OVMF/OVMF_VARS_4M.fd");
    let snponly = Path::new("/usr/lib/ipxe/snponly.efi");
    let payload = pxe_payload();
    let missing: Vec<&str> = [
        (!ovmf_code.exists()).then_some("OVMF (apt-get install ovmf)"),
        (!snponly.exists()).then_some("iPXE's snponly.efi (apt-get install ipxe)"),
        payload.is_none().then_some(
            "the PXE payload (scripts/install-test-peers.sh unpacks a kernel and busybox)",
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !missing.is_empty() {
        assert!(!netns::peers_required(), "{test}: missing {missing:?}");
        eprintln!("SKIPPED {test}: missing {missing:?}");
        return;
    }
    let (vmlinuz, busybox) = payload.unwrap();

    // An empty TFTP root: snponly.efi can only come from the uploaded bootloader image.
    let tftp_root = std::env::temp_dir().join(format!("ingot-t26-tftp-{}", netns::random_hex(6)));
    std::fs::create_dir_all(&tftp_root).unwrap();
    let tftp_flag = format!("--tftp-root={}", tftp_root.display());
    let tc = TestCluster::start_with("pxe-boot", 1, &[], &[&tftp_flag])
        .await
        .unwrap();
    let _logs = RackLogsOnPanic(&tc.cluster);
    let dir = tc.dir.join("pxe");
    std::fs::create_dir_all(&dir).unwrap();

    let lab = Lab::new();
    let vm = lab.netns("vm").unwrap();
    vm.bridge("br0").unwrap();
    let link = lab
        .root_veth("vm", Some("10.26.0.1/24"), &vm, End::new("up0", None))
        .unwrap();
    vm.attach("up0", "br0").unwrap();
    vm.ip(&["tuntap", "add", "dev", "tap0", "mode", "tap"])
        .unwrap();
    vm.attach("tap0", "br0").unwrap();
    let http_port = 20_000 + u16::from_str_radix(&netns::random_hex(4), 16).unwrap_or(0) % 20_000;
    tc.cluster
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
    ingot(
        &tc,
        &[
            "subnets",
            "create",
            "10.26.0.0/24",
            "--gateway",
            "10.26.0.1",
            "--dynamic",
            "10.26.0.100-10.26.0.199",
            "--primary",
            "r1",
            "--pxe-lease-time",
            "60s",
        ],
    );

    // The images: iPXE's binaries, and a ramdisk of a Debian kernel + a busybox initramfs.
    ingot(&tc, &["images", "import-ipxe"]);
    let initrd = initramfs(&dir, &busybox);
    ingot(
        &tc,
        &[
            "images",
            "upload",
            "ingot-ramdisk",
            "--kind",
            "ramdisk",
            "--arch",
            "amd64",
            "--kernel",
            vmlinuz.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
        ],
    );

    let mac = format!("52:54:00:{}", &netns::mac_str(&netns::random_mac())[9..]);
    let vars = dir.join("vars.fd");
    std::fs::copy(ovmf_vars, &vars).unwrap();
    let serial = dir.join("serial.log");
    let args: Vec<String> = [
        "-accel".to_string(),
        "tcg".into(),
        "-M".into(),
        "q35".into(),
        "-m".into(),
        "512".into(),
        "-smp".into(),
        "1".into(),
        "-no-reboot".into(),
        "-nographic".into(),
        "-monitor".into(),
        "none".into(),
        "-serial".into(),
        format!("file:{}", serial.display()),
        "-boot".into(),
        "n".into(),
        "-drive".into(),
        format!(
            "if=pflash,format=raw,readonly=on,file={}",
            ovmf_code.display()
        ),
        "-drive".into(),
        format!("if=pflash,format=raw,file={}", vars.display()),
        "-netdev".into(),
        "tap,id=n0,ifname=tap0,script=no,downscript=no".into(),
        // No iPXE option ROM: OVMF's own PXE client, like real UEFI hardware.
        "-device".into(),
        format!("virtio-net-pci,netdev=n0,mac={mac},romfile="),
    ]
    .into();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let t0 = Instant::now();
    let mut qemu = vm
        .spawn("qemu-system-x86_64", &a, &dir.join("qemu.log"))
        .unwrap();

    let limit = Duration::from_secs(300);
    let marker = loop {
        let text = std::fs::read(&serial)
            .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
            .unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("INGOT-PXE-MARKER")) {
            break line.to_string();
        }
        if !qemu.running() || t0.elapsed() > limit {
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            panic!(
                "no marker on the serial console after {:?} (qemu running: {}); serial tail:\n{}",
                t0.elapsed(),
                qemu.running(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("{test}: marker after {:?}: {marker}", t0.elapsed());
    assert!(marker.contains("ingot.purpose=enlist"), "{marker}");
    assert!(
        marker.contains(&format!("ingot.rack=http://10.26.0.1:{http_port}")),
        "{marker}"
    );
    assert!(
        marker.contains("initrd=initrd"),
        "UEFI needs initrd= on the kernel line: {marker}"
    );
    qemu.stop(Duration::from_secs(5));

    // The MAC was enlisted, and its boot steps are its events.
    let system_id = wait_new_machine(&tc, &mac, Duration::from_secs(20)).await;
    let t1 = Instant::now();
    loop {
        let events = ingot(&tc, &["events", "list", "--machine", &system_id]);
        let seen = ["dhcp", "script", "file-finished"].map(|s| events.contains(s));
        if seen.iter().all(|s| *s) {
            break;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(15),
            "boot steps missing from the events of {} (dhcp, script, file-finished seen: {seen:?}):\n{events}",
            system_id
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = std::fs::remove_dir_all(&tftp_root);
}
