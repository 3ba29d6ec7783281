//! Following machine changes: [`Follower`], a `MachineService.Watch` stream that survives a dying region
//! (it reconnects, over the balanced channel, from the last revision it saw), and the `ingot watch`
//! command built on it.

use crate::ctx::Ctx;
use crate::output;
use anyhow::Result;
use clap::Args;
use ingot_client::{is_retryable, retry_unavailable, Clients};
use ingot_proto::v1::{
    watch_response, ListMachinesRequest, MachineFilter, MachineView, WatchRequest, WatchResponse,
};
use serde_json::json;
use std::time::Duration;
use tonic::{Code, Status, Streaming};

/// A stream that sends nothing (not even the regions' periodic progress notice) for this long is
/// considered dead and reopened.
const IDLE: Duration = Duration::from_secs(20);
/// Consecutive breaks without a single message in between after which the follower gives up.
const MAX_BREAKS: u32 = 20;
/// Shortest time reconnection is retried while no region answers (at least `--timeout`).
const MIN_RECONNECT: Duration = Duration::from_secs(30);

/// What [`Follower::next`] returns.
#[derive(Debug)]
pub enum Item {
    /// A machine was created, changed or deleted.
    Change(Box<WatchResponse>),
    /// The region confirmed nothing changed up to [`Follower::revision`].
    Progress,
    /// The stream broke (the reason); the next call reconnects from [`Follower::revision`].
    Broken(String),
}

/// A watch that resumes after failures from the last revision it saw.
pub struct Follower {
    clients: Clients,
    filter: MachineFilter,
    revision: u64,
    stream: Option<Streaming<WatchResponse>>,
    retry_for: Duration,
    breaks: u32,
}

/// Failures after which reopening the stream is worth a try: the region died or went away, the
/// connection broke, a leader election is running.
fn reconnectable(st: &Status) -> bool {
    is_retryable(st)
        || matches!(
            st.code(),
            Code::Unavailable
                | Code::Cancelled
                | Code::Aborted
                | Code::Unknown
                | Code::Internal
                | Code::DeadlineExceeded
        )
}

impl Follower {
    /// A follower of the machines matching `filter`, from after revision `from` (0: from now). Nothing is
    /// opened until [`Follower::next`].
    pub fn new(ctx: &Ctx, filter: MachineFilter, from: u64) -> Result<Follower> {
        Ok(Follower {
            clients: ctx.clients()?,
            filter,
            revision: from,
            stream: None,
            retry_for: ctx.global.timeout.max(MIN_RECONNECT),
            breaks: 0,
        })
    }

    /// The last revision seen (changes up to it have been delivered).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Continues from revision `rev` with a new stream.
    pub fn restart_at(&mut self, rev: u64) {
        self.revision = rev;
        self.stream = None;
    }

    /// Follows another filter from the last revision seen.
    pub fn set_filter(&mut self, filter: MachineFilter) {
        self.filter = filter;
        self.stream = None;
    }

    /// The cluster's current revision (as of a linearizable list): watching from it misses nothing that
    /// happens after this call.
    pub async fn current_revision(&self) -> Result<u64, Status> {
        let req = ListMachinesRequest {
            filter: Some(self.filter.clone()),
            page_size: 1,
            view: MachineView::Basic as i32,
            ..Default::default()
        };
        let clients = self.clients.clone();
        let page = retry_unavailable(
            || {
                let mut c = clients.machines();
                let req = req.clone();
                async move { c.list_machines(req).await }
            },
            self.retry_for,
        )
        .await?;
        Ok(page.into_inner().revision)
    }

    async fn open(&self) -> Result<Streaming<WatchResponse>, Status> {
        let req = WatchRequest {
            from_revision: self.revision,
            filter: Some(self.filter.clone()),
            view: MachineView::Basic as i32,
        };
        let clients = self.clients.clone();
        retry_unavailable(
            || {
                let mut c = clients.machines();
                let req = req.clone();
                async move { c.watch(req).await.map(|r| r.into_inner()) }
            },
            self.retry_for,
        )
        .await
    }

    fn broke(&mut self, why: String) -> Item {
        self.stream = None;
        self.breaks += 1;
        Item::Broken(why)
    }

    /// The next change, progress notice or break. Errors are final: `OUT_OF_RANGE` (the revision is no
    /// longer retained: list again and restart from the list's revision), a refused request, or no region
    /// answering for `--timeout` (at least 30 s).
    pub async fn next(&mut self) -> Result<Item, Status> {
        if self.stream.is_none() {
            if self.breaks > 0 {
                let pause = Duration::from_millis(100 * u64::from(self.breaks.min(10)));
                tokio::time::sleep(pause).await;
            }
            self.stream = Some(self.open().await?);
        }
        let Some(stream) = self.stream.as_mut() else {
            return Ok(Item::Progress);
        };
        match tokio::time::timeout(IDLE, stream.message()).await {
            Err(_) => Ok(self.broke(format!("nothing received for {}s", IDLE.as_secs()))),
            Ok(Ok(Some(ev))) => {
                self.breaks = 0;
                self.revision = self.revision.max(ev.revision);
                if ev.kind == watch_response::Kind::Progress as i32 {
                    Ok(Item::Progress)
                } else {
                    Ok(Item::Change(Box::new(ev)))
                }
            }
            Ok(Ok(None)) => Ok(self.broke("the region ended the stream".into())),
            Ok(Err(st)) if st.code() != Code::OutOfRange && reconnectable(&st) => {
                if self.breaks >= MAX_BREAKS {
                    return Err(st);
                }
                let why = if st.message().is_empty() {
                    format!("{:?}", st.code())
                } else {
                    st.message().to_string()
                };
                Ok(self.broke(why))
            }
            Ok(Err(st)) => Err(st),
        }
    }
}

/// Filters of `ingot watch`.
#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Start after this revision (default: now). `ingot machines list --json` prints the revision it read
    /// at: watching from it misses nothing after the list
    #[arg(long, value_name = "REV")]
    from: Option<u64>,
    /// Only machines in this zone
    #[arg(long)]
    zone: Option<String>,
    /// Only machines with this status (a machine leaving it is shown once, as it leaves)
    #[arg(long, value_parser = output::parse_status)]
    status: Option<i32>,
    /// Only machines held by this user
    #[arg(long, value_name = "USER")]
    owner: Option<String>,
    /// Only machines in this resource pool
    #[arg(long)]
    pool: Option<String>,
    /// Only machines having this tag (repeatable: all of them)
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
}

fn kind_name(k: i32) -> &'static str {
    match watch_response::Kind::try_from(k) {
        Ok(watch_response::Kind::Put) => "put",
        Ok(watch_response::Kind::Delete) => "delete",
        Ok(watch_response::Kind::Progress) => "progress",
        _ => "unknown",
    }
}

/// Prints one change: a line, or a JSON object on one line.
fn print_change(ctx: &Ctx, ev: &WatchResponse) {
    let Some(m) = &ev.machine else { return };
    let kind = kind_name(ev.kind);
    let time = if ev.kind == watch_response::Kind::Delete as i32 || m.updated_at.is_none() {
        output::rfc3339(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
        )
    } else {
        output::ts(&m.updated_at)
    };
    if ctx.json() {
        let v = json!({
            "time": time,
            "revision": ev.revision,
            "kind": kind,
            "machine": output::machine_json(m),
        });
        outln!("{v}");
    } else {
        outln!(
            "{time} {:>10} {kind:<6} {} {:<20} {:<26} {}",
            ev.revision,
            m.system_id,
            m.hostname,
            output::status_name(m.status),
            output::dash(&m.owner)
        );
    }
}

/// Runs `ingot watch` until Ctrl-C.
pub async fn run(ctx: &Ctx, a: WatchArgs) -> Result<()> {
    let filter = MachineFilter {
        zone: a.zone.unwrap_or_default(),
        status: a.status.unwrap_or(0),
        owner: a.owner.unwrap_or_default(),
        pool: a.pool.unwrap_or_default(),
        tags: a.tags,
        ..Default::default()
    };
    let mut f = Follower::new(ctx, filter, 0)?;
    let start = match a.from {
        Some(r) => r,
        None => f.current_revision().await?,
    };
    f.restart_at(start);
    if !ctx.json() {
        eprintln!("watching machine changes after revision {start}; Ctrl-C to stop");
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            item = f.next() => match item {
                Ok(Item::Change(ev)) => print_change(ctx, &ev),
                Ok(Item::Progress) => {}
                Ok(Item::Broken(why)) => eprintln!(
                    "watch stream broke ({why}); reconnecting from revision {}",
                    f.revision()
                ),
                Err(st) if st.code() == Code::OutOfRange => {
                    return Err(anyhow::Error::new(st).context(crate::ctx::ExitStatus(3)));
                }
                Err(st) => return Err(st.into()),
            },
        }
    }
}
