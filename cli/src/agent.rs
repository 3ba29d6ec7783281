//! `ingot agent ...`: play the in-band agent of a machine's current boot (for machines with manual
//! power, scripts and tests): report the inventory, progress and the result, authenticated by the
//! per-boot token.
//!
//! Here `--token` is the boot token (not a bearer token). When it is omitted, the current boot's token is
//! fetched with `GetBootCredentials`, which needs an admin bearer token from `--profile` or
//! `INGOT_TOKEN`.

use crate::ctx::Ctx;
use crate::output::{self, print_json};
use crate::target;
use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Args, Subcommand};
use ingot_client::Clients;
use ingot_proto::v1::{
    machine_ref, GetBootCredentialsRequest, MachineRef, ReportInventoryRequest,
    ReportProgressRequest, ReportResponse, ReportResultRequest,
};
use serde_json::json;
use std::io::Read;
use std::path::PathBuf;

/// The `agent` subcommands.
#[derive(Subcommand, Debug)]
pub enum AgentCmd {
    /// Upload the hardware inventory (commissioning) from a JSON file
    ReportInventory {
        #[command(flatten)]
        boot: Boot,
        /// JSON of the Inventory fields: cpu_count, cpu_model, memory_mib,
        /// disks[{name,size_gib,rotational,model,serial,tags}], nics[{name,mac,speed_mbps,link}],
        /// firmware{boot_mode,vendor,version}, dmi{}; '-' reads stdin
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
    /// Report a progress step of the running boot
    Progress {
        #[command(flatten)]
        boot: Boot,
        /// What is happening, e.g. "curtin: partitioning"
        #[arg(long)]
        message: String,
        /// How far along, 0-100
        #[arg(long, value_name = "P", value_parser = clap::value_parser!(u32).range(0..=100), default_value_t = 0)]
        percent: u32,
    },
    /// Report the end of the boot's work: success moves the machine on, failure to the failed status
    #[command(group(ArgGroup::new("outcome").required(true).args(["success", "failure"])))]
    Result {
        #[command(flatten)]
        boot: Boot,
        /// The work succeeded
        #[arg(long)]
        success: bool,
        /// The work failed, for this reason
        #[arg(long, value_name = "REASON")]
        failure: Option<String>,
    },
}

/// The machine and its boot token.
#[derive(Args, Debug)]
pub struct Boot {
    /// System id (or MAC or hostname) of the machine
    #[arg(value_name = "ID")]
    machine: String,
    /// The boot token (for agent commands --token means the same); fetched with GetBootCredentials
    /// (admin) when neither is given
    #[arg(long, value_name = "T")]
    boot_token: Option<String>,
}

/// Connects for agent calls: the bearer comes from the profile or the environment (the agent service
/// does not need one; the boot token is sent as a stand-in when there is none).
fn agent_clients(ctx: &Ctx, boot_token: Option<&str>) -> Result<Clients> {
    match ctx.clients_with_token(None) {
        Ok(c) => Ok(c),
        Err(e) => match boot_token {
            Some(t) => ctx.clients_with_token(Some(t.to_string())),
            None => Err(e.context(
                "agent commands without --token fetch the boot token with an admin bearer token",
            )),
        },
    }
}

/// The system id and boot token of the machine's current boot.
async fn resolve(ctx: &Ctx, boot: &Boot) -> Result<(Clients, String, String)> {
    let given = boot.boot_token.clone().or_else(|| ctx.global.token.clone());
    let clients = agent_clients(ctx, given.as_deref())?;
    // Lookups use the bearer of the profile or environment: --token is the boot token here.
    let bearer = Ctx {
        global: crate::ctx::Global {
            token: None,
            ..ctx.global.clone()
        },
    };
    let system_id = if target::is_system_id(&boot.machine) {
        boot.machine.clone()
    } else if given.is_none() || bearer.clients().is_ok() {
        target::system_id(&bearer, &boot.machine).await?
    } else {
        bail!(
            "'{}' is not a system id (6 characters [a-z0-9]); without a bearer token to look it up, name the machine by system id",
            boot.machine
        );
    };
    let token = match given {
        Some(t) => t,
        None => {
            let sid = system_id.clone();
            let creds = ctx
                .call(|| {
                    let mut c = clients.machines();
                    let req = GetBootCredentialsRequest {
                        machine: Some(MachineRef {
                            key: Some(machine_ref::Key::SystemId(sid.clone())),
                        }),
                    };
                    async move { c.get_boot_credentials(req).await }
                })
                .await
                .context("fetching the boot token (pass --token to use a known one)")?;
            creds.token
        }
    };
    Ok((clients, system_id, token))
}

/// Reads the inventory JSON: the Inventory fields, or an object with them under "inventory".
fn read_inventory(file: &PathBuf) -> Result<ingot_common::model::Inventory> {
    let text = if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read the inventory from stdin")?;
        s
    } else {
        std::fs::read_to_string(file)
            .with_context(|| format!("cannot read --file {}", file.display()))?
    };
    parse_inventory(&text).with_context(|| format!("{}: not an inventory", file.display()))
}

fn parse_inventory(text: &str) -> Result<ingot_common::model::Inventory> {
    let mut v: serde_json::Value = serde_json::from_str(text)?;
    if let Some(inner) = v.get_mut("inventory").filter(|i| i.is_object()) {
        v = inner.take();
    }
    let inv: ingot_common::model::Inventory = serde_json::from_value(v)?;
    if let Err(e) = ingot_common::validate::inventory("inventory", &inv) {
        bail!("{e}");
    }
    Ok(inv)
}

fn print_report(ctx: &Ctx, system_id: &str, what: &str, r: &ReportResponse) {
    if ctx.json() {
        print_json(&json!({
            "system_id": system_id,
            "status": output::status_name(r.status),
            "revision": r.revision,
        }));
    } else {
        outln!(
            "{what} reported; {system_id} is {} (revision {})",
            output::status_name(r.status),
            r.revision
        );
    }
}

/// Runs an `agent` subcommand.
pub async fn run(ctx: &Ctx, cmd: AgentCmd) -> Result<()> {
    match cmd {
        AgentCmd::ReportInventory { boot, file } => {
            let inv = read_inventory(&file)?;
            let (clients, system_id, token) = resolve(ctx, &boot).await?;
            let req = ReportInventoryRequest {
                system_id: system_id.clone(),
                boot_token: token,
                inventory: Some(ingot_proto::convert::inventory_to_proto(&inv)),
            };
            let r = ctx
                .call(|| {
                    let mut c = clients.agent();
                    let req = req.clone();
                    async move { c.report_inventory(req).await }
                })
                .await?;
            print_report(ctx, &system_id, "inventory", &r);
        }
        AgentCmd::Progress {
            boot,
            message,
            percent,
        } => {
            let (clients, system_id, token) = resolve(ctx, &boot).await?;
            let req = ReportProgressRequest {
                system_id: system_id.clone(),
                boot_token: token,
                message,
                percent,
            };
            let r = ctx
                .call(|| {
                    let mut c = clients.agent();
                    let req = req.clone();
                    async move { c.report_progress(req).await }
                })
                .await?;
            print_report(ctx, &system_id, "progress", &r);
        }
        AgentCmd::Result {
            boot,
            success,
            failure,
        } => {
            if let Some(reason) = &failure {
                if reason.trim().is_empty() {
                    bail!("--failure needs a reason: what went wrong");
                }
            }
            let (clients, system_id, token) = resolve(ctx, &boot).await?;
            let req = ReportResultRequest {
                system_id: system_id.clone(),
                boot_token: token,
                success: success && failure.is_none(),
                reason: failure.unwrap_or_default(),
            };
            let r = ctx
                .call(|| {
                    let mut c = clients.agent();
                    let req = req.clone();
                    async move { c.report_result(req).await }
                })
                .await?;
            print_report(ctx, &system_id, "result", &r);
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const INV: &str = r#"{
        "cpu_count": 16, "cpu_model": "Xeon", "memory_mib": 65536,
        "disks": [{"name": "sda", "size_gib": 960, "rotational": false, "model": "M", "serial": "S", "tags": ["nvme"]}],
        "nics": [{"name": "eno1", "mac": "52:54:00:00:00:01", "speed_mbps": 10000, "link": true}],
        "firmware": {"boot_mode": "uefi", "vendor": "AMI", "version": "1.0"},
        "dmi": {"system_vendor": "Acme"}
    }"#;

    #[test]
    fn inventories() {
        let inv = parse_inventory(INV).unwrap();
        assert_eq!(inv.cpu_count, 16);
        assert_eq!(inv.disks[0].tags, vec!["nvme"]);
        assert_eq!(inv.firmware.boot_mode, "uefi");
        let wrapped = format!("{{\"inventory\": {INV}}}");
        assert_eq!(parse_inventory(&wrapped).unwrap(), inv);
        let p = ingot_proto::convert::inventory_to_proto(&inv);
        assert_eq!(p.nics[0].speed_mbps, 10000);
        assert!(parse_inventory("{\"cpu_model\": \"x\"}").is_err());
        assert!(parse_inventory("not json").is_err());
    }
}
