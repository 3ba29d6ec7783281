//! The engine's behaviours, one test each, on [`sample_config`]: a managed /24 (rack 10.20.0.2, dynamic
//! .100-.199), a proxy /24 (rack 10.30.0.2) and a relayed managed /16 (dynamic 10.40.1.0-255).

use super::*;
use crate::boot::dhcp::codec::decode_reply;
use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode, UnknownOption};
use proptest::prelude::*;

const NOW: u64 = 1_700_000_000_000;
const MANAGED: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 2);
const PROXY: Ipv4Addr = Ipv4Addr::new(10, 30, 0, 2);

fn mac(n: u8) -> Mac {
    Mac([0x52, 0x54, 0, 0, 1, n])
}
fn known(n: u8) -> Mac {
    Mac([0x52, 0x54, 0, 0, 0, n])
}
fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}
fn engine() -> Engine {
    let mut e = Engine::new(EngineSettings::default());
    e.set_config(sample_config());
    e
}
fn via(local_ip: Ipv4Addr) -> Via {
    Via {
        local_ip,
        port: ServerPort::Dhcp,
        source: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT),
    }
}
fn decode(o: &Outgoing) -> Message {
    decode_reply(&o.bytes).expect("reply decodes")
}
fn reply(out: &Outcome) -> (Message, SocketAddrV4) {
    let o = out.reply.as_ref().expect("a reply");
    (decode(o), o.to)
}
fn kind(m: &Message) -> Option<MessageType> {
    m.opts().msg_type()
}
fn opt(m: &Message, code: u8) -> Option<&DhcpOption> {
    m.opts().get(OptionCode::from(code))
}
fn bytes_opt(m: &Message, code: u8) -> Option<Vec<u8>> {
    match opt(m, code)? {
        DhcpOption::BootfileName(b)
        | DhcpOption::ClassIdentifier(b)
        | DhcpOption::TFTPServerName(b)
        | DhcpOption::VendorExtensions(b) => Some(b.clone()),
        DhcpOption::Unknown(u) => Some(u.data().to_vec()),
        _ => None,
    }
}
fn boot_file(m: &Message) -> Option<String> {
    bytes_opt(m, 67).map(|b| String::from_utf8_lossy(&b).into_owned())
}
fn discover(m: Mac) -> ClientPacket {
    ClientPacket::new(ClientMessage::Discover, 0x1000 + u32::from(m.0[5]), m)
}
fn pxe(p: ClientPacket, arch: u16) -> ClientPacket {
    p.with(93, arch.to_be_bytes().to_vec())
        .with(60, b"PXEClient:Arch:00000:UNDI:002001".to_vec())
}
fn request(m: Mac) -> ClientPacket {
    ClientPacket::new(ClientMessage::Request, 0x2000 + u32::from(m.0[5]), m)
}
fn handle(e: &mut Engine, p: &ClientPacket, v: Via, now: u64) -> Outcome {
    e.handle(&p.encode(), &v, now)
}
/// DISCOVER + REQUEST (selecting) for `m` on the managed subnet; returns the leased address.
fn dora(e: &mut Engine, m: Mac, now: u64) -> Ipv4Addr {
    let (offer, _) = reply(&handle(e, &discover(m), via(MANAGED), now));
    let a = offer.yiaddr();
    let out = handle(
        e,
        &request(m).with(54, MANAGED.octets()).with(50, a.octets()),
        via(MANAGED),
        now + 10,
    );
    let (ack, _) = reply(&out);
    assert_eq!(kind(&ack), Some(MessageType::Ack));
    let lease = out.commit.expect("commit");
    e.committed(&lease);
    a
}

#[test]
fn dora_offers_then_acks_with_a_commit_and_a_nak_in_reserve() {
    let mut e = engine();
    let out = handle(&mut e, &discover(mac(1)), via(MANAGED), NOW);
    assert_eq!(out.commit, None, "offers are not committed");
    let (offer, to) = reply(&out);
    assert_eq!(kind(&offer), Some(MessageType::Offer));
    assert_eq!(offer.yiaddr(), ip(10, 20, 0, 100));
    assert_eq!(offer.xid(), 0x1001);
    assert_eq!(to, SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT));
    assert_eq!(opt(&offer, 51), Some(&DhcpOption::AddressLeaseTime(3600)));
    assert_eq!(
        opt(&offer, 54),
        Some(&DhcpOption::ServerIdentifier(MANAGED))
    );
    assert_eq!(
        opt(&offer, 1),
        Some(&DhcpOption::SubnetMask(ip(255, 255, 255, 0)))
    );
    assert_eq!(
        opt(&offer, 3),
        Some(&DhcpOption::Router(vec![ip(10, 20, 0, 1)]))
    );
    assert_eq!(
        opt(&offer, 28),
        Some(&DhcpOption::BroadcastAddr(ip(10, 20, 0, 255)))
    );
    assert_eq!(
        opt(&offer, 15),
        Some(&DhcpOption::DomainName("lab.example".into()))
    );
    assert_eq!(opt(&offer, 175), None, "no PXE options for a plain client");
    assert!(out.reply.as_ref().is_some_and(|o| o.bytes.len() >= 300));

    let out = handle(
        &mut e,
        &request(mac(1))
            .with(54, MANAGED.octets())
            .with(50, ip(10, 20, 0, 100).octets())
            .with(12, b"web-1".to_vec()),
        via(MANAGED),
        NOW + 5,
    );
    let (ack, _) = reply(&out);
    assert_eq!(kind(&ack), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), ip(10, 20, 0, 100));
    let lease = out.commit.clone().expect("an ACK commits");
    assert_eq!(lease.ip, ip(10, 20, 0, 100));
    assert_eq!(lease.mac, mac(1));
    assert_eq!(lease.state, LeaseState::Bound);
    assert_eq!(lease.expires_ms, NOW + 5 + 3_600_000);
    assert_eq!(lease.hostname, "web-1");
    let nak = decode(out.on_refused.as_ref().expect("NAK in reserve"));
    assert_eq!(kind(&nak), Some(MessageType::Nak));
    assert!(e.table().lease(lease.ip).is_some_and(|l| l.pending));
    e.committed(&lease);
    assert!(e.table().lease(lease.ip).is_some_and(|l| !l.pending));
    // A refused commit is forgotten.
    let out = handle(&mut e, &discover(mac(2)), via(MANAGED), NOW);
    let a = reply(&out).0.yiaddr();
    let out = handle(
        &mut e,
        &request(mac(2))
            .with(54, MANAGED.octets())
            .with(50, a.octets()),
        via(MANAGED),
        NOW,
    );
    e.refused(a, mac(2));
    assert!(out.commit.is_some());
    assert_eq!(e.table().lease(a), None);
}

#[test]
fn renew_and_rebind_extend_the_lease_others_get_nak() {
    let mut e = engine();
    let a = dora(&mut e, mac(1), NOW);
    // RENEWING: unicast, ciaddr set, no server id → ACK to ciaddr:68.
    let mut renew = request(mac(1));
    renew.ciaddr = a;
    let out = handle(&mut e, &renew, via(MANAGED), NOW + 1_800_000);
    let (ack, to) = reply(&out);
    assert_eq!(kind(&ack), Some(MessageType::Ack));
    assert_eq!(to, SocketAddrV4::new(a, CLIENT_PORT));
    assert_eq!(ack.ciaddr(), a);
    assert_eq!(
        out.commit.as_ref().map(|l| l.expires_ms),
        Some(NOW + 1_800_000 + 3_600_000)
    );
    // REBINDING: broadcast; same answer.
    renew.broadcast = true;
    let (ack, _) = reply(&handle(&mut e, &renew, via(MANAGED), NOW + 3_000_000));
    assert_eq!(kind(&ack), Some(MessageType::Ack));
    assert!(ack.flags().broadcast(), "broadcast flag honoured");
    // Another MAC claiming the address is NAKed, by broadcast.
    let mut thief = request(mac(2));
    thief.ciaddr = a;
    let out = handle(&mut e, &thief, via(MANAGED), NOW + 3_000_000);
    let (nak, to) = reply(&out);
    assert_eq!(kind(&nak), Some(MessageType::Nak));
    assert_eq!(to, SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT));
    assert_eq!(out.commit, None);
}

#[test]
fn init_reboot_is_naked_on_the_wrong_subnet_or_address() {
    let mut e = engine();
    let a = dora(&mut e, mac(1), NOW);
    for wrong in [ip(10, 99, 0, 5), a, ip(10, 20, 0, 5), ip(10, 20, 0, 1)] {
        let out = handle(
            &mut e,
            &request(mac(2)).with(50, wrong.octets()),
            via(MANAGED),
            NOW,
        );
        let (nak, _) = reply(&out);
        assert_eq!(kind(&nak), Some(MessageType::Nak), "{wrong}");
        assert_eq!(out.commit, None);
    }
    // The owner's own INIT-REBOOT is ACKed.
    let out = handle(
        &mut e,
        &request(mac(1)).with(50, a.octets()),
        via(MANAGED),
        NOW,
    );
    assert_eq!(kind(&reply(&out).0), Some(MessageType::Ack));
}

#[test]
fn a_request_for_another_server_forgets_our_offer() {
    let mut e = engine();
    let offered = reply(&handle(&mut e, &discover(mac(1)), via(MANAGED), NOW))
        .0
        .yiaddr();
    let out = handle(
        &mut e,
        &request(mac(1))
            .with(54, ip(10, 20, 0, 77).octets())
            .with(50, ip(10, 20, 0, 150).octets()),
        via(MANAGED),
        NOW,
    );
    assert_eq!(out.reply, None);
    assert_eq!(out.dropped, Some("the client chose another server"));
    // The address is free again for the next client.
    let next = reply(&handle(&mut e, &discover(mac(2)), via(MANAGED), NOW))
        .0
        .yiaddr();
    assert_eq!(next, offered);
}

#[test]
fn decline_and_release_commit_without_reply() {
    let mut e = engine();
    let a = dora(&mut e, mac(1), NOW);
    let out = handle(
        &mut e,
        &ClientPacket::new(ClientMessage::Decline, 7, mac(1))
            .with(50, a.octets())
            .with(54, MANAGED.octets()),
        via(MANAGED),
        NOW + 100,
    );
    assert_eq!(out.reply, None);
    let declined = out.commit.expect("decline commits");
    assert_eq!(declined.state, LeaseState::Declined);
    assert_eq!(declined.expires_ms, NOW + 100 + 3_600_000);
    // The declined address is not offered again, not even to its decliner.
    let next = reply(&handle(&mut e, &discover(mac(1)), via(MANAGED), NOW + 200))
        .0
        .yiaddr();
    assert_ne!(next, a);
    // A DECLINE of an address the MAC does not hold is ignored (no pool poisoning).
    let out = handle(
        &mut e,
        &ClientPacket::new(ClientMessage::Decline, 8, mac(3)).with(50, ip(10, 20, 0, 150).octets()),
        via(MANAGED),
        NOW,
    );
    assert_eq!((out.commit, out.reply.is_none()), (None, true));

    let b = dora(&mut e, mac(2), NOW);
    let mut release =
        ClientPacket::new(ClientMessage::Release, 9, mac(2)).with(54, MANAGED.octets());
    release.ciaddr = b;
    let out = handle(&mut e, &release, via(MANAGED), NOW + 1_000);
    assert_eq!(out.reply, None);
    let released = out.commit.expect("release commits");
    assert_eq!(
        (released.state, released.expires_ms),
        (LeaseState::Released, NOW + 1_000)
    );
    // Released stays the MAC's sticky address.
    let again = reply(&handle(
        &mut e,
        &discover(mac(2)),
        via(MANAGED),
        NOW + 2_000,
    ))
    .0
    .yiaddr();
    assert_eq!(again, b);
}

#[test]
fn inform_gets_options_and_no_lease() {
    let mut e = engine();
    let mut inform = ClientPacket::new(ClientMessage::Inform, 5, mac(1));
    inform.ciaddr = ip(10, 20, 0, 50);
    let out = handle(&mut e, &inform, via(MANAGED), NOW);
    let (ack, to) = reply(&out);
    assert_eq!(kind(&ack), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(opt(&ack, 51), None);
    assert_eq!(
        opt(&ack, 6),
        Some(&DhcpOption::DomainNameServer(vec![ip(10, 20, 0, 1)]))
    );
    assert_eq!(to, SocketAddrV4::new(ip(10, 20, 0, 50), CLIENT_PORT));
    assert_eq!(out.commit, None);
}

#[test]
fn relayed_requests_use_the_relays_subnet_and_echo_option_82() {
    let mut e = engine();
    let info = vec![1, 4, b'p', b'o', b'r', b't', 2, 2, 0, 7];
    let mut p = discover(mac(1)).with(82, info.clone());
    p.giaddr = ip(10, 40, 0, 1);
    // Received on the managed /24 interface, but the relay's subnet decides.
    let out = handle(&mut e, &p, via(MANAGED), NOW);
    let o = out.reply.as_ref().expect("offer");
    assert_eq!(o.to, SocketAddrV4::new(ip(10, 40, 0, 1), SERVER_PORT));
    let offer = decode(o);
    assert_eq!(offer.yiaddr(), ip(10, 40, 1, 0));
    assert_eq!(offer.giaddr(), ip(10, 40, 0, 1));
    assert_eq!(
        opt(&offer, 3),
        Some(&DhcpOption::Router(vec![ip(10, 40, 0, 1)]))
    );
    let end = o.bytes.iter().rposition(|&b| b == 255).expect("end");
    assert_eq!(
        o.bytes[end - info.len() - 2..end],
        [&[82, 10][..], &info[..]].concat()
    );
    // A NAK through the relay goes to the relay with the broadcast flag set.
    let mut r = request(mac(1)).with(50, ip(10, 20, 0, 150).octets());
    r.giaddr = ip(10, 40, 0, 1);
    let out = handle(&mut e, &r, via(MANAGED), NOW);
    let (nak, to) = reply(&out);
    assert_eq!(kind(&nak), Some(MessageType::Nak));
    assert!(nak.flags().broadcast());
    assert_eq!(to, SocketAddrV4::new(ip(10, 40, 0, 1), SERVER_PORT));
}

#[test]
fn broadcast_flag_is_honoured() {
    let mut e = engine();
    let mut p = discover(mac(1));
    p.broadcast = true;
    let (offer, to) = reply(&handle(&mut e, &p, via(MANAGED), NOW));
    assert!(offer.flags().broadcast());
    assert_eq!(to, SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT));
    let (offer, _) = reply(&handle(&mut e, &discover(mac(2)), via(MANAGED), NOW));
    assert!(!offer.flags().broadcast());
}

#[test]
fn known_machines_get_their_address_back_reserved_and_gateway_never() {
    let mut e = engine();
    let cidr: Cidr = "10.20.0.0/24".parse().expect("cidr");
    // The region remembers known(1) at .150, expired a day ago and not reused.
    e.set_leases(
        cidr,
        true,
        vec![Lease {
            ip: ip(10, 20, 0, 150),
            subnet: cidr,
            mac: known(1),
            state: LeaseState::Bound,
            start_ms: NOW - 90_000_000,
            expires_ms: NOW - 86_400_000,
            hostname: String::new(),
            rack: "rack-1".into(),
        }],
    );
    let (offer, _) = reply(&handle(&mut e, &discover(known(1)), via(MANAGED), NOW));
    assert_eq!(offer.yiaddr(), ip(10, 20, 0, 150));
    // Asking for the gateway, a reserved address or the broadcast address gets a dynamic one.
    for (n, wanted) in [
        (2, ip(10, 20, 0, 1)),
        (3, ip(10, 20, 0, 5)),
        (4, ip(10, 20, 0, 255)),
    ] {
        let (offer, _) = reply(&handle(
            &mut e,
            &discover(mac(n)).with(50, wanted.octets()),
            via(MANAGED),
            NOW,
        ));
        assert!(
            (100..=199).contains(&offer.yiaddr().octets()[3]),
            "{wanted}"
        );
    }
    // A free dynamic address asked for is given.
    let (offer, _) = reply(&handle(
        &mut e,
        &discover(mac(5)).with(50, ip(10, 20, 0, 180).octets()),
        via(MANAGED),
        NOW,
    ));
    assert_eq!(offer.yiaddr(), ip(10, 20, 0, 180));
}

#[test]
fn an_exhausted_pool_offers_nothing_and_says_why() {
    let mut e = engine();
    for n in 0..100u8 {
        let out = handle(&mut e, &discover(mac(n)), via(MANAGED), NOW + u64::from(n));
        assert!(out.reply.is_some(), "offer {n}");
    }
    let out = handle(&mut e, &discover(mac(200)), via(MANAGED), NOW + 200);
    assert_eq!(out.reply, None);
    assert_eq!(
        out.dropped,
        Some("no free address in the subnet's dynamic ranges")
    );
    // Offers expire after 30 s and the addresses come back.
    e.expire(NOW + 100 + leases_hold());
    assert!(handle(
        &mut e,
        &discover(mac(200)),
        via(MANAGED),
        NOW + 100 + leases_hold()
    )
    .reply
    .is_some());
}

fn leases_hold() -> u64 {
    crate::boot::leases::OFFER_HOLD_MS
}

#[test]
fn boot_file_by_architecture() {
    let mut settings = EngineSettings::default();
    let mut e = Engine::new(settings.clone());
    e.set_config(sample_config());
    let cases: [(u16, Option<&str>, &str); 6] = [
        (0, Some("undionly.kpxe"), "PXEClient"),
        (7, Some("snponly.efi"), "PXEClient"),
        (9, Some("snponly.efi"), "PXEClient"),
        (11, None, "PXEClient"),
        (
            16,
            Some("http://10.20.0.2:5248/boot/ipxe-x64.efi"),
            "HTTPClient",
        ),
        (
            19,
            Some("http://10.20.0.2:5248/boot/ipxe-arm64.efi"),
            "HTTPClient",
        ),
    ];
    for (n, (arch, file, class)) in cases.into_iter().enumerate() {
        let out = handle(
            &mut e,
            &pxe(discover(mac(n as u8)), arch),
            via(MANAGED),
            NOW,
        );
        let (offer, _) = reply(&out);
        assert_eq!(boot_file(&offer).as_deref(), file, "arch {arch}");
        assert_eq!(
            bytes_opt(&offer, 60),
            Some(class.as_bytes().to_vec()),
            "arch {arch}"
        );
        assert_eq!(
            opt(&offer, 51),
            Some(&DhcpOption::AddressLeaseTime(30)),
            "PXE lease time"
        );
        assert_eq!(bytes_opt(&offer, 175), Some(vec![176, 1, 1]), "arch {arch}");
        if file.is_some_and(|f| !f.starts_with("http")) {
            assert_eq!(offer.siaddr(), MANAGED);
            assert_eq!(bytes_opt(&offer, 66), Some(b"10.20.0.2".to_vec()));
        }
    }
    settings.boot_files.uefi_arm64 = Some("arm64/snponly.efi".into());
    let mut e = Engine::new(settings);
    e.set_config(sample_config());
    let (offer, _) = reply(&handle(
        &mut e,
        &pxe(discover(mac(1)), 11),
        via(MANAGED),
        NOW,
    ));
    assert_eq!(boot_file(&offer).as_deref(), Some("arm64/snponly.efi"));
}

#[test]
fn ipxe_gets_its_script_url_and_option_175() {
    let mut e = engine();
    let p = pxe(discover(mac(5)), 0).with(77, b"iPXE".to_vec());
    let (offer, _) = reply(&handle(&mut e, &p, via(MANAGED), NOW));
    assert_eq!(
        boot_file(&offer).as_deref(),
        Some("http://10.20.0.2:5248/boot/52:54:00:00:01:05.ipxe")
    );
    assert_eq!(
        opt(&offer, 175),
        Some(&DhcpOption::Unknown(UnknownOption::new(
            OptionCode::from(175),
            vec![176, 1, 1]
        )))
    );
    // A user class alone makes a PXE client.
    let p = discover(mac(6)).with(77, b"iPXE".to_vec());
    let (offer, _) = reply(&handle(&mut e, &p, via(MANAGED), NOW));
    assert!(boot_file(&offer).is_some_and(|f| f.ends_with("52:54:00:00:01:06.ipxe")));
}

#[test]
fn proxy_mode_answers_pxe_clients_on_both_ports_without_addresses() {
    let mut e = engine();
    let out = handle(&mut e, &pxe(discover(mac(1)), 7), via(PROXY), NOW);
    let (offer, to) = reply(&out);
    assert_eq!(kind(&offer), Some(MessageType::Offer));
    assert_eq!(offer.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(to, SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT));
    assert_eq!(bytes_opt(&offer, 60), Some(b"PXEClient".to_vec()));
    assert_eq!(bytes_opt(&offer, 43), Some(vec![6, 1, 8, 255]));
    assert_eq!(opt(&offer, 54), Some(&DhcpOption::ServerIdentifier(PROXY)));
    assert_eq!(boot_file(&offer).as_deref(), Some("snponly.efi"));
    assert_eq!(opt(&offer, 51), None);
    assert_eq!(out.commit, None);
    // Not a PXE client, or not a DISCOVER on 67: silence (the other server owns addresses: no NAK).
    assert_eq!(
        handle(&mut e, &discover(mac(2)), via(PROXY), NOW).reply,
        None
    );
    let r = pxe(request(mac(1)), 7).with(50, ip(10, 30, 0, 99).octets());
    assert_eq!(handle(&mut e, &r, via(PROXY), NOW).reply, None);
    // Port 4011: the REQUEST gets an ACK with the boot file, back to its source.
    let source = SocketAddrV4::new(ip(10, 30, 0, 120), CLIENT_PORT);
    let v = Via {
        local_ip: PROXY,
        port: ServerPort::ProxyDhcp,
        source,
    };
    let mut r = pxe(request(mac(1)), 7);
    r.ciaddr = ip(10, 30, 0, 120);
    let out = handle(&mut e, &r, v, NOW);
    let (ack, to) = reply(&out);
    assert_eq!(kind(&ack), Some(MessageType::Ack));
    assert_eq!(to, source);
    assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(boot_file(&ack).as_deref(), Some("snponly.efi"));
    assert_eq!((out.commit, out.on_refused), (None, None));
    // The boot server's answer is a boot step; the proxy OFFER before it is not.
    assert_eq!(
        out.pxe,
        Some(PxeAnswer {
            mac: mac(1),
            ipxe: false,
            port: ServerPort::ProxyDhcp
        })
    );
    let out = handle(&mut e, &pxe(discover(mac(1)), 7), via(PROXY), NOW);
    assert!(out.reply.is_some() && out.pxe.is_none());
}

#[test]
fn offline_only_renewals_and_known_machines() {
    let mut e = engine();
    let a = dora(&mut e, mac(1), NOW);
    let k = dora(&mut e, known(1), NOW);
    // known(1)'s lease runs out; it stays sticky.
    e.set_online(false);
    let later = NOW + 10_000_000;
    let out = handle(&mut e, &pxe(discover(mac(9)), 0), via(MANAGED), later);
    assert_eq!(out.reply, None, "no new addresses offline");
    assert_eq!(out.enlist, None, "no enlistment offline");
    let (offer, _) = reply(&handle(&mut e, &discover(known(1)), via(MANAGED), later));
    assert_eq!(offer.yiaddr(), k);
    // An unknown MAC renewing its (current) lease is ACKed, with a commit for the journal.
    let mut renew = request(mac(1));
    renew.ciaddr = a;
    let out = handle(&mut e, &renew, via(MANAGED), NOW + 1_000_000);
    assert_eq!(kind(&reply(&out).0), Some(MessageType::Ack));
    assert!(out.commit.is_some());
    // A free address asked for by an unknown MAC: silence (no new address, no NAK either).
    let out = handle(
        &mut e,
        &request(mac(9)).with(50, ip(10, 20, 0, 190).octets()),
        via(MANAGED),
        later,
    );
    assert_eq!(out.reply, None);
    // Unknown MAC without a current lease: no offer.
    let out = handle(&mut e, &discover(mac(1)), via(MANAGED), later);
    assert_eq!(out.reply, None);
    e.set_online(true);
    assert!(handle(&mut e, &discover(mac(9)), via(MANAGED), later)
        .reply
        .is_some());
}

#[test]
fn unknown_pxe_clients_are_enlisted_once_and_rate_limited() {
    let mut e = engine();
    let out = handle(&mut e, &pxe(discover(mac(1)), 7), via(MANAGED), NOW);
    let req = out.enlist.expect("enlist");
    assert_eq!(req.mac, mac(1));
    assert_eq!(req.arch, ClientArch::UefiX64);
    assert_eq!(req.subnet, "10.20.0.0/24".parse::<Cidr>().expect("cidr"));
    assert_eq!(
        handle(&mut e, &pxe(discover(mac(1)), 7), via(MANAGED), NOW + 1_000).enlist,
        None
    );
    e.expire(NOW + ENLIST_REPEAT_MS);
    assert!(handle(
        &mut e,
        &pxe(discover(mac(1)), 7),
        via(MANAGED),
        NOW + ENLIST_REPEAT_MS
    )
    .enlist
    .is_some());
    // Known machines and plain clients are not enlisted; proxy subnets enlist too.
    assert_eq!(
        handle(&mut e, &pxe(discover(known(2)), 7), via(MANAGED), NOW).enlist,
        None
    );
    assert_eq!(
        handle(&mut e, &discover(mac(3)), via(MANAGED), NOW).enlist,
        None
    );
    assert!(handle(&mut e, &pxe(discover(mac(4)), 0), via(PROXY), NOW)
        .enlist
        .is_some());
    // A storm: at most 100 a second.
    let t = NOW + 500_000;
    let enlisted = (0..150u16)
        .filter(|&n| {
            let [a, b] = n.to_be_bytes();
            let m = Mac([0x52, 0x54, 9, 9, a, b]);
            handle(&mut e, &pxe(discover(m), 0), via(PROXY), t)
                .enlist
                .is_some()
        })
        .count();
    assert_eq!(enlisted, MAX_ENLIST_PER_S as usize);
}

#[test]
fn a_flooding_mac_is_ignored_for_the_rest_of_the_second() {
    let mut e = engine();
    let answered = (0..25)
        .filter(|i| {
            handle(&mut e, &discover(mac(1)), via(MANAGED), NOW + i)
                .reply
                .is_some()
        })
        .count();
    assert_eq!(answered, 20);
    let out = handle(&mut e, &discover(mac(1)), via(MANAGED), NOW + 30);
    assert_eq!(
        out.dropped,
        Some("flood: this MAC sent too many packets this second")
    );
    // Other MACs are unaffected; the next second the MAC is heard again.
    assert!(handle(&mut e, &discover(mac(2)), via(MANAGED), NOW + 30)
        .reply
        .is_some());
    assert!(handle(&mut e, &discover(mac(1)), via(MANAGED), NOW + 1_000)
        .reply
        .is_some());
}

#[test]
fn inactive_off_and_unknown_subnets_are_silent() {
    let mut cfg = sample_config();
    cfg.subnets[0].active = false;
    cfg.subnets[2].subnet.mode = SubnetMode::Off;
    let mut e = Engine::new(EngineSettings::default());
    e.set_config(cfg);
    let out = handle(&mut e, &discover(mac(1)), via(MANAGED), NOW);
    assert_eq!(out.dropped, Some("subnet not active on this rack"));
    let mut p = discover(mac(1));
    p.giaddr = ip(10, 40, 0, 1);
    assert_eq!(
        handle(&mut e, &p, via(MANAGED), NOW).dropped,
        Some("subnet mode is off")
    );
    let out = handle(&mut e, &discover(mac(1)), via(ip(192, 168, 1, 1)), NOW);
    assert_eq!(
        out.dropped,
        Some("no subnet served for this interface or relay")
    );
    let out = e.handle(&[1, 2, 3], &via(MANAGED), NOW);
    assert!(out.error.is_some() && out.reply.is_none());
}

#[test]
fn fuzz_run_finds_no_bad_reply() {
    let s = fuzz(20_000, 42);
    assert_eq!(s.bad_replies, 0, "{s:?}");
    assert!(s.parsed > 1_000 && s.refused > 1_000, "{s:?}");
    assert!(
        s.replied > 1_000 && s.commits > 100 && s.enlisted > 10,
        "{s:?}"
    );
    assert_eq!(fuzz(2_000, 7), fuzz(2_000, 7), "deterministic for a seed");
}

/// Valid packets of every kind, the proptest's mutation bases.
fn bases() -> Vec<Vec<u8>> {
    let mut relayed = pxe(discover(mac(1)), 0).with(82, vec![1, 2, 0, 1]);
    relayed.giaddr = ip(10, 40, 0, 1);
    let mut renew = request(mac(2));
    renew.ciaddr = ip(10, 20, 0, 100);
    let mut inform = ClientPacket::new(ClientMessage::Inform, 1, mac(3));
    inform.ciaddr = ip(10, 20, 0, 50);
    vec![
        pxe(discover(mac(1)), 7).with(77, b"iPXE".to_vec()).encode(),
        relayed.encode(),
        request(mac(1))
            .with(54, MANAGED.octets())
            .with(50, ip(10, 20, 0, 100).octets())
            .encode(),
        renew.encode(),
        ClientPacket::new(ClientMessage::Decline, 1, mac(1))
            .with(50, ip(10, 20, 0, 100).octets())
            .encode(),
        inform.encode(),
    ]
}

fn check(e: &mut Engine, bytes: &[u8], v: &Via) -> Result<(), TestCaseError> {
    let parsed = codec::parse(bytes);
    let out = e.handle(bytes, v, NOW);
    for o in out.reply.iter().chain(out.on_refused.iter()) {
        let req = parsed
            .as_ref()
            .map_err(|e| TestCaseError::fail(format!("reply to unparsed: {e}")))?;
        let m =
            decode_reply(&o.bytes).ok_or_else(|| TestCaseError::fail("reply does not decode"))?;
        prop_assert_eq!(m.xid(), req.xid);
        prop_assert_eq!(m.chaddr(), &req.mac.0[..]);
    }
    Ok(())
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
        let mut e = engine();
        check(&mut e, &bytes, &via(MANAGED))?;
    }

    #[test]
    fn mutated_packets_never_panic_and_replies_decode(
        base in 0usize..6,
        edits in proptest::collection::vec((any::<u16>(), any::<u8>()), 0..12),
        cut in proptest::option::of(0usize..400),
        extra in proptest::collection::vec(any::<u8>(), 0..40),
        proxy in any::<bool>(),
        port4011 in any::<bool>(),
    ) {
        let mut p = bases().swap_remove(base);
        for (at, b) in edits {
            let n = p.len();
            if n > 0 {
                p[usize::from(at) % n] = b;
            }
        }
        if let Some(c) = cut {
            p.truncate(c);
        }
        p.extend_from_slice(&extra);
        let mut e = engine();
        let v = Via {
            local_ip: if proxy { PROXY } else { MANAGED },
            port: if port4011 { ServerPort::ProxyDhcp } else { ServerPort::Dhcp },
            source: SocketAddrV4::new(ip(10, 30, 0, 9), CLIENT_PORT),
        };
        check(&mut e, &p, &v)?;
    }
}

#[test]
fn selecting_another_address_than_offered_releases_the_offer() {
    let mut e = engine();
    let offered = reply(&handle(&mut e, &discover(mac(1)), via(MANAGED), NOW))
        .0
        .yiaddr();
    let wanted = ip(10, 20, 0, 170);
    let out = handle(
        &mut e,
        &request(mac(1))
            .with(54, MANAGED.octets())
            .with(50, wanted.octets()),
        via(MANAGED),
        NOW,
    );
    assert_eq!(reply(&out).0.yiaddr(), wanted);
    // The first offer's address is free for the next client at once.
    let next = reply(&handle(&mut e, &discover(mac(2)), via(MANAGED), NOW))
        .0
        .yiaddr();
    assert_eq!(next, offered);
}
