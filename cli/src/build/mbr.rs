//! The MBR (DOS) partition table of Ingot's disk images: a pure codec for sector 0, and the layout the
//! builders use (the first partition at 1 MiB, FAT32 and active; the root partition after it for the
//! Debian image). Slots after the last used one stay free: when the agent writes an image to a larger
//! disk it appends a cloud-init NoCloud partition (label CIDATA) in the first free slot after the last
//! partition.

use anyhow::{bail, Result};

/// Bytes per sector in every image Ingot builds.
pub const SECTOR: u64 = 512;
/// Where the first partition starts: 1 MiB, the alignment every partitioner uses today.
pub const FIRST_LBA: u32 = 2048;
/// Partition type: FAT32 with LBA addressing (what syslinux, Linux and OVMF all read).
pub const TYPE_FAT32_LBA: u8 = 0x0c;
/// Partition type: Linux.
pub const TYPE_LINUX: u8 = 0x83;
/// The boot code area before the disk signature (syslinux's mbr.bin fits in it).
pub const BOOT_CODE: usize = 440;

/// One primary partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// First sector.
    pub start_lba: u32,
    /// Length in sectors.
    pub sectors: u32,
    /// Partition type byte.
    pub kind: u8,
    /// The active (boot) flag: the MBR boot code chains to this one.
    pub active: bool,
}

impl Partition {
    /// Offset of the partition in the image, in bytes.
    pub fn offset(&self) -> u64 {
        u64::from(self.start_lba) * SECTOR
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        u64::from(self.sectors) * SECTOR
    }

    /// One past the last sector.
    pub fn end_lba(&self) -> u64 {
        u64::from(self.start_lba) + u64::from(self.sectors)
    }
}

/// Builds sector 0: `boot_code` (at most 440 bytes, e.g. syslinux's mbr.bin), the disk signature, up
/// to four partitions (in slot order) and the 0x55AA mark. CHS fields hold the "use LBA" values
/// (FE FF FF); every reader of these images uses LBA.
pub fn encode(boot_code: &[u8], disk_id: u32, parts: &[Partition]) -> Result<[u8; 512]> {
    if boot_code.len() > BOOT_CODE {
        bail!(
            "MBR boot code is {} bytes; at most {BOOT_CODE} fit before the partition table",
            boot_code.len()
        );
    }
    if parts.len() > 4 {
        bail!(
            "an MBR holds at most 4 primary partitions, not {}",
            parts.len()
        );
    }
    let mut s = [0u8; 512];
    s[..boot_code.len()].copy_from_slice(boot_code);
    s[440..444].copy_from_slice(&disk_id.to_le_bytes());
    let mut prev_end = 1u64;
    for (i, p) in parts.iter().enumerate() {
        if p.sectors == 0 || u64::from(p.start_lba) < prev_end {
            bail!("partition {} overlaps the one before it or is empty", i + 1);
        }
        prev_end = p.end_lba();
        let e = &mut s[446 + 16 * i..446 + 16 * (i + 1)];
        e[0] = if p.active { 0x80 } else { 0 };
        e[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
        e[4] = p.kind;
        e[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
        e[8..12].copy_from_slice(&p.start_lba.to_le_bytes());
        e[12..16].copy_from_slice(&p.sectors.to_le_bytes());
    }
    s[510] = 0x55;
    s[511] = 0xaa;
    Ok(s)
}

/// The four slots of sector 0 (None for an empty slot), or an error if it has no 0x55AA mark.
pub fn decode(sector: &[u8]) -> Result<[Option<Partition>; 4]> {
    if sector.len() < 512 || sector[510] != 0x55 || sector[511] != 0xaa {
        bail!("no MBR: sector 0 does not end in 55 AA");
    }
    let mut out = [None; 4];
    for (i, slot) in out.iter_mut().enumerate() {
        let e = &sector[446 + 16 * i..446 + 16 * (i + 1)];
        let kind = e[4];
        let start_lba = u32::from_le_bytes([e[8], e[9], e[10], e[11]]);
        let sectors = u32::from_le_bytes([e[12], e[13], e[14], e[15]]);
        if kind != 0 && sectors != 0 {
            *slot = Some(Partition {
                start_lba,
                sectors,
                kind,
                active: e[0] == 0x80,
            });
        }
    }
    Ok(out)
}

/// The layout of an image of `total` bytes with a FAT boot partition of `boot` bytes from 1 MiB and,
/// when `root` is true, a Linux root partition over the rest. Without a root partition, the boot
/// partition fills the image. Sizes are rounded down to whole MiB.
pub fn layout(total: u64, boot: u64, root: bool) -> Result<Vec<Partition>> {
    const MIB: u64 = 1 << 20;
    let total_mib = total / MIB;
    let boot_mib = boot / MIB;
    let sectors = |mib: u64| -> Result<u32> {
        u32::try_from(mib * MIB / SECTOR).map_err(|_| {
            anyhow::anyhow!("{mib} MiB is too large for an MBR partition (2 TiB at most)")
        })
    };
    let mib_per = u64::from(FIRST_LBA) * SECTOR / MIB; // 1
    if !root {
        if total_mib < 34 {
            bail!(
                "--size-mib {total_mib}: a FAT32 boot partition needs an image of at least 34 MiB"
            );
        }
        return Ok(vec![Partition {
            start_lba: FIRST_LBA,
            sectors: sectors(total_mib - mib_per)?,
            kind: TYPE_FAT32_LBA,
            active: true,
        }]);
    }
    if total_mib < mib_per + boot_mib + 64 {
        bail!(
            "--size-mib {total_mib}: too small for a {boot_mib} MiB boot partition and a root partition of 64 MiB or more"
        );
    }
    let boot_p = Partition {
        start_lba: FIRST_LBA,
        sectors: sectors(boot_mib)?,
        kind: TYPE_FAT32_LBA,
        active: true,
    };
    let root_start = u32::try_from(boot_p.end_lba())?;
    let root_p = Partition {
        start_lba: root_start,
        sectors: sectors(total_mib - mib_per - boot_mib)?,
        kind: TYPE_LINUX,
        active: false,
    };
    Ok(vec![boot_p, root_p])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn test_image_layout_is_one_active_fat_partition_filling_the_image() {
        let parts = layout(64 << 20, 0, false).unwrap();
        assert_eq!(parts.len(), 1);
        let p = parts[0];
        assert_eq!((p.start_lba, p.kind, p.active), (2048, 0x0c, true));
        assert_eq!(p.end_lba() * SECTOR, 64 << 20, "ends where the image ends");
        let s = encode(&[0xeb; 440], 0x1234_5678, &parts).unwrap();
        assert_eq!(&s[..440], &[0xeb; 440][..]);
        assert_eq!(
            &s[446..462],
            &[0x80, 0xfe, 0xff, 0xff, 0x0c, 0xfe, 0xff, 0xff, 0, 8, 0, 0, 0, 0xf8, 1, 0]
        );
        assert_eq!(&s[510..], &[0x55, 0xaa]);
        let back = decode(&s).unwrap();
        assert_eq!(back[0], Some(p));
        assert!(
            back[1..].iter().all(Option::is_none),
            "slots 2-4 stay free for CIDATA"
        );
    }

    #[test]
    fn debian_layout_has_boot_then_root_to_the_end() {
        let parts = layout(2048 << 20, 256 << 20, true).unwrap();
        assert_eq!(parts[0].len(), 256 << 20);
        assert_eq!(parts[1].start_lba as u64, parts[0].end_lba());
        assert_eq!(parts[1].kind, TYPE_LINUX);
        assert!(!parts[1].active);
        assert_eq!(parts[1].end_lba() * SECTOR, 2048 << 20);
        let s = encode(&[], 1, &parts).unwrap();
        let back = decode(&s).unwrap();
        assert_eq!(back[..2], [Some(parts[0]), Some(parts[1])]);
        assert!(back[2].is_none() && back[3].is_none());
    }

    #[test]
    fn refuses_what_does_not_fit() {
        assert!(layout(16 << 20, 0, false).is_err());
        assert!(layout(300 << 20, 256 << 20, true).is_err());
        assert!(encode(&[0; 441], 0, &[]).is_err());
        let p = Partition {
            start_lba: 2048,
            sectors: 10,
            kind: 0x83,
            active: false,
        };
        assert!(encode(&[], 0, &[p, p]).is_err(), "overlap");
        assert!(decode(&[0u8; 512]).is_err());
    }
}
