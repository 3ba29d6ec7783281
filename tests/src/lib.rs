//! Whole-stack test support: every test starts real `ingot-region` processes on port 0 (through
//! [`ingot_client::local::LocalCluster`]) in its own directory. When a test fails, its directory — data
//! directories and every region's log — is kept and the log tails are printed; when it passes, the
//! directory is removed.
//!
//! Scenario files live in `tests/tests/`: `t10_cluster` (replication, failover, snapshots, restarts),
//! `t11_crash` (SIGKILL during concurrent writes), `t12_security` (TLS and tokens, data-dir checks),
//! `t13_peers` (grpcurl and Python grpcio), `t14_cli` (the `ingot` binary and `ingot dev up`).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion

use anyhow::{Context, Result};
use ingot_client::local::{log_tail, LocalCluster, LocalClusterOptions};
use ingot_client::Clients;
use ingot_proto::v1::{CreateMachineRequest, ListMachinesRequest, ReadConsistency};
use std::path::PathBuf;
use std::time::Duration;

/// A cluster for one test, with its directory.
pub struct TestCluster {
    /// The processes.
    pub cluster: LocalCluster,
    /// The test's directory (data dirs, logs, env).
    pub dir: PathBuf,
}

/// Region flags that make tests fast without changing behaviour: shorter election timeouts.
pub const FAST: &[&str] = &[];

/// Where test directories go: `target/test-clusters/<name>-<pid>`.
pub fn test_dir(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("."));
    let target = exe
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "target"))
        .map(PathBuf::from);
    let base = target
        .unwrap_or_else(std::env::temp_dir)
        .join("test-clusters");
    base.join(format!("{name}-{}", std::process::id()))
}

impl TestCluster {
    /// Starts `regions` regions with [`FAST`] timing plus `extra` flags.
    pub async fn start(name: &str, regions: usize, extra: &[&str]) -> Result<TestCluster> {
        let dir = test_dir(name);
        let _ = std::fs::remove_dir_all(&dir);
        let mut opts = LocalClusterOptions::new(&dir, regions);
        opts.region_args = FAST
            .iter()
            .chain(extra.iter())
            .map(|s| s.to_string())
            .collect();
        let cluster = LocalCluster::start(opts)
            .await
            .with_context(|| format!("starting {regions} regions in {}", dir.display()))?;
        Ok(TestCluster { cluster, dir })
    }

    /// Clients over all regions.
    pub fn clients(&self) -> Clients {
        self.cluster.connect().expect("clients")
    }

    /// Clients talking to region `i` only.
    pub fn clients_to(&self, i: usize) -> Clients {
        self.cluster.connect_to(i).expect("clients")
    }

    /// Index of the current leader, waiting up to 10 s for one.
    pub async fn leader(&self) -> usize {
        for _ in 0..200 {
            if let Some(i) = self.cluster.leader().await {
                return i;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no leader within 10 s");
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("=== test failed: keeping {} ===", self.dir.display());
            for r in self.cluster.regions() {
                eprintln!(
                    "--- {} (node {}) log tail: {}\n{}",
                    r.name,
                    r.node_id,
                    r.log_path.display(),
                    log_tail(&r.log_path)
                );
            }
        } else {
            let dir = self.dir.clone();
            // Processes are killed by LocalCluster's own Drop, which runs after this one.
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(500));
                let _ = std::fs::remove_dir_all(dir);
            });
        }
    }
}

/// A create request with a MAC unique per (`seed`, `i`).
pub fn machine(seed: u16, i: u32) -> CreateMachineRequest {
    let b = i.to_be_bytes();
    let s = seed.to_be_bytes();
    CreateMachineRequest {
        macs: vec![format!(
            "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            s[1], b[0], b[1], b[2], b[3]
        )],
        hostname: format!("t{seed}-{i}"),
        ..Default::default()
    }
}

/// Every hostname in the cluster, read through region `clients` with the given consistency.
pub async fn all_hostnames(
    clients: &Clients,
    stale: bool,
) -> Result<std::collections::BTreeSet<String>> {
    let mut out = std::collections::BTreeSet::new();
    let mut token = String::new();
    loop {
        let r = clients
            .machines()
            .list_machines(ListMachinesRequest {
                page_size: 5000,
                page_token: token.clone(),
                consistency: if stale {
                    ReadConsistency::Stale as i32
                } else {
                    ReadConsistency::Linearizable as i32
                },
                ..Default::default()
            })
            .await?
            .into_inner();
        out.extend(r.machines.into_iter().map(|m| m.hostname));
        if r.next_page_token.is_empty() {
            return Ok(out);
        }
        token = r.next_page_token;
    }
}

/// A peer program for real-peer tests, from the environment variable `var` (set by
/// scripts/install-test-peers.sh). Missing: under CI (`CI` set) the test fails; elsewhere it is skipped with
/// the reason printed.
pub fn peer(var: &str) -> Option<PathBuf> {
    let env_file = std::env::var("HOME")
        .map(|h| PathBuf::from(h).join(".cache/ingot-peers/env"))
        .ok();
    let from_env = std::env::var(var).ok().or_else(|| {
        // Fall back to the installer's env file, so `cargo test` alone works after one install.
        let text = std::fs::read_to_string(env_file.as_ref()?).ok()?;
        text.lines().find_map(|l| {
            l.strip_prefix(&format!("export {var}="))
                .map(|v| v.trim_matches('"').to_string())
        })
    });
    match from_env.map(PathBuf::from).filter(|p| p.exists()) {
        Some(p) => Some(p),
        None if std::env::var_os("CI").is_some()
            || std::env::var_os("INGOT_REQUIRE_PEERS").is_some() =>
        {
            panic!("{var} is not set or missing: run scripts/install-test-peers.sh (CI must run real-peer tests)")
        }
        None => {
            eprintln!("SKIPPED: {var} not found; run scripts/install-test-peers.sh to run this real-peer test");
            None
        }
    }
}
