//! `ingot leases list`: the DHCP leases racks recorded, every page of SubnetService.ListLeases. A
//! non-admin sees only the leases of machines they may see.

use crate::ctx::Ctx;
use crate::output::{self, print_json};
use crate::target::consistency;
use anyhow::Result;
use clap::Subcommand;
use ingot_proto::v1::ListLeasesRequest;
use serde_json::json;

/// Leases asked for per page.
const PAGE_SIZE: u32 = 1000;

/// The `leases` subcommands.
#[derive(Subcommand, Debug)]
pub enum LeasesCmd {
    /// List leases in address order
    List {
        /// Only this subnet's leases, e.g. 10.20.0.0/24
        #[arg(long, value_name = "CIDR")]
        subnet: Option<String>,
        /// Only this MAC's leases
        #[arg(long)]
        mac: Option<String>,
        /// Answer from the serving region's local state (may lag recent writes)
        #[arg(long)]
        stale: bool,
    },
}

/// Runs a `leases` subcommand.
pub async fn run(ctx: &Ctx, cmd: LeasesCmd) -> Result<()> {
    let clients = ctx.clients()?;
    let LeasesCmd::List { subnet, mac, stale } = cmd;
    let mut leases = Vec::new();
    let mut token = String::new();
    loop {
        let page = ctx
            .call(|| {
                let mut c = clients.subnets();
                let req = ListLeasesRequest {
                    subnet: subnet.clone().unwrap_or_default(),
                    mac: mac.clone().unwrap_or_default(),
                    consistency: consistency(stale),
                    page_size: PAGE_SIZE,
                    page_token: token.clone(),
                };
                async move { c.list_leases(req).await }
            })
            .await?;
        leases.extend(page.leases);
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    if ctx.json() {
        let all: Vec<_> = leases.iter().map(output::lease_json).collect();
        print_json(&json!({ "leases": all }));
    } else {
        let mut t = output::table(output::LEASE_HEADER);
        for l in &leases {
            t.add_row(output::lease_row(l));
        }
        outln!("{}", output::render(&t));
    }
    Ok(())
}
