//! `ingot dev up|down`: a local development cluster of real `ingot-region` and `ingot-rack` processes
//! that keeps running after `ingot` exits, described by `DIR/env` and `DIR/cluster.json`. Racks are
//! enrolled like real ones (enrollment token, `ingot-rack register`, `ingot-rack run`). With `--vms N`,
//! real machines too: QEMU VMs behind `ipmi_sim` BMCs in a network namespace (`ingot_launch::vmlab`,
//! recorded in `DIR/vmlab/`), a rack serving DHCP/TFTP/HTTP on their segment, the boot images, and the
//! VMs enlisted with their MACs and IPMI BMCs; `ingot dev down` stops them too.

use crate::ctx::Ctx;
use crate::output::print_json;
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use ingot_launch::vmlab::{self, Firmware, LabRecord, VmLab, VmLabOptions, VmSpec};
use ingot_launch::{
    LocalCluster, LocalClusterOptions, LocalRack, LocalRegion, Progress, RackBoot, StopOutcome,
    CLUSTER_FILE,
};
use serde_json::json;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

const DEFAULT_DIR: &str = ".ingot-dev";
/// The VM lab's directory inside the cluster directory.
const VMLAB_DIR: &str = "vmlab";
/// The rack serving the VMs' segment, and its zone (the VMs' machines are in it).
const VM_RACK: &str = "rack-vms";
/// The zone of the VM rack and the VMs.
const VM_ZONE: &str = "vms";

/// The `dev` subcommands.
#[derive(Subcommand, Debug)]
pub enum DevCmd {
    /// Start a local cluster in DIR with its rack controllers (or restart its stopped regions and racks);
    /// everything keeps running in the background
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
        /// Directory containing ingot-region and ingot-rack (default: next to this ingot executable)
        #[arg(long, value_name = "DIR")]
        bin_dir: Option<PathBuf>,
        /// Number of rack controllers, named rack-1..N (0: none)
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=64))]
        racks: u64,
        /// Number of zones the racks are spread over, round-robin: zone-1..M (created as needed)
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
        zones: u64,
        /// Extra flag for every `ingot-rack run`, e.g. --rack-arg=--heartbeat-ms=200 (repeatable)
        #[arg(long = "rack-arg", value_name = "FLAG", allow_hyphen_values = true)]
        rack_args: Vec<String>,
        /// Number of simulated machines (ingot-sim: Redfish BMCs on loopback ports, an agent that
        /// reports inventory and deployment), spread over the racks' zones and enlisted with the redfish
        /// power driver (0: none)
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=5000))]
        sims: u64,
        /// Extra flag for `ingot-sim run`, e.g. --sim-arg=--power-delay-ms=2000 (repeatable)
        #[arg(long = "sim-arg", value_name = "FLAG", allow_hyphen_values = true)]
        sim_args: Vec<String>,
        /// Number of real machines: QEMU VMs (TCG) with blank disks behind their own ipmi_sim BMCs, on a
        /// bridge in a network namespace served by a rack (DHCP/TFTP/HTTP), enlisted with the ipmi power
        /// driver (0: none; needs root, QEMU and OpenIPMI, installed when missing)
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=16))]
        vms: u64,
        /// The VMs' firmware
        #[arg(long, default_value = "bios", value_parser = parse_firmware)]
        vm_firmware: Firmware,
        /// Each VM's memory, MiB
        #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(256..=65536))]
        vm_memory_mib: u32,
        /// Each VM's CPUs
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
        vm_cpus: u32,
        /// Each VM's blank disk, GiB (a sparse file)
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1024))]
        vm_disk_gib: u64,
    },
    /// Stop the local cluster recorded in DIR: its VMs and their BMCs (and their namespace), the simulator,
    /// racks and regions (SIGTERM, then SIGKILL)
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
            racks,
            zones,
            rack_args,
            sims,
            sim_args,
            vms,
            vm_firmware,
            vm_memory_mib,
            vm_cpus,
            vm_disk_gib,
        } => {
            let opts = LocalClusterOptions {
                dir,
                regions: regions as usize,
                bin_dir,
                region_args,
                rack_args,
                detach: true,
                proxied: false,
            };
            let sims = Sims {
                count: sims as usize,
                args: sim_args,
            };
            let vms = Vms {
                count: vms as usize,
                spec: VmSpec {
                    firmware: vm_firmware,
                    memory_mib: vm_memory_mib,
                    cpus: vm_cpus,
                    disk_mib: vm_disk_gib * 1024,
                },
            };
            up(ctx, opts, racks as usize, zones as usize, sims, vms).await
        }
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
            Progress::RackReady(r) => {
                format!("✓ rack {} running (zone {}, pid {})", r.name, r.zone, r.pid)
            }
        };
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// A line that stays (above the spinner).
    fn line(&self, line: String) {
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

/// The zone of rack `i` (1-based) when racks are spread round-robin over `zones` zones.
fn rack_zone(i: usize, zones: usize) -> String {
    format!("zone-{}", (i - 1) % zones.max(1) + 1)
}

/// The simulated machines `dev up` starts.
struct Sims {
    /// How many (0: none).
    count: usize,
    /// Extra `ingot-sim run` flags.
    args: Vec<String>,
}

/// `--vm-firmware`.
fn parse_firmware(s: &str) -> Result<Firmware, String> {
    s.parse()
}

/// The VMs `dev up --vms` adds.
struct Vms {
    /// How many (0: none).
    count: usize,
    /// Their hardware.
    spec: VmSpec,
}

/// Installs QEMU, OVMF, iPXE and OpenIPMI when missing, with the test command's installer
/// (`scripts/install-test-peers.sh --vms`), found next to the source tree this `ingot` was built from.
fn ensure_vm_peers(reporter: &Reporter, firmware: Firmware) -> Result<()> {
    let missing = vmlab::missing_peers(firmware);
    if missing.is_empty() {
        return Ok(());
    }
    if !ingot_launch::netns::is_root() {
        bail!(
            "--vms needs root (network namespaces, taps; missing: {}): run `sudo ingot dev up --vms ...`",
            missing.join(", ")
        );
    }
    let script = [
        std::env::current_exe().ok().and_then(|e| {
            e.ancestors()
                .nth(3)
                .map(|p| p.join("scripts/install-test-peers.sh"))
        }),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-test-peers.sh")),
    ]
    .into_iter()
    .flatten()
    .find(|p| p.is_file());
    let Some(script) = script else {
        bail!(
            "--vms needs {}; install them: apt-get install qemu-system-x86 ipxe-qemu ovmf ipxe openipmi ipmitool",
            missing.join(", ")
        );
    };
    reporter.on(Progress::Step(format!(
        "installing {} ({} --vms)",
        missing.join(", "),
        script.display()
    )));
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("--vms")
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    let still = vmlab::missing_peers(firmware);
    if !out.status.success() || !still.is_empty() {
        bail!(
            "installing the VM peers failed ({}; still missing: {}): {}{}",
            out.status,
            still.join(", "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    reporter.line(format!("✓ installed {}", missing.join(", ")));
    Ok(())
}

/// Runs this `ingot` binary against the cluster (`--profile DIR/env`), returning its stdout; an error
/// with its output if it fails.
fn ingot_sub(cluster: &LocalCluster, args: &[&str]) -> Result<String> {
    let exe = std::env::current_exe().context("cannot find the ingot executable")?;
    let out = std::process::Command::new(exe)
        .arg("--profile")
        .arg(cluster.env_path())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("cannot run ingot {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`ingot {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Adds the VM lab: the VMs and their BMCs (left running), the rack on their segment, its subnet, the
/// boot images, and the VMs' machines (New).
async fn start_vms(reporter: &Reporter, cluster: &LocalCluster, vms: &Vms) -> Result<()> {
    let dir = cluster.dir().join(VMLAB_DIR);
    if vms.count == 0 {
        return Ok(());
    }
    if LabRecord::load(&dir)?.is_some() {
        reporter.line(format!(
            "note: {} already holds a VM lab; --vms is ignored (`ingot dev down` removes it)",
            dir.display()
        ));
        return Ok(());
    }
    ensure_vm_peers(reporter, vms.spec.firmware)?;
    reporter.on(Progress::Step(format!(
        "creating {} {} VMs with their BMCs",
        vms.count,
        vms.spec.firmware.name()
    )));
    let lab = VmLab::create(&VmLabOptions {
        dir: dir.clone(),
        vms: vms.count,
        vm: vms.spec,
        subnet_octet: None,
    })
    .context("creating the VM lab failed")?;
    // From here on `ingot dev down` stops it from its record.
    let rec = lab.keep();
    reporter.line(format!(
        "✓ {} VMs on {} (namespace {}, boot interface {} {})",
        rec.vms.len(),
        rec.cidr(),
        rec.netns,
        rec.root_link,
        rec.root_addr()
    ));
    cluster
        .add_boot_rack_with_progress(
            VM_RACK,
            VM_ZONE,
            RackBoot {
                interfaces: vec![rec.root_link.clone()],
                ..RackBoot::default()
            },
            |p| reporter.on(p),
        )
        .await
        .with_context(|| format!("adding rack {VM_RACK} on {} failed", rec.root_link))?;
    reporter.on(Progress::Step(format!("creating subnet {}", rec.cidr())));
    ingot_sub(
        cluster,
        &[
            "subnets",
            "create",
            &rec.cidr(),
            "--gateway",
            &rec.root_ip(),
            "--dynamic",
            &rec.dynamic_range(),
            "--primary",
            VM_RACK,
        ],
    )?;
    reporter.on(Progress::Step("importing iPXE (images import-ipxe)".into()));
    ingot_sub(cluster, &["images", "import-ipxe"])?;
    let out = dir.join("images");
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    for c in vmlab::image_commands(&out) {
        let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
        let what = c.what;
        reporter.on(Progress::Step(format!(
            "building and uploading {what} (ingot {})",
            args.join(" ")
        )));
        match ingot_sub(cluster, &args) {
            Ok(_) => reporter.line(format!("✓ {what} uploaded (ingot {})", args.join(" "))),
            Err(e) => reporter.line(format!(
                "WARNING: {what} is missing, so the VMs cannot {} yet: {e:#}",
                if c.args.iter().any(|a| a == vmlab::RAMDISK_IMAGE) {
                    "enlist, commission or deploy"
                } else {
                    "deploy `--os ingot --series test`"
                }
            )),
        }
    }
    reporter.on(Progress::Step("enlisting the VMs".into()));
    for vm in &rec.vms {
        let args = vm.create_args(VM_ZONE);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        ingot_sub(cluster, &a)?;
    }
    reporter.line(format!(
        "✓ {} VMs enlisted (New) with their IPMI BMCs, in zone {VM_ZONE}",
        rec.vms.len()
    ));
    Ok(())
}

/// Starts the simulator (unless running or not wanted) and enlists its machines.
async fn start_sims(
    reporter: &Reporter,
    cluster: &LocalCluster,
    sims: &Sims,
    zones: Vec<String>,
) -> Result<()> {
    if sims.count == 0 || cluster.is_sim_running() {
        return Ok(());
    }
    // A restart keeps the recorded machine count (their MACs and names are derived from it).
    let count = cluster
        .sim()
        .map(|s| s.machines.len())
        .filter(|n| *n > 0)
        .unwrap_or(sims.count);
    reporter.on(Progress::Step(format!(
        "starting {count} simulated machines"
    )));
    let sim = cluster
        .start_sims(count, &zones, &sims.args)
        .await
        .context("starting ingot-sim failed")?;
    reporter.on(Progress::Step(format!(
        "enlisting {} simulated machines",
        sim.machines.len()
    )));
    let clients = cluster.connect()?;
    let created = cluster.enlist_sims(&clients, &sim).await?;
    reporter.line(format!(
        "✓ {} simulated machines (ingot-sim pid {}, {created} enlisted now, control {})",
        sim.machines.len(),
        sim.pid,
        sim.control_url
    ));
    Ok(())
}

/// The zones of `racks` racks spread over `zones` zones (at least one: zone-1).
fn used_zones(racks: usize, zones: usize) -> Vec<String> {
    let mut v: Vec<String> = (1..=racks.max(1)).map(|i| rack_zone(i, zones)).collect();
    v.sort();
    v.dedup();
    v
}

async fn up(
    ctx: &Ctx,
    opts: LocalClusterOptions,
    racks: usize,
    zones: usize,
    sims: Sims,
    vms: Vms,
) -> Result<()> {
    let reporter = Reporter::new();
    if opts.dir.join(CLUSTER_FILE).exists() {
        let cluster = LocalCluster::load(&opts.dir)?;
        let stopped: Vec<usize> = (1..=cluster.len())
            .filter(|&i| !cluster.is_running(i))
            .collect();
        let stopped_racks: Vec<String> = cluster
            .racks()
            .into_iter()
            .filter(|r| !cluster.is_rack_running(&r.name))
            .map(|r| r.name)
            .collect();
        let sim_down = sims.count > 0 && !cluster.is_sim_running();
        let lab_wanted =
            vms.count > 0 && LabRecord::load(&cluster.dir().join(VMLAB_DIR))?.is_none();
        if stopped.is_empty() && stopped_racks.is_empty() && !sim_down && !lab_wanted {
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
        if cluster.len() != opts.regions && !ctx.json() {
            eprintln!(
                "note: {} holds a {}-region cluster; --regions {} is ignored",
                cluster.dir().display(),
                cluster.len(),
                opts.regions
            );
        }
        if cluster.racks().len() != racks && !ctx.json() {
            eprintln!(
                "note: {} holds {} rack(s); --racks {racks} is ignored (stopped racks are restarted, none added)",
                cluster.dir().display(),
                cluster.racks().len()
            );
        }
        let r = cluster
            .restart_stopped_with_progress(|p| reporter.on(p))
            .await;
        if let Err(e) = r {
            reporter.done();
            return Err(e.context("restarting the stopped regions and racks failed"));
        }
        let mut zs: Vec<String> = cluster.racks().iter().map(|r| r.zone.clone()).collect();
        zs.sort();
        zs.dedup();
        if zs.is_empty() {
            zs.push("default".into());
        }
        let r = start_sims(&reporter, &cluster, &sims, zs).await;
        let r = match r {
            Ok(()) => start_vms(&reporter, &cluster, &vms).await,
            Err(e) => Err(e),
        };
        reporter.done();
        r?;
        summary(ctx, &cluster, "restarted");
        return Ok(());
    }
    let r = LocalCluster::start_with_progress(opts, |p| reporter.on(p)).await;
    let cluster = match r {
        Ok(c) => c,
        Err(e) => {
            reporter.done();
            return Err(e);
        }
    };
    for i in 1..=racks {
        let name = format!("rack-{i}");
        let zone = rack_zone(i, zones);
        if let Err(e) = cluster
            .add_rack_with_progress(&name, &zone, |p| reporter.on(p))
            .await
        {
            reporter.done();
            return Err(e.context(format!(
                "adding rack {name} failed (the regions keep running: `ingot dev down --dir {}` stops them)",
                cluster.dir().display()
            )));
        }
    }
    let zs = if racks == 0 {
        vec!["default".to_string()]
    } else {
        used_zones(racks, zones)
    };
    if let Err(e) = start_sims(&reporter, &cluster, &sims, zs).await {
        reporter.done();
        return Err(e.context(format!(
            "the regions and racks keep running: `ingot dev down --dir {}` stops them",
            cluster.dir().display()
        )));
    }
    if let Err(e) = start_vms(&reporter, &cluster, &vms).await {
        reporter.done();
        return Err(e.context(format!(
            "the regions, racks and VMs started so far keep running: `ingot dev down --dir {}` stops them",
            cluster.dir().display()
        )));
    }
    reporter.done();
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

fn rack_json(r: &LocalRack) -> serde_json::Value {
    json!({
        "name": r.name,
        "zone": r.zone,
        "pid": r.pid,
        "data_dir": r.dir,
        "log": r.log,
    })
}

fn summary(ctx: &Ctx, cluster: &LocalCluster, state: &str) {
    let regions = cluster.regions();
    let racks = cluster.racks();
    let lab = LabRecord::load(&cluster.dir().join(VMLAB_DIR))
        .ok()
        .flatten();
    if ctx.json() {
        print_json(&json!({
            "state": state,
            "dir": cluster.dir(),
            "env": cluster.env_path(),
            "endpoints": cluster.endpoints(),
            "regions": regions.iter().map(region_json).collect::<Vec<_>>(),
            "racks": racks.iter().map(rack_json).collect::<Vec<_>>(),
            "sim": cluster.sim().map(|s| json!({
                "pid": s.pid,
                "running": cluster.is_sim_running(),
                "machines": s.machines.len(),
                "control_url": s.control_url,
                "log": s.log,
            })),
            "vms": lab.as_ref().map(|l| json!({
                "netns": l.netns,
                "boot_interface": l.root_link,
                "subnet": l.cidr(),
                "rack": VM_RACK,
                "zone": VM_ZONE,
                "machines": l.vms.iter().map(|v| json!({
                    "name": v.name,
                    "mac": v.mac,
                    "firmware": v.spec.firmware.name(),
                    "memory_mib": v.spec.memory_mib,
                    "cpus": v.spec.cpus,
                    "disk": v.disk,
                    "disk_mib": v.spec.disk_mib,
                    "serial_log": v.serial_log,
                    "bmc": format!("127.0.0.1:{}", v.bmc_port),
                    "bmc_pid": v.bmc_pid,
                })).collect::<Vec<_>>(),
            })),
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
    if !racks.is_empty() {
        outln!();
        let mut t = crate::output::table(["RACK", "ZONE", "PID", "LOG"]);
        for r in &racks {
            t.add_row(vec![
                r.name.clone(),
                r.zone.clone(),
                r.pid.to_string(),
                r.log.display().to_string(),
            ]);
        }
        outln!("{}", crate::output::render(&t));
    }
    if let Some(l) = &lab {
        outln!();
        let mut t = crate::output::table(["VM", "MAC", "FIRMWARE", "BMC (IPMI)", "SERIAL"]);
        for v in &l.vms {
            t.add_row(vec![
                v.name.clone(),
                v.mac.clone(),
                v.spec.firmware.name().to_string(),
                format!("127.0.0.1:{}", v.bmc_port),
                v.serial_log.display().to_string(),
            ]);
        }
        outln!("{}", crate::output::render(&t));
    }
    outln!();
    outln!("Endpoints: {}", cluster.endpoints().join(","));
    outln!();
    outln!("Use it:");
    outln!("  source {}", cluster.env_path().display());
    outln!("  ingot cluster list");
    outln!("  ingot racks list");
    outln!("  ingot machines list");
    if let Some(v) = lab.as_ref().and_then(|l| l.vms.first()) {
        let n = &v.name;
        outln!("  ingot machines commission {n} --wait      # a QEMU VM: PXE boot, real inventory");
        outln!(
            "  tail -f {}   # its serial console",
            v.serial_log.display()
        );
        outln!("  ingot machines allocate --cpus {} && ingot machines deploy {n} --os ingot --series test --wait", v.spec.cpus);
        outln!("  ingot machines release {n} --erase quick --wait");
        outln!("  ingot events list --machine {n}");
    }
    if let Some(s) = cluster.sim().filter(|s| !s.machines.is_empty()) {
        let first = &s.machines[0].hostname;
        outln!("  ingot machines commission {first} --wait      # a simulated machine: Redfish BMC + agent");
        outln!("  ingot machines allocate && ingot machines deploy <ID> --wait");
        outln!(
            "  ingot-sim fault --dir {} {first} --wrong-password   # fault knobs (log: {})",
            s.dir.display(),
            s.log.display()
        );
    } else if lab.is_none() {
        outln!("  ingot machines create --mac 52:54:00:00:00:01");
    }
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

fn outcome_text(o: StopOutcome) -> &'static str {
    match o {
        StopOutcome::NotRunning => "was not running",
        StopOutcome::Terminated => "stopped",
        StopOutcome::Killed => "killed (did not stop within 10 s)",
        StopOutcome::StillRunning => "STILL RUNNING",
    }
}

fn outcome_json(o: StopOutcome) -> String {
    format!("{o:?}").to_ascii_lowercase()
}

async fn down(ctx: &Ctx, dir: &Path, purge: bool) -> Result<()> {
    // One JSON line per process, racks and regions apart.
    let mut regions = Vec::new();
    let mut racks = Vec::new();
    let mut vms = Vec::new();
    // The VMs first: their BMCs would otherwise keep answering a rack that is gone.
    let lab = vmlab::stop_recorded(&dir.join(VMLAB_DIR))
        .with_context(|| format!("stopping the VM lab in {}", dir.join(VMLAB_DIR).display()))?;
    for p in &lab.processes {
        if !ctx.json() {
            outln!(
                "{} (pid {}): {}",
                p.what,
                p.pid,
                if p.stopped {
                    "stopped"
                } else {
                    "STILL RUNNING"
                }
            );
        }
        vms.push(json!({ "name": p.what, "pid": p.pid, "stopped": p.stopped }));
    }
    if let Some((ns, gone)) = &lab.netns {
        if !ctx.json() {
            outln!(
                "namespace {ns}: {}",
                if *gone { "deleted" } else { "STILL THERE" }
            );
        }
        if !gone && purge {
            bail!("namespace {ns} is still there; not purging");
        }
    }
    if purge && lab.processes.iter().any(|p| !p.stopped) {
        bail!("a VM process is still running; not purging");
    }
    if dir.join(CLUSTER_FILE).exists() {
        let cluster = LocalCluster::load(dir)?;
        if let Some(s) = cluster.sim() {
            let outcome = cluster.stop_sims().await;
            if !ctx.json() {
                outln!("ingot-sim (pid {}): {}", s.pid, outcome_text(outcome));
            }
            if outcome == StopOutcome::StillRunning && purge {
                bail!("ingot-sim (pid {}) is still running; not purging", s.pid);
            }
        }
        let report = cluster.stop_all_report().await;
        let mut still_running = None;
        let processes = report
            .racks
            .iter()
            .map(|s| (format!("rack {}", s.rack.name), s.rack.pid, s.outcome, true))
            .chain(
                report
                    .regions
                    .iter()
                    .map(|s| (s.region.name.clone(), s.region.pid, s.outcome, false)),
            );
        for (name, pid, outcome, is_rack) in processes {
            if !ctx.json() {
                outln!("{name} (pid {pid}): {}", outcome_text(outcome));
            }
            if outcome == StopOutcome::StillRunning {
                still_running.get_or_insert((name.clone(), pid));
            }
            let name = name.trim_start_matches("rack ").to_string();
            let line = json!({ "name": name, "pid": pid, "outcome": outcome_json(outcome) });
            if is_rack {
                racks.push(line);
            } else {
                regions.push(line);
            }
        }
        if let Some((name, pid)) = still_running {
            bail!("{name} (pid {pid}) is still running; not purging");
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
        print_json(&json!({
            "dir": dir,
            "regions": regions,
            "racks": racks,
            "vms": vms,
            "netns": lab.netns.map(|(n, gone)| json!({ "name": n, "deleted": gone })),
            "purged": purged,
        }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn racks_spread_round_robin_over_zones() {
        assert_eq!(rack_zone(1, 2), "zone-1");
        assert_eq!(rack_zone(2, 2), "zone-2");
        assert_eq!(rack_zone(3, 2), "zone-1");
        assert_eq!(rack_zone(3, 5), "zone-3");
        assert_eq!(rack_zone(2, 0), "zone-1");
    }
}
