//! The boot path's in-memory indexes over [`Data::leases`] and the machines' MACs: each MAC's leases
//! (without a scan of every lease), a bounded log of recent lease changes (what a rack session sends its
//! rack as deltas), and a version of the set of known MACs (so a session rebuilds its rack's known-MAC
//! list only when it changed). Never serialized: [`BootIndex::from_data`] rebuilds them. Leases change
//! only through [`State::put_lease`] and [`State::remove_lease`], which keep them in step.

use super::{Data, State};
use ingot_common::net::{Cidr, Lease, Subnet};
use ingot_common::Mac;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Most lease changes kept for the sessions' deltas. A session polls every half second, so this covers a
/// boot storm of 100,000 commits a second; a session further behind sends its rack every lease again.
pub const LEASE_CHANGES_MAX: usize = 65_536;

/// Where [`BootIndex::macs_version`] values come from: process-wide, so a state rebuilt from a snapshot
/// never shows a session a version it saw before with other MACs behind it.
static MACS_VERSIONS: AtomicU64 = AtomicU64::new(1);

fn next_macs_version() -> u64 {
    MACS_VERSIONS.fetch_add(1, Ordering::Relaxed)
}

/// One lease written (or removed), as the change log records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseChange {
    /// The revision of the command that changed it.
    pub revision: u64,
    /// The lease's address (its key in `Data::leases`; read the lease itself from there).
    pub ip: Ipv4Addr,
    /// The rack whose commit wrote it (its own session need not send it back); `None` for a change the
    /// cluster derived (a MAC's older address released, a subnet's leases deleted): sent to every rack.
    pub by: Option<Arc<str>>,
}

/// The boot path's indexes (see the module doc).
#[derive(Debug, Default)]
pub struct BootIndex {
    /// MAC → the addresses of its leases (any subnet, any state).
    pub by_mac: HashMap<Mac, BTreeSet<Ipv4Addr>>,
    /// Recent lease changes in apply order (at most [`LEASE_CHANGES_MAX`]).
    pub changes: VecDeque<LeaseChange>,
    /// Every lease change after this revision is in `changes` (older ones were dropped, or predate the
    /// snapshot this state was loaded from).
    pub changes_floor: u64,
    /// Changes whenever a machine's MACs may have changed (a machine created, deleted, or its MAC list
    /// edited): rack sessions compare it to decide whether to rebuild their known-MAC list.
    pub macs_version: u64,
}

impl BootIndex {
    /// The indexes of `data`.
    pub fn from_data(data: &Data) -> BootIndex {
        let mut by_mac: HashMap<Mac, BTreeSet<Ipv4Addr>> = HashMap::new();
        for l in data.leases.values() {
            by_mac.entry(l.mac).or_default().insert(l.ip);
        }
        BootIndex {
            by_mac,
            changes: VecDeque::new(),
            changes_floor: data.revision,
            macs_version: next_macs_version(),
        }
    }

    /// Notes that the set of machine MACs may have changed.
    pub(super) fn macs_changed(&mut self) {
        self.macs_version = next_macs_version();
    }

    fn record(&mut self, revision: u64, ip: Ipv4Addr, by: Option<Arc<str>>) {
        self.changes.push_back(LeaseChange { revision, ip, by });
        while self.changes.len() > LEASE_CHANGES_MAX {
            if let Some(c) = self.changes.pop_front() {
                self.changes_floor = self.changes_floor.max(c.revision);
            }
        }
    }

    /// The changes after `revision`, oldest first; `None` when some of them are no longer kept (the
    /// caller must resend everything).
    pub fn changes_after(&self, revision: u64) -> Option<impl Iterator<Item = &LeaseChange>> {
        if revision < self.changes_floor {
            return None;
        }
        let from = self.changes.partition_point(|c| c.revision <= revision);
        Some(self.changes.range(from..))
    }

    /// The newest revision any kept change has (the floor when none is kept).
    pub fn newest(&self) -> u64 {
        self.changes
            .back()
            .map_or(self.changes_floor, |c| c.revision)
            .max(self.changes_floor)
    }
}

/// Whether `rack` is the primary or the secondary of subnet `s` (the racks that may commit its leases).
pub fn serves(s: &Subnet, rack: &str) -> bool {
    s.primary.as_deref() == Some(rack) || s.secondary.as_deref() == Some(rack)
}

impl State {
    /// Stores lease `l` (new or changed) at `revision`, keeping the MAC index and the change log in step;
    /// `by` is the rack whose commit wrote it (`None`: a change the cluster derived).
    pub fn put_lease(&mut self, l: Lease, revision: u64, by: Option<Arc<str>>) {
        if let Some(old) = self.data.leases.get(&l.ip) {
            if old.mac != l.mac {
                let (mac, ip) = (old.mac, old.ip);
                self.unindex_lease(mac, ip);
            }
        }
        self.boot.by_mac.entry(l.mac).or_default().insert(l.ip);
        self.boot.record(revision, l.ip, by);
        self.data.leases.insert(l.ip, l);
    }

    /// Removes the lease of `ip` at `revision` (e.g. with its subnet), keeping the indexes in step.
    pub fn remove_lease(&mut self, ip: Ipv4Addr, revision: u64) -> Option<Lease> {
        let l = self.data.leases.remove(&ip)?;
        self.unindex_lease(l.mac, l.ip);
        self.boot.record(revision, ip, None);
        Some(l)
    }

    /// Removes every lease of subnet `cidr` at `revision` (what deleting the subnet does to its leases).
    pub fn remove_leases_in(&mut self, cidr: &Cidr, revision: u64) -> usize {
        let ips: Vec<Ipv4Addr> = self.leases_in(cidr).map(|l| l.ip).collect();
        for ip in &ips {
            self.remove_lease(*ip, revision);
        }
        ips.len()
    }

    fn unindex_lease(&mut self, mac: Mac, ip: Ipv4Addr) {
        if let Some(set) = self.boot.by_mac.get_mut(&mac) {
            set.remove(&ip);
            if set.is_empty() {
                self.boot.by_mac.remove(&mac);
            }
        }
    }

    /// Every lease of `mac` (any subnet, any state), by address.
    pub fn leases_of_mac(&self, mac: &Mac) -> impl Iterator<Item = &Lease> {
        self.boot
            .by_mac
            .get(mac)
            .into_iter()
            .flatten()
            .filter_map(|ip| self.data.leases.get(ip))
    }

    /// Every lease whose address lies in `cidr`, by address (subnets never overlap, so these are the
    /// subnet's leases): a range of the lease map, no scan.
    pub fn leases_in(&self, cidr: &Cidr) -> impl Iterator<Item = &Lease> {
        self.data
            .leases
            .range(cidr.network..=cidr.broadcast())
            .map(|(_, l)| l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ingot_common::net::LeaseState;

    fn lease(ip: [u8; 4], mac: u8) -> Lease {
        Lease {
            ip: Ipv4Addr::from(ip),
            subnet: "10.0.0.0/24".parse().expect("cidr"),
            mac: Mac([0x52, 0x54, 0, 0, 0, mac]),
            state: LeaseState::Bound,
            start_ms: 1,
            expires_ms: 2,
            hostname: String::new(),
            rack: "r1".into(),
        }
    }

    #[test]
    fn the_mac_index_and_the_change_log_follow_the_leases() {
        let mut s = State::default();
        let r1: Arc<str> = Arc::from("r1");
        s.put_lease(lease([10, 0, 0, 5], 1), 10, Some(r1.clone()));
        s.put_lease(lease([10, 0, 0, 6], 1), 11, Some(r1.clone()));
        // Another MAC takes .5 over: it leaves MAC 1's index.
        s.put_lease(lease([10, 0, 0, 5], 2), 12, None);
        let ips = |s: &State, m: u8| -> Vec<Ipv4Addr> {
            s.leases_of_mac(&Mac([0x52, 0x54, 0, 0, 0, m]))
                .map(|l| l.ip)
                .collect()
        };
        assert_eq!(ips(&s, 1), vec![Ipv4Addr::new(10, 0, 0, 6)]);
        assert_eq!(ips(&s, 2), vec![Ipv4Addr::new(10, 0, 0, 5)]);
        assert_eq!(
            BootIndex::from_data(&s.data).by_mac,
            s.boot.by_mac,
            "rebuilt"
        );
        let after: Vec<u64> = s
            .boot
            .changes_after(10)
            .expect("kept")
            .map(|c| c.revision)
            .collect();
        assert_eq!(after, vec![11, 12]);
        assert_eq!(s.boot.newest(), 12);
        let cidr: Cidr = "10.0.0.0/24".parse().expect("cidr");
        assert_eq!(s.leases_in(&cidr).count(), 2);
        assert_eq!(s.remove_leases_in(&cidr, 13), 2);
        assert!(s.boot.by_mac.is_empty() && s.data.leases.is_empty());
        // A log that dropped its oldest changes says so instead of answering with a gap.
        for i in 0..LEASE_CHANGES_MAX as u64 {
            s.boot.record(100 + i, Ipv4Addr::new(10, 0, 0, 9), None);
        }
        assert!(s.boot.changes_after(12).is_none());
        assert!(s.boot.changes_after(100).is_some());
    }
}
