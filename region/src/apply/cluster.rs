//! The cluster in the apply step: bootstrap, region membership records (join tokens, admission,
//! removal) and settings.

use super::ctx::ApplyCtx;
use super::events::EventBuilder;
use crate::command::{op, Reply, Response};
use crate::state::{ApiToken, ClusterMeta, State};
use ingot_common::lifecycle;
use ingot_common::model::{Pool, Role, User, DEFAULT_POOL, DEFAULT_ZONE};
use ingot_common::pki;
use ingot_common::{secret, validate, DomainError, NodeId, RegionInfo, Zone};

/// First entry of a new cluster: its identity and CA, the admin user and token, the default pool and
/// zone, the first region.
pub(super) fn bootstrap(ctx: &ApplyCtx, state: &mut State, op: &op::Bootstrap) -> Response {
    let now = ctx.ts_ms;
    if state.data.cluster.is_some() {
        return Err(DomainError::precondition(
            "the cluster is already bootstrapped",
        ));
    }
    state.data.cluster = Some(ClusterMeta {
        cluster_id: op.cluster_id.clone(),
        ca: op.ca.clone(),
        created_ms: now,
    });
    state.put_token(
        op.admin_token_hash.clone(),
        ApiToken {
            name: "admin".into(),
            role: "admin".into(),
            created_ms: now,
            id: "admin-init".into(),
            description: "made by ingot-region init".into(),
            expires_ms: None,
        },
    );
    state.data.users.insert(
        "admin".into(),
        User {
            name: "admin".into(),
            role: Role::Admin,
            created_ms: now,
        },
    );
    state.data.pools.insert(
        DEFAULT_POOL.into(),
        Pool {
            name: DEFAULT_POOL.into(),
            description: "Default pool".into(),
            created_ms: now,
        },
    );
    state.data.zones.insert(
        DEFAULT_ZONE.into(),
        Zone {
            name: DEFAULT_ZONE.into(),
            description: "Default zone".into(),
            created_ms: now,
        },
    );
    let first = &op.first_region;
    state.data.regions.insert(first.node_id, first.clone());
    state.data.next_node_id = first.node_id + 1;
    Ok(Reply::Done)
}

/// Records a join token; expired ones are forgotten.
pub(super) fn create_join_token(
    ctx: &ApplyCtx,
    state: &mut State,
    op: &op::CreateJoinToken,
) -> Response {
    // Forget expired tokens while we are here, so the map cannot grow without bound.
    let now = ctx.ts_ms;
    state.data.join_tokens.retain(|_, exp| *exp > now);
    state
        .data
        .join_tokens
        .insert(op.token_hash.clone(), op.expires_ms);
    Ok(Reply::Done)
}

/// Where a presented single-use token stands against the state's unused tokens (hash -> expiry ms).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TokenStanding {
    /// Unused and unexpired; the stored hash.
    Valid(String),
    /// Unused but expired; the stored hash (apply forgets it).
    Expired(String),
    /// Unknown or already used.
    Unknown,
}

/// Looks `token_hash` up in `tokens` at time `now_ms` (constant-time comparison of every hash). The API
/// runs this against local state before proposing, so a bad token never reaches the log; apply runs it
/// again as the final word.
pub(crate) fn token_standing(
    tokens: &std::collections::BTreeMap<String, u64>,
    token_hash: &str,
    now_ms: u64,
) -> TokenStanding {
    match tokens
        .iter()
        .find(|(h, _)| secret::hashes_equal(h, token_hash))
    {
        Some((h, exp)) if *exp > now_ms => TokenStanding::Valid(h.clone()),
        Some((h, _)) => TokenStanding::Expired(h.clone()),
        None => TokenStanding::Unknown,
    }
}

/// The error for a join token that is not [`TokenStanding::Valid`].
pub(crate) fn join_token_error(standing: &TokenStanding) -> DomainError {
    match standing {
        TokenStanding::Expired(_) => DomainError::unauthenticated(
            "join token expired: create a new one with `ingot cluster join-token`",
        ),
        _ => DomainError::unauthenticated(
            "join token unknown or already used: create a new one with `ingot cluster join-token`",
        ),
    }
}

/// Consumes a join token and records the region under the next node id, with the serial of the
/// certificate its admitting region signs for it.
pub(super) fn admit_region(ctx: &ApplyCtx, state: &mut State, op: &op::AdmitRegion) -> Response {
    let name = &op.name;
    let stored = match token_standing(&state.data.join_tokens, &op.token_hash, ctx.ts_ms) {
        TokenStanding::Valid(h) => h,
        standing => {
            if let TokenStanding::Expired(h) = &standing {
                state.data.join_tokens.remove(h);
            }
            return Err(join_token_error(&standing));
        }
    };
    validate::dns_label("name", name)?;
    if state.data.regions.values().any(|r| &r.name == name) {
        return Err(DomainError::exists(
            "name",
            format!("a region named '{name}' is already a member"),
        ));
    }
    state.data.join_tokens.remove(&stored);
    let node_id = state.data.next_node_id.max(2);
    state.data.next_node_id = node_id + 1;
    let r = RegionInfo {
        node_id,
        name: name.clone(),
        raft_addr: op.raft_addr.clone(),
        api_addr: op.api_addr.clone(),
        joined_ms: ctx.ts_ms,
    };
    state.data.regions.insert(node_id, r.clone());
    state
        .data
        .cert_serials
        .insert(region_common_name(node_id), pki::serial_for(&op.token_hash));
    Ok(Reply::Region(r))
}

/// The common name of region `node_id`'s certificate.
pub(crate) fn region_common_name(node_id: NodeId) -> String {
    format!("region-{node_id}")
}

/// Puts the certificate issued under `common_name` (if its serial is known) on the revocation list.
pub(super) fn revoke_certificate(state: &mut State, common_name: &str) {
    if let Some(serial) = state.data.cert_serials.remove(common_name) {
        state.data.revoked_serials.insert(serial);
    }
}

/// Drops a removed region's record, its image blob copies (it serves them no more) and revokes its
/// certificate.
pub(super) fn forget_region(_ctx: &ApplyCtx, state: &mut State, op: &op::ForgetRegion) -> Response {
    state.data.regions.remove(&op.node_id);
    for holders in state.data.blob_holders.values_mut() {
        holders.remove(&op.node_id);
    }
    revoke_certificate(state, &region_common_name(op.node_id));
    Ok(Reply::Done)
}

/// Changes deadlines; 0 restores the default.
pub(super) fn update_settings(
    ctx: &ApplyCtx,
    state: &mut State,
    op: &op::UpdateSettings,
) -> Response {
    let deadlines = &op.deadlines;
    for (s, secs) in deadlines {
        if !lifecycle::in_progress(*s) {
            return Err(DomainError::invalid(
                format!("deadline_seconds[{}]", s.as_str()),
                "only in-progress statuses have deadlines",
            ));
        }
        if *secs > 7 * 24 * 3600 {
            return Err(DomainError::invalid(
                format!("deadline_seconds[{}]", s.as_str()),
                "at most 7 days (604800 s)",
            ));
        }
    }
    for (s, secs) in deadlines {
        if *secs == 0 {
            state.data.settings.deadlines.remove(s);
        } else {
            state.data.settings.deadlines.insert(*s, *secs);
        }
    }
    let msg = deadlines
        .iter()
        .map(|(s, v)| format!("{}={v}s", s.as_str()))
        .collect::<Vec<_>>()
        .join(" ");
    EventBuilder::new("settings.update")
        .message(msg)
        .record(ctx, state);
    Ok(Reply::Done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply;
    use crate::apply::test_support::{bootstrap, cmd};
    use crate::command::Op;
    use ingot_common::ErrorCode;

    fn admitted(token_hash: &str) -> State {
        let mut s = State::default();
        apply(&mut s, &cmd(1, bootstrap()), 1).expect("boot");
        let tok = Op::CreateJoinToken(op::CreateJoinToken {
            token_hash: token_hash.into(),
            expires_ms: 100,
        });
        apply(&mut s, &cmd(2, tok), 2).expect("token");
        let admit = Op::AdmitRegion(op::AdmitRegion {
            token_hash: token_hash.into(),
            name: "r2".into(),
            raft_addr: "10.0.0.2:7001".into(),
            api_addr: "10.0.0.2:7000".into(),
        });
        apply(&mut s, &cmd(3, admit), 3).expect("admit");
        s
    }

    #[test]
    fn a_removed_regions_certificate_goes_on_the_revocation_list() {
        let mut s = admitted("jt");
        let serial = pki::serial_for("jt");
        assert_eq!(
            s.data.cert_serials.get("region-2"),
            Some(&serial),
            "admission records the serial its certificate is signed with"
        );
        assert!(s.data.revoked_serials.is_empty());
        let forget = Op::ForgetRegion(op::ForgetRegion { node_id: 2 });
        apply(&mut s, &cmd(4, forget), 4).expect("forget");
        assert!(s.data.revoked_serials.contains(&serial));
        assert!(!s.data.cert_serials.contains_key("region-2"));
        assert!(!s.data.regions.contains_key(&2));
        // Forgetting a region whose serial is unknown (admitted before serials were recorded) is fine.
        let forget = Op::ForgetRegion(op::ForgetRegion { node_id: 1 });
        apply(&mut s, &cmd(5, forget), 5).expect("forget");
        assert_eq!(s.data.revoked_serials.len(), 1);
    }

    #[test]
    fn token_standing_tells_valid_expired_and_unknown_apart() {
        let tokens = [("a".to_string(), 10u64)].into_iter().collect();
        assert_eq!(
            token_standing(&tokens, "a", 9),
            TokenStanding::Valid("a".into())
        );
        assert_eq!(
            token_standing(&tokens, "a", 10),
            TokenStanding::Expired("a".into())
        );
        assert_eq!(token_standing(&tokens, "b", 0), TokenStanding::Unknown);
        let e = join_token_error(&TokenStanding::Unknown);
        assert_eq!(e.code, ErrorCode::Unauthenticated);
        assert!(e.message.contains("unknown or already used"));
        assert!(join_token_error(&TokenStanding::Expired("a".into()))
            .message
            .contains("expired"));
    }

    #[test]
    fn snapshots_without_the_revocation_fields_load() {
        let s = admitted("jt");
        let mut v = serde_json::to_value(&s.data).expect("serialize");
        let o = v.as_object_mut().expect("object");
        assert!(o.remove("cert_serials").is_some() && o.remove("revoked_serials").is_some());
        let d: crate::state::Data = serde_json::from_value(v).expect("an older snapshot loads");
        assert!(d.cert_serials.is_empty() && d.revoked_serials.is_empty());
    }
}
