//! The operations' own structs: one per [`super::Op`] variant, named after it, so the apply step has one
//! handler per operation taking exactly its operation (etcd's applier: one method per request).
//!
//! Serde form: `Op::CreateZone(CreateZone { .. })` is externally tagged as `{"CreateZone":{..}}`, the same
//! bytes the struct variants it replaces wrote, so old logs and snapshots stay readable. Fields are only
//! ever added, with `#[serde(default)]`.

use super::{ActionArgs, BootTokens, PowerObservation};
use ingot_common::constraints::Constraints;
use ingot_common::lifecycle::{self, Action};
use ingot_common::model::{Inventory, RackSession, Role};
use ingot_common::net::{Cidr, ClientArch, Lease, Subnet};
use ingot_common::pki::ClusterCa;
use ingot_common::power::PowerAction;
use ingot_common::{Mac, MachineStatus, PowerParams, RegionInfo};
use serde::{Deserialize, Serialize};

/// First entry of a new cluster: identity, CA, the admin token's hash, the first region.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Bootstrap {
    /// Random cluster id.
    pub cluster_id: String,
    /// The cluster's certificate authority.
    pub ca: ClusterCa,
    /// Hash of the first admin token.
    pub admin_token_hash: String,
    /// The region that bootstraps.
    pub first_region: RegionInfo,
}

/// Enlists a machine (status New); the proposer picked `system_id`.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[allow(missing_docs)] // fields mirror MachineService.Create (proto/ingot/v1)
pub struct CreateMachine {
    pub system_id: String,
    pub hostname: String,
    pub arch: String,
    pub zone: String,
    pub macs: Vec<Mac>,
    pub power: PowerParams,
    pub description: String,
    /// `None`: the default pool.
    #[serde(default)]
    pub pool: Option<String>,
}

/// Changes a machine's descriptive fields (`None`: unchanged).
#[derive(Serialize, Deserialize, Clone, Debug)]
#[allow(missing_docs)] // fields mirror MachineService.Update (proto/ingot/v1)
pub struct UpdateMachine {
    pub system_id: String,
    pub hostname: Option<String>,
    pub arch: Option<String>,
    pub zone: Option<String>,
    pub description: Option<String>,
    pub power: Option<PowerParams>,
    pub macs: Option<Vec<Mac>>,
    /// 0: unconditional.
    pub expected_revision: u64,
}

/// Deletes a machine (the `delete` lifecycle action).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct DeleteMachine {
    /// The machine.
    pub system_id: String,
    /// 0: unconditional.
    pub expected_revision: u64,
}

/// Creates a zone.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct CreateZone {
    /// DNS label, unique.
    pub name: String,
    /// Free text.
    pub description: String,
}

/// Changes a zone's description or renames it (moving its machines).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct UpdateZone {
    /// The zone.
    pub name: String,
    /// New description, if any.
    pub description: Option<String>,
    /// New name, if any.
    pub new_name: Option<String>,
}

/// Deletes an empty zone other than the default.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct DeleteZone {
    /// The zone.
    pub name: String,
}

/// Records a join token (by hash) valid until `expires_ms`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct CreateJoinToken {
    /// The token's hash.
    pub token_hash: String,
    /// Expiry (ms since epoch).
    pub expires_ms: u64,
}

/// Consumes a join token and admits a region under the next node id.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct AdmitRegion {
    /// Hash of the join token presented.
    pub token_hash: String,
    /// The region's name, unique.
    pub name: String,
    /// host:port of its Raft listener.
    pub raft_addr: String,
    /// host:port of its client API.
    pub api_addr: String,
}

/// Drops a removed region's record (after it left the Raft membership).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ForgetRegion {
    /// The region's Raft node id.
    pub node_id: u64,
}

/// A lifecycle action on one machine (see `ingot_common::lifecycle::TABLE`).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct MachineAction {
    /// The machine.
    pub system_id: String,
    /// What to do.
    pub action: Action,
    /// 0: unconditional.
    pub expected_revision: u64,
    /// What the action needs.
    pub args: ActionArgs,
}

/// Claims `candidates` (chosen by the proposing region from its view of the pool) for the actor,
/// after re-checking each against the constraints: the compare-and-set that makes two allocations
/// never get the same machine. Fails with [`super::CONFLICT_FIELD`] when a candidate was taken meanwhile.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Allocate {
    /// The client's request id: a repeated one returns the first answer.
    pub request_id: String,
    /// Names the consumer (e.g. a cluster node) the machines serve; unique among held machines.
    pub consumer: String,
    /// What the machines must satisfy.
    pub constraints: Constraints,
    /// The claimed machines must span at least this many zones.
    pub min_zones: u32,
    /// Machine ids, in order of preference.
    pub candidates: Vec<String>,
    /// How many of `candidates` to claim (the rest are fallbacks for a single allocation).
    pub count: u32,
}

/// The end of a machine's in-progress work: from its current boot (`boot_id` set), from the region's
/// power path, or from the deadline sweeper. Ignored (error) if the machine moved on meanwhile.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Outcome {
    /// The machine.
    pub system_id: String,
    /// The status the reporter saw; the outcome applies only if the machine is still in it.
    pub status: MachineStatus,
    /// The reporting boot; `None` for region-side outcomes.
    pub boot_id: Option<String>,
    /// Done, failed or timed out.
    pub outcome: lifecycle::Outcome,
    /// Why (recorded as the status message of a failure).
    pub reason: String,
    /// Credentials for the boot the outcome may start (Releasing -> DiskErasing).
    pub next_boot: BootTokens,
}

/// Inventory uploaded by the current commissioning boot.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ReportInventory {
    /// The machine.
    pub system_id: String,
    /// The reporting boot.
    pub boot_id: String,
    /// What the boot found.
    pub inventory: Inventory,
}

/// A progress step of the current boot.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ReportProgress {
    /// The machine.
    pub system_id: String,
    /// The reporting boot.
    pub boot_id: String,
    /// Human-readable step.
    pub message: String,
    /// 0–100.
    pub percent: u32,
}

/// Creates a pool.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct CreatePool {
    /// DNS label, unique.
    pub name: String,
    /// Free text.
    pub description: String,
}

/// Changes a pool's description.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct UpdatePool {
    /// The pool.
    pub name: String,
    /// New description, if any.
    pub description: Option<String>,
}

/// Deletes an empty pool other than the default.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct DeletePool {
    /// The pool.
    pub name: String,
}

/// Creates a tag; with a definition it follows the machines' inventory.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct CreateTag {
    /// Unique name.
    pub name: String,
    /// Tag expression (empty: a manual tag).
    pub definition: String,
    /// Free text.
    pub comment: String,
}

/// Changes a tag's definition or comment (`None`: unchanged).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct UpdateTag {
    /// The tag.
    pub name: String,
    /// New definition, if any.
    pub definition: Option<String>,
    /// New comment, if any.
    pub comment: Option<String>,
}

/// Deletes a tag and removes it from every machine.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct DeleteTag {
    /// The tag.
    pub name: String,
}

/// Creates a user.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct CreateUser {
    /// Unique name.
    pub name: String,
    /// Admin or user.
    pub role: Role,
}

/// Changes a user's role.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct UpdateUser {
    /// The user.
    pub name: String,
    /// The new role.
    pub role: Role,
}

/// Deletes a user and revokes their tokens.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct DeleteUser {
    /// The user.
    pub name: String,
}

/// Records an API token (by hash) for `user`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct CreateToken {
    /// Public token id (shown in listings, used to revoke).
    pub id: String,
    /// The secret's hash.
    pub token_hash: String,
    /// The user it authenticates.
    pub user: String,
    /// Free text.
    pub description: String,
    /// Expiry (ms since epoch); `None`: never.
    pub expires_ms: Option<u64>,
}

/// Revokes an API token by id.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct RevokeToken {
    /// The token id.
    pub id: String,
}

/// Deadlines per in-progress status, in seconds; 0 restores the default.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct UpdateSettings {
    /// (status, seconds) pairs.
    pub deadlines: Vec<(MachineStatus, u64)>,
}

/// Records a rack enrollment token (by hash) valid until `expires_ms`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct CreateRackToken {
    /// The token's hash.
    pub token_hash: String,
    /// Expiry (ms since epoch).
    pub expires_ms: u64,
}

/// Consumes an enrollment token and records a rack (its certificate is signed outside, by the
/// region that served the call, after this succeeded).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct RegisterRack {
    /// Hash of the enrollment token presented.
    pub token_hash: String,
    /// The rack's name, unique.
    pub name: String,
    /// The zone it serves.
    pub zone: String,
}

/// Cuts a rack off: its sessions are refused and its BMCs go to other racks.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct RevokeRack {
    /// The rack.
    pub name: String,
}

/// A rack opened a session with a region.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct RackConnected {
    /// The rack.
    pub name: String,
    /// The new session.
    pub session: RackSession,
}

/// The serving region saw the session's heartbeats (recorded every few seconds).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct RackHeartbeat {
    /// The rack.
    pub name: String,
    /// The session that beat.
    pub session_id: String,
}

/// The session ended (the rack left or its stream broke).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct RackDisconnected {
    /// The rack.
    pub name: String,
    /// The session that ended.
    pub session_id: String,
    /// When the serving region last heard from the rack: the grace time runs from here.
    #[serde(default)]
    pub last_seen_ms: u64,
}

/// Queues a power action for the machine's rack.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct QueuePower {
    /// The machine.
    pub system_id: String,
    /// What the BMC is asked to do.
    pub action: PowerAction,
}

/// A rack's result for a power command; the first result wins.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct PowerResult {
    /// The power command.
    pub id: u64,
    /// The rack that ran it.
    pub rack: String,
    /// Whether the driver succeeded.
    pub success: bool,
    /// Failure class (`unreachable`, `auth`, `unsupported`, `bmc`); empty on success.
    pub error_kind: String,
    /// The driver's message.
    pub message: String,
    /// Power state after the command.
    pub power_state: String,
    /// Credentials for the boot a completed lifecycle step may start (Releasing -> Disk erasing).
    #[serde(default)]
    pub next_boot: BootTokens,
}

/// Power states a rack's monitor read; only the owning rack's observations count.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct PowerObserved {
    /// The rack that read them.
    pub rack: String,
    /// One reading per BMC.
    pub items: Vec<PowerObservation>,
}

/// Moves BMCs between racks (`None`: no live rack can take it now).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct AssignBmcs {
    /// (machine id, new owning rack) pairs.
    pub moves: Vec<(String, Option<String>)>,
    /// The lease (ms: the racks' heartbeat grace) the proposer judged racks by. A pending power command
    /// leaves its rack for the BMC's new one only when that rack is not live at the command's time by
    /// this lease; otherwise it stays fenced to it. 0 (entries of older versions): the bare heartbeat
    /// recording interval. Not written while 0, so older entries keep their bytes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lease_ms: u64,
}

/// Whether `v` is 0 (serde: a field left out while it has its default).
fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Issues the per-boot token of a machine's current boot (admin; `GetBootCredentials`): only the hash is
/// logged, the proposer returns the token once. A new token replaces the boot's previous one.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct IssueBootToken {
    /// The machine.
    pub system_id: String,
    /// The boot the token is for: refused if the machine has moved on to another boot.
    pub boot_id: String,
    /// SHA-256 hex of the new token.
    pub token_hash: String,
}

/// An in-band agent's lookup, relayed by the rack it booted from: hands the machine's current boot to
/// the agent that claims it first. The proposer made the token and logs only its hash; apply checks the
/// rack (registered, unrevoked, the one that leased `mac` an address), the boot (current, booting) and the
/// claim (none yet, or the same claim again: a retried lookup gets a fresh token). A different claim is
/// refused with a warning event, not an error, so the event is kept.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ClaimBoot {
    /// The machine.
    pub system_id: String,
    /// The boot claimed: refused if the machine has moved on to another.
    pub boot_id: String,
    /// The rack that relayed the lookup.
    pub rack: String,
    /// The MAC of the machine that rack leased an address to.
    pub mac: Mac,
    /// SHA-256 hex of the agent's claim value.
    pub claim_hash: String,
    /// SHA-256 hex of the new token.
    pub token_hash: String,
}

/// Creates a boot network; apply checks it against every other subnet (no overlap) and the racks it names.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct CreateSubnet {
    /// The subnet, validated at the API edge (`ingot_common::validate`-style field checks).
    pub subnet: Subnet,
}

/// Replaces a subnet's settings (its CIDR stays: it is the identity).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct UpdateSubnet {
    /// The subnet's new settings; `subnet.cidr` names the subnet changed.
    pub subnet: Subnet,
}

/// Deletes a subnet and its leases.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct DeleteSubnet {
    /// The subnet.
    pub cidr: Cidr,
}

/// Most leases in one [`CommitLeases`]: a rack batches what it handed out in a few milliseconds, and a
/// batch of this many stays far below the proposer's per-command cap (a lease is ~250 bytes of JSON).
pub const MAX_LEASES_PER_COMMIT: usize = 1024;
/// Longest hostname a lease records, in bytes (option 12 allows 255; the rack cuts longer ones).
pub const MAX_LEASE_HOSTNAME: usize = 64;
/// Most MACs in one [`EnlistMachines`].
pub const MAX_ENLIST_PER_OP: usize = 256;

/// Records a batch of DHCP leases a rack handed out, released or saw declined. Each is checked in apply
/// (the rack serves the subnet, the address is inside it and not held by another MAC); refused ones are
/// named in the reply, the rest recorded.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct CommitLeases {
    /// The rack that sends them (authenticated by its session's certificate).
    pub rack: String,
    /// The rack's batch number (echoed back; not used by apply).
    pub batch: u64,
    /// The leases, bounded in count by the session.
    pub leases: Vec<Lease>,
}

/// Enlists unknown MACs that PXE-booted on a rack's subnet as New machines (once per MAC: a MAC already
/// known is skipped).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct EnlistMachines {
    /// The rack that saw them; the machines go to its zone.
    pub rack: String,
    /// One per MAC; system ids chosen by the proposer.
    pub machines: Vec<EnlistMac>,
}

/// One MAC to enlist.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct EnlistMac {
    /// The new machine's id (picked by the proposing region).
    pub system_id: String,
    /// The MAC that PXE-booted.
    pub mac: Mac,
    /// The firmware it booted with (DHCP option 93).
    pub arch: ClientArch,
    /// The subnet it booted on.
    pub subnet: Cidr,
}

/// Most blobs one [`RecordBlobs`] names (an image has at most 16 files; a region catching up after a
/// restart reports in batches of this many).
pub const MAX_BLOBS_PER_RECORD: usize = 256;
/// Most boot events in one [`RecordBootEvents`] (the rack batches at most this many per message).
pub const MAX_BOOT_EVENTS_PER_OP: usize = 256;
/// Longest boot event detail, in bytes (the rack cuts longer ones).
pub const MAX_BOOT_EVENT_DETAIL: usize = 200;

/// Records an uploaded image: its metadata, and that the uploading region holds (and verified) every
/// blob of it. Other regions then copy the blobs and report them with [`RecordBlobs`].
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct PutImage {
    /// The image (validated by the proposer and again in apply; the name must be free).
    pub image: ingot_common::image::Image,
    /// The region that received the upload and holds every blob.
    pub holder: ingot_common::NodeId,
}

/// Deletes an image (refused while a Deploying machine uses it). Blobs no image references any more
/// are then removed by every region.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct DeleteImage {
    /// The image.
    pub name: String,
}

/// A region reports which blobs it now holds (copied and verified) and which it lost (its copy was
/// missing or corrupt): the image's `held_by`, and where other regions and racks fetch from.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct RecordBlobs {
    /// The reporting region (authenticated by the cluster listener's certificate).
    pub region: ingot_common::NodeId,
    /// Blobs it holds, verified.
    pub held: Vec<ingot_common::image::BlobId>,
    /// Blobs it no longer holds.
    #[serde(default)]
    pub lost: Vec<ingot_common::image::BlobId>,
}

/// Steps of network boots a rack saw, recorded as machine events (or events of an unknown MAC).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct RecordBootEvents {
    /// The rack that saw them.
    pub rack: String,
    /// The steps, oldest first; bounded by [`MAX_BOOT_EVENTS_PER_OP`].
    pub events: Vec<BootEventRecord>,
}

/// One boot step of a MAC.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct BootEventRecord {
    /// The booting MAC (the event goes to its machine when one has it).
    pub mac: Mac,
    /// What happened.
    pub step: ingot_common::image::BootStep,
    /// Details, at most [`MAX_BOOT_EVENT_DETAIL`] bytes.
    pub detail: String,
    /// When the rack saw it.
    pub at_ms: u64,
}
