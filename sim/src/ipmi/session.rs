//! The BMC's RMCP+ sessions: the bounded table, the handshake (Open Session, RAKP 1-4) and the in-session
//! path (integrity, decryption, sequence numbers, duplicates, Set Session Privilege Level, Close Session).

use super::command::{
    CC_INVALID_DATA, CC_INVALID_SESSION_ID, CC_LENGTH, CC_PRIVILEGE_EXCEEDS_LIMIT,
};
use super::{Ignored, IpmiBmc, DUPLICATE_WINDOW, MAX_SESSIONS, SESSION_TIMEOUT};
use crate::machine::lock;
use ingot_rmcp::{self as rmcp, CipherSuite, Rakp, SessionKeys};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

/// Privilege levels (IPMI 2.0 table 22-26).
pub(super) const USER: u8 = 2;
/// OPERATOR: needed for chassis control and boot options.
pub(super) const OPERATOR: u8 = 3;
/// ADMINISTRATOR: the highest this BMC's one user has.
pub(super) const ADMINISTRATOR: u8 = 4;

/// RMCP+ status: invalid session id.
const STATUS_INVALID_SESSION: u8 = 0x02;
/// RMCP+ status: invalid role.
const STATUS_INVALID_ROLE: u8 = 0x09;
/// RMCP+ status: invalid name length.
const STATUS_INVALID_NAME_LENGTH: u8 = 0x0c;
/// RMCP+ status: illegal or unrecognized parameter.
const STATUS_ILLEGAL_PARAMETER: u8 = 0x12;
/// Sequence numbers this far behind the newest accepted are refused as replays (IPMI 2.0 §6.12.13 uses a
/// 32-packet window; duplicates inside it are accepted, as BMCs are lenient).
const REPLAY_WINDOW: u32 = 32;

/// Where a session is in its life.
pub(super) enum Stage {
    /// Open Session answered; waiting for RAKP 1.
    Opened {
        /// The Open Session Request's tag (a retransmitted request gets the same session).
        tag: u8,
    },
    /// RAKP 2 sent; waiting for RAKP 3.
    Challenged {
        /// The console's random number Rm.
        console_rand: [u8; 16],
        /// Ours, Rc.
        bmc_rand: [u8; 16],
        /// The role byte of RAKP 1 (privilege + lookup bit), as it enters the codes.
        role: u8,
        /// The user name of RAKP 1.
        username: Vec<u8>,
    },
    /// Established: IPMI messages flow.
    Active(Box<Active>),
}

/// An established session's state.
pub(super) struct Active {
    /// Integrity and confidentiality keys.
    keys: SessionKeys,
    /// Current privilege level (starts at USER, raised by Set Session Privilege Level).
    pub privilege: u8,
    /// Our last outbound session sequence number.
    seq_out: u32,
    /// The newest inbound sequence number accepted.
    seq_in: u32,
    /// RAKP 3's code and our RAKP 4: a retransmitted RAKP 3 gets the same RAKP 4.
    rakp3_code: Vec<u8>,
    rakp4: Vec<u8>,
    /// The last state-changing request and its response, for duplicates.
    last_change: Option<Replay>,
}

/// A state-changing request already answered.
struct Replay {
    request: Vec<u8>,
    response: Vec<u8>,
    at: Instant,
}

/// One session (or handshake in progress).
pub(super) struct Session {
    /// The console's session id: the id in our packets.
    console_sid: u32,
    /// Where the Open Session Request came from.
    peer: SocketAddr,
    suite: CipherSuite,
    /// The highest privilege the session may reach (from Open Session, then RAKP 1).
    max_privilege: u8,
    last_used: Instant,
    pub stage: Stage,
}

/// The session table, by the BMC's session id.
#[derive(Default)]
pub(super) struct Sessions {
    map: HashMap<u32, Session>,
}

impl Sessions {
    /// Sessions held.
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// Adds `s` under a fresh non-zero id, dropping timed-out sessions and, when the table is still full,
    /// the least recently used one.
    fn insert(&mut self, s: Session, now: Instant) -> u32 {
        self.map
            .retain(|_, x| now.saturating_duration_since(x.last_used) < SESSION_TIMEOUT);
        while self.map.len() >= MAX_SESSIONS {
            let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, x)| x.last_used)
                .map(|(k, _)| *k)
            else {
                break;
            };
            self.map.remove(&oldest);
        }
        // Random ids, as real BMCs use: a stale console cannot guess its way into another session. The
        // table holds at most 64 of 2^32 - 1 ids, so this ends at once; the bound is a formality.
        let mut id = 1;
        for _ in 0..64 {
            id = rand::random::<u32>();
            if id != 0 && !self.map.contains_key(&id) {
                break;
            }
        }
        self.map.insert(id, s);
        id
    }

    /// The live session `sid`; a timed-out one is removed and reported unknown.
    fn live(&mut self, sid: u32, now: Instant) -> Result<&mut Session, Ignored> {
        let expired = match self.map.get(&sid) {
            None => return Err(Ignored::UnknownSession(sid)),
            Some(s) => now.saturating_duration_since(s.last_used) >= SESSION_TIMEOUT,
        };
        if expired {
            self.map.remove(&sid);
            return Err(Ignored::UnknownSession(sid));
        }
        self.map.get_mut(&sid).ok_or(Ignored::UnknownSession(sid))
    }
}

/// A handshake message (payload `payload_type`) outside any session.
fn handshake_packet(payload_type: u8, payload: &[u8]) -> Vec<u8> {
    rmcp::encode_v20(payload_type, 0, 0, payload, &SessionKeys::none(), [0; 16])
}

impl IpmiBmc {
    /// Open Session: picks the cipher suite the console proposes (if supported) and opens a session for it.
    pub(super) fn open_session(
        &self,
        datagram: &[u8],
        peer: SocketAddr,
        now: Instant,
    ) -> Result<Vec<u8>, Ignored> {
        let pkt = rmcp::decode(datagram, &SessionKeys::none())?;
        let reply = |p: Vec<u8>| Ok(handshake_packet(rmcp::PAYLOAD_OPEN_SESSION_RESPONSE, &p));
        let req = match rmcp::parse_open_session_request(&pkt.payload) {
            Ok(r) => r,
            Err(e) => {
                // Answer what can be answered (the tag and the console's id are there), drop the rest.
                let p = &pkt.payload;
                if p.len() < 8 {
                    return Err(e.into());
                }
                let console_sid = u32::from_le_bytes([p[4], p[5], p[6], p[7]]);
                return reply(rmcp::handshake_error(
                    p[0],
                    STATUS_ILLEGAL_PARAMETER,
                    console_sid,
                ));
            }
        };
        let privilege = match req.privilege {
            0 => ADMINISTRATOR,
            p @ 1..=4 => p,
            _ => {
                return reply(rmcp::handshake_error(
                    req.tag,
                    STATUS_INVALID_ROLE,
                    req.console_sid,
                ))
            }
        };
        let suite = match CipherSuite::from_algorithms(req.algorithms) {
            Ok(s) => s,
            Err(status) => return reply(rmcp::handshake_error(req.tag, status, req.console_sid)),
        };
        let mut sessions = lock(&self.sessions);
        // A retransmitted request (our answer was lost) gets the session it already has.
        let existing = sessions.map.iter_mut().find(|(_, s)| {
            s.peer == peer
                && s.console_sid == req.console_sid
                && matches!(s.stage, Stage::Opened { tag } if tag == req.tag)
                && s.suite == suite
        });
        let bmc_sid = match existing {
            Some((id, s)) => {
                s.last_used = now;
                *id
            }
            None => sessions.insert(
                Session {
                    console_sid: req.console_sid,
                    peer,
                    suite,
                    max_privilege: privilege,
                    last_used: now,
                    stage: Stage::Opened { tag: req.tag },
                },
                now,
            ),
        };
        reply(rmcp::open_session_response(
            req.tag,
            privilege,
            req.console_sid,
            bmc_sid,
            &suite,
        ))
    }

    /// RAKP 1 → RAKP 2: checks the user and role, proves we know the user's password.
    pub(super) fn rakp1(&self, datagram: &[u8], now: Instant) -> Result<Vec<u8>, Ignored> {
        let pkt = rmcp::decode(datagram, &SessionKeys::none())?;
        let r = rmcp::parse_rakp1(&pkt.payload)?;
        let reply = |p: Vec<u8>| Ok(handshake_packet(rmcp::PAYLOAD_RAKP2, &p));
        let mut sessions = lock(&self.sessions);
        let s = match sessions.live(r.bmc_sid, now) {
            Ok(s) => s,
            Err(_) => {
                return reply(rmcp::handshake_error(r.tag, STATUS_INVALID_SESSION, 0));
            }
        };
        if matches!(s.stage, Stage::Active(_)) {
            return Err(Ignored::Handshake("RAKP 1 for an established session"));
        }
        let console_sid = s.console_sid;
        let info = self.machine.info();
        let privilege = r.role & 0x0f;
        let status = if r.username.len() > 16 {
            Some(STATUS_INVALID_NAME_LENGTH)
        } else if !(1..=ADMINISTRATOR).contains(&privilege) || privilege > s.max_privilege {
            Some(STATUS_INVALID_ROLE)
        } else if r.username != info.username.as_bytes() {
            Some(rmcp::STATUS_UNAUTHORIZED_NAME)
        } else {
            None
        };
        if let Some(status) = status {
            sessions.map.remove(&r.bmc_sid);
            return reply(rmcp::handshake_error(r.tag, status, console_sid));
        }
        // A retransmitted RAKP 1 (our RAKP 2 was late or lost) gets the same challenge: a new random number
        // would invalidate the RAKP 3 the console computes from the first answer.
        let bmc_rand = match &s.stage {
            Stage::Challenged {
                console_rand,
                bmc_rand,
                role,
                username,
            } if *console_rand == r.console_rand && *role == r.role && *username == r.username => {
                *bmc_rand
            }
            _ => rand::random(),
        };
        let code = s
            .suite
            .auth
            .map(|h| {
                Rakp {
                    console_sid,
                    bmc_sid: r.bmc_sid,
                    console_rand: r.console_rand,
                    bmc_rand,
                    bmc_guid: self.guid,
                    role: r.role,
                    username: &r.username,
                }
                .rakp2_code(h, info.password.as_bytes())
            })
            .unwrap_or_default();
        s.max_privilege = privilege;
        s.last_used = now;
        s.stage = Stage::Challenged {
            console_rand: r.console_rand,
            bmc_rand,
            role: r.role,
            username: r.username,
        };
        reply(rmcp::rakp2(
            r.tag,
            console_sid,
            &bmc_rand,
            &self.guid,
            &code,
        ))
    }

    /// RAKP 3 → RAKP 4: checks the console's proof of the password, derives the session keys.
    pub(super) fn rakp3(&self, datagram: &[u8], now: Instant) -> Result<Vec<u8>, Ignored> {
        let pkt = rmcp::decode(datagram, &SessionKeys::none())?;
        let r = rmcp::parse_rakp3(&pkt.payload)?;
        let reply = |p: Vec<u8>| Ok(handshake_packet(rmcp::PAYLOAD_RAKP4, &p));
        let wrong_password = self.machine.faults().wrong_password;
        let mut sessions = lock(&self.sessions);
        let s = match sessions.live(r.bmc_sid, now) {
            Ok(s) => s,
            Err(_) => return reply(rmcp::handshake_error(r.tag, STATUS_INVALID_SESSION, 0)),
        };
        if r.status != 0 {
            // The console gives up (e.g. our RAKP 2 did not verify: it has another password).
            sessions.map.remove(&r.bmc_sid);
            return Err(Ignored::Handshake("the console abandoned the handshake"));
        }
        let (console_rand, bmc_rand, role, username) = match &s.stage {
            Stage::Challenged {
                console_rand,
                bmc_rand,
                role,
                username,
            } => (*console_rand, *bmc_rand, *role, username.clone()),
            Stage::Active(a) if a.rakp3_code == r.code => {
                // A retransmission: our RAKP 4 was lost.
                let again = a.rakp4.clone();
                s.last_used = now;
                return reply(again);
            }
            _ => return Err(Ignored::Handshake("RAKP 3 out of order")),
        };
        let console_sid = s.console_sid;
        let suite = s.suite;
        let password = self.machine.info().password.as_bytes();
        let rakp = Rakp {
            console_sid,
            bmc_sid: r.bmc_sid,
            console_rand,
            bmc_rand,
            bmc_guid: self.guid,
            role,
            username: &username,
        };
        let proven = match suite.auth {
            None => true,
            Some(h) => rmcp::ct_eq(&rakp.rakp3_code(h, password), &r.code),
        };
        if !proven || wrong_password {
            sessions.map.remove(&r.bmc_sid);
            return reply(rmcp::handshake_error(
                r.tag,
                rmcp::STATUS_INVALID_INTEGRITY,
                console_sid,
            ));
        }
        let sik = suite
            .auth
            .map(|h| rakp.sik(h, password))
            .unwrap_or_default();
        let icv = suite
            .auth
            .map(|h| rakp.rakp4_icv(h, &sik, suite.rakp4_icv_len()))
            .unwrap_or_default();
        let payload = rmcp::rakp4(r.tag, console_sid, &icv);
        s.last_used = now;
        s.stage = Stage::Active(Box::new(Active {
            keys: SessionKeys::derive(suite, &sik),
            privilege: (role & 0x0f).min(USER),
            seq_out: 0,
            seq_in: 0,
            rakp3_code: r.code,
            rakp4: payload.clone(),
            last_change: None,
        }));
        reply(payload)
    }

    /// A datagram of established session `sid`: verified and decrypted with its keys, then the command.
    pub(super) fn in_session(
        &self,
        datagram: &[u8],
        sid: u32,
        now: Instant,
    ) -> Result<Vec<u8>, Ignored> {
        let mut sessions = lock(&self.sessions);
        let (console_sid, max_privilege, privilege, pkt, req) = {
            let s = sessions.live(sid, now)?;
            let Stage::Active(a) = &mut s.stage else {
                return Err(Ignored::Handshake(
                    "IPMI message before the handshake completed",
                ));
            };
            let pkt = rmcp::decode(datagram, &a.keys)?;
            if pkt.payload_type != rmcp::PAYLOAD_IPMI {
                return Err(Ignored::Payload(pkt.payload_type));
            }
            let behind = a.seq_in.wrapping_sub(pkt.seq);
            if a.seq_in != 0 && behind > REPLAY_WINDOW && behind < u32::MAX / 2 {
                return Err(Ignored::Replay(pkt.seq));
            }
            if pkt.seq.wrapping_sub(a.seq_in) < u32::MAX / 2 {
                a.seq_in = pkt.seq;
            }
            let req = rmcp::parse_ipmi_request(&pkt.payload)?;
            s.last_used = now;
            (s.console_sid, s.max_privilege, a.privilege, pkt, req)
        };

        // Commands on the session table first (they need the table, not the session).
        let mut close = None;
        let mut new_privilege = None;
        let table_reply = match (req.netfn, req.cmd) {
            (rmcp::NETFN_APP, rmcp::CMD_SET_SESSION_PRIVILEGE) => {
                Some(match req.data.first().map(|b| b & 0x0f) {
                    None => (CC_LENGTH, vec![]),
                    Some(0) => (0, vec![privilege]),
                    Some(p @ 1..=4) if p <= max_privilege => {
                        new_privilege = Some(p);
                        (0, vec![p])
                    }
                    // The requested level exceeds what the user may have.
                    Some(1..=4) => (CC_PRIVILEGE_EXCEEDS_LIMIT, vec![]),
                    Some(_) => (CC_INVALID_DATA, vec![]),
                })
            }
            (rmcp::NETFN_APP, rmcp::CMD_CLOSE_SESSION) => {
                let target = req
                    .data
                    .get(..4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                let cc = match target {
                    None => CC_LENGTH,
                    Some(t) if t == sid => {
                        close = Some(t);
                        0
                    }
                    // Another session: an administrator may close it.
                    Some(t)
                        if t != 0
                            && privilege >= ADMINISTRATOR
                            && sessions.map.contains_key(&t) =>
                    {
                        close = Some(t);
                        0
                    }
                    Some(_) => CC_INVALID_SESSION_ID,
                };
                Some((cc, vec![]))
            }
            _ => None,
        };

        let s = sessions.live(sid, now)?;
        let Stage::Active(a) = &mut s.stage else {
            return Err(Ignored::Handshake("session changed stage"));
        };
        if let Some(p) = new_privilege {
            a.privilege = p;
        }
        let msg = match table_reply {
            Some((cc, data)) => rmcp::ipmi_response(&req, cc, &data),
            None => {
                let duplicate = a.last_change.as_ref().filter(|r| {
                    r.request == pkt.payload
                        && now.saturating_duration_since(r.at) < DUPLICATE_WINDOW
                });
                match duplicate {
                    // A retransmission of the last change (our answer was late or lost): the same
                    // answer, without acting twice.
                    Some(r) => r.response.clone(),
                    None => {
                        let reply = self.command(&req, a.privilege);
                        let msg = rmcp::ipmi_response(&req, reply.cc, &reply.data);
                        if reply.changes_state {
                            a.last_change = Some(Replay {
                                request: pkt.payload.clone(),
                                response: msg.clone(),
                                at: now,
                            });
                        }
                        msg
                    }
                }
            }
        };
        a.seq_out = a.seq_out.wrapping_add(1).max(1);
        let out = rmcp::encode_v20(
            rmcp::PAYLOAD_IPMI,
            console_sid,
            a.seq_out,
            &msg,
            &a.keys,
            rand::random(),
        );
        if let Some(t) = close {
            sessions.map.remove(&t);
        }
        Ok(out)
    }
}
