//! The cloud-init NoCloud seed of a deployed machine: a 16 MiB FAT filesystem labelled `CIDATA` holding
//! `meta-data` and `user-data`, in a new partition after the deployed image's last partition, so the image
//! itself is written untouched and verified before the seed is added. The partition sits at the end of the
//! disk (its last 1 MiB-aligned 16 MiB), not right after the image: the image's last partition (a cloud
//! image's root) can still grow into the space between at first boot (cloud-init's growpart).
//!
//! MBR: the first free primary slot, type 0x0c (FAT32 LBA). GPT: the first free entry (type "Microsoft
//! basic data", name `CIDATA`); the backup table moves to the end of the disk (the image was smaller than
//! the disk, so its backup sat in the middle), both headers and CRCs are rewritten, and the protective
//! MBR grows to the disk. Written by hand: about as long as wiring a crate, and no new dependency.

use std::io::{self, Read, Seek, SeekFrom, Write};

/// Size of the seed partition.
pub const SEED_BYTES: u64 = 16 << 20;
/// Alignment of its start.
pub const ALIGN: u64 = 1 << 20;
/// Room a disk needs past the image for the seed (alignment, the seed, a moved GPT backup).
pub const SEED_ROOM: u64 = SEED_BYTES + 2 * ALIGN;
/// The FAT volume label NoCloud looks for (blkid matches it case-insensitively).
pub const LABEL: [u8; 11] = *b"CIDATA     ";
/// GPT partition type "Microsoft basic data" (EBD0A0A2-B9E5-4433-87C0-68B6B72699C7), on-disk order.
const GPT_BASIC_DATA: [u8; 16] = [
    0xa2, 0xa0, 0xd0, 0xeb, 0xe5, 0xb9, 0x33, 0x44, 0x87, 0xc0, 0x68, 0xb6, 0xb7, 0x26, 0x99, 0xc7,
];

/// Why the seed could not be added.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// No usable partition table.
    #[error("the deployed image has {0}: the NoCloud seed needs an MBR or GPT partition table; deploy a partitioned disk image")]
    Table(&'static str),
    /// No free entry.
    #[error("the image's partition table has no free entry for the NoCloud seed; use an image with at most three primary MBR partitions, or a GPT")]
    NoSlot,
    /// Not enough room after the last partition.
    #[error("no room for the 16 MiB NoCloud seed after the image's last partition (it would end at byte {end}, the disk has {disk}); deploy to a larger disk")]
    NoRoom {
        /// Where the seed would end.
        end: u64,
        /// The disk's usable end.
        disk: u64,
    },
    /// Reading or writing the disk failed.
    #[error("{what}: {source}")]
    Io {
        /// The step.
        what: &'static str,
        /// The failure.
        #[source]
        source: io::Error,
    },
}

fn io_at(what: &'static str) -> impl FnOnce(io::Error) -> SeedError {
    move |source| SeedError::Io { what, source }
}

/// The two files of the seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedFiles {
    /// `meta-data` (YAML).
    pub meta_data: String,
    /// `user-data`.
    pub user_data: String,
}

/// A YAML double-quoted scalar (JSON string escapes are valid YAML).
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// What the seed says: the instance id is the machine and the boot (a redeploy is a new instance), the
/// owner's keys go in `meta-data` (`public-keys`, which NoCloud reads) so they arrive whatever the user
/// data says; user data is the owner's, or a minimal `#cloud-config`.
pub fn files(
    system_id: &str,
    boot_id: &str,
    hostname: &str,
    user_data: &str,
    keys: &[String],
) -> SeedFiles {
    let mut meta = format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        quoted(&format!("{system_id}-{boot_id}")),
        quoted(hostname)
    );
    if !keys.is_empty() {
        meta.push_str("public-keys:\n");
        for k in keys {
            meta.push_str(&format!("  - {}\n", quoted(k.trim())));
        }
    }
    let user_data = if user_data.is_empty() {
        let mut u = "#cloud-config\n".to_string();
        if !keys.is_empty() {
            u.push_str("ssh_authorized_keys:\n");
            for k in keys {
                u.push_str(&format!("  - {}\n", quoted(k.trim())));
            }
        }
        u
    } else {
        user_data.to_string()
    };
    SeedFiles {
        meta_data: meta,
        user_data,
    }
}

/// A window `[start, start+len)` of a disk as a stream of its own (what fatfs formats and writes).
pub struct Window<'a, D> {
    disk: &'a mut D,
    start: u64,
    len: u64,
    pos: u64,
}

impl<'a, D: Read + Write + Seek> Window<'a, D> {
    /// The window of `len` bytes at `start` of `disk`.
    pub fn new(disk: &'a mut D, start: u64, len: u64) -> Self {
        Window {
            disk,
            start,
            len,
            pos: 0,
        }
    }

    fn room(&self, want: usize) -> usize {
        want.min(usize::try_from(self.len.saturating_sub(self.pos)).unwrap_or(usize::MAX))
    }
}

impl<D: Read + Write + Seek> Read for Window<'_, D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.room(buf.len());
        if n == 0 {
            return Ok(0);
        }
        self.disk.seek(SeekFrom::Start(self.start + self.pos))?;
        let k = self.disk.read(&mut buf[..n])?;
        self.pos += k as u64;
        Ok(k)
    }
}

impl<D: Read + Write + Seek> Write for Window<'_, D> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.room(buf.len());
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the seed partition",
            ));
        }
        self.disk.seek(SeekFrom::Start(self.start + self.pos))?;
        let k = self.disk.write(&buf[..n])?;
        self.pos += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.disk.flush()
    }
}

impl<D: Read + Write + Seek> Seek for Window<'_, D> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(p) if p <= self.len => {
                self.pos = p;
                Ok(p)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek outside the seed partition",
            )),
        }
    }
}

/// CRC-32 (IEEE), as GPT uses it.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .unwrap_or(0)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

fn read_at<D: Read + Seek>(d: &mut D, at: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut b = vec![0u8; len];
    d.seek(SeekFrom::Start(at))?;
    d.read_exact(&mut b)?;
    Ok(b)
}

fn write_at<D: Write + Seek>(d: &mut D, at: u64, b: &[u8]) -> io::Result<()> {
    d.seek(SeekFrom::Start(at))?;
    d.write_all(b)
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// Where the seed went: its partition number (1-based) and byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// Partition number.
    pub number: usize,
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Adds the seed partition to the image on `disk` (`disk_bytes` long, `sector`-byte sectors) and writes
/// the seed filesystem into it.
pub fn append<D: Read + Write + Seek>(
    disk: &mut D,
    disk_bytes: u64,
    sector: u64,
    seed: &SeedFiles,
) -> Result<Placed, SeedError> {
    let mbr = read_at(disk, 0, 512).map_err(io_at("reading the partition table"))?;
    if mbr[510..512] != [0x55, 0xaa] {
        return Err(SeedError::Table("no partition table (no MBR signature)"));
    }
    let protective = (0..4).any(|i| mbr[446 + 16 * i + 4] == 0xee);
    let placed = if protective {
        add_gpt(disk, disk_bytes, sector)?
    } else {
        add_mbr(disk, mbr, disk_bytes, sector)?
    };
    let mut w = Window::new(disk, placed.start, placed.len);
    // Zero the start first: a stale filesystem signature must not survive under the new one.
    w.write_all(&vec![0u8; 64 << 10])
        .map_err(io_at("clearing the seed partition"))?;
    w.seek(SeekFrom::Start(0))
        .map_err(io_at("clearing the seed partition"))?;
    fatfs::format_volume(
        &mut w,
        fatfs::FormatVolumeOptions::new().volume_label(LABEL),
    )
    .map_err(io_at("formatting the seed's FAT filesystem"))?;
    w.seek(SeekFrom::Start(0))
        .map_err(io_at("opening the seed's FAT filesystem"))?;
    {
        let fs = fatfs::FileSystem::new(&mut w, fatfs::FsOptions::new())
            .map_err(io_at("opening the seed's FAT filesystem"))?;
        for (name, text) in [
            ("meta-data", &seed.meta_data),
            ("user-data", &seed.user_data),
        ] {
            let mut f = fs
                .root_dir()
                .create_file(name)
                .map_err(io_at("creating a seed file"))?;
            f.truncate().map_err(io_at("writing a seed file"))?;
            f.write_all(text.as_bytes())
                .map_err(io_at("writing a seed file"))?;
            f.flush().map_err(io_at("writing a seed file"))?;
        }
        fs.unmount()
            .map_err(io_at("closing the seed's FAT filesystem"))?;
    }
    disk.flush().map_err(io_at("flushing the seed"))?;
    Ok(placed)
}

fn add_mbr<D: Read + Write + Seek>(
    disk: &mut D,
    mut mbr: Vec<u8>,
    disk_bytes: u64,
    sector: u64,
) -> Result<Placed, SeedError> {
    let entry = |m: &[u8], i: usize| {
        let e = 446 + 16 * i;
        (
            m[e + 4],
            u64::from(u32_at(m, e + 8)),
            u64::from(u32_at(m, e + 12)),
        )
    };
    let end = (0..4)
        .map(|i| entry(&mbr, i))
        .filter(|(t, _, n)| *t != 0 && *n != 0)
        .map(|(_, s, n)| s + n)
        .max()
        .ok_or(SeedError::Table("an empty MBR partition table"))?;
    let slot = (0..4)
        .find(|i| entry(&mbr, *i).0 == 0)
        .ok_or(SeedError::NoSlot)?;
    let limit = disk_bytes.min(u64::from(u32::MAX) * sector);
    let start = place(align_up(end * sector, ALIGN), limit)?;
    let e = 446 + 16 * slot;
    let mut rec = [0u8; 16];
    // CHS fields say "use LBA" (the maximum), as every current partitioner writes them.
    rec[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
    rec[4] = 0x0c;
    rec[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
    rec[8..12].copy_from_slice(&((start / sector) as u32).to_le_bytes());
    rec[12..16].copy_from_slice(&((SEED_BYTES / sector) as u32).to_le_bytes());
    mbr[e..e + 16].copy_from_slice(&rec);
    write_at(disk, 0, &mbr).map_err(io_at("writing the MBR"))?;
    Ok(Placed {
        number: slot + 1,
        start,
        len: SEED_BYTES,
    })
}

/// Where the seed starts: the last aligned [`SEED_BYTES`] before `limit` (the usable end of the disk), if
/// that is at or after `first` (the aligned end of the image's partitions).
fn place(first: u64, limit: u64) -> Result<u64, SeedError> {
    let start = (limit.saturating_sub(SEED_BYTES) / ALIGN) * ALIGN;
    if limit < SEED_BYTES || start < first {
        return Err(SeedError::NoRoom {
            end: first + SEED_BYTES,
            disk: limit,
        });
    }
    Ok(start)
}

fn header_crc(h: &mut [u8]) -> u32 {
    let size = (u32_at(h, 12) as usize).clamp(92, h.len());
    h[16..20].copy_from_slice(&[0; 4]);
    crc32(&h[..size])
}

fn add_gpt<D: Read + Write + Seek>(
    disk: &mut D,
    disk_bytes: u64,
    sector: u64,
) -> Result<Placed, SeedError> {
    let mut hdr =
        read_at(disk, sector, sector as usize).map_err(io_at("reading the GPT header"))?;
    if &hdr[..8] != b"EFI PART" {
        return Err(SeedError::Table("a protective MBR but no GPT header"));
    }
    let stored = u32_at(&hdr, 16);
    if header_crc(&mut hdr.clone()) != stored {
        return Err(SeedError::Table("a GPT header with a bad CRC"));
    }
    let entries_lba = u64_at(&hdr, 72);
    let count = u32_at(&hdr, 80) as usize;
    let esize = u32_at(&hdr, 84) as usize;
    if !(1..=1024).contains(&count) || !(128..=1024).contains(&esize) || !esize.is_multiple_of(8) {
        return Err(SeedError::Table("a GPT with an unusual entry array"));
    }
    let array_len = count * esize;
    let mut entries =
        read_at(disk, entries_lba * sector, array_len).map_err(io_at("reading the GPT entries"))?;
    if crc32(&entries) != u32_at(&hdr, 88) {
        return Err(SeedError::Table("GPT entries with a bad CRC"));
    }
    let used = |i: usize, e: &[u8]| e[i * esize..i * esize + 16].iter().any(|b| *b != 0);
    let last_used = (0..count)
        .filter(|i| used(*i, &entries))
        .map(|i| u64_at(&entries, i * esize + 40))
        .max()
        .ok_or(SeedError::Table("an empty GPT"))?;
    let slot = (0..count)
        .find(|i| !used(*i, &entries))
        .ok_or(SeedError::NoSlot)?;
    let disk_last = disk_bytes / sector - 1;
    let array_sectors = (array_len as u64).div_ceil(sector);
    let backup_entries = disk_last - array_sectors;
    let last_usable = backup_entries - 1;
    let start = place(
        align_up((last_used + 1) * sector, ALIGN),
        (last_usable + 1) * sector,
    )?;
    let stop = start + SEED_BYTES;
    let old_backup = u64_at(&hdr, 32);
    let e = slot * esize;
    let rec = &mut entries[e..e + esize];
    rec.fill(0);
    rec[..16].copy_from_slice(&GPT_BASIC_DATA);
    let mut unique: [u8; 16] = rand::random();
    unique[7] = (unique[7] & 0x0f) | 0x40; // version 4 (the time_hi field is little-endian on disk)
    unique[8] = (unique[8] & 0x3f) | 0x80;
    rec[16..32].copy_from_slice(&unique);
    rec[32..40].copy_from_slice(&(start / sector).to_le_bytes());
    rec[40..48].copy_from_slice(&(stop / sector - 1).to_le_bytes());
    for (i, c) in "CIDATA".encode_utf16().enumerate() {
        rec[56 + 2 * i..58 + 2 * i].copy_from_slice(&c.to_le_bytes());
    }
    let entries_crc = crc32(&entries);
    // Primary header.
    hdr[32..40].copy_from_slice(&disk_last.to_le_bytes());
    hdr[48..56].copy_from_slice(&last_usable.to_le_bytes());
    hdr[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    let crc = header_crc(&mut hdr);
    hdr[16..20].copy_from_slice(&crc.to_le_bytes());
    // Backup header: the same with its own location and its entries' location.
    let mut backup = hdr.clone();
    backup[24..32].copy_from_slice(&disk_last.to_le_bytes());
    backup[32..40].copy_from_slice(&1u64.to_le_bytes());
    backup[72..80].copy_from_slice(&backup_entries.to_le_bytes());
    let crc = header_crc(&mut backup);
    backup[16..20].copy_from_slice(&crc.to_le_bytes());
    if old_backup != disk_last && old_backup > 1 && old_backup < disk_last {
        write_at(disk, old_backup * sector, &vec![0u8; sector as usize])
            .map_err(io_at("clearing the image's old GPT backup header"))?;
    }
    write_at(disk, backup_entries * sector, &entries)
        .map_err(io_at("writing the GPT backup entries"))?;
    write_at(disk, disk_last * sector, &backup).map_err(io_at("writing the GPT backup header"))?;
    write_at(disk, entries_lba * sector, &entries).map_err(io_at("writing the GPT entries"))?;
    write_at(disk, sector, &hdr).map_err(io_at("writing the GPT header"))?;
    // The protective MBR covers the whole disk.
    let mut mbr = read_at(disk, 0, 512).map_err(io_at("reading the protective MBR"))?;
    if let Some(i) = (0..4).find(|i| mbr[446 + 16 * i + 4] == 0xee) {
        let covered = (disk_bytes / sector - 1).min(u64::from(u32::MAX)) as u32;
        mbr[446 + 16 * i + 12..446 + 16 * i + 16].copy_from_slice(&covered.to_le_bytes());
        write_at(disk, 0, &mbr).map_err(io_at("writing the protective MBR"))?;
    }
    Ok(Placed {
        number: slot + 1,
        start,
        len: SEED_BYTES,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    /// Writes an MBR with one FAT partition (1 MiB at 1 MiB) into the first bytes of `f`.
    pub(crate) fn mbr_image(f: &mut std::fs::File) {
        let mut m = vec![0u8; 512];
        let e = 446;
        m[e + 4] = 0x0c;
        m[e + 8..e + 12].copy_from_slice(&2048u32.to_le_bytes());
        m[e + 12..e + 16].copy_from_slice(&2048u32.to_le_bytes());
        m[510] = 0x55;
        m[511] = 0xaa;
        write_at(f, 0, &m).unwrap();
    }

    fn read_back(path: &Path, p: Placed) -> (String, String, String) {
        let mut f = std::fs::File::options()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut w = Window::new(&mut f, p.start, p.len);
        let fs = fatfs::FileSystem::new(&mut w, fatfs::FsOptions::new()).unwrap();
        let mut meta = String::new();
        fs.root_dir()
            .open_file("meta-data")
            .unwrap()
            .read_to_string(&mut meta)
            .unwrap();
        let mut user = String::new();
        fs.root_dir()
            .open_file("user-data")
            .unwrap()
            .read_to_string(&mut user)
            .unwrap();
        (fs.volume_label(), meta, user)
    }

    fn blkid_label(path: &Path, offset: u64) -> Option<String> {
        let out = Command::new("blkid")
            .args(["-p", "-o", "value", "-s", "LABEL", "-O"])
            .arg(offset.to_string())
            .arg(path)
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    #[test]
    fn the_seed_files_say_who_and_carry_the_keys() {
        let keys = vec!["ssh-ed25519 AAAA x@y".to_string()];
        let s = files("m-1", "b-2", "web\"1", "", &keys);
        assert!(
            s.meta_data.contains("instance-id: \"m-1-b-2\"\n"),
            "{}",
            s.meta_data
        );
        assert!(s.meta_data.contains("local-hostname: \"web\\\"1\"\n"));
        assert!(s
            .meta_data
            .contains("public-keys:\n  - \"ssh-ed25519 AAAA x@y\"\n"));
        assert!(s
            .user_data
            .starts_with("#cloud-config\nssh_authorized_keys:\n"));
        let given = files("m-1", "b-2", "h", "#!/bin/sh\necho hi\n", &keys);
        assert_eq!(given.user_data, "#!/bin/sh\necho hi\n");
        assert!(given.meta_data.contains("public-keys"));
        assert_eq!(files("m", "b", "h", "", &[]).user_data, "#cloud-config\n");
        assert_eq!(quoted("a\nb"), "\"a\\u000ab\"");
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn an_mbr_image_gets_a_cidata_partition_after_its_last() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("disk");
        let mut f = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(64 << 20).unwrap();
        mbr_image(&mut f);
        let seed = files("m-1", "b-1", "host1", "", &["ssh-ed25519 K".into()]);
        let p = append(&mut f, 64 << 20, 512, &seed).unwrap();
        assert_eq!(
            p,
            Placed {
                number: 2,
                start: 48 << 20,
                len: SEED_BYTES
            }
        );
        let m = read_at(&mut f, 0, 512).unwrap();
        assert_eq!(m[446 + 16 + 4], 0x0c);
        assert_eq!(u32_at(&m, 446 + 16 + 8), 98304);
        assert_eq!(u32_at(&m, 446 + 16 + 12), 32768);
        // The first partition is untouched.
        assert_eq!(u32_at(&m, 446 + 8), 2048);
        drop(f);
        let (label, meta, user) = read_back(&path, p);
        assert_eq!(label, "CIDATA");
        assert_eq!(meta, seed.meta_data);
        assert_eq!(user, seed.user_data);
        match blkid_label(&path, p.start) {
            Some(l) => assert_eq!(l, "CIDATA"),
            None => eprintln!("blkid not installed: label checked with fatfs only"),
        }
        if let Ok(out) = Command::new("sfdisk").arg("-d").arg(&path).output() {
            let d = String::from_utf8_lossy(&out.stdout);
            assert!(
                d.contains("start=       98304, size=       32768, type=c"),
                "{d}"
            );
        }
        // A full table, and a disk too small, are refused with what to do.
        let mut g = std::fs::File::options()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut m = read_at(&mut g, 0, 512).unwrap();
        for i in 2..4 {
            m[446 + 16 * i + 4] = 0x83;
            m[446 + 16 * i + 12] = 1;
        }
        write_at(&mut g, 0, &m).unwrap();
        assert!(matches!(
            append(&mut g, 64 << 20, 512, &seed),
            Err(SeedError::NoSlot)
        ));
        mbr_image(&mut g);
        let e = append(&mut g, 10 << 20, 512, &seed).unwrap_err();
        assert!(matches!(e, SeedError::NoRoom { .. }), "{e}");
        write_at(&mut g, 510, &[0, 0]).unwrap();
        assert!(matches!(
            append(&mut g, 64 << 20, 512, &seed),
            Err(SeedError::Table(_))
        ));
    }

    #[test]
    fn a_gpt_image_gets_an_entry_and_its_backup_moves_to_the_disk_end() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("disk");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        // The image: an 8 MiB GPT disk with one partition, made by sfdisk (skipped without it).
        let made = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf 'label: gpt\\nstart=2048, size=4096, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\\n' | sfdisk -q {}",
                path.display()
            ))
            .status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("sfdisk not available: GPT seed test skipped");
            return;
        }
        // Written to a 64 MiB disk.
        let mut f = std::fs::File::options()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        f.set_len(64 << 20).unwrap();
        let seed = files("m-1", "b-1", "h", "#cloud-config\n", &[]);
        let p = append(&mut f, 64 << 20, 512, &seed).unwrap();
        assert_eq!(
            p,
            Placed {
                number: 2,
                start: 47 << 20,
                len: SEED_BYTES
            }
        );
        drop(f);
        let out = Command::new("sfdisk")
            .arg("--verify")
            .arg(&path)
            .output()
            .unwrap();
        let v = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{v}");
        assert!(
            !v.to_lowercase().contains("corrupt") && !v.contains("mismatch"),
            "{v}"
        );
        let d = Command::new("sfdisk")
            .arg("-d")
            .arg(&path)
            .output()
            .unwrap();
        let d = String::from_utf8_lossy(&d.stdout);
        assert!(
            d.contains(
                "start=       96256, size=       32768, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
            ),
            "{d}"
        );
        assert!(d.contains("name=\"CIDATA\""), "{d}");
        assert!(d.contains("last-lba: 131038"), "{d}");
        let (label, _, user) = read_back(&path, p);
        assert_eq!(
            (label.as_str(), user.as_str()),
            ("CIDATA", "#cloud-config\n")
        );
        if let Some(l) = blkid_label(&path, p.start) {
            assert_eq!(l, "CIDATA");
        }
    }
}
