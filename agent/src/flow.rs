//! The agent's run, from the command line to what the machine does at the end:
//! lookup (the boot proof: MACs + a claim made once per run) -> the work and its per-boot token ->
//! the purpose's job, with heartbeats that can stop it -> the result -> [`End`].
//!
//! Jobs that touch disks or memory run on a blocking thread and talk to this loop through
//! [`crate::progress`]; the rack calls (TLS) stay on the one current-thread runtime.

use crate::cmdline::BootArgs;
use crate::platform::Platform;
use crate::progress::{self, Ctl};
use crate::rack::{CallError, Client, Rack, FAILED_PRECONDITION};
use crate::{checks, deploy, erase, inventory, seed};
use ingot_common::image::BootPurpose;
use ingot_proto::rack::v1::{
    agent_answer, agent_call, AgentHeartbeat, AgentLookup, AgentNext, AgentWork,
};
use ingot_proto::v1::{ReportInventoryRequest, ReportProgressRequest, ReportResultRequest};
use std::time::Duration;

/// What the machine does when the agent is done (done by `main`, never by the flow).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Stay up and idle: the region's BMC will power the machine, or an operator looks at the console.
    Wait(String),
    /// Reboot now.
    Reboot(String),
    /// Power off now.
    PowerOff(String),
    /// Exit with a failure: the ramdisk's /init runs the agent again a few times, then powers off (the
    /// rack was unreachable, or the command line unusable).
    Exit(String),
}

/// The boot's credentials, from the lookup answer. The token lives only here, in memory, and is never
/// printed (no Debug).
pub(crate) struct Session {
    /// The machine.
    pub(crate) system_id: String,
    /// The per-boot token.
    pub(crate) token: String,
    /// Between heartbeats.
    pub(crate) heartbeat: Duration,
}

/// A claim: 32 random hex characters, made once per run.
pub fn new_claim() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// The MACs to look up with: the boot MAC first, then every physical NIC's, at most 64.
pub fn lookup_macs(p: &Platform, boot_mac: &str) -> Vec<String> {
    let mut macs = vec![boot_mac.to_string()];
    for n in p.nics() {
        if !macs.contains(&n.mac) {
            macs.push(n.mac);
        }
    }
    macs.truncate(ingot_common::agent::MAX_LOOKUP_MACS);
    macs
}

fn end_of(next: i32, message: &str, done: &str) -> End {
    let why = if message.is_empty() {
        done.to_string()
    } else {
        format!("{done} ({message})")
    };
    match AgentNext::try_from(next).unwrap_or(AgentNext::Wait) {
        AgentNext::Reboot => End::Reboot(why),
        AgentNext::PowerOff => End::PowerOff(why),
        AgentNext::Stop => End::Wait(format!("the boot is over: {why}")),
        AgentNext::Continue | AgentNext::Wait => End::Wait(why),
    }
}

/// The `next` and message of a status answer (an answer without status: continue).
fn status_of(a: &ingot_proto::rack::v1::AgentAnswer) -> (i32, String) {
    match &a.answer {
        Some(agent_answer::Answer::Status(s)) => (s.next, s.message.clone()),
        _ => (AgentNext::Continue as i32, String::new()),
    }
}

/// Runs the agent to its end.
pub async fn run<R: Rack>(client: &Client<R>, p: &Platform, args: &BootArgs) -> End {
    crate::say!(
        "purpose {}, booted from {}, rack {} (agent API https://{})",
        args.purpose.as_str(),
        args.mac,
        args.rack.authority(),
        args.agent.authority()
    );
    if args.purpose == BootPurpose::Enlist {
        return End::PowerOff(
            "enlisted: the rack recorded this machine when it asked for an address; it stays off until \
             an operator commissions it (ingot machines commission)"
                .into(),
        );
    }
    let macs = lookup_macs(p, &args.mac);
    crate::say!("looking up this machine by {} MAC(s)", macs.len());
    let lookup = agent_call::Call::Lookup(AgentLookup {
        macs,
        claim: new_claim(),
        purpose: args.purpose.as_str().to_string(),
    });
    let work = match client.call(lookup).await {
        Ok(a) => match a.answer {
            Some(agent_answer::Answer::Work(w)) => w,
            _ => return End::Wait("the rack's answer to the lookup carries no work: the rack and region may be of different versions".into()),
        },
        Err(e) if e.code() == Some(FAILED_PRECONDITION) => {
            return End::PowerOff(format!(
                "this machine is not booting for Ingot: {e}; powering off"
            ))
        }
        Err(e @ CallError::GaveUp { .. }) => return End::Exit(e.to_string()),
        Err(e) => {
            return End::Wait(format!(
                "{e}; the region's deadline will mark the machine failed"
            ))
        }
    };
    let session = Session {
        system_id: work.system_id.clone(),
        token: work.boot_token.clone(),
        // 0 (unset by an older region): the default period.
        heartbeat: Duration::from_secs(u64::from(match work.heartbeat_s {
            0 => ingot_common::agent::HEARTBEAT_S,
            s => s.min(3600),
        })),
    };
    let purpose = BootPurpose::parse(&work.purpose).unwrap_or(args.purpose);
    if purpose != args.purpose {
        crate::say!(
            "the region says this boot is for {}, the command line said {}: following the region",
            purpose.as_str(),
            args.purpose.as_str()
        );
    }
    crate::say!(
        "machine {} (boot {}, hostname {}): {}",
        work.system_id,
        work.boot_id,
        work.hostname,
        purpose.as_str()
    );
    let outcome = match purpose {
        BootPurpose::Commission => commission(client, p, &session).await,
        BootPurpose::Test => {
            let p = p.clone();
            supervise(client, &session, move |ctl| checks::run(&p, ctl)).await
        }
        BootPurpose::Erase => {
            let mode = ingot_proto::convert::erase_from_proto(work.erase)
                .unwrap_or(ingot_common::model::EraseMode::Quick);
            let p = p.clone();
            supervise(client, &session, move |ctl| erase::run(&p, mode, ctl)).await
        }
        BootPurpose::Deploy => match deploy_plan(args, &work) {
            Ok(plan) => {
                let p = p.clone();
                supervise(client, &session, move |ctl| deploy::run(&p, &plan, ctl)).await
            }
            Err(e) => Ok(Err(e)),
        },
        BootPurpose::Rescue => return rescue(client, p, &session, &work.ssh_keys).await,
        other => Ok(Err(format!(
            "the region sent purpose {}, which this agent does not run",
            other.as_str()
        ))),
    };
    let result = match outcome {
        Ok(r) => r,
        Err(end) => return end,
    };
    report_result(client, &session, result).await
}

fn deploy_plan(args: &BootArgs, work: &AgentWork) -> Result<deploy::Plan, String> {
    let d = work.deploy.as_ref().ok_or(
        "the lookup answer has no deploy work: the region did not say which image to write",
    )?;
    if d.sha256.len() != 64 || !d.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "the deploy work's sha256 '{}' is not a SHA-256",
            d.sha256.chars().take(80).collect::<String>()
        ));
    }
    if !d.path.starts_with('/') || d.path.contains(char::is_whitespace) || d.path.len() > 512 {
        return Err("the deploy work's blob path is not an absolute path".into());
    }
    if let Some(named) = args.image.as_deref() {
        if !named.eq_ignore_ascii_case(&d.sha256) {
            crate::say!(
                "the boot script named image {named}, the region's answer {}: writing the region's",
                d.sha256
            );
        }
    }
    Ok(deploy::Plan {
        rack: args.rack.clone(),
        path: d.path.clone(),
        sha256: d.sha256.to_ascii_lowercase(),
        size: d.size,
        disk: d.disk.clone(),
        seed: seed::files(
            &work.system_id,
            &work.boot_id,
            &work.hostname,
            &d.user_data,
            &work.ssh_keys,
        ),
    })
}

async fn report_result<R: Rack>(
    client: &Client<R>,
    s: &Session,
    result: Result<String, String>,
) -> End {
    let (success, reason) = match &result {
        Ok(line) => {
            crate::say!("done: {line}");
            (true, String::new())
        }
        Err(why) => {
            crate::say!("FAILED: {why}");
            (false, why.chars().take(1024).collect())
        }
    };
    // Everything written reaches the disks before the region hears of it: the answer may be a BMC power
    // cycle, which would cut short writes still in the page cache.
    rustix::fs::sync();
    let call = agent_call::Call::Result(ReportResultRequest {
        system_id: s.system_id.clone(),
        boot_token: s.token.clone(),
        success,
        reason,
    });
    let done = if success { "work done" } else { "work failed" };
    match client.call(call).await {
        Ok(a) => {
            let (next, message) = status_of(&a);
            end_of(next, &message, done)
        }
        Err(e) => End::Wait(format!("{done}, but reporting it failed: {e}")),
    }
}

async fn commission<R: Rack>(
    client: &Client<R>,
    p: &Platform,
    s: &Session,
) -> Result<Result<String, String>, End> {
    crate::say!("reading the hardware inventory");
    let inv = inventory::collect(p);
    crate::say!(
        "inventory: {} CPUs ({}), {} MiB, {} disks, {} NICs, {} firmware",
        inv.cpu_count,
        inv.cpu_model,
        inv.memory_mib,
        inv.disks.len(),
        inv.nics.len(),
        inv.firmware.boot_mode
    );
    let call = agent_call::Call::Inventory(ReportInventoryRequest {
        system_id: s.system_id.clone(),
        boot_token: s.token.clone(),
        inventory: Some(ingot_proto::convert::inventory_to_proto(&inv)),
    });
    match client.call(call).await {
        Ok(a) => {
            let (next, message) = status_of(&a);
            if next != AgentNext::Continue as i32 {
                return Err(end_of(next, &message, "inventory reported"));
            }
            Ok(Ok(format!(
                "inventory reported ({} disks, {} NICs)",
                inv.disks.len(),
                inv.nics.len()
            )))
        }
        Err(e) => Ok(Err(format!("reporting the inventory failed: {e}"))),
    }
}

/// What ends supervision early: the region's word (or the boot being gone).
fn stop_of(e: &CallError) -> End {
    End::Wait(format!("the region no longer accepts this boot: {e}"))
}

/// Runs `job` on a blocking thread; meanwhile reports its steps and heartbeats. `Err(End)` when the
/// region says to stop (the job is told to stop and abandoned).
pub(crate) async fn supervise<R, F>(
    client: &Client<R>,
    s: &Session,
    job: F,
) -> Result<Result<String, String>, End>
where
    R: Rack,
    F: FnOnce(&Ctl) -> Result<String, String> + Send + 'static,
{
    let (ctl, mut watch) = progress::channel();
    let mut handle = tokio::task::spawn_blocking(move || job(&ctl));
    let mut beat = tokio::time::interval(s.heartbeat);
    // A call that took long (retries) is followed by one heartbeat, not a burst of the missed ones.
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beat.tick().await;
    let stop = |end: End, watch: &progress::Watch| {
        watch
            .cancel
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Err(end)
    };
    let mut steps_open = true;
    loop {
        tokio::select! {
            step = watch.rx.recv(), if steps_open => {
                let Some(step) = step else {
                    // The job returned (and dropped its side): its handle is about to be ready.
                    steps_open = false;
                    continue;
                };
                crate::say!("{} [{}%]", step.message, step.percent);
                let call = agent_call::Call::Progress(ReportProgressRequest {
                    system_id: s.system_id.clone(),
                    boot_token: s.token.clone(),
                    message: step.message.chars().take(256).collect(),
                    percent: step.percent,
                });
                match client.call(call).await {
                    Ok(a) => {
                        let (next, message) = status_of(&a);
                        if next != AgentNext::Continue as i32 {
                            return stop(end_of(next, &message, "stopped by the region"), &watch);
                        }
                    }
                    Err(e @ CallError::Refused { .. }) => return stop(stop_of(&e), &watch),
                    Err(e) => crate::say!("progress not reported: {e}"),
                }
            }
            _ = beat.tick() => {
                let call = agent_call::Call::Heartbeat(AgentHeartbeat {
                    system_id: s.system_id.clone(),
                    boot_token: s.token.clone(),
                });
                match client.call(call).await {
                    Ok(a) => {
                        let (next, message) = status_of(&a);
                        if next != AgentNext::Continue as i32 {
                            crate::say!("the region says stop: {message}");
                            return stop(end_of(next, &message, "stopped by the region"), &watch);
                        }
                    }
                    Err(e @ CallError::Refused { .. }) => return stop(stop_of(&e), &watch),
                    Err(e) => crate::say!("heartbeat not delivered: {e}"),
                }
            }
            done = &mut handle => {
                // Steps the job sent last are still printed (not reported: the result follows).
                while let Ok(step) = watch.rx.try_recv() {
                    crate::say!("{} [{}%]", step.message, step.percent);
                }
                return Ok(done.unwrap_or_else(|e| Err(format!("the job crashed: {e}"))));
            }
        }
    }
}

/// Writes the owner's keys where dropbear reads them.
pub fn install_keys(p: &Platform, keys: &[String]) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let dir = p.path("/root/.ssh");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let path = dir.join("authorized_keys");
    let mut text = String::new();
    for k in keys {
        let k = k.trim();
        if !k.is_empty() && !k.contains('\n') {
            text.push_str(k);
            text.push('\n');
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
}

fn start_dropbear(p: &Platform) -> std::io::Result<tokio::process::Child> {
    // -F: stay in the foreground, so the agent knows whether it runs; -R: host keys made on demand;
    // -E: log to the console.
    tokio::process::Command::new(&p.dropbear)
        .args(["-R", "-E", "-F", "-p", "22"])
        .kill_on_drop(true)
        .spawn()
}

async fn rescue<R: Rack>(client: &Client<R>, p: &Platform, s: &Session, keys: &[String]) -> End {
    if let Err(e) = install_keys(p, keys) {
        return report_result(
            client,
            s,
            Err(format!("writing /root/.ssh/authorized_keys: {e}")),
        )
        .await;
    }
    crate::say!("{} SSH key(s) installed for root", keys.len());
    let mut child = match start_dropbear(p) {
        Ok(c) => c,
        Err(e) => {
            return report_result(
                client,
                s,
                Err(format!(
                    "starting the SSH server {}: {e}; the ramdisk needs dropbear",
                    p.dropbear.display()
                )),
            )
            .await
        }
    };
    crate::say!("SSH server started on port 22 ({})", p.dropbear.display());
    let call = agent_call::Call::Result(ReportResultRequest {
        system_id: s.system_id.clone(),
        boot_token: s.token.clone(),
        success: true,
        reason: String::new(),
    });
    match client.call(call).await {
        Ok(a) => {
            let (next, message) = status_of(&a);
            if next != AgentNext::Continue as i32 {
                let _ = child.kill().await;
                return end_of(next, &message, "rescue ended");
            }
        }
        Err(e) => {
            let _ = child.kill().await;
            return End::Wait(format!("rescue could not be reported: {e}"));
        }
    }
    crate::say!(
        "rescue mode: ssh root@<this machine>; heartbeating every {}s",
        s.heartbeat.as_secs()
    );
    let mut beat = tokio::time::interval(s.heartbeat);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beat.tick().await;
    let mut restarts = 0u32;
    loop {
        tokio::select! {
            _ = beat.tick() => {
                let call = agent_call::Call::Heartbeat(AgentHeartbeat {
                    system_id: s.system_id.clone(),
                    boot_token: s.token.clone(),
                });
                match client.call(call).await {
                    Ok(a) => {
                        let (next, message) = status_of(&a);
                        if next != AgentNext::Continue as i32 {
                            let _ = child.kill().await;
                            return end_of(next, &message, "rescue ended");
                        }
                    }
                    Err(e @ CallError::Refused { .. }) => {
                        let _ = child.kill().await;
                        return stop_of(&e);
                    }
                    Err(e) => crate::say!("heartbeat not delivered: {e}"),
                }
            }
            status = child.wait() => {
                restarts += 1;
                crate::say!("the SSH server exited ({status:?})");
                if restarts > 10 {
                    return End::Wait("the SSH server keeps exiting; rescue is unusable".into());
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                match start_dropbear(p) {
                    Ok(c) => child = c,
                    Err(e) => return End::Wait(format!("restarting the SSH server: {e}")),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ingot_proto::rack::v1::DeployWork;

    #[test]
    fn deploy_work_from_the_rack_is_checked_before_use() {
        let args = crate::cmdline::parse(&format!(
            "ingot.purpose=deploy ingot.rack=http://10.0.0.2:5248 ingot.ca={} ingot.mac=52:54:00:00:00:01",
            "ab".repeat(32)
        ))
        .unwrap();
        let good = DeployWork {
            sha256: "AB".repeat(32),
            size: 10,
            path: "/blobs/ab/disk".into(),
            ..Default::default()
        };
        let mut w = AgentWork {
            system_id: "m-1".into(),
            boot_id: "b-1".into(),
            hostname: "h".into(),
            deploy: Some(good.clone()),
            ..Default::default()
        };
        let plan = deploy_plan(&args, &w).unwrap();
        assert_eq!(plan.sha256, "ab".repeat(32));
        assert!(plan.seed.meta_data.contains("m-1-b-1"));
        for bad in [
            DeployWork {
                sha256: "xyz".into(),
                ..good.clone()
            },
            DeployWork {
                path: "blobs/ab".into(),
                ..good.clone()
            },
            DeployWork {
                path: "/blobs/ab HTTP/1.1\r\nHost: evil".into(),
                ..good.clone()
            },
            DeployWork {
                path: format!("/{}", "a".repeat(600)),
                ..good.clone()
            },
        ] {
            w.deploy = Some(bad);
            assert!(deploy_plan(&args, &w).is_err());
        }
        w.deploy = None;
        assert!(deploy_plan(&args, &w)
            .unwrap_err()
            .contains("no deploy work"));
    }

    #[test]
    fn the_regions_word_maps_to_an_end() {
        assert!(matches!(
            end_of(AgentNext::Reboot as i32, "", "done"),
            End::Reboot(_)
        ));
        assert!(matches!(
            end_of(AgentNext::PowerOff as i32, "", "done"),
            End::PowerOff(_)
        ));
        assert!(
            matches!(end_of(AgentNext::Wait as i32, "m", "done"), End::Wait(ref w) if w == "done (m)")
        );
        assert!(
            matches!(end_of(AgentNext::Stop as i32, "", "done"), End::Wait(ref w) if w.contains("boot is over"))
        );
        assert!(matches!(
            end_of(AgentNext::Continue as i32, "", "done"),
            End::Wait(_)
        ));
        assert!(matches!(end_of(99, "", "done"), End::Wait(_)));
        assert_eq!(new_claim().len(), 32);
        assert_ne!(new_claim(), new_claim());
    }
}
