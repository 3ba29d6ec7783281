//! Boot images and their files: the vocabulary shared by the region (which stores image metadata in Raft
//! and the bytes as content-addressed blobs), the rack (which caches blobs and serves them over TFTP and
//! HTTP) and the CLI.
//!
//! An image is a named set of files; each file is a blob named by the SHA-256 of its bytes, so a file is
//! stored once however many images use it, a copy is verified by hashing it, and a URL naming a blob can
//! be cached forever. What a machine boots is decided from its status ([`BootPurpose`]) and the images
//! present ([`BootIntent`]).

use crate::error::DomainError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest image name, in bytes.
pub const MAX_IMAGE_NAME: usize = 64;
/// Most files in one image (a ramdisk has two, a bootloader set a handful).
pub const MAX_IMAGE_FILES: usize = 16;
/// Longest file name inside an image, in bytes.
pub const MAX_FILE_NAME: usize = 64;
/// Largest single file (64 GiB): bounds what an upload may announce, so the region can refuse at once
/// what would fill its disk.
pub const MAX_FILE_SIZE: u64 = 64 << 30;
/// Most images the cluster keeps: images are few and large, and their metadata is part of every snapshot.
pub const MAX_IMAGES: usize = 1_000;

/// What an image is for; decides which files it must have.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum ImageKind {
    /// A kernel and an initrd that run Ingot's agent (enlist, commission, test, erase, deploy, rescue):
    /// files `kernel` and `initrd`.
    Ramdisk,
    /// An operating system written to a machine's disk at deployment: file `disk` (a raw or qcow2
    /// image), optionally with `kernel`/`initrd` of its own.
    Disk,
    /// Network boot programs served over TFTP/HTTP by name (iPXE's `undionly.kpxe`, `snponly.efi`, ...).
    Bootloader,
}

impl ImageKind {
    /// Every kind, for parsing and help texts.
    pub const ALL: [ImageKind; 3] = [ImageKind::Ramdisk, ImageKind::Disk, ImageKind::Bootloader];

    /// The spelling in the API, the CLI and events.
    pub fn as_str(&self) -> &'static str {
        match self {
            ImageKind::Ramdisk => "ramdisk",
            ImageKind::Disk => "disk",
            ImageKind::Bootloader => "bootloader",
        }
    }

    /// Parses the API spelling; the error names `field` and lists the kinds.
    pub fn parse(field: &str, s: &str) -> Result<ImageKind, DomainError> {
        ImageKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                DomainError::invalid(
                    field,
                    format!("'{s}' is no image kind: use ramdisk, disk or bootloader"),
                )
            })
    }

    /// The file names an image of this kind must contain.
    pub fn required_files(&self) -> &'static [&'static str] {
        match self {
            ImageKind::Ramdisk => &[FILE_KERNEL, FILE_INITRD],
            ImageKind::Disk => &[FILE_DISK],
            ImageKind::Bootloader => &[],
        }
    }
}

impl fmt::Display for ImageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// File name of a ramdisk's (or disk image's) kernel.
pub const FILE_KERNEL: &str = "kernel";
/// File name of a ramdisk's initrd.
pub const FILE_INITRD: &str = "initrd";
/// File name of a disk image's disk.
pub const FILE_DISK: &str = "disk";

/// The SHA-256 of a blob's bytes: its name everywhere (region blob store, rack cache, URLs).
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(try_from = "String", into = "String")]
pub struct BlobId(pub [u8; 32]);

impl BlobId {
    /// Parses 64 lowercase or uppercase hex digits; the error names `field`.
    pub fn parse(field: &str, s: &str) -> Result<BlobId, DomainError> {
        let mut out = [0u8; 32];
        if s.len() != 64 {
            return Err(DomainError::invalid(
                field,
                format!("a SHA-256 is 64 hex digits, got {} characters", s.len()),
            ));
        }
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            let hi = hex_digit(chunk[0]);
            let lo = hex_digit(chunk[1]);
            match (hi, lo) {
                (Some(h), Some(l)) => out[i] = h << 4 | l,
                _ => {
                    return Err(DomainError::invalid(
                        field,
                        "a SHA-256 is 64 hex digits (0-9, a-f)",
                    ))
                }
            }
        }
        Ok(BlobId(out))
    }

    /// The 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from_digit((b >> 4) as u32, 16).unwrap_or('0'));
            s.push(char::from_digit((b & 15) as u32, 16).unwrap_or('0'));
        }
        s
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({})", self.to_hex())
    }
}

impl TryFrom<String> for BlobId {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        BlobId::parse("sha256", &s)
    }
}

impl From<BlobId> for String {
    fn from(b: BlobId) -> String {
        b.to_hex()
    }
}

/// One file of an image.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ImageFile {
    /// Its name inside the image (`kernel`, `initrd`, `disk`, `undionly.kpxe`): what scripts and TFTP
    /// requests ask for.
    pub name: String,
    /// Its bytes' SHA-256: the blob that holds them.
    pub blob: BlobId,
    /// Its size in bytes (checked against the blob when it is stored and fetched).
    pub size: u64,
}

/// A named boot image: metadata replicated in Raft, bytes in blobs on every region.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// Unique name, e.g. `ingot-ramdisk`, `debian/bookworm`, `ipxe`.
    pub name: String,
    /// What it is for.
    pub kind: ImageKind,
    /// CPU architecture of its contents (`amd64`, `arm64`); bootloaders say which firmware they run on.
    pub arch: String,
    /// Its files, by name (unique).
    pub files: Vec<ImageFile>,
    /// Who uploaded it.
    pub created_by: String,
    /// When the upload was recorded (ms since epoch).
    pub created_ms: u64,
}

impl Image {
    /// The file called `name`.
    pub fn file(&self, name: &str) -> Option<&ImageFile> {
        self.files.iter().find(|f| f.name == name)
    }

    /// Total bytes of its files.
    pub fn size(&self) -> u64 {
        self.files
            .iter()
            .fold(0u64, |t, f| t.saturating_add(f.size))
    }

    /// Checks every field: name, arch, file names (unique, required ones for the kind present), sizes,
    /// counts. Each error names its field.
    pub fn validate(&self) -> Result<(), DomainError> {
        validate_image_name("name", &self.name)?;
        crate::validate::arch("arch", &self.arch)?;
        if self.files.is_empty() {
            return Err(DomainError::invalid(
                "files",
                "an image needs at least one file",
            ));
        }
        crate::validate::entries("files", self.files.len(), MAX_IMAGE_FILES)?;
        for (i, f) in self.files.iter().enumerate() {
            validate_file_name(&format!("files[{i}].name"), &f.name)?;
            if f.size > MAX_FILE_SIZE {
                return Err(DomainError::invalid(
                    format!("files[{i}].size"),
                    format!("{} bytes, at most {MAX_FILE_SIZE}", f.size),
                ));
            }
            if self.files[..i].iter().any(|o| o.name == f.name) {
                return Err(DomainError::invalid(
                    format!("files[{i}].name"),
                    format!("'{}' appears twice", f.name),
                ));
            }
        }
        for req in self.kind.required_files() {
            if self.file(req).is_none() {
                return Err(DomainError::invalid(
                    "files",
                    format!("a {} image needs a file named '{req}'", self.kind),
                ));
            }
        }
        Ok(())
    }
}

/// Image names: 1-64 bytes of `a-z 0-9 . _ - /`, starting with a letter or digit, no `..` and no
/// trailing `/` (a disk image for `ingot machines deploy --osystem debian --distro-series bookworm` is
/// named `debian/bookworm`).
pub fn validate_image_name(field: &str, s: &str) -> Result<(), DomainError> {
    let ok_chars = s
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-/".contains(&c));
    let first_ok = s
        .bytes()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if s.is_empty()
        || s.len() > MAX_IMAGE_NAME
        || !ok_chars
        || !first_ok
        || s.contains("..")
        || s.ends_with('/')
        || s.contains("//")
    {
        return Err(DomainError::invalid(
            field,
            format!(
                "'{}' is no image name: 1-{MAX_IMAGE_NAME} characters a-z 0-9 . _ - /, starting with a letter or digit",
                shown(s)
            ),
        ));
    }
    Ok(())
}

/// File names inside an image: 1-64 bytes of `A-Z a-z 0-9 . _ -`, not starting with `.` (they become
/// TFTP and URL path segments).
pub fn validate_file_name(field: &str, s: &str) -> Result<(), DomainError> {
    let ok = !s.is_empty()
        && s.len() <= MAX_FILE_NAME
        && !s.starts_with('.')
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c));
    if !ok {
        return Err(DomainError::invalid(
            field,
            format!(
                "'{}' is no file name: 1-{MAX_FILE_NAME} characters A-Z a-z 0-9 . _ -, not starting with '.'",
                shown(s)
            ),
        ));
    }
    Ok(())
}

/// `s` cut to 80 characters with control characters escaped: hostile input echoed in an error stays short
/// and printable.
fn shown(s: &str) -> String {
    s.chars().take(80).flat_map(char::escape_debug).collect()
}

/// What a copy of a blob on disk looked like when it was verified (region blob store, rack cache): a
/// change of any field means the copy is hashed again before it is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    /// Length in bytes.
    pub len: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i128,
    /// Inode number (a file replaced by another has a new one).
    pub ino: u64,
    /// Device (with the inode, the file's identity).
    pub dev: u64,
}

impl FileStamp {
    /// The stamp of a file's metadata.
    pub fn of(m: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ino: m.ino(),
            dev: m.dev(),
        }
    }
}

/// Why a machine network-boots: decided by the region from its status, rendered by the rack into an
/// iPXE script. One vocabulary for the script, the kernel command line, events and the agent.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum BootPurpose {
    /// Unknown MAC or a New machine: the ramdisk enlists/commissions it.
    Enlist,
    /// Commissioning: the agent reports inventory.
    Commission,
    /// Testing: the agent runs its checks.
    Test,
    /// Disk erasing on release.
    Erase,
    /// Deploying: the agent writes the disk image.
    Deploy,
    /// Rescue mode: the ramdisk with an SSH server.
    Rescue,
    /// Deployed: boot from the local disk (`sanboot`/`exit`).
    LocalDisk,
    /// Anything else: nothing to boot; the script powers the machine off.
    PowerOff,
}

impl BootPurpose {
    /// The spelling on the kernel command line (`ingot.purpose=`), in events and in the API.
    pub fn as_str(&self) -> &'static str {
        match self {
            BootPurpose::Enlist => "enlist",
            BootPurpose::Commission => "commission",
            BootPurpose::Test => "test",
            BootPurpose::Erase => "erase",
            BootPurpose::Deploy => "deploy",
            BootPurpose::Rescue => "rescue",
            BootPurpose::LocalDisk => "local-disk",
            BootPurpose::PowerOff => "power-off",
        }
    }

    /// Every purpose.
    pub const ALL: [BootPurpose; 8] = [
        BootPurpose::Enlist,
        BootPurpose::Commission,
        BootPurpose::Test,
        BootPurpose::Erase,
        BootPurpose::Deploy,
        BootPurpose::Rescue,
        BootPurpose::LocalDisk,
        BootPurpose::PowerOff,
    ];

    /// Parses the spelling of [`BootPurpose::as_str`].
    pub fn parse(s: &str) -> Option<BootPurpose> {
        BootPurpose::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Whether this purpose boots Ingot's ramdisk (and so needs a ramdisk image).
    pub fn needs_ramdisk(&self) -> bool {
        !matches!(self, BootPurpose::LocalDisk | BootPurpose::PowerOff)
    }
}

impl fmt::Display for BootPurpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a MAC should boot now, as the region decides it for a rack's HTTP server: the purpose and the
/// blobs to fetch. Holds no secret: it becomes an iPXE script any client on the wire can read.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BootIntent {
    /// The machine, when the MAC belongs to one.
    pub system_id: Option<String>,
    /// Why it boots.
    pub purpose: BootPurpose,
    /// The ramdisk's kernel, when the purpose needs the ramdisk.
    pub kernel: Option<ImageFile>,
    /// The ramdisk's initrd.
    pub initrd: Option<ImageFile>,
    /// The disk image to write, when deploying.
    pub disk: Option<ImageFile>,
    /// Why the intent lacks something it needs (e.g. "no ramdisk image for arch amd64: upload one with
    /// `ingot images upload`"): shown on the machine's console by the script and recorded in an event.
    pub problem: String,
}

/// The ramdisk a machine of `arch` boots for every purpose that needs one: the most recently uploaded
/// ramdisk image whose arch matches (`amd64/generic` matches `amd64`; an empty arch means amd64). One
/// rule, used by the region's boot intents and by what it tells racks to prefetch.
pub fn ramdisk_for<'a>(
    images: impl IntoIterator<Item = &'a Image>,
    arch: &str,
) -> Option<&'a Image> {
    let family = arch_family(arch);
    images
        .into_iter()
        .filter(|i| i.kind == ImageKind::Ramdisk && arch_family(&i.arch) == family)
        .max_by(|a, b| (a.created_ms, &a.name).cmp(&(b.created_ms, &b.name)))
}

/// `amd64/generic` → `amd64`; empty → `amd64`.
pub fn arch_family(arch: &str) -> &str {
    match arch.split('/').next() {
        Some("") | None => "amd64",
        Some(a) => a,
    }
}

/// The disk image a deployment of `osystem` / `distro_series` writes: the image named
/// `<osystem>/<distro_series>` (MAAS's naming of boot resources, e.g. `debian/bookworm`).
pub fn disk_image_name(osystem: &str, distro_series: &str) -> String {
    format!("{osystem}/{distro_series}")
}

/// One step of a network boot as the rack saw it; batched to the region as machine events.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum BootStep {
    /// A DHCP exchange gave the MAC an address (or a proxy answer gave it a boot file).
    Dhcp,
    /// The rack served the MAC's iPXE script, with its purpose.
    Script,
    /// A file download started (TFTP or HTTP).
    FileStarted,
    /// A file download finished completely.
    FileFinished,
    /// A file download was aborted (client gone, timeout, verification failed).
    FileAborted,
    /// The machine's in-band agent asked who it is (a lookup relayed by the rack), with the outcome.
    AgentLookup,
}

impl BootStep {
    /// The spelling in events.
    pub fn as_str(&self) -> &'static str {
        match self {
            BootStep::Dhcp => "dhcp",
            BootStep::Script => "script",
            BootStep::FileStarted => "file-started",
            BootStep::FileFinished => "file-finished",
            BootStep::FileAborted => "file-aborted",
            BootStep::AgentLookup => "agent-lookup",
        }
    }

    /// Every step.
    pub const ALL: [BootStep; 6] = [
        BootStep::Dhcp,
        BootStep::Script,
        BootStep::FileStarted,
        BootStep::FileFinished,
        BootStep::FileAborted,
        BootStep::AgentLookup,
    ];

    /// Parses the spelling of [`BootStep::as_str`].
    pub fn parse(s: &str) -> Option<BootStep> {
        BootStep::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_id_round_trips_and_names_its_field() {
        let h = "ab".repeat(32);
        let b = BlobId::parse("x", &h).unwrap();
        assert_eq!(b.to_hex(), h);
        assert_eq!(BlobId::parse("x", &h.to_uppercase()).unwrap(), b);
        let e = BlobId::parse("files[0].sha256", "zz").unwrap_err();
        assert!(e.to_string().contains("files[0].sha256"), "{e}");
        assert!(BlobId::parse("x", &"g".repeat(64)).is_err());
        let j = serde_json::to_string(&b).unwrap();
        assert_eq!(serde_json::from_str::<BlobId>(&j).unwrap(), b);
    }

    #[test]
    fn image_names_and_files() {
        for ok in ["ingot-ramdisk", "debian/bookworm", "ipxe", "u2.04_x"] {
            validate_image_name("name", ok).unwrap();
        }
        for bad in ["", "-x", "a/../b", "a/", "A", "a b", "/a", "a//b"] {
            assert!(validate_image_name("name", bad).is_err(), "{bad}");
        }
        let f = |n: &str| ImageFile {
            name: n.into(),
            blob: BlobId([0; 32]),
            size: 1,
        };
        let mut img = Image {
            name: "r".into(),
            kind: ImageKind::Ramdisk,
            arch: "amd64".into(),
            files: vec![f("kernel")],
            created_by: "a".into(),
            created_ms: 0,
        };
        assert!(img.validate().unwrap_err().to_string().contains("initrd"));
        img.files.push(f("initrd"));
        img.validate().unwrap();
        img.files.push(f("kernel"));
        assert!(img
            .validate()
            .unwrap_err()
            .to_string()
            .contains("files[2].name"));
    }
}
