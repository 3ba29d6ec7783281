//! The TFTP fuzzer: random and mutated datagrams through [`codec::parse`], every packet that parses
//! built again and parsed back, and every read request through the server's [`negotiate`] with its
//! OACK parsed back and checked against the server's bounds. Pure and deterministic (one seed, one
//! run): `ingot-bench --tftp-fuzz --cases N --seed S` runs millions of cases; the unit test below runs
//! a few thousand in CI, beside the codec's proptests.

use super::codec::{self, ErrorCode, Mode, Options, Packet, Request};
use super::server::{negotiate, MAX_CLIENT_TIMEOUT_S, MAX_WINDOW_BLOCKS, MAX_WINDOW_BYTES};
use crate::boot::rng::FuzzRng;

/// What a fuzz run saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FuzzStats {
    /// Datagrams fed.
    pub cases: u64,
    /// Datagrams that parsed.
    pub parsed: u64,
    /// Datagrams the parser refused.
    pub refused: u64,
    /// Read requests negotiated.
    pub negotiated: u64,
    /// A packet that did not parse back equal after building, or an OACK outside the server's bounds:
    /// must be 0. The first one is described in `first_bad`.
    pub bad: u64,
    /// The first bad case, for a bug report.
    pub first_bad: Option<String>,
}

/// A number as an option value: usually in range, sometimes at or past the edges, sometimes not a
/// number at all.
fn value(rng: &mut FuzzRng, timeout: bool) -> String {
    match rng.below(16) {
        0 => rng.next().to_string(),
        1 => format!("{}", rng.below(70_000)),
        2 => rng
            .pick(&[
                "", "-1", "0", "7", "8", "65464", "65465", "255", "256", "1e3", " 8", "0x10",
            ])
            .to_string(),
        3 => format!("{:0>30}", rng.below(100)),
        4 => format!("{}", 8 + rng.below(65457)),
        _ if timeout => format!("{}", 1 + rng.below(20)),
        _ => format!("{}", 8 + rng.below(2000)),
    }
}

/// A request-shaped datagram: opcode, a filename, a mode and options (known ones, with odd case and
/// values, unknown ones, repeats).
fn request(rng: &mut FuzzRng) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&(1 + rng.below(2) as u16).to_be_bytes());
    let name = rng.pick(&[
        "undionly.kpxe",
        "snponly.efi",
        "../etc/passwd",
        "/abs",
        "a/./b",
        "",
        "x\u{e9}",
    ]);
    p.extend_from_slice(name.as_bytes());
    for _ in 0..rng.below(3) {
        p.push(b'a' + rng.below(26) as u8);
    }
    p.push(0);
    p.extend_from_slice(
        rng.pick(&["octet", "OCTET", "netascii", "NetAscii", "mail", ""])
            .as_bytes(),
    );
    p.push(0);
    for _ in 0..rng.below(6) {
        let name = rng.pick(&[
            "blksize",
            "BLKSIZE",
            "tsize",
            "timeout",
            "windowsize",
            "WindowSize",
            "x-vendor",
            "",
        ]);
        p.extend_from_slice(name.as_bytes());
        p.push(0);
        p.extend_from_slice(value(rng, name == "timeout").as_bytes());
        p.push(0);
    }
    p
}

/// Any packet kind, well formed or nearly.
fn packet(rng: &mut FuzzRng) -> Vec<u8> {
    match rng.below(6) {
        0 | 1 => request(rng),
        2 => {
            let mut p = Vec::new();
            let data: Vec<u8> = (0..rng.below(1600)).map(|_| rng.byte()).collect();
            codec::build_data(&mut p, rng.next() as u16, &data);
            p
        }
        3 => codec::build_ack(rng.next() as u16),
        4 => {
            let msg: String = (0..rng.below(300))
                .map(|_| char::from(32 + rng.below(95) as u8))
                .collect();
            codec::build_error(ErrorCode::from_number(rng.below(12) as u16), &msg)
        }
        _ => {
            let mut p = request(rng);
            // The same option list behind an OACK opcode.
            if let Some(op) = p.get_mut(1) {
                *op = 6;
            }
            p
        }
    }
}

fn mutate(rng: &mut FuzzRng, p: &mut Vec<u8>) {
    for _ in 0..=rng.below(6) {
        let len = p.len() as u64;
        match rng.below(6) {
            0 if len > 0 => {
                let i = rng.below(len) as usize;
                if let Some(b) = p.get_mut(i) {
                    *b ^= 1 << rng.below(8);
                }
            }
            1 if len > 0 => {
                let i = rng.below(len) as usize;
                if let Some(b) = p.get_mut(i) {
                    *b = if rng.below(2) == 0 { 0 } else { rng.byte() };
                }
            }
            2 => p.truncate(rng.below(len + 1) as usize),
            3 => {
                for _ in 0..rng.below(64) {
                    p.push(rng.byte());
                }
            }
            4 => {
                let extra = rng.below(600) as usize;
                p.resize(p.len() + extra, b'a');
            }
            _ => {
                let i = rng.below(len + 1) as usize;
                p.insert(i.min(p.len()), 0);
            }
        }
    }
}

/// Checks one parsed packet: it builds back to an equal packet, and a read request's negotiation stays
/// within the server's bounds. `Err` describes what broke.
fn check(packet: &Packet<'_>, size: u64) -> Result<bool, String> {
    match packet {
        Packet::Rrq(r) | Packet::Wrq(r) => {
            let write = matches!(packet, Packet::Wrq(_));
            let built = codec::build_request(write, r);
            if built.len() <= codec::MAX_REQUEST {
                let back = codec::parse(&built).map_err(|e| format!("{r:?} built back: {e}"))?;
                let same = match (&back, write) {
                    (Packet::Rrq(b), false) | (Packet::Wrq(b), true) => b == r,
                    _ => false,
                };
                if !same {
                    return Err(format!("{r:?} parsed back as {back:?}"));
                }
            }
            if write {
                return Ok(false);
            }
            check_negotiation(r, size)?;
            Ok(true)
        }
        Packet::Oack(o) => {
            let built = codec::build_oack(o);
            let back = codec::parse(&built);
            if back != Ok(Packet::Oack(o.clone())) {
                return Err(format!("OACK {o:?} parsed back as {back:?}"));
            }
            Ok(false)
        }
        Packet::Data { block, data } => {
            let mut p = Vec::new();
            codec::build_data(&mut p, *block, data);
            if codec::parse(&p)
                != Ok(Packet::Data {
                    block: *block,
                    data,
                })
            {
                return Err(format!("DATA {block} did not parse back"));
            }
            Ok(false)
        }
        Packet::Ack { block } => {
            if codec::parse(&codec::build_ack(*block)) != Ok(Packet::Ack { block: *block }) {
                return Err(format!("ACK {block} did not parse back"));
            }
            Ok(false)
        }
        Packet::Error { code, message } => {
            match codec::parse(&codec::build_error(*code, message)) {
                Ok(Packet::Error {
                    code: c,
                    message: m,
                }) if c == *code && message.starts_with(&m) => Ok(false),
                other => Err(format!(
                    "ERROR {code:?} {message:?} parsed back as {other:?}"
                )),
            }
        }
    }
}

/// The OACK the server would send for `r` stays within its bounds and parses back.
fn check_negotiation(r: &Request, size: u64) -> Result<(), String> {
    let o: Options = negotiate(r, size);
    let asked = &r.options;
    let block = usize::from(o.blksize.unwrap_or(codec::DEFAULT_BLKSIZE));
    let fine = o.blksize == asked.blksize
        && o.tsize == asked.tsize.filter(|_| r.mode == Mode::Octet).map(|_| size)
        && o.timeout_s
            .is_none_or(|t| t <= MAX_CLIENT_TIMEOUT_S && Some(t) == asked.timeout_s)
        && o.windowsize.is_none_or(|w| {
            let w = usize::from(w);
            w >= 1
                && asked.windowsize.is_some_and(|a| usize::from(a) >= w)
                && w <= MAX_WINDOW_BLOCKS
                && (w == 1 || w * block <= MAX_WINDOW_BYTES)
        })
        && o.windowsize.is_some() == asked.windowsize.is_some();
    if !fine {
        return Err(format!("request {r:?} negotiated {o:?}"));
    }
    let built = codec::build_oack(&o);
    let back = codec::parse(&built);
    if back != Ok(Packet::Oack(o.clone())) {
        return Err(format!("OACK {o:?} parsed back as {back:?}"));
    }
    Ok(())
}

/// Feeds `cases` datagrams generated from `seed`.
pub fn fuzz(cases: u64, seed: u64) -> FuzzStats {
    let mut rng = FuzzRng(seed);
    let mut stats = FuzzStats::default();
    for _ in 0..cases {
        stats.cases += 1;
        let bytes = match rng.below(8) {
            0 => (0..rng.below(700)).map(|_| rng.byte()).collect(),
            1..=3 => packet(&mut rng),
            _ => {
                let mut p = packet(&mut rng);
                mutate(&mut rng, &mut p);
                p
            }
        };
        let size = match rng.below(3) {
            0 => rng.next(),
            _ => rng.below(100 << 20),
        };
        match codec::parse(&bytes) {
            Ok(p) => {
                stats.parsed += 1;
                match check(&p, size) {
                    Ok(negotiated) => stats.negotiated += u64::from(negotiated),
                    Err(why) => {
                        stats.bad += 1;
                        stats.first_bad.get_or_insert(why);
                    }
                }
            }
            Err(_) => stats.refused += 1,
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fuzz_run_finds_nothing_and_reaches_every_path() {
        let s = fuzz(50_000, 7);
        assert_eq!(s.bad, 0, "{:?}", s.first_bad);
        assert_eq!(s.cases, 50_000);
        // The generator must reach both outcomes and the negotiation, or the run proves little.
        assert!(s.parsed > 10_000 && s.refused > 5_000, "{s:?}");
        assert!(s.negotiated > 1_000, "{s:?}");
    }
}
