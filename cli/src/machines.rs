//! `ingot machines ...`: one command per MachineService RPC.

use crate::output::{self, print_json};
use crate::Ctx;
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use ingot_common::Mac;
use ingot_proto::v1::get_machine_request::Key;
use ingot_proto::v1::{
    CreateMachineRequest, DeleteMachineRequest, GetMachineRequest, ListMachinesRequest, Machine,
    MachineFilter, PowerParameters, ReadConsistency, UpdateMachineRequest,
};
use serde_json::json;

/// The `machines` subcommands.
#[derive(Subcommand, Debug)]
pub enum MachinesCmd {
    /// List machines matching all given filters, ordered by system id
    List(ListArgs),
    /// Show one machine, found by system id, MAC or hostname
    Show {
        /// System id (6 characters [a-z0-9]), MAC address or hostname
        machine: String,
        /// Show secret power parameters in clear (admins only)
        #[arg(long)]
        show_secrets: bool,
        /// Answer from the serving region's local state (may lag recent writes)
        #[arg(long)]
        stale: bool,
    },
    /// Enlist a machine
    Create(CreateArgs),
    /// Change the given fields of a machine
    Update(UpdateArgs),
    /// Remove a machine from Ingot
    Delete {
        /// System id (or MAC or hostname)
        machine: String,
        /// Only delete if the machine's revision is still this one
        #[arg(long, value_name = "R")]
        expected_revision: Option<u64>,
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
    #[arg(long, value_name = "TOKEN", conflicts_with = "all")]
    page_token: Option<String>,
    /// Fetch every page
    #[arg(long)]
    all: bool,
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
    /// Power driver: ipmi, redfish, webhook, manual, sim
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

/// How a machine argument is looked up: 6 characters of `[a-z0-9]` is a system id, a MAC is a MAC,
/// anything else a hostname.
fn machine_key(s: &str) -> Key {
    if is_system_id(s) {
        Key::SystemId(s.to_string())
    } else if let Ok(mac) = s.parse::<Mac>() {
        Key::Mac(mac.to_string())
    } else {
        Key::Hostname(s.to_string())
    }
}

fn is_system_id(s: &str) -> bool {
    s.len() == 6
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

fn consistency(stale: bool) -> i32 {
    if stale {
        ReadConsistency::Stale as i32
    } else {
        ReadConsistency::Linearizable as i32
    }
}

/// Finds a machine; a system id or MAC that is not found is retried as a hostname (a hostname may look
/// like either).
async fn get(ctx: &Ctx, arg: &str, include_secrets: bool, stale: bool) -> Result<Machine> {
    let clients = ctx.clients()?;
    let lookup = |key: Key| {
        let clients = clients.clone();
        async move {
            ctx.call(|| {
                let mut c = clients.machines();
                let req = GetMachineRequest {
                    key: Some(key.clone()),
                    consistency: consistency(stale),
                    include_secrets,
                };
                async move { c.get_machine(req).await }
            })
            .await
        }
    };
    let key = machine_key(arg);
    let retry_as_hostname = !matches!(key, Key::Hostname(_));
    match lookup(key).await {
        Err(e)
            if retry_as_hostname
                && e.downcast_ref::<tonic::Status>()
                    .is_some_and(|s| s.code() == tonic::Code::NotFound) =>
        {
            lookup(Key::Hostname(arg.to_string())).await.map_err(|_| e)
        }
        r => r,
    }
}

/// The system id of a machine argument: used as is when it looks like one, else looked up.
async fn system_id(ctx: &Ctx, arg: &str) -> Result<String> {
    if is_system_id(arg) {
        return Ok(arg.to_string());
    }
    Ok(get(ctx, arg, false, false).await?.system_id)
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
        MachinesCmd::Show {
            machine,
            show_secrets,
            stale,
        } => {
            let m = get(ctx, &machine, show_secrets, stale).await?;
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
        MachinesCmd::Update(a) => {
            let id = system_id(ctx, &a.machine).await?;
            let nothing = a.hostname.is_none()
                && a.arch.is_none()
                && a.zone.is_none()
                && a.description.is_none()
                && a.macs.is_empty()
                && a.power_driver.is_none();
            if nothing {
                bail!("nothing to change: pass at least one of --hostname, --arch, --zone, --description, --mac, --power-driver");
            }
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
        MachinesCmd::Delete {
            machine,
            expected_revision,
        } => {
            let id = system_id(ctx, &machine).await?;
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
    };
    let mut machines = Vec::new();
    let mut token = a.page_token.unwrap_or_default();
    let mut total;
    loop {
        let req = ListMachinesRequest {
            filter: Some(filter.clone()),
            page_size: a.page_size.unwrap_or(0),
            page_token: token.clone(),
            consistency: consistency(a.stale),
        };
        let page = ctx
            .call(|| {
                let mut c = clients.machines();
                let req = req.clone();
                async move { c.list_machines(req).await }
            })
            .await?;
        total = page.total_size;
        machines.extend(page.machines);
        token = page.next_page_token;
        if !a.all || token.is_empty() {
            break;
        }
    }
    if ctx.json() {
        print_json(&json!({
            "machines": machines.iter().map(output::machine_json).collect::<Vec<_>>(),
            "next_page_token": token,
            "total_size": total,
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
            "{} of {total} machines; more with --page-token {token} (or --all)",
            machines.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(machine_key("abc123"), Key::SystemId("abc123".into()));
        assert_eq!(
            machine_key("52-54-00-AB-CD-01"),
            Key::Mac("52:54:00:ab:cd:01".into())
        );
        assert_eq!(machine_key("node-7"), Key::Hostname("node-7".into()));
        assert_eq!(machine_key("ABC123"), Key::Hostname("ABC123".into()));
    }
}
