//! One simulated machine: its identity, the state its BMC manages (power, boot override), the fault knobs
//! that make the BMC misbehave, and what happens when it boots (from the network: the in-band agent runs;
//! from disk: nothing Ingot sees).
//!
//! The BMC's HTTP surface lives in [`crate::redfish`], its IPMI surface in [`crate::ipmi`]; the agent in
//! [`crate::agent`]. All act on a [`SimMachine`] shared behind an `Arc`, as do the control API and the fleet.

use crate::agent::{Agent, AgentOutcome};
use ingot_common::model::Inventory;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;

/// Everything a client needs to find and drive one simulated machine: what `machines.json` holds and what
/// a test enlists into Ingot (hostname, MAC, zone, BMC address and credentials).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SimMachineInfo {
    /// `sim-01` ..: the hostname to enlist the machine under (the agent finds its boot by it).
    pub hostname: String,
    /// SMBIOS UUID.
    pub uuid: String,
    /// The boot (PXE) NIC's MAC: unique, locally administered `52:54:00:xx:xx:xx`.
    pub mac: String,
    /// Availability zone the machine belongs in.
    pub zone: String,
    /// Architecture (`amd64/generic`).
    pub arch: String,
    /// The BMC's Redfish base URL, `http://127.0.0.1:PORT`.
    pub bmc_url: String,
    /// BMC user name.
    pub username: String,
    /// BMC password (the same for the whole fleet).
    pub password: String,
    /// The Redfish ComputerSystem id (`/redfish/v1/Systems/<system_id>`): the UUID. Not Ingot's system id.
    pub system_id: String,
    /// The hardware the agent reports at commissioning (serde form of [`Inventory`]).
    pub inventory: Inventory,
    /// The UDP port on `127.0.0.1` where the BMC speaks IPMI 2.0 over LAN (RMCP+, "lanplus"; same user name
    /// and password); `None` when the fleet runs without IPMI. Absent in files from older simulators.
    #[serde(default)]
    pub ipmi_port: Option<u16>,
}

/// Power state of a simulated machine.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    /// Running.
    On,
    /// Powered off.
    Off,
}

impl PowerState {
    /// The control API's spelling (`on` / `off`).
    pub fn as_str(self) -> &'static str {
        match self {
            PowerState::On => "on",
            PowerState::Off => "off",
        }
    }

    /// Redfish spelling (`On` / `Off`).
    pub fn redfish(self) -> &'static str {
        match self {
            PowerState::On => "On",
            PowerState::Off => "Off",
        }
    }

    /// The other state (what a flapping BMC sometimes reports).
    pub fn opposite(self) -> PowerState {
        match self {
            PowerState::On => PowerState::Off,
            PowerState::Off => PowerState::On,
        }
    }
}

/// A boot device: Redfish `BootSourceOverrideTarget` values the simulated BMC supports.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootTarget {
    /// No override.
    None,
    /// Network boot.
    Pxe,
    /// Local disk.
    Hdd,
}

impl BootTarget {
    /// Every value with its Redfish spelling.
    pub const ALL: [(BootTarget, &'static str); 3] = [
        (BootTarget::None, "None"),
        (BootTarget::Pxe, "Pxe"),
        (BootTarget::Hdd, "Hdd"),
    ];

    /// Redfish spelling.
    pub fn redfish(self) -> &'static str {
        match self {
            BootTarget::None => "None",
            BootTarget::Pxe => "Pxe",
            BootTarget::Hdd => "Hdd",
        }
    }

    /// Parses the Redfish spelling (exact, as Redfish property values are case-sensitive).
    pub fn parse(s: &str) -> Option<BootTarget> {
        Self::ALL.iter().find(|(_, n)| *n == s).map(|(t, _)| *t)
    }
}

/// How long a boot override lasts: Redfish `BootSourceOverrideEnabled`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootEnabled {
    /// The override is off: the machine boots from its firmware boot order (disk).
    Disabled,
    /// The next boot only; the BMC clears the override when the machine boots.
    Once,
    /// Every boot until changed.
    Continuous,
}

impl BootEnabled {
    /// Every value with its Redfish spelling.
    pub const ALL: [(BootEnabled, &'static str); 3] = [
        (BootEnabled::Disabled, "Disabled"),
        (BootEnabled::Once, "Once"),
        (BootEnabled::Continuous, "Continuous"),
    ];

    /// Redfish spelling.
    pub fn redfish(self) -> &'static str {
        match self {
            BootEnabled::Disabled => "Disabled",
            BootEnabled::Once => "Once",
            BootEnabled::Continuous => "Continuous",
        }
    }

    /// Parses the Redfish spelling.
    pub fn parse(s: &str) -> Option<BootEnabled> {
        Self::ALL.iter().find(|(_, n)| *n == s).map(|(t, _)| *t)
    }
}

/// Firmware boot mode: Redfish `BootSourceOverrideMode`. Stored and echoed; it does not change behaviour.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootMode {
    /// UEFI.
    #[serde(rename = "UEFI")]
    Uefi,
    /// Legacy BIOS.
    Legacy,
}

impl BootMode {
    /// Every value with its Redfish spelling.
    pub const ALL: [(BootMode, &'static str); 2] =
        [(BootMode::Uefi, "UEFI"), (BootMode::Legacy, "Legacy")];

    /// Redfish spelling.
    pub fn redfish(self) -> &'static str {
        match self {
            BootMode::Uefi => "UEFI",
            BootMode::Legacy => "Legacy",
        }
    }

    /// Parses the Redfish spelling.
    pub fn parse(s: &str) -> Option<BootMode> {
        Self::ALL.iter().find(|(_, n)| *n == s).map(|(t, _)| *t)
    }
}

/// A Redfish `ComputerSystem.Reset` type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetType {
    /// Power on (no effect when on).
    On,
    /// Hard power off.
    ForceOff,
    /// ACPI shutdown (the simulated OS always obeys).
    GracefulShutdown,
    /// Hard reset: a new boot (powers on a machine that is off).
    ForceRestart,
    /// Reboot through the OS: a new boot (powers on a machine that is off).
    GracefulRestart,
    /// Off then on: a new boot (powers on a machine that is off).
    PowerCycle,
    /// Diagnostic interrupt: accepted, no effect.
    Nmi,
}

impl ResetType {
    /// Every value with its Redfish spelling, in the order the BMC advertises them.
    pub const ALL: [(ResetType, &'static str); 7] = [
        (ResetType::On, "On"),
        (ResetType::ForceOff, "ForceOff"),
        (ResetType::GracefulShutdown, "GracefulShutdown"),
        (ResetType::ForceRestart, "ForceRestart"),
        (ResetType::GracefulRestart, "GracefulRestart"),
        (ResetType::PowerCycle, "PowerCycle"),
        (ResetType::Nmi, "Nmi"),
    ];

    /// Redfish spelling.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(t, _)| *t == self)
            .map_or("Nmi", |(_, n)| n)
    }

    /// Parses the Redfish spelling.
    pub fn parse(s: &str) -> Option<ResetType> {
        Self::ALL.iter().find(|(_, n)| *n == s).map(|(t, _)| *t)
    }
}

/// Ways a BMC can misbehave, set per machine by the control API (and `ingot-sim fault`) to test how
/// Ingot copes with real-world BMCs. All off by default; setting all to off restores normal behaviour.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// The BMC accepts TCP connections but never answers (requests hang until the client gives up, or
    /// until the fault is cleared).
    pub unresponsive: bool,
    /// Delay before every answer, in milliseconds.
    pub slow_ms: u64,
    /// The BMC rejects every credential (basic auth, sessions, logins) with 401.
    pub wrong_password: bool,
    /// Authenticated reads alternately fail with 500 and report the opposite power state.
    pub flapping: bool,
    /// Reset actions answer 500 and change nothing.
    pub fail_power: bool,
}

impl Faults {
    /// True when no fault is set.
    pub fn is_clear(&self) -> bool {
        *self == Faults::default()
    }

    /// Short human form, e.g. `slow_ms=200,flapping` (`-` when clear), for listings.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.unresponsive {
            parts.push("unresponsive".to_string());
        }
        if self.slow_ms > 0 {
            parts.push(format!("slow_ms={}", self.slow_ms));
        }
        if self.wrong_password {
            parts.push("wrong_password".to_string());
        }
        if self.flapping {
            parts.push("flapping".to_string());
        }
        if self.fail_power {
            parts.push("fail_power".to_string());
        }
        if parts.is_empty() {
            "-".to_string()
        } else {
            parts.join(",")
        }
    }
}

/// The boot override and what the machine last booted from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BootView {
    /// `BootSourceOverrideTarget`.
    pub target: BootTarget,
    /// `BootSourceOverrideEnabled`.
    pub enabled: BootEnabled,
    /// `BootSourceOverrideMode`.
    pub mode: BootMode,
    /// The device of the last boot (`Pxe` or `Hdd`); `None` before the first boot.
    pub last_boot_device: Option<BootTarget>,
}

/// What the simulated agent did across this machine's network boots.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct AgentCounters {
    /// Boots that found a boot session, by purpose (`commissioning`, `deploying`, ...).
    pub runs: BTreeMap<String, u64>,
    /// Runs that reported their result.
    pub completed: u64,
    /// Network boots for which Ingot had no boot session (nothing to do).
    pub no_session: u64,
    /// Runs stopped because the region no longer accepted the boot's token (a newer boot took over).
    pub superseded: u64,
    /// Runs cut short by a power-off or a reboot.
    pub cancelled: u64,
    /// Runs that gave up on an error (regions unreachable past the retry window, a refused report).
    pub failed: u64,
    /// The last failure, for diagnosis.
    pub last_error: Option<String>,
}

/// Most BMC actions kept per machine in [`Counters::actions`] (older ones are dropped and counted in
/// [`Counters::actions_dropped`]): a nemesis run of hours issues a few thousand per machine at most.
pub const ACTIONS_MAX: usize = 10_000;

/// A state-changing operation a BMC accepted: what a power command's driver does to the machine. A
/// duplicate of one of these (a command run twice) is what at-most-once must rule out.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BmcAction {
    /// A reset (Redfish `ComputerSystem.Reset`, IPMI Chassis Control), by its Redfish `ResetType` spelling.
    Reset {
        /// `On`, `ForceOff`, `GracefulShutdown`, `ForceRestart`, `GracefulRestart`, `PowerCycle`, `Nmi`.
        reset_type: String,
    },
    /// A change of the boot override (Redfish PATCH of `Boot`, IPMI Set System Boot Options).
    BootOverride {
        /// The override's target after the change.
        target: BootTarget,
        /// How long it lasts after the change.
        enabled: BootEnabled,
    },
}

/// One accepted [`BmcAction`] and when: the simulator's per-BMC record that a checker compares with the
/// power commands the regions recorded (each command may explain at most one action).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BmcActionRecord {
    /// When the BMC accepted it (ms since the Unix epoch, the simulator's clock).
    pub at_ms: u64,
    /// What it was.
    #[serde(flatten)]
    pub action: BmcAction,
}

/// Request and action counters, so tests and the benchmark can see what reached each BMC.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct Counters {
    /// Every HTTP request and IPMI datagram the BMC received.
    pub requests: u64,
    /// Power state queries: reads of the ComputerSystem resource, IPMI Get Chassis Status.
    pub queries: u64,
    /// Reset actions accepted (Redfish resets, IPMI Chassis Control).
    pub resets: u64,
    /// Boots (power-ons and restarts).
    pub boots: u64,
    /// Boots from the network.
    pub pxe_boots: u64,
    /// Boot override changes accepted (Redfish PATCH of `Boot`, IPMI boot flags).
    pub boot_overrides: u64,
    /// The newest [`ACTIONS_MAX`] state-changing actions the BMC accepted (resets and boot override
    /// changes), oldest first.
    pub actions: Vec<BmcActionRecord>,
    /// Actions dropped from `actions` because it was full.
    pub actions_dropped: u64,
    /// The agent's work.
    pub agent: AgentCounters,
}

/// A machine's identity with its live state: what the control API answers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MachineView {
    /// Identity, BMC address and credentials, inventory.
    #[serde(flatten)]
    pub info: SimMachineInfo,
    /// Current power state (as it really is, whatever a flapping BMC says).
    pub power: PowerState,
    /// Boot override and last boot device.
    pub boot: BootView,
    /// Fault knobs in effect.
    pub faults: Faults,
    /// What reached the BMC and what the agent did.
    pub counters: Counters,
}

struct State {
    power: PowerState,
    target: BootTarget,
    enabled: BootEnabled,
    mode: BootMode,
    last_boot: Option<BootTarget>,
    agent: AgentCounters,
    /// The newest accepted actions (at most [`ACTIONS_MAX`]).
    actions: std::collections::VecDeque<BmcActionRecord>,
    /// How many were dropped from `actions`.
    actions_dropped: u64,
}

/// Appends `action` (now) to the machine's action record, dropping the oldest beyond [`ACTIONS_MAX`].
fn record_action(st: &mut State, action: BmcAction) {
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    if st.actions.len() >= ACTIONS_MAX {
        st.actions.pop_front();
        st.actions_dropped += 1;
    }
    st.actions.push_back(BmcActionRecord { at_ms, action });
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it (the state stays consistent:
/// every critical section only assigns fields).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn credential_digest(username: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(username.as_bytes());
    h.update([0u8]);
    h.update(password.as_bytes());
    h.finalize().into()
}

/// One simulated machine, shared by its BMC, the agent, the control API and the fleet.
pub struct SimMachine {
    info: SimMachineInfo,
    state: Mutex<State>,
    faults: watch::Sender<Faults>,
    /// Bumped at every power-off and every boot: a running agent stops when it changes.
    epoch: watch::Sender<u64>,
    credential: [u8; 32],
    power_delay: Duration,
    agent: Option<Arc<Agent>>,
    pub(crate) requests: AtomicU64,
    pub(crate) queries: AtomicU64,
    resets: AtomicU64,
    boots: AtomicU64,
    pxe_boots: AtomicU64,
    boot_overrides: AtomicU64,
}

impl std::fmt::Debug for SimMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimMachine")
            .field("hostname", &self.info.hostname)
            .field("bmc_url", &self.info.bmc_url)
            .finish_non_exhaustive()
    }
}

impl SimMachine {
    /// A powered-off machine with no boot override and no faults. `agent`: how it behaves when it
    /// network-boots (`None`: it reports nothing).
    pub fn new(
        info: SimMachineInfo,
        power_delay: Duration,
        agent: Option<Arc<Agent>>,
    ) -> SimMachine {
        let credential = credential_digest(&info.username, &info.password);
        let mode = if info.inventory.firmware.boot_mode == "bios" {
            BootMode::Legacy
        } else {
            BootMode::Uefi
        };
        SimMachine {
            info,
            state: Mutex::new(State {
                power: PowerState::Off,
                target: BootTarget::None,
                enabled: BootEnabled::Disabled,
                mode,
                last_boot: None,
                agent: AgentCounters::default(),
                actions: std::collections::VecDeque::new(),
                actions_dropped: 0,
            }),
            faults: watch::channel(Faults::default()).0,
            epoch: watch::channel(0).0,
            credential,
            power_delay,
            agent,
            requests: AtomicU64::new(0),
            queries: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            boots: AtomicU64::new(0),
            pxe_boots: AtomicU64::new(0),
            boot_overrides: AtomicU64::new(0),
        }
    }

    /// Identity, BMC address and credentials.
    pub fn info(&self) -> &SimMachineInfo {
        &self.info
    }

    /// Identity plus live state and counters.
    pub fn view(&self) -> MachineView {
        let st = lock(&self.state);
        MachineView {
            info: self.info.clone(),
            power: st.power,
            boot: BootView {
                target: st.target,
                enabled: st.enabled,
                mode: st.mode,
                last_boot_device: st.last_boot,
            },
            faults: self.faults(),
            counters: Counters {
                requests: self.requests.load(Ordering::Relaxed),
                queries: self.queries.load(Ordering::Relaxed),
                resets: self.resets.load(Ordering::Relaxed),
                boots: self.boots.load(Ordering::Relaxed),
                pxe_boots: self.pxe_boots.load(Ordering::Relaxed),
                boot_overrides: self.boot_overrides.load(Ordering::Relaxed),
                actions: st.actions.iter().cloned().collect(),
                actions_dropped: st.actions_dropped,
                agent: st.agent.clone(),
            },
        }
    }

    /// The real power state.
    pub fn power_state(&self) -> PowerState {
        lock(&self.state).power
    }

    /// The boot override: target, enabled, mode.
    pub fn boot_override(&self) -> (BootTarget, BootEnabled, BootMode) {
        let st = lock(&self.state);
        (st.target, st.enabled, st.mode)
    }

    /// Changes the boot override; `None` leaves a field as it is. Setting a target other than `None`
    /// while the override is disabled (and `enabled` not given) makes it `Once`, as BMCs do; setting the
    /// target `None` (without `enabled`) disables the override.
    pub fn set_boot_override(
        &self,
        target: Option<BootTarget>,
        enabled: Option<BootEnabled>,
        mode: Option<BootMode>,
    ) {
        self.boot_overrides.fetch_add(1, Ordering::Relaxed);
        let mut st = lock(&self.state);
        if let Some(t) = target {
            st.target = t;
            if enabled.is_none() {
                if t == BootTarget::None {
                    st.enabled = BootEnabled::Disabled;
                } else if st.enabled == BootEnabled::Disabled {
                    st.enabled = BootEnabled::Once;
                }
            }
        }
        if let Some(e) = enabled {
            st.enabled = e;
        }
        if let Some(m) = mode {
            st.mode = m;
        }
        let action = BmcAction::BootOverride {
            target: st.target,
            enabled: st.enabled,
        };
        record_action(&mut st, action);
    }

    /// The fault knobs in effect.
    pub fn faults(&self) -> Faults {
        self.faults.borrow().clone()
    }

    /// Replaces the fault knobs (all off restores normal behaviour). Requests hanging on `unresponsive`
    /// are answered once it is cleared.
    pub fn set_faults(&self, faults: Faults) {
        self.faults.send_replace(faults);
    }

    /// Waits until the BMC is no longer `unresponsive`, or `max` passed. Returns false on timeout.
    pub(crate) async fn wait_responsive(&self, max: Duration) -> bool {
        let mut rx = self.faults.subscribe();
        let r = tokio::time::timeout(max, rx.wait_for(|f| !f.unresponsive)).await;
        matches!(r, Ok(Ok(_)))
    }

    /// True when `username`/`password` are this BMC's credentials (compared as digests).
    pub(crate) fn credentials_match(&self, username: &str, password: &str) -> bool {
        credential_digest(username, password) == self.credential
    }

    /// Someone pressed the power button (the control API): on boots the machine, off cuts power at once.
    pub fn press_power(self: &Arc<Self>, on: bool) {
        self.apply_reset(if on {
            ResetType::On
        } else {
            ResetType::ForceOff
        });
    }

    /// A reset action the BMC accepted: applied after the fleet's power delay (at once when it is 0).
    pub fn reset(self: &Arc<Self>, reset: ResetType) {
        self.resets.fetch_add(1, Ordering::Relaxed);
        record_action(
            &mut lock(&self.state),
            BmcAction::Reset {
                reset_type: reset.as_str().to_string(),
            },
        );
        if self.power_delay.is_zero() {
            self.apply_reset(reset);
        } else {
            let m = Arc::clone(self);
            let delay = self.power_delay;
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                m.apply_reset(reset);
            });
        }
    }

    fn apply_reset(self: &Arc<Self>, reset: ResetType) {
        let boot = {
            let mut st = lock(&self.state);
            match reset {
                ResetType::On => (st.power == PowerState::Off).then(|| self.boot_locked(&mut st)),
                ResetType::ForceOff | ResetType::GracefulShutdown => {
                    if st.power == PowerState::On {
                        st.power = PowerState::Off;
                        self.epoch.send_modify(|e| *e += 1);
                    }
                    None
                }
                ResetType::ForceRestart | ResetType::GracefulRestart | ResetType::PowerCycle => {
                    Some(self.boot_locked(&mut st))
                }
                ResetType::Nmi => None,
            }
        };
        if let Some((epoch, device)) = boot {
            tracing::debug!(machine = %self.info.hostname, device = device.redfish(), "booting");
            if device == BootTarget::Pxe {
                self.pxe_boots.fetch_add(1, Ordering::Relaxed);
                if let Some(agent) = &self.agent {
                    tokio::spawn(Arc::clone(agent).run(Arc::clone(self), epoch));
                }
            }
        }
    }

    /// Powers on (or restarts) under the state lock: picks the boot device, consumes a `Once` override,
    /// starts a new epoch (ending any agent work of the previous boot). Returns the epoch and the device.
    fn boot_locked(&self, st: &mut State) -> (u64, BootTarget) {
        st.power = PowerState::On;
        let device = match (st.enabled, st.target) {
            (BootEnabled::Once, t) if t != BootTarget::None => {
                st.enabled = BootEnabled::Disabled;
                st.target = BootTarget::None;
                t
            }
            (BootEnabled::Continuous, t) if t != BootTarget::None => t,
            // The firmware boot order: the local disk.
            _ => BootTarget::Hdd,
        };
        st.last_boot = Some(device);
        self.boots.fetch_add(1, Ordering::Relaxed);
        let mut epoch = 0;
        self.epoch.send_modify(|e| {
            *e += 1;
            epoch = *e;
        });
        (epoch, device)
    }

    /// A receiver of the boot epoch, for the agent to notice power-offs and reboots.
    pub(crate) fn subscribe_epoch(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    /// Ends any agent work in flight without changing power (fleet shutdown).
    pub(crate) fn cancel_agent(&self) {
        self.epoch.send_modify(|e| *e += 1);
    }

    /// Counts a run of the agent for `purpose`.
    pub(crate) fn note_agent_run(&self, purpose: &str) {
        *lock(&self.state)
            .agent
            .runs
            .entry(purpose.to_string())
            .or_default() += 1;
    }

    /// Records how an agent run ended.
    pub(crate) fn record_agent(&self, outcome: &AgentOutcome) {
        let mut st = lock(&self.state);
        let a = &mut st.agent;
        match outcome {
            AgentOutcome::Completed => a.completed += 1,
            AgentOutcome::NoSession => a.no_session += 1,
            AgentOutcome::Superseded => a.superseded += 1,
            AgentOutcome::Cancelled => a.cancelled += 1,
            AgentOutcome::Failed(e) => {
                a.failed += 1;
                a.last_error = Some(e.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Arc<SimMachine> {
        let info = SimMachineInfo {
            hostname: "sim-01".into(),
            uuid: "u".into(),
            mac: "52:54:00:00:00:01".into(),
            zone: "default".into(),
            arch: "amd64/generic".into(),
            bmc_url: "http://127.0.0.1:1".into(),
            username: "admin".into(),
            password: "pw".into(),
            system_id: "u".into(),
            inventory: Inventory::default(),
            ipmi_port: None,
        };
        Arc::new(SimMachine::new(info, Duration::ZERO, None))
    }

    #[tokio::test]
    async fn once_override_is_consumed_by_the_boot() {
        let m = machine();
        m.set_boot_override(Some(BootTarget::Pxe), None, None);
        assert_eq!(m.boot_override().1, BootEnabled::Once);
        m.reset(ResetType::On);
        let v = m.view();
        assert_eq!(v.power, PowerState::On);
        assert_eq!(v.boot.last_boot_device, Some(BootTarget::Pxe));
        assert_eq!(v.boot.enabled, BootEnabled::Disabled);
        m.reset(ResetType::ForceRestart);
        let v = m.view();
        assert_eq!(v.boot.last_boot_device, Some(BootTarget::Hdd));
        assert_eq!((v.counters.boots, v.counters.pxe_boots), (2, 1));
    }

    #[tokio::test]
    async fn continuous_override_persists_and_off_bumps_the_epoch() {
        let m = machine();
        m.set_boot_override(Some(BootTarget::Pxe), Some(BootEnabled::Continuous), None);
        let rx = m.subscribe_epoch();
        m.reset(ResetType::PowerCycle);
        m.reset(ResetType::PowerCycle);
        assert_eq!(m.view().counters.pxe_boots, 2);
        assert_eq!(*rx.borrow(), 2);
        m.press_power(false);
        assert_eq!(m.power_state(), PowerState::Off);
        assert_eq!(*rx.borrow(), 3);
        // Off again, and Nmi: no change.
        m.reset(ResetType::ForceOff);
        m.reset(ResetType::Nmi);
        assert_eq!(*rx.borrow(), 3);
    }

    #[tokio::test]
    async fn accepted_actions_are_recorded_in_order() {
        let m = machine();
        m.set_boot_override(Some(BootTarget::Pxe), None, None);
        m.reset(ResetType::PowerCycle);
        // The power button is not a BMC action.
        m.press_power(false);
        let c = m.view().counters;
        assert_eq!((c.resets, c.boot_overrides, c.actions_dropped), (1, 1, 0));
        assert_eq!(
            c.actions
                .iter()
                .map(|a| a.action.clone())
                .collect::<Vec<_>>(),
            vec![
                BmcAction::BootOverride {
                    target: BootTarget::Pxe,
                    enabled: BootEnabled::Once
                },
                BmcAction::Reset {
                    reset_type: "PowerCycle".into()
                },
            ]
        );
        assert!(c.actions[0].at_ms > 0 && c.actions[0].at_ms <= c.actions[1].at_ms);
        let json = serde_json::to_value(&c.actions[1]).unwrap();
        assert_eq!(json["kind"], "reset");
        assert_eq!(json["reset_type"], "PowerCycle");
    }

    #[test]
    fn faults_describe() {
        assert_eq!(Faults::default().describe(), "-");
        let f = Faults {
            slow_ms: 5,
            flapping: true,
            ..Faults::default()
        };
        assert_eq!(f.describe(), "slow_ms=5,flapping");
        assert!(serde_json::from_str::<Faults>(r#"{"slowms": 1}"#).is_err());
    }

    #[test]
    fn ipmi_port_is_optional_in_json() {
        let mut info = machine().info().clone();
        let mut v = serde_json::to_value(&info).unwrap();
        assert_eq!(v["ipmi_port"], serde_json::Value::Null);
        v.as_object_mut().unwrap().remove("ipmi_port");
        assert_eq!(serde_json::from_value::<SimMachineInfo>(v).unwrap(), info);
        info.ipmi_port = Some(6230);
        let v = serde_json::to_value(&info).unwrap();
        assert_eq!(v["ipmi_port"], 6230);
        assert_eq!(serde_json::from_value::<SimMachineInfo>(v).unwrap(), info);
    }

    #[test]
    fn credentials_are_checked() {
        let m = machine();
        assert!(m.credentials_match("admin", "pw"));
        assert!(!m.credentials_match("admin", "pW"));
        assert!(!m.credentials_match("admin\0pw", ""));
    }
}
