//! DHCPv4 packets ↔ typed values: [`parse`] turns a client's datagram into a [`Request`], [`build`] turns
//! a [`Reply`] into a datagram. Pure: no sockets, no state, no clock — run millions of times a second by
//! the fuzzer (`engine::fuzz`, `ingot-bench --dhcp-fuzz`).
//!
//! Parsing walks the fixed BOOTP header and the options itself, checking every length before reading,
//! instead of calling dhcproto's decoder: that decoder `debug_assert!`s on some option lengths (a
//! hostile option 80, 81, 94 or 151 panics a debug build) and silently stops at the first malformed
//! option, where we want the field named ("option 93: length 3, must be even"). Building uses dhcproto's
//! `Message` and option encoder, and the tests decode every reply back with dhcproto.

use dhcproto::v4::{
    self, DhcpOption, DhcpOptions, Flags, HType, MessageType, Opcode, OptionCode, UnknownOption,
};
use dhcproto::Encodable;
use ingot_common::Mac;
use std::net::Ipv4Addr;

/// Largest datagram parsed: a DHCP client on Ethernet never sends more (RFC 2131 lets it announce up to
/// the MTU with option 57); bigger datagrams are refused before parsing, so a hostile sender cannot make
/// the parser walk more.
pub const MAX_PACKET: usize = 1500;
/// The fixed BOOTP header (op .. file), RFC 951.
const HEADER_LEN: usize = 236;
/// RFC 2131's magic cookie, right after the header: without it the datagram is plain BOOTP.
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// Smallest reply sent: BOOTP relays and old clients drop shorter ones (RFC 1542); Kea pads the same way.
pub const MIN_REPLY_LEN: usize = 300;
/// Longest hostname kept from option 12: one DNS label (RFC 1035); it reaches the Raft log in a lease.
pub const MAX_HOSTNAME: usize = 63;
/// Longest vendor class (option 60) kept: PXE's is 32 bytes; the rest is noise.
pub const MAX_VENDOR_CLASS: usize = 128;
/// Longest relay agent information (option 82) accepted: it is echoed back in one option (RFC 3046).
pub const MAX_RELAY_AGENT_INFO: usize = 255;
/// Longest client identifier (option 61) accepted: one option's worth.
pub const MAX_CLIENT_ID: usize = 255;
/// Longest boot file name in the BOOTP `file` field (128 bytes with its NUL); longer names go in option
/// 67 only.
const MAX_FILE_FIELD: usize = 127;

/// Option codes this module reads or writes (RFC 2132 and successors).
mod code {
    pub const PAD: u8 = 0;
    pub const HOSTNAME: u8 = 12;
    pub const REQUESTED_IP: u8 = 50;
    pub const OVERLOAD: u8 = 52;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const PARAMS: u8 = 55;
    pub const MAX_MESSAGE_SIZE: u8 = 57;
    pub const VENDOR_CLASS: u8 = 60;
    pub const CLIENT_ID: u8 = 61;
    pub const USER_CLASS: u8 = 77;
    pub const RELAY_AGENT_INFO: u8 = 82;
    pub const CLIENT_ARCH: u8 = 93;
    pub const IPXE_ENCAP: u8 = 175;
    pub const IPXE_NO_PXEDHCP: u8 = 176;
    pub const END: u8 = 255;
}

/// Why a datagram is not a DHCP client message we serve. Each variant names the field at fault; the
/// server drops the datagram (and counts it), it never answers a malformed request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Larger than [`MAX_PACKET`].
    #[error(
        "datagram: {len} bytes > {MAX_PACKET}; a DHCP client never sends more, dropped unparsed"
    )]
    TooLarge {
        /// The datagram's length.
        len: usize,
    },
    /// Shorter than the BOOTP header and the magic cookie.
    #[error("header: {len} bytes, a DHCP message has at least 240 (BOOTP header + magic cookie)")]
    Truncated {
        /// The datagram's length.
        len: usize,
    },
    /// A BOOTREPLY or an unknown op code: servers only answer requests.
    #[error("op: {op}, only BOOTREQUEST (1) is served")]
    NotRequest {
        /// The `op` byte.
        op: u8,
    },
    /// Not Ethernet: boot networks are Ethernet.
    #[error("htype: {htype}, only Ethernet (1) is served")]
    NotEthernet {
        /// The `htype` byte.
        htype: u8,
    },
    /// A hardware address length that does not fit or is not Ethernet's.
    #[error("chaddr: hlen {hlen} {rule}")]
    HardwareLength {
        /// The `hlen` byte.
        hlen: u8,
        /// What it must be.
        rule: &'static str,
    },
    /// The magic cookie is missing: plain BOOTP is not served.
    #[error("magic cookie: {found:?}, expected [99, 130, 83, 99] (plain BOOTP is not served)")]
    NoMagicCookie {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// An option runs past the end of the area holding it.
    #[error("option {code}: length {len} runs past the end of the packet ({left} bytes left)")]
    OptionOverrun {
        /// The option code.
        code: u8,
        /// Its length byte.
        len: usize,
        /// Bytes left in the area.
        left: usize,
    },
    /// An option's length is wrong for its type.
    #[error("option {code}: length {len}, {rule}")]
    OptionLength {
        /// The option code.
        code: u8,
        /// Its (concatenated) length.
        len: usize,
        /// What it must be.
        rule: &'static str,
    },
    /// An option's value is invalid.
    #[error("option {code}: {problem}")]
    OptionValue {
        /// The option code.
        code: u8,
        /// What is wrong with it.
        problem: String,
    },
    /// No option 53: plain BOOTP is not served.
    #[error(
        "option 53: missing; a DHCP client message names its type (plain BOOTP is not served)"
    )]
    NoMessageType,
    /// Option 53 names a message a client does not send to a server.
    #[error(
        "option 53: message type {value} is not DISCOVER, REQUEST, DECLINE, RELEASE or INFORM"
    )]
    NotClientMessage {
        /// The message type byte.
        value: u8,
    },
}

/// The DHCP messages a client sends that the server acts on (option 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientMessage {
    /// DHCPDISCOVER (1): looking for offers.
    Discover,
    /// DHCPREQUEST (3): selecting an offer, confirming, renewing or rebinding.
    Request,
    /// DHCPDECLINE (4): the offered address is in use by someone else.
    Decline,
    /// DHCPRELEASE (7): giving the address back.
    Release,
    /// DHCPINFORM (8): has an address, wants options only.
    Inform,
}

impl ClientMessage {
    /// The option-53 value.
    pub fn code(&self) -> u8 {
        match self {
            ClientMessage::Discover => 1,
            ClientMessage::Request => 3,
            ClientMessage::Decline => 4,
            ClientMessage::Release => 7,
            ClientMessage::Inform => 8,
        }
    }
    /// The message of an option-53 value, if a client sends it.
    pub fn from_code(value: u8) -> Option<ClientMessage> {
        Some(match value {
            1 => ClientMessage::Discover,
            3 => ClientMessage::Request,
            4 => ClientMessage::Decline,
            7 => ClientMessage::Release,
            8 => ClientMessage::Inform,
            _ => return None,
        })
    }
    /// The name in logs ("discover").
    pub fn as_str(&self) -> &'static str {
        match self {
            ClientMessage::Discover => "discover",
            ClientMessage::Request => "request",
            ClientMessage::Decline => "decline",
            ClientMessage::Release => "release",
            ClientMessage::Inform => "inform",
        }
    }
}

/// A client's DHCP message, checked and bounded: everything the engine decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The message type (option 53).
    pub kind: ClientMessage,
    /// Transaction id, echoed in the reply.
    pub xid: u32,
    /// Client hardware address (chaddr; Ethernet only).
    pub mac: Mac,
    /// The broadcast flag: the client cannot receive unicast before it has an address.
    pub broadcast: bool,
    /// The client's current address (renewing, rebinding, releasing, informing), else 0.0.0.0.
    pub ciaddr: Ipv4Addr,
    /// The relay agent's address when relayed, else 0.0.0.0: it chooses the subnet and gets the reply.
    pub giaddr: Ipv4Addr,
    /// Relay hops so far.
    pub hops: u8,
    /// Option 50: the address asked for (selecting, init-reboot, decline).
    pub requested_ip: Option<Ipv4Addr>,
    /// Option 54: the server the client chose (selecting) or answers (decline, release).
    pub server_id: Option<Ipv4Addr>,
    /// Option 93's first entry: the client's processor architecture (RFC 4578), choosing the boot file.
    pub client_arch: Option<u16>,
    /// Option 60, at most [`MAX_VENDOR_CLASS`] bytes, lossily UTF-8: "PXEClient:Arch:00000:..." from PXE
    /// firmware, "HTTPClient:..." from UEFI HTTP boot.
    pub vendor_class: Option<String>,
    /// Option 77 contains "iPXE": the client is iPXE and wants its script's URL.
    pub user_class_ipxe: bool,
    /// Option 12, sanitized (letters, digits, '-', '.', '_') and at most [`MAX_HOSTNAME`] bytes; None when
    /// nothing is left.
    pub hostname: Option<String>,
    /// Option 82 as received (a relay agent's sub-options, checked well-formed), echoed in the reply.
    pub relay_agent_info: Option<Vec<u8>>,
    /// Option 61, echoed in the reply (RFC 6842).
    pub client_id: Option<Vec<u8>>,
    /// Option 57 when at least 576 (RFC 2132's minimum).
    pub max_message_size: Option<u16>,
    /// Option 55: the options the client asks for.
    pub params: Vec<u8>,
}

impl Request {
    /// Whether the client is PXE firmware or iPXE: option 93, a vendor class starting "PXEClient" or
    /// "HTTPClient", or the iPXE user class. Such clients get boot options, option 175 and the short
    /// PXE lease time.
    pub fn is_pxe(&self) -> bool {
        self.client_arch.is_some()
            || self.user_class_ipxe
            || self
                .vendor_class
                .as_deref()
                .is_some_and(|v| v.starts_with("PXEClient") || v.starts_with("HTTPClient"))
    }
}

/// Options gathered from the packet, concatenated per code (RFC 3396).
struct RawOptions {
    values: Vec<Option<Vec<u8>>>,
}

impl RawOptions {
    fn new() -> RawOptions {
        RawOptions {
            values: vec![None; 256],
        }
    }
    fn get(&self, code: u8) -> Option<&[u8]> {
        self.values
            .get(usize::from(code))
            .and_then(|v| v.as_deref())
    }
    /// Walks one option area (the options field, or `file`/`sname` when overloaded).
    fn walk(&mut self, area: &[u8]) -> Result<(), ParseError> {
        let mut i = 0;
        while let Some(&c) = area.get(i) {
            match c {
                code::PAD => i += 1,
                code::END => return Ok(()),
                _ => {
                    let len = usize::from(*area.get(i + 1).ok_or(ParseError::OptionOverrun {
                        code: c,
                        len: 0,
                        left: 0,
                    })?);
                    let left = area.len().saturating_sub(i + 2);
                    let value = area
                        .get(i + 2..i + 2 + len)
                        .ok_or(ParseError::OptionOverrun { code: c, len, left })?;
                    if let Some(slot) = self.values.get_mut(usize::from(c)) {
                        slot.get_or_insert_with(Vec::new).extend_from_slice(value);
                    }
                    i += 2 + len;
                }
            }
        }
        Ok(())
    }
}

fn ipv4_at(b: &[u8], at: usize) -> Ipv4Addr {
    match b.get(at..at + 4) {
        Some(&[a, b, c, d]) => Ipv4Addr::new(a, b, c, d),
        _ => Ipv4Addr::UNSPECIFIED,
    }
}

fn exact<const N: usize>(
    opts: &RawOptions,
    c: u8,
    rule: &'static str,
) -> Result<Option<[u8; N]>, ParseError> {
    match opts.get(c) {
        None => Ok(None),
        Some(v) => <[u8; N]>::try_from(v)
            .map(Some)
            .map_err(|_| ParseError::OptionLength {
                code: c,
                len: v.len(),
                rule,
            }),
    }
}

/// Keeps a hostname's safe characters, bounded: it reaches the Raft log and `ingot leases list`.
fn sanitize_hostname(raw: &[u8]) -> Option<String> {
    let s: String = raw
        .iter()
        .filter(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        .take(MAX_HOSTNAME)
        .map(|&b| char::from(b))
        .collect();
    (!s.is_empty()).then_some(s)
}

/// Checks option 82's sub-options are well-formed TLVs (RFC 3046), so the echo is what the relay sent.
fn check_relay_agent_info(v: &[u8]) -> Result<(), ParseError> {
    if v.len() > MAX_RELAY_AGENT_INFO {
        return Err(ParseError::OptionLength {
            code: code::RELAY_AGENT_INFO,
            len: v.len(),
            rule: "must be at most 255",
        });
    }
    let mut i = 0;
    while i < v.len() {
        let len = v.get(i + 1).map(|&l| usize::from(l));
        match len {
            Some(len) if i + 2 + len <= v.len() => i += 2 + len,
            _ => {
                return Err(ParseError::OptionValue {
                    code: code::RELAY_AGENT_INFO,
                    problem: format!("sub-option at offset {i} runs past the end"),
                })
            }
        }
    }
    Ok(())
}

/// Parses a client's datagram. Only BOOTREQUESTs from Ethernet clients with a DHCP message type a
/// client sends are accepted; every length is checked before it is read, nothing panics.
pub fn parse(bytes: &[u8]) -> Result<Request, ParseError> {
    if bytes.len() > MAX_PACKET {
        return Err(ParseError::TooLarge { len: bytes.len() });
    }
    let Some(header) = bytes.get(..HEADER_LEN + 4) else {
        return Err(ParseError::Truncated { len: bytes.len() });
    };
    let (op, htype, hlen, hops) = match header {
        [op, htype, hlen, hops, ..] => (*op, *htype, *hlen, *hops),
        _ => return Err(ParseError::Truncated { len: bytes.len() }),
    };
    if op != 1 {
        return Err(ParseError::NotRequest { op });
    }
    if htype != 1 {
        return Err(ParseError::NotEthernet { htype });
    }
    if hlen > 16 {
        return Err(ParseError::HardwareLength { hlen, rule: "> 16" });
    }
    if hlen != 6 {
        return Err(ParseError::HardwareLength {
            hlen,
            rule: "is not 6 (Ethernet)",
        });
    }
    let xid = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    let flags = u16::from_be_bytes([header[10], header[11]]);
    let ciaddr = ipv4_at(header, 12);
    let giaddr = ipv4_at(header, 24);
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&header[28..34]);
    let sname = &header[44..108];
    let file = &header[108..236];
    let cookie = [header[236], header[237], header[238], header[239]];
    if cookie != MAGIC_COOKIE {
        return Err(ParseError::NoMagicCookie { found: cookie });
    }
    let mut opts = RawOptions::new();
    opts.walk(bytes.get(HEADER_LEN + 4..).unwrap_or_default())?;
    // Option overload (52): `file` (1), `sname` (2) or both (3) carry more options, in that order.
    if let Some([overload]) = exact::<1>(&opts, code::OVERLOAD, "must be 1")? {
        if overload & 1 != 0 {
            opts.walk(file)?;
        }
        if overload & 2 != 0 {
            opts.walk(sname)?;
        }
    }

    let kind = match exact::<1>(&opts, code::MESSAGE_TYPE, "must be 1")? {
        None => return Err(ParseError::NoMessageType),
        Some([value]) => {
            ClientMessage::from_code(value).ok_or(ParseError::NotClientMessage { value })?
        }
    };
    let requested_ip = exact::<4>(&opts, code::REQUESTED_IP, "must be 4")?.map(Ipv4Addr::from);
    let server_id = exact::<4>(&opts, code::SERVER_ID, "must be 4")?.map(Ipv4Addr::from);
    let client_arch = match opts.get(code::CLIENT_ARCH) {
        None => None,
        Some(v) => match v {
            [a, b, ..] if v.len() % 2 == 0 => Some(u16::from_be_bytes([*a, *b])),
            _ => {
                return Err(ParseError::OptionLength {
                    code: code::CLIENT_ARCH,
                    len: v.len(),
                    rule: if v.is_empty() {
                        "must be at least 2"
                    } else {
                        "must be even"
                    },
                })
            }
        },
    };
    let vendor_class = opts.get(code::VENDOR_CLASS).map(|v| {
        let v = v.get(..MAX_VENDOR_CLASS).unwrap_or(v);
        String::from_utf8_lossy(v).into_owned()
    });
    let user_class_ipxe = opts
        .get(code::USER_CLASS)
        .is_some_and(|v| v.windows(4).any(|w| w == b"iPXE"));
    let hostname = opts.get(code::HOSTNAME).and_then(sanitize_hostname);
    let relay_agent_info = match opts.get(code::RELAY_AGENT_INFO) {
        None => None,
        Some(v) => {
            check_relay_agent_info(v)?;
            Some(v.to_vec())
        }
    };
    let client_id = match opts.get(code::CLIENT_ID) {
        None | Some([]) => None,
        Some(v) if v.len() > MAX_CLIENT_ID => {
            return Err(ParseError::OptionLength {
                code: code::CLIENT_ID,
                len: v.len(),
                rule: "must be at most 255",
            })
        }
        Some(v) => Some(v.to_vec()),
    };
    let max_message_size = exact::<2>(&opts, code::MAX_MESSAGE_SIZE, "must be 2")?
        .map(u16::from_be_bytes)
        .filter(|&m| m >= 576);
    let params = opts
        .get(code::PARAMS)
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    Ok(Request {
        kind,
        xid,
        mac: Mac(mac),
        broadcast: flags & 0x8000 != 0,
        ciaddr,
        giaddr,
        hops,
        requested_ip,
        server_id,
        client_arch,
        vendor_class,
        user_class_ipxe,
        hostname,
        relay_agent_info,
        client_id,
        max_message_size,
        params,
    })
}

/// The DHCP messages the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplyKind {
    /// DHCPOFFER: an address (or, from a proxy, boot options only).
    Offer,
    /// DHCPACK: the lease is the client's (or INFORM's options, or a proxy's boot file).
    Ack,
    /// DHCPNAK: the client's idea of its address is wrong; restart.
    Nak,
}

/// The vendor class echoed to PXE firmware (option 60): it tells the firmware the answer is for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PxeVendorClass {
    /// "PXEClient": PXE firmware (TFTP boot).
    PxeClient,
    /// "HTTPClient": UEFI HTTP boot (the boot file is a URL).
    HttpClient,
}

impl PxeVendorClass {
    /// The option-60 value.
    pub fn as_str(&self) -> &'static str {
        match self {
            PxeVendorClass::PxeClient => "PXEClient",
            PxeVendorClass::HttpClient => "HTTPClient",
        }
    }
}

/// Everything an answer carries; [`build`] turns it into bytes. Empty fields are left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Offer, ack or nak.
    pub kind: ReplyKind,
    /// The request's transaction id.
    pub xid: u32,
    /// The client's hardware address.
    pub mac: Mac,
    /// The broadcast flag (copied from the request; set on NAKs through a relay).
    pub broadcast: bool,
    /// The client's current address (echoed for renewals and INFORM).
    pub ciaddr: Ipv4Addr,
    /// The address handed out (0.0.0.0 for INFORM, NAK and proxy answers).
    pub yiaddr: Ipv4Addr,
    /// Next server: the TFTP server of the boot file (0.0.0.0 when none).
    pub siaddr: Ipv4Addr,
    /// The relay's address, echoed.
    pub giaddr: Ipv4Addr,
    /// Option 54: this server's address on the client's network.
    pub server_id: Ipv4Addr,
    /// Option 51 (with T1 = 1/2 in option 58 and T2 = 7/8 in option 59), when an address is leased.
    pub lease_time_s: Option<u32>,
    /// Option 1.
    pub subnet_mask: Option<Ipv4Addr>,
    /// Option 3, in order.
    pub routers: Vec<Ipv4Addr>,
    /// Option 6, in order.
    pub dns: Vec<Ipv4Addr>,
    /// Option 15.
    pub domain: Option<String>,
    /// Option 28.
    pub broadcast_addr: Option<Ipv4Addr>,
    /// The boot file: BOOTP `file` (when it fits) and option 67; a TFTP path or an HTTP URL.
    pub boot_file: Option<String>,
    /// Option 66: the TFTP server's name (the rack's address as text).
    pub tftp_server: Option<String>,
    /// Option 60, for PXE firmware.
    pub vendor_class: Option<PxeVendorClass>,
    /// Option 175 with sub-option 176 = 1: iPXE need not wait ~2 s for a ProxyDHCP offer.
    pub ipxe_no_proxydhcp: bool,
    /// Option 43 with PXE sub-option 6 = 8 (take the boot file from this answer, no boot server
    /// discovery), for proxy answers.
    pub pxe_discovery_control: bool,
    /// Option 82 echoed to the relay (RFC 3046), placed last.
    pub relay_agent_info: Option<Vec<u8>>,
    /// Option 61 echoed (RFC 6842).
    pub client_id: Option<Vec<u8>>,
    /// Option 56: why (NAKs).
    pub message: Option<String>,
}

impl Reply {
    /// An answer with only its kind and the client's identity set.
    pub fn new(kind: ReplyKind, xid: u32, mac: Mac) -> Reply {
        Reply {
            kind,
            xid,
            mac,
            broadcast: false,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            server_id: Ipv4Addr::UNSPECIFIED,
            lease_time_s: None,
            subnet_mask: None,
            routers: Vec::new(),
            dns: Vec::new(),
            domain: None,
            broadcast_addr: None,
            boot_file: None,
            tftp_server: None,
            vendor_class: None,
            ipxe_no_proxydhcp: false,
            pxe_discovery_control: false,
            relay_agent_info: None,
            client_id: None,
            message: None,
        }
    }
}

/// Longest text put in one option: longer values are cut (an option holds 255 bytes).
const MAX_OPTION_TEXT: usize = 255;

fn bounded(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    b.get(..MAX_OPTION_TEXT).unwrap_or(b).to_vec()
}

/// Encodes a reply. Never panics: over-long texts are cut to what their field holds. The datagram is
/// padded to [`MIN_REPLY_LEN`] bytes; option 82 is placed last, as relays expect. Empty only if
/// dhcproto refused to encode (never seen; the fuzzer checks every reply decodes).
pub fn build(reply: &Reply) -> Vec<u8> {
    let mut msg = v4::Message::default();
    msg.set_opcode(Opcode::BootReply)
        .set_htype(HType::Eth)
        .set_xid(reply.xid)
        .set_chaddr(&reply.mac.0)
        .set_ciaddr(reply.ciaddr)
        .set_yiaddr(reply.yiaddr)
        .set_siaddr(reply.siaddr)
        .set_giaddr(reply.giaddr)
        .set_flags(if reply.broadcast {
            Flags::default().set_broadcast()
        } else {
            Flags::default()
        });
    if let Some(file) = &reply.boot_file {
        if file.len() <= MAX_FILE_FIELD {
            msg.set_fname(file.as_bytes());
        }
    }
    let mut o = DhcpOptions::new();
    o.insert(DhcpOption::MessageType(match reply.kind {
        ReplyKind::Offer => MessageType::Offer,
        ReplyKind::Ack => MessageType::Ack,
        ReplyKind::Nak => MessageType::Nak,
    }));
    o.insert(DhcpOption::ServerIdentifier(reply.server_id));
    if let Some(t) = reply.lease_time_s {
        o.insert(DhcpOption::AddressLeaseTime(t));
        o.insert(DhcpOption::Renewal(t / 2));
        o.insert(DhcpOption::Rebinding(
            u32::try_from(u64::from(t) * 7 / 8).unwrap_or(u32::MAX),
        ));
    }
    if let Some(m) = reply.subnet_mask {
        o.insert(DhcpOption::SubnetMask(m));
    }
    if !reply.routers.is_empty() {
        o.insert(DhcpOption::Router(reply.routers.clone()));
    }
    if !reply.dns.is_empty() {
        o.insert(DhcpOption::DomainNameServer(reply.dns.clone()));
    }
    if let Some(d) = reply.domain.as_deref().filter(|d| !d.is_empty()) {
        let d = String::from_utf8_lossy(&bounded(d)).into_owned();
        o.insert(DhcpOption::DomainName(d));
    }
    if let Some(b) = reply.broadcast_addr {
        o.insert(DhcpOption::BroadcastAddr(b));
    }
    if let Some(t) = &reply.tftp_server {
        o.insert(DhcpOption::TFTPServerName(bounded(t)));
    }
    if let Some(f) = &reply.boot_file {
        o.insert(DhcpOption::BootfileName(bounded(f)));
    }
    if let Some(v) = reply.vendor_class {
        o.insert(DhcpOption::ClassIdentifier(v.as_str().as_bytes().to_vec()));
    }
    if let Some(id) = &reply.client_id {
        o.insert(DhcpOption::ClientIdentifier(
            id.get(..MAX_CLIENT_ID).unwrap_or(id).to_vec(),
        ));
    }
    if reply.pxe_discovery_control {
        // PXE spec 2.1, sub-option 6 (discovery control) = 8: use the boot file in this answer.
        o.insert(DhcpOption::VendorExtensions(vec![6, 1, 8, code::END]));
    }
    if reply.ipxe_no_proxydhcp {
        o.insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::from(code::IPXE_ENCAP),
            vec![code::IPXE_NO_PXEDHCP, 1, 1],
        )));
    }
    if let Some(m) = &reply.message {
        let m = String::from_utf8_lossy(&bounded(m)).into_owned();
        o.insert(DhcpOption::Message(m));
    }
    msg.set_opts(o);
    // Encoding into a Vec cannot fail with the options above; should dhcproto ever refuse, the caller
    // gets an empty datagram (the server sends nothing) rather than a panic.
    let Ok(mut out) = msg.to_vec() else {
        return Vec::new();
    };
    // Option 82 is appended by hand, last before End (dhcproto would re-encode it from its parsed
    // form; the relay wants its own bytes back).
    if let Some(info) = reply
        .relay_agent_info
        .as_ref()
        .filter(|i| !i.is_empty() && i.len() <= MAX_RELAY_AGENT_INFO)
    {
        if out.last() == Some(&code::END) {
            out.pop();
            out.push(code::RELAY_AGENT_INFO);
            out.push(u8::try_from(info.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(info);
            out.push(code::END);
        }
    }
    if out.len() < MIN_REPLY_LEN {
        out.resize(MIN_REPLY_LEN, code::PAD);
    }
    out
}

/// A client message to encode: what tests, the fuzzer and load generators send. Options are written
/// exactly as given (code, bytes), so tests can write malformed ones too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPacket {
    /// Message type (option 53, written first).
    pub kind: ClientMessage,
    /// Transaction id.
    pub xid: u32,
    /// Client hardware address.
    pub mac: Mac,
    /// Broadcast flag.
    pub broadcast: bool,
    /// ciaddr.
    pub ciaddr: Ipv4Addr,
    /// giaddr (set by a relay).
    pub giaddr: Ipv4Addr,
    /// Further options, in order (each at most 255 bytes; longer ones are split, RFC 3396).
    pub options: Vec<(u8, Vec<u8>)>,
}

impl ClientPacket {
    /// A packet of `kind` from `mac` with no options beyond the message type.
    pub fn new(kind: ClientMessage, xid: u32, mac: Mac) -> ClientPacket {
        ClientPacket {
            kind,
            xid,
            mac,
            broadcast: false,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            options: Vec::new(),
        }
    }
    /// Adds an option.
    pub fn with(mut self, code: u8, value: impl Into<Vec<u8>>) -> ClientPacket {
        self.options.push((code, value.into()));
        self
    }
    /// Encodes the packet.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        b[0] = 1; // BOOTREQUEST
        b[1] = 1; // Ethernet
        b[2] = 6;
        b[4..8].copy_from_slice(&self.xid.to_be_bytes());
        if self.broadcast {
            b[10] = 0x80;
        }
        b[12..16].copy_from_slice(&self.ciaddr.octets());
        b[24..28].copy_from_slice(&self.giaddr.octets());
        b[28..34].copy_from_slice(&self.mac.0);
        b.extend_from_slice(&MAGIC_COOKIE);
        b.extend_from_slice(&[code::MESSAGE_TYPE, 1, self.kind.code()]);
        for (c, v) in &self.options {
            for chunk in v.chunks(255) {
                b.push(*c);
                b.push(u8::try_from(chunk.len()).unwrap_or(u8::MAX));
                b.extend_from_slice(chunk);
            }
            if v.is_empty() {
                b.extend_from_slice(&[*c, 0]);
            }
        }
        b.push(code::END);
        b
    }
}

/// Decodes a reply with dhcproto (an independent decoder): what tests and the fuzzer check replies
/// with. `None` when it does not decode.
pub fn decode_reply(bytes: &[u8]) -> Option<v4::Message> {
    use dhcproto::Decodable;
    v4::Message::from_bytes(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac() -> Mac {
        Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56])
    }

    fn discover() -> ClientPacket {
        ClientPacket::new(ClientMessage::Discover, 0xdead_beef, mac())
            .with(code::CLIENT_ARCH, vec![0, 7])
            .with(
                code::VENDOR_CLASS,
                b"PXEClient:Arch:00007:UNDI:003016".to_vec(),
            )
            .with(code::HOSTNAME, b"node-1;rm -rf".to_vec())
            .with(code::PARAMS, vec![1, 3, 6, 66, 67])
    }

    #[test]
    fn parses_a_pxe_discover() {
        let r = parse(&discover().encode()).expect("parse");
        assert_eq!(r.kind, ClientMessage::Discover);
        assert_eq!(r.xid, 0xdead_beef);
        assert_eq!(r.mac, mac());
        assert_eq!(r.client_arch, Some(7));
        assert!(r.is_pxe());
        assert_eq!(r.hostname.as_deref(), Some("node-1rm-rf"));
        assert_eq!(r.params, vec![1, 3, 6, 66, 67]);
        assert!(!r.broadcast);
    }

    #[test]
    fn refusals_name_the_field() {
        let bad93 = ClientPacket::new(ClientMessage::Discover, 1, mac()).with(93, vec![0, 7, 1]);
        assert_eq!(
            parse(&bad93.encode()).expect_err("odd 93").to_string(),
            "option 93: length 3, must be even"
        );
        let mut p = discover().encode();
        p[2] = 20;
        assert_eq!(
            parse(&p).expect_err("hlen").to_string(),
            "chaddr: hlen 20 > 16"
        );
        let mut p = discover().encode();
        p[0] = 2;
        assert!(matches!(parse(&p), Err(ParseError::NotRequest { op: 2 })));
        assert!(matches!(
            parse(&vec![0u8; 1501]),
            Err(ParseError::TooLarge { len: 1501 })
        ));
        assert!(matches!(
            parse(&p[..100]),
            Err(ParseError::Truncated { len: 100 })
        ));
        let mut p = discover().encode();
        p[236] = 0;
        assert!(matches!(parse(&p), Err(ParseError::NoMagicCookie { .. })));
        // An option whose length runs past the end.
        let mut p = discover().encode();
        p.pop();
        p.extend_from_slice(&[12, 50, b'a']);
        assert!(matches!(
            parse(&p),
            Err(ParseError::OptionOverrun {
                code: 12,
                len: 50,
                left: 1
            })
        ));
        let offer = ClientPacket {
            kind: ClientMessage::Discover,
            ..discover()
        };
        let mut p = offer.encode();
        p[242] = 2; // option 53 = OFFER
        assert!(matches!(
            parse(&p),
            Err(ParseError::NotClientMessage { value: 2 })
        ));
        let bad82 = ClientPacket::new(ClientMessage::Discover, 1, mac()).with(82, vec![1, 5, 0]);
        assert!(parse(&bad82.encode()).is_err());
        let bad50 = ClientPacket::new(ClientMessage::Request, 1, mac()).with(50, vec![10, 0, 0]);
        assert_eq!(
            parse(&bad50.encode()).expect_err("50").to_string(),
            "option 50: length 3, must be 4"
        );
    }

    #[test]
    fn concatenated_and_overloaded_options_are_read() {
        // Option 12 split in two (RFC 3396), and option 52 putting option 60 in `file`.
        let mut p = ClientPacket::new(ClientMessage::Discover, 9, mac())
            .with(12, b"ab".to_vec())
            .with(12, b"cd".to_vec())
            .with(52, vec![1])
            .encode();
        let file = [
            60u8, 9, b'P', b'X', b'E', b'C', b'l', b'i', b'e', b'n', b't', 255,
        ];
        p[108..108 + file.len()].copy_from_slice(&file);
        let r = parse(&p).expect("parse");
        assert_eq!(r.hostname.as_deref(), Some("abcd"));
        assert_eq!(r.vendor_class.as_deref(), Some("PXEClient"));
    }

    #[test]
    fn replies_decode_with_dhcproto() {
        let mut reply = Reply::new(ReplyKind::Offer, 0x1234, mac());
        reply.yiaddr = Ipv4Addr::new(10, 20, 0, 100);
        reply.server_id = Ipv4Addr::new(10, 20, 0, 2);
        reply.siaddr = reply.server_id;
        reply.lease_time_s = Some(3600);
        reply.subnet_mask = Some(Ipv4Addr::new(255, 255, 255, 0));
        reply.routers = vec![Ipv4Addr::new(10, 20, 0, 1)];
        reply.boot_file = Some("undionly.kpxe".into());
        reply.tftp_server = Some("10.20.0.2".into());
        reply.vendor_class = Some(PxeVendorClass::PxeClient);
        reply.ipxe_no_proxydhcp = true;
        reply.relay_agent_info = Some(vec![1, 3, b'e', b't', b'h', 2, 1, 7]);
        let bytes = build(&reply);
        assert!(bytes.len() >= MIN_REPLY_LEN);
        let m = decode_reply(&bytes).expect("decodes");
        assert_eq!(m.xid(), 0x1234);
        assert_eq!(m.chaddr(), &mac().0);
        assert_eq!(m.opcode(), Opcode::BootReply);
        assert_eq!(m.yiaddr(), Ipv4Addr::new(10, 20, 0, 100));
        assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
        // dhcproto keeps the field's terminating NUL.
        assert_eq!(
            m.fname().and_then(|f| f.split(|&b| b == 0).next()),
            Some(&b"undionly.kpxe"[..])
        );
        let o = m.opts();
        assert_eq!(o.get(OptionCode::Renewal), Some(&DhcpOption::Renewal(1800)));
        assert_eq!(
            o.get(OptionCode::Rebinding),
            Some(&DhcpOption::Rebinding(3150))
        );
        assert_eq!(
            o.get(OptionCode::from(175)),
            Some(&DhcpOption::Unknown(UnknownOption::new(
                OptionCode::from(175),
                vec![176, 1, 1]
            )))
        );
        assert!(o.get(OptionCode::RelayAgentInformation).is_some());
        // Option 82 sits last, right before End.
        let end = bytes.iter().rposition(|&b| b == 255).expect("end");
        assert_eq!(
            &bytes[end - 10..end],
            &[82, 8, 1, 3, b'e', b't', b'h', 2, 1, 7]
        );
        // Over-long texts are cut instead of panicking.
        let mut long = Reply::new(ReplyKind::Nak, 1, mac());
        long.boot_file = Some("x".repeat(1000));
        long.message = Some("y".repeat(1000));
        long.domain = Some("z".repeat(1000));
        assert!(decode_reply(&build(&long)).is_some());
    }
}
