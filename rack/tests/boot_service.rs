//! The boot service's glue, without sockets: a fake engine (real DHCP packets through dhcproto, simple
//! decisions) behind `DhcpEngine`, a fake reply sink, and a fake session (the channel the session would
//! send on). Batching, held ACKs and NAKs, re-sends after a lost session or a silent region, the offline
//! journal with a crash and a replay, enlistment messages.

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode};
use dhcproto::{Decodable, Encodable};
use ingot_common::net::{Cidr, ClientArch, Lease, LeaseState};
use ingot_common::Mac;
use ingot_proto::rack::v1 as proto;
use ingot_proto::rack::v1::rack_message::Msg as RackMsg;
use ingot_proto::rack::v1::region_message::Msg as RegionMsg;
use ingot_proto::rack::v1::RackMessage;
use ingot_rack::boot::dhcp::engine::{EnlistRequest, Outcome, Outgoing, Via};
use ingot_rack::boot::dhcp::server::{PacketHandler, ReplySink};
use ingot_rack::boot::journal::{Journal, MAX_ENTRIES};
use ingot_rack::boot::service::{BootService, DhcpEngine, ServiceSettings};
use ingot_rack::boot::BootConfig;
use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// The fake engine's subnet.
pub fn subnet() -> Cidr {
    "10.99.0.0/24".parse().unwrap()
}

/// The address the fake engine gives MAC `02:00:00:00:HI:LO`: 10.99.0.(100 + LO % 100) for small tests,
/// or a unique one per MAC for the big ones.
fn address_of(mac: &[u8]) -> Ipv4Addr {
    let n = u16::from_be_bytes([mac[4], mac[5]]);
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 99, 0, 0)) + 2 + u32::from(n % 250))
}

/// What the fake engine was told.
#[derive(Default)]
pub struct FakeLog {
    pub committed: Vec<Lease>,
    pub refused: Vec<(Ipv4Addr, Mac)>,
    pub online: Vec<bool>,
    pub configs: Vec<BootConfig>,
    pub lease_sets: Vec<(Cidr, bool, usize)>,
}

/// A tiny DHCP engine: DISCOVER → OFFER; REQUEST → commit + ACK (NAK on refusal); RELEASE → commit;
/// offline, only renewals (ciaddr set) are answered. A DISCOVER with option 60 `PXEClient` asks for
/// enlistment. Replies are broadcast to port 68.
pub struct FakeEngine {
    pub log: Arc<Mutex<FakeLog>>,
    online: bool,
}

impl FakeEngine {
    pub fn new() -> (FakeEngine, Arc<Mutex<FakeLog>>) {
        let log = Arc::new(Mutex::new(FakeLog::default()));
        (
            FakeEngine {
                log: log.clone(),
                online: false,
            },
            log,
        )
    }
}

fn reply(req: &Message, kind: MessageType, yiaddr: Ipv4Addr, server: Ipv4Addr) -> Outgoing {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootReply)
        .set_xid(req.xid())
        .set_flags(req.flags())
        .set_chaddr(req.chaddr())
        .set_yiaddr(yiaddr);
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m.opts_mut().insert(DhcpOption::ServerIdentifier(server));
    Outgoing {
        bytes: m.to_vec().unwrap(),
        to: SocketAddrV4::new(Ipv4Addr::BROADCAST, 68),
    }
}

/// An outcome with nothing in it but `why`. Built by field assignment on what the rack's engine returns
/// for an empty datagram, so this test does not depend on every field `Outcome` has.
fn nothing(why: Option<&'static str>) -> Outcome {
    let mut o =
        ingot_rack::boot::dhcp::engine::Engine::new(Default::default()).handle(&[], &via(), 0);
    o.reply = None;
    o.commit = None;
    o.on_refused = None;
    o.enlist = None;
    o.dropped = why;
    o
}

impl DhcpEngine for FakeEngine {
    fn set_config(&mut self, config: BootConfig) {
        self.log.lock().unwrap().configs.push(config);
    }
    fn set_leases(&mut self, subnet: Cidr, full: bool, leases: Vec<Lease>) {
        self.log
            .lock()
            .unwrap()
            .lease_sets
            .push((subnet, full, leases.len()));
    }
    fn set_online(&mut self, online: bool) {
        self.online = online;
        self.log.lock().unwrap().online.push(online);
    }
    fn handle(&mut self, packet: &[u8], via: &Via, now_ms: u64) -> Outcome {
        let Ok(req) = Message::from_bytes(packet) else {
            return nothing(Some("malformed"));
        };
        let mac_bytes = req.chaddr().get(..6).unwrap_or(&[0; 6]).to_vec();
        let mut m = [0u8; 6];
        m.copy_from_slice(&mac_bytes);
        let mac = Mac(m);
        let ip = address_of(&mac_bytes);
        let lease = |state| Lease {
            ip,
            subnet: subnet(),
            mac,
            state,
            start_ms: now_ms,
            expires_ms: now_ms + 30_000,
            hostname: String::new(),
            rack: String::new(),
        };
        match req.opts().msg_type() {
            Some(MessageType::Discover) => {
                if !self.online {
                    return nothing(Some("offline-new-client"));
                }
                let pxe = matches!(req.opts().get(dhcproto::v4::OptionCode::ClassIdentifier),
                    Some(DhcpOption::ClassIdentifier(c)) if c.starts_with(b"PXEClient"));
                let mut o = nothing(None);
                o.reply = Some(reply(&req, MessageType::Offer, ip, via.local_ip));
                o.enlist = pxe.then(|| EnlistRequest {
                    mac,
                    arch: ClientArch::Bios,
                    subnet: subnet(),
                });
                o
            }
            Some(MessageType::Request) => {
                let renewal = !req.ciaddr().is_unspecified();
                if !self.online && !renewal {
                    return nothing(Some("offline-new-client"));
                }
                let mut o = nothing(None);
                o.reply = Some(reply(&req, MessageType::Ack, ip, via.local_ip));
                o.commit = Some(lease(LeaseState::Bound));
                o.on_refused = Some(reply(
                    &req,
                    MessageType::Nak,
                    Ipv4Addr::UNSPECIFIED,
                    via.local_ip,
                ));
                o
            }
            Some(MessageType::Release) => {
                let mut o = nothing(None);
                o.commit = Some(lease(LeaseState::Released));
                o
            }
            _ => nothing(Some("unexpected-type")),
        }
    }
    fn committed(&mut self, lease: &Lease) {
        self.log.lock().unwrap().committed.push(lease.clone());
    }
    fn refused(&mut self, ip: Ipv4Addr, mac: Mac) {
        self.log.lock().unwrap().refused.push((ip, mac));
    }
    fn expire(&mut self, _now_ms: u64) {}
    fn lease_count(&self) -> usize {
        self.log.lock().unwrap().committed.len()
    }
}

/// A DHCP client packet of `kind` from MAC 02:00:00:00:HI:LO (`n` = HI:LO); `renewal` sets ciaddr.
pub fn packet(kind: MessageType, n: u16, renewal: bool, pxe: bool) -> Vec<u8> {
    let [hi, lo] = n.to_be_bytes();
    let chaddr = [2, 0, 0, 0, hi, lo];
    let ciaddr = if renewal {
        address_of(&chaddr)
    } else {
        Ipv4Addr::UNSPECIFIED
    };
    let mut m = Message::new_with_id(
        0x1000 + u32::from(n),
        ciaddr,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &chaddr,
    );
    m.set_flags(Flags::default().set_broadcast());
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    if pxe {
        m.opts_mut().insert(DhcpOption::ClassIdentifier(
            b"PXEClient:Arch:00000".to_vec(),
        ));
    }
    m.to_vec().unwrap()
}

/// Collects replies.
#[derive(Default)]
pub struct FakeSink {
    pub sent: Mutex<Vec<Outgoing>>,
}

impl ReplySink for FakeSink {
    fn send(&self, out: &Outgoing) -> Result<(), String> {
        self.sent.lock().unwrap().push(out.clone());
        Ok(())
    }
}

impl FakeSink {
    /// The message types sent so far, in order.
    pub fn kinds(&self) -> Vec<MessageType> {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .map(|o| {
                Message::from_bytes(&o.bytes)
                    .unwrap()
                    .opts()
                    .msg_type()
                    .unwrap()
            })
            .collect()
    }
    pub fn count(&self, kind: MessageType) -> usize {
        self.kinds().into_iter().filter(|k| *k == kind).count()
    }
}

pub fn via() -> Via {
    Via {
        local_ip: Ipv4Addr::new(10, 99, 0, 1),
        port: ingot_rack::boot::dhcp::engine::ServerPort::Dhcp,
        source: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
    }
}

/// A started service with a fake engine and a journal in `dir`.
pub struct Rig {
    pub svc: Arc<BootService>,
    pub log: Arc<Mutex<FakeLog>>,
    pub sink: Arc<FakeSink>,
    pub stop: watch::Sender<bool>,
}

impl Rig {
    pub fn start(dir: &Path, settings: ServiceSettings) -> Rig {
        let (engine, log) = FakeEngine::new();
        let journal = Journal::open(&dir.join("leases.journal"), MAX_ENTRIES).unwrap();
        let (stop, rx) = watch::channel(false);
        let svc = BootService::start(settings, Box::new(engine), journal, rx);
        Rig {
            svc,
            log,
            sink: Arc::new(FakeSink::default()),
            stop,
        }
    }
    pub fn send(&self, p: &[u8]) {
        let sink: Arc<dyn ReplySink> = self.sink.clone();
        self.svc.handle(p, &via(), &sink);
    }
}

/// Waits up to 10 s for `cond`.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(10), "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The next LeaseCommit on the fake session within `wait` (other messages are skipped).
pub async fn next_commit(
    rx: &mut mpsc::Receiver<RackMessage>,
    wait: Duration,
) -> Option<proto::LeaseCommit> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(RackMessage {
                msg: Some(RackMsg::LeaseCommit(c)),
            })) => return Some(c),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}

/// The region's answer to `batch`, refusing `refused`.
pub fn committed(batch: u64, refused: &[Ipv4Addr]) -> RegionMsg {
    RegionMsg::LeasesCommitted(proto::LeasesCommitted {
        batch,
        refused: refused
            .iter()
            .map(|ip| proto::RefusedLease {
                ip: ip.to_string(),
                reason: "held by another MAC".into(),
            })
            .collect(),
        error: String::new(),
    })
}

/// A fake region: answers every LeaseCommit on `rx` (refusing `refuse`), counts batches and leases.
pub fn answer_all(
    svc: Arc<BootService>,
    mut rx: mpsc::Receiver<RackMessage>,
    refuse: HashSet<Ipv4Addr>,
) -> Arc<Mutex<Vec<usize>>> {
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let s = sizes.clone();
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if let Some(RackMsg::LeaseCommit(c)) = m.msg {
                s.lock().unwrap().push(c.leases.len());
                let refused: Vec<Ipv4Addr> = c
                    .leases
                    .iter()
                    .filter_map(|l| l.ip.parse().ok())
                    .filter(|ip| refuse.contains(ip))
                    .collect();
                svc.on_region_message(committed(c.batch, &refused));
            }
        }
    });
    sizes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_commits_make_few_batches_and_acks_wait_for_them() {
    let d = tempfile::tempdir().unwrap();
    let rig = Rig::start(d.path(), ServiceSettings::default());
    let (tx, rx) = mpsc::channel(1024);
    let _session = rig.svc.session_opened(tx);
    let refused_ip = address_of(&[2, 0, 0, 0, 0, 7]);
    let sizes = answer_all(rig.svc.clone(), rx, HashSet::from([refused_ip]));
    // 1,000 clients with distinct MACs whose addresses repeat every 250: MACs 0..1000.
    for n in 0..1000u16 {
        rig.send(&packet(MessageType::Request, n, false, false));
    }
    eventually("every request answered", || {
        rig.sink.sent.lock().unwrap().len() == 1000
    })
    .await;
    let sizes = sizes.lock().unwrap().clone();
    let leases: usize = sizes.iter().sum();
    assert_eq!(leases, 1000, "every lease committed once: {sizes:?}");
    assert!(
        sizes.len() <= 50 && sizes.iter().all(|n| *n <= 256),
        "1,000 commits should take few batches of at most 256: {} batches {sizes:?}",
        sizes.len()
    );
    // MACs 7, 257, 507, 757 share the refused address: they get NAKs, the rest ACKs.
    assert_eq!(rig.sink.count(MessageType::Nak), 4);
    assert_eq!(rig.sink.count(MessageType::Ack), 996);
    let log = rig.log.lock().unwrap();
    assert_eq!(log.committed.len(), 996);
    assert_eq!(log.refused.len(), 4);
    let c = rig.svc.counters();
    assert_eq!(
        (c.packets, c.commits, c.replies, c.refusals),
        (1000, 1000, 1000, 4)
    );
    assert_eq!(c.batches, sizes.len() as u64);
    let _ = rig.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_lost_with_the_session_or_unanswered_are_sent_again() {
    let d = tempfile::tempdir().unwrap();
    let settings = ServiceSettings {
        resend_after: Duration::from_millis(300),
        rack: "r1".into(),
        ..ServiceSettings::default()
    };
    let rig = Rig::start(d.path(), settings);
    let (tx, mut rx) = mpsc::channel(1024);
    let session = rig.svc.session_opened(tx);
    for n in 0..10u16 {
        rig.send(&packet(MessageType::Request, n, false, false));
    }
    let first = next_commit(&mut rx, Duration::from_secs(5)).await.unwrap();
    assert_eq!(first.leases.len(), 10);
    assert!(first.leases.iter().all(|l| l.rack == "r1"), "{first:?}");
    // Unanswered on this session: sent again after resend_after, same batch and leases.
    let again = next_commit(&mut rx, Duration::from_secs(5)).await.unwrap();
    assert_eq!((again.batch, again.leases.len()), (first.batch, 10));
    assert!(
        rig.sink.sent.lock().unwrap().is_empty(),
        "no ACK before the commit"
    );
    // The session breaks before the region answers: the batch goes out on the next session.
    drop(session);
    drop(rx);
    let (tx2, mut rx2) = mpsc::channel(1024);
    let _session2 = rig.svc.session_opened(tx2);
    let resent = next_commit(&mut rx2, Duration::from_secs(5)).await.unwrap();
    assert_eq!(resent.batch, first.batch);
    assert_eq!(resent.leases, first.leases);
    rig.svc.on_region_message(committed(resent.batch, &[]));
    eventually("ACKs after the commit on the second session", || {
        rig.sink.count(MessageType::Ack) == 10
    })
    .await;
    // A late second answer to the same batch changes nothing.
    rig.svc.on_region_message(committed(resent.batch, &[]));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(rig.sink.sent.lock().unwrap().len(), 10);
    assert_eq!(rig.log.lock().unwrap().committed.len(), 10);
    let c = rig.svc.counters();
    assert!(c.batches_resent >= 2, "{c:?}");
    // The engine was told about the sessions: offline at start, online, offline, online.
    assert_eq!(
        rig.log.lock().unwrap().online,
        vec![false, true, false, true]
    );
    let _ = rig.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_held_too_long_is_dropped_but_its_lease_committed_and_a_failed_batch_retried() {
    let d = tempfile::tempdir().unwrap();
    let settings = ServiceSettings {
        hold_reply: Duration::from_millis(100),
        retry_failed_after: Duration::from_millis(50),
        ..ServiceSettings::default()
    };
    let rig = Rig::start(d.path(), settings);
    let (tx, mut rx) = mpsc::channel(1024);
    let _session = rig.svc.session_opened(tx);
    rig.send(&packet(MessageType::Request, 1, false, false));
    let b = next_commit(&mut rx, Duration::from_secs(5)).await.unwrap();
    // No quorum: the whole batch failed; it comes back after the pause.
    rig.svc
        .on_region_message(RegionMsg::LeasesCommitted(proto::LeasesCommitted {
            batch: b.batch,
            refused: vec![],
            error: "no quorum".into(),
        }));
    let b2 = next_commit(&mut rx, Duration::from_secs(5)).await.unwrap();
    assert_eq!(b2.batch, b.batch);
    tokio::time::sleep(Duration::from_millis(150)).await;
    rig.svc.on_region_message(committed(b2.batch, &[]));
    eventually("the lease committed", || {
        rig.log.lock().unwrap().committed.len() == 1
    })
    .await;
    assert!(
        rig.sink.sent.lock().unwrap().is_empty(),
        "the client gave up: no late ACK"
    );
    assert_eq!(rig.svc.counters().held_expired, 1);
    // Without commits, a DISCOVER is answered at once.
    rig.send(&packet(MessageType::Discover, 2, false, false));
    assert_eq!(rig.sink.kinds(), vec![MessageType::Offer]);
    let _ = rig.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_renewals_are_journaled_answered_at_once_and_replayed_after_a_crash() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("leases.journal");
    {
        // No session yet: offline. Renewals are answered from the journal, new clients not at all.
        let rig = Rig::start(d.path(), ServiceSettings::default());
        for n in 1..=5u16 {
            rig.send(&packet(MessageType::Request, n, true, false));
        }
        rig.send(&packet(MessageType::Request, 9, false, false));
        eventually("five offline ACKs", || {
            rig.sink.count(MessageType::Ack) == 5
        })
        .await;
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert_eq!(lines, 5, "journaled before the ACKs went out");
        let c = rig.svc.counters();
        assert_eq!(c.journaled, 5);
        assert_eq!(c.drops.get("offline-new-client"), Some(&1));
        // Crash: the service stops without a session, nothing compacted.
        let _ = rig.stop.send(true);
    }
    // Restart: the journal is read back, its leases known to the engine, replayed on the session.
    let rig = Rig::start(d.path(), ServiceSettings::default());
    assert_eq!(rig.log.lock().unwrap().committed.len(), 5);
    let (tx, mut rx) = mpsc::channel(1024);
    let _session = rig.svc.session_opened(tx);
    let b = next_commit(&mut rx, Duration::from_secs(5)).await.unwrap();
    assert_eq!(b.leases.len(), 5);
    // The region refuses one (another rack gave the address away meanwhile).
    let lost: Ipv4Addr = b.leases[2].ip.parse().unwrap();
    rig.svc.on_region_message(committed(b.batch, &[lost]));
    eventually("the journal truncated once replayed", || {
        std::fs::metadata(&path).map(|m| m.len()).unwrap_or(1) == 0
    })
    .await;
    let log = rig.log.lock().unwrap();
    assert_eq!(log.refused, vec![(lost, Mac([2, 0, 0, 0, 0, 3]))]);
    assert_eq!(log.committed.len(), 5 + 4);
    drop(log);
    assert_eq!(rig.svc.counters().replayed, 5);
    // Replies of the replay were sent before the crash, none now.
    assert!(rig.sink.sent.lock().unwrap().is_empty());
    let (_, again) = Journal::open(&path, MAX_ENTRIES).unwrap();
    assert!(again.is_empty());
    let _ = rig.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enlistments_go_out_in_messages_of_at_most_64_once_per_mac() {
    let d = tempfile::tempdir().unwrap();
    let rig = Rig::start(d.path(), ServiceSettings::default());
    let (tx, mut rx) = mpsc::channel(1024);
    let _session = rig.svc.session_opened(tx);
    for n in 0..100u16 {
        rig.send(&packet(MessageType::Discover, n, false, true));
    }
    let mut macs = Vec::new();
    let mut messages = 0;
    while macs.len() < 100 {
        let m = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("enlist messages")
            .unwrap();
        if let Some(RackMsg::Enlist(e)) = m.msg {
            assert!(e.macs.len() <= 64, "{}", e.macs.len());
            assert!(e
                .macs
                .iter()
                .all(|m| m.arch == "bios" && m.subnet == "10.99.0.0/24"));
            messages += 1;
            macs.extend(e.macs.into_iter().map(|m| m.mac));
        }
    }
    assert!(messages >= 2);
    let unique: HashSet<_> = macs.iter().collect();
    assert_eq!(unique.len(), 100);
    assert_eq!(rig.svc.counters().enlisted, 100);
    assert_eq!(rig.sink.count(MessageType::Offer), 100);
    let _ = rig.stop.send(true);
}

#[tokio::test]
async fn region_boot_messages_reach_the_engine_and_bad_parts_are_skipped() {
    let d = tempfile::tempdir().unwrap();
    let rig = Rig::start(d.path(), ServiceSettings::default());
    rig.svc
        .on_region_message(RegionMsg::BootConfig(proto::BootConfig {
            subnets: vec![
                proto::SubnetConfig {
                    cidr: "10.99.0.0/24".into(),
                    dynamic: vec!["10.99.0.100-10.99.0.199".into()],
                    mode: "managed".into(),
                    role: "primary".into(),
                    active: true,
                    ..Default::default()
                },
                proto::SubnetConfig {
                    cidr: "not a cidr".into(),
                    role: "primary".into(),
                    ..Default::default()
                },
            ],
            known: vec![],
        }));
    let lease = |ip: &str| proto::Lease {
        ip: ip.into(),
        subnet: "10.99.0.0/24".into(),
        mac: "02:00:00:00:00:01".into(),
        state: "bound".into(),
        start_ms: 1,
        expires_ms: 2,
        hostname: String::new(),
        rack: "r1".into(),
    };
    rig.svc.on_region_message(RegionMsg::Leases(proto::Leases {
        subnet: "10.99.0.0/24".into(),
        full: true,
        leases: vec![lease("10.99.0.100"), lease("10.99.0.x"), lease("10.98.0.1")],
    }));
    rig.svc.on_region_message(RegionMsg::Leases(proto::Leases {
        subnet: "garbage".into(),
        full: true,
        leases: vec![],
    }));
    let log = rig.log.lock().unwrap();
    assert_eq!(log.configs.len(), 1);
    assert_eq!(log.configs[0].subnets.len(), 1);
    assert_eq!(log.lease_sets, vec![(subnet(), true, 1)]);
    drop(log);
    let _ = rig.stop.send(true);
}

/// Load shedding: a lease whose client stopped waiting for its ACK while its batch queued behind a slow
/// region is never sent to the region (its address is forgotten by the engine); the batch in flight is
/// still answered normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_whose_client_gave_up_while_queued_are_not_committed() {
    let d = tempfile::tempdir().unwrap();
    let settings = ServiceSettings {
        hold_reply: Duration::from_millis(100),
        max_in_flight: 1,
        ..ServiceSettings::default()
    };
    let rig = Rig::start(d.path(), settings);
    let (tx, mut rx) = mpsc::channel(1024);
    let _session = rig.svc.session_opened(tx);
    rig.send(&packet(MessageType::Request, 1, false, false));
    let first = next_commit(&mut rx, Duration::from_secs(5)).await.unwrap();
    // A second client's REQUEST queues behind the unanswered first batch, and gives up.
    tokio::time::sleep(Duration::from_millis(20)).await;
    rig.send(&packet(MessageType::Request, 2, false, false));
    tokio::time::sleep(Duration::from_millis(200)).await;
    rig.svc.on_region_message(committed(first.batch, &[]));
    eventually("the shed lease counted", || {
        rig.svc
            .counters()
            .drops
            .get("expired-before-commit")
            .is_some_and(|n| *n == 1)
    })
    .await;
    assert!(
        next_commit(&mut rx, Duration::from_millis(300))
            .await
            .is_none(),
        "nothing else is sent to the region"
    );
    assert_eq!(rig.log.lock().unwrap().committed.len(), 1);
    assert_eq!(
        rig.log.lock().unwrap().refused.len(),
        1,
        "the engine forgets the shed lease's address"
    );
    let _ = rig.stop.send(true);
}
