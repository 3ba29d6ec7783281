//! Ingot's in-band agent: it runs in Ingot's ramdisk (a Debian kernel and a busybox initramfs whose
//! `/init` brings the NICs up and runs `/usr/bin/ingot-agent`) and talks only to the rack it booted from.
//!
//! The flow ([`flow`]): read the kernel command line ([`cmdline`]) -> look the machine up by its MACs and a
//! claim made once per run (the boot proof; the answer carries the per-boot token, kept in memory only) ->
//! commission ([`inventory`]), test ([`checks`]), deploy ([`deploy`], [`seed`]), erase ([`erase`]) or
//! rescue, heartbeating meanwhile -> report the result -> follow the region's word (wait, reboot, power
//! off). The rack is reached over HTTPS pinned to the cluster CA fingerprint ([`tls`], [`rack`]); the
//! machine is reached through [`platform::Platform`], rooted at a directory so tests run against a fake
//! `/sys` tree and plain files as disks.

pub mod checks;
pub mod cmdline;
pub mod deploy;
pub mod erase;
pub mod flow;
pub mod http;
pub mod inventory;
pub mod platform;
pub mod progress;
pub mod rack;
pub mod seed;
pub mod tls;

#[cfg(test)]
mod tests;

/// A line on the console (stderr, which the ramdisk's init sends to the serial and VGA consoles).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        eprintln!("ingot-agent: {}", format_args!($($arg)*))
    };
}
