//! `ingot-bench --tftp-fuzz --cases N [--seed S]`: the rack's TFTP codec and the server's option
//! negotiation under `N` random and mutated datagrams (`ingot_rack::boot::tftp::fuzz`: parse → build
//! back → parse, and every read request's OACK checked against the server's bounds). No sockets: one
//! thread, CPU only. Prints cases/s and the counts; fails if any case broke (a panic fails it too). CI
//! runs a shorter run (`cargo test -p ingot-rack --lib tftp::fuzz`) beside the codec's proptests.

use anyhow::{bail, Result};
use ingot_rack::boot::tftp::fuzz::fuzz;
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
        "== tftp fuzz: {} cases, seed {} ({profile})",
        o.cases, o.seed
    );
    let started = Instant::now();
    let s = fuzz(o.cases, o.seed);
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    println!("tftp fuzz ({profile}), seed {}", o.seed);
    println!(
        "  cases         {:>12}  ({:.0} cases/s, {:.1} s)",
        s.cases,
        s.cases as f64 / secs,
        secs
    );
    println!("  parsed        {:>12}", s.parsed);
    println!("  refused       {:>12}", s.refused);
    println!("  negotiated    {:>12}", s.negotiated);
    println!("  bad           {:>12}", s.bad);
    if s.bad > 0 {
        bail!(
            "{} cases broke (first: {}); replay with --seed {}",
            s.bad,
            s.first_bad.as_deref().unwrap_or("?"),
            o.seed
        );
    }
    Ok(())
}
