//! The in-band agent's vocabulary on the region's side: what a booted machine is told to do
//! ([`BootWork`], the answer to its lookup) and what it does after each call ([`AgentNext`]).
//!
//! The agent reaches the region only through the rack it booted from (`ingot.rack.v1.AgentCall` over the
//! rack's session); these are the domain forms the region's `app` layer works with, free of transport.

use crate::image::{BlobId, BootPurpose};
use crate::model::EraseMode;
use crate::MachineStatus;

/// Seconds between an agent's heartbeats: often enough that a cancelled boot stops its work within
/// seconds, rarely enough that a rack of agents costs the region a few reads a second.
pub const HEARTBEAT_S: u32 = 10;
/// Most MACs one lookup may name (a machine with more NICs names its first ones).
pub const MAX_LOOKUP_MACS: usize = 64;
/// Shortest and longest claim value of a lookup: random enough not to be guessed, bounded.
pub const CLAIM_LEN: std::ops::RangeInclusive<usize> = 16..=64;

/// What a booted machine is to do: the answer to its lookup, with the boot's token (given once).
#[derive(Clone, PartialEq, Eq)]
pub struct BootWork {
    /// The machine.
    pub system_id: String,
    /// The boot the work belongs to.
    pub boot_id: String,
    /// The per-boot token in plain text: made when the boot is claimed, handed to the agent, kept only
    /// as a hash by the region.
    pub token: String,
    /// Why the machine booted.
    pub purpose: BootPurpose,
    /// The machine's hostname (the NoCloud seed's `local-hostname`).
    pub hostname: String,
    /// Seconds between heartbeats.
    pub heartbeat_s: u32,
    /// Deploy: the image to write and where.
    pub deploy: Option<DeployWork>,
    /// Erase: how (None for other purposes).
    pub erase: EraseMode,
    /// Deploy and rescue: the owner's SSH public keys.
    pub ssh_keys: Vec<String>,
}

impl std::fmt::Debug for BootWork {
    // The token is a credential: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootWork")
            .field("system_id", &self.system_id)
            .field("boot_id", &self.boot_id)
            .field("token", &"<redacted>")
            .field("purpose", &self.purpose)
            .field("hostname", &self.hostname)
            .field("deploy", &self.deploy)
            .field("erase", &self.erase)
            .field("ssh_keys", &self.ssh_keys.len())
            .finish()
    }
}

/// The disk image a deploying machine writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployWork {
    /// The image's name (`osystem/series`).
    pub image: String,
    /// The raw disk image blob, verified by the agent while it writes.
    pub blob: BlobId,
    /// Its size in bytes.
    pub size: u64,
    /// The target disk (kernel name or serial); empty: the smallest disk that fits.
    pub disk: String,
    /// cloud-init user data for the NoCloud seed.
    pub user_data: String,
}

/// What the agent does after a call: the region's decision, from the machine's status and power driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentNext {
    /// Go on with the work.
    Continue,
    /// The work is done and the BMC will power the machine (off, or cycle to its disk): wait for it.
    Wait,
    /// Reboot now: the work is done and no BMC will (a manual power driver).
    Reboot,
    /// Power off now: the work is done and no BMC will.
    PowerOff,
    /// The boot is over (released, aborted, superseded): stop and wait.
    Stop,
}

/// The region's answer to a heartbeat or a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentVerdict {
    /// The machine's status after the call.
    pub status: MachineStatus,
    /// What the agent does next.
    pub next: AgentNext,
    /// Why, for the machine's console.
    pub message: String,
}
