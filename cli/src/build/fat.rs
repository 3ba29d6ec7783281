//! A FAT32 filesystem written by the `fatfs` crate into one partition of an image file: a
//! Read/Write/Seek window over the file (no loop device, no mount, no mkfs.vfat), fixed timestamps
//! (1980-01-01) so rebuilds differ only where their inputs do.

use super::mbr::Partition;
use anyhow::{Context, Result};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// A window `[start, start + len)` of a file.
struct Slice<'a> {
    file: &'a mut File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Read for Slice<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let got = self.file.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Write for Slice<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "past the partition's end",
            ));
        }
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let put = self.file.write(&buf[..n])?;
        self.pos += put as u64;
        Ok(put)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for Slice<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(p) if p <= self.len => {
                self.pos = p;
                Ok(p)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek outside the partition",
            )),
        }
    }
}

/// DOS's first day, for every timestamp.
#[derive(Debug)]
struct FixedTime;

impl fatfs::TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        fatfs::Date {
            year: 1980,
            month: 1,
            day: 1,
        }
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        fatfs::DateTime {
            date: self.get_current_date(),
            time: fatfs::Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        }
    }
}

static FIXED_TIME: FixedTime = FixedTime;

/// An 11-byte FAT volume label, upper-cased and space-padded.
fn label(s: &str) -> [u8; 11] {
    let mut l = [b' '; 11];
    for (d, c) in l.iter_mut().zip(s.bytes()) {
        *d = c.to_ascii_uppercase();
    }
    l
}

/// Formats partition `part` of the image at `img` as FAT32 labelled `name`, sets the boot sector's
/// hidden-sectors field to the partition's start (boot code reads the partition offset there), and
/// writes `files` (paths like `EFI/BOOT/BOOTX64.EFI`; parent directories are made).
pub(crate) fn write(
    img: &Path,
    part: &Partition,
    name: &str,
    files: &[(String, Vec<u8>)],
) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .with_context(|| format!("opening {}", img.display()))?;
    let (start, len) = (part.offset(), part.len());
    let cluster = if part.len() < (1 << 30) { 512 } else { 4096 };
    fatfs::format_volume(
        Slice {
            file: &mut file,
            start,
            len,
            pos: 0,
        },
        fatfs::FormatVolumeOptions::new()
            .fat_type(fatfs::FatType::Fat32)
            .bytes_per_cluster(cluster)
            .volume_id(part.start_lba ^ 0x1e60_7000)
            .volume_label(label(name)),
    )
    .with_context(|| {
        format!(
            "formatting a FAT32 filesystem of {} bytes in {}",
            part.len(),
            img.display()
        )
    })?;
    // Hidden sectors (BPB offset 0x1c) in the boot sector and its FAT32 backup (sector 6).
    for sector in [0u64, 6] {
        file.seek(SeekFrom::Start(part.offset() + sector * 512 + 0x1c))?;
        file.write_all(&part.start_lba.to_le_bytes())?;
    }
    let fs = fatfs::FileSystem::new(
        Slice {
            file: &mut file,
            start,
            len,
            pos: 0,
        },
        fatfs::FsOptions::new().time_provider(&FIXED_TIME),
    )
    .context("opening the FAT filesystem just made")?;
    {
        let root = fs.root_dir();
        for (path, data) in files {
            let mut dir = root.clone();
            let mut parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
            let leaf = parts.pop().unwrap_or_default();
            for p in parts {
                dir = match dir.open_dir(p) {
                    Ok(d) => d,
                    Err(_) => dir
                        .create_dir(p)
                        .with_context(|| format!("creating {p} on the FAT partition"))?,
                };
            }
            let mut f = dir
                .create_file(leaf)
                .with_context(|| format!("creating {path} on the FAT partition"))?;
            f.truncate()?;
            f.write_all(data).with_context(|| {
                format!(
                    "writing {path} ({} bytes) on the FAT partition: make the image larger",
                    data.len()
                )
            })?;
        }
    }
    fs.unmount().context("closing the FAT filesystem")?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn writes_files_that_read_back_inside_the_partition_only() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("x.img");
        let f = File::create(&img).unwrap();
        f.set_len(40 << 20).unwrap();
        let part = super::super::mbr::layout(40 << 20, 0, false).unwrap()[0];
        let files = vec![
            ("EFI/BOOT/BOOTX64.EFI".to_string(), vec![7u8; 5000]),
            (
                "loader/entries/ingot.conf".to_string(),
                b"linux /vmlinuz\n".to_vec(),
            ),
        ];
        write(&img, &part, "ingot-boot", &files).unwrap();
        let bytes = std::fs::read(&img).unwrap();
        assert!(
            bytes[..part.offset() as usize].iter().all(|&b| b == 0),
            "nothing before the partition"
        );
        let bs = &bytes[part.offset() as usize..];
        assert_eq!(&bs[0x52..0x5a], b"FAT32   ");
        assert_eq!(u32::from_le_bytes(bs[0x1c..0x20].try_into().unwrap()), 2048);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap();
        let fs = fatfs::FileSystem::new(
            Slice {
                file: &mut file,
                start: part.offset(),
                len: part.len(),
                pos: 0,
            },
            fatfs::FsOptions::new(),
        )
        .unwrap();
        assert_eq!(fs.volume_label().trim(), "INGOT-BOOT");
        let mut got = Vec::new();
        fs.root_dir()
            .open_file("EFI/BOOT/BOOTX64.EFI")
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, vec![7u8; 5000]);
    }
}
