//! The IPMI BMC driven datagram by datagram through [`IpmiBmc::handle`] by a console built from the rack's
//! own RMCP+ codecs: handshake per suite, statuses, privileges, the session table, duplicates, faults and
//! garbage.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::machine::{BootEnabled, BootMode, BootTarget, Faults, PowerState, SimMachineInfo};
use ingot_common::model::Inventory;
use ingot_rmcp::{CipherSuite, IpmiResponse, Rakp, SessionKeys};
use rand::{Rng, SeedableRng};

const USER: &str = "admin";
const PASSWORD: &str = "s3cret-pw";

fn machine() -> Arc<SimMachine> {
    let info = SimMachineInfo {
        hostname: "sim-01".into(),
        uuid: "123e4567-e89b-12d3-a456-426614174000".into(),
        mac: "52:54:00:00:00:01".into(),
        zone: "default".into(),
        arch: "amd64/generic".into(),
        bmc_url: "http://127.0.0.1:1".into(),
        username: USER.into(),
        password: PASSWORD.into(),
        system_id: "u".into(),
        inventory: Inventory::default(),
        ipmi_port: Some(1),
    };
    Arc::new(SimMachine::new(info, Duration::ZERO, None))
}

fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40_000))
}

/// Where a handshake stopped.
#[derive(Debug, PartialEq, Eq)]
enum Failed {
    /// A step's RMCP+ status: (RAKP message number or 0 for Open Session, status).
    Status(u8, u8),
    /// The BMC's RAKP 2 code does not verify with our password.
    Rakp2Code,
    /// The BMC did not answer.
    Ignored(String),
}

/// A console speaking to `bmc` through `handle`.
struct Console<'a> {
    bmc: &'a IpmiBmc,
    keys: SessionKeys,
    console_sid: u32,
    bmc_sid: u32,
    seq: u32,
    rq_seq: u8,
    now: Instant,
}

fn none() -> SessionKeys {
    SessionKeys::none()
}

fn ask(bmc: &IpmiBmc, pkt: &[u8], now: Instant) -> Result<rmcp::Packet, Failed> {
    let out = bmc
        .handle(pkt, peer(), now)
        .map_err(|e| Failed::Ignored(e.to_string()))?;
    Ok(rmcp::decode(&out, &none()).unwrap())
}

/// The whole handshake: Open Session, RAKP 1-4 (RAKP 3 sent even when RAKP 2 does not verify if
/// `insist`, to see what the BMC says about a wrong password).
fn open_with<'a>(
    bmc: &'a IpmiBmc,
    suite: u8,
    user: &str,
    password: &str,
    role: u8,
    insist: bool,
    now: Instant,
) -> Result<Console<'a>, Failed> {
    let suite = CipherSuite::from_id(suite).unwrap();
    let console_sid: u32 = rand::random::<u32>() | 1;
    let tag = 7;
    let req = rmcp::open_session_request(tag, 0, console_sid, &suite);
    let p = ask(
        bmc,
        &rmcp::encode_v20(
            rmcp::PAYLOAD_OPEN_SESSION_REQUEST,
            0,
            0,
            &req,
            &none(),
            [0; 16],
        ),
        now,
    )?;
    assert_eq!(p.payload_type, rmcp::PAYLOAD_OPEN_SESSION_RESPONSE);
    let o = rmcp::parse_open_session_response(&p.payload).unwrap();
    if o.status != 0 {
        return Err(Failed::Status(0, o.status));
    }
    assert_eq!((o.tag, o.console_sid), (tag, console_sid));
    let bmc_sid = o.bmc_sid;
    let console_rand: [u8; 16] = rand::random();
    let r1 = rmcp::rakp1(tag, bmc_sid, &console_rand, role, user.as_bytes());
    let p = ask(
        bmc,
        &rmcp::encode_v20(rmcp::PAYLOAD_RAKP1, 0, 0, &r1, &none(), [0; 16]),
        now,
    )?;
    assert_eq!(p.payload_type, rmcp::PAYLOAD_RAKP2);
    let r2 = rmcp::parse_rakp2(&p.payload, suite.rakp_code_len()).unwrap();
    if r2.status != 0 {
        return Err(Failed::Status(2, r2.status));
    }
    assert_eq!(r2.console_sid, console_sid);
    let rakp = Rakp {
        console_sid,
        bmc_sid,
        console_rand,
        bmc_rand: r2.bmc_rand,
        bmc_guid: r2.bmc_guid,
        role,
        username: user.as_bytes(),
    };
    let pw = password.as_bytes();
    if let Some(h) = suite.auth {
        if !rmcp::ct_eq(&rakp.rakp2_code(h, pw), &r2.code) && !insist {
            // As the rack's client does: tell the BMC to drop the half-open session (no answer comes).
            let abort = rmcp::rakp3(tag, 0x0f, bmc_sid, &[]);
            let abort = rmcp::encode_v20(rmcp::PAYLOAD_RAKP3, 0, 0, &abort, &none(), [0; 16]);
            assert!(matches!(ask(bmc, &abort, now), Err(Failed::Ignored(_))));
            return Err(Failed::Rakp2Code);
        }
    }
    let code = suite
        .auth
        .map(|h| rakp.rakp3_code(h, pw))
        .unwrap_or_default();
    let p = ask(
        bmc,
        &rmcp::encode_v20(
            rmcp::PAYLOAD_RAKP3,
            0,
            0,
            &rmcp::rakp3(tag, 0, bmc_sid, &code),
            &none(),
            [0; 16],
        ),
        now,
    )?;
    assert_eq!(p.payload_type, rmcp::PAYLOAD_RAKP4);
    let r4 = rmcp::parse_rakp4(&p.payload, suite.rakp4_icv_len()).unwrap();
    if r4.status != 0 {
        return Err(Failed::Status(4, r4.status));
    }
    let sik = suite.auth.map(|h| rakp.sik(h, pw)).unwrap_or_default();
    if let Some(h) = suite.auth {
        assert_eq!(rakp.rakp4_icv(h, &sik, suite.rakp4_icv_len()), r4.icv);
    }
    Ok(Console {
        bmc,
        keys: SessionKeys::derive(suite, &sik),
        console_sid,
        bmc_sid,
        seq: 0,
        rq_seq: 0,
        now,
    })
}

fn open(bmc: &IpmiBmc, suite: u8) -> Console<'_> {
    let mut c = open_with(bmc, suite, USER, PASSWORD, 0x14, false, Instant::now()).unwrap();
    let r = c
        .call(rmcp::NETFN_APP, rmcp::CMD_SET_SESSION_PRIVILEGE, &[4])
        .unwrap();
    assert_eq!((r.completion, r.data.as_slice()), (0, &[4u8][..]));
    c
}

impl Console<'_> {
    /// The datagram of one request (new session sequence number, next request sequence number).
    fn packet(&mut self, netfn: u8, cmd: u8, data: &[u8]) -> (Vec<u8>, Vec<u8>) {
        self.rq_seq = (self.rq_seq + 1) & 0x3f;
        let msg = rmcp::ipmi_request(netfn, cmd, self.rq_seq, data);
        (self.wrap(&msg), msg)
    }

    fn wrap(&mut self, msg: &[u8]) -> Vec<u8> {
        self.seq += 1;
        rmcp::encode_v20(
            rmcp::PAYLOAD_IPMI,
            self.bmc_sid,
            self.seq,
            msg,
            &self.keys,
            rand::random(),
        )
    }

    fn send(&self, pkt: &[u8]) -> Result<IpmiResponse, Ignored> {
        let out = self.bmc.handle(pkt, peer(), self.now)?;
        let p = rmcp::decode(&out, &self.keys).unwrap();
        assert_eq!(p.session_id, self.console_sid);
        assert_eq!(p.authenticated, self.keys.suite.integrity.is_some());
        Ok(rmcp::parse_ipmi_response(&p.payload).unwrap())
    }

    fn call(&mut self, netfn: u8, cmd: u8, data: &[u8]) -> Result<IpmiResponse, Ignored> {
        let (pkt, _) = self.packet(netfn, cmd, data);
        let r = self.send(&pkt)?;
        assert_eq!((r.netfn, r.cmd, r.rq_seq), (netfn + 1, cmd, self.rq_seq));
        Ok(r)
    }

    fn power_on(&mut self) -> bool {
        let r = self
            .call(rmcp::NETFN_CHASSIS, rmcp::CMD_GET_CHASSIS_STATUS, &[])
            .unwrap();
        assert_eq!(r.completion, 0);
        r.data[0] & 1 == 1
    }
}

#[tokio::test]
async fn every_suite_opens_and_drives_the_machine() {
    for suite in rmcp::SUPPORTED_SUITES {
        let m = machine();
        let bmc = IpmiBmc::new(Arc::clone(&m));
        let mut c = open(&bmc, suite);
        assert!(!c.power_on(), "suite {suite}");
        let r = c
            .call(rmcp::NETFN_CHASSIS, rmcp::CMD_CHASSIS_CONTROL, &[1])
            .unwrap();
        assert_eq!(r.completion, 0);
        assert_eq!(m.power_state(), PowerState::On);
        assert!(c.power_on());

        // Boot flags: PXE once (legacy), then disk persistent (EFI), then cleared; read back each time.
        let set = |c: &mut Console, flags0: u8, flags1: u8| {
            let r = c
                .call(
                    rmcp::NETFN_CHASSIS,
                    rmcp::CMD_SET_BOOT_OPTIONS,
                    &[5, flags0, flags1, 0, 0, 0],
                )
                .unwrap();
            assert_eq!(r.completion, 0);
            let r = c.call(rmcp::NETFN_CHASSIS, 0x09, &[5, 0, 0]).unwrap();
            assert_eq!(r.completion, 0);
            r.data
        };
        assert_eq!(set(&mut c, 0x80, 0x04), [1, 5, 0x80, 0x04, 0, 0, 0]);
        assert_eq!(
            m.boot_override(),
            (BootTarget::Pxe, BootEnabled::Once, BootMode::Legacy)
        );
        assert_eq!(set(&mut c, 0xe0, 0x08), [1, 5, 0xe0, 0x08, 0, 0, 0]);
        assert_eq!(
            m.boot_override(),
            (BootTarget::Hdd, BootEnabled::Continuous, BootMode::Uefi)
        );
        assert_eq!(set(&mut c, 0x00, 0x00), [1, 5, 0, 0, 0, 0, 0]);
        assert_eq!(m.boot_override().1, BootEnabled::Disabled);
        // A device the machine lacks (CD/DVD) and an unknown parameter.
        let r = c
            .call(
                rmcp::NETFN_CHASSIS,
                rmcp::CMD_SET_BOOT_OPTIONS,
                &[5, 0x80, 0x14, 0, 0, 0],
            )
            .unwrap();
        assert_eq!(r.completion, 0xcc);
        let r = c
            .call(rmcp::NETFN_CHASSIS, rmcp::CMD_SET_BOOT_OPTIONS, &[0x61, 0])
            .unwrap();
        assert_eq!(r.completion, 0x80);

        // Get Device ID, an unknown command, a short request.
        let r = c.call(rmcp::NETFN_APP, 0x01, &[]).unwrap();
        assert_eq!((r.completion, r.data[4]), (0, 0x02));
        let r = c.call(0x2c, 0x00, &[0x00]).unwrap();
        assert_eq!(r.completion, 0xc1);
        let r = c
            .call(rmcp::NETFN_CHASSIS, rmcp::CMD_CHASSIS_CONTROL, &[])
            .unwrap();
        assert_eq!(r.completion, 0xc7);

        // Soft off, then close: the session is gone.
        let r = c
            .call(rmcp::NETFN_CHASSIS, rmcp::CMD_CHASSIS_CONTROL, &[5])
            .unwrap();
        assert_eq!(r.completion, 0);
        assert_eq!(m.power_state(), PowerState::Off);
        assert_eq!(bmc.session_count(), 1);
        let sid = c.bmc_sid.to_le_bytes();
        let r = c
            .call(rmcp::NETFN_APP, rmcp::CMD_CLOSE_SESSION, &sid)
            .unwrap();
        assert_eq!(r.completion, 0);
        assert_eq!(bmc.session_count(), 0);
        let (pkt, _) = c.packet(rmcp::NETFN_CHASSIS, rmcp::CMD_GET_CHASSIS_STATUS, &[]);
        assert!(matches!(c.send(&pkt), Err(Ignored::UnknownSession(_))));
    }
}

#[tokio::test]
async fn credentials_and_suites_are_refused_with_the_real_status_codes() {
    let m = machine();
    let bmc = IpmiBmc::new(Arc::clone(&m));
    let now = Instant::now();
    // Wrong user: RAKP 2 "unauthorized name".
    let e = open_with(&bmc, 3, "root", PASSWORD, 0x14, false, now).err();
    assert_eq!(e, Some(Failed::Status(2, rmcp::STATUS_UNAUTHORIZED_NAME)));
    // Wrong password: the BMC's RAKP 2 does not verify for the console; a console that goes on anyway
    // gets RAKP 4 "invalid integrity check value".
    for suite in [1, 3, 17] {
        let e = open_with(&bmc, suite, USER, "nope", 0x14, false, now).err();
        assert_eq!(e, Some(Failed::Rakp2Code), "suite {suite}");
        let e = open_with(&bmc, suite, USER, "nope", 0x14, true, now).err();
        assert_eq!(e, Some(Failed::Status(4, rmcp::STATUS_INVALID_INTEGRITY)));
    }
    // The wrong_password fault refuses even the right password, in every suite.
    m.set_faults(Faults {
        wrong_password: true,
        ..Faults::default()
    });
    for suite in rmcp::SUPPORTED_SUITES {
        let e = open_with(&bmc, suite, USER, PASSWORD, 0x14, false, now).err();
        assert_eq!(e, Some(Failed::Status(4, rmcp::STATUS_INVALID_INTEGRITY)));
    }
    m.set_faults(Faults::default());
    // Failed handshakes leave nothing behind.
    assert_eq!(bmc.session_count(), 0);
    // Role OEM (5): invalid role.
    let e = open_with(&bmc, 3, USER, PASSWORD, 0x15, false, now).err();
    assert_eq!(e, Some(Failed::Status(2, 0x09)));

    // Suites outside 0-3 / 17: the algorithm at fault.
    let propose = |algs: [u8; 3]| {
        let mut req = rmcp::open_session_request(1, 4, 99, &CipherSuite::from_id(3).unwrap());
        req[12] = algs[0];
        req[20] = algs[1];
        req[28] = algs[2];
        let p = ask(
            &bmc,
            &rmcp::encode_v20(
                rmcp::PAYLOAD_OPEN_SESSION_REQUEST,
                0,
                0,
                &req,
                &none(),
                [0; 16],
            ),
            now,
        )
        .unwrap();
        let o = rmcp::parse_open_session_response(&p.payload).unwrap();
        assert_eq!(o.console_sid, 99);
        o.status
    };
    assert_eq!(propose([2, 2, 1]), 0x04); // suite 7: RAKP-HMAC-MD5
    assert_eq!(propose([1, 3, 0]), 0x05); // MD5-128 integrity
    assert_eq!(propose([1, 1, 2]), 0x10); // xRC4-128
    assert_eq!(propose([3, 1, 1]), 0x11); // no such suite
    assert_eq!(bmc.session_count(), 0);
}

#[tokio::test]
async fn privilege_is_enforced() {
    let m = machine();
    let bmc = IpmiBmc::new(Arc::clone(&m));
    // A session starts at USER: reads work, chassis control does not until raised.
    let mut c = open_with(&bmc, 3, USER, PASSWORD, 0x14, false, Instant::now()).unwrap();
    assert!(!c.power_on());
    let r = c
        .call(rmcp::NETFN_CHASSIS, rmcp::CMD_CHASSIS_CONTROL, &[1])
        .unwrap();
    assert_eq!(r.completion, 0xd4);
    assert_eq!(m.power_state(), PowerState::Off);
    let r = c
        .call(rmcp::NETFN_APP, rmcp::CMD_SET_SESSION_PRIVILEGE, &[3])
        .unwrap();
    assert_eq!(r.completion, 0);
    let r = c
        .call(rmcp::NETFN_CHASSIS, rmcp::CMD_CHASSIS_CONTROL, &[1])
        .unwrap();
    assert_eq!(r.completion, 0);
    // A session that asked for USER in RAKP 1 cannot be raised.
    let mut u = open_with(&bmc, 3, USER, PASSWORD, 0x12, false, Instant::now()).unwrap();
    let r = u
        .call(rmcp::NETFN_APP, rmcp::CMD_SET_SESSION_PRIVILEGE, &[4])
        .unwrap();
    assert_eq!(r.completion, 0x81);
    let r = u
        .call(
            rmcp::NETFN_CHASSIS,
            rmcp::CMD_SET_BOOT_OPTIONS,
            &[5, 0x80, 4, 0, 0, 0],
        )
        .unwrap();
    assert_eq!(r.completion, 0xd4);
    // Closing another session needs ADMINISTRATOR.
    let r = u
        .call(
            rmcp::NETFN_APP,
            rmcp::CMD_CLOSE_SESSION,
            &c.bmc_sid.to_le_bytes(),
        )
        .unwrap();
    assert_eq!(r.completion, 0x87);
    let r = c
        .call(rmcp::NETFN_APP, rmcp::CMD_SET_SESSION_PRIVILEGE, &[4])
        .unwrap();
    assert_eq!(r.completion, 0);
    let r = c
        .call(
            rmcp::NETFN_APP,
            rmcp::CMD_CLOSE_SESSION,
            &u.bmc_sid.to_le_bytes(),
        )
        .unwrap();
    assert_eq!(r.completion, 0);
    assert_eq!(bmc.session_count(), 1);
}

#[tokio::test]
async fn the_session_table_is_bounded_and_idle_sessions_expire() {
    let bmc = IpmiBmc::new(machine());
    let t0 = Instant::now();
    let first = open_with(&bmc, 17, USER, PASSWORD, 0x14, false, t0).unwrap();
    for i in 1..100u64 {
        open_with(
            &bmc,
            3,
            USER,
            PASSWORD,
            0x14,
            false,
            t0 + Duration::from_millis(i),
        )
        .unwrap();
    }
    assert_eq!(bmc.session_count(), MAX_SESSIONS);
    // The least recently used (the first) was evicted.
    let mut first = first;
    let (pkt, _) = first.packet(rmcp::NETFN_CHASSIS, rmcp::CMD_GET_CHASSIS_STATUS, &[]);
    assert!(matches!(first.send(&pkt), Err(Ignored::UnknownSession(_))));
    // A session unused for SESSION_TIMEOUT is gone; one used in time is not.
    let later = t0 + Duration::from_secs(1);
    let mut c = open_with(&bmc, 3, USER, PASSWORD, 0x14, false, later).unwrap();
    c.now = later + SESSION_TIMEOUT - Duration::from_secs(1);
    assert!(!c.power_on());
    c.now += SESSION_TIMEOUT - Duration::from_secs(1);
    assert!(!c.power_on());
    c.now += SESSION_TIMEOUT;
    let (pkt, _) = c.packet(rmcp::NETFN_CHASSIS, rmcp::CMD_GET_CHASSIS_STATUS, &[]);
    assert!(matches!(c.send(&pkt), Err(Ignored::UnknownSession(_))));
    // Opening a session drops every expired one.
    let _ = open_with(&bmc, 3, USER, PASSWORD, 0x14, false, c.now).unwrap();
    assert_eq!(bmc.session_count(), 1);
}

#[tokio::test]
async fn retransmissions_do_not_act_twice_and_sequence_numbers_are_lenient() {
    let m = machine();
    let bmc = IpmiBmc::new(Arc::clone(&m));
    let mut c = open(&bmc, 3);
    // The same Chassis Control (same request sequence number) in a new packet: one boot.
    let (pkt, msg) = c.packet(rmcp::NETFN_CHASSIS, rmcp::CMD_CHASSIS_CONTROL, &[2]);
    assert_eq!(c.send(&pkt).unwrap().completion, 0);
    let again = c.wrap(&msg);
    assert_eq!(c.send(&again).unwrap().completion, 0);
    // ipmitool's way: the very same datagram again.
    assert_eq!(c.send(&pkt).unwrap().completion, 0);
    assert_eq!(m.view().counters.boots, 1);
    // A new request (next sequence number) acts.
    let r = c
        .call(rmcp::NETFN_CHASSIS, rmcp::CMD_CHASSIS_CONTROL, &[2])
        .unwrap();
    assert_eq!(r.completion, 0);
    assert_eq!(m.view().counters.boots, 2);
    // Out of order within the window is accepted; far behind is a replay.
    c.seq += 100;
    assert!(c.power_on());
    c.seq -= 40;
    let (pkt, _) = c.packet(rmcp::NETFN_CHASSIS, rmcp::CMD_GET_CHASSIS_STATUS, &[]);
    assert!(matches!(c.send(&pkt), Err(Ignored::Replay(_))));
    c.seq += 30;
    assert!(c.power_on());
}

#[tokio::test]
async fn retransmitted_handshake_messages_get_the_same_answers() {
    let bmc = IpmiBmc::new(machine());
    let now = Instant::now();
    let suite = CipherSuite::from_id(3).unwrap();
    let open = rmcp::encode_v20(
        rmcp::PAYLOAD_OPEN_SESSION_REQUEST,
        0,
        0,
        &rmcp::open_session_request(4, 4, 77, &suite),
        &none(),
        [0; 16],
    );
    let a = bmc.handle(&open, peer(), now).unwrap();
    assert_eq!(bmc.handle(&open, peer(), now).unwrap(), a);
    assert_eq!(bmc.session_count(), 1);
    let bmc_sid = rmcp::parse_open_session_response(&rmcp::decode(&a, &none()).unwrap().payload)
        .unwrap()
        .bmc_sid;
    let r1 = rmcp::encode_v20(
        rmcp::PAYLOAD_RAKP1,
        0,
        0,
        &rmcp::rakp1(4, bmc_sid, &[9; 16], 0x14, USER.as_bytes()),
        &none(),
        [0; 16],
    );
    let a = bmc.handle(&r1, peer(), now).unwrap();
    assert_eq!(bmc.handle(&r1, peer(), now).unwrap(), a, "same challenge");
    // A RAKP 1 with another random number is a new challenge.
    let other = rmcp::encode_v20(
        rmcp::PAYLOAD_RAKP1,
        0,
        0,
        &rmcp::rakp1(4, bmc_sid, &[8; 16], 0x14, USER.as_bytes()),
        &none(),
        [0; 16],
    );
    assert_ne!(bmc.handle(&other, peer(), now).unwrap(), a);
}

#[tokio::test]
async fn faults_change_answers() {
    let m = machine();
    let bmc = IpmiBmc::new(Arc::clone(&m));
    let mut c = open(&bmc, 17);
    m.set_faults(Faults {
        flapping: true,
        fail_power: true,
        ..Faults::default()
    });
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r = c
            .call(rmcp::NETFN_CHASSIS, rmcp::CMD_GET_CHASSIS_STATUS, &[])
            .unwrap();
        seen.push((r.completion, r.data.first().map(|b| b & 1)));
    }
    // Off really, so the lie is "on".
    assert_eq!(
        seen,
        [(0xff, None), (0, Some(1)), (0xff, None), (0, Some(1))]
    );
    let r = c
        .call(rmcp::NETFN_CHASSIS, rmcp::CMD_CHASSIS_CONTROL, &[1])
        .unwrap();
    assert_eq!(r.completion, 0xff);
    assert_eq!(m.power_state(), PowerState::Off);
    m.set_faults(Faults::default());
    assert!(!c.power_on());
    assert_eq!(m.view().counters.queries, 5);
}

#[tokio::test]
async fn sessionless_discovery_and_presence_ping() {
    let bmc = IpmiBmc::new(machine());
    let now = Instant::now();
    // Get Channel Authentication Capabilities, IPMI 1.5 framing (how consoles start).
    let out = bmc
        .handle(&rmcp::channel_auth_caps_request(3, 4), peer(), now)
        .unwrap();
    assert_eq!(out[4], 0x00, "answered in IPMI 1.5 framing");
    let p = rmcp::decode(&out, &none()).unwrap();
    let r = rmcp::parse_ipmi_response(&p.payload).unwrap();
    assert_eq!((r.completion, r.rq_seq), (0, 3));
    assert_eq!(r.data, [CHANNEL, 0x80, 0x04, 0x02, 0, 0, 0, 0]);
    // Get Channel Cipher Suites, IPMI 2.0 framing: 5 records of 5 bytes over two list indexes.
    let mut records = Vec::new();
    for index in 0..3u8 {
        let msg = rmcp::ipmi_request(rmcp::NETFN_APP, 0x54, 1, &[0x0e, 0x00, 0x80 | index]);
        let pkt = rmcp::encode_v20(rmcp::PAYLOAD_IPMI, 0, 0, &msg, &none(), [0; 16]);
        let out = bmc.handle(&pkt, peer(), now).unwrap();
        assert_eq!(out[4], 0x06, "answered in IPMI 2.0 framing");
        let r = rmcp::parse_ipmi_response(&rmcp::decode(&out, &none()).unwrap().payload).unwrap();
        assert_eq!((r.completion, r.data[0]), (0, CHANNEL));
        records.extend_from_slice(&r.data[1..]);
    }
    assert_eq!(records.len(), 25);
    assert_eq!(&records[20..], &[0xc0, 17, 0x03, 0x44, 0x81]);
    // Anything else needs a session.
    let msg = rmcp::ipmi_request(rmcp::NETFN_CHASSIS, rmcp::CMD_CHASSIS_CONTROL, 1, &[1]);
    assert!(matches!(
        bmc.handle(&rmcp::encode_v15(&msg), peer(), now),
        Err(Ignored::NeedsSession { .. })
    ));
    // RMCP presence ping (ASF) → pong with the same tag, IPMI supported.
    let ping = [
        0x06, 0x00, 0xff, 0x06, 0x00, 0x00, 0x11, 0xbe, 0x80, 0x2a, 0x00, 0x00,
    ];
    let pong = bmc.handle(&ping, peer(), now).unwrap();
    assert_eq!(pong.len(), 28);
    assert_eq!((pong[8], pong[9], pong[20]), (0x40, 0x2a, 0x81));
}

#[tokio::test]
async fn garbage_and_mutations_never_panic_or_break_the_bmc() {
    let m = machine();
    let bmc = IpmiBmc::new(Arc::clone(&m));
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    let now = Instant::now();
    // Valid datagrams of every kind, to mutate.
    let mut c = open(&bmc, 17);
    let mut samples = vec![
        rmcp::channel_auth_caps_request(0, 4),
        rmcp::encode_v20(
            rmcp::PAYLOAD_OPEN_SESSION_REQUEST,
            0,
            0,
            &rmcp::open_session_request(1, 4, 5, &CipherSuite::from_id(3).unwrap()),
            &none(),
            [0; 16],
        ),
        rmcp::encode_v20(
            rmcp::PAYLOAD_RAKP1,
            0,
            0,
            &rmcp::rakp1(1, c.bmc_sid, &[1; 16], 0x14, b"admin"),
            &none(),
            [0; 16],
        ),
        rmcp::encode_v20(
            rmcp::PAYLOAD_RAKP3,
            0,
            0,
            &rmcp::rakp3(1, 0, c.bmc_sid, &[2; 32]),
            &none(),
            [0; 16],
        ),
    ];
    samples.push(
        c.packet(rmcp::NETFN_CHASSIS, rmcp::CMD_CHASSIS_CONTROL, &[2])
            .0,
    );
    for _ in 0..30_000 {
        let mut d = if rng.gen_bool(0.3) {
            let len = rng.gen_range(0..120);
            let mut d: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            if len > 5 && rng.gen_bool(0.8) {
                d[..4].copy_from_slice(&[0x06, 0x00, 0xff, 0x07]);
                d[4] = if rng.gen_bool(0.7) { 0x06 } else { 0x00 };
            }
            d
        } else {
            samples[rng.gen_range(0..samples.len())].clone()
        };
        for _ in 0..rng.gen_range(1..4) {
            if d.is_empty() {
                break;
            }
            let i = rng.gen_range(0..d.len());
            match rng.gen_range(0..3) {
                0 => d[i] = rng.gen(),
                1 => d.truncate(i),
                _ => d.insert(i, rng.gen()),
            }
        }
        let _ = bmc.handle(&d, peer(), now);
    }
    let _ = bmc.handle(&vec![0u8; 5000], peer(), now);
    assert!(bmc.session_count() <= MAX_SESSIONS);
    // Still serving: a fresh session works (the old one may have been closed or evicted by the noise).
    let mut c = open(&bmc, 3);
    let _ = c.power_on();
}
