//! `ingot-bench --e2e`: one real machine (a QEMU VM under TCG behind an `ipmi_sim` BMC, in a VM lab of
//! `ingot_launch::vmlab`) through commission → allocate → deploy → first boot from its own disk, driven
//! through the `ingot` CLI like an operator, with the wall time of each phase: from the machine's events
//! (their timestamps: DHCP, iPXE script, ramdisk files, agent, inventory, image written, statuses) and from
//! the serial console, polled every 100 ms (iPXE, the kernel, the disk boot's marker). Prints the whole
//! timeline too, so a phase this mode does not name is still visible. Needs root, QEMU, OpenIPMI and the
//! image builders (`ingot images build-ramdisk`, `build-test-image`).

use anyhow::{bail, Context, Result};
use ingot_launch::vmlab::{Firmware, LabVm, VmLab, VmLabOptions, VmSpec};
use ingot_launch::{LocalCluster, LocalClusterOptions, RackBoot};
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

/// What `--e2e` runs.
pub struct E2eOpts {
    /// Working directory.
    pub dir: PathBuf,
    /// The VM's firmware.
    pub firmware: Firmware,
    /// Regions.
    pub regions: usize,
}

/// Each phase's limit.
const PHASE: Duration = Duration::from_secs(600);

/// Serial console lines whose first appearance is a phase boundary.
const SERIAL_MARKS: &[(&str, &str)] = &[
    ("iPXE", "serial: iPXE starts"),
    ("Linux version", "serial: a Linux kernel starts"),
    ("INGOT-DISK-BOOTED", "serial: the disk boot's marker"),
];

/// Runs `ingot --json ARGS` against `cluster`.
fn ingot(cluster: &LocalCluster, args: &[&str]) -> Result<Value> {
    let bin = ingot_launch::resolve_bin_dir(None)?.join("ingot");
    let out = std::process::Command::new(bin)
        .arg("--profile")
        .arg(cluster.env_path())
        .arg("--json")
        .args(args)
        .output()
        .context("running ingot")?;
    if !out.status.success() {
        bail!(
            "ingot {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
}

/// Seconds since the epoch now.
fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Polls the machine until `want` (failing on a failed status), noting serial marks meanwhile.
fn wait(
    cluster: &LocalCluster,
    vm: &LabVm,
    id: &str,
    want: &str,
    marks: &mut Vec<(String, f64)>,
) -> Result<()> {
    let t0 = Instant::now();
    loop {
        note_serial(vm, marks);
        if let Ok(m) = ingot(cluster, &["machines", "show", id]) {
            let st = m["status"].as_str().unwrap_or("");
            if st == want {
                return Ok(());
            }
            if st.starts_with("failed-") {
                bail!(
                    "{} reached {st} waiting for {want}: {}; serial: {}",
                    vm.name,
                    m["status_message"],
                    vm.serial_log.display()
                );
            }
        }
        if t0.elapsed() > PHASE {
            bail!("{} not {want} within {PHASE:?}", vm.name);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Records the first time each serial mark appears (per boot: a mark seen again after more output is
/// recorded again, numbered).
fn note_serial(vm: &LabVm, marks: &mut Vec<(String, f64)>) {
    let text = vm.serial_text();
    for (needle, what) in SERIAL_MARKS {
        let count = text.matches(needle).count();
        let seen = marks.iter().filter(|(w, _)| w.starts_with(what)).count();
        // iPXE prints its banner once per boot; the kernel's line once per boot.
        if count > seen {
            marks.push((format!("{what} #{}", seen + 1), now_secs()));
        }
    }
}

/// Runs the whole benchmark and prints its figures.
pub async fn run(o: &E2eOpts) -> Result<()> {
    let missing = ingot_launch::vmlab::missing_peers(o.firmware);
    if !missing.is_empty() {
        bail!(
            "--e2e needs {}: run scripts/install-test-peers.sh --vms (as root)",
            missing.join(", ")
        );
    }
    eprintln!("== starting {} regions in {}", o.regions, o.dir.display());
    let cluster = LocalCluster::start(LocalClusterOptions::new(&o.dir, o.regions)).await?;
    let lab = VmLab::create(&VmLabOptions {
        dir: o.dir.join("vmlab"),
        vms: 1,
        vm: VmSpec {
            firmware: o.firmware,
            ..VmSpec::default()
        },
        subnet_octet: None,
    })?;
    let rec = lab.record().clone();
    cluster
        .add_boot_rack(
            "r1",
            "z1",
            RackBoot {
                interfaces: vec![rec.root_link.clone()],
                ..RackBoot::default()
            },
        )
        .await?;
    ingot(
        &cluster,
        &[
            "subnets",
            "create",
            &rec.cidr(),
            "--gateway",
            &rec.root_ip(),
            "--dynamic",
            &rec.dynamic_range(),
            "--primary",
            "r1",
        ],
    )?;
    let mut setup = Vec::new();
    let out = o.dir.join("images");
    std::fs::create_dir_all(&out)?;
    let builds = ingot_launch::vmlab::image_commands(&out);
    let import = vec!["images".to_string(), "import-ipxe".to_string()];
    for args in std::iter::once(&import).chain(builds.iter().map(|c| &c.args)) {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let t = Instant::now();
        ingot(&cluster, &a)?;
        setup.push((args.join(" "), t.elapsed()));
    }
    let vm = lab.vms()[0].clone();
    let args = vm.create_args("z1");
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let id = ingot(&cluster, &a)?["system_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    let mut marks: Vec<(String, f64)> = Vec::new();
    let start = now_secs();
    marks.push(("commission requested".into(), start));
    ingot(&cluster, &["machines", "commission", &id])?;
    wait(&cluster, &vm, &id, "ready", &mut marks)?;
    marks.push(("ready (seen by polling)".into(), now_secs()));
    ingot(&cluster, &["machines", "allocate", "--system-id", &id])?;
    marks.push(("deploy requested".into(), now_secs()));
    ingot(
        &cluster,
        &[
            "machines", "deploy", &id, "--os", "ingot", "--series", "test",
        ],
    )?;
    wait(&cluster, &vm, &id, "deployed", &mut marks)?;
    let t = Instant::now();
    while !vm.serial_text().contains("INGOT-DISK-BOOTED") {
        note_serial(&vm, &mut marks);
        if t.elapsed() > PHASE {
            bail!(
                "no disk boot marker within {PHASE:?} ({})",
                vm.serial_log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    note_serial(&vm, &mut marks);

    // The events through the API: their timestamps to the nanosecond (the CLI prints seconds).
    let clients = cluster.connect()?;
    let mut req = ingot_proto::v1::ListEventsRequest {
        system_id: id.clone(),
        page_size: 500,
        ..Default::default()
    };
    for _ in 0..20 {
        let r = clients
            .events()
            .list_events(req.clone())
            .await
            .context("listing the machine's events")?
            .into_inner();
        for e in &r.events {
            let Some(t) = e.time.as_ref() else { continue };
            let t = t.seconds as f64 + f64::from(t.nanos) / 1e9;
            let status = |s: i32| {
                ingot_common::MachineStatus::ALL
                    .get(usize::try_from(s).unwrap_or(0).wrapping_sub(1))
                    .map(|s| s.as_str())
            };
            let moved = match (status(e.from_status), status(e.to_status)) {
                (Some(f), Some(to)) => format!(" ({f} -> {to})"),
                (None, Some(to)) => format!(" (-> {to})"),
                _ => String::new(),
            };
            let msg: String = e.message.chars().take(90).collect();
            marks.push((format!("event {}{moved}: {msg}", e.kind), t));
        }
        if r.next_page_token.is_empty() {
            break;
        }
        req.page_token = r.next_page_token;
    }
    marks.sort_by(|a, b| a.1.total_cmp(&b.1));

    println!(
        "== ingot-bench --e2e: one {} VM (TCG, {} MiB, {} CPUs, {} GiB disk), {} regions",
        o.firmware.name(),
        vm.spec.memory_mib,
        vm.spec.cpus,
        vm.spec.disk_mib / 1024,
        o.regions
    );
    for (what, d) in &setup {
        println!("setup: ingot {what}: {:.1} s", d.as_secs_f64());
    }
    println!("timeline (seconds since the commission request; events by their recorded time, serial marks when polled):");
    let mut prev = start;
    for (what, t) in &marks {
        println!("  +{:7.2} s (+{:6.2})  {what}", t - start, t - prev);
        prev = *t;
    }
    let first = |needle: &str| {
        marks
            .iter()
            .find(|(w, _)| w.contains(needle))
            .map(|(_, t)| t - start)
    };
    println!("phases (first occurrence, seconds since the commission request):");
    for (label, needle) in [
        ("first DHCP", "dhcp"),
        ("iPXE script", "script"),
        ("ramdisk files fetched", "file-finished"),
        ("agent up", "event agent"),
        ("ready (inventory in)", "-> ready"),
        ("deploying", "-> deploying"),
        ("deployed", "-> deployed"),
        ("first disk boot marker", "disk boot's marker"),
    ] {
        match first(needle) {
            Some(s) => println!("  {label:<24} {s:8.2} s"),
            None => println!("  {label:<24} (not seen: no event or mark containing '{needle}')"),
        }
    }
    drop(lab);
    drop(cluster);
    Ok(())
}
