//! Allocation constraints: what a user asks for when allocating a machine, and which machines fit.
//!
//! The region filters every candidate machine through [`Constraints::matches`] (thousands per
//! allocation, so the check does not allocate unless it has to match storage requests against many
//! disks), then picks the fitting machine with the lowest [`cost`]. A dry run explains a rejected machine
//! with [`Constraints::mismatch`]. Status, ownership and locks are the caller's business, not checked
//! here.

use crate::model::{Disk, Machine};
use crate::DomainError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The most entries accepted in each name list (tags, zones, pools and their negations): more is
/// certainly a client bug, and the bound keeps matching cheap.
pub const MAX_LIST_LEN: usize = crate::validate::limits::NAME_LIST;

/// The most storage requests in one allocation: the disk matching is a search over requests.
pub const MAX_STORAGE_REQUESTS: usize = 32;

/// The syntax of one storage request, quoted in error messages.
const STORAGE_SYNTAX: &str =
    "expected [label:]size[G|T][(tag,...)] with size in GiB, e.g. root:100(ssd) or data:2T(rotary,sas) or 500";

/// What an allocation asks for. Empty/zero fields do not constrain, so `Constraints::default()`
/// matches every machine.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct Constraints {
    /// Architecture: `amd64` matches `amd64` and any `amd64/*` (e.g. `amd64/generic`); a value with a
    /// subarchitecture such as `amd64/generic` must match exactly.
    pub arch: String,
    /// At least this many logical CPUs.
    pub min_cpu_count: u32,
    /// At least this much memory.
    pub min_memory_mib: u64,
    /// Disks the machine must have, each request on a distinct disk (see [`parse_storage`]).
    pub storage: Vec<StorageRequest>,
    /// Tags the machine must all have.
    pub tags: Vec<String>,
    /// Tags the machine must have none of.
    pub not_tags: Vec<String>,
    /// Zones the machine must be in one of (empty: any zone).
    pub zones: Vec<String>,
    /// Zones the machine must not be in.
    pub not_in_zones: Vec<String>,
    /// Pools the machine must be in one of (empty: any pool).
    pub pools: Vec<String>,
    /// Pools the machine must not be in.
    pub not_in_pools: Vec<String>,
    /// Exact hostname.
    pub hostname: String,
    /// Exact system id.
    pub system_id: String,
    /// At least this many network interfaces in the inventory.
    pub min_nic_count: u32,
    /// At least one NIC whose link speed (Mbit/s) is at least this.
    pub min_nic_speed_mbps: u64,
}

/// One requested disk: at least `size_gib` and carrying every tag in `tags`.
///
/// A disk's tags are its inventory `tags` plus `ssd` when it is not rotational, or `rotary` and `hdd`
/// when it is. Displayed in the MAAS syntax [`parse_storage`] reads (`root:100(ssd)`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct StorageRequest {
    /// Name of the request, so the caller can tell which disk was chosen for what (`disk<N>` by
    /// default).
    pub label: String,
    /// Minimum size in GiB.
    pub size_gib: u64,
    /// Tags the disk must all have.
    pub tags: Vec<String>,
}

impl fmt::Display for StorageRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.label, self.size_gib)?;
        if !self.tags.is_empty() {
            write!(f, "({})", self.tags.join(","))?;
        }
        Ok(())
    }
}

/// The price of a machine, used to pick the cheapest one that fits so that big machines stay available
/// for requests that need them: `cpu_count * 4 + ceil(memory_mib / 1024)`, i.e. one CPU weighs as much
/// as 4 GiB of memory, roughly the ratio of cloud prices. A machine without inventory costs 0.
pub fn cost(m: &Machine) -> u64 {
    let cpu = u64::from(m.cpu_count()).saturating_mul(4);
    cpu.saturating_add(m.memory_mib().div_ceil(1024))
}

// ---------------------------------------------------------------------------------------------------
// Storage syntax
// ---------------------------------------------------------------------------------------------------

/// Parses the MAAS storage constraint syntax received in request field `field`: comma-separated entries
/// `label:size(tag,tag)` where `label:` is optional (default `disk<N>`, N the entry's index), size is
/// in GiB (decimals round up; an optional `G` or `T` suffix means GiB or TiB) and `(tags)` is optional.
/// Example: `root:100(ssd),data:2T(rotary,sas),500`. An empty string asks for nothing. Errors name the
/// entry (`storage[1]`) and quote the expected syntax.
pub fn parse_storage(field: &str, s: &str) -> Result<Vec<StorageRequest>, DomainError> {
    crate::validate::bytes(field, s, crate::validate::limits::STORAGE_TEXT)?;
    let s = s.trim();
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let entries = split_top_level(field, s)?;
    if entries.len() > MAX_STORAGE_REQUESTS {
        return Err(DomainError::invalid(
            field,
            format!(
                "{} storage requests; at most {MAX_STORAGE_REQUESTS} are allowed",
                entries.len()
            ),
        ));
    }
    let mut out: Vec<StorageRequest> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let efield = format!("{field}[{i}]");
        let req = parse_entry(&efield, i, entry)?;
        if out.iter().any(|r| r.label == req.label) {
            return Err(DomainError::invalid(
                efield,
                format!("label '{}' is used twice; labels must be unique", req.label),
            ));
        }
        out.push(req);
    }
    Ok(out)
}

/// Splits at commas outside parentheses, rejecting unbalanced or nested parentheses.
fn split_top_level<'a>(field: &str, s: &'a str) -> Result<Vec<&'a str>, DomainError> {
    let mut out = Vec::new();
    let mut depth = 0u32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let entry = out.len();
        let bad = |msg: &str| {
            DomainError::invalid(
                format!("{field}[{entry}]"),
                format!("{msg}; {STORAGE_SYNTAX}"),
            )
        };
        match c {
            '(' if depth > 0 => return Err(bad("nested '('")),
            '(' => depth += 1,
            ')' if depth == 0 => return Err(bad("')' without a matching '('")),
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth > 0 {
        return Err(DomainError::invalid(
            format!("{field}[{}]", out.len()),
            format!("'(' is never closed; {STORAGE_SYNTAX}"),
        ));
    }
    out.push(&s[start..]);
    Ok(out)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn parse_entry(field: &str, index: usize, entry: &str) -> Result<StorageRequest, DomainError> {
    let bad = |msg: String| DomainError::invalid(field, format!("{msg}; {STORAGE_SYNTAX}"));
    let entry = entry.trim();
    if entry.is_empty() {
        return Err(bad("empty entry".into()));
    }
    let paren = entry.find('(').unwrap_or(entry.len());
    let (label, rest) = match entry[..paren].find(':') {
        Some(colon) => {
            let label = entry[..colon].trim();
            if !valid_name(label) {
                return Err(bad(format!(
                    "label '{label}' is not 1-64 letters, digits, '-', '_' or '.'"
                )));
            }
            (label.to_string(), &entry[colon + 1..])
        }
        None => (format!("disk{index}"), entry),
    };
    let (size_part, tags) = match rest.find('(') {
        None => (rest, Vec::new()),
        Some(open) => {
            let inner = &rest[open + 1..];
            let Some(inner) = inner.trim_end().strip_suffix(')') else {
                return Err(bad("unexpected text after ')'".into()));
            };
            let mut tags = Vec::new();
            for t in inner.split(',') {
                let t = t.trim();
                if !valid_name(t) {
                    return Err(bad(format!(
                        "tag '{t}' is not 1-64 letters, digits, '-', '_' or '.'"
                    )));
                }
                tags.push(t.to_string());
            }
            (&rest[..open], tags)
        }
    };
    let size_gib = parse_size(size_part.trim()).map_err(bad)?;
    Ok(StorageRequest {
        label,
        size_gib,
        tags,
    })
}

/// `100`, `1.5`, `100G`, `2T`, `0.5t` -> GiB, rounding fractions up.
fn parse_size(s: &str) -> Result<u64, String> {
    if s.is_empty() {
        return Err("missing size".into());
    }
    let (num, unit): (&str, u128) = match s.as_bytes()[s.len() - 1] {
        b'G' | b'g' => (&s[..s.len() - 1], 1),
        b'T' | b't' => (&s[..s.len() - 1], 1024),
        _ => (s, 1),
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let digits_ok = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits_ok(int) || !digits_ok(frac) {
        return Err(format!(
            "size '{s}' is not a number of GiB (optionally with a G or T suffix)"
        ));
    }
    if int.len() > 20 || frac.len() > 18 {
        return Err(format!("size '{s}' has too many digits"));
    }
    let parse = |d: &str| d.parse::<u128>().unwrap_or(0);
    let scale = 10u128.pow(frac.len() as u32);
    let frac_gib = (parse(frac) * unit).div_ceil(scale);
    let total = parse(int) * unit + frac_gib;
    u64::try_from(total).map_err(|_| format!("size '{s}' is too large"))
}

// ---------------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------------

fn check_names(field: &str, list: &[String]) -> Result<(), DomainError> {
    if list.len() > MAX_LIST_LEN {
        return Err(DomainError::invalid(
            field,
            format!(
                "has {} entries; at most {MAX_LIST_LEN} are allowed",
                list.len()
            ),
        ));
    }
    for (i, name) in list.iter().enumerate() {
        crate::validate::bytes(
            &format!("{field}[{i}]"),
            name,
            crate::validate::limits::NAME,
        )?;
        if name.trim().is_empty() {
            return Err(DomainError::invalid(
                format!("{field}[{i}]"),
                "must not be empty",
            ));
        }
        if name.trim() != name {
            return Err(DomainError::invalid(
                format!("{field}[{i}]"),
                format!("'{name}' has leading or trailing whitespace"),
            ));
        }
    }
    Ok(())
}

fn check_disjoint(
    want_field: &str,
    want: &[String],
    not_field: &str,
    not: &[String],
) -> Result<(), DomainError> {
    for (i, n) in not.iter().enumerate() {
        if want.contains(n) {
            return Err(DomainError::invalid(
                format!("{not_field}[{i}]"),
                format!("'{n}' is also listed in {want_field}: no machine can match"),
            ));
        }
    }
    Ok(())
}

impl Constraints {
    /// Checks the shape of a request before it is used: names in the lists are non-empty, lists hold at
    /// most [`MAX_LIST_LEN`] entries, storage at most [`MAX_STORAGE_REQUESTS`], and nothing is both
    /// required and excluded. Errors name the field, e.g. `constraints.not_tags[2]`.
    pub fn validate(&self) -> Result<(), DomainError> {
        if !self.arch.is_empty() {
            crate::validate::arch("constraints.arch", &self.arch)?;
        }
        use crate::validate::{bytes, limits};
        bytes("constraints.hostname", &self.hostname, limits::DNS_LABEL)?;
        bytes("constraints.system_id", &self.system_id, limits::KEY)?;
        let lists: [(&str, &[String]); 6] = [
            ("constraints.tags", &self.tags),
            ("constraints.not_tags", &self.not_tags),
            ("constraints.zones", &self.zones),
            ("constraints.not_in_zones", &self.not_in_zones),
            ("constraints.pools", &self.pools),
            ("constraints.not_in_pools", &self.not_in_pools),
        ];
        for (field, list) in lists {
            check_names(field, list)?;
        }
        check_disjoint(
            "constraints.tags",
            &self.tags,
            "constraints.not_tags",
            &self.not_tags,
        )?;
        check_disjoint(
            "constraints.zones",
            &self.zones,
            "constraints.not_in_zones",
            &self.not_in_zones,
        )?;
        check_disjoint(
            "constraints.pools",
            &self.pools,
            "constraints.not_in_pools",
            &self.not_in_pools,
        )?;
        if self.storage.len() > MAX_STORAGE_REQUESTS {
            return Err(DomainError::invalid(
                "constraints.storage",
                format!(
                    "has {} requests; at most {MAX_STORAGE_REQUESTS} are allowed",
                    self.storage.len()
                ),
            ));
        }
        for (i, r) in self.storage.iter().enumerate() {
            if r.label.trim().is_empty() {
                return Err(DomainError::invalid(
                    format!("constraints.storage[{i}].label"),
                    "must not be empty",
                ));
            }
            if self.storage[..i].iter().any(|o| o.label == r.label) {
                return Err(DomainError::invalid(
                    format!("constraints.storage[{i}].label"),
                    format!("'{}' is used twice; labels must be unique", r.label),
                ));
            }
            bytes(
                &format!("constraints.storage[{i}].label"),
                &r.label,
                limits::NAME,
            )?;
            check_names(&format!("constraints.storage[{i}].tags"), &r.tags)?;
        }
        Ok(())
    }

    /// True when the machine satisfies every constraint. Meant to run over thousands of machines: it
    /// does not allocate (unless more than [`MAX_STORAGE_REQUESTS`] storage requests are given).
    pub fn matches(&self, m: &Machine) -> bool {
        self.first_unmet(m).is_none()
    }

    /// The first constraint the machine does not meet, in words (e.g. `memory 32768 MiB < 65536 MiB`),
    /// or `None` when it fits. Used to explain dry runs; [`Constraints::matches`] is the fast check.
    pub fn mismatch(&self, m: &Machine) -> Option<String> {
        self.first_unmet(m).map(|u| self.describe(u, m))
    }

    /// The single source of truth for both `matches` and `mismatch`.
    fn first_unmet<'a>(&'a self, m: &Machine) -> Option<Unmet<'a>> {
        if !self.arch.is_empty() && !arch_matches(&self.arch, &m.arch) {
            return Some(Unmet::Arch);
        }
        if !self.system_id.is_empty() && self.system_id != m.system_id {
            return Some(Unmet::SystemId);
        }
        if !self.hostname.is_empty() && self.hostname != m.hostname {
            return Some(Unmet::Hostname);
        }
        if !self.zones.is_empty() && !self.zones.contains(&m.zone) {
            return Some(Unmet::Zone);
        }
        if self.not_in_zones.contains(&m.zone) {
            return Some(Unmet::NotInZone);
        }
        if !self.pools.is_empty() && !self.pools.contains(&m.pool) {
            return Some(Unmet::Pool);
        }
        if self.not_in_pools.contains(&m.pool) {
            return Some(Unmet::NotInPool);
        }
        if let Some(t) = self.tags.iter().find(|t| !m.tags.contains(t.as_str())) {
            return Some(Unmet::MissingTag(t));
        }
        if let Some(t) = self.not_tags.iter().find(|t| m.tags.contains(t.as_str())) {
            return Some(Unmet::ExcludedTag(t));
        }
        if m.cpu_count() < self.min_cpu_count {
            return Some(Unmet::CpuCount);
        }
        if m.memory_mib() < self.min_memory_mib {
            return Some(Unmet::Memory);
        }
        let (disks, nics) = match &m.inventory {
            Some(inv) => (inv.disks.as_slice(), inv.nics.as_slice()),
            None => (&[][..], &[][..]),
        };
        if (nics.len() as u64) < u64::from(self.min_nic_count) {
            return Some(Unmet::NicCount);
        }
        if self.min_nic_speed_mbps > 0
            && !nics.iter().any(|n| n.speed_mbps >= self.min_nic_speed_mbps)
        {
            return Some(Unmet::NicSpeed);
        }
        if !self.storage.is_empty()
            && max_storage_matching(&self.storage, disks, true) < self.storage.len()
        {
            return Some(Unmet::Storage);
        }
        None
    }

    fn describe(&self, u: Unmet<'_>, m: &Machine) -> String {
        let no_inv = if m.inventory.is_none() {
            " (no inventory: commission the machine first)"
        } else {
            ""
        };
        match u {
            Unmet::Arch => {
                let want = if self.arch.contains('/') {
                    self.arch.clone()
                } else {
                    format!("{} or {}/*", self.arch, self.arch)
                };
                format!("arch {} is not {want}", m.arch)
            }
            Unmet::SystemId => format!("system_id {} is not {}", m.system_id, self.system_id),
            Unmet::Hostname => format!("hostname {} is not {}", m.hostname, self.hostname),
            Unmet::Zone => format!("zone {} is not one of [{}]", m.zone, self.zones.join(", ")),
            Unmet::NotInZone => format!("zone {} is excluded", m.zone),
            Unmet::Pool => format!("pool {} is not one of [{}]", m.pool, self.pools.join(", ")),
            Unmet::NotInPool => format!("pool {} is excluded", m.pool),
            Unmet::MissingTag(t) => format!("missing tag {t}"),
            Unmet::ExcludedTag(t) => format!("has excluded tag {t}"),
            Unmet::CpuCount => format!(
                "cpu_count {} < {}{no_inv}",
                m.cpu_count(),
                self.min_cpu_count
            ),
            Unmet::Memory => format!(
                "memory {} MiB < {} MiB{no_inv}",
                m.memory_mib(),
                self.min_memory_mib
            ),
            Unmet::NicCount => {
                let n = m.inventory.as_ref().map_or(0, |i| i.nics.len());
                format!("nic_count {n} < {}{no_inv}", self.min_nic_count)
            }
            Unmet::NicSpeed => {
                let fastest = m
                    .inventory
                    .as_ref()
                    .and_then(|i| i.nics.iter().map(|n| n.speed_mbps).max())
                    .unwrap_or(0);
                format!(
                    "no NIC with speed >= {} Mbit/s (fastest: {fastest} Mbit/s){no_inv}",
                    self.min_nic_speed_mbps
                )
            }
            Unmet::Storage => {
                let disks = m.inventory.as_ref().map_or(&[][..], |i| i.disks.as_slice());
                if let Some((i, r)) = self
                    .storage
                    .iter()
                    .enumerate()
                    .find(|(_, r)| !disks.iter().any(|d| disk_fits(d, r)))
                {
                    let tags = if r.tags.is_empty() {
                        String::new()
                    } else {
                        format!(" tagged {}", r.tags.join(","))
                    };
                    format!(
                        "storage[{i}] {r}: no disk of at least {} GiB{tags} among {} disk(s){no_inv}",
                        r.size_gib,
                        disks.len()
                    )
                } else {
                    let n = max_storage_matching(&self.storage, disks, false);
                    format!(
                        "storage: only {n} of {} requests can get distinct disks ({} disk(s))",
                        self.storage.len(),
                        disks.len()
                    )
                }
            }
        }
    }
}

/// Which constraint failed; borrowed so that `matches` never formats or allocates.
#[derive(Clone, Copy, Debug)]
enum Unmet<'a> {
    Arch,
    SystemId,
    Hostname,
    Zone,
    NotInZone,
    Pool,
    NotInPool,
    MissingTag(&'a str),
    ExcludedTag(&'a str),
    CpuCount,
    Memory,
    NicCount,
    NicSpeed,
    Storage,
}

/// `amd64` matches `amd64` and `amd64/<anything>`; `amd64/generic` matches only itself.
fn arch_matches(want: &str, have: &str) -> bool {
    if want.contains('/') {
        return want == have;
    }
    have.strip_prefix(want)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

// ---------------------------------------------------------------------------------------------------
// Storage matching
// ---------------------------------------------------------------------------------------------------

/// Whether the disk carries `tag`, counting the implied `ssd` / `rotary` / `hdd`.
fn disk_has_tag(d: &Disk, tag: &str) -> bool {
    match tag {
        "ssd" if !d.rotational => true,
        "rotary" | "hdd" if d.rotational => true,
        _ => d.tags.iter().any(|t| t == tag),
    }
}

fn disk_fits(d: &Disk, r: &StorageRequest) -> bool {
    d.size_gib >= r.size_gib && r.tags.iter().all(|t| disk_has_tag(d, t))
}

const UNASSIGNED: usize = usize::MAX;

/// The size of a maximum matching of requests to distinct fitting disks (Kuhn's augmenting paths).
/// With `stop_early`, returns as soon as one request cannot be placed (then the result is below
/// `reqs.len()`, which is all `matches` needs to know).
fn max_storage_matching(reqs: &[StorageRequest], disks: &[Disk], stop_early: bool) -> usize {
    if stop_early && reqs.len() > disks.len() {
        return 0;
    }
    const INLINE: usize = MAX_STORAGE_REQUESTS;
    let mut assigned_inline = [UNASSIGNED; INLINE];
    let mut visited_inline = [false; INLINE];
    let mut assigned_heap;
    let mut visited_heap;
    let (assigned, visited): (&mut [usize], &mut [bool]) = if reqs.len() <= INLINE {
        (
            &mut assigned_inline[..reqs.len()],
            &mut visited_inline[..reqs.len()],
        )
    } else {
        assigned_heap = vec![UNASSIGNED; reqs.len()];
        visited_heap = vec![false; reqs.len()];
        (&mut assigned_heap, &mut visited_heap)
    };
    let mut matched = 0;
    for r in 0..reqs.len() {
        visited.fill(false);
        if augment(r, reqs, disks, assigned, visited) {
            matched += 1;
        } else if stop_early {
            return matched;
        }
    }
    matched
}

/// Tries to give request `r` a disk, moving other requests to other disks along an augmenting path.
/// `assigned[q]` is the disk of request `q`; `visited` marks requests already tried in this search, so
/// the recursion depth is at most the number of requests.
fn augment(
    r: usize,
    reqs: &[StorageRequest],
    disks: &[Disk],
    assigned: &mut [usize],
    visited: &mut [bool],
) -> bool {
    visited[r] = true;
    for (d, disk) in disks.iter().enumerate() {
        if !disk_fits(disk, &reqs[r]) {
            continue;
        }
        let holder = assigned.iter().position(|&a| a == d);
        let free = match holder {
            None => true,
            Some(h) => !visited[h] && augment(h, reqs, disks, assigned, visited),
        };
        if free {
            assigned[r] = d;
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Inventory, Nic};
    use crate::ErrorCode;
    use proptest::prelude::*;

    /// A machine built through serde so that fields added later with defaults do not break the tests.
    fn machine(inv: Option<Inventory>) -> Machine {
        let mut m: Machine = serde_json::from_value(serde_json::json!({
            "system_id": "abc123",
            "hostname": "node-1",
            "arch": "amd64/generic",
            "zone": "z1",
            "status": "Ready",
            "macs": [],
            "power": {"driver": "", "params": {}},
            "description": "",
            "created_ms": 0,
            "updated_ms": 0,
            "revision": 1,
        }))
        .unwrap();
        m.pool = "p1".into();
        m.inventory = inv;
        m
    }

    fn disk(size_gib: u64, rotational: bool, tags: &[&str]) -> Disk {
        Disk {
            name: format!("sd{size_gib}"),
            size_gib,
            rotational,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..Disk::default()
        }
    }

    fn nic(speed_mbps: u64) -> Nic {
        Nic {
            name: "eno1".into(),
            mac: "52:54:00:00:00:01".into(),
            speed_mbps,
            link: speed_mbps > 0,
        }
    }

    fn big() -> Machine {
        let mut m = machine(Some(Inventory {
            cpu_count: 32,
            memory_mib: 131072,
            disks: vec![disk(480, false, &["nvme"]), disk(4000, true, &["sas"])],
            nics: vec![nic(1000), nic(25000)],
            ..Inventory::default()
        }));
        m.tags = ["gpu", "fast"].iter().map(|t| t.to_string()).collect();
        m
    }

    fn req(label: &str, size_gib: u64, tags: &[&str]) -> StorageRequest {
        StorageRequest {
            label: label.into(),
            size_gib,
            tags: tags.iter().map(|t| t.to_string()).collect(),
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Asserts `c` matches `m`, and that `neg` (the same constraint made unsatisfiable) does not, with
    /// a mismatch message containing `why`.
    fn check_pair(m: &Machine, c: Constraints, neg: Constraints, why: &str) {
        assert!(c.matches(m), "{c:?}: {:?}", c.mismatch(m));
        assert_eq!(c.mismatch(m), None);
        assert!(!neg.matches(m), "{neg:?}");
        let msg = neg.mismatch(m).unwrap();
        assert!(msg.contains(why), "{msg:?} should contain {why:?}");
    }

    fn c() -> Constraints {
        Constraints::default()
    }

    #[test]
    fn empty_constraints_match_everything() {
        assert!(c().matches(&big()));
        assert!(c().matches(&machine(None)));
    }

    #[test]
    fn arch() {
        let m = big();
        for (want, ok) in [
            ("amd64", true),
            ("amd64/generic", true),
            ("amd64/hwe", false),
            ("amd", false),
            ("arm64", false),
        ] {
            let k = Constraints {
                arch: want.into(),
                ..c()
            };
            assert_eq!(k.matches(&m), ok, "{want}");
        }
        let mut bare = big();
        bare.arch = "arm64".into();
        assert!(Constraints {
            arch: "arm64".into(),
            ..c()
        }
        .matches(&bare));
        let msg = Constraints {
            arch: "arm64".into(),
            ..c()
        }
        .mismatch(&m)
        .unwrap();
        assert_eq!(msg, "arch amd64/generic is not arm64 or arm64/*");
    }

    #[test]
    fn each_constraint_and_its_negation() {
        let m = big();
        let pair = |ok: Constraints, bad: Constraints, why: &str| check_pair(&m, ok, bad, why);
        pair(
            Constraints {
                min_cpu_count: 32,
                ..c()
            },
            Constraints {
                min_cpu_count: 33,
                ..c()
            },
            "cpu_count 32 < 33",
        );
        pair(
            Constraints {
                min_memory_mib: 131072,
                ..c()
            },
            Constraints {
                min_memory_mib: 262144,
                ..c()
            },
            "memory 131072 MiB < 262144 MiB",
        );
        pair(
            Constraints {
                tags: strings(&["gpu", "fast"]),
                ..c()
            },
            Constraints {
                tags: strings(&["gpu", "arm"]),
                ..c()
            },
            "missing tag arm",
        );
        pair(
            Constraints {
                not_tags: strings(&["broken"]),
                ..c()
            },
            Constraints {
                not_tags: strings(&["broken", "gpu"]),
                ..c()
            },
            "has excluded tag gpu",
        );
        pair(
            Constraints {
                zones: strings(&["z0", "z1"]),
                ..c()
            },
            Constraints {
                zones: strings(&["z0", "z2"]),
                ..c()
            },
            "zone z1 is not one of [z0, z2]",
        );
        pair(
            Constraints {
                not_in_zones: strings(&["z0"]),
                ..c()
            },
            Constraints {
                not_in_zones: strings(&["z1"]),
                ..c()
            },
            "zone z1 is excluded",
        );
        pair(
            Constraints {
                pools: strings(&["p1"]),
                ..c()
            },
            Constraints {
                pools: strings(&["p2"]),
                ..c()
            },
            "pool p1 is not one of [p2]",
        );
        pair(
            Constraints {
                not_in_pools: strings(&["p2"]),
                ..c()
            },
            Constraints {
                not_in_pools: strings(&["p1"]),
                ..c()
            },
            "pool p1 is excluded",
        );
        pair(
            Constraints {
                hostname: "node-1".into(),
                ..c()
            },
            Constraints {
                hostname: "node-2".into(),
                ..c()
            },
            "hostname node-1 is not node-2",
        );
        pair(
            Constraints {
                system_id: "abc123".into(),
                ..c()
            },
            Constraints {
                system_id: "xyz789".into(),
                ..c()
            },
            "system_id abc123 is not xyz789",
        );
        pair(
            Constraints {
                min_nic_count: 2,
                ..c()
            },
            Constraints {
                min_nic_count: 3,
                ..c()
            },
            "nic_count 2 < 3",
        );
        pair(
            Constraints {
                min_nic_speed_mbps: 25000,
                ..c()
            },
            Constraints {
                min_nic_speed_mbps: 40000,
                ..c()
            },
            "no NIC with speed >= 40000 Mbit/s (fastest: 25000 Mbit/s)",
        );
        pair(
            Constraints {
                storage: vec![req("a", 400, &["ssd", "nvme"]), req("b", 2000, &["hdd"])],
                ..c()
            },
            Constraints {
                storage: vec![req("a", 400, &["ssd"]), req("b", 2000, &["ssd"])],
                ..c()
            },
            "storage[1] b:2000(ssd): no disk of at least 2000 GiB tagged ssd",
        );
        pair(
            Constraints {
                storage: vec![req("a", 100, &[]), req("b", 100, &[])],
                ..c()
            },
            Constraints {
                storage: vec![req("a", 100, &[]), req("b", 100, &[]), req("c", 1, &[])],
                ..c()
            },
            "only 2 of 3 requests",
        );
    }

    #[test]
    fn no_inventory_explains_itself() {
        let m = machine(None);
        let k = Constraints {
            min_cpu_count: 1,
            ..c()
        };
        assert_eq!(
            k.mismatch(&m).unwrap(),
            "cpu_count 0 < 1 (no inventory: commission the machine first)"
        );
        let k = Constraints {
            storage: vec![req("a", 1, &[])],
            ..c()
        };
        assert!(!k.matches(&m));
        assert!(Constraints {
            storage: vec![req("a", 0, &[])],
            ..c()
        }
        .mismatch(&m)
        .is_some());
    }

    #[test]
    fn storage_matching_is_not_greedy() {
        // A first-fit would give the 1000 GiB SSD to the small request and leave nothing for the big one.
        let m = machine(Some(Inventory {
            disks: vec![disk(1000, false, &[]), disk(200, true, &[])],
            ..Inventory::default()
        }));
        let k = Constraints {
            storage: vec![req("small", 100, &[]), req("big", 800, &["ssd"])],
            ..c()
        };
        assert!(k.matches(&m), "{:?}", k.mismatch(&m));
        // Tags: the nvme disk must go to the request that needs it, even though it comes first.
        let m = machine(Some(Inventory {
            disks: vec![
                disk(500, false, &["nvme"]),
                disk(500, false, &[]),
                disk(500, false, &[]),
            ],
            ..Inventory::default()
        }));
        let k = Constraints {
            storage: vec![
                req("a", 100, &["ssd"]),
                req("b", 100, &["ssd"]),
                req("c", 100, &["nvme"]),
            ],
            ..c()
        };
        assert!(k.matches(&m));
        // Requests are distinct disks.
        let k = Constraints {
            storage: vec![req("a", 1, &["nvme"]), req("b", 1, &["nvme"])],
            ..c()
        };
        assert_eq!(
            k.mismatch(&m).unwrap(),
            "storage: only 1 of 2 requests can get distinct disks (3 disk(s))"
        );
    }

    #[test]
    fn parse_storage_syntax() {
        let got = parse_storage("storage", "root:100(ssd),data:2T(rotary,sas),500").unwrap();
        assert_eq!(
            got,
            vec![
                req("root", 100, &["ssd"]),
                req("data", 2048, &["rotary", "sas"]),
                req("disk2", 500, &[]),
            ]
        );
        assert_eq!(parse_storage("storage", "").unwrap(), vec![]);
        assert_eq!(parse_storage("storage", "  ").unwrap(), vec![]);
        assert_eq!(
            parse_storage("s", "1.5").unwrap(),
            vec![req("disk0", 2, &[])]
        );
        assert_eq!(
            parse_storage("s", "1.5T").unwrap(),
            vec![req("disk0", 1536, &[])]
        );
        assert_eq!(
            parse_storage("s", "0.001t").unwrap(),
            vec![req("disk0", 2, &[])]
        );
        assert_eq!(
            parse_storage("s", "100G").unwrap(),
            vec![req("disk0", 100, &[])]
        );
        assert_eq!(
            parse_storage("s", " a : 10 ( x , y ) , 20(z)").unwrap(),
            vec![req("a", 10, &["x", "y"]), req("disk1", 20, &["z"])]
        );
    }

    #[test]
    fn parse_storage_errors_name_the_entry() {
        let bad = |s: &str, field: &str, want: &str| {
            let e = parse_storage("storage", s).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidArgument);
            assert_eq!(e.field.as_deref(), Some(field), "{s}: {}", e.message);
            assert!(e.message.contains(want), "{s}: {}", e.message);
            if want != "used twice" {
                assert!(e.message.contains("expected [label:]size"), "{}", e.message);
            }
        };
        bad("100,abc", "storage[1]", "size 'abc' is not a number");
        bad("100,,200", "storage[1]", "empty entry");
        bad("root:", "storage[0]", "missing size");
        bad(":100", "storage[0]", "label ''");
        bad("100(ssd", "storage[0]", "never closed");
        bad("10,100)ssd", "storage[1]", "without a matching");
        bad("100((ssd))", "storage[0]", "nested");
        bad("100(ssd)x", "storage[0]", "after ')'");
        bad("100(ssd,)", "storage[0]", "tag ''");
        bad("a:1,a:2", "storage[1]", "used twice");
        bad("100X", "storage[0]", "not a number");
        bad("-5", "storage[0]", "not a number");
        bad("99999999999999999999T", "storage[0]", "too large");
        let many = vec!["1"; MAX_STORAGE_REQUESTS + 1].join(",");
        let e = parse_storage("storage", &many).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("storage"));
    }

    #[test]
    fn validate_names_the_field() {
        let err = |k: Constraints| k.validate().unwrap_err().field.unwrap();
        assert!(c().validate().is_ok());
        assert!(Constraints {
            arch: "amd64".into(),
            tags: strings(&["a"]),
            storage: parse_storage("s", "root:1(ssd),2").unwrap(),
            ..c()
        }
        .validate()
        .is_ok());
        assert_eq!(
            err(Constraints {
                not_tags: strings(&["a", "b", ""]),
                ..c()
            }),
            "constraints.not_tags[2]"
        );
        assert_eq!(
            err(Constraints {
                zones: strings(&[" z"]),
                ..c()
            }),
            "constraints.zones[0]"
        );
        assert_eq!(
            err(Constraints {
                not_in_pools: strings(&[""]),
                ..c()
            }),
            "constraints.not_in_pools[0]"
        );
        assert_eq!(
            err(Constraints {
                pools: vec!["p".into(); MAX_LIST_LEN + 1],
                ..c()
            }),
            "constraints.pools"
        );
        assert_eq!(
            err(Constraints {
                tags: strings(&["a"]),
                not_tags: strings(&["b", "a"]),
                ..c()
            }),
            "constraints.not_tags[1]"
        );
        assert_eq!(
            err(Constraints {
                storage: vec![req("x", 1, &[]); MAX_STORAGE_REQUESTS + 1],
                ..c()
            }),
            "constraints.storage"
        );
        assert_eq!(
            err(Constraints {
                storage: vec![req("x", 1, &["ssd", ""])],
                ..c()
            }),
            "constraints.storage[0].tags[1]"
        );
        assert_eq!(
            err(Constraints {
                storage: vec![req("", 1, &[])],
                ..c()
            }),
            "constraints.storage[0].label"
        );
        assert_eq!(
            err(Constraints {
                arch: "AMD64".into(),
                ..c()
            }),
            "constraints.arch"
        );
    }

    /// Constraint names, hostname, system id, storage labels and the storage text have byte caps: the
    /// constraints are carried into the log by `Allocate`.
    #[test]
    fn constraint_strings_are_bounded_in_bytes() {
        use crate::validate::limits::{DNS_LABEL, KEY, NAME, STORAGE_TEXT};
        let err = |k: Constraints| k.validate().unwrap_err();
        assert!(Constraints {
            tags: vec!["t".repeat(NAME)],
            hostname: "h".repeat(DNS_LABEL),
            system_id: "s".repeat(KEY),
            ..c()
        }
        .validate()
        .is_ok());
        let e = err(Constraints {
            tags: vec!["a".into(), format!("{}é", "t".repeat(NAME - 1))],
            ..c()
        });
        assert_eq!(e.message, "constraints.tags[1]: 65 bytes, at most 64");
        let e = err(Constraints {
            zones: vec!["z".repeat(100_000)],
            ..c()
        });
        assert_eq!(e.field.as_deref(), Some("constraints.zones[0]"));
        assert!(e.message.len() < 100, "no echo of the value: {}", e.message);
        let field = |k: Constraints| err(k).field.unwrap();
        assert_eq!(
            field(Constraints {
                hostname: "h".repeat(DNS_LABEL + 1),
                ..c()
            }),
            "constraints.hostname"
        );
        assert_eq!(
            field(Constraints {
                system_id: "s".repeat(KEY + 1),
                ..c()
            }),
            "constraints.system_id"
        );
        assert_eq!(
            field(Constraints {
                storage: vec![req(&"l".repeat(NAME + 1), 1, &[])],
                ..c()
            }),
            "constraints.storage[0].label"
        );
        let at = format!("1({})", vec!["t"; (STORAGE_TEXT - 3) / 2].join(","));
        let at = format!("{at}{}", " ".repeat(STORAGE_TEXT - at.len()));
        assert_eq!(at.len(), STORAGE_TEXT);
        assert!(parse_storage("constraints.storage", &at).is_ok());
        let e = parse_storage("constraints.storage", &format!("{at} ")).unwrap_err();
        assert_eq!(e.message, "constraints.storage: 4097 bytes, at most 4096");
    }

    /// Disk sizes come from the agent (hostile input): their total saturates instead of overflowing, which
    /// panicked a debug build inside apply on every replica and wrapped in release.
    #[test]
    fn reported_disk_sizes_saturate_when_summed() {
        let m = machine(Some(Inventory {
            disks: vec![disk(u64::MAX, false, &[]), disk(u64::MAX, true, &[])],
            ..Inventory::default()
        }));
        assert_eq!(m.storage_gib(), u64::MAX);
    }

    #[test]
    fn cost_weighs_cpus_like_4_gib() {
        assert_eq!(cost(&big()), 32 * 4 + 128);
        assert_eq!(cost(&machine(None)), 0);
        let m = machine(Some(Inventory {
            cpu_count: 1,
            memory_mib: 1025,
            ..Inventory::default()
        }));
        assert_eq!(cost(&m), 4 + 2);
    }

    #[test]
    fn serde_defaults_missing_fields() {
        let k: Constraints = serde_json::from_str(r#"{"min_cpu_count": 4}"#).unwrap();
        assert_eq!(
            k,
            Constraints {
                min_cpu_count: 4,
                ..c()
            }
        );
    }

    // ---- property tests -------------------------------------------------------------------------

    const TAGS: [&str; 4] = ["ssd", "hdd", "nvme", "sas"];

    fn arb_disk() -> impl Strategy<Value = Disk> {
        (
            0u64..6,
            any::<bool>(),
            prop::sample::subsequence(vec!["nvme", "sas"], 0..=2),
        )
            .prop_map(|(s, r, t)| disk(s * 100, r, &t))
    }

    fn arb_req() -> impl Strategy<Value = StorageRequest> {
        (0u64..6, prop::sample::subsequence(TAGS.to_vec(), 0..=2))
            .prop_map(|(s, t)| req("r", s * 100, &t))
    }

    fn arb_names(pool: &'static [&'static str]) -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec(prop::sample::select(pool), 0..3)
            .prop_map(|v| v.into_iter().map(String::from).collect())
    }

    fn arb_machine() -> impl Strategy<Value = Machine> {
        let inv = (
            0u32..64,
            0u64..200_000,
            prop::collection::vec(arb_disk(), 0..5),
            prop::collection::vec(prop::sample::select(vec![0u64, 1000, 10000]), 0..3),
        )
            .prop_map(|(cpu, mem, disks, speeds)| Inventory {
                cpu_count: cpu,
                memory_mib: mem,
                disks,
                nics: speeds.into_iter().map(nic).collect(),
                ..Inventory::default()
            });
        (
            prop::option::weighted(0.9, inv),
            prop::sample::select(vec!["amd64/generic", "arm64/generic", "amd64"]),
            prop::sample::select(vec!["z1", "z2"]),
            prop::sample::select(vec!["p1", "p2"]),
            arb_names(&["a", "b", "c"]),
        )
            .prop_map(|(inv, arch, zone, pool, tags)| {
                let mut m = machine(inv);
                m.arch = arch.into();
                m.zone = zone.into();
                m.pool = pool.into();
                m.tags = tags.into_iter().collect();
                m
            })
    }

    fn arb_constraints() -> impl Strategy<Value = Constraints> {
        (
            (
                prop::sample::select(vec!["", "amd64", "arm64", "amd64/generic"]),
                prop::sample::select(vec![0u32, 0, 8, 32]),
                prop::sample::select(vec![0u64, 0, 65536]),
                prop::collection::vec(arb_req(), 0..3),
                arb_names(&["a", "b", "c"]),
                arb_names(&["a", "b", "c"]),
            ),
            (
                arb_names(&["z1", "z2", "z3"]),
                arb_names(&["z1", "z3"]),
                arb_names(&["p1", "p2"]),
                arb_names(&["p2", "p3"]),
                prop::sample::select(vec!["", "", "node-1", "node-2"]),
                prop::sample::select(vec![0u32, 0, 1, 2]),
                prop::sample::select(vec![0u64, 0, 1000, 10000]),
            ),
        )
            .prop_map(
                |(
                    (arch, cpu, mem, mut storage, tags, not_tags),
                    (zones, not_in_zones, pools, not_in_pools, hostname, nic_count, nic_speed),
                )| {
                    for (i, r) in storage.iter_mut().enumerate() {
                        r.label = format!("r{i}");
                    }
                    Constraints {
                        arch: arch.into(),
                        min_cpu_count: cpu,
                        min_memory_mib: mem,
                        storage,
                        tags,
                        not_tags,
                        zones,
                        not_in_zones,
                        pools,
                        not_in_pools,
                        hostname: hostname.into(),
                        system_id: String::new(),
                        min_nic_count: nic_count,
                        min_nic_speed_mbps: nic_speed,
                    }
                },
            )
    }

    /// Exhaustive search: is there an injective assignment of requests to fitting disks?
    fn brute_force_fits(reqs: &[StorageRequest], disks: &[Disk], used: &mut Vec<bool>) -> bool {
        let Some((r, rest)) = reqs.split_first() else {
            return true;
        };
        for (i, d) in disks.iter().enumerate() {
            if !used[i] && disk_fits(d, r) {
                used[i] = true;
                let ok = brute_force_fits(rest, disks, used);
                used[i] = false;
                if ok {
                    return true;
                }
            }
        }
        false
    }

    proptest! {
        #[test]
        fn matches_agrees_with_mismatch(m in arb_machine(), k in arb_constraints()) {
            prop_assert_eq!(k.matches(&m), k.mismatch(&m).is_none(), "{:?}", k.mismatch(&m));
            prop_assert!(Constraints::default().matches(&m));
        }

        #[test]
        fn storage_matching_agrees_with_brute_force(
            disks in prop::collection::vec(arb_disk(), 0..6),
            reqs in prop::collection::vec(arb_req(), 0..6),
        ) {
            let want = brute_force_fits(&reqs, &disks, &mut vec![false; disks.len()]);
            prop_assert_eq!(max_storage_matching(&reqs, &disks, true) == reqs.len(), want);
            prop_assert_eq!(max_storage_matching(&reqs, &disks, false) == reqs.len(), want);
        }

        #[test]
        fn storage_display_round_trips(reqs in prop::collection::vec(arb_req(), 1..5)) {
            let reqs: Vec<StorageRequest> = reqs
                .into_iter()
                .enumerate()
                .map(|(i, mut r)| { r.label = format!("l{i}"); r })
                .collect();
            let text = reqs.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(",");
            prop_assert_eq!(parse_storage("storage", &text).unwrap(), reqs);
        }

        #[test]
        fn parse_storage_never_panics(s in ".{0,80}") {
            let _ = parse_storage("storage", &s);
        }
    }
}
