//! In-band reports (`AgentService`): inventory, progress and results from a machine's current boot.
//! Authenticated by the per-boot token, never by a bearer token: a token is good for one machine and
//! one boot, and dies when the boot ends.

use super::App;
use crate::command::{op, BootTokens, Command, Internal, Op, Principal, Reply};
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
