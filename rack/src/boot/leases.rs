//! The rack's lease table: for each subnet it serves, the region's leases, this rack's offers (held
//! [`OFFER_HOLD_MS`] in memory, never committed) and its leases not yet committed by the region. It picks
//! addresses for the DHCP engine; it does no I/O.
//!
//! An address for a MAC on a subnet is chosen in this order:
//! 1. the MAC's live offer (a repeated DISCOVER gets the same answer);
//! 2. its current or previous lease there (sticky: a machine gets its last address back unless another
//!    MAC holds it);
//! 3. the address the client asked for (option 50), if free;
//! 4. the first never-used address of the dynamic ranges (a cursor walks them once; addresses given back
//!    behind it wait in a small set);
//! 5. the address whose lease ran out longest ago. A lease is reusable by another MAC only one lease
//!    time after it expired (`expires + (expires - start)`), so a primary cut off from every region that
//!    renewed it offline is not undercut by the secondary; released addresses are reusable at once and
//!    declined ones when their (declined) lease expires.
//!
//! Never handed out: addresses outside the dynamic ranges, reserved ranges, the gateway, the network and
//! broadcast addresses, declined addresses before their expiry, addresses another MAC holds. Every step
//! is a hash lookup or the head of an ordered set: O(log n) per DISCOVER at 100,000 leases.

use ingot_common::net::{Cidr, Lease, LeaseState, Subnet};
use ingot_common::Mac;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;

/// How long an offer holds its address for the client (RFC 2131 leaves it to the server; a client
/// REQUESTs within seconds).
pub const OFFER_HOLD_MS: u64 = 30_000;

/// Where an address stands for one MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// Its lease or offer is this MAC's.
    Mine,
    /// Nobody holds it: it can be given to this MAC.
    Free,
    /// Another MAC holds it, or this MAC declined it and the decline has not expired.
    HeldByOther,
    /// Never handed out: outside the dynamic ranges, reserved, the gateway, network or broadcast.
    Unassignable,
}

/// What the table knows of one address's lease, for callers and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseView {
    /// The MAC the lease is (or was) bound to, or that declined it.
    pub mac: Mac,
    /// Bound, released or declined.
    pub state: LeaseState,
    /// When it was given (ms).
    pub start_ms: u64,
    /// When it runs out (ms).
    pub expires_ms: u64,
    /// Whether the region has not recorded it yet (this rack's commit in flight).
    pub pending: bool,
}

impl LeaseView {
    /// When another MAC may get the address: a lease time after a bound lease expired (see the module
    /// doc); released and declined addresses at their expiry.
    fn reuse_after_ms(&self) -> u64 {
        match self.state {
            LeaseState::Bound => self
                .expires_ms
                .saturating_add(self.expires_ms.saturating_sub(self.start_ms)),
            LeaseState::Released | LeaseState::Declined => self.expires_ms,
        }
    }
    fn of(lease: &Lease, pending: bool) -> LeaseView {
        LeaseView {
            mac: lease.mac,
            state: lease.state,
            start_ms: lease.start_ms,
            expires_ms: lease.expires_ms,
            pending,
        }
    }
}

/// An offer's hold on an address.
#[derive(Debug, Clone, Copy)]
struct Hold {
    /// The MAC it was offered to.
    mac: Mac,
    /// When the hold ends (ms).
    until_ms: u64,
}

/// One address the table knows something about.
#[derive(Debug, Default)]
struct Slot {
    /// The region's lease of the address, or this rack's uncommitted one.
    lease: Option<LeaseView>,
    /// This rack's live offer of it, if any (offers override nothing: they sit beside the lease).
    offer: Option<Hold>,
    /// The key under which it sits in `Pool::reusable`, if it does.
    reuse_key: Option<u64>,
}

/// The parts of a subnet that decide which addresses may be handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shape {
    /// The network (its network and broadcast addresses are never handed out).
    cidr: Cidr,
    /// The router, never handed out.
    gateway: Option<u32>,
    /// Dynamic ranges, sorted, as (first, last): the only addresses handed out.
    dynamic: Vec<(u32, u32)>,
    /// Reserved ranges as (first, last), never handed out even if a dynamic range overlaps them.
    reserved: Vec<(u32, u32)>,
}

impl Shape {
    fn of(s: &Subnet) -> Shape {
        let mut dynamic: Vec<(u32, u32)> = s
            .dynamic
            .iter()
            .map(|r| (u32::from(r.start), u32::from(r.end)))
            .filter(|(a, b)| a <= b)
            .collect();
        dynamic.sort_unstable();
        Shape {
            cidr: s.cidr,
            gateway: s.gateway.map(u32::from),
            dynamic,
            reserved: s
                .reserved
                .iter()
                .map(|r| (u32::from(r.start), u32::from(r.end)))
                .collect(),
        }
    }
    fn unconfigured(cidr: Cidr) -> Shape {
        Shape {
            cidr,
            gateway: None,
            dynamic: Vec::new(),
            reserved: Vec::new(),
        }
    }
    fn assignable(&self, ip: u32) -> bool {
        let a = Ipv4Addr::from(ip);
        self.cidr.contains(a)
            && a != self.cidr.network
            && a != self.cidr.broadcast()
            && Some(ip) != self.gateway
            && self.dynamic.iter().any(|&(s, e)| s <= ip && ip <= e)
            && !self.reserved.iter().any(|&(s, e)| s <= ip && ip <= e)
    }
    /// The dynamic address after `ip` (in range order), if any.
    fn next(&self, ip: u32) -> Option<u32> {
        self.dynamic.iter().find_map(|&(s, e)| {
            if ip < s {
                Some(s)
            } else if ip < e {
                Some(ip + 1)
            } else {
                None
            }
        })
    }
}

/// One subnet's addresses.
#[derive(Debug)]
struct Pool {
    /// Which addresses may be handed out.
    shape: Shape,
    /// Every address with a lease or an offer.
    slots: HashMap<u32, Slot>,
    /// Each MAC's latest lease address (its sticky choice); checked against the slot on use.
    by_mac: HashMap<Mac, u32>,
    /// Each MAC's live offer.
    offers_by_mac: HashMap<Mac, u32>,
    /// Leased, un-offered, assignable addresses by the time another MAC may have them.
    reusable: BTreeSet<(u64, u32)>,
    /// Offers by expiry.
    offer_expiry: BTreeSet<(u64, u32)>,
    /// The next dynamic address never examined; every assignable address before it has a slot or is in
    /// `returned`.
    cursor: Option<u32>,
    /// Addresses behind the cursor that lost their slot (an expired offer, a lease the region dropped).
    returned: BTreeSet<u32>,
}

impl Pool {
    fn new(shape: Shape) -> Pool {
        let cursor = shape.dynamic.first().map(|&(s, _)| s);
        Pool {
            shape,
            slots: HashMap::new(),
            by_mac: HashMap::new(),
            offers_by_mac: HashMap::new(),
            reusable: BTreeSet::new(),
            offer_expiry: BTreeSet::new(),
            cursor,
            returned: BTreeSet::new(),
        }
    }

    /// Takes a new shape; when the ranges changed, the fresh-address cursor and the reuse index are
    /// rebuilt (O(n), once per configuration change).
    fn reshape(&mut self, shape: Shape) {
        if shape == self.shape {
            return;
        }
        self.shape = shape;
        self.cursor = self.shape.dynamic.first().map(|&(s, _)| s);
        self.returned.clear();
        self.reusable.clear();
        let ips: Vec<u32> = self.slots.keys().copied().collect();
        for ip in ips {
            if let Some(s) = self.slots.get_mut(&ip) {
                s.reuse_key = None;
            }
            self.sync(ip);
        }
    }

    fn behind_cursor(&self, ip: u32) -> bool {
        self.cursor.is_none_or(|c| ip < c)
    }

    /// Puts the slot in (or out of) the reuse index to match its state.
    fn sync(&mut self, ip: u32) {
        let assignable = self.shape.assignable(ip);
        let Some(slot) = self.slots.get_mut(&ip) else {
            return;
        };
        let want = match (&slot.lease, &slot.offer) {
            (Some(l), None) if assignable => Some(l.reuse_after_ms()),
            _ => None,
        };
        if want != slot.reuse_key {
            if let Some(k) = slot.reuse_key {
                self.reusable.remove(&(k, ip));
            }
            if let Some(k) = want {
                self.reusable.insert((k, ip));
            }
            slot.reuse_key = want;
        }
    }

    /// Drops a slot that holds nothing any more; a fresh address behind the cursor goes to `returned`.
    fn gc(&mut self, ip: u32) {
        let empty = self
            .slots
            .get(&ip)
            .is_some_and(|s| s.lease.is_none() && s.offer.is_none());
        if empty {
            if let Some(s) = self.slots.remove(&ip) {
                if let Some(k) = s.reuse_key {
                    self.reusable.remove(&(k, ip));
                }
            }
            if self.shape.assignable(ip) && self.behind_cursor(ip) {
                self.returned.insert(ip);
            }
        }
    }

    fn slot_mut(&mut self, ip: u32) -> &mut Slot {
        if !self.slots.contains_key(&ip) {
            self.returned.remove(&ip);
        }
        self.slots.entry(ip).or_default()
    }

    fn availability(&self, ip: u32, mac: Mac, now_ms: u64) -> Availability {
        if !self.shape.assignable(ip) {
            return Availability::Unassignable;
        }
        let Some(slot) = self.slots.get(&ip) else {
            return Availability::Free;
        };
        let mut mine = false;
        if let Some(l) = &slot.lease {
            if l.mac == mac {
                if l.state == LeaseState::Declined && l.expires_ms > now_ms {
                    return Availability::HeldByOther;
                }
                mine = l.state != LeaseState::Declined;
            } else if l.reuse_after_ms() > now_ms {
                return Availability::HeldByOther;
            }
        }
        if let Some(o) = &slot.offer {
            if o.until_ms > now_ms {
                if o.mac != mac {
                    return Availability::HeldByOther;
                }
                mine = true;
            }
        }
        if mine {
            Availability::Mine
        } else {
            Availability::Free
        }
    }

    /// The next never-used address: one given back behind the cursor, else the cursor's.
    fn take_fresh(&mut self, probes: &mut u64) -> Option<u32> {
        if let Some(ip) = self.returned.pop_first() {
            *probes += 1;
            return Some(ip);
        }
        while let Some(ip) = self.cursor {
            *probes += 1;
            self.cursor = self.shape.next(ip);
            if !self.slots.contains_key(&ip) && self.shape.assignable(ip) {
                return Some(ip);
            }
        }
        None
    }

    fn set_record(&mut self, ip: u32, view: LeaseView) {
        let slot = self.slot_mut(ip);
        let old_mac = slot.lease.map(|l| l.mac);
        slot.lease = Some(view);
        if slot.offer.is_some_and(|o| o.mac == view.mac) {
            slot.offer = None;
            self.offers_by_mac.remove(&view.mac);
        }
        if let Some(old) = old_mac.filter(|&m| m != view.mac) {
            if self.by_mac.get(&old) == Some(&ip) {
                self.by_mac.remove(&old);
            }
        }
        if view.state == LeaseState::Declined {
            if self.by_mac.get(&view.mac) == Some(&ip) {
                self.by_mac.remove(&view.mac);
            }
        } else {
            let replace = match self.by_mac.get(&view.mac) {
                None => true,
                Some(&cur) if cur == ip => true,
                Some(&cur) => self
                    .slots
                    .get(&cur)
                    .and_then(|s| s.lease)
                    .is_none_or(|l| l.mac != view.mac || l.start_ms <= view.start_ms),
            };
            if replace {
                self.by_mac.insert(view.mac, ip);
            }
        }
        self.sync(ip);
    }

    fn clear_record(&mut self, ip: u32) {
        if let Some(slot) = self.slots.get_mut(&ip) {
            if let Some(l) = slot.lease.take() {
                if self.by_mac.get(&l.mac) == Some(&ip) {
                    self.by_mac.remove(&l.mac);
                }
            }
        }
        self.sync(ip);
        self.gc(ip);
    }

    fn clear_offer(&mut self, ip: u32) {
        if let Some(slot) = self.slots.get_mut(&ip) {
            if let Some(o) = slot.offer.take() {
                self.offer_expiry.remove(&(o.until_ms, ip));
                if self.offers_by_mac.get(&o.mac) == Some(&ip) {
                    self.offers_by_mac.remove(&o.mac);
                }
            }
        }
        self.sync(ip);
        self.gc(ip);
    }
}

/// The lease table of every subnet this rack serves (see the module doc).
#[derive(Debug, Default)]
pub struct LeaseTable {
    /// One pool per subnet served.
    pools: HashMap<Cidr, Pool>,
    /// Addresses examined by allocations (see [`LeaseTable::probes`]).
    probes: u64,
}

impl LeaseTable {
    /// An empty table.
    pub fn new() -> LeaseTable {
        LeaseTable::default()
    }

    /// Takes the subnets to serve: new ones start empty, changed ranges rebuild their indexes, subnets
    /// no longer served are forgotten with their leases.
    pub fn configure(&mut self, subnets: &[Subnet]) {
        let keep: HashSet<Cidr> = subnets.iter().map(|s| s.cidr).collect();
        self.pools.retain(|c, _| keep.contains(c));
        for s in subnets {
            let shape = Shape::of(s);
            match self.pools.get_mut(&s.cidr) {
                Some(p) => p.reshape(shape),
                None => {
                    self.pools.insert(s.cidr, Pool::new(shape));
                }
            }
        }
    }

    /// Takes the region's leases of `subnet`: all of them (`full`: the region's leases no longer listed
    /// are dropped; this rack's offers and uncommitted leases stay) or changes only. A region lease does
    /// not replace this rack's newer uncommitted lease of the same MAC. Leases outside `subnet` are
    /// ignored.
    pub fn set_leases(&mut self, subnet: Cidr, full: bool, leases: Vec<Lease>) {
        let pool = self
            .pools
            .entry(subnet)
            .or_insert_with(|| Pool::new(Shape::unconfigured(subnet)));
        if full {
            let listed: HashSet<u32> = leases.iter().map(|l| u32::from(l.ip)).collect();
            let gone: Vec<u32> = pool
                .slots
                .iter()
                .filter(|(ip, s)| s.lease.is_some_and(|l| !l.pending) && !listed.contains(ip))
                .map(|(ip, _)| *ip)
                .collect();
            for ip in gone {
                pool.clear_record(ip);
            }
        }
        for lease in leases {
            if !subnet.contains(lease.ip) {
                continue;
            }
            let ip = u32::from(lease.ip);
            let ours_newer = pool.slots.get(&ip).and_then(|s| s.lease).is_some_and(|l| {
                l.pending && l.mac == lease.mac && l.expires_ms >= lease.expires_ms
            });
            if !ours_newer {
                pool.set_record(ip, LeaseView::of(&lease, false));
            }
        }
    }

    /// Where `ip` on `subnet` stands for `mac` at `now_ms`.
    pub fn availability(&self, subnet: Cidr, ip: Ipv4Addr, mac: Mac, now_ms: u64) -> Availability {
        match self.pools.get(&subnet) {
            Some(p) => p.availability(u32::from(ip), mac, now_ms),
            None => Availability::Unassignable,
        }
    }

    /// The MAC's live offer or sticky address on `subnet`, if it is still the MAC's to have.
    pub fn sticky(&self, subnet: Cidr, mac: Mac, now_ms: u64) -> Option<Ipv4Addr> {
        let p = self.pools.get(&subnet)?;
        [p.offers_by_mac.get(&mac), p.by_mac.get(&mac)]
            .into_iter()
            .flatten()
            .find(|&&ip| p.availability(ip, mac, now_ms) == Availability::Mine)
            .map(|&ip| Ipv4Addr::from(ip))
    }

    /// Whether the MAC holds an unexpired bound lease on `subnet` (what a rack cut off from the regions
    /// still renews).
    pub fn holds_active(&self, subnet: Cidr, mac: Mac, now_ms: u64) -> bool {
        self.pools.get(&subnet).is_some_and(|p| {
            p.by_mac
                .get(&mac)
                .and_then(|ip| p.slots.get(ip))
                .and_then(|s| s.lease)
                .is_some_and(|l| {
                    l.mac == mac && l.state == LeaseState::Bound && l.expires_ms > now_ms
                })
        })
    }

    /// Picks an address for `mac` on `subnet` (see the module doc for the order; [`LeaseTable::sticky`]
    /// is its first two steps alone). Does not hold it: [`LeaseTable::hold_offer`] or
    /// [`LeaseTable::record_pending`] does.
    pub fn allocate(
        &mut self,
        subnet: Cidr,
        mac: Mac,
        requested: Option<Ipv4Addr>,
        now_ms: u64,
    ) -> Option<Ipv4Addr> {
        if let Some(ip) = self.sticky(subnet, mac, now_ms) {
            self.probes += 1;
            return Some(ip);
        }
        let pool = self.pools.get_mut(&subnet)?;
        if let Some(r) = requested {
            self.probes += 1;
            if matches!(
                pool.availability(u32::from(r), mac, now_ms),
                Availability::Free | Availability::Mine
            ) {
                return Some(r);
            }
        }
        if let Some(ip) = pool.take_fresh(&mut self.probes) {
            return Some(Ipv4Addr::from(ip));
        }
        // The reuse index holds only un-offered, assignable addresses, so its head is the answer unless
        // it is not due yet; the loop guards against a slot whose state moved on.
        for &(due, ip) in &pool.reusable {
            self.probes += 1;
            if due > now_ms {
                break;
            }
            if matches!(
                pool.availability(ip, mac, now_ms),
                Availability::Free | Availability::Mine
            ) {
                return Some(Ipv4Addr::from(ip));
            }
        }
        None
    }

    /// Holds `ip` for `mac` for [`OFFER_HOLD_MS`] (replacing the MAC's other offer on the subnet).
    pub fn hold_offer(&mut self, subnet: Cidr, ip: Ipv4Addr, mac: Mac, now_ms: u64) {
        let Some(pool) = self.pools.get_mut(&subnet) else {
            return;
        };
        let ip = u32::from(ip);
        if let Some(&other) = pool.offers_by_mac.get(&mac) {
            if other != ip {
                pool.clear_offer(other);
            }
        }
        let until_ms = now_ms.saturating_add(OFFER_HOLD_MS);
        let slot = pool.slot_mut(ip);
        let old = slot.offer.replace(Hold { mac, until_ms });
        if let Some(o) = old {
            pool.offer_expiry.remove(&(o.until_ms, ip));
            if o.mac != mac && pool.offers_by_mac.get(&o.mac) == Some(&ip) {
                pool.offers_by_mac.remove(&o.mac);
            }
        }
        pool.offer_expiry.insert((until_ms, ip));
        pool.offers_by_mac.insert(mac, ip);
        pool.sync(ip);
    }

    /// Forgets the MAC's offer on `subnet` (it chose another server).
    pub fn forget_offer(&mut self, subnet: Cidr, mac: Mac) {
        if let Some(pool) = self.pools.get_mut(&subnet) {
            if let Some(&ip) = pool.offers_by_mac.get(&mac) {
                pool.clear_offer(ip);
            }
        }
    }

    fn pool_of(&mut self, ip: Ipv4Addr) -> Option<&mut Pool> {
        self.pools.values_mut().find(|p| p.shape.cidr.contains(ip))
    }

    /// Records a lease this rack decided (an ACK, a release, a decline) until the region commits it.
    pub fn record_pending(&mut self, lease: &Lease) {
        if let Some(pool) = self.pools.get_mut(&lease.subnet) {
            if lease.subnet.contains(lease.ip) {
                pool.set_record(u32::from(lease.ip), LeaseView::of(lease, true));
            }
        }
    }

    /// The region recorded `lease`.
    pub fn committed(&mut self, lease: &Lease) {
        if let Some(pool) = self.pool_of(lease.ip) {
            let ip = u32::from(lease.ip);
            let newer_pending =
                pool.slots.get(&ip).and_then(|s| s.lease).is_some_and(|l| {
                    l.pending && l.mac == lease.mac && l.start_ms > lease.start_ms
                });
            if !newer_pending {
                pool.set_record(ip, LeaseView::of(lease, false));
            }
        }
    }

    /// The region refused this rack's lease of `ip` for `mac`: forget it (the region's own lease, if
    /// any, arrives with its next lease update).
    pub fn refused(&mut self, ip: Ipv4Addr, mac: Mac) {
        if let Some(pool) = self.pool_of(ip) {
            let ip = u32::from(ip);
            let ours = pool
                .slots
                .get(&ip)
                .and_then(|s| s.lease)
                .is_some_and(|l| l.pending && l.mac == mac);
            if ours {
                pool.clear_record(ip);
            }
            if pool
                .slots
                .get(&ip)
                .and_then(|s| s.offer)
                .is_some_and(|o| o.mac == mac)
            {
                pool.clear_offer(ip);
            }
        }
    }

    /// Drops offers past their hold.
    pub fn expire(&mut self, now_ms: u64) {
        for pool in self.pools.values_mut() {
            while let Some(&(until, ip)) = pool.offer_expiry.first() {
                if until > now_ms {
                    break;
                }
                pool.clear_offer(ip);
                // clear_offer removed the entry; make sure a mismatched one cannot loop.
                pool.offer_expiry.remove(&(until, ip));
            }
        }
    }

    /// What the table knows of `ip`'s lease.
    pub fn lease(&self, ip: Ipv4Addr) -> Option<LeaseView> {
        self.pools
            .values()
            .find(|p| p.shape.cidr.contains(ip))
            .and_then(|p| p.slots.get(&u32::from(ip)))
            .and_then(|s| s.lease)
    }

    /// Addresses with a lease or an offer, over all subnets.
    pub fn len(&self) -> usize {
        self.pools.values().map(|p| p.slots.len()).sum()
    }

    /// Whether no address has a lease or an offer.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Addresses examined by allocations so far: what the tests check to show allocation stays
    /// O(log n) (the cursor walks each address once).
    pub fn probes(&self) -> u64 {
        self.probes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ingot_common::net::{Ipv4Range, SubnetMode};

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }
    fn mac(n: u32) -> Mac {
        let b = n.to_be_bytes();
        Mac([0x52, 0x54, b[0], b[1], b[2], b[3]])
    }
    fn subnet(cidr: &str, dynamic: &[&str], reserved: &[&str]) -> Subnet {
        Subnet {
            cidr: cidr.parse().expect("cidr"),
            gateway: None,
            dns: vec![],
            domain: String::new(),
            dynamic: dynamic.iter().map(|r| r.parse().expect("range")).collect(),
            reserved: reserved.iter().map(|r| r.parse().expect("range")).collect(),
            vlan: 0,
            mode: SubnetMode::Managed,
            primary: None,
            secondary: None,
            lease_time_s: 3600,
            pxe_lease_time_s: 30,
        }
    }
    fn lease(a: &str, m: Mac, state: LeaseState, start_ms: u64, expires_ms: u64) -> Lease {
        let ip = ip(a);
        Lease {
            ip,
            subnet: Cidr {
                network: Ipv4Addr::from(u32::from(ip) & 0xffff_ff00),
                prefix: 24,
            },
            mac: m,
            state,
            start_ms,
            expires_ms,
            hostname: String::new(),
            rack: String::new(),
        }
    }
    fn table(s: &Subnet) -> LeaseTable {
        let mut t = LeaseTable::new();
        t.configure(std::slice::from_ref(s));
        t
    }
    /// Allocates and holds an offer, as the engine does for a DISCOVER.
    fn offer(
        t: &mut LeaseTable,
        c: Cidr,
        m: Mac,
        req: Option<Ipv4Addr>,
        now: u64,
    ) -> Option<Ipv4Addr> {
        let a = t.allocate(c, m, req, now)?;
        t.hold_offer(c, a, m, now);
        Some(a)
    }

    #[test]
    fn order_sticky_requested_fresh_then_oldest_expired() {
        let mut s = subnet(
            "10.0.0.0/24",
            &["10.0.0.0-10.0.0.7"],
            &["10.0.0.3-10.0.0.3"],
        );
        s.gateway = Some(ip("10.0.0.1"));
        let c = s.cidr;
        let mut t = table(&s);
        // Network (.0), gateway (.1) and reserved (.3) are skipped.
        assert_eq!(offer(&mut t, c, mac(1), None, 0), Some(ip("10.0.0.2")));
        assert_eq!(offer(&mut t, c, mac(2), None, 0), Some(ip("10.0.0.4")));
        // A repeated DISCOVER gets the same offer; the requested address if free.
        assert_eq!(offer(&mut t, c, mac(1), None, 1), Some(ip("10.0.0.2")));
        assert_eq!(
            offer(&mut t, c, mac(3), Some(ip("10.0.0.7")), 1),
            Some(ip("10.0.0.7"))
        );
        // Requested but held by another, reserved, or the gateway: fresh instead.
        assert_eq!(
            offer(&mut t, c, mac(4), Some(ip("10.0.0.2")), 1),
            Some(ip("10.0.0.5"))
        );
        assert_eq!(
            offer(&mut t, c, mac(5), Some(ip("10.0.0.3")), 1),
            Some(ip("10.0.0.6"))
        );
        // Exhausted: .2 .4 .5 .6 .7 offered, nothing else assignable.
        assert_eq!(offer(&mut t, c, mac(6), Some(ip("10.0.0.1")), 1), None);
        // Offers expire: the address is fresh again.
        t.expire(OFFER_HOLD_MS + 1);
        assert!(t.is_empty());
        // Region leases: mac(1) had .6 (sticky); .2 expired long ago, .4 expired recently.
        t.set_leases(
            c,
            true,
            vec![
                lease("10.0.0.6", mac(1), LeaseState::Bound, 0, 1_000_000),
                lease("10.0.0.2", mac(7), LeaseState::Bound, 0, 1_000),
                lease("10.0.0.4", mac(8), LeaseState::Bound, 0, 50_000),
                lease("10.0.0.5", mac(9), LeaseState::Bound, 0, 1_000_000),
                lease("10.0.0.7", mac(10), LeaseState::Bound, 0, 1_000_000),
            ],
        );
        let now = 60_000;
        assert_eq!(offer(&mut t, c, mac(1), None, now), Some(ip("10.0.0.6")));
        // .2 is reusable after 1,000 + 1,000 ms, .4 only after 100,000 ms.
        assert_eq!(offer(&mut t, c, mac(11), None, now), Some(ip("10.0.0.2")));
        assert_eq!(offer(&mut t, c, mac(12), None, now), None);
        assert_eq!(
            offer(&mut t, c, mac(12), None, 100_001),
            Some(ip("10.0.0.4"))
        );
        // The old holder of .2 is not sticky to it any more while mac(11)'s offer holds it.
        assert_eq!(t.sticky(c, mac(7), now), None);
    }

    #[test]
    fn declined_addresses_wait_for_their_expiry_released_stay_sticky() {
        let s = subnet("10.0.1.0/24", &["10.0.1.10-10.0.1.11"], &[]);
        let c = s.cidr;
        let mut t = table(&s);
        let a = offer(&mut t, c, mac(1), None, 0).expect("offer");
        assert_eq!(a, ip("10.0.1.10"));
        // mac(1) declines it: nobody gets it until the decline expires, not even mac(1).
        t.record_pending(&lease("10.0.1.10", mac(1), LeaseState::Declined, 0, 10_000));
        assert_eq!(
            t.availability(c, a, mac(1), 5_000),
            Availability::HeldByOther
        );
        assert_eq!(offer(&mut t, c, mac(1), None, 5_000), Some(ip("10.0.1.11")));
        assert_eq!(offer(&mut t, c, mac(2), None, 5_000), None);
        assert_eq!(offer(&mut t, c, mac(2), None, 10_000), Some(a));
        // Released: the MAC keeps it as its sticky choice; another MAC may take it.
        let mut t = table(&s);
        t.record_pending(&lease("10.0.1.10", mac(1), LeaseState::Released, 0, 0));
        assert_eq!(t.sticky(c, mac(1), 1), Some(ip("10.0.1.10")));
        t.committed(&lease("10.0.1.10", mac(1), LeaseState::Released, 0, 0));
        assert_eq!(t.lease(ip("10.0.1.10")).map(|l| l.pending), Some(false));
    }

    #[test]
    fn full_updates_keep_pending_and_refusals_forget() {
        let s = subnet("10.0.2.0/24", &["10.0.2.10-10.0.2.20"], &[]);
        let c = s.cidr;
        let mut t = table(&s);
        t.set_leases(
            c,
            true,
            vec![lease("10.0.2.10", mac(1), LeaseState::Bound, 0, 100)],
        );
        t.record_pending(&lease("10.0.2.11", mac(2), LeaseState::Bound, 0, 100));
        t.set_leases(c, true, vec![]);
        assert_eq!(t.lease(ip("10.0.2.10")), None);
        assert!(t.lease(ip("10.0.2.11")).is_some_and(|l| l.pending));
        t.refused(ip("10.0.2.11"), mac(2));
        assert_eq!(t.lease(ip("10.0.2.11")), None);
        // Both addresses are fresh again (behind the cursor).
        assert_eq!(offer(&mut t, c, mac(3), None, 0), Some(ip("10.0.2.10")));
        assert_eq!(offer(&mut t, c, mac(4), None, 0), Some(ip("10.0.2.11")));
        assert_eq!(offer(&mut t, c, mac(5), None, 0), Some(ip("10.0.2.12")));
        // Changing the ranges rebuilds: .10-.12 are held, so the new range starts past them.
        let mut s2 = s.clone();
        s2.dynamic = vec![Ipv4Range {
            start: ip("10.0.2.11"),
            end: ip("10.0.2.13"),
        }];
        t.configure(&[s2]);
        assert_eq!(offer(&mut t, c, mac(6), None, 0), Some(ip("10.0.2.13")));
        assert_eq!(
            t.availability(c, ip("10.0.2.20"), mac(6), 0),
            Availability::Unassignable
        );
    }

    #[test]
    fn allocation_stays_cheap_at_100000_leases() {
        let s = subnet("10.64.0.0/14", &["10.64.0.1-10.67.255.254"], &[]);
        let c = s.cidr;
        let mut t = table(&s);
        let base = u32::from(ip("10.64.0.1"));
        let leases: Vec<Lease> = (0..100_000u32)
            .map(|i| Lease {
                ip: Ipv4Addr::from(base + i),
                subnet: c,
                mac: mac(i),
                state: LeaseState::Bound,
                start_ms: 0,
                // The first thousand ran out long ago; the rest are current.
                expires_ms: if i < 1_000 { 1_000 } else { 10_000_000 },
                hostname: String::new(),
                rack: String::new(),
            })
            .collect();
        t.set_leases(c, true, leases);
        assert_eq!(t.len(), 100_000);
        // The first fresh address walks the cursor past the leased block once (amortized).
        let first = offer(&mut t, c, mac(200_000), None, 5_000).expect("fresh");
        assert_eq!(first, Ipv4Addr::from(base + 100_000));
        let before = t.probes();
        for i in 1..1_000u32 {
            offer(&mut t, c, mac(200_000 + i), None, 5_000).expect("fresh");
        }
        assert!(
            t.probes() - before <= 2 * 1_000,
            "{} probes",
            t.probes() - before
        );
        // Sticky and reuse lookups are one probe each.
        let before = t.probes();
        assert_eq!(
            offer(&mut t, c, mac(50_000), None, 5_000),
            Some(Ipv4Addr::from(base + 50_000))
        );
        assert_eq!(t.probes() - before, 1);
        // A full table falls back to the oldest expired lease, in one probe.
        // (Shrinking the ranges to the leased block rebuilds the indexes; the first allocation walks the
        // cursor to the end once.)
        t.configure(&[subnet("10.64.0.0/14", &["10.64.0.1-10.65.134.160"], &[])]);
        let reused = offer(&mut t, c, mac(300_000), None, 5_000).expect("reused");
        assert_eq!(reused, Ipv4Addr::from(base));
        let before = t.probes();
        let reused = offer(&mut t, c, mac(300_001), None, 5_000).expect("reused");
        assert_eq!(reused, Ipv4Addr::from(base + 1));
        assert!(t.probes() - before <= 3, "{} probes", t.probes() - before);
    }
}
