//! The replicated records. These are what the Raft state machine stores and snapshots; the gRPC types in
//! `ingot-proto` are converted to and from them at the API edge.

use crate::Mac;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A region's Raft node id, assigned by the cluster when it joins (the first region is 1).
pub type NodeId = u64;

/// The MAAS lifecycle statuses. Machines enlisted by API start in [`MachineStatus::New`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs)] // the names are the MAAS statuses; see the lifecycle table
pub enum MachineStatus {
    New,
    Commissioning,
    FailedCommissioning,
    Testing,
    FailedTesting,
    Ready,
    Allocated,
    Deploying,
    Deployed,
    FailedDeployment,
    Releasing,
    FailedReleasing,
    DiskErasing,
    FailedDiskErasing,
    EnteringRescueMode,
    FailedEnteringRescueMode,
    RescueMode,
    ExitingRescueMode,
    FailedExitingRescueMode,
    Broken,
    Missing,
    Retired,
}

impl MachineStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [MachineStatus; 22] = [
        Self::New,
        Self::Commissioning,
        Self::FailedCommissioning,
        Self::Testing,
        Self::FailedTesting,
        Self::Ready,
        Self::Allocated,
        Self::Deploying,
        Self::Deployed,
        Self::FailedDeployment,
        Self::Releasing,
        Self::FailedReleasing,
        Self::DiskErasing,
        Self::FailedDiskErasing,
        Self::EnteringRescueMode,
        Self::FailedEnteringRescueMode,
        Self::RescueMode,
        Self::ExitingRescueMode,
        Self::FailedExitingRescueMode,
        Self::Broken,
        Self::Missing,
        Self::Retired,
    ];

    /// The operator-facing name, as MAAS spells it in its CLI (kebab case).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Commissioning => "commissioning",
            Self::FailedCommissioning => "failed-commissioning",
            Self::Testing => "testing",
            Self::FailedTesting => "failed-testing",
            Self::Ready => "ready",
            Self::Allocated => "allocated",
            Self::Deploying => "deploying",
            Self::Deployed => "deployed",
            Self::FailedDeployment => "failed-deployment",
            Self::Releasing => "releasing",
            Self::FailedReleasing => "failed-releasing",
            Self::DiskErasing => "disk-erasing",
            Self::FailedDiskErasing => "failed-disk-erasing",
            Self::EnteringRescueMode => "entering-rescue-mode",
            Self::FailedEnteringRescueMode => "failed-entering-rescue-mode",
            Self::RescueMode => "rescue-mode",
            Self::ExitingRescueMode => "exiting-rescue-mode",
            Self::FailedExitingRescueMode => "failed-exiting-rescue-mode",
            Self::Broken => "broken",
            Self::Missing => "missing",
            Self::Retired => "retired",
        }
    }

    /// Parses [`MachineStatus::as_str`] names (also accepting `_` for `-` and any case).
    pub fn parse(s: &str) -> Option<Self> {
        let norm = s.trim().to_ascii_lowercase().replace('_', "-");
        Self::ALL.into_iter().find(|st| st.as_str() == norm)
    }
}

/// How a machine's BMC is reached: a driver name and its parameters.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PowerParams {
    /// `ipmi`, `redfish`, `webhook`, `manual`, `sim`, or empty when not configured yet.
    pub driver: String,
    /// Driver parameters (address, username, password, ...). Secret ones are redacted by the API.
    pub params: BTreeMap<String, String>,
}

impl PowerParams {
    /// True for parameter names whose values are secrets and must never be shown or logged by default.
    pub fn is_secret_key(key: &str) -> bool {
        let k = key.to_ascii_lowercase();
        k.contains("password") || k.contains("secret") || k.contains("key") || k.contains("token")
    }

    /// A copy with every secret value replaced by `********`.
    pub fn redacted(&self) -> PowerParams {
        let params = self
            .params
            .iter()
            .map(|(k, v)| {
                let v = if Self::is_secret_key(k) {
                    "********".to_string()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect();
        PowerParams {
            driver: self.driver.clone(),
            params,
        }
    }
}

/// A physical server known to Ingot.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    /// Stable id chosen at enlistment: 6 characters from `[a-z0-9]`.
    pub system_id: String,
    /// Unique DNS label.
    pub hostname: String,
    /// Architecture such as `amd64/generic`.
    pub arch: String,
    /// Availability zone name (always an existing zone).
    pub zone: String,
    /// Lifecycle status.
    pub status: MachineStatus,
    /// Boot MACs, each unique in the cluster; the first is the PXE interface.
    pub macs: Vec<Mac>,
    /// BMC access.
    pub power: PowerParams,
    /// Free text for operators.
    pub description: String,
    /// When the machine was enlisted (ms since epoch, chosen by the proposing region).
    pub created_ms: u64,
    /// When the machine last changed.
    pub updated_ms: u64,
    /// Raft log index of the last change: the compare-and-set token for updates.
    pub revision: u64,
    /// Resource pool name (always an existing pool).
    #[serde(default = "default_pool")]
    pub pool: String,
    /// Tags: manual ones and those whose definition matches this machine's inventory.
    #[serde(default)]
    pub tags: std::collections::BTreeSet<String>,
    /// Who holds the machine (a user name), from allocation until release completes.
    #[serde(default)]
    pub owner: Option<String>,
    /// The allocation that gave the machine to its owner (consumer string, request id).
    #[serde(default)]
    pub allocation: Option<Allocation>,
    /// A locked machine refuses every change except unlock (only a Deployed machine can be locked).
    #[serde(default)]
    pub locked: bool,
    /// The hardware the in-band agent reported at commissioning; `None` until then.
    #[serde(default)]
    pub inventory: Option<Inventory>,
    /// The status before the current in-progress one: where `abort` and successful testing return to.
    #[serde(default)]
    pub previous_status: Option<MachineStatus>,
    /// Why the machine is in its status (failure reason, broken reason, abort comment).
    #[serde(default)]
    pub status_message: String,
    /// When the current in-progress status times out into its failed status (ms since epoch).
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// The current network boot: who may report results for it. `None` when the machine is not booting
    /// for Ingot (Ready, Allocated, Deployed...).
    #[serde(default)]
    pub boot: Option<BootSession>,
    /// What the owner asked to deploy.
    #[serde(default)]
    pub deploy: Option<DeploySpec>,
    /// Erase mode of the release in progress.
    #[serde(default)]
    pub erase: EraseMode,
    /// Last deploy/commissioning progress message reported by the agent, with a percentage.
    #[serde(default)]
    pub progress: Option<Progress>,
    /// The rack controller that owns this machine's BMC: the only one that runs its power commands.
    #[serde(default)]
    pub rack: Option<String>,
    /// Last power state a rack reported (`on`, `off`, `unknown`; empty before any).
    #[serde(default)]
    pub power_state: String,
    /// Why the BMC cannot be read, as `<class>: <message>` (class `unreachable`, `auth`, `unsupported`,
    /// `bmc`), set by the rack's power monitor after repeated failed queries and cleared by the next
    /// successful one; empty when the BMC answers. Never changes the lifecycle status.
    #[serde(default)]
    pub power_error: String,
    /// When a rack last read the power state (ms since the epoch; 0: never).
    #[serde(default)]
    pub power_checked_ms: u64,
}

fn default_pool() -> String {
    DEFAULT_POOL.to_string()
}

impl Machine {
    /// `ingot:///<zone>/<system_id>`: the provider id Cluster-API-style consumers record on their objects.
    pub fn provider_id(&self) -> String {
        format!("ingot:///{}/{}", self.zone, self.system_id)
    }

    /// CPU count from the inventory (0 before commissioning).
    pub fn cpu_count(&self) -> u32 {
        self.inventory.as_ref().map(|i| i.cpu_count).unwrap_or(0)
    }

    /// Memory from the inventory (0 before commissioning).
    pub fn memory_mib(&self) -> u64 {
        self.inventory.as_ref().map(|i| i.memory_mib).unwrap_or(0)
    }

    /// Sum of disk sizes from the inventory, saturating: the sizes are the agent's word, and an absurd
    /// report must not overflow (a panic inside apply would stop every replica).
    pub fn storage_gib(&self) -> u64 {
        self.inventory
            .as_ref()
            .map(|i| {
                i.disks
                    .iter()
                    .fold(0u64, |t, d| t.saturating_add(d.size_gib))
            })
            .unwrap_or(0)
    }
}

/// A claim on a machine by a consumer, recorded at allocation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// The client's idempotency key: repeating an allocation with it returns the same machine(s).
    pub request_id: String,
    /// Free-form identity of the consumer object (e.g. a Cluster API Machine name); unique among owned
    /// machines when set, so a consumer can always find its machine again.
    pub consumer: String,
    /// When the machine was allocated (ms since epoch).
    pub allocated_ms: u64,
}

/// One network boot of a machine for a purpose, with the token only that boot knows.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BootSession {
    /// Random id of this boot.
    pub boot_id: String,
    /// SHA-256 hex of the per-boot token (like API tokens, only the hash is replicated). The token is made
    /// and shown once when the boot's credentials are issued (`GetBootCredentials`, handed to the machine
    /// through its boot configuration); reports with any other token are refused. Empty until issued.
    #[serde(default)]
    pub token_hash: String,
    /// A plaintext token written by a version that stored it (snapshots, log entries): hashed into
    /// `token_hash` when the state is loaded, never written again.
    #[serde(default, rename = "token", skip_serializing)]
    pub legacy_token: String,
    /// SHA-256 hex of the claim of the agent that looked this boot up first (`AgentLookup.claim`): the
    /// same agent asking again gets a fresh token, any other claimant is refused. Empty until claimed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub claim_hash: String,
    /// What the boot is for: `commissioning`, `testing`, `deploying`, `erasing`, `rescue`.
    pub purpose: String,
    /// When it started.
    pub started_ms: u64,
}

/// What to install at deployment.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct DeploySpec {
    /// Operating system, e.g. `ubuntu`.
    pub osystem: String,
    /// Release, e.g. `noble`.
    pub distro_series: String,
    /// cloud-init user data (opaque to Ingot).
    pub user_data: String,
    /// SSH public keys for the NoCloud seed (and the rescue ramdisk): how the owner logs in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_keys: Vec<String>,
    /// The disk to write the image to (kernel name such as `vda`, or a serial); empty: the smallest disk
    /// that fits, so a machine with a small boot disk and large data disks deploys to the boot disk.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub disk: String,
}

/// How disks are erased when a machine is released.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EraseMode {
    /// No erase: release goes straight to Ready once powered off.
    #[default]
    None,
    /// Wipe partition tables and the start and end of each disk.
    Quick,
    /// Full: overwrite every byte of every disk.
    Secure,
    /// Full, by discard (TRIM/UNMAP) where the device supports it, else by overwriting: faster on flash,
    /// chosen by the operator, who accepts that a device whose discard does not zero may keep data readable.
    Discard,
}

/// The last progress report of a running boot.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Human-readable step, e.g. `curtin: partitioning`.
    pub message: String,
    /// 0..=100.
    pub percent: u32,
    /// When it was reported.
    pub ts_ms: u64,
}

/// Hardware reported by the in-band agent during commissioning. Tag definitions and allocation
/// constraints are evaluated against it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Logical CPUs.
    pub cpu_count: u32,
    /// CPU model string, e.g. `Intel(R) Xeon(R) Gold 6338`.
    #[serde(default)]
    pub cpu_model: String,
    /// Installed memory.
    pub memory_mib: u64,
    /// Block devices.
    #[serde(default)]
    pub disks: Vec<Disk>,
    /// Network interfaces.
    #[serde(default)]
    pub nics: Vec<Nic>,
    /// Firmware.
    #[serde(default)]
    pub firmware: Firmware,
    /// DMI strings (system_vendor, product_name, serial_number, ...).
    #[serde(default)]
    pub dmi: BTreeMap<String, String>,
}

/// A block device.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name, e.g. `sda`, `nvme0n1`.
    pub name: String,
    /// Size in GiB.
    pub size_gib: u64,
    /// Spinning disk (false for SSD/NVMe).
    #[serde(default)]
    pub rotational: bool,
    /// Model string.
    #[serde(default)]
    pub model: String,
    /// Serial number.
    #[serde(default)]
    pub serial: String,
    /// Extra labels usable in storage constraints (`ssd`/`rotary` are implied by `rotational`).
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A network interface.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Nic {
    /// Kernel name, e.g. `eno1`.
    pub name: String,
    /// Hardware address.
    pub mac: String,
    /// Link speed in Mbit/s (0 if unknown or down).
    #[serde(default)]
    pub speed_mbps: u64,
    /// Carrier detected.
    #[serde(default)]
    pub link: bool,
}

/// Firmware facts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Firmware {
    /// `uefi` or `bios`.
    #[serde(default)]
    pub boot_mode: String,
    /// Firmware vendor.
    #[serde(default)]
    pub vendor: String,
    /// Firmware version.
    #[serde(default)]
    pub version: String,
}

/// A resource pool: an administrative grouping of machines (who may use them), orthogonal to zones.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    /// Unique DNS label.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Creation time, ms since epoch.
    pub created_ms: u64,
}

/// A tag. With an empty definition it is manual (applied by operators); otherwise it applies to exactly
/// the machines whose inventory satisfies the definition (see [`crate::tagexpr`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Tag {
    /// Unique name (letters, digits, `-`, `_`).
    pub name: String,
    /// Expression over inventory; empty for manual tags.
    pub definition: String,
    /// Free text.
    pub comment: String,
    /// Creation time, ms since epoch.
    pub created_ms: u64,
}

/// A user of the API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// Unique name.
    pub name: String,
    /// `admin` or `user`.
    pub role: Role,
    /// Creation time, ms since epoch.
    pub created_ms: u64,
}

/// What a user may do. Admins manage the cluster (enlist, delete, zones, pools, tags, users, racks);
/// users see the pool and their own machines, allocate, deploy and release what they own.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Allocate, deploy and release own machines; read the pool.
    User,
}

impl Role {
    /// `admin` or `user`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }

    /// Parses `admin` / `user`.
    pub fn parse(s: &str) -> Option<Role> {
        match s.trim().to_ascii_lowercase().as_str() {
            "admin" => Some(Role::Admin),
            "user" => Some(Role::User),
            _ => None,
        }
    }
}

/// How important an event is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum EventLevel {
    /// Routine (transitions, admin actions).
    Info,
    /// Needs attention soon (timeouts, aborted work).
    Warning,
    /// Something failed.
    Error,
}

impl EventLevel {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventLevel::Info => "info",
            EventLevel::Warning => "warning",
            EventLevel::Error => "error",
        }
    }

    /// Parses a lowercase name.
    pub fn parse(s: &str) -> Option<EventLevel> {
        match s.trim().to_ascii_lowercase().as_str() {
            "info" => Some(EventLevel::Info),
            "warning" | "warn" => Some(EventLevel::Warning),
            "error" => Some(EventLevel::Error),
            _ => None,
        }
    }
}

/// A record of something that happened: every transition and every admin action writes one, in the
/// replicated log, so every region answers the same history.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Revision of the command that wrote it (unique, increasing); events of one command get consecutive
    /// sequence numbers in `seq`.
    pub revision: u64,
    /// Position among the events of the same command.
    pub seq: u32,
    /// When (ms since epoch, the proposer's clock).
    pub ts_ms: u64,
    /// Who caused it: a user name, `region` for deadlines, `agent` for in-band reports.
    pub actor: String,
    /// What happened, e.g. `commission`, `allocate`, `deadline`, `zone.create`.
    pub kind: String,
    /// Importance.
    pub level: EventLevel,
    /// The machine concerned, if any.
    pub system_id: String,
    /// Its hostname at the time.
    pub hostname: String,
    /// Its zone at the time.
    pub zone: String,
    /// Its owner at the time (after the change).
    pub owner: String,
    /// Status before, when the status changed.
    pub from: Option<MachineStatus>,
    /// Status after, when the status changed.
    pub to: Option<MachineStatus>,
    /// Why, or details.
    pub message: String,
}

/// An availability zone: a failure domain machines are placed in.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Zone {
    /// Unique DNS label.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Creation time, ms since epoch.
    pub created_ms: u64,
}

/// A region controller that is, or was admitted to become, a member of the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    /// Raft node id.
    pub node_id: NodeId,
    /// Operator-chosen unique name.
    pub name: String,
    /// host:port of its mutual-TLS Raft listener.
    pub raft_addr: String,
    /// host:port of its client API.
    pub api_addr: String,
    /// When it was admitted, ms since epoch.
    pub joined_ms: u64,
}

/// The name of the zone that always exists and that machines go to when none is given.
pub const DEFAULT_ZONE: &str = "default";
/// The name of the resource pool that always exists and that machines go to when none is given.
pub const DEFAULT_POOL: &str = "default";
/// The architecture machines get when none is given.
pub const DEFAULT_ARCH: &str = "amd64/generic";

/// A rack controller known to the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Rack {
    /// Unique DNS label; its certificate's CN is `rack-<name>`.
    pub name: String,
    /// The zone it serves: machines of this zone get their BMCs assigned to it first.
    pub zone: String,
    /// When it registered.
    pub registered_ms: u64,
    /// A revoked rack's sessions are refused.
    pub revoked: bool,
    /// Its current session, as last recorded.
    pub session: Option<RackSession>,
}

/// A rack's session with a region, recorded in the replicated log so every region (and the leader's
/// failover logic) knows which racks are alive.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RackSession {
    /// Random id per connection; later records for an older session are ignored.
    pub session_id: String,
    /// Region serving it.
    pub region_id: NodeId,
    /// That region's name.
    pub region_name: String,
    /// Rack software version.
    pub version: String,
    /// Services it runs (`power`, ...).
    pub services: Vec<String>,
    /// Power drivers it can run.
    pub drivers: Vec<String>,
    /// When the session started.
    pub connected_ms: u64,
    /// Last heartbeat recorded (regions record one every second, not every beat); when the session
    /// ended, the time it ended.
    pub last_heartbeat_ms: u64,
    /// When the session ended (stream closed or broken); `None` while it is open. The rack keeps its BMCs
    /// for the grace time after this.
    #[serde(default)]
    pub ended_ms: Option<u64>,
}

/// Where a power command stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PowerCommandState {
    /// Waiting for (or running on) a rack.
    Pending,
    /// A rack reported success.
    Done,
    /// A rack reported a failure.
    Failed,
}

impl PowerCommandState {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            PowerCommandState::Pending => "pending",
            PowerCommandState::Done => "done",
            PowerCommandState::Failed => "failed",
        }
    }
}

/// A power command in the per-rack queue: replicated before any rack sees it, delivered at least once,
/// run once (racks remember the ids they ran), its result recorded once.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PowerCommand {
    /// Cluster-unique, increasing.
    pub id: u64,
    /// The machine.
    pub system_id: String,
    /// What the BMC is asked to do (serde: its wire spelling, `on`, `boot-pxe`, ...).
    pub action: crate::power::PowerAction,
    /// Who asked.
    pub actor: String,
    /// Where it stands.
    pub state: PowerCommandState,
    /// The rack the command belongs to. While it is pending: the rack it is routed to (fenced to), set
    /// when it is queued (its BMC's owner) and moved only when its BMC moved to another rack and this
    /// rack's lease ran out; only this rack is sent it and only its result counts. `None`: routed to no
    /// rack yet (no rack owned the BMC when it was queued): it goes to the BMC's owner. Once finished: the
    /// rack that reported the result.
    pub rack: Option<String>,
    /// Result message.
    pub message: String,
    /// Failure class: `unreachable`, `auth`, `unsupported`, `bmc`.
    pub error_kind: String,
    /// Power state after the command.
    pub power_state: String,
    /// When it was queued.
    pub created_ms: u64,
    /// When its result was recorded.
    pub done_ms: Option<u64>,
    /// The lifecycle step this command serves (the in-progress status that queued it), or `None` for a
    /// command an operator asked for. A failed step fails the status (with the driver's reason); a later
    /// status change supersedes the step's pending commands.
    #[serde(default)]
    pub step: Option<MachineStatus>,
    /// Success of this command completes its step (e.g. `off` completes Releasing).
    #[serde(default)]
    pub completes: bool,
    /// The rack this command was last taken from (its lease ran out while the command was pending there,
    /// and its BMC had moved): a late result from it is refused, with an event. Not written while `None`,
    /// so older records keep their bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerouted_from: Option<String>,
}
