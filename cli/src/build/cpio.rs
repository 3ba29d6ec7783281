//! The cpio "newc" (SVR4, magic `070701`) codec the Linux kernel unpacks an initramfs from: a pure module
//! (no I/O of its own) that writes an [`Archive`] into any [`Write`], and a small reader ([`read`]) for
//! tests and for checking what a builder wrote.
//!
//! Output is deterministic: entries are written sorted by path, every entry has the same mtime
//! ([`MTIME`]), uid and gid 0, and inode numbers counted from 1 in that order, so building the same
//! tree twice gives the same bytes (and the same sha256 once gzip'd without a timestamp).
//!
//! Format (one entry): a 110-byte ASCII header — the magic and 13 fields of 8 hex digits: ino, mode,
//! uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize (with its NUL),
//! check (0) — then the name and a NUL, padded with NULs to a multiple of 4 bytes from the entry's
//! start, then the data (a symlink's data is its target), padded to 4. The last entry is `TRAILER!!!`.

use std::collections::BTreeMap;
use std::io::{self, Write};

/// The newc magic.
const MAGIC: &[u8; 6] = b"070701";
/// Header length: magic plus 13 fields of 8 hex digits.
const HEADER: usize = 6 + 13 * 8;
/// The name of the end-of-archive entry.
const TRAILER: &str = "TRAILER!!!";
/// The modification time of every entry (the epoch): fixed so rebuilds are byte-identical.
pub const MTIME: u32 = 0;

/// File type bits of `mode` (`S_IFMT` and its values).
const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// What an entry is; with its permission bits, it makes the header's `mode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file with its contents.
    File(Vec<u8>),
    /// A symbolic link to the target (stored as the entry's data).
    Symlink(String),
    /// A character device node (e.g. /dev/console is 5:1, /dev/null 1:3): the kernel needs
    /// /dev/console in the archive to give /init its stdin, stdout and stderr.
    CharDev {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
}

/// One entry: what it is and its permission bits (`0o755`, `0o644`...; file type bits are ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// What the entry is.
    pub kind: Kind,
    /// Permission bits (the low 12 bits of the mode).
    pub perm: u32,
}

/// Why an archive cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// A path that the kernel would not unpack where meant: empty, absolute after normalising,
    /// with `.`/`..` components, a NUL, or the trailer's name.
    #[error("cpio path {0:?} is not a relative path of plain components (no '.', '..', NUL or TRAILER!!!)")]
    BadPath(String),
    /// A field that does not fit the header's 32 bits.
    #[error("cpio entry {path:?}: {field} {value} does not fit in 32 bits (newc limit: files under 4 GiB)")]
    TooLarge {
        /// The entry.
        path: String,
        /// Which header field.
        field: &'static str,
        /// The value that does not fit.
        value: u64,
    },
    /// The bytes are not a newc archive, or end early.
    #[error("not a cpio newc archive at byte {offset}: {what}")]
    Malformed {
        /// Where reading stopped.
        offset: usize,
        /// What was wrong.
        what: &'static str,
    },
    /// The writer failed.
    #[error("writing the cpio archive: {0}")]
    Io(#[source] io::Error),
}

/// A set of entries by path (relative, `/`-separated, e.g. `usr/bin/ingot-agent`), written in path
/// order. Adding a path adds its missing parent directories (mode 0755).
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

/// `path` without leading `/` and with its components checked.
fn normalise(path: &str) -> Result<String, CpioError> {
    let p = path.trim_start_matches('/').trim_end_matches('/');
    let bad = p.is_empty()
        || p == TRAILER
        || p.contains('\0')
        || p.split('/').any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(CpioError::BadPath(path.to_string()));
    }
    Ok(p.to_string())
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the entry at `path`, and any missing parent directory.
    pub fn add(&mut self, path: &str, kind: Kind, perm: u32) -> Result<(), CpioError> {
        let p = normalise(path)?;
        let mut parent = p.as_str();
        while let Some((dir, _)) = parent.rsplit_once('/') {
            self.entries.entry(dir.to_string()).or_insert(Entry {
                kind: Kind::Dir,
                perm: 0o755,
            });
            parent = dir;
        }
        self.entries.insert(
            p,
            Entry {
                kind,
                perm: perm & 0o7777,
            },
        );
        Ok(())
    }

    /// Adds a directory (mode `perm`).
    pub fn dir(&mut self, path: &str, perm: u32) -> Result<(), CpioError> {
        self.add(path, Kind::Dir, perm)
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, data: Vec<u8>, perm: u32) -> Result<(), CpioError> {
        self.add(path, Kind::File(data), perm)
    }

    /// Adds a symbolic link `path` -> `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        self.add(path, Kind::Symlink(target.to_string()), 0o777)
    }

    /// Whether `path` is in the archive.
    pub fn contains(&self, path: &str) -> bool {
        normalise(path).is_ok_and(|p| self.entries.contains_key(&p))
    }

    /// The entries, in the order they are written.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(p, e)| (p.as_str(), e))
    }

    /// Writes the archive (entries in path order, then the trailer) into `w`; returns the bytes written.
    pub fn write_to(&self, w: &mut impl Write) -> Result<u64, CpioError> {
        let mut out = Counting { inner: w, n: 0 };
        for (ino, (path, e)) in (1u64..).zip(self.entries.iter()) {
            write_entry(&mut out, ino, path, e)?;
        }
        let trailer = Header {
            ino: 0,
            mode: 0,
            nlink: 1,
            filesize: 0,
            rdev: (0, 0),
        };
        trailer.write(&mut out, TRAILER)?;
        pad(&mut out)?;
        Ok(out.n)
    }
}

/// A writer that counts bytes, for the 4-byte alignment.
struct Counting<'a, W: Write> {
    inner: &'a mut W,
    n: u64,
}

impl<W: Write> Counting<'_, W> {
    fn put(&mut self, b: &[u8]) -> Result<(), CpioError> {
        self.inner.write_all(b).map_err(CpioError::Io)?;
        self.n += b.len() as u64;
        Ok(())
    }
}

/// Pads with NULs to the next multiple of 4.
fn pad<W: Write>(w: &mut Counting<'_, W>) -> Result<(), CpioError> {
    let rem = (w.n % 4) as usize;
    if rem != 0 {
        w.put(&[0u8; 3][..4 - rem])?;
    }
    Ok(())
}

/// The header fields that vary between entries.
struct Header {
    ino: u64,
    mode: u32,
    nlink: u32,
    filesize: u64,
    rdev: (u32, u32),
}

fn fit(path: &str, field: &'static str, value: u64) -> Result<u32, CpioError> {
    u32::try_from(value).map_err(|_| CpioError::TooLarge {
        path: path.to_string(),
        field,
        value,
    })
}

impl Header {
    /// Writes the header and the name (with its NUL), not padded.
    fn write<W: Write>(&self, w: &mut Counting<'_, W>, name: &str) -> Result<(), CpioError> {
        let fields = [
            fit(name, "inode", self.ino)?,
            self.mode,
            0, // uid
            0, // gid
            self.nlink,
            MTIME,
            fit(name, "file size", self.filesize)?,
            0, // devmajor
            0, // devminor
            self.rdev.0,
            self.rdev.1,
            fit(name, "name size", name.len() as u64 + 1)?,
            0, // check
        ];
        let mut h = Vec::with_capacity(HEADER);
        h.extend_from_slice(MAGIC);
        for f in fields {
            h.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        w.put(&h)?;
        w.put(name.as_bytes())?;
        w.put(&[0])
    }
}

fn write_entry<W: Write>(
    w: &mut Counting<'_, W>,
    ino: u64,
    path: &str,
    e: &Entry,
) -> Result<(), CpioError> {
    let (ty, data, nlink, rdev): (u32, &[u8], u32, (u32, u32)) = match &e.kind {
        Kind::Dir => (S_IFDIR, &[], 2, (0, 0)),
        Kind::File(d) => (S_IFREG, d, 1, (0, 0)),
        Kind::Symlink(t) => (S_IFLNK, t.as_bytes(), 1, (0, 0)),
        Kind::CharDev { major, minor } => (S_IFCHR, &[], 1, (*major, *minor)),
    };
    let h = Header {
        ino,
        mode: ty | (e.perm & 0o7777),
        nlink,
        filesize: data.len() as u64,
        rdev,
    };
    h.write(w, path)?;
    pad(w)?;
    w.put(data)?;
    pad(w)
}

/// Parses one 8-hex-digit field.
fn hex_field(b: &[u8], offset: usize) -> Result<u32, CpioError> {
    let bad = CpioError::Malformed {
        offset,
        what: "header field is not 8 hex digits",
    };
    let s = std::str::from_utf8(b).map_err(|_| CpioError::Malformed {
        offset,
        what: "header field is not 8 hex digits",
    })?;
    if s.len() != 8 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad);
    }
    u32::from_str_radix(s, 16).map_err(|_| bad)
}

/// `n` rounded up to a multiple of 4.
fn align4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// Reads a newc archive (uncompressed) back into (path, entry) pairs in archive order, stopping at the
/// trailer. Bounded by the input: every length is checked against the bytes left.
pub fn read(bytes: &[u8]) -> Result<Vec<(String, Entry)>, CpioError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    loop {
        let here = at;
        let malformed = |what| CpioError::Malformed { offset: here, what };
        let h = bytes
            .get(at..at + HEADER)
            .ok_or(malformed("archive ends inside a header (no TRAILER!!!)"))?;
        if &h[..6] != MAGIC {
            return Err(malformed("bad magic (not 070701)"));
        }
        let field = |i: usize| hex_field(&h[6 + i * 8..6 + (i + 1) * 8], at + 6 + i * 8);
        let mode = field(1)?;
        let filesize = field(6)? as usize;
        let rdev = (field(9)?, field(10)?);
        let namesize = field(11)? as usize;
        let name_end = at + HEADER + namesize;
        let name = bytes
            .get(at + HEADER..name_end)
            .ok_or(malformed("archive ends inside a name"))?;
        let Some((&0, name)) = name.split_last() else {
            return Err(malformed("name is not NUL-terminated"));
        };
        let name = std::str::from_utf8(name)
            .map_err(|_| malformed("name is not UTF-8"))?
            .to_string();
        let data_start = align4(name_end);
        let data_end = data_start
            .checked_add(filesize)
            .ok_or(malformed("file size overflows"))?;
        let data = bytes
            .get(data_start..data_end)
            .ok_or(malformed("archive ends inside file data"))?;
        at = align4(data_end);
        if name == TRAILER {
            return Ok(out);
        }
        let kind = match mode & S_IFMT {
            S_IFDIR => Kind::Dir,
            S_IFREG => Kind::File(data.to_vec()),
            S_IFLNK => Kind::Symlink(
                std::str::from_utf8(data)
                    .map_err(|_| malformed("symlink target is not UTF-8"))?
                    .to_string(),
            ),
            S_IFCHR => Kind::CharDev {
                major: rdev.0,
                minor: rdev.1,
            },
            _ => return Err(malformed("unsupported file type")),
        };
        out.push((
            name,
            Entry {
                kind,
                perm: mode & 0o7777,
            },
        ));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Archive {
        let mut a = Archive::new();
        a.file("init", b"#!/bin/sh\necho hi\n".to_vec(), 0o755)
            .unwrap();
        a.symlink("bin/sh", "busybox").unwrap();
        a.file("bin/busybox", vec![0x7f, b'E', b'L', b'F'], 0o755)
            .unwrap();
        a.add("dev/console", Kind::CharDev { major: 5, minor: 1 }, 0o600)
            .unwrap();
        a.add("dev/null", Kind::CharDev { major: 1, minor: 3 }, 0o666)
            .unwrap();
        a.dir("tmp", 0o1777).unwrap();
        a
    }

    #[test]
    fn writes_sorted_with_parents_and_trailer() {
        let mut out = Vec::new();
        let n = sample().write_to(&mut out).unwrap();
        assert_eq!(n as usize, out.len());
        assert_eq!(out.len() % 4, 0);
        let back = read(&out).unwrap();
        let names: Vec<_> = back.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/busybox",
                "bin/sh",
                "dev",
                "dev/console",
                "dev/null",
                "init",
                "tmp"
            ]
        );
        assert!(out.starts_with(b"070701"));
        let tail = String::from_utf8_lossy(&out[out.len() - 16..]).to_string();
        assert!(tail.contains("TRAILER!!!"), "{tail:?}");
        // Same tree, same bytes.
        let mut again = Vec::new();
        sample().write_to(&mut again).unwrap();
        assert_eq!(out, again);
    }

    #[test]
    fn first_header_is_exactly_as_the_kernel_reads_it() {
        let mut a = Archive::new();
        a.file("a", b"xyz".to_vec(), 0o644).unwrap();
        let mut out = Vec::new();
        a.write_to(&mut out).unwrap();
        let h = std::str::from_utf8(&out[..HEADER]).unwrap();
        assert_eq!(
            h,
            "070701\
             00000001000081A4000000000000000000000001\
             0000000000000003000000000000000000000000\
             000000000000000200000000"
        );
        // name "a\0" ends at 112: already aligned; data then pad to 116.
        assert_eq!(&out[HEADER..HEADER + 2], b"a\0");
        assert_eq!(&out[112..115], b"xyz");
        assert_eq!(out[115], 0);
    }

    #[test]
    fn refuses_bad_paths() {
        let mut a = Archive::new();
        for p in ["", "/", "a/../b", "./x", "a//b", "TRAILER!!!", "x\0y"] {
            assert!(a.file(p, vec![], 0o644).is_err(), "{p:?}");
        }
        a.file("/etc/passwd", vec![], 0o644).unwrap();
        assert!(a.contains("etc/passwd") && a.contains("/etc"));
    }

    #[test]
    fn reader_rejects_truncation_and_garbage() {
        let mut out = Vec::new();
        sample().write_to(&mut out).unwrap();
        for cut in [0, 5, 109, 111, out.len() / 2, out.len() - 4] {
            assert!(read(&out[..cut]).is_err(), "cut at {cut}");
        }
        assert!(read(b"070707 old binary format").is_err());
    }

    #[test]
    fn gnu_cpio_lists_what_we_wrote() {
        let Ok(probe) = std::process::Command::new("cpio").arg("--version").output() else {
            eprintln!("skipped: GNU cpio not installed (apt-get install cpio)");
            return;
        };
        assert!(probe.status.success());
        let mut out = Vec::new();
        sample().write_to(&mut out).unwrap();
        let cpio_t = |verbose: bool| {
            let mut child = std::process::Command::new("cpio")
                .args(if verbose {
                    &["-t", "-v", "--quiet"][..]
                } else {
                    &["-t", "--quiet"][..]
                })
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(&out).unwrap();
            let o = child.wait_with_output().unwrap();
            assert!(o.status.success());
            String::from_utf8(o.stdout).unwrap()
        };
        let names_out = cpio_t(false);
        let names: Vec<&str> = names_out.lines().collect();
        let listing = cpio_t(true);
        assert_eq!(
            names,
            [
                "bin",
                "bin/busybox",
                "bin/sh",
                "dev",
                "dev/console",
                "dev/null",
                "init",
                "tmp"
            ],
            "{listing}"
        );
        assert!(listing.contains("bin/sh -> busybox"), "{listing}");
        assert!(
            listing.lines().any(|l| l.starts_with("crw-------")
                && l.contains("5,")
                && l.ends_with("dev/console")),
            "{listing}"
        );
        assert!(
            listing.lines().any(|l| l.starts_with("drwxrwxrwt")),
            "{listing}"
        );
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            Just(Kind::Dir),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Kind::File),
            "[a-z/._-]{1,40}".prop_map(Kind::Symlink),
            (0u32..4096, 0u32..1 << 20).prop_map(|(major, minor)| Kind::CharDev { major, minor }),
        ]
    }

    proptest! {
        #[test]
        fn round_trips_any_entry_list(
            entries in proptest::collection::vec(
                ("[a-zA-Z0-9_-]{1,12}(/[a-zA-Z0-9_.-]{1,12}){0,3}", kind(), 0u32..0o7777),
                0..30,
            )
        ) {
            let mut a = Archive::new();
            for (p, k, perm) in &entries {
                if a.add(p, k.clone(), *perm).is_err() {
                    // A component made only of dots: refused, as it should be.
                    prop_assert!(p.split('/').any(|c| c == "." || c == ".."));
                }
            }
            let mut out = Vec::new();
            a.write_to(&mut out).unwrap();
            let back = read(&out).unwrap();
            let want: Vec<(String, Entry)> =
                a.entries().map(|(p, e)| (p.to_string(), e.clone())).collect();
            prop_assert_eq!(back, want);
        }

        #[test]
        fn reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = read(&bytes);
        }
    }
}
