//! One simulated BMC's IPMI 2.0 over LAN service (RMCP+, "lanplus"), on its own UDP port next to its Redfish
//! service and acting on the same [`SimMachine`]: power, boot override, fault knobs, and the agent when a
//! power-on boots from the network.
//!
//! Why a second BMC protocol: most of the fleets Ingot manages are driven over IPMI, and the rack's `ipmi`
//! driver (its own RMCP+ client, or `ipmitool`) needs a BMC to drive at scale that behaves like the Redfish
//! one — same machine model, same faults — so tests and the benchmark can mix both. The wire format and the
//! crypto come from [`ingot_rmcp`], the crate the rack's `ipmi` driver uses too: one implementation, two
//! sides.
//!
//! What it answers:
//! - RMCP presence ping (ASF) → pong.
//! - Session-less (IPMI 1.5 or 2.0 framing): Get Channel Authentication Capabilities (IPMI 2.0 / RMCP+
//!   offered), Get Channel Cipher Suites, Get System GUID.
//! - The RMCP+ handshake: Open Session (cipher suites 0, 1, 2, 3, 17), RAKP 1-4 against the machine's user
//!   name and password.
//! - In a session (see `command.rs`): Set Session Privilege Level, Close Session, Get Device ID, Get Device /
//!   System GUID, Get Chassis Status, Chassis Control, Set / Get System Boot Options; anything else
//!   completion code 0xC1.
//!
//! Malformed, foreign or unauthenticated datagrams are dropped without an answer, as real BMCs do; nothing a
//! datagram holds can panic the service. Sessions: at most [`MAX_SESSIONS`] per BMC (the least recently
//! used is evicted), closed after [`SESSION_TIMEOUT`] idle.
//!
//! Faults ([`crate::Faults`]): `unresponsive` drops every datagram; `slow_ms` handles each datagram that much
//! later; `wrong_password` fails every RAKP 3 with "invalid integrity check value"; `flapping` makes Get
//! Chassis Status alternately fail (0xFF) and report the opposite power state; `fail_power` makes Chassis
//! Control fail (0xFF).

mod command;
mod session;

use crate::machine::SimMachine;
use ingot_rmcp::{self as rmcp, DecodeError};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::watch;

/// Most sessions (open, being opened) one BMC holds; a new one beyond this evicts the least recently used,
/// like the small session tables of real BMCs.
pub const MAX_SESSIONS: usize = 64;
/// A session (or a handshake) unused this long is dropped, as most BMCs do after 60 s.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(60);
/// Most answers a `slow_ms` BMC holds at once; datagrams beyond this are dropped (a flood cannot grow
/// memory without bound).
pub const MAX_DELAYED: usize = 256;
/// The LAN channel number the BMC reports.
pub const CHANNEL: u8 = 1;
/// How long a repeated state-changing request (same bytes, same request sequence number: a console
/// retransmitting because the answer was late) is answered from the cache instead of acting twice.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(5);

/// RMCP message class ASF (presence ping / pong).
const ASF_CLASS: u8 = 0x06;
/// The ASF IANA enterprise number, as RMCP carries it.
const ASF_IANA: [u8; 4] = [0x00, 0x00, 0x11, 0xbe];
/// Receive buffer: larger than any datagram we accept, so an oversized one is seen as such.
const RECV_BUF: usize = 2 * rmcp::MAX_DATAGRAM;

/// Why a datagram got no answer (logged at trace level: dropping is what BMCs do).
#[derive(Debug, thiserror::Error)]
pub enum Ignored {
    /// Not a well-formed RMCP / IPMI datagram, or its integrity check failed.
    #[error("malformed datagram: {0}")]
    Decode(#[from] DecodeError),
    /// Larger than any IPMI LAN message.
    #[error("datagram larger than {} bytes", rmcp::MAX_DATAGRAM)]
    TooLarge,
    /// An RMCP message this BMC does not serve (ASF other than ping, OEM classes).
    #[error("RMCP message not served: {0}")]
    Rmcp(&'static str),
    /// A session id the BMC does not know (closed, timed out, evicted, or never opened).
    #[error("no session {0:#010x}")]
    UnknownSession(u32),
    /// A payload type the BMC does not serve (SOL, OEM) or that makes no sense here.
    #[error("payload type {0:#04x} not served here")]
    Payload(u8),
    /// A command that needs a session arrived without one.
    #[error("command netfn {netfn:#04x} cmd {cmd:#04x} needs a session")]
    NeedsSession {
        /// NetFn.
        netfn: u8,
        /// Command.
        cmd: u8,
    },
    /// A handshake message out of order, or abandoned by the console.
    #[error("handshake: {0}")]
    Handshake(&'static str),
    /// A session sequence number far behind the newest seen: a replay.
    #[error("session sequence number {0} is a replay")]
    Replay(u32),
}

/// The IPMI side of one simulated BMC: its session table and the state the IPMI protocol has beyond the
/// machine's (flapping counter, boot options "set in progress").
pub struct IpmiBmc {
    machine: Arc<SimMachine>,
    /// The BMC's GUID (RAKP, Get Device GUID): the machine's UUID.
    guid: [u8; 16],
    sessions: Mutex<session::Sessions>,
    /// Counts Get Chassis Status under the `flapping` fault.
    flap: AtomicU64,
    /// Boot options parameter 0 (set in progress): stored and echoed.
    boot_set_in_progress: AtomicU8,
    /// Answers held by `slow_ms` right now.
    delayed: AtomicUsize,
}

impl std::fmt::Debug for IpmiBmc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpmiBmc")
            .field("machine", &self.machine.info().hostname)
            .field("sessions", &self.session_count())
            .finish_non_exhaustive()
    }
}

/// The BMC GUID from the machine's UUID (its 32 hex digits), or a digest of it when it is not one.
fn guid_of(uuid: &str) -> [u8; 16] {
    let digits: Vec<u8> = uuid
        .chars()
        .filter_map(|c| c.to_digit(16).and_then(|d| u8::try_from(d).ok()))
        .collect();
    let mut g = [0u8; 16];
    if digits.len() == 32 && uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        for (i, b) in g.iter_mut().enumerate() {
            *b = (digits[2 * i] << 4) | digits[2 * i + 1];
        }
    } else {
        g.copy_from_slice(&Sha256::digest(uuid.as_bytes())[..16]);
    }
    g
}

impl IpmiBmc {
    /// The IPMI service of `machine`'s BMC, with no sessions.
    pub fn new(machine: Arc<SimMachine>) -> IpmiBmc {
        let guid = guid_of(&machine.info().uuid);
        IpmiBmc {
            machine,
            guid,
            sessions: Mutex::new(session::Sessions::default()),
            flap: AtomicU64::new(0),
            boot_set_in_progress: AtomicU8::new(0),
            delayed: AtomicUsize::new(0),
        }
    }

    /// Sessions held (open or being opened).
    pub fn session_count(&self) -> usize {
        crate::machine::lock(&self.sessions).len()
    }

    /// The answer to one datagram from `peer` received at `now`, or why there is none. Synchronous and
    /// independent of sockets and faults other than `wrong_password`, `flapping` and `fail_power` (the
    /// transport applies `unresponsive` and `slow_ms`), so it is tested directly.
    pub fn handle(
        &self,
        datagram: &[u8],
        peer: SocketAddr,
        now: Instant,
    ) -> Result<Vec<u8>, Ignored> {
        if datagram.len() > rmcp::MAX_DATAGRAM {
            return Err(Ignored::TooLarge);
        }
        if datagram.len() >= 4 && datagram[0] == 0x06 && datagram[3] == ASF_CLASS {
            return presence_pong(datagram);
        }
        let h = rmcp::peek_header(datagram)?;
        if !h.rmcp_plus {
            if h.session_id != 0 {
                return Err(Ignored::Decode(DecodeError::Format(
                    "IPMI 1.5 session (only RMCP+ sessions are served)",
                )));
            }
            return self.sessionless(datagram, false);
        }
        if h.session_id != 0 {
            return self.in_session(datagram, h.session_id, now);
        }
        match h.payload_type {
            rmcp::PAYLOAD_IPMI => self.sessionless(datagram, true),
            rmcp::PAYLOAD_OPEN_SESSION_REQUEST => self.open_session(datagram, peer, now),
            rmcp::PAYLOAD_RAKP1 => self.rakp1(datagram, now),
            rmcp::PAYLOAD_RAKP3 => self.rakp3(datagram, now),
            other => Err(Ignored::Payload(other)),
        }
    }

    /// A session-less IPMI request: only the discovery commands a console sends before its session.
    fn sessionless(&self, datagram: &[u8], rmcp_plus: bool) -> Result<Vec<u8>, Ignored> {
        let pkt = rmcp::decode(datagram, &rmcp::SessionKeys::none())?;
        let req = rmcp::parse_ipmi_request(&pkt.payload)?;
        let reply = self
            .sessionless_command(&req)
            .ok_or(Ignored::NeedsSession {
                netfn: req.netfn,
                cmd: req.cmd,
            })?;
        let msg = rmcp::ipmi_response(&req, reply.cc, &reply.data);
        Ok(if rmcp_plus {
            rmcp::encode_v20(
                rmcp::PAYLOAD_IPMI,
                0,
                0,
                &msg,
                &rmcp::SessionKeys::none(),
                [0; 16],
            )
        } else {
            rmcp::encode_v15(&msg)
        })
    }
}

/// The answer to an RMCP presence ping (ASF): a pong announcing IPMI support.
fn presence_pong(datagram: &[u8]) -> Result<Vec<u8>, Ignored> {
    if datagram.len() < 12 || datagram[4..8] != ASF_IANA {
        return Err(Ignored::Rmcp("ASF message without the ASF IANA number"));
    }
    if datagram[8] != 0x80 {
        return Err(Ignored::Rmcp("ASF message other than presence ping"));
    }
    let tag = datagram[9];
    let mut p = vec![0x06, 0x00, 0xff, ASF_CLASS];
    p.extend_from_slice(&ASF_IANA);
    p.extend_from_slice(&[0x40, tag, 0x00, 0x10]);
    p.extend_from_slice(&ASF_IANA);
    p.extend_from_slice(&[0, 0, 0, 0]); // OEM-defined
    p.extend_from_slice(&[0x81, 0x00]); // IPMI supported, ASF 1.0; no interactions
    p.extend_from_slice(&[0; 6]);
    Ok(p)
}

/// Releases one `slow_ms` slot when a delayed answer is done (or its task is cancelled).
struct DelaySlot(Arc<IpmiBmc>);

impl DelaySlot {
    /// A slot, or `None` when [`MAX_DELAYED`] answers are already held.
    fn take(bmc: &Arc<IpmiBmc>) -> Option<DelaySlot> {
        let held = bmc.delayed.fetch_add(1, Ordering::AcqRel);
        if held >= MAX_DELAYED {
            bmc.delayed.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(DelaySlot(Arc::clone(bmc)))
    }
}

impl Drop for DelaySlot {
    fn drop(&mut self) {
        self.0.delayed.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves `bmc` on `sock` until `stopping` turns true (or its sender is gone): one datagram at a time,
/// each answered to its sender, with the `unresponsive` and `slow_ms` faults applied here.
pub async fn serve(bmc: Arc<IpmiBmc>, sock: UdpSocket, mut stopping: watch::Receiver<bool>) {
    let sock = Arc::new(sock);
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        let received = tokio::select! {
            r = sock.recv_from(&mut buf) => r,
            _ = stopping.wait_for(|s| *s) => return,
        };
        let (n, peer) = match received {
            Ok(r) => r,
            Err(e) => {
                // UDP receive errors are per datagram (e.g. an ICMP error reported late): go on, briefly
                // paced so a persistent error cannot spin.
                tracing::debug!(machine = %bmc.machine.info().hostname, "IPMI receive error: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        bmc.machine.requests.fetch_add(1, Ordering::Relaxed);
        let faults = bmc.machine.faults();
        if faults.unresponsive {
            continue;
        }
        if faults.slow_ms == 0 {
            answer(&bmc, &sock, &buf[..n], peer).await;
            continue;
        }
        let Some(slot) = DelaySlot::take(&bmc) else {
            continue;
        };
        let datagram = buf[..n].to_vec();
        let (bmc, sock, mut stopping) = (Arc::clone(&bmc), Arc::clone(&sock), stopping.clone());
        let delay = Duration::from_millis(faults.slow_ms);
        tokio::spawn(async move {
            let _slot = slot;
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
            if !bmc.machine.faults().unresponsive {
                answer(&bmc, &sock, &datagram, peer).await;
            }
        });
    }
}

/// Handles one datagram and sends the answer, if any, back to `peer`.
async fn answer(bmc: &IpmiBmc, sock: &UdpSocket, datagram: &[u8], peer: SocketAddr) {
    match bmc.handle(datagram, peer, Instant::now()) {
        Ok(reply) => {
            if let Err(e) = sock.send_to(&reply, peer).await {
                tracing::debug!(machine = %bmc.machine.info().hostname, %peer, "IPMI send failed: {e}");
            }
        }
        Err(why) => {
            tracing::trace!(machine = %bmc.machine.info().hostname, %peer, "IPMI datagram ignored: {why}")
        }
    }
}

#[cfg(test)]
mod tests;
