//! Machines: enlist by API, find, list, update, delete.

use super::{Actor, App};
use crate::command::{op, ActionArgs, BootTokens, Op, Reply};
use crate::state::{MachineQuery, State};
use ingot_common::lifecycle::Action;
use ingot_common::model::BootSession;
use ingot_common::model::{DEFAULT_ARCH, DEFAULT_ZONE};
use ingot_common::{secret, validate, DomainError, Mac, Machine, MachineStatus, PowerParams};

/// Pages at least this large are converted on every core: converting a machine to its wire form is the
/// largest server-side cost of a big list (measured ~1.5 µs per machine on one core).
const PARALLEL_FROM: usize = 2000;

/// Maps `page` with `f`, split across the machine's cores when the page is large.
fn convert_parallel<T: Send>(page: &[&Machine], f: &(impl Fn(&Machine) -> T + Sync)) -> Vec<T> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8);
    if page.len() < PARALLEL_FROM || cores < 2 {
        return page.iter().map(|m| f(m)).collect();
    }
    let chunk = page.len().div_ceil(cores);
    std::thread::scope(|s| {
        let handles: Vec<_> = page
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(|m| f(m)).collect::<Vec<T>>()))
            .collect();
        let mut out = Vec::with_capacity(page.len());
        for h in handles {
            match h.join() {
                Ok(mut v) => out.append(&mut v),
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        out
    })
}

/// Most machines in one list page.
pub const MAX_PAGE: u32 = 10_000;

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
    /// Empty: default.
    pub pool: String,
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
#[derive(Debug, Clone)]
pub enum MachineKey {
    /// By system id.
    SystemId(String),
    /// By a MAC (any notation).
    Mac(String),
    /// By hostname.
    Hostname(String),
    /// By the consumer recorded at allocation.
    Consumer(String),
    /// By provider id `ingot:///<zone>/<system_id>`.
    ProviderId(String),
}

impl MachineKey {
    /// Fails unless the key is at most [`validate::limits::KEY`] bytes (an empty system id is refused
    /// by [`App::resolve`]); `message` is the request message holding the key (`machine`; empty when
    /// the key's fields are the request's own).
    pub fn check(&self, message: &str) -> Result<(), DomainError> {
        let (kind, s) = match self {
            MachineKey::SystemId(s) => ("system_id", s),
            MachineKey::Mac(s) => ("mac", s),
            MachineKey::Hostname(s) => ("hostname", s),
            MachineKey::Consumer(s) => ("consumer", s),
            MachineKey::ProviderId(s) => ("provider_id", s),
        };
        let field = if message.is_empty() {
            kind.to_string()
        } else {
            format!("{message}.{kind}")
        };
        validate::bytes(&field, s, validate::limits::KEY)
    }

    /// The machine this key names in `st`, if any.
    pub fn find<'a>(&self, st: &'a State) -> Result<Option<&'a Machine>, DomainError> {
        Ok(match self {
            MachineKey::SystemId(id) => st.machine(id),
            MachineKey::Mac(s) => {
                let mac = s
                    .parse::<Mac>()
                    .map_err(|e| DomainError::invalid("mac", e.to_string()))?;
                st.machine_by_mac(&mac)
            }
            MachineKey::Hostname(h) => st.machine_by_hostname(h),
            MachineKey::Consumer(c) => st.by_consumer.get(c).and_then(|id| st.machine(id)),
            MachineKey::ProviderId(p) => {
                let id = p
                    .strip_prefix("ingot:///")
                    .and_then(|rest| rest.rsplit('/').next())
                    .ok_or_else(|| {
                        DomainError::invalid(
                            "provider_id",
                            format!("'{p}' is not of the form ingot:///<zone>/<system_id>"),
                        )
                    })?;
                st.machine(id)
                    .filter(|m| m.owner.is_some() && m.provider_id() == *p)
            }
        })
    }
}

/// Hides other users' machines from non-admins: a user sees the pool and their own machines.
pub fn visible(actor: &Actor, m: &Machine) -> bool {
    actor.is_admin() || m.owner.as_ref().is_none_or(|o| *o == actor.name)
}

fn machine(r: Reply) -> Result<Machine, DomainError> {
    match r {
        Reply::Machine(m) => Ok(*m),
        other => Err(super::unexpected(other)),
    }
}

/// Which page of machines [`App::list_machines`] reads, and how.
pub struct MachinePage<'a> {
    /// Which machines.
    pub query: MachineQuery,
    /// Machines per page (0: 500; at most `MAX_PAGE`).
    pub page_size: u32,
    /// The previous page's token, or empty for the first page.
    pub page_token: &'a str,
    /// Read after a read barrier (true) or from this region's state as it is.
    pub linearizable: bool,
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
        let pool = if req.pool.is_empty() {
            None
        } else {
            validate::dns_label("pool", &req.pool)?;
            Some(req.pool.clone())
        };
        for _ in 0..5 {
            let system_id = secret::system_id();
            let hostname = if req.hostname.is_empty() {
                format!("node-{system_id}")
            } else {
                req.hostname.clone()
            };
            let op = Op::CreateMachine(op::CreateMachine {
                system_id,
                hostname,
                arch: arch.clone(),
                zone: zone.clone(),
                macs: macs.clone(),
                power: req.power.clone(),
                description: req.description.clone(),
                pool: pool.clone(),
            });
            match self.region.write(self.command(actor, op)).await {
                Err(e) if e.field.as_deref() == Some("system_id") => continue,
                r => return machine(r?),
            }
        }
        Err(DomainError::internal(
            "could not find a free system id after 5 tries",
        ))
    }

    /// Finds one machine (non-admins see only unowned machines and their own).
    pub async fn get_machine(
        &self,
        actor: &Actor,
        key: MachineKey,
        linearizable: bool,
    ) -> Result<Machine, DomainError> {
        self.read(actor, linearizable, |st| {
            key.find(st)?
                .filter(|m| visible(actor, m))
                .cloned()
                .ok_or_else(|| DomainError::not_found(format!("no machine with {key:?}")))
        })
        .await?
    }

    /// The system id `key` names, read from local state (the apply step re-checks everything).
    pub async fn resolve(&self, key: &MachineKey) -> Result<String, DomainError> {
        if let MachineKey::SystemId(id) = key {
            validate::key("machine.system_id", id)?;
            return Ok(id.clone());
        }
        for linearizable in [false, true] {
            let found = self
                .read_internal(linearizable, |st| {
                    key.find(st).map(|m| m.map(|m| m.system_id.clone()))
                })
                .await??;
            if let Some(id) = found {
                return Ok(id);
            }
        }
        Err(DomainError::not_found(format!("no machine with {key:?}")))
    }

    /// Runs a lifecycle action on the machine `key` names. Actions that start a boot carry fresh
    /// per-boot credentials.
    pub async fn act(
        &self,
        actor: &Actor,
        key: MachineKey,
        action: Action,
        expected_revision: u64,
        mut args: ActionArgs,
    ) -> Result<Machine, DomainError> {
        validate::description("comment", &args.comment)?;
        if action.admin_only() {
            actor.require_admin(&format!("{} machines", action.as_str()))?;
        }
        match action {
            Action::SetZone => validate::dns_label("zone", &args.zone)?,
            Action::SetPool => validate::dns_label("pool", &args.pool)?,
            Action::Tag | Action::Untag => {
                if args.tags.is_empty() {
                    return Err(DomainError::invalid("tags", "name at least one tag"));
                }
                validate::entries("tags", args.tags.len(), validate::limits::NAME_LIST)?;
                for (i, t) in args.tags.iter().enumerate() {
                    validate::name(&format!("tags[{i}]"), t)?;
                }
            }
            Action::Deploy => {
                if let Some(d) = &args.deploy {
                    validate::bytes("user_data", &d.user_data, validate::limits::USER_DATA)?;
                    validate::entries("ssh_keys", d.ssh_keys.len(), validate::limits::SSH_KEYS)?;
                    for (i, k) in d.ssh_keys.iter().enumerate() {
                        validate::ssh_key(&format!("ssh_keys[{i}]"), k)?;
                    }
                    if !d.disk.is_empty() {
                        validate::name("disk", &d.disk)?;
                    }
                    for (f, v) in [("osystem", &d.osystem), ("distro_series", &d.distro_series)] {
                        if !v.is_empty() {
                            validate::name(f, v)?;
                        }
                    }
                }
            }
            _ => {}
        }
        if action == Action::Release {
            // Releasing is safe to retry: a machine the caller may see that is already on its way back
            // (or back in the pool) is an answer, not an error. Anyone else's goes on to the apply step's
            // authorization (PERMISSION_DENIED).
            if let Ok(m) = self.get_machine(actor, key.clone(), true).await {
                let mine = actor.is_admin() || m.owner.as_deref() == Some(actor.name.as_str());
                if (mine
                    && matches!(
                        m.status,
                        MachineStatus::Releasing | MachineStatus::DiskErasing
                    ))
                    || (m.status == MachineStatus::Ready && m.owner.is_none())
                {
                    return Ok(m);
                }
            }
        }
        let system_id = self.resolve(&key).await?;
        args.boot = BootTokens::generate();
        let op = Op::MachineAction(op::MachineAction {
            system_id,
            action,
            expected_revision,
            args,
        });
        match self.region.write(self.command(actor, op)).await? {
            Reply::Machine(m) => Ok(*m),
            Reply::Done => Err(DomainError::not_found("the machine was deleted")),
            other => Err(super::unexpected(other)),
        }
    }

    /// Issues credentials for the current boot of a machine (admin): what the boot path gives the agent.
    /// The token is made here and returned once; only its hash reaches the log ([`op::IssueBootToken`]),
    /// and it replaces the boot's earlier token. Returns the system id, the boot and the token.
    pub async fn boot_credentials(
        &self,
        actor: &Actor,
        key: MachineKey,
    ) -> Result<(String, BootSession, String), DomainError> {
        actor.require_admin("read boot credentials")?;
        let (system_id, boot) = self.current_boot(actor, &key).await?;
        let token = secret::generate("boot_");
        let op = Op::IssueBootToken(op::IssueBootToken {
            system_id: system_id.clone(),
            boot_id: boot.boot_id.clone(),
            token_hash: secret::hash(&token),
        });
        let m = machine(self.region.write(self.command(actor, op)).await?)?;
        let boot = m.boot.ok_or_else(|| {
            DomainError::precondition(format!("machine {system_id} has no boot any more"))
        })?;
        Ok((system_id, boot, token))
    }

    /// The machine `key` names and its current boot, read linearizably.
    async fn current_boot(
        &self,
        actor: &Actor,
        key: &MachineKey,
    ) -> Result<(String, BootSession), DomainError> {
        self.read(actor, true, |st| {
            let m = key
                .find(st)?
                .ok_or_else(|| DomainError::not_found(format!("no machine with {key:?}")))?;
            let b = m.boot.clone().ok_or_else(|| {
                DomainError::precondition(format!(
                    "machine {} is {}: it is not booting for Ingot, so it has no boot credentials",
                    m.system_id,
                    m.status.as_str()
                ))
            })?;
            Ok((m.system_id.clone(), b))
        })
        .await?
    }

    /// One page of machines, each turned into `T` by `f` under the read lock (so a large page is never
    /// cloned twice). `page_token` is the last system id of the previous page. Returns the page, the next
    /// token, the total matching, and the revision the page was read at.
    pub async fn list_machines<T: Send>(
        &self,
        actor: &Actor,
        page: MachinePage<'_>,
        f: impl Fn(&State, &Machine) -> T + Sync,
    ) -> Result<(Vec<T>, String, u64, u64), DomainError> {
        let MachinePage {
            query: q,
            page_size,
            page_token,
            linearizable,
        } = page;
        let limit = match page_size {
            0 => 500,
            n if n > MAX_PAGE => {
                return Err(DomainError::invalid(
                    "page_size",
                    format!("at most {MAX_PAGE}"),
                ))
            }
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
        let (page, last, more, total, rev) = self
            .read(actor, linearizable, |st| {
                let (page, more, total) = st.list_machines(&q, after.as_deref(), limit);
                let last = page.last().map(|m| m.system_id.clone());
                let out: Vec<T> = convert_parallel(&page, &|m: &Machine| f(st, m));
                (out, last, more, total, st.data.revision)
            })
            .await?;
        let next = match (more, last) {
            (true, Some(id)) => base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                id.as_bytes(),
            ),
            _ => String::new(),
        };
        Ok((page, next, total, rev))
    }

    /// Changes a machine.
    pub async fn update_machine(
        &self,
        actor: &Actor,
        system_id: String,
        c: MachineChange,
    ) -> Result<Machine, DomainError> {
        actor.require_admin("change machines")?;
        validate::key("system_id", &system_id)?;
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
        let op = Op::UpdateMachine(op::UpdateMachine {
            system_id,
            hostname: c.hostname,
            arch: c.arch,
            zone: c.zone,
            description: c.description,
            power: c.power,
            macs,
            expected_revision: c.expected_revision,
        });
        machine(self.region.write(self.command(actor, op)).await?)
    }

    /// Removes a machine (refused while it is owned or locked).
    pub async fn delete_machine(
        &self,
        actor: &Actor,
        system_id: String,
        expected_revision: u64,
    ) -> Result<(), DomainError> {
        actor.require_admin("delete machines")?;
        validate::key("system_id", &system_id)?;
        self.region
            .write(self.command(
                actor,
                Op::DeleteMachine(op::DeleteMachine {
                    system_id,
                    expected_revision,
                }),
            ))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use validate::limits::KEY;

    #[test]
    fn machine_keys_are_bounded_and_named() {
        assert!(MachineKey::Consumer("c".repeat(KEY))
            .check("machine")
            .is_ok());
        let e = MachineKey::Consumer("c".repeat(KEY + 1))
            .check("machine")
            .unwrap_err();
        assert_eq!(e.message, "machine.consumer: 257 bytes, at most 256");
        let e = MachineKey::SystemId(format!("{}é", "s".repeat(KEY - 1)))
            .check("")
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("system_id"));
        let e = MachineKey::ProviderId("p".repeat(5 * 1024 * 1024))
            .check("machine")
            .unwrap_err();
        assert!(e.message.len() < 100, "no echo: {}", e.message.len());
    }
}
