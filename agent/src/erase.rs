//! Erase on release: every disk, by the mode the operator chose.
//! - quick: zero the first and last MiB of the disk (MBR, GPT header and its backup) and of every
//!   partition (filesystem and RAID signatures), like `wipefs` but without trusting the signatures;
//! - secure: overwrite every byte with zeros, in large writes, with progress;
//! - discard: `BLKDISCARD` over the whole device where it discards (`queue/discard_max_bytes` > 0),
//!   else (or when the ioctl is refused) overwrite.

use crate::platform::{BlockDisk, Platform};
use crate::progress::{Ctl, Meter};
use ingot_common::model::EraseMode;
use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};

/// Size of one zeroing write.
const CHUNK: u64 = 4 << 20;
/// What quick erase zeroes at each end.
const EDGE: u64 = 1 << 20;

/// Asks the block device to discard `[start, start+len)` (BLKDISCARD).
#[allow(unsafe_code)]
fn blkdiscard(f: &File, start: u64, len: u64) -> io::Result<()> {
    // BLKDISCARD is _IO(0x12, 119) and reads a `u64[2]` {start, length} in bytes through its argument.
    const BLKDISCARD: rustix::ioctl::Opcode = rustix::ioctl::opcode::none(0x12, 119);
    // SAFETY: the opcode is BLKDISCARD, whose argument is a pointer to a [u64; 2], which is what Setter
    // passes; the kernel only reads it.
    let arg = unsafe { rustix::ioctl::Setter::<BLKDISCARD, [u64; 2]>::new([start, len]) };
    // SAFETY: as above; the file descriptor is open for the duration of the call.
    unsafe { rustix::ioctl::ioctl(f, arg) }.map_err(io::Error::from)
}

fn zero(f: &mut File, start: u64, len: u64, zeros: &[u8]) -> io::Result<()> {
    f.seek(SeekFrom::Start(start))?;
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// The byte ranges quick erase zeroes on `d`: the ends of the disk and of each partition, clamped.
pub fn quick_ranges(d: &BlockDisk) -> Vec<(u64, u64)> {
    let mut spans = vec![(0, d.bytes)];
    spans.extend(d.partitions.iter().map(|(_, s, l)| (*s, *l)));
    let mut out = Vec::new();
    for (s, l) in spans {
        let end = s.saturating_add(l).min(d.bytes);
        if s >= end {
            continue;
        }
        let head = (end - s).min(EDGE);
        out.push((s, head));
        let tail_start = end.saturating_sub(EDGE).max(s);
        out.push((tail_start, end - tail_start));
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn overwrite(f: &mut File, d: &BlockDisk, ctl: &Ctl, zeros: &[u8]) -> Result<(), String> {
    let mut meter = Meter::new(d.bytes);
    let what = format!("erasing {}", d.name);
    f.seek(SeekFrom::Start(0))
        .map_err(|e| format!("{what}: seeking: {e}"))?;
    let mut done = 0u64;
    while done < d.bytes {
        if ctl.cancelled() {
            return Err("stopped: the region ended this boot".into());
        }
        let n = (d.bytes - done).min(CHUNK) as usize;
        f.write_all(&zeros[..n])
            .map_err(|e| format!("{what}: writing at byte {done}: {e}"))?;
        done += n as u64;
        if meter.due() {
            let (line, pct) = meter.line(&what, done);
            ctl.step(line, pct);
        }
    }
    Ok(())
}

/// Erases one disk; returns how.
pub fn disk(
    p: &Platform,
    d: &BlockDisk,
    mode: EraseMode,
    ctl: &Ctl,
) -> Result<&'static str, String> {
    let path = p.dev(&d.name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    let zeros = vec![0u8; CHUNK as usize];
    let how = match mode {
        EraseMode::None => return Ok("not erased (erase mode none)"),
        EraseMode::Quick => {
            for (s, l) in quick_ranges(d) {
                zero(&mut f, s, l, &zeros)
                    .map_err(|e| format!("zeroing {} at byte {s}: {e}", d.name))?;
            }
            "start and end of the disk and of each partition zeroed"
        }
        EraseMode::Discard if d.discard => match blkdiscard(&f, 0, d.bytes) {
            Ok(()) => "discarded",
            Err(e) => {
                crate::say!("{}: discard refused ({e}); overwriting instead", d.name);
                overwrite(&mut f, d, ctl, &zeros)?;
                "overwritten with zeros (discard refused)"
            }
        },
        EraseMode::Discard => {
            overwrite(&mut f, d, ctl, &zeros)?;
            "overwritten with zeros (no discard support)"
        }
        EraseMode::Secure => {
            overwrite(&mut f, d, ctl, &zeros)?;
            "overwritten with zeros"
        }
    };
    f.sync_all()
        .map_err(|e| format!("flushing {}: {e}", d.name))?;
    Ok(how)
}

/// Erases every disk. A disk that fails fails the erase (the region keeps the machine out of the pool).
pub fn run(p: &Platform, mode: EraseMode, ctl: &Ctl) -> Result<String, String> {
    let disks = p.disks();
    if disks.is_empty() {
        return Ok("no disks to erase".into());
    }
    let mut done = Vec::new();
    let total = disks.len() as u32;
    for (i, d) in disks.iter().enumerate() {
        ctl.step(
            format!("erasing {} ({} MiB, {mode:?})", d.name, d.bytes >> 20),
            (i as u32) * 100 / total,
        );
        let how = disk(p, d, mode, ctl).map_err(|e| format!("erasing {} failed: {e}", d.name))?;
        ctl.step(format!("{}: {how}", d.name), (i as u32 + 1) * 100 / total);
        done.push(format!("{}: {how}", d.name));
    }
    Ok(format!("erased: {}", done.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::fake::{machine, put};

    fn fill(path: &std::path::Path) {
        let len = std::fs::metadata(path).unwrap().len() as usize;
        std::fs::write(path, vec![0xaau8; len]).unwrap();
    }

    #[test]
    fn quick_zeroes_the_ends_of_disks_and_partitions() {
        let t = tempfile::tempdir().unwrap();
        machine(t.path());
        put(t.path(), "sys/block/vda/vda1/start", "8192\n"); // 4 MiB
        put(t.path(), "sys/block/vda/vda1/size", "20480\n"); // 10 MiB
        fill(&t.path().join("dev/vda"));
        fill(&t.path().join("dev/sda"));
        let p = Platform::new(t.path());
        let (ctl, _w) = crate::progress::channel();
        let line = run(&p, EraseMode::Quick, &ctl).unwrap();
        assert!(line.contains("vda") && line.contains("sda"), "{line}");
        let v = std::fs::read(t.path().join("dev/vda")).unwrap();
        let mib = 1 << 20;
        let zero = |r: std::ops::Range<usize>| v[r].iter().all(|b| *b == 0);
        assert!(zero(0..mib), "disk start");
        assert!(zero(v.len() - mib..v.len()), "disk end (GPT backup)");
        assert!(zero(4 * mib..5 * mib), "partition start");
        assert!(zero(13 * mib..14 * mib), "partition end");
        assert!(
            v[mib..4 * mib].iter().all(|b| *b == 0xaa),
            "between is untouched"
        );
        assert!(v[5 * mib..13 * mib].iter().all(|b| *b == 0xaa));
    }

    #[test]
    fn secure_and_discard_without_support_overwrite_everything() {
        for mode in [EraseMode::Secure, EraseMode::Discard] {
            let t = tempfile::tempdir().unwrap();
            machine(t.path());
            // sda claims discard support, but a plain file refuses BLKDISCARD: overwritten instead.
            put(
                t.path(),
                "sys/block/sda/queue/discard_max_bytes",
                "2147450880\n",
            );
            fill(&t.path().join("dev/vda"));
            fill(&t.path().join("dev/sda"));
            let p = Platform::new(t.path());
            let (ctl, _w) = crate::progress::channel();
            let line = run(&p, mode, &ctl).unwrap();
            assert!(line.contains("overwritten"), "{line}");
            for d in ["vda", "sda"] {
                let v = std::fs::read(t.path().join(format!("dev/{d}"))).unwrap();
                assert!(v.iter().all(|b| *b == 0), "{mode:?} {d}");
            }
        }
    }

    /// BLKDISCARD on a real block device: `INGOT_AGENT_LOOP=loopN cargo test -p ingot-agent -- --ignored
    /// discards_a_real` with /dev/loopN attached (losetup) to a file full of non-zero bytes.
    #[test]
    #[ignore = "needs root and a loop device (INGOT_AGENT_LOOP)"]
    fn discards_a_real_loop_device() {
        let Ok(name) = std::env::var("INGOT_AGENT_LOOP") else {
            return;
        };
        let p = Platform::new("/");
        let bytes = p.number(format!("/sys/block/{name}/size")).unwrap() * 512;
        let d = BlockDisk {
            name: name.clone(),
            bytes,
            sector: 512,
            rotational: false,
            model: String::new(),
            serial: String::new(),
            bus: "",
            discard: true,
            partitions: vec![],
        };
        let (ctl, _w) = crate::progress::channel();
        assert_eq!(disk(&p, &d, EraseMode::Discard, &ctl).unwrap(), "discarded");
        let v = std::fs::read(p.dev(&name)).unwrap();
        assert!(v.iter().all(|b| *b == 0));
    }

    #[test]
    fn quick_ranges_clamp_to_the_disk() {
        let d = BlockDisk {
            name: "x".into(),
            bytes: 3 << 19,
            sector: 512,
            rotational: false,
            model: String::new(),
            serial: String::new(),
            bus: "",
            discard: false,
            partitions: vec![("x1".into(), 1 << 19, 100 << 20)],
        };
        for (s, l) in quick_ranges(&d) {
            assert!(s + l <= d.bytes, "{s}+{l}");
        }
    }
}
