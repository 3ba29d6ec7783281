//! The in-band agent a simulated machine runs when it boots from the network.
//!
//! A real machine that PXE-boots while Ingot has it Commissioning, Testing, Deploying, erasing disks or
//! entering rescue gets its per-boot token from the boot configuration the rack serves, and its ramdisk
//! reports to the regions' `AgentService`. The simulator plays the boot path by reading the token with an
//! admin token (`MachineService.GetBootCredentials`, by hostname) and then reports exactly like the agent:
//! inventory, progress, result. The regions are reached through [`RegionApi`] — [`GrpcRegion`] in
//! production, a fake in tests.
//!
//! A run ends early, without reporting, when the machine is powered off or rebooted (its boot epoch
//! changes) or when the region no longer accepts the token (`UNAUTHENTICATED`: a newer boot took over).
//! Calls are retried while the regions are `UNAVAILABLE` (failover), for [`AgentConfig::retry_ms`].

use crate::config::{AgentConfig, ProgressStep};
use crate::machine::SimMachine;
use crate::SimError;
use ingot_client::{retry_unavailable, Clients};
use ingot_common::model::Inventory;
use ingot_proto::v1 as pb;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Code, Status};

/// The future type of [`RegionApi`] calls (boxed so the trait can be used as `dyn`).
pub type RegionFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Status>> + Send + 'a>>;

/// Longest single call to a region before it counts as unavailable (and is retried).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What a network-booted machine learns from its boot configuration: which Ingot machine it is, which
/// boot this is, and the token that boot reports with.
#[derive(Clone, PartialEq, Eq)]
pub struct BootCredentials {
    /// Ingot's system id of the machine (not the Redfish one).
    pub system_id: String,
    /// The boot's id.
    pub boot_id: String,
    /// The per-boot token, presented as `boot_token` to `AgentService`.
    pub token: String,
    /// `commissioning`, `testing`, `deploying`, `erasing` or `rescue`.
    pub purpose: String,
}

impl fmt::Debug for BootCredentials {
    // The token is a credential: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootCredentials")
            .field("system_id", &self.system_id)
            .field("boot_id", &self.boot_id)
            .field("token", &"<redacted>")
            .field("purpose", &self.purpose)
            .finish()
    }
}

/// The region calls the simulated agent makes. [`GrpcRegion`] makes them over Ingot's gRPC API; tests
/// substitute a fake to observe and script them.
pub trait RegionApi: Send + Sync + 'static {
    /// `MachineService.GetBootCredentials` for the machine with this hostname (admin token).
    /// `NOT_FOUND` / `FAILED_PRECONDITION`: Ingot has no boot session for it.
    fn boot_credentials<'a>(&'a self, hostname: &'a str) -> RegionFuture<'a, BootCredentials>;
    /// `AgentService.ReportInventory`.
    fn report_inventory<'a>(
        &'a self,
        system_id: &'a str,
        token: &'a str,
        inventory: &'a Inventory,
    ) -> RegionFuture<'a, ()>;
    /// `AgentService.ReportProgress`.
    fn report_progress<'a>(
        &'a self,
        system_id: &'a str,
        token: &'a str,
        message: &'a str,
        percent: u32,
    ) -> RegionFuture<'a, ()>;
    /// `AgentService.ReportResult`.
    fn report_result<'a>(
        &'a self,
        system_id: &'a str,
        token: &'a str,
        success: bool,
        reason: &'a str,
    ) -> RegionFuture<'a, ()>;
}

/// [`RegionApi`] over the regions' gRPC API, through `ingot-client` (TLS against the cluster CA, the admin
/// bearer token, one channel balanced over every region).
#[derive(Clone, Debug)]
pub struct GrpcRegion {
    clients: Clients,
}

impl GrpcRegion {
    /// Reads the CA and prepares the (lazily connecting) channel; must be called inside a Tokio runtime.
    pub fn connect(cfg: &AgentConfig) -> Result<GrpcRegion, SimError> {
        let endpoints =
            ingot_client::config::split_endpoints(cfg.endpoints.iter().map(String::as_str));
        if endpoints.is_empty() {
            return Err(SimError::config(
                "agent.endpoints",
                "give at least one region API URL (https://host:port)",
            ));
        }
        if cfg.token.trim().is_empty() {
            return Err(SimError::config(
                "agent.token",
                "empty: give the cluster's admin token (e.g. the first region's admin.token)",
            ));
        }
        let ca_pem =
            std::fs::read_to_string(&cfg.ca_pem_path).map_err(|source| SimError::Read {
                what: "the cluster CA certificate",
                path: cfg.ca_pem_path.clone(),
                source,
            })?;
        let clients = ingot_client::ClientConfig {
            endpoints,
            ca_pem,
            token: cfg.token.trim().to_string(),
        }
        .connect()?;
        Ok(GrpcRegion { clients })
    }

    /// Wraps already connected clients.
    pub fn from_clients(clients: Clients) -> GrpcRegion {
        GrpcRegion { clients }
    }
}

async fn timed<T>(
    f: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(Status::unavailable(format!(
            "no answer from the region within {CALL_TIMEOUT:?}"
        ))),
    }
}

impl RegionApi for GrpcRegion {
    fn boot_credentials<'a>(&'a self, hostname: &'a str) -> RegionFuture<'a, BootCredentials> {
        Box::pin(async move {
            let req = pb::GetBootCredentialsRequest {
                machine: Some(pb::MachineRef {
                    key: Some(pb::machine_ref::Key::Hostname(hostname.to_string())),
                }),
            };
            let c = timed(self.clients.machines().get_boot_credentials(req)).await?;
            Ok(BootCredentials {
                system_id: c.system_id,
                boot_id: c.boot_id,
                token: c.token,
                purpose: c.purpose,
            })
        })
    }

    fn report_inventory<'a>(
        &'a self,
        system_id: &'a str,
        token: &'a str,
        inventory: &'a Inventory,
    ) -> RegionFuture<'a, ()> {
        Box::pin(async move {
            let req = pb::ReportInventoryRequest {
                system_id: system_id.to_string(),
                boot_token: token.to_string(),
                inventory: Some(ingot_proto::convert::inventory_to_proto(inventory)),
            };
            timed(self.clients.agent().report_inventory(req))
                .await
                .map(|_| ())
        })
    }

    fn report_progress<'a>(
        &'a self,
        system_id: &'a str,
        token: &'a str,
        message: &'a str,
        percent: u32,
    ) -> RegionFuture<'a, ()> {
        Box::pin(async move {
            let req = pb::ReportProgressRequest {
                system_id: system_id.to_string(),
                boot_token: token.to_string(),
                message: message.to_string(),
                percent,
            };
            timed(self.clients.agent().report_progress(req))
                .await
                .map(|_| ())
        })
    }

    fn report_result<'a>(
        &'a self,
        system_id: &'a str,
        token: &'a str,
        success: bool,
        reason: &'a str,
    ) -> RegionFuture<'a, ()> {
        Box::pin(async move {
            let req = pb::ReportResultRequest {
                system_id: system_id.to_string(),
                boot_token: token.to_string(),
                success,
                reason: reason.to_string(),
            };
            timed(self.clients.agent().report_result(req))
                .await
                .map(|_| ())
        })
    }
}

/// How one agent run ended (counted per machine, see [`crate::AgentCounters`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentOutcome {
    /// The result was reported.
    Completed,
    /// Ingot had no boot session for the machine: a network boot it did not ask for.
    NoSession,
    /// The region refused the token: the boot was superseded or ended.
    Superseded,
    /// Power-off or reboot during the work.
    Cancelled,
    /// An error other than the above (after retries).
    Failed(String),
}

/// The agent behaviour shared by every machine of a fleet: where to report and how to pace it.
pub struct Agent {
    region: Arc<dyn RegionApi>,
    boot_delay: Duration,
    step_delay: Duration,
    retry: Duration,
    deploy_steps: Vec<ProgressStep>,
}

impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("boot_delay", &self.boot_delay)
            .field("step_delay", &self.step_delay)
            .field("retry", &self.retry)
            .field("deploy_steps", &self.deploy_steps)
            .finish_non_exhaustive()
    }
}

/// Why a report step stopped the run.
enum Stop {
    Superseded,
    Failed(String),
}

impl Agent {
    /// An agent reporting to `region` with `cfg`'s timings (its endpoints, CA and token are not used
    /// here: they went into `region`).
    pub fn new(region: Arc<dyn RegionApi>, cfg: &AgentConfig) -> Agent {
        Agent {
            region,
            boot_delay: Duration::from_millis(cfg.boot_delay_ms),
            step_delay: Duration::from_millis(cfg.step_delay_ms),
            retry: Duration::from_millis(cfg.retry_ms),
            deploy_steps: cfg.deploy_steps.clone(),
        }
    }

    /// One network boot of `machine` (started by the boot with `epoch`): does the boot's work unless the
    /// machine is powered off or rebooted first, and records the outcome on the machine.
    pub(crate) async fn run(self: Arc<Self>, machine: Arc<SimMachine>, epoch: u64) {
        let mut rx = machine.subscribe_epoch();
        let outcome = tokio::select! {
            biased;
            _ = rx.wait_for(|e| *e != epoch) => AgentOutcome::Cancelled,
            o = self.work(&machine) => o,
        };
        let host = &machine.info().hostname;
        match &outcome {
            AgentOutcome::Failed(e) => tracing::warn!(machine = %host, "agent gave up: {e}"),
            o => tracing::debug!(machine = %host, outcome = ?o, "agent run ended"),
        }
        machine.record_agent(&outcome);
    }

    async fn work(&self, machine: &SimMachine) -> AgentOutcome {
        tokio::time::sleep(self.boot_delay).await;
        let host = machine.info().hostname.as_str();
        let creds = match retry_unavailable(|| self.region.boot_credentials(host), self.retry).await
        {
            Ok(c) => c,
            Err(s) if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => {
                tracing::debug!(machine = %host, "network boot without a boot session: {}", s.message());
                return AgentOutcome::NoSession;
            }
            Err(s) => {
                return AgentOutcome::Failed(format!(
                    "reading the boot credentials of {host}: {:?}: {}",
                    s.code(),
                    s.message()
                ))
            }
        };
        machine.note_agent_run(&creds.purpose);
        tracing::debug!(machine = %host, purpose = %creds.purpose, boot = %creds.boot_id, "agent running");
        let r = match creds.purpose.as_str() {
            "commissioning" => self.commission(machine, &creds).await,
            "testing" => {
                self.steps(
                    &creds,
                    &[ProgressStep::new("testing: smartctl, memtester", 50)],
                )
                .await
            }
            "deploying" => self.steps(&creds, &self.deploy_steps).await,
            "erasing" => {
                self.steps(&creds, &[ProgressStep::new("erasing: wiping disks", 50)])
                    .await
            }
            "rescue" => Ok(()),
            other => Err(Stop::Failed(format!(
                "boot purpose '{other}' is not one the simulated agent knows \
                 (commissioning, testing, deploying, erasing, rescue)"
            ))),
        };
        let r = match r {
            Ok(()) => {
                self.call("ReportResult", || {
                    self.region
                        .report_result(&creds.system_id, &creds.token, true, "")
                })
                .await
            }
            Err(stop) => Err(stop),
        };
        match r {
            Ok(()) => AgentOutcome::Completed,
            Err(Stop::Superseded) => AgentOutcome::Superseded,
            Err(Stop::Failed(e)) => AgentOutcome::Failed(format!("{host}: {e}")),
        }
    }

    async fn commission(&self, machine: &SimMachine, creds: &BootCredentials) -> Result<(), Stop> {
        let inv = &machine.info().inventory;
        self.call("ReportInventory", || {
            self.region
                .report_inventory(&creds.system_id, &creds.token, inv)
        })
        .await
    }

    async fn steps(&self, creds: &BootCredentials, steps: &[ProgressStep]) -> Result<(), Stop> {
        for s in steps {
            self.call("ReportProgress", || {
                self.region
                    .report_progress(&creds.system_id, &creds.token, &s.message, s.percent)
            })
            .await?;
            tokio::time::sleep(self.step_delay).await;
        }
        Ok(())
    }

    /// One report, retried while the regions are unavailable. `UNAUTHENTICATED` means the boot is no
    /// longer current: stop quietly.
    async fn call<'a, F>(&self, what: &str, f: F) -> Result<(), Stop>
    where
        F: FnMut() -> RegionFuture<'a, ()>,
    {
        match retry_unavailable(f, self.retry).await {
            Ok(()) => Ok(()),
            Err(s) if s.code() == Code::Unauthenticated => Err(Stop::Superseded),
            Err(s) => Err(Stop::Failed(format!(
                "{what}: {:?}: {}",
                s.code(),
                s.message()
            ))),
        }
    }
}
