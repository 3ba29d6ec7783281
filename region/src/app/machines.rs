//! Machines: enlist by API, find, list, update, delete.

use super::{Actor, App};
use crate::command::{Op, Reply};
use crate::state::MachineQuery;
use ingot_common::model::{DEFAULT_ARCH, DEFAULT_ZONE};
use ingot_common::{secret, validate, DomainError, Mac, Machine, PowerParams};

/// A new machine as requested (strings not yet validated).
#[derive(Debug, Default)]
pub struct NewMachine {
    /// Empty: generated from the system id.
    pub hostname: String,
    /// Empty: amd64/generic.
    pub arch: String,
    /// Empty: default.
    pub zone: String,
    /// At least one.
    pub macs: Vec<String>,
    /// BMC access.
    pub power: PowerParams,
    /// Free text.
    pub description: String,
}

/// A change to a machine; `None` leaves a field alone.
#[derive(Debug, Default)]
pub struct MachineChange {
    /// New hostname.
    pub hostname: Option<String>,
    /// New architecture.
    pub arch: Option<String>,
    /// New zone.
    pub zone: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New power parameters.
    pub power: Option<PowerParams>,
    /// New MAC list.
    pub macs: Option<Vec<String>>,
    /// Compare-and-set guard (0: none).
    pub expected_revision: u64,
}

/// How to find one machine.
#[derive(Debug)]
pub enum MachineKey {
    /// By system id.
    SystemId(String),
    /// By a MAC (any notation).
    Mac(String),
    /// By hostname.
    Hostname(String),
}

fn machine(r: Reply) -> Result<Machine, DomainError> {
    match r {
        Reply::Machine(m) => Ok(*m),
        other => Err(DomainError::internal(format!("unexpected reply {other:?}"))),
    }
}

impl App {
    /// Enlists a machine. The system id is chosen here; on the (rare) collision the command is retried
    /// with a fresh id.
    pub async fn create_machine(
        &self,
        actor: &Actor,
        req: NewMachine,
    ) -> Result<Machine, DomainError> {
        actor.require_admin("enlist machines")?;
        let macs = validate::macs("macs", &req.macs, true)?;
        let arch = if req.arch.is_empty() {
            DEFAULT_ARCH.to_string()
        } else {
            req.arch
        };
        validate::arch("arch", &arch)?;
        let zone = if req.zone.is_empty() {
            DEFAULT_ZONE.to_string()
        } else {
            req.zone
        };
        validate::dns_label("zone", &zone)?;
        if !req.hostname.is_empty() {
            validate::dns_label("hostname", &req.hostname)?;
        }
        validate::power("power", &req.power)?;
        validate::description("description", &req.description)?;
        for _ in 0..5 {
            let system_id = secret::system_id();
            let hostname = if req.hostname.is_empty() {
                format!("node-{system_id}")
            } else {
                req.hostname.clone()
            };
            let op = Op::CreateMachine {
                system_id,
                hostname,
                arch: arch.clone(),
                zone: zone.clone(),
                macs: macs.clone(),
                power: req.power.clone(),
                description: req.description.clone(),
            };
            match self.region.write(self.command(actor, op)).await {
                Err(e) if e.field.as_deref() == Some("system_id") => continue,
                r => return machine(r?),
            }
        }
        Err(DomainError::internal(
            "could not find a free system id after 5 tries",
        ))
    }

    /// Finds one machine.
    pub async fn get_machine(
        &self,
        key: MachineKey,
        linearizable: bool,
    ) -> Result<Machine, DomainError> {
        let mac = match &key {
            MachineKey::Mac(s) => Some(
                s.parse::<Mac>()
                    .map_err(|e| DomainError::invalid("mac", e.to_string()))?,
            ),
            _ => None,
        };
        self.read(linearizable, |st| {
            let found = match &key {
                MachineKey::SystemId(id) => st.machine(id),
                MachineKey::Mac(_) => mac.as_ref().and_then(|m| st.machine_by_mac(m)),
                MachineKey::Hostname(h) => st.machine_by_hostname(h),
            };
            found
                .cloned()
                .ok_or_else(|| DomainError::not_found(format!("no machine with {key:?}")))
        })
        .await?
    }

    /// One page of machines. `page_token` is the last system id of the previous page.
    pub async fn list_machines(
        &self,
        q: MachineQuery,
        page_size: u32,
        page_token: &str,
        linearizable: bool,
    ) -> Result<(Vec<Machine>, String, u64), DomainError> {
        let limit = match page_size {
            0 => 500,
            n if n > 5000 => return Err(DomainError::invalid("page_size", "at most 5000")),
            n => n as usize,
        };
        let after = if page_token.is_empty() {
            None
        } else {
            let s = String::from_utf8(
                base64::Engine::decode(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                    page_token,
                )
                .map_err(|_| {
                    DomainError::invalid("page_token", "not a token from a previous response")
                })?,
            )
            .map_err(|_| {
                DomainError::invalid("page_token", "not a token from a previous response")
            })?;
            Some(s)
        };
        let (page, more, total) = self
            .read(linearizable, |st| {
                st.list_machines(&q, after.as_deref(), limit)
            })
            .await?;
        let next = if more {
            page.last()
                .map(|m| {
                    base64::Engine::encode(
                        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                        m.system_id.as_bytes(),
                    )
                })
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok((page, next, total))
    }

    /// Changes a machine.
    pub async fn update_machine(
        &self,
        actor: &Actor,
        system_id: String,
        c: MachineChange,
    ) -> Result<Machine, DomainError> {
        actor.require_admin("change machines")?;
        if let Some(h) = &c.hostname {
            validate::dns_label("hostname", h)?;
        }
        if let Some(a) = &c.arch {
            validate::arch("arch", a)?;
        }
        if let Some(z) = &c.zone {
            validate::dns_label("zone", z)?;
        }
        if let Some(d) = &c.description {
            validate::description("description", d)?;
        }
        if let Some(p) = &c.power {
            validate::power("power", p)?;
        }
        let macs = match &c.macs {
            Some(list) => Some(validate::macs("macs", list, true)?),
            None => None,
        };
        let op = Op::UpdateMachine {
            system_id,
            hostname: c.hostname,
            arch: c.arch,
            zone: c.zone,
            description: c.description,
            power: c.power,
            macs,
            expected_revision: c.expected_revision,
        };
        machine(self.region.write(self.command(actor, op)).await?)
    }

    /// Removes a machine.
    pub async fn delete_machine(
        &self,
        actor: &Actor,
        system_id: String,
        expected_revision: u64,
    ) -> Result<(), DomainError> {
        actor.require_admin("delete machines")?;
        if system_id.is_empty() {
            return Err(DomainError::invalid("system_id", "required"));
        }
        self.region
            .write(self.command(
                actor,
                Op::DeleteMachine {
                    system_id,
                    expected_revision,
                },
            ))
            .await?;
        Ok(())
    }
}
