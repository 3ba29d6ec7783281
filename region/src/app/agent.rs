//! In-band reports (`AgentService`): inventory, progress and results from a machine's current boot.
//! Authenticated by the per-boot token, never by a bearer token: a token is good for one machine and
//! one boot, and dies when the boot ends.

use super::App;
use crate::command::{op, BootTokens, Command, Internal, Op, Principal, Reply};
use ingot_common::agent::{self, AgentNext, AgentVerdict, BootWork, DeployWork};
use ingot_common::image::{disk_image_name, BootPurpose, FILE_DISK};
use ingot_common::lifecycle::Outcome;
use ingot_common::model::Inventory;
use ingot_common::{secret, validate, DomainError, Machine, MachineStatus};

/// The actor recorded for agent reports.
pub const AGENT_ACTOR: &str = "agent";

impl App {
    /// Checks `token` against the machine's current boot; returns the boot id and the status it was
    /// started for. Reads linearizably, so a report right after the boot started is never refused.
    async fn boot_of(
        &self,
        system_id: &str,
        token: &str,
    ) -> Result<(String, MachineStatus), DomainError> {
        validate::key("system_id", system_id)?;
        validate::bytes("boot_token", token, validate::limits::TOKEN)?;
        if token.is_empty() {
            return Err(DomainError::unauthenticated(
                "boot_token is required: it is given to the machine by its boot configuration",
            ));
        }
        self.read_internal(true, |st| {
            let m = st.machine(system_id).ok_or_else(|| {
                DomainError::unauthenticated(format!("unknown machine {system_id} or wrong boot token"))
            })?;
            match &m.boot {
                Some(b)
                    if !b.token_hash.is_empty()
                        && secret::hashes_equal(&b.token_hash, &secret::hash(token)) =>
                {
                    Ok((b.boot_id.clone(), m.status))
                }
                _ => Err(DomainError::unauthenticated(format!(
                    "the boot token is not valid for the current boot of machine {system_id} (a finished or superseded boot cannot report)"
                ))),
            }
        })
        .await?
    }

    async fn agent_write(&self, op: Op) -> Result<Machine, DomainError> {
        let cmd = Command::new(AGENT_ACTOR, Principal::Internal(Internal::Agent), op);
        match self.region.write(cmd).await? {
            Reply::Machine(m) => Ok(*m),
            other => Err(super::unexpected(other)),
        }
    }

    /// Stores the inventory the commissioning boot found.
    pub async fn report_inventory(
        &self,
        system_id: &str,
        token: &str,
        inventory: Inventory,
    ) -> Result<Machine, DomainError> {
        validate::inventory("inventory", &inventory)?;
        let (boot_id, _) = self.boot_of(system_id, token).await?;
        self.agent_write(Op::ReportInventory(op::ReportInventory {
            system_id: system_id.into(),
            boot_id,
            inventory,
        }))
        .await
    }

    /// Records a progress step.
    pub async fn report_progress(
        &self,
        system_id: &str,
        token: &str,
        message: String,
        percent: u32,
    ) -> Result<Machine, DomainError> {
        validate::description("message", &message)?;
        if percent > 100 {
            return Err(DomainError::invalid("percent", "at most 100"));
        }
        let (boot_id, _) = self.boot_of(system_id, token).await?;
        self.agent_write(Op::ReportProgress(op::ReportProgress {
            system_id: system_id.into(),
            boot_id,
            message,
            percent,
        }))
        .await
    }

    /// Ends the boot's work with success or failure.
    pub async fn report_result(
        &self,
        system_id: &str,
        token: &str,
        success: bool,
        reason: String,
    ) -> Result<Machine, DomainError> {
        if !success && reason.trim().is_empty() {
            return Err(DomainError::invalid(
                "reason",
                "required when success is false: say what failed",
            ));
        }
        validate::description("reason", &reason)?;
        let (boot_id, status) = self.boot_of(system_id, token).await?;
        self.agent_write(Op::Outcome(op::Outcome {
            system_id: system_id.into(),
            status,
            boot_id: Some(boot_id),
            outcome: if success {
                Outcome::Done
            } else {
                Outcome::Failed
            },
            reason,
            next_boot: BootTokens::generate(),
        }))
        .await
    }
}

/// One call of an in-band agent, relayed by the rack it booted from (`ingot.rack.v1.AgentCall`), in
/// domain form: the transport layer parsed and bounded it.
#[derive(Debug, Clone)]
pub enum AgentRequest {
    /// "Who am I, what do I do": hands the current boot to the first claimant ([`op::ClaimBoot`]).
    Lookup {
        /// The machine's MACs (at most [`agent::MAX_LOOKUP_MACS`]).
        macs: Vec<ingot_common::Mac>,
        /// The agent's claim value (plain; only its hash is logged).
        claim: String,
    },
    /// Liveness: is the boot still on?
    Heartbeat {
        /// The machine.
        system_id: String,
        /// The boot's token.
        token: String,
    },
    /// Commissioning's inventory.
    Inventory {
        /// The machine.
        system_id: String,
        /// The boot's token.
        token: String,
        /// What the agent found.
        inventory: Inventory,
    },
    /// A progress step.
    Progress {
        /// The machine.
        system_id: String,
        /// The boot's token.
        token: String,
        /// What is being done.
        message: String,
        /// How far, 0-100.
        percent: u32,
    },
    /// The end of the boot's work.
    Result {
        /// The machine.
        system_id: String,
        /// The boot's token.
        token: String,
        /// Whether it succeeded.
        success: bool,
        /// Why not.
        reason: String,
    },
}

/// The region's answer to an [`AgentRequest`].
#[derive(Debug, Clone)]
pub enum AgentReply {
    /// The answer to a lookup.
    Work(Box<BootWork>),
    /// The answer to a heartbeat or a report.
    Verdict(AgentVerdict),
}

impl App {
    /// Answers an agent's call relayed by rack `rack` (see [`AgentRequest`]); `actor` is the rack
    /// session's actor, recorded on the boot claim.
    pub async fn agent_call(
        &self,
        rack: &str,
        actor: &str,
        req: AgentRequest,
    ) -> Result<AgentReply, DomainError> {
        match req {
            AgentRequest::Lookup { macs, claim } => self
                .agent_lookup(rack, actor, &macs, &claim)
                .await
                .map(|w| AgentReply::Work(Box::new(w))),
            AgentRequest::Heartbeat { system_id, token } => {
                let (_, status) = self.boot_of(&system_id, &token).await?;
                Ok(AgentReply::Verdict(AgentVerdict {
                    status,
                    next: AgentNext::Continue,
                    message: String::new(),
                }))
            }
            AgentRequest::Inventory {
                system_id,
                token,
                inventory,
            } => {
                let m = self.report_inventory(&system_id, &token, inventory).await?;
                Ok(AgentReply::Verdict(verdict_after_report(&m, false)))
            }
            AgentRequest::Progress {
                system_id,
                token,
                message,
                percent,
            } => {
                let m = self
                    .report_progress(&system_id, &token, message, percent)
                    .await?;
                Ok(AgentReply::Verdict(verdict_after_report(&m, false)))
            }
            AgentRequest::Result {
                system_id,
                token,
                success,
                reason,
            } => {
                let m = self
                    .report_result(&system_id, &token, success, reason)
                    .await?;
                Ok(AgentReply::Verdict(verdict_after_report(&m, true)))
            }
        }
    }

    /// The boot proof (see [`crate::apply::boot_claim`]): finds the machine by its MACs, checks it is
    /// booting for Ingot through this rack, makes the boot's token and claims the boot with its hash.
    async fn agent_lookup(
        &self,
        rack: &str,
        actor: &str,
        macs: &[ingot_common::Mac],
        claim: &str,
    ) -> Result<BootWork, DomainError> {
        if macs.is_empty() {
            return Err(DomainError::invalid("lookup.macs", "name at least one MAC"));
        }
        validate::entries("lookup.macs", macs.len(), agent::MAX_LOOKUP_MACS)?;
        if !agent::CLAIM_LEN.contains(&claim.len()) || !claim.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(DomainError::invalid(
                "lookup.claim",
                format!(
                    "{} to {} printable characters, random, made once per agent run",
                    agent::CLAIM_LEN.start(),
                    agent::CLAIM_LEN.end()
                ),
            ));
        }
        let (claim_op, work) = self
            .read_internal(true, |st| lookup_work(st, rack, macs, claim))
            .await??;
        let token = secret::generate("boot_");
        let op = op::ClaimBoot {
            token_hash: secret::hash(&token),
            ..claim_op
        };
        let cmd = Command::new(
            actor,
            Principal::Internal(Internal::Rack),
            Op::ClaimBoot(op),
        );
        match self.region.write(cmd).await? {
            Reply::Machine(_) => Ok(BootWork { token, ..work }),
            Reply::Refused(why) => Err(DomainError::denied(why)),
            other => Err(super::unexpected(other)),
        }
    }
}

/// The claim to propose and the work to hand out for a lookup through `rack` by `macs`, read from `st`.
pub(crate) fn lookup_work(
    st: &crate::state::State,
    rack: &str,
    macs: &[ingot_common::Mac],
    claim: &str,
) -> Result<(op::ClaimBoot, BootWork), DomainError> {
    let m = macs
        .iter()
        .find_map(|mac| st.machine_by_mac(mac))
        .ok_or_else(|| {
            DomainError::not_found(format!(
                "no machine has any of the MACs {}: it enlists when it PXE-boots from a rack serving its subnet",
                macs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ))
        })?;
    let boot = m
        .boot
        .as_ref()
        .filter(|_| crate::apply::boot_claim::booting(m.status))
        .ok_or_else(|| {
            DomainError::precondition(format!(
                "machine {} is {}: it is not booting for Ingot (nothing to do; power off)",
                m.system_id,
                m.status.as_str()
            ))
        })?;
    let mac = macs
        .iter()
        .filter(|mac| m.macs.contains(mac))
        .find(|mac| st.leases_of_mac(mac).any(|l| l.rack == rack))
        .copied()
        .ok_or_else(|| {
            DomainError::denied(format!(
                "rack '{rack}' leased no address to any MAC of machine {}: a boot is handed out only through the rack the machine booted from",
                m.system_id
            ))
        })?;
    let purpose = super::boot_intent::purpose_for(m.status);
    let deploy = match (&m.deploy, purpose) {
        (Some(spec), BootPurpose::Deploy) => {
            let name = disk_image_name(&spec.osystem, &spec.distro_series);
            let file = st
                .data
                .images
                .get(&name)
                .and_then(|img| img.file(FILE_DISK))
                .ok_or_else(|| {
                    DomainError::precondition(format!(
                        "machine {} deploys image {name}, which has no disk file: upload it with `ingot images upload {name} --kind disk --disk-image FILE`",
                        m.system_id
                    ))
                })?;
            Some(DeployWork {
                image: name,
                blob: file.blob,
                size: file.size,
                disk: spec.disk.clone(),
                user_data: spec.user_data.clone(),
            })
        }
        (None, BootPurpose::Deploy) => {
            return Err(DomainError::precondition(format!(
                "machine {} is deploying without a deploy spec: deploy it again",
                m.system_id
            )))
        }
        _ => None,
    };
    let claim_op = op::ClaimBoot {
        system_id: m.system_id.clone(),
        boot_id: boot.boot_id.clone(),
        rack: rack.to_string(),
        mac,
        claim_hash: secret::hash(claim),
        token_hash: String::new(),
    };
    let work = BootWork {
        system_id: m.system_id.clone(),
        boot_id: boot.boot_id.clone(),
        token: String::new(),
        purpose,
        hostname: m.hostname.clone(),
        heartbeat_s: agent::HEARTBEAT_S,
        deploy,
        erase: m.erase,
        ssh_keys: m
            .deploy
            .as_ref()
            .map(|d| d.ssh_keys.clone())
            .unwrap_or_default(),
    };
    Ok((claim_op, work))
}

/// What the agent does after a report that left `m` as it is: go on while the boot's work runs; once it
/// ended (`result`): stay up (rescue), wait for the BMC when a rack drives the machine's power (the status
/// change queued its steps), else reboot into the deployed disk (Deployed) or power off.
fn verdict_after_report(m: &Machine, result: bool) -> AgentVerdict {
    let next = if !result || m.status == MachineStatus::RescueMode {
        AgentNext::Continue
    } else if crate::apply::queue::rack_driven(&m.power.driver) {
        // The status change queued the power steps (off; boot-disk + cycle for Deployed): the agent
        // synced before reporting, and waits for them.
        AgentNext::Wait
    } else if m.status == MachineStatus::Deployed {
        AgentNext::Reboot
    } else {
        AgentNext::PowerOff
    };
    AgentVerdict {
        status: m.status,
        next,
        message: format!("machine {} is {}", m.system_id, m.status.as_str()),
    }
}
