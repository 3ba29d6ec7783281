//! The boot service: the glue between the DHCP sockets, the engine and the region session.
//!
//! ```text
//!  server (receive loop) ──handle──► BootService ──lock──► engine.handle ──► Outcome
//!     │                               │ no commit: reply at once
//!     │                               │ commit:   Held{reply, on_refused, socket} ──► committer task
//!     ▼                               │ enlist:   ──► committer task (Enlist messages, <= 64 MACs)
//!  ReplySink (the socket it came in on)
//!
//!  committer task: pending ─(2 ms or 256 leases)─► batch ──LeaseCommit{batch}──► session (<= 8 in flight)
//!                  LeasesCommitted{batch, refused} ──► engine.committed / engine.refused
//!                                                  ──► held ACKs sent (NAKs for refused leases)
//!                  offline (no session): the engine answers renewals and known machines only; their
//!                  leases go to the journal (one fsync per group), then the replies are sent at once;
//!                  replayed as LeaseCommit batches on the next session, truncated once all answered.
//! ```
//!
//! Why an ACK waits for the region: leases live in the replicated log, so any rack serving a subnet (a
//! secondary taking over) sees every address handed out, and no address is given twice. Batching makes
//! that fast: the receive loop never waits (it hands the reply over), one `LeaseCommit` carries up to
//! [`ServiceSettings::batch_max`] leases gathered for at most [`ServiceSettings::batch_window`], and
//! several batches are in flight at once.
//!
//! Failure cases, and what happens:
//! - A batch unanswered for [`ServiceSettings::resend_after`], or in flight when the session broke, is
//!   sent again (on the next session). The region's apply is idempotent for the same lease, so a batch
//!   recorded twice records nothing twice.
//! - A held reply whose batch is not committed within [`ServiceSettings::hold_reply`] is never sent: the
//!   client retries (DHCP clients do, after ~4 s) and by then the lease is usually recorded. The lease is
//!   still committed.
//! - A refused lease (address held by another MAC, subnet not this rack's): the engine is told
//!   (`refused`) and the client gets the NAK.
//! - A whole batch failing (`LeasesCommitted.error`: no quorum) is sent again after a short pause.
//! - Cut off from every region (no session): the engine is told (`set_online(false)`) and answers only
//!   renewals and known machines. Those leases are journaled (fsynced) before their replies go out, so a
//!   crash loses no acknowledged lease; another rack may meanwhile have given the address to someone else
//!   — the region then refuses the replayed lease and the engine is told, so that client gets a NAK when
//!   it next renews.

use super::dhcp::engine::{EnlistRequest, Outcome, Outgoing, PxeAnswer, ServerPort, Via};
use super::dhcp::server::{PacketHandler, ReplySink};
use super::events::BootEventSink;
use super::journal::Journal;
use super::link::RegionLink;
use super::{BootConfig, ServedSubnet};
use ingot_common::image::BootStep;
use ingot_common::net::{Cidr, Lease};
use ingot_common::Mac;
use ingot_proto::rack::v1 as proto;
use ingot_proto::rack::v1::rack_message::Msg as RackMsg;
use ingot_proto::rack::v1::region_message::Msg as RegionMsg;
use ingot_proto::rack::v1::RackMessage;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// The engine as the service uses it: the DHCP decisions ([`super::dhcp::engine::Engine`] in the rack, a
/// fake in tests of this glue). Every call is short and synchronous; the service holds its lock only for
/// the call.
pub trait DhcpEngine: Send {
    /// Replaces what the rack serves (a new `BootConfig` from the region).
    fn set_config(&mut self, config: BootConfig);
    /// Leases of `subnet` recorded by the region: all of them (`full`) or the changed ones.
    fn set_leases(&mut self, subnet: Cidr, full: bool, leases: Vec<Lease>);
    /// Whether a region session is up; offline, only renewals and known machines are answered.
    fn set_online(&mut self, online: bool);
    /// Decides about one packet.
    fn handle(&mut self, packet: &[u8], via: &Via, now_ms: u64) -> Outcome;
    /// The region recorded `lease`.
    fn committed(&mut self, lease: &Lease);
    /// The region refused the lease of `ip` for `mac`.
    fn refused(&mut self, ip: Ipv4Addr, mac: Mac);
    /// Drops offers and leases that ran out by `now_ms`.
    fn expire(&mut self, now_ms: u64);
    /// How many leases the engine holds (for metrics).
    fn lease_count(&self) -> usize;
    /// The MAC holding (or last given) `ip`: who a TFTP client at that address is. `None` by default
    /// (an engine without a lease table).
    fn mac_of(&self, _ip: Ipv4Addr) -> Option<Mac> {
        None
    }
}

impl DhcpEngine for super::dhcp::engine::Engine {
    fn set_config(&mut self, config: BootConfig) {
        super::dhcp::engine::Engine::set_config(self, config)
    }
    fn set_leases(&mut self, subnet: Cidr, full: bool, leases: Vec<Lease>) {
        super::dhcp::engine::Engine::set_leases(self, subnet, full, leases)
    }
    fn set_online(&mut self, online: bool) {
        super::dhcp::engine::Engine::set_online(self, online)
    }
    fn handle(&mut self, packet: &[u8], via: &Via, now_ms: u64) -> Outcome {
        super::dhcp::engine::Engine::handle(self, packet, via, now_ms)
    }
    fn committed(&mut self, lease: &Lease) {
        super::dhcp::engine::Engine::committed(self, lease)
    }
    fn refused(&mut self, ip: Ipv4Addr, mac: Mac) {
        super::dhcp::engine::Engine::refused(self, ip, mac)
    }
    fn expire(&mut self, now_ms: u64) {
        super::dhcp::engine::Engine::expire(self, now_ms)
    }
    fn lease_count(&self) -> usize {
        super::dhcp::engine::Engine::lease_count(self)
    }
    fn mac_of(&self, ip: Ipv4Addr) -> Option<Mac> {
        self.table().lease(ip).map(|l| l.mac)
    }
}

/// Most leases one `LeaseCommit` carries by default: 256 leases of ~100 bytes stay far below a gRPC
/// message limit and one Raft entry, and at 5,000 DORA/s a batch still fills in ~50 ms at most.
pub const BATCH_MAX: usize = 256;
/// Most MACs one `Enlist` message carries (the region enlists each as a machine: keep entries small).
pub const ENLIST_MAX: usize = 64;
/// Most commits waiting in the rack (unbatched, queued or in flight) before new ones are dropped: a
/// region that stopped answering must not grow the rack's memory without bound (~1 KiB each), and a
/// backlog longer than the clients wait for their ACK (3 s) is work nobody benefits from: 16,384 is
/// 3 s at ~5,000 DORA/s.
pub const MAX_OUTSTANDING: usize = 16_384;
/// Most MACs waiting to be enlisted (a PXE storm of unknown machines while no region is reachable).
pub const MAX_ENLIST_QUEUED: usize = 4_096;

/// Timing and sizes of the commit path; [`Default`] holds the production values.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// How long the first lease of a batch may wait for others: the latency added to every ACK.
    pub batch_window: Duration,
    /// Most leases in one batch.
    pub batch_max: usize,
    /// Most batches sent and unanswered at once (the region commits them in parallel).
    pub max_in_flight: usize,
    /// A batch unanswered this long is sent again.
    pub resend_after: Duration,
    /// How long a reply may wait for its batch before it is dropped (the client retries).
    pub hold_reply: Duration,
    /// A batch the region failed as a whole is sent again after this pause.
    pub retry_failed_after: Duration,
    /// How often the engine drops expired offers and leases.
    pub expire_every: Duration,
    /// Most commits waiting in the rack ([`MAX_OUTSTANDING`]).
    pub max_outstanding: usize,
    /// This rack's name, written into the leases it commits and journals (`Lease.rack`; the region sets
    /// it again from the session's identity).
    pub rack: String,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            batch_window: Duration::from_millis(2),
            batch_max: BATCH_MAX,
            max_in_flight: 8,
            // Longer than a region's own retry of a write across elections (8 s): a re-send before
            // that only doubles the work of a region that is already slow.
            resend_after: Duration::from_secs(10),
            hold_reply: Duration::from_secs(3),
            retry_failed_after: Duration::from_millis(500),
            expire_every: Duration::from_secs(1),
            max_outstanding: MAX_OUTSTANDING,
            rack: String::new(),
        }
    }
}

/// Counters of the boot service, for metrics and tests. Monotonic since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootCounters {
    /// Datagrams handed to the engine.
    pub packets: u64,
    /// Replies sent (OFFER, ACK, NAK, INFORM answers...), at once or after their commit.
    pub replies: u64,
    /// Leases the engine asked to commit.
    pub commits: u64,
    /// `LeaseCommit` messages sent (re-sends included).
    pub batches: u64,
    /// Of those, re-sends (unanswered in time, or lost with a session).
    pub batches_resent: u64,
    /// Leases the region refused.
    pub refusals: u64,
    /// Leases acknowledged offline through the journal.
    pub journaled: u64,
    /// Journaled leases replayed to a region and answered.
    pub replayed: u64,
    /// Held replies dropped because their batch was not committed in time.
    pub held_expired: u64,
    /// MACs sent in `Enlist` messages.
    pub enlisted: u64,
    /// Packets or replies dropped, by reason (the engine's reasons and the service's own).
    pub drops: BTreeMap<String, u64>,
}

/// The live counters behind [`BootCounters`].
#[derive(Default)]
struct Counters {
    packets: AtomicU64,
    replies: AtomicU64,
    commits: AtomicU64,
    batches: AtomicU64,
    batches_resent: AtomicU64,
    refusals: AtomicU64,
    journaled: AtomicU64,
    replayed: AtomicU64,
    held_expired: AtomicU64,
    enlisted: AtomicU64,
    drops: Mutex<BTreeMap<&'static str, u64>>,
}

/// Adds `n` to a counter.
fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    fn drop_for(&self, why: &'static str) {
        *lock(&self.drops).entry(why).or_default() += 1;
    }
    fn snapshot(&self) -> BootCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BootCounters {
            packets: get(&self.packets),
            replies: get(&self.replies),
            commits: get(&self.commits),
            batches: get(&self.batches),
            batches_resent: get(&self.batches_resent),
            refusals: get(&self.refusals),
            journaled: get(&self.journaled),
            replayed: get(&self.replayed),
            held_expired: get(&self.held_expired),
            enlisted: get(&self.enlisted),
            drops: lock(&self.drops)
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
        }
    }
}

/// Locks a mutex, ignoring poisoning: the engine's tables stay usable if a holder panicked, and a rack
/// that stops answering DHCP would be worse.
fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Milliseconds since the Unix epoch (lease times are wall-clock: they are shown to operators and
/// compared across racks).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The engine and whether it was last told a session is up.
struct EngineSlot {
    engine: Box<dyn DhcpEngine>,
    online: bool,
}

/// A reply waiting for its lease's commit, with the socket to send it from.
struct Held {
    /// The ACK (None for RELEASE/DECLINE, which are not answered).
    reply: Option<Outgoing>,
    /// The NAK to send instead if the region refuses the lease.
    on_refused: Option<Outgoing>,
    /// The socket the request came in on.
    sink: Arc<dyn ReplySink>,
    /// After this the client has given up on this exchange: send nothing.
    until: Instant,
}

/// One lease to commit.
struct Entry {
    lease: Lease,
    /// The reply waiting for it; `None` for journaled leases (answered already).
    held: Option<Held>,
    /// Whether it is in the journal (its answer lets the journal shrink).
    journaled: bool,
    /// The engine decided it offline (renewal or known machine): it may be journaled and answered
    /// before a region records it.
    offline: bool,
}

/// A batch of leases: one `LeaseCommit`.
struct Batch {
    /// The number echoed in `LeasesCommitted` (kept across re-sends).
    id: u64,
    entries: Vec<Entry>,
    /// When it was last sent (None: not sent on the current session).
    sent_at: Option<Instant>,
    /// Not to be sent before this (after a whole-batch failure).
    not_before: Option<Instant>,
    /// Whether it was sent before (a send now is a re-send).
    sent_before: bool,
}

/// What the receive path hands the committer task.
enum Item {
    Commit(Entry),
    Enlist(EnlistRequest),
}

/// What the session (and the service's own blocking tasks) tell the committer task.
enum Control {
    /// A session is up: send on `tx`.
    Opened {
        tx: mpsc::Sender<RackMessage>,
        generation: u64,
    },
    /// Session `generation` ended.
    Closed { generation: u64 },
    /// The region's answer to a batch.
    Committed(proto::LeasesCommitted),
    /// A journal group was written (or not).
    Journaled {
        group: Vec<Entry>,
        result: Result<(), String>,
    },
    /// The journal was compacted (or not).
    Compacted(Result<(), String>),
}

/// What the receive path and the committer share.
struct Shared {
    engine: Mutex<EngineSlot>,
    counters: Counters,
    /// Live commits accepted and not yet resolved (committed, refused or journaled).
    outstanding: AtomicUsize,
}

/// The boot service (see the module docs). Cheap to share: the server's receive loops and the session
/// hold it in an `Arc`.
pub struct BootService {
    shared: Arc<Shared>,
    /// The boot path's other traffic on the session (boot intents for the HTTP server, boot events).
    link: Arc<RegionLink>,
    /// Boot steps for the region (DHCP answers to PXE clients here; the HTTP and TFTP servers push too).
    events: Arc<BootEventSink>,
    settings: ServiceSettings,
    items: mpsc::Sender<Item>,
    control: mpsc::UnboundedSender<Control>,
    generation: AtomicU64,
    /// The image cache, told what the region wants held (`CacheWanted`).
    cache: std::sync::OnceLock<Arc<super::cache::ImageCache>>,
}

impl std::fmt::Debug for BootService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootService")
            .field("counters", &self.shared.counters.snapshot())
            .finish_non_exhaustive()
    }
}

/// Held by the session while it is up; dropping it tells the service the session ended (on every path
/// out of the session loop).
pub struct SessionGuard {
    service: Arc<BootService>,
    generation: u64,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.service.set_online(false);
        self.service.link.closed(self.generation);
        let _ = self.service.control.send(Control::Closed {
            generation: self.generation,
        });
    }
}

impl BootService {
    /// Starts the service: the engine is told it is offline until a session opens, the journal's
    /// leases (acknowledged offline by an earlier run) are given to the engine as its own and queued for
    /// replay, and the committer task runs until `shutdown`. Needs a tokio runtime.
    pub fn start(
        settings: ServiceSettings,
        mut engine: Box<dyn DhcpEngine>,
        journal: (Journal, Vec<Lease>),
        shutdown: watch::Receiver<bool>,
    ) -> Arc<BootService> {
        let (journal, replay) = journal;
        engine.set_online(false);
        for l in &replay {
            engine.committed(l);
        }
        if !replay.is_empty() {
            tracing::info!(
                leases = replay.len(),
                path = %journal.path().display(),
                "lease journal holds leases acknowledged while offline: replayed to the next region"
            );
        }
        let shared = Arc::new(Shared {
            engine: Mutex::new(EngineSlot {
                engine,
                online: false,
            }),
            counters: Counters::default(),
            outstanding: AtomicUsize::new(0),
        });
        let (items_tx, items) = mpsc::channel(settings.max_outstanding.max(1));
        let (control_tx, control) = mpsc::unbounded_channel();
        let link = RegionLink::new();
        let events = BootEventSink::new();
        tokio::spawn(events.clone().run(link.clone(), shutdown.clone()));
        let service = Arc::new(BootService {
            shared: shared.clone(),
            link,
            events,
            settings: settings.clone(),
            items: items_tx,
            control: control_tx.clone(),
            generation: AtomicU64::new(0),
            cache: std::sync::OnceLock::new(),
        });
        let journal_dirty = !journal.is_empty();
        let committer = Committer {
            settings,
            shared,
            control_tx,
            session: None,
            pending: Vec::new(),
            pending_since: None,
            queued: VecDeque::new(),
            in_flight: BTreeMap::new(),
            next_batch: 1,
            retry_at: None,
            journal: Arc::new(Mutex::new(journal)),
            replay: replay
                .into_iter()
                .map(|lease| Entry {
                    lease,
                    held: None,
                    journaled: true,
                    offline: true,
                })
                .collect(),
            journal_outstanding: 0,
            journal_writes: 0,
            journal_dirty,
            compacting: false,
            offline_group: Vec::new(),
            offline_since: None,
            enlist: VecDeque::new(),
            enlist_queued: HashSet::new(),
            enlist_since: None,
            next_expire: Instant::now(),
        };
        let mut c = committer;
        c.journal_outstanding = c.replay.len();
        tokio::spawn(c.run(items, control, shutdown));
        service
    }

    /// A session with a region is up: commits and enlistments go out on `tx`, the engine answers
    /// everyone again. Keep the guard for as long as the session lasts.
    pub fn session_opened(self: &Arc<Self>, tx: mpsc::Sender<RackMessage>) -> SessionGuard {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        self.set_online(true);
        self.link.opened(generation, tx.clone());
        let _ = self.control.send(Control::Opened { tx, generation });
        SessionGuard {
            service: self.clone(),
            generation,
        }
    }

    fn set_online(&self, online: bool) {
        let mut slot = lock(&self.shared.engine);
        if slot.online != online {
            slot.online = online;
            slot.engine.set_online(online);
            tracing::info!(
                online,
                "DHCP {}",
                if online {
                    "online: answering every client"
                } else {
                    "offline (no region session): answering renewals and known machines only"
                }
            );
        }
    }

    /// Handles a boot message from the region (`BootConfig`, `Leases`, `LeasesCommitted`, `CacheWanted`,
    /// `BootIntent` and `AgentAnswer` for the link's waiters); other messages
    /// are ignored. Malformed parts are logged and skipped, never fatal.
    pub fn on_region_message(&self, msg: RegionMsg) {
        match msg {
            RegionMsg::BootConfig(b) => {
                let config = boot_config_from_proto(b);
                tracing::info!(
                    subnets = config.subnets.len(),
                    known = config.known.len(),
                    "boot configuration from the region"
                );
                lock(&self.shared.engine).engine.set_config(config);
            }
            RegionMsg::Leases(l) => {
                let subnet: Cidr = match l.subnet.parse() {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("Leases message for subnet {:?} ignored: {e}", l.subnet);
                        return;
                    }
                };
                let leases = leases_from_proto(&l.leases, Some(subnet));
                lock(&self.shared.engine)
                    .engine
                    .set_leases(subnet, l.full, leases);
            }
            RegionMsg::LeasesCommitted(c) => {
                let _ = self.control.send(Control::Committed(c));
            }
            RegionMsg::CacheWanted(w) => {
                if let Some(cache) = self.cache.get() {
                    cache.set_wanted(super::cache::WantedFile::from_cache_wanted(&w));
                }
            }
            RegionMsg::BootIntent(r) => self.link.on_reply(*r),
            RegionMsg::AgentAnswer(a) => self.link.on_agent_answer(*a),
            _ => {}
        }
    }

    /// Gives the service the image cache, which `CacheWanted` messages then go to (once; a second call
    /// is ignored).
    pub fn attach_cache(&self, cache: Arc<super::cache::ImageCache>) {
        let _ = self.cache.set(cache);
    }

    /// The boot path's link to the region session: the HTTP server asks boot intents through it.
    pub fn link(&self) -> &Arc<RegionLink> {
        &self.link
    }

    /// The boot event sink: the HTTP server (and the TFTP server's transfer callbacks) push steps here.
    pub fn events(&self) -> &Arc<BootEventSink> {
        &self.events
    }

    /// The MAC holding (or last given) `ip` in this rack's lease table: who a TFTP or HTTP client at that
    /// address is, for its boot events.
    pub fn mac_of(&self, ip: Ipv4Addr) -> Option<Mac> {
        lock(&self.shared.engine).engine.mac_of(ip)
    }

    /// The TFTP server's transfer hook: a transfer of a client this rack leased an address to becomes a
    /// boot event of its MAC (started, finished with bytes, aborted with why). Refusals are not events
    /// (iPXE probes for files that need not exist); transfers of unknown addresses are only counted by
    /// the TFTP server.
    pub fn tftp_hook(self: &Arc<Self>) -> super::tftp::server::TransferHook {
        use super::tftp::server::{TransferHook, TransferOutcome};
        let me = Arc::downgrade(self);
        TransferHook::new(move |e| {
            let Some(me) = me.upgrade() else { return };
            let std::net::IpAddr::V4(ip) = e.client.ip() else {
                return;
            };
            let Some(mac) = me.mac_of(ip) else { return };
            let size = e.size.unwrap_or(0);
            let (step, detail) = match &e.outcome {
                TransferOutcome::Started => (
                    BootStep::FileStarted,
                    format!("{} ({size} bytes) over tftp", e.file),
                ),
                TransferOutcome::Finished => (
                    BootStep::FileFinished,
                    format!("{} ({} bytes) over tftp", e.file, e.bytes),
                ),
                TransferOutcome::Aborted { reason } => (
                    BootStep::FileAborted,
                    format!(
                        "{} over tftp aborted after {} of {size} bytes: {reason}",
                        e.file, e.bytes
                    ),
                ),
                TransferOutcome::Refused { .. } => return,
            };
            me.events.push(mac, step, detail);
        })
    }

    /// The counters so far.
    pub fn counters(&self) -> BootCounters {
        self.shared.counters.snapshot()
    }

    /// How many leases the engine holds.
    pub fn lease_count(&self) -> usize {
        lock(&self.shared.engine).engine.lease_count()
    }

    /// Acts on the engine's outcome for one packet.
    fn dispatch(&self, outcome: Outcome, offline: bool, sink: &Arc<dyn ReplySink>) {
        let c = &self.shared.counters;
        if let Some(why) = outcome.dropped {
            c.drop_for(why);
        }
        if let Some(p) = outcome.pxe {
            self.events.push(
                p.mac,
                ingot_common::image::BootStep::Dhcp,
                pxe_detail(&p, outcome.commit.as_ref()),
            );
        }
        if let Some(e) = outcome.enlist {
            if self.items.try_send(Item::Enlist(e)).is_err() {
                c.drop_for("enlist-queue-full");
            }
        }
        let Some(mut lease) = outcome.commit else {
            if let Some(r) = outcome.reply {
                send_reply(c, sink.as_ref(), &r);
            }
            return;
        };
        bump(&c.commits, 1);
        if lease.rack.is_empty() {
            lease.rack.clone_from(&self.settings.rack);
        }
        if self.shared.outstanding.load(Ordering::Relaxed) >= self.settings.max_outstanding {
            c.drop_for("commit-queue-full");
            return;
        }
        let entry = Entry {
            lease,
            held: Some(Held {
                reply: outcome.reply,
                on_refused: outcome.on_refused,
                sink: sink.clone(),
                until: Instant::now() + self.settings.hold_reply,
            }),
            journaled: false,
            offline,
        };
        self.shared.outstanding.fetch_add(1, Ordering::Relaxed);
        if self.items.try_send(Item::Commit(entry)).is_err() {
            self.shared.outstanding.fetch_sub(1, Ordering::Relaxed);
            c.drop_for("commit-queue-full");
        }
    }
}

/// The detail of a DHCP boot event: the address and subnet (or the boot server's answer) and the client.
fn pxe_detail(p: &PxeAnswer, lease: Option<&Lease>) -> String {
    let client = if p.ipxe { "iPXE" } else { "PXE firmware" };
    match lease {
        Some(l) => format!("{} on {} to {client}", l.ip, l.subnet),
        None if p.port == ServerPort::ProxyDhcp => {
            format!("boot file from the PXE boot server to {client}")
        }
        None => format!("boot options to {client}"),
    }
}

/// Sends one reply, counting it.
fn send_reply(c: &Counters, sink: &dyn ReplySink, out: &Outgoing) {
    match sink.send(out) {
        Ok(()) => bump(&c.replies, 1),
        Err(e) => {
            tracing::debug!("DHCP reply not sent: {e}");
            c.drop_for("send-failed");
        }
    }
}

impl PacketHandler for BootService {
    fn handle(&self, packet: &[u8], via: &Via, reply: &Arc<dyn ReplySink>) {
        bump(&self.shared.counters.packets, 1);
        let (outcome, online) = {
            let mut slot = lock(&self.shared.engine);
            let online = slot.online;
            (slot.engine.handle(packet, via, now_ms()), online)
        };
        self.dispatch(outcome, !online, reply);
    }

    fn dropped(&self, why: &'static str) {
        self.shared.counters.drop_for(why);
    }
}

/// The current session, as the committer sees it.
struct Session {
    tx: mpsc::Sender<RackMessage>,
    generation: u64,
}

/// The committer task's state (see the module docs).
struct Committer {
    settings: ServiceSettings,
    shared: Arc<Shared>,
    /// For the blocking journal tasks to report back.
    control_tx: mpsc::UnboundedSender<Control>,
    session: Option<Session>,
    /// Leases not in a batch yet.
    pending: Vec<Entry>,
    /// When the oldest of `pending` arrived.
    pending_since: Option<Instant>,
    /// Batches waiting to be sent (a session, a free in-flight slot, their `not_before`).
    queued: VecDeque<Batch>,
    /// Batches sent on the current session and unanswered, by id.
    in_flight: BTreeMap<u64, Batch>,
    next_batch: u64,
    /// The session's channel was full: try again then.
    retry_at: Option<Instant>,
    journal: Arc<Mutex<Journal>>,
    /// Journaled leases not yet in a batch (sent once a session is up).
    replay: Vec<Entry>,
    /// Journaled leases not yet answered by a region.
    journal_outstanding: usize,
    /// Journal appends running.
    journal_writes: usize,
    /// Whether the file may hold leases (compaction is due once all are answered).
    journal_dirty: bool,
    /// A compaction is running: no append starts meanwhile (it would be truncated away).
    compacting: bool,
    /// Offline leases waiting for their group's fsync.
    offline_group: Vec<Entry>,
    offline_since: Option<Instant>,
    /// MACs to enlist, oldest first, and the set of them (one request per MAC while queued).
    enlist: VecDeque<EnlistRequest>,
    enlist_queued: HashSet<Mac>,
    enlist_since: Option<Instant>,
    next_expire: Instant,
}

impl Committer {
    async fn run(
        mut self,
        mut items: mpsc::Receiver<Item>,
        mut control: mpsc::UnboundedReceiver<Control>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let wake = self.next_wake(Instant::now());
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|v| *v) => break,
                Some(c) = control.recv() => self.on_control(c),
                Some(item) = items.recv() => {
                    self.on_item(item);
                    // Take whatever else arrived without a turn of the loop per packet.
                    for _ in 0..self.settings.batch_max {
                        match items.try_recv() {
                            Ok(item) => self.on_item(item),
                            Err(_) => break,
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            self.tick(Instant::now());
        }
    }

    /// When something is due next.
    fn next_wake(&self, now: Instant) -> Instant {
        let w = self.settings.batch_window;
        let mut wake = self.next_expire;
        let mut at = |t: Option<Instant>| {
            if let Some(t) = t {
                wake = wake.min(t);
            }
        };
        at(self.pending_since.map(|t| t + w));
        // While a compaction runs the group waits for its report (which wakes the loop anyway).
        if !self.compacting {
            at(self.offline_since.map(|t| t + w));
        }
        if self.session.is_some() {
            at(self.enlist_since.map(|t| t + w));
            if self.retry_at.is_some() {
                // The session's queue was full or closing: nothing to send before then.
                at(self.retry_at);
            } else if self.in_flight.len() < self.settings.max_in_flight {
                at(self.queued.front().map(|b| b.not_before.unwrap_or(now)));
            }
            at(self
                .in_flight
                .values()
                .filter_map(|b| b.sent_at)
                .min()
                .map(|t| t + self.settings.resend_after));
        }
        wake.max(now)
    }

    fn on_item(&mut self, item: Item) {
        match item {
            Item::Commit(e) => {
                // Decided offline and still offline: journal, then answer at once.
                if e.offline && self.session.is_none() {
                    self.offline_since.get_or_insert_with(Instant::now);
                    self.offline_group.push(e);
                } else {
                    self.pending_since.get_or_insert_with(Instant::now);
                    self.pending.push(e);
                }
            }
            Item::Enlist(r) => {
                if self.enlist_queued.contains(&r.mac) {
                    return;
                }
                if self.enlist.len() >= MAX_ENLIST_QUEUED {
                    self.shared.counters.drop_for("enlist-queue-full");
                    return;
                }
                self.enlist_queued.insert(r.mac);
                self.enlist_since.get_or_insert_with(Instant::now);
                self.enlist.push_back(r);
            }
        }
    }

    fn on_control(&mut self, c: Control) {
        match c {
            Control::Opened { tx, generation } => {
                self.session = Some(Session { tx, generation });
                self.retry_at = None;
                // Anything still marked in flight belongs to an older session.
                self.requeue_in_flight();
            }
            Control::Closed { generation } => {
                if self.session.as_ref().map(|s| s.generation) == Some(generation) {
                    self.session = None;
                    self.requeue_in_flight();
                }
            }
            Control::Committed(c) => self.on_committed(c),
            Control::Journaled { group, result } => self.on_journaled(group, result),
            Control::Compacted(result) => {
                self.compacting = false;
                match result {
                    Ok(()) => self.journal_dirty = false,
                    Err(e) => tracing::warn!("{e}; it is replayed again after a restart (harmless: the region's apply is idempotent)"),
                }
            }
        }
    }

    /// Puts every in-flight batch back at the front of the queue, oldest first: sent again on the next
    /// (or this new) session.
    fn requeue_in_flight(&mut self) {
        let batches = std::mem::take(&mut self.in_flight);
        for (_, mut b) in batches.into_iter().rev() {
            b.sent_at = None;
            self.queued.push_front(b);
        }
    }

    /// Does whatever is due at `now`.
    fn tick(&mut self, now: Instant) {
        let s = self.settings.clone();
        // Pending leases → batches.
        if let Some(since) = self.pending_since {
            if self.pending.len() >= s.batch_max || now >= since + s.batch_window {
                self.batch_pending();
            }
        }
        // Journaled leases → batches, once a region can answer them.
        if self.session.is_some() && !self.replay.is_empty() {
            let replay = std::mem::take(&mut self.replay);
            self.form_batches(replay);
        }
        // Offline group → the journal.
        if let Some(since) = self.offline_since {
            if !self.compacting
                && (self.offline_group.len() >= s.batch_max || now >= since + s.batch_window)
            {
                self.write_offline_group();
            }
        }
        // Batches unanswered too long → again.
        let resend_after = s.resend_after;
        let late: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, b)| b.sent_at.is_some_and(|t| now >= t + resend_after))
            .map(|(id, _)| *id)
            .collect();
        for id in late.into_iter().rev() {
            if let Some(mut b) = self.in_flight.remove(&id) {
                tracing::info!(
                    batch = id,
                    leases = b.entries.len(),
                    "lease batch unanswered for {} ms: sending it again",
                    resend_after.as_millis()
                );
                b.sent_at = None;
                self.queued.push_front(b);
            }
        }
        self.send_batches(now);
        self.send_enlist(now);
        if now >= self.next_expire {
            self.next_expire = now + self.settings.expire_every;
            lock(&self.shared.engine).engine.expire(now_ms());
        }
        self.maybe_compact();
    }

    fn batch_pending(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        self.pending_since = None;
        self.form_batches(pending);
    }

    /// Cuts `entries` into batches at the back of the queue.
    fn form_batches(&mut self, entries: Vec<Entry>) {
        let max = self.settings.batch_max.max(1);
        let mut it = entries.into_iter().peekable();
        while it.peek().is_some() {
            let chunk: Vec<Entry> = it.by_ref().take(max).collect();
            let id = self.next_batch;
            self.next_batch += 1;
            self.queued.push_back(Batch {
                id,
                entries: chunk,
                sent_at: None,
                not_before: None,
                sent_before: false,
            });
        }
    }

    /// Load shedding: drops from a batch never sent the leases whose client stopped waiting for its ACK
    /// (its hold expired while the batch queued behind a slow region) — committing them would only add
    /// work for an answer nobody reads, and a backlog of such commits is how an overloaded region stays
    /// overloaded. The engine forgets their addresses (the client asks again and gets a fresh exchange).
    /// Releases, declines and journaled leases are kept. Returns whether the batch is now empty.
    fn shed_expired(&self, b: &mut Batch, now: Instant) -> bool {
        let before = b.entries.len();
        let mut shed = Vec::new();
        b.entries.retain(|e| {
            let stale = !e.journaled
                && e.held
                    .as_ref()
                    .is_some_and(|h| h.reply.is_some() && now >= h.until);
            if stale {
                shed.push((e.lease.ip, e.lease.mac));
            }
            !stale
        });
        if !shed.is_empty() {
            let n = shed.len() as u64;
            {
                let mut g = lock(&self.shared.engine);
                for (ip, mac) in shed {
                    g.engine.refused(ip, mac);
                }
            }
            self.shared
                .outstanding
                .fetch_sub(before - b.entries.len(), Ordering::Relaxed);
            let c = &self.shared.counters;
            bump(&c.held_expired, n);
            *lock(&c.drops).entry("expired-before-commit").or_default() += n;
        }
        b.entries.is_empty()
    }

    /// Sends queued batches while the session has room.
    fn send_batches(&mut self, now: Instant) {
        let Some(session) = &self.session else {
            return;
        };
        if self.retry_at.is_some_and(|t| now < t) {
            return;
        }
        self.retry_at = None;
        while self.in_flight.len() < self.settings.max_in_flight {
            let Some(mut b) = self.queued.pop_front() else {
                break;
            };
            if b.not_before.is_some_and(|t| now < t) {
                self.queued.push_front(b);
                break;
            }
            if !b.sent_before && self.shed_expired(&mut b, now) {
                continue;
            }
            let msg = RackMessage {
                msg: Some(RackMsg::LeaseCommit(proto::LeaseCommit {
                    batch: b.id,
                    leases: b
                        .entries
                        .iter()
                        .map(|e| ingot_proto::convert::lease_to_rack(&e.lease))
                        .collect(),
                })),
            };
            match session.tx.try_send(msg) {
                Ok(()) => {
                    let c = &self.shared.counters;
                    bump(&c.batches, 1);
                    if b.sent_before {
                        bump(&c.batches_resent, 1);
                    }
                    b.sent_before = true;
                    b.sent_at = Some(now);
                    b.not_before = None;
                    self.in_flight.insert(b.id, b);
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // The session's outgoing queue is full: try again shortly.
                    self.queued.push_front(b);
                    self.retry_at = Some(now + Duration::from_millis(5));
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    // The session is ending; its guard tells us so (until then, look again shortly).
                    self.queued.push_front(b);
                    self.retry_at = Some(now + Duration::from_millis(5));
                    break;
                }
            }
        }
    }

    /// Sends queued enlistments (≤ [`ENLIST_MAX`] MACs a message) once their window passed.
    fn send_enlist(&mut self, now: Instant) {
        let Some(session) = &self.session else {
            return;
        };
        let Some(since) = self.enlist_since else {
            return;
        };
        if self.enlist.len() < ENLIST_MAX && now < since + self.settings.batch_window {
            return;
        }
        while !self.enlist.is_empty() {
            let n = self.enlist.len().min(ENLIST_MAX);
            let macs: Vec<proto::EnlistMac> = self
                .enlist
                .iter()
                .take(n)
                .map(|r| proto::EnlistMac {
                    mac: r.mac.to_string(),
                    arch: r.arch.as_str().to_string(),
                    subnet: r.subnet.to_string(),
                })
                .collect();
            let msg = RackMessage {
                msg: Some(RackMsg::Enlist(proto::Enlist { macs })),
            };
            if session.tx.try_send(msg).is_err() {
                // Full or closing: keep them for the next turn or session.
                self.enlist_since = Some(now);
                return;
            }
            bump(&self.shared.counters.enlisted, n as u64);
            for r in self.enlist.drain(..n) {
                self.enlist_queued.remove(&r.mac);
            }
        }
        self.enlist_since = None;
    }

    /// Writes the offline group to the journal from a blocking task; its replies go out when it reports.
    fn write_offline_group(&mut self) {
        let group = std::mem::take(&mut self.offline_group);
        self.offline_since = None;
        if group.is_empty() {
            return;
        }
        self.journal_writes += 1;
        let journal = self.journal.clone();
        let tx = self.control_tx.clone();
        tokio::task::spawn_blocking(move || {
            let leases: Vec<Lease> = group.iter().map(|e| e.lease.clone()).collect();
            let result = lock(&journal).append(&leases).map_err(|e| e.to_string());
            let _ = tx.send(Control::Journaled { group, result });
        });
    }

    fn on_journaled(&mut self, group: Vec<Entry>, result: Result<(), String>) {
        self.journal_writes = self.journal_writes.saturating_sub(1);
        let c = &self.shared.counters;
        match result {
            Ok(()) => {
                self.journal_dirty = true;
                let n = group.len();
                for mut e in group {
                    if let Some(h) = e.held.take() {
                        if let Some(r) = &h.reply {
                            send_reply(c, h.sink.as_ref(), r);
                        }
                    }
                    e.journaled = true;
                    self.replay.push(e);
                }
                bump(&c.journaled, n as u64);
                self.journal_outstanding += n;
                self.shared.outstanding.fetch_sub(n, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(
                    leases = group.len(),
                    "{e}; these clients are not answered now, their leases are committed when a region is reachable"
                );
                for _ in &group {
                    c.drop_for("journal-failed");
                }
                self.pending_since.get_or_insert_with(Instant::now);
                self.pending.extend(group);
            }
        }
    }

    fn on_committed(&mut self, answer: proto::LeasesCommitted) {
        let Some(mut batch) = self.in_flight.remove(&answer.batch) else {
            tracing::debug!(
                batch = answer.batch,
                "answer to a batch not in flight (answered already)"
            );
            return;
        };
        let now = Instant::now();
        if !answer.error.is_empty() {
            tracing::warn!(
                batch = batch.id,
                leases = batch.entries.len(),
                "the region recorded none of a lease batch ({}); sending it again in {} ms",
                answer.error,
                self.settings.retry_failed_after.as_millis()
            );
            batch.sent_at = None;
            batch.not_before = Some(now + self.settings.retry_failed_after);
            self.queued.push_front(batch);
            return;
        }
        let refused: HashMap<Ipv4Addr, &str> = answer
            .refused
            .iter()
            .filter_map(|r| Some((r.ip.parse().ok()?, r.reason.as_str())))
            .collect();
        {
            let mut slot = lock(&self.shared.engine);
            for e in &batch.entries {
                if refused.contains_key(&e.lease.ip) {
                    slot.engine.refused(e.lease.ip, e.lease.mac);
                } else {
                    slot.engine.committed(&e.lease);
                }
            }
        }
        let c = &self.shared.counters;
        let mut live = 0usize;
        let mut journaled = 0usize;
        for e in batch.entries {
            let reason = refused.get(&e.lease.ip);
            if let Some(reason) = reason {
                bump(&c.refusals, 1);
                tracing::info!(ip = %e.lease.ip, mac = %e.lease.mac, "the region refused a lease: {reason}");
            }
            if e.journaled {
                journaled += 1;
            }
            let Some(h) = e.held else {
                continue;
            };
            live += 1;
            if now > h.until {
                bump(&c.held_expired, 1);
                continue;
            }
            let out = if reason.is_some() {
                h.on_refused.as_ref()
            } else {
                h.reply.as_ref()
            };
            if let Some(out) = out {
                send_reply(c, h.sink.as_ref(), out);
            }
        }
        self.shared.outstanding.fetch_sub(live, Ordering::Relaxed);
        if journaled > 0 {
            bump(&c.replayed, journaled as u64);
            self.journal_outstanding = self.journal_outstanding.saturating_sub(journaled);
        }
    }

    /// Truncates the journal once every lease in it was answered by a region and no append runs.
    fn maybe_compact(&mut self) {
        if !self.journal_dirty
            || self.compacting
            || self.journal_outstanding > 0
            || self.journal_writes > 0
            || !self.offline_group.is_empty()
        {
            return;
        }
        self.compacting = true;
        let journal = self.journal.clone();
        let tx = self.control_tx.clone();
        tokio::task::spawn_blocking(move || {
            let result = lock(&journal).compact(&[]).map_err(|e| e.to_string());
            if result.is_ok() {
                tracing::info!("lease journal replayed and truncated");
            }
            let _ = tx.send(Control::Compacted(result));
        });
    }
}

/// A lease from the wire; `Err` names the bad field (one parser with the region:
/// `ingot_proto::convert::lease_from_rack`), and a lease outside its own subnet is refused too.
pub fn lease_from_proto(l: &proto::Lease) -> Result<Lease, String> {
    let lease = ingot_proto::convert::lease_from_rack(l).map_err(|e| e.message)?;
    if !lease.subnet.contains(lease.ip) {
        return Err(format!(
            "ip {} is outside its subnet {}",
            lease.ip, lease.subnet
        ));
    }
    Ok(lease)
}

/// The well-formed leases of a `Leases` message (of `subnet`, when given); others are logged and skipped.
fn leases_from_proto(leases: &[proto::Lease], subnet: Option<Cidr>) -> Vec<Lease> {
    leases
        .iter()
        .filter_map(|l| match lease_from_proto(l) {
            Ok(l) if subnet.is_none_or(|s| s == l.subnet) => Some(l),
            Ok(l) => {
                tracing::warn!(ip = %l.ip, "lease of subnet {} in another subnet's message: skipped", l.subnet);
                None
            }
            Err(e) => {
                tracing::warn!("lease from the region skipped: {e}");
                None
            }
        })
        .collect()
}

/// A subnet as the region sent it, parsed with the common parsers; `Err` names the bad field.
pub fn subnet_from_proto(c: &proto::SubnetConfig) -> Result<ServedSubnet, String> {
    let (subnet, role, active) =
        ingot_proto::convert::subnet_config_from_rack(c).map_err(|e| e.message)?;
    Ok(ServedSubnet {
        subnet,
        role,
        active,
    })
}

/// The region's `BootConfig` in domain types: subnets and MACs that do not parse are logged and skipped
/// (a region newer than this rack, or a bug): the rest is served.
pub fn boot_config_from_proto(b: proto::BootConfig) -> BootConfig {
    let mut subnets = Vec::with_capacity(b.subnets.len());
    for s in &b.subnets {
        match subnet_from_proto(s) {
            Ok(s) => subnets.push(s),
            Err(e) => tracing::warn!("subnet {:?} from the region not served: {e}", s.cidr),
        }
    }
    let mut known = HashMap::with_capacity(b.known.len());
    let mut bad = 0usize;
    for k in b.known {
        match k.mac.parse::<Mac>() {
            Ok(m) => {
                known.insert(m, k.system_id);
            }
            Err(_) => bad += 1,
        }
    }
    if bad > 0 {
        tracing::warn!(bad, "known MACs from the region that do not parse: skipped");
    }
    BootConfig { subnets, known }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ingot_common::net::{LeaseState, SubnetRole, DEFAULT_LEASE_TIME_S};

    #[test]
    fn subnets_parse_and_bad_ones_are_skipped() {
        let good = proto::SubnetConfig {
            cidr: "10.20.0.0/24".into(),
            gateway: "10.20.0.1".into(),
            dns: vec!["10.20.0.1".into()],
            domain: "lab.example".into(),
            dynamic: vec!["10.20.0.100-10.20.0.199".into()],
            reserved: vec![],
            vlan: 0,
            mode: "managed".into(),
            lease_time_s: 0,
            pxe_lease_time_s: 30,
            role: "primary".into(),
            active: true,
        };
        let mut bad = good.clone();
        bad.cidr = "10.30.0.0/24".into();
        bad.dynamic = vec!["10.30.0.9-10.30.0.1".into()];
        let mut bad_role = good.clone();
        bad_role.role = "tertiary".into();
        let cfg = boot_config_from_proto(proto::BootConfig {
            subnets: vec![good, bad, bad_role],
            known: vec![
                proto::KnownMac {
                    mac: "52:54:00:00:00:01".into(),
                    system_id: "m1".into(),
                },
                proto::KnownMac {
                    mac: "nonsense".into(),
                    system_id: "m2".into(),
                },
            ],
        });
        assert_eq!(cfg.subnets.len(), 1);
        let s = &cfg.subnets[0];
        assert_eq!(s.subnet.lease_time_s, DEFAULT_LEASE_TIME_S);
        assert_eq!(s.subnet.gateway, Some(Ipv4Addr::new(10, 20, 0, 1)));
        assert_eq!(s.role, SubnetRole::Primary);
        assert_eq!(cfg.known.len(), 1);
        let e = subnet_from_proto(&proto::SubnetConfig {
            vlan: 5000,
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.starts_with("cidr"), "{e}");
    }

    #[test]
    fn leases_roundtrip_through_the_wire_form() {
        let l = Lease {
            ip: Ipv4Addr::new(10, 20, 0, 100),
            subnet: "10.20.0.0/24".parse().unwrap(),
            mac: "52:54:00:00:00:01".parse().unwrap(),
            state: LeaseState::Released,
            start_ms: 5,
            expires_ms: 6,
            hostname: "h".into(),
            rack: String::new(),
        };
        assert_eq!(
            lease_from_proto(&ingot_proto::convert::lease_to_rack(&l)).unwrap(),
            l
        );
        let mut w = ingot_proto::convert::lease_to_rack(&l);
        w.state = "stolen".into();
        assert!(lease_from_proto(&w).unwrap_err().starts_with("state"));
    }
}
