//! `ingot-region`: create a cluster (`init`), join one (`join`), or restart a region (`run`).
//! See docs/region-cli-contract.md for the contract tools rely on.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use ingot_common::pki::{self, ClusterCa, Identity as PkiIdentity};
use ingot_common::{now_ms, secret, RegionInfo};
use ingot_proto::raft::v1::raft_service_client::RaftServiceClient;
use ingot_proto::raft::v1::JoinRequest;
use ingot_proto::v1::cluster_service_client::ClusterServiceClient;
use ingot_proto::v1::JoinRegionRequest;
use ingot_region::command::{op, Command as RaftCommand, Internal, Op, Principal};
use ingot_region::datadir::{DataDir, RegionIdentity, RunInfo};
use ingot_region::raft::RaftTuning;
use ingot_region::server::{start, Running, TlsFiles};
use openraft::BasicNode;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

#[derive(Parser)]
#[command(
    name = "ingot-region",
    version,
    about = "Ingot region controller: Raft-replicated state and the gRPC API"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a new cluster in an empty data directory and serve it.
    Init {
        #[command(flatten)]
        common: Common,
    },
    /// Join an existing cluster with a join token and serve.
    Join {
        #[command(flatten)]
        common: Common,
        /// API URL(s) of existing regions, e.g. https://10.0.0.1:5240 (comma-separated or repeated).
        #[arg(long = "region", value_delimiter = ',', required = true)]
        regions: Vec<String>,
        /// Join token from `ingot cluster join-token`.
        #[arg(long, env = "INGOT_JOIN_TOKEN")]
        token: String,
        /// The cluster CA certificate (tls/ca.crt of any region), to verify the region we join through.
        #[arg(long)]
        ca: PathBuf,
    },
    /// Restart a region from its data directory.
    Run {
        /// Data directory of the region.
        #[arg(long)]
        data_dir: PathBuf,
        /// Override the saved API listen address.
        #[arg(long)]
        listen_api: Option<String>,
        /// Override the saved Raft listen address.
        #[arg(long)]
        listen_raft: Option<String>,
        #[command(flatten)]
        tuning: Tuning,
    },
}

#[derive(Args)]
struct Common {
    /// Data directory (must not hold a region yet).
    #[arg(long)]
    data_dir: PathBuf,
    /// Region name, unique in the cluster (a DNS label).
    #[arg(long)]
    name: String,
    /// Client API listen address (port 0: pick a free port).
    #[arg(long, default_value = "0.0.0.0:5240")]
    listen_api: String,
    /// Raft listen address (port 0: pick a free port).
    #[arg(long, default_value = "0.0.0.0:5241")]
    listen_raft: String,
    /// API address other parties use to reach this region (default: the listen address).
    #[arg(long)]
    advertise_api: Option<String>,
    /// Raft address the other regions use to reach this region (default: the listen address).
    #[arg(long)]
    advertise_raft: Option<String>,
    #[command(flatten)]
    tuning: Tuning,
}

#[derive(Args, Clone)]
struct Tuning {
    /// Leader heartbeat period (ms).
    #[arg(long, default_value_t = 50)]
    heartbeat_ms: u64,
    /// Minimum election timeout (ms); the maximum, 1.5 times this, is the leader lease (voters refuse votes
    /// that soon after hearing from a leader). A follower campaigns after the lease plus a heartbeat plus a
    /// random delay up to half this, drawn anew for each campaign: failover takes about 2 x this.
    #[arg(long, default_value_t = 300)]
    election_timeout_ms: u64,
    /// Build a snapshot every N applied log entries.
    #[arg(long, default_value_t = 10_000)]
    snapshot_logs: u64,
    /// Log entries kept behind a snapshot.
    #[arg(long, default_value_t = 1_000)]
    keep_logs: u64,
    /// A rack without a session heartbeat for this long (ms) is dead: the leader moves its BMCs to other
    /// racks (same zone first).
    #[arg(long, default_value_t = 10_000)]
    rack_grace_ms: u64,
}

impl Tuning {
    fn raft(&self) -> RaftTuning {
        RaftTuning {
            heartbeat_ms: self.heartbeat_ms,
            election_timeout_ms: self.election_timeout_ms,
            snapshot_logs: self.snapshot_logs,
            keep_logs: self.keep_logs,
            rack_grace_ms: self.rack_grace_ms,
        }
    }
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn,sled=warn,h2=warn,tower=warn".into()),
        )
        .with_writer(std::io::stderr)
        // Plain text when stderr is a log file, so the file greps cleanly.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(real_main()) {
        eprintln!("ingot-region: {e:#}");
        std::process::exit(1);
    }
}

async fn real_main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Init { common } => init(common).await,
        Cmd::Join {
            common,
            regions,
            token,
            ca,
        } => join(common, regions, token, ca).await,
        Cmd::Run {
            data_dir,
            listen_api,
            listen_raft,
            tuning,
        } => run(data_dir, listen_api, listen_raft, tuning).await,
    }
}

async fn bind(addr: &str, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen for {what} on {addr} (port in use? use another --listen-{what})")
    })
}

fn advertise(l: &TcpListener, explicit: &Option<String>) -> Result<String> {
    if let Some(a) = explicit {
        return Ok(a.clone());
    }
    let a = l.local_addr()?;
    if a.ip().is_unspecified() {
        bail!("listening on {a}: pass --advertise-api/--advertise-raft with an address other regions can reach");
    }
    Ok(a.to_string())
}

fn publish(
    dd: &DataDir,
    node_id: u64,
    api: &TcpListener,
    raft: &TcpListener,
    ready: bool,
) -> Result<()> {
    dd.write_run(&RunInfo {
        pid: std::process::id(),
        node_id,
        api_addr: api.local_addr()?.to_string(),
        raft_addr: raft.local_addr()?.to_string(),
        ready,
    })?;
    Ok(())
}

fn publish_addrs(dd: &DataDir, node_id: u64, api: &str, raft: &str, ready: bool) -> Result<()> {
    dd.write_run(&RunInfo {
        pid: std::process::id(),
        node_id,
        api_addr: api.into(),
        raft_addr: raft.into(),
        ready,
    })?;
    Ok(())
}

async fn init(c: Common) -> Result<()> {
    let dd = DataDir::new(&c.data_dir);
    dd.ensure_fresh()?;
    let api = bind(&c.listen_api, "api").await?;
    let raft = bind(&c.listen_raft, "raft").await?;
    let api_addr = advertise(&api, &c.advertise_api)?;
    let raft_addr = advertise(&raft, &c.advertise_raft)?;
    ingot_common::validate::dns_label("--name", &c.name).map_err(|e| anyhow::anyhow!(e.message))?;
    publish(&dd, 0, &api, &raft, false)?;

    let cluster_id = hex_id();
    let ca = ClusterCa::generate(&cluster_id)?;
    let (cert, key) = ca.issue(&PkiIdentity::region(1, &[&raft_addr, &api_addr]))?;
    dd.write(&dd.ca_path(), ca.cert_pem.as_bytes(), false)?;
    dd.write(&dd.cert_path(), cert.as_bytes(), false)?;
    dd.write(&dd.key_path(), key.as_bytes(), true)?;
    let admin_token = secret::generate("ingot_");
    dd.write(
        &dd.admin_token_path(),
        format!("{admin_token}\n").as_bytes(),
        true,
    )?;
    let first = RegionInfo {
        node_id: 1,
        name: c.name.clone(),
        raft_addr: raft_addr.clone(),
        api_addr: api_addr.clone(),
        joined_ms: now_ms(),
    };
    let bootstrap = RaftCommand {
        request_id: secret::generate("boot_"),
        ts_ms: now_ms(),
        actor: "init".into(),
        op: Op::Bootstrap(op::Bootstrap {
            cluster_id: cluster_id.clone(),
            ca,
            admin_token_hash: secret::hash(&admin_token),
            first_region: first,
        }),
        principal: Some(Principal::Internal(Internal::Init)),
    };
    dd.write(&dd.bootstrap_path(), &serde_json::to_vec(&bootstrap)?, true)?;
    let identity = RegionIdentity {
        cluster_id: cluster_id.clone(),
        node_id: 1,
        name: c.name.clone(),
        api_addr: api_addr.clone(),
        raft_addr: raft_addr.clone(),
        listen_api: api.local_addr()?.to_string(),
        listen_raft: raft.local_addr()?.to_string(),
        joined: true,
        join_via: vec![],
    };
    dd.write_identity(&identity)?;
    let tls = TlsFiles::load(&dd)?;
    dd.secure()?;
    let running = start(&dd, &identity, &tls, api, raft, &c.tuning.raft()).await?;
    finish_bootstrap(&dd, &running, &identity).await?;
    tracing::info!(cluster_id, api = %api_addr, raft = %raft_addr, "cluster created; admin token in {}", dd.admin_token_path().display());
    publish_addrs(&dd, 1, &identity.listen_api, &identity.listen_raft, true)?;
    serve_until_signal(&dd, running).await
}

/// Initializes the one-node Raft cluster (if not yet) and applies the pending bootstrap command. Runs at
/// init, and again at `run` if init was interrupted before the bootstrap was applied.
async fn finish_bootstrap(
    dd: &DataDir,
    running: &Running,
    identity: &RegionIdentity,
) -> Result<()> {
    let path = dd.bootstrap_path();
    if !path.exists() {
        return Ok(());
    }
    let cmd: RaftCommand =
        serde_json::from_slice(&std::fs::read(&path)?).context("reading bootstrap.json")?;
    let raft = &running.region.raft;
    if !raft.is_initialized().await? {
        let members = BTreeMap::from([(identity.node_id, BasicNode::new(&identity.raft_addr))]);
        raft.initialize(members)
            .await
            .context("initializing the one-region Raft cluster")?;
    }
    match running.region.write(cmd).await {
        Ok(_) => {}
        Err(e) if e.message.contains("already bootstrapped") => {}
        Err(e) => bail!("bootstrapping the cluster state failed: {}", e.message),
    }
    std::fs::remove_file(&path)?;
    Ok(())
}

async fn join(c: Common, regions: Vec<String>, token: String, ca_file: PathBuf) -> Result<()> {
    let dd = DataDir::new(&c.data_dir);
    dd.ensure_fresh()?;
    ingot_common::validate::dns_label("--name", &c.name).map_err(|e| anyhow::anyhow!(e.message))?;
    let api = bind(&c.listen_api, "api").await?;
    let raft = bind(&c.listen_raft, "raft").await?;
    let api_addr = advertise(&api, &c.advertise_api)?;
    let raft_addr = advertise(&raft, &c.advertise_raft)?;
    publish(&dd, 0, &api, &raft, false)?;
    let ca_pem = std::fs::read_to_string(&ca_file)
        .with_context(|| format!("reading the CA file {}", ca_file.display()))?;

    let (key_pem, csr_pem) = pki::new_csr(&format!("region-{}", c.name))?;
    let req = JoinRegionRequest {
        token,
        name: c.name.clone(),
        csr_pem,
        raft_addr: raft_addr.clone(),
        api_addr: api_addr.clone(),
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca_pem))
        .domain_name(pki::REGION_SERVER_NAME);
    let mut last = String::new();
    let mut admitted = None;
    for url in &regions {
        let ch = match Endpoint::from_shared(url.clone())?
            .tls_config(tls.clone())?
            .connect_timeout(Duration::from_secs(3))
            .connect()
            .await
        {
            Ok(ch) => ch,
            Err(e) => {
                last = format!("{url}: {e}");
                continue;
            }
        };
        match ClusterServiceClient::new(ch).join_region(req.clone()).await {
            Ok(r) => {
                admitted = Some(r.into_inner());
                break;
            }
            Err(s) if matches!(s.code(), tonic::Code::Unavailable) => {
                last = format!("{url}: {}", s.message())
            }
            Err(s) => bail!("the cluster refused to admit this region: {}", s.message()),
        }
    }
    let Some(a) = admitted else {
        bail!("no region could be reached to join through ({last})")
    };
    dd.write(&dd.ca_path(), a.ca_pem.as_bytes(), false)?;
    dd.write(&dd.cert_path(), a.cert_pem.as_bytes(), false)?;
    dd.write(&dd.key_path(), key_pem.as_bytes(), true)?;
    let mut identity = RegionIdentity {
        cluster_id: a.cluster_id.clone(),
        node_id: a.node_id,
        name: c.name.clone(),
        api_addr,
        raft_addr,
        listen_api: api.local_addr()?.to_string(),
        listen_raft: raft.local_addr()?.to_string(),
        joined: false,
        join_via: a.raft_addrs.clone(),
    };
    dd.write_identity(&identity)?;
    publish(&dd, a.node_id, &api, &raft, false)?;
    let tlsf = TlsFiles::load(&dd)?;
    dd.secure()?;
    let running = start(&dd, &identity, &tlsf, api, raft, &c.tuning.raft()).await?;
    tracing::info!(node_id = a.node_id, cluster_id = %a.cluster_id, "admitted; asking to become a voter");
    become_member(&tlsf, &a.raft_addrs, a.node_id).await?;
    identity.joined = true;
    dd.write_identity(&identity)?;
    publish_addrs(
        &dd,
        a.node_id,
        &identity.listen_api,
        &identity.listen_raft,
        true,
    )?;
    tracing::info!(node_id = a.node_id, "joined the cluster as a voter");
    serve_until_signal(&dd, running).await
}

/// Asks the cluster (through any member's Raft listener, with this region's certificate) to add this
/// region as learner and promote it to voter once caught up. Retries for up to 10 minutes.
async fn become_member(tls: &TlsFiles, raft_addrs: &[String], node_id: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last = String::from("no member address known");
    loop {
        for addr in raft_addrs {
            let ch = ingot_region::raft::network::channel(addr, &tls.peer_client())?;
            let mut c = RaftServiceClient::new(ch);
            match tokio::time::timeout(Duration::from_secs(300), c.join(JoinRequest { node_id }))
                .await
            {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(s)) => last = format!("{addr}: {}", s.message()),
                Err(_) => last = format!("{addr}: no answer"),
            }
        }
        if Instant::now() > deadline {
            bail!("could not become a member within 10 minutes: {last}");
        }
        tracing::warn!("join not complete yet ({last}); retrying");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn run(
    data_dir: PathBuf,
    listen_api: Option<String>,
    listen_raft: Option<String>,
    tuning: Tuning,
) -> Result<()> {
    let dd = DataDir::new(&data_dir);
    let mut identity = dd.read_identity()?;
    if let Ok(why) = std::fs::read_to_string(dd.removed_path()) {
        bail!(
            "this region was removed from the cluster ({}); its state is stale. Delete {} and join again with a new token (`ingot cluster join-token`, `ingot-region join`)",
            why.trim(),
            data_dir.display()
        );
    }
    let api = bind(listen_api.as_deref().unwrap_or(&identity.listen_api), "api").await?;
    let raft = bind(
        listen_raft.as_deref().unwrap_or(&identity.listen_raft),
        "raft",
    )
    .await?;
    publish(&dd, identity.node_id, &api, &raft, false)?;
    let (api_local, raft_local) = (
        api.local_addr()?.to_string(),
        raft.local_addr()?.to_string(),
    );
    let tls = TlsFiles::load(&dd)?;
    dd.secure()?;
    let running = start(&dd, &identity, &tls, api, raft, &tuning.raft()).await?;
    finish_bootstrap(&dd, &running, &identity).await?;
    if !identity.joined {
        let addrs: Vec<String> = {
            let st = ingot_region::locks::read(&running.region.state);
            st.data
                .regions
                .values()
                .filter(|r| r.node_id != identity.node_id)
                .map(|r| r.raft_addr.clone())
                .collect()
        };
        become_member(&tls, &addrs, identity.node_id).await?;
        identity.joined = true;
        dd.write_identity(&identity)?;
    }
    publish_addrs(&dd, identity.node_id, &api_local, &raft_local, true)?;
    tracing::info!(node_id = identity.node_id, api = %api_local, raft = %raft_local, "region running");
    serve_until_signal(&dd, running).await
}

async fn serve_until_signal(dd: &DataDir, running: Running) -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut removed = running.region.removed.subscribe();
    let removed_reason = tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        _ = term.recv() => None,
        r = removed.wait_for(|r| r.is_some()) => r.ok().and_then(|v| v.clone()),
    };
    if let Some(why) = removed_reason {
        dd.write(&dd.removed_path(), why.as_bytes(), false)?;
        running.stop().await;
        tracing::warn!("stopped: this region was removed from the cluster ({why})");
        return Ok(());
    }
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}

fn hex_id() -> String {
    let b: [u8; 8] = rand::random();
    hex::encode(b)
}
