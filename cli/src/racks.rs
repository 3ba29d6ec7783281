//! `ingot racks ...`: one command per RackService RPC an admin uses — list, show, enrollment tokens
//! (with the `ingot-rack register` command line to run on the rack host), revoke.

use crate::ctx::Ctx;
use crate::output::{self, print_json};
use anyhow::{bail, Result};
use clap::Subcommand;
use ingot_client::config::{shell_quote, ENV_CA};
use ingot_client::RackClient;
use ingot_proto::v1::{
    CreateEnrollmentTokenRequest, GetRackRequest, ListRacksRequest, Rack, RevokeRackRequest,
};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where `ingot-rack register` is told to put the rack's data directory unless `--data-dir` is given.
const DEFAULT_RACK_DIR: &str = "/var/lib/ingot-rack";

/// The `racks` subcommands.
#[derive(Subcommand, Debug)]
pub enum RacksCmd {
    /// List rack controllers: zone, connection, serving region, last heartbeat, version, BMCs and pending
    /// power commands
    List {
        /// Answer from the serving region's local state (may lag recent writes)
        #[arg(long)]
        stale: bool,
    },
    /// Show one rack controller in full (services, drivers, registration time)
    Show {
        /// Rack name
        name: String,
    },
    /// Enrollment tokens for new rack controllers (admin)
    #[command(subcommand)]
    Token(TokenCmd),
    /// Revoke a rack: its session is cut, it is refused from then on, and its BMCs move to other racks
    Revoke {
        /// Rack name
        name: String,
    },
}

/// The `racks token` subcommands.
#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create a single-use enrollment token (printed on stdout) and show the `ingot-rack register`
    /// command line to run with it on the rack host
    Create {
        /// Token lifetime: 1h, 30m, 3600s, ...
        #[arg(long, default_value = "1h", value_parser = crate::parse::parse_duration)]
        ttl: Duration,
        /// Rack name to put in the printed command line (a DNS label)
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Zone to put in the printed command line (must exist)
        #[arg(long, value_name = "ZONE")]
        zone: Option<String>,
        /// Rack data directory to put in the printed command line
        #[arg(long, value_name = "DIR", default_value = DEFAULT_RACK_DIR)]
        data_dir: PathBuf,
    },
}

fn racks(ctx: &Ctx) -> Result<RackClient> {
    Ok(ctx.clients()?.racks())
}

fn show(ctx: &Ctx, r: &Rack) {
    if ctx.json() {
        print_json(&output::rack_json(r));
    } else {
        outln!(
            "{}",
            output::render(&output::rack_record(r, output::now_ms()))
        );
    }
}

/// Runs a `racks` subcommand.
pub async fn run(ctx: &Ctx, cmd: RacksCmd) -> Result<()> {
    match cmd {
        RacksCmd::List { stale } => {
            let client = racks(ctx)?;
            let resp = ctx
                .call(|| {
                    let mut c = client.clone();
                    let req = ListRacksRequest {
                        consistency: crate::target::consistency(stale),
                    };
                    async move { c.list_racks(req).await }
                })
                .await?;
            if ctx.json() {
                let list: Vec<_> = resp.racks.iter().map(output::rack_json).collect();
                print_json(&json!({ "racks": list }));
                return Ok(());
            }
            let now = output::now_ms();
            let mut t = output::table(output::RACK_HEADER);
            for r in &resp.racks {
                t.add_row(output::rack_row(r, now));
            }
            if !resp.racks.is_empty() {
                outln!("{}", output::render(&t));
            }
            let connected = resp.racks.iter().filter(|r| r.connected).count();
            eprintln!(
                "{} rack{}, {connected} connected",
                resp.racks.len(),
                if resp.racks.len() == 1 { "" } else { "s" }
            );
        }
        RacksCmd::Show { name } => {
            let client = racks(ctx)?;
            let r = ctx
                .call(|| {
                    let mut c = client.clone();
                    let req = GetRackRequest { name: name.clone() };
                    async move { c.get_rack(req).await }
                })
                .await?;
            show(ctx, &r);
        }
        RacksCmd::Revoke { name } => {
            let client = racks(ctx)?;
            let r = ctx
                .call(|| {
                    let mut c = client.clone();
                    let req = RevokeRackRequest { name: name.clone() };
                    async move { c.revoke_rack(req).await }
                })
                .await?;
            if ctx.json() {
                print_json(&output::rack_json(&r));
            } else {
                outln!("revoked rack {}", r.name);
            }
        }
        RacksCmd::Token(TokenCmd::Create {
            ttl,
            name,
            zone,
            data_dir,
        }) => token_create(ctx, ttl, name, zone, data_dir).await?,
    }
    Ok(())
}

async fn token_create(
    ctx: &Ctx,
    ttl: Duration,
    name: Option<String>,
    zone: Option<String>,
    data_dir: PathBuf,
) -> Result<()> {
    let ttl_seconds = ttl.as_secs();
    if ttl_seconds == 0 {
        bail!("--ttl must be at least 1s");
    }
    let clients = ctx.clients()?;
    let client = clients.racks();
    let resp = ctx
        .call(|| {
            let mut c = client.clone();
            async move {
                c.create_enrollment_token(CreateEnrollmentTokenRequest { ttl_seconds })
                    .await
            }
        })
        .await?;
    let ca = ca_path(ctx);
    let command = register_command(
        &data_dir,
        &clients.config().endpoints,
        &resp.token,
        name.as_deref(),
        zone.as_deref(),
        ca.as_deref(),
    );
    if ctx.json() {
        print_json(&json!({
            "token": resp.token,
            "expires_at": output::ts_json(&resp.expires_at),
            "command": command,
        }));
    } else {
        outln!("{}", resp.token);
        eprintln!(
            "single use, expires {}; on the rack host run:\n  {command}\nthen: ingot-rack run --data-dir {}",
            output::ts(&resp.expires_at),
            word(&data_dir.to_string_lossy())
        );
    }
    Ok(())
}

/// The `ingot-rack register` command line for an enrollment token; `<NAME>`, `<ZONE>` and `<CA_FILE>`
/// stand for what is not known.
fn register_command(
    data_dir: &Path,
    endpoints: &[String],
    token: &str,
    name: Option<&str>,
    zone: Option<&str>,
    ca: Option<&Path>,
) -> String {
    let ca = ca.map_or_else(|| "<CA_FILE>".to_string(), |p| word(&p.to_string_lossy()));
    format!(
        "ingot-rack register --data-dir {} --region {} --token {} --name {} --zone {} --ca {ca}",
        word(&data_dir.to_string_lossy()),
        word(&endpoints.join(",")),
        word(token),
        name.map_or_else(|| "<NAME>".to_string(), word),
        zone.map_or_else(|| "<ZONE>".to_string(), word),
    )
}

/// `s` as one shell word: as is when it is plain, single-quoted otherwise.
fn word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:,=@+%".contains(c));
    if plain {
        s.to_string()
    } else {
        shell_quote(s)
    }
}

/// The path of the cluster CA certificate the way the connection found it: `--ca`, else the profile's
/// `INGOT_CA` (relative to the profile), else the `INGOT_CA` environment variable; made absolute.
fn ca_path(ctx: &Ctx) -> Option<PathBuf> {
    let g = &ctx.global;
    let from_profile = || {
        let p = g.profile.as_ref()?;
        let text = std::fs::read_to_string(p).ok()?;
        let v = env_value(&text, ENV_CA)?;
        Some(p.parent().unwrap_or(Path::new(".")).join(v))
    };
    let env = || {
        std::env::var_os(ENV_CA)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let p = g.ca.clone().or_else(from_profile).or_else(env)?;
    Some(p.canonicalize().unwrap_or(p))
}

/// The value of `key` in an env file (`[export ]KEY=VALUE`, optionally quoted as `ingot dev up` writes
/// it); `None` when absent or empty.
fn env_value(text: &str, key: &str) -> Option<String> {
    let raw = text.lines().rev().find_map(|l| {
        let l = l.trim();
        let l = l.strip_prefix("export ").map_or(l, str::trim);
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })?;
    let v = if raw.len() >= 2 && raw.starts_with('\'') && raw.ends_with('\'') {
        raw[1..raw.len() - 1].replace(r"'\''", "'")
    } else if raw.len() >= 2 && raw.starts_with('"') && raw.ends_with('"') {
        raw[1..raw.len() - 1].replace("\\\"", "\"")
    } else {
        raw
    };
    (!v.is_empty()).then_some(v)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn env_values() {
        let text =
            "# c\nexport INGOT_ENDPOINTS='https://a:1'\nexport INGOT_CA='/tmp/my dir/ca.crt'\n";
        assert_eq!(
            env_value(text, "INGOT_CA").as_deref(),
            Some("/tmp/my dir/ca.crt")
        );
        assert_eq!(
            env_value("INGOT_CA=ca.crt", "INGOT_CA").as_deref(),
            Some("ca.crt")
        );
        assert_eq!(env_value("INGOT_CA=''", "INGOT_CA"), None);
        assert_eq!(env_value("X=1", "INGOT_CA"), None);
    }

    #[test]
    fn command_line() {
        let c = register_command(
            Path::new("/var/lib/ingot-rack"),
            &["https://127.0.0.1:1".into(), "https://127.0.0.1:2".into()],
            "tok",
            Some("rack-1"),
            None,
            Some(Path::new("/x y/ca.crt")),
        );
        assert_eq!(
            c,
            "ingot-rack register --data-dir /var/lib/ingot-rack --region https://127.0.0.1:1,https://127.0.0.1:2 \
             --token tok --name rack-1 --zone <ZONE> --ca '/x y/ca.crt'"
        );
    }
}
