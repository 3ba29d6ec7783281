//! Rack controllers: enrollment tokens, registration (CSR signing), status, revocation, and power
//! commands queued for the rack that owns a machine's BMC.

use super::machines::MachineKey;
use super::{Actor, App};
use crate::apply::racks::rack_token_error;
use crate::command::{op, Internal, Op, Principal, Reply};
use ingot_common::model::{PowerCommand, PowerCommandState, Rack};
use ingot_common::pki::{self, Identity};
use ingot_common::power::PowerAction;
use ingot_common::{secret, validate, DomainError};
use std::time::Duration;

/// Default life of an enrollment token.
pub const DEFAULT_TOKEN_TTL_S: u64 = 3600;
/// Longest a power call waits for its result.
pub const MAX_POWER_WAIT_S: u32 = 300;

/// What a registering rack gets back.
#[derive(Debug)]
pub struct RackAdmission {
    /// Its certificate (CN `rack-<name>`), signed by the cluster CA.
    pub cert_pem: String,
    /// The cluster CA certificate.
    pub ca_pem: String,
    /// API endpoints of every region.
    pub api_endpoints: Vec<String>,
    /// Cluster listener endpoints of every region (where sessions go).
    pub cluster_endpoints: Vec<String>,
}

/// A rack with what the API shows beside the record.
#[derive(Debug, Clone)]
pub struct RackView {
    /// The record.
    pub rack: Rack,
    /// Heartbeat within the grace time.
    pub connected: bool,
    /// BMCs it owns.
    pub bmc_count: u64,
    /// Commands waiting for it.
    pub pending: u64,
}

impl App {
    /// A single-use enrollment token (admin).
    pub async fn create_rack_token(
        &self,
        actor: &Actor,
        ttl_s: u64,
    ) -> Result<(String, u64), DomainError> {
        actor.require_admin("create rack enrollment tokens")?;
        let ttl = if ttl_s == 0 {
            DEFAULT_TOKEN_TTL_S
        } else {
            ttl_s
        };
        if ttl > 7 * 24 * 3600 {
            return Err(DomainError::invalid("ttl_seconds", "at most 7 days"));
        }
        let token = secret::generate("ingotrack_");
        let expires_ms = ingot_common::now_ms() + ttl * 1000;
        let op = Op::CreateRackToken(op::CreateRackToken {
            token_hash: secret::hash(&token),
            expires_ms,
        });
        self.region.write(self.command(actor, op)).await?;
        Ok((token, expires_ms))
    }

    /// Registers a rack with an enrollment token and signs its CSR.
    pub async fn register_rack(
        &self,
        token: &str,
        name: &str,
        zone: &str,
        csr_pem: &str,
    ) -> Result<RackAdmission, DomainError> {
        if token.is_empty() {
            return Err(DomainError::invalid(
                "token",
                "required: create one with `ingot racks token create`",
            ));
        }
        validate::bytes("token", token, validate::limits::TOKEN)?;
        validate::dns_label("name", name)?;
        validate::dns_label("zone", zone)?;
        validate::bytes("csr_pem", csr_pem, validate::limits::PEM)?;
        let cn = pki::csr_common_name(csr_pem)
            .map_err(|e| DomainError::invalid("csr_pem", e.to_string()))?;
        let want = format!("rack-{name}");
        if cn != want {
            return Err(DomainError::invalid(
                "csr_pem",
                format!("the CSR is for '{cn}', not '{want}': a rack can only enroll under its own name"),
            ));
        }
        let token_hash = secret::hash(token);
        self.check_token_before_proposing(|d| &d.rack_tokens, &token_hash, rack_token_error)
            .await?;
        let actor = Actor {
            name: format!("rack:{name}"),
            role: "rack".into(),
            principal: Principal::Internal(Internal::EnrollingRack),
        };
        let op = Op::RegisterRack(op::RegisterRack {
            token_hash: token_hash.clone(),
            name: name.to_string(),
            zone: zone.to_string(),
        });
        match self.region.write(self.command(&actor, op)).await? {
            Reply::Rack(_) => {}
            other => return Err(super::unexpected(other)),
        }
        let (ca, api_endpoints) = {
            let st = crate::locks::read(&self.region.state);
            let ca = st
                .data
                .cluster
                .clone()
                .ok_or_else(|| DomainError::unavailable("cluster not bootstrapped yet"))?;
            let apis = st
                .data
                .regions
                .values()
                .map(|r| r.api_addr.clone())
                .collect();
            (ca, apis)
        };
        let cert_pem = ca
            .ca
            .sign_csr_with_serial(
                csr_pem,
                &Identity::rack(name),
                &pki::serial_for(&token_hash),
            )
            .map_err(|e| DomainError::internal(format!("signing the certificate failed: {e}")))?;
        Ok(RackAdmission {
            cert_pem,
            ca_pem: ca.ca.cert_pem,
            api_endpoints,
            cluster_endpoints: self.cluster_endpoints(),
        })
    }

    /// The cluster (Raft + rack session) listener of every region member.
    pub fn cluster_endpoints(&self) -> Vec<String> {
        self.region.members().into_values().collect()
    }

    /// Every rack with its liveness and counts.
    pub async fn list_racks(
        &self,
        actor: &Actor,
        linearizable: bool,
    ) -> Result<Vec<RackView>, DomainError> {
        actor.require_admin("list racks")?;
        let grace = self.rack_grace_ms;
        let now = ingot_common::now_ms();
        self.read(actor, linearizable, |st| {
            st.data
                .racks
                .values()
                .map(|r| RackView {
                    rack: r.clone(),
                    connected: st.rack_connected(&r.name, now, grace),
                    bmc_count: st.by_rack.get(&r.name).map(|s| s.len() as u64).unwrap_or(0),
                    pending: st
                        .pending_power_commands
                        .iter()
                        .filter_map(|id| st.data.power_commands.get(id))
                        .filter(|c| {
                            crate::apply::queue::route(c, st.machine(&c.system_id))
                                == Some(r.name.as_str())
                        })
                        .count() as u64,
                })
                .collect()
        })
        .await
    }

    /// One rack.
    pub async fn get_rack(&self, actor: &Actor, name: &str) -> Result<RackView, DomainError> {
        self.list_racks(actor, true)
            .await?
            .into_iter()
            .find(|r| r.rack.name == name)
            .ok_or_else(|| DomainError::not_found(format!("rack '{name}' does not exist")))
    }

    /// Revokes a rack (admin).
    pub async fn revoke_rack(&self, actor: &Actor, name: &str) -> Result<Rack, DomainError> {
        actor.require_admin("revoke racks")?;
        validate::dns_label("name", name)?;
        match self
            .region
            .write(self.command(actor, Op::RevokeRack(op::RevokeRack { name: name.into() })))
            .await?
        {
            Reply::Rack(r) => Ok(*r),
            other => Err(super::unexpected(other)),
        }
    }

    /// Queues a power action for a machine and, with `wait`, waits for its result.
    pub async fn power(
        &self,
        actor: &Actor,
        key: MachineKey,
        action: PowerAction,
        wait_s: u32,
    ) -> Result<PowerCommand, DomainError> {
        if wait_s > MAX_POWER_WAIT_S {
            return Err(DomainError::invalid(
                "wait_seconds",
                format!("at most {MAX_POWER_WAIT_S}"),
            ));
        }
        let system_id = self.resolve(&key).await?;
        let op = Op::QueuePower(op::QueuePower { system_id, action });
        let c = match self.region.write(self.command(actor, op)).await? {
            Reply::PowerCommand(c) => *c,
            other => return Err(super::unexpected(other)),
        };
        self.power_command(actor, c.id, wait_s).await
    }

    /// A power command, after waiting up to `wait_s` for it to finish.
    pub async fn power_command(
        &self,
        actor: &Actor,
        id: u64,
        wait_s: u32,
    ) -> Result<PowerCommand, DomainError> {
        if wait_s > MAX_POWER_WAIT_S {
            return Err(DomainError::invalid(
                "wait_seconds",
                format!("at most {MAX_POWER_WAIT_S}"),
            ));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait_s as u64);
        let mut applied = self.region.applied.subscribe();
        let mut first = true;
        loop {
            let c = self
                .read(actor, first, |st| st.data.power_commands.get(&id).cloned())
                .await?
                .ok_or_else(|| DomainError::not_found(format!("no power command {id}")))?;
            first = false;
            if !actor.is_admin() && c.actor != actor.name {
                return Err(DomainError::not_found(format!("no power command {id}")));
            }
            if c.state != PowerCommandState::Pending || tokio::time::Instant::now() >= deadline {
                return Ok(c);
            }
            let _ = tokio::time::timeout_at(deadline, applied.changed()).await;
        }
    }
}
