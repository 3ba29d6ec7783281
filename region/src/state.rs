//! The replicated state held in memory, with the secondary indexes that make every lookup a map access.
//!
//! [`Data`] is the durable part (what a snapshot contains); [`State`] adds indexes rebuilt from it. Only
//! [`crate::apply`] mutates a `State`; API reads take a shared lock on it.

use ingot_common::pki::ClusterCa;
use ingot_common::{Mac, Machine, MachineStatus, NodeId, RegionInfo, Zone};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// Cluster-wide identity, set by the bootstrap command.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ClusterMeta {
    /// Random id given at `init`; a data directory from another cluster is refused by comparing it.
    pub cluster_id: String,
    /// The CA that signs region (and later rack) certificates.
    pub ca: ClusterCa,
    /// Creation time.
    pub created_ms: u64,
}

/// An API bearer token, stored by hash.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ApiToken {
    /// Operator-facing name.
    pub name: String,
    /// `admin` for now; `user` arrives with roles.
    pub role: String,
    /// Creation time.
    pub created_ms: u64,
}

/// The durable replicated data: exactly what a snapshot serializes.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Data {
    /// None until the bootstrap command is applied.
    pub cluster: Option<ClusterMeta>,
    /// Machines by system id.
    pub machines: BTreeMap<String, Machine>,
    /// Zones by name.
    pub zones: BTreeMap<String, Zone>,
    /// API tokens by SHA-256 hex.
    pub tokens: BTreeMap<String, ApiToken>,
    /// Unused join tokens by SHA-256 hex, with their expiry (ms).
    pub join_tokens: BTreeMap<String, u64>,
    /// Admitted regions by node id.
    pub regions: BTreeMap<NodeId, RegionInfo>,
    /// Node id the next admitted region gets.
    pub next_node_id: NodeId,
    /// Answers to recently applied commands by request id, so retried proposals are applied once.
    pub recent: HashMap<String, crate::command::Response>,
    /// (apply time, request id) in apply order, to expire `recent` deterministically.
    pub recent_order: VecDeque<(u64, String)>,
}

/// [`Data`] plus indexes. Indexes are never serialized; [`State::from_data`] rebuilds them.
#[derive(Debug, Default)]
pub struct State {
    /// The durable data.
    pub data: Data,
    /// MAC → system id (MACs are unique across machines).
    pub by_mac: HashMap<Mac, String>,
    /// Hostname → system id.
    pub by_hostname: HashMap<String, String>,
    /// Zone → system ids in it (filtered lists and zone counts without a scan).
    pub by_zone: HashMap<String, BTreeSet<String>>,
    /// Status → system ids.
    pub by_status: HashMap<MachineStatus, BTreeSet<String>>,
}

impl State {
    /// Builds the indexes for `data`.
    pub fn from_data(data: Data) -> State {
        let mut s = State {
            data,
            ..Default::default()
        };
        let machines: Vec<Machine> = s.data.machines.values().cloned().collect();
        for m in &machines {
            s.index(m);
        }
        s
    }

    /// Adds `m` to every index.
    pub fn index(&mut self, m: &Machine) {
        for mac in &m.macs {
            self.by_mac.insert(*mac, m.system_id.clone());
        }
        self.by_hostname
            .insert(m.hostname.clone(), m.system_id.clone());
        self.by_zone
            .entry(m.zone.clone())
            .or_default()
            .insert(m.system_id.clone());
        self.by_status
            .entry(m.status)
            .or_default()
            .insert(m.system_id.clone());
    }

    /// Removes `m` from every index.
    pub fn unindex(&mut self, m: &Machine) {
        for mac in &m.macs {
            self.by_mac.remove(mac);
        }
        self.by_hostname.remove(&m.hostname);
        if let Some(set) = self.by_zone.get_mut(&m.zone) {
            set.remove(&m.system_id);
        }
        if let Some(set) = self.by_status.get_mut(&m.status) {
            set.remove(&m.system_id);
        }
    }

    /// Machines in a zone.
    pub fn zone_count(&self, zone: &str) -> u64 {
        self.by_zone.get(zone).map(|s| s.len() as u64).unwrap_or(0)
    }

    /// Finds a machine by system id.
    pub fn machine(&self, id: &str) -> Option<&Machine> {
        self.data.machines.get(id)
    }

    /// Finds a machine by MAC.
    pub fn machine_by_mac(&self, mac: &Mac) -> Option<&Machine> {
        self.by_mac
            .get(mac)
            .and_then(|id| self.data.machines.get(id))
    }

    /// Finds a machine by hostname.
    pub fn machine_by_hostname(&self, h: &str) -> Option<&Machine> {
        self.by_hostname
            .get(h)
            .and_then(|id| self.data.machines.get(id))
    }

    /// One page of machines matching `f`, in system-id order, starting after `after`. Uses the narrowest
    /// index the filter allows. Returns the page, whether more remain, and the total number of matches.
    pub fn list_machines(
        &self,
        f: &MachineQuery,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<Machine>, bool, u64) {
        let matches = |m: &Machine| {
            f.zone.as_ref().is_none_or(|z| &m.zone == z)
                && f.status.is_none_or(|s| m.status == s)
                && f.arch.as_ref().is_none_or(|a| &m.arch == a)
                && f.hostname_prefix
                    .as_ref()
                    .is_none_or(|p| m.hostname.starts_with(p.as_str()))
                && f.mac.is_none_or(|mac| m.macs.contains(&mac))
        };
        let mut page = Vec::with_capacity(limit.min(1024));
        let mut total = 0u64;
        let mut more = false;
        let mut visit = |m: &Machine| {
            if !matches(m) {
                return;
            }
            total += 1;
            if after.is_some_and(|a| m.system_id.as_str() <= a) {
                return;
            }
            if page.len() < limit {
                page.push(m.clone());
            } else {
                more = true;
            }
        };
        if let Some(mac) = f.mac {
            if let Some(m) = self.machine_by_mac(&mac) {
                visit(m);
            }
        } else {
            let ids: Option<&BTreeSet<String>> = match (&f.zone, f.status) {
                (Some(z), Some(s)) => {
                    let a = self.by_zone.get(z);
                    let b = self.by_status.get(&s);
                    match (a, b) {
                        (Some(a), Some(b)) => Some(if a.len() <= b.len() { a } else { b }),
                        _ => return (vec![], false, 0),
                    }
                }
                (Some(z), None) => match self.by_zone.get(z) {
                    Some(a) => Some(a),
                    None => return (vec![], false, 0),
                },
                (None, Some(s)) => match self.by_status.get(&s) {
                    Some(b) => Some(b),
                    None => return (vec![], false, 0),
                },
                (None, None) => None,
            };
            match ids {
                Some(ids) => ids
                    .iter()
                    .filter_map(|id| self.data.machines.get(id))
                    .for_each(&mut visit),
                None => self.data.machines.values().for_each(&mut visit),
            }
        }
        (page, more, total)
    }
}

/// Machine list filters, already parsed and validated.
#[derive(Debug, Default, Clone)]
pub struct MachineQuery {
    /// Exact zone.
    pub zone: Option<String>,
    /// Exact status.
    pub status: Option<MachineStatus>,
    /// Exact architecture.
    pub arch: Option<String>,
    /// Hostname prefix.
    pub hostname_prefix: Option<String>,
    /// Owns this MAC.
    pub mac: Option<Mac>,
}
