//! Simulated machines of a [`LocalCluster`]: one `ingot-sim` process whose machines each have a BMC
//! speaking Redfish on its own loopback port, and which, when Ingot boots them from the network, report
//! inventory and deployment progress through the region API like the in-band agent. `ingot dev up` starts
//! it and enlists its machines with the real `redfish` power driver, so the whole lifecycle — power through
//! a rack, boot, agent reports — runs locally with nothing but cargo.
//!
//! Files: `DIR/sim/` is the process's directory: `machines.json` (what `ingot-sim run` serves),
//! `control.url` (its fault-knob API), `sim.log`, `process.json` (pid, for `ingot dev down` after the
//! starting `ingot` exited) and `token` (the admin token its agent uses, mode 0600).

use crate::cluster::{LocalCluster, StopOutcome, STOP_GRACE};
use crate::process::{is_process_of, log_tail, open_log, send_signal, write_atomic, POLL};
use anyhow::{anyhow, bail, Context, Result};
use ingot_client::{retry_unavailable, Clients};
use ingot_proto::v1::{
    get_machine_request, CreateMachineRequest, CreateZoneRequest, GetMachineRequest,
    PowerParameters, UpdateMachineRequest,
};
use serde::{Deserialize, Serialize};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The simulator's binary name (next to `ingot-region`).
pub const SIMULATOR_BIN: &str = "ingot-sim";
/// How long `ingot-sim run` may take to write `machines.json` (1,000 listeners take well under a second).
const SIMULATOR_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One simulated machine as `ingot-sim` describes it in `machines.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimulatedMachine {
    /// Host name (`sim-01`, ...): also how the simulated agent finds its machine in Ingot.
    pub hostname: String,
    /// SMBIOS UUID.
    pub uuid: String,
    /// Boot MAC.
    pub mac: String,
    /// Zone it is meant for.
    pub zone: String,
    /// Architecture.
    pub arch: String,
    /// The BMC's Redfish base URL (`http://127.0.0.1:PORT`).
    pub bmc_url: String,
    /// BMC user.
    pub username: String,
    /// BMC password.
    pub password: String,
    /// The Redfish ComputerSystem id.
    pub system_id: String,
    /// The machine's IPMI (RMCP+) BMC port on 127.0.0.1, when the simulator serves IPMI.
    #[serde(default)]
    pub ipmi_port: Option<u16>,
}

/// The running (or recorded) simulator of a local cluster.
#[derive(Debug, Clone)]
pub struct LocalSimulator {
    /// Its process id.
    pub pid: u32,
    /// `DIR/sim`.
    pub dir: PathBuf,
    /// Its log.
    pub log: PathBuf,
    /// Base URL of its control (fault-knob) API.
    pub control_url: String,
    /// Its machines.
    pub machines: Vec<SimulatedMachine>,
}

/// `process.json`: what `ingot dev down` needs after the starting process exited.
#[derive(Debug, Serialize, Deserialize)]
struct SimulatorProcess {
    pid: u32,
}

impl LocalCluster {
    /// `DIR/sim`.
    pub fn sim_dir(&self) -> PathBuf {
        self.dir().join("sim")
    }

    /// Starts `ingot-sim run` with `count` machines spread over `zones`, its agent talking to this
    /// cluster with the admin token, plus `extra` flags; waits until its machines listen. Fails if a
    /// simulator of this cluster is already running.
    pub async fn start_sims(
        &self,
        count: usize,
        zones: &[String],
        extra: &[String],
    ) -> Result<LocalSimulator> {
        let dir = self.sim_dir();
        if let Some(s) = self.sim() {
            if is_simulator_process(s.pid, &dir) {
                bail!(
                    "ingot-sim (pid {}) already runs for {}",
                    s.pid,
                    self.dir().display()
                );
            }
        }
        crate::process::create_private_dir(&dir)?;
        for f in ["machines.json", "control.url"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        let token = dir.join("token");
        write_atomic(&token, self.token().as_bytes(), 0o600)?;
        let bin = self.bin_dir.join(SIMULATOR_BIN);
        if !bin.is_file() {
            bail!(
                "{SIMULATOR_BIN} not found in {}: run `cargo build --workspace --bins` first",
                self.bin_dir.display()
            );
        }
        let log = dir.join("sim.log");
        let (out, err) = open_log(&log)?;
        let mut cmd = Command::new(&bin);
        cmd.arg("run")
            .arg("--dir")
            .arg(&dir)
            .arg("--count")
            .arg(count.to_string())
            .arg("--zones")
            .arg(zones.join(","))
            .arg("--region")
            .arg(self.endpoints().join(","))
            .arg("--ca")
            .arg(self.ca_path())
            .arg("--token-file")
            .arg(&token)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if self.detach {
            cmd.process_group(0);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let pid = child.id();
        write_atomic(
            &dir.join("process.json"),
            &serde_json::to_vec(&SimulatorProcess { pid })?,
            0o644,
        )?;
        let deadline = tokio::time::Instant::now() + SIMULATOR_READY_TIMEOUT;
        loop {
            if let Some(s) = self.sim() {
                if !s.machines.is_empty() && !s.control_url.is_empty() {
                    *self
                        .simulator_child
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(child);
                    return Ok(s);
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "ingot-sim exited ({status}) before its machines listened:\n{}",
                    log_tail(&log)
                );
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "ingot-sim did not write {} within {:?}:\n{}",
                    dir.join("machines.json").display(),
                    SIMULATOR_READY_TIMEOUT,
                    log_tail(&log)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The simulator recorded in `DIR/sim`, if one was started (running or not).
    pub fn sim(&self) -> Option<LocalSimulator> {
        let dir = self.sim_dir();
        let p: SimulatorProcess =
            serde_json::from_slice(&std::fs::read(dir.join("process.json")).ok()?).ok()?;
        let machines: Vec<SimulatedMachine> = std::fs::read(dir.join("machines.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let control_url = std::fs::read_to_string(dir.join("control.url"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        Some(LocalSimulator {
            pid: p.pid,
            log: dir.join("sim.log"),
            dir,
            control_url,
            machines,
        })
    }

    /// True if the recorded simulator process is alive.
    pub fn is_sim_running(&self) -> bool {
        self.sim()
            .is_some_and(|s| is_simulator_process(s.pid, &self.sim_dir()))
    }

    /// Stops the recorded simulator: SIGTERM, up to 10 s, then SIGKILL.
    pub async fn stop_sims(&self) -> StopOutcome {
        let Some(s) = self.sim() else {
            return StopOutcome::NotRunning;
        };
        let dir = self.sim_dir();
        if !is_simulator_process(s.pid, &dir) || send_signal(s.pid, libc::SIGTERM).is_err() {
            return StopOutcome::NotRunning;
        }
        let reap = |me: &LocalCluster| {
            if let Some(c) = me
                .simulator_child
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
            {
                let _ = c.try_wait();
            }
        };
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        while tokio::time::Instant::now() < deadline {
            reap(self);
            if !is_simulator_process(s.pid, &dir) {
                return StopOutcome::Terminated;
            }
            tokio::time::sleep(POLL).await;
        }
        let _ = send_signal(s.pid, libc::SIGKILL);
        tokio::time::sleep(Duration::from_millis(200)).await;
        reap(self);
        if is_simulator_process(s.pid, &dir) {
            StopOutcome::StillRunning
        } else {
            StopOutcome::Killed
        }
    }

    /// Creates, through the API, every simulated machine not enlisted yet (by host name), with the
    /// `redfish` power driver pointing at its simulated BMC; creates missing zones. Returns how many were
    /// created.
    pub async fn enlist_sims(&self, clients: &Clients, sim: &LocalSimulator) -> Result<usize> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut zones: Vec<&str> = sim.machines.iter().map(|m| m.zone.as_str()).collect();
        zones.sort_unstable();
        zones.dedup();
        for z in zones {
            let r = retry_unavailable(
                || {
                    let mut c = clients.zones();
                    let req = CreateZoneRequest {
                        name: z.to_string(),
                        description: String::new(),
                    };
                    async move { c.create_zone(req).await }
                },
                deadline,
            )
            .await;
            match r {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::AlreadyExists => {}
                Err(s) => return Err(anyhow!("creating zone {z}: {}", s.message())),
            }
        }
        let mut created = 0;
        for m in &sim.machines {
            let params = [
                ("address", m.bmc_url.as_str()),
                ("username", m.username.as_str()),
                ("password", m.password.as_str()),
                ("system", m.system_id.as_str()),
                // A simulated BMC answers at once; keep lifecycle steps quick.
                ("power_wait_s", "30"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            let req = CreateMachineRequest {
                hostname: m.hostname.clone(),
                arch: m.arch.clone(),
                zone: m.zone.clone(),
                macs: vec![m.mac.clone()],
                power: Some(PowerParameters {
                    driver: "redfish".into(),
                    params,
                }),
                description: format!("ingot-sim machine (BMC {})", m.bmc_url),
                pool: String::new(),
            };
            let r = retry_unavailable(
                || {
                    let mut c = clients.machines();
                    let req = req.clone();
                    async move { c.create_machine(req).await }
                },
                deadline,
            )
            .await;
            match r {
                Ok(_) => created += 1,
                Err(s) if s.code() == tonic::Code::AlreadyExists => {
                    // Enlisted before: a restarted simulator listens on new ports, so point the
                    // machine's power settings at them.
                    let get = GetMachineRequest {
                        key: Some(get_machine_request::Key::Hostname(m.hostname.clone())),
                        include_secrets: true,
                        ..Default::default()
                    };
                    let existing = clients
                        .machines()
                        .get_machine(get)
                        .await
                        .map_err(|s| anyhow!("reading {}: {}", m.hostname, s.message()))?
                        .into_inner();
                    if existing.power.as_ref() != req.power.as_ref() {
                        clients
                            .machines()
                            .update_machine(UpdateMachineRequest {
                                system_id: existing.system_id,
                                power: req.power.clone(),
                                ..Default::default()
                            })
                            .await
                            .map_err(|s| {
                                anyhow!("updating the BMC of {}: {}", m.hostname, s.message())
                            })?;
                    }
                }
                Err(s) => {
                    return Err(anyhow!(
                        "enlisting simulated machine {}: {}",
                        m.hostname,
                        s.message()
                    ))
                }
            }
        }
        Ok(created)
    }
}

/// True if `pid` is an `ingot-sim` serving `dir`.
pub fn is_simulator_process(pid: u32, dir: &Path) -> bool {
    is_process_of(pid, SIMULATOR_BIN, dir)
}
