//! `ingot pools ...`: one command per PoolService RPC.

use crate::ctx::Ctx;
use crate::output::{self, print_json};
use crate::target::consistency;
use anyhow::{bail, Result};
use clap::Subcommand;
use ingot_proto::v1::{
    CreatePoolRequest, DeletePoolRequest, GetPoolRequest, ListPoolsRequest, Pool, UpdatePoolRequest,
};
use serde_json::json;

/// The `pools` subcommands.
#[derive(Subcommand, Debug)]
pub enum PoolsCmd {
    /// List resource pools with their machine counts per status
    List {
        /// Answer from the serving region's local state (may lag recent writes)
        #[arg(long)]
        stale: bool,
    },
    /// Show one pool
    Show {
        /// Pool name
        name: String,
        /// Answer from the serving region's local state (may lag recent writes)
        #[arg(long)]
        stale: bool,
    },
    /// Create a pool (admin)
    Create {
        /// Pool name (a DNS label)
        name: String,
        /// Free text
        #[arg(long)]
        description: Option<String>,
    },
    /// Change a pool's description (admin)
    Update {
        /// Pool name
        name: String,
        /// New description
        #[arg(long)]
        description: Option<String>,
    },
    /// Delete an empty pool ("default" cannot be deleted; admin)
    Delete {
        /// Pool name
        name: String,
    },
}

fn show(ctx: &Ctx, p: &Pool) {
    if ctx.json() {
        print_json(&output::pool_json(p));
    } else {
        outln!("{}", output::render(&output::pool_record(p)));
    }
}

/// Runs a `pools` subcommand.
pub async fn run(ctx: &Ctx, cmd: PoolsCmd) -> Result<()> {
    let clients = ctx.clients()?;
    match cmd {
        PoolsCmd::List { stale } => {
            let resp = ctx
                .call(|| {
                    let mut c = clients.pools();
                    let req = ListPoolsRequest {
                        consistency: consistency(stale),
                    };
                    async move { c.list_pools(req).await }
                })
                .await?;
            if ctx.json() {
                let pools: Vec<_> = resp.pools.iter().map(output::pool_json).collect();
                print_json(&json!({ "pools": pools }));
            } else {
                let mut t =
                    output::table(["NAME", "MACHINES", "STATUSES", "DESCRIPTION", "CREATED"]);
                for p in &resp.pools {
                    t.add_row(vec![
                        p.name.clone(),
                        p.machine_count.to_string(),
                        output::status_counts(&p.status_counts),
                        p.description.clone(),
                        output::ts(&p.created_at),
                    ]);
                }
                outln!("{}", output::render(&t));
            }
        }
        PoolsCmd::Show { name, stale } => {
            let p = ctx
                .call(|| {
                    let mut c = clients.pools();
                    let req = GetPoolRequest {
                        name: name.clone(),
                        consistency: consistency(stale),
                    };
                    async move { c.get_pool(req).await }
                })
                .await?;
            show(ctx, &p);
        }
        PoolsCmd::Create { name, description } => {
            let req = CreatePoolRequest {
                name,
                description: description.unwrap_or_default(),
            };
            let p = ctx
                .call(|| {
                    let mut c = clients.pools();
                    let req = req.clone();
                    async move { c.create_pool(req).await }
                })
                .await?;
            show(ctx, &p);
        }
        PoolsCmd::Update { name, description } => {
            if description.is_none() {
                bail!("nothing to change: pass --description");
            }
            let req = UpdatePoolRequest { name, description };
            let p = ctx
                .call(|| {
                    let mut c = clients.pools();
                    let req = req.clone();
                    async move { c.update_pool(req).await }
                })
                .await?;
            show(ctx, &p);
        }
        PoolsCmd::Delete { name } => {
            ctx.call(|| {
                let mut c = clients.pools();
                let req = DeletePoolRequest { name: name.clone() };
                async move { c.delete_pool(req).await }
            })
            .await?;
            if ctx.json() {
                print_json(&json!({ "deleted": name }));
            } else {
                outln!("deleted pool {name}");
            }
        }
    }
    Ok(())
}
