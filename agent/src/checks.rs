//! The test boot's short checks: every disk reads at both ends, and a slice of memory holds a pattern.
//! Short on purpose (a minute, not a burn-in): they catch a dead disk or bad DIMMs before a deploy does.

use crate::inventory::meminfo_kib;
use crate::platform::{BlockDisk, Platform};
use crate::progress::Ctl;
use std::io::{Read, Seek, SeekFrom};
use std::time::Instant;

/// Bytes read at each end of each disk.
const DISK_READ: u64 = 16 << 20;
/// Most memory tested.
const MAX_MEMORY: u64 = 256 << 20;

/// Reads the first and last 16 MiB of `d`; returns MiB/s.
pub fn disk(p: &Platform, d: &BlockDisk) -> Result<f64, String> {
    let path = p.dev(&d.name);
    let mut f =
        std::fs::File::open(&path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let len = d.bytes.min(DISK_READ);
    let mut buf = vec![0u8; len as usize];
    let started = Instant::now();
    for at in [0, d.bytes - len] {
        f.seek(SeekFrom::Start(at))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|e| format!("{}: reading {len} bytes at byte {at}: {e}", d.name))?;
    }
    Ok((2 * len) as f64 / 1048576.0 / started.elapsed().as_secs_f64().max(0.000_001))
}

/// Writes and verifies two patterns over `bytes` of memory; returns MiB/s.
pub fn memory(bytes: u64) -> Result<f64, String> {
    let words = (bytes / 8) as usize;
    let mut v: Vec<u64> = Vec::new();
    v.try_reserve_exact(words)
        .map_err(|e| format!("allocating {} MiB to test: {e}", bytes >> 20))?;
    let started = Instant::now();
    for seed in [0x5555_5555_5555_5555u64, 0xaaaa_aaaa_aaaa_aaaa] {
        let pat = |i: usize| (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed;
        v.clear();
        v.extend((0..words).map(pat));
        if let Some(i) = v.iter().enumerate().position(|(i, w)| *w != pat(i)) {
            return Err(format!(
                "memory: word {i} of the {} MiB tested did not hold its pattern (bad memory?)",
                bytes >> 20
            ));
        }
    }
    Ok((4 * bytes) as f64 / 1048576.0 / started.elapsed().as_secs_f64().max(0.000_001))
}

/// Runs every check, reporting each; fails naming every check that failed.
pub fn run(p: &Platform, ctl: &Ctl) -> Result<String, String> {
    let disks = p.disks();
    let mut failed = Vec::new();
    let steps = disks.len() as u32 + 1;
    for (i, d) in disks.iter().enumerate() {
        if ctl.cancelled() {
            return Err("stopped: the region ended this boot".into());
        }
        match disk(p, d) {
            Ok(rate) => ctl.step(
                format!("disk {}: both ends read, {rate:.0} MiB/s", d.name),
                (i as u32 + 1) * 100 / steps,
            ),
            Err(e) => {
                ctl.step(
                    format!("disk {} FAILED: {e}", d.name),
                    (i as u32 + 1) * 100 / steps,
                );
                failed.push(e);
            }
        }
    }
    let avail = meminfo_kib(p, "MemAvailable").unwrap_or(0) * 1024;
    let bytes = (avail / 4).min(MAX_MEMORY) & !7;
    if bytes == 0 {
        failed.push("memory: /proc/meminfo has no MemAvailable".to_string());
    } else {
        match memory(bytes) {
            Ok(rate) => ctl.step(
                format!(
                    "memory: {} MiB pattern-verified, {rate:.0} MiB/s",
                    bytes >> 20
                ),
                100,
            ),
            Err(e) => {
                ctl.step(format!("memory FAILED: {e}"), 100);
                failed.push(e);
            }
        }
    }
    if failed.is_empty() {
        Ok(format!("tests passed: {} disks, memory", disks.len()))
    } else {
        Err(format!("tests failed: {}", failed.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::fake::machine;

    #[test]
    fn disks_and_memory_pass_on_a_healthy_machine_and_a_missing_disk_fails() {
        let t = tempfile::tempdir().unwrap();
        machine(t.path());
        let p = Platform::new(t.path());
        let (ctl, mut w) = crate::progress::channel();
        let line = run(&p, &ctl).unwrap();
        assert!(line.contains("2 disks"), "{line}");
        let mut steps = vec![];
        while let Ok(s) = w.rx.try_recv() {
            steps.push(s.message);
        }
        assert_eq!(steps.len(), 3, "{steps:?}");
        assert!(steps[2].starts_with("memory: 4 MiB"), "{steps:?}");
        // A disk whose device node is gone (or unreadable) fails the test, named.
        std::fs::remove_file(t.path().join("dev/vda")).unwrap();
        let e = run(&p, &ctl).unwrap_err();
        assert!(e.contains("vda"), "{e}");
        assert!(memory(1 << 20).unwrap() > 0.0);
    }
}
