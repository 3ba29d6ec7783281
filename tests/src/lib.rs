//! Whole-stack test support: every test starts real `ingot-region` processes on port 0 (through
//! [`ingot_client::local::LocalCluster`]) in its own directory. When a test fails, its directory — data
//! directories and every region's log — is kept and the log tails are printed; when it passes, the
//! directory is removed.
//!
//! Scenario files live in `tests/tests/`: `t10_cluster` (replication, failover, snapshots, restarts),
//! `t11_crash` (SIGKILL during concurrent writes), `t12_security` (TLS and tokens, data-dir checks),
//! `t13_peers` (grpcurl and Python grpcio), `t14_cli` (the `ingot` binary and `ingot dev up`).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion

use anyhow::{Context, Result};
use ingot_client::local::{log_tail, LocalCluster, LocalClusterOptions};
use ingot_client::Clients;
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

/// Region flags that make tests fast without changing behaviour: shorter election timeouts.
pub const FAST: &[&str] = &[];

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
    /// Starts `regions` regions with [`FAST`] timing plus `extra` flags.
    pub async fn start(name: &str, regions: usize, extra: &[&str]) -> Result<TestCluster> {
        let dir = test_dir(name);
        let _ = std::fs::remove_dir_all(&dir);
        let mut opts = LocalClusterOptions::new(&dir, regions);
        opts.region_args = FAST
            .iter()
            .chain(extra.iter())
            .map(|s| s.to_string())
            .collect();
        let cluster = LocalCluster::start(opts)
            .await
            .with_context(|| format!("starting {regions} regions in {}", dir.display()))?;
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
    Ok(as_user)
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
