//! The lease journal: leases this rack acknowledged (DHCPACK, RELEASE, DECLINE) while cut off from every
//! region, kept until a region has recorded them.
//!
//! Online, a rack sends an ACK only after the region has committed the lease to the replicated log. Cut
//! off from every region it still answers renewals and known machines (the engine decides which), and
//! this journal is what makes that safe across a crash: each group of such leases is appended as JSON
//! lines and fsynced — one `write` and one `fsync` per group (group commit) — *before* the replies go
//! out. When a session is back, the service replays the journal as ordinary `LeaseCommit` batches (the
//! region's apply is idempotent for the same lease) and truncates it once every entry is answered.
//!
//! The file lives in the rack's data directory (`leases.journal`, mode 0600: it names the network's
//! clients) and is bounded by [`MAX_ENTRIES`]: beyond it the rack stops acknowledging offline (the clients
//! keep their leases until they run out and retry), rather than filling the disk during a long partition.
//! A crash mid-append leaves a torn last line; it is dropped (its clients were never answered) and the
//! file rewritten without it, so later appends start on a line of their own.

use ingot_common::net::Lease;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Most leases the journal holds: 100,000 renewals cover every client of a few /16 networks renewing
/// once, i.e. a partition of about one lease time; at ~200 bytes a line that is ~20 MB of disk, replayed
/// in a few hundred batches on reconnect.
pub const MAX_ENTRIES: usize = 100_000;

/// Why the journal could not be read or written. An append that fails means the replies of that group are
/// not sent (the clients retry); nothing is lost that was acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The file could not be opened, read, written or fsynced.
    #[error("lease journal {path}: {what}: {source} (check free space and permissions of the rack's data directory)")]
    Io {
        /// The journal file.
        path: String,
        /// The step that failed.
        what: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A lease could not be encoded (should not happen: leases are plain data).
    #[error("lease journal {path}: encoding a lease: {source}")]
    Encode {
        /// The journal file.
        path: String,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },
    /// The group would take the journal past its bound: it is not written, and its replies are not sent.
    #[error("lease journal {path} holds {held} leases; {adding} more would exceed its limit of {max}: the rack acknowledges no more leases until a region is reachable again and the journal is replayed (clients keep their current leases until they run out)")]
    Full {
        /// The journal file.
        path: String,
        /// Leases in it now.
        held: usize,
        /// Leases in the refused group.
        adding: usize,
        /// The bound ([`MAX_ENTRIES`] unless a test says otherwise).
        max: usize,
    },
}

/// The open journal: an append-only file and the number of leases in it. Not synchronized; the service
/// keeps it behind a mutex and writes it from a blocking task.
#[derive(Debug)]
pub struct Journal {
    /// The file, for messages and compaction.
    path: PathBuf,
    /// Open for appending; each group is one `write_all` and one `sync_data`.
    file: File,
    /// Leases in the file now (what the bound counts).
    entries: usize,
    /// The bound.
    max: usize,
}

/// Encodes `leases` as JSON lines.
fn encode(path: &Path, leases: &[Lease]) -> Result<Vec<u8>, JournalError> {
    let mut text = Vec::with_capacity(leases.len() * 200);
    for l in leases {
        serde_json::to_writer(&mut text, l).map_err(|source| JournalError::Encode {
            path: path.display().to_string(),
            source,
        })?;
        text.push(b'\n');
    }
    Ok(text)
}

impl Journal {
    /// Opens (or creates, mode 0600) the journal at `path` holding at most `max` leases, and returns it
    /// with the leases it holds, oldest first: those were acknowledged but not known to be recorded by a
    /// region, and must be replayed. A torn or unreadable line is dropped with a warning.
    pub fn open(path: &Path, max: usize) -> Result<(Journal, Vec<Lease>), JournalError> {
        let io = |what: &'static str| {
            let path = path.display().to_string();
            move |source| JournalError::Io { path, what, source }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io("creating its directory"))?;
        }
        let mut leases = Vec::new();
        let mut damaged = 0usize;
        match File::open(path) {
            Ok(f) => {
                for line in BufReader::new(f).split(b'\n') {
                    let line = line.map_err(io("reading"))?;
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    match serde_json::from_slice::<Lease>(&line) {
                        Ok(l) => leases.push(l),
                        Err(_) => damaged += 1,
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("opening")(e)),
        }
        if damaged > 0 {
            tracing::warn!(
                path = %path.display(),
                damaged,
                "lease journal had unreadable lines (a crash during an append: those clients were never answered); they are dropped"
            );
            let text = encode(path, &leases)?;
            crate::config::write_atomic(path, &text, true).map_err(|e| JournalError::Io {
                path: path.display().to_string(),
                what: "rewriting without the damaged lines",
                source: std::io::Error::other(e.to_string()),
            })?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(io("opening for append"))?;
        // A file created by hand or by an older version keeps its mode on open: make it private.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io("making it private (0600)"))?;
        let entries = leases.len();
        Ok((
            Journal {
                path: path.to_path_buf(),
                file,
                entries,
                max,
            },
            leases,
        ))
    }

    /// Appends `group` with one write and one fsync; only when this returns `Ok` may the group's replies
    /// be sent. The whole group is refused ([`JournalError::Full`]) if it would exceed the bound.
    pub fn append(&mut self, group: &[Lease]) -> Result<(), JournalError> {
        if group.is_empty() {
            return Ok(());
        }
        if self.entries.saturating_add(group.len()) > self.max {
            return Err(JournalError::Full {
                path: self.path.display().to_string(),
                held: self.entries,
                adding: group.len(),
                max: self.max,
            });
        }
        let text = encode(&self.path, group)?;
        let io = |what: &'static str| {
            let path = self.path.display().to_string();
            move |source| JournalError::Io { path, what, source }
        };
        self.file.write_all(&text).map_err(io("appending"))?;
        self.file.sync_data().map_err(io("fsyncing"))?;
        self.entries += group.len();
        Ok(())
    }

    /// Replaces the journal's contents with `keep` (atomically: a crash leaves the old or the new file):
    /// called with nothing once every journaled lease was answered by a region.
    pub fn compact(&mut self, keep: &[Lease]) -> Result<(), JournalError> {
        let text = encode(&self.path, keep)?;
        crate::config::write_atomic(&self.path, &text, true).map_err(|e| JournalError::Io {
            path: self.path.display().to_string(),
            what: "compacting",
            source: std::io::Error::other(e.to_string()),
        })?;
        // The old descriptor points at the replaced file: reopen.
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(|source| JournalError::Io {
                path: self.path.display().to_string(),
                what: "reopening after compaction",
                source,
            })?;
        self.entries = keep.len();
        Ok(())
    }

    /// How many leases the file holds.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether the file holds no lease (nothing to replay).
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The file, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ingot_common::net::{Cidr, LeaseState};
    use std::net::Ipv4Addr;

    fn lease(i: u8) -> Lease {
        Lease {
            ip: Ipv4Addr::new(10, 20, 0, i),
            subnet: "10.20.0.0/24".parse::<Cidr>().unwrap(),
            mac: ingot_common::Mac([2, 0, 0, 0, 0, i]),
            state: LeaseState::Bound,
            start_ms: 1,
            expires_ms: 2,
            hostname: String::new(),
            rack: String::new(),
        }
    }

    #[test]
    fn a_torn_line_is_dropped_and_the_bound_holds() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("leases.journal");
        {
            let (mut j, old) = Journal::open(&p, 3).unwrap();
            assert!(old.is_empty());
            j.append(&[lease(1), lease(2)]).unwrap();
            assert!(matches!(
                j.append(&[lease(3), lease(4)]),
                Err(JournalError::Full { held: 2, .. })
            ));
        }
        // A crash mid-append: half a line at the end.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(br#"{"ip":"10.20.0.9","sub"#).unwrap();
        drop(f);
        let (mut j, old) = Journal::open(&p, 3).unwrap();
        assert_eq!(old, vec![lease(1), lease(2)]);
        j.append(&[lease(3)]).unwrap();
        let (_, old) = Journal::open(&p, 3).unwrap();
        assert_eq!(old, vec![lease(1), lease(2), lease(3)]);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
