//! Rack controllers of a [`LocalCluster`]: real `ingot-rack` processes enrolled the way an operator
//! enrolls one — an admin creates an enrollment token (`RackService.CreateEnrollmentToken`), `ingot-rack
//! register` trades it for a certificate and writes the rack's data directory, and `ingot-rack run` keeps
//! one session to a region. Each rack has its data directory `DIR/rack-<name>/` with `rack.log` (stdout
//! and stderr of both processes, appended across restarts), and is recorded in `DIR/cluster.json`.

use crate::cluster::{LocalCluster, Progress, StopOutcome, READY_TIMEOUT};
use crate::process::{is_process_of, log_tail, open_log, send_signal, POLL};
use anyhow::{anyhow, bail, Context, Result};
use ingot_client::{retry_unavailable, RackClient};
use ingot_proto::v1::{CreateEnrollmentTokenRequest, CreateZoneRequest, GetRackRequest};
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::MutexGuard;
use std::time::Duration;

/// Name of the rack controller binary looked up in the binary directory (next to `ingot-region`).
pub const RACK_BIN: &str = "ingot-rack";
/// How long a rack may take, after `ingot-rack run` was spawned, to print its "running" line and show as
/// connected in `RackService.GetRack`.
pub const RACK_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Lifetime asked for the enrollment tokens used by [`LocalCluster::add_rack`] (used within seconds).
const ENROLLMENT_TTL_SECS: u64 = 600;
/// How long `ingot-rack register` may take (it makes a key, then waits for a replicated write).
const REGISTER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long admin calls made while adding a rack keep retrying while no region answers.
const CALL_RETRY: Duration = Duration::from_secs(30);
/// Name of the rack's log file in its data directory.
const RACK_LOG: &str = "rack.log";

/// One rack controller of a local cluster: identity, files and current process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalRack {
    /// Rack name (a DNS label, unique in the cluster).
    pub name: String,
    /// The zone the rack serves.
    pub zone: String,
    /// The rack's data directory (absolute): `DIR/rack-<name>`.
    pub dir: PathBuf,
    /// Process id of the latest `ingot-rack run` started for this rack (it may have exited since).
    pub pid: u32,
    /// File receiving the stdout and stderr of the rack's processes.
    pub log: PathBuf,
    /// The boot interfaces it serves DHCP on, and its boot ports (kept across restarts).
    #[serde(default)]
    pub boot: RackBoot,
}

/// A rack's boot-path flags of `ingot-rack run`: which interfaces it serves DHCP on and on which ports.
/// The default serves none (a power-only rack).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RackBoot {
    /// `--boot-interface`, each: interfaces the test (or developer) created for this rack, with an IPv4
    /// address. The rack process runs in the launcher's network namespace (it must reach the regions on
    /// loopback), so these are e.g. one end of a veth pair whose other end is in a client namespace.
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// `--dhcp-port` when not 67.
    #[serde(default)]
    pub dhcp_port: Option<u16>,
    /// `--proxy-dhcp-port` when not 4011: two racks on one host's interfaces can share a port (each
    /// socket is bound to its interface), but tests may want their own.
    #[serde(default)]
    pub proxy_dhcp_port: Option<u16>,
    /// `--http-port` when not 5248.
    #[serde(default)]
    pub http_port: Option<u16>,
    /// `--tftp-root` (default: the rack's own, /usr/lib/ipxe when it exists).
    #[serde(default)]
    pub tftp_root: Option<PathBuf>,
    /// `--tftp-port` when not 69.
    #[serde(default)]
    pub tftp_port: Option<u16>,
    /// `--agent-port` when not 5249 (the in-band agents' HTTPS API).
    #[serde(default)]
    pub agent_port: Option<u16>,
}

impl RackBoot {
    /// The `ingot-rack run` flags.
    pub fn args(&self) -> Vec<String> {
        let mut a = Vec::new();
        for i in &self.interfaces {
            a.push("--boot-interface".to_string());
            a.push(i.clone());
        }
        for (flag, port) in [
            ("--dhcp-port", self.dhcp_port),
            ("--proxy-dhcp-port", self.proxy_dhcp_port),
            ("--http-port", self.http_port),
            ("--tftp-port", self.tftp_port),
            ("--agent-port", self.agent_port),
        ] {
            if let Some(p) = port {
                a.push(flag.to_string());
                a.push(p.to_string());
            }
        }
        if let Some(root) = &self.tftp_root {
            a.push("--tftp-root".to_string());
            a.push(root.to_string_lossy().into_owned());
        }
        a
    }
}

/// One rack line of the [`LocalCluster::stop_all_report`] report.
#[derive(Clone, Debug)]
pub struct StoppedRack {
    /// The rack.
    pub rack: LocalRack,
    /// What happened to it.
    pub outcome: StopOutcome,
}

/// A rack and, when this `LocalCluster` started it, its process.
pub(crate) struct RackSlot {
    pub(crate) info: LocalRack,
    /// `None` for racks recorded by an earlier process (after [`LocalCluster::load`]): those are
    /// recognised through `/proc/PID/cmdline`.
    pub(crate) child: Option<Child>,
}

impl RackSlot {
    pub(crate) fn running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => is_rack_process(self.info.pid, &self.info.dir),
        }
    }
}

/// True if `pid` is alive and its command line is `ingot-rack ... <dir> ...`: the guard against
/// signalling a pid that was reused by another program.
pub fn is_rack_process(pid: u32, dir: &Path) -> bool {
    is_process_of(pid, RACK_BIN, dir)
}

/// A rack name usable in a directory name; the region checks the full DNS-label rules.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        bail!(
            "rack name '{name}' is not a DNS label (lowercase letters, digits and '-', at most 63, \
             not starting or ending with '-')"
        );
    }
    Ok(())
}

impl LocalCluster {
    pub(crate) fn rack_slots(&self) -> MutexGuard<'_, Vec<RackSlot>> {
        self.racks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A `RackService` client reaching every region with the admin token (inside a Tokio runtime).
    pub fn rack_service(&self) -> Result<RackClient> {
        Ok(self.connect()?.racks())
    }

    /// Every rack, in the order they were added.
    pub fn racks(&self) -> Vec<LocalRack> {
        self.rack_slots().iter().map(|r| r.info.clone()).collect()
    }

    /// The rack named `name`, if the cluster has one.
    pub fn rack(&self, name: &str) -> Option<LocalRack> {
        self.rack_slots()
            .iter()
            .find(|r| r.info.name == name)
            .map(|r| r.info.clone())
    }

    /// Whether rack `name`'s process is alive (and, for a loaded cluster, still an `ingot-rack` on the
    /// rack's data directory). False for an unknown rack.
    pub fn is_rack_running(&self, name: &str) -> bool {
        self.rack_slots()
            .iter_mut()
            .find(|r| r.info.name == name)
            .is_some_and(|r| r.running())
    }

    /// Adds a rack controller named `name` serving `zone`: creates the zone if it does not exist, creates
    /// an enrollment token with the admin token, runs `ingot-rack register` against every region (with
    /// the cluster CA, data directory `DIR/rack-<name>`), spawns `ingot-rack run` (detached if the
    /// cluster is), records the rack in `DIR/cluster.json` and waits up to [`RACK_READY_TIMEOUT`] for it
    /// to print its "running" line and show as connected. Fails with the tail of `rack.log` if either
    /// process fails.
    pub async fn add_rack(&self, name: &str, zone: &str) -> Result<LocalRack> {
        self.add_rack_with_progress(name, zone, |_| {}).await
    }

    /// [`LocalCluster::add_rack`] for a rack that serves DHCP on `boot`'s interfaces (it fails to start,
    /// with the rack's message in the error, if one is missing or has no IPv4 address).
    pub async fn add_boot_rack(&self, name: &str, zone: &str, boot: RackBoot) -> Result<LocalRack> {
        self.add_rack_full(name, zone, boot, |_| {}).await
    }

    /// [`LocalCluster::add_boot_rack`], reporting each step to `progress` (`ingot dev up --vms`).
    pub async fn add_boot_rack_with_progress(
        &self,
        name: &str,
        zone: &str,
        boot: RackBoot,
        progress: impl FnMut(Progress) + Send,
    ) -> Result<LocalRack> {
        self.add_rack_full(name, zone, boot, progress).await
    }

    /// [`LocalCluster::add_rack`], reporting each step to `progress`.
    pub async fn add_rack_with_progress(
        &self,
        name: &str,
        zone: &str,
        progress: impl FnMut(Progress) + Send,
    ) -> Result<LocalRack> {
        self.add_rack_full(name, zone, RackBoot::default(), progress)
            .await
    }

    /// Adds a rack with `boot` flags, reporting each step to `progress`.
    async fn add_rack_full(
        &self,
        name: &str,
        zone: &str,
        boot: RackBoot,
        mut progress: impl FnMut(Progress) + Send,
    ) -> Result<LocalRack> {
        check_name(name)?;
        if self.rack(name).is_some() {
            bail!(
                "the local cluster in {} already has a rack named {name}: restart it with \
                 restart_rack (`ingot dev up`), or pick another name",
                self.dir.display()
            );
        }
        let bin = self.rack_bin()?;
        let dir = self.dir.join(format!("rack-{name}"));
        if dir.join("rack.json").exists() {
            bail!(
                "{} already holds a registered rack: remove it or pick another rack name",
                dir.display()
            );
        }
        crate::process::create_private_dir(&dir)?;
        let log = dir.join(RACK_LOG);

        progress(Progress::Step(format!("creating zone {zone} for {name}")));
        let clients = self.connect()?;
        let created = retry_unavailable(
            || {
                let mut c = clients.zones();
                let req = CreateZoneRequest {
                    name: zone.to_string(),
                    description: "created for a local rack".into(),
                };
                async move { c.create_zone(req).await }
            },
            CALL_RETRY,
        )
        .await;
        match created {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::AlreadyExists => {}
            Err(s) => bail!("CreateZone {zone} failed: {} ({:?})", s.message(), s.code()),
        }

        progress(Progress::Step(format!(
            "creating an enrollment token for {name}"
        )));
        let racks = clients.racks();
        let token = retry_unavailable(
            || {
                let mut c = racks.clone();
                async move {
                    c.create_enrollment_token(CreateEnrollmentTokenRequest {
                        ttl_seconds: ENROLLMENT_TTL_SECS,
                    })
                    .await
                }
            },
            CALL_RETRY,
        )
        .await
        .map_err(|s| {
            anyhow!(
                "CreateEnrollmentToken failed: {} ({:?})",
                s.message(),
                s.code()
            )
        })?
        .into_inner()
        .token;

        progress(Progress::Step(format!("registering {name} in zone {zone}")));
        let args = vec![
            "register".to_string(),
            "--data-dir".into(),
            dir.to_string_lossy().into_owned(),
            "--region".into(),
            self.endpoints().join(","),
            "--token".into(),
            token,
            "--name".into(),
            name.to_string(),
            "--zone".into(),
            zone.to_string(),
            "--ca".into(),
            self.ca_path.to_string_lossy().into_owned(),
        ];
        let (out, err) = open_log(&log)?;
        // Not logged: the arguments hold the (single-use) token.
        let mut register = tokio::process::Command::new(&bin);
        register
            .args(&args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        let mut child = register
            .spawn()
            .with_context(|| format!("cannot start {} register for {name}", bin.display()))?;
        let status = match tokio::time::timeout(REGISTER_TIMEOUT, child.wait()).await {
            Ok(st) => st.with_context(|| format!("waiting for {RACK_BIN} register"))?,
            Err(_) => {
                let _ = child.kill().await;
                bail!(
                    "{RACK_BIN} register for {name} did not finish within {REGISTER_TIMEOUT:?}; \
                     last lines of {}:\n{}",
                    log.display(),
                    log_tail(&log)
                );
            }
        };
        if !status.success() {
            bail!(
                "{RACK_BIN} register for {name} failed ({status}); last lines of {}:\n{}",
                log.display(),
                log_tail(&log)
            );
        }

        progress(Progress::Step(format!("starting {name}")));
        let info = LocalRack {
            name: name.to_string(),
            zone: zone.to_string(),
            dir,
            pid: 0,
            log,
            boot,
        };
        let (child, offset) = self.spawn_rack(&info)?;
        let info = LocalRack {
            pid: child.id(),
            ..info
        };
        self.rack_slots().push(RackSlot {
            info: info.clone(),
            child: Some(child),
        });
        // Recorded before waiting: even a rack that fails to come up is stopped by `stop_all`.
        self.save()?;
        self.wait_rack_ready(name, offset).await?;
        progress(Progress::RackReady(info.clone()));
        Ok(info)
    }

    /// Sends `signal` (e.g. `libc::SIGKILL`, `libc::SIGTERM`) to rack `name`'s process. Only a process
    /// this cluster started, or a verified recorded one, is signalled; signalling a rack that is not
    /// running is an error.
    pub fn kill_rack(&self, name: &str, signal: libc::c_int) -> Result<()> {
        let mut racks = self.rack_slots();
        let r = racks
            .iter_mut()
            .find(|r| r.info.name == name)
            .ok_or_else(|| anyhow!("no rack named {name} in {}", self.dir.display()))?;
        if !r.running() {
            bail!("rack {name} (pid {}) is not running", r.info.pid);
        }
        send_signal(r.info.pid, signal)
    }

    /// Waits (up to 30 s) until rack `name`'s process has exited; returns its exit status when this
    /// cluster started it (`None` for a process of a loaded cluster).
    pub async fn wait_rack_exit(&self, name: &str) -> Result<Option<ExitStatus>> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            {
                let mut racks = self.rack_slots();
                let r = racks
                    .iter_mut()
                    .find(|r| r.info.name == name)
                    .ok_or_else(|| anyhow!("no rack named {name}"))?;
                match &mut r.child {
                    Some(c) => {
                        if let Some(st) = c
                            .try_wait()
                            .with_context(|| format!("waiting for rack {name}"))?
                        {
                            return Ok(Some(st));
                        }
                    }
                    None => {
                        if !r.running() {
                            return Ok(None);
                        }
                    }
                }
                if tokio::time::Instant::now() >= deadline {
                    bail!(
                        "rack {name} (pid {}) still running after {:?}",
                        r.info.pid,
                        READY_TIMEOUT
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts `ingot-rack run` again on rack `name`'s data directory and waits (up to
    /// [`RACK_READY_TIMEOUT`]) until it runs and is connected. Fails if the rack is still running.
    pub async fn restart_rack(&self, name: &str) -> Result<LocalRack> {
        let offset = self.respawn_rack(name)?;
        self.save()?;
        self.wait_rack_ready(name, offset).await?;
        self.rack(name)
            .ok_or_else(|| anyhow!("rack {name} disappeared"))
    }

    /// Restarts every rack that is not running (all spawned first, then waited for). Returns their names.
    pub async fn restart_stopped_racks(&self) -> Result<Vec<String>> {
        self.restart_stopped_racks_with_progress(|_| {}).await
    }

    /// [`LocalCluster::restart_stopped_racks`], reporting each step to `progress`.
    pub async fn restart_stopped_racks_with_progress(
        &self,
        mut progress: impl FnMut(Progress) + Send,
    ) -> Result<Vec<String>> {
        let stopped: Vec<String> = self
            .rack_slots()
            .iter_mut()
            .filter_map(|r| (!r.running()).then(|| r.info.name.clone()))
            .collect();
        let mut offsets = Vec::new();
        for name in &stopped {
            progress(Progress::Step(format!("restarting rack {name}")));
            offsets.push(self.respawn_rack(name)?);
        }
        self.save()?;
        for (name, offset) in stopped.iter().zip(offsets) {
            self.wait_rack_ready(name, offset).await?;
            if let Some(r) = self.rack(name) {
                progress(Progress::RackReady(r));
            }
        }
        Ok(stopped)
    }

    /// The `ingot-rack` binary, or an error saying how to build it.
    fn rack_bin(&self) -> Result<PathBuf> {
        let bin = self.bin_dir.join(RACK_BIN);
        if !bin.is_file() {
            bail!(
                "{RACK_BIN} not found in {}: run `cargo build --workspace --bins` first",
                self.bin_dir.display()
            );
        }
        Ok(bin)
    }

    /// Spawns `ingot-rack run` for `info` with its output appended to its log. Returns the child and the
    /// log's length before the spawn (where to look for this process's "running" line).
    fn spawn_rack(&self, info: &LocalRack) -> Result<(Child, u64)> {
        let bin = self.rack_bin()?;
        let offset = std::fs::metadata(&info.log).map_or(0, |m| m.len());
        let (out, err) = open_log(&info.log)?;
        let mut cmd = Command::new(&bin);
        cmd.arg("run")
            .arg("--data-dir")
            .arg(&info.dir)
            .args(&self.rack_args)
            .args(info.boot.args())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if self.detach {
            // Own process group: Ctrl-C in the terminal that ran `ingot dev up` does not reach the rack.
            cmd.process_group(0);
        }
        tracing::debug!(rack = %info.name, "spawning {} run", bin.display());
        let child = cmd.spawn().with_context(|| {
            format!("cannot start {} run for rack {}", bin.display(), info.name)
        })?;
        Ok((child, offset))
    }

    /// Starts `ingot-rack run` for a stopped rack. Returns the log offset for [`Self::wait_rack_ready`].
    fn respawn_rack(&self, name: &str) -> Result<u64> {
        let mut racks = self.rack_slots();
        let r = racks
            .iter_mut()
            .find(|r| r.info.name == name)
            .ok_or_else(|| anyhow!("no rack named {name} in {}", self.dir.display()))?;
        if r.running() {
            bail!("rack {name} is still running (pid {})", r.info.pid);
        }
        let (child, offset) = self.spawn_rack(&r.info)?;
        r.info.pid = child.id();
        r.child = Some(child);
        Ok(offset)
    }

    /// Waits until rack `name` has printed `ingot-rack <name> running pid <pid>` (after `offset` in its
    /// log) and `GetRack` shows it connected. At [`RACK_READY_TIMEOUT`], a rack that printed its line but
    /// is not connected yet is accepted; one that did not print it is an error. Fails early, with the tail
    /// of its log, if the process exits.
    async fn wait_rack_ready(&self, name: &str, offset: u64) -> Result<()> {
        let deadline = tokio::time::Instant::now() + RACK_READY_TIMEOUT;
        let racks = self.rack_service()?;
        let mut started = false;
        let mut next_query = tokio::time::Instant::now();
        loop {
            let (pid, log) = {
                let mut slots = self.rack_slots();
                let r = slots
                    .iter_mut()
                    .find(|r| r.info.name == name)
                    .ok_or_else(|| anyhow!("no rack named {name}"))?;
                let exited = match &mut r.child {
                    Some(c) => c.try_wait()?.map(|st| st.to_string()),
                    None => (!r.running()).then(|| "exited".to_string()),
                };
                if let Some(status) = exited {
                    bail!(
                        "rack {name} ({RACK_BIN} run) {status} before it was running; last lines of {}:\n{}",
                        r.info.log.display(),
                        log_tail(&r.info.log)
                    );
                }
                (r.info.pid, r.info.log.clone())
            };
            if !started {
                let line = format!("{RACK_BIN} {name} running pid {pid}");
                started = read_from(&log, offset).lines().any(|l| l.trim() == line);
            }
            let now = tokio::time::Instant::now();
            if now >= next_query {
                next_query = now + Duration::from_millis(200);
                let mut c = racks.clone();
                let call = c.get_rack(GetRackRequest {
                    name: name.to_string(),
                });
                if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(1), call).await {
                    if r.into_inner().connected {
                        return Ok(());
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                if started {
                    tracing::warn!(
                        rack = name,
                        "running but not connected after {RACK_READY_TIMEOUT:?}"
                    );
                    return Ok(());
                }
                bail!(
                    "rack {name} (pid {pid}) did not report running within {RACK_READY_TIMEOUT:?}; \
                     last lines of {}:\n{}",
                    log.display(),
                    log_tail(&log)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// The text of `path` from byte `offset` on (at most 1 MiB); empty if unreadable.
fn read_from(path: &Path, offset: u64) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    if f.seek(SeekFrom::Start(offset)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(1 << 20).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rack_names() {
        assert!(check_name("rack-1").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("-a").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("Rack").is_err());
    }

    #[test]
    fn reads_log_from_offset() {
        let dir = std::env::temp_dir().join(format!("ingot-rack-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("rack.log");
        std::fs::write(&p, "old line\ningot-rack r running pid 1\n").unwrap();
        assert!(read_from(&p, 0).contains("running pid 1"));
        assert_eq!(read_from(&p, 9), "ingot-rack r running pid 1\n");
        assert_eq!(read_from(&dir.join("none"), 0), "");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rack_records_roundtrip() {
        let r = LocalRack {
            name: "rack-1".into(),
            zone: "zone-1".into(),
            dir: "/tmp/x/rack-rack-1".into(),
            pid: 42,
            log: "/tmp/x/rack-rack-1/rack.log".into(),
            boot: RackBoot {
                interfaces: vec!["isvb1".into()],
                dhcp_port: Some(6767),
                ..RackBoot::default()
            },
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<LocalRack>(&text).unwrap(), r);
        assert_eq!(
            r.boot.args(),
            ["--boot-interface", "isvb1", "--dhcp-port", "6767"]
        );
        // Records written before racks served DHCP still load.
        let old = r#"{"name":"r","zone":"z","dir":"/d","pid":1,"log":"/d/rack.log"}"#;
        assert_eq!(
            serde_json::from_str::<LocalRack>(old).unwrap().boot,
            RackBoot::default()
        );
    }
}
