//! Availability zones.

use super::{Actor, App};
use crate::command::{Op, Reply};
use ingot_common::{validate, DomainError, Zone};

fn zone(r: Reply) -> Result<Zone, DomainError> {
    match r {
        Reply::Zone(z) => Ok(z),
        other => Err(DomainError::internal(format!("unexpected reply {other:?}"))),
    }
}

impl App {
    /// Creates a zone.
    pub async fn create_zone(
        &self,
        actor: &Actor,
        name: String,
        description: String,
    ) -> Result<(Zone, u64), DomainError> {
        actor.require_admin("create zones")?;
        validate::dns_label("name", &name)?;
        validate::description("description", &description)?;
        Ok((
            zone(
                self.region
                    .write(self.command(actor, Op::CreateZone { name, description }))
                    .await?,
            )?,
            0,
        ))
    }

    /// A zone and its machine count.
    pub async fn get_zone(
        &self,
        name: &str,
        linearizable: bool,
    ) -> Result<(Zone, u64), DomainError> {
        self.read(linearizable, |st| {
            st.data
                .zones
                .get(name)
                .map(|z| (z.clone(), st.zone_count(name)))
                .ok_or_else(|| DomainError::not_found(format!("zone '{name}' does not exist")))
        })
        .await?
    }

    /// All zones with their machine counts.
    pub async fn list_zones(&self, linearizable: bool) -> Result<Vec<(Zone, u64)>, DomainError> {
        self.read(linearizable, |st| {
            st.data
                .zones
                .values()
                .map(|z| (z.clone(), st.zone_count(&z.name)))
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
    ) -> Result<(Zone, u64), DomainError> {
        actor.require_admin("change zones")?;
        if let Some(n) = &new_name {
            validate::dns_label("new_name", n)?;
        }
        let z = zone(
            self.region
                .write(self.command(
                    actor,
                    Op::UpdateZone {
                        name,
                        description,
                        new_name,
                    },
                ))
                .await?,
        )?;
        let count = self
            .region
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .zone_count(&z.name);
        Ok((z, count))
    }

    /// Deletes an empty zone.
    pub async fn delete_zone(&self, actor: &Actor, name: String) -> Result<(), DomainError> {
        actor.require_admin("delete zones")?;
        self.region
            .write(self.command(actor, Op::DeleteZone { name }))
            .await?;
        Ok(())
    }
}
