//! `ingot-bench --nemesis --minutes N [--seed S]`: the long nemesis run (the engine is
//! [`ingot_launch::nemesis`], shared with the whole-stack test `t19_nemesis`): 3 proxied regions, 2
//! racks and simulated machines under clients while regions and racks are SIGKILLed, SIGSTOPped and
//! restarted and their links severed or blackholed. Prints the seed first, then minutes, faults injected
//! by kind, operations acknowledged by kind and violations by kind; exits non-zero on any violation and
//! keeps the directory (logs, `nemesis.log`) then.

use anyhow::{bail, Result};
use ingot_launch::nemesis::{self, NemesisOptions};
use ingot_launch::LocalCluster;
use std::path::PathBuf;
use std::time::Duration;

/// What `--nemesis` was asked for.
pub struct NemesisArgs {
    /// Length of the chaos phase.
    pub minutes: f64,
    /// Seed (random when absent; printed either way).
    pub seed: Option<u64>,
    /// Working directory (default: a fresh one under the temp dir, removed after a clean run).
    pub dir: Option<PathBuf>,
}

/// Runs the nemesis and prints its report.
pub async fn run(a: &NemesisArgs) -> Result<()> {
    let seed = a.seed.unwrap_or_else(rand::random);
    eprintln!("== nemesis seed {seed} (replay: ingot-bench --nemesis --seed {seed})");
    let dir = a.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("ingot-bench-nemesis-{}", std::process::id()))
    });
    let _ = std::fs::remove_dir_all(&dir);
    let chaos = Duration::from_secs_f64((a.minutes * 60.0).max(1.0));
    eprintln!("== starting 3 proxied regions in {}", dir.display());
    let cluster = LocalCluster::start(NemesisOptions::cluster_options(&dir)).await?;
    let report = nemesis::run(&cluster, &NemesisOptions::new(seed, chaos)).await;
    drop(cluster);
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("== keeping {}", dir.display());
            return Err(e);
        }
    };
    println!("{}", report.render());
    if !report.violations.is_empty() {
        bail!(
            "{} violations with seed {seed}; logs and nemesis.log kept in {}",
            report.violations.len(),
            dir.display()
        );
    }
    if a.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
