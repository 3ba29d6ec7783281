//! Process plumbing shared by the region, rack and simulator launchers: signalling a pid only after
//! checking `/proc/PID/cmdline` (so a reused pid is never signalled), log files, atomic writes.

use anyhow::{anyhow, Context, Result};
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// How often the launchers poll a process, a file or the API while waiting for something.
pub(crate) const POLL: Duration = Duration::from_millis(50);

/// True if `pid` is alive and its command line is `<…bin…> ... <data_dir> ...`.
pub(crate) fn is_process_of(pid: u32, bin: &str, data_dir: &Path) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    // A zombie has an empty command line: it is not running.
    let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
    let is_bin = args
        .first()
        .is_some_and(|a| String::from_utf8_lossy(a).contains(bin));
    let dd = data_dir.to_string_lossy();
    is_bin && args.iter().any(|a| String::from_utf8_lossy(a) == dd)
}

/// Sends a signal to a pid through rustix's safe `kill(2)` wrapper.
pub(crate) fn send_signal(pid: u32, signal: libc::c_int) -> Result<()> {
    let p = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| anyhow!("invalid pid {pid}"))?;
    let sig = rustix::process::Signal::from_named_raw(signal)
        .ok_or_else(|| anyhow!("unsupported signal {signal}"))?;
    rustix::process::kill_process(p, sig).with_context(|| format!("kill({pid}, {signal})"))
}

/// The last 30 lines (at most 8 KiB) of a log file, for error messages.
pub fn log_tail(path: &Path) -> String {
    const MAX: u64 = 8 * 1024;
    let Ok(mut f) = std::fs::File::open(path) else {
        return "(no log)".into();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(MAX)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(30)..].join("\n");
    if tail.trim().is_empty() {
        "(log is empty)".into()
    } else {
        tail
    }
}

/// Creates `dir` (and missing parents) and makes it mode 0700: the data directories of regions and racks
/// and the simulator's directory hold keys and tokens. Tightens a directory that already existed.
pub(crate) fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make {} private (mode 0700)", dir.display()))
}

/// Writes `path` with `mode` through a temporary file and a rename, so that another process (`ingot dev
/// down`, a later `LocalCluster::load`) never reads half a file.
pub(crate) fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// The log opened for appending, twice (stdout and stderr).
pub(crate) fn open_log(path: &Path) -> Result<(Stdio, Stdio)> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let g = f
        .try_clone()
        .with_context(|| format!("cannot open {}", path.display()))?;
    Ok((Stdio::from(f), Stdio::from(g)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_dirs_are_0700_even_when_they_existed() {
        let t = std::env::temp_dir().join(format!("ingot-launch-private-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&t);
        let fresh = t.join("a/region-1");
        create_private_dir(&fresh).unwrap();
        let old = t.join("rack-r1");
        std::fs::create_dir(&old).unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&old).unwrap();
        for d in [fresh, old] {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
        std::fs::remove_dir_all(&t).unwrap();
    }
}
