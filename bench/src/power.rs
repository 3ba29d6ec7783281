//! `ingot-bench --power`: power-driver figures.
//!
//! (a) Sweep: one rack's power monitor ([`ingot_rack::monitor::Monitor`], the code `ingot-rack run` runs)
//!     reads every BMC of an `ingot-sim` process serving `--bmcs` (1,000) simulated Redfish BMCs on
//!     loopback, through the real `redfish` driver, `--sweeps` times; the first sweep discovers each BMC's
//!     system and opens connections, later sweeps are steady state. Target: a full sweep < 5 s (MAAS polls 5
//!     BMCs at a time every 15 s).
//! (b) The same machines' IPMI BMCs: the native RMCP+ client (sessions kept) at the same concurrency, then
//!     one sweep with an `ipmitool` process per query, 5 in flight (MAAS's way), side by side.
//! (c) IPMI against a third-party BMC: `--ipmi-queries` power-status queries against one OpenIPMI
//!     `ipmi_sim`, through the native client and through an `ipmitool` subprocess, one at a time; the ratio
//!     of the medians is the figure. Needs `ipmi_sim` and `ipmitool` (scripts/install-test-peers.sh).
//!
//! Every loop is bounded by a count and a deadline; the simulator process is stopped by its PID.

use anyhow::{bail, Context, Result};
use ingot_common::power::PowerAction;
use ingot_proto::rack::v1::Bmc;
use ingot_rack::drivers::{Drivers, PowerRequest};
use ingot_rack::monitor::{Monitor, MonitorConfig};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Settings of the power benchmark.
#[derive(Clone, Debug)]
pub struct PowerOpts {
    /// Simulated Redfish BMCs to sweep.
    pub bmcs: usize,
    /// Sweeps to time.
    pub sweeps: usize,
    /// Reads in flight at once (the rack's `--poll-concurrency`).
    pub concurrency: usize,
    /// IPMI queries per client (0 skips the IPMI comparison).
    pub ipmi_queries: usize,
}

/// Kills the simulator on every exit path.
struct SimProcess(Child);

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Starts `ingot-sim` with `n` machines (no agent) and returns them as monitor targets.
async fn start_sim(
    n: usize,
) -> Result<(
    SimProcess,
    Vec<Bmc>,
    Vec<ingot_launch::SimulatedMachine>,
    PathBuf,
)> {
    let bin = ingot_launch::resolve_bin_dir(None)?.join(ingot_launch::SIMULATOR_BIN);
    if !bin.is_file() {
        bail!(
            "{} not found: run `cargo build --release --workspace --bins` first",
            bin.display()
        );
    }
    let dir = std::env::temp_dir().join(format!("ingot-bench-power-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let child = Command::new(&bin)
        .args(["run", "--count", &n.to_string(), "--dir"])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("sim.log"))?)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let sim = SimProcess(child);
    let t0 = Instant::now();
    let file = dir.join("machines.json");
    let machines: Vec<ingot_launch::SimulatedMachine> = loop {
        if let Ok(b) = std::fs::read(&file) {
            if let Ok(v) = serde_json::from_slice(&b) {
                break v;
            }
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("ingot-sim did not write {} within 60 s", file.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "ingot-sim: {} simulated Redfish BMCs listening after {} ms",
        machines.len(),
        t0.elapsed().as_millis()
    );
    let bmcs = machines
        .iter()
        .map(|m| Bmc {
            system_id: m.hostname.clone(),
            driver: "redfish".into(),
            params: [
                ("address", m.bmc_url.as_str()),
                ("username", m.username.as_str()),
                ("password", m.password.as_str()),
                ("system", m.system_id.as_str()),
                ("timeout_ms", "5000"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        })
        .collect();
    Ok((sim, bmcs, machines, dir))
}

/// The simulated machines' IPMI BMCs as monitor targets, through `tool` (native or ipmitool).
fn ipmi_targets(machines: &[ingot_launch::SimulatedMachine], tool: &str) -> Vec<Bmc> {
    machines
        .iter()
        .filter_map(|m| {
            let port = m.ipmi_port?;
            Some(Bmc {
                system_id: m.hostname.clone(),
                driver: "ipmi".into(),
                params: [
                    ("address", "127.0.0.1".to_string()),
                    ("port", port.to_string()),
                    ("username", m.username.clone()),
                    ("password", m.password.clone()),
                    ("tool", tool.to_string()),
                    ("timeout_ms", "2000".to_string()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            })
        })
        .collect()
}

/// Times `sweeps` full sweeps of `targets` by one monitor with `concurrency` reads in flight; prints each and
/// returns the steady-state sweeps (all but the first).
async fn sweeps(
    label: &str,
    targets: Vec<Bmc>,
    concurrency: usize,
    sweeps: usize,
) -> Result<Vec<Duration>> {
    let monitor = Monitor::new(
        MonitorConfig {
            interval: Duration::from_secs(10),
            concurrency,
            failure_threshold: 3,
        },
        Drivers::default(),
    );
    monitor.set_targets(targets);
    let mut steady = Vec::new();
    for i in 0..sweeps.max(1) {
        let (obs, stats) = tokio::time::timeout(Duration::from_secs(180), monitor.sweep(true))
            .await
            .with_context(|| format!("{label}: a sweep took longer than 180 s"))?;
        println!(
            "{label} sweep {}: {} BMCs read in {} ms ({} failed, {} changes reported){}",
            i + 1,
            stats.read,
            stats.elapsed.as_millis(),
            stats.failed,
            obs.len(),
            if i == 0 && sweeps > 1 {
                "  [first: sessions / connections opened]"
            } else {
                ""
            }
        );
        if i > 0 || sweeps == 1 {
            steady.push(stats.elapsed);
        }
    }
    steady.sort();
    Ok(steady)
}

/// Runs the power benchmark and prints its figures.
pub async fn run(o: &PowerOpts) -> Result<()> {
    println!(
        "== (a) power monitor sweep: 1 rack, {} simulated Redfish BMCs, {} reads in flight",
        o.bmcs, o.concurrency
    );
    let (_sim, bmcs, machines, dir) = start_sim(o.bmcs).await?;
    let steady = sweeps("redfish", bmcs, o.concurrency, o.sweeps.max(2)).await?;
    println!(
        "FIGURE full sweep of {} BMCs: p50 {} ms, max {} ms (target < 5,000 ms; MAAS: 5 BMCs at a time every 15 s)",
        o.bmcs,
        percentile(&steady, 0.5).as_millis(),
        steady.last().copied().unwrap_or_default().as_millis()
    );

    // (b) the same simulated machines over IPMI: the native client (sessions kept) at the rack's
    // concurrency, then ipmitool at MAAS's 5 in flight, one sweep.
    let ipmi_bmcs = ipmi_targets(&machines, "native");
    if !ipmi_bmcs.is_empty() {
        println!(
            "== (b) the same {} machines over IPMI (RMCP+, ingot-sim's BMCs)",
            ipmi_bmcs.len()
        );
        let native = sweeps("ipmi native", ipmi_bmcs, o.concurrency, o.sweeps.max(2)).await?;
        println!(
            "FIGURE full IPMI sweep, native client, {} in flight: p50 {} ms",
            o.concurrency,
            percentile(&native, 0.5).as_millis()
        );
        if ingot_rack::peers::ipmi_sim::IpmiSim::ipmitool_path().is_ok() {
            let tool = sweeps("ipmitool", ipmi_targets(&machines, "ipmitool"), 5, 1).await?;
            println!(
                "FIGURE full IPMI sweep, one ipmitool process per query, 5 in flight (MAAS's way): {} ms",
                percentile(&tool, 0.5).as_millis()
            );
        } else {
            println!("(ipmitool not installed: the ipmitool sweep is skipped)");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);

    if o.ipmi_queries == 0 {
        return Ok(());
    }
    println!("== (c) IPMI query latency: native RMCP+ vs ipmitool subprocess, same ipmi_sim, {} queries each", o.ipmi_queries);
    ipmi(o.ipmi_queries).await
}

/// Native vs ipmitool query latency against one ipmi_sim.
async fn ipmi(n: usize) -> Result<()> {
    let sim = ingot_rack::peers::ipmi_sim::IpmiSim::start(Default::default())
        .await
        .context("starting ipmi_sim (install it with scripts/install-test-peers.sh)")?;
    let drivers = Drivers::default();
    let mut medians = Vec::new();
    for tool in ["native", "ipmitool"] {
        let req = PowerRequest {
            command_id: 0,
            system_id: "bench".into(),
            action: PowerAction::Query,
            params: sim.driver_params(tool),
        };
        let mut lat = Vec::with_capacity(n);
        let deadline = Instant::now() + Duration::from_secs(120);
        for _ in 0..n {
            if Instant::now() > deadline {
                break;
            }
            let t0 = Instant::now();
            drivers
                .run("ipmi", &req)
                .await
                .map_err(|e| anyhow::anyhow!("{tool} query failed: {e}"))?;
            lat.push(t0.elapsed());
        }
        lat.sort();
        let p50 = percentile(&lat, 0.5);
        println!(
            "{tool:>8}: {} queries, p50 {:.2} ms, p99 {:.2} ms",
            lat.len(),
            p50.as_secs_f64() * 1000.0,
            percentile(&lat, 0.99).as_secs_f64() * 1000.0
        );
        medians.push(p50);
    }
    if let [native, tool] = medians[..] {
        println!(
            "FIGURE IPMI query latency ratio ipmitool/native (p50): {:.1}x",
            tool.as_secs_f64() / native.as_secs_f64().max(1e-9)
        );
    }
    Ok(())
}
