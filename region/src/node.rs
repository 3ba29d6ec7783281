//! One region's Raft node and the two primitives every API call is built on:
//! [`Region::write`] (propose a command wherever the leader is) and [`Region::read_barrier`] (make a local
//! read linearizable). Membership changes ([`Region::leader_op`]) run on the leader, forwarded if needed.

use crate::command::{
    op, Batch, Command, Op, Principal, Reply, Response, BATCH_MAX_BYTES, COMMAND_MAX_BYTES,
    MAX_BATCH,
};
use crate::raft::network::Peers;
use crate::raft::store::SharedState;
use crate::raft::Raft;
use ingot_common::{DomainError, NodeId};
use ingot_proto::raft::v1::{RaftPayload, ReadIndexRequest};
use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::{BasicNode, ChangeMembers};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// How long a write or a linearizable read waits for a leader before answering `Unavailable`. Every
/// attempt of a write (local proposal or forward) ends by then, so this is the retry horizon of a
/// request id: [`crate::apply::DEDUP_WINDOW_MS`] covers it.
pub const LEADER_WAIT: Duration = Duration::from_secs(8);

/// How far (ms) a command's `ts_ms` may be from the proposing leader's clock (ahead of it; behind it, this
/// plus [`LEADER_WAIT`], the age a retried command can reach). A region whose clock is further off has its
/// writes refused with `FAILED_PRECONDITION` naming both clocks, so one bad clock cannot push the
/// replicated apply clock ahead and expire the answers that make retries safe.
pub const CLOCK_SKEW_MAX_MS: u64 = 3_000;

/// Whether the leader takes `cmd` into the log, judged from its own clock `now_ms` and its applied
/// `state`: the command's stamp must be within [`CLOCK_SKEW_MAX_MS`] of the clock (older by up to
/// [`LEADER_WAIT`] more for retries), and a new request id needs room in the dedup table (the apply step
/// makes the same check, deterministically; this keeps refused requests out of the log).
pub fn admit(cmd: &Command, now_ms: u64, state: &crate::state::State) -> Result<(), DomainError> {
    let oldest = LEADER_WAIT.as_millis() as u64 + CLOCK_SKEW_MAX_MS;
    if cmd.ts_ms > now_ms.saturating_add(CLOCK_SKEW_MAX_MS) {
        return Err(DomainError::precondition(format!(
            "the region that took this request stamped it {} ms ahead of the leader's clock (more than the {CLOCK_SKEW_MAX_MS} ms allowed), so the leader refused it; synchronize the regions' clocks (NTP) or send the request to another region",
            cmd.ts_ms - now_ms
        )));
    }
    if cmd.ts_ms.saturating_add(oldest) < now_ms {
        return Err(DomainError::precondition(format!(
            "the region that took this request stamped it {} ms behind the leader's clock (more than the {oldest} ms a request and its retries may take), so the leader refused it; synchronize the regions' clocks (NTP) or send the request to another region",
            now_ms - cmd.ts_ms
        )));
    }
    let d = &state.data;
    if !cmd.request_id.is_empty()
        && d.recent.len() >= crate::apply::DEDUP_MAX
        && !d.recent.contains_key(&cmd.request_id)
    {
        return Err(DomainError::exhausted(format!(
            "the cluster is answering {} requests of the last {} ms (the most it remembers for retries); retry in a few seconds",
            crate::apply::DEDUP_MAX,
            crate::apply::DEDUP_WINDOW_MS
        )));
    }
    Ok(())
}

/// Work only the leader can do, sent by followers over `RaftService.Forward`.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum Forwarded {
    /// Propose a command.
    Write(Box<Command>),
    /// Add an admitted region as learner, wait for it to catch up, then make it a voter.
    AddVoter {
        /// The admitted region.
        node_id: NodeId,
    },
    /// Remove a region from the membership and forget it.
    RemoveRegion {
        /// The region to remove.
        node_id: NodeId,
        /// Who asked.
        actor: String,
        /// How the asking region authenticated `actor` (absent from older regions' requests): the
        /// leader checks it before changing the membership, and apply again on `ForgetRegion`.
        #[serde(default)]
        principal: Option<Principal>,
    },
}

/// The leader's answer to a [`Forwarded`] request.
#[derive(Serialize, Deserialize, Debug)]
pub enum ForwardReply {
    /// The request was handled; the result.
    Done(Response),
    /// The receiver is not the leader (any more); try the one it names.
    NotLeader(Option<NodeId>, Option<String>),
}

/// A running region: its Raft handle, its in-memory state, and connections to its peers.
pub struct Region {
    /// Raft node id.
    pub id: NodeId,
    /// Name given at init/join.
    pub name: String,
    /// Cluster this region belongs to.
    pub cluster_id: String,
    /// openraft handle.
    pub raft: Raft,
    /// The state machine's in-memory state (read with a shared lock).
    pub state: SharedState,
    /// Connections to the other regions.
    pub peers: Arc<Peers>,
    /// Commands waiting to be proposed; see [`run_proposer`].
    pub proposals: mpsc::Sender<Proposal>,
    /// The revision of the last applied command, signalled after every apply (wakes watchers).
    pub applied: Arc<tokio::sync::watch::Sender<u64>>,
    /// Signalled when the leader reports that this region was removed from the cluster.
    pub removed: tokio::sync::watch::Sender<Option<String>>,
    /// When this region last heard from a leader: the Raft service records it, the election task
    /// ([`crate::raft::election`]) decides from it when to campaign.
    pub leader_contact: Arc<crate::raft::election::LeaderContact>,
}

/// A command and where its result goes.
pub type Proposal = (Command, oneshot::Sender<ForwardReply>);

/// Proposals in flight at once: while this many log entries are being committed, new commands queue up
/// and are packed into the next entry. Measured with 64 clients on 3 regions: 1 → ~7,600 writes/s
/// (p99 13 ms), 2 → ~6,900/s, 4 → ~6,700/s: fewer, larger entries mean fewer fsyncs and replication rounds.
const PROPOSALS_IN_FLIGHT: usize = 1;

/// The proposer: takes queued commands, packs all that are waiting (up to [`MAX_BATCH`] commands and
/// [`BATCH_MAX_BYTES`], see [`next_batch`]) into one log entry, and proposes it, with at most
/// [`PROPOSALS_IN_FLIGHT`] entries in flight. openraft 0.9 appends and fsyncs once per proposal, so this is
/// what lets one fsync and one replication round serve many writes.
pub async fn run_proposer(raft: Raft, mut rx: mpsc::Receiver<Proposal>) {
    let slots = Arc::new(Semaphore::new(PROPOSALS_IN_FLIGHT));
    let mut carry = None;
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(items) = next_batch(&mut rx, &mut carry).await else {
            return;
        };
        let raft = raft.clone();
        tokio::spawn(async move {
            let batch = Batch(items.iter().map(|(c, _)| c.clone()).collect());
            let t0 = Instant::now();
            let res = raft.client_write(batch).await;
            tracing::debug!(
                commands = items.len(),
                commit_us = t0.elapsed().as_micros() as u64,
                "proposal"
            );
            match res {
                Ok(resp) => {
                    let mut answers = resp.data.into_iter();
                    for (_, tx) in items {
                        let r = answers.next().unwrap_or_else(|| {
                            Err(DomainError::internal("missing answer in batch"))
                        });
                        let _ = tx.send(ForwardReply::Done(r));
                    }
                }
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    let (a, b) = leader_hint(&f);
                    for (_, tx) in items {
                        let _ = tx.send(ForwardReply::NotLeader(a, b.clone()));
                    }
                }
                Err(e) => {
                    for (_, tx) in items {
                        let _ = tx.send(ForwardReply::Done(Err(DomainError::unavailable(
                            format!("raft write failed: {e}"),
                        ))));
                    }
                }
            }
            drop(permit);
        });
    }
}

/// A proposal and its command's encoded size.
type Measured = (Proposal, usize);

/// The commands of the next log entry: waits for one, then takes every proposal already queued while the
/// entry stays within [`MAX_BATCH`] commands and [`BATCH_MAX_BYTES`] of JSON. The first proposal that does
/// not fit waits in `carry` and opens the next entry. A command over [`COMMAND_MAX_BYTES`] is answered
/// with an error at once and never proposed. `None` once the channel is closed and drained.
async fn next_batch(
    rx: &mut mpsc::Receiver<Proposal>,
    carry: &mut Option<Measured>,
) -> Option<Vec<Proposal>> {
    let mut items: Vec<Proposal> = Vec::new();
    // The entry's JSON array: "[" and "]", and a comma before every command but the first.
    let mut bytes = 2;
    while items.len() < MAX_BATCH {
        let (p, size) = match carry.take() {
            Some(m) => m,
            None => {
                let p = if items.is_empty() {
                    rx.recv().await?
                } else {
                    match rx.try_recv() {
                        Ok(p) => p,
                        Err(_) => break,
                    }
                };
                match measure(p) {
                    Some(m) => m,
                    None => continue,
                }
            }
        };
        let added = size + usize::from(!items.is_empty());
        if !items.is_empty() && bytes + added > BATCH_MAX_BYTES {
            *carry = Some((p, size));
            break;
        }
        bytes += added;
        items.push(p);
    }
    Some(items)
}

/// The proposal with its command's size in bytes of JSON, or `None` after answering a command larger than
/// [`COMMAND_MAX_BYTES`] with an error (no log entry may exceed what one Raft message carries).
fn measure(p: Proposal) -> Option<Measured> {
    let size = encoded_len(&p.0);
    if size <= COMMAND_MAX_BYTES {
        return Some((p, size));
    }
    let (cmd, tx) = p;
    // Only on this rare path: the operation's name, for the message.
    let name = serde_json::to_value(&cmd.op)
        .ok()
        .and_then(|v| v.as_object().and_then(|o| o.keys().next().cloned()))
        .unwrap_or_default();
    tracing::warn!(op = %name, actor = %cmd.actor, bytes = size, "refused an oversized command");
    let _ = tx.send(ForwardReply::Done(Err(DomainError::exhausted(format!(
        "the {name} command from {} is {size} bytes, over the {COMMAND_MAX_BYTES}-byte limit of one log entry; a request field escaped its limit at the API edge (a bug in this region: please report it)",
        cmd.actor
    )))));
    None
}

/// The length of `cmd`'s JSON (what the log stores and replicates), counted without building it.
pub fn encoded_len(cmd: &Command) -> usize {
    /// A writer that only counts.
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Serializing a command cannot fail (string keys only); a failure would count as oversized.
    match serde_json::to_writer(&mut c, cmd) {
        Ok(()) => c.0,
        Err(_) => usize::MAX,
    }
}

fn leader_hint(f: &ForwardToLeader<NodeId, BasicNode>) -> (Option<NodeId>, Option<String>) {
    (f.leader_id, f.leader_node.as_ref().map(|n| n.addr.clone()))
}

impl Region {
    /// The current Raft membership (voters and learners): each node's id and Raft/cluster address.
    pub fn members(&self) -> BTreeMap<NodeId, String> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    }

    /// Proposes `cmd` and returns its apply result. Works on any region: a follower forwards to the leader.
    /// Retries across leader changes until [`LEADER_WAIT`]; retrying is safe because a command's
    /// request id makes the state machine apply it at most once.
    pub async fn write(&self, cmd: Command) -> Result<Reply, DomainError> {
        self.leader_op(Forwarded::Write(Box::new(cmd))).await
    }

    /// Runs `op` on the leader (here, or forwarded), retrying across elections until [`LEADER_WAIT`].
    pub async fn leader_op(&self, op: Forwarded) -> Result<Reply, DomainError> {
        let deadline = Instant::now() + LEADER_WAIT;
        let mut last_err = String::from("no leader elected yet");
        let mut delay = Duration::from_millis(20);
        loop {
            // A write's attempts end by the deadline, so its retries stay within LEADER_WAIT (the
            // dedup window's premise); membership changes take as long as they need.
            let left = match op {
                Forwarded::Write(_) => Some(deadline.saturating_duration_since(Instant::now())),
                _ => None,
            };
            let local = match left {
                Some(left) => tokio::time::timeout(left, self.local_leader_op(&op)).await,
                None => Ok(self.local_leader_op(&op).await),
            };
            let hint = match local {
                Ok(ForwardReply::Done(r)) => return r,
                Ok(ForwardReply::NotLeader(id, addr)) => (id, addr),
                Err(_) => {
                    last_err = "this region's proposal was not committed in time".into();
                    (None, None)
                }
            };
            match hint {
                (Some(id), Some(addr)) if id != self.id => {
                    match self.forward(id, &addr, &op, left).await {
                        Ok(ForwardReply::Done(r)) => return r,
                        Ok(ForwardReply::NotLeader(..)) => {
                            last_err = format!("region {id} is no longer the leader")
                        }
                        Err(e) => {
                            last_err = format!("leader region {id} at {addr} did not answer: {e}")
                        }
                    }
                }
                _ => {}
            }
            if Instant::now() + delay > deadline {
                return Err(DomainError::unavailable(format!(
                    "the cluster could not complete the write within {LEADER_WAIT:?} ({last_err}); a majority of regions must be up. Retry when `ingot cluster list` shows a leader"
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(50));
        }
    }

    /// Handles `op` if this region is the leader; otherwise says who is.
    pub async fn local_leader_op(&self, op: &Forwarded) -> ForwardReply {
        match op {
            Forwarded::Write(cmd) => self.propose((**cmd).clone()).await,
            Forwarded::AddVoter { node_id } => self.add_voter(*node_id).await,
            Forwarded::RemoveRegion {
                node_id,
                actor,
                principal,
            } => {
                let cmd = Command {
                    request_id: ingot_common::secret::generate("rm_"),
                    ts_ms: ingot_common::now_ms(),
                    actor: actor.clone(),
                    op: Op::ForgetRegion(op::ForgetRegion { node_id: *node_id }),
                    principal: principal.clone(),
                };
                self.remove_region(*node_id, cmd).await
            }
        }
    }

    async fn forward(
        &self,
        id: NodeId,
        addr: &str,
        op: &Forwarded,
        left: Option<Duration>,
    ) -> Result<ForwardReply, String> {
        let mut c = self.peers.client(id, addr).map_err(|e| e.to_string())?;
        let json = serde_json::to_vec(op).map_err(|e| e.to_string())?;
        let timeout = match op {
            Forwarded::AddVoter { .. } => Duration::from_secs(300),
            _ => left.unwrap_or(LEADER_WAIT).min(LEADER_WAIT),
        };
        let r = tokio::time::timeout(timeout, c.forward(RaftPayload { json }))
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
            .map_err(|s| s.message().to_string())?;
        serde_json::from_slice(&r.into_inner().json).map_err(|e| e.to_string())
    }

    fn not_leader(&self, f: Option<ForwardToLeader<NodeId, BasicNode>>) -> ForwardReply {
        match f {
            Some(f) => {
                let (a, b) = leader_hint(&f);
                ForwardReply::NotLeader(a, b)
            }
            None => ForwardReply::NotLeader(None, None),
        }
    }

    async fn add_voter(&self, node_id: NodeId) -> ForwardReply {
        let addr = {
            let st = crate::locks::read(&self.state);
            match st.data.regions.get(&node_id) {
                Some(r) => r.raft_addr.clone(),
                None => {
                    return ForwardReply::Done(Err(DomainError::not_found(format!(
                        "region {node_id} was not admitted with a join token"
                    ))))
                }
            }
        };
        let voters: BTreeSet<NodeId> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        if voters.contains(&node_id) {
            return ForwardReply::Done(Ok(Reply::Done));
        }
        let added = self
            .raft
            .add_learner(node_id, BasicNode::new(addr), true)
            .await;
        if let Err(reply) =
            self.membership_result(added, || format!("adding region {node_id} as learner"))
        {
            return reply;
        }
        let change = ChangeMembers::AddVoterIds(BTreeSet::from([node_id]));
        let promoted = self.raft.change_membership(change, false).await;
        match self.membership_result(promoted, || format!("promoting region {node_id} to voter")) {
            Ok(()) => ForwardReply::Done(Ok(Reply::Done)),
            Err(reply) => reply,
        }
    }

    /// Maps the result of a membership change: `Err(reply)` is what to answer (a leader hint, or
    /// `Unavailable` naming the step that failed).
    fn membership_result<T>(
        &self,
        r: Result<T, RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>>,
        what: impl FnOnce() -> String,
    ) -> Result<(), ForwardReply> {
        match r {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(self.not_leader(Some(f)))
            }
            Err(e) => Err(ForwardReply::Done(Err(DomainError::unavailable(format!(
                "{} failed: {e}",
                what()
            ))))),
        }
    }

    /// Removes region `node_id` from the membership, then proposes `forget` (its `ForgetRegion`),
    /// once the leader's state authorizes `forget`'s principal.
    async fn remove_region(&self, node_id: NodeId, forget: Command) -> ForwardReply {
        let allowed = crate::apply::authz::check(&crate::locks::read(&self.state), &forget);
        if let Err(e) = allowed {
            return ForwardReply::Done(Err(e));
        }
        let actor = forget.actor.as_str();
        let membership = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let known = membership.nodes().any(|(id, _)| *id == node_id);
        if voters.contains(&node_id) {
            if voters.len() == 1 {
                return ForwardReply::Done(Err(DomainError::precondition(
                    "refusing to remove the last voting region: the cluster would have no members",
                )));
            }
            let change = ChangeMembers::RemoveVoters(BTreeSet::from([node_id]));
            let r = self.raft.change_membership(change, false).await;
            if let Err(reply) = self.membership_result(r, || format!("removing region {node_id}")) {
                return reply;
            }
        } else if known {
            let change = ChangeMembers::RemoveNodes(BTreeSet::from([node_id]));
            let r = self.raft.change_membership(change, false).await;
            if let Err(reply) = self.membership_result(r, || format!("removing learner {node_id}"))
            {
                return reply;
            }
        } else {
            let admitted = crate::locks::read(&self.state)
                .data
                .regions
                .contains_key(&node_id);
            if !admitted {
                return ForwardReply::Done(Err(DomainError::not_found(format!(
                    "region {node_id} is not a member"
                ))));
            }
        }
        // Tell the removed region, so it stops serving stale data (best effort: it may be down).
        let addr = membership
            .nodes()
            .find(|(id, _)| **id == node_id)
            .map(|(_, n)| n.addr.clone());
        if let Some(addr) = addr {
            if let Ok(mut c) = self.peers.client(node_id, &addr) {
                let req = ingot_proto::raft::v1::LeaveRequest {
                    node_id,
                    reason: format!("removed by {actor}"),
                };
                let _ = tokio::time::timeout(Duration::from_secs(2), c.leave(req)).await;
            }
        }
        self.propose(forget).await
    }

    /// Hands `cmd` to the proposer (group commit) and waits for its result on this region's Raft node.
    async fn propose(&self, cmd: Command) -> ForwardReply {
        let admitted = admit(
            &cmd,
            ingot_common::now_ms(),
            &crate::locks::read(&self.state),
        );
        if let Err(e) = admitted {
            return ForwardReply::Done(Err(e));
        }
        let (tx, rx) = oneshot::channel();
        if self.proposals.send((cmd, tx)).await.is_err() {
            return ForwardReply::Done(Err(DomainError::unavailable(
                "this region is shutting down",
            )));
        }
        rx.await.unwrap_or_else(|_| {
            ForwardReply::Done(Err(DomainError::unavailable(
                "this region is shutting down",
            )))
        })
    }

    /// Makes the next local read linearizable: on the leader, confirms leadership with a quorum (read
    /// index); on a follower, asks the leader for its read index and waits until it has applied that far.
    /// `linearizable = false` reads local state as is (stale reads).
    pub async fn read_barrier(&self, linearizable: bool) -> Result<(), DomainError> {
        if !linearizable {
            return Ok(());
        }
        let deadline = Instant::now() + LEADER_WAIT;
        let mut last_err = String::from("no leader elected yet");
        loop {
            match self.raft.ensure_linearizable().await {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                    if let (Some(id), Some(node)) = (f.leader_id, f.leader_node.as_ref()) {
                        match self.remote_read_index(id, &node.addr).await {
                            Ok(index) => {
                                let left = deadline
                                    .saturating_duration_since(Instant::now())
                                    .max(Duration::from_millis(100));
                                return self
                                    .raft
                                    .wait(Some(left))
                                    .applied_index_at_least(Some(index), "read index")
                                    .await
                                    .map(|_| ())
                                    .map_err(|e| DomainError::unavailable(format!("this region could not catch up with the leader for a linearizable read: {e}; retry, or ask for a stale read")));
                            }
                            Err(e) => {
                                last_err = format!("leader {id} did not give a read index: {e}")
                            }
                        }
                    }
                }
                Err(e) => last_err = e.to_string(),
            }
            if Instant::now() > deadline {
                return Err(DomainError::unavailable(format!(
                    "no linearizable read possible within {LEADER_WAIT:?} ({last_err}); a majority of regions must be up, or ask for a stale read"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn remote_read_index(&self, id: NodeId, addr: &str) -> Result<u64, String> {
        let mut c = self.peers.client(id, addr).map_err(|e| e.to_string())?;
        let r = tokio::time::timeout(Duration::from_secs(3), c.read_index(ReadIndexRequest {}))
            .await
            .map_err(|_| "timeout".to_string())?
            .map_err(|s| s.message().to_string())?;
        Ok(r.into_inner().index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command whose JSON is about `bytes` long.
    fn command(bytes: usize) -> Command {
        Command::new(
            "admin",
            Principal::Internal(crate::command::Internal::Init),
            Op::CreateZone(op::CreateZone {
                name: "z".into(),
                description: "x".repeat(bytes),
            }),
        )
    }

    /// Queues `sizes` and returns the answer receivers.
    fn queue(tx: &mpsc::Sender<Proposal>, sizes: &[usize]) -> Vec<oneshot::Receiver<ForwardReply>> {
        sizes
            .iter()
            .map(|s| {
                let (atx, arx) = oneshot::channel();
                tx.try_send((command(*s), atx)).unwrap();
                arx
            })
            .collect()
    }

    fn descriptions(batch: &[Proposal]) -> Vec<usize> {
        batch
            .iter()
            .map(|(c, _)| match &c.op {
                Op::CreateZone(z) => z.description.len(),
                _ => unreachable!(),
            })
            .collect()
    }

    const MIB: usize = 1024 * 1024;

    /// The next batch, failing (instead of waiting forever) when none is ready.
    async fn batch(
        rx: &mut mpsc::Receiver<Proposal>,
        carry: &mut Option<Measured>,
    ) -> Vec<Proposal> {
        tokio::time::timeout(Duration::from_secs(5), next_batch(rx, carry))
            .await
            .expect("a batch is ready")
            .expect("the channel is open")
    }

    /// A batch closes before the next command would take it over the byte budget; that command opens the
    /// next batch. The count cap still holds for small commands.
    #[tokio::test]
    async fn batches_are_capped_in_bytes_and_in_count() {
        let (tx, mut rx) = mpsc::channel(4096);
        let mut carry = None;
        let sizes = [5 * MIB / 2, MIB, MIB, 2 * MIB, 100];
        let _answers = queue(&tx, &sizes);
        let mut batches = Vec::new();
        for _ in 0..2 {
            let b = batch(&mut rx, &mut carry).await;
            let total: usize = b.iter().map(|(c, _)| encoded_len(c) + 1).sum();
            assert!(total <= BATCH_MAX_BYTES, "{total}");
            batches.push(descriptions(&b));
        }
        // 2.5 + 1 + 1 MiB would pass 4 MiB: the third command opens the second entry.
        assert_eq!(
            batches,
            vec![vec![5 * MIB / 2, MIB], vec![MIB, 2 * MIB, 100]]
        );
        assert!(carry.is_none());
        let _answers = queue(&tx, &[10; MAX_BATCH + 6]);
        assert_eq!(batch(&mut rx, &mut carry).await.len(), MAX_BATCH);
        assert_eq!(batch(&mut rx, &mut carry).await.len(), 6);
        drop(tx);
        assert!(next_batch(&mut rx, &mut carry).await.is_none());
    }

    /// A command over the per-command cap is answered with a clear error and never proposed; the commands
    /// around it are.
    #[tokio::test]
    async fn an_oversized_command_is_refused_not_proposed() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut carry = None;
        let mut answers = queue(&tx, &[10, COMMAND_MAX_BYTES, 20]);
        let b = batch(&mut rx, &mut carry).await;
        assert_eq!(descriptions(&b), vec![10, 20]);
        match answers.remove(1).try_recv() {
            Ok(ForwardReply::Done(Err(e))) => {
                assert_eq!(e.code, ingot_common::ErrorCode::ResourceExhausted);
                assert!(
                    e.message.contains("CreateZone command from admin is"),
                    "{e}"
                );
                assert!(e.message.contains("4194304-byte limit"), "{e}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Exactly at the cap is accepted (its own entry).
        let at = command(0);
        let overhead = encoded_len(&at);
        let _a = queue(&tx, &[COMMAND_MAX_BYTES - overhead]);
        let b = batch(&mut rx, &mut carry).await;
        assert_eq!(b.len(), 1);
        assert_eq!(encoded_len(&b[0].0), COMMAND_MAX_BYTES);
    }

    use crate::command::Reply;
    use crate::state::State;
    use ingot_common::ErrorCode;

    fn stamped(id: &str, ts_ms: u64) -> Command {
        Command {
            request_id: id.into(),
            ts_ms,
            actor: "admin".into(),
            principal: None,
            op: Op::DeleteZone(op::DeleteZone { name: "z".into() }),
        }
    }

    /// The leader refuses a command stamped by a clock more than CLOCK_SKEW_MAX_MS ahead of its own (or
    /// older than a retry can be), and the caller reads which way the clocks differ and what to do.
    #[test]
    fn the_proposer_refuses_a_command_from_a_skewed_clock() {
        let s = State::default();
        let now = 1_000_000;
        assert!(admit(&stamped("ok", now), now, &s).is_ok());
        assert!(admit(&stamped("ahead-ok", now + CLOCK_SKEW_MAX_MS), now, &s).is_ok());
        let retry_age = LEADER_WAIT.as_millis() as u64;
        assert!(admit(&stamped("retry", now - retry_age), now, &s).is_ok());
        let e = admit(&stamped("ahead", now + CLOCK_SKEW_MAX_MS + 1), now, &s).unwrap_err();
        assert_eq!(e.code, ErrorCode::FailedPrecondition);
        assert!(e.message.contains("ahead of the leader's clock"), "{e:?}");
        assert!(e.message.contains("NTP"), "{e:?}");
        let behind = now - retry_age - CLOCK_SKEW_MAX_MS - 1;
        let e = admit(&stamped("behind", behind), now, &s).unwrap_err();
        assert_eq!(e.code, ErrorCode::FailedPrecondition);
        assert!(e.message.contains("behind the leader's clock"), "{e:?}");
    }

    /// A full dedup table: new requests are refused before the log; retries of remembered ones pass.
    #[test]
    fn the_proposer_refuses_new_requests_when_the_dedup_table_is_full() {
        let mut s = State::default();
        for i in 0..crate::apply::DEDUP_MAX {
            s.data.recent.insert(format!("f{i}"), Ok(Reply::Done));
        }
        let now = 1_000_000;
        let e = admit(&stamped("new", now), now, &s).unwrap_err();
        assert_eq!(e.code, ErrorCode::ResourceExhausted);
        assert!(admit(&stamped("f7", now), now, &s).is_ok());
    }

    /// The dedup window covers a write's retry horizon plus the clock skew either way, with a margin.
    #[test]
    fn the_dedup_window_covers_the_retry_horizon_and_the_skew() {
        let horizon = LEADER_WAIT.as_millis() as u64 + 2 * CLOCK_SKEW_MAX_MS;
        assert!(crate::apply::DEDUP_WINDOW_MS >= horizon + 5_000);
    }
}
