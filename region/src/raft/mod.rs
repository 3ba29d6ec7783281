//! Raft: openraft's type configuration, the sled-backed store, the tonic network and the RaftService server.
//!
//! - [`store`]: log and state machine on one `sled::Db` per process (log entries fsynced before they are
//!   acknowledged; the state machine in memory, persisted by snapshots, replayed from the log on restart).
//! - [`network`]: openraft's `RaftNetwork` over `ingot.raft.v1.RaftService` with mutual TLS.
//! - [`service`]: the server side of that service, plus write forwarding, read index, status and join.

// openraft's error types (StorageError, RPCError, ConfigError) are large by design and are what its traits
// require us to return; boxing them would only add conversions at every call.
#![allow(clippy::result_large_err)]

use crate::command::{Batch, Responses};
use ingot_common::NodeId;
use ingot_proto::raft::v1::StatusReply;
use std::io::Cursor;

pub mod election;
pub mod network;
pub mod service;
pub mod store;

openraft::declare_raft_types!(
    /// Ingot's openraft types: log entries carry a [`Batch`] of commands, the state machine answers one
    /// response per command.
    pub TypeConfig:
        D = Batch,
        R = Responses,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A region's live Raft status, as `RaftService.Status` reports it: what `ListRegions` shows of each
/// member, free of the wire type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftStatus {
    /// Raft node id.
    pub node_id: NodeId,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    /// Current term.
    pub term: u64,
    /// Index of the last applied log entry.
    pub last_applied_index: u64,
    /// Index of the last log entry.
    pub last_log_index: u64,
    /// The leader it knows (0: none).
    pub leader_id: NodeId,
    /// Index of its last snapshot.
    pub snapshot_index: u64,
    /// Whether it counts towards quorum.
    pub voter: bool,
}

impl From<StatusReply> for RaftStatus {
    fn from(r: StatusReply) -> Self {
        RaftStatus {
            node_id: r.node_id,
            role: r.role,
            term: r.term,
            last_applied_index: r.last_applied_index,
            last_log_index: r.last_log_index,
            leader_id: r.leader_id,
            snapshot_index: r.snapshot_index,
            voter: r.voter,
        }
    }
}

impl From<RaftStatus> for StatusReply {
    fn from(s: RaftStatus) -> Self {
        StatusReply {
            node_id: s.node_id,
            role: s.role,
            term: s.term,
            last_applied_index: s.last_applied_index,
            last_log_index: s.last_log_index,
            leader_id: s.leader_id,
            snapshot_index: s.snapshot_index,
            voter: s.voter,
        }
    }
}

/// The openraft handle for this process.
pub type Raft = openraft::Raft<TypeConfig>;

/// Timing and snapshot knobs, from the command line.
#[derive(Clone, Debug)]
pub struct RaftTuning {
    /// Leader heartbeat period.
    pub heartbeat_ms: u64,
    /// Minimum election timeout; the maximum is 1.5 times this.
    pub election_timeout_ms: u64,
    /// Build a snapshot after this many applied entries.
    pub snapshot_logs: u64,
    /// Log entries kept behind the last snapshot (so slightly lagging followers catch up without one).
    pub keep_logs: u64,
    /// Not Raft, but timing too: how long a rack may go without a recorded heartbeat before the leader
    /// moves its BMCs.
    pub rack_grace_ms: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat_ms: 100,
            election_timeout_ms: 600,
            snapshot_logs: 10_000,
            keep_logs: 1_000,
            rack_grace_ms: 10_000,
        }
    }
}

impl RaftTuning {
    /// The openraft configuration for these knobs (validated by openraft).
    pub fn config(&self, cluster_id: &str) -> Result<openraft::Config, openraft::ConfigError> {
        let c = openraft::Config {
            cluster_name: cluster_id.to_string(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_ms,
            // openraft 0.9 waits `max` (the leader lease) plus a random timeout in [min, max) before a
            // follower campaigns: a narrow range keeps failover near 2.5 x min.
            election_timeout_max: self.election_timeout_ms * 3 / 2,
            // Snapshots are shipped in 1 MiB chunks; a chunk gets 10 s on a busy 2-core box.
            snapshot_max_chunk_size: 1024 * 1024,
            install_snapshot_timeout: 10_000,
            // openraft 0.9 gives an AppendEntries one heartbeat interval (50 ms by default) to complete. A
            // follower catching up after a restart was sent 512 entries at once — each entry a batch of up
            // to 1,024 commands, megabytes of JSON — which could not be fsynced and answered in time, timed
            // out, and was sent again: the new leader could not commit its first write. 64 entries fit.
            max_payload_entries: 64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_logs),
            max_in_snapshot_log_to_keep: self.keep_logs,
            ..Default::default()
        };
        c.validate()
    }
}
