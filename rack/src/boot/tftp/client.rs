//! A small TFTP read client on the [`codec`](super::codec): blksize, tsize and windowsize (RFC 7440),
//! retransmission of its last ACK on silence, and bounds on everything it accepts. The rack does not
//! fetch over TFTP itself; this is the one client of the tests and of `ingot-bench --boot-files`, which
//! drives the rack and tftpd-hpa with it so both are measured by the same client.
//!
//! Windowed receive (RFC 7440 §4): blocks are taken in order; after `windowsize` of them, or the last
//! (short) one, the client ACKs the last block it has. A block out of order means one was lost: the
//! client ACKs the last block it has at once, and the server resends from the next.

use super::codec::{self, ErrorCode, Mode, Options, Packet, Request};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;

/// What to fetch and how patiently.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// The options asked for (blksize, tsize, timeout, windowsize); the server's OACK may lower them.
    pub options: Options,
    /// How long to wait for the next packet before sending the last ACK (or the request) again.
    pub timeout: Duration,
    /// Timeouts in a row before giving up.
    pub max_tries: u32,
    /// Most bytes accepted: a server sending more is cut off (the transfer fails).
    pub max_bytes: u64,
}

impl FetchOptions {
    /// Asks for `options`, 1 s timeout, 5 tries, at most 1 GiB.
    pub fn new(options: Options) -> FetchOptions {
        FetchOptions {
            options,
            timeout: Duration::from_secs(1),
            max_tries: 5,
            max_bytes: 1 << 30,
        }
    }
}

/// A finished transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// File bytes received.
    pub bytes: u64,
    /// The options the server acknowledged (empty without an OACK: blksize 512, window 1).
    pub accepted: Options,
    /// Times the client resent its last ACK (or the request) after silence.
    pub timeouts: u64,
    /// Blocks received out of order or again (each answered with the last in-order ACK).
    pub out_of_order: u64,
}

/// Why a fetch failed; each says what happened.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// A socket operation failed.
    #[error("TFTP fetch of {file}: {source}")]
    Io {
        /// The file asked for.
        file: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The server answered with ERROR.
    #[error("TFTP server refused {file}: error {code}: {message}")]
    Refused {
        /// The file asked for.
        file: String,
        /// The TFTP error code.
        code: u16,
        /// The server's message.
        message: String,
    },
    /// No packet within `max_tries` timeouts.
    #[error("TFTP fetch of {file}: the server went silent after {bytes} bytes")]
    Silent {
        /// The file asked for.
        file: String,
        /// Bytes received before.
        bytes: u64,
    },
    /// The server broke the protocol (a packet that does not parse, an OACK of an option not asked,
    /// a block larger than negotiated, more than `max_bytes`).
    #[error("TFTP fetch of {file}: {reason}")]
    Protocol {
        /// The file asked for.
        file: String,
        /// What was wrong.
        reason: String,
    },
}

/// Receive buffer asked for (the kernel caps it at `net.core.rmem_max`): a window of 16 blocks of 8 KiB
/// overflows the usual 208 KiB default on loopback, and a lost tail of a window costs a whole timeout.
pub const RECV_BUFFER: usize = 4 << 20;

/// A non-blocking UDP socket on `bind` with a [`RECV_BUFFER`] receive buffer (best effort).
fn socket(bind: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(bind),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    let _ = s.set_recv_buffer_size(RECV_BUFFER);
    s.set_nonblocking(true)?;
    s.bind(&bind.into())?;
    UdpSocket::from_std(s.into())
}

/// Fetches `filename` from the server at `server` in octet mode, handing each block's bytes and their
/// offset to `sink` in order.
pub async fn fetch(
    server: SocketAddr,
    filename: &str,
    opts: &FetchOptions,
    mut sink: impl FnMut(u64, &[u8]),
) -> Result<Fetched, FetchError> {
    let file = filename.to_string();
    let io = |source| FetchError::Io {
        file: file.clone(),
        source,
    };
    let protocol = |reason: String| FetchError::Protocol {
        file: file.clone(),
        reason,
    };
    let bind: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = socket(bind).map_err(io)?;
    let request = codec::build_request(
        false,
        &Request {
            filename: filename.to_string(),
            mode: Mode::Octet,
            options: opts.options.clone(),
        },
    );
    let mut buf = vec![0u8; usize::from(codec::MAX_BLKSIZE) + 4];
    let mut out = Fetched {
        bytes: 0,
        accepted: Options::default(),
        timeouts: 0,
        out_of_order: 0,
    };

    // The first reply comes from the transfer's own port (its TID): connect to it.
    let mut tries = 0;
    let (n, tid) = loop {
        sock.send_to(&request, server).await.map_err(io)?;
        match tokio::time::timeout(opts.timeout, sock.recv_from(&mut buf)).await {
            Ok(r) => break r.map_err(io)?,
            Err(_) => {
                tries += 1;
                out.timeouts += 1;
                if tries >= opts.max_tries {
                    return Err(FetchError::Silent { file, bytes: 0 });
                }
            }
        }
    };
    sock.connect(tid).await.map_err(io)?;
    let mut first = Some(buf[..n].to_vec());

    let mut block_size = usize::from(codec::DEFAULT_BLKSIZE);
    let mut window: u64 = 1;
    // The last block received in order (0: none), as a counter that does not wrap.
    let mut have: u64 = 0;
    let mut in_window: u64 = 0;
    let mut last_ack = codec::build_ack(0);
    let mut tries = 0;
    loop {
        let n = match first.take() {
            Some(p) => {
                buf[..p.len()].copy_from_slice(&p);
                p.len()
            }
            None => match tokio::time::timeout(opts.timeout, sock.recv(&mut buf)).await {
                Ok(r) => {
                    tries = 0;
                    r.map_err(io)?
                }
                Err(_) => {
                    tries += 1;
                    out.timeouts += 1;
                    if tries >= opts.max_tries {
                        return Err(FetchError::Silent {
                            file,
                            bytes: out.bytes,
                        });
                    }
                    sock.send(&last_ack).await.map_err(io)?;
                    in_window = 0;
                    continue;
                }
            },
        };
        match codec::parse(&buf[..n]) {
            Ok(Packet::Oack(o)) if have == 0 => {
                let asked = &opts.options;
                let unasked = (o.blksize.is_some() && asked.blksize.is_none())
                    || (o.windowsize.is_some() && asked.windowsize.is_none())
                    || (o.timeout_s.is_some() && asked.timeout_s.is_none())
                    || (o.tsize.is_some() && asked.tsize.is_none());
                if unasked {
                    let _ = sock
                        .send(&codec::build_error(
                            ErrorCode::OptionRefused,
                            "OACK of an option not asked for",
                        ))
                        .await;
                    return Err(protocol(format!("OACK {o:?} names an option not asked")));
                }
                if let Some(b) = o.blksize {
                    block_size = usize::from(b);
                }
                window = u64::from(o.windowsize.unwrap_or(1));
                if let (Some(size), true) = (o.tsize, opts.max_bytes > 0) {
                    if size > opts.max_bytes {
                        let _ = sock
                            .send(&codec::build_error(ErrorCode::DiskFull, "file too large"))
                            .await;
                        return Err(protocol(format!(
                            "tsize {size} is over the limit of {} bytes",
                            opts.max_bytes
                        )));
                    }
                }
                out.accepted = o;
                last_ack = codec::build_ack(0);
                sock.send(&last_ack).await.map_err(io)?;
            }
            Ok(Packet::Data { block, data }) => {
                if data.len() > block_size {
                    return Err(protocol(format!(
                        "block {block} holds {} bytes, more than the block size {block_size}",
                        data.len()
                    )));
                }
                if block != (have + 1) as u16 {
                    // Lost or repeated: tell the server where we are (RFC 7440 §4).
                    out.out_of_order += 1;
                    last_ack = codec::build_ack(have as u16);
                    sock.send(&last_ack).await.map_err(io)?;
                    in_window = 0;
                    continue;
                }
                have += 1;
                in_window += 1;
                let offset = out.bytes;
                out.bytes += data.len() as u64;
                if out.bytes > opts.max_bytes {
                    let _ = sock
                        .send(&codec::build_error(ErrorCode::DiskFull, "file too large"))
                        .await;
                    return Err(protocol(format!("more than {} bytes sent", opts.max_bytes)));
                }
                sink(offset, data);
                let last = data.len() < block_size;
                if last || in_window >= window {
                    last_ack = codec::build_ack(have as u16);
                    sock.send(&last_ack).await.map_err(io)?;
                    in_window = 0;
                }
                if last {
                    return Ok(out);
                }
            }
            Ok(Packet::Error { code, message }) => {
                return Err(FetchError::Refused {
                    file,
                    code: code.number(),
                    message,
                })
            }
            Ok(Packet::Oack(_)) => {} // a late duplicate
            Ok(other) => {
                return Err(protocol(format!("unexpected packet {other:?}")));
            }
            Err(e) => return Err(protocol(format!("a packet that does not parse: {e}"))),
        }
    }
}
