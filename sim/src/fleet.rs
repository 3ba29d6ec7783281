//! Starting and stopping a fleet: N machines, each BMC on its own loopback ports (Redfish over TCP, IPMI over
//! UDP), plus the control API.

use crate::agent::{Agent, GrpcRegion, RegionApi};
use crate::config::FleetConfig;
use crate::control::{self, Registry};
use crate::hardware;
use crate::machine::{SimMachine, SimMachineInfo};
use crate::SimError;
use axum::serve::ListenerExt;
use rand::distributions::{Alphanumeric, DistString};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A running simulated fleet. Dropping it stops every listener (as does [`Fleet::shutdown`]).
#[derive(Debug)]
pub struct Fleet {
    registry: Arc<Registry>,
    infos: Vec<SimMachineInfo>,
    control_url: String,
    tasks: JoinSet<()>,
    agent: bool,
    stopping: watch::Sender<bool>,
}

/// How long [`Fleet::shutdown`] lets requests in flight finish before cutting them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

impl Fleet {
    /// Starts the fleet `cfg` describes: validates it, binds every BMC on `127.0.0.1:0` (a TCP port for
    /// Redfish and, with `cfg.ipmi`, a UDP port for IPMI) and the control API, and serves them on the current Tokio runtime. With `cfg.agent`, machines that network-boot
    /// report to the regions it names (the CA is read and the channel prepared here; regions need not be
    /// up yet).
    pub async fn start(cfg: FleetConfig) -> Result<Fleet, SimError> {
        cfg.validate()?;
        let region = match &cfg.agent {
            Some(a) => Some(Arc::new(GrpcRegion::connect(a)?) as Arc<dyn RegionApi>),
            None => None,
        };
        Fleet::start_with_region(cfg, region).await
    }

    /// Like [`Fleet::start`], but the agent reports through `region` (a fake in tests, or clients the
    /// caller already has) with `cfg.agent`'s timings (defaults if `None`); `region: None` turns the agent
    /// off whatever `cfg.agent` says.
    pub async fn start_with_region(
        cfg: FleetConfig,
        region: Option<Arc<dyn RegionApi>>,
    ) -> Result<Fleet, SimError> {
        cfg.validate()?;
        let agent = region.map(|r| {
            let timings = cfg.agent.clone().unwrap_or_default();
            Arc::new(Agent::new(r, &timings))
        });
        let password = cfg
            .password
            .clone()
            .unwrap_or_else(|| Alphanumeric.sample_string(&mut rand::thread_rng(), 16));
        let power_delay = Duration::from_millis(cfg.power_delay_ms);

        let mut listeners = Vec::with_capacity(cfg.count);
        let mut udp_sockets = Vec::with_capacity(cfg.count);
        let mut machines = Vec::with_capacity(cfg.count);
        for i in 0..cfg.count {
            let hostname = cfg.hostname(i);
            let listener = bind(0, || format!("the BMC of {hostname}")).await?;
            let port = local_port(&listener, &hostname)?;
            let (udp, ipmi_port) = if cfg.ipmi {
                let (sock, port) = bind_udp(&hostname).await?;
                (Some(sock), Some(port))
            } else {
                (None, None)
            };
            let uuid = hardware::uuid(cfg.seed, i);
            let info = SimMachineInfo {
                hostname,
                mac: hardware::mac(cfg.seed, i, 0),
                zone: cfg.zone(i),
                arch: hardware::ARCH.to_string(),
                bmc_url: format!("http://127.0.0.1:{port}"),
                username: cfg.username.clone(),
                password: password.clone(),
                system_id: uuid.clone(),
                inventory: hardware::inventory(cfg.seed, i, &uuid),
                uuid,
                ipmi_port,
            };
            machines.push(Arc::new(SimMachine::new(info, power_delay, agent.clone())));
            listeners.push(listener);
            udp_sockets.push(udp);
        }
        let control_listener = bind(cfg.control_port, || "the control API".to_string()).await?;
        let control_port = local_port(&control_listener, "the control API")?;

        let (stopping, _) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for (m, l) in machines.iter().zip(listeners) {
            let app = crate::redfish::router(Arc::clone(m), stopping.subscribe());
            let host = m.info().hostname.clone();
            let stop = stopped(stopping.subscribe());
            tasks.spawn(async move {
                let l = l.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                if let Err(e) = axum::serve(l, app).with_graceful_shutdown(stop).await {
                    tracing::error!(machine = %host, "BMC listener stopped: {e}");
                }
            });
        }
        for (m, sock) in machines.iter().zip(udp_sockets) {
            if let Some(sock) = sock {
                let bmc = Arc::new(crate::ipmi::IpmiBmc::new(Arc::clone(m)));
                tasks.spawn(crate::ipmi::serve(bmc, sock, stopping.subscribe()));
            }
        }
        let infos = machines.iter().map(|m| m.info().clone()).collect();
        let registry = Arc::new(Registry::new(machines));
        let app = control::router(Arc::clone(&registry));
        let stop = stopped(stopping.subscribe());
        tasks.spawn(async move {
            if let Err(e) = axum::serve(control_listener, app)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!("control API listener stopped: {e}");
            }
        });
        Ok(Fleet {
            registry,
            infos,
            control_url: format!("http://127.0.0.1:{control_port}"),
            tasks,
            agent: agent.is_some(),
            stopping,
        })
    }

    /// Every machine's identity, BMC address and credentials, in hostname order.
    pub fn machines(&self) -> &[SimMachineInfo] {
        &self.infos
    }

    /// The live machine with this hostname (power, faults, counters), for in-process control.
    pub fn machine(&self, hostname: &str) -> Option<&Arc<SimMachine>> {
        self.registry.get(hostname)
    }

    /// The control API's base URL, `http://127.0.0.1:PORT`.
    pub fn control_url(&self) -> &str {
        &self.control_url
    }

    /// True when network-booted machines report to regions.
    pub fn agent_enabled(&self) -> bool {
        self.agent
    }

    /// Writes `dir/machines.json` (the [`SimMachineInfo`] array; mode 0600, as it holds the BMC password)
    /// and then `dir/control.url`, each atomically (temporary file + rename), so a reader that sees
    /// `control.url` sees a complete fleet.
    pub fn write_state(&self, dir: &Path) -> Result<(), SimError> {
        std::fs::create_dir_all(dir).map_err(|source| SimError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let json = serde_json::to_vec_pretty(&self.infos).map_err(|e| SimError::Write {
            path: dir.join(control::MACHINES_FILE),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&dir.join(control::MACHINES_FILE), &json, 0o600)?;
        write_atomic(
            &dir.join(control::CONTROL_URL_FILE),
            format!("{}\n", self.control_url).as_bytes(),
            0o644,
        )
    }

    /// Stops every listener and any agent work in flight: requests being answered get up to
    /// [`SHUTDOWN_GRACE`] to finish (requests held by `unresponsive` BMCs are answered 503 at once), idle
    /// connections are closed.
    pub async fn shutdown(mut self) {
        self.signal_stop();
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("requests still in flight after {SHUTDOWN_GRACE:?}: cutting them");
        }
        self.tasks.abort_all();
    }

    fn signal_stop(&self) {
        self.stopping.send_replace(true);
        for m in self.registry.all() {
            m.cancel_agent();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.signal_stop();
        self.tasks.abort_all();
    }
}

/// Resolves once the fleet is stopping (or the fleet is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn bind(port: u16, what: impl Fn() -> String) -> Result<TcpListener, SimError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| SimError::Bind {
            what: what(),
            addr: addr.to_string(),
            source,
        })?;
    Ok(listener)
}

/// The UDP socket of a BMC's IPMI service on `127.0.0.1:0`, and its port.
async fn bind_udp(hostname: &str) -> Result<(UdpSocket, u16), SimError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let err = |source| SimError::Bind {
        what: format!("the IPMI BMC of {hostname}"),
        addr: format!("{addr} (UDP)"),
        source,
    };
    let sock = UdpSocket::bind(addr).await.map_err(err)?;
    let port = sock.local_addr().map_err(err)?.port();
    Ok((sock, port))
}

fn local_port(l: &TcpListener, what: &str) -> Result<u16, SimError> {
    l.local_addr()
        .map(|a| a.port())
        .map_err(|source| SimError::Bind {
            what: what.to_string(),
            addr: "127.0.0.1".into(),
            source,
        })
}

fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), SimError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| SimError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    // A leftover from a crash would keep its old mode: start afresh.
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(data)?;
            f.sync_all()
        });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}
