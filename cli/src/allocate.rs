//! `ingot machines allocate`: claim Ready machines matching constraints, idempotently by request id.

use crate::ctx::Ctx;
use crate::output::{self, print_json};
use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use ingot_proto::v1::{AllocateRequest, Constraints, SpreadPolicy};
use serde_json::json;

/// How a group allocation spreads over zones.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spread {
    /// As even as possible over the zones that have matching machines
    Even,
    /// At least --min-zones distinct zones
    MinZones,
}

/// Constraints and options of `machines allocate`.
#[derive(Args, Debug)]
pub struct AllocateArgs {
    /// Architecture: amd64 matches any amd64/*; amd64/generic exactly
    #[arg(long)]
    arch: Option<String>,
    /// At least this many CPUs
    #[arg(long, value_name = "N")]
    cpus: Option<u32>,
    /// At least this much memory: MiB (65536) or a size (64G, 512M, 1T)
    #[arg(long, value_name = "SIZE", value_parser = crate::parse::parse_memory_mib)]
    memory: Option<u64>,
    /// Disks, each on its own disk: label:size_gib(tag,...) comma-separated, e.g. 'root:100(ssd),data:2T(rotary)'
    #[arg(long, value_name = "SPEC")]
    storage: Option<String>,
    /// Must have this tag (repeatable)
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Must not have this tag (repeatable)
    #[arg(long = "not-tag", value_name = "TAG")]
    not_tags: Vec<String>,
    /// In one of these zones (repeatable)
    #[arg(long = "zone", value_name = "ZONE")]
    zones: Vec<String>,
    /// Not in this zone (repeatable)
    #[arg(long = "not-zone", value_name = "ZONE")]
    not_zones: Vec<String>,
    /// In one of these pools (repeatable)
    #[arg(long = "pool", value_name = "POOL")]
    pools: Vec<String>,
    /// Not in this pool (repeatable)
    #[arg(long = "not-pool", value_name = "POOL")]
    not_pools: Vec<String>,
    /// Exactly this machine, by hostname
    #[arg(long)]
    hostname: Option<String>,
    /// Exactly this machine, by system id
    #[arg(long, value_name = "ID")]
    system_id: Option<String>,
    /// At least this many network interfaces
    #[arg(long, value_name = "N")]
    nics: Option<u32>,
    /// At least one NIC this fast (Mbit/s)
    #[arg(long, value_name = "MBPS")]
    nic_speed: Option<u64>,
    /// Number of machines (all or nothing; default 1)
    #[arg(long, value_name = "N", default_value_t = 1)]
    count: u32,
    /// How to spread a group over zones
    #[arg(long, value_enum)]
    spread: Option<Spread>,
    /// With --spread min-zones: at least this many distinct zones
    #[arg(long, value_name = "K")]
    min_zones: Option<u32>,
    /// Recorded on the machine (e.g. a Cluster API Machine name); with --count > 1 each gets -<index>
    #[arg(long, value_name = "C")]
    consumer: Option<String>,
    /// Idempotency key: repeating it returns the same machines (default: a new random id, printed)
    #[arg(long, value_name = "ID")]
    request_id: Option<String>,
    /// Only find the machines; claim nothing
    #[arg(long)]
    dry_run: bool,
}

/// The request `a` describes, checked as far as the client can (storage syntax, spread options,
/// request id), so mistakes are reported before any call.
fn request(a: AllocateArgs) -> Result<AllocateRequest> {
    let storage = a.storage.unwrap_or_default();
    if let Err(e) = ingot_common::constraints::parse_storage("--storage", &storage) {
        bail!("{e}");
    }
    let request_id = a.request_id.unwrap_or_else(crate::parse::request_id);
    if let Err(e) = ingot_common::validate::request_id("--request-id", &request_id) {
        bail!("{e}");
    }
    if a.count == 0 {
        bail!("--count must be at least 1");
    }
    let spread = match (a.spread, a.min_zones) {
        (Some(Spread::Even), Some(_)) => {
            bail!("--min-zones goes with --spread min-zones, not --spread even")
        }
        (Some(Spread::Even), None) => SpreadPolicy::Even,
        (Some(Spread::MinZones), None) => bail!("--spread min-zones needs --min-zones K"),
        (Some(Spread::MinZones), Some(_)) | (None, Some(_)) => SpreadPolicy::MinZones,
        (None, None) => SpreadPolicy::Unspecified,
    };
    Ok(AllocateRequest {
        request_id,
        constraints: Some(Constraints {
            arch: a.arch.unwrap_or_default(),
            min_cpu_count: a.cpus.unwrap_or(0),
            min_memory_mib: a.memory.unwrap_or(0),
            storage,
            tags: a.tags,
            not_tags: a.not_tags,
            zones: a.zones,
            not_in_zones: a.not_zones,
            pools: a.pools,
            not_in_pools: a.not_pools,
            hostname: a.hostname.unwrap_or_default(),
            system_id: a.system_id.unwrap_or_default(),
            min_nic_count: a.nics.unwrap_or(0),
            min_nic_speed_mbps: a.nic_speed.unwrap_or(0),
        }),
        consumer: a.consumer.unwrap_or_default(),
        count: a.count,
        spread: spread as i32,
        min_zones: a.min_zones.unwrap_or(0),
        dry_run: a.dry_run,
    })
}

/// Runs `machines allocate`.
pub async fn run(ctx: &Ctx, a: AllocateArgs) -> Result<()> {
    let req = request(a)?;
    let clients = ctx.clients()?;
    // The request id makes the retries of `call` (and the user's own) safe.
    let resp = ctx
        .call(|| {
            let mut c = clients.machines();
            let req = req.clone();
            async move { c.allocate(req).await }
        })
        .await
        .inspect_err(|_| {
            if !req.dry_run && !ctx.json() {
                eprintln!(
                    "request id {}: if the outcome is unclear, retry with --request-id {} (it cannot allocate twice)",
                    req.request_id, req.request_id
                );
            }
        })?;
    if ctx.json() {
        print_json(&json!({
            "request_id": req.request_id,
            "dry_run": req.dry_run,
            "replayed": resp.replayed,
            "machines": resp.machines.iter().map(output::machine_json).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    let mut t = output::table([
        "SYSTEM ID",
        "HOSTNAME",
        "STATUS",
        "ZONE",
        "POOL",
        "CPUS",
        "MEMORY",
        "STORAGE",
        "CONSUMER",
        "PROVIDER ID",
    ]);
    for m in &resp.machines {
        t.add_row(vec![
            m.system_id.clone(),
            m.hostname.clone(),
            output::status_name(m.status),
            m.zone.clone(),
            m.pool.clone(),
            m.cpu_count.to_string(),
            output::mib(m.memory_mib),
            output::gib(m.storage_gib),
            output::dash(&m.consumer),
            output::dash(&m.provider_id),
        ]);
    }
    if !resp.machines.is_empty() {
        outln!("{}", output::render(&t));
    }
    let n = resp.machines.len();
    let s = if n == 1 { "" } else { "s" };
    if req.dry_run {
        eprintln!("dry run: {n} machine{s} would be allocated; nothing was claimed");
    } else if resp.replayed {
        eprintln!(
            "replayed: request id {} was served before; these are the {n} machine{s} it got then",
            req.request_id
        );
    } else {
        eprintln!(
            "allocated {n} machine{s} (request id {}; repeating it with --request-id returns the same machines)",
            req.request_id
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: AllocateArgs,
    }

    fn req(args: &[&str]) -> Result<AllocateRequest> {
        let mut v = vec!["t"];
        v.extend_from_slice(args);
        request(T::try_parse_from(v)?.a)
    }

    #[test]
    fn builds_requests() {
        let r = req(&[
            "--memory",
            "64G",
            "--cpus",
            "8",
            "--storage",
            "root:100(ssd)",
            "--zone",
            "a",
            "--zone",
            "b",
            "--count",
            "3",
            "--spread",
            "even",
        ])
        .unwrap();
        let c = r.constraints.unwrap();
        assert_eq!(c.min_memory_mib, 65536);
        assert_eq!(c.min_cpu_count, 8);
        assert_eq!(c.zones, vec!["a", "b"]);
        assert_eq!(r.spread, SpreadPolicy::Even as i32);
        assert_eq!(r.request_id.len(), 36);
        let r = req(&["--min-zones", "2", "--count", "2", "--request-id", "x1"]).unwrap();
        assert_eq!(r.spread, SpreadPolicy::MinZones as i32);
        assert_eq!(r.request_id, "x1");
    }

    #[test]
    fn refuses_bad_requests_early() {
        assert!(req(&["--storage", "root:lots"]).is_err());
        assert!(req(&["--spread", "min-zones"]).is_err());
        assert!(req(&["--spread", "even", "--min-zones", "2"]).is_err());
        assert!(req(&["--count", "0"]).is_err());
        assert!(req(&["--request-id", "has space"]).is_err());
        assert!(req(&["--memory", "lots"]).is_err());
    }
}
