//! Lifecycle actions on one machine (`ingot machines commission|test|abort|deploy|release|...`) and
//! `--wait`: following the machine over `MachineService.Watch`, with a spinner, until the action's
//! outcome.

use crate::ctx::Ctx;
use crate::output::{self, print_json};
use crate::target::{call_ref, get_sel, RefFlags, Sel, Target};
use crate::watch::{Follower, Item};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use ingot_common::lifecycle::{self, Action};
use ingot_common::MachineStatus;
use ingot_proto::convert::status_from_proto;
use ingot_proto::v1::{
    watch_response, CommissionRequest, DeployRequest, EraseMode, Machine, MachineActionRequest,
    MachineFilter, ReleaseRequest, SetPoolRequest, SetZoneRequest, TagMachineRequest,
};
use serde_json::json;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

/// `--comment` and `--expected-revision`, accepted by every lifecycle action.
#[derive(Args, Debug, Clone, Default)]
pub struct Common {
    /// Recorded in the event (for mark-broken: the reason, shown as the status message)
    #[arg(long)]
    pub comment: Option<String>,
    /// Only act if the machine's revision is still this one
    #[arg(long, value_name = "R")]
    pub expected_revision: Option<u64>,
}

/// `--wait` and `--wait-timeout` of the asynchronous actions.
#[derive(Args, Debug, Clone)]
pub struct Wait {
    /// Follow the machine until the action finishes; exit non-zero if it fails
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this long (e.g. 30m, 1h)
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = crate::parse::parse_duration, requires = "wait")]
    pub wait_timeout: Duration,
}

/// An action that completes at once (lock, unlock, mark-broken, mark-fixed, retire).
#[derive(Args, Debug)]
pub struct SimpleArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    common: Common,
}

/// An asynchronous action (commission, test, abort, rescue, exit-rescue).
#[derive(Args, Debug)]
pub struct AsyncArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    wait: Wait,
}

/// `machines deploy`.
#[derive(Args, Debug)]
pub struct DeployArgs {
    #[command(flatten)]
    target: Target,
    /// Operating system (default ubuntu)
    #[arg(long = "os", value_name = "OS")]
    osystem: Option<String>,
    /// Release of the operating system (default noble)
    #[arg(long, value_name = "SERIES")]
    series: Option<String>,
    /// cloud-init user data to hand to the machine
    #[arg(long, value_name = "FILE")]
    user_data_file: Option<PathBuf>,
    /// SSH public key for the machine's NoCloud seed (the owner logs in with it); repeat for several. A
    /// value starting with @ names a file of keys, one per line (e.g. @~/.ssh/id_ed25519.pub)
    #[arg(long = "ssh-key", value_name = "KEY|@FILE")]
    ssh_keys: Vec<String>,
    /// The disk to write the image to (kernel name such as vda, or a serial); default: the smallest disk
    /// that fits the image
    #[arg(long, value_name = "DISK")]
    disk: Option<String>,
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    wait: Wait,
}

/// How a release erases the disks.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Erase {
    /// Leave the disks as they are
    None,
    /// Wipe partition tables and the start and end of each disk
    Quick,
    /// Full: overwrite every byte of every disk
    #[value(alias = "full")]
    Secure,
    /// Full, by discard (TRIM/UNMAP) where the device supports it, else by overwriting (faster on flash;
    /// a device whose discard does not zero may keep data readable)
    Discard,
}

/// `machines release`.
#[derive(Args, Debug)]
pub struct ReleaseArgs {
    #[command(flatten)]
    target: Target,
    /// Erase the disks before the machine returns to the pool
    #[arg(long, value_enum, default_value = "none")]
    erase: Erase,
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    wait: Wait,
}

/// `machines set-zone` / `set-pool`: `[ID] NAME`.
#[derive(Args, Debug)]
pub struct SetArgs {
    /// [ID] NAME: the machine's system id (unless --consumer, --provider-id or --hostname names it),
    /// then the zone or pool
    #[arg(value_name = "ID NAME", num_args = 1..=2, required = true)]
    args: Vec<String>,
    #[command(flatten)]
    by: RefFlags,
}

/// `machines tag` / `untag`: `[ID] TAG...`.
#[derive(Args, Debug)]
pub struct TagArgs {
    /// [ID] TAG...: the machine's system id (unless --consumer, --provider-id or --hostname names it),
    /// then one or more tags
    #[arg(value_name = "ID TAG", num_args = 1.., required = true)]
    args: Vec<String>,
    #[command(flatten)]
    by: RefFlags,
}

fn has_ref_flag(by: &RefFlags) -> bool {
    by.consumer.is_some() || by.provider_id.is_some() || by.hostname.is_some()
}

/// Splits `[ID] REST...`: with a lookup flag every argument is REST, else the first is the ID.
fn split_target(mut args: Vec<String>, by: RefFlags, what: &str) -> Result<(Sel, Vec<String>)> {
    if has_ref_flag(&by) {
        return Ok((Sel::new(None, by, None)?, args));
    }
    if args.len() < 2 {
        bail!("expected the machine's system id, then {what} (or name the machine with --consumer, --provider-id or --hostname)");
    }
    let id = args.remove(0);
    Ok((Sel::Arg(id), args))
}

/// What `--wait` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// This status.
    Status(MachineStatus),
    /// Any settled status that is not a failure (tests and leaving rescue return where they came from).
    NotFailed,
    /// Any settled status (abort).
    Settled,
}

/// True for the failed statuses of in-progress work.
fn is_failed(s: MachineStatus) -> bool {
    MachineStatus::ALL
        .iter()
        .any(|x| lifecycle::failed_status(*x) == Some(s))
}

/// What `--wait` waits for after `action`.
pub fn goal(action: Action) -> Goal {
    match action {
        Action::Commission => Goal::Status(MachineStatus::Ready),
        Action::Deploy => Goal::Status(MachineStatus::Deployed),
        Action::Release => Goal::Status(MachineStatus::Ready),
        Action::EnterRescue => Goal::Status(MachineStatus::RescueMode),
        Action::Test | Action::ExitRescue => Goal::NotFailed,
        _ => Goal::Settled,
    }
}

/// The verdict on a machine in `s`: `None` while the work is still running, `Some(true)` when the goal
/// is reached, `Some(false)` when it ended elsewhere.
pub fn judge(goal: Goal, s: MachineStatus) -> Option<bool> {
    if lifecycle::in_progress(s) {
        return None;
    }
    Some(match goal {
        Goal::Status(t) => s == t,
        Goal::NotFailed => !is_failed(s) && s != MachineStatus::Broken,
        Goal::Settled => true,
    })
}

fn status_of(m: &Machine) -> Option<MachineStatus> {
    status_from_proto(m.status)
}

/// Prints the machine after an action: the JSON record, or one line.
fn print_result(ctx: &Ctx, m: &Machine) {
    if ctx.json() {
        print_json(&output::machine_json(m));
        return;
    }
    let mut line = format!(
        "{} ({}): {}",
        m.system_id,
        m.hostname,
        output::status_name(m.status)
    );
    if m.locked {
        line.push_str(" (locked)");
    }
    if !m.status_message.is_empty() {
        line.push_str(&format!(" - {}", m.status_message));
    }
    outln!("{line}");
}

/// Prints the machine, or with `--wait` follows it to the outcome first.
async fn finish(ctx: &Ctx, action: Action, m: Machine, wait: &Wait) -> Result<()> {
    if !wait.wait {
        print_result(ctx, &m);
        if let Some(s) = status_of(&m).filter(|s| lifecycle::in_progress(*s)) {
            if !ctx.json() {
                eprintln!(
                    "{} is running; follow it with --wait or `ingot watch`, or `ingot machines show {}`",
                    s.as_str(),
                    m.system_id
                );
            }
        }
        return Ok(());
    }
    let m = wait_for(ctx, m, goal(action), wait.wait_timeout).await?;
    print_result(ctx, &m);
    Ok(())
}

/// Spinner on a terminal, a line per change otherwise (both on stderr).
struct Spinner {
    bar: Option<ProgressBar>,
    last: String,
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
            last: String::new(),
        }
    }

    fn show(&mut self, m: &Machine) {
        let mut msg = format!(
            "{} ({}): {}",
            m.system_id,
            m.hostname,
            output::status_name(m.status)
        );
        let p = output::progress(m);
        let running = status_of(m).is_some_and(lifecycle::in_progress);
        if running && p != "-" {
            msg.push_str(&format!(" - {p}"));
        }
        if msg == self.last {
            return;
        }
        match &self.bar {
            Some(bar) => bar.set_message(msg.clone()),
            None => eprintln!("{msg}"),
        }
        self.last = msg;
    }

    fn note(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn done(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.done();
    }
}

/// Follows `m` (as returned by an action, at its revision) until [`judge`] decides; errors when the
/// machine ends elsewhere, is deleted, or `timeout` passes. A broken watch stream is resumed from the
/// last revision seen on any region.
pub async fn wait_for(ctx: &Ctx, m: Machine, goal: Goal, timeout: Duration) -> Result<Machine> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut current = m;
    let mut spinner = Spinner::new();
    spinner.show(&current);
    let filter = |m: &Machine| MachineFilter {
        // Narrow the stream to the machine's hostname (unique); the system id is checked here.
        hostname_prefix: m.hostname.clone(),
        ..Default::default()
    };
    let mut follower = Follower::new(ctx, filter(&current), current.revision)?;
    loop {
        if let Some(st) = status_of(&current) {
            if let Some(ok) = judge(goal, st) {
                spinner.done();
                if ok {
                    return Ok(current);
                }
                let why = if current.status_message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", current.status_message)
                };
                bail!(
                    "machine {} ({}) ended in {}{why}",
                    current.system_id,
                    current.hostname,
                    st.as_str()
                );
            }
        }
        let item = match tokio::time::timeout_at(deadline, follower.next()).await {
            Err(_) => {
                spinner.done();
                bail!(
                    "gave up waiting after {}: machine {} is still {}; keep following it with `ingot watch` or `ingot machines show {}`",
                    output::duration(timeout.as_secs()),
                    current.system_id,
                    output::status_name(current.status),
                    current.system_id
                );
            }
            Ok(r) => r,
        };
        match item {
            Ok(Item::Change(ev)) => {
                let Some(m) = ev.machine else { continue };
                if m.system_id != current.system_id {
                    continue;
                }
                if ev.kind == watch_response::Kind::Delete as i32 {
                    spinner.done();
                    bail!(
                        "machine {} ({}) was deleted while waiting",
                        m.system_id,
                        m.hostname
                    );
                }
                let renamed = m.hostname != current.hostname;
                current = m;
                spinner.show(&current);
                if renamed {
                    follower.set_filter(filter(&current));
                }
            }
            Ok(Item::Progress) => {}
            Ok(Item::Broken(why)) => spinner.note(&format!(
                "watch stream broke ({why}); resuming from revision {}",
                follower.revision()
            )),
            Err(st) if st.code() == tonic::Code::OutOfRange => {
                // Fell too far behind: read the machine again and watch from the cluster's revision.
                spinner.note("watch fell behind the retained history; reading the machine again");
                let rev = follower.current_revision().await?;
                let sel = Sel::Arg(current.system_id.clone());
                current = get_sel(ctx, &sel, false, false, true).await?;
                follower.restart_at(rev);
                spinner.show(&current);
            }
            Err(st) => return Err(anyhow::Error::new(st).context("watching the machine")),
        }
    }
}

fn action_request(r: ingot_proto::v1::MachineRef, c: &Common) -> MachineActionRequest {
    MachineActionRequest {
        machine: Some(r),
        comment: c.comment.clone().unwrap_or_default(),
        expected_revision: c.expected_revision.unwrap_or(0),
    }
}

/// Calls the RPC of a parameterless action.
async fn call_action(ctx: &Ctx, action: Action, sel: &Sel, common: &Common) -> Result<Machine> {
    let clients = ctx.clients()?;
    call_ref(ctx, sel, |r| {
        let mut c = clients.machines();
        let req = action_request(r, common);
        async move {
            match action {
                Action::Commission => {
                    c.commission(CommissionRequest {
                        machine: req.machine,
                        comment: req.comment,
                        expected_revision: req.expected_revision,
                    })
                    .await
                }
                Action::Test => c.test(req).await,
                Action::Abort => c.abort(req).await,
                Action::MarkBroken => c.mark_broken(req).await,
                Action::MarkFixed => c.mark_fixed(req).await,
                Action::Lock => c.lock(req).await,
                Action::Unlock => c.unlock(req).await,
                Action::EnterRescue => c.enter_rescue(req).await,
                Action::ExitRescue => c.exit_rescue(req).await,
                Action::Retire => c.retire(req).await,
                other => Err(tonic::Status::internal(format!(
                    "{} is not a simple action",
                    other.as_str()
                ))),
            }
        }
    })
    .await
}

/// Runs an action that completes at once.
pub async fn run_simple(ctx: &Ctx, action: Action, a: SimpleArgs) -> Result<()> {
    let sel = Sel::of(a.target)?;
    let m = call_action(ctx, action, &sel, &a.common).await?;
    print_result(ctx, &m);
    Ok(())
}

/// Runs an asynchronous action, with `--wait` following it to its outcome.
pub async fn run_async(ctx: &Ctx, action: Action, a: AsyncArgs) -> Result<()> {
    let sel = Sel::of(a.target)?;
    let m = call_action(ctx, action, &sel, &a.common).await?;
    finish(ctx, action, m, &a.wait).await
}

/// `machines deploy`.
pub async fn deploy(ctx: &Ctx, a: DeployArgs) -> Result<()> {
    let sel = Sel::of(a.target)?;
    let user_data = match &a.user_data_file {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read --user-data-file {}", p.display()))?,
        None => String::new(),
    };
    let ssh_keys = ssh_keys(&a.ssh_keys)?;
    let clients = ctx.clients()?;
    let m = call_ref(ctx, &sel, |r| {
        let mut c = clients.machines();
        let req = DeployRequest {
            machine: Some(r),
            osystem: a.osystem.clone().unwrap_or_default(),
            distro_series: a.series.clone().unwrap_or_default(),
            user_data: user_data.clone(),
            comment: a.common.comment.clone().unwrap_or_default(),
            expected_revision: a.common.expected_revision.unwrap_or(0),
            ssh_keys: ssh_keys.clone(),
            disk: a.disk.clone().unwrap_or_default(),
        };
        async move { c.deploy(req).await }
    })
    .await?;
    finish(ctx, Action::Deploy, m, &a.wait).await
}

/// The keys of `--ssh-key`: each value is a key, or `@FILE` for a file of keys (one per line; blank lines
/// and `#` comments skipped; `~/` is the home directory).
fn ssh_keys(values: &[String]) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    for v in values {
        let Some(path) = v.strip_prefix('@') else {
            keys.push(v.trim().to_string());
            continue;
        };
        let path = match path.strip_prefix("~/") {
            Some(rest) => PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(rest),
            None => PathBuf::from(path),
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read --ssh-key @{}", path.display()))?;
        keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    Ok(keys)
}

/// `machines release`.
pub async fn release(ctx: &Ctx, a: ReleaseArgs) -> Result<()> {
    let sel = Sel::of(a.target)?;
    let erase = match a.erase {
        Erase::None => EraseMode::None,
        Erase::Quick => EraseMode::Quick,
        Erase::Secure => EraseMode::Secure,
        Erase::Discard => EraseMode::Discard,
    } as i32;
    let clients = ctx.clients()?;
    let m = call_ref(ctx, &sel, |r| {
        let mut c = clients.machines();
        let req = ReleaseRequest {
            machine: Some(r),
            erase,
            comment: a.common.comment.clone().unwrap_or_default(),
            expected_revision: a.common.expected_revision.unwrap_or(0),
        };
        async move { c.release(req).await }
    })
    .await?;
    finish(ctx, Action::Release, m, &a.wait).await
}

/// `machines set-zone` / `set-pool`.
pub async fn set(ctx: &Ctx, action: Action, a: SetArgs) -> Result<()> {
    let what = if action == Action::SetZone {
        "the zone"
    } else {
        "the pool"
    };
    let (sel, rest) = split_target(a.args, a.by, what)?;
    let [name] = rest.as_slice() else {
        bail!("expected exactly one {} name", &what[4..]);
    };
    let clients = ctx.clients()?;
    let m = call_ref(ctx, &sel, |r| {
        let mut c = clients.machines();
        let name = name.clone();
        async move {
            if action == Action::SetZone {
                c.set_zone(SetZoneRequest {
                    machine: Some(r),
                    zone: name,
                })
                .await
            } else {
                c.set_pool(SetPoolRequest {
                    machine: Some(r),
                    pool: name,
                })
                .await
            }
        }
    })
    .await?;
    if ctx.json() {
        print_json(&output::machine_json(&m));
    } else if action == Action::SetZone {
        outln!("{} ({}): zone {}", m.system_id, m.hostname, m.zone);
    } else {
        outln!("{} ({}): pool {}", m.system_id, m.hostname, m.pool);
    }
    Ok(())
}

/// `machines tag` / `untag`.
pub async fn tag(ctx: &Ctx, action: Action, a: TagArgs) -> Result<()> {
    let (sel, tags) = split_target(a.args, a.by, "one or more tags")?;
    if tags.is_empty() {
        bail!("name at least one tag");
    }
    let clients = ctx.clients()?;
    let m = call_ref(ctx, &sel, |r| {
        let mut c = clients.machines();
        let req = TagMachineRequest {
            machine: Some(r),
            tags: tags.clone(),
        };
        async move {
            if action == Action::Tag {
                c.tag_machine(req).await
            } else {
                c.untag_machine(req).await
            }
        }
    })
    .await?;
    if ctx.json() {
        print_json(&json!({
            "system_id": m.system_id,
            "hostname": m.hostname,
            "tags": m.tags,
            "revision": m.revision,
        }));
    } else {
        outln!(
            "{} ({}): tags {}",
            m.system_id,
            m.hostname,
            output::dash(&m.tags.join(", "))
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use MachineStatus::*;

    #[test]
    fn goals() {
        let g = goal(Action::Commission);
        assert_eq!(judge(g, Commissioning), None);
        assert_eq!(judge(g, Ready), Some(true));
        assert_eq!(judge(g, FailedCommissioning), Some(false));
        let g = goal(Action::Release);
        assert_eq!(judge(g, Releasing), None);
        assert_eq!(judge(g, DiskErasing), None);
        assert_eq!(judge(g, Ready), Some(true));
        assert_eq!(judge(g, FailedDiskErasing), Some(false));
        let g = goal(Action::Test);
        assert_eq!(judge(g, Testing), None);
        assert_eq!(judge(g, Deployed), Some(true));
        assert_eq!(judge(g, Ready), Some(true));
        assert_eq!(judge(g, FailedTesting), Some(false));
        let g = goal(Action::ExitRescue);
        assert_eq!(judge(g, ExitingRescueMode), None);
        assert_eq!(judge(g, Deployed), Some(true));
        assert_eq!(judge(g, FailedExitingRescueMode), Some(false));
        assert_eq!(judge(goal(Action::EnterRescue), RescueMode), Some(true));
        assert_eq!(judge(goal(Action::Deploy), Deployed), Some(true));
        assert_eq!(judge(goal(Action::Deploy), FailedDeployment), Some(false));
        // Aborting an erase ends in its failed status: that is the abort's outcome, not a failure.
        assert_eq!(judge(goal(Action::Abort), FailedDiskErasing), Some(true));
        assert_eq!(judge(goal(Action::Abort), DiskErasing), None);
    }

    #[test]
    fn failed_statuses() {
        assert!(is_failed(FailedCommissioning));
        assert!(is_failed(FailedExitingRescueMode));
        assert!(!is_failed(Ready));
        assert!(!is_failed(Broken));
    }

    #[test]
    fn targets_split() {
        let none = RefFlags::default();
        let (sel, rest) =
            split_target(vec!["abc123".into(), "z1".into()], none.clone(), "x").unwrap();
        assert_eq!(sel, Sel::Arg("abc123".into()));
        assert_eq!(rest, vec!["z1".to_string()]);
        assert!(split_target(vec!["z1".into()], none, "x").is_err());
        let by = RefFlags {
            consumer: Some("cp-0".into()),
            ..Default::default()
        };
        let (sel, rest) = split_target(vec!["a".into(), "b".into()], by, "x").unwrap();
        assert_eq!(sel, Sel::Consumer("cp-0".into()));
        assert_eq!(rest.len(), 2);
    }
}
