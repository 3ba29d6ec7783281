//! `ingot-rack`: enroll a rack controller with a cluster (`register`) and run it (`run`).
//! The contract tools and tests rely on is in rack/README.md.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ingot_rack::boot::cache::{CacheSettings, ImageCache};
use ingot_rack::boot::dhcp::engine::{BootFiles, Engine, EngineSettings};
use ingot_rack::boot::dhcp::server::{ListenerConfig, PacketHandler, Server};
use ingot_rack::boot::fetch::RegionFetcher;
use ingot_rack::boot::journal::{self, Journal};
use ingot_rack::boot::service::{BootService, ServiceSettings};
use ingot_rack::config::DataDir;
use ingot_rack::register::{register, RegisterArgs};
use ingot_rack::session::{self, SessionConfig};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "ingot-rack",
    version,
    about = "Ingot rack controller: one mutual-TLS session to a region, failover, exactly-once power commands"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Enroll this rack with the cluster using an enrollment token; writes the data directory.
    Register {
        /// Data directory to create the rack in (must not hold a rack yet).
        #[arg(long)]
        data_dir: PathBuf,
        /// API URL(s) of regions, e.g. https://10.0.0.1:5240 (comma-separated or repeated; tried in order).
        #[arg(long = "region", value_delimiter = ',', required = true)]
        regions: Vec<String>,
        /// Single-use enrollment token created by an admin.
        #[arg(long, env = "INGOT_RACK_TOKEN", hide_env_values = true)]
        token: String,
        /// Rack name: a DNS label unique in the cluster.
        #[arg(long)]
        name: String,
        /// Zone the rack serves (must exist).
        #[arg(long)]
        zone: String,
        /// The cluster CA certificate (tls/ca.crt of any region), to verify the region.
        #[arg(long)]
        ca: PathBuf,
    },
    /// Run the rack from its data directory until SIGINT/SIGTERM.
    Run {
        /// Data directory written by `register`.
        #[arg(long)]
        data_dir: PathBuf,
        /// Heartbeat interval in milliseconds.
        #[arg(long, default_value_t = 500)]
        heartbeat_ms: u64,
        /// Most power commands run at once.
        #[arg(long, default_value_t = 64)]
        capacity: u32,
        /// How often the power monitor reads each owned BMC, in milliseconds (a failing BMC is read less
        /// often: the interval doubles per failure, up to 5 minutes).
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
        poll_interval_ms: u64,
        /// Most BMC reads in flight at once.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
        poll_concurrency: u64,
        /// Consecutive failed reads before the region is told a BMC cannot be read (no flapping on one
        /// lost packet).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
        poll_failures: u32,
        #[command(flatten)]
        boot: BootArgs,
        /// Where the image cache keeps verified blobs (default: <data dir>/cache).
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
        /// Most bytes of blobs the image cache holds; least recently used ones not in use are evicted.
        #[arg(long, default_value_t = ingot_rack::boot::cache::DEFAULT_MAX_BYTES)]
        cache_max_bytes: u64,
    },
}

/// The boot path's flags of `run`: where to serve DHCP and which boot files to name.
#[derive(clap::Args)]
struct BootArgs {
    /// Serve DHCP (ports --dhcp-port and --proxy-dhcp-port) on this interface; repeat for several. The
    /// rack binds only on the interfaces named here; without any it serves no DHCP. Each needs an IPv4
    /// address (the rack's on that boot network).
    #[arg(long = "boot-interface", value_name = "IF")]
    interfaces: Vec<String>,
    /// UDP port of the DHCP server.
    #[arg(long, default_value_t = 67)]
    dhcp_port: u16,
    /// UDP port of the ProxyDHCP service PXE clients ask for boot options.
    #[arg(long, default_value_t = 4011)]
    proxy_dhcp_port: u16,
    /// TCP port of the rack's HTTP boot server (iPXE scripts, kernels, initrds, images), bound on each
    /// --boot-interface's IPv4 address; the DHCP server hands out URLs with this port.
    #[arg(long, default_value_t = 5248)]
    http_port: u16,
    /// TCP port of the rack's agent API (HTTPS with the rack's own certificate: `POST /agent/v1/call`,
    /// the in-band agent's calls relayed to the region), bound on each --boot-interface's IPv4 address;
    /// ramdisk scripts tell the agent `ingot.agent=https://<address>:<port>`.
    #[arg(long, default_value_t = ingot_rack::boot::agent_api::DEFAULT_AGENT_PORT)]
    agent_port: u16,
    /// Boot file (TFTP path) for legacy BIOS PXE clients.
    #[arg(long, default_value = "undionly.kpxe")]
    boot_file_bios: String,
    /// Boot file (TFTP path) for UEFI x86-64 PXE clients.
    #[arg(long, default_value = "snponly.efi")]
    boot_file_uefi: String,
    /// Boot file (TFTP path) for UEFI arm64 PXE clients; without it they are answered with no boot file.
    #[arg(long)]
    boot_file_uefi_arm64: Option<String>,
    /// Serve this directory over TFTP (read-only, nothing outside it) on each --boot-interface's IPv4
    /// address, port --tftp-port: the boot files named above. Bootloader files the region told this rack
    /// about are served from the image cache first, by name. Default: /usr/lib/ipxe when that directory
    /// exists (Debian's `ipxe` package installs the iPXE binaries there), so a rack serves iPXE out of
    /// the box; without it (and without this flag) the rack serves no TFTP.
    #[arg(long, value_name = "DIR")]
    tftp_root: Option<std::path::PathBuf>,
    /// UDP port of the TFTP server.
    #[arg(long, default_value_t = 69)]
    tftp_port: u16,
    /// Serve no TFTP even though /usr/lib/ipxe exists (another TFTP server holds the port).
    #[arg(long, conflicts_with = "tftp_root")]
    no_tftp: bool,
}

/// Where Debian's `ipxe` package installs the iPXE binaries: the TFTP root when --tftp-root is not given.
const DEFAULT_TFTP_ROOT: &str = "/usr/lib/ipxe";

impl BootArgs {
    /// The TFTP root to serve: --tftp-root, else /usr/lib/ipxe if it is a directory; `None`: no TFTP.
    fn tftp_root(&self) -> Option<PathBuf> {
        if self.no_tftp {
            return None;
        }
        self.tftp_root.clone().or_else(|| {
            let d = PathBuf::from(DEFAULT_TFTP_ROOT);
            d.is_dir().then_some(d)
        })
    }
}

/// Binds TFTP on every boot interface (failing at once, naming the interface) and serves the cache's
/// bootloader files and `root` there until shutdown; one set of counters for all of them.
fn start_tftp(
    root: std::path::PathBuf,
    cache: &std::sync::Arc<ImageCache>,
    hook: ingot_rack::boot::tftp::server::TransferHook,
    interfaces: &[String],
    port: u16,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    use ingot_rack::boot::tftp::server::{bind, run, TftpConfig, TftpCounters};
    anyhow::ensure!(
        root.is_dir(),
        "--tftp-root {} is not a directory: create it, or install Debian's ipxe package and use /usr/lib/ipxe",
        root.display()
    );
    let counters = std::sync::Arc::new(TftpCounters::default());
    let mut seen = std::collections::HashSet::new();
    for interface in interfaces {
        if !seen.insert(interface.as_str()) {
            continue;
        }
        let socket = bind(interface, port)?;
        let socket = tokio::net::UdpSocket::from_std(socket)
            .with_context(|| format!("registering the TFTP socket of {interface}"))?;
        tracing::info!(%interface, addr = ?socket.local_addr().ok(), root = %root.display(), "TFTP listening");
        let mut config = TftpConfig::new(&root);
        config.bootloaders = Some(cache.clone());
        config.on_transfer = Some(hook.clone());
        let (counters, stop) = (counters.clone(), shutdown.clone());
        let interface = interface.clone();
        tokio::spawn(async move {
            if let Err(e) = run(socket, config, counters, stop).await {
                tracing::error!(%interface, "TFTP server stopped: {e}");
            }
        });
    }
    Ok(())
}

/// Binds the HTTP boot server on every boot interface's IPv4 address at `port` (failing at once,
/// naming the interface) and serves scripts and the cache's blobs there until shutdown; one server
/// (counters, attribution of downloads) for all of them.
fn start_http(
    service: &std::sync::Arc<BootService>,
    cfg: &SessionConfig,
    args: &BootArgs,
    cache: &std::sync::Arc<ImageCache>,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let (dir, interfaces, port) = (&cfg.dir, &args.interfaces, args.http_port);
    use ingot_rack::boot::http::server::{self, HttpServer, HttpServerParts, HttpSettings};
    let ca_fingerprint = server::ca_fingerprint(&cfg.tls.ca_pem).with_context(|| {
        format!(
            "{} holds no certificate: register the rack again",
            dir.ca_path().display()
        )
    })?;
    let http = HttpServer::new(HttpServerParts {
        intents: service.link().clone(),
        cache: cache.clone(),
        events: service.events().clone(),
        ca_fingerprint,
        agent_port: args.agent_port,
        settings: HttpSettings::default(),
    });
    let mut seen = std::collections::HashSet::new();
    for interface in interfaces {
        if !seen.insert(interface.as_str()) {
            continue;
        }
        let listener = server::bind(interface, port)?;
        tracing::info!(%interface, addr = ?listener.local_addr().ok(), "HTTP boot server listening");
        let (http, stop, interface) = (http.clone(), shutdown.clone(), interface.clone());
        tokio::spawn(async move {
            if let Err(e) = server::run(listener, http, stop).await {
                tracing::error!(%interface, "HTTP boot server stopped: {e}");
            }
        });
    }
    Ok(())
}

/// Binds the agent API on every boot interface's IPv4 address at --agent-port (failing at once, naming
/// the interface) and relays agents' calls to the region through the boot service's link until shutdown;
/// one API (counters, rate limit) for all of them. TLS with the rack's own certificate and key.
fn start_agent_api(
    service: &std::sync::Arc<BootService>,
    cfg: &SessionConfig,
    args: &BootArgs,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    use ingot_rack::boot::agent_api::{self, AgentApi, AgentApiParts, AgentApiSettings};
    let tls = agent_api::server_tls(&cfg.tls).with_context(|| {
        format!(
            "the agent API's TLS identity from {} and {}",
            cfg.dir.cert_path().display(),
            cfg.dir.key_path().display()
        )
    })?;
    let api = AgentApi::new(AgentApiParts {
        link: service.link().clone(),
        events: service.events().clone(),
        tls,
        settings: AgentApiSettings::default(),
    });
    let mut seen = std::collections::HashSet::new();
    for interface in &args.interfaces {
        if !seen.insert(interface.as_str()) {
            continue;
        }
        let listener = agent_api::bind(interface, args.agent_port)?;
        tracing::info!(%interface, addr = ?listener.local_addr().ok(), "agent API listening");
        let (api, stop, interface) = (api.clone(), shutdown.clone(), interface.clone());
        tokio::spawn(async move {
            if let Err(e) = agent_api::run(listener, api, stop).await {
                tracing::error!(%interface, "agent API stopped: {e}");
            }
        });
    }
    Ok(())
}

/// What [`start_boot`] started.
struct BootStarted {
    /// The DHCP boot service.
    service: std::sync::Arc<BootService>,
    /// Whether TFTP serves (announced in `Hello`).
    tftp: bool,
}

/// Binds the DHCP sockets (failing at once, naming the interface, if one cannot be), opens the lease
/// journal and starts the boot service (which hands the region's `CacheWanted` to `cache`), the
/// DHCP server, the HTTP boot server, the agent API, and TFTP when it has a root; `None` when no boot interface is given.
fn start_boot(
    args: BootArgs,
    cfg: &SessionConfig,
    cache: &std::sync::Arc<ImageCache>,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> Result<Option<BootStarted>> {
    let (dir, rack) = (&cfg.dir, cfg.rack.name.as_str());
    if args.interfaces.is_empty() {
        anyhow::ensure!(
            args.tftp_root.is_none(),
            "--tftp-root needs at least one --boot-interface to serve on"
        );
        return Ok(None);
    }
    let server = Server::bind(&ListenerConfig {
        interfaces: args.interfaces.clone(),
        dhcp_port: args.dhcp_port,
        proxy_dhcp_port: args.proxy_dhcp_port,
    })?;
    let journal = Journal::open(&dir.lease_journal(), journal::MAX_ENTRIES)?;
    let engine = Engine::new(EngineSettings {
        boot_files: BootFiles {
            bios: args.boot_file_bios.clone(),
            uefi_x64: args.boot_file_uefi.clone(),
            uefi_arm64: args.boot_file_uefi_arm64.clone(),
        },
        http_port: args.http_port,
        ..EngineSettings::default()
    });
    let service = BootService::start(
        ServiceSettings {
            rack: rack.to_string(),
            ..ServiceSettings::default()
        },
        Box::new(engine),
        journal,
        shutdown.clone(),
    );
    service.attach_cache(cache.clone());
    // TFTP after DHCP's sockets, so a missing interface is reported by DHCP's bind, as before.
    let tftp_root = args.tftp_root();
    match &tftp_root {
        Some(root) => start_tftp(
            root.clone(),
            cache,
            service.tftp_hook(),
            &args.interfaces,
            args.tftp_port,
            shutdown,
        )?,
        None => tracing::info!(
            "no TFTP: --no-tftp, or no --tftp-root and no {DEFAULT_TFTP_ROOT} (install Debian's ipxe package)"
        ),
    }
    start_http(&service, cfg, &args, cache, shutdown)?;
    start_agent_api(&service, cfg, &args, shutdown)?;
    let handler: std::sync::Arc<dyn PacketHandler> = service.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = server.run(handler, stop).await {
            tracing::error!("DHCP server stopped: {e}");
        }
    });
    Ok(Some(BootStarted {
        service,
        tftp: tftp_root.is_some(),
    }))
}

/// Opens the image cache in `dir`, fetching from the regions with the session's identity.
fn start_cache(
    cfg: &SessionConfig,
    dir: PathBuf,
    max_bytes: u64,
) -> Result<std::sync::Arc<ImageCache>> {
    let fetcher = RegionFetcher::new(
        cfg.dir.clone(),
        cfg.client_tls(),
        cfg.rack.cluster_endpoints.clone(),
    );
    let cache = ImageCache::new(
        CacheSettings::new(dir, max_bytes),
        std::sync::Arc::new(fetcher),
    )?;
    Ok(std::sync::Arc::new(cache))
}

/// Raises the soft open-file limit to the hard one: every kept IPMI session and pooled Redfish connection
/// holds a socket, and a rack polls thousands of BMCs (the usual soft limit is 1,024).
fn raise_nofile_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, l) {
            eprintln!(
                "ingot-rack: cannot raise the open-file limit ({e}); polling many BMCs may fail"
            );
        }
    }
}

fn main() {
    // tonic's TLS uses rustls; with only the ring provider compiled in, install it once for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    raise_nofile_limit();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,h2=warn,tower=warn,hyper=warn".into()),
        )
        .with_writer(std::io::stderr)
        // Plain text when stderr is a log file (tools grep it for "session established ...").
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ingot-rack: cannot start the tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(real_main(Cli::parse())) {
        eprintln!("ingot-rack: {e:#}");
        std::process::exit(1);
    }
}

async fn real_main(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Register {
            data_dir,
            regions,
            token,
            name,
            zone,
            ca,
        } => {
            let rack = register(RegisterArgs {
                data_dir: data_dir.clone(),
                regions,
                token,
                name,
                zone,
                ca_file: ca,
            })
            .await?;
            println!(
                "registered rack {} in zone {} ({} regions); start it with: ingot-rack run --data-dir {}",
                rack.name,
                rack.zone,
                rack.cluster_endpoints.len(),
                data_dir.display()
            );
            Ok(())
        }
        Cmd::Run {
            data_dir,
            heartbeat_ms,
            capacity,
            poll_interval_ms,
            poll_concurrency,
            poll_failures,
            boot,
            cache_dir,
            cache_max_bytes,
        } => {
            let mut cfg = SessionConfig::load(
                DataDir::new(&data_dir),
                Duration::from_millis(heartbeat_ms.max(1)),
                capacity,
            )?;
            cfg.monitor = ingot_rack::monitor::MonitorConfig {
                interval: Duration::from_millis(poll_interval_ms),
                concurrency: poll_concurrency as usize,
                failure_threshold: poll_failures,
            };
            cfg.validate()?;
            let (tx, rx) = tokio::sync::watch::channel(false);
            let cache = start_cache(
                &cfg,
                cache_dir.unwrap_or_else(|| data_dir.join("cache")),
                cache_max_bytes,
            )?;
            if let Some(started) = start_boot(boot, &cfg, &cache, &rx)? {
                cfg.boot = Some(started.service);
                cfg.tftp = started.tftp;
            }
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("signal received, stopping");
                let _ = tx.send(true);
            });
            println!(
                "ingot-rack {} running pid {}",
                cfg.rack.name,
                std::process::id()
            );
            std::io::stdout().flush().context("writing to stdout")?;
            session::run(cfg, rx).await?;
            Ok(())
        }
    }
}

/// Resolves on SIGINT or SIGTERM (or never, if no handler can be installed).
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM ({e}); only SIGINT stops the rack cleanly");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
