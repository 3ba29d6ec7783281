//! Resource pools: administrative groupings of machines (a team's budget, a project), orthogonal to
//! zones. Allocation can ask for or avoid pools; the pool `default` always exists.

use super::required;
use super::zones::StatusCounts;
use super::{Actor, App};
use crate::command::{op, Op, Reply};
use crate::state::State;
use ingot_common::model::Pool;
use ingot_common::{validate, DomainError};

fn pool(r: Reply) -> Result<Pool, DomainError> {
    match r {
        Reply::Pool(p) => Ok(p),
        other => Err(super::unexpected(other)),
    }
}

/// Machines per status in pool `name`, from the pool index (no scan of all machines).
fn counts(st: &State, name: &str) -> StatusCounts {
    st.by_pool
        .get(name)
        .map(|ids| st.status_counts(ids))
        .unwrap_or_default()
}

impl App {
    /// Creates an empty pool (admin).
    pub async fn create_pool(
        &self,
        actor: &Actor,
        name: String,
        description: String,
    ) -> Result<(Pool, StatusCounts), DomainError> {
        actor.require_admin("create pools")?;
        validate::dns_label("name", &name)?;
        validate::description("description", &description)?;
        let p = pool(
            self.region
                .write(self.command(actor, Op::CreatePool(op::CreatePool { name, description })))
                .await?,
        )?;
        Ok((p, StatusCounts::new()))
    }

    /// A pool and its machines per status.
    pub async fn get_pool(
        &self,
        actor: &Actor,
        name: &str,
        linearizable: bool,
    ) -> Result<(Pool, StatusCounts), DomainError> {
        required("name", name)?;
        self.read(actor, linearizable, |st| {
            st.data
                .pools
                .get(name)
                .map(|p| (p.clone(), counts(st, name)))
                .ok_or_else(|| DomainError::not_found(format!("pool '{name}' does not exist")))
        })
        .await?
    }

    /// All pools, by name, with their machines per status.
    pub async fn list_pools(
        &self,
        actor: &Actor,
        linearizable: bool,
    ) -> Result<Vec<(Pool, StatusCounts)>, DomainError> {
        self.read(actor, linearizable, |st| {
            st.data
                .pools
                .values()
                .map(|p| (p.clone(), counts(st, &p.name)))
                .collect()
        })
        .await
    }

    /// Changes a pool's description (admin).
    pub async fn update_pool(
        &self,
        actor: &Actor,
        name: String,
        description: Option<String>,
    ) -> Result<(Pool, StatusCounts), DomainError> {
        actor.require_admin("change pools")?;
        required("name", &name)?;
        if let Some(d) = &description {
            validate::description("description", d)?;
        }
        let p = pool(
            self.region
                .write(self.command(actor, Op::UpdatePool(op::UpdatePool { name, description })))
                .await?,
        )?;
        let c = self.read_after_write(|st| counts(st, &p.name)).await;
        Ok((p, c))
    }

    /// Deletes an empty pool other than `default` (admin).
    pub async fn delete_pool(&self, actor: &Actor, name: String) -> Result<(), DomainError> {
        actor.require_admin("delete pools")?;
        required("name", &name)?;
        self.region
            .write(self.command(actor, Op::DeletePool(op::DeletePool { name })))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::zones::tests::machine;
    use ingot_common::MachineStatus;

    #[test]
    fn counts_group_a_pool_by_status() {
        let mut st = State::default();
        let mut a = machine("a", "z1", MachineStatus::Ready);
        a.pool = "gpu".into();
        let mut b = machine("b", "z2", MachineStatus::Deployed);
        b.pool = "gpu".into();
        st.put_machine(a);
        st.put_machine(b);
        st.put_machine(machine("c", "z1", MachineStatus::Ready));
        let c = counts(&st, "gpu");
        assert_eq!(c.get(&MachineStatus::Ready), Some(&1));
        assert_eq!(c.get(&MachineStatus::Deployed), Some(&1));
        assert_eq!(counts(&st, "default").values().sum::<u64>(), 1);
        assert!(counts(&st, "none").is_empty());
    }

    #[test]
    fn empty_names_are_refused_naming_the_field() {
        let e = required("name", "").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("name"));
        assert!(required("name", "x").is_ok());
        let at = "n".repeat(ingot_common::validate::limits::KEY);
        assert!(required("name", &at).is_ok());
        let e = required("name", &format!("{at}n")).unwrap_err();
        assert_eq!(e.message, "name: 257 bytes, at most 256");
    }
}
