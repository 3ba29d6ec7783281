//! Tags: manual labels admins put on machines, or definitions over the inventory that the apply step
//! keeps applied to exactly the matching machines.

use super::required;
use super::{Actor, App};
use crate::command::{op, Op, Reply};
use crate::state::State;
use ingot_common::model::Tag;
use ingot_common::{tagexpr, validate, DomainError};

fn tag(r: Reply) -> Result<Tag, DomainError> {
    match r {
        Reply::Tag(t) => Ok(t),
        other => Err(super::unexpected(other)),
    }
}

/// Machines carrying tag `name`, from the tag index.
fn machine_count(st: &State, name: &str) -> u64 {
    st.by_tag.get(name).map(|s| s.len() as u64).unwrap_or(0)
}

/// Checks a definition at the edge so a syntax error is reported (with its position) without a round
/// trip through the log; the apply step checks again. Empty means a manual tag.
fn check_definition(definition: &str) -> Result<(), DomainError> {
    if !definition.is_empty() {
        tagexpr::check("definition", definition)?;
    }
    Ok(())
}

impl App {
    /// Creates a tag (admin); with a definition, the same command applies it to every matching machine.
    pub async fn create_tag(
        &self,
        actor: &Actor,
        name: String,
        definition: String,
        comment: String,
    ) -> Result<(Tag, u64), DomainError> {
        actor.require_admin("create tags")?;
        validate::name("name", &name)?;
        check_definition(&definition)?;
        validate::description("comment", &comment)?;
        let t = tag(self
            .region
            .write(self.command(
                actor,
                Op::CreateTag(op::CreateTag {
                    name,
                    definition,
                    comment,
                }),
            ))
            .await?)?;
        let n = self.read_after_write(|st| machine_count(st, &t.name)).await;
        Ok((t, n))
    }

    /// A tag and the number of machines carrying it.
    pub async fn get_tag(
        &self,
        actor: &Actor,
        name: &str,
        linearizable: bool,
    ) -> Result<(Tag, u64), DomainError> {
        required("name", name)?;
        self.read(actor, linearizable, |st| {
            st.data
                .tags
                .get(name)
                .map(|t| (t.clone(), machine_count(st, name)))
                .ok_or_else(|| DomainError::not_found(format!("tag '{name}' does not exist")))
        })
        .await?
    }

    /// All tags, by name, with their machine counts.
    pub async fn list_tags(
        &self,
        actor: &Actor,
        linearizable: bool,
    ) -> Result<Vec<(Tag, u64)>, DomainError> {
        self.read(actor, linearizable, |st| {
            st.data
                .tags
                .values()
                .map(|t| (t.clone(), machine_count(st, &t.name)))
                .collect()
        })
        .await
    }

    /// Changes a tag's definition or comment (admin). A new definition is re-evaluated against every
    /// machine in the same replicated command; an empty one makes the tag manual.
    pub async fn update_tag(
        &self,
        actor: &Actor,
        name: String,
        definition: Option<String>,
        comment: Option<String>,
    ) -> Result<(Tag, u64), DomainError> {
        actor.require_admin("change tags")?;
        required("name", &name)?;
        if let Some(d) = &definition {
            check_definition(d)?;
        }
        if let Some(c) = &comment {
            validate::description("comment", c)?;
        }
        let t = tag(self
            .region
            .write(self.command(
                actor,
                Op::UpdateTag(op::UpdateTag {
                    name,
                    definition,
                    comment,
                }),
            ))
            .await?)?;
        let n = self.read_after_write(|st| machine_count(st, &t.name)).await;
        Ok((t, n))
    }

    /// Deletes a tag and removes it from every machine (admin).
    pub async fn delete_tag(&self, actor: &Actor, name: String) -> Result<(), DomainError> {
        actor.require_admin("delete tags")?;
        required("name", &name)?;
        self.region
            .write(self.command(actor, Op::DeleteTag(op::DeleteTag { name })))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::zones::tests::machine;
    use ingot_common::{ErrorCode, MachineStatus};

    #[test]
    fn machine_count_reads_the_tag_index() {
        let mut st = State::default();
        let mut a = machine("a", "z", MachineStatus::Ready);
        a.tags.insert("gpu".into());
        st.put_machine(a);
        st.put_machine(machine("b", "z", MachineStatus::Ready));
        assert_eq!(machine_count(&st, "gpu"), 1);
        assert_eq!(machine_count(&st, "nope"), 0);
    }

    #[test]
    fn definitions_are_checked_at_the_edge() {
        assert!(check_definition("").is_ok());
        assert!(check_definition("cpu_count >= 16").is_ok());
        let e = check_definition("cpu_count >=").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert_eq!(e.field.as_deref(), Some("definition"));
    }
}
