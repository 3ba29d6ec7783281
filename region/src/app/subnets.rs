//! Boot networks and their DHCP leases: subnets written by admins and read by anyone, leases read with
//! the machine visibility rules, and a machine's addresses.
//!
//! Who sees which lease: an admin sees every lease. Any other user sees the leases of the machines they
//! may see (`machines::visible`: the pool's and their own) and nothing else — not the leases of other
//! users' machines (their addresses are as private as their owner), nor those of MACs no machine has
//! (unknown devices on the network are the operators' business).
//!
//! A machine's addresses are computed from `Data.leases` by its MACs when one machine is read (a walk
//! of the leases, no index): lists and watches do not carry them.

use super::machines::{visible, MachineKey};
use super::{required, Actor, App};
use crate::command::{op, Op, Reply};
use crate::state::State;
use ingot_common::net::{parse_cidr, Cidr, Ipv4Range, Lease, Subnet, SubnetMode};
use ingot_common::{DomainError, Mac, Machine};
use std::net::Ipv4Addr;
use std::ops::Bound;

/// Leases per page when the caller names no page size.
pub const DEFAULT_LEASE_PAGE: u32 = 1000;
/// Most leases per page: 10,000 leases are about 1 MB on the wire, well under a gRPC message's 4 MB.
pub const MAX_LEASE_PAGE: u32 = 10_000;

/// The changes of an update: `None` leaves a field as it is. For the optional fields, `Some(None)`
/// clears it.
#[derive(Clone, Debug, Default)]
pub struct SubnetPatch {
    /// New gateway, or `Some(None)` for none.
    pub gateway: Option<Option<Ipv4Addr>>,
    /// New DNS servers (replacing the list).
    pub dns: Option<Vec<Ipv4Addr>>,
    /// New domain (empty: none).
    pub domain: Option<String>,
    /// New dynamic ranges (replacing the list).
    pub dynamic: Option<Vec<Ipv4Range>>,
    /// New reserved ranges (replacing the list).
    pub reserved: Option<Vec<Ipv4Range>>,
    /// New VLAN id.
    pub vlan: Option<u16>,
    /// New mode.
    pub mode: Option<SubnetMode>,
    /// New primary rack, or `Some(None)` for none.
    pub primary: Option<Option<String>>,
    /// New secondary rack, or `Some(None)` for none.
    pub secondary: Option<Option<String>>,
    /// New lease time (s).
    pub lease_time_s: Option<u32>,
    /// New PXE lease time (s).
    pub pxe_lease_time_s: Option<u32>,
}

impl SubnetPatch {
    /// `s` with the changes made.
    pub fn applied_to(self, mut s: Subnet) -> Subnet {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { s.$f = v; } )* };
        }
        set!(
            gateway,
            dns,
            domain,
            dynamic,
            reserved,
            vlan,
            mode,
            primary,
            secondary,
            lease_time_s,
            pxe_lease_time_s
        );
        s
    }
}

/// Which leases [`App::list_leases`] reads.
#[derive(Clone, Debug, Default)]
pub struct LeaseQuery {
    /// Only this subnet's.
    pub subnet: Option<Cidr>,
    /// Only this MAC's.
    pub mac: Option<Mac>,
    /// Leases per page (0: [`DEFAULT_LEASE_PAGE`]; at most [`MAX_LEASE_PAGE`]).
    pub page_size: u32,
    /// Leases after this address (the previous page's last).
    pub after: Option<Ipv4Addr>,
    /// Read after a read barrier (true) or from this region's state as it is.
    pub linearizable: bool,
}

/// A lease with the machine holding its MAC.
#[derive(Clone, Debug)]
pub struct LeaseView {
    /// The lease.
    pub lease: Lease,
    /// The machine with the lease's MAC, if any.
    pub system_id: Option<String>,
}

/// A page of leases and the address to continue after (`None` on the last page).
pub type LeasePage = (Vec<LeaseView>, Option<Ipv4Addr>);

fn subnet(r: Reply) -> Result<Subnet, DomainError> {
    match r {
        Reply::Subnet(s) => Ok(*s),
        other => Err(super::unexpected(other)),
    }
}

/// The leases in `cidr`'s addresses (subnets never overlap, so all of them are its own).
fn leases_in<'a>(st: &'a State, cidr: &Cidr) -> impl Iterator<Item = &'a Lease> + 'a {
    st.data
        .leases
        .range(cidr.network..=cidr.broadcast())
        .map(|(_, l)| l)
}

/// How many leases subnet `cidr` holds.
fn lease_count(st: &State, cidr: &Cidr) -> u64 {
    leases_in(st, cidr).count() as u64
}

/// The leases of `m`'s MACs, in address order (a walk of every lease: see the module doc).
pub fn addresses_of(st: &State, m: &Machine) -> Vec<Lease> {
    let mut out: Vec<Lease> = m
        .macs
        .iter()
        .flat_map(|mac| st.leases_of_mac(mac))
        .cloned()
        .collect();
    out.sort_by_key(|l| l.ip);
    out
}

/// The machine a lease's MAC belongs to, if `actor` may see it; `Err(())` when the lease is hidden from
/// `actor` (see the module doc).
fn lease_owner<'a>(st: &'a State, actor: &Actor, l: &Lease) -> Result<Option<&'a Machine>, ()> {
    let m = st.machine_by_mac(&l.mac);
    if actor.is_admin() {
        return Ok(m);
    }
    match m {
        Some(m) if visible(actor, m) => Ok(Some(m)),
        _ => Err(()),
    }
}

/// One page of `q`'s leases as `actor` may see them.
fn page(st: &State, actor: &Actor, q: &LeaseQuery, limit: usize) -> LeasePage {
    let start = match q.after {
        Some(a) => Bound::Excluded(a),
        None => Bound::Unbounded,
    };
    let end = match &q.subnet {
        Some(c) => Bound::Included(c.broadcast()),
        None => Bound::Unbounded,
    };
    let start = match (&q.subnet, start) {
        (Some(c), Bound::Unbounded) => Bound::Included(c.network),
        (Some(c), Bound::Excluded(a)) if a < c.network => Bound::Included(c.network),
        (_, b) => b,
    };
    let mut out = Vec::new();
    let mut last = None;
    // An empty range (a token past the subnet's end) must not reach BTreeMap::range, which panics on it.
    let empty = match (start, end) {
        (Bound::Included(a), Bound::Included(b)) => a > b,
        (Bound::Excluded(a), Bound::Included(b)) => a >= b,
        _ => false,
    };
    if empty {
        return (out, None);
    }
    for (ip, l) in st.data.leases.range((start, end)) {
        if q.mac.is_some_and(|m| m != l.mac) {
            continue;
        }
        let Ok(m) = lease_owner(st, actor, l) else {
            continue;
        };
        if out.len() == limit {
            return (out, last);
        }
        out.push(LeaseView {
            lease: l.clone(),
            system_id: m.map(|m| m.system_id.clone()),
        });
        last = Some(*ip);
    }
    (out, None)
}

impl App {
    /// Creates a subnet (admins).
    pub async fn create_subnet(
        &self,
        actor: &Actor,
        s: Subnet,
    ) -> Result<(Subnet, u64), DomainError> {
        actor.require_admin("create subnets")?;
        s.validate()?;
        let s = subnet(
            self.region
                .write(self.command(actor, Op::CreateSubnet(op::CreateSubnet { subnet: s })))
                .await?,
        )?;
        let n = self.read_after_write(|st| lease_count(st, &s.cidr)).await;
        Ok((s, n))
    }

    /// A subnet and its lease count.
    pub async fn get_subnet(
        &self,
        actor: &Actor,
        cidr: &str,
        linearizable: bool,
    ) -> Result<(Subnet, u64), DomainError> {
        let cidr = parse_cidr("cidr", cidr)?;
        self.read(actor, linearizable, |st| {
            st.data
                .subnets
                .get(&cidr.to_string())
                .map(|s| (s.clone(), lease_count(st, &cidr)))
                .ok_or_else(|| not_found(&cidr))
        })
        .await?
    }

    /// Every subnet with its lease count, in address order.
    pub async fn list_subnets(
        &self,
        actor: &Actor,
        linearizable: bool,
    ) -> Result<Vec<(Subnet, u64)>, DomainError> {
        let mut all = self
            .read(actor, linearizable, |st| {
                st.data
                    .subnets
                    .values()
                    .map(|s| (s.clone(), lease_count(st, &s.cidr)))
                    .collect::<Vec<_>>()
            })
            .await?;
        // Keys are CIDR text ("10.100..." sorts before "10.20..."): order by address instead.
        all.sort_by_key(|(s, _)| s.cidr);
        Ok(all)
    }

    /// Changes a subnet (admins): the changes are made to the subnet as a linearizable read finds it,
    /// checked, and the whole subnet is written (the apply step checks it again against the state it
    /// meets). Two concurrent updates of one subnet: the later write wins whole.
    pub async fn update_subnet(
        &self,
        actor: &Actor,
        cidr: &str,
        patch: SubnetPatch,
    ) -> Result<(Subnet, u64), DomainError> {
        actor.require_admin("change subnets")?;
        let cidr = parse_cidr("cidr", cidr)?;
        let current = self
            .read(actor, true, |st| {
                st.data.subnets.get(&cidr.to_string()).cloned()
            })
            .await?
            .ok_or_else(|| not_found(&cidr))?;
        let s = patch.applied_to(current);
        s.validate()?;
        let s = subnet(
            self.region
                .write(self.command(actor, Op::UpdateSubnet(op::UpdateSubnet { subnet: s })))
                .await?,
        )?;
        let n = self.read_after_write(|st| lease_count(st, &s.cidr)).await;
        Ok((s, n))
    }

    /// Deletes a subnet and its leases (admins).
    pub async fn delete_subnet(&self, actor: &Actor, cidr: &str) -> Result<(), DomainError> {
        actor.require_admin("delete subnets")?;
        required("cidr", cidr)?;
        let cidr = parse_cidr("cidr", cidr)?;
        self.region
            .write(self.command(actor, Op::DeleteSubnet(op::DeleteSubnet { cidr })))
            .await?;
        Ok(())
    }

    /// A page of leases in address order, as `actor` may see them (see the module doc).
    pub async fn list_leases(
        &self,
        actor: &Actor,
        q: LeaseQuery,
    ) -> Result<LeasePage, DomainError> {
        let limit = match q.page_size {
            0 => DEFAULT_LEASE_PAGE,
            n if n > MAX_LEASE_PAGE => {
                return Err(DomainError::invalid(
                    "page_size",
                    format!("{n} leases, at most {MAX_LEASE_PAGE}"),
                ))
            }
            n => n,
        } as usize;
        self.read(actor, q.linearizable, |st| page(st, actor, &q, limit))
            .await
    }

    /// The machine `key` names with its addresses (the leases of its MACs), if `actor` may see it.
    pub async fn get_machine_with_addresses(
        &self,
        actor: &Actor,
        key: MachineKey,
        linearizable: bool,
    ) -> Result<(Machine, Vec<Lease>), DomainError> {
        self.read(actor, linearizable, |st| {
            key.find(st)?
                .filter(|m| visible(actor, m))
                .map(|m| (m.clone(), addresses_of(st, m)))
                .ok_or_else(|| DomainError::not_found(format!("no machine with {key:?}")))
        })
        .await?
    }
}

/// The error for a subnet that does not exist.
fn not_found(cidr: &Cidr) -> DomainError {
    DomainError::not_found(format!(
        "subnet {cidr} does not exist (`ingot subnets list` shows them)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::zones::tests::machine;
    use crate::command::Principal;
    use ingot_common::net::LeaseState;
    use ingot_common::MachineStatus;

    fn actor(name: &str, role: &str) -> Actor {
        Actor {
            name: name.into(),
            role: role.into(),
            principal: Principal::Token {
                id: format!("{name}-t"),
                user: name.into(),
            },
        }
    }

    fn lease(ip: &str, mac: &str) -> Lease {
        let ip: Ipv4Addr = ip.parse().expect("ip");
        Lease {
            ip,
            subnet: Cidr {
                network: Ipv4Addr::from(u32::from(ip) & 0xffff_ff00),
                prefix: 24,
            },
            mac: mac.parse().expect("mac"),
            state: LeaseState::Bound,
            start_ms: 1,
            expires_ms: 2,
            hostname: String::new(),
            rack: "ra".into(),
        }
    }

    /// Machines: `pool` (no owner) with MAC :01, `mine` (alice's) with :02, `theirs` (bob's) with :03;
    /// MAC :04 is nobody's. Leases for each on 10.0.0.0/24, and for :01 on 10.0.1.0/24 too.
    fn state() -> State {
        let mut st = State::default();
        for (id, mac, owner) in [
            ("pool", "52:54:00:00:00:01", None),
            ("mine", "52:54:00:00:00:02", Some("alice")),
            ("theirs", "52:54:00:00:00:03", Some("bob")),
        ] {
            let mut m = machine(id, "default", MachineStatus::Ready);
            m.macs = vec![mac.parse().expect("mac")];
            m.owner = owner.map(String::from);
            st.put_machine(m);
        }
        for (ip, mac) in [
            ("10.0.0.11", "52:54:00:00:00:01"),
            ("10.0.0.12", "52:54:00:00:00:02"),
            ("10.0.0.13", "52:54:00:00:00:03"),
            ("10.0.0.14", "52:54:00:00:00:04"),
            ("10.0.1.11", "52:54:00:00:00:01"),
        ] {
            let l = lease(ip, mac);
            st.put_lease(l, 1, None);
        }
        st
    }

    fn ips(p: &LeasePage) -> Vec<String> {
        p.0.iter().map(|v| v.lease.ip.to_string()).collect()
    }

    #[test]
    fn users_see_the_leases_of_machines_they_may_see_and_admins_all() {
        let st = state();
        let q = LeaseQuery::default();
        let all = page(&st, &actor("root", "admin"), &q, 100);
        assert_eq!(ips(&all).len(), 5);
        assert_eq!(all.0[3].system_id, None, "a MAC no machine has");
        assert_eq!(all.0[0].system_id.as_deref(), Some("pool"));
        let alice = page(&st, &actor("alice", "user"), &q, 100);
        assert_eq!(ips(&alice), ["10.0.0.11", "10.0.0.12", "10.0.1.11"]);
    }

    #[test]
    fn leases_filter_by_subnet_and_mac_and_page_in_address_order() {
        let st = state();
        let admin = actor("root", "admin");
        let q = LeaseQuery {
            subnet: Some("10.0.0.0/24".parse().expect("cidr")),
            ..Default::default()
        };
        let p1 = page(&st, &admin, &q, 2);
        assert_eq!(ips(&p1), ["10.0.0.11", "10.0.0.12"]);
        let p2 = page(
            &st,
            &admin,
            &LeaseQuery {
                after: p1.1,
                ..q.clone()
            },
            2,
        );
        assert_eq!(ips(&p2), ["10.0.0.13", "10.0.0.14"]);
        assert_eq!(p2.1, None, "the subnet's last page");
        // A token past the subnet's end, or before its start, never panics.
        for after in ["10.0.5.1", "10.0.0.255", "9.0.0.1"] {
            let p = page(
                &st,
                &admin,
                &LeaseQuery {
                    after: after.parse().ok(),
                    ..q.clone()
                },
                2,
            );
            assert!(p.0.len() <= 2);
        }
        let mac = LeaseQuery {
            mac: Some("52:54:00:00:00:01".parse().expect("mac")),
            ..Default::default()
        };
        assert_eq!(
            ips(&page(&st, &admin, &mac, 100)),
            ["10.0.0.11", "10.0.1.11"]
        );
    }

    #[test]
    fn a_machine_s_addresses_are_its_macs_leases() {
        let st = state();
        let m = st.machine("pool").expect("machine").clone();
        let a: Vec<String> = addresses_of(&st, &m)
            .iter()
            .map(|l| l.ip.to_string())
            .collect();
        assert_eq!(a, ["10.0.0.11", "10.0.1.11"]);
    }

    #[test]
    fn a_patch_changes_only_what_it_names() {
        let s = Subnet {
            cidr: "10.0.0.0/24".parse().expect("cidr"),
            gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
            dns: vec![Ipv4Addr::new(10, 0, 0, 1)],
            domain: "lab".into(),
            dynamic: vec![],
            reserved: vec![],
            vlan: 3,
            mode: SubnetMode::Managed,
            primary: Some("ra".into()),
            secondary: Some("rb".into()),
            lease_time_s: 3600,
            pxe_lease_time_s: 30,
        };
        let p = SubnetPatch {
            gateway: Some(None),
            secondary: Some(None),
            mode: Some(SubnetMode::Proxy),
            ..Default::default()
        };
        let t = p.applied_to(s.clone());
        assert_eq!(t.gateway, None);
        assert_eq!(t.secondary, None);
        assert_eq!(t.mode, SubnetMode::Proxy);
        assert_eq!((&t.dns, t.vlan, &t.primary), (&s.dns, 3, &s.primary));
        let same = SubnetPatch::default().applied_to(s.clone());
        assert_eq!(same, s);
    }
}
