//! The one place replicated state changes: `apply(state, command, log_index)`.
//!
//! Deterministic by construction: it reads nothing but its arguments (time comes in `Command::ts_ms`, ids in
//! the ops), so every region that applies the same log reaches the same state. Every validation that
//! depends on state (uniqueness, existence, revisions) happens here — the API edge only checks syntax — so
//! two concurrent writers can never both succeed on a conflict.

mod admin;
pub mod machine;
pub mod power;
mod rack;

use crate::command::{Command, Op, Reply, Response};
use crate::state::{ApiToken, ClusterMeta, State, EVENTS_MAX};
use ingot_common::lifecycle::{check_action, Action};
use ingot_common::model::{Event, EventLevel, Pool, Role, User, DEFAULT_POOL, DEFAULT_ZONE};
use ingot_common::{secret, validate, DomainError, Machine, MachineStatus, RegionInfo, Zone};

/// Appends an event for the command at `rev` (events of one command get consecutive `seq`s), dropping
/// the oldest beyond [`EVENTS_MAX`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn emit(
    state: &mut State,
    cmd: &Command,
    rev: u64,
    kind: &str,
    level: EventLevel,
    m: Option<&Machine>,
    from: Option<MachineStatus>,
    to: Option<MachineStatus>,
    message: String,
) {
    let events = &mut state.data.events;
    let seq = match events.back() {
        Some(e) if e.revision == rev => e.seq + 1,
        _ => 0,
    };
    events.push_back(Event {
        revision: rev,
        seq,
        ts_ms: cmd.ts_ms,
        actor: cmd.actor.clone(),
        kind: kind.to_string(),
        level,
        system_id: m.map(|m| m.system_id.clone()).unwrap_or_default(),
        hostname: m.map(|m| m.hostname.clone()).unwrap_or_default(),
        zone: m.map(|m| m.zone.clone()).unwrap_or_default(),
        owner: m.and_then(|m| m.owner.clone()).unwrap_or_default(),
        from,
        to,
        message,
    });
    while events.len() > EVENTS_MAX {
        events.pop_front();
    }
}

/// How long (ms) the answer to a command is remembered for retries of the same request id. Retries happen
/// within `node::LEADER_WAIT` (8 s), so a minute is ample.
pub const DEDUP_WINDOW_MS: u64 = 60 * 1000;
/// At most this many remembered answers (they are part of every snapshot, so keep them bounded).
pub const DEDUP_MAX: usize = 20_000;

/// Applies a log entry's command exactly once per request id: a repeated request id returns the answer
/// recorded the first time, without applying again.
pub fn apply_once(state: &mut State, cmd: &Command, rev: u64) -> Response {
    if let Some(r) = state.data.recent.get(&cmd.request_id) {
        return r.clone();
    }
    let r = apply(state, cmd, rev);
    state.data.revision = rev;
    if !cmd.request_id.is_empty() {
        let d = &mut state.data;
        d.recent.insert(cmd.request_id.clone(), r.clone());
        d.recent_order
            .push_back((cmd.ts_ms, cmd.request_id.clone()));
        while let Some((ts, id)) = d.recent_order.front() {
            if d.recent_order.len() > DEDUP_MAX || ts.saturating_add(DEDUP_WINDOW_MS) < cmd.ts_ms {
                d.recent.remove(id);
                d.recent_order.pop_front();
            } else {
                break;
            }
        }
    }
    r
}

/// Applies `cmd` to `state`; `rev` is this change's revision (see [`crate::command::revision`]). A
/// returned error leaves `state` unchanged.
pub fn apply(state: &mut State, cmd: &Command, rev: u64) -> Response {
    let now = cmd.ts_ms;
    match &cmd.op {
        Op::Bootstrap {
            cluster_id,
            ca,
            admin_token_hash,
            first_region,
        } => {
            if state.data.cluster.is_some() {
                return Err(DomainError::precondition(
                    "the cluster is already bootstrapped",
                ));
            }
            state.data.cluster = Some(ClusterMeta {
                cluster_id: cluster_id.clone(),
                ca: ca.clone(),
                created_ms: now,
            });
            state.data.tokens.insert(
                admin_token_hash.clone(),
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
            state
                .data
                .regions
                .insert(first_region.node_id, first_region.clone());
            state.data.next_node_id = first_region.node_id + 1;
            Ok(Reply::Done)
        }
        Op::CreateMachine {
            system_id,
            hostname,
            arch,
            zone,
            macs,
            power,
            description,
            pool,
        } => {
            validate::dns_label("hostname", hostname)?;
            let pool = pool.clone().unwrap_or_else(|| DEFAULT_POOL.to_string());
            if pool != DEFAULT_POOL && !state.data.pools.contains_key(&pool) {
                return Err(DomainError::not_found(format!(
                    "pool '{pool}' does not exist; create it first (ingot pools create {pool})"
                )));
            }
            validate::arch("arch", arch)?;
            validate::power("power", power)?;
            validate::description("description", description)?;
            if macs.is_empty() {
                return Err(DomainError::invalid(
                    "macs",
                    "at least one MAC address is required",
                ));
            }
            if state.data.machines.contains_key(system_id) {
                // The proposer picked an id that exists; it retries with another.
                return Err(DomainError::exists(
                    "system_id",
                    format!("system id {system_id} is taken"),
                ));
            }
            if !state.data.zones.contains_key(zone) {
                return Err(DomainError::not_found(format!(
                    "zone '{zone}' does not exist; create it first (ingot zones create {zone})"
                )));
            }
            check_hostname_free(state, hostname, None)?;
            for (i, mac) in macs.iter().enumerate() {
                check_mac_free(state, i, mac, None)?;
            }
            let mut m = Machine {
                system_id: system_id.clone(),
                hostname: hostname.clone(),
                arch: arch.clone(),
                zone: zone.clone(),
                status: MachineStatus::New,
                macs: macs.clone(),
                power: power.clone(),
                description: description.clone(),
                created_ms: now,
                updated_ms: now,
                revision: rev,
                pool,
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
            };
            machine::retag(state, &mut m);
            emit(
                state,
                cmd,
                rev,
                "enlist",
                EventLevel::Info,
                Some(&m),
                None,
                Some(MachineStatus::New),
                String::new(),
            );
            state.put_machine(m.clone());
            Ok(Reply::Machine(Box::new(m)))
        }
        Op::UpdateMachine {
            system_id,
            hostname,
            arch,
            zone,
            description,
            power,
            macs,
            expected_revision,
        } => {
            let old = existing(state, system_id, *expected_revision)?.clone();
            check_action(old.status, old.locked, Action::Update)
                .map_err(DomainError::precondition)?;
            let mut m = old.clone();
            if let Some(h) = hostname {
                validate::dns_label("hostname", h)?;
                check_hostname_free(state, h, Some(system_id))?;
                m.hostname = h.clone();
            }
            if let Some(a) = arch {
                validate::arch("arch", a)?;
                m.arch = a.clone();
            }
            if let Some(z) = zone {
                if !state.data.zones.contains_key(z) {
                    return Err(DomainError::not_found(format!("zone '{z}' does not exist")));
                }
                if m.owner.is_some() && &m.zone != z {
                    return Err(DomainError::precondition(format!(
                        "machine {system_id} is allocated (its provider id names its zone); release it before moving it"
                    )));
                }
                m.zone = z.clone();
            }
            if let Some(d) = description {
                validate::description("description", d)?;
                m.description = d.clone();
            }
            if let Some(p) = power {
                validate::power("power", p)?;
                m.power = p.clone();
            }
            if let Some(list) = macs {
                if list.is_empty() {
                    return Err(DomainError::invalid(
                        "macs",
                        "at least one MAC address is required",
                    ));
                }
                for (i, mac) in list.iter().enumerate() {
                    check_mac_free(state, i, mac, Some(system_id))?;
                }
                m.macs = list.clone();
            }
            m.updated_ms = now;
            m.revision = rev;
            machine::retag(state, &mut m);
            emit(
                state,
                cmd,
                rev,
                "update",
                EventLevel::Info,
                Some(&m),
                None,
                None,
                String::new(),
            );
            state.put_machine(m.clone());
            Ok(Reply::Machine(Box::new(m)))
        }
        Op::DeleteMachine {
            system_id,
            expected_revision,
        } => machine::action(
            state,
            cmd,
            rev,
            system_id,
            Action::Delete,
            *expected_revision,
            &Default::default(),
        ),
        Op::CreateZone { name, description } => {
            validate::dns_label("name", name)?;
            validate::description("description", description)?;
            if state.data.zones.contains_key(name) {
                return Err(DomainError::exists(
                    "name",
                    format!("zone '{name}' already exists"),
                ));
            }
            let z = Zone {
                name: name.clone(),
                description: description.clone(),
                created_ms: now,
            };
            state.data.zones.insert(name.clone(), z.clone());
            emit(
                state,
                cmd,
                rev,
                "zone.create",
                EventLevel::Info,
                None,
                None,
                None,
                name.clone(),
            );
            Ok(Reply::Zone(z))
        }
        Op::UpdateZone {
            name,
            description,
            new_name,
        } => {
            let Some(mut z) = state.data.zones.get(name).cloned() else {
                return Err(DomainError::not_found(format!(
                    "zone '{name}' does not exist"
                )));
            };
            if let Some(d) = description {
                validate::description("description", d)?;
                z.description = d.clone();
            }
            if let Some(n) = new_name.as_ref().filter(|n| *n != name) {
                validate::dns_label("new_name", n)?;
                if name == DEFAULT_ZONE {
                    return Err(DomainError::precondition(
                        "the zone 'default' cannot be renamed",
                    ));
                }
                if state.data.zones.contains_key(n) {
                    return Err(DomainError::exists(
                        "new_name",
                        format!("zone '{n}' already exists"),
                    ));
                }
                let ids: Vec<String> = state
                    .by_zone
                    .get(name)
                    .map(|s| s.iter().cloned().collect())
                    .unwrap_or_default();
                for id in ids {
                    if let Some(mut m) = state.data.machines.get(&id).cloned() {
                        m.zone = n.clone();
                        m.updated_ms = now;
                        m.revision = rev;
                        machine::retag(state, &mut m);
                        state.put_machine(m);
                    }
                }
                state.by_zone.remove(name);
                state.data.zones.remove(name);
                z.name = n.clone();
            }
            state.data.zones.insert(z.name.clone(), z.clone());
            emit(
                state,
                cmd,
                rev,
                "zone.update",
                EventLevel::Info,
                None,
                None,
                None,
                z.name.clone(),
            );
            Ok(Reply::Zone(z))
        }
        Op::DeleteZone { name } => {
            if !state.data.zones.contains_key(name) {
                return Err(DomainError::not_found(format!(
                    "zone '{name}' does not exist"
                )));
            }
            if name == DEFAULT_ZONE {
                return Err(DomainError::precondition(
                    "the zone 'default' cannot be deleted",
                ));
            }
            let n = state.zone_count(name);
            if n > 0 {
                return Err(DomainError::precondition(format!(
                    "zone '{name}' still holds {n} machine(s); move them to another zone first"
                )));
            }
            state.data.zones.remove(name);
            state.by_zone.remove(name);
            emit(
                state,
                cmd,
                rev,
                "zone.delete",
                EventLevel::Info,
                None,
                None,
                None,
                name.clone(),
            );
            Ok(Reply::Done)
        }
        Op::CreateJoinToken {
            token_hash,
            expires_ms,
        } => {
            // Forget expired tokens while we are here, so the map cannot grow without bound.
            state.data.join_tokens.retain(|_, exp| *exp > now);
            state
                .data
                .join_tokens
                .insert(token_hash.clone(), *expires_ms);
            Ok(Reply::Done)
        }
        Op::AdmitRegion {
            token_hash,
            name,
            raft_addr,
            api_addr,
        } => {
            let Some((stored, exp)) = state
                .data
                .join_tokens
                .iter()
                .find(|(h, _)| secret::hashes_equal(h, token_hash))
            else {
                return Err(DomainError::unauthenticated(
                    "join token unknown or already used: create a new one with `ingot cluster join-token`",
                ));
            };
            let (stored, exp) = (stored.clone(), *exp);
            if exp <= now {
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
                raft_addr: raft_addr.clone(),
                api_addr: api_addr.clone(),
                joined_ms: now,
            };
            state.data.regions.insert(node_id, r.clone());
            Ok(Reply::Region(r))
        }
        Op::ForgetRegion { node_id } => {
            state.data.regions.remove(node_id);
            Ok(Reply::Done)
        }
        Op::MachineAction {
            system_id,
            action,
            expected_revision,
            args,
        } => machine::action(
            state,
            cmd,
            rev,
            system_id,
            *action,
            *expected_revision,
            args,
        ),
        Op::Allocate {
            request_id,
            consumer,
            constraints,
            min_zones,
            candidates,
            count,
        } => machine::allocate(
            state,
            cmd,
            rev,
            request_id,
            consumer,
            constraints,
            *min_zones,
            candidates,
            *count,
        ),
        Op::Outcome {
            system_id,
            status,
            boot_id,
            outcome,
            reason,
            next_boot,
        } => machine::outcome(
            state,
            cmd,
            rev,
            system_id,
            *status,
            boot_id.as_deref(),
            *outcome,
            reason,
            next_boot,
        ),
        Op::ReportInventory {
            system_id,
            boot_id,
            inventory,
        } => machine::report_inventory(state, cmd, rev, system_id, boot_id, inventory),
        Op::ReportProgress {
            system_id,
            boot_id,
            message,
            percent,
        } => machine::report_progress(state, cmd, rev, system_id, boot_id, message, *percent),
        Op::CreatePool { name, description } => {
            admin::create_pool(state, cmd, rev, name, description)
        }
        Op::UpdatePool { name, description } => {
            admin::update_pool(state, cmd, rev, name, description.as_ref())
        }
        Op::DeletePool { name } => admin::delete_pool(state, cmd, rev, name),
        Op::CreateTag {
            name,
            definition,
            comment,
        } => admin::create_tag(state, cmd, rev, name, definition, comment),
        Op::UpdateTag {
            name,
            definition,
            comment,
        } => admin::update_tag(state, cmd, rev, name, definition.as_ref(), comment.as_ref()),
        Op::DeleteTag { name } => admin::delete_tag(state, cmd, rev, name),
        Op::CreateUser { name, role } => admin::create_user(state, cmd, rev, name, *role),
        Op::UpdateUser { name, role } => admin::update_user(state, cmd, rev, name, *role),
        Op::DeleteUser { name } => admin::delete_user(state, cmd, rev, name),
        Op::CreateToken {
            id,
            token_hash,
            user,
            description,
            expires_ms,
        } => admin::create_token(
            state,
            cmd,
            rev,
            id,
            token_hash,
            user,
            description,
            *expires_ms,
        ),
        Op::RevokeToken { id } => admin::revoke_token(state, cmd, rev, id),
        Op::UpdateSettings { deadlines } => admin::update_settings(state, cmd, rev, deadlines),
        Op::CreateRackToken {
            token_hash,
            expires_ms,
        } => rack::create_token(state, cmd, token_hash, *expires_ms),
        Op::RegisterRack {
            token_hash,
            name,
            zone,
        } => rack::register(state, cmd, rev, token_hash, name, zone),
        Op::RevokeRack { name } => rack::revoke(state, cmd, rev, name),
        Op::RackConnected { name, session } => rack::connected(state, cmd, rev, name, session),
        Op::RackHeartbeat { name, session_id } => rack::heartbeat(state, cmd, name, session_id),
        Op::RackDisconnected {
            name,
            session_id,
            last_seen_ms,
        } => rack::disconnected(state, cmd, rev, name, session_id, *last_seen_ms),
        Op::QueuePower { system_id, action } => {
            power::queue_power(state, cmd, rev, system_id, action)
        }
        Op::PowerResult {
            id,
            rack: r,
            success,
            error_kind,
            message,
            power_state,
            next_boot,
        } => power::power_result(
            state,
            cmd,
            rev,
            power::PowerReport {
                id: *id,
                rack: r,
                success: *success,
                error_kind,
                message,
                power_state,
            },
            next_boot,
        ),
        Op::PowerObserved { rack: r, items } => power::power_observed(state, cmd, rev, r, items),
        Op::AssignBmcs { moves } => rack::assign(state, cmd, rev, moves),
    }
}

fn existing<'a>(
    state: &'a State,
    id: &str,
    expected_revision: u64,
) -> Result<&'a Machine, DomainError> {
    let m = state
        .data
        .machines
        .get(id)
        .ok_or_else(|| DomainError::not_found(format!("machine {id} does not exist")))?;
    if expected_revision != 0 && m.revision != expected_revision {
        return Err(DomainError::precondition(format!(
            "machine {id} changed: its revision is {} but the request expected {expected_revision}; read it again and retry",
            m.revision
        )));
    }
    Ok(m)
}

fn check_hostname_free(
    state: &State,
    hostname: &str,
    except: Option<&String>,
) -> Result<(), DomainError> {
    match state.by_hostname.get(hostname) {
        Some(owner) if Some(owner) != except => Err(DomainError::exists(
            "hostname",
            format!("hostname: '{hostname}' is already used by machine {owner}"),
        )),
        _ => Ok(()),
    }
}

fn check_mac_free(
    state: &State,
    i: usize,
    mac: &ingot_common::Mac,
    except: Option<&String>,
) -> Result<(), DomainError> {
    match state.by_mac.get(mac) {
        Some(owner) if Some(owner) != except => Err(DomainError::exists(
            format!("macs[{i}]"),
            format!("macs[{i}]: {mac} already belongs to machine {owner}"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ingot_common::pki::ClusterCa;
    use ingot_common::PowerParams;

    fn boot() -> State {
        let mut s = State::default();
        let ca = ClusterCa {
            cert_pem: String::new(),
            key_pem: String::new(),
        };
        let r = RegionInfo {
            node_id: 1,
            name: "r1".into(),
            raft_addr: "a".into(),
            api_addr: "b".into(),
            joined_ms: 0,
        };
        let cmd = Command {
            request_id: String::new(),
            ts_ms: 1,
            actor: "t".into(),
            op: Op::Bootstrap {
                cluster_id: "c".into(),
                ca,
                admin_token_hash: "h".into(),
                first_region: r,
            },
        };
        apply(&mut s, &cmd, 1).unwrap();
        assert!(apply(&mut s, &cmd, 2).is_err());
        s
    }

    fn create(s: &mut State, id: &str, host: &str, mac: &str, idx: u64) -> Response {
        let op = Op::CreateMachine {
            system_id: id.into(),
            hostname: host.into(),
            arch: "amd64/generic".into(),
            zone: "default".into(),
            macs: vec![mac.parse().unwrap()],
            power: PowerParams::default(),
            description: String::new(),
            pool: None,
        };
        apply(
            s,
            &Command {
                request_id: String::new(),
                ts_ms: idx,
                actor: "t".into(),
                op,
            },
            idx,
        )
    }

    #[test]
    fn uniqueness_is_enforced_at_apply() {
        let mut s = boot();
        create(&mut s, "aaaaaa", "n1", "52:54:00:00:00:01", 2).unwrap();
        let e = create(&mut s, "bbbbbb", "n2", "52:54:00:00:00:01", 3).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("macs[0]"));
        let e = create(&mut s, "bbbbbb", "n1", "52:54:00:00:00:02", 4).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("hostname"));
        assert_eq!(s.data.machines.len(), 1);
        assert_eq!(s.zone_count("default"), 1);
    }

    #[test]
    fn revision_guards_updates_and_rename_moves_machines() {
        let mut s = boot();
        create(&mut s, "aaaaaa", "n1", "52:54:00:00:00:01", 2).unwrap();
        let upd = |rev| Op::UpdateMachine {
            system_id: "aaaaaa".into(),
            hostname: Some("n9".into()),
            arch: None,
            zone: None,
            description: None,
            power: None,
            macs: None,
            expected_revision: rev,
        };
        assert!(apply(
            &mut s,
            &Command {
                request_id: String::new(),
                ts_ms: 3,
                actor: "t".into(),
                op: upd(99)
            },
            3
        )
        .is_err());
        apply(
            &mut s,
            &Command {
                request_id: String::new(),
                ts_ms: 3,
                actor: "t".into(),
                op: upd(2),
            },
            3,
        )
        .unwrap();
        assert!(s.machine_by_hostname("n9").is_some() && s.machine_by_hostname("n1").is_none());
        let op = Op::CreateZone {
            name: "z1".into(),
            description: String::new(),
        };
        apply(
            &mut s,
            &Command {
                request_id: String::new(),
                ts_ms: 4,
                actor: "t".into(),
                op,
            },
            4,
        )
        .unwrap();
        let op = Op::UpdateZone {
            name: "default".into(),
            description: None,
            new_name: Some("z2".into()),
        };
        assert!(apply(
            &mut s,
            &Command {
                request_id: String::new(),
                ts_ms: 5,
                actor: "t".into(),
                op
            },
            5
        )
        .is_err());
        let op = Op::DeleteZone {
            name: "default".into(),
        };
        assert!(apply(
            &mut s,
            &Command {
                request_id: String::new(),
                ts_ms: 5,
                actor: "t".into(),
                op
            },
            5
        )
        .is_err());
    }

    #[test]
    fn join_tokens_are_single_use_and_expire() {
        let mut s = boot();
        let op = Op::CreateJoinToken {
            token_hash: "t1".into(),
            expires_ms: 100,
        };
        apply(
            &mut s,
            &Command {
                request_id: String::new(),
                ts_ms: 2,
                actor: "t".into(),
                op,
            },
            2,
        )
        .unwrap();
        let admit = |name: &str| Op::AdmitRegion {
            token_hash: "t1".into(),
            name: name.into(),
            raft_addr: "x".into(),
            api_addr: "y".into(),
        };
        let r = apply(
            &mut s,
            &Command {
                request_id: String::new(),
                ts_ms: 3,
                actor: "t".into(),
                op: admit("r2"),
            },
            3,
        )
        .unwrap();
        assert!(matches!(r, Reply::Region(RegionInfo { node_id: 2, .. })));
        assert!(apply(
            &mut s,
            &Command {
                request_id: String::new(),
                ts_ms: 4,
                actor: "t".into(),
                op: admit("r3")
            },
            4
        )
        .is_err());
        let op = Op::CreateJoinToken {
            token_hash: "t2".into(),
            expires_ms: 10,
        };
        apply(
            &mut s,
            &Command {
                request_id: String::new(),
                ts_ms: 5,
                actor: "t".into(),
                op,
            },
            5,
        )
        .unwrap();
        let op = Op::AdmitRegion {
            token_hash: "t2".into(),
            name: "r4".into(),
            raft_addr: "x".into(),
            api_addr: "y".into(),
        };
        let e = apply(
            &mut s,
            &Command {
                request_id: String::new(),
                ts_ms: 11,
                actor: "t".into(),
                op,
            },
            6,
        )
        .unwrap_err();
        assert!(e.message.contains("expired"));
    }
}

#[cfg(test)]
mod dedup_tests {
    use super::*;
    use crate::command::Op;

    #[test]
    fn a_retried_request_is_applied_once() {
        let mut s = State::default();
        let cmd = |id: &str, name: &str| Command {
            request_id: id.into(),
            ts_ms: 1,
            actor: "t".into(),
            op: Op::CreateZone {
                name: name.into(),
                description: String::new(),
            },
        };
        assert!(apply_once(&mut s, &cmd("r1", "z1"), 1).is_ok());
        // Same request again: same (successful) answer, not AlreadyExists.
        assert!(apply_once(&mut s, &cmd("r1", "z1"), 2).is_ok());
        assert!(apply_once(&mut s, &cmd("r2", "z1"), 3).is_err());
    }
}

#[cfg(test)]
mod invariant_tests;
