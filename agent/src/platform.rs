//! Everything the agent reads or touches on the machine, under one root directory: `/proc`, `/sys`, `/dev`
//! and `/root/.ssh` in the ramdisk, a temporary directory with a fake `/sys` tree and plain files as disks
//! in tests. Power actions are not here: the flow returns what to do and only `main` does it.

use std::path::{Path, PathBuf};

/// Longest sysfs/procfs file read (cpuinfo of a large machine is the biggest).
const MAX_READ: u64 = 4 << 20;

/// The machine as the agent sees it.
#[derive(Debug, Clone)]
pub struct Platform {
    /// The root of `/proc`, `/sys`, `/dev` and `/root` (`/` in the ramdisk).
    pub root: PathBuf,
    /// The SSH server started for rescue.
    pub dropbear: PathBuf,
}

/// A whole disk as `/sys/block` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDisk {
    /// Kernel name (`vda`, `nvme0n1`).
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Logical sector size in bytes.
    pub sector: u64,
    /// Spinning.
    pub rotational: bool,
    /// Model string (may be empty).
    pub model: String,
    /// Serial number (may be empty).
    pub serial: String,
    /// The bus from the device path: virtio, nvme, sata, scsi, usb (empty: unknown).
    pub bus: &'static str,
    /// Whether the device discards (TRIM/UNMAP): `queue/discard_max_bytes` > 0.
    pub discard: bool,
    /// Its partitions: (kernel name, start byte, length in bytes).
    pub partitions: Vec<(String, u64, u64)>,
}

/// A physical NIC as `/sys/class/net` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetDevice {
    /// Interface name.
    pub name: String,
    /// MAC, lowercase.
    pub mac: String,
    /// Link up (carrier, or operstate up).
    pub link: bool,
    /// Speed in Mb/s (0 when unknown).
    pub speed_mbps: u64,
    /// Kernel driver name.
    pub driver: String,
}

/// Kernel names of block devices that are not disks to inventory, write or erase.
fn skipped_block(name: &str) -> bool {
    ["loop", "ram", "zram", "sr", "dm-", "md", "fd", "nbd"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// The bus of a block device from its resolved sysfs path.
pub fn bus_of(path: &str) -> &'static str {
    if path.contains("/usb") {
        "usb"
    } else if path.contains("/nvme") {
        "nvme"
    } else if path.contains("/ata") {
        "sata"
    } else if path.contains("/host") || path.contains("/target") {
        "scsi"
    } else if path.contains("/virtio") {
        "virtio"
    } else {
        ""
    }
}

/// The serial in a SCSI VPD page 0x80 (4-byte header, then the serial).
fn vpd80_serial(b: &[u8]) -> String {
    let len = b.get(3).copied().unwrap_or(0) as usize;
    let s = b.get(4..4 + len).unwrap_or_default();
    String::from_utf8_lossy(s).trim().to_string()
}

impl Platform {
    /// The machine under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Platform {
        Platform {
            root: root.into(),
            dropbear: PathBuf::from("/usr/sbin/dropbear"),
        }
    }

    /// `path` (absolute, as on the machine) under the root.
    pub fn path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// A small text file, bounded; `None` when absent or unreadable.
    pub fn read(&self, path: impl AsRef<Path>) -> Option<String> {
        use std::io::Read;
        let f = std::fs::File::open(
            self.root
                .join(path.as_ref().strip_prefix("/").unwrap_or(path.as_ref())),
        )
        .ok()?;
        let mut s = Vec::new();
        f.take(MAX_READ).read_to_end(&mut s).ok()?;
        Some(String::from_utf8_lossy(&s).into_owned())
    }

    /// A small file trimmed, empty when absent.
    pub fn text(&self, path: impl AsRef<Path>) -> String {
        self.read(path)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    }

    /// A decimal number in a file.
    pub fn number(&self, path: impl AsRef<Path>) -> Option<u64> {
        self.text(path).parse().ok()
    }

    /// Names of the entries of a directory, sorted (empty when absent).
    pub fn list(&self, path: impl AsRef<Path>) -> Vec<String> {
        let dir = self
            .root
            .join(path.as_ref().strip_prefix("/").unwrap_or(path.as_ref()));
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .take(4096)
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The last component of a symlink's target (a driver's name).
    pub fn link_name(&self, path: &str) -> String {
        std::fs::read_link(self.path(path))
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default()
    }

    /// The whole disks of the machine, sorted by name.
    pub fn disks(&self) -> Vec<BlockDisk> {
        let mut out = Vec::new();
        for name in self.list("/sys/block") {
            if skipped_block(&name) {
                continue;
            }
            let base = format!("/sys/block/{name}");
            let sectors = self.number(format!("{base}/size")).unwrap_or(0);
            if sectors == 0 || self.number(format!("{base}/ro")) == Some(1) {
                continue;
            }
            let resolved = std::fs::canonicalize(self.path(&base))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut serial = self.text(format!("{base}/serial"));
            if serial.is_empty() {
                serial = self.text(format!("{base}/device/serial"));
            }
            if serial.is_empty() {
                if let Ok(b) = std::fs::read(self.path(&format!("{base}/device/vpd_pg80"))) {
                    serial = vpd80_serial(&b);
                }
            }
            let mut partitions = Vec::new();
            for p in self.list(&base) {
                if !p.starts_with(&name) {
                    continue;
                }
                let (Some(start), Some(size)) = (
                    self.number(format!("{base}/{p}/start")),
                    self.number(format!("{base}/{p}/size")),
                ) else {
                    continue;
                };
                // sysfs counts partitions in 512-byte units whatever the sector size.
                partitions.push((p, start.saturating_mul(512), size.saturating_mul(512)));
            }
            out.push(BlockDisk {
                bytes: sectors.saturating_mul(512),
                sector: self
                    .number(format!("{base}/queue/logical_block_size"))
                    .filter(|s| s.is_power_of_two() && *s >= 512)
                    .unwrap_or(512),
                rotational: self.number(format!("{base}/queue/rotational")) == Some(1),
                model: self.text(format!("{base}/device/model")),
                serial,
                bus: bus_of(&resolved),
                discard: self
                    .number(format!("{base}/queue/discard_max_bytes"))
                    .unwrap_or(0)
                    > 0,
                partitions,
                name,
            });
        }
        out
    }

    /// The physical NICs (those with a `device`), sorted by name.
    pub fn nics(&self) -> Vec<NetDevice> {
        let mut out = Vec::new();
        for name in self.list("/sys/class/net") {
            let base = format!("/sys/class/net/{name}");
            if !self.path(&format!("{base}/device")).exists() {
                continue;
            }
            let mac = self.text(format!("{base}/address")).to_ascii_lowercase();
            if mac.len() != 17 || mac == "00:00:00:00:00:00" {
                continue;
            }
            let link = self.text(format!("{base}/carrier")) == "1"
                || self.text(format!("{base}/operstate")) == "up";
            // speed is -1 (or unreadable) without a link.
            let speed_mbps = self
                .text(format!("{base}/speed"))
                .parse::<i64>()
                .ok()
                .filter(|s| *s > 0)
                .unwrap_or(0) as u64;
            out.push(NetDevice {
                driver: self.link_name(&format!("{base}/device/driver")),
                name,
                mac,
                link,
                speed_mbps,
            });
        }
        out
    }

    /// The device node of disk `name`.
    pub fn dev(&self, name: &str) -> PathBuf {
        self.path(&format!("/dev/{name}"))
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A fake machine under a temporary directory.

    use super::*;
    use std::fs;

    /// Writes `text` at `path` under `root`, creating directories.
    pub fn put(root: &Path, path: &str, text: &str) {
        let p = root.join(path.trim_start_matches('/'));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    /// Adds a disk `name` of `bytes` on the device path `devpath` (under /sys/devices), with a plain file
    /// of that size as its /dev node.
    pub fn disk(root: &Path, name: &str, devpath: &str, bytes: u64, serial: &str) {
        let dir = format!("sys/devices/{devpath}/block/{name}");
        put(root, &format!("{dir}/size"), &format!("{}\n", bytes / 512));
        put(root, &format!("{dir}/queue/rotational"), "0\n");
        put(root, &format!("{dir}/queue/logical_block_size"), "512\n");
        put(root, &format!("{dir}/device/model"), "QEMU HARDDISK   \n");
        put(root, &format!("{dir}/serial"), serial);
        fs::create_dir_all(root.join("sys/block")).unwrap();
        std::os::unix::fs::symlink(
            format!("../devices/{devpath}/block/{name}"),
            root.join(format!("sys/block/{name}")),
        )
        .unwrap();
        fs::create_dir_all(root.join("dev")).unwrap();
        let f = fs::File::create(root.join(format!("dev/{name}"))).unwrap();
        f.set_len(bytes).unwrap();
    }

    /// Adds a NIC with a device and driver.
    pub fn nic(root: &Path, name: &str, mac: &str, driver: &str, up: bool) {
        let dir = format!("sys/devices/pci0000:00/0000:00:03.0/virtio0/net/{name}");
        put(root, &format!("{dir}/address"), &format!("{mac}\n"));
        put(
            root,
            &format!("{dir}/carrier"),
            if up { "1\n" } else { "0\n" },
        );
        put(
            root,
            &format!("{dir}/operstate"),
            if up { "up\n" } else { "down\n" },
        );
        put(
            root,
            &format!("{dir}/speed"),
            if up { "1000\n" } else { "-1\n" },
        );
        fs::create_dir_all(root.join(format!("sys/bus/virtio/drivers/{driver}"))).unwrap();
        fs::create_dir_all(root.join(format!("{dir}/device"))).unwrap();
        std::os::unix::fs::symlink(
            root.join(format!("sys/bus/virtio/drivers/{driver}")),
            root.join(format!("{dir}/device/driver")),
        )
        .unwrap();
        fs::create_dir_all(root.join("sys/class/net")).unwrap();
        std::os::unix::fs::symlink(root.join(dir), root.join(format!("sys/class/net/{name}")))
            .unwrap();
    }

    /// A typical small VM: two CPUs in one socket, 2 GiB, a virtio disk, a SATA disk, a NIC, lo.
    pub fn machine(root: &Path) {
        put(
            root,
            "proc/cpuinfo",
            "processor\t: 0\nmodel name\t: QEMU Virtual CPU version 2.5+\nphysical id\t: 0\ncore id\t: 0\n\n\
             processor\t: 1\nmodel name\t: QEMU Virtual CPU version 2.5+\nphysical id\t: 0\ncore id\t: 1\n\n",
        );
        put(
            root,
            "proc/meminfo",
            "MemTotal:        2048000 kB\nMemFree:  1000 kB\nMemAvailable:      16384 kB\n",
        );
        put(root, "sys/class/dmi/id/sys_vendor", "QEMU\n");
        put(
            root,
            "sys/class/dmi/id/product_name",
            "Standard PC (Q35 + ICH9, 2009)\n",
        );
        put(root, "sys/class/dmi/id/product_serial", "SER-1\n");
        put(root, "sys/class/dmi/id/product_uuid", "1234-abcd\n");
        put(
            root,
            "sys/class/dmi/id/bios_vendor",
            "EFI Development Kit II / OVMF\n",
        );
        put(root, "sys/class/dmi/id/bios_version", "0.0.0\n");
        fs::create_dir_all(root.join("sys/firmware/efi")).unwrap();
        disk(
            root,
            "vda",
            "pci0000:00/0000:00:04.0/virtio1",
            64 << 20,
            "disk-a",
        );
        disk(
            root,
            "sda",
            "pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0",
            32 << 20,
            "",
        );
        put(
            root,
            "sys/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda/queue/rotational",
            "1\n",
        );
        // A loop device and a CD-ROM are not disks.
        disk(root, "loop0", "virtual/block/loop0", 1 << 20, "");
        disk(
            root,
            "sr0",
            "pci0000:00/0000:00:1f.2/ata2/host1/target1:0:0/1:0:0:0",
            1 << 20,
            "",
        );
        nic(root, "eth0", "52:54:00:AA:00:01", "virtio_net", true);
        nic(root, "eth1", "52:54:00:aa:00:02", "e1000e", false);
        // lo and a bridge have no device.
        put(
            root,
            "sys/devices/virtual/net/lo/address",
            "00:00:00:00:00:00\n",
        );
        std::os::unix::fs::symlink(
            root.join("sys/devices/virtual/net/lo"),
            root.join("sys/class/net/lo"),
        )
        .unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::fake::*;
    use super::*;

    #[test]
    fn disks_and_nics_of_a_fake_machine() {
        let t = tempfile::tempdir().unwrap();
        machine(t.path());
        put(t.path(), "sys/block/vda/vda1/start", "2048\n");
        put(t.path(), "sys/block/vda/vda1/size", "4096\n");
        let p = Platform::new(t.path());
        let disks = p.disks();
        let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["sda", "vda"]);
        assert_eq!(disks[1].bytes, 64 << 20);
        assert_eq!(disks[1].bus, "virtio");
        assert_eq!(disks[1].serial, "disk-a");
        assert_eq!(
            disks[1].partitions,
            [("vda1".to_string(), 1 << 20, 2 << 20)]
        );
        assert_eq!(disks[0].bus, "sata");
        assert!(disks[0].rotational && !disks[1].rotational);
        assert_eq!(disks[0].model, "QEMU HARDDISK");
        let nics = p.nics();
        assert_eq!(nics.len(), 2);
        assert_eq!(nics[0].mac, "52:54:00:aa:00:01");
        assert_eq!((nics[0].link, nics[0].speed_mbps), (true, 1000));
        assert_eq!(nics[0].driver, "virtio_net");
        assert_eq!((nics[1].link, nics[1].speed_mbps), (false, 0));
    }

    #[test]
    fn buses_and_vpd_serials() {
        assert_eq!(
            bus_of("/sys/devices/pci0000:00/0000:00:05.0/nvme/nvme0/nvme0n1"),
            "nvme"
        );
        assert_eq!(
            bus_of(
                "/sys/devices/pci0000:00/0000:00:06.0/virtio2/host0/target0:0:0/0:0:0:0/block/sda"
            ),
            "scsi"
        );
        assert_eq!(
            bus_of(
                "/sys/devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0/host2/target2:0:0/block/sdb"
            ),
            "usb"
        );
        assert_eq!(bus_of("/sys/devices/virtual/block/x"), "");
        assert_eq!(vpd80_serial(b"\0\x80\0\x04AB12"), "AB12");
        assert_eq!(vpd80_serial(b"\0\x80\0\xffAB"), "");
    }
}
