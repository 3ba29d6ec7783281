//! `ingot-sim`: Ingot's simulated machines, as product code (in the line of Oxide's sp-sim). Each machine
//! has a BMC speaking real Redfish over HTTP on its own `127.0.0.1` port and real IPMI 2.0 over LAN (RMCP+)
//! on its own UDP port — power, boot override, sessions, fault knobs, one machine state behind both — and,
//! when it boots from the network while Ingot is commissioning, testing, deploying, erasing or rescuing it,
//! it behaves like a machine running Ingot's in-band agent: it reports inventory, progress and result
//! through the same region gRPC API a real agent uses. Tests, `ingot dev` and the benchmark drive thousands
//! of them in one process.
//!
//! Layout:
//! - [`config`] — [`FleetConfig`] / [`AgentConfig`] — how many machines, names, zones, BMC credentials and
//!   lag, the agent's regions and pacing.
//! - [`hardware`] — deterministic identity (MAC, UUID) and varied hardware inventories from the seed.
//! - [`machine`] — [`SimMachine`] — power state, boot override (`Once` consumed by the boot), fault knobs
//!   ([`Faults`]), counters; a boot from PXE starts the agent.
//! - [`redfish`] — the axum router of one BMC (service root, Systems, Reset, Managers, SessionService;
//!   basic and session auth; Redfish error bodies); faults are applied here.
//! - [`ipmi`] — the same BMC over IPMI 2.0 / RMCP+ on its own UDP port (handshake, sessions, chassis
//!   commands, boot options), with the wire format and crypto of `ingot-rmcp`, which the rack's IPMI client
//!   uses too; faults apply here too.
//! - [`agent`] — the in-band agent ([`RegionApi`], [`GrpcRegion`] over `ingot-client`): boot credentials by
//!   hostname, then the purpose's reports; retries while regions are unavailable, stops on power-off or a
//!   superseded boot.
//! - [`control`] — the control API (JSON over HTTP on loopback: list, inspect, set faults, press power) and
//!   its client [`ControlClient`].
//! - [`fleet`] — [`Fleet::start`] — binds every BMC and the control API, writes `machines.json` and
//!   `control.url`.
//! - [`error`] — [`SimError`].
//!
//! The binary `ingot-sim` (`src/main.rs`) has `run`, `fault` and `list`.

pub mod agent;
pub mod config;
pub mod control;
pub mod error;
pub mod fleet;
pub mod hardware;
pub mod ipmi;
pub mod machine;
pub mod redfish;

pub use agent::{BootCredentials, GrpcRegion, RegionApi};
pub use config::{AgentConfig, FleetConfig, ProgressStep};
pub use control::ControlClient;
pub use error::SimError;
pub use fleet::Fleet;
pub use machine::{
    AgentCounters, BmcAction, BmcActionRecord, BootEnabled, BootTarget, Counters, Faults,
    MachineView, PowerState, ResetType, SimMachine, SimMachineInfo, ACTIONS_MAX,
};
