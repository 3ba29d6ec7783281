//! Availability zones.

use super::required;
use super::{Actor, App};
use crate::command::{op, Op, Reply};
use crate::state::State;
use ingot_common::{validate, DomainError, MachineStatus, Zone};
use std::collections::BTreeMap;

/// Machines per status, as zones and pools show them (statuses without machines are absent).
pub type StatusCounts = BTreeMap<MachineStatus, u64>;

fn zone(r: Reply) -> Result<Zone, DomainError> {
    match r {
        Reply::Zone(z) => Ok(z),
        other => Err(super::unexpected(other)),
    }
}

/// Machines per status in zone `name`, from the zone index (no scan of all machines).
fn counts(st: &State, name: &str) -> StatusCounts {
    st.by_zone
        .get(name)
        .map(|ids| st.status_counts(ids))
        .unwrap_or_default()
}

impl App {
    /// Creates a zone.
    pub async fn create_zone(
        &self,
        actor: &Actor,
        name: String,
        description: String,
    ) -> Result<(Zone, StatusCounts), DomainError> {
        actor.require_admin("create zones")?;
        validate::dns_label("name", &name)?;
        validate::description("description", &description)?;
        let z = zone(
            self.region
                .write(self.command(actor, Op::CreateZone(op::CreateZone { name, description })))
                .await?,
        )?;
        Ok((z, StatusCounts::new()))
    }

    /// A zone and its machines per status.
    pub async fn get_zone(
        &self,
        actor: &Actor,
        name: &str,
        linearizable: bool,
    ) -> Result<(Zone, StatusCounts), DomainError> {
        required("name", name)?;
        self.read(actor, linearizable, |st| {
            st.data
                .zones
                .get(name)
                .map(|z| (z.clone(), counts(st, name)))
                .ok_or_else(|| DomainError::not_found(format!("zone '{name}' does not exist")))
        })
        .await?
    }

    /// All zones with their machines per status.
    pub async fn list_zones(
        &self,
        actor: &Actor,
        linearizable: bool,
    ) -> Result<Vec<(Zone, StatusCounts)>, DomainError> {
        self.read(actor, linearizable, |st| {
            st.data
                .zones
                .values()
                .map(|z| (z.clone(), counts(st, &z.name)))
                .collect()
        })
        .await
    }

    /// Changes a zone's description or name.
    pub async fn update_zone(
        &self,
        actor: &Actor,
        name: String,
        description: Option<String>,
        new_name: Option<String>,
    ) -> Result<(Zone, StatusCounts), DomainError> {
        actor.require_admin("change zones")?;
        required("name", &name)?;
        if let Some(n) = &new_name {
            validate::dns_label("new_name", n)?;
        }
        if let Some(d) = &description {
            validate::description("description", d)?;
        }
        let z = zone(
            self.region
                .write(self.command(
                    actor,
                    Op::UpdateZone(op::UpdateZone {
                        name,
                        description,
                        new_name,
                    }),
                ))
                .await?,
        )?;
        let c = self.read_after_write(|st| counts(st, &z.name)).await;
        Ok((z, c))
    }

    /// Deletes an empty zone.
    pub async fn delete_zone(&self, actor: &Actor, name: String) -> Result<(), DomainError> {
        actor.require_admin("delete zones")?;
        required("name", &name)?;
        self.region
            .write(self.command(actor, Op::DeleteZone(op::DeleteZone { name })))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ingot_common::{Machine, PowerParams};

    /// A minimal machine for index and counting tests.
    pub(crate) fn machine(id: &str, zone: &str, status: MachineStatus) -> Machine {
        Machine {
            system_id: id.into(),
            hostname: format!("h-{id}"),
            arch: "amd64/generic".into(),
            zone: zone.into(),
            status,
            macs: vec![],
            power: PowerParams::default(),
            description: String::new(),
            created_ms: 0,
            updated_ms: 0,
            revision: 1,
            pool: "default".into(),
            tags: Default::default(),
            owner: None,
            allocation: None,
            locked: false,
            inventory: None,
            previous_status: None,
            status_message: String::new(),
            deadline_ms: None,
            boot: None,
            deploy: None,
            erase: Default::default(),
            progress: None,
            rack: None,
            power_state: String::new(),
            power_error: String::new(),
            power_checked_ms: 0,
        }
    }

    #[test]
    fn counts_group_a_zone_by_status() {
        let mut st = State::default();
        st.put_machine(machine("a", "z1", MachineStatus::Ready));
        st.put_machine(machine("b", "z1", MachineStatus::Ready));
        st.put_machine(machine("c", "z1", MachineStatus::New));
        st.put_machine(machine("d", "z2", MachineStatus::Ready));
        let c = counts(&st, "z1");
        assert_eq!(c.get(&MachineStatus::Ready), Some(&2));
        assert_eq!(c.get(&MachineStatus::New), Some(&1));
        assert_eq!(c.values().sum::<u64>(), 3);
        assert!(counts(&st, "nowhere").is_empty());
    }
}
