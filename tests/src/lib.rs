//! Whole-stack test support: every test starts real `ingot-region` processes on port 0 (through
//! [`ingot_launch::LocalCluster`]) in its own directory, with real `ingot-rack` and `ingot-sim` processes
//! where it needs them. When a test fails, its directory — data directories and every process's log — is
//! kept and the log tails are printed; when it passes, the directory is removed.
//!
//! The scenarios are one test binary, `all` (`tests/tests/all.rs`), with a module per file in
//! `tests/tests/`: `t10_cluster` (replication, failover, snapshots, restarts, removal), `t11_crash`
//! (SIGKILL during concurrent writes), `t12_security` (TLS and tokens, bad input, data-dir checks,
//! reflection), `t13_peers` (grpcurl and Python grpcio), `t14_cli` (the `ingot` binary and `ingot dev
//! up`), `t15_lifecycle` (the machine lifecycle, events, tags, users, `Watch`), `t16_allocation`
//! (concurrent allocation and request semantics), `t17_racks` (rack controllers: failover and refusals)
//! `t18_power` (power through rack, driver and BMC, with `ingot-sim` and `ipmi_sim`), `t19_nemesis`
//! (faults at random under clients, then the invariants checked from the record), `t23_images`
//! (images copied to every region, a region lost, a corrupted blob) and `t28_image_builders` (`ingot images
//! build-ramdisk` and `build-test-image`, the image booted under QEMU BIOS and UEFI). Run one with
//! `cargo test -p ingot-tests --test all -- t17_racks`.
//!
//! This library holds what they share: [`TestCluster`] and test directories, machine and inventory
//! builders, lifecycle helpers that act as a booting machine's agent, rack helpers (sessions, simulated
//! BMC state files, mutual-TLS clients), and log helpers.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion

pub mod fuzz;
pub mod netns;

use anyhow::{Context, Result};
use ingot_client::Clients;
use ingot_launch::{log_tail, LocalCluster, LocalClusterOptions};
use ingot_proto::v1::{CreateMachineRequest, ListMachinesRequest, ReadConsistency};
use std::path::PathBuf;
use std::time::Duration;

/// A cluster for one test, with its directory.
pub struct TestCluster {
    /// The processes.
    pub cluster: LocalCluster,
    /// The test's directory (data dirs, logs, env).
    pub dir: PathBuf,
}

/// Where test directories go: `target/test-clusters/<name>-<pid>`.
pub fn test_dir(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("."));
    let target = exe
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "target"))
        .map(PathBuf::from);
    let base = target
        .unwrap_or_else(std::env::temp_dir)
        .join("test-clusters");
    base.join(format!("{name}-{}", std::process::id()))
}

impl TestCluster {
    /// Starts `regions` regions with the default timing plus `extra` region flags.
    pub async fn start(name: &str, regions: usize, extra: &[&str]) -> Result<TestCluster> {
        Self::start_with(name, regions, extra, &[]).await
    }

    /// [`TestCluster::start`], with `rack_args` for every rack added later (e.g. a short
    /// `--poll-interval-ms`).
    pub async fn start_with(
        name: &str,
        regions: usize,
        extra: &[&str],
        rack_args: &[&str],
    ) -> Result<TestCluster> {
        let dir = test_dir(name);
        let _ = std::fs::remove_dir_all(&dir);
        let mut opts = LocalClusterOptions::new(&dir, regions);
        opts.region_args = extra.iter().map(|s| s.to_string()).collect();
        opts.rack_args = rack_args.iter().map(|s| s.to_string()).collect();
        let cluster = LocalCluster::start(opts)
            .await
            .with_context(|| format!("starting {regions} regions in {}", dir.display()))?;
        Ok(TestCluster { cluster, dir })
    }

    /// Starts a cluster with the options `make` builds for the test's directory (e.g.
    /// [`ingot_launch::nemesis::NemesisOptions::cluster_options`]).
    pub async fn start_from(
        name: &str,
        make: impl FnOnce(PathBuf) -> LocalClusterOptions,
    ) -> Result<TestCluster> {
        let dir = test_dir(name);
        let _ = std::fs::remove_dir_all(&dir);
        let opts = make(dir.clone());
        let cluster = LocalCluster::start(opts)
            .await
            .with_context(|| format!("starting a cluster in {}", dir.display()))?;
        Ok(TestCluster { cluster, dir })
    }

    /// Clients over all regions.
    pub fn clients(&self) -> Clients {
        self.cluster.connect().expect("clients")
    }

    /// Clients talking to region `i` only.
    pub fn clients_to(&self, i: usize) -> Clients {
        self.cluster.connect_to(i).expect("clients")
    }

    /// Index of the current leader, waiting up to 10 s for one.
    pub async fn leader(&self) -> usize {
        for _ in 0..200 {
            if let Some(i) = self.cluster.leader().await {
                return i;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no leader within 10 s");
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("=== test failed: keeping {} ===", self.dir.display());
            for r in self.cluster.regions() {
                eprintln!(
                    "--- {} (node {}) log tail: {}\n{}",
                    r.name,
                    r.node_id,
                    r.log_path.display(),
                    log_tail(&r.log_path)
                );
            }
        } else {
            let dir = self.dir.clone();
            // Processes are killed by LocalCluster's own Drop, which runs after this one.
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(500));
                let _ = std::fs::remove_dir_all(dir);
            });
        }
    }
}

/// A create request with a MAC unique per (`seed`, `i`).
pub fn machine(seed: u16, i: u32) -> CreateMachineRequest {
    let b = i.to_be_bytes();
    let s = seed.to_be_bytes();
    CreateMachineRequest {
        macs: vec![format!(
            "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            s[1], b[0], b[1], b[2], b[3]
        )],
        hostname: format!("t{seed}-{i}"),
        ..Default::default()
    }
}

/// Every hostname in the cluster, read through region `clients` with the given consistency.
pub async fn all_hostnames(
    clients: &Clients,
    stale: bool,
) -> Result<std::collections::BTreeSet<String>> {
    let mut out = std::collections::BTreeSet::new();
    let mut token = String::new();
    loop {
        let r = clients
            .machines()
            .list_machines(ListMachinesRequest {
                page_size: 5000,
                page_token: token.clone(),
                consistency: if stale {
                    ReadConsistency::Stale as i32
                } else {
                    ReadConsistency::Linearizable as i32
                },
                ..Default::default()
            })
            .await?
            .into_inner();
        out.extend(r.machines.into_iter().map(|m| m.hostname));
        if r.next_page_token.is_empty() {
            return Ok(out);
        }
        token = r.next_page_token;
    }
}

/// A peer program for real-peer tests, from the environment variable `var` (set by
/// scripts/install-test-peers.sh). Missing: under CI (`CI` set) the test fails; elsewhere it is skipped with
/// the reason printed.
pub fn peer(var: &str) -> Option<PathBuf> {
    let env_file = std::env::var("HOME")
        .map(|h| PathBuf::from(h).join(".cache/ingot-peers/env"))
        .ok();
    let from_env = std::env::var(var).ok().or_else(|| {
        // Fall back to the installer's env file, so `cargo test` alone works after one install.
        let text = std::fs::read_to_string(env_file.as_ref()?).ok()?;
        text.lines().find_map(|l| {
            l.strip_prefix(&format!("export {var}="))
                .map(|v| v.trim_matches('"').to_string())
        })
    });
    match from_env.map(PathBuf::from).filter(|p| p.exists()) {
        Some(p) => Some(p),
        None if std::env::var_os("CI").is_some()
            || std::env::var_os("INGOT_REQUIRE_PEERS").is_some() =>
        {
            panic!("{var} is not set or missing: run scripts/install-test-peers.sh (CI must run real-peer tests)")
        }
        None => {
            eprintln!("SKIPPED: {var} not found; run scripts/install-test-peers.sh to run this real-peer test");
            None
        }
    }
}

/// A host program for real-peer tests, found on PATH (or in /usr/sbin, /sbin), with [`peer`]'s policy:
/// missing under CI (or INGOT_REQUIRE_PEERS) the test fails; elsewhere it is skipped with the reason.
pub fn host_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    match found {
        Some(p) => Some(p),
        None if std::env::var_os("CI").is_some()
            || std::env::var_os("INGOT_REQUIRE_PEERS").is_some() =>
        {
            panic!("{name} is not installed: run scripts/install-test-peers.sh (CI must run real-peer tests)")
        }
        None => {
            eprintln!("SKIPPED: {name} not installed; run scripts/install-test-peers.sh to run this real-peer test");
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Lifecycle helpers: drive machines through the API the way a booting machine's agent would.
// ---------------------------------------------------------------------------------------------------------

/// A sample inventory: `cpus` CPUs, `memory_mib` of memory, one disk per `(size_gib, rotational)` pair
/// (named `sda`, `sdb`, ...) and `nics` NICs of `nic_speed_mbps` each.
pub fn inventory(
    cpus: u32,
    memory_mib: u64,
    disks: &[(u64, bool)],
    nics: usize,
    nic_speed_mbps: u64,
) -> ingot_proto::v1::Inventory {
    use ingot_proto::v1::{Disk, Firmware, Inventory, Nic};
    Inventory {
        cpu_count: cpus,
        cpu_model: "Test CPU @ 3.0GHz".into(),
        memory_mib,
        disks: disks
            .iter()
            .enumerate()
            .map(|(i, (size, rot))| Disk {
                name: format!("sd{}", (b'a' + (i % 26) as u8) as char),
                size_gib: *size,
                rotational: *rot,
                model: if *rot { "HDD-X" } else { "SSD-Y" }.into(),
                serial: format!("SN{i:04}"),
                tags: vec![],
            })
            .collect(),
        nics: (0..nics)
            .map(|i| Nic {
                name: format!("eno{}", i + 1),
                mac: format!("0a:00:00:00:00:{:02x}", i % 256),
                speed_mbps: nic_speed_mbps,
                link: true,
            })
            .collect(),
        firmware: Some(Firmware {
            boot_mode: "uefi".into(),
            vendor: "TestBIOS".into(),
            version: "1.0".into(),
        }),
        dmi: [("system_vendor".to_string(), "Test Inc.".to_string())]
            .into_iter()
            .collect(),
    }
}

/// A small inventory (8 CPUs, 16 GiB, one 500 GiB SSD, one 1 Gbit/s NIC).
pub fn small_inventory() -> ingot_proto::v1::Inventory {
    inventory(8, 16_384, &[(500, false)], 1, 1_000)
}

/// A request naming one machine by system id.
pub fn by_id(system_id: &str) -> ingot_proto::v1::MachineRef {
    ingot_proto::v1::MachineRef {
        key: Some(ingot_proto::v1::machine_ref::Key::SystemId(
            system_id.to_string(),
        )),
    }
}

/// The machine's current boot token (admin `GetBootCredentials`), checking the boot's purpose.
pub async fn boot_token(clients: &Clients, system_id: &str, purpose: &str) -> Result<String> {
    let c = clients
        .machines()
        .get_boot_credentials(ingot_proto::v1::GetBootCredentialsRequest {
            machine: Some(by_id(system_id)),
        })
        .await
        .with_context(|| format!("boot credentials of {system_id}"))?
        .into_inner();
    anyhow::ensure!(
        c.purpose == purpose,
        "machine {system_id} boots for '{}', expected '{purpose}'",
        c.purpose
    );
    anyhow::ensure!(!c.token.is_empty(), "empty boot token for {system_id}");
    Ok(c.token)
}

/// Reports the end of the current boot of `system_id` as its agent would.
pub async fn agent_result(
    clients: &Clients,
    system_id: &str,
    token: &str,
    success: bool,
    reason: &str,
) -> std::result::Result<ingot_proto::v1::ReportResponse, tonic::Status> {
    clients
        .agent()
        .report_result(ingot_proto::v1::ReportResultRequest {
            system_id: system_id.to_string(),
            boot_token: token.to_string(),
            success,
            reason: reason.to_string(),
        })
        .await
        .map(|r| r.into_inner())
}

/// Commissions an existing machine to Ready: commission, read the boot token, report `inv`, report
/// success. Returns the machine as read afterwards (FULL view).
pub async fn commission_to_ready(
    clients: &Clients,
    system_id: &str,
    inv: ingot_proto::v1::Inventory,
) -> Result<ingot_proto::v1::Machine> {
    use ingot_proto::v1::{CommissionRequest, MachineStatus, ReportInventoryRequest};
    let m = clients
        .machines()
        .commission(CommissionRequest {
            machine: Some(by_id(system_id)),
            ..Default::default()
        })
        .await
        .with_context(|| format!("commission {system_id}"))?
        .into_inner();
    anyhow::ensure!(
        m.status == MachineStatus::Commissioning as i32,
        "after commission: {:?}",
        m.status()
    );
    let token = boot_token(clients, system_id, "commissioning").await?;
    clients
        .agent()
        .report_inventory(ReportInventoryRequest {
            system_id: system_id.to_string(),
            boot_token: token.clone(),
            inventory: Some(inv),
        })
        .await
        .with_context(|| format!("report inventory of {system_id}"))?;
    let r = agent_result(clients, system_id, &token, true, "")
        .await
        .with_context(|| format!("report result of {system_id}"))?;
    anyhow::ensure!(
        r.status == MachineStatus::Ready as i32,
        "after commissioning result: {:?}",
        r.status()
    );
    get(clients, system_id).await
}

/// Creates the machine `req` describes and commissions it to Ready with `inv`.
pub async fn ready_machine_from(
    clients: &Clients,
    req: CreateMachineRequest,
    inv: ingot_proto::v1::Inventory,
) -> Result<ingot_proto::v1::Machine> {
    let m = clients
        .machines()
        .create_machine(req)
        .await
        .context("create machine")?
        .into_inner();
    anyhow::ensure!(
        m.status == ingot_proto::v1::MachineStatus::New as i32,
        "a machine created by API starts New, not {:?}",
        m.status()
    );
    commission_to_ready(clients, &m.system_id, inv).await
}

/// Creates machine [`machine`]`(seed, i)` and commissions it to Ready with `inv`: create → commission →
/// boot credentials → report inventory → report success.
pub async fn ready_machine(
    clients: &Clients,
    seed: u16,
    i: u32,
    inv: ingot_proto::v1::Inventory,
) -> Result<ingot_proto::v1::Machine> {
    ready_machine_from(clients, machine(seed, i), inv).await
}

/// Reads one machine by system id (FULL view, linearizable).
pub async fn get(clients: &Clients, system_id: &str) -> Result<ingot_proto::v1::Machine> {
    Ok(clients
        .machines()
        .get_machine(ingot_proto::v1::GetMachineRequest {
            key: Some(ingot_proto::v1::get_machine_request::Key::SystemId(
                system_id.to_string(),
            )),
            ..Default::default()
        })
        .await
        .with_context(|| format!("get machine {system_id}"))?
        .into_inner())
}

/// Polls `system_id` every 50 ms until its status is `want`, for at most `within`. Returns the machine
/// and how long it took.
pub async fn wait_status(
    clients: &Clients,
    system_id: &str,
    want: ingot_proto::v1::MachineStatus,
    within: Duration,
) -> Result<(ingot_proto::v1::Machine, Duration)> {
    let t0 = std::time::Instant::now();
    let mut last = None;
    while t0.elapsed() < within {
        let m = get(clients, system_id).await?;
        if m.status == want as i32 {
            return Ok((m, t0.elapsed()));
        }
        last = Some(m.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("machine {system_id} is still {last:?}, not {want:?}, after {within:?}")
}

/// Creates a user with role USER and an API token for it, and returns clients acting as that user. Waits
/// (at most 5 s) until every region of `clients` accepts the new token, since tokens are checked against
/// each region's local state.
pub async fn user_clients(clients: &Clients, name: &str) -> Result<Clients> {
    Ok(user_token(clients, name).await?.0)
}

/// [`user_clients`], also returning the token's secret (for callers that build their own channels).
pub async fn user_token(clients: &Clients, name: &str) -> Result<(Clients, String)> {
    use ingot_proto::v1::{CreateTokenRequest, CreateUserRequest, Role, WhoAmIRequest};
    clients
        .users()
        .create_user(CreateUserRequest {
            name: name.to_string(),
            role: Role::User as i32,
        })
        .await
        .with_context(|| format!("create user {name}"))?;
    let secret = clients
        .users()
        .create_token(CreateTokenRequest {
            user: name.to_string(),
            description: "test".into(),
            ttl_seconds: 0,
        })
        .await
        .with_context(|| format!("create token for {name}"))?
        .into_inner()
        .secret;
    let as_user = clients.with_token(&secret)?;
    for ep in &clients.config().endpoints {
        let one = as_user.channel_to(ep)?;
        let t0 = std::time::Instant::now();
        loop {
            match one.users().who_am_i(WhoAmIRequest {}).await {
                Ok(u) => {
                    let u = u.into_inner();
                    anyhow::ensure!(u.name == name, "token of {name} acts as {}", u.name);
                    break;
                }
                Err(e) if t0.elapsed() > Duration::from_secs(5) => {
                    anyhow::bail!("{ep} still refuses the token of {name}: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
    Ok((as_user, secret))
}

/// Every event matching `req` (its page token and size are managed here), newest first, walking pages of
/// `page_size`; at most `max_pages` pages.
pub async fn all_events(
    clients: &Clients,
    mut req: ingot_proto::v1::ListEventsRequest,
    page_size: u32,
    max_pages: usize,
) -> Result<Vec<ingot_proto::v1::Event>> {
    let mut out = Vec::new();
    req.page_size = page_size;
    req.page_token = String::new();
    for _ in 0..max_pages {
        let r = clients
            .events()
            .list_events(req.clone())
            .await
            .context("list events")?
            .into_inner();
        out.extend(r.events);
        if r.next_page_token.is_empty() {
            return Ok(out);
        }
        req.page_token = r.next_page_token;
    }
    anyhow::bail!("more than {max_pages} pages of events")
}

// ---------------------------------------------------------------------------------------------------------
// Rack helpers: rack controllers (`ingot-rack` processes started by `LocalCluster::add_rack`), their
// sessions as the API shows them, the simulated BMC's state files, and raw mutual-TLS clients.
// ---------------------------------------------------------------------------------------------------------

/// `ingot.v1.RackService` over `clients`' channel, sending its bearer token.
pub fn rack_api(clients: &Clients) -> ingot_client::RackClient {
    clients.racks()
}

/// Every rack as `clients` sees it (stale: the serving region's applied state, answered without a leader).
pub async fn list_racks(clients: &Clients, stale: bool) -> Result<Vec<ingot_proto::v1::Rack>> {
    Ok(rack_api(clients)
        .list_racks(ingot_proto::v1::ListRacksRequest {
            consistency: if stale {
                ReadConsistency::Stale as i32
            } else {
                ReadConsistency::Linearizable as i32
            },
        })
        .await
        .context("list racks")?
        .into_inner()
        .racks)
}

/// Rack `name` as `clients` sees it (stale read); `None` if absent or the call failed.
pub async fn rack_status(clients: &Clients, name: &str) -> Option<ingot_proto::v1::Rack> {
    list_racks(clients, true)
        .await
        .ok()?
        .into_iter()
        .find(|r| r.name == name)
}

/// Polls (every 50 ms, at most `within`) until every rack in `names` is connected, as `clients` sees it.
pub async fn wait_racks_connected(
    clients: &Clients,
    names: &[&str],
    within: Duration,
) -> Result<()> {
    let t0 = std::time::Instant::now();
    let mut last = Vec::new();
    while t0.elapsed() < within {
        if let Ok(rs) = list_racks(clients, true).await {
            if names
                .iter()
                .all(|n| rs.iter().any(|r| r.name == *n && r.connected))
            {
                return Ok(());
            }
            last = rs;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen: Vec<String> = last
        .iter()
        .map(|r| {
            format!(
                "{} connected={} region={}",
                r.name, r.connected, r.region_id
            )
        })
        .collect();
    anyhow::bail!("racks {names:?} not all connected after {within:?}: {seen:?}")
}

/// A create request for a machine with the simulated power driver, its BMC state kept in `state_dir`,
/// in `zone`, with extra driver parameters (e.g. `delay_ms`). MAC and hostname as [`machine`].
pub fn sim_machine(
    seed: u16,
    i: u32,
    zone: &str,
    state_dir: &std::path::Path,
    extra: &[(&str, &str)],
) -> CreateMachineRequest {
    let mut params: std::collections::HashMap<String, String> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    params.insert("state_dir".into(), state_dir.display().to_string());
    CreateMachineRequest {
        zone: zone.to_string(),
        power: Some(ingot_proto::v1::PowerParameters {
            driver: "sim".into(),
            params,
        }),
        ..machine(seed, i)
    }
}

/// The simulated BMC's state file of `system_id` under `state_dir` (`Value::Null` when it does not exist).
pub fn sim_state(state_dir: &std::path::Path, system_id: &str) -> Result<serde_json::Value> {
    let p = state_dir.join(format!("{system_id}.json"));
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("parsing {}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(serde_json::Value::Null),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// The command ids of every op the simulated BMC of `system_id` performed, oldest first.
pub fn sim_op_ids(state_dir: &std::path::Path, system_id: &str) -> Result<Vec<u64>> {
    let v = sim_state(state_dir, system_id)?;
    Ok(v.get("ops")
        .and_then(|o| o.as_array())
        .map(|ops| {
            ops.iter()
                .filter_map(|op| op.get("id").and_then(|i| i.as_u64()))
                .collect()
        })
        .unwrap_or_default())
}

/// How many times the simulated BMC of `system_id` executed command `id` (1 = exactly once).
pub fn sim_op_count(state_dir: &std::path::Path, system_id: &str, id: u64) -> Result<usize> {
    Ok(sim_op_ids(state_dir, system_id)?
        .into_iter()
        .filter(|x| *x == id)
        .count())
}

/// The rack owning each machine's BMC (`system_id` → rack name, empty when none), one stale list.
pub async fn bmc_owners(clients: &Clients) -> Result<std::collections::BTreeMap<String, String>> {
    let r = clients
        .machines()
        .list_machines(ListMachinesRequest {
            page_size: 5000,
            consistency: ReadConsistency::Stale as i32,
            ..Default::default()
        })
        .await
        .context("list machines")?
        .into_inner();
    Ok(r.machines
        .into_iter()
        .map(|m| (m.system_id, m.rack))
        .collect())
}

/// Polls [`bmc_owners`] every 50 ms (at most `within`) until `pred` holds; returns the owners and the
/// time it took.
pub async fn wait_owners(
    clients: &Clients,
    within: Duration,
    pred: impl Fn(&std::collections::BTreeMap<String, String>) -> bool,
) -> Result<(std::collections::BTreeMap<String, String>, Duration)> {
    let t0 = std::time::Instant::now();
    let mut last = Default::default();
    while t0.elapsed() < within {
        if let Ok(o) = bmc_owners(clients).await {
            if pred(&o) {
                return Ok((o, t0.elapsed()));
            }
            last = o;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("BMC owners not as expected after {within:?}: {last:?}")
}

/// `MachineService.Power` on `system_id`, waiting up to `wait_s` for the result.
pub async fn power(
    clients: &Clients,
    system_id: &str,
    action: &str,
    wait_s: u32,
) -> std::result::Result<ingot_proto::v1::PowerCommand, tonic::Status> {
    clients
        .machines()
        .power(ingot_proto::v1::PowerRequest {
            machine: Some(by_id(system_id)),
            action: action.to_string(),
            wait_seconds: wait_s,
        })
        .await
        .map(|r| r.into_inner())
}

/// Client TLS for the cluster listener: trusts `ca_pem`, presents `cert_pem`/`key_pem` when given.
pub fn cluster_tls(
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> tonic::transport::ClientTlsConfig {
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
        .domain_name(ingot_common::pki::REGION_SERVER_NAME);
    match identity {
        Some((cert, key)) => tls.identity(tonic::transport::Identity::from_pem(cert, key)),
        None => tls,
    }
}

/// A rack's certificate and key (`<dir>/tls/rack.crt`, `rack.key`) as PEM text.
pub fn rack_cert(rack: &ingot_launch::LocalRack) -> Result<(String, String)> {
    let read = |f: &str| {
        let p = rack.dir.join("tls").join(f);
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    };
    Ok((read("rack.crt")?, read("rack.key")?))
}

/// Opens a rack session on the cluster listener `addr` (host:port) with `tls`: says Hello and waits (at
/// most 5 s) for the first answer. Returns the Welcome, or the status the region (or the handshake,
/// mapped to UNAVAILABLE with the transport error's text) refused with. The session ends when it returns.
pub async fn try_rack_session(
    addr: &str,
    tls: tonic::transport::ClientTlsConfig,
) -> std::result::Result<ingot_proto::rack::v1::Welcome, tonic::Status> {
    use ingot_proto::rack::v1::{rack_message, region_message, Hello, RackMessage};
    let chan = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
        .tls_config(tls)
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect: {}", error_chain(&e))))?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(RackMessage {
        msg: Some(rack_message::Msg::Hello(Hello {
            version: "test".into(),
            services: vec!["power".into()],
            capacity: 1,
            drivers: vec!["sim".into()],
        })),
    })
    .await
    .map_err(|_| tonic::Status::internal("outgoing stream closed"))?;
    let mut client =
        ingot_proto::rack::v1::rack_session_service_client::RackSessionServiceClient::new(chan);
    let call = async {
        let mut inbound = client
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        match inbound.message().await? {
            Some(m) => match m.msg {
                Some(region_message::Msg::Welcome(w)) => Ok(w),
                other => Err(tonic::Status::internal(format!(
                    "first message is not Welcome: {other:?}"
                ))),
            },
            None => Err(tonic::Status::internal("stream ended before Welcome")),
        }
    };
    let r = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer within 5 s")));
    drop(tx);
    r
}

/// An error and its sources, joined with ": " (transport errors hide the cause in their sources).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `s` without ANSI colour sequences (`ESC [ ... letter`), which tracing writes even into log files.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip the CSI sequence up to and including its final letter.
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The lines of a process log containing `needle`, without colour sequences.
pub fn log_lines(path: &std::path::Path, needle: &str) -> Vec<String> {
    strip_ansi(&std::fs::read_to_string(path).unwrap_or_default())
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Prints every rack's log tail if the test panics while this guard is alive (the region logs are printed
/// by [`TestCluster`]'s own drop). Declare it after the [`TestCluster`] so it drops first.
pub struct RackLogsOnPanic<'a>(pub &'a LocalCluster);

impl Drop for RackLogsOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for r in self.0.racks() {
                eprintln!(
                    "--- rack {} (zone {}, pid {}) log tail: {}\n{}",
                    r.name,
                    r.zone,
                    r.pid,
                    r.log.display(),
                    log_tail(&r.log)
                );
            }
        }
    }
}

/// `ingot --profile <cluster env> ARGS`, failing the test with its output if it fails.
pub fn ingot(tc: &TestCluster, args: &[&str]) -> String {
    let bin = ingot_launch::resolve_bin_dir(None).unwrap().join("ingot");
    let out = std::process::Command::new(bin)
        .arg("--profile")
        .arg(tc.cluster.env_path())
        .args(args)
        .output()
        .expect("run ingot");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ingot {args:?} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// A MAC written without separators, lowercase (to compare however a tool prints it).
pub fn norm_mac(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_hexdigit())
        .collect::<String>()
        .to_lowercase()
}

/// The statuses of the machines with MAC `mac` (any notation), as the API lists them.
pub async fn machines_with_mac(tc: &TestCluster, mac: &str) -> Vec<(String, i32)> {
    let want = norm_mac(mac);
    let r = tc
        .clients()
        .machines()
        .list_machines(ingot_proto::v1::ListMachinesRequest {
            page_size: 5000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    r.machines
        .into_iter()
        .filter(|m| m.macs.iter().any(|x| norm_mac(x) == want))
        .map(|m| (m.system_id, m.status))
        .collect()
}

/// Polls (every 200 ms, at most `limit`) until a machine with `mac` exists and is New.
pub async fn wait_new_machine(tc: &TestCluster, mac: &str, limit: Duration) -> String {
    let t0 = std::time::Instant::now();
    loop {
        let ms = machines_with_mac(tc, mac).await;
        if let Some((id, _)) = ms
            .iter()
            .find(|(_, s)| *s == ingot_proto::v1::MachineStatus::New as i32)
        {
            assert_eq!(ms.len(), 1, "MAC {mac} enlisted more than once: {ms:?}");
            return id.clone();
        }
        assert!(
            t0.elapsed() < limit,
            "no New machine with MAC {mac} after {limit:?} (machines with it: {ms:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
