//! TFTP packets (RFC 1350) with the option extension (RFC 2347) and its options blksize (RFC 2348),
//! timeout and tsize (RFC 2349) and windowsize (RFC 7440): bytes in, typed values out, and back.
//!
//! Pure: no I/O, no state, no async, so it can be fuzzed (the proptest below) and reused by a client. Every
//! decoder checks lengths before reading and every size is bounded by a named constant; a malformed
//! packet is a [`DecodeError`] naming the field, never a panic. Unknown options are ignored (RFC 2347: the
//! server answers only the options it knows); a known option with a value out of its range is an error,
//! which the server answers with ERROR code 8 (option refused).

/// Largest request (RRQ/WRQ) accepted, in bytes: RFC 2347 limits a request with options to 512 bytes.
pub const MAX_REQUEST: usize = 512;
/// Longest filename accepted, in bytes: boot files are short paths; anything longer is an attack or a bug.
pub const MAX_FILENAME: usize = 255;
/// Most options in one request: the four known ones plus room for vendor options we ignore.
pub const MAX_OPTIONS: usize = 16;
/// Longest error message built or kept, in bytes: it must fit in a 512-byte datagram with its header.
pub const MAX_ERROR_MESSAGE: usize = 255;
/// Smallest block size a client may ask for (RFC 2348).
pub const MIN_BLKSIZE: u16 = 8;
/// Largest block size (RFC 2348: 65464 = the largest UDP payload over IPv4 minus the headers).
pub const MAX_BLKSIZE: u16 = 65464;
/// The block size without the option (RFC 1350).
pub const DEFAULT_BLKSIZE: u16 = 512;
/// Retransmission timeout range a client may ask for, in seconds (RFC 2349).
pub const MIN_TIMEOUT_S: u8 = 1;
/// See [`MIN_TIMEOUT_S`].
pub const MAX_TIMEOUT_S: u8 = 255;
/// Smallest window (RFC 7440); the largest is `u16::MAX`.
pub const MIN_WINDOWSIZE: u16 = 1;

/// Opcodes (RFC 1350, RFC 2347).
const OP_RRQ: u16 = 1;
const OP_WRQ: u16 = 2;
const OP_DATA: u16 = 3;
const OP_ACK: u16 = 4;
const OP_ERROR: u16 = 5;
const OP_OACK: u16 = 6;

/// The transfer mode of a request. "mail" (obsolete) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Text: line ends are sent as CR LF, a lone CR as CR NUL.
    Netascii,
    /// Bytes as they are: every boot file.
    Octet,
}

impl Mode {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Netascii => "netascii",
            Mode::Octet => "octet",
        }
    }
}

/// The options of a request or an OACK; `None` when absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Data bytes per block (RFC 2348).
    pub blksize: Option<u16>,
    /// Transfer size in bytes: 0 in a read request (asking), the file's size in the OACK (RFC 2349).
    pub tsize: Option<u64>,
    /// Retransmission timeout the client wants, in seconds (RFC 2349).
    pub timeout_s: Option<u8>,
    /// Blocks sent before waiting for an ACK (RFC 7440).
    pub windowsize: Option<u16>,
}

impl Options {
    /// Whether any option is present (a request without options is answered with DATA, not OACK).
    pub fn any(&self) -> bool {
        self.blksize.is_some()
            || self.tsize.is_some()
            || self.timeout_s.is_some()
            || self.windowsize.is_some()
    }
}

/// A read or write request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The file asked for, as sent (checked against the root by the server, not here).
    pub filename: String,
    /// Text or bytes.
    pub mode: Mode,
    /// The options the server knows; unknown ones are dropped.
    pub options: Options,
}

/// TFTP error codes (RFC 1350, RFC 2347).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 0: see the message (used for "busy").
    NotDefined,
    /// 1
    FileNotFound,
    /// 2: also a refused write (the server is read-only).
    AccessViolation,
    /// 3
    DiskFull,
    /// 4
    IllegalOperation,
    /// 5
    UnknownTid,
    /// 6
    FileExists,
    /// 7
    NoSuchUser,
    /// 8: option negotiation failed (RFC 2347).
    OptionRefused,
    /// A code outside RFC 1350/2347, kept as received.
    Other(u16),
}

impl ErrorCode {
    /// The code on the wire.
    pub fn number(self) -> u16 {
        match self {
            ErrorCode::NotDefined => 0,
            ErrorCode::FileNotFound => 1,
            ErrorCode::AccessViolation => 2,
            ErrorCode::DiskFull => 3,
            ErrorCode::IllegalOperation => 4,
            ErrorCode::UnknownTid => 5,
            ErrorCode::FileExists => 6,
            ErrorCode::NoSuchUser => 7,
            ErrorCode::OptionRefused => 8,
            ErrorCode::Other(n) => n,
        }
    }

    /// The code for a wire number.
    pub fn from_number(n: u16) -> ErrorCode {
        match n {
            0 => ErrorCode::NotDefined,
            1 => ErrorCode::FileNotFound,
            2 => ErrorCode::AccessViolation,
            3 => ErrorCode::DiskFull,
            4 => ErrorCode::IllegalOperation,
            5 => ErrorCode::UnknownTid,
            6 => ErrorCode::FileExists,
            7 => ErrorCode::NoSuchUser,
            8 => ErrorCode::OptionRefused,
            n => ErrorCode::Other(n),
        }
    }
}

/// One decoded packet. DATA borrows its payload from the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Read request.
    Rrq(Request),
    /// Write request (always refused by the rack).
    Wrq(Request),
    /// A block of data.
    Data {
        /// Block number (wraps from 65535 to 0).
        block: u16,
        /// At most the negotiated block size.
        data: &'a [u8],
    },
    /// Acknowledges a block (0 acknowledges an OACK).
    Ack {
        /// Block number.
        block: u16,
    },
    /// Ends a transfer.
    Error {
        /// Why.
        code: ErrorCode,
        /// For people (lossy UTF-8, bounded by [`MAX_ERROR_MESSAGE`]).
        message: String,
    },
    /// Option acknowledgement: the options the server accepted.
    Oack(Options),
}

/// Why a datagram is not a valid TFTP packet; each names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than its fixed header.
    #[error("packet too short for its {field} ({len} bytes)")]
    Truncated {
        /// What could not be read.
        field: &'static str,
        /// The datagram's length.
        len: usize,
    },
    /// Opcode not 1..=6.
    #[error("unknown opcode {0} (expected 1..=6)")]
    Opcode(u16),
    /// A request longer than [`MAX_REQUEST`].
    #[error("request of {0} bytes is longer than {MAX_REQUEST}")]
    TooLong(usize),
    /// A string not terminated by NUL.
    #[error("{field} is not NUL-terminated")]
    Unterminated {
        /// Which string.
        field: &'static str,
    },
    /// Invalid or out-of-range value.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field (`filename`, `mode`, `blksize`, ...).
        field: &'static str,
        /// What is wrong with it, and what is valid.
        reason: String,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> DecodeError {
    DecodeError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Splits off one NUL-terminated string.
fn take_str<'a>(rest: &mut &'a [u8], field: &'static str) -> Result<&'a [u8], DecodeError> {
    let end = rest
        .iter()
        .position(|b| *b == 0)
        .ok_or(DecodeError::Unterminated { field })?;
    let s = &rest[..end];
    *rest = &rest[end + 1..];
    Ok(s)
}

fn utf8<'a>(bytes: &'a [u8], field: &'static str) -> Result<&'a str, DecodeError> {
    std::str::from_utf8(bytes).map_err(|_| invalid(field, "not valid UTF-8"))
}

fn number<T: std::str::FromStr>(value: &str, field: &'static str) -> Result<T, DecodeError> {
    if value.is_empty() || value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(field, format!("{value:?} is not a decimal number")));
    }
    value
        .parse()
        .map_err(|_| invalid(field, format!("{value:?} is out of range")))
}

fn ranged<T: PartialOrd + std::fmt::Display + Copy>(
    v: T,
    lo: T,
    hi: T,
    field: &'static str,
) -> Result<T, DecodeError> {
    if v < lo || v > hi {
        return Err(invalid(field, format!("{v} is outside {lo}..={hi}")));
    }
    Ok(v)
}

/// Reads name/value pairs until the end of `rest`; unknown names are skipped.
fn parse_options(mut rest: &[u8]) -> Result<Options, DecodeError> {
    let mut o = Options::default();
    let mut count = 0usize;
    while !rest.is_empty() {
        count += 1;
        if count > MAX_OPTIONS {
            return Err(invalid(
                "options",
                format!("more than {MAX_OPTIONS} options"),
            ));
        }
        let name = utf8(take_str(&mut rest, "option name")?, "option name")?;
        let value = utf8(take_str(&mut rest, "option value")?, "option value")?;
        let seen = match name.to_ascii_lowercase().as_str() {
            "blksize" => o
                .blksize
                .replace(ranged(
                    number(value, "blksize")?,
                    MIN_BLKSIZE,
                    MAX_BLKSIZE,
                    "blksize",
                )?)
                .is_some(),
            "tsize" => o.tsize.replace(number(value, "tsize")?).is_some(),
            "timeout" => o
                .timeout_s
                .replace(ranged(
                    number(value, "timeout")?,
                    MIN_TIMEOUT_S,
                    MAX_TIMEOUT_S,
                    "timeout",
                )?)
                .is_some(),
            "windowsize" => o
                .windowsize
                .replace(ranged(
                    number(value, "windowsize")?,
                    MIN_WINDOWSIZE,
                    u16::MAX,
                    "windowsize",
                )?)
                .is_some(),
            _ => false,
        };
        if seen {
            return Err(invalid("options", format!("option {name} given twice")));
        }
    }
    Ok(o)
}

fn parse_request(body: &[u8]) -> Result<Request, DecodeError> {
    let mut rest = body;
    let name = take_str(&mut rest, "filename")?;
    if name.is_empty() {
        return Err(invalid("filename", "empty"));
    }
    if name.len() > MAX_FILENAME {
        return Err(invalid(
            "filename",
            format!("{} bytes, longer than {MAX_FILENAME}", name.len()),
        ));
    }
    let filename = utf8(name, "filename")?.to_string();
    let mode = utf8(take_str(&mut rest, "mode")?, "mode")?;
    let mode = match mode.to_ascii_lowercase().as_str() {
        "netascii" => Mode::Netascii,
        "octet" => Mode::Octet,
        other => {
            return Err(invalid(
                "mode",
                format!("{other:?} is not supported (netascii or octet)"),
            ))
        }
    };
    let options = parse_options(rest)?;
    Ok(Request {
        filename,
        mode,
        options,
    })
}

/// Decodes one datagram.
pub fn parse(packet: &[u8]) -> Result<Packet<'_>, DecodeError> {
    let len = packet.len();
    let (op, body) = match packet {
        [a, b, body @ ..] => (u16::from_be_bytes([*a, *b]), body),
        _ => {
            return Err(DecodeError::Truncated {
                field: "opcode",
                len,
            })
        }
    };
    let block = |body: &[u8]| match body {
        [a, b, ..] => Ok(u16::from_be_bytes([*a, *b])),
        _ => Err(DecodeError::Truncated {
            field: "block",
            len,
        }),
    };
    match op {
        OP_RRQ | OP_WRQ => {
            if len > MAX_REQUEST {
                return Err(DecodeError::TooLong(len));
            }
            let r = parse_request(body)?;
            Ok(if op == OP_RRQ {
                Packet::Rrq(r)
            } else {
                Packet::Wrq(r)
            })
        }
        OP_DATA => Ok(Packet::Data {
            block: block(body)?,
            data: body.get(2..).unwrap_or_default(),
        }),
        OP_ACK => Ok(Packet::Ack {
            block: block(body)?,
        }),
        OP_ERROR => {
            let code = ErrorCode::from_number(block(body).map_err(|_| DecodeError::Truncated {
                field: "error code",
                len,
            })?);
            let mut rest = body.get(2..).unwrap_or_default();
            let msg = take_str(&mut rest, "error message")?;
            let msg = &msg[..msg.len().min(MAX_ERROR_MESSAGE)];
            Ok(Packet::Error {
                code,
                message: String::from_utf8_lossy(msg).into_owned(),
            })
        }
        OP_OACK => {
            if len > MAX_REQUEST {
                return Err(DecodeError::TooLong(len));
            }
            Ok(Packet::Oack(parse_options(body)?))
        }
        other => Err(DecodeError::Opcode(other)),
    }
}

/// Appends a DATA packet's header and `data` to `out` (cleared first), so a session reuses one buffer.
pub fn build_data(out: &mut Vec<u8>, block: u16, data: &[u8]) {
    out.clear();
    out.extend_from_slice(&OP_DATA.to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
    out.extend_from_slice(data);
}

/// An ACK packet (used by clients and tests).
pub fn build_ack(block: u16) -> Vec<u8> {
    let mut out = OP_ACK.to_be_bytes().to_vec();
    out.extend_from_slice(&block.to_be_bytes());
    out
}

fn push_option(out: &mut Vec<u8>, name: &str, value: impl std::fmt::Display) {
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.extend_from_slice(value.to_string().as_bytes());
    out.push(0);
}

fn push_options(out: &mut Vec<u8>, o: &Options) {
    if let Some(v) = o.blksize {
        push_option(out, "blksize", v);
    }
    if let Some(v) = o.tsize {
        push_option(out, "tsize", v);
    }
    if let Some(v) = o.timeout_s {
        push_option(out, "timeout", v);
    }
    if let Some(v) = o.windowsize {
        push_option(out, "windowsize", v);
    }
}

/// An OACK carrying `options` (the ones the server accepted, with the values it chose).
pub fn build_oack(options: &Options) -> Vec<u8> {
    let mut out = OP_OACK.to_be_bytes().to_vec();
    push_options(&mut out, options);
    out
}

/// An ERROR packet; `message` is cut to [`MAX_ERROR_MESSAGE`] bytes (at a character boundary) and any NUL
/// in it is dropped, so it always parses back.
pub fn build_error(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut out = OP_ERROR.to_be_bytes().to_vec();
    out.extend_from_slice(&code.number().to_be_bytes());
    let mut end = message.len().min(MAX_ERROR_MESSAGE);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    out.extend(message[..end].bytes().filter(|b| *b != 0));
    out.push(0);
    out
}

/// A read or write request (used by clients and tests); `write` selects WRQ.
pub fn build_request(write: bool, request: &Request) -> Vec<u8> {
    let op = if write { OP_WRQ } else { OP_RRQ };
    let mut out = op.to_be_bytes().to_vec();
    out.extend_from_slice(request.filename.as_bytes());
    out.push(0);
    out.extend_from_slice(request.mode.as_str().as_bytes());
    out.push(0);
    push_options(&mut out, &request.options);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_with_options() {
        let p = b"\x00\x01pxelinux.0\x00OCTET\x00blksize\x001468\x00tsize\x000\x00windowsize\x008\x00x-vendor\x00y\x00";
        let Packet::Rrq(r) = parse(p).unwrap() else {
            panic!("not an RRQ")
        };
        assert_eq!(r.filename, "pxelinux.0");
        assert_eq!(r.mode, Mode::Octet);
        assert_eq!(r.options.blksize, Some(1468));
        assert_eq!(r.options.tsize, Some(0));
        assert_eq!(r.options.windowsize, Some(8));
        assert_eq!(r.options.timeout_s, None);
    }

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&[u8], &str)] = &[
            (b"\x00\x01f\x00octet\x00blksize\x007\x00", "blksize"),
            (b"\x00\x01f\x00octet\x00blksize\x0065465\x00", "blksize"),
            (b"\x00\x01f\x00octet\x00timeout\x000\x00", "timeout"),
            (b"\x00\x01f\x00octet\x00timeout\x00256\x00", "timeout"),
            (b"\x00\x01f\x00octet\x00windowsize\x000\x00", "windowsize"),
            (b"\x00\x01f\x00mail\x00", "mode"),
            (b"\x00\x01\x00octet\x00", "filename"),
            (b"\x00\x01f\x00octet\x00tsize\x00-1\x00", "tsize"),
        ];
        for (p, field) in cases {
            let e = parse(p).unwrap_err().to_string();
            assert!(e.contains(field), "{e} should name {field}");
        }
        let long = [b"\x00\x01".as_slice(), &[b'a'; 256], b"\x00octet\x00"].concat();
        assert!(parse(&long).unwrap_err().to_string().contains("filename"));
        let mut many = b"\x00\x01f\x00octet\x00".to_vec();
        for i in 0..17 {
            many.extend_from_slice(format!("x{i}\x00y\x00").as_bytes());
        }
        assert!(parse(&many).unwrap_err().to_string().contains("options"));
        let mut big = b"\x00\x01f\x00octet\x00".to_vec();
        big.resize(513, b'a');
        assert_eq!(parse(&big).unwrap_err(), DecodeError::TooLong(513));
        assert!(matches!(
            parse(b"\x00\x01f\x00octet"),
            Err(DecodeError::Unterminated { field: "mode" })
        ));
        assert!(matches!(parse(b"\x00\x09"), Err(DecodeError::Opcode(9))));
        assert!(matches!(parse(b"\x00"), Err(DecodeError::Truncated { .. })));
    }

    fn options() -> impl Strategy<Value = Options> {
        (
            proptest::option::of(MIN_BLKSIZE..=MAX_BLKSIZE),
            proptest::option::of(any::<u64>()),
            proptest::option::of(MIN_TIMEOUT_S..=MAX_TIMEOUT_S),
            proptest::option::of(MIN_WINDOWSIZE..=u16::MAX),
        )
            .prop_map(|(blksize, tsize, timeout_s, windowsize)| Options {
                blksize,
                tsize,
                timeout_s,
                windowsize,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn truncated_requests_never_panic(o in options(), cut in 0usize..200) {
            let r = Request { filename: "boot/x".into(), mode: Mode::Octet, options: o };
            let p = build_request(false, &r);
            let _ = parse(&p[..cut.min(p.len())]);
        }

        #[test]
        fn built_packets_parse_back(
            o in options(),
            name in "[a-zA-Z0-9_./-]{1,200}",
            netascii in any::<bool>(),
            write in any::<bool>(),
            block in any::<u16>(),
            data in proptest::collection::vec(any::<u8>(), 0..1500),
            code in any::<u16>(),
            message in "\\PC{0,300}",
        ) {
            let mode = if netascii { Mode::Netascii } else { Mode::Octet };
            let r = Request { filename: name, mode, options: o.clone() };
            let p = build_request(write, &r);
            if p.len() <= MAX_REQUEST {
                let back = parse(&p).unwrap();
                prop_assert_eq!(back, if write { Packet::Wrq(r) } else { Packet::Rrq(r) });
            }
            let oack = build_oack(&o);
            prop_assert_eq!(parse(&oack).unwrap(), Packet::Oack(o));
            let mut d = Vec::new();
            build_data(&mut d, block, &data);
            prop_assert_eq!(parse(&d).unwrap(), Packet::Data { block, data: &data });
            let ack = build_ack(block);
            prop_assert_eq!(parse(&ack).unwrap(), Packet::Ack { block });
            let e = build_error(ErrorCode::from_number(code), &message);
            match parse(&e).unwrap() {
                Packet::Error { code: c, message: m } => {
                    prop_assert_eq!(c.number(), code);
                    prop_assert!(message.replace('\0', "").starts_with(&m));
                }
                other => prop_assert!(false, "not an error: {:?}", other),
            }
        }
    }
}
