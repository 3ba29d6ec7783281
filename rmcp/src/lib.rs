//! `ingot-rmcp`: the RMCP / RMCP+ wire format (IPMI 2.0 §13) and the RAKP session crypto, as pure functions
//! with no I/O, no async runtime and no state.
//!
//! Why a crate of its own: the wire format is symmetric. The rack's `ipmi` power driver (`ingot-rack`) is
//! the console side and `ingot-sim`'s simulated BMCs are the BMC side of the same protocol; both use this one
//! codec and this one crypto (packet encoding and decoding, RAKP codes, key derivation, integrity, AES-CBC),
//! so client and simulator cannot drift apart and every byte layout exists once — without the simulator
//! depending on the whole rack controller. The console-side builders and parsers come first, the BMC-side
//! ones (parsing the console's handshake messages and IPMI requests, building Open Session responses,
//! RAKP 2 / RAKP 4 and IPMI responses) after them.
//!
//! Why pure functions: everything here is deterministic and unit-tested byte for byte (see the tests at the
//! bottom), so each side's I/O layer only decides what to send and when. Every decoder checks lengths before
//! it reads and answers a [`DecodeError`] for anything malformed: a hostile or broken peer can make a request
//! fail, never make its reader panic.

use aes::Aes128;
use cbc::cipher::{block_padding::NoPadding, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

/// Payload type of an IPMI message (inside a session or session-less).
pub const PAYLOAD_IPMI: u8 = 0x00;
/// RMCP+ Open Session Request.
pub const PAYLOAD_OPEN_SESSION_REQUEST: u8 = 0x10;
/// RMCP+ Open Session Response.
pub const PAYLOAD_OPEN_SESSION_RESPONSE: u8 = 0x11;
/// RAKP Message 1 (console → BMC).
pub const PAYLOAD_RAKP1: u8 = 0x12;
/// RAKP Message 2 (BMC → console).
pub const PAYLOAD_RAKP2: u8 = 0x13;
/// RAKP Message 3 (console → BMC).
pub const PAYLOAD_RAKP3: u8 = 0x14;
/// RAKP Message 4 (BMC → console).
pub const PAYLOAD_RAKP4: u8 = 0x15;

/// NetFn Chassis (requests; responses are NetFn + 1).
pub const NETFN_CHASSIS: u8 = 0x00;
/// NetFn Application.
pub const NETFN_APP: u8 = 0x06;
/// Chassis: Get Chassis Status.
pub const CMD_GET_CHASSIS_STATUS: u8 = 0x01;
/// Chassis: Chassis Control.
pub const CMD_CHASSIS_CONTROL: u8 = 0x02;
/// Chassis: Set System Boot Options.
pub const CMD_SET_BOOT_OPTIONS: u8 = 0x08;
/// App: Get Channel Authentication Capabilities.
pub const CMD_GET_CHANNEL_AUTH_CAPS: u8 = 0x38;
/// App: Set Session Privilege Level.
pub const CMD_SET_SESSION_PRIVILEGE: u8 = 0x3b;
/// App: Close Session.
pub const CMD_CLOSE_SESSION: u8 = 0x3c;

/// RMCP header: version 1.0, reserved, sequence 0xFF (no RMCP ACK), class IPMI.
const RMCP_HEADER: [u8; 4] = [0x06, 0x00, 0xff, 0x07];
/// IPMI 1.5 session header authentication type "none".
const AUTH_TYPE_NONE: u8 = 0x00;
/// Session header authentication type that marks the IPMI 2.0 / RMCP+ format.
const AUTH_TYPE_RMCP_PLUS: u8 = 0x06;
/// The BMC's IPMB slave address.
const BMC_SA: u8 = 0x20;
/// Software id of a remote console.
const CONSOLE_SWID: u8 = 0x81;
/// The integrity trailer's "next header" byte.
const NEXT_HEADER: u8 = 0x07;
/// Largest datagram we build or accept (IPMI LAN messages are far smaller).
pub const MAX_DATAGRAM: usize = 1024;

/// Why a received datagram was not accepted. The I/O layer ignores such datagrams (a late, foreign or forged
/// packet must not fail a request that a later, valid packet can still answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the named structure needs.
    #[error("datagram too short for {0}")]
    Short(&'static str),
    /// Not an RMCP packet of class IPMI.
    #[error("not an RMCP IPMI datagram")]
    NotIpmi,
    /// A format we do not speak (IPMI 1.5 authentication, OEM payloads, bad lengths).
    #[error("unsupported or malformed format: {0}")]
    Format(&'static str),
    /// The integrity check value (AuthCode) does not verify.
    #[error("integrity check failed")]
    Integrity,
    /// AES-CBC decryption failed (length not a block multiple, bad padding).
    #[error("cannot decrypt payload: {0}")]
    Decrypt(&'static str),
    /// An IPMI message checksum does not add up.
    #[error("IPMI message checksum mismatch")]
    Checksum,
    /// The packet's security flags do not match the session (e.g. plain text inside an encrypted session).
    #[error("security mismatch: {0}")]
    Security(&'static str),
}

/// A hash used by RAKP authentication and message integrity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    /// SHA-1 (RAKP-HMAC-SHA1, HMAC-SHA1-96).
    Sha1,
    /// SHA-256 (RAKP-HMAC-SHA256, HMAC-SHA256-128).
    Sha256,
}

impl Hash {
    /// Output length in bytes.
    pub(crate) fn len(self) -> usize {
        match self {
            Hash::Sha1 => 20,
            Hash::Sha256 => 32,
        }
    }

    /// HMAC of the concatenation of `parts` under `key`.
    pub fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        match self {
            Hash::Sha1 => {
                let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key)
                    .expect("HMAC accepts keys of any length");
                for p in parts {
                    mac.update(p);
                }
                mac.finalize().into_bytes().to_vec()
            }
            Hash::Sha256 => {
                let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
                    .expect("HMAC accepts keys of any length");
                for p in parts {
                    mac.update(p);
                }
                mac.finalize().into_bytes().to_vec()
            }
        }
    }
}

/// The algorithms of an RMCP+ cipher suite (IPMI 2.0 table 22-20), for the suites this client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CipherSuite {
    /// The suite id (0, 1, 2, 3, 17).
    pub id: u8,
    /// RAKP authentication hash; `None` is RAKP-none.
    pub auth: Option<Hash>,
    /// Integrity hash (HMAC-SHA1-96 or HMAC-SHA256-128); `None`: packets are not authenticated.
    pub integrity: Option<Hash>,
    /// AES-CBC-128 confidentiality.
    pub aes: bool,
}

impl CipherSuite {
    /// The suite for `id`, if this client speaks it.
    pub fn from_id(id: u8) -> Option<CipherSuite> {
        let (auth, integrity, aes) = match id {
            0 => (None, None, false),
            1 => (Some(Hash::Sha1), None, false),
            2 => (Some(Hash::Sha1), Some(Hash::Sha1), false),
            3 => (Some(Hash::Sha1), Some(Hash::Sha1), true),
            17 => (Some(Hash::Sha256), Some(Hash::Sha256), true),
            _ => return None,
        };
        Some(CipherSuite {
            id,
            auth,
            integrity,
            aes,
        })
    }

    /// Authentication algorithm number for Open Session (0 none, 1 RAKP-HMAC-SHA1, 3 RAKP-HMAC-SHA256).
    pub fn auth_algorithm(&self) -> u8 {
        match self.auth {
            None => 0,
            Some(Hash::Sha1) => 1,
            Some(Hash::Sha256) => 3,
        }
    }

    /// Integrity algorithm number (0 none, 1 HMAC-SHA1-96, 4 HMAC-SHA256-128).
    pub fn integrity_algorithm(&self) -> u8 {
        match self.integrity {
            None => 0,
            Some(Hash::Sha1) => 1,
            Some(Hash::Sha256) => 4,
        }
    }

    /// Confidentiality algorithm number (0 none, 1 AES-CBC-128).
    pub fn confidentiality_algorithm(&self) -> u8 {
        u8::from(self.aes)
    }

    /// Length of the AuthCode trailer of authenticated packets (12 for SHA1-96, 16 for SHA256-128).
    pub fn integrity_len(&self) -> usize {
        match self.integrity {
            None => 0,
            Some(Hash::Sha1) => 12,
            Some(Hash::Sha256) => 16,
        }
    }

    /// Length of the key exchange authentication codes of RAKP 2 and 3 (the full HMAC).
    pub fn rakp_code_len(&self) -> usize {
        self.auth.map_or(0, Hash::len)
    }

    /// Length of RAKP 4's integrity check value (HMAC-SHA1-96 / HMAC-SHA256-128).
    pub fn rakp4_icv_len(&self) -> usize {
        match self.auth {
            None => 0,
            Some(Hash::Sha1) => 12,
            Some(Hash::Sha256) => 16,
        }
    }
}

/// The keys of an established session: K1 (integrity) and the first 16 bytes of K2 (AES).
#[derive(Clone)]
pub struct SessionKeys {
    /// The negotiated suite.
    pub suite: CipherSuite,
    /// K1 = HMAC_SIK(20 × 0x01): the integrity key.
    k1: Vec<u8>,
    /// K2 = HMAC_SIK(20 × 0x02), first 16 bytes: the AES-CBC-128 key.
    aes_key: [u8; 16],
}

impl std::fmt::Debug for SessionKeys {
    /// Never prints key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeys")
            .field("suite", &self.suite.id)
            .finish_non_exhaustive()
    }
}

impl SessionKeys {
    /// Derives K1 and K2 from the session integrity key (IPMI 2.0 §13.32).
    pub fn derive(suite: CipherSuite, sik: &[u8]) -> SessionKeys {
        let Some(h) = suite.auth else {
            return SessionKeys {
                suite,
                k1: Vec::new(),
                aes_key: [0; 16],
            };
        };
        // The constants are 20 bytes whatever the hash (IPMI 2.0 §13.32; ipmitool and OpenBMC agree).
        let k1 = h.hmac(sik, &[&[0x01; 20]]);
        let k2 = h.hmac(sik, &[&[0x02; 20]]);
        let mut aes_key = [0u8; 16];
        aes_key.copy_from_slice(&k2[..16]);
        SessionKeys { suite, k1, aes_key }
    }

    /// Keys for the session-less messages of the handshake: no integrity, no encryption.
    pub fn none() -> SessionKeys {
        SessionKeys {
            suite: CipherSuite {
                id: 0,
                auth: None,
                integrity: None,
                aes: false,
            },
            k1: Vec::new(),
            aes_key: [0; 16],
        }
    }

    /// The integrity HMAC over `data`, truncated to the suite's AuthCode length.
    fn auth_code(&self, data: &[u8]) -> Vec<u8> {
        match self.suite.integrity {
            None => Vec::new(),
            Some(h) => {
                let mut mac = h.hmac(&self.k1, &[data]);
                mac.truncate(self.suite.integrity_len());
                mac
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn k1(&self) -> &[u8] {
        &self.k1
    }

    #[cfg(test)]
    pub(crate) fn aes_key(&self) -> &[u8; 16] {
        &self.aes_key
    }
}

/// The values both sides feed into RAKP (IPMI 2.0 §13.31): the two session ids, the two random numbers,
/// the BMC's GUID, the requested role and the user name.
#[derive(Debug, Clone)]
pub struct Rakp<'a> {
    /// The remote console's (our) session id, SIDm.
    pub console_sid: u32,
    /// The managed system's (BMC's) session id, SIDc.
    pub bmc_sid: u32,
    /// Our random number, Rm.
    pub console_rand: [u8; 16],
    /// The BMC's random number, Rc.
    pub bmc_rand: [u8; 16],
    /// The BMC's GUID, GUIDc.
    pub bmc_guid: [u8; 16],
    /// Requested maximum privilege + name-only lookup bit, as sent in RAKP 1.
    pub role: u8,
    /// User name (at most 16 bytes).
    pub username: &'a [u8],
}

impl Rakp<'_> {
    /// The user name length byte (callers enforce ≤ 16 bytes).
    fn ulen(&self) -> [u8; 1] {
        [self.username.len().min(255) as u8]
    }

    /// RAKP 2 key exchange authentication code: HMAC_Kuid(SIDm, SIDc, Rm, Rc, GUIDc, ROLEm, ULENm, UNAMEm).
    pub fn rakp2_code(&self, h: Hash, kuid: &[u8]) -> Vec<u8> {
        h.hmac(
            kuid,
            &[
                &self.console_sid.to_le_bytes(),
                &self.bmc_sid.to_le_bytes(),
                &self.console_rand,
                &self.bmc_rand,
                &self.bmc_guid,
                &[self.role],
                &self.ulen(),
                self.username,
            ],
        )
    }

    /// RAKP 3 key exchange authentication code: HMAC_Kuid(Rc, SIDm, ROLEm, ULENm, UNAMEm).
    pub fn rakp3_code(&self, h: Hash, kuid: &[u8]) -> Vec<u8> {
        h.hmac(
            kuid,
            &[
                &self.bmc_rand,
                &self.console_sid.to_le_bytes(),
                &[self.role],
                &self.ulen(),
                self.username,
            ],
        )
    }

    /// Session integrity key: SIK = HMAC_Kg(Rm, Rc, ROLEm, ULENm, UNAMEm), Kg = Kuid without a BMC key.
    pub fn sik(&self, h: Hash, kg: &[u8]) -> Vec<u8> {
        h.hmac(
            kg,
            &[
                &self.console_rand,
                &self.bmc_rand,
                &[self.role],
                &self.ulen(),
                self.username,
            ],
        )
    }

    /// RAKP 4 integrity check value: HMAC_SIK(Rm, SIDc, GUIDc), truncated to `len`.
    pub fn rakp4_icv(&self, h: Hash, sik: &[u8], len: usize) -> Vec<u8> {
        let mut v = h.hmac(
            sik,
            &[
                &self.console_rand,
                &self.bmc_sid.to_le_bytes(),
                &self.bmc_guid,
            ],
        );
        v.truncate(len);
        v
    }
}

/// Compares two byte strings in time independent of where they differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Two's complement checksum: the byte that makes the sum of `bytes` plus itself zero.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// An IPMI request message for the BMC (LUN 0) from a remote console.
pub fn ipmi_request(netfn: u8, cmd: u8, rq_seq: u8, data: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(7 + data.len());
    m.push(BMC_SA);
    m.push(netfn << 2);
    m.push(checksum(&m[0..2]));
    m.push(CONSOLE_SWID);
    m.push((rq_seq & 0x3f) << 2);
    m.push(cmd);
    m.extend_from_slice(data);
    let c = checksum(&m[3..]);
    m.push(c);
    m
}

/// A decoded IPMI response message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpmiResponse {
    /// Response NetFn (request NetFn + 1).
    pub netfn: u8,
    /// Command.
    pub cmd: u8,
    /// The request sequence number it answers (6 bits).
    pub rq_seq: u8,
    /// Completion code (0 is success).
    pub completion: u8,
    /// Response data after the completion code.
    pub data: Vec<u8>,
}

/// Decodes an IPMI response message, checking both checksums.
pub fn parse_ipmi_response(m: &[u8]) -> Result<IpmiResponse, DecodeError> {
    if m.len() < 8 {
        return Err(DecodeError::Short("an IPMI response message"));
    }
    if checksum(&m[0..2]) != m[2] || checksum(&m[3..m.len() - 1]) != m[m.len() - 1] {
        return Err(DecodeError::Checksum);
    }
    Ok(IpmiResponse {
        netfn: m[1] >> 2,
        rq_seq: m[4] >> 2,
        cmd: m[5],
        completion: m[6],
        data: m[7..m.len() - 1].to_vec(),
    })
}

/// A session-less IPMI 1.5 datagram (authentication type none) carrying `msg`: how Get Channel
/// Authentication Capabilities is sent before any session exists.
pub fn encode_v15(msg: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(14 + msg.len());
    p.extend_from_slice(&RMCP_HEADER);
    p.push(AUTH_TYPE_NONE);
    p.extend_from_slice(&0u32.to_le_bytes()); // session sequence
    p.extend_from_slice(&0u32.to_le_bytes()); // session id
    p.push(msg.len().min(255) as u8);
    p.extend_from_slice(msg);
    p
}

/// The probe the peer harness uses to see whether a BMC answers: Get Channel Authentication Capabilities
/// (channel: this one, IPMI 2.0 data, ADMINISTRATOR), session-less.
pub fn channel_auth_caps_request(rq_seq: u8, privilege: u8) -> Vec<u8> {
    encode_v15(&ipmi_request(
        NETFN_APP,
        CMD_GET_CHANNEL_AUTH_CAPS,
        rq_seq,
        &[0x8e, privilege],
    ))
}

/// AES-CBC-128 with IPMI's confidentiality padding (pad bytes 1, 2, 3 … then the pad length): returns the
/// IV followed by the cipher text.
pub fn aes_cbc_encrypt(key: &[u8; 16], iv: [u8; 16], plain: &[u8]) -> Vec<u8> {
    let pad = 15 - (plain.len() % 16);
    let mut buf = Vec::with_capacity(16 + plain.len() + pad + 1);
    buf.extend_from_slice(plain);
    buf.extend((1..=pad).map(|i| i as u8));
    buf.push(pad as u8);
    let len = buf.len();
    let enc = cbc::Encryptor::<Aes128>::new(key.into(), (&iv).into());
    // `buf` is a whole number of blocks, which is all NoPadding requires.
    let ct = match enc.encrypt_padded_mut::<NoPadding>(&mut buf, len) {
        Ok(ct) => ct.to_vec(),
        Err(_) => Vec::new(),
    };
    let mut out = Vec::with_capacity(16 + ct.len());
    out.extend_from_slice(&iv);
    out.extend_from_slice(&ct);
    out
}

/// Reverses [`aes_cbc_encrypt`]: `data` is IV + cipher text; returns the payload without padding.
pub fn aes_cbc_decrypt(key: &[u8; 16], data: &[u8]) -> Result<Vec<u8>, DecodeError> {
    if data.len() < 32 {
        return Err(DecodeError::Decrypt("shorter than IV plus one block"));
    }
    if !(data.len() - 16).is_multiple_of(16) {
        return Err(DecodeError::Decrypt(
            "cipher text is not a whole number of blocks",
        ));
    }
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&data[..16]);
    let mut buf = data[16..].to_vec();
    let dec = cbc::Decryptor::<Aes128>::new(key.into(), (&iv).into());
    let plain_len = dec
        .decrypt_padded_mut::<NoPadding>(&mut buf)
        .map_err(|_| DecodeError::Decrypt("block decryption failed"))?
        .len();
    buf.truncate(plain_len);
    let pad = usize::from(*buf.last().ok_or(DecodeError::Decrypt("empty"))?);
    if pad > 15 || pad + 1 > buf.len() {
        return Err(DecodeError::Decrypt("bad confidentiality pad length"));
    }
    buf.truncate(buf.len() - pad - 1);
    Ok(buf)
}

/// An IPMI 2.0 datagram: `payload` of `payload_type` for session `sid` with sequence `seq`, encrypted and
/// authenticated as `keys` say (pass [`SessionKeys::none`] for the handshake's session-less messages).
pub fn encode_v20(
    payload_type: u8,
    sid: u32,
    seq: u32,
    payload: &[u8],
    keys: &SessionKeys,
    iv: [u8; 16],
) -> Vec<u8> {
    let body = if keys.suite.aes {
        aes_cbc_encrypt(&keys.aes_key, iv, payload)
    } else {
        payload.to_vec()
    };
    let mut p = Vec::with_capacity(16 + body.len() + 24);
    p.extend_from_slice(&RMCP_HEADER);
    p.push(AUTH_TYPE_RMCP_PLUS);
    let mut pt = payload_type & 0x3f;
    if keys.suite.aes {
        pt |= 0x80;
    }
    if keys.suite.integrity.is_some() {
        pt |= 0x40;
    }
    p.push(pt);
    p.extend_from_slice(&sid.to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend_from_slice(&(body.len().min(u16::MAX as usize) as u16).to_le_bytes());
    p.extend_from_slice(&body);
    if keys.suite.integrity.is_some() {
        // Pad so that everything from the auth type byte through the next header is a multiple of 4.
        let mut pad = 0u8;
        while (p.len() - 4 + 2) % 4 != 0 {
            p.push(0xff);
            pad += 1;
        }
        p.push(pad);
        p.push(NEXT_HEADER);
        let code = keys.auth_code(&p[4..]);
        p.extend_from_slice(&code);
    }
    p
}

/// A decoded datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Payload type (low 6 bits); IPMI 1.5 datagrams are [`PAYLOAD_IPMI`].
    pub payload_type: u8,
    /// Session id in the header (the receiver's id: ours for packets from the BMC).
    pub session_id: u32,
    /// Session sequence number.
    pub seq: u32,
    /// The payload, decrypted.
    pub payload: Vec<u8>,
    /// The packet carried a verified AuthCode.
    pub authenticated: bool,
}

/// Decodes a datagram in either direction (a BMC's answer here, a console's request in `ingot-sim`) under
/// `keys` (use [`SessionKeys::none`] outside a session): checks the RMCP header, verifies the AuthCode, decrypts. A session with integrity or confidentiality refuses IPMI
/// payloads that lack them.
pub fn decode(buf: &[u8], keys: &SessionKeys) -> Result<Packet, DecodeError> {
    if buf.len() < 5 {
        return Err(DecodeError::Short("an RMCP header"));
    }
    if buf[0] != RMCP_HEADER[0] || buf[3] != RMCP_HEADER[3] {
        return Err(DecodeError::NotIpmi);
    }
    match buf[4] {
        AUTH_TYPE_RMCP_PLUS => decode_v20(buf, keys),
        AUTH_TYPE_NONE => {
            if keys.suite.integrity.is_some() || keys.suite.aes {
                return Err(DecodeError::Security(
                    "IPMI 1.5 packet inside an RMCP+ session",
                ));
            }
            if buf.len() < 14 {
                return Err(DecodeError::Short("an IPMI 1.5 session header"));
            }
            let seq = le32(&buf[5..9]);
            let sid = le32(&buf[9..13]);
            let len = usize::from(buf[13]);
            let payload = buf
                .get(14..14 + len)
                .ok_or(DecodeError::Short("the IPMI 1.5 message"))?;
            Ok(Packet {
                payload_type: PAYLOAD_IPMI,
                session_id: sid,
                seq,
                payload: payload.to_vec(),
                authenticated: false,
            })
        }
        _ => Err(DecodeError::Format("IPMI 1.5 authenticated session")),
    }
}

/// Little-endian u32 from exactly four bytes (callers slice after a length check).
fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

/// The IPMI 2.0 branch of [`decode`].
fn decode_v20(buf: &[u8], keys: &SessionKeys) -> Result<Packet, DecodeError> {
    if buf.len() < 16 {
        return Err(DecodeError::Short("an IPMI 2.0 session header"));
    }
    let pt = buf[5];
    let payload_type = pt & 0x3f;
    let encrypted = pt & 0x80 != 0;
    let authenticated = pt & 0x40 != 0;
    if payload_type == 0x02 {
        return Err(DecodeError::Format("OEM explicit payload"));
    }
    let sid = le32(&buf[6..10]);
    let seq = le32(&buf[10..14]);
    let len = usize::from(u16::from_le_bytes([buf[14], buf[15]]));
    let end = 16 + len;
    if end > buf.len() {
        return Err(DecodeError::Short("the payload length in the header"));
    }
    if authenticated {
        let ilen = keys.suite.integrity_len();
        if keys.suite.integrity.is_none() {
            return Err(DecodeError::Security(
                "authenticated packet outside an integrity session",
            ));
        }
        if buf.len() < end + 2 + ilen {
            return Err(DecodeError::Short("the integrity trailer"));
        }
        let code_at = buf.len() - ilen;
        if !ct_eq(&keys.auth_code(&buf[4..code_at]), &buf[code_at..]) {
            return Err(DecodeError::Integrity);
        }
        if buf[code_at - 1] != NEXT_HEADER {
            return Err(DecodeError::Format("next header is not 0x07"));
        }
        let pad = usize::from(buf[code_at - 2]);
        if end + pad + 2 != code_at {
            return Err(DecodeError::Format("integrity pad length does not match"));
        }
    } else if keys.suite.integrity.is_some() && payload_type == PAYLOAD_IPMI {
        return Err(DecodeError::Security(
            "unauthenticated packet inside an integrity session",
        ));
    }
    let body = &buf[16..end];
    let payload = if encrypted {
        if !keys.suite.aes {
            return Err(DecodeError::Security(
                "encrypted packet outside an AES session",
            ));
        }
        aes_cbc_decrypt(&keys.aes_key, body)?
    } else {
        if keys.suite.aes && payload_type == PAYLOAD_IPMI {
            return Err(DecodeError::Security(
                "plain-text packet inside an encrypted session",
            ));
        }
        body.to_vec()
    };
    Ok(Packet {
        payload_type,
        session_id: sid,
        seq,
        payload,
        authenticated,
    })
}

/// Open Session Request payload: asks for `privilege` and the algorithms of `suite`.
pub fn open_session_request(
    tag: u8,
    privilege: u8,
    console_sid: u32,
    suite: &CipherSuite,
) -> Vec<u8> {
    let mut p = vec![tag, privilege, 0, 0];
    p.extend_from_slice(&console_sid.to_le_bytes());
    for (kind, alg) in [
        (0x00, suite.auth_algorithm()),
        (0x01, suite.integrity_algorithm()),
        (0x02, suite.confidentiality_algorithm()),
    ] {
        p.extend_from_slice(&[kind, 0, 0, 0x08, alg, 0, 0, 0]);
    }
    p
}

/// An Open Session Response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSessionResponse {
    /// Message tag (echoes ours).
    pub tag: u8,
    /// RMCP+ status code (0 is success).
    pub status: u8,
    /// Our session id as the BMC saw it.
    pub console_sid: u32,
    /// The BMC's session id.
    pub bmc_sid: u32,
    /// Chosen authentication, integrity and confidentiality algorithms.
    pub algorithms: [u8; 3],
}

/// Decodes an Open Session Response (an error response may stop after the status).
pub fn parse_open_session_response(p: &[u8]) -> Result<OpenSessionResponse, DecodeError> {
    if p.len() < 2 {
        return Err(DecodeError::Short("an Open Session Response"));
    }
    let (tag, status) = (p[0], p[1]);
    if status != 0 {
        return Ok(OpenSessionResponse {
            tag,
            status,
            console_sid: p.get(4..8).map_or(0, le32),
            bmc_sid: 0,
            algorithms: [0; 3],
        });
    }
    if p.len() < 36 {
        return Err(DecodeError::Short("an Open Session Response"));
    }
    Ok(OpenSessionResponse {
        tag,
        status,
        console_sid: le32(&p[4..8]),
        bmc_sid: le32(&p[8..12]),
        algorithms: [p[16], p[24], p[32]],
    })
}

/// RAKP Message 1 payload.
pub fn rakp1(tag: u8, bmc_sid: u32, console_rand: &[u8; 16], role: u8, username: &[u8]) -> Vec<u8> {
    let mut p = vec![tag, 0, 0, 0];
    p.extend_from_slice(&bmc_sid.to_le_bytes());
    p.extend_from_slice(console_rand);
    p.extend_from_slice(&[role, 0, 0, username.len().min(255) as u8]);
    p.extend_from_slice(username);
    p
}

/// A RAKP Message 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rakp2 {
    /// Message tag.
    pub tag: u8,
    /// RMCP+ status code.
    pub status: u8,
    /// Our session id.
    pub console_sid: u32,
    /// The BMC's random number Rc.
    pub bmc_rand: [u8; 16],
    /// The BMC's GUID.
    pub bmc_guid: [u8; 16],
    /// The key exchange authentication code.
    pub code: Vec<u8>,
}

/// Decodes RAKP 2 whose authentication code is `code_len` bytes (an error RAKP 2 may stop early).
pub fn parse_rakp2(p: &[u8], code_len: usize) -> Result<Rakp2, DecodeError> {
    if p.len() < 2 {
        return Err(DecodeError::Short("a RAKP 2 message"));
    }
    let (tag, status) = (p[0], p[1]);
    if status != 0 {
        return Ok(Rakp2 {
            tag,
            status,
            console_sid: p.get(4..8).map_or(0, le32),
            bmc_rand: [0; 16],
            bmc_guid: [0; 16],
            code: Vec::new(),
        });
    }
    if p.len() < 40 + code_len {
        return Err(DecodeError::Short("a RAKP 2 message"));
    }
    let mut bmc_rand = [0u8; 16];
    bmc_rand.copy_from_slice(&p[8..24]);
    let mut bmc_guid = [0u8; 16];
    bmc_guid.copy_from_slice(&p[24..40]);
    Ok(Rakp2 {
        tag,
        status,
        console_sid: le32(&p[4..8]),
        bmc_rand,
        bmc_guid,
        code: p[40..40 + code_len].to_vec(),
    })
}

/// RAKP Message 3 payload (`status` non-zero tells the BMC we abandon the handshake).
pub fn rakp3(tag: u8, status: u8, bmc_sid: u32, code: &[u8]) -> Vec<u8> {
    let mut p = vec![tag, status, 0, 0];
    p.extend_from_slice(&bmc_sid.to_le_bytes());
    p.extend_from_slice(code);
    p
}

/// A RAKP Message 4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rakp4 {
    /// Message tag.
    pub tag: u8,
    /// RMCP+ status code.
    pub status: u8,
    /// Our session id.
    pub console_sid: u32,
    /// Integrity check value.
    pub icv: Vec<u8>,
}

/// Decodes RAKP 4 whose ICV is `icv_len` bytes.
pub fn parse_rakp4(p: &[u8], icv_len: usize) -> Result<Rakp4, DecodeError> {
    if p.len() < 2 {
        return Err(DecodeError::Short("a RAKP 4 message"));
    }
    let (tag, status) = (p[0], p[1]);
    if status != 0 {
        return Ok(Rakp4 {
            tag,
            status,
            console_sid: p.get(4..8).map_or(0, le32),
            icv: Vec::new(),
        });
    }
    if p.len() < 8 + icv_len {
        return Err(DecodeError::Short("a RAKP 4 message"));
    }
    Ok(Rakp4 {
        tag,
        status,
        console_sid: le32(&p[4..8]),
        icv: p[8..8 + icv_len].to_vec(),
    })
}

// ---- The BMC's side: what `ingot-sim`'s simulated BMCs parse and build. -------------------------------

/// The cipher suites [`CipherSuite::from_id`] knows, in the order a BMC lists them.
pub const SUPPORTED_SUITES: [u8; 5] = [0, 1, 2, 3, 17];

/// RMCP+ status: unauthorized name (RAKP 2: no such user).
pub const STATUS_UNAUTHORIZED_NAME: u8 = 0x0d;
/// RMCP+ status: invalid integrity check value (RAKP 4: the console's key exchange code is wrong).
pub const STATUS_INVALID_INTEGRITY: u8 = 0x0f;

impl CipherSuite {
    /// The supported suite whose (authentication, integrity, confidentiality) algorithm numbers are `algs`,
    /// as proposed in an Open Session Request; otherwise the RMCP+ status code a BMC answers: 0x04 / 0x05 /
    /// 0x10 for an algorithm it does not implement (MD5, MD2, xRC4, OEM), 0x11 for known algorithms that form
    /// no supported suite.
    pub fn from_algorithms(algs: [u8; 3]) -> Result<CipherSuite, u8> {
        if let Some(s) = SUPPORTED_SUITES
            .iter()
            .filter_map(|&id| CipherSuite::from_id(id))
            .find(|s| {
                [
                    s.auth_algorithm(),
                    s.integrity_algorithm(),
                    s.confidentiality_algorithm(),
                ] == algs
            })
        {
            return Ok(s);
        }
        let [auth, integrity, conf] = algs;
        if !matches!(auth, 0 | 1 | 3) {
            Err(0x04)
        } else if !matches!(integrity, 0 | 1 | 4) {
            Err(0x05)
        } else if !matches!(conf, 0 | 1) {
            Err(0x10)
        } else {
            Err(0x11)
        }
    }
}

/// The session header fields a BMC needs before it can pick the keys to [`decode`] a datagram with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// True for the IPMI 2.0 / RMCP+ format, false for an IPMI 1.5 session-less (authentication type none)
    /// datagram.
    pub rmcp_plus: bool,
    /// Payload type (low 6 bits); IPMI 1.5 datagrams are [`PAYLOAD_IPMI`].
    pub payload_type: u8,
    /// The receiver's session id (0: session-less).
    pub session_id: u32,
}

/// Reads the session header of an RMCP IPMI datagram without checking integrity (the session id names the
/// keys that will). IPMI 1.5 datagrams with authentication are refused ([`DecodeError::Format`]).
pub fn peek_header(buf: &[u8]) -> Result<Header, DecodeError> {
    if buf.len() < 5 {
        return Err(DecodeError::Short("an RMCP header"));
    }
    if buf[0] != RMCP_HEADER[0] || buf[3] != RMCP_HEADER[3] {
        return Err(DecodeError::NotIpmi);
    }
    match buf[4] {
        AUTH_TYPE_RMCP_PLUS => {
            if buf.len() < 16 {
                return Err(DecodeError::Short("an IPMI 2.0 session header"));
            }
            Ok(Header {
                rmcp_plus: true,
                payload_type: buf[5] & 0x3f,
                session_id: le32(&buf[6..10]),
            })
        }
        AUTH_TYPE_NONE => {
            if buf.len() < 14 {
                return Err(DecodeError::Short("an IPMI 1.5 session header"));
            }
            Ok(Header {
                rmcp_plus: false,
                payload_type: PAYLOAD_IPMI,
                session_id: le32(&buf[9..13]),
            })
        }
        _ => Err(DecodeError::Format("IPMI 1.5 authenticated session")),
    }
}

/// A decoded IPMI request message, as a BMC receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpmiRequest {
    /// Responder's slave address (the BMC, 0x20).
    pub rs_sa: u8,
    /// NetFn of the request (even).
    pub netfn: u8,
    /// Responder's LUN.
    pub rs_lun: u8,
    /// Requester's address (a remote console's software id, 0x81).
    pub rq_sa: u8,
    /// Request sequence number (6 bits): echoed in the response.
    pub rq_seq: u8,
    /// Requester's LUN.
    pub rq_lun: u8,
    /// Command.
    pub cmd: u8,
    /// Request data.
    pub data: Vec<u8>,
}

/// Decodes an IPMI request message (what [`ipmi_request`] builds), checking both checksums.
pub fn parse_ipmi_request(m: &[u8]) -> Result<IpmiRequest, DecodeError> {
    if m.len() < 7 {
        return Err(DecodeError::Short("an IPMI request message"));
    }
    if checksum(&m[0..2]) != m[2] || checksum(&m[3..m.len() - 1]) != m[m.len() - 1] {
        return Err(DecodeError::Checksum);
    }
    Ok(IpmiRequest {
        rs_sa: m[0],
        netfn: m[1] >> 2,
        rs_lun: m[1] & 0x03,
        rq_sa: m[3],
        rq_seq: m[4] >> 2,
        rq_lun: m[4] & 0x03,
        cmd: m[5],
        data: m[6..m.len() - 1].to_vec(),
    })
}

/// The response message to `req`: the response NetFn (request NetFn + 1), the same command and sequence number, addresses swapped,
/// `completion` then `data`, both checksums.
pub fn ipmi_response(req: &IpmiRequest, completion: u8, data: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(8 + data.len());
    m.push(req.rq_sa);
    m.push((((req.netfn | 1) & 0x3f) << 2) | req.rq_lun);
    m.push(checksum(&m[0..2]));
    m.push(req.rs_sa);
    m.push(((req.rq_seq & 0x3f) << 2) | req.rs_lun);
    m.push(req.cmd);
    m.push(completion);
    m.extend_from_slice(data);
    let c = checksum(&m[3..]);
    m.push(c);
    m
}

/// An Open Session Request, as a BMC receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSessionRequest {
    /// Message tag (echoed in the response).
    pub tag: u8,
    /// Requested maximum privilege (low 4 bits; 0: the highest the user may have).
    pub privilege: u8,
    /// The console's session id.
    pub console_sid: u32,
    /// Proposed authentication, integrity and confidentiality algorithms.
    pub algorithms: [u8; 3],
}

/// Decodes an Open Session Request with its three 8-byte algorithm payloads (what
/// [`open_session_request`] builds). A request whose payloads are missing or out of order is a
/// [`DecodeError::Format`].
pub fn parse_open_session_request(p: &[u8]) -> Result<OpenSessionRequest, DecodeError> {
    if p.len() < 32 {
        return Err(DecodeError::Short("an Open Session Request"));
    }
    let mut algorithms = [0u8; 3];
    for (i, alg) in algorithms.iter_mut().enumerate() {
        let at = 8 + 8 * i;
        if usize::from(p[at]) != i || p[at + 3] != 0x08 {
            return Err(DecodeError::Format(
                "Open Session Request algorithm payloads",
            ));
        }
        *alg = p[at + 4] & 0x3f;
    }
    Ok(OpenSessionRequest {
        tag: p[0],
        privilege: p[1] & 0x0f,
        console_sid: le32(&p[4..8]),
        algorithms,
    })
}

/// A successful Open Session Response: the BMC's session id, the privilege it grants at most and the
/// algorithms of `suite` (what [`parse_open_session_response`] reads).
pub fn open_session_response(
    tag: u8,
    privilege: u8,
    console_sid: u32,
    bmc_sid: u32,
    suite: &CipherSuite,
) -> Vec<u8> {
    let mut p = vec![tag, 0, privilege, 0];
    p.extend_from_slice(&console_sid.to_le_bytes());
    p.extend_from_slice(&bmc_sid.to_le_bytes());
    for (kind, alg) in [
        (0x00, suite.auth_algorithm()),
        (0x01, suite.integrity_algorithm()),
        (0x02, suite.confidentiality_algorithm()),
    ] {
        p.extend_from_slice(&[kind, 0, 0, 0x08, alg, 0, 0, 0]);
    }
    p
}

/// A failed Open Session Response, RAKP 2 or RAKP 4 (they share this layout): tag, RMCP+ `status`, the
/// console's session id.
pub fn handshake_error(tag: u8, status: u8, console_sid: u32) -> Vec<u8> {
    let mut p = vec![tag, status, 0, 0];
    p.extend_from_slice(&console_sid.to_le_bytes());
    p
}

/// A RAKP Message 1, as a BMC receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rakp1 {
    /// Message tag.
    pub tag: u8,
    /// The BMC's session id.
    pub bmc_sid: u32,
    /// The console's random number Rm.
    pub console_rand: [u8; 16],
    /// Requested maximum privilege (low 4 bits) and the name-only lookup bit (0x10).
    pub role: u8,
    /// The user name, as long as the length byte says (a BMC refuses more than 16 bytes).
    pub username: Vec<u8>,
}

/// Decodes RAKP 1 (what [`rakp1`] builds).
pub fn parse_rakp1(p: &[u8]) -> Result<Rakp1, DecodeError> {
    if p.len() < 28 {
        return Err(DecodeError::Short("a RAKP 1 message"));
    }
    let ulen = usize::from(p[27]);
    let username = p
        .get(28..28 + ulen)
        .ok_or(DecodeError::Short("the RAKP 1 user name"))?
        .to_vec();
    let mut console_rand = [0u8; 16];
    console_rand.copy_from_slice(&p[8..24]);
    Ok(Rakp1 {
        tag: p[0],
        bmc_sid: le32(&p[4..8]),
        console_rand,
        role: p[24],
        username,
    })
}

/// A successful RAKP Message 2 (what [`parse_rakp2`] reads): the BMC's random number, its GUID and its key
/// exchange authentication code.
pub fn rakp2(
    tag: u8,
    console_sid: u32,
    bmc_rand: &[u8; 16],
    bmc_guid: &[u8; 16],
    code: &[u8],
) -> Vec<u8> {
    let mut p = vec![tag, 0, 0, 0];
    p.extend_from_slice(&console_sid.to_le_bytes());
    p.extend_from_slice(bmc_rand);
    p.extend_from_slice(bmc_guid);
    p.extend_from_slice(code);
    p
}

/// A RAKP Message 3, as a BMC receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rakp3 {
    /// Message tag.
    pub tag: u8,
    /// RMCP+ status: non-zero when the console abandons the handshake.
    pub status: u8,
    /// The BMC's session id.
    pub bmc_sid: u32,
    /// The console's key exchange authentication code (everything after the header; the BMC checks its
    /// length against the suite).
    pub code: Vec<u8>,
}

/// Decodes RAKP 3 (what [`rakp3`] builds).
pub fn parse_rakp3(p: &[u8]) -> Result<Rakp3, DecodeError> {
    if p.len() < 8 {
        return Err(DecodeError::Short("a RAKP 3 message"));
    }
    Ok(Rakp3 {
        tag: p[0],
        status: p[1],
        bmc_sid: le32(&p[4..8]),
        code: p[8..].to_vec(),
    })
}

/// A successful RAKP Message 4 (what [`parse_rakp4`] reads): the integrity check value.
pub fn rakp4(tag: u8, console_sid: u32, icv: &[u8]) -> Vec<u8> {
    let mut p = vec![tag, 0, 0, 0];
    p.extend_from_slice(&console_sid.to_le_bytes());
    p.extend_from_slice(icv);
    p
}

/// What an RMCP+ / RAKP status code means (IPMI 2.0 table 13-15).
pub fn rmcpp_status_name(code: u8) -> &'static str {
    match code {
        0x00 => "no errors",
        0x01 => "insufficient resources to create a session",
        0x02 => "invalid session id",
        0x03 => "invalid payload type",
        0x04 => "invalid authentication algorithm",
        0x05 => "invalid integrity algorithm",
        0x06 => "no matching authentication payload",
        0x07 => "no matching integrity payload",
        0x08 => "inactive session id",
        0x09 => "invalid role",
        0x0a => "unauthorized role or privilege level requested",
        0x0b => "insufficient resources to create a session at the requested role",
        0x0c => "invalid name length",
        0x0d => "unauthorized name",
        0x0e => "unauthorized GUID",
        0x0f => "invalid integrity check value",
        0x10 => "invalid confidentiality algorithm",
        0x11 => "no cipher suite match with proposed security algorithms",
        0x12 => "illegal or unrecognized parameter",
        _ => "reserved status code",
    }
}

/// What a completion code means (IPMI 2.0 table 5-2, plus the boot-options specific 0x80-0x82).
pub fn completion_code_name(cc: u8) -> &'static str {
    match cc {
        0x00 => "success",
        0x80 => "parameter not supported",
        0x81 => "attempt to set the 'set in progress' value when not in the 'set complete' state",
        0x82 => "attempt to write a read-only parameter",
        0xc0 => "node busy",
        0xc1 => "invalid command",
        0xc2 => "command invalid for given LUN",
        0xc3 => "timeout while processing command",
        0xc4 => "out of space",
        0xc5 => "reservation cancelled or invalid",
        0xc6 => "request data truncated",
        0xc7 => "request data length invalid",
        0xc8 => "request data field length limit exceeded",
        0xc9 => "parameter out of range",
        0xca => "cannot return number of requested data bytes",
        0xcb => "requested sensor, data or record not present",
        0xcc => "invalid data field in request",
        0xcd => "command illegal for specified sensor or record type",
        0xce => "command response could not be provided",
        0xcf => "cannot execute duplicated request",
        0xd0 => "SDR repository in update mode",
        0xd1 => "device in firmware update mode",
        0xd2 => "BMC initialization in progress",
        0xd3 => "destination unavailable",
        0xd4 => "insufficient privilege level",
        0xd5 => "command not supported in present state",
        0xd6 => "command sub-function disabled or unavailable",
        0xff => "unspecified error",
        _ => "device-specific or OEM completion code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn sample_rakp() -> Rakp<'static> {
        Rakp {
            console_sid: 0x0a0b_0c0d,
            bmc_sid: 0x1122_3344,
            console_rand: *b"0123456789abcdef",
            bmc_rand: *b"fedcba9876543210",
            bmc_guid: [0xa1; 16],
            role: 0x14,
            username: b"admin",
        }
    }

    #[test]
    fn hmac_sha1_rfc2202() {
        // RFC 2202 test case 2.
        assert_eq!(
            hex(&Hash::Sha1.hmac(b"Jefe", &[b"what do ya want for nothing?"])),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
    }

    /// Expected values computed independently with Python's `hmac`/`hashlib` from the same inputs, e.g.
    /// `hmac.new(b"password", sidm + sidc + rm + rc + guid + bytes([0x14, 5]) + b"admin", hashlib.sha1)`.
    #[test]
    fn rakp_codes_and_key_derivation_sha1() {
        let r = sample_rakp();
        let pw = b"password";
        assert_eq!(
            hex(&r.rakp2_code(Hash::Sha1, pw)),
            "027918885c5560029e724c137ce3bde2627678ae"
        );
        assert_eq!(
            hex(&r.rakp3_code(Hash::Sha1, pw)),
            "ae3ad0f89bb984138a10e6975c905c5d74ff7b7c"
        );
        let sik = r.sik(Hash::Sha1, pw);
        assert_eq!(hex(&sik), "762f7c864b65ff456482aeb1717ff39017ba20c0");
        let keys = SessionKeys::derive(CipherSuite::from_id(3).unwrap(), &sik);
        assert_eq!(hex(keys.k1()), "1ba595b5f3939a5a51bfc65b629f45044db4dcdf");
        assert_eq!(hex(keys.aes_key()), "582996cbd074231645d717674651703a");
        assert_eq!(
            hex(&r.rakp4_icv(Hash::Sha1, &sik, 12)),
            "371cf1d00faefc269908cf11"
        );
    }

    /// Same inputs, RAKP-HMAC-SHA256 (cipher suite 17), also computed with Python; K1/K2 use the 20-byte
    /// constants, as for SHA-1.
    #[test]
    fn rakp_codes_and_key_derivation_sha256() {
        let r = sample_rakp();
        let pw = b"password";
        assert_eq!(
            hex(&r.rakp2_code(Hash::Sha256, pw)),
            "95cb9435a730e6fe06d1bb36db446d785e66c7cc0a3b5da90a9a475e3dc5c300"
        );
        assert_eq!(
            hex(&r.rakp3_code(Hash::Sha256, pw)),
            "61f5607b73a4d128ed14cd5eb2a5fc4d38b9736a3c9b526d157d1b9fdb06c6a3"
        );
        let sik = r.sik(Hash::Sha256, pw);
        assert_eq!(
            hex(&sik),
            "25264451a45382cf6756877daa7c56cd021ff644149003cd09e070ecc57fbd8f"
        );
        let keys = SessionKeys::derive(CipherSuite::from_id(17).unwrap(), &sik);
        assert_eq!(
            hex(keys.k1()),
            "af0ae86b9b92565cd8bf53b7ea7cfcf28e9450f225e56f121310064e5bcde534"
        );
        assert_eq!(hex(keys.aes_key()), "343dd39f27531c53506d2f118b0cb3de");
        assert_eq!(
            hex(&r.rakp4_icv(Hash::Sha256, &sik, 16)),
            "e4998fb05898c4b63bb044ed8a52448d"
        );
    }

    #[test]
    fn aes_cbc_padding_round_trip() {
        let key = [7u8; 16];
        for len in 0..40 {
            let plain: Vec<u8> = (0..len as u8).collect();
            let ct = aes_cbc_encrypt(&key, [9u8; 16], &plain);
            assert_eq!(ct.len() % 16, 0, "len {len}");
            assert!(ct.len() >= 32);
            assert_eq!(&ct[..16], &[9u8; 16]);
            assert_eq!(aes_cbc_decrypt(&key, &ct).unwrap(), plain, "len {len}");
        }
        // The padding is 1, 2, 3 … then the pad length (checked by decrypting without unpadding).
        let ct = aes_cbc_encrypt(&key, [0u8; 16], b"abc");
        let mut buf = ct[16..].to_vec();
        let dec = cbc::Decryptor::<Aes128>::new((&key).into(), (&[0u8; 16]).into());
        let plain = dec.decrypt_padded_mut::<NoPadding>(&mut buf).unwrap();
        assert_eq!(&plain[..3], b"abc");
        assert_eq!(&plain[3..15], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert_eq!(plain[15], 12);
        // Truncated, misaligned and wrong-key inputs are errors, not panics.
        assert!(aes_cbc_decrypt(&key, &ct[..20]).is_err());
        assert!(aes_cbc_decrypt(&key, &ct[..16]).is_err());
        let _ = aes_cbc_decrypt(&[1u8; 16], &ct);
    }

    #[test]
    fn ipmi_message_checksums() {
        let m = ipmi_request(NETFN_CHASSIS, CMD_GET_CHASSIS_STATUS, 5, &[]);
        assert_eq!(m, vec![0x20, 0x00, 0xe0, 0x81, 0x14, 0x01, 0x6a]);
        // A response as a BMC would send it: rqSA, netFn 1, chk, rsSA, seq, cmd, cc, data, chk.
        let mut r = vec![0x81, 0x04, 0x00, 0x20, 0x14, 0x01, 0x00, 0x01, 0x00, 0x40];
        r[2] = checksum(&r[0..2]);
        let c = checksum(&r[3..]);
        r.push(c);
        let resp = parse_ipmi_response(&r).unwrap();
        assert_eq!(
            (resp.netfn, resp.cmd, resp.rq_seq, resp.completion),
            (1, 1, 5, 0)
        );
        assert_eq!(resp.data, vec![0x01, 0x00, 0x40]);
        r[8] ^= 1;
        assert_eq!(parse_ipmi_response(&r), Err(DecodeError::Checksum));
        assert!(parse_ipmi_response(&r[..5]).is_err());
    }

    #[test]
    fn v20_round_trip_every_suite() {
        for id in [0u8, 1, 2, 3, 17] {
            let suite = CipherSuite::from_id(id).unwrap();
            let keys = SessionKeys::derive(suite, &[0x42; 20]);
            let msg = ipmi_request(NETFN_APP, CMD_CLOSE_SESSION, 3, &[1, 2, 3, 4]);
            let pkt = encode_v20(PAYLOAD_IPMI, 0xdead_beef, 7, &msg, &keys, [3u8; 16]);
            if suite.integrity.is_some() {
                // Everything from the auth type through the next header is a multiple of 4.
                assert_eq!((pkt.len() - 4 - suite.integrity_len()) % 4, 0, "suite {id}");
            }
            let d = decode(&pkt, &keys).unwrap();
            assert_eq!(d.payload, msg, "suite {id}");
            assert_eq!(
                (d.session_id, d.seq, d.payload_type),
                (0xdead_beef, 7, PAYLOAD_IPMI)
            );
            assert_eq!(d.authenticated, suite.integrity.is_some());
            // Every truncation is an error, never a panic.
            for cut in 0..pkt.len() {
                let _ = decode(&pkt[..cut], &keys);
            }
            if suite.integrity.is_some() {
                // Any flipped byte after the RMCP header breaks the integrity check (or the format).
                for i in 4..pkt.len() {
                    let mut bad = pkt.clone();
                    bad[i] ^= 0x01;
                    assert!(decode(&bad, &keys).is_err(), "suite {id}, byte {i}");
                }
                // Another session's keys do not verify.
                let other = SessionKeys::derive(suite, &[0x43; 20]);
                assert_eq!(decode(&pkt, &other), Err(DecodeError::Integrity));
                // A plain packet is refused inside an integrity session.
                let plain = encode_v20(PAYLOAD_IPMI, 1, 1, &msg, &SessionKeys::none(), [0; 16]);
                assert!(matches!(
                    decode(&plain, &keys),
                    Err(DecodeError::Security(_))
                ));
                // So is a session-less IPMI 1.5 packet (which carries no AuthCode).
                assert!(matches!(
                    decode(&encode_v15(&msg), &keys),
                    Err(DecodeError::Security(_))
                ));
            }
        }
    }

    #[test]
    fn random_garbage_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let keys = SessionKeys::derive(CipherSuite::from_id(3).unwrap(), &[1; 20]);
        for _ in 0..20_000 {
            let len = rng.gen_range(0..80);
            let mut b: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            if len > 5 && rng.gen_bool(0.7) {
                b[..4].copy_from_slice(&RMCP_HEADER);
                b[4] = if rng.gen_bool(0.5) { 0x06 } else { 0x00 };
            }
            let _ = decode(&b, &keys);
            let _ = decode(&b, &SessionKeys::none());
            let _ = parse_ipmi_response(&b);
            let _ = parse_open_session_response(&b);
            let _ = parse_rakp2(&b, 20);
            let _ = parse_rakp4(&b, 12);
        }
    }

    #[test]
    fn handshake_messages_layout() {
        let suite = CipherSuite::from_id(17).unwrap();
        let p = open_session_request(9, 4, 0x0102_0304, &suite);
        assert_eq!(p.len(), 32);
        assert_eq!(&p[..8], &[9, 4, 0, 0, 4, 3, 2, 1]);
        assert_eq!((p[12], p[20], p[28]), (3, 4, 1));
        let mut resp = vec![9, 0, 4, 0, 4, 3, 2, 1, 0xaa, 0xbb, 0xcc, 0xdd];
        resp.extend_from_slice(&p[8..]);
        let r = parse_open_session_response(&resp).unwrap();
        assert_eq!(r.bmc_sid, 0xddcc_bbaa);
        assert_eq!(r.console_sid, 0x0102_0304);
        assert_eq!(r.algorithms, [3, 4, 1]);
        let err = parse_open_session_response(&[9, 0x11]).unwrap();
        assert_eq!(err.status, 0x11);
        let r1 = rakp1(9, 0xddcc_bbaa, &[5; 16], 0x14, b"admin");
        assert_eq!(r1.len(), 28 + 5);
        assert_eq!((r1[24], r1[27]), (0x14, 5));
        let v15 = channel_auth_caps_request(0, 4);
        let d = decode(&v15, &SessionKeys::none()).unwrap();
        assert_eq!(d.payload[5], CMD_GET_CHANNEL_AUTH_CAPS);
    }

    /// The BMC-side helpers read what the client builds and build what the client reads.
    #[test]
    fn server_helpers_round_trip_with_the_client() {
        // Open Session.
        for id in SUPPORTED_SUITES {
            let suite = CipherSuite::from_id(id).unwrap();
            let req = open_session_request(7, 4, 0x0102_0304, &suite);
            let r = parse_open_session_request(&req).unwrap();
            assert_eq!((r.tag, r.privilege, r.console_sid), (7, 4, 0x0102_0304));
            assert_eq!(CipherSuite::from_algorithms(r.algorithms), Ok(suite));
            let resp = open_session_response(7, 4, 0x0102_0304, 0xaabb_ccdd, &suite);
            let o = parse_open_session_response(&resp).unwrap();
            assert_eq!(
                (o.tag, o.status, o.console_sid, o.bmc_sid),
                (7, 0, 0x0102_0304, 0xaabb_ccdd)
            );
            assert_eq!(o.algorithms, r.algorithms);
        }
        let mut bad = open_session_request(7, 4, 1, &CipherSuite::from_id(3).unwrap());
        bad[16] = 0x02; // integrity payload where the authentication one belongs
        assert!(matches!(
            parse_open_session_request(&bad),
            Err(DecodeError::Format(_))
        ));
        let e = parse_open_session_response(&handshake_error(7, 0x11, 9)).unwrap();
        assert_eq!((e.tag, e.status, e.console_sid), (7, 0x11, 9));

        // RAKP 1 .. 4.
        let r1 = parse_rakp1(&rakp1(5, 0xaabb_ccdd, &[3; 16], 0x14, b"admin")).unwrap();
        assert_eq!(
            r1,
            Rakp1 {
                tag: 5,
                bmc_sid: 0xaabb_ccdd,
                console_rand: [3; 16],
                role: 0x14,
                username: b"admin".to_vec()
            }
        );
        let r2 = parse_rakp2(&rakp2(5, 9, &[1; 16], &[2; 16], &[7; 20]), 20).unwrap();
        assert_eq!((r2.tag, r2.status, r2.console_sid), (5, 0, 9));
        assert_eq!(
            (r2.bmc_rand, r2.bmc_guid, r2.code),
            ([1; 16], [2; 16], vec![7; 20])
        );
        let e2 = parse_rakp2(&handshake_error(5, STATUS_UNAUTHORIZED_NAME, 9), 20).unwrap();
        assert_eq!((e2.status, e2.console_sid), (STATUS_UNAUTHORIZED_NAME, 9));
        let r3 = parse_rakp3(&rakp3(5, 0, 0xaabb_ccdd, &[8; 32])).unwrap();
        assert_eq!(
            (r3.tag, r3.status, r3.bmc_sid, r3.code),
            (5, 0, 0xaabb_ccdd, vec![8; 32])
        );
        let r4 = parse_rakp4(&rakp4(5, 9, &[6; 16]), 16).unwrap();
        assert_eq!(
            (r4.tag, r4.status, r4.console_sid, r4.icv),
            (5, 0, 9, vec![6; 16])
        );
        let e4 = parse_rakp4(&handshake_error(5, STATUS_INVALID_INTEGRITY, 9), 16).unwrap();
        assert_eq!(e4.status, STATUS_INVALID_INTEGRITY);

        // IPMI request and response.
        let m = ipmi_request(NETFN_CHASSIS, CMD_CHASSIS_CONTROL, 33, &[2]);
        let req = parse_ipmi_request(&m).unwrap();
        assert_eq!(
            (
                req.rs_sa,
                req.netfn,
                req.rq_sa,
                req.rq_seq,
                req.cmd,
                req.data.as_slice()
            ),
            (
                0x20,
                NETFN_CHASSIS,
                0x81,
                33,
                CMD_CHASSIS_CONTROL,
                &[2u8][..]
            )
        );
        let resp = parse_ipmi_response(&ipmi_response(&req, 0xc1, &[1, 2])).unwrap();
        assert_eq!(
            (
                resp.netfn,
                resp.cmd,
                resp.rq_seq,
                resp.completion,
                resp.data
            ),
            (NETFN_CHASSIS + 1, CMD_CHASSIS_CONTROL, 33, 0xc1, vec![1, 2])
        );
        let mut broken = m.clone();
        broken[6] ^= 0x10;
        assert_eq!(parse_ipmi_request(&broken), Err(DecodeError::Checksum));

        // Headers, both formats.
        let h = peek_header(&channel_auth_caps_request(0, 4)).unwrap();
        assert_eq!(
            h,
            Header {
                rmcp_plus: false,
                payload_type: PAYLOAD_IPMI,
                session_id: 0
            }
        );
        let keys = SessionKeys::derive(CipherSuite::from_id(17).unwrap(), &[1; 32]);
        let pkt = encode_v20(PAYLOAD_IPMI, 0x1234_5678, 3, &m, &keys, [0; 16]);
        let h = peek_header(&pkt).unwrap();
        assert_eq!(
            h,
            Header {
                rmcp_plus: true,
                payload_type: PAYLOAD_IPMI,
                session_id: 0x1234_5678
            }
        );
        let mut v15_md5 = channel_auth_caps_request(0, 4);
        v15_md5[4] = 0x02;
        assert!(matches!(peek_header(&v15_md5), Err(DecodeError::Format(_))));
    }

    /// What a BMC answers for each proposal (IPMI 2.0 table 22-19 algorithm numbers).
    #[test]
    fn algorithms_map_to_suites_or_status_codes() {
        assert_eq!(
            CipherSuite::from_algorithms([3, 4, 1]).map(|s| s.id),
            Ok(17)
        );
        assert_eq!(CipherSuite::from_algorithms([0, 0, 0]).map(|s| s.id), Ok(0));
        assert_eq!(CipherSuite::from_algorithms([2, 2, 1]), Err(0x04)); // RAKP-HMAC-MD5 (suite 7)
        assert_eq!(CipherSuite::from_algorithms([1, 2, 0]), Err(0x05)); // HMAC-MD5-128
        assert_eq!(CipherSuite::from_algorithms([1, 1, 2]), Err(0x10)); // xRC4-128
        assert_eq!(CipherSuite::from_algorithms([1, 4, 1]), Err(0x11)); // SHA-1 RAKP with SHA-256 integrity
    }

    #[test]
    fn server_parsers_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for _ in 0..20_000 {
            let len = rng.gen_range(0..80);
            let b: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let _ = peek_header(&b);
            let _ = parse_ipmi_request(&b);
            let _ = parse_open_session_request(&b);
            let _ = parse_rakp1(&b);
            let _ = parse_rakp3(&b);
        }
    }
}
