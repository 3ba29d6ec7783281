//! `ingot-bench --dhcp-fuzz --cases N [--seed S]`: the rack's DHCP parser, engine and reply builder
//! under `N` random and mutated datagrams (`ingot_rack::boot::dhcp::engine::fuzz`: parse →
//! `Engine::handle` → build → decoded back with dhcproto, xid and MAC checked). No cluster, no sockets:
//! one thread, CPU only. Prints cases/s and the counts; fails if a reply did not decode (a panic fails
//! it too). The issue asks for 10 million cases in release (`cargo run --release -p ingot-bench --
//! --dhcp-fuzz`); CI runs a shorter property test (`cargo test -p ingot-rack --lib engine`).

use anyhow::{bail, Result};
use ingot_rack::boot::dhcp::engine::fuzz;
use std::time::Instant;

/// Settings of the fuzz run.
#[derive(Clone, Debug)]
pub struct FuzzOpts {
    /// Datagrams to feed.
    pub cases: u64,
    /// Seed of the generator (the same seed replays the same run).
    pub seed: u64,
}

/// Runs the fuzzer and prints its figures.
pub fn run(o: &FuzzOpts) -> Result<()> {
    let profile = if cfg!(debug_assertions) {
        "debug (use --release for real figures)"
    } else {
        "release"
    };
    eprintln!(
        "== dhcp fuzz: {} cases, seed {} ({profile})",
        o.cases, o.seed
    );
    let started = Instant::now();
    let s = fuzz(o.cases, o.seed);
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    println!("dhcp fuzz ({profile}), seed {}", o.seed);
    println!(
        "  cases         {:>12}  ({:.0} cases/s, {:.1} s)",
        s.cases,
        s.cases as f64 / secs,
        secs
    );
    println!("  parsed        {:>12}", s.parsed);
    println!("  refused       {:>12}", s.refused);
    println!("  replied       {:>12}", s.replied);
    println!("  commits       {:>12}", s.commits);
    println!("  enlisted      {:>12}", s.enlisted);
    println!("  bad replies   {:>12}", s.bad_replies);
    if s.bad_replies > 0 {
        bail!(
            "{} replies did not decode back with dhcproto or lost the request's xid/MAC; replay with --seed {}",
            s.bad_replies,
            o.seed
        );
    }
    Ok(())
}
