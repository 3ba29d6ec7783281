//! The boot path on the region's side of a rack's session, free of transport: what the rack serves
//! ([`RackBootConfig`]: its subnets with its role and whether it answers now, and every known MAC), the
//! leases it serves from (all of a subnet, then the changes others made), and what its lease commits and
//! enlistment requests become in the log. `app::rack_session` holds one [`BootFeed`] per session and
//! calls it on the session's poll tick; everything here reads a [`State`] and is tested on one.
//!
//! HA: which rack answers on a subnet is decided here from the replicated heartbeats, the same way BMC
//! ownership is: the primary while it is live ([`State::rack_live`] with the region's rack grace) and its
//! session announced DHCP ([`DHCP_SERVICE`]), the
//! secondary while the primary is not (or there is none); nobody in mode off. Every session re-evaluates
//! it on its poll tick, so a secondary is told to take over at most a tick after the primary's liveness
//! ran out (within the rack grace + one heartbeat record + one tick of the primary's death), and to stop
//! a tick after the primary's new session is recorded.

use crate::command::op;
use crate::state::State;
pub use ingot_common::net::SubnetRole;
use ingot_common::net::{Cidr, ClientArch, Lease, Subnet, SubnetMode, DHCP_SERVICE};
use ingot_common::{secret, Mac};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// Most leases in one `Leases` message (a full resend of a large subnet takes several).
pub const LEASES_PER_MESSAGE: usize = 4096;
/// Enlistment requests taken from one session per second (the burst allowance is the same); the rest
/// are dropped, and the rack asks again ([`ENLIST_AGAIN`]).
pub const ENLIST_PER_SECOND: u32 = 50;
/// How long a MAC this session proposed to enlist is not proposed again (the rack re-asks about an
/// unknown MAC after 60 s).
pub const ENLIST_AGAIN: Duration = Duration::from_secs(60);
/// Most enlistment requests read from one message (more is the rack's bug; the rest are dropped).
pub const ENLIST_PER_MESSAGE: usize = 1024;
/// A change of the known MACs alone (machines enlisted, deleted, edited) is sent at most this often: under
/// an enlistment storm the list would otherwise be rebuilt and resent on every tick. Subnet and HA changes
/// are sent at once.
pub const KNOWN_MIN_INTERVAL: Duration = Duration::from_secs(2);

/// A subnet as one rack serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedSubnet {
    /// The subnet's settings.
    pub subnet: Subnet,
    /// The rack's role on it.
    pub role: SubnetRole,
    /// Whether the rack answers on it now.
    pub active: bool,
}

/// What a rack is told to serve (the `BootConfig` session message); replaces the previous one. A rack
/// that serves no subnet gets no known MACs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RackBootConfig {
    /// Every subnet the rack is primary or secondary of, in CIDR order.
    pub subnets: Vec<ServedSubnet>,
    /// Every machine MAC the cluster knows, with its machine's system id.
    pub known: Vec<(Mac, String)>,
}

/// Leases of one subnet to send a rack (the `Leases` session message). A full resend is one message
/// with `full` set (the rack replaces the subnet's leases with it) followed, for more than
/// [`LEASES_PER_MESSAGE`] leases, by messages without it (the rack adds them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasesUpdate {
    /// The subnet.
    pub subnet: Cidr,
    /// Whether these replace every lease of the subnet the rack holds.
    pub full: bool,
    /// The leases (at most [`LEASES_PER_MESSAGE`]).
    pub leases: Vec<Lease>,
}

/// An unknown MAC that PXE-booted, as a rack reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnlistRequest {
    /// The MAC.
    pub mac: Mac,
    /// Its firmware (DHCP option 93).
    pub arch: ClientArch,
    /// The subnet it booted on.
    pub subnet: Cidr,
}

/// When a session looks at the state: the wall clock that liveness is judged by, the region's rack grace,
/// and the monotonic clock that paces sending.
#[derive(Debug, Clone, Copy)]
pub struct Tick {
    /// Now, ms since the epoch (compared with recorded heartbeats).
    pub now_ms: u64,
    /// How long a rack stays live after its last recorded heartbeat (`--rack-grace-ms`).
    pub grace_ms: u64,
    /// Now, monotonic ([`KNOWN_MIN_INTERVAL`]).
    pub now: Instant,
}

/// Whether the primary of `s` answers now: live, and its session announced DHCP. A primary running
/// without boot interfaces (misconfigured, or an older rack) would otherwise hold the subnet while
/// serving nobody, and its secondary would stand by forever.
fn primary_live(st: &State, s: &Subnet, now_ms: u64, grace_ms: u64) -> bool {
    s.primary.as_deref().is_some_and(|p| {
        st.rack_live(p, now_ms, grace_ms)
            && st.data.racks.get(p).is_some_and(|r| {
                r.session
                    .as_ref()
                    .is_some_and(|sess| sess.services.iter().any(|x| x == DHCP_SERVICE))
            })
    })
}

/// Every subnet `rack` is primary or secondary of, with its role and whether it answers now (see the
/// module doc), in CIDR order. Cheap (a walk of the subnets, a liveness lookup each): called every tick.
pub fn served_subnets(st: &State, rack: &str, now_ms: u64, grace_ms: u64) -> Vec<ServedSubnet> {
    st.data
        .subnets
        .values()
        .filter_map(|s| {
            let role = if s.primary.as_deref() == Some(rack) {
                SubnetRole::Primary
            } else if s.secondary.as_deref() == Some(rack) {
                SubnetRole::Secondary
            } else {
                return None;
            };
            let active = s.mode != SubnetMode::Off
                && match role {
                    SubnetRole::Primary => primary_live(st, s, now_ms, grace_ms),
                    SubnetRole::Secondary => !primary_live(st, s, now_ms, grace_ms),
                };
            Some(ServedSubnet {
                subnet: s.clone(),
                role,
                active,
            })
        })
        .collect()
}

/// Every machine MAC with its system id.
pub fn known_macs(st: &State) -> Vec<(Mac, String)> {
    st.by_mac.iter().map(|(m, id)| (*m, id.clone())).collect()
}

/// Leases as `Leases` messages of at most [`LEASES_PER_MESSAGE`]; a full resend's first message is marked
/// `full` (one empty message for a subnet without leases).
fn chunks(subnet: Cidr, full: bool, leases: Vec<Lease>, out: &mut Vec<LeasesUpdate>) {
    if leases.is_empty() {
        if full {
            out.push(LeasesUpdate {
                subnet,
                full,
                leases,
            });
        }
        return;
    }
    for (n, c) in leases.chunks(LEASES_PER_MESSAGE).enumerate() {
        out.push(LeasesUpdate {
            subnet,
            full: full && n == 0,
            leases: c.to_vec(),
        });
    }
}

/// One session's boot feed: the configuration and leases last sent, and the enlistment rate limit.
pub struct BootFeed {
    /// The subnets last sent (`None`: nothing sent yet).
    subnets: Option<Vec<ServedSubnet>>,
    /// `State::boot.macs_version` of the known-MAC list last sent (`None`: none sent, or an empty one to a
    /// rack that serves no subnet).
    macs_version: Option<u64>,
    /// When a configuration was last sent.
    sent_at: Option<Instant>,
    /// Every lease change up to this revision has been handled (`None`: no leases sent yet).
    cursor: Option<u64>,
    /// The subnets whose leases the rack holds, with whether it was active when last checked.
    fed: BTreeMap<Cidr, bool>,
    /// Enlistments allowed ([`ENLIST_PER_SECOND`]).
    enlist_limit: RateLimit,
    /// MACs this session proposed to enlist, with when (not proposed again for [`ENLIST_AGAIN`]).
    asked: HashMap<Mac, Instant>,
}

impl Default for BootFeed {
    fn default() -> Self {
        BootFeed::new(Instant::now())
    }
}

impl BootFeed {
    /// A feed that has sent nothing yet (`now`: the session's start).
    pub fn new(now: Instant) -> BootFeed {
        BootFeed {
            subnets: None,
            macs_version: None,
            sent_at: None,
            cursor: None,
            fed: BTreeMap::new(),
            enlist_limit: RateLimit::new(ENLIST_PER_SECOND, now),
            asked: HashMap::new(),
        }
    }

    /// The configuration to send `rack` now, if it differs from the one last sent: its subnets (roles,
    /// active flags) compared on every call, the known MACs by version only (no list is built for
    /// nothing) and at most every [`KNOWN_MIN_INTERVAL`] when nothing else changed.
    pub fn config_changed(&mut self, st: &State, rack: &str, tick: Tick) -> Option<RackBootConfig> {
        let now = tick.now;
        let subnets = served_subnets(st, rack, tick.now_ms, tick.grace_ms);
        // A rack that serves no subnet needs no MACs (a power-only rack is not sent the fleet's list).
        let version = (!subnets.is_empty()).then_some(st.boot.macs_version);
        let subnets_changed = self.subnets.as_ref() != Some(&subnets);
        let macs_changed = self.macs_version != version;
        if !subnets_changed && !macs_changed {
            return None;
        }
        if !subnets_changed
            && self
                .sent_at
                .is_some_and(|t| now.saturating_duration_since(t) < KNOWN_MIN_INTERVAL)
        {
            return None;
        }
        self.subnets = Some(subnets.clone());
        self.macs_version = version;
        self.sent_at = Some(now);
        Some(RackBootConfig {
            subnets,
            known: version.map(|_| known_macs(st)).unwrap_or_default(),
        })
    }

    /// The leases to send `rack` now, for the subnets last sent in its configuration: every lease of a
    /// subnet it was not fed yet, of one that became active for it, and of all of them after a gap in the
    /// change log; otherwise the leases others changed since the last call (the rack knows its own).
    pub fn leases_due(&mut self, st: &State, rack: &str) -> Vec<LeasesUpdate> {
        let served: BTreeMap<Cidr, bool> = self
            .subnets
            .iter()
            .flatten()
            .map(|s| (s.subnet.cidr, s.active))
            .collect();
        let changes = self.cursor.and_then(|c| st.boot.changes_after(c));
        let full: BTreeSet<Cidr> = served
            .iter()
            .filter(|(cidr, active)| {
                changes.is_none()
                    || match self.fed.get(cidr) {
                        None => true,
                        Some(was) => **active && !*was,
                    }
            })
            .map(|(cidr, _)| *cidr)
            .collect();
        let mut deltas: BTreeMap<Cidr, BTreeMap<Ipv4Addr, Lease>> = BTreeMap::new();
        for c in changes.into_iter().flatten() {
            if c.by.as_deref() == Some(rack) {
                continue;
            }
            let Some(l) = st.data.leases.get(&c.ip) else {
                continue;
            };
            if served.contains_key(&l.subnet) && !full.contains(&l.subnet) {
                deltas.entry(l.subnet).or_default().insert(l.ip, l.clone());
            }
        }
        let mut out = Vec::new();
        for cidr in &full {
            chunks(*cidr, true, st.leases_in(cidr).cloned().collect(), &mut out);
        }
        for (cidr, leases) in deltas {
            chunks(cidr, false, leases.into_values().collect(), &mut out);
        }
        self.cursor = Some(st.data.revision.max(st.boot.newest()));
        self.fed = served;
        out
    }

    /// The machines to enlist for `asks` from `rack`, with system ids picked: at most
    /// [`ENLIST_PER_MESSAGE`] read, MACs already known, asked by this session within [`ENLIST_AGAIN`] or on
    /// a subnet the rack does not serve (or serves in mode off) dropped, then at most
    /// [`ENLIST_PER_SECOND`] a second taken (the rest dropped, logged at debug: the rack asks again).
    /// Apply checks it all again.
    pub fn enlist(
        &mut self,
        st: &State,
        rack: &str,
        asks: Vec<EnlistRequest>,
        now: Instant,
    ) -> Vec<op::EnlistMac> {
        self.asked
            .retain(|_, at| now.saturating_duration_since(*at) < ENLIST_AGAIN);
        let mut picked: HashSet<String> = HashSet::new();
        let mut out = Vec::new();
        let mut dropped = 0usize;
        for a in asks.into_iter().take(ENLIST_PER_MESSAGE) {
            if st.by_mac.contains_key(&a.mac) || self.asked.contains_key(&a.mac) {
                continue;
            }
            let served = st
                .data
                .subnets
                .get(&a.subnet.to_string())
                .is_some_and(|s| crate::state::serves(s, rack) && s.mode != SubnetMode::Off);
            if !served {
                tracing::debug!(%rack, mac = %a.mac, subnet = %a.subnet, "enlistment on a subnet the rack does not serve ignored");
                continue;
            }
            if out.len() >= op::MAX_ENLIST_PER_OP || !self.enlist_limit.take(now) {
                dropped += 1;
                continue;
            }
            let Some(system_id) = (0..8).map(|_| secret::system_id()).find(|id| {
                !st.data.machines.contains_key(id)
                    && !st.by_hostname.contains_key(&format!("node-{id}"))
                    && !picked.contains(id)
            }) else {
                continue;
            };
            self.asked.insert(a.mac, now);
            picked.insert(system_id.clone());
            out.push(op::EnlistMac {
                system_id,
                mac: a.mac,
                arch: a.arch,
                subnet: a.subnet,
            });
        }
        if dropped > 0 {
            tracing::debug!(%rack, dropped, "enlistment requests over the rate limit dropped; the rack asks again");
        }
        out
    }
}

/// A token bucket: `rate` a second, bursts of `rate` — the limits a rack session puts on what it asks
/// of the region (enlistments, boot intents, boot event messages).
#[derive(Debug, Clone)]
pub struct RateLimit {
    /// Tokens added per second, and the most held.
    rate: f64,
    /// Tokens held now.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    refilled: std::time::Instant,
}

impl RateLimit {
    /// A full bucket of `rate` a second.
    pub fn new(rate: u32, now: std::time::Instant) -> RateLimit {
        RateLimit {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            refilled: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: std::time::Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ingot_common::model::{Rack, RackSession};
    use ingot_common::net::{Ipv4Range, LeaseState};
    use std::sync::Arc;

    const GRACE: u64 = 10_000;
    const NET: &str = "10.20.0.0/24";

    fn cidr(s: &str) -> Cidr {
        s.parse().expect("cidr")
    }

    fn subnet(net: &str, primary: Option<&str>, secondary: Option<&str>) -> Subnet {
        Subnet {
            cidr: cidr(net),
            gateway: None,
            dns: vec![],
            domain: String::new(),
            dynamic: vec![Ipv4Range {
                start: (cidr(net).network.to_bits() + 100).into(),
                end: (cidr(net).network.to_bits() + 199).into(),
            }],
            reserved: vec![],
            vlan: 0,
            mode: SubnetMode::Managed,
            primary: primary.map(str::to_string),
            secondary: secondary.map(str::to_string),
            lease_time_s: 3600,
            pxe_lease_time_s: 30,
        }
    }

    /// Rack `name` with a session whose last heartbeat was recorded at `hb` (ended at `ended`).
    fn rack(st: &mut State, name: &str, hb: Option<u64>, ended: Option<u64>) {
        st.data.racks.insert(
            name.into(),
            Rack {
                name: name.into(),
                zone: "default".into(),
                registered_ms: 1,
                revoked: false,
                session: hb.map(|hb| RackSession {
                    session_id: format!("s-{name}-{hb}"),
                    region_id: 1,
                    region_name: "r1".into(),
                    version: "1".into(),
                    services: vec!["power".into(), DHCP_SERVICE.into()],
                    drivers: vec![],
                    connected_ms: hb,
                    last_heartbeat_ms: hb,
                    ended_ms: ended,
                }),
            },
        );
    }

    fn tick(now_ms: u64, now: Instant) -> Tick {
        Tick {
            now_ms,
            grace_ms: GRACE,
            now,
        }
    }

    fn flags(st: &State, rack: &str, now: u64) -> Vec<(String, SubnetRole, bool)> {
        served_subnets(st, rack, now, GRACE)
            .into_iter()
            .map(|s| (s.subnet.cidr.to_string(), s.role, s.active))
            .collect()
    }

    #[test]
    fn the_primary_serves_while_live_and_the_secondary_while_it_is_not() {
        let mut st = State::default();
        st.data
            .subnets
            .insert(NET.into(), subnet(NET, Some("p"), Some("s")));
        let solo = "10.30.0.0/24";
        st.data
            .subnets
            .insert(solo.into(), subnet(solo, None, Some("s")));
        let other = "10.40.0.0/24";
        st.data
            .subnets
            .insert(other.into(), subnet(other, Some("x"), None));
        rack(&mut st, "p", Some(1_000), None);
        rack(&mut st, "s", Some(1_000), None);
        let p = |st: &State, now| flags(st, "p", now);
        let s = |st: &State, now| flags(st, "s", now);
        // Primary live: it answers, the secondary stands by; a subnet without a primary is the secondary's.
        assert_eq!(p(&st, 2_000), vec![(NET.into(), SubnetRole::Primary, true)]);
        assert_eq!(
            s(&st, 2_000),
            vec![
                (NET.into(), SubnetRole::Secondary, false),
                (solo.into(), SubnetRole::Secondary, true)
            ]
        );
        // The primary's heartbeats stop at 1 s: live until grace + one record interval after its last.
        let dead = 1_000 + GRACE + crate::state::HEARTBEAT_RECORD_MS;
        assert!(p(&st, dead - 1)[0].2 && !s(&st, dead - 1)[0].2);
        assert!(!p(&st, dead)[0].2 && s(&st, dead)[0].2, "taken over");
        // A session that ended is dead a grace after it was last heard.
        rack(&mut st, "p", Some(1_000), Some(1_000));
        assert!(s(&st, 1_000 + GRACE)[0].2);
        // The primary comes back (a new session recorded): it answers again, the secondary stops.
        rack(&mut st, "p", Some(50_000), None);
        assert!(p(&st, 50_100)[0].2 && !s(&st, 50_100)[0].2);
        // A revoked primary is not live.
        st.data.racks.get_mut("p").expect("p").revoked = true;
        assert!(s(&st, 50_100)[0].2);
        // A live primary that announced no DHCP (run without --boot-interface) leaves the subnet to the
        // secondary.
        if let Some(sess) = st.data.racks.get_mut("p").and_then(|r| r.session.as_mut()) {
            sess.services.retain(|x| x != DHCP_SERVICE);
        }
        assert!(
            !p(&st, 50_100)[0].2 && s(&st, 50_100)[0].2,
            "a primary without dhcp"
        );
        rack(&mut st, "p", Some(50_000), None);
        // Mode off: nobody answers.
        st.data.subnets.get_mut(NET).expect("net").mode = SubnetMode::Off;
        st.data.racks.get_mut("p").expect("p").revoked = false;
        assert!(!p(&st, 50_100)[0].2 && !s(&st, 50_100)[0].2);
        // A rack that serves nothing is told so.
        assert!(flags(&st, "nobody", 50_100).is_empty());
    }

    #[test]
    fn the_config_is_sent_when_it_changes_and_not_otherwise() {
        let mut st = State::default();
        st.data
            .subnets
            .insert(NET.into(), subnet(NET, Some("p"), Some("s")));
        rack(&mut st, "p", Some(1_000), None);
        let t0 = Instant::now();
        let mut feed = BootFeed::new(t0);
        let first = feed
            .config_changed(&st, "s", tick(2_000, t0))
            .expect("first");
        assert!(!first.subnets[0].active && first.known.is_empty());
        assert!(
            feed.config_changed(&st, "s", tick(2_500, t0)).is_none(),
            "unchanged"
        );
        // The primary dies: sent at once.
        let c = feed
            .config_changed(&st, "s", tick(20_000, t0))
            .expect("take over");
        assert!(c.subnets[0].active);
        // A machine appears: sent, but not more often than KNOWN_MIN_INTERVAL for MAC changes alone.
        let mut m =
            crate::app::zones::tests::machine("m1", "default", ingot_common::MachineStatus::New);
        m.macs = vec![Mac([0x52, 0x54, 0, 0, 0, 1])];
        st.put_machine(m);
        assert!(feed.config_changed(&st, "s", tick(20_000, t0)).is_none());
        let c = feed
            .config_changed(&st, "s", tick(20_000, t0 + KNOWN_MIN_INTERVAL))
            .expect("known MACs");
        assert_eq!(
            c.known,
            vec![(Mac([0x52, 0x54, 0, 0, 0, 1]), "m1".to_string())]
        );
        // A machine change that leaves its MACs alone does not resend the list.
        let mut m = st.machine("m1").expect("m1").clone();
        m.description = "x".into();
        st.put_machine(m);
        assert!(feed
            .config_changed(&st, "s", tick(20_000, t0 + KNOWN_MIN_INTERVAL * 5))
            .is_none());
        // A subnet change is sent at once.
        st.data.subnets.get_mut(NET).expect("net").domain = "lab.example".into();
        assert!(feed.config_changed(&st, "s", tick(20_000, t0)).is_some());
        // A rack that serves no subnet is told so once, without the fleet's MACs, and not again when
        // machines change.
        let mut power_only = BootFeed::new(t0);
        let c = power_only
            .config_changed(&st, "x", tick(20_000, t0))
            .expect("first");
        assert!(c.subnets.is_empty() && c.known.is_empty());
        st.remove_machine("m1");
        assert!(power_only
            .config_changed(&st, "x", tick(20_000, t0 + KNOWN_MIN_INTERVAL * 9))
            .is_none());
    }

    fn lease(last: u8, mac: u8, rack: &str) -> Lease {
        Lease {
            ip: Ipv4Addr::new(10, 20, 0, last),
            subnet: cidr(NET),
            mac: Mac([0x52, 0x54, 0, 0, 0, mac]),
            state: LeaseState::Bound,
            start_ms: 1,
            expires_ms: 2,
            hostname: String::new(),
            rack: rack.into(),
        }
    }

    #[test]
    fn leases_are_sent_in_full_then_as_changes_made_by_others() {
        let mut st = State::default();
        st.data
            .subnets
            .insert(NET.into(), subnet(NET, Some("p"), Some("s")));
        rack(&mut st, "p", Some(1_000), None);
        let p: Arc<str> = Arc::from("p");
        let s: Arc<str> = Arc::from("s");
        st.put_lease(lease(100, 1, "p"), 10, Some(p.clone()));
        st.data.revision = 10;
        let t0 = Instant::now();
        let mut feed = BootFeed::new(t0);
        assert!(feed.leases_due(&st, "s").is_empty(), "no config sent yet");
        feed.config_changed(&st, "s", tick(2_000, t0))
            .expect("config");
        // Session start: all of them (the standby secondary too, so it is warm when it takes over).
        let full = feed.leases_due(&st, "s");
        assert_eq!(full.len(), 1);
        assert!(full[0].full && full[0].leases == vec![lease(100, 1, "p")]);
        assert!(feed.leases_due(&st, "s").is_empty(), "nothing new");
        // The primary commits: the secondary gets the change; its own commits are not echoed.
        st.put_lease(lease(101, 2, "p"), 11, Some(p.clone()));
        st.put_lease(lease(102, 3, "s"), 12, Some(s.clone()));
        st.put_lease(lease(101, 2, "p"), 12, None);
        st.data.revision = 12;
        let d = feed.leases_due(&st, "s");
        assert_eq!(d.len(), 1);
        assert!(!d[0].full);
        assert_eq!(d[0].leases, vec![lease(101, 2, "p")], "once, its latest");
        // The secondary becomes active: everything again.
        feed.config_changed(&st, "s", tick(20_000, t0))
            .expect("take over");
        let full = feed.leases_due(&st, "s");
        assert!(full.len() == 1 && full[0].full && full[0].leases.len() == 3);
        // A gap in the change log (the state reloaded from a snapshot, or too far behind): everything.
        st.put_lease(lease(103, 4, "p"), 13, Some(p));
        st.data.revision = 13;
        st.boot = crate::state::BootIndex::from_data(&st.data);
        let full = feed.leases_due(&st, "s");
        assert!(full.len() == 1 && full[0].full && full[0].leases.len() == 4);
    }

    /// Through the apply step: what the primary commits reaches the secondary's session as a change, and
    /// the primary's own session sends back only what it did not write itself (the release its move caused).
    #[test]
    fn committed_leases_reach_the_other_racks_session() {
        use crate::apply::apply;
        use crate::apply::test_support::{init, internal};
        use crate::command::{Internal, Op};
        let mut st = State::default();
        apply(&mut st, &init(), 1).expect("bootstrap");
        st.data
            .subnets
            .insert(NET.into(), subnet(NET, Some("p"), Some("s")));
        rack(&mut st, "p", Some(1_000), None);
        rack(&mut st, "s", Some(1_000), None);
        let t0 = Instant::now();
        let (mut fp, mut fs) = (BootFeed::new(t0), BootFeed::new(t0));
        for (f, r) in [(&mut fp, "p"), (&mut fs, "s")] {
            f.config_changed(&st, r, tick(2_000, t0)).expect("config");
            assert!(f.leases_due(&st, r)[0].full);
        }
        let commit = |st: &mut State, rev: u64, leases: Vec<Lease>| {
            let op = Op::CommitLeases(op::CommitLeases {
                rack: "p".into(),
                batch: rev,
                leases,
            });
            apply(st, &internal(5, Internal::Rack, "rack:p", op), rev).expect("commit");
            st.data.revision = rev;
        };
        commit(&mut st, 10, vec![lease(100, 1, "p")]);
        let d = fs.leases_due(&st, "s");
        assert_eq!((d.len(), d[0].full, d[0].leases.len()), (1, false, 1));
        assert!(
            fp.leases_due(&st, "p").is_empty(),
            "its own commit is not echoed"
        );
        // The MAC moves: the primary wrote .101 itself, but the release of .100 is derived: sent to both.
        commit(
            &mut st,
            11,
            vec![Lease {
                start_ms: 5,
                expires_ms: 10,
                ..lease(101, 1, "p")
            }],
        );
        let ips = |u: Vec<LeasesUpdate>| -> Vec<(u8, LeaseState)> {
            u.into_iter()
                .flat_map(|m| m.leases)
                .map(|l| (l.ip.octets()[3], l.state))
                .collect()
        };
        assert_eq!(
            ips(fp.leases_due(&st, "p")),
            vec![(100, LeaseState::Released)]
        );
        assert_eq!(
            ips(fs.leases_due(&st, "s")),
            vec![(100, LeaseState::Released), (101, LeaseState::Bound)]
        );
    }

    #[test]
    fn a_large_subnet_is_sent_in_messages_of_at_most_4096() {
        let mut st = State::default();
        let net = "10.0.0.0/16";
        st.data
            .subnets
            .insert(net.into(), subnet(net, Some("p"), None));
        for i in 0..(LEASES_PER_MESSAGE as u32 * 2 + 5) {
            let ip = Ipv4Addr::from(cidr(net).network.to_bits() + 1 + i);
            let l = Lease {
                ip,
                subnet: cidr(net),
                mac: Mac([0x52, 0, 0, 0, (i >> 8) as u8, i as u8]),
                ..lease(1, 1, "p")
            };
            st.put_lease(l, 5, None);
        }
        let mut feed = BootFeed::new(Instant::now());
        feed.config_changed(&st, "p", tick(2_000, Instant::now()));
        let msgs = feed.leases_due(&st, "p");
        let sizes: Vec<(bool, usize)> = msgs.iter().map(|m| (m.full, m.leases.len())).collect();
        assert_eq!(
            sizes,
            vec![
                (true, LEASES_PER_MESSAGE),
                (false, LEASES_PER_MESSAGE),
                (false, 5)
            ]
        );
    }

    #[test]
    fn enlistment_skips_known_and_repeated_macs_and_is_rate_limited() {
        let mut st = State::default();
        st.data
            .subnets
            .insert(NET.into(), subnet(NET, Some("p"), None));
        let mut m =
            crate::app::zones::tests::machine("m1", "default", ingot_common::MachineStatus::New);
        m.macs = vec![Mac([0x52, 0x54, 0, 0, 0, 1])];
        st.put_machine(m);
        let ask = |n: u32, net: &str| EnlistRequest {
            mac: Mac([0x52, 0x54, 0, 0, (n >> 8) as u8, n as u8]),
            arch: ClientArch::UefiX64,
            subnet: cidr(net),
        };
        let t0 = Instant::now();
        let mut feed = BootFeed::new(t0);
        let got = feed.enlist(
            &st,
            "p",
            vec![ask(1, NET), ask(2, NET), ask(2, NET), ask(3, "10.9.0.0/24")],
            t0,
        );
        let macs: Vec<String> = got.iter().map(|e| e.mac.to_string()).collect();
        assert_eq!(
            macs,
            vec!["52:54:00:00:00:02"],
            "known, repeated and unserved dropped"
        );
        assert_eq!(got[0].system_id.len(), 6);
        // Asked again within a minute: not proposed again.
        assert!(feed.enlist(&st, "p", vec![ask(2, NET)], t0).is_empty());
        assert_eq!(
            feed.enlist(&st, "p", vec![ask(2, NET)], t0 + ENLIST_AGAIN)
                .len(),
            1
        );
        // A storm: at most the rate (the burst allowance, then ENLIST_PER_SECOND a second).
        let storm: Vec<EnlistRequest> = (10..2_000).map(|n| ask(n, NET)).collect();
        let t1 = t0 + ENLIST_AGAIN + Duration::from_secs(5);
        let got = feed.enlist(&st, "p", storm.clone(), t1);
        assert_eq!(got.len(), ENLIST_PER_SECOND as usize);
        let ids: HashSet<&String> = got.iter().map(|e| &e.system_id).collect();
        assert_eq!(ids.len(), got.len(), "distinct system ids");
        assert!(feed.enlist(&st, "p", storm.clone(), t1).is_empty());
        let got = feed.enlist(&st, "p", storm, t1 + Duration::from_millis(200));
        assert_eq!(got.len(), ENLIST_PER_SECOND as usize / 5);
    }
}
