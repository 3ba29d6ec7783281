//! What each simulated machine is: its MAC, UUID and hardware, derived deterministically from the fleet
//! seed and the machine's index, so a fleet can be recreated identically and allocation constraints and tag
//! definitions have varied hardware to match against.

use ingot_common::model::{Disk, Firmware, Inventory, Nic};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Architecture every simulated machine reports.
pub const ARCH: &str = "amd64/generic";

fn digest(seed: u64, index: usize, what: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"ingot-sim\0");
    h.update(what.as_bytes());
    h.update(seed.to_be_bytes());
    h.update((index as u64).to_be_bytes());
    h.finalize().into()
}

/// The low 24 bits every MAC of machine `index` shares: a per-seed base plus the index, so MACs are
/// unique within a fleet of up to 2^24 machines.
fn mac_suffix(seed: u64, index: usize) -> u32 {
    let d = digest(seed, 0, "mac-base");
    let base = u32::from_be_bytes([0, d[0], d[1], d[2]]);
    base.wrapping_add(index as u32) & 0x00ff_ffff
}

/// NIC `nic` (0 = the boot NIC) of machine `index`: `52:54:0<nic>:xx:xx:xx`, locally administered (the
/// QEMU prefix), unique per fleet and seed.
pub fn mac(seed: u64, index: usize, nic: u8) -> String {
    let s = mac_suffix(seed, index);
    format!(
        "52:54:{:02x}:{:02x}:{:02x}:{:02x}",
        nic,
        (s >> 16) & 0xff,
        (s >> 8) & 0xff,
        s & 0xff
    )
}

/// The machine's SMBIOS UUID (also its Redfish system id): a version-4-shaped UUID from the seed.
pub fn uuid(seed: u64, index: usize) -> String {
    let d = digest(seed, index, "uuid");
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    ingot_common::secret::uuid_v4_text(b)
}

/// A hardware family the generator picks from, so fleets have the mix of a real data centre.
struct Profile {
    product: &'static str,
    cpus: &'static [u32],
    cpu_models: &'static [&'static str],
    memory_gib: &'static [u64],
    disks: &'static [DiskSpec],
    nic_speeds: &'static [u64],
    nics: (usize, usize),
}

/// Disks of one kind in a profile: how many (inclusive range) and how large (GiB, inclusive range).
struct DiskSpec {
    kind: DiskKind,
    count: (usize, usize),
    size_gib: (u64, u64),
}

const fn disks(kind: DiskKind, count: (usize, usize), size_gib: (u64, u64)) -> DiskSpec {
    DiskSpec {
        kind,
        count,
        size_gib,
    }
}

#[derive(Clone, Copy)]
enum DiskKind {
    Nvme,
    Ssd,
    Hdd,
}

const PROFILES: &[(u32, Profile)] = &[
    (
        3,
        Profile {
            product: "SIM-1U-small",
            cpus: &[4, 8],
            cpu_models: &["Intel(R) Xeon(R) E-2288G", "AMD EPYC 4344P"],
            memory_gib: &[8, 16, 32],
            disks: &[disks(DiskKind::Ssd, (1, 1), (240, 480))],
            nic_speeds: &[1_000],
            nics: (1, 2),
        },
    ),
    (
        4,
        Profile {
            product: "SIM-1U-general",
            cpus: &[16, 24, 32],
            cpu_models: &["Intel(R) Xeon(R) Gold 6338", "AMD EPYC 7313"],
            memory_gib: &[64, 128],
            disks: &[disks(DiskKind::Ssd, (1, 2), (480, 960))],
            nic_speeds: &[10_000, 25_000],
            nics: (2, 2),
        },
    ),
    (
        2,
        Profile {
            product: "SIM-2U-storage",
            cpus: &[16, 32],
            cpu_models: &["Intel(R) Xeon(R) Silver 4314", "AMD EPYC 7302P"],
            memory_gib: &[128, 256],
            disks: &[
                disks(DiskKind::Ssd, (1, 1), (480, 480)),
                disks(DiskKind::Hdd, (4, 8), (4_000, 16_000)),
            ],
            nic_speeds: &[25_000],
            nics: (2, 3),
        },
    ),
    (
        1,
        Profile {
            product: "SIM-2U-compute",
            cpus: &[64, 96, 128],
            cpu_models: &["AMD EPYC 9354", "Intel(R) Xeon(R) Platinum 8480+"],
            memory_gib: &[256, 512, 1024],
            disks: &[disks(DiskKind::Nvme, (2, 4), (1_600, 3_840))],
            nic_speeds: &[25_000, 100_000],
            nics: (2, 3),
        },
    ),
];

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    // Every list in PROFILES is a non-empty constant.
    &items[rng.gen_range(0..items.len())]
}

/// The machine's hardware as its agent reports it at commissioning; its first NIC carries the boot MAC
/// ([`mac`] with `nic` 0).
pub fn inventory(seed: u64, index: usize, uuid: &str) -> Inventory {
    let d = digest(seed, index, "hardware");
    let mut rng = StdRng::from_seed(d);
    let total: u32 = PROFILES.iter().map(|(w, _)| *w).sum();
    let mut roll = rng.gen_range(0..total.max(1));
    let mut profile = &PROFILES[0].1;
    for (w, p) in PROFILES {
        if roll < *w {
            profile = p;
            break;
        }
        roll -= w;
    }

    let mut disk_list = Vec::new();
    let (mut sd, mut nvme) = (0u8, 0u8);
    for spec in profile.disks {
        let kind = &spec.kind;
        let n = rng.gen_range(spec.count.0..=spec.count.1);
        for _ in 0..n {
            let size = rng.gen_range(spec.size_gib.0..=spec.size_gib.1);
            let serial = format!("SIM{:08X}", rng.gen::<u32>());
            let disk = match kind {
                DiskKind::Nvme => {
                    let name = format!("nvme{nvme}n1");
                    nvme += 1;
                    Disk {
                        name,
                        size_gib: size,
                        rotational: false,
                        model: "SIMNVMe PM1733".into(),
                        serial,
                        tags: vec!["nvme".into()],
                    }
                }
                DiskKind::Ssd | DiskKind::Hdd => {
                    let name = format!("sd{}", (b'a' + sd.min(25)) as char);
                    sd += 1;
                    let hdd = matches!(kind, DiskKind::Hdd);
                    Disk {
                        name,
                        size_gib: size,
                        rotational: hdd,
                        model: if hdd {
                            "SIMHDD ST8000NM".into()
                        } else {
                            "SIMSSD MZ7LH".into()
                        },
                        serial,
                        tags: vec![],
                    }
                }
            };
            disk_list.push(disk);
        }
    }

    let nic_count = rng.gen_range(profile.nics.0..=profile.nics.1);
    let speed = *pick(&mut rng, profile.nic_speeds);
    let nics = (0..nic_count)
        .map(|i| Nic {
            name: format!("eno{}", i + 1),
            mac: mac(seed, index, i as u8),
            speed_mbps: speed,
            link: i == 0 || rng.gen_bool(0.5),
        })
        .collect();

    let uefi = rng.gen_bool(0.9);
    let mut dmi = BTreeMap::new();
    dmi.insert("system_vendor".into(), "Ingot Simulated Systems".into());
    dmi.insert("product_name".into(), profile.product.into());
    dmi.insert(
        "serial_number".into(),
        format!("SIM{}", &hex::encode(&d[20..26]).to_ascii_uppercase()),
    );
    dmi.insert("system_uuid".into(), uuid.into());

    Inventory {
        cpu_count: *pick(&mut rng, profile.cpus),
        cpu_model: (*pick(&mut rng, profile.cpu_models)).into(),
        memory_mib: pick(&mut rng, profile.memory_gib) * 1024,
        disks: disk_list,
        nics,
        firmware: Firmware {
            boot_mode: if uefi { "uefi" } else { "bios" }.into(),
            vendor: "Ingot Sim Firmware".into(),
            version: format!("1.{}.{}", rng.gen_range(0..5), rng.gen_range(0..20)),
        },
        dmi,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn macs_are_unique_locally_administered_and_stable() {
        let macs: HashSet<_> = (0..5000).map(|i| mac(7, i, 0)).collect();
        assert_eq!(macs.len(), 5000);
        assert!(macs.iter().all(|m| m.starts_with("52:54:00:")));
        assert_eq!(mac(7, 3, 0), mac(7, 3, 0));
        assert_ne!(mac(7, 3, 0), mac(8, 3, 0));
        assert!(mac(7, 3, 1).parse::<ingot_common::Mac>().is_ok());
    }

    #[test]
    fn uuids_look_like_uuids() {
        let u = uuid(1, 2);
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(uuid(1, 2), uuid(1, 3));
    }

    #[test]
    fn inventories_vary_and_pass_validation() {
        let invs: Vec<_> = (0..50).map(|i| inventory(3, i, &uuid(3, i))).collect();
        for (i, inv) in invs.iter().enumerate() {
            ingot_common::validate::inventory("inventory", inv).unwrap();
            assert_eq!(inv.nics[0].mac, mac(3, i, 0));
            assert!(!inv.disks.is_empty());
        }
        let cpus: HashSet<_> = invs.iter().map(|i| i.cpu_count).collect();
        assert!(cpus.len() >= 3, "{cpus:?}");
        assert_eq!(invs[4], inventory(3, 4, &uuid(3, 4)));
    }
}
