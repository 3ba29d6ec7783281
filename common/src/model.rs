//! The replicated records. These are what the Raft state machine stores and snapshots; the gRPC types in
//! `ingot-proto` are converted to and from them at the API edge.

use crate::Mac;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A region's Raft node id, assigned by the cluster when it joins (the first region is 1).
pub type NodeId = u64;

/// The MAAS lifecycle statuses. Machines enlisted by API start in [`MachineStatus::New`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs)] // the names are the MAAS statuses; see the lifecycle table
pub enum MachineStatus {
    New,
    Commissioning,
    FailedCommissioning,
    Testing,
    FailedTesting,
    Ready,
    Allocated,
    Deploying,
    Deployed,
    FailedDeployment,
    Releasing,
    FailedReleasing,
    DiskErasing,
    FailedDiskErasing,
    EnteringRescueMode,
    FailedEnteringRescueMode,
    RescueMode,
    ExitingRescueMode,
    FailedExitingRescueMode,
    Broken,
    Missing,
    Retired,
}

impl MachineStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [MachineStatus; 22] = [
        Self::New,
        Self::Commissioning,
        Self::FailedCommissioning,
        Self::Testing,
        Self::FailedTesting,
        Self::Ready,
        Self::Allocated,
        Self::Deploying,
        Self::Deployed,
        Self::FailedDeployment,
        Self::Releasing,
        Self::FailedReleasing,
        Self::DiskErasing,
        Self::FailedDiskErasing,
        Self::EnteringRescueMode,
        Self::FailedEnteringRescueMode,
        Self::RescueMode,
        Self::ExitingRescueMode,
        Self::FailedExitingRescueMode,
        Self::Broken,
        Self::Missing,
        Self::Retired,
    ];

    /// The operator-facing name, as MAAS spells it in its CLI (kebab case).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Commissioning => "commissioning",
            Self::FailedCommissioning => "failed-commissioning",
            Self::Testing => "testing",
            Self::FailedTesting => "failed-testing",
            Self::Ready => "ready",
            Self::Allocated => "allocated",
            Self::Deploying => "deploying",
            Self::Deployed => "deployed",
            Self::FailedDeployment => "failed-deployment",
            Self::Releasing => "releasing",
            Self::FailedReleasing => "failed-releasing",
            Self::DiskErasing => "disk-erasing",
            Self::FailedDiskErasing => "failed-disk-erasing",
            Self::EnteringRescueMode => "entering-rescue-mode",
            Self::FailedEnteringRescueMode => "failed-entering-rescue-mode",
            Self::RescueMode => "rescue-mode",
            Self::ExitingRescueMode => "exiting-rescue-mode",
            Self::FailedExitingRescueMode => "failed-exiting-rescue-mode",
            Self::Broken => "broken",
            Self::Missing => "missing",
            Self::Retired => "retired",
        }
    }

    /// Parses [`MachineStatus::as_str`] names (also accepting `_` for `-` and any case).
    pub fn parse(s: &str) -> Option<Self> {
        let norm = s.trim().to_ascii_lowercase().replace('_', "-");
        Self::ALL.into_iter().find(|st| st.as_str() == norm)
    }
}

/// How a machine's BMC is reached: a driver name and its parameters.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct PowerParams {
    /// `ipmi`, `redfish`, `webhook`, `manual`, `sim`, or empty when not configured yet.
    pub driver: String,
    /// Driver parameters (address, username, password, ...). Secret ones are redacted by the API.
    pub params: BTreeMap<String, String>,
}

impl PowerParams {
    /// True for parameter names whose values are secrets and must never be shown or logged by default.
    pub fn is_secret_key(key: &str) -> bool {
        let k = key.to_ascii_lowercase();
        k.contains("password") || k.contains("secret") || k.contains("key") || k.contains("token")
    }

    /// A copy with every secret value replaced by `********`.
    pub fn redacted(&self) -> PowerParams {
        let params = self
            .params
            .iter()
            .map(|(k, v)| {
                let v = if Self::is_secret_key(k) {
                    "********".to_string()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect();
        PowerParams {
            driver: self.driver.clone(),
            params,
        }
    }
}

/// A physical server known to Ingot.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    /// Stable id chosen at enlistment: 6 characters from `[a-z0-9]`.
    pub system_id: String,
    /// Unique DNS label.
    pub hostname: String,
    /// Architecture such as `amd64/generic`.
    pub arch: String,
    /// Availability zone name (always an existing zone).
    pub zone: String,
    /// Lifecycle status.
    pub status: MachineStatus,
    /// Boot MACs, each unique in the cluster; the first is the PXE interface.
    pub macs: Vec<Mac>,
    /// BMC access.
    pub power: PowerParams,
    /// Free text for operators.
    pub description: String,
    /// When the machine was enlisted (ms since epoch, chosen by the proposing region).
    pub created_ms: u64,
    /// When the machine last changed.
    pub updated_ms: u64,
    /// Raft log index of the last change: the compare-and-set token for updates.
    pub revision: u64,
}

/// An availability zone: a failure domain machines are placed in.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Zone {
    /// Unique DNS label.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Creation time, ms since epoch.
    pub created_ms: u64,
}

/// A region controller that is, or was admitted to become, a member of the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    /// Raft node id.
    pub node_id: NodeId,
    /// Operator-chosen unique name.
    pub name: String,
    /// host:port of its mutual-TLS Raft listener.
    pub raft_addr: String,
    /// host:port of its client API.
    pub api_addr: String,
    /// When it was admitted, ms since epoch.
    pub joined_ms: u64,
}

/// The name of the zone that always exists and that machines go to when none is given.
pub const DEFAULT_ZONE: &str = "default";
/// The architecture machines get when none is given.
pub const DEFAULT_ARCH: &str = "amd64/generic";
