//! `ingot machines ...`: one command per MachineService RPC, plus the lifecycle table
//! (`ingot machines actions`). Lifecycle actions and `--wait` live in [`crate::actions`], allocation in
//! [`crate::allocate`], power actions in [`crate::power`], how a machine argument is resolved in
//! [`crate::target`]; this module holds the command tree, the reads and the edits.

use crate::actions::{self, AsyncArgs, DeployArgs, ReleaseArgs, SetArgs, SimpleArgs, TagArgs};
use crate::allocate::{self, AllocateArgs};
use crate::ctx::Ctx;
use crate::output::{self, print_json};
use crate::power::{PowerArgs, PowerCommandArgs};
use crate::target::{
    call_ref, consistency, get_sel, is_system_id, system_id, RefFlags, Sel, Target,
};
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use ingot_common::lifecycle::{self, Action, Next};
use ingot_common::{Mac, MachineStatus};
use ingot_proto::v1::{
    CreateMachineRequest, DeleteMachineRequest, GetBootCredentialsRequest, ListMachinesRequest,
    Machine, MachineFilter, MachineView, PowerParameters, UpdateMachineRequest,
};
use serde_json::json;

/// The `machines` subcommands.
#[derive(Subcommand, Debug)]
pub enum MachinesCmd {
    /// List machines matching all given filters, ordered by system id
    List(ListArgs),
    /// Show one machine in full (inventory, status, ownership), found by system id, MAC, hostname,
    /// consumer or provider id
    Show(ShowArgs),
    /// Enlist a machine
    Create(CreateArgs),
    /// Change the given fields of a machine
    Update(UpdateArgs),
    /// Remove a machine from Ingot (refused while it is owned or locked: release first)
    Delete {
        #[command(flatten)]
        target: Target,
        /// Only delete if the machine's revision is still this one
        #[arg(long, value_name = "R")]
        expected_revision: Option<u64>,
    },
    /// Start commissioning: the machine boots the in-band agent, which reports its inventory (admin)
    Commission(AsyncArgs),
    /// Run hardware tests; success returns the machine to its previous status (admin)
    Test(AsyncArgs),
    /// Stop the running commissioning, testing, deployment, erase or rescue entry
    Abort(AsyncArgs),
    /// Claim Ready machines matching constraints (idempotent by --request-id)
    Allocate(AllocateArgs),
    /// Install an operating system on an allocated machine
    Deploy(DeployArgs),
    /// Give an owned machine back: power off, optionally erase, return it to Ready
    Release(ReleaseArgs),
    /// Mark a machine broken; --comment is the reason
    MarkBroken(SimpleArgs),
    /// Return a broken machine to where it was (admin)
    MarkFixed(SimpleArgs),
    /// Lock a deployed machine: every change is refused until unlock
    Lock(SimpleArgs),
    /// Unlock a locked machine
    Unlock(SimpleArgs),
    /// Boot a deployed machine into the rescue environment
    Rescue(AsyncArgs),
    /// Leave the rescue environment, back to the status before rescue
    ExitRescue(AsyncArgs),
    /// Take a machine out of service for good; commissioning brings it back (admin)
    Retire(SimpleArgs),
    /// Move a machine to another zone (admin): set-zone [ID] ZONE
    SetZone(SetArgs),
    /// Move a machine to another resource pool (admin): set-pool [ID] POOL
    SetPool(SetArgs),
    /// Add manual tags to a machine (admin): tag [ID] TAG...
    Tag(TagArgs),
    /// Remove manual tags from a machine (admin): untag [ID] TAG...
    Untag(TagArgs),
    /// Issue and print credentials for the machine's current boot (admin): what the in-band agent
    /// presents; the token is shown once and replaces the boot's earlier one
    BootCredentials {
        #[command(flatten)]
        target: Target,
    },
    /// Power a machine through the rack that owns its BMC: power on|off|soft-off|cycle|query|boot-pxe|boot-disk
    /// ID; prints the queued command id, or with --wait the result
    Power(PowerArgs),
    /// Show a power command (queued by `machines power`); with --wait, wait for its result
    PowerCommand(PowerCommandArgs),
    /// Replace a machine's power settings (driver and parameters), like `update --power-driver
    /// --power-param`
    SetPower(SetPowerArgs),
    /// Print the lifecycle table: which actions are legal from which status, and where they lead
    Actions {
        /// Only this status (new, ready, deployed, ...), with where each action leads and who may take it
        #[arg(value_parser = parse_common_status)]
        status: Option<MachineStatus>,
    },
}

/// Filters and paging of `machines list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only machines in this zone
    #[arg(long)]
    zone: Option<String>,
    /// Only machines with this status (new, ready, deployed, ...)
    #[arg(long, value_parser = output::parse_status)]
    status: Option<i32>,
    /// Only machines in this resource pool
    #[arg(long)]
    pool: Option<String>,
    /// Only machines held by this user
    #[arg(long, value_name = "USER")]
    owner: Option<String>,
    /// Only the machines allocated to this consumer
    #[arg(long, value_name = "C")]
    consumer: Option<String>,
    /// Only machines having this tag (repeatable: all of them)
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Only machines of this architecture (e.g. amd64/generic)
    #[arg(long)]
    arch: Option<String>,
    /// Only machines whose hostname starts with this
    #[arg(long, value_name = "PREFIX")]
    hostname_prefix: Option<String>,
    /// Only the machine owning this MAC
    #[arg(long, value_parser = parse_mac)]
    mac: Option<String>,
    /// Machines per page (default 500, at most 5000)
    #[arg(long, value_name = "N")]
    page_size: Option<u32>,
    /// Continue from this page token (printed after a partial page)
    #[arg(long, value_name = "TOKEN", conflicts_with = "all_pages")]
    page_token: Option<String>,
    /// Fetch every page
    #[arg(long, alias = "all")]
    all_pages: bool,
    /// Answer from the serving region's local state (may lag recent writes)
    #[arg(long)]
    stale: bool,
}

/// How `machines show` finds the machine.
#[derive(Args, Debug)]
pub struct ShowArgs {
    /// System id (6 characters [a-z0-9]), MAC address or hostname
    #[arg(value_name = "ID")]
    machine: Option<String>,
    #[command(flatten)]
    by: RefFlags,
    /// The machine owning this MAC
    #[arg(long, value_parser = parse_mac)]
    mac: Option<String>,
    /// Show secret power parameters in clear (admins only)
    #[arg(long)]
    show_secrets: bool,
    /// Answer from the serving region's local state (may lag recent writes)
    #[arg(long)]
    stale: bool,
}

/// Fields of `machines create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Boot MAC (repeatable or comma-separated; the first is the PXE interface)
    #[arg(long = "mac", value_name = "MAC", required = true, value_delimiter = ',', value_parser = parse_mac)]
    macs: Vec<String>,
    /// Hostname (generated when omitted)
    #[arg(long)]
    hostname: Option<String>,
    /// Architecture (default amd64/generic)
    #[arg(long)]
    arch: Option<String>,
    /// Zone (default "default")
    #[arg(long)]
    zone: Option<String>,
    /// Resource pool (default "default")
    #[arg(long)]
    pool: Option<String>,
    /// Power driver: ipmi, redfish, webhook, manual, file (old name: sim)
    #[arg(long, value_name = "DRIVER")]
    power_driver: Option<String>,
    /// Power parameter KEY=VALUE (repeatable)
    #[arg(long = "power-param", value_name = "KEY=VALUE", value_parser = parse_kv)]
    power_params: Vec<(String, String)>,
    /// Free text
    #[arg(long)]
    description: Option<String>,
}

/// Fields of `machines update`.
#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// System id (or MAC or hostname)
    machine: String,
    /// New hostname
    #[arg(long)]
    hostname: Option<String>,
    /// New architecture
    #[arg(long)]
    arch: Option<String>,
    /// Move to this zone
    #[arg(long)]
    zone: Option<String>,
    /// New description
    #[arg(long)]
    description: Option<String>,
    /// Replace the machine's MACs with these (repeatable or comma-separated)
    #[arg(long = "mac", value_name = "MAC", value_delimiter = ',', value_parser = parse_mac)]
    macs: Vec<String>,
    /// Replace the power settings: driver
    #[arg(long, value_name = "DRIVER")]
    power_driver: Option<String>,
    /// Replace the power settings: parameter KEY=VALUE (repeatable; needs --power-driver)
    #[arg(long = "power-param", value_name = "KEY=VALUE", value_parser = parse_kv, requires = "power_driver")]
    power_params: Vec<(String, String)>,
    /// Only update if the machine's revision is still this one
    #[arg(long, value_name = "R")]
    expected_revision: Option<u64>,
}

/// Fields of `machines set-power`.
#[derive(Args, Debug)]
pub struct SetPowerArgs {
    /// System id (or MAC or hostname)
    #[arg(value_name = "ID")]
    machine: String,
    /// Power driver: ipmi, redfish, webhook, manual, file (old name: sim)
    #[arg(long, value_name = "DRIVER")]
    driver: String,
    /// Power parameter KEY=VALUE (repeatable), e.g. --param address=10.0.0.5 --param username=admin
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_kv)]
    params: Vec<(String, String)>,
    /// Only update if the machine's revision is still this one
    #[arg(long, value_name = "R")]
    expected_revision: Option<u64>,
}

fn parse_mac(s: &str) -> Result<String, String> {
    s.parse::<Mac>()
        .map(|m| m.to_string())
        .map_err(|e| e.to_string())
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("'{s}': expected KEY=VALUE")),
    }
}

/// Parses an operator status name (clap value parser).
fn parse_common_status(s: &str) -> Result<MachineStatus, String> {
    output::parse_status(s)?;
    MachineStatus::parse(s).ok_or_else(|| format!("unknown status '{s}'"))
}

fn power(driver: Option<String>, params: Vec<(String, String)>) -> Option<PowerParameters> {
    if driver.is_none() && params.is_empty() {
        return None;
    }
    Some(PowerParameters {
        driver: driver.unwrap_or_default(),
        params: params.into_iter().collect(),
    })
}

fn show_machine(ctx: &Ctx, m: &Machine) {
    if ctx.json() {
        print_json(&output::machine_json(m));
    } else {
        outln!("{}", output::render(&output::machine_record(m)));
    }
}

/// Runs a `machines` subcommand.
pub async fn run(ctx: &Ctx, cmd: MachinesCmd) -> Result<()> {
    match cmd {
        MachinesCmd::List(a) => list(ctx, a).await,
        MachinesCmd::Show(a) => {
            let sel = Sel::new(a.machine, a.by, a.mac)?;
            let m = get_sel(ctx, &sel, a.show_secrets, a.stale, false).await?;
            show_machine(ctx, &m);
            Ok(())
        }
        MachinesCmd::Create(a) => {
            let clients = ctx.clients()?;
            let req = CreateMachineRequest {
                hostname: a.hostname.unwrap_or_default(),
                arch: a.arch.unwrap_or_default(),
                zone: a.zone.unwrap_or_default(),
                macs: a.macs,
                power: power(a.power_driver, a.power_params),
                description: a.description.unwrap_or_default(),
                pool: a.pool.unwrap_or_default(),
            };
            let m = ctx
                .call(|| {
                    let mut c = clients.machines();
                    let req = req.clone();
                    async move { c.create_machine(req).await }
                })
                .await?;
            show_machine(ctx, &m);
            Ok(())
        }
        MachinesCmd::Update(a) => update(ctx, a).await,
        MachinesCmd::SetPower(a) => {
            let a = UpdateArgs {
                machine: a.machine,
                hostname: None,
                arch: None,
                zone: None,
                description: None,
                macs: Vec::new(),
                power_driver: Some(a.driver),
                power_params: a.params,
                expected_revision: a.expected_revision,
            };
            update(ctx, a).await
        }
        MachinesCmd::Power(a) => crate::power::power(ctx, a).await,
        MachinesCmd::PowerCommand(a) => crate::power::power_command(ctx, a).await,
        MachinesCmd::Delete {
            target,
            expected_revision,
        } => {
            let sel = Sel::of(target)?;
            let id = match &sel {
                Sel::Arg(s) if is_system_id(s) => s.clone(),
                _ => get_sel(ctx, &sel, false, false, true).await?.system_id,
            };
            let clients = ctx.clients()?;
            let req = DeleteMachineRequest {
                system_id: id.clone(),
                expected_revision: expected_revision.unwrap_or(0),
            };
            ctx.call(|| {
                let mut c = clients.machines();
                let req = req.clone();
                async move { c.delete_machine(req).await }
            })
            .await?;
            if ctx.json() {
                print_json(&json!({"deleted": id}));
            } else {
                outln!("deleted machine {id}");
            }
            Ok(())
        }
        MachinesCmd::Commission(a) => actions::run_async(ctx, Action::Commission, a).await,
        MachinesCmd::Test(a) => actions::run_async(ctx, Action::Test, a).await,
        MachinesCmd::Abort(a) => actions::run_async(ctx, Action::Abort, a).await,
        MachinesCmd::Rescue(a) => actions::run_async(ctx, Action::EnterRescue, a).await,
        MachinesCmd::ExitRescue(a) => actions::run_async(ctx, Action::ExitRescue, a).await,
        MachinesCmd::Deploy(a) => actions::deploy(ctx, a).await,
        MachinesCmd::Release(a) => actions::release(ctx, a).await,
        MachinesCmd::MarkBroken(a) => actions::run_simple(ctx, Action::MarkBroken, a).await,
        MachinesCmd::MarkFixed(a) => actions::run_simple(ctx, Action::MarkFixed, a).await,
        MachinesCmd::Lock(a) => actions::run_simple(ctx, Action::Lock, a).await,
        MachinesCmd::Unlock(a) => actions::run_simple(ctx, Action::Unlock, a).await,
        MachinesCmd::Retire(a) => actions::run_simple(ctx, Action::Retire, a).await,
        MachinesCmd::SetZone(a) => actions::set(ctx, Action::SetZone, a).await,
        MachinesCmd::SetPool(a) => actions::set(ctx, Action::SetPool, a).await,
        MachinesCmd::Tag(a) => actions::tag(ctx, Action::Tag, a).await,
        MachinesCmd::Untag(a) => actions::tag(ctx, Action::Untag, a).await,
        MachinesCmd::Allocate(a) => allocate::run(ctx, a).await,
        MachinesCmd::BootCredentials { target } => boot_credentials(ctx, target).await,
        MachinesCmd::Actions { status } => {
            print_actions(ctx, status);
            Ok(())
        }
    }
}

/// `machines update` (and `set-power`): one UpdateMachine with the given fields.
async fn update(ctx: &Ctx, a: UpdateArgs) -> Result<()> {
    let nothing = a.hostname.is_none()
        && a.arch.is_none()
        && a.zone.is_none()
        && a.description.is_none()
        && a.macs.is_empty()
        && a.power_driver.is_none();
    if nothing {
        bail!("nothing to change: pass at least one of --hostname, --arch, --zone, --description, --mac, --power-driver");
    }
    let id = system_id(ctx, &a.machine).await?;
    let clients = ctx.clients()?;
    let req = UpdateMachineRequest {
        system_id: id,
        hostname: a.hostname,
        arch: a.arch,
        zone: a.zone,
        description: a.description,
        power: power(a.power_driver, a.power_params),
        replace_macs: !a.macs.is_empty(),
        macs: a.macs,
        expected_revision: a.expected_revision.unwrap_or(0),
    };
    let m = ctx
        .call(|| {
            let mut c = clients.machines();
            let req = req.clone();
            async move { c.update_machine(req).await }
        })
        .await?;
    show_machine(ctx, &m);
    Ok(())
}

async fn boot_credentials(ctx: &Ctx, target: Target) -> Result<()> {
    let sel = Sel::of(target)?;
    let clients = ctx.clients()?;
    let b = call_ref(ctx, &sel, |r| {
        let mut c = clients.machines();
        let req = GetBootCredentialsRequest { machine: Some(r) };
        async move { c.get_boot_credentials(req).await }
    })
    .await?;
    if ctx.json() {
        print_json(&json!({
            "system_id": b.system_id,
            "boot_id": b.boot_id,
            "token": b.token,
            "purpose": b.purpose,
        }));
    } else {
        outln!(
            "{}",
            output::render(&output::record(vec![
                ("system id", b.system_id.clone()),
                ("boot id", b.boot_id.clone()),
                ("token", b.token.clone()),
                ("purpose", b.purpose.clone()),
            ]))
        );
        eprintln!(
            "valid for this boot only; e.g. ingot agent progress {} --token TOKEN --message ... --percent ...",
            b.system_id
        );
    }
    Ok(())
}

/// The CLI command taking `a` (`enter-rescue` is `rescue`).
pub fn command_name(a: Action) -> &'static str {
    match a {
        Action::EnterRescue => "rescue",
        a => a.as_str(),
    }
}

/// Who may take `a`.
fn who(a: Action) -> &'static str {
    match a {
        Action::Allocate => "any user",
        a if a.admin_only() => "admin",
        _ => "owner or admin",
    }
}

/// Where `a` (with table entry `n`) leads, in words.
fn leads_to(a: Action, n: Next) -> String {
    if a == Action::Delete {
        return "(removed)".into();
    }
    next_name(n)
}

/// Where `n` leads, in words.
fn next_name(n: Next) -> String {
    match n {
        Next::To(s) => s.as_str().to_string(),
        Next::Previous => "(previous status)".into(),
        Next::Stay => "(unchanged)".into(),
    }
}

/// The transitions out of `s`: (action, where it leads), table rows first, then the edits.
fn transitions(s: MachineStatus) -> Vec<(Action, Next)> {
    let mut out: Vec<(Action, Next)> = lifecycle::TABLE
        .iter()
        .filter(|(f, _, _)| *f == s)
        .map(|(_, a, n)| (*a, *n))
        .collect();
    out.sort_by_key(|(a, _)| Action::ALL.iter().position(|x| x == a));
    out.extend(lifecycle::EDITS.iter().map(|a| (*a, Next::Stay)));
    out
}

fn print_actions(ctx: &Ctx, status: Option<MachineStatus>) {
    let statuses: Vec<MachineStatus> = match status {
        Some(s) => vec![s],
        None => MachineStatus::ALL.to_vec(),
    };
    if ctx.json() {
        let list: Vec<_> = statuses
            .iter()
            .map(|s| {
                let actions: Vec<_> = transitions(*s)
                    .into_iter()
                    .map(|(a, n)| {
                        json!({
                            "action": a.as_str(),
                            "command": command_name(a),
                            "next": match n {
                                Next::To(t) => json!(t.as_str()),
                                Next::Previous => json!("previous"),
                                Next::Stay => json!(null),
                            },
                            "who": who(a),
                        })
                    })
                    .collect();
                json!({
                    "status": s.as_str(),
                    "in_progress": lifecycle::in_progress(*s),
                    "on_success": lifecycle::done_status(*s).map(next_name),
                    "on_failure": lifecycle::failed_status(*s).map(|f| f.as_str()),
                    "actions": actions,
                })
            })
            .collect();
        print_json(&json!({ "statuses": list }));
        return;
    }
    match status {
        None => {
            let mut t = output::table(["STATUS", "ACTIONS"]);
            for s in statuses {
                let names: Vec<&str> = lifecycle::allowed(s)
                    .into_iter()
                    .filter(|a| !lifecycle::EDITS.contains(a))
                    .map(command_name)
                    .collect();
                let mut line = names.join(", ");
                if let (Some(done), Some(failed)) =
                    (lifecycle::done_status(s), lifecycle::failed_status(s))
                {
                    if !line.is_empty() {
                        line.push_str("; ");
                    }
                    line.push_str(&format!(
                        "in progress: -> {} or {}",
                        next_name(done),
                        failed.as_str()
                    ));
                }
                t.add_row(vec![s.as_str().to_string(), output::dash(&line)]);
            }
            outln!("{}", output::render(&t));
            eprintln!(
                "set-zone, set-pool, tag, untag and update are allowed in every status; a locked machine allows only unlock. \
                 `ingot machines actions STATUS` shows where each action leads and who may take it."
            );
        }
        Some(s) => {
            let mut t = output::table(["ACTION", "LEADS TO", "WHO"]);
            for (a, n) in transitions(s) {
                t.add_row(vec![
                    command_name(a).to_string(),
                    leads_to(a, n),
                    who(a).to_string(),
                ]);
            }
            outln!("{}", output::render(&t));
            if let (Some(done), Some(failed)) =
                (lifecycle::done_status(s), lifecycle::failed_status(s))
            {
                outln!(
                    "{} is in progress: success leads to {}, failure or its deadline to {}",
                    s.as_str(),
                    next_name(done),
                    failed.as_str()
                );
            }
        }
    }
}

async fn list(ctx: &Ctx, a: ListArgs) -> Result<()> {
    let clients = ctx.clients()?;
    let filter = MachineFilter {
        zone: a.zone.unwrap_or_default(),
        status: a.status.unwrap_or(0),
        arch: a.arch.unwrap_or_default(),
        hostname_prefix: a.hostname_prefix.unwrap_or_default(),
        mac: a.mac.unwrap_or_default(),
        pool: a.pool.unwrap_or_default(),
        owner: a.owner.unwrap_or_default(),
        tags: a.tags,
        consumer: a.consumer.unwrap_or_default(),
    };
    let mut machines = Vec::new();
    let mut token = a.page_token.unwrap_or_default();
    let mut total;
    let mut revision;
    loop {
        let req = ListMachinesRequest {
            filter: Some(filter.clone()),
            page_size: a.page_size.unwrap_or(0),
            page_token: token.clone(),
            consistency: consistency(a.stale),
            view: MachineView::Basic as i32,
        };
        let page = ctx
            .call(|| {
                let mut c = clients.machines();
                let req = req.clone();
                async move { c.list_machines(req).await }
            })
            .await?;
        total = page.total_size;
        revision = page.revision;
        machines.extend(page.machines);
        token = page.next_page_token;
        if !a.all_pages || token.is_empty() {
            break;
        }
    }
    if ctx.json() {
        print_json(&json!({
            "machines": machines.iter().map(output::machine_json).collect::<Vec<_>>(),
            "next_page_token": token,
            "total_size": total,
            "revision": revision,
        }));
        return Ok(());
    }
    let mut t = output::table(output::MACHINE_HEADER);
    for m in &machines {
        t.add_row(output::machine_row(m));
    }
    if !machines.is_empty() {
        outln!("{}", crate::output::render(&t));
    }
    if token.is_empty() {
        eprintln!(
            "{} machine{}",
            machines.len(),
            if machines.len() == 1 { "" } else { "s" }
        );
    } else {
        eprintln!(
            "{} of {total} machines; more with --page-token {token} (or --all-pages)",
            machines.len()
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_status_has_a_row_and_a_way_out() {
        for s in MachineStatus::ALL {
            assert!(!transitions(s).is_empty());
        }
        assert_eq!(command_name(Action::EnterRescue), "rescue");
        assert_eq!(who(Action::Commission), "admin");
        assert_eq!(who(Action::Deploy), "owner or admin");
    }
}
