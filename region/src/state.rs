//! The replicated state held in memory, with the secondary indexes that make every lookup a map access.
//!
//! [`Data`] is the durable part (what a snapshot contains); [`State`] adds indexes rebuilt from it. Only
//! [`crate::apply`] mutates a `State`; API reads take a shared lock on it.

use ingot_common::model::{Event, Pool, PowerCommand, PowerCommandState, Rack, Role, Tag, User};
use ingot_common::pki::ClusterCa;
use ingot_common::tagexpr::TagExpr;
use ingot_common::{DomainError, Mac, Machine, MachineStatus, NodeId, RegionInfo, Zone};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

mod boot;
pub use boot::{serves, BootIndex, LeaseChange, LEASE_CHANGES_MAX};

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
    /// The user the token acts as.
    pub name: String,
    /// Role of tokens made before users existed; the user's role wins when the user exists.
    pub role: String,
    /// Creation time.
    pub created_ms: u64,
    /// Short public id, used to list and revoke it.
    #[serde(default)]
    pub id: String,
    /// What the token is for.
    #[serde(default)]
    pub description: String,
    /// Expiry (ms since epoch); `None`: never.
    #[serde(default)]
    pub expires_ms: Option<u64>,
}

/// The public id of API token `t`, stored under `hash`: its own, or — for a token made before tokens
/// had ids — one derived from its hash (`h` + the first 12 hex digits), so every token can be named in
/// a command's principal, listed and revoked. Derived, never stored: every replica derives the same.
pub fn token_id_of(hash: &str, t: &ApiToken) -> String {
    if t.id.is_empty() {
        format!("h{}", hash.get(..12).unwrap_or(hash))
    } else {
        t.id.clone()
    }
}

/// What an allocation request got, remembered so that repeating its request id returns the same machines.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct AllocationRecord {
    /// The machines, in the order they were returned.
    pub system_ids: Vec<String>,
    /// When it was served.
    pub ts_ms: u64,
}

/// Cluster-wide settings, changed through `ClusterService.UpdateSettings`.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Settings {
    /// Deadline (seconds) per in-progress status, overriding `lifecycle::default_deadline_s`.
    #[serde(default)]
    pub deadlines: BTreeMap<MachineStatus, u64>,
}

impl Settings {
    /// The deadline of `s` in seconds, if it has one.
    pub fn deadline_s(&self, s: MachineStatus) -> Option<u64> {
        self.deadlines
            .get(&s)
            .copied()
            .or_else(|| ingot_common::lifecycle::default_deadline_s(s))
    }
}

/// One entry of the change history that `Watch` serves.
#[derive(Clone, Debug)]
pub struct Change {
    /// Revision of the change.
    pub revision: u64,
    /// True when the machine was deleted (then `machine` is its last state).
    pub deleted: bool,
    /// The machine after the change.
    pub machine: Arc<Machine>,
}

/// Most events kept; the oldest are dropped first.
pub const EVENTS_MAX: usize = 200_000;
/// Most changes kept in memory for `Watch`; a watcher further behind must list again.
pub const CHANGES_MAX: usize = 50_000;
/// How long allocation records are kept after the machines left their owner (ms): repeating a request id
/// within a day is answered from the record.
pub const ALLOCATION_RECORD_MS: u64 = 24 * 3600 * 1000;
/// Most allocation records kept.
pub const ALLOCATION_RECORDS_MAX: usize = 200_000;

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
    /// The apply clock (ms since epoch): the largest `ts_ms` of any applied command. Apply time is
    /// `max(ts_ms, apply_clock_ms)`, so it never goes backwards when a proposer's clock does, and the
    /// dedup window (`recent`) is measured by it, not by any one proposer's clock.
    #[serde(default)]
    pub apply_clock_ms: u64,
    /// Resource pools by name.
    #[serde(default)]
    pub pools: BTreeMap<String, Pool>,
    /// Tags by name.
    #[serde(default)]
    pub tags: BTreeMap<String, Tag>,
    /// Users by name.
    #[serde(default)]
    pub users: BTreeMap<String, User>,
    /// The newest events, oldest first (at most [`EVENTS_MAX`]).
    #[serde(default)]
    pub events: VecDeque<Event>,
    /// Served allocations by `owner/request_id`.
    #[serde(default)]
    pub allocations: HashMap<String, AllocationRecord>,
    /// (time, key) of `allocations` in apply order, to expire them deterministically.
    #[serde(default)]
    pub allocation_order: VecDeque<(u64, String)>,
    /// Cluster settings.
    #[serde(default)]
    pub settings: Settings,
    /// Revision of the last applied command.
    #[serde(default)]
    pub revision: u64,
    /// Rack controllers by name.
    #[serde(default)]
    pub racks: BTreeMap<String, Rack>,
    /// Unused rack enrollment tokens by SHA-256 hex, with their expiry (ms).
    #[serde(default)]
    pub rack_tokens: BTreeMap<String, u64>,
    /// Power commands by id (the newest [`POWER_COMMANDS_MAX`]).
    /// (Serialized as `commands`, its name before "command" meant only the Raft envelope.)
    #[serde(default, rename = "commands")]
    pub power_commands: BTreeMap<u64, PowerCommand>,
    /// Id of the next power command (serialized as `next_command_id`, its earlier name).
    #[serde(default, rename = "next_command_id")]
    pub next_power_command_id: u64,
    /// True once the log holds a command an upgraded leader (or `init`) proposed: from then on every
    /// command must name its principal and is authorized by it; entries before that apply as they always
    /// did (see `apply::authz`).
    #[serde(default)]
    pub principals_required: bool,
    /// Serial (lowercase hex) of the certificate issued to each admitted region and registered rack, by
    /// the certificate's common name (`region-<id>`, `rack-<name>`): what goes on `revoked_serials` when
    /// the region is removed or the rack revoked.
    #[serde(default)]
    pub cert_serials: BTreeMap<String, String>,
    /// Serials of certificates the cluster listener refuses: those of removed regions and revoked racks
    /// (a certificate stays valid for years; its holder's standing does not).
    #[serde(default)]
    pub revoked_serials: BTreeSet<String>,
    /// Boot networks racks serve, by CIDR text (`10.20.0.0/24`; a string key so the snapshot's JSON map
    /// has string keys). Never overlapping.
    #[serde(default)]
    pub subnets: BTreeMap<String, ingot_common::net::Subnet>,
    /// DHCP leases of every subnet, by address (subnets never overlap, so an address names one lease).
    /// Written by racks in batches (`Op::CommitLeases`); kept after expiry as each MAC's sticky address
    /// until the address is needed by another MAC.
    #[serde(default)]
    pub leases: BTreeMap<std::net::Ipv4Addr, ingot_common::net::Lease>,
    /// Boot images by name (`Op::PutImage`); their bytes are blobs held by regions ([`Data::blob_holders`]).
    #[serde(default)]
    pub images: BTreeMap<String, ingot_common::image::Image>,
    /// Which regions hold a verified copy of each blob an image references (`Op::PutImage`,
    /// `Op::RecordBlobs`): where regions and racks fetch from, and whether an upload reached a majority.
    #[serde(default)]
    pub blob_holders: BTreeMap<ingot_common::image::BlobId, BTreeSet<ingot_common::NodeId>>,
}

/// Boot tokens of state written by an older version were stored in plaintext: keep only their hash (the
/// same on every replica, so the state stays identical), and the next snapshot holds no plaintext.
fn hash_legacy_boot_tokens(data: &mut Data) {
    for m in data.machines.values_mut() {
        if let Some(b) = m.boot.as_mut() {
            if !b.legacy_token.is_empty() {
                b.token_hash = ingot_common::secret::hash(&b.legacy_token);
                b.legacy_token = String::new();
            }
        }
    }
}

/// How often a region records a rack session's heartbeat in the log (ms); liveness allows for this lag.
pub const HEARTBEAT_RECORD_MS: u64 = 1_000;

/// Most power commands kept (finished ones are dropped oldest first).
pub const POWER_COMMANDS_MAX: usize = 100_000;

/// Most API tokens one user may hold: tokens are part of every snapshot, and a user needs a few (one per
/// tool or machine), not thousands.
pub const TOKENS_PER_USER_MAX: usize = 100;

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
    /// (zone, status) → system ids: the exact answer of the most common filtered list.
    pub by_zone_status: HashMap<(String, MachineStatus), BTreeSet<String>>,
    /// Pool → system ids.
    pub by_pool: HashMap<String, BTreeSet<String>>,
    /// Owner → system ids.
    pub by_owner: HashMap<String, BTreeSet<String>>,
    /// Consumer → system id, for owned machines with a consumer.
    pub by_consumer: HashMap<String, String>,
    /// Tag → system ids.
    pub by_tag: HashMap<String, BTreeSet<String>>,
    /// `owner/request_id` → the machines that allocation still holds (idempotent replays without a scan).
    pub by_allocation: HashMap<String, BTreeSet<String>>,
    /// Ready machines by (cost, system id): allocation walks this from the cheapest.
    pub ready: BTreeSet<(u64, String)>,
    /// In-progress machines by (deadline, system id): the deadline sweeper reads the front.
    pub by_deadline: BTreeSet<(u64, String)>,
    /// Tag definitions, compiled.
    pub tag_exprs: BTreeMap<String, TagExpr>,
    /// Rack → machines whose BMC it owns.
    pub by_rack: HashMap<String, BTreeSet<String>>,
    /// Ids of pending power commands.
    pub pending_power_commands: BTreeSet<u64>,
    /// API token id → the token's hash (its key in `data.tokens`): revocation and apply's principal
    /// check find a token without a scan.
    pub token_ids: HashMap<String, String>,
    /// User → the hashes of the user's API tokens: per-user counts (the cap) and lists without a scan.
    pub tokens_by_user: HashMap<String, BTreeSet<String>>,
    /// Recent machine changes for `Watch`, oldest first.
    pub changes: VecDeque<Change>,
    /// Every change after this revision is in `changes` (older ones were dropped, or predate the
    /// snapshot this state was loaded from).
    pub changes_floor: u64,
    /// The boot path's indexes (leases by MAC, recent lease changes, the known-MAC version).
    pub boot: BootIndex,
}

impl State {
    /// Builds the indexes for `data`.
    pub fn from_data(data: Data) -> State {
        let mut s = State {
            data,
            ..Default::default()
        };
        hash_legacy_boot_tokens(&mut s.data);
        let machines: Vec<Machine> = s.data.machines.values().cloned().collect();
        for m in &machines {
            s.index(m);
        }
        for t in s.data.tags.values() {
            if !t.definition.is_empty() {
                if let Ok(e) = TagExpr::parse(&t.definition) {
                    s.tag_exprs.insert(t.name.clone(), e);
                }
            }
        }
        let tokens: Vec<(String, ApiToken)> = s
            .data
            .tokens
            .iter()
            .map(|(h, t)| (h.clone(), t.clone()))
            .collect();
        for (h, t) in tokens {
            s.index_token(&h, &t);
        }
        s.changes_floor = s.data.revision;
        s.boot = BootIndex::from_data(&s.data);
        s.pending_power_commands = s
            .data
            .power_commands
            .values()
            .filter(|c| c.state == PowerCommandState::Pending)
            .map(|c| c.id)
            .collect();
        s
    }

    /// True if rack `name` keeps its BMCs at `now`: registered, unrevoked, and its session open with a
    /// recorded heartbeat within `grace_ms` (plus one recording interval, since records lag the beats), or
    /// ended less than `grace_ms` ago.
    pub fn rack_live(&self, name: &str, now: u64, grace_ms: u64) -> bool {
        self.data.racks.get(name).is_some_and(|r| {
            !r.revoked
                && r.session.as_ref().is_some_and(|s| {
                    let window = match s.ended_ms {
                        Some(_) => grace_ms,
                        None => grace_ms + HEARTBEAT_RECORD_MS,
                    };
                    s.last_heartbeat_ms.saturating_add(window) > now
                })
        })
    }

    /// True if rack `name` has an open session whose heartbeats are current (what `connected` shows).
    pub fn rack_connected(&self, name: &str, now: u64, grace_ms: u64) -> bool {
        self.rack_live(name, now, grace_ms)
            && self
                .data
                .racks
                .get(name)
                .is_some_and(|r| r.session.as_ref().is_some_and(|s| s.ended_ms.is_none()))
    }

    /// Stores `m` (new or changed) with every index updated, and records the change for watchers.
    pub fn put_machine(&mut self, m: Machine) {
        let old = self.data.machines.get(&m.system_id).cloned();
        if old.as_ref().is_none_or(|o| o.macs != m.macs) {
            self.boot.macs_changed();
        }
        if let Some(old) = old {
            self.unindex(&old);
        }
        self.index(&m);
        self.record_change(false, &m);
        self.data.machines.insert(m.system_id.clone(), m);
    }

    /// Removes a machine with its index entries, recording the deletion for watchers.
    pub fn remove_machine(&mut self, id: &str) -> Option<Machine> {
        let m = self.data.machines.remove(id)?;
        self.boot.macs_changed();
        self.unindex(&m);
        self.record_change(true, &m);
        Some(m)
    }

    fn record_change(&mut self, deleted: bool, m: &Machine) {
        self.changes.push_back(Change {
            revision: m.revision,
            deleted,
            machine: Arc::new(m.clone()),
        });
        while self.changes.len() > CHANGES_MAX {
            if let Some(c) = self.changes.pop_front() {
                self.changes_floor = self.changes_floor.max(c.revision);
            }
        }
    }

    /// Machines per status among `ids`.
    pub fn status_counts<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a String>,
    ) -> BTreeMap<MachineStatus, u64> {
        let mut out = BTreeMap::new();
        for id in ids {
            if let Some(m) = self.data.machines.get(id) {
                *out.entry(m.status).or_insert(0) += 1;
            }
        }
        out
    }

    /// True if `user` is an admin now (see [`State::role_of`]).
    pub fn is_admin(&self, user: &str) -> bool {
        self.role_of(user) == Some(Role::Admin)
    }

    /// The current role of `user`: its user record's, or — for a name with tokens made before users
    /// existed — the role stored with those tokens (admin if any says so). `None`: no such caller.
    pub fn role_of(&self, user: &str) -> Option<Role> {
        if let Some(u) = self.data.users.get(user) {
            return Some(u.role);
        }
        let mut role = None;
        for t in self.tokens_of_user(user) {
            if Role::parse(&t.role) == Some(Role::Admin) {
                return Some(Role::Admin);
            }
            role = Some(Role::User);
        }
        role
    }

    /// Stores API token `t` under `hash`, with its index entries.
    pub fn put_token(&mut self, hash: String, t: ApiToken) {
        self.remove_token(&hash);
        self.index_token(&hash, &t);
        self.data.tokens.insert(hash, t);
    }

    /// The hashes of `user`'s API tokens (a copy: callers change the tokens while walking them).
    pub fn token_hashes_of(&self, user: &str) -> Vec<String> {
        self.tokens_by_user
            .get(user)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Removes the API token stored under `hash`, with its index entries.
    pub fn remove_token(&mut self, hash: &str) -> Option<ApiToken> {
        let t = self.data.tokens.remove(hash)?;
        let id = token_id_of(hash, &t);
        if self.token_ids.get(&id).is_some_and(|h| h == hash) {
            self.token_ids.remove(&id);
        }
        if let Some(set) = self.tokens_by_user.get_mut(&t.name) {
            set.remove(hash);
            if set.is_empty() {
                self.tokens_by_user.remove(&t.name);
            }
        }
        Some(t)
    }

    fn index_token(&mut self, hash: &str, t: &ApiToken) {
        self.token_ids
            .insert(token_id_of(hash, t), hash.to_string());
        self.tokens_by_user
            .entry(t.name.clone())
            .or_default()
            .insert(hash.to_string());
    }

    /// The API token with public id `id` (see [`token_id_of`]), with its hash.
    pub fn token_by_id(&self, id: &str) -> Option<(&String, &ApiToken)> {
        let hash = self.token_ids.get(id)?;
        self.data.tokens.get_key_value(hash)
    }

    /// The API tokens of `user`.
    pub fn tokens_of_user<'a>(&'a self, user: &str) -> impl Iterator<Item = &'a ApiToken> + 'a {
        self.tokens_by_user
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|h| self.data.tokens.get(h))
    }

    /// How many API tokens `user` holds.
    pub fn token_count(&self, user: &str) -> usize {
        self.tokens_by_user.get(user).map_or(0, |s| s.len())
    }

    /// Who token `t` (public id `t.id`) acts for at time `now_ms`: its user and that user's current role.
    /// Refused once it has expired, or if its user no longer exists. The one check behind the API edge,
    /// the re-check after a read barrier, and the apply step's.
    pub fn token_caller(&self, t: &ApiToken, now_ms: u64) -> Result<(String, Role), DomainError> {
        if t.expires_ms.is_some_and(|e| e <= now_ms) {
            return Err(DomainError::unauthenticated(format!(
                "token {} expired; create a new one with `ingot tokens create`",
                t.id
            )));
        }
        match self.role_of(&t.name) {
            Some(role) => Ok((t.name.clone(), role)),
            None => Err(DomainError::unauthenticated(format!(
                "token {} acts for user '{}', who no longer exists",
                t.id, t.name
            ))),
        }
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
        self.by_zone_status
            .entry((m.zone.clone(), m.status))
            .or_default()
            .insert(m.system_id.clone());
        self.by_pool
            .entry(m.pool.clone())
            .or_default()
            .insert(m.system_id.clone());
        if let Some(o) = &m.owner {
            self.by_owner
                .entry(o.clone())
                .or_default()
                .insert(m.system_id.clone());
        }
        if let Some(a) = m.allocation.as_ref().filter(|a| !a.consumer.is_empty()) {
            self.by_consumer
                .insert(a.consumer.clone(), m.system_id.clone());
        }
        if let (Some(o), Some(a)) = (&m.owner, &m.allocation) {
            self.by_allocation
                .entry(format!("{o}/{}", a.request_id))
                .or_default()
                .insert(m.system_id.clone());
        }
        for t in &m.tags {
            self.by_tag
                .entry(t.clone())
                .or_default()
                .insert(m.system_id.clone());
        }
        if m.status == MachineStatus::Ready && !m.locked && m.owner.is_none() {
            self.ready
                .insert((ingot_common::constraints::cost(m), m.system_id.clone()));
        }
        if let Some(d) = m.deadline_ms {
            self.by_deadline.insert((d, m.system_id.clone()));
        }
        if let Some(r) = &m.rack {
            self.by_rack
                .entry(r.clone())
                .or_default()
                .insert(m.system_id.clone());
        }
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
        let key = (m.zone.clone(), m.status);
        if let Some(set) = self.by_zone_status.get_mut(&key) {
            set.remove(&m.system_id);
            if set.is_empty() {
                self.by_zone_status.remove(&key);
            }
        }
        if let Some(set) = self.by_pool.get_mut(&m.pool) {
            set.remove(&m.system_id);
        }
        if let Some(o) = &m.owner {
            if let Some(set) = self.by_owner.get_mut(o) {
                set.remove(&m.system_id);
                if set.is_empty() {
                    self.by_owner.remove(o);
                }
            }
        }
        if let Some(a) = &m.allocation {
            if self.by_consumer.get(&a.consumer) == Some(&m.system_id) {
                self.by_consumer.remove(&a.consumer);
            }
            if let Some(o) = &m.owner {
                let key = format!("{o}/{}", a.request_id);
                if let Some(set) = self.by_allocation.get_mut(&key) {
                    set.remove(&m.system_id);
                    if set.is_empty() {
                        self.by_allocation.remove(&key);
                    }
                }
            }
        }
        for t in &m.tags {
            if let Some(set) = self.by_tag.get_mut(t) {
                set.remove(&m.system_id);
            }
        }
        self.ready
            .remove(&(ingot_common::constraints::cost(m), m.system_id.clone()));
        if let Some(d) = m.deadline_ms {
            self.by_deadline.remove(&(d, m.system_id.clone()));
        }
        if let Some(r) = &m.rack {
            if let Some(set) = self.by_rack.get_mut(r) {
                set.remove(&m.system_id);
            }
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
    pub fn list_machines<'a>(
        &'a self,
        f: &MachineQuery,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<&'a Machine>, bool, u64) {
        if let Some(r) = self.list_exact(f, after, limit) {
            return r;
        }
        let matches = |m: &Machine| f.matches(m);
        let mut page = Vec::with_capacity(limit.min(1024));
        let mut total = 0u64;
        let mut more = false;
        let mut visit = |m: &'a Machine| {
            if !matches(m) {
                return;
            }
            total += 1;
            if after.is_some_and(|a| m.system_id.as_str() <= a) {
                return;
            }
            if page.len() < limit {
                page.push(m);
            } else {
                more = true;
            }
        };
        if let Some(mac) = f.mac {
            if let Some(m) = self.machine_by_mac(&mac) {
                visit(m);
            }
        } else if let Some(owner) = &f.owner {
            if let Some(ids) = self.by_owner.get(owner) {
                ids.iter()
                    .filter_map(|id| self.data.machines.get(id))
                    .for_each(&mut visit);
            }
        } else if let Some(c) = &f.consumer {
            if let Some(m) = self.by_consumer.get(c).and_then(|id| self.machine(id)) {
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

    /// The fast path of [`State::list_machines`]: when the query filters by zone and/or status only, an
    /// index holds exactly the matches, so the total is its size and the page is a range of it — no scan.
    fn list_exact<'a>(
        &'a self,
        f: &MachineQuery,
        after: Option<&str>,
        limit: usize,
    ) -> Option<(Vec<&'a Machine>, bool, u64)> {
        let only_zone_status = f.arch.is_none()
            && f.hostname_prefix.is_none()
            && f.mac.is_none()
            && f.pool.is_none()
            && f.owner.is_none()
            && f.consumer.is_none()
            && f.tags.is_empty()
            && f.visible_to.is_none();
        if !only_zone_status {
            return None;
        }
        let from = match after {
            Some(a) => std::ops::Bound::Excluded(a.to_string()),
            None => std::ops::Bound::Unbounded,
        };
        let range = (from, std::ops::Bound::Unbounded);
        let empty = Some((Vec::new(), false, 0));
        let (ids, total): (Box<dyn Iterator<Item = &'a String> + 'a>, usize) =
            match (&f.zone, f.status) {
                (Some(z), Some(st)) => match self.by_zone_status.get(&(z.clone(), st)) {
                    Some(set) => (Box::new(set.range::<String, _>(range)), set.len()),
                    None => return empty,
                },
                (Some(z), None) => match self.by_zone.get(z) {
                    Some(set) => (Box::new(set.range::<String, _>(range)), set.len()),
                    None => return empty,
                },
                (None, Some(st)) => match self.by_status.get(&st) {
                    Some(set) => (Box::new(set.range::<String, _>(range)), set.len()),
                    None => return empty,
                },
                (None, None) => (
                    Box::new(self.data.machines.range::<String, _>(range).map(|(k, _)| k)),
                    self.data.machines.len(),
                ),
            };
        let mut page = Vec::with_capacity(limit.min(total));
        let mut more = false;
        for id in ids {
            if page.len() == limit {
                more = true;
                break;
            }
            if let Some(m) = self.data.machines.get(id) {
                page.push(m);
            }
        }
        Some((page, more, total as u64))
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
    /// Exact pool.
    pub pool: Option<String>,
    /// Held by this user.
    pub owner: Option<String>,
    /// Allocated to this consumer.
    pub consumer: Option<String>,
    /// Has all these tags.
    pub tags: Vec<String>,
    /// For non-admin callers: only unowned machines and those this user holds.
    pub visible_to: Option<String>,
}

impl MachineQuery {
    /// True if `m` passes every filter (used by `Watch`, which sees one machine at a time).
    pub fn matches(&self, m: &Machine) -> bool {
        self.visible_to
            .as_ref()
            .is_none_or(|u| m.owner.as_ref().is_none_or(|o| o == u))
            && self.pool.as_ref().is_none_or(|p| &m.pool == p)
            && self
                .owner
                .as_ref()
                .is_none_or(|o| m.owner.as_ref() == Some(o))
            && self
                .consumer
                .as_ref()
                .is_none_or(|c| m.allocation.as_ref().is_some_and(|a| &a.consumer == c))
            && self.tags.iter().all(|t| m.tags.contains(t))
            && self.zone.as_ref().is_none_or(|z| &m.zone == z)
            && self.status.is_none_or(|s| m.status == s)
            && self.arch.as_ref().is_none_or(|a| &m.arch == a)
            && self
                .hostname_prefix
                .as_ref()
                .is_none_or(|p| m.hostname.starts_with(p.as_str()))
            && self.mac.is_none_or(|mac| m.macs.contains(&mac))
    }
}

#[cfg(test)]
mod tests {
    use super::Data;

    /// Snapshots written before the power-command fields got their names keep loading, and new snapshots
    /// stay readable by older regions: the serialized keys are the original ones.
    #[test]
    fn power_command_fields_keep_their_snapshot_keys() {
        let json = serde_json::to_value(Data::default()).expect("serialize");
        assert!(json.get("commands").is_some(), "{json}");
        assert!(json.get("next_command_id").is_some(), "{json}");
        assert!(json.get("power_commands").is_none(), "{json}");
        let old = r#"{"commands":{},"next_command_id":7}"#;
        let mut v: serde_json::Value = json;
        let o: serde_json::Value = serde_json::from_str(old).expect("json");
        for (k, x) in o.as_object().expect("object") {
            v[k] = x.clone();
        }
        let d: Data = serde_json::from_value(v).expect("an older snapshot loads");
        assert_eq!(d.next_power_command_id, 7);
    }
}

#[cfg(test)]
mod token_tests {
    use super::*;

    /// Tokens made before tokens had ids get one derived from their hash — the same on every replica,
    /// whether it applied the log or loaded a snapshot — so they can be named, listed and revoked.
    #[test]
    fn tokens_without_ids_are_indexed_by_a_derived_id() {
        let old = ApiToken {
            name: "admin".into(),
            role: "admin".into(),
            created_ms: 1,
            id: String::new(),
            description: String::new(),
            expires_ms: None,
        };
        let mut s = State::default();
        s.put_token("0123456789abcdef".into(), old);
        let (h, _) = s.token_by_id("h0123456789ab").expect("derived id");
        assert_eq!(h, "0123456789abcdef");
        assert_eq!(
            s.role_of("admin"),
            Some(Role::Admin),
            "the token's role, no user record"
        );
        let r = State::from_data(s.data.clone());
        assert_eq!(r.token_ids, s.token_ids);
        s.remove_token("0123456789abcdef");
        assert!(s.token_ids.is_empty() && s.tokens_by_user.is_empty());
        assert_eq!(s.role_of("admin"), None);
    }
}
