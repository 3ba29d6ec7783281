//! `ingot events ...`: the history (EventService), newest first.

use crate::ctx::Ctx;
use crate::output::{self, print_json};
use crate::target::{self, consistency};
use anyhow::{bail, Result};
use clap::{Args, Subcommand, ValueEnum};
use ingot_proto::v1::{Event, EventLevel, ListEventsRequest};
use serde_json::json;

/// The largest page the region serves.
const MAX_PAGE: u32 = 1000;

/// The `events` subcommands.
#[derive(Subcommand, Debug)]
pub enum EventsCmd {
    /// List events matching all given filters, newest first
    List(ListArgs),
}

/// Minimum event level.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Everything
    Info,
    /// Warnings and errors
    Warning,
    /// Errors only
    Error,
}

/// Filters and paging of `events list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only events of this machine (system id, MAC or hostname)
    #[arg(long, value_name = "ID")]
    machine: Option<String>,
    /// Only events in this zone
    #[arg(long)]
    zone: Option<String>,
    /// Only events about machines held by this user
    #[arg(long, value_name = "USER")]
    owner: Option<String>,
    /// This level or more severe
    #[arg(long, value_enum)]
    level: Option<Level>,
    /// Only this kind (commission, allocate, deploy, release, deadline, agent.inventory, ...)
    #[arg(long)]
    kind: Option<String>,
    /// Not before this time: a duration ago (10m, 2h) or RFC 3339 (2024-05-01T12:00:00Z)
    #[arg(long, value_name = "WHEN", value_parser = crate::parse::parse_time)]
    since: Option<prost_types::Timestamp>,
    /// Not after this time: a duration ago or RFC 3339
    #[arg(long, value_name = "WHEN", value_parser = crate::parse::parse_time)]
    until: Option<prost_types::Timestamp>,
    /// At most this many events (default: one page of 100)
    #[arg(long, value_name = "N")]
    limit: Option<u32>,
    /// Continue from this page token (printed after a partial listing)
    #[arg(long, value_name = "TOKEN")]
    page_token: Option<String>,
    /// Fetch every page (up to --limit)
    #[arg(long)]
    all_pages: bool,
    /// Answer from the serving region's local state (may lag recent writes)
    #[arg(long)]
    stale: bool,
}

fn transition(e: &Event) -> String {
    match (e.from_status, e.to_status) {
        (0, 0) => "-".into(),
        (f, t) if f == t || f == 0 => output::status_name(t),
        (f, 0) => output::status_name(f),
        (f, t) => format!("{} -> {}", output::status_name(f), output::status_name(t)),
    }
}

/// Runs an `events` subcommand.
pub async fn run(ctx: &Ctx, cmd: EventsCmd) -> Result<()> {
    let EventsCmd::List(a) = cmd;
    if a.limit == Some(0) {
        bail!("--limit must be at least 1");
    }
    let system_id = match &a.machine {
        Some(m) => target::system_id(ctx, m).await?,
        None => String::new(),
    };
    let min_level = match a.level {
        None => EventLevel::Unspecified,
        Some(Level::Info) => EventLevel::Info,
        Some(Level::Warning) => EventLevel::Warning,
        Some(Level::Error) => EventLevel::Error,
    } as i32;
    let clients = ctx.clients()?;
    let mut events: Vec<Event> = Vec::new();
    let mut token = a.page_token.unwrap_or_default();
    loop {
        let page_size = match a.limit {
            Some(l) => (l - events.len() as u32).min(MAX_PAGE),
            None if a.all_pages => MAX_PAGE,
            None => 0,
        };
        let req = ListEventsRequest {
            system_id: system_id.clone(),
            zone: a.zone.clone().unwrap_or_default(),
            owner: a.owner.clone().unwrap_or_default(),
            min_level,
            since: a.since,
            until: a.until,
            page_size,
            page_token: token.clone(),
            consistency: consistency(a.stale),
            kind: a.kind.clone().unwrap_or_default(),
        };
        let page = ctx
            .call(|| {
                let mut c = clients.events();
                let req = req.clone();
                async move { c.list_events(req).await }
            })
            .await?;
        events.extend(page.events);
        token = page.next_page_token;
        let full = a.limit.is_some_and(|l| events.len() as u32 >= l);
        let more_wanted = a.all_pages || a.limit.is_some();
        if token.is_empty() || full || !more_wanted {
            break;
        }
    }
    if let Some(l) = a.limit {
        events.truncate(l as usize);
    }
    if ctx.json() {
        print_json(&json!({
            "events": events.iter().map(output::event_json).collect::<Vec<_>>(),
            "next_page_token": token,
        }));
        return Ok(());
    }
    let mut t = output::table([
        "TIME",
        "LEVEL",
        "KIND",
        "SYSTEM ID",
        "HOSTNAME",
        "ACTOR",
        "STATUS",
        "MESSAGE",
    ]);
    for e in &events {
        t.add_row(vec![
            output::ts(&e.time),
            output::level_name(e.level),
            e.kind.clone(),
            output::dash(&e.system_id),
            output::dash(&e.hostname),
            e.actor.clone(),
            transition(e),
            e.message.clone(),
        ]);
    }
    if !events.is_empty() {
        outln!("{}", output::render(&t));
    }
    let n = events.len();
    if token.is_empty() {
        eprintln!("{n} event{}", if n == 1 { "" } else { "s" });
    } else {
        eprintln!(
            "{n} event{}; older ones with --page-token {token} (or --all-pages)",
            if n == 1 { "" } else { "s" }
        );
    }
    Ok(())
}
