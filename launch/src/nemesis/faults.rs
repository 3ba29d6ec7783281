//! The nemesis itself: one fault at a time, chosen, aimed and timed from the seed, each healed before the
//! next (a killed process is restarted, a stopped one continued, a blackholed link opened), with a short
//! random pause between faults. Every random value of a fault is drawn before it is injected, so the
//! sequence of choices depends only on the seed.

use super::{FaultKind, RunLog, Violation, ViolationKind, RACKS, REGIONS};
use crate::{LinkProxy, LocalCluster};
use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Upper bound on faults per run, whatever its length.
const MAX_FAULTS: u64 = 100_000;
/// Relative weights of the kinds, in [`FaultKind::ALL`] order.
const WEIGHTS: [u32; 6] = [4, 3, 3, 2, 4, 4];

/// What the chaos phase did.
pub(crate) struct ChaosOutcome {
    /// Faults injected, by kind.
    pub(crate) faults: BTreeMap<FaultKind, u64>,
    /// Processes that did not come back.
    pub(crate) violations: Vec<Violation>,
}

/// A fault with every random choice made.
#[derive(Debug)]
enum Fault {
    RegionKill {
        region: usize,
        down: Duration,
    },
    RegionStop {
        region: usize,
        hold: Duration,
    },
    RackKill {
        rack: &'static str,
        down: Duration,
    },
    RackStop {
        rack: &'static str,
        hold: Duration,
    },
    LinkSever {
        region: usize,
        raft: bool,
    },
    LinkBlackhole {
        region: usize,
        raft: bool,
        hold: Duration,
    },
}

impl Fault {
    fn kind(&self) -> FaultKind {
        match self {
            Fault::RegionKill { .. } => FaultKind::RegionKill,
            Fault::RegionStop { .. } => FaultKind::RegionStop,
            Fault::RackKill { .. } => FaultKind::RackKill,
            Fault::RackStop { .. } => FaultKind::RackStop,
            Fault::LinkSever { .. } => FaultKind::LinkSever,
            Fault::LinkBlackhole { .. } => FaultKind::LinkBlackhole,
        }
    }

    fn draw(rng: &mut StdRng) -> Fault {
        let total: u32 = WEIGHTS.iter().sum();
        let mut x = rng.gen_range(0..total);
        let mut kind = FaultKind::LinkSever;
        for (k, w) in FaultKind::ALL.iter().zip(WEIGHTS) {
            if x < w {
                kind = *k;
                break;
            }
            x -= w;
        }
        let region = rng.gen_range(1..=REGIONS);
        let rack = RACKS[rng.gen_range(0..RACKS.len())].0;
        let raft = rng.gen_bool(0.5);
        let ms = |rng: &mut StdRng, lo: u64, hi: u64| Duration::from_millis(rng.gen_range(lo..hi));
        match kind {
            FaultKind::RegionKill => Fault::RegionKill {
                region,
                down: ms(rng, 0, 2_000),
            },
            FaultKind::RegionStop => Fault::RegionStop {
                region,
                hold: ms(rng, 300, 3_000),
            },
            FaultKind::RackKill => Fault::RackKill {
                rack,
                down: ms(rng, 0, 5_000),
            },
            // Sometimes beyond the rack grace (3 s): its BMCs move while it is frozen, and it wakes up
            // with commands in flight.
            FaultKind::RackStop => Fault::RackStop {
                rack,
                hold: ms(rng, 500, 6_000),
            },
            FaultKind::LinkSever => Fault::LinkSever { region, raft },
            FaultKind::LinkBlackhole => Fault::LinkBlackhole {
                region,
                raft,
                hold: ms(rng, 300, 4_000),
            },
        }
    }
}

fn link(cluster: &LocalCluster, region: usize, raft: bool) -> Result<&LinkProxy> {
    let l = cluster
        .links(region)
        .with_context(|| format!("region-{region} has no proxies"))?;
    Ok(if raft { &l.raft } else { &l.api })
}

/// Injects `f` and heals it.
async fn inject(cluster: &LocalCluster, f: &Fault) -> Result<()> {
    match *f {
        Fault::RegionKill { region, down } => {
            cluster.kill(region, libc::SIGKILL)?;
            cluster.wait_exit(region).await?;
            tokio::time::sleep(down).await;
            cluster
                .restart(region)
                .await
                .with_context(|| format!("restarting region-{region} after SIGKILL"))?;
        }
        Fault::RegionStop { region, hold } => {
            cluster.kill(region, libc::SIGSTOP)?;
            tokio::time::sleep(hold).await;
            cluster
                .kill(region, libc::SIGCONT)
                .with_context(|| format!("continuing region-{region}"))?;
        }
        Fault::RackKill { rack, down } => {
            cluster.kill_rack(rack, libc::SIGKILL)?;
            cluster.wait_rack_exit(rack).await?;
            tokio::time::sleep(down).await;
            cluster
                .restart_rack(rack)
                .await
                .with_context(|| format!("restarting rack {rack} after SIGKILL"))?;
        }
        Fault::RackStop { rack, hold } => {
            cluster.kill_rack(rack, libc::SIGSTOP)?;
            tokio::time::sleep(hold).await;
            cluster
                .kill_rack(rack, libc::SIGCONT)
                .with_context(|| format!("continuing rack {rack}"))?;
        }
        Fault::LinkSever { region, raft } => link(cluster, region, raft)?.sever(),
        Fault::LinkBlackhole { region, raft, hold } => {
            let l = link(cluster, region, raft)?;
            l.blackhole();
            tokio::time::sleep(hold).await;
            l.heal();
        }
    }
    Ok(())
}

/// Injects faults for `opts.chaos`.
pub(crate) async fn chaos(
    cluster: &LocalCluster,
    opts: &super::NemesisOptions,
    log: &RunLog,
) -> ChaosOutcome {
    let mut rng = StdRng::seed_from_u64(opts.seed ^ 0x4e45_4d45_5349);
    let end = Instant::now() + opts.chaos;
    let mut out = ChaosOutcome {
        faults: BTreeMap::new(),
        violations: Vec::new(),
    };
    for n in 1..=MAX_FAULTS {
        let pause = Duration::from_millis(rng.gen_range(200..1_500));
        let fault = Fault::draw(&mut rng);
        let left = end.saturating_duration_since(Instant::now());
        if left <= pause {
            break;
        }
        tokio::time::sleep(pause).await;
        log.line(&format!("fault {n}: {fault:?}"));
        *out.faults.entry(fault.kind()).or_default() += 1;
        if let Err(e) = inject(cluster, &fault).await {
            log.line(&format!("fault {n} not healed: {e:#}"));
            out.violations.push(Violation {
                kind: ViolationKind::Unrecovered,
                detail: format!("fault {n} ({fault:?}): {e:#}"),
            });
            // Bring everything back before the next fault.
            out.violations.extend(heal_all(cluster, log).await);
        }
    }
    out
}

/// Continues every stopped process, opens every link, restarts every dead region and rack. Returns
/// what could not be brought back.
pub(crate) async fn heal_all(cluster: &LocalCluster, log: &RunLog) -> Vec<Violation> {
    let mut out = Vec::new();
    for i in 1..=cluster.len() {
        if let Some(l) = cluster.links(i) {
            l.api.heal();
            l.raft.heal();
        }
        if cluster.is_running(i) {
            let _ = cluster.kill(i, libc::SIGCONT);
        }
    }
    for r in cluster.racks() {
        if cluster.is_rack_running(&r.name) {
            let _ = cluster.kill_rack(&r.name, libc::SIGCONT);
        }
    }
    match cluster.restart_stopped().await {
        Ok(v) if v.is_empty() => {}
        Ok(v) => log.line(&format!("restarted regions {v:?} (and any stopped rack)")),
        Err(e) => out.push(Violation {
            kind: ViolationKind::Unrecovered,
            detail: format!("restarting the stopped processes at heal: {e:#}"),
        }),
    }
    out
}
