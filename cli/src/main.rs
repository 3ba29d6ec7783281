//! `ingot`: the command-line client of an Ingot region cluster, and the launcher of local development
//! clusters (`ingot dev up`).
//!
//! Layout: this file holds the command tree's root and error reporting; each command group lives in its
//! own module ([`machines`] with [`actions`], [`allocate`] and [`power`], [`zones`], [`pools`], [`tags`],
//! [`users`], [`events`], [`settings`], [`watch`], [`agent`], [`racks`], [`subnets`], [`leases`],
//! [`images`] with the image builders in [`build`], [`cluster`], [`dev`]). They share
//! leaf modules that import no command module: [`ctx`] (the global flags and the connection), [`target`]
//! (how a machine argument is resolved), [`output`] (tables, JSON and timestamps) and [`parse`] (sizes,
//! durations, times and settings). Every API command is
//! one RPC (or one per page), retried while the cluster is unavailable (a region is down, an election is
//! running) for at most `--timeout`; `--wait` and `ingot watch` follow a watch stream that resumes on
//! another region when one dies.
//!
//! Exit status: 0 on success, 1 on any error (the gRPC message is printed: it names the field and says
//! what to do), 2 for usage errors, 3 when `ingot watch` asked for a revision the cluster no longer
//! retains.

/// `println!` that ends the program quietly when stdout is a closed pipe (`ingot ... | head`) instead of
/// panicking.
macro_rules! outln {
    () => {
        $crate::output::emit_line("")
    };
    ($($arg:tt)*) => {
        $crate::output::emit_line(&format!($($arg)*))
    };
}

mod actions;
mod agent;
mod allocate;
mod build;
mod cluster;
mod ctx;
mod dev;
mod events;
mod images;
mod leases;
mod machines;
mod output;
mod parse;
mod pools;
mod power;
mod racks;
mod settings;
mod subnets;
mod tags;
mod target;
mod users;
mod watch;
mod zones;

use anyhow::Result;
use clap::{Parser, Subcommand};
use ctx::{Ctx, ExitStatus, Global};
use std::process::ExitCode;

/// Manage an Ingot bare-metal provisioning cluster.
#[derive(Parser, Debug)]
#[command(name = "ingot", version, about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Machines: enlist, list, show, change, remove
    #[command(subcommand)]
    Machines(machines::MachinesCmd),
    /// Availability zones
    #[command(subcommand)]
    Zones(zones::ZonesCmd),
    /// Resource pools
    #[command(subcommand)]
    Pools(pools::PoolsCmd),
    /// Tags: manual, or defined by an expression over the inventory
    #[command(subcommand)]
    Tags(tags::TagsCmd),
    /// Users and their roles
    #[command(subcommand)]
    Users(users::UsersCmd),
    /// API tokens
    #[command(subcommand)]
    Tokens(users::TokensCmd),
    /// The history: transitions, admin actions, agent reports
    #[command(subcommand)]
    Events(events::EventsCmd),
    /// Cluster-wide settings (deadlines of in-progress statuses)
    #[command(subcommand)]
    Settings(settings::SettingsCmd),
    /// Print machine changes as they happen, until Ctrl-C
    Watch(watch::WatchArgs),
    /// Play a machine's in-band agent: report inventory, progress and results with its boot token
    #[command(subcommand)]
    Agent(agent::AgentCmd),
    /// Rack controllers: list, show, enrollment tokens, revoke (admin)
    #[command(subcommand)]
    Racks(racks::RacksCmd),
    /// Boot networks the racks serve (DHCP, PXE): admins change them, anyone may list them
    #[command(subcommand)]
    Subnets(subnets::SubnetsCmd),
    /// DHCP leases on the subnets
    #[command(subcommand)]
    Leases(leases::LeasesCmd),
    /// Boot images (ramdisks, disk images, iPXE): upload, list, show, delete
    #[command(subcommand)]
    Images(images::ImagesCmd),
    /// Region controllers: membership, health, join tokens
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    /// A local development cluster of real ingot-region and ingot-rack processes
    #[command(subcommand)]
    Dev(dev::DevCmd),
}

async fn run(cli: Cli) -> Result<()> {
    let ctx = Ctx { global: cli.global };
    match cli.command {
        Command::Machines(c) => machines::run(&ctx, c).await,
        Command::Zones(c) => zones::run(&ctx, c).await,
        Command::Pools(c) => pools::run(&ctx, c).await,
        Command::Tags(c) => tags::run(&ctx, c).await,
        Command::Users(c) => users::run_users(&ctx, c).await,
        Command::Tokens(c) => users::run_tokens(&ctx, c).await,
        Command::Events(c) => events::run(&ctx, c).await,
        Command::Settings(c) => settings::run(&ctx, c).await,
        Command::Watch(a) => watch::run(&ctx, a).await,
        Command::Agent(c) => agent::run(&ctx, c).await,
        Command::Racks(c) => racks::run(&ctx, c).await,
        Command::Subnets(c) => subnets::run(&ctx, c).await,
        Command::Leases(c) => leases::run(&ctx, c).await,
        Command::Images(c) => images::run(&ctx, c).await,
        Command::Cluster(c) => cluster::run(&ctx, c).await,
        Command::Dev(c) => dev::run(&ctx, c).await,
    }
}

/// `NotFound` -> `NOT_FOUND`, the gRPC spelling operators search for.
fn code_name(code: tonic::Code) -> String {
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn report(err: &anyhow::Error, json: bool) {
    let (code, message) = match err.downcast_ref::<tonic::Status>() {
        Some(st) => {
            let msg = if st.message().is_empty() {
                st.code().description().to_string()
            } else {
                st.message().to_string()
            };
            (Some(code_name(st.code())), msg)
        }
        None => (None, format!("{err:#}")),
    };
    if json {
        let v = serde_json::json!({"error": {"code": code, "message": message}});
        eprintln!("{v}");
    } else {
        match code {
            Some(code) if code == "UNAVAILABLE" => eprintln!(
                "error: {message} ({code})\nhint: no region answered within --timeout; are the endpoints \
                 right and the regions running? (`ingot dev up` restarts a local cluster)"
            ),
            Some(code) if code == "OUT_OF_RANGE" => eprintln!(
                "error: {message} ({code})\nhint: `ingot machines list --json` prints the current \"revision\"; \
                 continue with `ingot watch --from REVISION`"
            ),
            Some(code) => eprintln!("error: {message} ({code})"),
            None => eprintln!("error: {message}"),
        }
    }
}

fn main() -> ExitCode {
    // tonic's TLS uses rustls; make ring the process-wide provider (already installed is fine).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let json = cli.global.json;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&e, json);
            match e.downcast_ref::<ExitStatus>() {
                Some(s) => ExitCode::from(s.0),
                None => ExitCode::FAILURE,
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn code_names() {
        assert_eq!(code_name(tonic::Code::NotFound), "NOT_FOUND");
        assert_eq!(code_name(tonic::Code::Ok), "OK");
        assert_eq!(code_name(tonic::Code::InvalidArgument), "INVALID_ARGUMENT");
    }

    #[test]
    fn contract_command_lines_parse() {
        let ok = [
            "ingot machines list --pool p --owner u --consumer c --tag a --tag b --status ready --zone z --all-pages",
            "ingot machines show --consumer cp-0",
            "ingot machines show --provider-id ingot:///z/abc123",
            "ingot machines show --mac 52:54:00:00:00:01",
            "ingot machines show --hostname n1",
            "ingot machines commission abc123 --comment hi --expected-revision 5 --wait --wait-timeout 10m",
            "ingot machines deploy --consumer cp-0 --os ubuntu --series noble --user-data-file /dev/null --wait",
            "ingot machines release abc123 --erase secure --wait",
            "ingot machines mark-broken abc123 --comment psu",
            "ingot machines exit-rescue abc123 --wait",
            "ingot machines rescue --hostname n1",
            "ingot machines set-zone abc123 z2",
            "ingot machines set-pool --consumer cp-0 p2",
            "ingot machines tag abc123 a b c",
            "ingot machines untag --hostname n1 a",
            "ingot machines delete --hostname n1",
            "ingot machines allocate --arch amd64 --cpus 4 --memory 64G --storage root:100(ssd) --tag a --not-tag b --zone z1 --zone z2 --not-zone z3 --pool p --not-pool q --hostname h --system-id abc123 --nics 2 --nic-speed 10000 --count 2 --spread min-zones --min-zones 2 --consumer c --request-id r --dry-run",
            "ingot machines boot-credentials abc123",
            "ingot machines actions",
            "ingot machines actions failed-testing",
            "ingot agent report-inventory abc123 --token T --file inv.json",
            "ingot agent progress abc123 --token T --message m --percent 40",
            "ingot agent result abc123 --token T --success",
            "ingot agent result abc123 --failure broken",
            "ingot pools create p --description d",
            "ingot tags create t --definition cpu_count>=4 --comment c",
            "ingot users create alice --role admin",
            "ingot users update alice --role user",
            "ingot users whoami",
            "ingot tokens list --all",
            "ingot tokens create --user alice --description d --ttl 1h",
            "ingot tokens revoke abc",
            "ingot events list --machine abc123 --zone z --owner u --level warning --kind deploy --since 10m --until 2024-05-01T00:00:00Z --limit 5 --all-pages",
            "ingot settings set deadline.commissioning=30m deadline.testing=3600",
            "ingot settings show",
            "ingot watch --from 5 --zone z --status ready --owner u --pool p --tag t",
            "ingot racks list",
            "ingot racks list --stale",
            "ingot racks show rack-1",
            "ingot racks token create",
            "ingot racks token create --ttl 30m --name rack-9 --zone z --data-dir /srv/rack",
            "ingot racks revoke rack-1",
            "ingot subnets create 10.20.0.0/24 --gateway 10.20.0.1 --dns 10.20.0.1 --dns 10.20.0.2 --domain lab.example --dynamic 10.20.0.100-10.20.0.199 --dynamic 10.20.0.200-10.20.0.210 --reserved 10.20.0.2-10.20.0.9 --vlan 0 --mode managed --primary rack-1 --secondary rack-2 --lease-time 1h --pxe-lease-time 30s",
            "ingot subnets create 10.30.0.0/16 --mode proxy",
            "ingot subnets list",
            "ingot subnets list --stale",
            "ingot subnets show 10.20.0.0/24",
            "ingot subnets update 10.20.0.0/24 --mode off --lease-time 1d --pxe-lease-time 10m",
            "ingot subnets update 10.20.0.0/24 --no-gateway --no-secondary --no-dns --no-domain --no-dynamic --no-reserved",
            "ingot subnets update 10.20.0.0/24 --no-primary --no-secondary",
            "ingot subnets delete 10.20.0.0/24",
            "ingot leases list",
            "ingot leases list --subnet 10.20.0.0/24 --mac 52:54:00:00:00:01",
            "ingot machines power on abc123",
            "ingot machines power soft-off abc123 --wait",
            "ingot machines power boot-pxe --hostname n1 --wait --wait-timeout 2m",
            "ingot machines power query abc123 --json",
            "ingot machines power-command 17",
            "ingot machines power-command 17 --wait --wait-timeout 30s",
            "ingot machines set-power abc123 --driver sim --param state_dir=/tmp/bmc --param x=y",
            "ingot machines set-power abc123 --driver manual",
            "ingot dev up --dir d --racks 3 --zones 2 --rack-arg=--heartbeat-ms=200",
            "ingot dev up --racks 0",
        ];
        for line in ok {
            if let Err(e) = Cli::try_parse_from(line.split_whitespace()) {
                panic!("{line}: {e}");
            }
        }
        let bad = [
            "ingot machines commission abc123 --wait-timeout 5m",
            "ingot agent result abc123 --success --failure x",
            "ingot agent result abc123",
            "ingot agent progress abc123 --message m --percent 101",
            "ingot machines release abc123 --erase bogus",
            "ingot machines actions bogus",
            "ingot tokens list --all --user u",
            "ingot machines power reboot abc123",
            "ingot machines power on abc123 --wait-timeout 5s",
            "ingot machines power-command notanumber",
            "ingot machines set-power abc123 --param a=b",
            "ingot racks token create --ttl forever",
            "ingot racks show",
            "ingot subnets create",
            "ingot subnets create 10.20.0.0/24 --mode dhcp",
            "ingot subnets create 10.20.0.0/24 --lease-time 1y",
            "ingot subnets update 10.20.0.0/24 --gateway 10.20.0.1 --no-gateway",
            "ingot subnets update 10.20.0.0/24 --dns 10.20.0.1 --no-dns",
            "ingot subnets create 10.20.0.0/24 --no-gateway",
            "ingot leases list 10.20.0.0/24",
        ];
        for line in bad {
            assert!(
                Cli::try_parse_from(line.split_whitespace()).is_err(),
                "{line}"
            );
        }
        // For agent commands the global --token is the boot token.
        let cli =
            Cli::try_parse_from("ingot agent progress abc123 --token T --message m".split(' '))
                .unwrap();
        assert_eq!(cli.global.token.as_deref(), Some("T"));
    }

    #[test]
    fn global_flags_anywhere() {
        let cli = Cli::try_parse_from([
            "ingot",
            "machines",
            "list",
            "--json",
            "--endpoint",
            "https://a:1,https://b:2",
            "--endpoint=https://c:3",
        ])
        .unwrap();
        assert!(cli.global.json);
        assert_eq!(cli.global.endpoints.len(), 3);
    }
}
