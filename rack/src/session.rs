//! The rack's one long-lived session with a region, and failover between regions.
//!
//! [`run`] loops: connect to a region's cluster listener (mutual TLS, the rack's certificate as client
//! identity), open `RackSessionService/Session`, send `Hello`, wait for `Welcome`, then heartbeat, run
//! commands and send results until the stream breaks — and then immediately try the next region. Regions
//! are taken from `rack.json`'s `cluster_endpoints`, which every `Welcome`/`Regions` message refreshes (so a
//! rack registered through one region learns all of them, and a restarted rack still finds the cluster).
//!
//! Failover budget (< 2 s): an HTTP/2 keepalive ping after 0.5 s without a frame from the region, which
//! must be answered within 1 s, notices a dead region within 1.5 s even when no TCP reset arrives; the next region is tried at once, each connect attempt gives up
//! after one second, and only when every region failed in a row does the loop back off (100 ms doubling to
//! 1 s).
//!
//! Commands run through the [`Runner`], which outlives sessions: results of commands still running when a
//! session breaks are sent on the next one, and the durable done-store answers re-deliveries. Two guards
//! keep a power action from running twice on a BMC:
//! - the done-store's intent records: a non-idempotent action (cycle, soft-off) started before a crash
//!   and re-delivered after it is not run again; the rack reads the power state and answers `interrupted`;
//! - the lease ([`Lease`]): the region moves a silent rack's BMCs (and their commands) to another rack
//!   after its rack grace, so a rack starts a command only while the region has recorded one of its
//!   heartbeats recently enough; otherwise it drops the command unanswered and reconnects.

use crate::boot::service::BootService;
use crate::config::{ConfigError, DataDir, RackConfig, TlsFiles};
use crate::done::{DoneError, DoneRecord, DoneStore, StartRecord, KEEP_RESULTS};
use crate::drivers::{Drivers, PowerRequest, PowerState};
use crate::monitor::{Monitor, MonitorConfig};
use ingot_common::power::PowerAction;
use ingot_proto::rack::v1::rack_message::Msg as RackMsg;
use ingot_proto::rack::v1::rack_session_service_client::RackSessionServiceClient;
use ingot_proto::rack::v1::region_message::Msg as RegionMsg;
use ingot_proto::rack::v1::{
    Heartbeat, Hello, PowerCommand, PowerCommandResult, PowerObservation, PowerObservations,
    RackMessage, Welcome,
};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// The services every rack offers (sent in `Hello`).
pub const SERVICES: [&str; 1] = ["power"];
/// The service a rack with boot interfaces adds in `Hello` (one spelling, shared with the region).
pub use ingot_common::net::DHCP_SERVICE;
/// The service a rack serving TFTP adds in `Hello`.
pub use ingot_common::net::TFTP_SERVICE;
/// The service a rack with boot interfaces also runs: the HTTP boot server (iPXE scripts, blobs).
pub const HTTP_SERVICE: &str = "http";

/// Why the session loop could not start. Once started it never fails: it retries until shut down.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// rack.json or tls/ could not be read.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The done-store could not be opened: without it commands could run twice.
    #[error(transparent)]
    Done(#[from] DoneError),
    /// tls/ holds files tonic cannot use (not PEM, key and certificate mismatch, ...).
    #[error("the TLS files in {dir} cannot be used: {reason} (register the rack again into a new data directory)")]
    Tls {
        /// The tls/ directory.
        dir: String,
        /// What tonic/rustls said.
        reason: String,
    },
    /// rack.json lists no region to connect to.
    #[error("{0} lists no cluster endpoints: register the rack again, or add a region's cluster address (host:port) to cluster_endpoints")]
    NoEndpoints(String),
}

/// Everything the session loop needs; built by [`SessionConfig::load`] from the data directory and flags.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The data directory: rack.json is rewritten there when the regions change, done.log lives there.
    pub dir: DataDir,
    /// rack.json as loaded: the name for messages and the first endpoints to try.
    pub rack: RackConfig,
    /// The rack's key and certificate and the cluster CA, for mutual TLS.
    pub tls: TlsFiles,
    /// How often to send a heartbeat (`--heartbeat-ms`; a region asking for more often wins).
    pub heartbeat: Duration,
    /// How many commands may run at once (`--capacity`), announced in `Hello`.
    pub capacity: u32,
    /// How long one connection attempt may take: a black-holed region costs at most this much.
    pub connect_timeout: Duration,
    /// HTTP/2 keepalive: a ping after this long without a frame from the region...
    pub keepalive_interval: Duration,
    /// ...which must be answered within this long, or the session is declared dead. Interval + timeout
    /// bound how long a silently dead region (no TCP reset) goes unnoticed: 0.5 s + 1 s keeps the whole
    /// failover under 2 s.
    pub keepalive_timeout: Duration,
    /// How long a region may take from connect to `Welcome` before the next one is tried.
    pub welcome_timeout: Duration,
    /// Pacing of the power monitor (`--poll-interval-ms`, `--poll-concurrency`).
    pub monitor: MonitorConfig,
    /// The boot service when the rack serves boot interfaces (`--boot-interface`): told when sessions
    /// open and close, fed the region's boot messages, and sending lease commits and enlistments on the
    /// session. `None`: the rack serves power only.
    pub boot: Option<Arc<BootService>>,
    /// Whether the rack serves TFTP on its boot interfaces (announced in `Hello` as [`TFTP_SERVICE`]).
    pub tftp: bool,
}

impl SessionConfig {
    /// Loads rack.json and tls/ from `dir`, with the documented timing defaults.
    pub fn load(dir: DataDir, heartbeat: Duration, capacity: u32) -> Result<Self, ConfigError> {
        let rack = dir.load_rack()?;
        let tls = dir.load_tls()?;
        Ok(SessionConfig {
            dir,
            rack,
            tls,
            heartbeat,
            capacity,
            connect_timeout: Duration::from_secs(1),
            keepalive_interval: Duration::from_millis(500),
            keepalive_timeout: Duration::from_secs(1),
            welcome_timeout: Duration::from_secs(2),
            monitor: MonitorConfig::default(),
            boot: None,
            tftp: false,
        })
    }
}

impl SessionConfig {
    /// Mutual TLS towards regions: present the rack's certificate, verify the region against the cluster
    /// CA under the fixed name `ingot-region` (addresses may change; the name does not).
    pub fn client_tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.tls.ca_pem))
            .identity(Identity::from_pem(&self.tls.cert_pem, &self.tls.key_pem))
            .domain_name(ingot_common::pki::REGION_SERVER_NAME)
    }

    /// Checks what would make every connection attempt fail forever (no endpoints, unusable TLS files),
    /// so the rack stops with a clear message instead of retrying. [`run`] calls it; `main` calls it
    /// before announcing that the rack runs.
    pub fn validate(&self) -> Result<(), SessionError> {
        if self.rack.cluster_endpoints.is_empty() {
            return Err(SessionError::NoEndpoints(
                self.dir.rack_json().display().to_string(),
            ));
        }
        if let Err(e) = Endpoint::from_static("https://127.0.0.1:1").tls_config(self.client_tls()) {
            let tls_dir = self.dir.ca_path();
            let tls_dir = tls_dir.parent().unwrap_or(self.dir.root());
            return Err(SessionError::Tls {
                dir: tls_dir.display().to_string(),
                reason: crate::register::error_chain(&e),
            });
        }
        Ok(())
    }
}

/// Locks a mutex, ignoring poisoning: the protected data (sets and maps) stays consistent even if a holder
/// panicked, and a rack that stops answering commands would be worse.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The wire form of a stored result, to (re)send to a region.
fn sent_result(rec: &DoneRecord) -> PowerCommandResult {
    PowerCommandResult {
        id: rec.id,
        success: rec.success,
        error_kind: rec.error_kind.clone(),
        message: rec.message.clone(),
        power_state: rec.power_state.clone(),
    }
}

/// The stored form of a result about to be sent, finished at `done_ms`.
fn done_record(r: &PowerCommandResult, done_ms: u64) -> DoneRecord {
    DoneRecord {
        id: r.id,
        success: r.success,
        error_kind: r.error_kind.clone(),
        message: r.message.clone(),
        power_state: r.power_state.clone(),
        done_ms,
    }
}

/// The part of the region's lease a rack uses: it starts a command only while the heartbeat the region
/// last recorded was sent less than this long ago (two thirds of `Welcome.lease_ms`).
///
/// Why this is safe: the region moves a rack's BMCs (and re-routes their pending commands) only after it
/// has recorded no heartbeat of the rack for its whole rack grace (`lease_ms`; one recording interval
/// more while the session is open). A recorded heartbeat carries the region's time of receipt, which is
/// after the rack sent it, and the rack reckons from sending, on its monotonic clock: its view of the
/// lease ends before the region's. The remaining third is the margin for what happens after the check:
/// the driver's round trips until the BMC acts, scheduling delays, and clocks running at slightly
/// different rates. A stopped process (SIGSTOP, a long GC-like stall) does not stop the monotonic clock,
/// so a rack that wakes after its BMCs moved sees the gap at the check and does not act.
fn usable(lease: Duration) -> Duration {
    lease * 2 / 3
}

/// Most heartbeats remembered while waiting for their acknowledgement (a region that records one per
/// second acknowledges far fewer; older ones can only be late).
const UNACKED_MAX: usize = 1024;

/// Where a session's lease stands, by [`Lease::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseCheck {
    /// Commands may start.
    Held,
    /// The session is new and the region has not recorded it yet; it may still, for this long.
    Pending(Duration),
    /// The last recorded heartbeat (or the Hello, if none was recorded) is this old: too old to act.
    Expired(Duration),
}

/// One session's lease on the rack's BMCs, as the rack reckons it: when the region last recorded (and
/// acknowledged, `HeartbeatAck`) a heartbeat of this session, by when the rack sent it.
struct Lease {
    /// The region's rack grace (`Welcome.lease_ms`); `None`: the region does not say (an older region),
    /// and the rack does not fence itself.
    length: Option<Duration>,
    /// When the Hello was sent: a session the region never recorded holds no lease once
    /// [`usable`] has passed since.
    opened: Instant,
    /// Heartbeats sent and not acknowledged yet, oldest first, with when they were sent (0: the Hello).
    unacked: Mutex<VecDeque<(u64, Instant)>>,
    /// When the latest acknowledged heartbeat was sent; `None` before the first acknowledgement. A
    /// watch, so a command waiting for a new session's first acknowledgement wakes when it comes.
    renewed: watch::Sender<Option<Instant>>,
    /// Notified when a command was refused for want of a lease: the session ends and the rack reconnects
    /// (the new session's region re-delivers what is still this rack's).
    fenced: Notify,
}

impl Lease {
    /// The lease of a session whose Hello was sent at `opened`, with the region's `lease_ms` (0: none).
    fn new(lease_ms: u32, opened: Instant) -> Lease {
        Lease {
            length: (lease_ms > 0).then(|| Duration::from_millis(u64::from(lease_ms))),
            opened,
            unacked: Mutex::new(VecDeque::from([(0, opened)])),
            renewed: watch::Sender::new(None),
            fenced: Notify::new(),
        }
    }

    /// Remembers that heartbeat `seq` was sent at `at`.
    fn sent(&self, seq: u64, at: Instant) {
        if self.length.is_none() {
            return;
        }
        let mut q = lock(&self.unacked);
        q.push_back((seq, at));
        while q.len() > UNACKED_MAX {
            q.pop_front();
        }
    }

    /// The region recorded heartbeat `seq`: the lease runs from when it was sent.
    fn acked(&self, seq: u64) {
        let at = {
            let mut q = lock(&self.unacked);
            let at = q.iter().find(|(s, _)| *s == seq).map(|(_, at)| *at);
            q.retain(|(s, _)| *s > seq);
            at
        };
        if let Some(at) = at {
            self.renewed.send_if_modified(|r| {
                if r.is_some_and(|old| old >= at) {
                    return false;
                }
                *r = Some(at);
                true
            });
        }
    }

    /// How long the lease lasts from now at most, if nothing renews it: the region may move this rack's
    /// commands once that has passed. `None`: no lease (an older region), no bound.
    fn left(&self) -> Option<Duration> {
        let length = self.length?;
        let since = match *self.renewed.borrow() {
            Some(at) => at.elapsed(),
            None => self.opened.elapsed(),
        };
        Some(length.saturating_sub(since))
    }

    /// Where the lease stands now.
    fn check(&self) -> LeaseCheck {
        let Some(length) = self.length else {
            return LeaseCheck::Held;
        };
        let limit = usable(length);
        match *self.renewed.borrow() {
            Some(at) if at.elapsed() < limit => LeaseCheck::Held,
            Some(at) => LeaseCheck::Expired(at.elapsed()),
            None => match limit.checked_sub(self.opened.elapsed()) {
                Some(left) if !left.is_zero() => LeaseCheck::Pending(left),
                _ => LeaseCheck::Expired(self.opened.elapsed()),
            },
        }
    }

    /// Waits while the session is new and unrecorded; `Err(why)` when the lease is not held.
    async fn wait_held(&self) -> Result<(), String> {
        let mut renewed = self.renewed.subscribe();
        loop {
            match self.check() {
                LeaseCheck::Held => return Ok(()),
                LeaseCheck::Pending(left) => {
                    // Woken by an acknowledgement, or re-checked (then expired) when time is up.
                    let _ = tokio::time::timeout(left, renewed.changed()).await;
                }
                LeaseCheck::Expired(age) => return Err(self.expired_text(age)),
            }
        }
    }

    /// Why a command does not start, for the log.
    fn expired_text(&self, age: Duration) -> String {
        format!(
            "the region last recorded this rack's heartbeat {} ms ago (sent then), more than {} ms, two thirds of the region's rack grace of {} ms: its BMCs and their commands may have moved to another rack",
            age.as_millis(),
            self.length.map(usable).unwrap_or_default().as_millis(),
            self.length.unwrap_or_default().as_millis()
        )
    }
}

/// The result for a command whose non-idempotent action this rack (an earlier process of it) started but
/// never recorded a result for: it is not run again, whatever the BMC did; `read` is what the power query
/// found now.
fn interrupted_result(
    cmd: &PowerCommand,
    started: &StartRecord,
    read: Result<PowerState, String>,
) -> PowerCommandResult {
    let (state, seen) = match read {
        Ok(st) => (st, format!("the BMC now reports power {}", st.as_str())),
        Err(e) => (
            PowerState::Unknown,
            format!("reading the power state failed too ({e})"),
        ),
    };
    PowerCommandResult {
        id: cmd.id,
        success: false,
        error_kind: "interrupted".into(),
        message: format!(
            "the rack stopped (crash or restart) after starting {} at {} ms and before recording its result: the BMC may or may not have acted, and {} is not repeated blindly; {seen}. Check the machine and issue the command again if it is still needed",
            started.action, started.started_ms, started.action
        ),
        power_state: state.as_str().to_string(),
    }
}

/// Runs a started driver call while the lease it started under lasts. A call still running when the
/// lease ends (a BMC that answers after 5 s while the region moved the command to another rack after
/// its grace) is abandoned and fails: otherwise two racks would each run, and report, one command. The
/// lease is re-read as it is renewed, so a long call on a healthy session is never cut.
async fn bounded_by_lease(
    cmd: &PowerCommand,
    lease: Option<&Lease>,
    call: impl std::future::Future<Output = PowerCommandResult>,
) -> PowerCommandResult {
    let Some(lease) = lease else {
        return call.await;
    };
    tokio::pin!(call);
    loop {
        let Some(left) = lease.left() else {
            return call.await;
        };
        if left.is_zero() {
            tracing::warn!(
                id = cmd.id,
                action = %cmd.action,
                "the BMC did not answer before the rack's lease ended: abandoning the call"
            );
            return PowerCommandResult {
                id: cmd.id,
                success: false,
                error_kind: "unreachable".into(),
                message: format!(
                    "the BMC did not answer {} before this rack's lease on it ended (the region may give the command to another rack): check the BMC's network and load",
                    cmd.action
                ),
                power_state: PowerState::Unknown.as_str().to_string(),
            };
        }
        tokio::select! {
            r = &mut call => return r,
            _ = tokio::time::sleep(left) => {}
        }
    }
}

/// Runs commands exactly once across sessions: the done-store, the ids in flight, the concurrency limit,
/// and the outbox of results for whichever session is current.
struct Runner {
    /// Finished commands (durable), and started non-idempotent ones. Checked before anything runs.
    done: Mutex<DoneStore>,
    /// Ids in flight: a re-delivery of one of them is not run again (its result will follow). `Some`
    /// while the command waits to start, with the lease of the session that delivered it last (a
    /// re-delivery on a newer session replaces it); `None` once its driver runs. Locked while the
    /// done-store is checked, so a command finishing concurrently is seen in one or the other.
    running: Mutex<HashMap<u64, Option<Arc<Lease>>>>,
    /// At most `capacity` drivers at once.
    permits: Arc<Semaphore>,
    /// The power drivers.
    drivers: Drivers,
    /// Results, recorded, waiting to be sent by the current (or next) session.
    outbox: mpsc::UnboundedSender<PowerCommandResult>,
}

impl Runner {
    /// Handles a power command delivered on the session holding `lease`: `Some(result)` to send now if it
    /// was done before; otherwise starts it (unless it is already running) and its result arrives through
    /// the outbox — or never, when the lease is gone before it starts (it is re-delivered).
    fn on_power_command(
        self: &Arc<Self>,
        cmd: PowerCommand,
        lease: &Arc<Lease>,
    ) -> Option<PowerCommandResult> {
        let mut running = lock(&self.running);
        if let Some(rec) = lock(&self.done).get(cmd.id) {
            tracing::info!(id = cmd.id, "command already done: resending its result");
            return Some(sent_result(rec));
        }
        match running.get_mut(&cmd.id) {
            Some(Some(waiting)) => {
                tracing::debug!(
                    id = cmd.id,
                    "command re-delivered before it started: it starts under this session's lease"
                );
                *waiting = lease.clone();
                return None;
            }
            Some(None) => {
                tracing::debug!(
                    id = cmd.id,
                    "command already running: ignoring the re-delivery"
                );
                return None;
            }
            None => {
                running.insert(cmd.id, Some(lease.clone()));
            }
        }
        drop(running);
        tracing::info!(
            id = cmd.id,
            system_id = %cmd.system_id,
            action = %cmd.action,
            driver = %cmd.driver,
            "running command"
        );
        let me = self.clone();
        tokio::spawn(async move {
            let permit = me.permits.clone().acquire_owned().await;
            let result = me.run_once(&cmd).await;
            drop(permit);
            // `None`: run_once forgot the command already; it is re-delivered.
            if let Some(result) = result {
                me.finish(result).await;
            }
        });
        None
    }

    /// The lease command `id` starts under: that of the session that delivered it last.
    fn lease_of(&self, id: u64) -> Option<Arc<Lease>> {
        lock(&self.running).get(&id).cloned().flatten()
    }

    /// Whether command `id` may start now (`wait`: also waits for a new session to be recorded). If not,
    /// it is forgotten (so a re-delivery starts afresh), its session ends (the rack reconnects), and the
    /// answer is false.
    async fn may_start(&self, cmd: &PowerCommand, wait: bool) -> bool {
        loop {
            let Some(lease) = self.lease_of(cmd.id) else {
                return false;
            };
            let held = if wait {
                lease.wait_held().await
            } else {
                match lease.check() {
                    LeaseCheck::Held => Ok(()),
                    LeaseCheck::Pending(_) => {
                        Err("the region has not recorded this session yet".into())
                    }
                    LeaseCheck::Expired(age) => Err(lease.expired_text(age)),
                }
            };
            let Err(why) = held else {
                return true;
            };
            {
                let mut running = lock(&self.running);
                if let Some(Some(newer)) = running.get(&cmd.id) {
                    if !Arc::ptr_eq(newer, &lease) {
                        // Re-delivered on a newer session meanwhile: its lease decides.
                        continue;
                    }
                }
                running.remove(&cmd.id);
            }
            tracing::warn!(
                id = cmd.id,
                action = %cmd.action,
                system_id = %cmd.system_id,
                "not starting the command: {why}; reconnecting (the region re-delivers it if it is still this rack's)"
            );
            lease.fenced.notify_one();
            return false;
        }
    }

    /// Runs `cmd` once, guarded: `None` when it must not start (no lease, or its intent could not be
    /// made durable): it is forgotten, stays unanswered and is re-delivered. A non-idempotent action that an earlier
    /// process started without recording a result is not run again: its result says `interrupted`.
    async fn run_once(self: &Arc<Self>, cmd: &PowerCommand) -> Option<PowerCommandResult> {
        if !self.may_start(cmd, true).await {
            return None;
        }
        let action = PowerAction::parse("action", &cmd.action).ok();
        if let Some(action) = action.filter(|a| !a.idempotent()) {
            let earlier = lock(&self.done).started(cmd.id).cloned();
            if let Some(started) = earlier {
                tracing::warn!(
                    id = cmd.id,
                    action = %action,
                    "command was started before and has no result: reading the power state instead of repeating it"
                );
                lock(&self.running).insert(cmd.id, None);
                let req = PowerRequest {
                    command_id: cmd.id,
                    system_id: cmd.system_id.clone(),
                    action: PowerAction::Query,
                    params: cmd.params.clone(),
                };
                let read = self
                    .drivers
                    .run(&cmd.driver, &req)
                    .await
                    .map(|o| o.state)
                    .map_err(|e| format!("{}: {e}", e.kind()));
                return Some(interrupted_result(cmd, &started, read));
            }
            let intent = StartRecord {
                id: cmd.id,
                started_ms: ingot_common::now_ms(),
                action: action.as_str().to_string(),
            };
            let me = self.clone();
            let stored = tokio::task::spawn_blocking(move || lock(&me.done).start(intent)).await;
            let failed = match stored {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(format!("recording the intent failed: {e}")),
            };
            if let Some(e) = failed {
                lock(&self.running).remove(&cmd.id);
                tracing::error!(
                    id = cmd.id,
                    "{e}; not running {action}: without a durable intent a crash could make it run twice (it is re-delivered)"
                );
                return None;
            }
            // Right before the driver: the fsync took time. Refused here, the intent stays and a
            // re-delivery answers `interrupted` (the action never ran, but the rack cannot tell).
            if !self.may_start(cmd, false).await {
                return None;
            }
        }
        // The lease it starts under bounds the driver call (a re-delivery from now on is ignored).
        let lease = self.lease_of(cmd.id);
        lock(&self.running).insert(cmd.id, None);
        Some(bounded_by_lease(cmd, lease.as_deref(), self.drivers.execute(cmd)).await)
    }

    /// Records a result (append + fsync) and only then queues it for sending.
    async fn finish(self: &Arc<Self>, result: PowerCommandResult) {
        let rec = done_record(&result, ingot_common::now_ms());
        let me = self.clone();
        let stored = tokio::task::spawn_blocking(move || {
            let mut done = lock(&me.done);
            let r = done.record(rec.clone());
            if r.is_err() {
                // Not durable, but at least this process will not run the command again.
                done.remember(rec);
            }
            r
        })
        .await;
        match stored {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(
                id = result.id,
                "{e}; the result is kept in memory only: after a restart this command could run again"
            ),
            Err(e) => tracing::error!(id = result.id, "recording the result failed: {e}"),
        }
        lock(&self.running).remove(&result.id);
        tracing::info!(
            id = result.id,
            success = result.success,
            error_kind = %result.error_kind,
            power_state = %result.power_state,
            "command finished"
        );
        // The receiver lives as long as the session loop; if it is gone the rack is stopping.
        let _ = self.outbox.send(result);
    }

    /// Waits (up to `limit`) for running commands to finish and be recorded, so a stopping rack does not
    /// leave an acted-on but unrecorded command behind.
    async fn drain(&self, limit: Duration) {
        let until = Instant::now() + limit;
        loop {
            let n = lock(&self.running).len();
            if n == 0 {
                return;
            }
            if Instant::now() >= until {
                tracing::warn!(
                    running = n,
                    "stopping with commands still running; they will be re-delivered"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// How one session attempt ended.
enum Ended {
    /// The rack is shutting down.
    Shutdown,
    /// A session was established (Welcome received) and then broke.
    Broke(String),
    /// No session: connect, TLS, the call or the Welcome failed.
    Failed(String),
}

/// The mutable state of the loop that sessions update: the current endpoints (persisted on change).
struct Cluster {
    /// Where rack.json lives.
    dir: DataDir,
    /// rack.json's contents as last written.
    rack: RackConfig,
}

impl Cluster {
    /// Adopts the regions a region told us about; rewrites rack.json if they changed.
    fn update_endpoints(&mut self, endpoints: &[String]) {
        let clean: Vec<String> = endpoints
            .iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if clean.is_empty() || clean == self.rack.cluster_endpoints {
            return;
        }
        tracing::info!(endpoints = ?clean, "regions changed");
        self.rack.cluster_endpoints = clean;
        if let Err(e) = self.dir.save_rack(&self.rack) {
            tracing::warn!("{e}; the new region list is used but not saved");
        }
    }
}

/// Runs the session loop until `shutdown` becomes true: connects, fails over, reconnects, runs commands.
/// Returns an error only if it cannot start (no endpoints, unreadable done-store).
pub async fn run(cfg: SessionConfig, shutdown: watch::Receiver<bool>) -> Result<(), SessionError> {
    cfg.validate()?;
    let done = DoneStore::open(&cfg.dir.done_log(), KEEP_RESULTS)?;
    tracing::info!(results = done.len(), "done-store loaded");
    let (outbox, results) = mpsc::unbounded_channel();
    let drivers = Drivers::default();
    let runner = Arc::new(Runner {
        done: Mutex::new(done),
        running: Mutex::new(HashMap::new()),
        permits: Arc::new(Semaphore::new(cfg.capacity.max(1) as usize)),
        drivers: drivers.clone(),
        outbox,
    });
    let monitor = Monitor::new(cfg.monitor, drivers);
    let (obs_tx, observations) = mpsc::unbounded_channel();
    let monitor_task = tokio::spawn(monitor.clone().run(obs_tx, shutdown.clone()));
    let tls = cfg.client_tls();
    let mut links = Links {
        runner,
        results,
        monitor,
        observations,
        cluster: Cluster {
            dir: cfg.dir.clone(),
            rack: cfg.rack.clone(),
        },
        shutdown,
    };

    let mut next = 0usize;
    let mut since = Instant::now();
    let mut failed_in_row = 0usize;
    let mut backoff = Duration::from_millis(100);
    loop {
        if *links.shutdown.borrow() {
            break;
        }
        let eps = links.cluster.rack.cluster_endpoints.clone();
        let ep = eps[next % eps.len()].clone();
        let ended = session_once(&cfg, &tls, &ep, since, &mut links).await;
        // Continue after the endpoint just used, in the (possibly refreshed) list.
        let eps = &links.cluster.rack.cluster_endpoints;
        next = match eps.iter().position(|e| *e == ep) {
            Some(i) => i + 1,
            None => next + 1,
        } % eps.len().max(1);
        match ended {
            Ended::Shutdown => break,
            Ended::Broke(why) => {
                tracing::warn!("session with {ep} broke: {why}; failing over");
                since = Instant::now();
                failed_in_row = 0;
                backoff = Duration::from_millis(100);
            }
            Ended::Failed(why) => {
                tracing::warn!("no session with {ep}: {why}");
                failed_in_row += 1;
                if failed_in_row >= eps.len() {
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stopped(&mut links.shutdown) => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
    tracing::info!("rack stopping");
    monitor_task.abort();
    links.runner.drain(Duration::from_secs(10)).await;
    Ok(())
}

/// Resolves once shutdown is requested (or its sender is gone). Returns nothing so no `watch::Ref` (not
/// `Send`) is held across an await in the session futures.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|v| *v).await.is_ok();
}

/// What `Hello` says about this rack (`dhcp`: it serves boot interfaces; `tftp`: and TFTP on them).
fn hello(capacity: u32, dhcp: bool, tftp: bool) -> RackMessage {
    let mut services: Vec<String> = SERVICES.iter().map(|s| s.to_string()).collect();
    if dhcp {
        services.push(DHCP_SERVICE.to_string());
        services.push(HTTP_SERVICE.to_string());
    }
    if tftp {
        services.push(TFTP_SERVICE.to_string());
    }
    RackMessage {
        msg: Some(RackMsg::Hello(Hello {
            version: env!("CARGO_PKG_VERSION").to_string(),
            services,
            capacity,
            drivers: Drivers::NAMES.iter().map(|s| s.to_string()).collect(),
        })),
    }
}

/// Connects to `ep`, opens the stream, sends Hello and waits for Welcome. Returns the outgoing sender and
/// the incoming stream.
async fn open(
    cfg: &SessionConfig,
    tls: &ClientTlsConfig,
    ep: &str,
) -> Result<
    (
        mpsc::Sender<RackMessage>,
        tonic::Streaming<ingot_proto::rack::v1::RegionMessage>,
        Welcome,
    ),
    String,
> {
    let endpoint = Endpoint::from_shared(format!("https://{ep}"))
        .map_err(|e| format!("'{ep}' is not a host:port address: {e}"))?
        .tls_config(tls.clone())
        .map_err(|e| format!("TLS settings: {}", crate::register::error_chain(&e)))?
        .connect_timeout(cfg.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(cfg.keepalive_interval)
        .keep_alive_timeout(cfg.keepalive_timeout)
        .keep_alive_while_idle(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connecting: {}", crate::register::error_chain(&e)))?;
    let (tx, rx) = mpsc::channel(256);
    tx.send(hello(cfg.capacity, cfg.boot.is_some(), cfg.tftp))
        .await
        .map_err(|_| "the outgoing stream closed before Hello".to_string())?;
    let mut client = RackSessionServiceClient::new(channel);
    let mut inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .map_err(|s| status_text(&s))?
        .into_inner();
    match inbound.next().await {
        Some(Ok(m)) => match m.msg {
            Some(RegionMsg::Welcome(w)) => Ok((tx, inbound, w)),
            other => Err(format!(
                "the region answered Hello with {other:?} instead of Welcome"
            )),
        },
        Some(Err(s)) => Err(status_text(&s)),
        None => Err("the region closed the stream before Welcome".to_string()),
    }
}

/// A gRPC status for logs, with a hint when the region refused the rack itself.
fn status_text(s: &tonic::Status) -> String {
    match s.code() {
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => format!(
            "the region refused this rack: {} (revoked, or registered with another cluster? register again)",
            s.message()
        ),
        _ => format!("{:?}: {}", s.code(), s.message()),
    }
}

/// What outlives a session and every session works with: the runner and the results it queues, the power
/// monitor and the observations it queues, the region list, the shutdown signal.
struct Links {
    runner: Arc<Runner>,
    results: mpsc::UnboundedReceiver<PowerCommandResult>,
    monitor: Monitor,
    observations: mpsc::UnboundedReceiver<Vec<PowerObservation>>,
    cluster: Cluster,
    shutdown: watch::Receiver<bool>,
}

/// One session with `ep` (the last one began failing over at `since`): open it, then serve it until it
/// breaks or the rack shuts down.
async fn session_once(
    cfg: &SessionConfig,
    tls: &ClientTlsConfig,
    ep: &str,
    since: Instant,
    links: &mut Links,
) -> Ended {
    let Links {
        runner,
        results,
        monitor,
        observations,
        cluster,
        shutdown,
    } = links;
    // Before the Hello is sent: the lease, once the region records the session, runs from no later.
    let hello_at = Instant::now();
    let opened = tokio::select! {
        r = tokio::time::timeout(cfg.welcome_timeout, open(cfg, tls, ep)) => r,
        _ = stopped(shutdown) => return Ended::Shutdown,
    };
    let (tx, mut inbound, welcome) = match opened {
        Ok(Ok(x)) => x,
        Ok(Err(why)) => return Ended::Failed(why),
        Err(_) => {
            return Ended::Failed(format!(
                "no Welcome within {} ms",
                cfg.welcome_timeout.as_millis()
            ))
        }
    };
    tracing::info!(
        session_id = %welcome.session_id,
        endpoint = %ep,
        "session established with region {} ({}) in {} ms",
        welcome.region_name,
        welcome.region_id,
        since.elapsed().as_millis()
    );
    if let Some(r) = &welcome.regions {
        cluster.update_endpoints(&r.endpoints);
    }
    let lease = Arc::new(Lease::new(welcome.lease_ms, hello_at));
    // Lease commits and enlistments go out on this session until it ends (the guard's drop says so).
    let _boot_session = cfg.boot.as_ref().map(|b| b.session_opened(tx.clone()));
    // A new region may know less than the last one: report every power state once more.
    monitor.reset_reported();
    let mut period = cfg.heartbeat.max(Duration::from_millis(10));
    if welcome.heartbeat_ms > 0 {
        period = period.min(Duration::from_millis(u64::from(welcome.heartbeat_ms)));
    }
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate; Hello already told the region we are alive
    let mut seq = 0u64;
    let send = |m: RackMsg| {
        let tx = tx.clone();
        async move {
            tx.send(RackMessage { msg: Some(m) })
                .await
                .map_err(|_| "the outgoing stream closed".to_string())
        }
    };
    loop {
        tokio::select! {
            biased;
            _ = stopped(shutdown) => return Ended::Shutdown,
            _ = lease.fenced.notified() => {
                return Ended::Broke("a command found the lease expired".to_string());
            }
            m = inbound.next() => {
                let msg = match m {
                    Some(Ok(m)) => m,
                    Some(Err(s)) => return Ended::Broke(status_text(&s)),
                    None => return Ended::Broke("the region ended the stream".to_string()),
                };
                match msg.msg {
                    Some(RegionMsg::PowerCommand(cmd)) => {
                        if let Some(r) = runner.on_power_command(cmd, &lease) {
                            if let Err(e) = send(RackMsg::PowerCommandResult(r)).await {
                                return Ended::Broke(e);
                            }
                        }
                    }
                    Some(RegionMsg::Ack(a)) => {
                        // Results stay in the done-store (compacted at start), so nothing to forget here.
                        tracing::debug!(ids = a.ids.len(), "region recorded results");
                    }
                    Some(RegionMsg::HeartbeatAck(a)) => lease.acked(a.seq),
                    Some(RegionMsg::Regions(r)) => cluster.update_endpoints(&r.endpoints),
                    Some(RegionMsg::Bmcs(b)) => {
                        tracing::info!(bmcs = b.bmcs.len(), "BMC list from the region");
                        monitor.set_targets(b.bmcs);
                    }
                    Some(RegionMsg::Welcome(w)) => {
                        tracing::debug!(region = %w.region_name, "second Welcome on a session");
                        if let Some(r) = &w.regions {
                            cluster.update_endpoints(&r.endpoints);
                        }
                    }
                    // The boot path's messages: the boot service's (ignored by a rack without boot
                    // interfaces).
                    Some(m @ (RegionMsg::BootConfig(_) | RegionMsg::Leases(_) | RegionMsg::LeasesCommitted(_)
                        | RegionMsg::BootIntent(_) | RegionMsg::CacheWanted(_) | RegionMsg::AgentAnswer(_))) => {
                        if let Some(boot) = &cfg.boot {
                            boot.on_region_message(m);
                        }
                    }
                    None => tracing::debug!("empty region message ignored"),
                }
            }
            Some(r) = results.recv() => {
                if let Err(e) = send(RackMsg::PowerCommandResult(r)).await {
                    return Ended::Broke(e);
                }
            }
            Some(items) = observations.recv() => {
                if let Err(e) = send(RackMsg::Observations(PowerObservations { items })).await {
                    return Ended::Broke(e);
                }
            }
            _ = ticker.tick() => {
                seq += 1;
                lease.sent(seq, Instant::now());
                if let Err(e) = send(RackMsg::Heartbeat(Heartbeat { seq })).await {
                    return Ended::Broke(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd() -> PowerCommand {
        PowerCommand {
            id: 7,
            system_id: "m".into(),
            action: "off".into(),
            driver: "redfish".into(),
            params: Default::default(),
        }
    }

    fn ok() -> PowerCommandResult {
        PowerCommandResult {
            id: 7,
            success: true,
            error_kind: String::new(),
            message: String::new(),
            power_state: "off".into(),
        }
    }

    #[tokio::test]
    async fn a_driver_call_outliving_the_lease_is_abandoned() {
        // Recorded once, never renewed: the 300 ms lease ends while the BMC takes 5 s.
        let lease = Lease::new(300, Instant::now());
        lease.acked(0);
        let t = Instant::now();
        let slow = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            ok()
        };
        let r = bounded_by_lease(&cmd(), Some(&lease), slow).await;
        assert!(!r.success);
        assert_eq!(r.error_kind, "unreachable");
        assert!(r.message.contains("lease"), "{}", r.message);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    #[tokio::test]
    async fn a_long_driver_call_on_a_renewed_lease_completes() {
        let lease = Arc::new(Lease::new(300, Instant::now()));
        lease.acked(0);
        let renew = {
            let lease = lease.clone();
            tokio::spawn(async move {
                for seq in 1..=20 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    lease.sent(seq, Instant::now());
                    lease.acked(seq);
                }
            })
        };
        let slow = async {
            tokio::time::sleep(Duration::from_millis(700)).await;
            ok()
        };
        let r = bounded_by_lease(&cmd(), Some(&lease), slow).await;
        assert!(r.success, "{r:?}");
        renew.abort();
    }

    #[test]
    fn hello_announces_dhcp_http_and_tftp_when_served() {
        let services = |dhcp, tftp| match hello(4, dhcp, tftp).msg {
            Some(RackMsg::Hello(h)) => h.services,
            other => panic!("not a Hello: {other:?}"),
        };
        assert_eq!(services(false, false), vec!["power"]);
        assert_eq!(
            services(true, false),
            vec!["power", DHCP_SERVICE, HTTP_SERVICE]
        );
        assert_eq!(
            services(true, true),
            vec!["power", DHCP_SERVICE, HTTP_SERVICE, TFTP_SERVICE]
        );
    }

    #[test]
    fn lease_runs_from_the_sending_of_the_acknowledged_heartbeat() {
        let t0 = Instant::now() - Duration::from_millis(500);
        // A 600 ms lease: usable for 400 ms from a recorded heartbeat's sending.
        let lease = Lease::new(600, t0);
        // Not recorded yet and 500 ms since the Hello: too late to wait for it.
        assert!(matches!(lease.check(), LeaseCheck::Expired(_)));
        lease.sent(1, t0 + Duration::from_millis(100));
        let sent2 = Instant::now() - Duration::from_millis(50);
        lease.sent(2, sent2);
        // The Hello's acknowledgement renews from the Hello: still too old.
        lease.acked(0);
        assert!(matches!(lease.check(), LeaseCheck::Expired(_)));
        // Heartbeat 2's does; a late acknowledgement of 1 does not move it back.
        lease.acked(2);
        assert_eq!(lease.check(), LeaseCheck::Held);
        lease.acked(1);
        assert_eq!(*lease.renewed.borrow(), Some(sent2));
        assert_eq!(lease.check(), LeaseCheck::Held);
        assert!(lock(&lease.unacked).is_empty());

        // A new session waits for its first acknowledgement, for at most 400 ms.
        let fresh = Lease::new(600, Instant::now());
        assert!(matches!(fresh.check(), LeaseCheck::Pending(d) if d <= Duration::from_millis(400)));
        // An older region that sends no lease: never fenced.
        let old = Lease::new(0, t0 - Duration::from_secs(3600));
        assert_eq!(old.check(), LeaseCheck::Held);
    }

    #[test]
    fn the_interrupted_result_says_what_the_bmc_reports() {
        let cmd = PowerCommand {
            id: 111,
            system_id: "m1".into(),
            action: "cycle".into(),
            driver: "file".into(),
            params: Default::default(),
        };
        let started = StartRecord {
            id: 111,
            started_ms: 7,
            action: "cycle".into(),
        };
        let r = interrupted_result(&cmd, &started, Ok(PowerState::On));
        assert_eq!(
            (r.success, r.error_kind.as_str(), r.power_state.as_str()),
            (false, "interrupted", "on")
        );
        let r = interrupted_result(&cmd, &started, Err("unreachable: no answer".into()));
        assert_eq!(r.power_state, "unknown");
        assert!(r.message.contains("no answer"), "{}", r.message);
    }
}
