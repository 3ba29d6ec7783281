//! Real machines on a laptop: a lab of QEMU VMs (TCG) behind OpenIPMI `ipmi_sim` BMCs, on a bridge in a
//! network namespace, for `ingot dev up --vms`, the end-to-end test (`t27_e2e`) and `ingot-bench --e2e`.
//!
//! Topology ([`VmLab::create`]): namespace `ingot-<sfx>-vm` with bridge `br0`; a veth pair whose root end
//! (`ingot-<sfx>-vm`, address `10.N.0.1/24`, [`LabRecord::root_addr`]) is where an `ingot-rack` serves
//! DHCP/TFTP/HTTP (`--boot-interface`) and whose other end is on the bridge; one tap per VM on the bridge.
//! Each VM has a blank sparse raw disk, a fixed MAC (`52:54:00:..`), its serial console in a file, and
//! network first in its boot order (the rack's iPXE script tells a deployed machine to boot its disk, so
//! the firmware needs no boot-device change). Its power is an `ipmi_sim` on `127.0.0.1:<port>` in the
//! ROOT namespace (so the rack reaches it), whose `startcmd` runs the VM's QEMU inside the namespace and
//! records QEMU's pid: power on starts QEMU, power off kills it — Ingot's IPMI driver drives it like any
//! BMC ([`LabVm::power_params`], user `admin`/`password`, cipher suite 3).
//!
//! Files (`DIR` = [`VmLabOptions::dir`]): `DIR/vmlab.json` ([`LabRecord`]: namespace, link, every VM with
//! its BMC's pid, so another process — `ingot dev down` — can stop it all: [`stop_recorded`]) and
//! `DIR/vm-K/` per VM: `disk.raw`, `serial.log`, `qemu.log`, `qemu.pid`, `vm.sh` (the startcmd),
//! `lan.conf` + `bmc.emu` + `state/` (ipmi_sim's configuration and persistence), `ipmi_sim.log`, and for
//! UEFI `vars.fd` (the VM's own copy of OVMF's variable store).
//!
//! Every process the lab starts is stopped by PID, after checking its command line names this lab's files
//! (a reused PID is never signalled); the namespace is deleted when a [`VmLab`] is dropped (unless
//! [`VmLab::keep`]t), with whatever still runs in it. Every wait is bounded. Needs root, QEMU and OpenIPMI
//! ([`missing_peers`]).

use crate::netns::{self, delete_netns, End, Lab, Netns, RootLink};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::net::{TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The lab's record in its directory.
pub const LAB_FILE: &str = "vmlab.json";
/// QEMU's binary.
pub const QEMU_BIN: &str = "qemu-system-x86_64";
/// OpenIPMI's BMC simulator.
pub const IPMI_SIM_BIN: &str = "ipmi_sim";
/// OVMF's code (read-only) for UEFI VMs.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// OVMF's variable store template, copied per VM.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// SeaBIOS's iPXE option ROM of virtio-net (Debian `ipxe-qemu`), needed for BIOS network boot.
pub const IPXE_VIRTIO_ROM: &str = "/usr/lib/ipxe/qemu/efi-virtio.rom";
/// The BMC's administrator (what the machine's power parameters carry).
pub const BMC_USER: &str = "admin";
/// The BMC administrator's password.
pub const BMC_PASSWORD: &str = "password";
/// How long a started ipmi_sim gets to listen.
const BMC_READY: Duration = Duration::from_secs(10);
/// How long a process gets after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The VM's firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// SeaBIOS with the iPXE option ROM of virtio-net (`-M pc`).
    #[default]
    Bios,
    /// OVMF on q35 with its own PXE client (no option ROM, like real UEFI hardware).
    Uefi,
}

impl Firmware {
    /// `bios` / `uefi`.
    pub fn name(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }
}

impl std::str::FromStr for Firmware {
    type Err = String;
    fn from_str(s: &str) -> Result<Firmware, String> {
        match s {
            "bios" => Ok(Firmware::Bios),
            "uefi" => Ok(Firmware::Uefi),
            _ => Err(format!("unknown firmware '{s}': use bios or uefi")),
        }
    }
}

/// One VM's hardware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// BIOS or UEFI.
    pub firmware: Firmware,
    /// `-m`, MiB.
    pub memory_mib: u32,
    /// `-smp`.
    pub cpus: u32,
    /// Size of the blank raw disk, MiB.
    pub disk_mib: u64,
}

impl Default for VmSpec {
    /// BIOS, 1024 MiB, 2 CPUs, a 4 GiB disk.
    fn default() -> VmSpec {
        VmSpec {
            firmware: Firmware::Bios,
            memory_mib: 1024,
            cpus: 2,
            disk_mib: 4096,
        }
    }
}

/// What [`VmLab::create`] builds.
#[derive(Debug, Clone)]
pub struct VmLabOptions {
    /// Directory for the record and the VMs' files (created).
    pub dir: PathBuf,
    /// How many VMs.
    pub vms: usize,
    /// Their hardware (all alike).
    pub vm: VmSpec,
    /// `N` of the lab's subnet `10.N.0.0/24`; `None` picks one no root interface uses yet (200-249).
    pub subnet_octet: Option<u8>,
}

/// One VM of a lab, as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabVm {
    /// `vm-K` (1-based), also the suggested hostname.
    pub name: String,
    /// Its NIC's MAC (`52:54:00:xx:xx:xx`).
    pub mac: String,
    /// Its hardware.
    pub spec: VmSpec,
    /// Its files' directory (`DIR/vm-K`).
    pub dir: PathBuf,
    /// The raw disk file.
    pub disk: PathBuf,
    /// The serial console's file (appended across power cycles).
    pub serial_log: PathBuf,
    /// Its tap in the namespace.
    pub tap: String,
    /// The BMC's UDP port on 127.0.0.1 (its VM-codec serial channel is on the next port).
    pub bmc_port: u16,
    /// The ipmi_sim process.
    pub bmc_pid: u32,
}

impl LabVm {
    /// Where the startcmd writes QEMU's pid.
    pub fn qemu_pid_file(&self) -> PathBuf {
        self.dir.join("qemu.pid")
    }

    /// QEMU's pid while the VM is powered on (the recorded pid, if that process is this VM's QEMU).
    pub fn qemu_pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.qemu_pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        is_process_with(pid, &self.disk).then_some(pid)
    }

    /// The serial console so far (carriage returns dropped).
    pub fn serial_text(&self) -> String {
        std::fs::read(&self.serial_log)
            .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
            .unwrap_or_default()
    }

    /// The Ingot power parameters of its BMC (driver `ipmi`).
    pub fn power_params(&self) -> Vec<(String, String)> {
        [
            ("address", "127.0.0.1".to_string()),
            ("port", self.bmc_port.to_string()),
            ("username", BMC_USER.to_string()),
            ("password", BMC_PASSWORD.to_string()),
            // ipmi_sim offers suites 0-3; 17 is Ingot's default.
            ("cipher_suite", "3".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// `ingot` arguments creating this VM's machine in `zone`: its MAC, hostname and IPMI BMC.
    pub fn create_args(&self, zone: &str) -> Vec<String> {
        let mut a: Vec<String> = [
            "machines",
            "create",
            "--mac",
            &self.mac,
            "--hostname",
            &self.name,
            "--zone",
            zone,
            "--power-driver",
            "ipmi",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (k, v) in self.power_params() {
            a.push("--power-param".into());
            a.push(format!("{k}={v}"));
        }
        a
    }
}

/// What a lab holds, written to `DIR/vmlab.json` so another process can stop it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabRecord {
    /// The lab's directory.
    pub dir: PathBuf,
    /// The namespace (`ip netns` name).
    pub netns: String,
    /// The veth's root-namespace end: the rack's `--boot-interface`.
    pub root_link: String,
    /// `N` of `10.N.0.0/24`.
    pub octet: u8,
    /// The VMs.
    pub vms: Vec<LabVm>,
    /// The lab's IPv6 router advertisement daemon (`radvd` in the namespace), if one runs: see
    /// [`start_router_adverts`].
    #[serde(default)]
    pub radvd_pid: Option<u32>,
}

impl LabRecord {
    /// The subnet, `10.N.0.0/24`.
    pub fn cidr(&self) -> String {
        format!("10.{}.0.0/24", self.octet)
    }

    /// The root end's address and the subnet's gateway, `10.N.0.1`.
    pub fn root_ip(&self) -> String {
        format!("10.{}.0.1", self.octet)
    }

    /// The root end's address in CIDR notation, `10.N.0.1/24`.
    pub fn root_addr(&self) -> String {
        format!("{}/24", self.root_ip())
    }

    /// The dynamic range the rack leases from, `10.N.0.100-10.N.0.199`.
    pub fn dynamic_range(&self) -> String {
        format!("10.{0}.0.100-10.{0}.0.199", self.octet)
    }

    /// Reads `DIR/vmlab.json`, `None` if there is none.
    pub fn load(dir: &Path) -> Result<Option<LabRecord>> {
        let p = dir.join(LAB_FILE);
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(
                serde_json::from_slice(&b).with_context(|| format!("parsing {}", p.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    fn save(&self) -> Result<()> {
        let data = serde_json::to_vec_pretty(self)?;
        crate::process::write_atomic(&self.dir.join(LAB_FILE), &data, 0o644)
    }
}

/// The ramdisk image a lab's machines boot to enlist, commission, deploy and erase.
pub const RAMDISK_IMAGE: &str = "ingot-ramdisk";
/// The disk image a lab's machines are deployed with (`--os ingot --series test`): it prints
/// `INGOT-DISK-BOOTED hostname=<hostname>` on the serial console when it boots from the disk.
pub const TEST_IMAGE: &str = "ingot/test";

/// One `ingot` command putting a lab's boot images in place (after `images import-ipxe`).
#[derive(Debug, Clone)]
pub struct ImageCommand {
    /// What it makes, for messages (`the ramdisk`, `the test image`).
    pub what: &'static str,
    /// The `ingot` arguments.
    pub args: Vec<String>,
}

/// The commands building and uploading [`RAMDISK_IMAGE`] and [`TEST_IMAGE`], writing their files under
/// `out` (not the current directory): `images build-ramdisk --upload ingot-ramdisk` and `images
/// build-test-image --upload ingot/test`.
pub fn image_commands(out: &Path) -> Vec<ImageCommand> {
    let p = |name: &str| out.join(name).display().to_string();
    vec![
        ImageCommand {
            what: "the ramdisk",
            args: vec![
                "images".into(),
                "build-ramdisk".into(),
                "--out".into(),
                p("ramdisk"),
                "--upload".into(),
                RAMDISK_IMAGE.into(),
            ],
        },
        ImageCommand {
            what: "the test image",
            args: vec![
                "images".into(),
                "build-test-image".into(),
                "--out".into(),
                p("ingot-test.img"),
                "--upload".into(),
                TEST_IMAGE.into(),
            ],
        },
    ]
}

/// What is missing for a lab of `firmware` VMs (root, QEMU, OpenIPMI, the firmware files); empty when it
/// can run.
pub fn missing_peers(firmware: Firmware) -> Vec<String> {
    let mut m = Vec::new();
    if !netns::is_root() {
        m.push("root (network namespaces and taps)".to_string());
    }
    for (bin, pkg) in [
        (QEMU_BIN, "qemu-system-x86"),
        (IPMI_SIM_BIN, "openipmi"),
        ("ip", "iproute2"),
    ] {
        if netns::tool(bin).is_none() {
            m.push(format!("{bin} ({pkg})"));
        }
    }
    match firmware {
        Firmware::Bios if !Path::new(IPXE_VIRTIO_ROM).exists() => {
            m.push(format!("{IPXE_VIRTIO_ROM} (ipxe-qemu)"))
        }
        Firmware::Uefi if !Path::new(OVMF_CODE).exists() => m.push(format!("{OVMF_CODE} (ovmf)")),
        _ => {}
    }
    m
}

/// A running lab. Dropping it stops every VM and BMC and deletes the namespace, unless [`VmLab::keep`].
#[derive(Debug)]
pub struct VmLab {
    /// What the lab holds (also in `DIR/vmlab.json`).
    record: LabRecord,
    /// The BMCs this process started (reaped on stop).
    bmcs: Vec<Child>,
    /// The router advertisement daemon this process started (reaped on stop).
    router: Option<Child>,
    /// `None` once kept.
    netns: Option<Netns>,
    /// `None` once kept (it goes with the namespace).
    link: Option<RootLink>,
}

impl VmLab {
    /// Builds the namespace, bridge, veth and taps, the disks, and starts one `ipmi_sim` per VM (VMs are
    /// powered off: Ingot powers them on through the BMC). Everything started so far is stopped if a
    /// step fails.
    pub fn create(opts: &VmLabOptions) -> Result<VmLab> {
        let missing = missing_peers(opts.vm.firmware);
        if !missing.is_empty() {
            bail!(
                "a VM lab needs {}: run scripts/install-test-peers.sh --vms (as root)",
                missing.join(", ")
            );
        }
        if opts.vms == 0 || opts.vms > 64 {
            bail!("a VM lab holds 1 to 64 VMs, not {}", opts.vms);
        }
        std::fs::create_dir_all(&opts.dir)
            .with_context(|| format!("cannot create {}", opts.dir.display()))?;
        let dir = std::fs::canonicalize(&opts.dir)?;
        let octet = match opts.subnet_octet {
            Some(o) => o,
            None => free_octet()?,
        };
        let names = Lab::new();
        let ns = names.netns("vm")?;
        ns.bridge("br0")?;
        let addr = format!("10.{octet}.0.1/24");
        let link = names.root_veth("vm", Some(&addr), &ns, End::new("up0", None))?;
        ns.attach("up0", "br0")?;
        let mut lab = VmLab {
            record: LabRecord {
                dir: dir.clone(),
                netns: ns.name.clone(),
                root_link: link.name.clone(),
                octet,
                vms: Vec::new(),
                radvd_pid: None,
            },
            bmcs: Vec::new(),
            router: None,
            netns: Some(ns),
            link: Some(link),
        };
        lab.router = start_router_adverts(&lab, octet)?;
        lab.record.radvd_pid = lab.router.as_ref().map(Child::id);
        lab.record.save()?;
        for k in 1..=opts.vms {
            lab.add_vm(k, opts.vm)?;
            lab.record.save()?;
        }
        Ok(lab)
    }

    /// Adds VM `k`: its tap, disk, startcmd and BMC.
    fn add_vm(&mut self, k: usize, spec: VmSpec) -> Result<()> {
        let ns = self
            .netns
            .as_ref()
            .ok_or_else(|| anyhow!("the lab was kept"))?;
        let dir = self.record.dir.join(format!("vm-{k}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("state"))?;
        let tap = format!("tap{k}");
        ns.ip(&["tuntap", "add", "dev", &tap, "mode", "tap"])?;
        ns.attach(&tap, "br0")?;
        let disk = dir.join("disk.raw");
        std::fs::File::create(&disk)
            .and_then(|f| f.set_len(spec.disk_mib * 1024 * 1024))
            .with_context(|| format!("creating the blank disk {}", disk.display()))?;
        let mac = format!("52:54:00:{}", &netns::mac_str(&netns::random_mac())[9..]);
        let serial_log = dir.join("serial.log");
        let mut qemu = vec![
            QEMU_BIN.to_string(),
            "-accel".into(),
            "tcg".into(),
            "-name".into(),
            format!("vm-{k}"),
            "-m".into(),
            spec.memory_mib.to_string(),
            "-smp".into(),
            spec.cpus.to_string(),
            "-nographic".into(),
            "-monitor".into(),
            "none".into(),
            // Appended: the console survives power cycles (a new QEMU), so a test sees every boot.
            "-chardev".into(),
            format!("file,id=ser0,path={},append=on", serial_log.display()),
            "-serial".into(),
            "chardev:ser0".into(),
            "-netdev".into(),
            format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
            "-drive".into(),
            format!("file={},format=raw,if=none,id=d0", disk.display()),
            // Network first, then the disk: the rack's script sends a deployed machine to its disk.
            "-device".into(),
            "virtio-blk-pci,drive=d0,bootindex=2".into(),
        ];
        match spec.firmware {
            Firmware::Bios => {
                qemu.extend(["-M".into(), "pc".into(), "-device".into()]);
                qemu.push(format!("virtio-net-pci,netdev=n0,mac={mac},bootindex=1"));
            }
            Firmware::Uefi => {
                let vars = dir.join("vars.fd");
                std::fs::copy(OVMF_VARS, &vars).with_context(|| format!("copying {OVMF_VARS}"))?;
                qemu.extend([
                    "-M".into(),
                    "q35".into(),
                    "-drive".into(),
                    format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"),
                    "-drive".into(),
                    format!("if=pflash,format=raw,file={}", vars.display()),
                    // No iPXE option ROM: OVMF's own PXE client, like real UEFI hardware.
                    "-device".into(),
                    format!("virtio-net-pci,netdev=n0,mac={mac},romfile=,bootindex=1"),
                ]);
            }
        }
        let script = dir.join("vm.sh");
        let mut sh = String::from("#!/bin/sh\n# ipmi_sim's startcmd: power on = this VM's QEMU, in the lab's namespace.\n");
        sh.push_str(&format!(
            "echo $$ > {}\n",
            quote(&dir.join("qemu.pid").display().to_string())
        ));
        sh.push_str(&format!("exec ip netns exec {}", quote(&ns.name)));
        for a in &qemu {
            sh.push(' ');
            sh.push_str(&quote(a));
        }
        sh.push_str(&format!(
            " </dev/null >>{} 2>&1\n",
            quote(&dir.join("qemu.log").display().to_string())
        ));
        write_exec(&script, &sh)?;
        let (port, pid, child) = start_bmc(&dir, &script)?;
        self.bmcs.push(child);
        self.record.vms.push(LabVm {
            name: format!("vm-{k}"),
            mac,
            spec,
            dir,
            disk,
            serial_log,
            tap,
            bmc_port: port,
            bmc_pid: pid,
        });
        Ok(())
    }

    /// The lab's record.
    pub fn record(&self) -> &LabRecord {
        &self.record
    }

    /// The VMs.
    pub fn vms(&self) -> &[LabVm] {
        &self.record.vms
    }

    /// The rack's `--boot-interface` (the veth's root end).
    pub fn boot_interface(&self) -> &str {
        &self.record.root_link
    }

    /// Leaves everything running after this value is gone (`ingot dev up`); [`stop_recorded`] on the
    /// lab's directory stops it. Returns the record.
    pub fn keep(mut self) -> LabRecord {
        if let Some(ns) = self.netns.take() {
            ns.keep();
        }
        if let Some(l) = self.link.take() {
            l.keep();
        }
        // The BMCs run in their own process groups and are not reaped by us any more.
        self.bmcs.clear();
        self.router = None;
        self.record.clone()
    }
}

impl Drop for VmLab {
    fn drop(&mut self) {
        if self.netns.is_none() {
            return;
        }
        for vm in &self.record.vms {
            if let Some(pid) = vm.qemu_pid() {
                stop_pid(pid, &vm.disk, Duration::from_secs(1));
            }
        }
        for c in self.bmcs.iter_mut().chain(self.router.as_mut()) {
            let _ = c.kill();
            let t0 = Instant::now();
            while t0.elapsed() < STOP_GRACE && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Then the link and the namespace (their own drops), with anything left inside.
    }
}

/// How one process of a lab ended in [`stop_recorded`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoppedLabProcess {
    /// `vm-1 qemu`, `vm-1 ipmi_sim`.
    pub what: String,
    /// Its pid.
    pub pid: u32,
    /// Whether it is gone.
    pub stopped: bool,
}

/// What [`stop_recorded`] did.
#[derive(Debug, Clone, Default)]
pub struct LabStopReport {
    /// The processes found running and stopped.
    pub processes: Vec<StoppedLabProcess>,
    /// The namespace, if one was recorded, and whether it is gone.
    pub netns: Option<(String, bool)>,
}

/// Stops the lab recorded in `dir` (by another process: `ingot dev down`): every VM's QEMU and BMC by
/// PID (SIGTERM, then SIGKILL), then the namespace with anything left in it. Nothing if no lab is
/// recorded there.
pub fn stop_recorded(dir: &Path) -> Result<LabStopReport> {
    let Some(rec) = LabRecord::load(dir)? else {
        return Ok(LabStopReport::default());
    };
    let mut report = LabStopReport::default();
    for vm in &rec.vms {
        if let Some(pid) = vm.qemu_pid() {
            let stopped = stop_pid(pid, &vm.disk, STOP_GRACE);
            report.processes.push(StoppedLabProcess {
                what: format!("{} qemu", vm.name),
                pid,
                stopped,
            });
        }
        let conf = vm.dir.join("lan.conf");
        if is_process_with(vm.bmc_pid, &conf) {
            let stopped = stop_pid(vm.bmc_pid, &conf, STOP_GRACE);
            report.processes.push(StoppedLabProcess {
                what: format!("{} ipmi_sim", vm.name),
                pid: vm.bmc_pid,
                stopped,
            });
        }
    }
    if let Some(pid) = rec.radvd_pid {
        let conf = rec.dir.join(RADVD_CONF);
        if is_process_with(pid, &conf) {
            let stopped = stop_pid(pid, &conf, STOP_GRACE);
            report.processes.push(StoppedLabProcess {
                what: "radvd".into(),
                pid,
                stopped,
            });
        }
    }
    let gone = delete_netns(&rec.netns);
    report.netns = Some((rec.netns.clone(), gone));
    // The veth went with the namespace; a half-made lab may have left the root end alone.
    if Path::new("/sys/class/net").join(&rec.root_link).exists() {
        let _ = Command::new("ip")
            .args(["link", "del", &rec.root_link])
            .stderr(Stdio::null())
            .status();
    }
    Ok(report)
}

/// The router advertisement daemon's configuration, in the lab's directory.
const RADVD_CONF: &str = "radvd.conf";

/// Plays the segment's IPv6 router: a ULA prefix `fd00:N::/64` on the bridge and `radvd` advertising
/// it (not as a default route). iPXE configures IPv4 (DHCP) and IPv6 (autoconfiguration) together and
/// waits for both: on a segment without router advertisements it sits ~15 s per network boot before it
/// uses its DHCP lease — four times in a commission, deploy and release. A data center's router does
/// this on a real provisioning network. Without `radvd` installed the lab runs all the same, slower
/// (said once on stderr); returns the daemon.
fn start_router_adverts(lab: &VmLab, octet: u8) -> Result<Option<Child>> {
    let Some(ns) = lab.netns.as_ref() else {
        return Ok(None);
    };
    let Some(radvd) = netns::tool("radvd") else {
        eprintln!(
            "note: radvd is not installed: each network boot of a lab VM waits ~15 s for IPv6 \
             autoconfiguration (apt-get install radvd)"
        );
        return Ok(None);
    };
    ns.ip(&[
        "-6",
        "addr",
        "add",
        &format!("fd00:{octet}::1/64"),
        "dev",
        "br0",
        "nodad",
    ])?;
    // radvd refuses to advertise on a host that does not forward IPv6; this is the namespace's own.
    netns::run(
        ns.command("sysctl")
            .args(["-qw", "net.ipv6.conf.all.forwarding=1"]),
    )?;
    let conf = lab.record.dir.join(RADVD_CONF);
    std::fs::write(
        &conf,
        format!(
            "interface br0 {{\n  AdvSendAdvert on;\n  MinRtrAdvInterval 3;\n  MaxRtrAdvInterval 10;\n  \
             AdvDefaultLifetime 0;\n  prefix fd00:{octet}::/64 {{ AdvOnLink on; AdvAutonomous on; }};\n}};\n"
        ),
    )
    .with_context(|| format!("writing {}", conf.display()))?;
    let conf_s = conf.display().to_string();
    let pid_file = lab.record.dir.join("radvd.pid").display().to_string();
    let log = lab.record.dir.join("radvd.log");
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let child = ns
        .command(radvd)
        .args([
            "--nodaemon",
            "--config",
            &conf_s,
            "--pidfile",
            &pid_file,
            "--logmethod",
            "stderr",
        ])
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting radvd in {}", ns.name))?;
    Ok(Some(child))
}

/// Whether `pid` runs and one of its arguments contains `needle` (a path of this lab).
fn is_process_with(pid: u32, needle: &Path) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = needle.to_string_lossy();
    raw.split(|b| *b == 0)
        .any(|a| String::from_utf8_lossy(a).contains(needle.as_ref()))
}

/// SIGTERM, up to `grace`, then SIGKILL, only while `pid` is still the process naming `needle`. Returns
/// whether it is gone (a zombie counts as gone).
fn stop_pid(pid: u32, needle: &Path, grace: Duration) -> bool {
    if !is_process_with(pid, needle) {
        return true;
    }
    let _ = crate::process::send_signal(pid, libc::SIGTERM);
    let t0 = Instant::now();
    while t0.elapsed() < grace {
        if !is_process_with(pid, needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if is_process_with(pid, needle) {
        let _ = crate::process::send_signal(pid, libc::SIGKILL);
    }
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2) {
        if !is_process_with(pid, needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// `N` of a `10.N.0.0/24` no root interface has an address in (200-249).
fn free_octet() -> Result<u8> {
    let out = netns::run(Command::new("ip").args(["-o", "-4", "addr", "show"]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    (200u8..250)
        .find(|n| !text.contains(&format!(" 10.{n}.")))
        .ok_or_else(|| anyhow!("no free 10.N.0.0/24 (N in 200-249) on this host"))
}

/// Single-quotes `s` for sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Writes an executable script.
fn write_exec(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// A free UDP port `p` on 127.0.0.1 whose TCP `p + 1` is free too (the BMC's LAN channel, and its
/// VM-codec serial channel, a TCP listener).
fn free_port_pair() -> Result<u16> {
    for _ in 0..50 {
        let a = UdpSocket::bind("127.0.0.1:0")?;
        let p = a.local_addr()?.port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return Ok(p);
        }
    }
    bail!("no free UDP port p with TCP p+1 free on 127.0.0.1")
}

/// Whether ipmi_sim holds both of its ports: UDP `port` and the TCP listener on `port + 1` (binding
/// either fails). Only binds, never connects: a connection to the VM-codec port would look like a VM.
fn bmc_listening(port: u16) -> bool {
    UdpSocket::bind(("127.0.0.1", port)).is_err()
        && TcpListener::bind(("127.0.0.1", port + 1)).is_err()
}

/// Writes the BMC's configuration in `dir` and starts `ipmi_sim` (own process group: it outlives `ingot
/// dev up`), retrying on another port if it does not come up. Returns its port, pid and child.
fn start_bmc(dir: &Path, startcmd: &Path) -> Result<(u16, u32, Child)> {
    let bin = netns::tool(IPMI_SIM_BIN).ok_or_else(|| anyhow!("ipmi_sim not found"))?;
    std::fs::write(
        dir.join("bmc.emu"),
        "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nmc_enable 0x20\n",
    )?;
    let mut last = String::new();
    for _ in 0..5 {
        let port = free_port_pair()?;
        let conf = format!(
            "name \"ingotvm\"\nset_working_mc 0x20\n  startlan 1\n    addr 127.0.0.1 {port}\n    priv_limit admin\n\
             \x20   allowed_auths_admin md5 straight\n    allowed_auths_operator md5 straight\n\
             \x20   allowed_auths_user md5 straight\n    allowed_auths_callback md5 straight\n\
             \x20   guid a123456789abcdefa123456789abcdef\n  endlan\n\
             \x20 # Channel 15 (the VM codec) must exist, or Chassis Control answers 0xCC.\n\
             \x20 serial 15 127.0.0.1 {} codec VM\n  startcmd \"{}\"\n  startnow false\n\
             \x20 poweroff_wait 2\n  kill_wait 2\n  user 2 true \"{BMC_USER}\" \"{BMC_PASSWORD}\" admin 10 md5 straight\n",
            port + 1,
            startcmd.display()
        );
        std::fs::write(dir.join("lan.conf"), conf)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("ipmi_sim.log"))?;
        let mut child = Command::new(&bin)
            .arg("-n")
            .arg("-c")
            .arg(dir.join("lan.conf"))
            .arg("-f")
            .arg(dir.join("bmc.emu"))
            .arg("-s")
            .arg(dir.join("state"))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        // Up when both its ports are taken and it still runs a moment later (it binds the UDP port
        // first and exits if the TCP one is taken).
        let t0 = Instant::now();
        let up = loop {
            if !matches!(child.try_wait(), Ok(None)) {
                break false;
            }
            if bmc_listening(port) {
                std::thread::sleep(Duration::from_millis(200));
                break matches!(child.try_wait(), Ok(None)) && bmc_listening(port);
            }
            if t0.elapsed() > BMC_READY {
                break false;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if up {
            return Ok((port, child.id(), child));
        }
        let _ = child.kill();
        let _ = child.wait();
        last = crate::process::log_tail(&dir.join("ipmi_sim.log"));
    }
    bail!(
        "ipmi_sim did not come up on 127.0.0.1 in {}: {last}",
        dir.display()
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion
mod tests {
    use super::*;

    #[test]
    fn firmware_names_round_trip_and_quotes_survive_sh() {
        for f in [Firmware::Bios, Firmware::Uefi] {
            assert_eq!(f.name().parse::<Firmware>().unwrap(), f);
        }
        assert!("efi".parse::<Firmware>().is_err());
        assert_eq!(quote("a'b"), "'a'\\''b'");
    }

    #[test]
    fn record_addresses_and_create_args() {
        let vm = LabVm {
            name: "vm-1".into(),
            mac: "52:54:00:01:02:03".into(),
            spec: VmSpec::default(),
            dir: "/x/vm-1".into(),
            disk: "/x/vm-1/disk.raw".into(),
            serial_log: "/x/vm-1/serial.log".into(),
            tap: "tap1".into(),
            bmc_port: 40000,
            bmc_pid: 1,
        };
        let rec = LabRecord {
            dir: "/x".into(),
            netns: "ingot-abcd-vm".into(),
            root_link: "ingot-abcd-vm".into(),
            octet: 27,
            vms: vec![vm.clone()],
            radvd_pid: None,
        };
        assert_eq!(rec.cidr(), "10.27.0.0/24");
        assert_eq!(rec.root_addr(), "10.27.0.1/24");
        assert_eq!(rec.dynamic_range(), "10.27.0.100-10.27.0.199");
        let a = vm.create_args("vms").join(" ");
        assert!(a.starts_with("machines create --mac 52:54:00:01:02:03 --hostname vm-1 --zone vms --power-driver ipmi"), "{a}");
        assert!(a.contains("--power-param port=40000"), "{a}");
        assert!(a.contains("--power-param cipher_suite=3"), "{a}");
        let back: LabRecord = serde_json::from_slice(&serde_json::to_vec(&rec).unwrap()).unwrap();
        assert_eq!(back.vms[0].spec, vm.spec);
    }

    /// `ipmitool ... chassis power WHAT` against `vm`'s BMC.
    fn ipmitool(vm: &LabVm, what: &str) -> String {
        let out = Command::new("timeout")
            .args(["20", "ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p"])
            .arg(vm.bmc_port.to_string())
            .args([
                "-U",
                BMC_USER,
                "-P",
                BMC_PASSWORD,
                "-C",
                "3",
                "-R",
                "2",
                "-N",
                "1",
            ])
            .args(["chassis", "power", what])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    #[test]
    fn a_vm_powers_on_and_off_through_its_bmc_and_the_lab_cleans_up() {
        let mut missing = missing_peers(Firmware::Bios);
        if netns::tool("ipmitool").is_none() {
            missing.push("ipmitool".into());
        }
        if !missing.is_empty() {
            assert!(!netns::peers_required(), "missing {missing:?}");
            eprintln!("SKIPPED: missing {missing:?}");
            return;
        }
        let dir = std::env::temp_dir().join(format!("ingot-vmlab-{}", netns::random_hex(6)));
        let lab = VmLab::create(&VmLabOptions {
            dir: dir.clone(),
            vms: 1,
            vm: VmSpec {
                disk_mib: 64,
                memory_mib: 256,
                cpus: 1,
                ..VmSpec::default()
            },
            subnet_octet: None,
        })
        .unwrap();
        let vm = lab.vms()[0].clone();
        let rec = lab.record().clone();
        assert_eq!(std::fs::metadata(&vm.disk).unwrap().len(), 64 << 20);
        assert!(ipmitool(&vm, "status").contains("off"));
        let on = ipmitool(&vm, "on");
        let pid = netns::poll(Duration::from_secs(10), || vm.qemu_pid());
        assert!(
            pid.is_some(),
            "no QEMU after power on: {on}; {}",
            crate::process::log_tail(&vm.dir.join("qemu.log"))
        );
        // The firmware talks on the serial console and tries the network first.
        let seen = netns::poll(Duration::from_secs(60), || {
            let t = vm.serial_text();
            (t.contains("iPXE") || t.contains("PXE")).then_some(t)
        });
        assert!(
            seen.is_some(),
            "no PXE on the serial console: {}",
            vm.serial_text()
        );
        assert!(ipmitool(&vm, "status").contains("on"));
        let _ = ipmitool(&vm, "off");
        assert!(
            netns::poll(Duration::from_secs(15), || vm
                .qemu_pid()
                .is_none()
                .then_some(()))
            .is_some(),
            "QEMU still runs after power off"
        );
        // Kept, then stopped from the record (what `ingot dev down` does).
        let rec2 = lab.keep();
        assert_eq!(rec2.netns, rec.netns);
        assert!(Path::new("/run/netns").join(&rec.netns).exists());
        let _ = ipmitool(&vm, "on");
        let pid = netns::poll(Duration::from_secs(10), || vm.qemu_pid()).unwrap();
        let report = stop_recorded(&dir).unwrap();
        assert!(report.processes.iter().all(|p| p.stopped), "{report:?}");
        assert!(report.processes.iter().any(|p| p.pid == pid), "{report:?}");
        assert!(
            report.processes.iter().any(|p| p.pid == vm.bmc_pid),
            "{report:?}"
        );
        assert_eq!(report.netns, Some((rec.netns.clone(), true)));
        assert!(!Path::new("/sys/class/net").join(&rec.root_link).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
