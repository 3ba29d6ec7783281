//! `ingot-sim`: run a fleet of simulated machines (`run`), turn their BMCs' fault knobs (`fault`), and see
//! them (`list`). `run` writes `DIR/machines.json` and `DIR/control.url`; the other commands find the
//! running simulator through `DIR/control.url`.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use ingot_sim::{AgentConfig, ControlClient, Faults, Fleet, FleetConfig, MachineView};
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "ingot-sim",
    version,
    about = "Ingot's simulated machines: Redfish and IPMI (RMCP+) BMCs on loopback ports, with fault knobs, \
             that report like the in-band agent when Ingot network-boots them"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the fleet; runs until SIGTERM or SIGINT.
    Run(RunArgs),
    /// Set a machine's BMC faults: the flags given become its whole fault set (--clear: none).
    Fault {
        /// The simulator's directory (as given to `run`).
        #[arg(long)]
        dir: PathBuf,
        /// The machine, e.g. sim-07.
        hostname: String,
        /// Accept connections but never answer (IPMI: drop every datagram).
        #[arg(long)]
        unresponsive: bool,
        /// Delay every answer by this many milliseconds.
        #[arg(long, value_name = "MS")]
        slow_ms: Option<u64>,
        /// Reject every credential (401; IPMI: RAKP 4 "invalid integrity check value").
        #[arg(long)]
        wrong_password: bool,
        /// Reads alternately fail (500; IPMI: 0xFF) and report the opposite power state.
        #[arg(long)]
        flapping: bool,
        /// Reset actions fail (500; IPMI Chassis Control: 0xFF).
        #[arg(long)]
        fail_power: bool,
        /// Clear every fault.
        #[arg(long, conflicts_with_all = ["unresponsive", "slow_ms", "wrong_password", "flapping", "fail_power"])]
        clear: bool,
    },
    /// List the machines with their power, boot override, faults and counters.
    List {
        /// The simulator's directory (as given to `run`).
        #[arg(long)]
        dir: PathBuf,
        /// Print JSON (every field) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Directory for machines.json and control.url (created if missing).
    #[arg(long)]
    dir: PathBuf,
    /// Number of machines.
    #[arg(long, default_value_t = 20)]
    count: usize,
    /// Zones, assigned round-robin (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "default")]
    zones: Vec<String>,
    /// Hostname prefix: PREFIX-01, PREFIX-02, ...
    #[arg(long, default_value = "sim")]
    prefix: String,
    /// BMC user name.
    #[arg(long, default_value = "admin")]
    username: String,
    /// BMC password (default: random, written to machines.json).
    #[arg(long, env = "INGOT_SIM_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Delay before a reset changes the power state, in milliseconds.
    #[arg(long, default_value_t = 0)]
    power_delay_ms: u64,
    /// Port of the control API on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    control_port: u16,
    /// Region API URL(s) the agent reports to (comma-separated or repeated).
    #[arg(long = "region", value_delimiter = ',')]
    regions: Vec<String>,
    /// The cluster CA certificate (PEM) the regions are verified against.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// File holding an admin token (the agent reads boot credentials with it).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Never report to regions, even with --region.
    #[arg(long)]
    no_agent: bool,
    /// Time from power-on to the agent's first call, in milliseconds.
    #[arg(long, default_value_t = 500)]
    boot_delay_ms: u64,
    /// Seed of MACs, UUIDs and hardware (give fleets sharing a cluster different seeds).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Serve Redfish only: no IPMI (RMCP+) UDP port per BMC.
    #[arg(long)]
    no_ipmi: bool,
}

/// Raises the soft open-file limit to the hard one: every simulated BMC holds a listening socket plus its
/// clients' connections (1,000 BMCs exceed the usual soft limit of 1,024).
fn raise_nofile_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, l) {
            eprintln!(
                "ingot-sim: cannot raise the open-file limit ({e}); large fleets may fail to bind"
            );
        }
    }
}

fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    raise_nofile_limit();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().context("cannot start the Tokio runtime")?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Run(a) => run(a).await,
            Cmd::Fault {
                dir,
                hostname,
                unresponsive,
                slow_ms,
                wrong_password,
                flapping,
                fail_power,
                clear,
            } => {
                let faults = Faults {
                    unresponsive,
                    slow_ms: slow_ms.unwrap_or(0),
                    wrong_password,
                    flapping,
                    fail_power,
                };
                if faults.is_clear() && !clear {
                    bail!(
                        "give at least one fault (--unresponsive, --slow-ms N, --wrong-password, \
                         --flapping, --fail-power) or --clear"
                    );
                }
                let v = ControlClient::from_dir(&dir)?
                    .set_faults(&hostname, &faults)
                    .await?;
                println!("{}: faults {}", v.info.hostname, v.faults.describe());
                Ok(())
            }
            Cmd::List { dir, json } => {
                let machines = ControlClient::from_dir(&dir)?.list().await?;
                let mut out = std::io::stdout().lock();
                let written = if json {
                    serde_json::to_writer_pretty(&mut out, &machines)
                        .map_err(std::io::Error::from)
                        .and_then(|()| writeln!(out))
                } else {
                    print_table(&mut out, &machines)
                };
                match written {
                    // `ingot-sim list | head` is not an error.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                    r => r.context("cannot write to stdout"),
                }
            }
        }
    })
}

fn agent_config(a: &RunArgs) -> Result<Option<AgentConfig>> {
    if a.no_agent {
        eprintln!("ingot-sim: agent off (--no-agent): network-booted machines report nothing");
        return Ok(None);
    }
    if a.regions.is_empty() && a.token_file.is_none() {
        eprintln!(
            "ingot-sim: agent off (no --region/--token-file): network-booted machines report nothing"
        );
        return Ok(None);
    }
    if a.regions.is_empty() {
        bail!("--token-file needs --region URL (the regions the agent reports to)");
    }
    let Some(token_file) = &a.token_file else {
        bail!("--region needs --token-file FILE (an admin token, e.g. a region's admin.token)");
    };
    let Some(ca) = &a.ca else {
        bail!("--region needs --ca FILE (the cluster CA certificate, e.g. DIR/ca.crt of ingot dev up)");
    };
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("cannot read the token file {}", token_file.display()))?;
    let token = token.trim().to_string();
    if token.is_empty() {
        bail!("the token file {} is empty", token_file.display());
    }
    eprintln!(
        "ingot-sim: agent on: network-booted machines report to {}",
        a.regions.join(",")
    );
    Ok(Some(AgentConfig {
        boot_delay_ms: a.boot_delay_ms,
        ..AgentConfig::new(a.regions.clone(), ca, token)
    }))
}

async fn run(a: RunArgs) -> Result<()> {
    let cfg = FleetConfig {
        count: a.count,
        hostname_prefix: a.prefix.clone(),
        zones: a.zones.clone(),
        username: a.username.clone(),
        password: a.password.clone(),
        power_delay_ms: a.power_delay_ms,
        control_port: a.control_port,
        agent: agent_config(&a)?,
        seed: a.seed,
        ipmi: !a.no_ipmi,
    };
    let started = std::time::Instant::now();
    let fleet = Fleet::start(cfg).await?;
    fleet.write_state(&a.dir)?;
    tracing::info!(
        "{} BMCs listening after {} ms",
        fleet.machines().len(),
        started.elapsed().as_millis()
    );
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "ingot-sim: {} machines, control {}",
            fleet.machines().len(),
            fleet.control_url()
        )?;
        out.flush()?;
    }
    wait_for_signal().await?;
    tracing::info!("stopping");
    fleet.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

fn print_table(out: &mut impl Write, machines: &[MachineView]) -> std::io::Result<()> {
    let rows: Vec<[String; 10]> = machines
        .iter()
        .map(|m| {
            let agent = &m.counters.agent;
            let runs = if agent.runs.is_empty() {
                "-".to_string()
            } else {
                agent
                    .runs
                    .iter()
                    .map(|(p, n)| format!("{p}:{n}"))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            [
                m.info.hostname.clone(),
                m.info.zone.clone(),
                m.info.mac.clone(),
                m.info.bmc_url.clone(),
                m.info
                    .ipmi_port
                    .map_or_else(|| "-".to_string(), |p| p.to_string()),
                m.power.as_str().to_string(),
                format!("{}/{}", m.boot.target.redfish(), m.boot.enabled.redfish()),
                m.faults.describe(),
                format!(
                    "{}/{}/{}",
                    m.counters.queries, m.counters.resets, m.counters.pxe_boots
                ),
                runs,
            ]
        })
        .collect();
    let header = [
        "HOSTNAME",
        "ZONE",
        "MAC",
        "BMC",
        "IPMI PORT",
        "POWER",
        "BOOT OVERRIDE",
        "FAULTS",
        "QUERIES/RESETS/PXE",
        "AGENT RUNS",
    ];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for r in &rows {
        writeln!(out, "{}", line(r.iter().map(String::as_str).collect()))?;
    }
    out.flush()
}
