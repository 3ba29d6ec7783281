//! The command envelope: the only payload of a Raft log entry (etcd's pattern). Everything that changes
//! replicated state is one [`Command`], applied by [`crate::apply::apply`]. Time, ids and secrets' hashes are
//! chosen by the proposing region and carried inside the command, so applying it is deterministic.

use ingot_common::constraints::Constraints;
use ingot_common::lifecycle::{Action, Outcome};
use ingot_common::model::{
    DeploySpec, EraseMode, Inventory, Pool, PowerCommand, Rack, RackSession, Role, Tag, User,
};
use ingot_common::pki::ClusterCa;
use ingot_common::{DomainError, Mac, Machine, MachineStatus, PowerParams, RegionInfo, Zone};
use serde::{Deserialize, Serialize};

/// One replicated write.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Command {
    /// Unique per client operation (random, chosen at the API edge). A command proposed twice — a retry
    /// after a leader died mid-write — is applied once: the second time the first answer is returned.
    pub request_id: String,
    /// Wall-clock time at the proposer (ms since epoch); the apply step's only notion of "now".
    pub ts_ms: u64,
    /// Who asked (token name or region identity), for the record.
    pub actor: String,
    /// What to do.
    pub op: Op,
}

impl Command {
    /// A command from `actor` with a fresh request id and the proposer's current time: how every
    /// proposer (API calls, agent reports, rack sessions, the leader's worker) makes one.
    pub fn new(actor: impl Into<String>, op: Op) -> Command {
        Command {
            request_id: ingot_common::secret::generate(""),
            ts_ms: ingot_common::now_ms(),
            actor: actor.into(),
            op,
        }
    }
}

/// The operations. Variants are only ever added (never renumbered or removed): old logs must stay readable.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[allow(missing_docs)] // fields mirror the API requests documented in proto/ingot/v1
pub enum Op {
    /// First entry of a new cluster: identity, CA, the admin token's hash, the first region.
    Bootstrap {
        cluster_id: String,
        ca: ClusterCa,
        admin_token_hash: String,
        first_region: RegionInfo,
    },
    CreateMachine {
        system_id: String,
        hostname: String,
        arch: String,
        zone: String,
        macs: Vec<Mac>,
        power: PowerParams,
        description: String,
        #[serde(default)]
        pool: Option<String>,
    },
    UpdateMachine {
        system_id: String,
        hostname: Option<String>,
        arch: Option<String>,
        zone: Option<String>,
        description: Option<String>,
        power: Option<PowerParams>,
        macs: Option<Vec<Mac>>,
        /// 0: unconditional.
        expected_revision: u64,
    },
    DeleteMachine {
        system_id: String,
        expected_revision: u64,
    },
    CreateZone {
        name: String,
        description: String,
    },
    UpdateZone {
        name: String,
        description: Option<String>,
        new_name: Option<String>,
    },
    DeleteZone {
        name: String,
    },
    /// Records a join token (by hash) valid until `expires_ms`.
    CreateJoinToken {
        token_hash: String,
        expires_ms: u64,
    },
    /// Consumes a join token and admits a region under the next node id.
    AdmitRegion {
        token_hash: String,
        name: String,
        raft_addr: String,
        api_addr: String,
    },
    /// Drops a removed region's record (after it left the Raft membership).
    ForgetRegion {
        node_id: u64,
    },
    /// A lifecycle action on one machine (see `ingot_common::lifecycle::TABLE`).
    MachineAction {
        system_id: String,
        action: Action,
        /// 0: unconditional.
        expected_revision: u64,
        args: ActionArgs,
    },
    /// Claims `candidates` (chosen by the proposing region from its view of the pool) for the actor,
    /// after re-checking each against the constraints: the compare-and-set that makes two allocations
    /// never get the same machine. Fails with [`CONFLICT_FIELD`] when a candidate was taken meanwhile.
    Allocate {
        request_id: String,
        consumer: String,
        constraints: Constraints,
        min_zones: u32,
        candidates: Vec<String>,
        /// How many of `candidates` to claim (the rest are fallbacks for a single allocation).
        count: u32,
    },
    /// The end of a machine's in-progress work: from its current boot (`boot_id` set), from the region's
    /// power path, or from the deadline sweeper. Ignored (error) if the machine moved on meanwhile.
    Outcome {
        system_id: String,
        /// The status the reporter saw; the outcome applies only if the machine is still in it.
        status: MachineStatus,
        /// The reporting boot; `None` for region-side outcomes.
        boot_id: Option<String>,
        outcome: Outcome,
        reason: String,
        /// Credentials for the boot the outcome may start (Releasing -> DiskErasing).
        next_boot: BootTokens,
    },
    /// Inventory uploaded by the current commissioning boot.
    ReportInventory {
        system_id: String,
        boot_id: String,
        inventory: Inventory,
    },
    /// A progress step of the current boot.
    ReportProgress {
        system_id: String,
        boot_id: String,
        message: String,
        percent: u32,
    },
    CreatePool {
        name: String,
        description: String,
    },
    UpdatePool {
        name: String,
        description: Option<String>,
    },
    DeletePool {
        name: String,
    },
    CreateTag {
        name: String,
        definition: String,
        comment: String,
    },
    UpdateTag {
        name: String,
        definition: Option<String>,
        comment: Option<String>,
    },
    DeleteTag {
        name: String,
    },
    CreateUser {
        name: String,
        role: Role,
    },
    UpdateUser {
        name: String,
        role: Role,
    },
    DeleteUser {
        name: String,
    },
    /// Records an API token (by hash) for `user`.
    CreateToken {
        id: String,
        token_hash: String,
        user: String,
        description: String,
        expires_ms: Option<u64>,
    },
    RevokeToken {
        id: String,
    },
    /// Deadlines per in-progress status, in seconds; 0 restores the default.
    UpdateSettings {
        deadlines: Vec<(MachineStatus, u64)>,
    },
    /// Records a rack enrollment token (by hash) valid until `expires_ms`.
    CreateRackToken {
        token_hash: String,
        expires_ms: u64,
    },
    /// Consumes an enrollment token and records a rack (its certificate is signed outside, by the
    /// region that served the call, after this succeeded).
    RegisterRack {
        token_hash: String,
        name: String,
        zone: String,
    },
    /// Cuts a rack off: its sessions are refused and its BMCs go to other racks.
    RevokeRack {
        name: String,
    },
    /// A rack opened a session with a region.
    RackConnected {
        name: String,
        session: RackSession,
    },
    /// The serving region saw the session's heartbeats (recorded every few seconds).
    RackHeartbeat {
        name: String,
        session_id: String,
    },
    /// The session ended (the rack left or its stream broke).
    RackDisconnected {
        name: String,
        session_id: String,
        /// When the serving region last heard from the rack: the grace time runs from here.
        #[serde(default)]
        last_seen_ms: u64,
    },
    /// Queues a power action for the machine's rack.
    QueuePower {
        system_id: String,
        action: String,
    },
    /// A rack's result for a command; the first result wins.
    PowerResult {
        id: u64,
        rack: String,
        success: bool,
        error_kind: String,
        message: String,
        power_state: String,
        /// Credentials for the boot a completed lifecycle step may start (Releasing -> Disk erasing).
        #[serde(default)]
        next_boot: BootTokens,
    },
    /// Power states a rack's monitor read; only the owning rack's observations count.
    PowerObserved {
        rack: String,
        items: Vec<PowerObservation>,
    },
    /// Moves BMCs between racks (`None`: no live rack can take it now).
    AssignBmcs {
        moves: Vec<(String, Option<String>)>,
    },
}

/// The error field that marks an allocation conflict: a candidate was taken between the proposer's
/// choice and the apply step. The proposer picks again.
pub const CONFLICT_FIELD: &str = "candidates";

/// Credentials of a boot the command may start, generated by the proposer (the apply step never makes
/// up random values).
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct BootTokens {
    /// Random boot id.
    pub boot_id: String,
    /// Random per-boot token.
    pub token: String,
}

impl BootTokens {
    /// Fresh random credentials.
    pub fn generate() -> BootTokens {
        BootTokens {
            boot_id: ingot_common::secret::generate(""),
            token: ingot_common::secret::generate("boot_"),
        }
    }
}

/// One BMC reading by a rack's power monitor.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct PowerObservation {
    /// The machine.
    pub system_id: String,
    /// `on` / `off` when the query succeeded; empty on failure.
    pub power_state: String,
    /// Failure class (`unreachable`, `auth`, `unsupported`, `bmc`); empty on success.
    pub error_kind: String,
    /// The driver's message on failure.
    pub message: String,
    /// When the rack read it.
    pub observed_ms: u64,
}

/// Parameters of a [`Op::MachineAction`]; each action reads the ones it needs.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct ActionArgs {
    /// Operator comment: recorded in the event (and as the status message for mark-broken).
    #[serde(default)]
    pub comment: String,
    /// set-zone target.
    #[serde(default)]
    pub zone: String,
    /// set-pool target.
    #[serde(default)]
    pub pool: String,
    /// tag/untag names.
    #[serde(default)]
    pub tags: Vec<String>,
    /// What deploy installs.
    #[serde(default)]
    pub deploy: Option<DeploySpec>,
    /// Release erase mode.
    #[serde(default)]
    pub erase: EraseMode,
    /// Credentials of the boot the action starts, if it starts one.
    #[serde(default)]
    pub boot: BootTokens,
}

/// What a successful command returns.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[allow(missing_docs)]
pub enum Reply {
    Done,
    Machine(Box<Machine>),
    Zone(Zone),
    Region(RegionInfo),
    /// The machines an allocation got, and whether the request id had been served before.
    Allocated(Vec<Machine>, bool),
    Pool(Pool),
    Tag(Tag),
    User(User),
    Rack(Box<Rack>),
    Command(Box<PowerCommand>),
}

/// The answer to one command.
pub type Response = Result<Reply, DomainError>;

/// The payload of one Raft log entry (openraft's `D`): commands proposed together and applied in order.
/// Group commit: under load the proposer packs every command that arrived while the previous entry was
/// being committed into the next one, so one fsync and one replication round serve many writes.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(transparent)]
pub struct Batch(pub Vec<Command>);

/// The state machine's answer to one log entry (openraft's `R`): one [`Response`] per command of the
/// batch; blank and membership entries answer an empty list.
pub type Responses = Vec<Response>;

/// Most commands in one log entry.
pub const MAX_BATCH: usize = 1024;

/// The revision of a change: log index and position in the entry's batch, so every change has its own,
/// increasing with the log (`index * 10_000 + position`).
pub fn revision(index: u64, position: usize) -> u64 {
    index * 10_000 + position as u64
}
