//! `ingot settings ...`: cluster-wide settings (ClusterService GetSettings / UpdateSettings).

use crate::ctx::Ctx;
use crate::output::{self, print_json};
use anyhow::Result;
use clap::Subcommand;
use ingot_proto::v1::{GetSettingsRequest, Settings, UpdateSettingsRequest};
use serde_json::json;
use std::collections::BTreeMap;

/// The `settings` subcommands.
#[derive(Subcommand, Debug)]
pub enum SettingsCmd {
    /// Show every setting with its current value
    Show,
    /// Change settings (admin): deadline.<status>=<seconds or duration, or 'default'>
    Set {
        /// e.g. deadline.commissioning=30m deadline.disk-erasing=6h deadline.deploying=default
        #[arg(value_name = "KEY=VALUE", required = true, value_parser = crate::parse::parse_setting)]
        assignments: Vec<(String, u64)>,
    },
}

/// Deadlines in status order (the lifecycle's order), then any the CLI does not know.
fn sorted(s: &Settings) -> Vec<(String, u64)> {
    let mut v: Vec<(usize, String, u64)> = s
        .deadline_seconds
        .iter()
        .map(|(k, secs)| {
            let pos = ingot_common::MachineStatus::parse(k)
                .and_then(|st| {
                    ingot_common::MachineStatus::ALL
                        .iter()
                        .position(|x| *x == st)
                })
                .unwrap_or(usize::MAX);
            (pos, k.clone(), *secs)
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, k, s)| (k, s)).collect()
}

fn print(ctx: &Ctx, s: &Settings) {
    let list = sorted(s);
    if ctx.json() {
        let deadlines: BTreeMap<_, _> = list.iter().cloned().collect();
        print_json(&json!({ "deadline_seconds": deadlines }));
        return;
    }
    let mut t = output::table(["KEY", "VALUE", "SECONDS"]);
    for (k, secs) in list {
        t.add_row(vec![
            format!("deadline.{k}"),
            output::duration(secs),
            secs.to_string(),
        ]);
    }
    outln!("{}", output::render(&t));
}

/// Runs a `settings` subcommand.
pub async fn run(ctx: &Ctx, cmd: SettingsCmd) -> Result<()> {
    let clients = ctx.clients()?;
    let s = match cmd {
        SettingsCmd::Show => {
            ctx.call(|| {
                let mut c = clients.cluster();
                async move { c.get_settings(GetSettingsRequest {}).await }
            })
            .await?
        }
        SettingsCmd::Set { assignments } => {
            let req = UpdateSettingsRequest {
                deadline_seconds: assignments.into_iter().collect(),
            };
            ctx.call(|| {
                let mut c = clients.cluster();
                let req = req.clone();
                async move { c.update_settings(req).await }
            })
            .await?
        }
    };
    print(ctx, &s);
    Ok(())
}
