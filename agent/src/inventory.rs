//! The hardware inventory a commissioning boot reports, read from `/proc`, `/sys` and DMI.
//!
//! The `Inventory` message has no fields for some facts; they go where the region already keeps
//! free-form facts (bounded by `ingot_common::validate::inventory`):
//! - CPU topology: DMI keys `cpu_sockets`, `cpu_cores`, `cpu_threads` (`cpu_count` is the logical CPUs);
//! - a disk's bus: one of its tags (`virtio`, `nvme`, `sata`, `scsi`, `usb`);
//! - a NIC's driver: DMI key `nic.<name>.driver`;
//! - BIOS release date, board and chassis: DMI keys `bios_date`, `board_vendor`, `board_name`,
//!   `chassis_vendor`.

use crate::platform::Platform;
use ingot_common::model::{Disk, Firmware, Inventory, Nic};
use std::collections::{BTreeMap, BTreeSet};

/// Most DMI entries the region accepts (`validate::limits::DMI`).
const MAX_DMI: usize = 64;
/// Longest inventory string the region accepts (`validate::limits::INVENTORY_TEXT`).
const MAX_TEXT: usize = 256;
/// Longest name the region accepts (`validate::limits::NAME`).
const MAX_NAME: usize = 64;

/// `s` cut to at most `max` bytes on a character boundary.
fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// CPU facts: (model, logical CPUs, sockets, cores).
pub fn cpu(p: &Platform) -> (String, u32, u32, u32) {
    let info = p.read("/proc/cpuinfo").unwrap_or_default();
    let mut model = String::new();
    let mut threads = 0u32;
    let mut sockets = BTreeSet::new();
    let mut cores = BTreeSet::new();
    let mut phys = None;
    for line in info.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        match k {
            "processor" => threads += 1,
            "model name" | "cpu model" if model.is_empty() => model = v.to_string(),
            "physical id" => {
                phys = Some(v.to_string());
                sockets.insert(v.to_string());
            }
            "core id" => {
                cores.insert((phys.clone().unwrap_or_default(), v.to_string()));
            }
            _ => {}
        }
    }
    if sockets.is_empty() {
        // No topology in cpuinfo (many ARM kernels): from /sys/devices/system/cpu.
        for c in p.list("/sys/devices/system/cpu") {
            if c.strip_prefix("cpu")
                .is_none_or(|n| n.parse::<u32>().is_err())
            {
                continue;
            }
            let t = format!("/sys/devices/system/cpu/{c}/topology");
            if let Some(pkg) = p.number(format!("{t}/physical_package_id")) {
                sockets.insert(pkg.to_string());
                let core = p.number(format!("{t}/core_id")).unwrap_or(0);
                cores.insert((pkg.to_string(), core.to_string()));
            }
        }
    }
    if threads == 0 {
        threads = p
            .list("/sys/devices/system/cpu")
            .iter()
            .filter(|c| {
                c.strip_prefix("cpu")
                    .is_some_and(|n| n.parse::<u32>().is_ok())
            })
            .count() as u32;
    }
    let threads = threads.max(1);
    let sockets = (sockets.len() as u32).max(1);
    let cores = if cores.is_empty() {
        threads
    } else {
        cores.len() as u32
    };
    (model, threads, sockets, cores)
}

/// A `/proc/meminfo` value in KiB.
pub fn meminfo_kib(p: &Platform, key: &str) -> Option<u64> {
    let info = p.read("/proc/meminfo")?;
    info.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.split_whitespace().next()?.parse().ok())?
    })
}

/// The machine's installed memory in MiB: the online memory blocks the kernel manages
/// (`/sys/devices/system/memory/memoryN`, each `block_size_bytes`), which count what the firmware handed
/// over, holes and the kernel's own reservations included — what an operator means by "1 GiB of RAM".
/// `MemTotal` leaves out the kernel's reservations (a 1,024 MiB VM shows ~960 MiB), so it is only the
/// fallback when the memory blocks are not exposed.
pub fn installed_memory_mib(p: &Platform) -> u64 {
    let blocks = p
        .read("/sys/devices/system/memory/block_size_bytes")
        .and_then(|t| u64::from_str_radix(t.trim().trim_start_matches("0x"), 16).ok())
        .filter(|b| *b > 0)
        .map(|size| {
            let online = p
                .list("/sys/devices/system/memory")
                .into_iter()
                .filter(|n| n.starts_with("memory") && n[6..].parse::<u64>().is_ok())
                .filter(|n| {
                    p.read(format!("/sys/devices/system/memory/{n}/online"))
                        .is_none_or(|t| t.trim() == "1")
                })
                .count() as u64;
            online.saturating_mul(size) >> 20
        })
        .filter(|mib| *mib > 0);
    blocks.unwrap_or_else(|| meminfo_kib(p, "MemTotal").unwrap_or(0) / 1024)
}

/// Reads the machine's inventory.
pub fn collect(p: &Platform) -> Inventory {
    let (cpu_model, threads, sockets, cores) = cpu(p);
    let mut dmi = BTreeMap::new();
    let mut put = |k: String, v: String| {
        if !v.is_empty() && dmi.len() < MAX_DMI && k.len() <= MAX_NAME {
            dmi.insert(k, cut(&v, MAX_TEXT));
        }
    };
    put("cpu_sockets".into(), sockets.to_string());
    put("cpu_cores".into(), cores.to_string());
    put("cpu_threads".into(), threads.to_string());
    let id = |f: &str| p.text(format!("/sys/class/dmi/id/{f}"));
    for (key, file) in [
        ("system_vendor", "sys_vendor"),
        ("product_name", "product_name"),
        ("product_version", "product_version"),
        ("serial_number", "product_serial"),
        ("uuid", "product_uuid"),
        ("board_vendor", "board_vendor"),
        ("board_name", "board_name"),
        ("chassis_vendor", "chassis_vendor"),
        ("bios_date", "bios_date"),
    ] {
        put(key.into(), id(file));
    }
    let disks = p
        .disks()
        .into_iter()
        .take(256)
        .map(|d| Disk {
            name: cut(&d.name, MAX_NAME),
            size_gib: d.bytes >> 30,
            rotational: d.rotational,
            model: cut(&d.model, MAX_TEXT),
            serial: cut(&d.serial, MAX_TEXT),
            tags: if d.bus.is_empty() {
                vec![]
            } else {
                vec![d.bus.to_string()]
            },
        })
        .collect();
    let devices = p.nics();
    for n in &devices {
        put(format!("nic.{}.driver", n.name), n.driver.clone());
    }
    let nics = devices
        .into_iter()
        .take(256)
        .map(|n| Nic {
            name: cut(&n.name, MAX_NAME),
            mac: n.mac,
            speed_mbps: n.speed_mbps,
            link: n.link,
        })
        .collect();
    let firmware = Firmware {
        boot_mode: if p.path("/sys/firmware/efi").exists() {
            "uefi".into()
        } else {
            "bios".into()
        },
        vendor: cut(&id("bios_vendor"), MAX_TEXT),
        version: cut(&id("bios_version"), MAX_TEXT),
    };
    Inventory {
        cpu_count: threads,
        cpu_model: cut(&cpu_model, MAX_TEXT),
        memory_mib: installed_memory_mib(p),
        disks,
        nics,
        firmware,
        dmi,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::fake::{machine, put};

    #[test]
    fn a_fake_machine_is_inventoried_and_passes_the_regions_validation() {
        let t = tempfile::tempdir().unwrap();
        machine(t.path());
        let p = Platform::new(t.path());
        let inv = collect(&p);
        assert_eq!(inv.cpu_count, 2);
        assert_eq!(inv.cpu_model, "QEMU Virtual CPU version 2.5+");
        assert_eq!(inv.memory_mib, 2000);
        // With the kernel's memory blocks: what is installed, not MemTotal.
        put(
            t.path(),
            "sys/devices/system/memory/block_size_bytes",
            "8000000\n",
        );
        for i in 0..16 {
            put(
                t.path(),
                &format!("sys/devices/system/memory/memory{i}/online"),
                "1\n",
            );
        }
        put(t.path(), "sys/devices/system/memory/memory16/online", "0\n");
        assert_eq!(collect(&p).memory_mib, 2048);
        assert_eq!(inv.dmi["cpu_sockets"], "1");
        assert_eq!(inv.dmi["cpu_cores"], "2");
        assert_eq!(inv.dmi["cpu_threads"], "2");
        assert_eq!(inv.dmi["system_vendor"], "QEMU");
        assert_eq!(inv.dmi["serial_number"], "SER-1");
        assert_eq!(inv.dmi["uuid"], "1234-abcd");
        assert_eq!(inv.dmi["nic.eth0.driver"], "virtio_net");
        assert_eq!(inv.firmware.boot_mode, "uefi");
        assert_eq!(inv.firmware.vendor, "EFI Development Kit II / OVMF");
        let vda = inv.disks.iter().find(|d| d.name == "vda").unwrap();
        assert_eq!(
            (vda.size_gib, vda.tags.as_slice()),
            (0, &["virtio".to_string()][..])
        );
        assert_eq!(inv.nics.len(), 2);
        ingot_common::validate::inventory("inventory", &inv).unwrap();
        // It survives the wire.
        let back = ingot_proto::convert::inventory_from_proto(
            ingot_proto::convert::inventory_to_proto(&inv),
        );
        assert_eq!(back, inv);
    }

    #[test]
    fn topology_from_sys_when_cpuinfo_has_none_and_bounds_hold() {
        let t = tempfile::tempdir().unwrap();
        put(
            t.path(),
            "proc/cpuinfo",
            "processor : 0\nprocessor : 1\nprocessor : 2\nprocessor : 3\n",
        );
        for (c, pkg, core) in [(0, 0, 0), (1, 0, 0), (2, 1, 0), (3, 1, 1)] {
            let d = format!("sys/devices/system/cpu/cpu{c}/topology");
            put(
                t.path(),
                &format!("{d}/physical_package_id"),
                &format!("{pkg}\n"),
            );
            put(t.path(), &format!("{d}/core_id"), &format!("{core}\n"));
        }
        put(t.path(), "sys/class/dmi/id/sys_vendor", &"é".repeat(400));
        let p = Platform::new(t.path());
        let (_, threads, sockets, cores) = cpu(&p);
        assert_eq!((threads, sockets, cores), (4, 2, 3));
        let inv = collect(&p);
        assert_eq!(inv.dmi["cpu_sockets"], "2");
        assert_eq!(inv.firmware.boot_mode, "bios");
        assert!(inv.dmi["system_vendor"].len() <= MAX_TEXT);
    }
}
