//! The command envelope: the only payload of a Raft log entry (etcd's pattern). Everything that changes
//! replicated state is one [`Command`], applied by [`crate::apply::apply`]. Time, ids and secrets' hashes are
//! chosen by the proposing region and carried inside the command, so applying it is deterministic.

use ingot_common::pki::ClusterCa;
use ingot_common::{DomainError, Mac, Machine, PowerParams, RegionInfo, Zone};
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
}

/// What a successful command returns.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[allow(missing_docs)]
pub enum Reply {
    Done,
    Machine(Box<Machine>),
    Zone(Zone),
    Region(RegionInfo),
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
