//! The logic of a rack's session, free of transport: who may open one, what to deliver, which BMC list to
//! send, and what is recorded through Raft (the session, heartbeats, power command results, power
//! observations, the end). `api::rack_session` drives it from the stream; nothing here knows the wire.
//!
//! A session: the rack says Hello; the region answers Welcome (its id, a fresh session id, every region's
//! cluster endpoint) and records the session through Raft. From then on the region sends the rack every
//! pending power command of a machine whose BMC it owns (again after each reconnect: delivery is at least
//! once; the rack runs each id once), records results and acknowledges them, and records a heartbeat every
//! [`HEARTBEAT_RECORD`] so the leader knows which racks are alive. A revoked rack's session is cut at once;
//! a session superseded by a newer one of the same rack ends.

use super::boot::{BootFeed, EnlistRequest, LeasesUpdate, RackBootConfig, Tick};
use super::App;
use crate::command::op::{MAX_LEASES_PER_COMMIT, MAX_LEASE_HOSTNAME};
use crate::command::{
    op, BootTokens, Command, Internal, Op, PowerObservation, Principal, RefusedLease, Reply,
};
use ingot_common::model::{PowerCommand, RackSession};
use ingot_common::net::Lease;
use ingot_common::{secret, DomainError, ErrorCode, NodeId, PowerParams};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a session's heartbeat is recorded in the replicated log (the rack beats more often).
pub const HEARTBEAT_RECORD: Duration = Duration::from_millis(crate::state::HEARTBEAT_RECORD_MS);
/// How often the rack should beat.
pub const HEARTBEAT_MS: u32 = 500;
/// A power command still pending this long after it was sent is sent again on the same session (its
/// result may have been lost, e.g. a region failing to record it during an election); the rack answers a
/// repeat from its done-log, or ignores it while it still runs.
const RESEND_AFTER: Duration = Duration::from_secs(10);
/// Most observations recorded from one message (a rack sends at most one per BMC it owns).
pub const MAX_OBSERVATIONS: usize = 20_000;
/// Longest observation message kept, in characters.
const MAX_OBSERVATION_MESSAGE: usize = 1000;
/// Most observations in one `PowerObserved` command: with every field at its cap (a message of
/// `limits::TEXT` bytes, escaped at worst 6x in JSON) a command stays under ~2.5 MB, below the
/// proposer's per-command cap (`command::COMMAND_MAX_BYTES`); a typical reading is ~100 bytes.
pub const OBSERVATIONS_PER_COMMAND: usize = 256;

/// What a rack says about itself when it opens a session.
#[derive(Debug, Clone, Default)]
pub struct RackHello {
    /// Rack software version.
    pub version: String,
    /// Services it runs (`power`, ...).
    pub services: Vec<String>,
    /// Power drivers it can run.
    pub drivers: Vec<String>,
}

/// What the region answers a Hello with.
#[derive(Debug, Clone)]
pub struct RackWelcome {
    /// The answering region.
    pub region_id: NodeId,
    /// Its name.
    pub region_name: String,
    /// This session's id (a new one per connection).
    pub session_id: String,
    /// The rack's lease (`--rack-grace-ms`): its BMCs move only after this long without a recorded
    /// heartbeat, so the rack acts only within a safe fraction of it after an acknowledged one.
    pub lease_ms: u32,
    /// How often the rack should beat.
    pub heartbeat_ms: u32,
    /// Cluster listener of every region, for reconnection.
    pub endpoints: Vec<String>,
}

/// A pending power command to send to the rack, with the machine's power settings it needs to run it.
#[derive(Debug, Clone)]
pub struct DuePowerCommand {
    /// The queued command.
    pub power_command: PowerCommand,
    /// The machine's power driver and parameters (secrets included: only racks receive them).
    pub power: PowerParams,
}

/// A BMC the rack owns and should monitor.
#[derive(Debug, Clone)]
pub struct OwnedBmc {
    /// The machine.
    pub system_id: String,
    /// Its power driver and parameters (secrets included).
    pub power: PowerParams,
}

/// A power command's result as the rack reported it.
#[derive(Debug, Clone, Default)]
pub struct PowerCommandResult {
    /// The command id.
    pub id: u64,
    /// Whether the driver succeeded.
    pub success: bool,
    /// Failure class (`unreachable`, `auth`, `unsupported`, `bmc`); empty on success.
    pub error_kind: String,
    /// What happened, for the operator.
    pub message: String,
    /// Power state after the command.
    pub power_state: String,
}

/// One session's progress, owned by the loop that serves its stream: what was sent and when, whether the
/// session is recorded yet, and the BMC and region lists last sent.
pub struct RackSessionState {
    app: App,
    name: String,
    actor: String,
    session_id: String,
    /// Set once `Op::RackConnected` is committed: until then nothing else is recorded, and a different
    /// recorded session is not yet a sign of being superseded.
    recorded: Arc<AtomicBool>,
    /// Power commands sent on this session, with when (for [`RESEND_AFTER`]).
    sent: HashMap<u64, Instant>,
    last_record: Instant,
    last_seen_ms: u64,
    last_endpoints: Vec<String>,
    /// Fingerprint of the BMC list last sent (0: none yet, so the first check sends it).
    last_bmcs: u64,
    /// The boot configuration and leases sent, and the enlistment rate limit.
    boot: BootFeed,
    /// The image files last told to hold (`CacheWanted`).
    prefetch: super::prefetch::PrefetchFeed,
    /// Boot intents answered per second ([`super::boot_intent::INTENTS_PER_SECOND`]).
    intent_limit: super::boot::RateLimit,
    /// Boot event messages recorded per second ([`super::boot_intent::EVENT_MESSAGES_PER_SECOND`]).
    event_limit: super::boot::RateLimit,
    /// Agent calls taken per second ([`AGENT_CALLS_PER_SECOND`]).
    agent_limit: super::boot::RateLimit,
}

/// Agent calls one rack session relays per second (burst the same): a rack of machines booting at once
/// makes a few calls each; more is a flood, refused `Unavailable` (the agent retries with backoff).
pub const AGENT_CALLS_PER_SECOND: u32 = 200;

impl App {
    /// Fails unless rack `name` is registered and not revoked: the check before a session is accepted.
    pub async fn admit_rack_session(&self, name: &str) -> Result<(), DomainError> {
        let known = self
            .read_internal(false, |st| st.data.racks.get(name).map(|r| r.revoked))
            .await?;
        match known {
            None => Err(DomainError::denied(format!(
                "rack '{name}' is not registered (or was removed); register it again with `ingot-rack register`"
            ))),
            Some(true) => Err(DomainError::denied(format!(
                "rack '{name}' is revoked; an admin must register it again under a new token"
            ))),
            Some(false) => Ok(()),
        }
    }

    /// Starts rack `name`'s session: a fresh session id and the Welcome to send. Record it with
    /// [`RackSessionState::record_start`] once the Welcome is sent.
    pub fn start_rack_session(&self, name: String) -> (RackSessionState, RackWelcome) {
        let session_id = secret::generate("");
        let endpoints = self.cluster_endpoints();
        let welcome = RackWelcome {
            region_id: self.region.id,
            region_name: self.region.name.clone(),
            session_id: session_id.clone(),
            heartbeat_ms: HEARTBEAT_MS,
            lease_ms: u32::try_from(self.rack_grace_ms).unwrap_or(u32::MAX),
            endpoints: endpoints.clone(),
        };
        let state = RackSessionState {
            app: self.clone(),
            actor: format!("rack:{name}"),
            name,
            session_id,
            recorded: Arc::new(AtomicBool::new(false)),
            sent: HashMap::new(),
            last_record: Instant::now(),
            last_seen_ms: ingot_common::now_ms(),
            last_endpoints: endpoints,
            last_bmcs: 0,
            boot: BootFeed::new(Instant::now()),
            prefetch: Default::default(),
            intent_limit: super::boot::RateLimit::new(
                super::boot_intent::INTENTS_PER_SECOND,
                Instant::now(),
            ),
            event_limit: super::boot::RateLimit::new(
                super::boot_intent::EVENT_MESSAGES_PER_SECOND,
                Instant::now(),
            ),
            agent_limit: super::boot::RateLimit::new(AGENT_CALLS_PER_SECOND, Instant::now()),
        };
        (state, welcome)
    }
}

impl RackSessionState {
    /// The rack's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This session's id.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Wakes after every apply: pending power commands or the BMC list may have changed.
    pub fn applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.app.region.applied.subscribe()
    }

    /// Records the session through Raft (waits out an election if the leader just died, so the caller
    /// serves the stream meanwhile). On failure the rack should reconnect.
    pub fn record_start(
        &self,
        hello: RackHello,
    ) -> impl Future<Output = Result<(), DomainError>> + Send + 'static {
        let app = self.app.clone();
        let recorded = self.recorded.clone();
        let op = Op::RackConnected(op::RackConnected {
            name: self.name.clone(),
            session: RackSession {
                session_id: self.session_id.clone(),
                region_id: app.region.id,
                region_name: app.region.name.clone(),
                version: hello.version.clone(),
                services: hello.services.clone(),
                drivers: hello.drivers.clone(),
                connected_ms: 0,
                last_heartbeat_ms: 0,
                ended_ms: None,
            },
        });
        let cmd = Command::new(self.actor.as_str(), Principal::Internal(Internal::Rack), op);
        async move {
            app.region.write(cmd).await?;
            // This region's state catches up with the log at least to the record before anything is
            // delivered (`due_power_commands`): a lagging region must not hand a woken rack a command
            // the leader already moved to another rack before the rack's lease was renewed.
            app.region.read_barrier(true).await?;
            recorded.store(true, Ordering::SeqCst);
            Ok(())
        }
    }

    fn recorded(&self) -> bool {
        self.recorded.load(Ordering::SeqCst)
    }

    /// Notes that the rack was heard from (the end of the session records when it was last heard).
    pub fn seen(&mut self) {
        self.last_seen_ms = ingot_common::now_ms();
    }

    /// The pending power commands this session has not sent yet for machines whose BMC the rack owns (none
    /// until the session is recorded and this region caught up with the record);
    /// PermissionDenied when the rack was revoked or another session of it took over (the session ends).
    pub fn due_power_commands(&mut self) -> Result<Vec<DuePowerCommand>, DomainError> {
        let name = self.name.as_str();
        let recorded = self.recorded();
        let st = crate::locks::read(&self.app.region.state);
        let Some(r) = st.data.racks.get(name) else {
            return Err(DomainError::denied(format!(
                "rack '{name}' is no longer registered"
            )));
        };
        if r.revoked {
            return Err(DomainError::denied(format!("rack '{name}' was revoked")));
        }
        if recorded {
            match &r.session {
                Some(s) if s.session_id != self.session_id => {
                    return Err(DomainError::denied(format!(
                        "a newer session of rack '{name}' (on region {}) took over",
                        s.region_name
                    )))
                }
                _ => {}
            }
        }
        if !recorded {
            // Nothing before the session is recorded and this region caught up (see `record_start`).
            return Ok(Vec::new());
        }
        self.sent
            .retain(|id, _| st.pending_power_commands.contains(id));
        let mut out = Vec::new();
        // Power commands of one machine run one at a time, in order (a power plan's `boot-pxe` before its
        // `cycle`): a machine with an older pending command gets nothing newer until that one's result is
        // recorded.
        let mut busy: HashSet<&str> = HashSet::new();
        for id in &st.pending_power_commands {
            let Some(c) = st.data.power_commands.get(id) else {
                continue;
            };
            if !busy.insert(c.system_id.as_str()) {
                continue;
            }
            if self
                .sent
                .get(id)
                .is_some_and(|at| at.elapsed() < RESEND_AFTER)
            {
                continue;
            }
            let Some(m) = st.machine(&c.system_id) else {
                continue;
            };
            // Fenced: a command goes only to the rack it is routed to, even after its BMC moved on.
            if crate::apply::queue::route(c, Some(m)) != Some(name) {
                continue;
            }
            self.sent.insert(*id, Instant::now());
            out.push(DuePowerCommand {
                power_command: c.clone(),
                power: m.power.clone(),
            });
        }
        Ok(out)
    }

    /// Records a heartbeat when the session is recorded and the last one is [`HEARTBEAT_RECORD`] old (the
    /// rack beats more often than the log needs).
    /// Returns the write that records it when one is due (every [`HEARTBEAT_RECORD`]); the caller runs
    /// it and, once it succeeds, acknowledges the heartbeat to the rack (its lease runs from it).
    pub fn heartbeat(
        &mut self,
    ) -> Option<impl Future<Output = Result<(), DomainError>> + Send + 'static> {
        if !(self.recorded() && self.last_record.elapsed() >= HEARTBEAT_RECORD) {
            return None;
        }
        self.last_record = Instant::now();
        let op = Op::RackHeartbeat(op::RackHeartbeat {
            name: self.name.clone(),
            session_id: self.session_id.clone(),
        });
        let cmd = Command::new(self.actor.as_str(), Principal::Internal(Internal::Rack), op);
        let app = self.app.clone();
        Some(async move { app.region.write(cmd).await.map(|_| ()) })
    }

    /// Records a power command's result through Raft. `Ok` means the rack may forget it: recorded now
    /// (a late result of a command taken from the rack is recorded as refused), or unknown to the log (a
    /// command that no longer exists will never take a result). A result for a command this rack was
    /// never sent is refused before it is proposed (PermissionDenied; apply checks again).
    pub fn record_power_command_result(
        &self,
        r: PowerCommandResult,
    ) -> impl Future<Output = Result<(), DomainError>> + Send + 'static {
        let refused = {
            let st = crate::locks::read(&self.app.region.state);
            st.data
                .power_commands
                .get(&r.id)
                .and_then(|c| crate::apply::queue::reporter(&st, c, &self.name).err())
        };
        let op = Op::PowerResult(op::PowerResult {
            id: r.id,
            rack: self.name.clone(),
            success: r.success,
            error_kind: r.error_kind,
            message: r.message,
            power_state: r.power_state,
            next_boot: BootTokens::generate(),
        });
        let cmd = Command::new(self.actor.as_str(), Principal::Internal(Internal::Rack), op);
        let app = self.app.clone();
        async move {
            if let Some(e) = refused {
                return Err(e);
            }
            match app.region.write(cmd).await {
                Ok(_) => Ok(()),
                Err(DomainError {
                    code: ErrorCode::NotFound,
                    ..
                }) => Ok(()),
                Err(e) => Err(e),
            }
        }
    }

    /// Records the power states the rack's monitor read (at most [`MAX_OBSERVATIONS`], messages cut to
    /// 1,000 characters), once the session is recorded: in commands of at most
    /// [`OBSERVATIONS_PER_COMMAND`], proposed in order. Readings of BMCs the rack does not own are
    /// dropped before they are proposed (apply drops them too).
    pub fn observed(&self, items: impl IntoIterator<Item = PowerObservation>) {
        let st = crate::locks::read(&self.app.region.state);
        let owned = |i: &PowerObservation| {
            st.machine(&i.system_id)
                .is_some_and(|m| m.rack.as_deref() == Some(self.name.as_str()))
        };
        let items: Vec<PowerObservation> = items
            .into_iter()
            .take(MAX_OBSERVATIONS)
            .filter(owned)
            .map(|mut i| {
                if i.message.chars().nth(MAX_OBSERVATION_MESSAGE).is_some() {
                    i.message = i.message.chars().take(MAX_OBSERVATION_MESSAGE).collect();
                }
                i
            })
            .collect();
        drop(st);
        if self.recorded() && !items.is_empty() {
            let cmds: Vec<Command> = items
                .chunks(OBSERVATIONS_PER_COMMAND)
                .map(|chunk| {
                    let op = Op::PowerObserved(op::PowerObserved {
                        rack: self.name.clone(),
                        items: chunk.to_vec(),
                    });
                    Command::new(self.actor.as_str(), Principal::Internal(Internal::Rack), op)
                })
                .collect();
            let app = self.app.clone();
            tokio::spawn(async move {
                for cmd in cmds {
                    if let Err(e) = app.region.write(cmd).await {
                        tracing::debug!("recording power observations: {e}");
                    }
                }
            });
        }
    }

    /// The BMCs the rack owns and should monitor (drivers that reach a real BMC), when the list differs
    /// from the one last sent. A fingerprint is compared first, so this is cheap to call every poll tick:
    /// no list is built for nothing.
    pub fn bmcs_changed(&mut self) -> Option<Vec<OwnedBmc>> {
        use std::hash::{Hash, Hasher};
        let st = crate::locks::read(&self.app.region.state);
        let owned = || {
            st.by_rack
                .get(&self.name)
                .into_iter()
                .flatten()
                .filter_map(|id| st.machine(id))
                .filter(|m| crate::apply::queue::rack_driven(&m.power.driver))
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for m in owned() {
            m.system_id.hash(&mut h);
            m.power.hash(&mut h);
        }
        // Never 0, so an empty list is sent once too.
        let fp = h.finish() | 1;
        if fp == self.last_bmcs {
            return None;
        }
        self.last_bmcs = fp;
        Some(
            owned()
                .map(|m| OwnedBmc {
                    system_id: m.system_id.clone(),
                    power: m.power.clone(),
                })
                .collect(),
        )
    }

    /// Every region's cluster endpoint, when they changed since last sent.
    pub fn endpoints_changed(&mut self) -> Option<Vec<String>> {
        let now = self.app.cluster_endpoints();
        if now == self.last_endpoints {
            return None;
        }
        self.last_endpoints = now.clone();
        Some(now)
    }

    /// The boot configuration to send the rack, when it changed since last sent (see
    /// [`BootFeed::config_changed`]); nothing before the session is recorded and this region caught up
    /// with the record, so a lagging region never tells a secondary to take over from a live primary.
    pub fn boot_config_changed(&mut self) -> Option<RackBootConfig> {
        if !self.recorded() {
            return None;
        }
        let st = crate::locks::read(&self.app.region.state);
        let tick = Tick {
            now_ms: ingot_common::now_ms(),
            grace_ms: self.app.rack_grace_ms,
            now: Instant::now(),
        };
        self.boot.config_changed(&st, &self.name, tick)
    }

    /// The image files the rack should hold, when they changed since last sent (see
    /// [`super::prefetch::PrefetchFeed::changed`]); nothing before the session is recorded.
    pub fn cache_wanted_changed(&mut self) -> Option<Vec<super::prefetch::PrefetchFile>> {
        if !self.recorded() {
            return None;
        }
        let st = crate::locks::read(&self.app.region.state);
        self.prefetch.changed(&st, &self.name, Instant::now())
    }

    /// The leases to send the rack now (see [`BootFeed::leases_due`]): call after
    /// [`RackSessionState::boot_config_changed`] on the same tick.
    pub fn leases_due(&mut self) -> Vec<LeasesUpdate> {
        if !self.recorded() {
            return Vec::new();
        }
        let st = crate::locks::read(&self.app.region.state);
        self.boot.leases_due(&st, &self.name)
    }

    /// Records a batch of the rack's leases through Raft (at most [`MAX_LEASES_PER_COMMIT`], hostnames
    /// cut to [`MAX_LEASE_HOSTNAME`] bytes, each stamped with this rack): answers the refused ones with
    /// why. Batches are independent: the caller runs each on its own task, and the proposer packs those in
    /// flight into one log entry. An error means nothing was recorded (the rack sends the batch again).
    pub fn commit_leases(
        &self,
        batch: u64,
        mut leases: Vec<Lease>,
    ) -> impl Future<Output = Result<Vec<RefusedLease>, DomainError>> + Send + 'static {
        let too_many = leases.len() > MAX_LEASES_PER_COMMIT;
        let count = leases.len();
        for l in &mut leases {
            ingot_common::validate::truncate_text(&mut l.hostname, MAX_LEASE_HOSTNAME);
            l.rack = self.name.clone();
        }
        let op = Op::CommitLeases(op::CommitLeases {
            rack: self.name.clone(),
            batch,
            leases,
        });
        let cmd = Command::new(self.actor.as_str(), Principal::Internal(Internal::Rack), op);
        let app = self.app.clone();
        async move {
            if too_many {
                return Err(DomainError::invalid(
                    "lease_commit.leases",
                    format!("{count} leases in one batch, at most {MAX_LEASES_PER_COMMIT}: send smaller batches"),
                ));
            }
            if count == 0 {
                return Ok(Vec::new());
            }
            match app.region.write(cmd).await? {
                Reply::LeasesCommitted(refused) => Ok(refused),
                other => Err(super::unexpected(other)),
            }
        }
    }

    /// Enlists the unknown MACs the rack saw PXE-boot: filtered, rate-limited and given system ids by
    /// [`BootFeed::enlist`], then proposed on a task of their own (apply skips any MAC that became known
    /// meanwhile; a failure is logged, and the rack asks again).
    pub fn enlist(&mut self, asks: Vec<EnlistRequest>) {
        let machines = {
            let st = crate::locks::read(&self.app.region.state);
            self.boot.enlist(&st, &self.name, asks, Instant::now())
        };
        if machines.is_empty() {
            return;
        }
        let op = Op::EnlistMachines(op::EnlistMachines {
            rack: self.name.clone(),
            machines,
        });
        let cmd = Command::new(self.actor.as_str(), Principal::Internal(Internal::Rack), op);
        let app = self.app.clone();
        tokio::spawn(async move {
            if let Err(e) = app.region.write(cmd).await {
                tracing::debug!("enlisting PXE-booted machines: {e}");
            }
        });
    }

    /// What `key` should boot now ([`super::boot_intent::decide`] over this region's state: a script
    /// must come back within the rack's 3 s, and a state a few milliseconds old decides the same).
    /// Refused with `Unavailable` past [`super::boot_intent::INTENTS_PER_SECOND`] (the script retries).
    pub fn boot_intent(
        &mut self,
        key: &super::boot_intent::IntentKey,
    ) -> Result<super::boot_intent::BootIntentAnswer, DomainError> {
        if !self.intent_limit.take(Instant::now()) {
            return Err(DomainError::unavailable(
                "too many boot intents from this rack this second: ask again shortly",
            ));
        }
        let st = crate::locks::read(&self.app.region.state);
        Ok(super::boot_intent::decide(&st, key))
    }

    /// Records the rack's boot steps as machine events (at most
    /// [`op::MAX_BOOT_EVENTS_PER_OP`] per message, details cut at the edge), once the session is
    /// recorded, on a task of its own; messages past
    /// [`super::boot_intent::EVENT_MESSAGES_PER_SECOND`] are dropped (boot events are best effort: a
    /// storm must not fill the log). Returns whether the message was taken.
    pub fn record_boot_events(&mut self, events: Vec<op::BootEventRecord>) -> bool {
        if events.is_empty() || !self.recorded() || !self.event_limit.take(Instant::now()) {
            return false;
        }
        let op = Op::RecordBootEvents(op::RecordBootEvents {
            rack: self.name.clone(),
            events: events
                .into_iter()
                .take(op::MAX_BOOT_EVENTS_PER_OP)
                .collect(),
        });
        let cmd = Command::new(self.actor.as_str(), Principal::Internal(Internal::Rack), op);
        let app = self.app.clone();
        tokio::spawn(async move {
            if let Err(e) = app.region.write(cmd).await {
                tracing::debug!("recording boot events: {e}");
            }
        });
        true
    }

    /// Takes an agent's call relayed by this rack: the work to run on a task of its own (it waits for
    /// reads and writes of the log). Refused `Unavailable` before the session is recorded and past
    /// [`AGENT_CALLS_PER_SECOND`].
    pub fn agent_call(
        &mut self,
        req: super::agent::AgentRequest,
    ) -> Result<
        impl std::future::Future<Output = Result<super::agent::AgentReply, DomainError>>
            + Send
            + 'static,
        DomainError,
    > {
        if !self.recorded() {
            return Err(DomainError::unavailable(
                "the rack's session is not recorded yet: ask again shortly",
            ));
        }
        if !self.agent_limit.take(Instant::now()) {
            return Err(DomainError::unavailable(
                "too many agent calls from this rack this second: ask again shortly",
            ));
        }
        let (app, rack, actor) = (self.app.clone(), self.name.clone(), self.actor.clone());
        Ok(async move { app.agent_call(&rack, &actor, req).await })
    }

    /// Ends the session: records when the rack was last heard (its BMCs stay for the grace time after).
    pub fn end(self) {
        tracing::info!(rack = %self.name, session = %self.session_id, "rack session ended");
        let op = Op::RackDisconnected(op::RackDisconnected {
            name: self.name.clone(),
            session_id: self.session_id,
            last_seen_ms: self.last_seen_ms,
        });
        let cmd = Command::new(self.actor.as_str(), Principal::Internal(Internal::Rack), op);
        let app = self.app;
        tokio::spawn(async move {
            let _ = app.region.write(cmd).await;
        });
    }
}
