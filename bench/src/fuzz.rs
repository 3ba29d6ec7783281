//! `ingot-bench --dhcp-fuzz | --tftp-fuzz --cases N [--seed S]`: a protocol codec of the rack under `N`
//! random and mutated datagrams. No cluster, no sockets: one thread, CPU only. Prints cases/s and the
//! counts; fails if any case broke (a panic fails it too). CI runs shorter property tests of the same
//! loops (`cargo test -p ingot-rack --lib engine`, `... tftp::fuzz`).
//!
//! - DHCP (`ingot_rack::boot::dhcp::engine::fuzz`): parse → `Engine::handle` → build → decoded back with
//!   dhcproto, xid and MAC checked. The DHCP issue asks for 10 million cases in release.
//! - TFTP (`ingot_rack::boot::tftp::fuzz::fuzz`): parse → build back → parse, and every read request's OACK
//!   checked against the server's bounds.

use anyhow::{bail, Result};
use std::time::Instant;

/// Which codec to fuzz.
#[derive(Clone, Copy, Debug)]
pub enum Protocol {
    /// The DHCP parser, engine and reply builder.
    Dhcp,
    /// The TFTP codec and option negotiation.
    Tftp,
}

/// Settings of the fuzz run.
#[derive(Clone, Debug)]
pub struct FuzzOpts {
    /// Which codec.
    pub protocol: Protocol,
    /// Datagrams to feed.
    pub cases: u64,
    /// Seed of the generator (the same seed replays the same run).
    pub seed: u64,
}

/// What one run found, whatever the protocol: its counters to print, how many cases broke and the
/// first of them.
struct Found {
    cases: u64,
    rows: Vec<(&'static str, u64)>,
    bad: u64,
    first_bad: Option<String>,
}

/// Runs the fuzzer and prints its figures.
pub fn run(o: &FuzzOpts) -> Result<()> {
    let profile = if cfg!(debug_assertions) {
        "debug (use --release for real figures)"
    } else {
        "release"
    };
    let name = match o.protocol {
        Protocol::Dhcp => "dhcp",
        Protocol::Tftp => "tftp",
    };
    eprintln!(
        "== {name} fuzz: {} cases, seed {} ({profile})",
        o.cases, o.seed
    );
    let started = Instant::now();
    let f = match o.protocol {
        Protocol::Dhcp => {
            let s = ingot_rack::boot::dhcp::engine::fuzz(o.cases, o.seed);
            Found {
                cases: s.cases,
                rows: vec![
                    ("parsed", s.parsed),
                    ("refused", s.refused),
                    ("replied", s.replied),
                    ("commits", s.commits),
                    ("enlisted", s.enlisted),
                    ("bad replies", s.bad_replies),
                ],
                bad: s.bad_replies,
                first_bad: Some(
                    "a reply did not decode back with dhcproto or lost the request's xid/MAC"
                        .into(),
                ),
            }
        }
        Protocol::Tftp => {
            let s = ingot_rack::boot::tftp::fuzz::fuzz(o.cases, o.seed);
            Found {
                cases: s.cases,
                rows: vec![
                    ("parsed", s.parsed),
                    ("refused", s.refused),
                    ("negotiated", s.negotiated),
                    ("bad", s.bad),
                ],
                bad: s.bad,
                first_bad: s.first_bad,
            }
        }
    };
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    println!("{name} fuzz ({profile}), seed {}", o.seed);
    println!(
        "  cases         {:>12}  ({:.0} cases/s, {:.1} s)",
        f.cases,
        f.cases as f64 / secs,
        secs
    );
    for (label, n) in &f.rows {
        println!("  {label:<13} {n:>12}");
    }
    if f.bad > 0 {
        bail!(
            "{} cases broke (first: {}); replay with --seed {}",
            f.bad,
            f.first_bad.as_deref().unwrap_or("?"),
            o.seed
        );
    }
    Ok(())
}
