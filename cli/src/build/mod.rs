//! `ingot images build-ramdisk | build-test-image | build-debian`: Ingot's boot images assembled from
//! Debian packages only. Packages come from the host's apt sources with `apt-get download` (cached in
//! `--cache`, default ~/.cache/ingot/debs) and are unpacked with `dpkg-deb -x` into a work directory:
//! nothing is installed on the host and nothing is fetched from anywhere else.
//!
//! Layout: [`cpio`] (the newc codec of the initramfs, pure), [`kmod`] (kernel modules and their load
//! order), [`mbr`] (the partition table, pure), `fat` (a FAT32 partition written into a slice of the
//! image file), `debs` (apt and dpkg-deb, shared libraries), `ramdisk` and `disk` (the three builders).
//! A builder returns the files it made; `images.rs` uploads them with `--upload NAME` through the same
//! code as `ingot images upload`.

pub mod cpio;
mod debs;
mod disk;
mod fat;
pub mod kmod;
pub mod mbr;
mod ramdisk;

use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where the kernel of a built image comes from: the Debian package and the .deb cache (the flags
/// `build-ramdisk` and `build-test-image` share).
#[derive(Args, Debug)]
pub struct KernelDebs {
    /// The kernel package (default: the one `linux-image-amd64` depends on)
    #[arg(long, value_name = "PKG")]
    pub kernel_package: Option<String>,
    /// Where downloaded .deb files are kept (default: ~/.cache/ingot/debs)
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
}

/// `ingot images build-ramdisk`.
#[derive(Args, Debug)]
pub struct RamdiskArgs {
    /// Directory to write `kernel` and `initrd` into (created if missing)
    #[arg(long, default_value = "ingot-ramdisk")]
    pub out: PathBuf,
    /// The ingot-agent binary to put in the ramdisk (default: `ingot-agent` next to this `ingot`)
    #[arg(long, value_name = "PATH")]
    pub agent: Option<PathBuf>,
    #[command(flatten)]
    pub debs: KernelDebs,
    /// Upload the result as ramdisk image NAME (kind ramdisk, arch amd64), e.g. ingot-ramdisk
    #[arg(long, value_name = "NAME")]
    pub upload: Option<String>,
}

/// `ingot images build-test-image`.
#[derive(Args, Debug)]
pub struct TestImageArgs {
    /// The raw disk image to write
    #[arg(long, default_value = "ingot-test.img")]
    pub out: PathBuf,
    /// Image size in MiB (one FAT32 partition fills it; at least 34)
    #[arg(long, default_value_t = 64)]
    pub size_mib: u64,
    #[command(flatten)]
    pub debs: KernelDebs,
    /// Upload the result as disk image NAME (osystem/series, e.g. ingot/test)
    #[arg(long, value_name = "NAME")]
    pub upload: Option<String>,
}

/// `ingot images build-debian`.
#[derive(Args, Debug)]
pub struct DebianArgs {
    /// Debian suite (release) to install
    #[arg(long, default_value = "bookworm")]
    pub suite: String,
    /// The raw disk image to write (default: debian-SUITE.img)
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Image size in MiB (256 MiB boot partition, the rest is the ext4 root)
    #[arg(long, default_value_t = 2048)]
    pub size_mib: u64,
    /// Debian mirror for mmdebstrap (default: the host's apt sources)
    #[arg(long)]
    pub mirror: Option<String>,
    /// Where downloaded .deb files are kept (default: ~/.cache/ingot/debs)
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Upload the result as disk image NAME (e.g. debian/bookworm)
    #[arg(long, value_name = "NAME")]
    pub upload: Option<String>,
}

/// What a builder made: the image kind and its files by their name in an image.
pub struct Built {
    /// `ramdisk` or `disk`.
    pub kind: &'static str,
    /// (file name in the image, local path): `kernel` + `initrd`, or `disk`.
    pub files: Vec<(String, PathBuf)>,
}

/// Builds the deploy/commission ramdisk.
pub fn build_ramdisk(args: &RamdiskArgs, quiet: bool) -> Result<Built> {
    ramdisk::build(args, &Steps::new(quiet))
}

/// Builds the small bootable test disk image.
pub fn build_test_image(args: &TestImageArgs, quiet: bool) -> Result<Built> {
    disk::build_test(args, &Steps::new(quiet))
}

/// Builds a Debian disk image with cloud-init.
pub fn build_debian(args: &DebianArgs, quiet: bool) -> Result<Built> {
    disk::build_debian(args, &Steps::new(quiet))
}

/// Progress of a build: one line per step, with a spinner on a terminal.
pub(crate) struct Steps {
    bar: ProgressBar,
    started: Instant,
    quiet: bool,
}

impl Steps {
    fn new(quiet: bool) -> Steps {
        let bar = if std::io::stderr().is_terminal() && !quiet {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        } else {
            ProgressBar::hidden()
        };
        Steps {
            bar,
            started: Instant::now(),
            quiet,
        }
    }

    /// Starts a step: printed, and shown next to the spinner until the next one.
    pub(crate) fn step(&self, msg: impl Into<String>) {
        let msg = msg.into();
        if self.bar.is_hidden() {
            if !self.quiet {
                eprintln!("[{:5.1}s] {msg}", self.started.elapsed().as_secs_f64());
            }
        } else {
            self.bar.println(format!(
                "[{:5.1}s] {msg}",
                self.started.elapsed().as_secs_f64()
            ));
            self.bar.set_message(msg);
        }
    }

    /// Ends the progress display.
    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Size in MiB with one decimal, for progress lines.
pub(crate) fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20))
}

/// Hex SHA-256 of bytes.
pub(crate) fn sha256_hex(b: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}
