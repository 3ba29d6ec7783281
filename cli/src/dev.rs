//! `ingot dev up|down`: a local development cluster of real `ingot-region` processes that keeps running
//! after `ingot` exits, described by `DIR/env` and `DIR/cluster.json`.

use crate::output::print_json;
use crate::Ctx;
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use ingot_client::local::{
    LocalCluster, LocalClusterOptions, LocalRegion, Progress, StopOutcome, CLUSTER_FILE,
};
use serde_json::json;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

const DEFAULT_DIR: &str = ".ingot-dev";

/// The `dev` subcommands.
#[derive(Subcommand, Debug)]
pub enum DevCmd {
    /// Start a local cluster in DIR (or restart its stopped regions); the regions keep running in the
    /// background
    Up {
        /// Cluster directory (data directories, logs, env file)
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// Number of regions (1, 3 or 5)
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
        regions: u64,
        /// Extra flag for every ingot-region, e.g. --region-arg=--heartbeat-ms=50 (repeatable)
        #[arg(long = "region-arg", value_name = "FLAG", allow_hyphen_values = true)]
        region_args: Vec<String>,
        /// Directory containing ingot-region (default: next to this ingot executable)
        #[arg(long, value_name = "DIR")]
        bin_dir: Option<PathBuf>,
    },
    /// Stop the local cluster recorded in DIR (SIGTERM, then SIGKILL after 10 s)
    Down {
        /// Cluster directory
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// Also delete DIR (all data, logs and the env file)
        #[arg(long)]
        purge: bool,
    },
}

/// Runs a `dev` subcommand.
pub async fn run(ctx: &Ctx, cmd: DevCmd) -> Result<()> {
    match cmd {
        DevCmd::Up {
            dir,
            regions,
            region_args,
            bin_dir,
        } => up(ctx, dir, regions as usize, region_args, bin_dir).await,
        DevCmd::Down { dir, purge } => down(ctx, &dir, purge).await,
    }
}

/// Progress display: a spinner on a terminal, plain lines otherwise (both on stderr).
struct Reporter {
    bar: Option<ProgressBar>,
}

impl Reporter {
    fn new() -> Reporter {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner:.cyan} {msg} ({elapsed})") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Reporter { bar }
    }

    fn on(&self, p: Progress) {
        let line = match p {
            Progress::Step(msg) => {
                match &self.bar {
                    Some(bar) => bar.set_message(msg),
                    None => eprintln!("{msg}..."),
                }
                return;
            }
            Progress::Ready(r) => format!(
                "✓ {} ready (node {}, api {}, raft {}, pid {})",
                r.name, r.node_id, r.api_addr, r.raft_addr, r.pid
            ),
        };
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn done(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

async fn up(
    ctx: &Ctx,
    dir: PathBuf,
    regions: usize,
    region_args: Vec<String>,
    bin_dir: Option<PathBuf>,
) -> Result<()> {
    let reporter = Reporter::new();
    if dir.join(CLUSTER_FILE).exists() {
        let cluster = LocalCluster::load(&dir)?;
        let stopped: Vec<usize> = (1..=cluster.len())
            .filter(|&i| !cluster.is_running(i))
            .collect();
        if stopped.is_empty() {
            reporter.done();
            if !ctx.json() {
                outln!(
                    "The local cluster in {} is already running.",
                    cluster.dir().display()
                );
            }
            summary(ctx, &cluster, "already-running");
            return Ok(());
        }
        if cluster.len() != regions && !ctx.json() {
            eprintln!(
                "note: {} holds a {}-region cluster; --regions {regions} is ignored",
                cluster.dir().display(),
                cluster.len()
            );
        }
        let r = cluster
            .restart_stopped_with_progress(|p| reporter.on(p))
            .await;
        reporter.done();
        r.context("restarting the stopped regions failed")?;
        summary(ctx, &cluster, "restarted");
        return Ok(());
    }
    let opts = LocalClusterOptions {
        dir,
        regions,
        bin_dir,
        region_args,
        detach: true,
    };
    let r = LocalCluster::start_with_progress(opts, |p| reporter.on(p)).await;
    reporter.done();
    let cluster = r?;
    summary(ctx, &cluster, "started");
    Ok(())
}

fn region_json(r: &LocalRegion) -> serde_json::Value {
    json!({
        "name": r.name,
        "node_id": r.node_id,
        "api_addr": r.api_addr,
        "raft_addr": r.raft_addr,
        "pid": r.pid,
        "data_dir": r.data_dir,
        "log": r.log_path,
    })
}

fn summary(ctx: &Ctx, cluster: &LocalCluster, state: &str) {
    let regions = cluster.regions();
    if ctx.json() {
        print_json(&json!({
            "state": state,
            "dir": cluster.dir(),
            "env": cluster.env_path(),
            "endpoints": cluster.endpoints(),
            "regions": regions.iter().map(region_json).collect::<Vec<_>>(),
        }));
        return;
    }
    let mut t = crate::output::table(["REGION", "NODE", "API", "RAFT", "PID", "LOG"]);
    for r in &regions {
        t.add_row(vec![
            r.name.clone(),
            r.node_id.to_string(),
            r.api_addr.clone(),
            r.raft_addr.clone(),
            r.pid.to_string(),
            r.log_path.display().to_string(),
        ]);
    }
    let dir = cluster.dir().display();
    outln!("{}", crate::output::render(&t));
    outln!();
    outln!("Endpoints: {}", cluster.endpoints().join(","));
    outln!();
    outln!("Use it:");
    outln!("  source {}", cluster.env_path().display());
    outln!("  ingot cluster list");
    outln!("  ingot machines create --mac 52:54:00:00:00:01");
    outln!("  ingot machines list");
    outln!(
        "(or pass --profile {} instead of sourcing)",
        cluster.env_path().display()
    );
    outln!();
    outln!("Stop it:  ingot dev down --dir {dir}   (add --purge to delete all data)");
}

/// True if `dir` looks like a cluster directory made by `ingot dev up` (guard for `--purge`).
fn is_dev_dir(dir: &Path) -> bool {
    dir.join(CLUSTER_FILE).is_file() || dir.join("region-1").is_dir()
}

async fn down(ctx: &Ctx, dir: &Path, purge: bool) -> Result<()> {
    let mut stopped = Vec::new();
    if dir.join(CLUSTER_FILE).exists() {
        let cluster = LocalCluster::load(dir)?;
        for s in cluster.stop_all().await {
            let what = match s.outcome {
                StopOutcome::NotRunning => "was not running",
                StopOutcome::Terminated => "stopped",
                StopOutcome::Killed => "killed (did not stop within 10 s)",
                StopOutcome::StillRunning => "STILL RUNNING",
            };
            if !ctx.json() {
                outln!("{} (pid {}): {what}", s.region.name, s.region.pid);
            }
            stopped.push((s.region, s.outcome));
        }
        if let Some((r, _)) = stopped
            .iter()
            .find(|(_, o)| *o == StopOutcome::StillRunning)
        {
            bail!("{} (pid {}) is still running; not purging", r.name, r.pid);
        }
    } else if !ctx.json() {
        outln!(
            "no local cluster recorded in {} ({CLUSTER_FILE} not found): nothing to stop",
            dir.display()
        );
    }
    let mut purged = false;
    if purge && dir.exists() {
        if !is_dev_dir(dir) {
            bail!(
                "{} does not look like an `ingot dev up` directory (no {CLUSTER_FILE}, no region-1/): not deleting it",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        purged = true;
        if !ctx.json() {
            outln!("removed {}", dir.display());
        }
    }
    if ctx.json() {
        let regions: Vec<_> = stopped
            .iter()
            .map(|(r, o)| {
                json!({
                    "name": r.name,
                    "pid": r.pid,
                    "outcome": format!("{o:?}").to_ascii_lowercase(),
                })
            })
            .collect();
        print_json(&json!({ "dir": dir, "regions": regions, "purged": purged }));
    }
    Ok(())
}
