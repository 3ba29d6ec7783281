//! The cluster in the apply step: bootstrap, region membership records (join tokens, admission,
//! removal) and settings.

use super::ctx::ApplyCtx;
use super::events::EventBuilder;
use crate::command::{op, Reply, Response};
use crate::state::{ApiToken, ClusterMeta, State};
use ingot_common::lifecycle;
use ingot_common::model::{Pool, Role, User, DEFAULT_POOL, DEFAULT_ZONE};
use ingot_common::{secret, validate, DomainError, RegionInfo, Zone};

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

/// Consumes a join token and records the region under the next node id.
pub(super) fn admit_region(ctx: &ApplyCtx, state: &mut State, op: &op::AdmitRegion) -> Response {
    let name = &op.name;
    let Some((stored, exp)) = state
        .data
        .join_tokens
        .iter()
        .find(|(h, _)| secret::hashes_equal(h, &op.token_hash))
    else {
        return Err(DomainError::unauthenticated(
            "join token unknown or already used: create a new one with `ingot cluster join-token`",
        ));
    };
    let (stored, exp) = (stored.clone(), *exp);
    if exp <= ctx.ts_ms {
        state.data.join_tokens.remove(&stored);
        return Err(DomainError::unauthenticated(
            "join token expired: create a new one with `ingot cluster join-token`",
        ));
    }
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
    Ok(Reply::Region(r))
}

/// Drops a removed region's record.
pub(super) fn forget_region(_ctx: &ApplyCtx, state: &mut State, op: &op::ForgetRegion) -> Response {
    state.data.regions.remove(&op.node_id);
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
