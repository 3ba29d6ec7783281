//! Machine operations in the apply step: enlistment, updates, deletion, lifecycle actions (checked
//! against `ingot_common::lifecycle::TABLE`) and the current boot's reports.

use super::ctx::ApplyCtx;
use super::events::EventBuilder;
use super::lookup::existing;
use super::queue;
use super::status::{previous, transition};
use super::tagging::retag;
use crate::command::{op, Reply, Response};
use crate::state::State;
use ingot_common::lifecycle::{check_action, Action, Next};
use ingot_common::model::{EventLevel, DEFAULT_POOL};
use ingot_common::{validate, DomainError, Mac, Machine, MachineStatus};

/// Enlists a machine in status New.
pub(super) fn create(ctx: &ApplyCtx, state: &mut State, op: &op::CreateMachine) -> Response {
    let m = insert_new(ctx, state, op, String::new())?;
    Ok(Reply::Machine(Box::new(m)))
}

/// Checks and stores a new machine in status New with its `enlist` event (text `message`): machine
/// creation by API and enlistment by PXE boot (`leases::enlist`) alike. A refusal changes nothing.
pub(super) fn insert_new(
    ctx: &ApplyCtx,
    state: &mut State,
    op: &op::CreateMachine,
    message: String,
) -> Result<Machine, DomainError> {
    let op::CreateMachine {
        system_id,
        hostname,
        arch,
        zone,
        macs,
        power,
        description,
        pool,
    } = op;
    let now = ctx.ts_ms;
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
        revision: ctx.rev,
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
    retag(state, &mut m);
    EventBuilder::new("enlist")
        .machine(&m)
        .entered(MachineStatus::New)
        .message(message)
        .record(ctx, state);
    state.put_machine(m.clone());
    Ok(m)
}

/// Changes a machine's descriptive fields.
pub(super) fn update(ctx: &ApplyCtx, state: &mut State, op: &op::UpdateMachine) -> Response {
    let system_id = &op.system_id;
    let old = existing(state, system_id, op.expected_revision)?.clone();
    check_action(old.status, old.locked, Action::Update).map_err(DomainError::precondition)?;
    let mut m = old.clone();
    if let Some(h) = &op.hostname {
        validate::dns_label("hostname", h)?;
        check_hostname_free(state, h, Some(system_id))?;
        m.hostname = h.clone();
    }
    if let Some(a) = &op.arch {
        validate::arch("arch", a)?;
        m.arch = a.clone();
    }
    if let Some(z) = &op.zone {
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
    if let Some(d) = &op.description {
        validate::description("description", d)?;
        m.description = d.clone();
    }
    if let Some(p) = &op.power {
        validate::power("power", p)?;
        m.power = p.clone();
    }
    if let Some(list) = &op.macs {
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
    m.updated_ms = ctx.ts_ms;
    m.revision = ctx.rev;
    retag(state, &mut m);
    EventBuilder::new("update").machine(&m).record(ctx, state);
    state.put_machine(m.clone());
    Ok(Reply::Machine(Box::new(m)))
}

/// Deletes a machine: the `delete` lifecycle action.
pub(super) fn delete(ctx: &ApplyCtx, state: &mut State, op: &op::DeleteMachine) -> Response {
    let delete = op::MachineAction {
        system_id: op.system_id.clone(),
        action: Action::Delete,
        expected_revision: op.expected_revision,
        args: Default::default(),
    };
    action(ctx, state, &delete)
}

/// Checks that `actor` may take `action` on `m`: admins always; owners for owner actions.
fn authorize(state: &State, actor: &str, m: &Machine, action: Action) -> Result<(), DomainError> {
    if state.is_admin(actor) {
        return Ok(());
    }
    if action.admin_only() {
        return Err(DomainError::denied(format!(
            "only admins may {} machines",
            action.as_str()
        )));
    }
    match &m.owner {
        Some(o) if o == actor => Ok(()),
        Some(o) => Err(DomainError::denied(format!(
            "machine {} is held by {o}; only its owner or an admin may {} it",
            m.system_id,
            action.as_str()
        ))),
        None => Err(DomainError::denied(format!(
            "machine {} is not allocated to you; allocate it first",
            m.system_id
        ))),
    }
}

/// Applies a lifecycle action.
pub(super) fn action(ctx: &ApplyCtx, state: &mut State, op: &op::MachineAction) -> Response {
    let (system_id, action, args) = (op.system_id.as_str(), op.action, &op.args);
    let now = ctx.ts_ms;
    let m0 = existing(state, system_id, op.expected_revision)?.clone();
    authorize(state, ctx.actor, &m0, action)?;
    if action == Action::Allocate {
        return Err(DomainError::invalid(
            "action",
            "allocate through MachineService.Allocate",
        ));
    }
    let next = check_action(m0.status, m0.locked, action).map_err(DomainError::precondition)?;
    if action == Action::Release && m0.owner.is_none() {
        // A broken machine that nobody holds goes back with mark-fixed, not release.
        return Err(DomainError::precondition(format!(
            "machine {system_id} is not allocated to anyone: nothing to release (use mark-fixed for a broken machine)"
        )));
    }
    if action == Action::Delete {
        // Nothing is left for its pending power commands to act on: no rack is sent them any more.
        queue::cancel(
            ctx,
            state,
            system_id,
            |_| true,
            "cancelled: the machine was deleted before the command ran",
        );
        state.remove_machine(system_id);
        EventBuilder::new("delete")
            .machine(&m0)
            .message(args.comment.clone())
            .record(ctx, state);
        return Ok(Reply::Done);
    }
    let mut m = m0.clone();
    let mut message = args.comment.clone();
    match action {
        Action::SetZone => {
            if !state.data.zones.contains_key(&args.zone) {
                return Err(DomainError::not_found(format!(
                    "zone '{}' does not exist",
                    args.zone
                )));
            }
            if m.owner.is_some() && m.zone != args.zone {
                return Err(DomainError::precondition(format!(
                    "machine {system_id} is allocated (its provider id names its zone); release it before moving it"
                )));
            }
            message = format!("zone {} -> {}", m.zone, args.zone);
            m.zone = args.zone.clone();
            retag(state, &mut m);
        }
        Action::SetPool => {
            if !state.data.pools.contains_key(&args.pool) && args.pool != DEFAULT_POOL {
                return Err(DomainError::not_found(format!(
                    "pool '{}' does not exist",
                    args.pool
                )));
            }
            message = format!("pool {} -> {}", m.pool, args.pool);
            m.pool = args.pool.clone();
            retag(state, &mut m);
        }
        Action::Tag | Action::Untag => {
            for (i, t) in args.tags.iter().enumerate() {
                let Some(tag) = state.data.tags.get(t) else {
                    return Err(DomainError::not_found(format!(
                        "tags[{i}]: tag '{t}' does not exist; create it first (ingot tags create {t})"
                    )));
                };
                if !tag.definition.is_empty() {
                    return Err(DomainError::precondition(format!(
                        "tags[{i}]: tag '{t}' has a definition and follows the inventory; it cannot be set by hand"
                    )));
                }
                if action == Action::Tag {
                    m.tags.insert(t.clone());
                } else {
                    m.tags.remove(t);
                }
            }
            message = args.tags.join(",");
        }
        Action::Lock => m.locked = true,
        Action::Unlock => m.locked = false,
        Action::Deploy => {
            let mut d = args.deploy.clone().unwrap_or_default();
            if d.osystem.is_empty() {
                d.osystem = "ubuntu".into();
            }
            if d.distro_series.is_empty() {
                d.distro_series = "noble".into();
            }
            message = format!("{}/{}", d.osystem, d.distro_series);
            m.deploy = Some(d);
        }
        Action::Release => m.erase = args.erase,
        _ => {}
    }
    let to = match next {
        Next::To(t) => t,
        Next::Previous => previous(&m0),
        Next::Stay => m0.status,
    };
    let mut plan = queue::PowerPlan::Nothing;
    if to != m0.status {
        let reason = match action {
            Action::MarkBroken if args.comment.is_empty() => {
                format!("marked broken by {}", ctx.actor)
            }
            Action::MarkBroken | Action::Abort => args.comment.clone(),
            _ => String::new(),
        };
        plan = transition(ctx, state, &mut m, to, &args.boot, &reason);
    }
    m.updated_ms = now;
    m.revision = ctx.rev;
    let level = if action == Action::MarkBroken {
        EventLevel::Warning
    } else {
        EventLevel::Info
    };
    let mut event = EventBuilder::new(action.as_str())
        .level(level)
        .machine(&m)
        .message(message);
    if m.status != m0.status {
        event = event.moved(m0.status, m.status);
    }
    event.record(ctx, state);
    state.put_machine(m.clone());
    queue::follow(ctx, state, &m, plan);
    Ok(Reply::Machine(Box::new(m)))
}

/// The machine `system_id` if `boot_id` is its current boot: reports of an older boot are refused.
fn current_boot<'a>(
    state: &'a State,
    system_id: &str,
    boot_id: &str,
) -> Result<&'a Machine, DomainError> {
    let m = existing(state, system_id, 0)?;
    if m.boot.as_ref().map(|b| b.boot_id.as_str()) != Some(boot_id) {
        return Err(DomainError::unauthenticated(format!(
            "this boot of machine {system_id} is over; its report is refused"
        )));
    }
    Ok(m)
}

/// Stores the inventory of the current commissioning boot and re-evaluates tags for the machine.
pub(super) fn report_inventory(
    ctx: &ApplyCtx,
    state: &mut State,
    op: &op::ReportInventory,
) -> Response {
    let (system_id, inventory) = (op.system_id.as_str(), &op.inventory);
    let m0 = current_boot(state, system_id, &op.boot_id)?.clone();
    if m0.status != MachineStatus::Commissioning {
        return Err(DomainError::precondition(format!(
            "machine {system_id} is {}: inventory is accepted only while commissioning",
            m0.status.as_str()
        )));
    }
    let mut m = m0;
    m.inventory = Some(inventory.clone());
    retag(state, &mut m);
    m.updated_ms = ctx.ts_ms;
    m.revision = ctx.rev;
    let msg = format!(
        "{} CPUs, {} MiB, {} disks ({} GiB), {} NICs",
        inventory.cpu_count,
        inventory.memory_mib,
        inventory.disks.len(),
        m.storage_gib(),
        inventory.nics.len()
    );
    EventBuilder::new("agent.inventory")
        .machine(&m)
        .message(msg)
        .record(ctx, state);
    state.put_machine(m.clone());
    Ok(Reply::Machine(Box::new(m)))
}

/// Records a progress step of the current boot.
pub(super) fn report_progress(
    ctx: &ApplyCtx,
    state: &mut State,
    op: &op::ReportProgress,
) -> Response {
    let percent = op.percent.min(100);
    let mut m = current_boot(state, &op.system_id, &op.boot_id)?.clone();
    m.progress = Some(ingot_common::model::Progress {
        message: op.message.clone(),
        percent,
        ts_ms: ctx.ts_ms,
    });
    m.updated_ms = ctx.ts_ms;
    m.revision = ctx.rev;
    EventBuilder::new("agent.progress")
        .machine(&m)
        .message(format!("{percent}% {}", op.message))
        .record(ctx, state);
    state.put_machine(m.clone());
    Ok(Reply::Machine(Box::new(m)))
}

/// Sets the token hash of the machine's current boot (admin only: the token opens the boot's reports).
pub(super) fn issue_boot_token(
    ctx: &ApplyCtx,
    state: &mut State,
    op: &op::IssueBootToken,
) -> Response {
    if !state.is_admin(ctx.actor) {
        return Err(DomainError::denied("only admins may read boot credentials"));
    }
    let mut m = current_boot(state, &op.system_id, &op.boot_id)?.clone();
    if let Some(b) = m.boot.as_mut() {
        b.token_hash = op.token_hash.clone();
    }
    m.revision = ctx.rev;
    state.put_machine(m.clone());
    Ok(Reply::Machine(Box::new(m)))
}

/// Fails if `hostname` belongs to a machine other than `except`.
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

/// Fails if `mac` (the `i`-th of the request) belongs to a machine other than `except`.
fn check_mac_free(
    state: &State,
    i: usize,
    mac: &Mac,
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
mod boot_token_tests {
    use crate::apply::apply;
    use crate::apply::test_support::{bootstrap, cmd};
    use crate::command::{op, ActionArgs, BootTokens, Command, Op};
    use crate::state::State;
    use ingot_common::lifecycle::Action;
    use ingot_common::{secret, ErrorCode, PowerParams};

    /// A cluster with machine m1 commissioning, started by a command `boot` (as its proposer made it).
    fn commissioning(boot: BootTokens) -> (State, u64) {
        let mut s = State::default();
        let ops = vec![
            bootstrap(),
            crate::apply::test_support::create_m1(PowerParams::default()),
            Op::MachineAction(op::MachineAction {
                system_id: "m1".into(),
                action: Action::Commission,
                expected_revision: 0,
                args: ActionArgs {
                    boot,
                    ..Default::default()
                },
            }),
        ];
        let mut rev = 0;
        for op in ops {
            rev += 1;
            apply(&mut s, &cmd(rev, op), rev).expect("setup");
        }
        (s, rev)
    }

    fn issue(boot_id: &str, token: &str) -> Op {
        Op::IssueBootToken(op::IssueBootToken {
            system_id: "m1".into(),
            boot_id: boot_id.into(),
            token_hash: secret::hash(token),
        })
    }

    #[test]
    fn only_the_hash_of_a_boot_token_is_replicated() {
        let (mut s, rev) = commissioning(BootTokens::generate());
        let boot_id = s
            .machine("m1")
            .and_then(|m| m.boot.clone())
            .expect("boot")
            .boot_id;
        assert_eq!(
            s.machine("m1")
                .and_then(|m| m.boot.clone())
                .expect("boot")
                .token_hash,
            "",
            "no token before one is issued"
        );
        let token = "boot_the-plaintext";
        let op = issue(&boot_id, token);
        assert!(
            !serde_json::to_string(&op).expect("json").contains(token),
            "the log entry holds no plaintext"
        );
        apply(&mut s, &cmd(rev + 1, op), rev + 1).expect("issue");
        let b = s.machine("m1").and_then(|m| m.boot.clone()).expect("boot");
        assert_eq!(b.token_hash, secret::hash(token));
        let snapshot = serde_json::to_string(&s.data).expect("json");
        assert!(!snapshot.contains(token), "the snapshot holds no plaintext");
        // Only an admin may issue, and only for the current boot.
        let mut as_user = cmd(rev + 2, issue(&boot_id, "boot_other"));
        as_user.actor = "mallory".into();
        let e = apply(&mut s, &as_user, rev + 2).expect_err("non-admin");
        assert_eq!(e.code, ErrorCode::PermissionDenied);
        let e = apply(
            &mut s,
            &cmd(rev + 3, issue("old-boot", "boot_other")),
            rev + 3,
        )
        .expect_err("another boot");
        assert_eq!(e.code, ErrorCode::Unauthenticated);
    }

    #[test]
    fn plaintext_boot_tokens_of_older_versions_are_stored_hashed() {
        // A log entry from a proposer that still sent the token: the apply step keeps only its hash.
        let old: Command = serde_json::from_str(
            r#"{"request_id":"r","ts_ms":3,"actor":"admin","op":{"MachineAction":{"system_id":"m1","action":"Commission","expected_revision":0,"args":{"boot":{"boot_id":"b1","token":"boot_old"}}}}}"#,
        )
        .expect("an old command still parses");
        let Op::MachineAction(a) = old.op else {
            panic!("not an action")
        };
        let (s, _) = commissioning(a.args.boot);
        let b = s.machine("m1").and_then(|m| m.boot.clone()).expect("boot");
        assert_eq!(b.token_hash, secret::hash("boot_old"));
        assert!(!serde_json::to_string(&s.data)
            .expect("json")
            .contains("boot_old"));

        // A snapshot from an older version, with the plaintext in the machine's boot: loads hashed.
        let mut data = serde_json::to_value(&s.data).expect("json");
        data["machines"]["m1"]["boot"] = serde_json::json!({
            "boot_id": "b1", "token": "boot_snap", "purpose": "commissioning", "started_ms": 3
        });
        let loaded = State::from_data(serde_json::from_value(data).expect("an old snapshot loads"));
        let b = loaded
            .machine("m1")
            .and_then(|m| m.boot.clone())
            .expect("boot");
        assert_eq!(b.token_hash, secret::hash("boot_snap"));
        assert!(!serde_json::to_string(&loaded.data)
            .expect("json")
            .contains("boot_snap"));
    }
}
