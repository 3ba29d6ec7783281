//! The nemesis run: a real local cluster — 3 regions behind cuttable proxies, 2 rack controllers, an
//! `ingot-sim` fleet with Redfish BMCs — under a client workload while a nemesis kills (SIGKILL), freezes
//! (SIGSTOP) and restarts regions and racks and severs or blackholes their links, then a check of the
//! record. Used by the whole-stack test `t19_nemesis` (short) and by `ingot-bench --nemesis --minutes N`
//! (long). Everything random comes from one seed ([`NemesisOptions::seed`]), printed so a failing run can
//! be replayed (the schedule of choices replays; process timing does not).
//!
//! The phases of [`run`]:
//! 1. setup ([`workload::World::prepare`]): racks `ra` (zone `za`) and `rb` (zone `zb`), simulated
//!    machines enlisted with the `redfish` driver and commissioned to Ready, manual tags, tenant users;
//! 2. chaos: the workload ([`workload`]: an admin writer creating, describing and tagging machines;
//!    tenants allocating, deploying, power-commanding and releasing simulated ones) runs while the
//!    nemesis ([`faults`]) injects one fault at a time, each healed before the next;
//! 3. heal: every process back up, every link open; the time from then to the first acknowledged write
//!    is measured;
//! 4. check ([`check`]), from the record: acknowledged writes present with their values, no machine with
//!    two owners in the event history, each BMC action explained by a distinct power command (at most
//!    once per command id), no panic in any log, writable within [`WRITABLE_WITHIN`].
//!
//! The run keeps `DIR/nemesis.log`: the seed, each fault with its time, and every violation found.

mod check;
mod faults;
mod workload;

use crate::{LocalCluster, LocalClusterOptions};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest time from the last fault's heal to the first acknowledged write that passes.
pub const WRITABLE_WITHIN: Duration = Duration::from_secs(2);
/// Regions in a nemesis cluster.
pub const REGIONS: usize = 3;
/// The racks (name, zone): one per zone, so a dead rack's BMCs move to the other zone's rack.
pub const RACKS: [(&str, &str); 2] = [("ra", "za"), ("rb", "zb")];
/// Region flags: a dead rack loses its BMCs after 3 s (the default 10 s would outlast most rack faults
/// and never move a BMC while a command is in flight).
const REGION_ARGS: [&str; 1] = ["--rack-grace-ms=3000"];
/// Rack flags: the power monitor reads each BMC every second.
const RACK_ARGS: [&str; 1] = ["--poll-interval-ms=1000"];

/// What a nemesis run does.
#[derive(Clone, Debug)]
pub struct NemesisOptions {
    /// Seed of every random choice (faults, their targets and durations, the workload's choices).
    pub seed: u64,
    /// How long the chaos phase lasts (workload and faults together).
    pub chaos: Duration,
    /// Simulated machines (split over the two zones).
    pub machines: usize,
    /// Tenant users, each allocating and deploying one machine at a time.
    pub tenants: usize,
    /// Print each fault and phase to stderr as it happens.
    pub verbose: bool,
}

impl NemesisOptions {
    /// A run of `chaos` with `seed`, 8 machines and 3 tenants.
    pub fn new(seed: u64, chaos: Duration) -> NemesisOptions {
        NemesisOptions {
            seed,
            chaos,
            machines: 8,
            tenants: 3,
            verbose: true,
        }
    }

    /// The cluster a nemesis run needs in `dir`: [`REGIONS`] regions, proxied, with the run's tunings.
    pub fn cluster_options(dir: impl Into<PathBuf>) -> LocalClusterOptions {
        let mut o = LocalClusterOptions::new(dir, REGIONS);
        o.proxied = true;
        o.region_args = REGION_ARGS.iter().map(|s| s.to_string()).collect();
        o.rack_args = RACK_ARGS.iter().map(|s| s.to_string()).collect();
        o
    }
}

/// The seed from environment variable `var` (decimal), or a random one.
pub fn seed_from_env(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(rand::random)
}

/// A kind of fault the nemesis injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// A region SIGKILLed, then restarted.
    RegionKill,
    /// A region SIGSTOPped, then continued.
    RegionStop,
    /// A rack controller SIGKILLed, then restarted.
    RackKill,
    /// A rack controller SIGSTOPped, then continued.
    RackStop,
    /// Every connection through one region listener's proxy reset at once.
    LinkSever,
    /// One region listener's proxy forwarding nothing for a while.
    LinkBlackhole,
}

impl FaultKind {
    /// Every kind, in report order.
    pub const ALL: [FaultKind; 6] = [
        FaultKind::RegionKill,
        FaultKind::RegionStop,
        FaultKind::RackKill,
        FaultKind::RackStop,
        FaultKind::LinkSever,
        FaultKind::LinkBlackhole,
    ];

    /// Report spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::RegionKill => "region-sigkill",
            FaultKind::RegionStop => "region-sigstop",
            FaultKind::RackKill => "rack-sigkill",
            FaultKind::RackStop => "rack-sigstop",
            FaultKind::LinkSever => "link-sever",
            FaultKind::LinkBlackhole => "link-blackhole",
        }
    }
}

/// A kind of client operation the workload issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum OpKind {
    /// CreateMachine (admin).
    Create,
    /// UpdateMachine of the description (admin).
    Describe,
    /// TagMachine (admin).
    Tag,
    /// Allocate (tenant).
    Allocate,
    /// Deploy (tenant).
    Deploy,
    /// Abort of a deployment that did not finish in time (tenant).
    Abort,
    /// Power (tenant, on its deployed machine).
    Power,
    /// Release (tenant).
    Release,
}

impl OpKind {
    /// Every kind, in report order.
    pub const ALL: [OpKind; 8] = [
        OpKind::Create,
        OpKind::Describe,
        OpKind::Tag,
        OpKind::Allocate,
        OpKind::Deploy,
        OpKind::Abort,
        OpKind::Power,
        OpKind::Release,
    ];

    /// Report spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Create => "create",
            OpKind::Describe => "describe",
            OpKind::Tag => "tag",
            OpKind::Allocate => "allocate",
            OpKind::Deploy => "deploy",
            OpKind::Abort => "abort",
            OpKind::Power => "power",
            OpKind::Release => "release",
        }
    }
}

/// A kind of violation the checks find.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ViolationKind {
    /// A write a client got OK for is missing at the end, or has another value.
    LostWrite,
    /// A machine held by two owners at once (in the event history).
    TwoOwners,
    /// A BMC action no distinct power command explains: a command run twice.
    PowerRepeated,
    /// "panicked" in a region, rack or simulator log.
    Panic,
    /// No write acknowledged within [`WRITABLE_WITHIN`] of the last heal.
    NotWritable,
    /// A process that did not come back after its fault, or a check that could not read the record.
    Unrecovered,
}

impl ViolationKind {
    /// Every kind, in report order.
    pub const ALL: [ViolationKind; 6] = [
        ViolationKind::LostWrite,
        ViolationKind::TwoOwners,
        ViolationKind::PowerRepeated,
        ViolationKind::Panic,
        ViolationKind::NotWritable,
        ViolationKind::Unrecovered,
    ];

    /// Report spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ViolationKind::LostWrite => "acknowledged-write-lost",
            ViolationKind::TwoOwners => "two-owners",
            ViolationKind::PowerRepeated => "power-action-repeated",
            ViolationKind::Panic => "panic-in-log",
            ViolationKind::NotWritable => "not-writable-in-time",
            ViolationKind::Unrecovered => "unrecovered",
        }
    }
}

/// One thing the checks found wrong.
#[derive(Clone, Debug)]
pub struct Violation {
    /// Which invariant.
    pub kind: ViolationKind,
    /// What exactly (machine, command ids, times, the log line).
    pub detail: String,
}

/// The figures and findings of a run.
#[derive(Clone, Debug, Default)]
pub struct NemesisReport {
    /// The seed (replay with it).
    pub seed: u64,
    /// The run's directory (logs, data directories, `nemesis.log`).
    pub dir: PathBuf,
    /// Length of the chaos phase.
    pub chaos: Duration,
    /// Faults injected, by kind.
    pub faults: BTreeMap<FaultKind, u64>,
    /// Operations acknowledged, by kind.
    pub acked: BTreeMap<OpKind, u64>,
    /// Operations that failed or timed out (not acknowledged), by kind.
    pub unacked: BTreeMap<OpKind, u64>,
    /// Failed client calls by operation (`get`: a tenant's read of its machine): count and the latest
    /// error, to tell an unavailable cluster from a stuck workload.
    pub errors: BTreeMap<String, (u64, String)>,
    /// Power commands in the record and BMC actions compared with them.
    pub power_commands: u64,
    /// BMC actions (resets, boot override changes) the simulator recorded.
    pub bmc_actions: u64,
    /// From the last heal to the first acknowledged write.
    pub writable_after: Option<Duration>,
    /// Everything wrong.
    pub violations: Vec<Violation>,
}

impl NemesisReport {
    /// Violations of `kind`.
    pub fn count(&self, kind: ViolationKind) -> usize {
        self.violations.iter().filter(|v| v.kind == kind).count()
    }

    /// The report as text: minutes, faults by kind, acknowledged operations by kind, violations by kind
    /// (then the first violations in full).
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "nemesis seed {} ({:.1} minutes of chaos; directory {})",
            self.seed,
            self.chaos.as_secs_f64() / 60.0,
            self.dir.display()
        );
        let total: u64 = self.faults.values().sum();
        let _ = write!(s, "faults injected: {total} (");
        let parts: Vec<String> = FaultKind::ALL
            .iter()
            .map(|k| format!("{} {}", k.as_str(), self.faults.get(k).unwrap_or(&0)))
            .collect();
        let _ = writeln!(s, "{})", parts.join(", "));
        let total: u64 = self.acked.values().sum();
        let _ = write!(s, "operations acknowledged: {total} (");
        let parts: Vec<String> = OpKind::ALL
            .iter()
            .map(|k| {
                format!(
                    "{} {}/{}",
                    k.as_str(),
                    self.acked.get(k).unwrap_or(&0),
                    self.acked.get(k).unwrap_or(&0) + self.unacked.get(k).unwrap_or(&0)
                )
            })
            .collect();
        let _ = writeln!(s, "{}; acknowledged/issued)", parts.join(", "));
        for (what, (n, last)) in &self.errors {
            let last: String = last.chars().take(160).collect();
            let _ = writeln!(s, "  failed {what}: {n} (latest: {last})");
        }
        let _ = writeln!(
            s,
            "power commands in the record: {}; BMC actions checked against them: {}",
            self.power_commands, self.bmc_actions
        );
        let _ = writeln!(
            s,
            "writable after the last fault: {}",
            self.writable_after
                .map_or("never".to_string(), |d| format!("{} ms", d.as_millis()))
        );
        let parts: Vec<String> = ViolationKind::ALL
            .iter()
            .map(|k| format!("{} {}", k.as_str(), self.count(*k)))
            .collect();
        let _ = writeln!(
            s,
            "violations: {} ({})",
            self.violations.len(),
            parts.join(", ")
        );
        for v in self.violations.iter().take(20) {
            let _ = writeln!(s, "  {}: {}", v.kind.as_str(), v.detail);
        }
        if self.violations.len() > 20 {
            let _ = writeln!(
                s,
                "  ... {} more in nemesis.log",
                self.violations.len() - 20
            );
        }
        s
    }
}

/// `DIR/nemesis.log`: what happened when, for a human replaying a failure.
#[derive(Clone)]
pub(crate) struct RunLog {
    start: Instant,
    file: Arc<Mutex<Option<std::fs::File>>>,
    verbose: bool,
}

impl RunLog {
    fn open(dir: &Path, verbose: bool) -> RunLog {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("nemesis.log"))
            .ok();
        RunLog {
            start: Instant::now(),
            file: Arc::new(Mutex::new(file)),
            verbose,
        }
    }

    /// Writes one line, prefixed with the seconds since the run started.
    pub(crate) fn line(&self, text: &str) {
        let utc_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        // Seconds since the start, and the wall clock (ms since the epoch) to find the moment in the
        // processes' logs.
        let line = format!(
            "[{:8.3} @{utc_ms}] {text}",
            self.start.elapsed().as_secs_f64()
        );
        if self.verbose {
            eprintln!("nemesis {line}");
        }
        if let Some(f) = self.file.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// Runs the nemesis on `cluster` (started with [`NemesisOptions::cluster_options`], nothing else added
/// yet) and returns what it found. An `Err` means the run itself could not be carried out (setup failed);
/// violations of the invariants are in the report.
pub async fn run(cluster: &LocalCluster, opts: &NemesisOptions) -> Result<NemesisReport> {
    anyhow::ensure!(
        cluster.links(1).is_some() && cluster.len() == REGIONS,
        "the nemesis needs a proxied cluster of {REGIONS} regions (NemesisOptions::cluster_options)"
    );
    let log = RunLog::open(cluster.dir(), opts.verbose);
    log.line(&format!(
        "seed {} (replay: INGOT_NEMESIS_SEED={} or --seed {}); chaos {:?}",
        opts.seed, opts.seed, opts.seed, opts.chaos
    ));
    let world = workload::World::prepare(cluster, opts, &log)
        .await
        .context("setting up the nemesis run")?;
    log.line(&format!(
        "setup done: {} simulated machines Ready, {} tenants",
        world.sims.len(),
        world.tenants.len()
    ));

    let record = Arc::new(workload::Record::default());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks = workload::spawn(&world, opts.seed, &record, &stop);
    let mut report = NemesisReport {
        seed: opts.seed,
        dir: cluster.dir().to_path_buf(),
        chaos: opts.chaos,
        ..Default::default()
    };
    let outcome = faults::chaos(cluster, opts, &log).await;
    report.faults = outcome.faults;
    report.violations.extend(outcome.violations);
    log.line("chaos over; healing every process and link");
    report
        .violations
        .extend(faults::heal_all(cluster, &log).await);
    let healed = Instant::now();
    report.writable_after = check::first_write(cluster, opts.seed, healed).await;
    log.line(&format!(
        "first write acknowledged {} after the heal",
        report
            .writable_after
            .map_or("never (20 s)".to_string(), |d| format!(
                "{} ms",
                d.as_millis()
            ))
    ));
    match report.writable_after {
        Some(d) if d <= WRITABLE_WITHIN => {}
        other => report.violations.push(Violation {
            kind: ViolationKind::NotWritable,
            detail: format!(
                "first acknowledged write {} after the last fault was healed (limit {} ms)",
                other.map_or("never, within 20 s,".to_string(), |d| format!(
                    "{} ms",
                    d.as_millis()
                )),
                WRITABLE_WITHIN.as_millis()
            ),
        }),
    }

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        // Every step of a task is bounded (call timeouts, waits that check `stop`).
        if tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .is_err()
        {
            log.line("a workload task did not stop within 60 s");
        }
    }
    report.acked = record.acked();
    report.unacked = record.unacked();
    report.errors = record.errors();
    log.line("workload stopped; checking the record");
    let found = check::all(cluster, &world, &record, &log).await;
    report.power_commands = found.power_commands;
    report.bmc_actions = found.bmc_actions;
    report.violations.extend(found.violations);
    for v in &report.violations {
        log.line(&format!("VIOLATION {}: {}", v.kind.as_str(), v.detail));
    }
    log.line(&report.render());
    Ok(report)
}
