//! `ingot zones ...`: one command per ZoneService RPC.

use crate::ctx::Ctx;
use crate::output::{self, print_json};
use anyhow::{bail, Result};
use clap::Subcommand;
use ingot_proto::v1::{
    CreateZoneRequest, DeleteZoneRequest, GetZoneRequest, ListZonesRequest, ReadConsistency,
    UpdateZoneRequest, Zone,
};
use serde_json::json;

/// The `zones` subcommands.
#[derive(Subcommand, Debug)]
pub enum ZonesCmd {
    /// List zones with their machine counts per status
    List {
        /// Answer from the serving region's local state (may lag recent writes)
        #[arg(long)]
        stale: bool,
    },
    /// Show one zone
    Show {
        /// Zone name
        name: String,
        /// Answer from the serving region's local state (may lag recent writes)
        #[arg(long)]
        stale: bool,
    },
    /// Create a zone
    Create {
        /// Zone name (a DNS label)
        name: String,
        /// Free text
        #[arg(long)]
        description: Option<String>,
    },
    /// Change a zone's description and/or rename it (its machines follow)
    Update {
        /// Zone name
        name: String,
        /// New description
        #[arg(long)]
        description: Option<String>,
        /// New name
        #[arg(long, value_name = "NEW")]
        rename: Option<String>,
    },
    /// Delete an empty zone ("default" cannot be deleted)
    Delete {
        /// Zone name
        name: String,
    },
}

fn consistency(stale: bool) -> i32 {
    if stale {
        ReadConsistency::Stale as i32
    } else {
        ReadConsistency::Linearizable as i32
    }
}

fn show(ctx: &Ctx, z: &Zone) {
    if ctx.json() {
        print_json(&output::zone_json(z));
    } else {
        outln!("{}", output::render(&output::zone_record(z)));
    }
}

/// Runs a `zones` subcommand.
pub async fn run(ctx: &Ctx, cmd: ZonesCmd) -> Result<()> {
    let clients = ctx.clients()?;
    match cmd {
        ZonesCmd::List { stale } => {
            let resp = ctx
                .call(|| {
                    let mut c = clients.zones();
                    async move {
                        c.list_zones(ListZonesRequest {
                            consistency: consistency(stale),
                        })
                        .await
                    }
                })
                .await?;
            if ctx.json() {
                let zones: Vec<_> = resp.zones.iter().map(output::zone_json).collect();
                print_json(&json!({ "zones": zones }));
            } else {
                let mut t =
                    output::table(["NAME", "MACHINES", "STATUSES", "DESCRIPTION", "CREATED"]);
                for z in &resp.zones {
                    t.add_row(vec![
                        z.name.clone(),
                        z.machine_count.to_string(),
                        output::status_counts(&z.status_counts),
                        z.description.clone(),
                        output::ts(&z.created_at),
                    ]);
                }
                outln!("{}", crate::output::render(&t));
            }
        }
        ZonesCmd::Show { name, stale } => {
            let z = ctx
                .call(|| {
                    let mut c = clients.zones();
                    let req = GetZoneRequest {
                        name: name.clone(),
                        consistency: consistency(stale),
                    };
                    async move { c.get_zone(req).await }
                })
                .await?;
            show(ctx, &z);
        }
        ZonesCmd::Create { name, description } => {
            let req = CreateZoneRequest {
                name,
                description: description.unwrap_or_default(),
            };
            let z = ctx
                .call(|| {
                    let mut c = clients.zones();
                    let req = req.clone();
                    async move { c.create_zone(req).await }
                })
                .await?;
            show(ctx, &z);
        }
        ZonesCmd::Update {
            name,
            description,
            rename,
        } => {
            if description.is_none() && rename.is_none() {
                bail!("nothing to change: pass --description and/or --rename");
            }
            let req = UpdateZoneRequest {
                name,
                description,
                new_name: rename,
            };
            let z = ctx
                .call(|| {
                    let mut c = clients.zones();
                    let req = req.clone();
                    async move { c.update_zone(req).await }
                })
                .await?;
            show(ctx, &z);
        }
        ZonesCmd::Delete { name } => {
            ctx.call(|| {
                let mut c = clients.zones();
                let req = DeleteZoneRequest { name: name.clone() };
                async move { c.delete_zone(req).await }
            })
            .await?;
            if ctx.json() {
                print_json(&json!({ "deleted": name }));
            } else {
                outln!("deleted zone {name}");
            }
        }
    }
    Ok(())
}
