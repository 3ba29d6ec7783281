//! Cluster membership: list regions with their live Raft status, join tokens, admission, removal; and
//! cluster-wide settings (deadlines of in-progress statuses).

use super::{Actor, App};
use crate::apply::cluster::{join_token_error, token_standing, TokenStanding};
use crate::command::{op, Internal, Op, Principal, Reply};
use crate::node::Forwarded;
use crate::raft::RaftStatus;
use crate::state::{Data, Settings};
use ingot_common::lifecycle;
use ingot_common::pki::{self, Identity};
use ingot_common::{secret, validate, DomainError, MachineStatus, NodeId};
use std::collections::BTreeMap;
use std::time::Duration;

/// Seconds a machine may stay in each in-progress status before it fails: what `GetSettings` and
/// `UpdateSettings` answer.
pub type Deadlines = BTreeMap<MachineStatus, u64>;

/// How long `ListRegions` waits for each region's status.
const STATUS_WAIT: Duration = Duration::from_millis(1500);

/// Longest deadline accepted (the apply step enforces the same bound).
pub const MAX_DEADLINE_S: u64 = 7 * 24 * 3600;

/// The statuses that have deadlines, in lifecycle order.
fn in_progress_statuses() -> impl Iterator<Item = MachineStatus> {
    MachineStatus::ALL
        .into_iter()
        .filter(|s| lifecycle::in_progress(*s))
}

/// The effective deadline of every in-progress status: its setting, or the default.
fn effective_deadlines(settings: &Settings) -> Deadlines {
    in_progress_statuses()
        .filter_map(|s| settings.deadline_s(s).map(|d| (s, d)))
        .collect()
}

/// Parses `UpdateSettings` keys (status names, `_` or `-`, any case) into the replicated change. Every
/// failure names its key as `deadline_seconds[<key>]`.
fn parse_deadlines(
    input: &BTreeMap<String, u64>,
) -> Result<Vec<(MachineStatus, u64)>, DomainError> {
    let names = || {
        in_progress_statuses()
            .map(MachineStatus::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut seen: BTreeMap<MachineStatus, &str> = BTreeMap::new();
    let mut out = Vec::with_capacity(input.len());
    for (key, secs) in input {
        let field = format!("deadline_seconds[{key}]");
        let s = MachineStatus::parse(key).ok_or_else(|| {
            DomainError::invalid(&field, format!("unknown status; use one of: {}", names()))
        })?;
        if !lifecycle::in_progress(s) {
            return Err(DomainError::invalid(
                &field,
                format!(
                    "'{}' is not an in-progress status; only these have deadlines: {}",
                    s.as_str(),
                    names()
                ),
            ));
        }
        if *secs > MAX_DEADLINE_S {
            return Err(DomainError::invalid(
                &field,
                format!("at most 7 days ({MAX_DEADLINE_S} s); 0 restores the default"),
            ));
        }
        if let Some(prev) = seen.insert(s, key) {
            return Err(DomainError::invalid(
                &field,
                format!("names the same status as '{prev}'"),
            ));
        }
        out.push((s, *secs));
    }
    Ok(out)
}

/// One region as reported by ListRegions.
#[derive(Debug, Clone, Default)]
pub struct RegionView {
    /// Raft node id.
    pub node_id: NodeId,
    /// Name.
    pub name: String,
    /// Raft listener.
    pub raft_addr: String,
    /// API listener.
    pub api_addr: String,
    /// Counts towards quorum.
    pub voter: bool,
    /// Live status, if the region answered.
    pub status: Option<RaftStatus>,
    /// Why it did not answer.
    pub error: String,
}

/// What an admitted region receives.
#[derive(Debug)]
pub struct Admission {
    /// Its node id.
    pub node_id: NodeId,
    /// The cluster it joined.
    pub cluster_id: String,
    /// Its certificate.
    pub cert_pem: String,
    /// The cluster CA certificate.
    pub ca_pem: String,
    /// Raft addresses of the current members.
    pub raft_addrs: Vec<String>,
}

impl App {
    /// Every member (and admitted-but-not-yet-member region) with a live status probe of each.
    pub async fn list_regions(&self) -> Result<(String, NodeId, Vec<RegionView>), DomainError> {
        let region = &self.region;
        let metrics = region.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let (cluster_id, known) = {
            let st = crate::locks::read(&region.state);
            (
                st.data
                    .cluster
                    .as_ref()
                    .map(|c| c.cluster_id.clone())
                    .unwrap_or_default(),
                st.data.regions.clone(),
            )
        };
        let mut views: Vec<RegionView> = membership
            .nodes()
            .map(|(id, node)| {
                let info = known.get(id);
                RegionView {
                    node_id: *id,
                    name: info.map(|r| r.name.clone()).unwrap_or_default(),
                    raft_addr: node.addr.clone(),
                    api_addr: info.map(|r| r.api_addr.clone()).unwrap_or_default(),
                    voter: voters.contains(id),
                    ..Default::default()
                }
            })
            .collect();
        for (id, r) in &known {
            if !views.iter().any(|v| v.node_id == *id) {
                views.push(RegionView {
                    node_id: *id,
                    name: r.name.clone(),
                    raft_addr: r.raft_addr.clone(),
                    api_addr: r.api_addr.clone(),
                    error: "admitted, not yet a member (joining, or its join failed)".into(),
                    ..Default::default()
                });
            }
        }
        let probes = views.iter().map(|v| {
            let (id, addr) = (v.node_id, v.raft_addr.clone());
            async move {
                if id == region.id {
                    return Ok(crate::raft::service::local_status(region));
                }
                region.peers.status(id, &addr, STATUS_WAIT).await
            }
        });
        let results = futures::future::join_all(probes).await;
        for (v, r) in views.iter_mut().zip(results) {
            match r {
                Ok(s) => v.status = Some(s),
                Err(e) if v.error.is_empty() => v.error = e,
                Err(_) => {}
            }
        }
        views.sort_by_key(|v| v.node_id);
        Ok((cluster_id, metrics.current_leader.unwrap_or(0), views))
    }

    /// A single-use join token valid for `ttl`.
    pub async fn create_join_token(
        &self,
        actor: &Actor,
        ttl: Duration,
    ) -> Result<(String, u64), DomainError> {
        actor.require_admin("create join tokens")?;
        if ttl > Duration::from_secs(7 * 24 * 3600) {
            return Err(DomainError::invalid("ttl_seconds", "at most 7 days"));
        }
        let token = secret::generate("ingotjoin_");
        let expires_ms = ingot_common::now_ms() + ttl.as_millis() as u64;
        let op = Op::CreateJoinToken(op::CreateJoinToken {
            token_hash: secret::hash(&token),
            expires_ms,
        });
        self.region.write(self.command(actor, op)).await?;
        Ok((token, expires_ms))
    }

    /// Admits a region holding a valid join token and signs its CSR with the cluster CA.
    pub async fn join_region(
        &self,
        token: &str,
        name: &str,
        csr_pem: &str,
        raft_addr: &str,
        api_addr: &str,
    ) -> Result<Admission, DomainError> {
        if token.is_empty() {
            return Err(DomainError::invalid(
                "token",
                "required: create one with `ingot cluster join-token`",
            ));
        }
        validate::bytes("token", token, validate::limits::TOKEN)?;
        validate::dns_label("name", name)?;
        validate::address("raft_addr", raft_addr)?;
        validate::address("api_addr", api_addr)?;
        validate::bytes("csr_pem", csr_pem, validate::limits::PEM)?;
        pki::check_csr(csr_pem).map_err(|e| DomainError::invalid("csr_pem", e.to_string()))?;
        let token_hash = secret::hash(token);
        self.check_token_before_proposing(|d| &d.join_tokens, &token_hash, join_token_error)
            .await?;
        let actor = super::Actor {
            name: format!("join:{name}"),
            role: "region".into(),
            principal: Principal::Internal(Internal::JoiningRegion),
        };
        let op = Op::AdmitRegion(op::AdmitRegion {
            token_hash: token_hash.clone(),
            name: name.to_string(),
            raft_addr: raft_addr.to_string(),
            api_addr: api_addr.to_string(),
        });
        let info = match self.region.write(self.command(&actor, op)).await? {
            Reply::Region(r) => r,
            other => return Err(super::unexpected(other)),
        };
        let ca = {
            let st = crate::locks::read(&self.region.state);
            st.data
                .cluster
                .clone()
                .ok_or_else(|| DomainError::unavailable("cluster not bootstrapped yet"))?
        };
        let cert_pem = ca
            .ca
            .sign_csr_with_serial(
                csr_pem,
                &Identity::region(info.node_id, &[raft_addr, api_addr]),
                &pki::serial_for(&token_hash),
            )
            .map_err(|e| DomainError::internal(format!("signing the certificate failed: {e}")))?;
        let raft_addrs = self.cluster_endpoints();
        Ok(Admission {
            node_id: info.node_id,
            cluster_id: ca.cluster_id,
            cert_pem,
            ca_pem: ca.ca.cert_pem,
            raft_addrs,
        })
    }

    /// Refuses a single-use token (join or enrollment: `tokens` picks its map) that local state says is
    /// unknown, used or expired, before anything is proposed: a bad token never becomes a log entry. A
    /// token not valid locally is looked up once more after a linearizable barrier (it may have been
    /// created through another region a moment ago). Apply checks again and has the final word.
    pub(super) async fn check_token_before_proposing(
        &self,
        tokens: fn(&Data) -> &BTreeMap<String, u64>,
        token_hash: &str,
        error: fn(&TokenStanding) -> DomainError,
    ) -> Result<(), DomainError> {
        let standing = |st: &crate::state::State| {
            token_standing(tokens(&st.data), token_hash, ingot_common::now_ms())
        };
        if let TokenStanding::Valid(_) = self.read_internal(false, standing).await? {
            return Ok(());
        }
        match self.read_internal(true, standing).await? {
            TokenStanding::Valid(_) => Ok(()),
            other => Err(error(&other)),
        }
    }

    /// Removes a region from the membership.
    pub async fn remove_region(&self, actor: &Actor, node_id: NodeId) -> Result<(), DomainError> {
        actor.require_admin("remove regions")?;
        if node_id == 0 {
            return Err(DomainError::invalid("node_id", "required"));
        }
        self.region
            .leader_op(Forwarded::RemoveRegion {
                node_id,
                actor: actor.name.clone(),
                principal: Some(actor.principal.clone()),
            })
            .await?;
        Ok(())
    }

    /// The effective deadline of every in-progress status. Any authenticated caller may read them.
    pub async fn get_settings(&self, actor: &Actor) -> Result<Deadlines, DomainError> {
        self.read(actor, true, |st| effective_deadlines(&st.data.settings))
            .await
    }

    /// Changes the deadlines given (admin); 0 restores a status' default. Answers the effective
    /// deadlines after the change.
    pub async fn update_settings(
        &self,
        actor: &Actor,
        deadline_seconds: BTreeMap<String, u64>,
    ) -> Result<Deadlines, DomainError> {
        actor.require_admin("change settings")?;
        let deadlines = parse_deadlines(&deadline_seconds)?;
        if !deadlines.is_empty() {
            self.region
                .write(self.command(actor, Op::UpdateSettings(op::UpdateSettings { deadlines })))
                .await?;
        }
        Ok(self
            .read_after_write(|st| effective_deadlines(&st.data.settings))
            .await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ingot_common::ErrorCode;

    fn input(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn every_in_progress_status_has_an_effective_deadline() {
        let mut settings = Settings::default();
        let d = effective_deadlines(&settings);
        assert_eq!(d.len(), 7);
        assert!(d.keys().all(|s| lifecycle::in_progress(*s)));
        assert_eq!(
            d.get(&MachineStatus::Deploying).copied(),
            lifecycle::default_deadline_s(MachineStatus::Deploying)
        );
        settings.deadlines.insert(MachineStatus::Deploying, 99);
        assert_eq!(
            effective_deadlines(&settings).get(&MachineStatus::Deploying),
            Some(&99)
        );
    }

    #[test]
    fn keys_parse_in_either_spelling() {
        let got = parse_deadlines(&input(&[("disk_erasing", 60), ("Commissioning", 0)])).unwrap();
        assert_eq!(
            got,
            [
                (MachineStatus::Commissioning, 0),
                (MachineStatus::DiskErasing, 60)
            ]
        );
        assert!(parse_deadlines(&BTreeMap::new()).unwrap().is_empty());
    }

    #[test]
    fn bad_keys_name_the_field() {
        for (k, v) in [
            ("bogus", 1),
            ("ready", 1),
            ("deploying", MAX_DEADLINE_S + 1),
        ] {
            let e = parse_deadlines(&input(&[(k, v)])).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidArgument);
            assert_eq!(e.field, Some(format!("deadline_seconds[{k}]")));
        }
        let e = parse_deadlines(&input(&[("disk-erasing", 1), ("disk_erasing", 2)])).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("deadline_seconds[disk_erasing]"));
    }
}
