//! `ingot subnets ...`: one command per SubnetService RPC (boot networks). Admins write; anyone may list.

use crate::ctx::Ctx;
use crate::output::{self, print_json};
use crate::target::consistency;
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use ingot_proto::v1::{
    CreateSubnetRequest, DeleteSubnetRequest, GetSubnetRequest, ListSubnetsRequest, Subnet,
    TextList, UpdateSubnetRequest,
};
use serde_json::json;
use std::time::Duration;

/// Subnet modes, as the API spells them.
const MODES: [&str; 3] = ["managed", "proxy", "off"];

/// The `subnets` subcommands.
#[derive(Subcommand, Debug)]
pub enum SubnetsCmd {
    /// List subnets with their lease counts
    List {
        /// Answer from the serving region's local state (may lag recent writes)
        #[arg(long)]
        stale: bool,
    },
    /// Show one subnet
    Show {
        /// The subnet's network, e.g. 10.20.0.0/24
        cidr: String,
        /// Answer from the serving region's local state (may lag recent writes)
        #[arg(long)]
        stale: bool,
    },
    /// Create a subnet (admin)
    Create {
        /// The network, e.g. 10.20.0.0/24 (host bits zero, /8 to /30)
        cidr: String,
        #[command(flatten)]
        settings: Settings,
    },
    /// Change a subnet's settings (admin); what is not given stays as it is
    Update {
        /// The subnet's network, e.g. 10.20.0.0/24
        cidr: String,
        #[command(flatten)]
        settings: Settings,
        #[command(flatten)]
        clear: Clear,
    },
    /// Delete a subnet and all its leases (admin)
    Delete {
        /// The subnet's network, e.g. 10.20.0.0/24
        cidr: String,
    },
}

/// A subnet's settings, as flags (create: unset ones take their defaults; update: unset ones stay).
#[derive(Args, Debug, Clone)]
pub struct Settings {
    /// Default router handed to clients (inside the subnet, in no range)
    #[arg(long, value_name = "IP")]
    gateway: Option<String>,
    /// DNS server handed to clients (repeatable, in order; at most 16)
    #[arg(long, value_name = "IP")]
    dns: Vec<String>,
    /// DNS domain handed to clients
    #[arg(long)]
    domain: Option<String>,
    /// Range addresses are handed out from, FIRST-LAST (repeatable; at most 64)
    #[arg(long, value_name = "FIRST-LAST")]
    dynamic: Vec<String>,
    /// Range never handed out, FIRST-LAST (repeatable; at most 64)
    #[arg(long, value_name = "FIRST-LAST")]
    reserved: Vec<String>,
    /// 802.1Q VLAN id, 0 (untagged) to 4094
    #[arg(long)]
    vlan: Option<u32>,
    /// managed: addresses and boot options; proxy: boot options only, next to another DHCP server; off
    #[arg(long, value_parser = MODES)]
    mode: Option<String>,
    /// Rack that serves the subnet
    #[arg(long, value_name = "RACK")]
    primary: Option<String>,
    /// Rack that serves it while the primary's session is gone
    #[arg(long, value_name = "RACK")]
    secondary: Option<String>,
    /// Lease time of ordinary clients, 60s to 30d [create default: 1h]
    #[arg(long, value_name = "DURATION", value_parser = crate::parse::parse_duration)]
    lease_time: Option<Duration>,
    /// Lease time of PXE clients, 10s to 1d [create default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = crate::parse::parse_duration)]
    pxe_lease_time: Option<Duration>,
}

/// What an update clears.
#[derive(Args, Debug, Clone)]
pub struct Clear {
    /// Hand out no gateway
    #[arg(long, conflicts_with = "gateway")]
    no_gateway: bool,
    /// Hand out no DNS servers
    #[arg(long, conflicts_with = "dns")]
    no_dns: bool,
    /// Hand out no domain
    #[arg(long, conflicts_with = "domain")]
    no_domain: bool,
    /// Remove every dynamic range
    #[arg(long, conflicts_with = "dynamic")]
    no_dynamic: bool,
    /// Remove every reserved range
    #[arg(long, conflicts_with = "reserved")]
    no_reserved: bool,
    /// No primary rack (needs no secondary either)
    #[arg(long, conflicts_with = "primary")]
    no_primary: bool,
    /// No secondary rack
    #[arg(long, conflicts_with = "secondary")]
    no_secondary: bool,
}

/// Seconds of a duration flag; beyond `u32` it stays too large, so the region refuses it naming the field.
fn seconds(d: Option<Duration>) -> Option<u32> {
    d.map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

/// A list flag as an update's replacement: given values, or an empty list when cleared, else unchanged.
fn list(values: Vec<String>, clear: bool) -> Option<TextList> {
    (clear || !values.is_empty()).then_some(TextList { values })
}

/// A text flag as an update's change: the value, or empty when cleared, else unchanged.
fn text(value: Option<String>, clear: bool) -> Option<String> {
    if clear {
        Some(String::new())
    } else {
        value
    }
}

/// The update request of `cidr` with `s` set and `c` cleared.
fn update_request(cidr: String, s: Settings, c: Clear) -> UpdateSubnetRequest {
    UpdateSubnetRequest {
        cidr,
        gateway: text(s.gateway, c.no_gateway),
        dns: list(s.dns, c.no_dns),
        domain: text(s.domain, c.no_domain),
        dynamic: list(s.dynamic, c.no_dynamic),
        reserved: list(s.reserved, c.no_reserved),
        vlan: s.vlan,
        mode: s.mode,
        primary: text(s.primary, c.no_primary),
        secondary: text(s.secondary, c.no_secondary),
        lease_time_s: seconds(s.lease_time),
        pxe_lease_time_s: seconds(s.pxe_lease_time),
    }
}

/// True if the update changes nothing.
fn is_empty(r: &UpdateSubnetRequest) -> bool {
    r.gateway.is_none()
        && r.dns.is_none()
        && r.domain.is_none()
        && r.dynamic.is_none()
        && r.reserved.is_none()
        && r.vlan.is_none()
        && r.mode.is_none()
        && r.primary.is_none()
        && r.secondary.is_none()
        && r.lease_time_s.is_none()
        && r.pxe_lease_time_s.is_none()
}

fn show(ctx: &Ctx, s: &Subnet) {
    if ctx.json() {
        print_json(&output::subnet_json(s));
    } else {
        outln!("{}", output::render(&output::subnet_record(s)));
    }
}

/// Runs a `subnets` subcommand.
pub async fn run(ctx: &Ctx, cmd: SubnetsCmd) -> Result<()> {
    let clients = ctx.clients()?;
    match cmd {
        SubnetsCmd::List { stale } => {
            let resp = ctx
                .call(|| {
                    let mut c = clients.subnets();
                    let req = ListSubnetsRequest {
                        consistency: consistency(stale),
                    };
                    async move { c.list_subnets(req).await }
                })
                .await?;
            if ctx.json() {
                let all: Vec<_> = resp.subnets.iter().map(output::subnet_json).collect();
                print_json(&json!({ "subnets": all }));
            } else {
                let mut t = output::table(output::SUBNET_HEADER);
                for s in &resp.subnets {
                    t.add_row(output::subnet_row(s));
                }
                outln!("{}", output::render(&t));
            }
        }
        SubnetsCmd::Show { cidr, stale } => {
            let s = ctx
                .call(|| {
                    let mut c = clients.subnets();
                    let req = GetSubnetRequest {
                        cidr: cidr.clone(),
                        consistency: consistency(stale),
                    };
                    async move { c.get_subnet(req).await }
                })
                .await?;
            show(ctx, &s);
        }
        SubnetsCmd::Create { cidr, settings: s } => {
            let req = CreateSubnetRequest {
                subnet: Some(Subnet {
                    cidr,
                    gateway: s.gateway.unwrap_or_default(),
                    dns: s.dns,
                    domain: s.domain.unwrap_or_default(),
                    dynamic: s.dynamic,
                    reserved: s.reserved,
                    vlan: s.vlan.unwrap_or_default(),
                    mode: s.mode.unwrap_or_default(),
                    primary: s.primary.unwrap_or_default(),
                    secondary: s.secondary.unwrap_or_default(),
                    lease_time_s: seconds(s.lease_time).unwrap_or_default(),
                    pxe_lease_time_s: seconds(s.pxe_lease_time).unwrap_or_default(),
                    lease_count: 0,
                }),
            };
            let s = ctx
                .call(|| {
                    let mut c = clients.subnets();
                    let req = req.clone();
                    async move { c.create_subnet(req).await }
                })
                .await?;
            show(ctx, &s);
        }
        SubnetsCmd::Update {
            cidr,
            settings,
            clear,
        } => {
            let req = update_request(cidr, settings, clear);
            if is_empty(&req) {
                bail!("nothing to change: pass a setting to change (see `ingot subnets update --help`)");
            }
            let s = ctx
                .call(|| {
                    let mut c = clients.subnets();
                    let req = req.clone();
                    async move { c.update_subnet(req).await }
                })
                .await?;
            show(ctx, &s);
        }
        SubnetsCmd::Delete { cidr } => {
            ctx.call(|| {
                let mut c = clients.subnets();
                let req = DeleteSubnetRequest { cidr: cidr.clone() };
                async move { c.delete_subnet(req).await }
            })
            .await?;
            if ctx.json() {
                print_json(&json!({ "deleted": cidr }));
            } else {
                outln!("deleted subnet {cidr} and its leases");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_sends_only_what_it_changes() {
        let s = Settings {
            gateway: None,
            dns: vec![],
            domain: None,
            dynamic: vec!["10.0.0.10-10.0.0.20".into()],
            reserved: vec![],
            vlan: None,
            mode: None,
            primary: None,
            secondary: None,
            lease_time: Some(Duration::from_secs(7200)),
            pxe_lease_time: None,
        };
        let c = Clear {
            no_gateway: true,
            no_dns: false,
            no_domain: false,
            no_dynamic: false,
            no_reserved: true,
            no_primary: false,
            no_secondary: true,
        };
        let r = update_request("10.0.0.0/24".into(), s, c);
        assert_eq!(r.gateway.as_deref(), Some(""));
        assert_eq!(r.dns, None);
        assert_eq!(r.dynamic.map(|l| l.values.len()), Some(1));
        assert_eq!(r.reserved.map(|l| l.values.len()), Some(0));
        assert_eq!(r.secondary.as_deref(), Some(""));
        assert_eq!(r.primary, None);
        assert_eq!(r.lease_time_s, Some(7200));
        assert_eq!(seconds(Some(Duration::from_secs(u64::MAX))), Some(u32::MAX));
    }
}
