//! `ingot images build-ramdisk`: Ingot's deploy/commission/rescue ramdisk. A Debian kernel and an
//! initramfs (gzip'd newc cpio written by [`super::cpio`]) holding the storage and NIC modules in load
//! order, busybox-static with its applet links, dropbear (rescue) and ingot-agent with the libraries
//! they link, and an `/init` that loads the modules, gets a DHCP lease and runs the agent.

use super::cpio::{Archive, Kind};
use super::debs::{self, Debs};
use super::kmod::ModuleTree;
use super::{mib, sha256_hex, Built, RamdiskArgs, Steps};
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Drivers a server needs to see its disks and NICs (virtio for VMs; SATA, SAS, NVMe; the common
/// Intel, Broadcom, Mellanox, Realtek NICs), plus FAT (the agent's cloud-init seed) and ext4. Names a
/// kernel lacks are skipped; each one's dependencies come along.
pub(super) const RAMDISK_MODULES: &[&str] = &[
    // crc32c first: libcrc32c (bnx2x, ext4) asks the crypto API for it at load time (a softdep).
    "crc32c_generic",
    "crc32c_intel",
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "virtio_net",
    "ahci",
    "ata_piix",
    "nvme",
    "sd_mod",
    "sr_mod",
    "megaraid_sas",
    "mpt3sas",
    "hpsa",
    "smartpqi",
    "e1000",
    "e1000e",
    "igb",
    "igc",
    "ixgbe",
    "i40e",
    "ice",
    "bnxt_en",
    "tg3",
    "bnx2",
    "bnx2x",
    "mlx4_en",
    "mlx5_core",
    "r8169",
    "vmxnet3",
    "fat",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_iso8859_1",
    "nls_utf8",
    "ext4",
];

/// Where the init scripts find the module list (one path under /lib/modules per line, in load order).
pub(super) const MODULE_LIST: &str = "etc/ingot/modules";

/// The ramdisk's /init: a busybox sh script (PID 1).
pub(super) fn init_script() -> String {
    r#"#!/bin/sh
# /init of Ingot's ramdisk, written by `ingot images build-ramdisk`. PID 1: it must never exit.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
ln -sf /run /var/run 2>/dev/null
echo "ingot-ramdisk: loading drivers"
while read -r m; do insmod "/lib/modules/$m" 2>/dev/null; done < /etc/ingot/modules
ip link set lo up
# The interface the machine booted from first (ingot.mac= on the command line), then every other one.
bootmac=$(sed -n 's/.*ingot\.mac=\([0-9a-fA-F:-]*\).*/\1/p' /proc/cmdline | tr 'A-F-' 'a-f:')
ifaces=""
for d in /sys/class/net/*; do
  i=${d##*/}
  [ "$i" = lo ] && continue
  ip link set "$i" up 2>/dev/null
  if [ -n "$bootmac" ] && [ "$(cat "$d/address" 2>/dev/null)" = "$bootmac" ]; then
    ifaces="$i $ifaces"
  else
    ifaces="$ifaces $i"
  fi
done
net=""
for round in 1 2 3; do
  for i in $ifaces; do
    if udhcpc -i "$i" -n -q -t 5 -T 2 -s /etc/udhcpc.script >/dev/null 2>&1; then
      net=$(cat /run/ingot-net 2>/dev/null)
      break 2
    fi
  done
  sleep 2
done
if [ -n "$net" ]; then
  echo "ingot-ramdisk: $net, agent starting"
else
  echo "ingot-ramdisk: no interface got a DHCP address (tried:$ifaces), agent starting"
fi
tries=0
while [ "$tries" -lt 5 ]; do
  /usr/bin/ingot-agent
  rc=$?
  if [ "$rc" -eq 0 ]; then
    echo "ingot-ramdisk: agent finished"
    while true; do sleep 3600; done
  fi
  tries=$((tries + 1))
  echo "ingot-ramdisk: agent exited with code $rc (run $tries of 5)"
  [ "$tries" -lt 5 ] && sleep 10
done
echo "ingot-ramdisk: agent failed 5 times, powering off"
poweroff -f
while true; do sleep 3600; done
"#
    .to_string()
}

/// busybox udhcpc's event script: configures the address, default route and DNS of the lease, and
/// records "<interface> <address>/<prefix>" in /run/ingot-net for /init's summary line.
pub(super) fn udhcpc_script() -> String {
    r#"#!/bin/sh
# udhcpc event script of Ingot's ramdisk: $interface $ip $mask (prefix length) $router $dns $domain.
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    if [ -n "$router" ]; then
      ip route del default 2>/dev/null
      for r in $router; do ip route add default via "$r" dev "$interface" && break; done
    fi
    : > /etc/resolv.conf
    [ -n "$domain" ] && echo "search $domain" >> /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    echo "$interface $ip/${mask:-24}" > /run/ingot-net
    ;;
esac
exit 0
"#
    .to_string()
}

/// A work directory removed when dropped (also on errors).
pub(super) struct WorkDir(
    /// The directory: `$TMPDIR/ingot-<what>-<pid>`.
    pub(super) PathBuf,
);

impl WorkDir {
    /// A fresh, empty work directory for one build.
    pub(super) fn new(what: &str) -> Result<WorkDir> {
        let p = std::env::temp_dir().join(format!("ingot-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(WorkDir(p))
    }
}

impl Drop for WorkDir {
    /// Removes the directory, unless something is still mounted under it (a failed mmdebstrap can
    /// leave its /proc or /dev mounts behind: deleting through them would reach the host's files).
    fn drop(&mut self) {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let me = self.0.display().to_string();
        let busy = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .any(|m| m == me || m.starts_with(&format!("{me}/")));
        if busy {
            eprintln!(
                "left {me} in place: something is still mounted under it (umount -R it, then remove it)"
            );
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The directories, device nodes and files every Ingot initramfs has.
pub(super) fn base(a: &mut Archive) -> Result<()> {
    for d in [
        "proc", "sys", "dev", "run", "tmp", "mnt", "root", "etc", "bin", "sbin", "usr/bin",
        "usr/sbin", "var",
    ] {
        a.dir(d, 0o755)?;
    }
    a.dir("tmp", 0o1777)?;
    a.dir("root", 0o700)?;
    a.dir("root/.ssh", 0o700)?;
    a.symlink("var/run", "/run")?;
    a.add("dev/console", Kind::CharDev { major: 5, minor: 1 }, 0o600)?;
    a.add("dev/null", Kind::CharDev { major: 1, minor: 3 }, 0o666)?;
    a.file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
        0o644,
    )?;
    a.file("etc/group", b"root:x:0:\n".to_vec(), 0o644)?;
    a.file("etc/shells", b"/bin/sh\n/bin/ash\n".to_vec(), 0o644)?;
    Ok(())
}

/// Adds the static busybox unpacked under `root` as /bin/busybox, with a symlink per applet (from
/// `busybox --list-full`; the few /init needs when that cannot run).
pub(super) fn add_busybox(a: &mut Archive, root: &Path) -> Result<()> {
    let bb = root.join("bin/busybox");
    let data = std::fs::read(&bb)
        .with_context(|| format!("reading {} (from busybox-static)", bb.display()))?;
    a.file("bin/busybox", data, 0o755)?;
    let listed = std::process::Command::new(&bb)
        .arg("--list-full")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let applets: Vec<String> = match listed {
        Some(l) => l
            .lines()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        None => [
            "bin/sh",
            "bin/mount",
            "bin/sleep",
            "bin/cat",
            "bin/echo",
            "bin/ln",
            "bin/mkdir",
            "bin/sed",
            "sbin/insmod",
            "sbin/ip",
            "sbin/poweroff",
            "usr/bin/tr",
            "sbin/udhcpc",
            "sbin/blkid",
            "sbin/findfs",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    };
    for p in applets {
        if p == "bin/busybox" || a.contains(&p) {
            continue;
        }
        a.symlink(&p, "/bin/busybox")?;
    }
    Ok(())
}

/// Adds the `wanted` modules that exist in `tree` and their dependencies under /lib/modules, and the
/// load-order list [`MODULE_LIST`]; returns (modules added, wanted names absent from this kernel).
pub(super) fn add_modules(
    a: &mut Archive,
    tree: &ModuleTree,
    wanted: &[&str],
) -> Result<(usize, Vec<String>)> {
    let (mods, missing) = tree.resolve(wanted)?;
    let names: Vec<&str> = mods.iter().map(|m| m.name.as_str()).collect();
    let mut list = String::new();
    for m in &mods {
        let rel = format!("{}/{}", tree.version, m.rel);
        a.file(&format!("lib/modules/{rel}"), m.data.clone(), 0o644)?;
        list.push_str(&rel);
        list.push('\n');
    }
    a.file(MODULE_LIST, list.into_bytes(), 0o644)?;
    Ok((names.len(), missing))
}

/// The archive, gzip'd with no name or timestamp in the header (same tree, same bytes). The cpio is
/// read back first: every entry must be there, /init among them.
pub(super) fn gzip(a: &Archive) -> Result<Vec<u8>> {
    let mut raw = Vec::new();
    a.write_to(&mut raw)?;
    let back = super::cpio::read(&raw)?;
    if back.len() != a.entries().count() || !back.iter().any(|(p, _)| p == "init") {
        bail!(
            "the initramfs did not read back whole ({} entries)",
            back.len()
        );
    }
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    enc.write_all(&raw)?;
    Ok(enc.finish()?)
}

/// Where the libraries of the binaries added to a ramdisk are looked up, and where stripped copies go.
struct Binaries<'a> {
    /// Unpacked packages searched before the host (their paths become the ramdisk's).
    roots: &'a [PathBuf],
    /// Scratch directory for the stripped copies.
    work: &'a Path,
}

impl Binaries<'_> {
    /// Adds a binary (stripped when `strip` works on it) at `at` and the libraries it links.
    fn add(&self, a: &mut Archive, bin: &Path, at: &str) -> Result<()> {
        let stripped = self.work.join(format!("stripped-{}", at.replace('/', "_")));
        let ok = std::process::Command::new("strip")
            .arg("--strip-unneeded")
            .arg("-o")
            .arg(&stripped)
            .arg(bin)
            .output()
            .is_ok_and(|o| o.status.success());
        let data = if ok {
            std::fs::read(&stripped)?
        } else {
            std::fs::read(bin).with_context(|| format!("reading {}", bin.display()))?
        };
        a.file(at, data, 0o755)?;
        for lib in debs::shared_libs(bin, self.roots)? {
            if a.contains(&lib.at) {
                continue;
            }
            let data = std::fs::read(&lib.from)
                .with_context(|| format!("reading {}", lib.from.display()))?;
            a.file(&lib.at, data, 0o755)?;
        }
        Ok(())
    }
}

/// Downloads and unpacks the kernel package under `root`; returns the vmlinuz path and module tree.
pub(super) fn kernel(
    debs: &Debs,
    explicit: Option<&str>,
    root: &Path,
    steps: &Steps,
) -> Result<(PathBuf, ModuleTree)> {
    let pkg = debs::kernel_package(explicit)?;
    debs.unpack(&[(&pkg, root)], steps)?;
    let tree = ModuleTree::open(root)?;
    let vmlinuz = root.join(format!("boot/vmlinuz-{}", tree.version));
    if !vmlinuz.is_file() {
        bail!(
            "{pkg} has no boot/vmlinuz-{}: is it a kernel image package?",
            tree.version
        );
    }
    Ok((vmlinuz, tree))
}

/// Builds the ramdisk into `args.out`.
pub(super) fn build(args: &RamdiskArgs, steps: &Steps) -> Result<Built> {
    let agent = match &args.agent {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("finding the running ingot executable")?
            .with_file_name("ingot-agent"),
    };
    if !agent.is_file() {
        bail!(
            "the agent binary {} does not exist: build it (cargo build -p ingot-agent) or pass --agent PATH",
            agent.display()
        );
    }
    let debs = Debs::new(args.debs.cache.as_deref())?;
    let work = WorkDir::new("ramdisk")?;
    let kroot = work.0.join("kernel");
    let (vmlinuz, tree) = kernel(&debs, args.debs.kernel_package.as_deref(), &kroot, steps)?;
    let mut a = Archive::new();
    base(&mut a)?;
    steps.step(format!("kernel {}: resolving modules", tree.version));
    let (n, missing) = add_modules(&mut a, &tree, RAMDISK_MODULES)?;
    steps.step(format!(
        "{n} modules (with dependencies); not in this kernel: {}",
        if missing.is_empty() {
            "none".to_string()
        } else {
            missing.join(" ")
        }
    ));
    // busybox, dropbear and the packages of the libraries dropbear links (found there first, then
    // on the host). libc6 is the host's: the agent links it too, and it is the newest.
    let bb = work.0.join("busybox");
    let db = work.0.join("dropbear");
    let deps: Vec<(String, PathBuf)> = debs::depends("dropbear-bin")?
        .into_iter()
        .filter(|d| d != "libc6")
        .map(|d| {
            let r = work.0.join(format!("dep-{d}"));
            (d, r)
        })
        .collect();
    let mut what: Vec<(&str, &Path)> = vec![("busybox-static", &bb), ("dropbear-bin", &db)];
    what.extend(deps.iter().map(|(d, r)| (d.as_str(), r.as_path())));
    debs.unpack(&what, steps)?;
    add_busybox(&mut a, &bb)?;
    let mut roots = vec![db.clone()];
    roots.extend(deps.iter().map(|(_, r)| r.clone()));
    steps.step("adding dropbear, ingot-agent and their libraries");
    let bins = Binaries {
        roots: &roots,
        work: &work.0,
    };
    bins.add(&mut a, &db.join("usr/sbin/dropbear"), "usr/sbin/dropbear")?;
    let key = db.join("usr/bin/dropbearkey");
    if key.is_file() {
        bins.add(&mut a, &key, "usr/bin/dropbearkey")?;
    }
    bins.add(&mut a, &agent, "usr/bin/ingot-agent")?;
    // dropbear -R keeps the host keys it generates here.
    a.dir("etc/dropbear", 0o700)?;
    a.file("init", init_script().into_bytes(), 0o755)?;
    a.file("etc/udhcpc.script", udhcpc_script().into_bytes(), 0o755)?;
    steps.step("writing the initramfs (cpio newc, gzip)");
    let initrd = gzip(&a)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let kernel_out = args.out.join("kernel");
    let initrd_out = args.out.join("initrd");
    std::fs::copy(&vmlinuz, &kernel_out)
        .with_context(|| format!("writing {}", kernel_out.display()))?;
    let mut f = std::fs::File::create(&initrd_out)
        .with_context(|| format!("writing {}", initrd_out.display()))?;
    f.write_all(&initrd)?;
    f.sync_all()?;
    steps.step(format!(
        "wrote {} ({}) and {} ({}, sha256 {})",
        kernel_out.display(),
        mib(std::fs::metadata(&kernel_out)?.len()),
        initrd_out.display(),
        mib(initrd.len() as u64),
        sha256_hex(&initrd)
    ));
    steps.finish();
    Ok(Built {
        kind: "ramdisk",
        files: vec![("kernel".into(), kernel_out), ("initrd".into(), initrd_out)],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_script_does_what_the_agent_expects() {
        let s = init_script();
        assert!(s.starts_with("#!/bin/sh\n"));
        for needle in [
            "mount -t proc proc /proc",
            "mount -t sysfs sysfs /sys",
            "mount -t devtmpfs devtmpfs /dev",
            "mount -t tmpfs tmpfs /run",
            "insmod \"/lib/modules/$m\"",
            "/etc/ingot/modules",
            "udhcpc -i \"$i\" -n -q -t 5 -T 2 -s /etc/udhcpc.script",
            "echo \"ingot-ramdisk: $net, agent starting\"",
            "/usr/bin/ingot-agent",
            "sleep 10",
            "poweroff -f",
        ] {
            assert!(s.contains(needle), "missing {needle:?}");
        }
        assert!(s.contains(MODULE_LIST.trim_start_matches("etc/")));
        // /init must never return: it ends in an endless loop.
        assert!(s.trim_end().ends_with("while true; do sleep 3600; done"));
        let u = udhcpc_script();
        for needle in [
            "ip addr add \"$ip/${mask:-24}\"",
            "ip route add default via",
            "nameserver $d",
            "/run/ingot-net",
        ] {
            assert!(u.contains(needle), "missing {needle:?}");
        }
    }

    #[test]
    fn base_has_console_and_root_home() {
        let mut a = Archive::new();
        base(&mut a).expect("base");
        for p in [
            "dev/console",
            "dev/null",
            "etc/passwd",
            "etc/group",
            "etc/shells",
            "root/.ssh",
            "tmp",
            "run",
            "var/run",
        ] {
            assert!(a.contains(p), "{p}");
        }
    }
}
