//! `ingot machines power ACTION ID` and `ingot machines power-command ID`: power actions run by the rack
//! that owns the machine's BMC (`MachineService.Power`, `GetPowerCommand`), and `--wait` for their
//! result, polling with the server-side `wait_seconds` under a spinner.

use crate::ctx::Ctx;
use crate::output::{self, print_json};
use crate::target::{call_ref, Sel, Target};
use anyhow::{bail, Result};
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use ingot_common::power::PowerAction;
use ingot_proto::v1::{GetPowerCommandRequest, PowerCommand, PowerRequest};
use std::io::IsTerminal;
use std::time::Duration;

/// Longest single server-side wait asked for (the server accepts up to 300 s); shorter waits let a dead
/// region be noticed and the spinner show the command's state.
const WAIT_CHUNK_S: u64 = 5;

/// What `machines power --help` says of each action (the actions themselves are
/// [`PowerAction::ALL`]; a new one fails to compile here until it is described).
fn action_help(a: PowerAction) -> &'static str {
    match a {
        PowerAction::On => "Power on",
        PowerAction::Off => "Power off at once (hard)",
        PowerAction::SoftOff => "Ask the operating system to shut down (ACPI)",
        PowerAction::Cycle => "Reboot: power cycle when on, power on when off",
        PowerAction::Query => "Read the power state only",
        PowerAction::BootPxe => "Boot from the network (PXE) next time",
        PowerAction::BootDisk => "Boot from the local disk next time",
        PowerAction::BootPxePersistent => "Boot from the network every time, until changed",
        PowerAction::BootDiskPersistent => "Boot from the local disk every time, until changed",
    }
}

/// The clap parser of a power action: accepts the wire spellings of [`PowerAction::ALL`] and lists them,
/// with [`action_help`], in `--help` and in the error for anything else.
fn power_action_parser() -> impl TypedValueParser<Value = PowerAction> {
    let values = PowerAction::ALL.map(|a| PossibleValue::new(a.as_str()).help(action_help(a)));
    PossibleValuesParser::new(values).try_map(|s| PowerAction::parse("action", &s))
}

/// `--wait` and `--wait-timeout` of the power commands.
#[derive(Args, Debug, Clone)]
pub struct PowerWait {
    /// Wait for the rack's result; exit non-zero if the command failed or is still pending at the timeout
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this long (e.g. 30s, 2m)
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = crate::parse::parse_duration, requires = "wait")]
    pub wait_timeout: Duration,
}

/// `machines power ACTION [ID]`.
#[derive(Args, Debug)]
pub struct PowerArgs {
    /// What to do: on, off, soft-off, cycle, query, boot-pxe, boot-disk, boot-pxe-persistent,
    /// boot-disk-persistent
    #[arg(value_parser = power_action_parser())]
    action: PowerAction,
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    wait: PowerWait,
}

/// `machines power-command ID`.
#[derive(Args, Debug)]
pub struct PowerCommandArgs {
    /// Power command id (printed by `ingot machines power`)
    id: u64,
    #[command(flatten)]
    wait: PowerWait,
}

/// Queues a power action; prints the queued command, or with `--wait` its result.
pub async fn power(ctx: &Ctx, a: PowerArgs) -> Result<()> {
    let sel = Sel::of(a.target)?;
    let clients = ctx.clients()?;
    let deadline = tokio::time::Instant::now() + a.wait.wait_timeout;
    // With --wait the first answer may already be the result (the simulated and manual drivers are fast).
    let first_wait = if a.wait.wait {
        chunk(a.wait.wait_timeout)
    } else {
        0
    };
    let action = a.action.as_str();
    let c = call_ref(ctx, &sel, |r| {
        let mut c = clients.machines();
        let req = PowerRequest {
            machine: Some(r),
            action: action.to_string(),
            wait_seconds: first_wait,
        };
        async move { c.power(req).await }
    })
    .await?;
    if !a.wait.wait {
        print_command(ctx, &c);
        if !ctx.json() && c.state == "pending" {
            eprintln!(
                "queued; follow it with `ingot machines power-command {} --wait`",
                c.id
            );
        }
        return Ok(());
    }
    let c = wait_for(ctx, c, deadline).await?;
    finish(ctx, &c, a.wait.wait_timeout)
}

/// Shows a power command, or with `--wait` waits for its result first.
pub async fn power_command(ctx: &Ctx, a: PowerCommandArgs) -> Result<()> {
    let deadline = tokio::time::Instant::now() + a.wait.wait_timeout;
    let c = get(ctx, a.id, 0).await?;
    if !a.wait.wait {
        print_command(ctx, &c);
        return Ok(());
    }
    let c = wait_for(ctx, c, deadline).await?;
    finish(ctx, &c, a.wait.wait_timeout)
}

/// Seconds to ask the server to wait: what remains of `d`, at most [`WAIT_CHUNK_S`].
fn chunk(d: Duration) -> u32 {
    d.as_secs().min(WAIT_CHUNK_S) as u32
}

async fn get(ctx: &Ctx, id: u64, wait_seconds: u32) -> Result<PowerCommand> {
    let clients = ctx.clients()?;
    ctx.call(|| {
        let mut c = clients.machines();
        async move {
            c.get_power_command(GetPowerCommandRequest { id, wait_seconds })
                .await
        }
    })
    .await
}

fn print_command(ctx: &Ctx, c: &PowerCommand) {
    if ctx.json() {
        print_json(&output::power_command_json(c));
    } else {
        outln!("{}", output::power_command_line(c));
    }
}

/// Prints the outcome of a waited-for command; an error (non-zero exit) when it failed or is still
/// pending.
fn finish(ctx: &Ctx, c: &PowerCommand, timeout: Duration) -> Result<()> {
    print_command(ctx, c);
    match c.state.as_str() {
        "pending" => bail!(
            "gave up waiting after {}: power command {} is still pending; follow it with \
             `ingot machines power-command {} --wait`",
            output::duration(timeout.as_secs()),
            c.id,
            c.id
        ),
        "failed" => {
            let kind = if c.error_kind.is_empty() {
                String::new()
            } else {
                format!(" ({})", c.error_kind)
            };
            let why = if c.message.is_empty() {
                String::new()
            } else {
                format!(": {}", c.message)
            };
            bail!(
                "power command {} ({} {}) failed{kind}{why}",
                c.id,
                c.action,
                c.system_id
            )
        }
        _ => Ok(()),
    }
}

/// Polls `GetPowerCommand` (each call waiting server-side up to [`WAIT_CHUNK_S`]) until the command is
/// no longer pending or `deadline` passes; returns the last state seen.
async fn wait_for(
    ctx: &Ctx,
    mut c: PowerCommand,
    deadline: tokio::time::Instant,
) -> Result<PowerCommand> {
    let spinner = Spinner::new();
    loop {
        let now = tokio::time::Instant::now();
        if c.state != "pending" || now >= deadline {
            return Ok(c);
        }
        spinner.show(&output::power_command_line(&c));
        let wait = chunk(deadline - now);
        if wait == 0 {
            // Under a second left: poll instead of spinning on zero-second waits.
            tokio::time::sleep(Duration::from_millis(200).min(deadline - now)).await;
        }
        c = get(ctx, c.id, wait).await?;
    }
}

/// Spinner on a terminal, a line per change otherwise (both on stderr).
struct Spinner {
    bar: Option<ProgressBar>,
    last: std::cell::RefCell<String>,
}

impl Spinner {
    fn new() -> Spinner {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner:.cyan} {msg} ({elapsed})") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Spinner {
            bar,
            last: Default::default(),
        }
    }

    fn show(&self, msg: &str) {
        if *self.last.borrow() == msg {
            return;
        }
        match &self.bar {
            Some(bar) => bar.set_message(msg.to_string()),
            None => eprintln!("{msg}"),
        }
        *self.last.borrow_mut() = msg.to_string();
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn action_names_match_clap() {
        let parser = power_action_parser();
        let listed: Vec<String> = parser
            .possible_values()
            .unwrap()
            .map(|p| p.get_name().to_string())
            .collect();
        let wire: Vec<&str> = PowerAction::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(listed, wire);
        let cmd = clap::Command::new("t");
        for a in PowerAction::ALL {
            let v = parser
                .parse_ref(&cmd, None, std::ffi::OsStr::new(a.as_str()))
                .unwrap();
            assert_eq!(v, a);
        }
        assert!(parser
            .parse_ref(&cmd, None, std::ffi::OsStr::new("reboot"))
            .is_err());
    }

    #[test]
    fn chunks() {
        assert_eq!(chunk(Duration::from_secs(60)), 5);
        assert_eq!(chunk(Duration::from_millis(2500)), 2);
        assert_eq!(chunk(Duration::ZERO), 0);
    }
}
