//! The cluster itself: a [`LocalCluster`] of real `ingot-region` processes on loopback ports, started
//! (`init` region-1, then `join` the others), reattached from `DIR/cluster.json`, crashed, restarted and
//! stopped. Its racks ([`crate::rack`]) and simulated machines ([`crate::simulator`]) are added by the
//! `impl LocalCluster` blocks of those modules.

use crate::process::{
    create_private_dir, is_process_of, log_tail, send_signal, write_atomic, POLL,
};
use crate::proxy::LinkProxy;
use crate::rack::{LocalRack, RackSlot, StoppedRack};
use anyhow::{anyhow, bail, Context, Result};
use ingot_client::config::{shell_quote, ENV_CA, ENV_ENDPOINTS, ENV_TOKEN};
use ingot_client::{retry_unavailable, ClientConfig, Clients};
use ingot_proto::v1::{CreateJoinTokenRequest, ListRegionsRequest};
use serde::{Deserialize, Serialize};
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Name of the region binary looked up in the binary directory.
pub const REGION_BIN: &str = "ingot-region";
/// How long a region may take to write a ready `run.json` after it was spawned.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`LocalCluster::stop_all`] waits after SIGTERM before sending SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// File (in the cluster directory) recording the regions for [`LocalCluster::load`].
pub const CLUSTER_FILE: &str = "cluster.json";
/// File (in the cluster directory) with the `INGOT_*` variables, for `source DIR/env` and `--profile`.
pub const ENV_FILE: &str = "env";
/// Lifetime asked for the join tokens used while starting (they are used within seconds).
const JOIN_TOKEN_TTL_SECS: u32 = 600;

/// How to start a local cluster.
#[derive(Clone, Debug)]
pub struct LocalClusterOptions {
    /// Directory holding every region's data directory, `env` and `cluster.json`; created if missing.
    pub dir: PathBuf,
    /// Number of regions (1, 3 or 5 make sense for Raft; any number >= 1 is accepted).
    pub regions: usize,
    /// Where `ingot-region` is; default: the directory of the running executable (or its parent when that
    /// is a `deps` directory, so tests under `target/debug/deps` find `target/debug/ingot-region`).
    pub bin_dir: Option<PathBuf>,
    /// Extra flags appended to every `ingot-region` command line (tuning such as `--heartbeat-ms=50`).
    pub region_args: Vec<String>,
    /// Extra flags appended to every `ingot-rack run` command line of the racks added later
    /// ([`LocalCluster::add_rack`]), e.g. `--heartbeat-ms=200`.
    pub rack_args: Vec<String>,
    /// Let the regions outlive this process (`ingot dev up`): they get their own process group, and
    /// dropping the [`LocalCluster`] leaves them running.
    pub detach: bool,
    /// Put a [`LinkProxy`] in front of each region's API and cluster (Raft) listener and make the
    /// regions advertise the proxies: every connection to a region (peers' Raft and forwarded writes,
    /// rack sessions, [`LocalCluster::endpoints`] clients, the simulator's agent) crosses one, so a test
    /// can cut it ([`LocalCluster::links`]). The proxies live in this process: not with `detach`.
    pub proxied: bool,
}

impl LocalClusterOptions {
    /// Options for `regions` regions in `dir`, with the default binary directory, no extra flags, not
    /// detached.
    pub fn new(dir: impl Into<PathBuf>, regions: usize) -> LocalClusterOptions {
        LocalClusterOptions {
            dir: dir.into(),
            regions,
            bin_dir: None,
            region_args: Vec::new(),
            rack_args: Vec::new(),
            detach: false,
            proxied: false,
        }
    }
}

/// The two proxies in front of one region of a [`LocalClusterOptions::proxied`] cluster.
#[derive(Debug)]
pub struct RegionLinks {
    /// In front of the client API listener (the address the region advertises as its API).
    pub api: LinkProxy,
    /// In front of the cluster listener: Raft, forwarded writes and rack sessions.
    pub raft: LinkProxy,
}

/// What one region of a local cluster is: identity, addresses, files and current process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalRegion {
    /// 1-based index; the region is named `region-<index>`.
    pub index: usize,
    /// Region name given at init/join.
    pub name: String,
    /// Raft node id (from `run.json`; 0 if not known yet).
    pub node_id: u64,
    /// Client API `host:port`.
    pub api_addr: String,
    /// Raft `host:port`.
    pub raft_addr: String,
    /// Data directory (absolute).
    pub data_dir: PathBuf,
    /// Process id of the latest process started for this region (it may have exited since).
    pub pid: u32,
    /// File receiving the region's stdout and stderr.
    pub log_path: PathBuf,
}

impl LocalRegion {
    /// The region's client endpoint, `https://api_addr`.
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.api_addr)
    }
}

/// A step of [`LocalCluster::start_with_progress`] / [`LocalCluster::restart_stopped_with_progress`],
/// for progress displays.
#[derive(Clone, Debug)]
pub enum Progress {
    /// A step begins (e.g. "starting region-1", "joining region-2").
    Step(String),
    /// A region is up and ready.
    Ready(LocalRegion),
    /// A rack controller is running (and, unless it took longer than [`crate::RACK_READY_TIMEOUT`],
    /// connected).
    RackReady(LocalRack),
}

/// How [`LocalCluster::stop_all`] ended one region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// It was not running (or its pid now belongs to another program, which was left alone).
    NotRunning,
    /// It exited after SIGTERM.
    Terminated,
    /// It ignored SIGTERM for the grace period and was killed.
    Killed,
    /// It survived even SIGKILL (should not happen).
    StillRunning,
}

/// What [`LocalCluster::stop_all_report`] did to every process of the cluster.
#[derive(Clone, Debug)]
pub struct StopReport {
    /// The regions, in index order.
    pub regions: Vec<StoppedRegion>,
    /// The racks, in the order they were added.
    pub racks: Vec<StoppedRack>,
}

/// One line of the [`LocalCluster::stop_all`] report.
#[derive(Clone, Debug)]
pub struct StoppedRegion {
    /// The region.
    pub region: LocalRegion,
    /// What happened to it.
    pub outcome: StopOutcome,
}

/// `run.json`, written by a region once it listens (contract: docs/region-cli-contract.md).
#[derive(Deserialize, Debug)]
struct RunFile {
    pid: u32,
    #[serde(default)]
    node_id: u64,
    #[serde(default)]
    api_addr: String,
    #[serde(default)]
    raft_addr: String,
    #[serde(default)]
    ready: bool,
}

/// `cluster.json`.
#[derive(Serialize, Deserialize)]
struct ClusterFile {
    version: u32,
    bin_dir: PathBuf,
    region_args: Vec<String>,
    detach: bool,
    ca_path: PathBuf,
    regions: Vec<LocalRegion>,
    /// Absent in files written before racks existed.
    #[serde(default)]
    rack_args: Vec<String>,
    /// Absent in files written before racks existed.
    #[serde(default)]
    racks: Vec<LocalRack>,
}

struct Slot {
    info: LocalRegion,
    /// The process, when this `LocalCluster` started it. `None` for regions recorded by an earlier process
    /// (after [`LocalCluster::load`]): those are recognised through `/proc/PID/cmdline`.
    child: Option<Child>,
}

/// A running (or recorded) local cluster of `ingot-region` processes. All methods take `&self`, so a
/// cluster can be shared between test tasks.
pub struct LocalCluster {
    pub(crate) dir: PathBuf,
    pub(crate) bin_dir: PathBuf,
    region_args: Vec<String>,
    pub(crate) detach: bool,
    pub(crate) ca_path: PathBuf,
    ca_pem: String,
    token: String,
    slots: Vec<Mutex<Slot>>,
    pub(crate) rack_args: Vec<String>,
    /// The racks, in the order they were added (only ever appended to).
    pub(crate) racks: Mutex<Vec<RackSlot>>,
    /// Serializes [`LocalCluster::save`] (racks may be added from concurrent tasks).
    save_lock: Mutex<()>,
    /// The `ingot-sim` process this handle started ([`LocalCluster::start_sims`]), killed on drop unless
    /// detached.
    pub(crate) simulator_child: Mutex<Option<Child>>,
    /// Region `i`'s proxies at index `i - 1` ([`LocalClusterOptions::proxied`]); empty otherwise.
    links: Vec<RegionLinks>,
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster")
            .field("dir", &self.dir)
            .field("regions", &self.regions())
            .field("racks", &self.racks())
            .field("detach", &self.detach)
            .finish()
    }
}

impl LocalCluster {
    /// Starts a new cluster: `init` region-1, then `join` the others one after another, each waited for
    /// until ready; then writes `DIR/env` and `DIR/cluster.json`. On failure, every process started so
    /// far is killed and the error carries the tail of the failing region's log.
    pub async fn start(opts: LocalClusterOptions) -> Result<LocalCluster> {
        Self::start_with_progress(opts, |_| {}).await
    }

    /// [`LocalCluster::start`], reporting each step to `progress`.
    pub async fn start_with_progress(
        opts: LocalClusterOptions,
        mut progress: impl FnMut(Progress) + Send,
    ) -> Result<LocalCluster> {
        if opts.regions == 0 {
            bail!("a cluster needs at least one region");
        }
        let bin_dir = resolve_bin_dir(opts.bin_dir.as_deref())?;
        std::fs::create_dir_all(&opts.dir)
            .with_context(|| format!("cannot create {}", opts.dir.display()))?;
        let dir = opts
            .dir
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", opts.dir.display()))?;
        if dir.join(CLUSTER_FILE).exists() {
            bail!(
                "{} already holds a local cluster ({CLUSTER_FILE} exists): reattach to it, or remove \
                 it with `ingot dev down --dir {} --purge`",
                dir.display(),
                dir.display()
            );
        }
        for i in 1..=opts.regions {
            let d = region_dir(&dir, i);
            if !dir_is_fresh(&d)? {
                bail!(
                    "{} is not empty: remove it (`ingot dev down --dir {} --purge`) or pick another directory",
                    d.display(),
                    dir.display()
                );
            }
        }

        // Not detached until fully started: if anything fails, dropping `cluster` kills what was started.
        let mut cluster = LocalCluster {
            ca_path: region_dir(&dir, 1).join("tls").join("ca.crt"),
            dir,
            bin_dir,
            region_args: opts.region_args.clone(),
            detach: false,
            ca_pem: String::new(),
            token: String::new(),
            slots: Vec::new(),
            rack_args: opts.rack_args.clone(),
            racks: Mutex::new(Vec::new()),
            save_lock: Mutex::new(()),
            simulator_child: Mutex::new(None),
            links: Vec::new(),
        };
        let detach = opts.detach;
        if opts.proxied {
            if detach {
                bail!(
                    "a proxied local cluster cannot be detached: its proxies live in this process"
                );
            }
            for i in 1..=opts.regions {
                cluster.links.push(RegionLinks {
                    api: LinkProxy::bind(&format!("region-{i}/api"))?,
                    raft: LinkProxy::bind(&format!("region-{i}/raft"))?,
                });
            }
        }
        // `--advertise-*` for region `i` when proxied.
        let advertise = |c: &LocalCluster, i: usize| -> Vec<String> {
            c.links.get(i - 1).map_or_else(Vec::new, |l| {
                vec![
                    "--advertise-api".into(),
                    l.api.addr().to_string(),
                    "--advertise-raft".into(),
                    l.raft.addr().to_string(),
                ]
            })
        };

        progress(Progress::Step("starting region-1".into()));
        let listen = [
            "--listen-api",
            "127.0.0.1:0",
            "--listen-raft",
            "127.0.0.1:0",
        ];
        let adv = advertise(&cluster, 1);
        cluster.spawn_new(1, detach, |d, name| {
            let mut a = vec!["init".into(), "--data-dir".into(), d, "--name".into(), name];
            a.extend(listen.iter().map(|s| s.to_string()));
            a.extend(adv);
            a
        })?;
        progress(Progress::Ready(cluster.wait_ready(1).await?));

        let r1 = region_dir(&cluster.dir, 1);
        cluster.token = std::fs::read_to_string(r1.join("admin.token"))
            .with_context(|| format!("cannot read {}", r1.join("admin.token").display()))?
            .trim()
            .to_string();
        cluster.ca_pem = std::fs::read_to_string(&cluster.ca_path)
            .with_context(|| format!("cannot read {}", cluster.ca_path.display()))?;

        for i in 2..=opts.regions {
            progress(Progress::Step(format!(
                "creating a join token for region-{i}"
            )));
            let clients = cluster.connect()?;
            let token = retry_unavailable(
                || {
                    let mut c = clients.cluster();
                    async move {
                        c.create_join_token(CreateJoinTokenRequest {
                            ttl_seconds: JOIN_TOKEN_TTL_SECS,
                        })
                        .await
                    }
                },
                Duration::from_secs(30),
            )
            .await
            .map_err(|s| anyhow!("CreateJoinToken failed: {} ({:?})", s.message(), s.code()))?
            .into_inner()
            .token;

            progress(Progress::Step(format!("joining region-{i}")));
            let seeds = cluster.endpoints().join(",");
            let ca = cluster.ca_path.to_string_lossy().into_owned();
            let adv = advertise(&cluster, i);
            cluster.spawn_new(i, detach, |d, name| {
                let mut a: Vec<String> = vec!["join".into(), "--data-dir".into(), d];
                a.extend(["--name".into(), name, "--region".into(), seeds.clone()]);
                a.extend(["--token".into(), token.clone(), "--ca".into(), ca.clone()]);
                a.extend(listen.iter().map(|s| s.to_string()));
                a.extend(adv);
                a
            })?;
            progress(Progress::Ready(cluster.wait_ready(i).await?));
        }

        cluster.detach = detach;
        cluster.write_env()?;
        cluster.save()?;
        Ok(cluster)
    }

    /// Reattaches to a cluster recorded in `DIR/cluster.json` by an earlier [`LocalCluster::start`]
    /// (possibly by another process). Its processes are not children of this one: they are recognised
    /// (for [`LocalCluster::is_running`], [`LocalCluster::kill`], [`LocalCluster::stop_all`]) only while
    /// `/proc/PID/cmdline` shows `ingot-region` with the region's data directory, so a reused pid is never
    /// signalled. Regions restarted through the loaded cluster are detached if the cluster was. Racks
    /// recorded in the file are reattached the same way (`ingot-rack` with the rack's data directory).
    pub fn load(dir: impl AsRef<Path>) -> Result<LocalCluster> {
        let dir = dir.as_ref();
        let dir = dir
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", dir.display()))?;
        let path = dir.join(CLUSTER_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let file: ClusterFile = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a cluster record", path.display()))?;
        let env = dir.join(ENV_FILE);
        let config = ClientConfig::from_env_file(&env)
            .with_context(|| format!("cannot read {}", env.display()))?;
        Ok(LocalCluster {
            dir,
            bin_dir: file.bin_dir,
            region_args: file.region_args,
            detach: file.detach,
            ca_path: file.ca_path,
            ca_pem: config.ca_pem,
            token: config.token,
            slots: file
                .regions
                .into_iter()
                .map(|info| Mutex::new(Slot { info, child: None }))
                .collect(),
            rack_args: file.rack_args,
            racks: Mutex::new(
                file.racks
                    .into_iter()
                    .map(|info| RackSlot { info, child: None })
                    .collect(),
            ),
            save_lock: Mutex::new(()),
            simulator_child: Mutex::new(None),
            links: Vec::new(),
        })
    }

    /// The cluster directory (absolute).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the `env` file (`source` it, or pass it as `--profile`).
    pub fn env_path(&self) -> PathBuf {
        self.dir.join(ENV_FILE)
    }

    /// Path of the cluster CA certificate.
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// The admin bearer token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True if the cluster has no region (only possible for a corrupt `cluster.json`).
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Whether the regions outlive this process.
    pub fn is_detached(&self) -> bool {
        self.detach
    }

    /// The client endpoint of every region, in index order (dead ones included): `https://api_addr`,
    /// or the region's API proxy in a [`LocalClusterOptions::proxied`] cluster.
    pub fn endpoints(&self) -> Vec<String> {
        if !self.links.is_empty() {
            return self
                .links
                .iter()
                .map(|l| format!("https://{}", l.api.addr()))
                .collect();
        }
        self.regions().iter().map(LocalRegion::endpoint).collect()
    }

    /// Region `i`'s proxies, in a [`LocalClusterOptions::proxied`] cluster.
    pub fn links(&self, i: usize) -> Option<&RegionLinks> {
        i.checked_sub(1).and_then(|k| self.links.get(k))
    }

    /// Configuration reaching every region with the admin token.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            endpoints: self.endpoints(),
            ca_pem: self.ca_pem.clone(),
            token: self.token.clone(),
        }
    }

    /// [`Clients`] balanced over every region (must be called inside a Tokio runtime).
    pub fn connect(&self) -> Result<Clients> {
        Ok(self.client_config().connect()?)
    }

    /// [`Clients`] talking to region `i` only.
    pub fn connect_to(&self, i: usize) -> Result<Clients> {
        let ep = self.slot(i)?.info.endpoint();
        Ok(ClientConfig {
            endpoints: vec![ep],
            ..self.client_config()
        }
        .connect()?)
    }

    /// Region `i` (1-based). Panics if there is no such region, like slice indexing.
    pub fn region(&self, i: usize) -> LocalRegion {
        match self.slot(i) {
            Ok(s) => s.info.clone(),
            Err(e) => panic!("{e}"),
        }
    }

    /// Every region, in index order.
    pub fn regions(&self) -> Vec<LocalRegion> {
        self.slots.iter().map(|s| lock(s).info.clone()).collect()
    }

    /// Whether region `i`'s process is alive (and, for a loaded cluster, still an `ingot-region` on this
    /// region's data directory).
    pub fn is_running(&self, i: usize) -> bool {
        self.slot(i).map(|mut s| s.running()).unwrap_or(false)
    }

    /// Sends `signal` (e.g. `libc::SIGKILL` to simulate a crash, `libc::SIGTERM` for a clean stop) to
    /// region `i`'s process. Only a process this cluster started, or a verified recorded one, is signalled;
    /// signalling a region that is not running is an error.
    pub fn kill(&self, i: usize, signal: libc::c_int) -> Result<()> {
        let mut s = self.slot(i)?;
        if !s.running() {
            bail!("{} (pid {}) is not running", s.info.name, s.info.pid);
        }
        send_signal(s.info.pid, signal)
    }

    /// Waits (up to 30 s) until region `i`'s process has exited; returns its exit status when this cluster
    /// started it (`None` for a process of a loaded cluster).
    pub async fn wait_exit(&self, i: usize) -> Result<Option<ExitStatus>> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            {
                let mut s = self.slot(i)?;
                let name = s.info.name.clone();
                match &mut s.child {
                    Some(c) => {
                        if let Some(st) = c
                            .try_wait()
                            .with_context(|| format!("waiting for {name}"))?
                        {
                            return Ok(Some(st));
                        }
                    }
                    None => {
                        if !s.running() {
                            return Ok(None);
                        }
                    }
                }
                if tokio::time::Instant::now() >= deadline {
                    bail!(
                        "{name} (pid {}) still running after {:?}",
                        s.info.pid,
                        READY_TIMEOUT
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Restarts a stopped region with `ingot-region run` on its previous API and Raft addresses (so peers
    /// find it where they expect it) and waits until its `run.json` is ready with the new pid. Fails if the
    /// region is still running.
    pub async fn restart(&self, i: usize) -> Result<LocalRegion> {
        self.respawn(i)?;
        let r = self.wait_ready(i).await;
        self.save()?;
        r
    }

    /// Restarts every region that is not running (all spawned first, then waited for together, as a
    /// region may need a quorum of peers before it is ready), then every rack that is not running
    /// ([`LocalCluster::restart_stopped_racks`]). Returns the restarted region indexes.
    pub async fn restart_stopped(&self) -> Result<Vec<usize>> {
        self.restart_stopped_with_progress(|_| {}).await
    }

    /// [`LocalCluster::restart_stopped`], reporting each step to `progress`.
    pub async fn restart_stopped_with_progress(
        &self,
        mut progress: impl FnMut(Progress) + Send,
    ) -> Result<Vec<usize>> {
        let stopped: Vec<usize> = (1..=self.len()).filter(|&i| !self.is_running(i)).collect();
        for &i in &stopped {
            progress(Progress::Step(format!("restarting region-{i}")));
            self.respawn(i)?;
        }
        let mut result = Ok(());
        for &i in &stopped {
            match self.wait_ready(i).await {
                Ok(r) => progress(Progress::Ready(r)),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.save()?;
        result?;
        self.restart_stopped_racks_with_progress(&mut progress)
            .await?;
        Ok(stopped)
    }

    /// Stops every running region and rack: SIGTERM, up to 10 s to exit, then SIGKILL. Returns what
    /// happened to each region (see [`LocalCluster::stop_all_report`] for the racks too).
    pub async fn stop_all(&self) -> Vec<StoppedRegion> {
        self.stop_all_report().await.regions
    }

    /// [`LocalCluster::stop_all`], reporting what happened to every region and every rack. Racks and
    /// regions are signalled together; only processes this cluster started, or verified recorded ones,
    /// are signalled.
    pub async fn stop_all_report(&self) -> StopReport {
        let nracks = self.rack_slots().len();
        // Index space: regions 0..len(), then racks len()..len()+nracks.
        let total = self.len() + nracks;
        let running = |n: usize| -> bool {
            if n < self.len() {
                lock(&self.slots[n]).running()
            } else {
                self.rack_slots()
                    .get_mut(n - self.len())
                    .is_some_and(|r| r.running())
            }
        };
        let pid = |n: usize| -> u32 {
            if n < self.len() {
                lock(&self.slots[n]).info.pid
            } else {
                self.rack_slots()
                    .get(n - self.len())
                    .map_or(0, |r| r.info.pid)
            }
        };
        let mut termed = vec![false; total];
        for (n, t) in termed.iter_mut().enumerate() {
            if running(n) && send_signal(pid(n), libc::SIGTERM).is_ok() {
                *t = true;
            }
        }
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        while (0..total).any(|n| termed[n] && running(n)) && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(POLL).await;
        }
        let mut killed = vec![false; total];
        for (n, k) in killed.iter_mut().enumerate() {
            if termed[n] && running(n) {
                *k = send_signal(pid(n), libc::SIGKILL).is_ok();
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while (0..total).any(|n| killed[n] && running(n)) && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(POLL).await;
        }
        let outcome = |n: usize| {
            if !termed[n] {
                StopOutcome::NotRunning
            } else if running(n) {
                StopOutcome::StillRunning
            } else if killed[n] {
                StopOutcome::Killed
            } else {
                StopOutcome::Terminated
            }
        };
        let regions = (0..self.len())
            .map(|n| {
                // Not inside the struct literal: `outcome` locks the slot too.
                let outcome = outcome(n);
                let region = lock(&self.slots[n]).info.clone();
                StoppedRegion { region, outcome }
            })
            .collect();
        let infos: Vec<LocalRack> = self.racks();
        let racks = infos
            .into_iter()
            .enumerate()
            .map(|(k, rack)| StoppedRack {
                rack,
                outcome: outcome(self.len() + k),
            })
            .collect();
        StopReport { regions, racks }
    }

    /// The index of the current Raft leader, as reported by `ClusterService.ListRegions` on the first
    /// running region that answers within 2 s and knows a leader; `None` if none does, or if the reported
    /// leader is a region that is not running (e.g. just killed, before a new election).
    pub async fn leader(&self) -> Option<usize> {
        let config = self.client_config();
        for i in 1..=self.len() {
            if !self.is_running(i) {
                continue;
            }
            let ep = self.region(i).endpoint();
            let Ok(clients) = (ClientConfig {
                endpoints: vec![ep],
                ..config.clone()
            })
            .connect() else {
                continue;
            };
            let mut c = clients.cluster();
            let call = c.list_regions(ListRegionsRequest {});
            let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(2), call).await else {
                continue;
            };
            let resp = resp.into_inner();
            // Trust a region's own report of leadership, with the highest term: a region restarted a
            // moment ago may still believe in a leader (even itself) from an older term.
            let leader_role = ingot_proto::v1::RegionRole::Leader as i32;
            let Some(leader) = resp
                .regions
                .iter()
                .filter(|r| r.healthy && r.role == leader_role)
                .max_by_key(|r| r.term)
            else {
                continue;
            };
            let (leader_id, leader_api) = (leader.node_id, leader.api_addr.clone());
            let regions = self.regions();
            let by_node = regions.iter().find(|r| r.node_id == leader_id);
            let by_addr = || regions.iter().find(|r| r.api_addr == leader_api);
            if let Some(r) = by_node.or_else(by_addr) {
                return self.is_running(r.index).then_some(r.index);
            }
        }
        None
    }

    fn slot(&self, i: usize) -> Result<MutexGuard<'_, Slot>> {
        if i == 0 || i > self.slots.len() {
            bail!(
                "no region {i}: regions are numbered 1..={} (region-1 is index 1)",
                self.slots.len()
            );
        }
        Ok(lock(&self.slots[i - 1]))
    }

    /// Spawns the process of a new region `i` (= `self.slots.len() + 1`) and records it.
    fn spawn_new(
        &mut self,
        i: usize,
        detach: bool,
        args: impl FnOnce(String, String) -> Vec<String>,
    ) -> Result<()> {
        debug_assert_eq!(i, self.slots.len() + 1);
        let data_dir = region_dir(&self.dir, i);
        let name = format!("region-{i}");
        let args = args(data_dir.to_string_lossy().into_owned(), name.clone());
        let info = LocalRegion {
            index: i,
            name,
            node_id: 0,
            api_addr: String::new(),
            raft_addr: String::new(),
            log_path: data_dir.join("region.log"),
            data_dir,
            pid: 0,
        };
        let child = self.spawn(&info, &args, detach)?;
        let info = LocalRegion {
            pid: child.id(),
            ..info
        };
        self.slots.push(Mutex::new(Slot {
            info,
            child: Some(child),
        }));
        Ok(())
    }

    /// Starts `ingot-region run` for a stopped region on its recorded addresses.
    fn respawn(&self, i: usize) -> Result<()> {
        let mut s = self.slot(i)?;
        if s.running() {
            bail!("{} is still running (pid {})", s.info.name, s.info.pid);
        }
        let mut args = vec![
            "run".to_string(),
            "--data-dir".into(),
            s.info.data_dir.to_string_lossy().into_owned(),
        ];
        if !s.info.api_addr.is_empty() {
            args.extend(["--listen-api".into(), s.info.api_addr.clone()]);
        }
        if !s.info.raft_addr.is_empty() {
            args.extend(["--listen-raft".into(), s.info.raft_addr.clone()]);
        }
        let child = self.spawn(&s.info, &args, self.detach)?;
        s.info.pid = child.id();
        s.child = Some(child);
        Ok(())
    }

    fn spawn(&self, info: &LocalRegion, args: &[String], detach: bool) -> Result<Child> {
        create_private_dir(&info.data_dir)?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&info.log_path)
            .with_context(|| format!("cannot open {}", info.log_path.display()))?;
        let bin = self.bin_dir.join(REGION_BIN);
        let mut cmd = Command::new(&bin);
        cmd.args(args)
            .args(&self.region_args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        if detach {
            // Own process group: Ctrl-C in the terminal that ran `ingot dev up` does not reach the regions.
            cmd.process_group(0);
        }
        tracing::debug!(region = %info.name, ?args, "spawning {}", bin.display());
        cmd.spawn()
            .with_context(|| format!("cannot start {} for {}", bin.display(), info.name))
    }

    /// Waits until region `i`'s `run.json` shows its current pid and `ready: true`, then records its node
    /// id and addresses. Fails early, with the tail of its log, if the process exits.
    async fn wait_ready(&self, i: usize) -> Result<LocalRegion> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            {
                let mut s = self.slot(i)?;
                let run_path = s.info.data_dir.join("run.json");
                let run = std::fs::read_to_string(&run_path)
                    .ok()
                    .and_then(|t| serde_json::from_str::<RunFile>(&t).ok());
                if let Some(run) = run.filter(|r| r.pid == s.info.pid) {
                    if run.node_id != 0 {
                        s.info.node_id = run.node_id;
                    }
                    if !run.api_addr.is_empty() {
                        s.info.api_addr = run.api_addr;
                    }
                    if !run.raft_addr.is_empty() {
                        s.info.raft_addr = run.raft_addr;
                    }
                    if let Some(l) = self.links.get(i - 1) {
                        // The region's real listeners, once it published them.
                        if let Ok(a) = s.info.api_addr.parse() {
                            l.api.set_backend(a);
                        }
                        if let Ok(a) = s.info.raft_addr.parse() {
                            l.raft.set_backend(a);
                        }
                    }
                    if run.ready {
                        return Ok(s.info.clone());
                    }
                }
                let exited = match &mut s.child {
                    Some(c) => c.try_wait()?.map(|st| st.to_string()),
                    None => (!s.running()).then(|| "exited".to_string()),
                };
                if let Some(status) = exited {
                    bail!(
                        "{} ({}) {status} before it was ready; last lines of {}:\n{}",
                        s.info.name,
                        REGION_BIN,
                        s.info.log_path.display(),
                        log_tail(&s.info.log_path)
                    );
                }
                if tokio::time::Instant::now() >= deadline {
                    bail!(
                        "{} (pid {}) not ready after {:?}; last lines of {}:\n{}",
                        s.info.name,
                        s.info.pid,
                        READY_TIMEOUT,
                        s.info.log_path.display(),
                        log_tail(&s.info.log_path)
                    );
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Writes `DIR/env` (0600: it holds the admin token).
    fn write_env(&self) -> Result<()> {
        let text = format!(
            "# Ingot local cluster in {dir}: `source` this file, or pass it to ingot as --profile.\n\
             export {ENV_ENDPOINTS}={}\nexport {ENV_CA}={}\nexport {ENV_TOKEN}={}\n",
            shell_quote(&self.endpoints().join(",")),
            shell_quote(&self.ca_path.to_string_lossy()),
            shell_quote(&self.token),
            dir = self.dir.display(),
        );
        write_atomic(&self.dir.join(ENV_FILE), text.as_bytes(), 0o600)
    }

    /// Writes `DIR/cluster.json`.
    pub(crate) fn save(&self) -> Result<()> {
        let _guard = self.save_lock.lock().unwrap_or_else(|e| e.into_inner());
        let file = ClusterFile {
            version: 1,
            bin_dir: self.bin_dir.clone(),
            region_args: self.region_args.clone(),
            detach: self.detach,
            ca_path: self.ca_path.clone(),
            regions: self.regions(),
            rack_args: self.rack_args.clone(),
            racks: self.racks(),
        };
        let text = serde_json::to_string_pretty(&file)? + "\n";
        write_atomic(&self.dir.join(CLUSTER_FILE), text.as_bytes(), 0o644)
    }
}

impl Drop for LocalCluster {
    /// Kills (SIGKILL) and reaps the regions and racks this cluster started, unless it is detached.
    fn drop(&mut self) {
        if self.detach {
            return;
        }
        if let Some(c) = self
            .simulator_child
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for r in self.rack_slots().iter_mut() {
            if let Some(c) = r.child.as_mut() {
                if matches!(c.try_wait(), Ok(None)) {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
        for slot in &self.slots {
            let mut s = lock(slot);
            if let Some(c) = s.child.as_mut() {
                if matches!(c.try_wait(), Ok(None)) {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
    }
}

impl Slot {
    fn running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => is_region_process(self.info.pid, &self.info.data_dir),
        }
    }
}

fn lock(m: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn region_dir(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("region-{i}"))
}

/// True if `d` does not exist or holds nothing but a log file.
fn dir_is_fresh(d: &Path) -> Result<bool> {
    match std::fs::read_dir(d) {
        Ok(entries) => {
            for e in entries {
                if e?.file_name() != "region.log" {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", d.display())),
    }
}

/// The directory holding `ingot-region`: `explicit`, else next to the running executable (skipping a
/// `deps` directory, where test binaries live).
pub fn resolve_bin_dir(explicit: Option<&Path>) -> Result<PathBuf> {
    let dir = match explicit {
        Some(d) => d.to_path_buf(),
        None => {
            let exe = std::env::current_exe().context("cannot locate the running executable")?;
            let mut d = exe
                .parent()
                .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?
                .to_path_buf();
            if d.file_name().is_some_and(|n| n == "deps") {
                if let Some(p) = d.parent() {
                    d = p.to_path_buf();
                }
            }
            d
        }
    };
    if !dir.join(REGION_BIN).is_file() {
        bail!(
            "{REGION_BIN} not found in {}: run `cargo build --workspace --bins` first",
            dir.display()
        );
    }
    Ok(dir)
}

/// True if `pid` is alive and its command line is `ingot-region ... <data_dir> ...`: the guard against
/// signalling a pid that was reused by another program.
pub fn is_region_process(pid: u32, data_dir: &Path) -> bool {
    is_process_of(pid, REGION_BIN, data_dir)
}
