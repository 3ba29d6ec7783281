//! `ingot-bench`: figures for a real local Ingot cluster, printed, never asserted (performance is measured
//! here, not in timed tests). It starts N `ingot-region` processes on loopback (release binaries when run
//! with `cargo run --release -p ingot-bench`), then:
//! 1. write throughput: C concurrent clients over K connections doing machine create + update, with
//!    writes/s and latency percentiles;
//! 2. leader failover: SIGKILL the leader F times, time from the kill to the first acknowledged write that
//!    was sent after the kill, restarting the killed region between rounds;
//! 3. with `--etcd`, runs `bench/etcd/run_etcd_bench.sh` (etcd 3.4, 3 members, mutual TLS, etcd's own
//!    benchmark tool) in the same run and prints both side by side.
//!
//! With `--alloc` it runs the allocation-scale benchmark instead (see [`alloc`]): a 10,000-machine fleet
//! commissioned through the API, then allocation throughput, list latencies and watch fan-out.
//!
//! With `--power` it runs the power-driver benchmark instead (see [`power`]): one rack's power monitor
//! sweeping 1,000 simulated Redfish BMCs, and native IPMI vs ipmitool query latency against ipmi_sim.
//!
//! With `--racks` it runs the rack-controller benchmark instead (see [`racks`]): session failover after a
//! region SIGKILL, BMC ownership moves after a rack SIGKILL, and the regions' cost per connected rack.
//!
//! With `--dhcp-fuzz --cases N [--seed S]` it runs the DHCP fuzzer instead (see [`fuzz`]).
//!
//! With `--dhcp` it runs the DHCP benchmark instead (see [`dhcp`]): Kea's perfdhcp against ingot-rack and
//! against kea-dhcp4 in the same namespaces, stepping the rate up, and the rack's RSS with many leases.
//!
//! With `--tftp-fuzz --cases N [--seed S]` it runs the TFTP fuzzer instead (see [`fuzz`]).
//!
//! With `--boot-files` it runs the boot-file benchmark instead (see [`boot_files`]): a file over TFTP from
//! ingot-rack and tftpd-hpa, and over HTTP from the rack and nginx, with the same clients.
//!
//! With `--image-upload [--size-mib N]` it runs the image upload benchmark instead (see [`upload`]).
//!
//! With `--nemesis --minutes N [--seed S]` it runs the nemesis instead (see [`nemesis`]): faults
//! injected at random under a client workload, then the invariants checked from the record.

use anyhow::{Context, Result};
use clap::Parser;
use ingot_client::Clients;
use ingot_launch::{LocalCluster, LocalClusterOptions};
use ingot_proto::v1::{CreateMachineRequest, UpdateMachineRequest};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod alloc;
mod boot_files;
mod dhcp;
mod e2e;
mod fuzz;
mod nemesis;
/// Network namespaces, veths and process helpers, shared with the tests and `ingot dev up` (the DHCP
/// benchmark's topology; `rss_kib` for every RSS figure).
use ingot_launch::netns;
mod power;
mod racks;
mod upload;

#[derive(Parser)]
#[command(
    name = "ingot-bench",
    about = "Throughput, latency and failover figures of a local Ingot cluster (and etcd side by side)"
)]
struct Args {
    /// Regions in the cluster.
    #[arg(long, default_value_t = 3)]
    regions: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Separate HTTP/2 connections (sets of channels) the clients share, like etcd benchmark's --conns.
    #[arg(long, default_value_t = 16)]
    conns: usize,
    /// Total writes (create + update each count as one).
    #[arg(long, default_value_t = 20_000)]
    writes: u64,
    /// Stop the throughput phase after this many seconds even if `--writes` are not done.
    #[arg(long, default_value_t = 60)]
    max_seconds: u64,
    /// Leader kills for the failover phase (0 skips it).
    #[arg(long, default_value_t = 5)]
    failovers: usize,
    /// Also run the etcd comparison (bench/etcd/run_etcd_bench.sh) and print both.
    #[arg(long)]
    etcd: bool,
    /// Working directory (default: a fresh directory under the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Instead of writes, measure stale reads (GetZone) through the same clients: separates transport cost
    /// from consensus cost.
    #[arg(long)]
    reads: bool,
    /// Extra flags for every ingot-region (e.g. --region-arg=--election-timeout-ms=400).
    #[arg(long = "region-arg", allow_hyphen_values = true)]
    region_args: Vec<String>,
    /// Run the allocation benchmark instead: enlist and commission `--machines` through the API, then
    /// allocation throughput (`--allocations` by `--clients` over `--conns`), list latencies and watch
    /// fan-out.
    #[arg(long)]
    alloc: bool,
    /// --alloc: machines in the fleet.
    #[arg(long, default_value_t = 10_000)]
    machines: u64,
    /// --alloc: zones the fleet is spread over.
    #[arg(long, default_value_t = 4)]
    zones: usize,
    /// --alloc: concurrent requests while enlisting and commissioning.
    #[arg(long, default_value_t = 256)]
    setup_concurrency: usize,
    /// --alloc: single-machine allocations to measure.
    #[arg(long, default_value_t = 5_000)]
    allocations: u64,
    /// --alloc: runs of the full list.
    #[arg(long, default_value_t = 50)]
    list_runs: usize,
    /// --alloc: runs of the filtered list.
    #[arg(long, default_value_t = 200)]
    filtered_runs: usize,
    /// --alloc: concurrent watchers.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// --alloc: writes the watchers observe.
    #[arg(long, default_value_t = 500)]
    watch_writes: usize,
    /// --alloc: pace of those writes, per second.
    #[arg(long, default_value_t = 250)]
    watch_rate: u64,
    /// Run the rack benchmark instead: two `ingot-rack` processes, session re-establishment after SIGKILL
    /// of the serving region, BMC moves after SIGKILL of a rack, and many in-process rack sessions.
    #[arg(long)]
    racks: bool,
    /// --racks: the regions' --rack-grace-ms.
    #[arg(long, default_value_t = 3000)]
    rack_grace_ms: u64,
    /// --racks: SIGKILLs of the region serving a rack.
    #[arg(long, default_value_t = 10)]
    region_kills: usize,
    /// --racks: SIGKILLs of the rack owning the BMCs.
    #[arg(long, default_value_t = 5)]
    rack_kills: usize,
    /// --racks: rack sessions held from this process for the cost-per-rack figures (0 skips them).
    #[arg(long, default_value_t = 100)]
    rack_sessions: usize,
    /// --racks: length of each CPU measurement window, seconds.
    #[arg(long, default_value_t = 10)]
    cpu_seconds: u64,
    /// Run the power benchmark instead (no cluster): one rack's power monitor sweeping `--bmcs` simulated
    /// Redfish BMCs, then IPMI query latency of the native client vs ipmitool against ipmi_sim.
    #[arg(long)]
    power: bool,
    /// --power: simulated Redfish BMCs to sweep.
    #[arg(long, default_value_t = 1000)]
    bmcs: usize,
    /// --power: sweeps to time.
    #[arg(long, default_value_t = 5)]
    sweeps: usize,
    /// --power: reads in flight at once (the rack's --poll-concurrency).
    #[arg(long, default_value_t = 64)]
    poll_concurrency: usize,
    /// --power: IPMI queries per client (0 skips the IPMI comparison).
    #[arg(long, default_value_t = 50)]
    ipmi_queries: usize,
    /// Run the nemesis instead: 3 proxied regions, 2 racks and simulated machines under clients while
    /// processes are killed, stopped and restarted and links cut; then the invariants are checked.
    #[arg(long)]
    nemesis: bool,
    /// --nemesis: minutes of faults.
    #[arg(long, default_value_t = 2.0)]
    minutes: f64,
    /// --nemesis, --dhcp-fuzz, --tftp-fuzz: seed of every random choice (default: random; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Run the DHCP fuzzer instead (no cluster): `--cases` random and mutated datagrams through the
    /// rack's DHCP parser, engine and reply builder.
    #[arg(long)]
    dhcp_fuzz: bool,
    /// Run the TFTP fuzzer instead (no cluster): `--cases` random and mutated datagrams through the
    /// rack's TFTP codec and the server's option negotiation.
    #[arg(long)]
    tftp_fuzz: bool,
    /// --dhcp-fuzz, --tftp-fuzz: datagrams to feed.
    #[arg(long, default_value_t = 10_000_000)]
    cases: u64,
    /// Run the DHCP benchmark instead (root): perfdhcp against ingot-rack and kea-dhcp4, then the rack's RSS
    /// with `--dhcp-leases` more leases.
    #[arg(long)]
    dhcp: bool,
    /// --dhcp: offered rates (DORA/s), stepped up until drops reach 0.1 %.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "500,1000,2000,4000,6000,8000"
    )]
    dhcp_rates: Vec<u64>,
    /// --dhcp: seconds per rate step.
    #[arg(long, default_value_t = 5)]
    dhcp_seconds: u64,
    /// --dhcp: distinct MACs driven through ingot-rack for the RSS figure (0 skips it).
    #[arg(long, default_value_t = 100_000)]
    dhcp_leases: u64,
    /// Run the boot-file benchmark instead (root): a file over TFTP from ingot-rack and tftpd-hpa
    /// (blksize 1468 and 8192, with and without windowsize 16) and over HTTP from the rack and nginx,
    /// with the same clients, and the rack's RSS during the largest HTTP run.
    #[arg(long)]
    boot_files: bool,
    /// --boot-files: size of the file served; --image-upload: size of the file uploaded (MiB; default 40
    /// for --boot-files, 1024 for --image-upload).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=65536))]
    size_mib: Option<u64>,
    /// --boot-files: concurrent TFTP clients, per case.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    boot_tftp_clients: Vec<usize>,
    /// --boot-files: concurrent HTTP clients, per case.
    #[arg(long, value_delimiter = ',', default_value = "1,50")]
    boot_http_clients: Vec<usize>,
    /// --boot-files: downloads each HTTP client makes per case.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1000))]
    boot_http_rounds: u64,
    /// --boot-files: longest one case may run, seconds (then it is cut and says so).
    #[arg(long, default_value_t = 120)]
    boot_max_seconds: u64,
    /// Run the image upload benchmark instead: one random file streamed to a region, MiB/s and the time
    /// until a majority (and all) of the regions hold it.
    #[arg(long)]
    image_upload: bool,
    /// Run the end-to-end benchmark instead (root, QEMU, OpenIPMI, the image builders): one QEMU VM (TCG)
    /// behind ipmi_sim through commission, allocate, deploy and its first disk boot, with the wall time of
    /// each phase from the machine's events and its serial console.
    #[arg(long)]
    e2e: bool,
    /// --e2e: the VM's firmware (bios or uefi).
    #[arg(long, default_value = "bios", value_parser = |s: &str| s.parse::<ingot_launch::vmlab::Firmware>())]
    e2e_firmware: ingot_launch::vmlab::Firmware,
}

/// The `p` quantile (0..=1) of sorted samples; zero when there are none.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A duration in milliseconds.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mac(n: u64) -> String {
    let b = n.to_be_bytes();
    format!(
        "06:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[3], b[4], b[5], b[6], b[7]
    )
}

struct Throughput {
    writes: u64,
    errors: u64,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    p999: Duration,
    max: Duration,
}

async fn throughput(cluster: &LocalCluster, a: &Args) -> Result<Throughput> {
    let conns: Vec<Clients> = (0..a.conns.max(1))
        .map(|_| cluster.connect())
        .collect::<Result<_>>()?;
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Vec::with_capacity(a.writes as usize)));
    let deadline = Instant::now() + Duration::from_secs(a.max_seconds);
    let total = a.writes;
    let read_mode = a.reads;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..a.clients {
        let cl = conns[c % conns.len()].clone();
        let (next, errors, lat) = (next.clone(), errors.clone(), lat.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut last: Option<String> = None;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total || Instant::now() > deadline {
                    break;
                }
                let s = Instant::now();
                if read_mode {
                    let r = cl
                        .zones()
                        .get_zone(ingot_proto::v1::GetZoneRequest {
                            name: "default".into(),
                            consistency: ingot_proto::v1::ReadConsistency::Stale as i32,
                        })
                        .await;
                    if r.is_ok() {
                        mine.push(s.elapsed());
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
                // Alternate: enlist a machine, then change it (a realistic create/update mix).
                let ok = match last.take() {
                    Some(id) => cl
                        .machines()
                        .update_machine(UpdateMachineRequest {
                            system_id: id,
                            description: Some(format!("rev {n}")),
                            ..Default::default()
                        })
                        .await
                        .is_ok(),
                    None => match cl
                        .machines()
                        .create_machine(CreateMachineRequest {
                            macs: vec![mac(n)],
                            description: "x".repeat(200),
                            ..Default::default()
                        })
                        .await
                    {
                        Ok(m) => {
                            last = Some(m.into_inner().system_id);
                            true
                        }
                        Err(_) => false,
                    },
                };
                if ok {
                    mine.push(s.elapsed());
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            lat.lock().unwrap_or_else(|p| p.into_inner()).extend(mine);
        }));
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = t0.elapsed();
    let mut l = lat.lock().unwrap_or_else(|p| p.into_inner()).clone();
    l.sort();
    Ok(Throughput {
        writes: l.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        elapsed,
        p50: pct(&l, 0.50),
        p99: pct(&l, 0.99),
        p999: pct(&l, 0.999),
        max: l.last().copied().unwrap_or_default(),
    })
}

/// SIGKILLs the leader and measures the time until a write *sent after the kill* is acknowledged. A
/// long-lived client keeps writing every 10 ms with a 500 ms per-call deadline, like etcd's probe.
async fn failover(cluster: &LocalCluster, round: usize) -> Result<Duration> {
    let leader = wait_leader(cluster).await?;
    let c = cluster.connect()?;
    // Warm the connections.
    for i in 0..20 {
        let _ = c
            .machines()
            .create_machine(CreateMachineRequest {
                macs: vec![mac(0xF0_0000_0000 + (round as u64) * 1000 + i)],
                ..Default::default()
            })
            .await;
    }
    cluster.kill(leader, libc::SIGKILL)?;
    let killed = Instant::now();
    let mut n = 0u64;
    let found = loop {
        n += 1;
        let sent = Instant::now();
        let req = CreateMachineRequest {
            macs: vec![mac(0xF1_0000_0000 + (round as u64) * 100_000 + n)],
            ..Default::default()
        };
        let mut m = c.machines();
        let ok = matches!(
            tokio::time::timeout(Duration::from_millis(500), m.create_machine(req)).await,
            Ok(Ok(_))
        );
        if ok && sent >= killed {
            break killed.elapsed();
        }
        if killed.elapsed() > Duration::from_secs(30) {
            anyhow::bail!("no write succeeded within 30 s after killing the leader");
        }
        tokio::time::sleep(Duration::from_millis(10).saturating_sub(sent.elapsed())).await;
    };
    cluster.wait_exit(leader).await?;
    cluster
        .restart(leader)
        .await
        .context("restarting the killed leader")?;
    Ok(found)
}

async fn wait_leader(cluster: &LocalCluster) -> Result<usize> {
    for _ in 0..200 {
        if let Some(i) = cluster.leader().await {
            return Ok(i);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("no leader elected within 10 s")
}

/// Runs etcd's side of the comparison with as many failover rounds as Ingot's (at least 3).
fn etcd_figures(failovers: usize) -> Result<Vec<(String, String)>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("etcd/run_etcd_bench.sh");
    eprintln!(
        "== etcd: running {} (installs etcd and builds its benchmark tool on first use)",
        root.display()
    );
    let out = std::process::Command::new("bash")
        .arg(&root)
        .env("FAILOVER_ROUNDS", failovers.max(3).to_string())
        .output()
        .context("running the etcd benchmark script")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        anyhow::bail!(
            "etcd benchmark failed:\n{}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text
        .lines()
        .filter_map(|l| {
            l.strip_prefix("ETCD_")
                .and_then(|r| r.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect())
}

#[tokio::main]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let a = Args::parse();
    let fuzzed = if a.dhcp_fuzz {
        Some(fuzz::Protocol::Dhcp)
    } else if a.tftp_fuzz {
        Some(fuzz::Protocol::Tftp)
    } else {
        None
    };
    if let Some(protocol) = fuzzed {
        return fuzz::run(&fuzz::FuzzOpts {
            protocol,
            cases: a.cases,
            seed: a.seed.unwrap_or_else(rand::random),
        });
    }
    if a.power {
        return power::run(&power::PowerOpts {
            bmcs: a.bmcs,
            sweeps: a.sweeps,
            concurrency: a.poll_concurrency,
            ipmi_queries: a.ipmi_queries,
        })
        .await;
    }
    if a.nemesis {
        return nemesis::run(&nemesis::NemesisArgs {
            minutes: a.minutes,
            seed: a.seed,
            dir: a.dir.clone(),
        })
        .await;
    }
    let dir = a.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("ingot-bench-{}", std::process::id()))
    });
    let _ = std::fs::remove_dir_all(&dir);
    if a.e2e {
        let r = e2e::run(&e2e::E2eOpts {
            dir: dir.clone(),
            firmware: a.e2e_firmware,
            regions: a.regions,
        })
        .await;
        if r.is_err() {
            eprintln!(
                "== keeping {} (cluster, rack, VM and BMC logs)",
                dir.display()
            );
        } else if a.dir.is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        return r;
    }
    if a.boot_files {
        let bin = ingot_launch::resolve_bin_dir(None)?;
        let profile = if bin.ends_with("release") && !cfg!(debug_assertions) {
            "release"
        } else {
            "debug (use --release for real figures)"
        };
        let o = boot_files::BootFilesOpts {
            size_mib: a.size_mib.unwrap_or(40),
            tftp_clients: a.boot_tftp_clients.clone(),
            http_clients: a.boot_http_clients.clone(),
            http_rounds: a.boot_http_rounds,
            max_seconds: a.boot_max_seconds,
            dir: dir.clone(),
        };
        let figures = boot_files::run(&o).await;
        if figures.is_err() {
            eprintln!("== keeping {} (cluster, rack and peer logs)", dir.display());
        } else if a.dir.is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        boot_files::report(&o, &figures?, profile);
        return Ok(());
    }
    let mut opts = LocalClusterOptions::new(&dir, a.regions);
    opts.region_args = a.region_args.clone();
    if a.racks {
        opts.region_args
            .push(format!("--rack-grace-ms={}", a.rack_grace_ms));
    }
    eprintln!("== starting {} regions in {}", a.regions, dir.display());
    let cluster = LocalCluster::start(opts).await?;
    let bin = ingot_launch::resolve_bin_dir(None)?;
    let profile = if bin.ends_with("release") {
        "release"
    } else {
        "debug (use --release for real figures)"
    };

    if a.racks {
        let o = racks::RackOpts {
            grace_ms: a.rack_grace_ms,
            region_kills: a.region_kills,
            rack_kills: a.rack_kills,
            sessions: a.rack_sessions,
            cpu_seconds: a.cpu_seconds,
        };
        let figures = racks::run(&cluster, &o).await;
        drop(cluster);
        if figures.is_err() {
            eprintln!("== keeping {} (region and rack logs)", dir.display());
        } else if a.dir.is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        racks::report(&o, &figures?, profile, a.regions);
        return Ok(());
    }

    if a.dhcp {
        let o = dhcp::DhcpOpts {
            rates: a.dhcp_rates.clone(),
            seconds: a.dhcp_seconds.max(1),
            leases: a.dhcp_leases,
            dir: dir.join("dhcp"),
        };
        let figures = dhcp::run(&cluster, &o).await;
        drop(cluster);
        if figures.is_err() {
            eprintln!("== keeping {} (region, rack and peer logs)", dir.display());
        } else if a.dir.is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        dhcp::report(&o, &figures?, profile, a.regions);
        return Ok(());
    }

    if a.image_upload {
        let o = upload::UploadOpts {
            size_mib: a.size_mib.unwrap_or(1024),
        };
        let figures = upload::run(&cluster, &o).await;
        drop(cluster);
        if figures.is_err() {
            eprintln!("== keeping {} (region logs)", dir.display());
        } else if a.dir.is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        upload::report(&figures?, profile);
        return Ok(());
    }

    if a.alloc {
        let o = alloc::AllocOpts {
            machines: a.machines,
            zones: a.zones.max(1),
            setup_concurrency: a.setup_concurrency.max(1),
            allocations: a.allocations,
            clients: a.clients.max(1),
            conns: a.conns.max(1),
            list_runs: a.list_runs,
            filtered_runs: a.filtered_runs,
            watchers: a.watchers,
            watch_writes: a.watch_writes,
            watch_rate: a.watch_rate,
            max_seconds: a.max_seconds,
        };
        let figures = alloc::run(&cluster, &o).await;
        drop(cluster);
        if a.dir.is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        alloc::report(&o, &figures?, profile, a.regions);
        return Ok(());
    }

    eprintln!(
        "== throughput: {} clients over {} connections, {} writes",
        a.clients, a.conns, a.writes
    );
    let t = throughput(&cluster, &a).await?;
    let wps = t.writes as f64 / t.elapsed.as_secs_f64();

    let mut fo = Vec::new();
    for round in 0..a.failovers {
        let d = failover(&cluster, round).await?;
        eprintln!("   failover {}: {:.0} ms", round + 1, ms(d));
        fo.push(d);
    }
    fo.sort();
    drop(cluster);
    if a.dir.is_none() {
        // A --dir given by the user is kept (region logs, data) for inspection.
        let _ = std::fs::remove_dir_all(&dir);
    }

    let etcd = if a.etcd {
        Some(etcd_figures(a.failovers)?)
    } else {
        None
    };
    println!();
    println!("ingot-bench: {} regions on loopback, mutual TLS between regions, TLS + token to clients, fsync on ({profile})", a.regions);
    println!("  writes (create+update, ~256 B):  {:>8.0} /s   ({} ok, {} errors in {:.1} s, {} clients, {} conns)", wps, t.writes, t.errors, t.elapsed.as_secs_f64(), a.clients, a.conns);
    println!(
        "  latency:  p50 {:.1} ms   p99 {:.1} ms   p99.9 {:.1} ms   max {:.1} ms",
        ms(t.p50),
        ms(t.p99),
        ms(t.p999),
        ms(t.max)
    );
    if !fo.is_empty() {
        let list: Vec<String> = fo.iter().map(|d| format!("{:.0}", ms(*d))).collect();
        println!("  leader SIGKILL -> first acknowledged write:  median {:.0} ms  p99 {:.0} ms  max {:.0} ms  (all: {})", ms(pct(&fo, 0.5)), ms(pct(&fo, 0.99)), ms(*fo.last().unwrap_or(&Duration::ZERO)), list.join(", "));
    }
    println!("INGOT_WRITES_PER_S={wps:.0}");
    println!("INGOT_P99_MS={:.1}", ms(t.p99));
    if !fo.is_empty() {
        println!("INGOT_FAILOVER_MS={:.0}", ms(pct(&fo, 0.5)));
        println!("INGOT_FAILOVER_P99_MS={:.0}", ms(pct(&fo, 0.99)));
    }
    if let Some(e) = etcd {
        let get = |k: &str| {
            e.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| "?".into())
        };
        println!();
        println!(
            "side by side (same machine, same run)      ingot        etcd 3.4 (mTLS, 3 members)"
        );
        println!(
            "  writes/s                                {:>8.0}     {:>8}",
            wps,
            get("TLS_PUTS_PER_S")
        );
        println!(
            "  p99 ms                                  {:>8.1}     {:>8}",
            ms(t.p99),
            get("TLS_P99_MS")
        );
        println!(
            "  failover ms (median)                    {:>8.0}     {:>8}",
            ms(pct(&fo, 0.5)),
            get("FAILOVER_MS")
        );
        println!(
            "  failover ms (p99)                       {:>8.0}     {:>8}",
            ms(pct(&fo, 0.99)),
            get("FAILOVER_P99_MS")
        );
    }
    Ok(())
}
