//! `ingot cluster ...`: region membership and health, join tokens.

use crate::ctx::Ctx;
use crate::output::{self, print_json};
use anyhow::{bail, Result};
use clap::Subcommand;
use ingot_proto::v1::{CreateJoinTokenRequest, ListRegionsRequest, RemoveRegionRequest};
use serde_json::json;
use std::time::Duration;

/// The `cluster` subcommands.
#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// List the regions with their Raft role, term, indexes and health (the leader is marked with *)
    List,
    /// Create a single-use token that lets one new region join (prints the token)
    JoinToken {
        /// Token lifetime: 1h, 30m, 3600s, ...
        #[arg(long, default_value = "1h", value_parser = crate::parse::parse_duration)]
        ttl: Duration,
    },
    /// Remove a region from the Raft membership
    Remove {
        /// Raft node id of the region (see `ingot cluster list`)
        node_id: u64,
    },
}

/// Runs a `cluster` subcommand.
pub async fn run(ctx: &Ctx, cmd: ClusterCmd) -> Result<()> {
    let clients = ctx.clients()?;
    match cmd {
        ClusterCmd::List => {
            let resp = ctx
                .call(|| {
                    let mut c = clients.cluster();
                    async move { c.list_regions(ListRegionsRequest {}).await }
                })
                .await?;
            if ctx.json() {
                let regions: Vec<_> = resp
                    .regions
                    .iter()
                    .map(|r| output::region_json(r, resp.leader_id))
                    .collect();
                print_json(&json!({
                    "cluster_id": resp.cluster_id,
                    "leader_id": resp.leader_id,
                    "regions": regions,
                }));
                return Ok(());
            }
            let leader = resp
                .regions
                .iter()
                .find(|r| r.node_id == resp.leader_id && resp.leader_id != 0)
                .map(|r| format!("node {} ({})", r.node_id, r.name))
                .unwrap_or_else(|| "none".into());
            outln!("cluster {}, leader: {leader}", resp.cluster_id);
            let mut t = output::table([
                "NODE ID",
                "NAME",
                "ROLE",
                "VOTER",
                "TERM",
                "APPLIED",
                "LAST LOG",
                "SNAPSHOT",
                "HEALTHY",
                "API ADDR",
                "RAFT ADDR",
                "ERROR",
            ]);
            let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
            for r in &resp.regions {
                let mark = if resp.leader_id != 0 && r.node_id == resp.leader_id {
                    "*"
                } else {
                    ""
                };
                t.add_row(vec![
                    format!("{}{mark}", r.node_id),
                    r.name.clone(),
                    output::role_name(r.role),
                    yes_no(r.voter),
                    r.term.to_string(),
                    r.last_applied_index.to_string(),
                    r.last_log_index.to_string(),
                    r.snapshot_index.to_string(),
                    yes_no(r.healthy),
                    r.api_addr.clone(),
                    r.raft_addr.clone(),
                    r.error.clone(),
                ]);
            }
            outln!("{}", crate::output::render(&t));
        }
        ClusterCmd::JoinToken { ttl } => {
            let Ok(ttl_seconds) = u32::try_from(ttl.as_secs()) else {
                bail!("--ttl is too long");
            };
            if ttl_seconds == 0 {
                bail!("--ttl must be at least 1s");
            }
            let resp = ctx
                .call(|| {
                    let mut c = clients.cluster();
                    async move {
                        c.create_join_token(CreateJoinTokenRequest { ttl_seconds })
                            .await
                    }
                })
                .await?;
            if ctx.json() {
                print_json(&json!({
                    "token": resp.token,
                    "expires_at": output::ts_json(&resp.expires_at),
                }));
            } else {
                outln!("{}", resp.token);
                eprintln!(
                    "single use, expires {}; on the new host: ingot-region join --token TOKEN ...",
                    output::ts(&resp.expires_at)
                );
            }
        }
        ClusterCmd::Remove { node_id } => {
            ctx.call(|| {
                let mut c = clients.cluster();
                async move { c.remove_region(RemoveRegionRequest { node_id }).await }
            })
            .await?;
            if ctx.json() {
                print_json(&json!({ "removed": node_id }));
            } else {
                outln!("removed region node {node_id} from the cluster");
            }
        }
    }
    Ok(())
}
